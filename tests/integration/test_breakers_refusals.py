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
from tests.integration.test_withdrawals import fund, ledger_view, record

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
