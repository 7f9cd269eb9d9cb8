"""The deposit watcher's repository (``uow.btc_watch``) on SQLite and PostgreSQL alike, and
concurrent address issuance on PostgreSQL.

Covers: addresses (a taken index, address or script is refused by the database and reported, the
customer's latest address, funding), blocks (a height is claimed once and only on top of its
parent, the cursor, hashes by height, rolling back to a fork point only under the tip it was
found under), outputs (recorded once per outpoint; a reorged row comes back as the same row
while a row in the chain is never overwritten; spends; confirmations with a credited deposit
coming back credited), ``mark_credited`` (confirmed deposits only, once), alerts (an id raises
once) and the reads. Each test writes through units of work and reads back through fresh ones.

Concurrency (PostgreSQL): a rollback and a block on top of the same tip take turns (the second
waits for the first's lock, then does nothing); a transaction that inserts an index another open
transaction holds waits for it (seen in ``pg_stat_activity``) and, once that one commits, is
told the index is taken; then many issuances from two threads at once, each through
``deposit_address`` with the real custody wallet, give every customer a different address and
every index exactly once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS
from sluice.domain.deposits import Alert
from sluice.domain.errors import InvalidOperationStateError, NotFoundError
from sluice.ports import UnitOfWork
from sluice.ports.bitcoin_watch import (
    CustodyAddress,
    FoundOutput,
    FoundSpend,
    WatchedBlock,
)
from sluice.services.btc_addresses import deposit_address

WHEN = datetime(2026, 12, 5, 6, 0, 0, tzinfo=UTC)
TXA = "aa" * 32
TXB = "bb" * 32
TXC = "cc" * 32
H = ["%064x" % (0xB10C00 + n) for n in range(20)]  # block hashes by height
ALT = ["%064x" % (0xA17000 + n) for n in range(20)]  # another branch's


@pytest.fixture
def database(database_url: str) -> Iterator[bootstrap.Database]:
    db = bootstrap.database(database_url)
    with db.uow() as uow:
        uow.reference.add_customer("alice", "Alice")
        uow.reference.add_customer("bob", "Bob")
        uow.commit()
    yield db
    db.dispose()


def _address(n: int, customer: str | None, branch: int = 0) -> CustodyAddress:
    return CustodyAddress(
        address=f"bcrt1q{branch}x{n:04d}",
        script_hex=f"0020{branch:02x}{n:062x}",
        branch=branch,
        index=n,
        customer_id=customer,
        created_at=WHEN,
    )


def _found(txid: str, vout: int, amount: int, *, status: str = "seen") -> FoundOutput:
    a = _address(0, "alice")
    return FoundOutput(
        txid=txid,
        vout=vout,
        kind="deposit",
        address=a.address,
        script_hex=a.script_hex,
        customer_id="alice",
        amount_sats=amount,
        status=status,  # type: ignore[arg-type]
        input_outpoints=(f"{'ee' * 32}:1",),
    )


def _apply(db: bootstrap.Database, height: int, outputs: list[FoundOutput], **kw: object) -> None:
    hashes = kw.get("hashes", H)
    assert isinstance(hashes, list)
    with db.uow() as uow:
        previous = kw.get("previous", hashes[height - 1] if height else None)
        assert previous is None or isinstance(previous, str)
        assert uow.btc_watch.claim_block(
            WatchedBlock(height, hashes[height], previous, len(outputs)), WHEN
        )
        uow.btc_watch.record_outputs(outputs, height, hashes[height], WHEN)
        uow.commit()


def test_addresses_are_unique_by_index_address_and_script(database: bootstrap.Database) -> None:
    with database.uow() as uow:
        repo = uow.btc_watch
        assert repo.customer_exists("alice") and not repo.customer_exists("nobody")
        assert repo.next_index(0) == 0 and repo.latest_address("alice") is None
        assert repo.add_address(_address(0, "alice"))
        assert repo.add_address(_address(1, "alice"))
        # The same index for another customer, the same address or the same script: refused,
        # and the transaction goes on (no error to recover from).
        assert not repo.add_address(replace(_address(1, "bob"), address="x", script_hex="00"))
        assert not repo.add_address(replace(_address(7, "bob"), address=_address(0, None).address))
        assert not repo.add_address(
            replace(_address(8, "bob"), script_hex=_address(1, None).script_hex)
        )
        assert repo.add_address(_address(0, None, branch=1))  # change has its own indexes
        uow.commit()
    with database.uow() as uow:
        repo = uow.btc_watch
        assert repo.next_index(0) == 2 and repo.next_index(1) == 1
        assert repo.address_count() == 3
        latest = repo.latest_address("alice")
        assert latest is not None and latest.index == 1 and latest.funded_at is None
        assert [a.index for a in repo.addresses(customer_id="alice")] == [0, 1]
        assert [a.branch for a in repo.addresses(branch=1)] == [1]
        assert repo.latest_address("bob") is None
        repo.mark_funded([latest.address, latest.address], WHEN)
        repo.mark_funded([latest.address], WHEN + timedelta(hours=1))  # the first stays
        uow.commit()
    with database.uow() as uow:
        funded = uow.btc_watch.latest_address("alice")
        assert funded is not None and funded.funded_at == WHEN


def test_a_block_height_is_claimed_once_and_rolled_back_to_a_fork(
    database: bootstrap.Database,
) -> None:
    with database.uow() as uow:
        assert uow.btc_watch.cursor() is None and uow.btc_watch.lowest_height() is None
    for height in range(5, 10):
        _apply(database, height, [])
    with database.uow() as uow:
        repo = uow.btc_watch
        assert not repo.claim_block(WatchedBlock(9, ALT[9], H[8]), WHEN)  # height taken
        assert not repo.claim_block(WatchedBlock(10, H[9], H[9]), WHEN)  # hash taken
        # Not on top of the stored row at height - 1 (fetched from another branch): refused.
        assert not repo.claim_block(WatchedBlock(10, ALT[10], ALT[9]), WHEN)
        # No row at height - 1 while blocks are stored: not the first block, refused.
        assert not repo.claim_block(WatchedBlock(12, ALT[12], H[11]), WHEN)
        assert repo.cursor() == WatchedBlock(9, H[9], H[8], 0)
        assert repo.lowest_height() == 5
        assert repo.block_hashes(4, 6) == {5: H[5], 6: H[6]}
        # Under another tip than the stored one (moved by another watcher): nothing is undone.
        assert repo.holds_tip(WatchedBlock(9, H[9], H[8]))
        assert not repo.holds_tip(WatchedBlock(9, ALT[9], H[8]))
        assert not repo.holds_tip(WatchedBlock(8, H[8], H[7]))
        assert repo.roll_back(7, tip=WatchedBlock(8, H[8], H[7])) is None
        assert repo.roll_back(7, tip=WatchedBlock(9, ALT[9], H[8])) is None
        assert repo.cursor() == WatchedBlock(9, H[9], H[8], 0)
        rolled = repo.roll_back(7, tip=WatchedBlock(9, H[9], H[8]))
        assert rolled is not None and [b.height for b in rolled.blocks] == [9, 8]
        uow.commit()
    with database.uow() as uow:
        cursor = uow.btc_watch.cursor()
        assert cursor is not None and cursor.height == 7
        # The new branch goes on top of the fork point.
        assert uow.btc_watch.claim_block(WatchedBlock(8, ALT[8], H[7]), WHEN)
        uow.commit()


def test_outputs_spends_confirmations_and_a_reorg(database: bootstrap.Database) -> None:
    _apply(database, 1, [_found(TXA, 0, 50_000), _found(TXA, 1, 300, status="dust")])
    _apply(database, 2, [_found(TXB, 3, 70_000)])
    with database.uow() as uow:
        repo = uow.btc_watch
        assert {o.outpoint for o in repo.unspent_outputs()} == {
            f"{TXA}:0",
            f"{TXA}:1",
            f"{TXB}:3",
        }
        assert repo.seen_heights() == {1: 1, 2: 1}  # dust is not waiting for confirmations
        assert repo.record_spends([FoundSpend(TXA, 0, TXC)], 2, H[2]) == 1
        confirmed = repo.confirm(1, WHEN)  # dust is never confirmed
        assert [(o.outpoint, o.status) for o in confirmed] == [(f"{TXA}:0", "confirmed")]
        assert repo.confirm(1, WHEN) == []  # once
        uow.commit()
    with database.uow() as uow:
        repo = uow.btc_watch
        spent = repo.output(TXA, 0)
        assert spent is not None
        assert (spent.spent_txid, spent.spent_height, spent.spent_block_hash) == (TXC, 2, H[2])
        assert spent.input_outpoints == (f"{'ee' * 32}:1",)
        assert spent.confirmed_at == WHEN and spent.first_seen_at == WHEN
        assert {o.outpoint for o in repo.unspent_outputs()} == {f"{TXA}:1", f"{TXB}:3"}
        # Newest block first.
        assert [o.outpoint for o in repo.outputs()] == [f"{TXB}:3", f"{TXA}:0", f"{TXA}:1"]
        assert [o.outpoint for o in repo.outputs(statuses=("dust",))] == [f"{TXA}:1"]
        assert repo.outputs(customer_id="bob") == []
        credited = repo.mark_credited(TXA, 0, at=WHEN)
        assert credited.status == "credited" and credited.credited_at == WHEN
        uow.commit()
    # A reorg back to block 0 takes both blocks: outputs reorged, the spend in block 2 cleared.
    with database.uow() as uow:
        rolled = uow.btc_watch.roll_back(0, tip=WatchedBlock(2, H[2], H[1], 1))
        assert rolled is not None
        assert [(o.outpoint, o.status) for o in rolled.reorged] == [
            (f"{TXA}:0", "credited"),
            (f"{TXA}:1", "dust"),
            (f"{TXB}:3", "seen"),
        ]
        assert rolled.spends_cleared == 1 and len(rolled.blocks) == 2
        uow.commit()
    with database.uow() as uow:
        repo = uow.btc_watch
        gone = repo.output(TXA, 0)
        assert gone is not None and gone.status == "reorged" and gone.block_height is None
        assert gone.spent_txid is None and gone.confirmed_at is None
        assert gone.credited_at == WHEN  # kept: it was credited
        assert repo.unspent_outputs() == []
        # Out of the chain: no block to order by, so by outpoint.
        assert [o.outpoint for o in repo.outputs()] == [f"{TXA}:0", f"{TXA}:1", f"{TXB}:3"]
    # The new branch holds TXA again, in another block: the same rows, seen again.
    _apply(
        database,
        1,
        [_found(TXA, 0, 50_000), _found(TXA, 1, 300, status="dust")],
        hashes=ALT,
        previous=H[0],
    )
    with database.uow() as uow:
        repo = uow.btc_watch
        back = repo.output(TXA, 0)
        assert back is not None and back.status == "seen" and back.block_hash == ALT[1]
        dust = repo.output(TXA, 1)
        assert dust is not None and dust.status == "dust"
        # Credited before: it comes back credited, never confirmed (the mint credits confirmed).
        (again,) = repo.confirm(1, WHEN + timedelta(hours=1))
        assert again.outpoint == f"{TXA}:0" and again.status == "credited"
        with pytest.raises(InvalidOperationStateError, match="credited before"):
            repo.mark_credited(TXA, 0, at=WHEN)
        uow.commit()


def test_an_outpoint_in_the_chain_is_never_overwritten(database: bootstrap.Database) -> None:
    _apply(database, 1, [_found(TXA, 0, 50_000)])
    with database.uow() as uow:
        uow.btc_watch.confirm(1, WHEN)
        uow.commit()
    _apply(database, 2, [_found(TXA, 0, 1)])  # the same outpoint again (impossible on a chain)
    with database.uow() as uow:
        row = uow.btc_watch.output(TXA, 0)
        assert row is not None
        assert (row.status, row.block_height, row.amount_sats) == ("confirmed", 1, 50_000)


def test_mark_credited_only_from_confirmed(database: bootstrap.Database) -> None:
    change = replace(_found(TXB, 0, 90_000), kind="change", customer_id=None)
    _apply(database, 1, [_found(TXA, 0, 50_000), _found(TXA, 1, 300, status="dust"), change])
    with database.uow() as uow:
        repo = uow.btc_watch
        with pytest.raises(InvalidOperationStateError, match="seen, not confirmed"):
            repo.mark_credited(TXA, 0, at=WHEN)
        with pytest.raises(InvalidOperationStateError, match="dust, not confirmed"):
            repo.mark_credited(TXA, 1, at=WHEN)
        with pytest.raises(NotFoundError):
            repo.mark_credited(TXC, 0, at=WHEN)
        assert {o.outpoint for o in repo.confirm(1, WHEN)} == {f"{TXA}:0", f"{TXB}:0"}
        with pytest.raises(InvalidOperationStateError, match="change, not a deposit"):
            repo.mark_credited(TXB, 0, at=WHEN)
        credited = repo.mark_credited(TXA, 0)  # at: now
        assert credited.status == "credited" and credited.credited_at is not None
        with pytest.raises(InvalidOperationStateError, match="credited, not confirmed"):
            repo.mark_credited(TXA, 0, at=WHEN)
        uow.commit()


def test_an_alert_id_is_raised_once(database: bootstrap.Database) -> None:
    alert = Alert("btc-reorged:x:0:h", "critical", "btc_deposit_reorged", "gone", None, {"a": "b"})
    with database.uow() as uow:
        assert uow.btc_watch.add_alerts([alert, alert], WHEN) == 1
        uow.commit()
    with database.uow() as uow:
        assert uow.btc_watch.add_alerts([alert], WHEN) == 0
        (stored,) = uow.books.alerts()
        assert stored == alert


# --- concurrency on PostgreSQL ------------------------------------------------------------------

WAIT_TIMEOUT_S = 20.0


def _waiting_sessions(engine: sa.Engine) -> int:
    with engine.connect() as c:
        return int(
            c.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar_one()
        )


@pytest.mark.postgres
def test_an_index_held_by_an_open_transaction_is_taken_once_it_commits(
    postgres_url: str,
) -> None:
    database = bootstrap.database(postgres_url)
    with database.uow() as uow:
        uow.reference.add_customer("alice", "Alice")
        uow.reference.add_customer("bob", "Bob")
        uow.commit()
    holding = database.uow()
    uow_a = holding.__enter__()
    assert uow_a.btc_watch.add_address(_address(0, "alice"))
    outcome: dict[str, bool | int] = {}

    def second() -> None:
        with database.uow() as uow:
            outcome["first_try"] = uow.btc_watch.add_address(
                replace(_address(0, "bob"), address="other", script_hex="0020ff")
            )
            outcome["next"] = uow.btc_watch.next_index(0)
            uow.commit()

    thread = threading.Thread(target=second)
    thread.start()
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while _waiting_sessions(database.engine) < 1:
        assert time.monotonic() < deadline, "the second insert never waited for the first"
        time.sleep(0.01)
    assert "first_try" not in outcome
    uow_a.commit()
    holding.__exit__(None, None, None)
    thread.join(WAIT_TIMEOUT_S)
    assert not thread.is_alive()
    assert outcome == {"first_try": False, "next": 1}
    database.dispose()


@pytest.mark.postgres
def test_concurrent_issuance_never_gives_an_index_twice(postgres_url: str, tmp_path: Path) -> None:
    chain = CHAINS["regtest"]
    custody = create_sandbox_custody(tmp_path / "keys", chain)
    wallet = EmbitCustodyWallet(custody.descriptor, chain, [])
    database = bootstrap.database(postgres_url)
    per_thread = 25
    customers = [[f"t{t}-c{n}" for n in range(per_thread)] for t in range(2)]
    with database.uow() as uow:
        for group in customers:
            for customer in group:
                uow.reference.add_customer(customer, customer)
        uow.commit()
    barrier = threading.Barrier(2)
    issued: dict[str, str] = {}
    errors: list[BaseException] = []

    def issue(group: list[str]) -> None:
        try:
            barrier.wait(WAIT_TIMEOUT_S)
            for customer in group:
                derived = deposit_address(
                    database.uow, wallet, customer, clock=lambda: datetime.now(UTC)
                )
                issued[customer] = derived.address
                # The same customer again at once: their current address, not a new one.
                again = deposit_address(
                    database.uow, wallet, customer, clock=lambda: datetime.now(UTC)
                )
                assert again.address == derived.address
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=issue, args=(group,)) for group in customers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert len(issued) == 2 * per_thread
    assert len(set(issued.values())) == 2 * per_thread
    with database.uow() as uow:
        rows = uow.btc_watch.addresses(branch=0)
    assert sorted(a.index for a in rows) == list(range(2 * per_thread))
    assert {a.customer_id: a.address for a in rows} == issued
    for row in rows:
        assert wallet.derive(0, row.index).address == row.address
    database.dispose()


@pytest.mark.postgres
@pytest.mark.parametrize("first", ["roll_back", "claim"])
def test_a_rollback_and_a_block_on_top_take_turns(postgres_url: str, first: str) -> None:
    """Two watchers change the stored chain's top at once: one rolls back to block 5 from the
    tip 7 it found its fork point under, the other applies block 8 on top of that 7. Whichever
    holds its lock first wins; the second waits for it (seen in ``pg_stat_activity``) and then
    does nothing: never a block 8 above a gap, never a rollback that undoes a block it did not
    see."""
    database = bootstrap.database(postgres_url)
    for height in range(0, 8):
        _apply(database, height, [])
    tip = WatchedBlock(7, H[7], H[6])

    def roll_back(uow: UnitOfWork) -> bool:
        return uow.btc_watch.roll_back(5, tip=tip) is not None

    def claim(uow: UnitOfWork) -> bool:
        return uow.btc_watch.claim_block(WatchedBlock(8, H[8], H[7]), WHEN)

    actions: dict[str, Callable[[UnitOfWork], bool]] = {"roll_back": roll_back, "claim": claim}
    second_name = "claim" if first == "roll_back" else "roll_back"
    holding = database.uow()
    uow_a = holding.__enter__()
    assert actions[first](uow_a)
    outcome: dict[str, bool] = {}

    def second() -> None:
        with database.uow() as uow:
            outcome[second_name] = actions[second_name](uow)
            uow.commit()

    thread = threading.Thread(target=second)
    thread.start()
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while _waiting_sessions(database.engine) < 1:
        assert time.monotonic() < deadline, "the second change never waited for the first"
        time.sleep(0.01)
    assert outcome == {}
    uow_a.commit()
    holding.__exit__(None, None, None)
    thread.join(WAIT_TIMEOUT_S)
    assert not thread.is_alive()
    assert outcome == {second_name: False}
    with database.uow() as uow:
        cursor = uow.btc_watch.cursor()
    assert cursor is not None
    assert cursor.height == (5 if first == "roll_back" else 8)
    database.dispose()
