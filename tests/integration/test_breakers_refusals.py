"""A submission the ledger's circuit breaker refuses in the middle of the withdrawal worker's
round is no attempt: the record goes back to reserved with the same attempt, and is submitted
once the breaker lets calls through.

How: a :class:`~sluice.sandbox.Sandbox` on PostgreSQL; the worker's round (``run_once``, not
gated by the service loop) claims six reserved withdrawals and submits them through
:class:`~sluice.services.breaker_proxies.GuardedLedgerCommands`; the embedded ledger rejects the
first four (``faults.fail_next_commands``), which opens the breaker, so the last two are refused
before they reach the ledger.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sluice.domain.breaker import BreakerSettings
from sluice.sandbox import Sandbox
from sluice.services.breaker_proxies import GuardedLedgerCommands
from sluice.services.breakers import configure_breakers
from sluice.services.withdrawals import WithdrawalSettings
from tests.integration.test_withdrawals import fund, ledger_view, pass_beyond, record

SETTINGS = BreakerSettings(window=8, min_calls=4, failure_rate=0.5, open_s=30.0, probes=2)


class Monotonic:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sandbox(postgres_url: str) -> Iterator[Sandbox]:
    sb = Sandbox.create(
        postgres_url,
        customers=1,
        withdrawal_settings=WithdrawalSettings(claim_batch=10, merge_threshold=0),
    )
    yield sb
    sb.close()
    configure_breakers()


def test_a_submission_refused_mid_round_goes_back_to_reserved_with_its_attempt(
    sandbox: Sandbox,
) -> None:
    sb = sandbox
    clock = Monotonic()
    registry = configure_breakers(
        default=SETTINGS, monotonic=clock, uow_factory=sb.database.uow, clock=sb.clock
    )
    fund(sb, "cust-0", *["40"] * 6)
    requested = [sb.withdraw("cust-0", "10", key=f"r{n}") for n in range(6)]
    worker = sb.withdrawal_worker(commands=GuardedLedgerCommands(sb.commands))

    sb.ledger.faults.fail_next_commands(4)
    tick = worker.run_once(upkeep=False)
    assert (tick.submit_errors, tick.breaker_refused) == (4, 2)
    assert registry.states()["ledger"] == "open"
    statuses = sorted((record(sb, r.id).status, record(sb, r.id).attempt) for r in requested)
    assert statuses == [("reserved", 1)] * 2 + [("submitted", 1)] * 4
    refused = [r.id for r in requested if record(sb, r.id).status == "reserved"]
    assert all("breaker is open" in (record(sb, i).last_error or "") for i in refused)

    clock.now += SETTINGS.open_s
    tick = worker.run_once(upkeep=False)
    assert (tick.submitted, tick.breaker_refused) == (2, 0)
    assert registry.states()["ledger"] == "closed"
    sb.ingest()
    view = ledger_view(sb)
    for withdrawal_id in refused:
        done = record(sb, withdrawal_id)
        assert (done.status, done.attempt) == ("completed", 1)
        assert view.paid(withdrawal_id) == 1


def test_a_refused_record_whose_trec_tgt_passes_keeps_its_only_attempt(postgres_url: str) -> None:
    """The breaker stays open longer than ``trec_span_s`` and ingestion follows the ledger past
    the refused records' trec_tgt: they were never sent, so settling them gives a fresh trec_tgt
    on the same attempt — with a single attempt allowed, none is failed and credited back."""
    sb = Sandbox.create(
        postgres_url,
        customers=1,
        withdrawal_settings=WithdrawalSettings(claim_batch=10, merge_threshold=0, attempts_max=1),
    )
    try:
        clock = Monotonic()
        configure_breakers(
            default=SETTINGS, monotonic=clock, uow_factory=sb.database.uow, clock=sb.clock
        )
        fund(sb, "cust-0", *["40"] * 6)
        requested = [sb.withdraw("cust-0", "10", key=f"r{n}") for n in range(6)]
        worker = sb.withdrawal_worker(commands=GuardedLedgerCommands(sb.commands))
        sb.ledger.faults.fail_next_commands(4)
        worker.run_once(upkeep=False)
        refused = [r.id for r in requested if record(sb, r.id).status == "reserved"]
        assert len(refused) == 2
        pass_beyond(sb, max(record(sb, i).trec_tgt or sb.clock() for i in refused))

        clock.now += SETTINGS.open_s
        tick = worker.run_once(upkeep=False)
        assert tick.refunded == 0
        sb.ingest()
        view = ledger_view(sb)
        for withdrawal_id in refused:
            done = record(sb, withdrawal_id)
            assert (done.status, done.attempt, done.failure) == ("completed", 1, None)
            assert view.paid(withdrawal_id) == 1
    finally:
        sb.close()
        configure_breakers()


def _submitted_attempts(sb: Sandbox) -> list[tuple[str, object]]:
    with sb.database.uow() as uow:
        rows = uow.events.find(type="withdrawal_submitted", limit=1000)
    return sorted((row.event.aggregate_id, row.event.payload["attempt"]) for row in rows)


def test_withdrawal_submitted_is_written_once_per_attempt_across_refused_rounds(
    sandbox: Sandbox,
) -> None:
    """Rounds run while the breaker refuses (each claims the records, announces them, is
    refused): every withdrawal has one ``withdrawal_submitted`` for its attempt."""
    sb = sandbox
    clock = Monotonic()
    registry = configure_breakers(
        default=SETTINGS, monotonic=clock, uow_factory=sb.database.uow, clock=sb.clock
    )
    fund(sb, "cust-0", *["40"] * 6)
    requested = [sb.withdraw("cust-0", "10", key=f"r{n}") for n in range(6)]
    worker = sb.withdrawal_worker(commands=GuardedLedgerCommands(sb.commands))
    sb.ledger.faults.fail_next_commands(4)
    worker.run_once(upkeep=False)
    for _ in range(3):
        tick = worker.run_once(upkeep=False)
        assert tick.breaker_refused == 2
    clock.now += SETTINGS.open_s
    worker.run_once(upkeep=False)
    assert registry.states()["ledger"] == "closed"
    assert _submitted_attempts(sb) == sorted((r.id, 1) for r in requested)
