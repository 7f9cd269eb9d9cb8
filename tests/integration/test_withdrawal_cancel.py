"""Cancelling a withdrawal before it is submitted (``services.withdrawals.cancel_withdrawal``).

How: each test builds a :class:`~sluice.sandbox.Sandbox` (the embedded ledger and the Integration
DB, on SQLite and on PostgreSQL), requests withdrawals, cancels some, and runs the real withdrawal
worker and ingestion afterwards. What was paid is read from the ledger's own update stream
(``LedgerView``), so "never submitted" is a fact about the ledger, not about sluice's records.

Covers: a queued and a reserved withdrawal cancelled — the customer credited back, the reserved
inputs released (and reused by the next withdrawal), the attempt closed, the limits' usage
forgotten, audited — and never submitted by a worker run afterwards; cancelling twice, after
submission, after completion, of an offer on the ledger, of a return of a held deposit, and while
the hold after a DB restore is recorded, each refused (41) with nothing written; another
customer's withdrawal and unknown ids not found (10). On PostgreSQL, cancels racing a worker that
claims the same withdrawals, over several rounds: for each, exactly one of the two wins and the
books balance; which one came first is recorded, and both orders must occur.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sluice.domain.errors import InvalidOperationStateError, NotFoundError, SluiceError
from sluice.domain.journal import IN_FLIGHT
from sluice.domain.withdrawals import Withdrawal
from sluice.sandbox import Sandbox
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.services.compliance_officer import freeze_customer, return_hold, review_queue
from sluice.services.withdrawals import WorkerTick, cancel_withdrawal, hold_until_safe
from sluice.store import tables
from tests.integration.test_withdrawals import (
    account,
    assert_books_balance,
    assert_live_inputs_disjoint,
    attempts,
    balance,
    fund,
    ledger_view,
    offer_to,
    record,
    reservations,
    wallet,
)

D = Decimal
ZERO = Decimal(0)


@pytest.fixture
def sb(database_url: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(database_url)
    yield sandbox
    sandbox.close()


def everything(sb: Sandbox) -> dict[str, list[tuple[Any, ...]]]:
    with sb.database.engine.connect() as connection:
        return {
            table.name: sorted(
                (tuple(row) for row in connection.execute(sa.select(table))), key=repr
            )
            for table in tables.metadata.sorted_tables
        }


def withdrawal_usage(sb: Sandbox, customer: str) -> list[str]:
    table = tables.compliance_usage
    with sb.database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.operation_id).where(
                table.c.customer_id == customer, table.c.operation == "withdrawal"
            )
        )
        return sorted(row.operation_id for row in rows)


def cancel(sb: Sandbox, withdrawal: Withdrawal, customer: str | None = "own") -> Withdrawal:
    owner = withdrawal.customer_id if customer == "own" else customer
    return cancel_withdrawal(
        sb.database.uow,
        withdrawal.id,
        customer_id=owner,
        actor=f"customer:{owner}" if owner else "operator:oscar",
        at=sb.clock(),
    )


def assert_refused(sb: Sandbox, withdrawal: Withdrawal, why: str) -> None:
    before = everything(sb)
    with pytest.raises(InvalidOperationStateError) as refused:
        cancel(sb, withdrawal)
    assert refused.value.code == 41
    assert why in str(refused.value), refused.value
    assert everything(sb) == before


def assert_books_and_trail(sb: Sandbox) -> None:
    assert_books_balance(sb)
    verification = verify_audit_log(sb.database.uow)
    assert verification.ok, verification.findings


def test_cancelled_reserved_withdrawal_is_refunded_released_and_never_submitted(
    sb: Sandbox,
) -> None:
    fund(sb, "cust-0", "100")
    wallet_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "40", key="k1")
    assert requested.status == "reserved" and requested.inputs
    assert withdrawal_usage(sb, "cust-0") == [requested.id]

    cancelled = cancel(sb, requested)
    assert (cancelled.status, cancelled.failure, cancelled.inputs) == ("failed", "cancelled", ())
    assert record(sb, requested.id) == cancelled
    assert balance(sb, "cust-0") == D(100)
    assert account(sb, IN_FLIGHT) == ZERO
    assert reservations(sb) == {}
    assert [(n, outcome) for n, _inputs, _trec, outcome in attempts(sb, requested.id)] == [
        (1, "cancelled")
    ]
    assert withdrawal_usage(sb, "cust-0") == []
    (audit,) = [
        r
        for r in list_audit_records(sb.database.uow, operation_id=requested.id)
        if r.entry.operation == "withdrawal_cancelled"
    ]
    assert audit.entry.actor == "customer:cust-0"
    assert audit.entry.customer_id == "cust-0"

    tick = sb.withdrawal_worker().run_once()
    assert (tick.submitted, tick.reserved, tick.settled) == (0, 0, 0)
    sb.ingest()
    assert ledger_view(sb).paid(requested.id) == 0
    assert ledger_view(sb).with_reason(requested.id) == []
    assert wallet(sb, "cust-0") == wallet_before
    assert record(sb, requested.id).status == "failed"

    # The inputs it had reserved pay the next withdrawal.
    following = sb.withdraw("cust-0", "100", key="k2")
    assert following.inputs == requested.inputs
    assert sb.withdrawal_worker().run_once().submitted == 1
    sb.ingest()
    assert record(sb, following.id).status == "completed"
    assert wallet(sb, "cust-0") == wallet_before + D(100)
    assert_books_and_trail(sb)


def test_cancelled_queued_withdrawal_is_refunded_and_never_reserved_or_submitted(
    sb: Sandbox,
) -> None:
    fund(sb, "cust-0", "300")
    first = sb.withdraw("cust-0", "50", key="k1")  # takes the only holding
    waiting = sb.withdraw("cust-0", "100", key="k2")
    assert waiting.status == "queued"
    assert balance(sb, "cust-0") == D(150)

    cancelled = cancel(sb, waiting, customer=None)  # staff may cancel any customer's
    assert (cancelled.status, cancelled.failure) == ("failed", "cancelled")
    assert balance(sb, "cust-0") == D(250)
    assert account(sb, IN_FLIGHT) == D(50)
    assert withdrawal_usage(sb, "cust-0") == [first.id]
    assert attempts(sb, waiting.id) == []

    for _ in range(3):
        tick = sb.withdrawal_worker().run_once()
        sb.ingest()
        assert tick.reserved == 0
    view = ledger_view(sb)
    assert (view.paid(first.id), view.with_reason(waiting.id)) == (1, [])
    assert record(sb, first.id).status == "completed"
    assert record(sb, waiting.id).status == "failed"
    assert balance(sb, "cust-0") == D(250)
    assert account(sb, IN_FLIGHT) == ZERO
    assert_books_and_trail(sb)


def test_a_withdrawal_that_left_or_is_over_cannot_be_cancelled(sb: Sandbox) -> None:
    fund(sb, "cust-0", "100")
    requested = sb.withdraw("cust-0", "40", key="k1")
    cancel(sb, requested)
    assert_refused(sb, requested, "already over")

    submitted = sb.withdraw("cust-0", "30", key="k2")
    assert sb.withdrawal_worker().run_once().submitted == 1
    assert record(sb, submitted.id).status == "submitted"
    assert_refused(sb, submitted, "submitted to the ledger")
    sb.ingest()
    assert record(sb, submitted.id).status == "completed"
    assert_refused(sb, submitted, "paid out")
    assert ledger_view(sb).paid(submitted.id) == 1

    # An offer on the ledger: only the receiver (or its expiry) decides now.
    fund(sb, "cust-1", "100", instrument=sb.token)
    offered = sb.withdraw("cust-1", "60", key="k1", instrument=sb.token)
    assert sb.withdrawal_worker().run_once().submitted == 1
    sb.ingest()
    assert record(sb, offered.id).status == "offered"
    assert_refused(sb, offered, "offer is on the ledger")
    sb.ledger.accept(offer_to(sb, "cust-1", offered.id), sb.customers["cust-1"])
    sb.ingest()
    assert record(sb, offered.id).status == "completed"
    assert_books_and_trail(sb)


def test_a_return_of_a_held_deposit_is_not_a_customers_withdrawal_to_cancel(
    sb: Sandbox,
) -> None:
    officer = "officer:alice"
    freeze_customer(sb.database.uow, "cust-0", actor=officer, at=sb.clock(), reason="check")
    sb.deposit("cust-0", "80")
    sb.ingest()
    (hold,) = review_queue(sb.database.uow).holds
    returning = return_hold(
        sb.database.uow, hold.id, treasury=sb.treasury, actor=officer, at=sb.clock(), reason="r"
    )
    assert returning.status == "queued"
    for customer in (None, "cust-0"):
        before = everything(sb)
        with pytest.raises(InvalidOperationStateError) as refused:
            cancel(sb, returning, customer=customer)
        assert "return" in str(refused.value)
        assert everything(sb) == before
    assert_books_and_trail(sb)


def test_no_cancel_while_submissions_are_held_after_a_database_restore(sb: Sandbox) -> None:
    fund(sb, "cust-0", "100")
    requested = sb.withdraw("cust-0", "40", key="k1")
    hold_until_safe(sb.database.uow, clock=sb.clock)
    assert_refused(sb, requested, "database restore")


def test_another_customers_or_an_unknown_withdrawal_is_not_found(sb: Sandbox) -> None:
    fund(sb, "cust-0", "100")
    requested = sb.withdraw("cust-0", "40", key="k1")
    before = everything(sb)
    for customer, withdrawal_id in (("cust-1", requested.id), ("cust-0", "wd-unknown")):
        with pytest.raises(NotFoundError) as missing:
            cancel_withdrawal(
                sb.database.uow, withdrawal_id, customer_id=customer, actor="x", at=sb.clock()
            )
        assert missing.value.code == 10
    with pytest.raises(NotFoundError):
        cancel_withdrawal(sb.database.uow, "wd-unknown", customer_id=None, actor="x", at=sb.clock())
    assert everything(sb) == before
    assert record(sb, requested.id).status == "reserved"


RACE_ROUNDS = 6
RACE_SIZE = 10
# The worker's delay after the common start, per round. Left to itself the worker's claim mostly
# comes first; none (a plain race) alternates with short head starts for the cancels, so that both
# orders show up in every run of the test rather than by luck.
WORKER_DELAYS_S = (0.0, 0.002, 0.0, 0.01, 0.0, 0.05)


def race_round(sb: Sandbox, round_number: int, worker_delay_s: float) -> dict[str, object]:
    """Ten reserved withdrawals; a worker thread submits while ten threads cancel them, all
    released together. Returns each withdrawal's outcome: the cancelled record, or the refusal."""
    requested = [
        sb.withdraw("cust-0", "20", key=f"race-{round_number}-{n}") for n in range(RACE_SIZE)
    ]
    assert {w.status for w in requested} == {"reserved"}
    barrier = threading.Barrier(len(requested) + 1)
    outcomes: list[object] = [None] * len(requested)
    ticks: list[WorkerTick] = []
    errors: list[BaseException] = []

    def run_worker() -> None:
        worker = sb.withdrawal_worker()
        barrier.wait()
        time.sleep(worker_delay_s)
        try:
            ticks.append(worker.run_once())
        except BaseException as exc:  # judged by the main thread
            errors.append(exc)

    def run_cancel(n: int) -> None:
        barrier.wait()
        try:
            outcomes[n] = cancel(sb, requested[n])
        except BaseException as exc:  # judged by the main thread
            outcomes[n] = exc

    threads = [threading.Thread(target=run_worker)] + [
        threading.Thread(target=run_cancel, args=(n,)) for n in range(len(requested))
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert errors == []
    assert all(isinstance(o, Withdrawal | InvalidOperationStateError) for o in outcomes), outcomes
    assert not any(isinstance(o, SluiceError) and o.code != 41 for o in outcomes)
    assert ticks[0].submitted == sum(
        1 for o in outcomes if isinstance(o, InvalidOperationStateError)
    )
    return {w.id: o for w, o in zip(requested, outcomes, strict=True)}


@pytest.mark.postgres
def test_cancels_racing_the_worker_claim_each_lose_or_win_exactly_once(
    postgres_url: str,
) -> None:
    """Rounds of ten reserved withdrawals, a worker thread submitting while ten threads cancel
    them. Each withdrawal is either cancelled (refunded, nothing on the ledger) or submitted (its
    cancel refused, paid once) — never both, never neither. Which of the two came first is
    recorded for every withdrawal, and both orders must have happened across the rounds."""
    sb = Sandbox.create(postgres_url)
    try:
        fund(sb, "cust-0", *["50"] * (RACE_ROUNDS * RACE_SIZE))
        wallet_before = wallet(sb, "cust-0")
        outcomes: dict[str, object] = {}
        orders: list[tuple[int, str]] = []  # (round, which came first) per withdrawal
        for round_number, delay_s in enumerate(WORKER_DELAYS_S):
            found = race_round(sb, round_number, delay_s)
            outcomes.update(found)
            orders += [
                (round_number, "cancel" if isinstance(o, Withdrawal) else "claim")
                for o in found.values()
            ]

        # Whatever the racing worker rounds left reserved, later rounds submit; cancelled ones
        # stay cancelled.
        for _ in range(3):
            sb.withdrawal_worker().run_once()
            sb.ingest()
        view = ledger_view(sb)
        paid = D(0)
        for withdrawal_id, outcome in outcomes.items():
            final = record(sb, withdrawal_id)
            if isinstance(outcome, Withdrawal):
                assert (final.status, final.failure) == ("failed", "cancelled")
                assert view.with_reason(withdrawal_id) == []
            else:
                assert final.status == "completed", final
                assert view.paid(withdrawal_id) == 1
                paid += final.amount
        # Both orders happened: some cancels were taken before the worker's claim (and refused
        # it the record), some came after it (and were refused).
        firsts = {first for _, first in orders}
        assert firsts == {"cancel", "claim"}, orders
        assert balance(sb, "cust-0") == D(50 * RACE_ROUNDS * RACE_SIZE) - paid
        assert wallet(sb, "cust-0") == wallet_before + paid
        assert account(sb, IN_FLIGHT) == ZERO
        assert reservations(sb) == {}
        assert_live_inputs_disjoint(sb)
        assert_books_and_trail(sb)
    finally:
        sb.close()
