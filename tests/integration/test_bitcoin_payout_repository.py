"""The payouts' repository (``uow.btc_payouts``) on SQLite and PostgreSQL alike, and concurrent
reservations and batching on PostgreSQL.

Covers: payouts (an id is inserted once, oldest first, waiting notes, conditional assignment to a
batch, completion once), batches (JSON round trip, updates conditional on txid and status), the
custody UTXO set (only confirmed or credited, not dust, unspent, unreserved outputs are
spendable, with the derivation that signs them; reservations are all or nothing; spends and the
watcher's cursor), change addresses (next index, a taken index refused) and alerts (an id raises
once). Custody outputs and blocks are written straight into the watcher's tables, as the watcher
would have recorded them.

Concurrency (PostgreSQL): a reservation of outputs another open transaction reserved waits for it
(seen in ``pg_stat_activity``) and, once that one commits, reserves nothing — not even the
outputs nobody else had; the same for moving a payout into a batch; many reservations from two
threads at once never reserve one output twice; and two payout workers (the real wallet, the
in-memory chain, the real watcher) running their rounds at the same moment pay each payout once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS
from sluice.domain.deposits import Alert
from sluice.ports import UnitOfWork
from sluice.ports.bitcoin_payouts import BatchRecord, PayoutAssignment, PayoutRecord
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_payouts import PayoutWorker, list_payouts, request_payout
from sluice.services.btc_watcher import DepositWatcher
from sluice.store.bitcoin_tables import btc_addresses, btc_blocks, btc_outputs
from sluice.store.rows import ts

WHEN = datetime(2026, 12, 5, 6, 0, 0, tzinfo=UTC)
TX = ["%064x" % (0x7E0000 + n) for n in range(40)]
DUST = 330


@pytest.fixture
def database(database_url: str) -> Iterator[bootstrap.Database]:
    db = bootstrap.database(database_url)
    yield db
    db.dispose()


def _add_address(db: bootstrap.Database, n: int, branch: int = 0) -> str:
    address = f"bcrt1q{branch}addr{n:04d}"
    with db.engine.begin() as c:
        c.execute(
            sa.insert(btc_addresses).values(
                address=address,
                script_hex=f"0020{branch:02x}{n:062x}",
                branch=branch,
                derivation_index=n,
                customer_id=None if branch else "alice",
                created_at=ts(WHEN),
                funded_at=None,
            )
        )
    return address


def _add_output(
    db: bootstrap.Database,
    txid: str,
    vout: int,
    amount: int,
    *,
    status: str = "confirmed",
    address: str = "bcrt1q0addr0000",
    spent: tuple[str, int, str] | None = None,
    reserved_by: str | None = None,
) -> str:
    with db.engine.begin() as c:
        c.execute(
            sa.insert(btc_outputs).values(
                txid=txid,
                vout=vout,
                kind="deposit",
                address=address,
                script_hex="00",
                customer_id="alice",
                amount_sats=amount,
                status=status,
                block_height=1,
                block_hash="b1" * 32,
                input_outpoints="[]",
                first_seen_at=ts(WHEN),
                confirmed_at=None,
                credited_at=None,
                reserved_by=reserved_by,
                spent_txid=spent[0] if spent else None,
                spent_height=spent[1] if spent else None,
                spent_block_hash=spent[2] if spent else None,
            )
        )
    return f"{txid}:{vout}"


def _payout(n: int, *, minutes: int = 0, status: str = "queued") -> PayoutRecord:
    return PayoutRecord(
        id=f"p{n}",
        kind="operator",
        address=f"bcrt1qdest{n}",
        script_hex=f"0014{n:040x}",
        amount_sats=100_000 + n,
        status=status,
        requested_by="ops",
        requested_at=WHEN + timedelta(minutes=minutes),
    )


def _batch(batch_id: str, outpoints: tuple[str, ...], txid: str = TX[30]) -> BatchRecord:
    return BatchRecord(
        id=batch_id,
        outpoints=outpoints,
        status="signed",
        txid=txid,
        raw_hex="02000000",
        versions=(
            {
                "txid": txid,
                "fee_sats": 500,
                "fee_rate": "2.5",
                "vsize": 200,
                "change_sats": 1000,
                "change_vout": 1,
                "change_script": "0020ab",
                "payouts": {"p1": [0, 500]},
            },
        ),
        fee_sats=500,
        fee_rate_sat_vb="2.5",
        vsize=200,
        change_sats=1000,
        created_at=WHEN,
        updated_at=WHEN,
        change_vout=1,
        change_address="bcrt1qchange",
    )


def test_a_payout_id_is_inserted_once_and_read_oldest_first(
    database: bootstrap.Database,
) -> None:
    with database.uow() as uow:
        repo = uow.btc_payouts
        assert repo.insert_payout(_payout(2, minutes=5))
        assert repo.insert_payout(_payout(1, minutes=1))
        assert repo.insert_payout(_payout(3, minutes=9, status="completed"))
        assert not repo.insert_payout(replace(_payout(1), amount_sats=1))
        uow.commit()
    with database.uow() as uow:
        repo = uow.btc_payouts
        assert repo.get_payout("p1") == _payout(1, minutes=1)
        assert repo.get_payout("nope") is None
        assert [p.id for p in repo.payouts(("queued", "waiting_fee"))] == ["p1", "p2"]
        assert [p.id for p in repo.payouts()] == ["p1", "p2", "p3"]
        assert [p.id for p in repo.payouts(limit=1)] == ["p1"]
        assert repo.set_payouts_waiting(["p1", "p3"], "waiting_fee", "fees too high") == 1
        assert repo.set_payouts_waiting(["p2"], None, "no funds") == 1
        uow.commit()
    with database.uow() as uow:
        p1, p2, p3 = (uow.btc_payouts.get_payout(f"p{n}") for n in (1, 2, 3))
    assert p1 is not None and (p1.status, p1.last_error) == ("waiting_fee", "fees too high")
    assert p2 is not None and (p2.status, p2.last_error) == ("queued", "no funds")
    assert p3 is not None and (p3.status, p3.last_error) == ("completed", None)


def test_payouts_move_into_a_batch_only_from_the_expected_status(
    database: bootstrap.Database,
) -> None:
    with database.uow() as uow:
        repo = uow.btc_payouts
        for n in (1, 2):
            repo.insert_payout(_payout(n))
        repo.set_payouts_waiting(["p2"], "waiting_fee", "fees")
        uow.commit()
    moves = [PayoutAssignment("p1", 0, 250), PayoutAssignment("p2", 1, 251)]
    with database.uow() as uow:
        assert uow.btc_payouts.assign_payouts("b1", moves, expected_statuses=("queued",)) == 1
        # The unit of work is dropped: fewer rows than asked means nothing is recorded.
    with database.uow() as uow:
        repo = uow.btc_payouts
        waiting = ("queued", "waiting_fee")
        assert repo.assign_payouts("b1", moves, expected_statuses=waiting) == 2
        uow.commit()
    with database.uow() as uow:
        repo = uow.btc_payouts
        assert repo.assign_payouts("b2", moves, expected_statuses=waiting) == 0
        # Past waiting, a payout moves on only within its own batch.
        mined = [replace(m, status="mined") for m in moves]
        assert repo.assign_payouts("b2", mined, expected_statuses=("batched",)) == 0
        assert repo.assign_payouts("b1", mined, expected_statuses=("batched",)) == 2
        assert [(p.id, p.vout, p.fee_sats, p.status) for p in repo.payouts_of_batch("b1")] == [
            ("p1", 0, 250, "mined"),
            ("p2", 1, 251, "mined"),
        ]
        assert repo.complete_payouts("b1", WHEN) == ["p1", "p2"]
        assert repo.complete_payouts("b1", WHEN) == []
        assert repo.set_payouts_error(["p1"], "note") == 1
        uow.commit()
    with database.uow() as uow:
        done = uow.btc_payouts.get_payout("p2")
    assert done is not None
    assert (done.status, done.completed_at, done.batch_id, done.last_error) == (
        "completed",
        WHEN,
        "b1",
        None,
    )


def test_batches_round_trip_and_update_only_as_expected(database: bootstrap.Database) -> None:
    batch = _batch("b1", (f"{TX[0]}:0", f"{TX[1]}:3"))
    with database.uow() as uow:
        assert uow.btc_payouts.insert_batch(batch)
        assert not uow.btc_payouts.insert_batch(replace(batch, txid=TX[31]))
        uow.commit()
    with database.uow() as uow:
        repo = uow.btc_payouts
        assert repo.get_batch("b1") == batch
        assert repo.get_batch("b2") is None
        bumped = replace(
            batch,
            status="broadcast",
            txid=TX[32],
            versions=(*batch.versions, {**batch.versions[0], "txid": TX[32]}),
            bumps=1,
            broadcast_height=7,
            updated_at=WHEN + timedelta(minutes=1),
        )
        assert not repo.update_batch(bumped, expected_txid=TX[33])
        assert not repo.update_batch(bumped, expected_status="broadcast")
        assert repo.update_batch(bumped, expected_txid=TX[30], expected_status="signed")
        uow.commit()
    with database.uow() as uow:
        repo = uow.btc_payouts
        assert repo.get_batch("b1") == bumped
        assert [b.id for b in repo.batches(("broadcast", "mined"))] == ["b1"]
        assert repo.batches(("signed",)) == []


def test_only_confirmed_unspent_unreserved_outputs_above_dust_are_spendable(
    database: bootstrap.Database,
) -> None:
    _add_address(database, 0)
    change = _add_address(database, 4, branch=1)
    big = _add_output(database, TX[0], 0, 90_000)
    credited = _add_output(database, TX[1], 1, 50_000, status="credited")
    in_change = _add_output(database, TX[2], 0, 70_000, address=change)
    _add_output(database, TX[3], 0, 80_000, status="seen")
    _add_output(database, TX[4], 0, 100, status="dust")
    _add_output(database, TX[5], 0, DUST - 1)
    _add_output(database, TX[6], 0, 80_000, spent=(TX[20], 5, "b5" * 32))
    _add_output(database, TX[7], 0, 80_000, reserved_by="other")
    _add_output(database, TX[8], 0, 80_000, status="reorged")
    with database.uow() as uow:
        repo = uow.btc_payouts
        spendable = repo.spendable_outputs(DUST)
        assert [o.outpoint for o in spendable] == [big, in_change, credited]
        assert [(o.branch, o.index) for o in spendable] == [(0, 0), (1, 4), (0, 0)]
        assert repo.outputs([in_change, f"{TX[9]}:0"])[in_change].amount_sats == 70_000
        assert repo.outputs([]) == {}
        spends = repo.spends([big, f"{TX[6]}:0"])
        assert list(spends) == [f"{TX[6]}:0"]
        assert (spends[f"{TX[6]}:0"].txid, spends[f"{TX[6]}:0"].height) == (TX[20], 5)


def test_reservations_are_all_or_nothing(database: bootstrap.Database) -> None:
    _add_address(database, 0)
    a = _add_output(database, TX[0], 0, 90_000)
    b = _add_output(database, TX[0], 1, 60_000)
    c = _add_output(database, TX[1], 0, 50_000)
    spent = _add_output(database, TX[2], 0, 50_000, spent=(TX[20], 5, "b5" * 32))
    with database.uow() as uow:
        repo = uow.btc_payouts
        assert repo.reserve_outputs([a, b], "b1")
        assert not repo.reserve_outputs([b, c], "b2")
        assert not repo.reserve_outputs([c, spent], "b3")
        assert not repo.reserve_outputs([], "b4")
        uow.commit()
    with database.uow() as uow:
        reserved = uow.btc_payouts.outputs([a, b, c])
    assert {o.outpoint: o.reserved_by for o in reserved.values()} == {a: "b1", b: "b1", c: None}


@pytest.mark.parametrize("status", ["reorged", "seen", "dust"])
def test_a_reservation_refuses_an_output_no_longer_spendable(
    database: bootstrap.Database, status: str
) -> None:
    """The watcher may mark an output reorged after spendable_outputs() read it: the reservation
    itself checks the status, so a batch never reserves (and signs) an output gone from the
    chain, and nothing of it is reserved."""
    _add_address(database, 0)
    good = _add_output(database, TX[0], 0, 90_000)
    gone = _add_output(database, TX[1], 0, 60_000, status=status)
    with database.uow() as uow:
        assert not uow.btc_payouts.reserve_outputs([good, gone], "b1")
        uow.commit()
    with database.uow() as uow:
        reserved = uow.btc_payouts.outputs([good, gone])
    assert {o.outpoint: o.reserved_by for o in reserved.values()} == {good: None, gone: None}


def test_the_cursor_change_addresses_and_alerts(database: bootstrap.Database) -> None:
    _add_address(database, 0)  # a deposit index does not count for change
    with database.uow() as uow:
        repo = uow.btc_payouts
        assert repo.cursor_height() is None
        assert repo.next_change_index() == 0
        assert repo.add_change_address("bcrt1qchange0", "0020c0", 0, WHEN)
        assert not repo.add_change_address("bcrt1qchange0b", "0020c1", 0, WHEN)
        assert not repo.add_change_address("bcrt1qchange0", "0020c2", 1, WHEN)
        assert repo.next_change_index() == 1
        alert = Alert("btc_batch_stuck:b1", "critical", "btc_batch_stuck", "spent elsewhere")
        assert repo.add_alert(alert, WHEN)
        assert not repo.add_alert(alert, WHEN)
        uow.commit()
    with database.engine.begin() as c:
        for height in (0, 1, 2):
            c.execute(
                sa.insert(btc_blocks).values(
                    height=height,
                    hash=f"{height:064x}",
                    previous_hash=None,
                    outputs=0,
                    processed_at=ts(WHEN),
                )
            )
    with database.uow() as uow:
        assert uow.btc_payouts.cursor_height() == 2
        assert [a.id for a in uow.books.alerts()] == ["btc_batch_stuck:b1"]
        assert uow.btc_watch is not None


# --- concurrency on PostgreSQL ------------------------------------------------------------------

WAIT_TIMEOUT_S = 20.0


def _wait_for_a_lock_wait(engine: sa.Engine, thread: threading.Thread) -> None:
    """Until another session waits on a row lock (bounded)."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < deadline and thread.is_alive():
        with engine.connect() as c:
            waiting = c.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    pytest.fail("the second transaction never waited for the first one's rows")


def _race(
    database: bootstrap.Database,
    first: Callable[[UnitOfWork], bool],
    second: Callable[[UnitOfWork], bool],
) -> tuple[bool, bool]:
    """``first`` runs in an open transaction; ``second`` starts in another thread, waits on its
    rows, and finishes once ``first`` commits."""
    holding = database.uow()
    uow_a = holding.__enter__()
    won_first = first(uow_a)
    outcome: dict[str, bool] = {}

    def other() -> None:
        with database.uow() as uow:
            outcome["second"] = second(uow)
            if outcome["second"]:
                uow.commit()

    thread = threading.Thread(target=other)
    thread.start()
    try:
        _wait_for_a_lock_wait(database.engine, thread)
        uow_a.commit()
    finally:
        holding.__exit__(None, None, None)
        thread.join(WAIT_TIMEOUT_S)
    assert not thread.is_alive()
    return won_first, outcome["second"]


@pytest.mark.postgres
def test_an_output_reserved_by_an_open_transaction_is_not_reserved_again(
    postgres_url: str,
) -> None:
    database = bootstrap.database(postgres_url)
    _add_address(database, 0)
    a = _add_output(database, TX[0], 0, 90_000)
    b = _add_output(database, TX[1], 0, 60_000)
    c = _add_output(database, TX[2], 0, 50_000)
    first, second = _race(
        database,
        lambda uow: uow.btc_payouts.reserve_outputs([a, b], "b1"),
        lambda uow: uow.btc_payouts.reserve_outputs([b, c], "b2"),
    )
    assert (first, second) == (True, False)
    with database.uow() as uow:
        reserved = uow.btc_payouts.outputs([a, b, c])
    # All or nothing: c, which nobody else had, is free again.
    assert {o.outpoint: o.reserved_by for o in reserved.values()} == {a: "b1", b: "b1", c: None}
    database.dispose()


@pytest.mark.postgres
def test_a_payout_batched_by_an_open_transaction_is_not_batched_again(
    postgres_url: str,
) -> None:
    database = bootstrap.database(postgres_url)
    with database.uow() as uow:
        uow.btc_payouts.insert_payout(_payout(1))
        uow.commit()
    waiting = ("queued", "waiting_fee")

    def batch(batch_id: str) -> Callable[[UnitOfWork], bool]:
        def move(uow: UnitOfWork) -> bool:
            moves = [PayoutAssignment("p1", 0, 100)]
            repo = uow.btc_payouts
            return bool(repo.assign_payouts(batch_id, moves, expected_statuses=waiting) == 1)

        return move

    assert _race(database, batch("b1"), batch("b2")) == (True, False)
    with database.uow() as uow:
        payout = uow.btc_payouts.get_payout("p1")
    assert payout is not None and (payout.batch_id, payout.status) == ("b1", "batched")
    database.dispose()


@pytest.mark.postgres
def test_two_threads_reserving_at_once_never_share_an_output(postgres_url: str) -> None:
    database = bootstrap.database(postgres_url)
    _add_address(database, 0)
    outpoints = [_add_output(database, TX[n], 0, 10_000 + n) for n in range(12)]
    won: dict[str, list[list[str]]] = {"t0": [], "t1": []}
    barrier = threading.Barrier(2)

    def reserve(name: str, offset: int) -> None:
        barrier.wait(WAIT_TIMEOUT_S)
        for n in range(24):
            # Overlapping pairs, in an order of each thread's own.
            wanted = [outpoints[(n + offset) % 12], outpoints[(n + offset + 1) % 12]]
            with database.uow() as uow:
                if uow.btc_payouts.reserve_outputs(wanted, f"{name}-{n}"):
                    uow.commit()
                    won[name].append(wanted)

    threads = [threading.Thread(target=reserve, args=(f"t{k}", 5 * k)) for k in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    taken = [o for name in won for pair in won[name] for o in pair]
    assert len(taken) == len(set(taken)) > 0
    with database.uow() as uow:
        stored = uow.btc_payouts.outputs(outpoints)
    assert sorted(o.outpoint for o in stored.values() if o.reserved_by) == sorted(taken)
    database.dispose()


@pytest.mark.postgres
def test_two_payout_workers_at_once_pay_each_payout_once(postgres_url: str, tmp_path: Path) -> None:
    database = bootstrap.database(postgres_url)
    chain_params = CHAINS["regtest"]
    sandbox = create_sandbox_custody(tmp_path / "keys", chain_params)
    keys = load_signing_keys(sandbox.key_files[:2], chain=chain_params)
    wallet = EmbitCustodyWallet(sandbox.descriptor, chain_params, keys)
    settings = BitcoinSettings(chain=chain_params, confirmations_min=2, payout_batch_window_s=0)
    chain = FakeChain(chain_params, fee_rate_sat_vb=Decimal(3))
    ticks = iter(range(10**6))

    def clock() -> datetime:
        return WHEN + timedelta(milliseconds=next(ticks))

    watcher = DepositWatcher(database.uow, chain, wallet, settings, clock)
    with database.uow() as uow:
        uow.reference.add_customer("alice", "Alice")
        uow.commit()
    for amount in (300_000, 250_000):
        address = deposit_address(database.uow, wallet, "alice", new=True, clock=clock)
        chain.fund(address.script_hex, amount)
    chain.mine(2)
    watcher.run_once()
    destinations = {}
    for n in range(6):
        script = f"0014{n + 1:040x}"
        destination = wallet.address_of(script)
        assert destination is not None
        destinations[f"p{n}"] = script
        request_payout(
            database.uow,
            wallet,
            settings,
            payout_id=f"p{n}",
            address=destination,
            amount_sats=60_000,
            kind="redemption",
            requested_by="router",
            clock=clock,
        )
    barrier = threading.Barrier(2)
    both_signed = threading.Barrier(2)
    failures: list[BaseException] = []
    lost: list[str] = []

    class SigningTogether:
        """The wallet, where the first signature of each worker waits for the other's: both
        chose the same payouts and coins before either records anything."""

        def __init__(self) -> None:
            self.first = True

        def __getattr__(self, name: str) -> Any:
            return getattr(wallet, name)

        def sign(self, inputs: Any, outputs: Any, *, rbf: bool = True) -> Any:
            signed = wallet.sign(inputs, outputs, rbf=rbf)
            if self.first:
                self.first = False
                both_signed.wait(WAIT_TIMEOUT_S)
            return signed

    def work() -> None:
        worker = PayoutWorker(database.uow, chain, SigningTogether(), settings, clock)
        try:
            for _ in range(4):
                barrier.wait(WAIT_TIMEOUT_S)
                lost.extend(worker.run_once().errors)
        except BaseException as exc:  # reported below, in the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert failures == []
    assert len(lost) == 1 and "taken meanwhile" in lost[0]
    worker = PayoutWorker(database.uow, chain, wallet, settings, clock)
    for _ in range(4):
        chain.mine()
        watcher.run_once()
        worker.run_once()
    views = {view.id: view for view in list_payouts(database.uow)}
    assert {view.status for view in views.values()} == {"completed"}
    paid: dict[str, int] = {}
    for height in range(chain.tip_height + 1):
        for tx in chain.getblock(chain.getblockhash(height))["tx"]:
            for out in tx["vout"]:
                for payout_id, script in destinations.items():
                    if out["scriptPubKey"]["hex"] == script:
                        paid[payout_id] = paid.get(payout_id, 0) + 1
    assert paid == dict.fromkeys(destinations, 1)
    database.dispose()


def test_an_operators_decisions_and_a_reopened_batch_on_both_engines(
    database: bootstrap.Database,
) -> None:
    """What cancelling, releasing an orphaned batch and reopening a confirmed one write: a
    payout is cancelled only while unbatched; a batch is updated only at the bump count read;
    a released batch's surviving inputs are those reserved by it still confirmed and unspent;
    requeued payouts keep the batch (they wait for its successor), are not cancellable and go
    only into a batch naming it as predecessor, which takes over every surviving input or
    none; completed payouts go back to broadcast; a confirmed batch with an input no longer
    spent is found (and only within the height asked)."""
    _add_address(database, 0)
    a = _add_output(database, TX[0], 0, 90_000, reserved_by="b1")
    b = _add_output(database, TX[1], 0, 60_000, status="reorged", reserved_by="b1")
    spent = _add_output(database, TX[2], 0, 50_000, reserved_by="b2", spent=(TX[20], 5, "b5" * 32))
    cleared = _add_output(database, TX[3], 0, 50_000, reserved_by="b3")
    c = _add_output(database, TX[4], 0, 40_000, reserved_by="b4")
    d = _add_output(database, TX[5], 0, 40_000, status="credited", reserved_by="b4")
    with database.uow() as uow:
        repo = uow.btc_payouts
        for n in range(1, 5):
            repo.insert_payout(_payout(n, minutes=n))
        assert repo.insert_batch(replace(_batch("b1", (a, b)), status="orphaned"))
        assert repo.insert_batch(
            replace(_batch("b2", (spent,)), status="confirmed", mined_height=5)
        )
        assert repo.insert_batch(
            replace(_batch("b3", (cleared,)), status="confirmed", mined_height=6)
        )
        repo.assign_payouts(
            "b1",
            [PayoutAssignment("p1", 0, 500, "broadcast"), PayoutAssignment("p2", 1, 500)],
            expected_statuses=("queued",),
        )
        repo.assign_payouts(
            "b3", [PayoutAssignment("p3", 0, 500, "completed")], expected_statuses=("queued",)
        )
        uow.commit()
    with database.uow() as uow:
        repo = uow.btc_payouts
        assert not repo.cancel_payout("p1", "too late")
        assert repo.cancel_payout("p4", "cancelled by ops")
        assert not repo.cancel_payout("p4", "again")
        batch = repo.get_batch("b1", lock=True)
        assert batch is not None
        assert not repo.update_batch(
            replace(batch, status="released"), expected_status="orphaned", expected_bumps=1
        )
        assert repo.update_batch(
            replace(batch, status="released"), expected_status="orphaned", expected_bumps=0
        )
        assert [o.outpoint for o in repo.reserved_spendable("b1")] == [a]  # b is reorged
        assert repo.reserved_spendable("b2") == []  # spent
        assert repo.requeue_payouts("b1", "queued again") == ["p1", "p2"]
        assert [p.id for p in repo.payouts(("queued",), in_batch=True)] == ["p1", "p2"]
        assert [p.id for p in repo.payouts(("queued",), in_batch=False)] == []
        assert not repo.cancel_payout("p1", "waits for the successor")
        # Another batch (say from a read made before the release) cannot take them.
        successor = PayoutAssignment("p1", 0, 400), PayoutAssignment("p2", 1, 400)
        assert repo.assign_payouts("b9", successor, expected_statuses=("queued",)) == 0
        assert repo.take_over_outputs([], "b1", "b9") is False
        assert repo.take_over_outputs([b], "b1", "b9") is False  # reorged: not surviving
        assert repo.take_over_outputs([spent], "b2", "b9") is False
        assert repo.take_over_outputs([a], "b1", "b9")
        # All surviving inputs or none: d would be left behind.
        assert repo.take_over_outputs([c], "b4", "b8") is False
        assert {o.reserved_by for o in repo.outputs([c, d]).values()} == {"b4"}
        assert repo.reserved_spendable("b1") == []
        moved = repo.assign_payouts(
            "b9", successor, expected_statuses=("queued",), predecessor="b1"
        )
        assert moved == 2
        assert repo.confirmed_batches_unspent(0) == ["b3"]
        assert repo.confirmed_batches_unspent(7) == []
        assert repo.reopen_payouts("b3", "reorged") == ["p3"]
        uow.commit()
    with database.uow() as uow:
        repo = uow.btc_payouts
        payouts = {p.id: p for p in repo.payouts()}
        outputs = repo.outputs([a, b, spent])
        released = repo.get_batch("b1")
    assert released is not None and released.status == "released"
    assert {o: outputs[o].reserved_by for o in (a, b, spent)} == {a: "b9", b: "b1", spent: "b2"}
    assert [(payouts[p].status, payouts[p].batch_id, payouts[p].vout) for p in ("p1", "p2")] == [
        ("batched", "b9", 0),
        ("batched", "b9", 1),
    ]
    assert (payouts["p3"].status, payouts["p3"].completed_at) == ("broadcast", None)
    assert (payouts["p4"].status, payouts["p4"].last_error) == ("cancelled", "cancelled by ops")
