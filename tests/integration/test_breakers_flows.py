"""The ``bitcoin``, ``payouts`` and ``nats`` circuit breakers pausing their flows, losing nothing
and doubling nothing, on SQLite and PostgreSQL.

* ``bitcoin``: the in-memory node goes down, the watcher's calls fail until the breaker opens;
  the node is back but the watcher part waits while the breaker is open (no block read, no
  deposit seen); after the wait its probes close it and the deposit is seen and confirmed once.
* ``payouts``: the riskiest: a batch is signed and committed, then an operator forces the
  breaker open before it is broadcast (the hook between recording and sending). The broadcast is
  refused, the batch stays signed (nothing sent, no attempt or failure recorded), the payouts
  part waits; given back, the very transaction recorded is broadcast, once, and confirms.
* ``nats``: forced open, the relay publishes nothing (every row waits); given back, everything
  is published once, in order per subject, on the real NATS JetStream at 127.0.0.1:4222.

The breakers are the process's (``configure_breakers``, as ``sluice serve`` has them: attached
to the database, so forcing goes through the operator's path ``force_breaker``, audited, and
each opening writes its alert and ``breaker_opened``), on the test's monotonic clock.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.breaker import BreakerSettings
from sluice.domain.events import Event
from sluice.ports.bitcoin import NotFoundError
from sluice.server.bitcoin import payouts_part, watcher_part
from sluice.server.loop import ServiceLoop
from sluice.services.breaker_proxies import GuardedBitcoinNode
from sluice.services.breakers import Breakers, configure_breakers, force_breaker
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.events import emit
from sluice.services.relay import Relay
from sluice.store.relay_lock import relay_lock
from tests.integration.nats_support import NatsTarget, read_stream, stream_state
from tests.integration.test_events_relay import jetstream
from tests.unit.bitcoin.test_payouts import CHAIN, Clock, Custody
from tests.unit.bitcoin.test_payouts import SETTINGS as BTC

pytest_plugins = ["tests.integration.nats_support"]


def _wall() -> datetime:
    return datetime.now(UTC)


SETTINGS = BreakerSettings(window=6, min_calls=3, failure_rate=0.5, open_s=30.0, probes=1)


class Monotonic:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    sandbox = create_sandbox_custody(tmp_path_factory.mktemp("keys") / "custody", CHAIN)
    keys = load_signing_keys(sandbox.key_files[:2], chain=CHAIN)
    return EmbitCustodyWallet(sandbox.descriptor, CHAIN, keys)


@pytest.fixture
def db(database_url: str) -> Iterator[bootstrap.Database]:
    database = bootstrap.database(database_url)
    try:
        yield database
    finally:
        database.dispose()


@pytest.fixture
def custody(db: bootstrap.Database, wallet: EmbitCustodyWallet) -> Custody:
    with db.uow() as uow:
        uow.reference.add_customer("alice", "Alice")
        uow.commit()
    return Custody(db, FakeChain(CHAIN, fee_rate_sat_vb=Decimal(5)), wallet, Clock())


@pytest.fixture
def monotonic() -> Iterator[Monotonic]:
    yield Monotonic()
    configure_breakers()  # the process's breakers back to the defaults, detached


def attach(db: bootstrap.Database, monotonic: Monotonic, clock: Any) -> Breakers:
    return configure_breakers(
        default=SETTINGS, monotonic=monotonic, uow_factory=db.uow, clock=clock
    )


def force(db: bootstrap.Database, flow: str, state: str, at: Any) -> None:
    force_breaker(
        db.uow, flow=flow, state=state, reason="maintenance window", actor="ops-1", at=at()
    )


def outbox(db: bootstrap.Database, type: str | None = None) -> list[Event]:
    with db.uow() as uow:
        return [row.event for row in uow.events.find(limit=100_000, type=type)]


def payloads(db: bootstrap.Database, type: str) -> list[dict[str, Any]]:
    return [dict(e.payload) for e in outbox(db, type)]


def audited(db: bootstrap.Database, operation: str) -> int:
    with db.uow() as uow:
        return sum(1 for r in uow.audit.records(limit=10_000) if r.entry.operation == operation)


# --- bitcoin -------------------------------------------------------------------------------------


def test_the_bitcoin_breaker_opens_on_node_failures_and_the_watcher_waits_then_catches_up(
    custody: Custody, monotonic: Monotonic
) -> None:
    registry = attach(custody.database, monotonic, custody.clock)
    address = deposit_address(custody.uow, custody.wallet, "alice", clock=custody.clock)
    txid, vout = custody.chain.fund(address.script_hex, 250_000)
    outpoint = f"{txid}:{vout}"
    custody.chain.mine(1)
    node = GuardedBitcoinNode(custody.chain)
    watcher = DepositWatcher(custody.uow, node, custody.wallet, BTC, custody.clock)
    loop = ServiceLoop([watcher_part(watcher.run_once)], name="bitcoin-breaker-test")

    # The node is down: the watcher's calls fail until the breaker opens.
    custody.chain.down = True
    for _ in range(SETTINGS.min_calls):
        if registry.states()["bitcoin"] == "open":
            break
        loop.run_round()
        assert loop.status()["bitcoin_watcher"].skipped is None
    assert registry.states()["bitcoin"] == "open"
    assert [p["flow"] for p in payloads(custody.database, "breaker_opened")] == ["bitcoin"]

    # The node is back, but the breaker is open: the watcher part waits — nothing read.
    custody.chain.down = False
    custody.chain.mine(1)
    for _ in range(3):
        loop.run_round()
        assert loop.status()["bitcoin_watcher"].skipped == "bitcoin circuit breaker open"
    assert outbox(custody.database, "btc_deposit_seen") == []
    with custody.uow() as uow:
        assert uow.btc_watch.output(txid, vout) is None

    # After the wait the probe goes through and closes it; the watcher catches up.
    monotonic.now += SETTINGS.open_s
    assert registry.states()["bitcoin"] == "half_open"
    loop.run_round()
    assert registry.states()["bitcoin"] == "closed"
    assert loop.status()["bitcoin_watcher"].skipped is None
    assert [p["old_state"] for p in payloads(custody.database, "breaker_closed")] == ["half_open"]
    custody.chain.mine(BTC.confirmations_min)
    for _ in range(3):
        loop.run_round()
    assert [e.aggregate_id for e in outbox(custody.database, "btc_deposit_seen")] == [outpoint]
    assert [e.aggregate_id for e in outbox(custody.database, "btc_deposit_confirmed")] == [outpoint]
    with custody.uow() as uow:
        output = uow.btc_watch.output(txid, vout)
        assert output is not None and output.status == "confirmed"
        assert uow.btc_payouts.cursor_height() == custody.chain.tip_height


# --- payouts -------------------------------------------------------------------------------------


def in_mempool(chain: FakeChain, txid: str) -> bool:
    try:
        chain.getmempoolentry(txid)
    except NotFoundError:
        return False
    return True


def test_a_batch_signed_then_refused_by_the_payouts_breaker_is_broadcast_once_after(
    custody: Custody, monotonic: Monotonic
) -> None:
    db = custody.database
    registry = attach(db, monotonic, custody.clock)
    custody.fund(400_000)
    custody.request("p1", 150_000)
    custody.request("p2", 60_000)
    forced: list[str] = []

    def operator_opens_it(batch: Any) -> None:
        # Between the batch's signing (committed) and its broadcast.
        if not forced:
            force(db, "payouts", "open", custody.clock)
            forced.append(batch.id)

    worker = custody.worker(node=GuardedBitcoinNode(custody.chain), after_record=operator_opens_it)
    loop = ServiceLoop([payouts_part(worker.run_once)], name="payouts-breaker-test")

    loop.run_round()
    assert registry.states()["payouts"] == "open"
    assert "payouts circuit breaker is open" in (loop.status()["bitcoin_payouts"].skipped or "")
    (batch,) = custody.batches()
    assert forced == [batch.id]
    assert (batch.status, batch.last_error) == ("signed", None)
    assert not in_mempool(custody.chain, batch.txid)
    assert {p.status for p in custody.payouts().values()} == {"batched"}
    assert outbox(db, "btc_payout_broadcast") == []
    assert outbox(db, "btc_payout_failed") == []

    # While it is open the part waits: nothing sent, the same signed batch kept.
    monotonic.now += 3_600  # forced: no half-open
    for _ in range(2):
        loop.run_round()
        assert loop.status()["bitcoin_payouts"].skipped == "payouts circuit breaker open"
    assert [(b.id, b.status, b.txid) for b in custody.batches()] == [
        (batch.id, "signed", batch.txid)
    ]
    assert not in_mempool(custody.chain, batch.txid)

    # Given back: the very transaction recorded goes out, once.
    force(db, "payouts", "auto", custody.clock)
    assert registry.states()["payouts"] == "closed"
    loop.run_round()
    assert loop.status()["bitcoin_payouts"].skipped is None
    (sent,) = custody.batches()
    assert (sent.id, sent.txid, sent.status) == (batch.id, batch.txid, "broadcast")
    assert in_mempool(custody.chain, batch.txid)
    loop.run_round()  # in the mempool: nothing sent again
    broadcast = outbox(db, "btc_payout_broadcast")
    assert sorted(e.aggregate_id for e in broadcast) == ["p1", "p2"]
    assert {e.payload["txid"] for e in broadcast} == {batch.txid}

    custody.settle(worker)
    views = custody.payouts()
    assert {views["p1"].status, views["p2"].status} == {"completed"}
    assert [txid for txid, _vout, _sats in custody.paid("p1")] == [batch.txid]
    assert [txid for txid, _vout, _sats in custody.paid("p2")] == [batch.txid]
    assert len(custody.batches()) == 1
    assert sorted(e.aggregate_id for e in outbox(db, "btc_payout_confirmed")) == ["p1", "p2"]
    assert len(outbox(db, "btc_payout_broadcast")) == 2
    assert audited(db, "breaker_forced") == 2


# --- nats ----------------------------------------------------------------------------------------


def test_the_relay_publishes_nothing_while_nats_is_open_and_everything_once_after(
    db: bootstrap.Database, monotonic: Monotonic, nats_target: NatsTarget
) -> None:
    registry = attach(db, monotonic, _wall)
    with db.uow() as uow:
        for n in range(30):
            emit(uow, "withdrawal_requested", f"w{n % 4}", {"n": n}, at=_wall())
        uow.commit()
    force(db, "nats", "open", _wall)
    relay = Relay(
        db.uow,
        jetstream(nats_target, max_in_flight=8),
        batch=10,
        hold_rows=db.engine.url.get_backend_name() == "postgresql",
        lock_for=lambda key: relay_lock(db.engine, key),
    )
    try:
        pending = len(outbox(db))
        for _ in range(3):
            done = relay.run_round()
            assert done.breaker_open and done.published == 0
            assert done.pending == pending
        state = asyncio.run(stream_state(nats_target.url, nats_target.stream))
        assert state.messages == 0
        assert registry.states()["nats"] == "open"

        force(db, "nats", "auto", _wall)
        committed = outbox(db)  # with the breaker's own events, written by the forcing
        published = 0
        for _ in range(20):
            done = relay.run_round()
            assert not done.breaker_open and done.failed == 0
            published += done.published
            if done.pending == 0:
                break
        assert published == len(committed) and done.duplicates == 0
    finally:
        relay.close()
    messages = asyncio.run(
        read_stream(nats_target.url, nats_target.stream, nats_target.subjects, expect=published)
    )
    ids = [event.event_id for _seq, _subject, event, _msg_id in messages]
    assert sorted(ids) == sorted(e.event_id for e in committed)  # each once, none lost
    by_subject: dict[str, list[str]] = defaultdict(list)
    for event in committed:
        by_subject[event.subject].append(event.event_id)
    seen: dict[str, list[str]] = defaultdict(list)
    for _seq, _subject, event, _msg_id in messages:
        seen[event.subject].append(event.event_id)
    assert seen == by_subject  # in order per subject
    assert [p["flow"] for p in payloads(db, "breaker_opened")] == ["nats"]
    assert [p["flow"] for p in payloads(db, "breaker_closed")] == ["nats"]
