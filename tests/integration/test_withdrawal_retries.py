"""Retries that can never commit beside their earlier attempt, under the late-commit fault.

A local party's command carries no deadline the ledger enforces, so an attempt the worker gave up
on may still commit long after its ``trec_tgt``. What keeps a withdrawal from being paid twice
then is structural: every attempt of a record spends its anchor (the first attempt's first
input, reserved by the record until it is finished), and a record that may have sent an attempt
is credited back only after a fence (a self-transfer of the anchor alone) has committed.

How: a :class:`~sluice.sandbox.Sandbox` on SQLite and PostgreSQL, driven through the real entry
points (``sb.withdraw``, ``WithdrawalWorker.run_once`` or its steps, ingestion). The embedded
ledger's ``faults.late_commit_next`` makes the next command time out and commit only when the
test calls ``faults.deliver_late_commits`` — after its ``max_record_time`` — or fail then if one
of its inputs was spent meanwhile. What was paid is read back from the ledger's own update stream
(:class:`~tests.integration.test_withdrawals.LedgerView`): each scenario ends with exactly one
transfer delivering the funds (or none and the customer credited back), the record completed or
failed once, no ``withdrawal_paid_twice`` alert, nothing reserved and the books balanced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sluice.domain.errors import InvalidOperationStateError
from sluice.domain.journal import FEES, IN_FLIGHT
from sluice.domain.ledger import Transfer
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import FactoryChoice, RegistryClient
from sluice.sandbox import Sandbox
from sluice.services.withdrawals import (
    WithdrawalSettings,
    WithdrawalWorker,
    WorkerTick,
    cancel_withdrawal,
    list_withdrawals,
)
from sluice.store import tables
from tests.integration.test_withdrawals import (
    SandboxFactory,
    account,
    alert_kinds,
    assert_books_balance,
    assert_live_inputs_disjoint,
    attempts,
    balance,
    fund,
    ledger_view,
    offer_to,
    pass_beyond,
    record,
    reservations,
    wallet,
)

D = Decimal
ZERO = Decimal(0)


@pytest.fixture
def world(database_url: str) -> Iterator[SandboxFactory]:
    """Builds sandboxes on the test's database; closes them afterwards."""
    made: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        sb = Sandbox.create(database_url, **kwargs)
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.close()


def expire_current_attempt(sb: Sandbox, withdrawal_id: str) -> None:
    """Let ingestion pass the current attempt's ``trec_tgt`` (nothing of it seen)."""
    current = record(sb, withdrawal_id)
    assert current.trec_tgt is not None
    pass_beyond(sb, current.trec_tgt)


def assert_paid_once(sb: Sandbox, withdrawal_id: str, amount: Decimal) -> None:
    view = ledger_view(sb)
    assert view.paid(withdrawal_id) == 1
    assert len([t for t in view.with_reason(withdrawal_id) if t.outcome == "Completed"]) == 1
    assert record(sb, withdrawal_id).status == "completed"
    assert account(sb, IN_FLIGHT) == ZERO
    assert "withdrawal_paid_twice" not in alert_kinds(sb)
    assert reservations(sb) == {}
    assert_books_balance(sb)
    assert ledger_view(sb).with_reason(withdrawal_id)[0].amount == amount


# --- a late attempt and its retry -----------------------------------------------------------------


@pytest.mark.parametrize("first", ["late_attempt", "retry"])
def test_an_attempt_committing_after_its_deadline_while_the_retry_is_in_flight_pays_once(
    world: SandboxFactory, first: str
) -> None:
    sb = world()
    fund(sb, "cust-0", "500", "300")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "120", key="k1")
    anchor = requested.anchor
    assert anchor is not None

    sb.ledger.faults.late_commit_next()
    tick = sb.withdrawal_worker().run_once()
    assert tick.submit_errors == 1 and "unconfirmed" in tick.errors[0]
    expire_current_attempt(sb, requested.id)
    assert record(sb, requested.id).status == "submitted"  # ingestion saw nothing

    # The retry: the same anchor again although another holding would cover the amount. It is
    # in flight (accepted, not committed) when the late attempt is delivered, or it commits at
    # once and the late attempt is delivered afterwards.
    if first == "late_attempt":
        sb.ledger.faults.late_commit_next()
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.retried, tick.reserved) == (1, 1, 1)
    retry = record(sb, requested.id)
    assert (retry.attempt, retry.anchor) == (2, anchor)
    assert sb.ledger.faults.late_commits_pending()[0] == f"{requested.id}-1"

    delivered = sb.ledger.faults.deliver_late_commits()
    outcomes = [(d.command_id, d.committed) for d in delivered]
    if first == "late_attempt":
        assert outcomes == [(f"{requested.id}-1", True), (f"{requested.id}-2", False)]
        assert "inactive" in (delivered[1].error or "")
    else:
        assert outcomes == [(f"{requested.id}-1", False)]
        assert "inactive" in (delivered[0].error or "")

    sb.ingest()
    done = record(sb, requested.id)
    assert (done.status, done.attempt, done.failure) == ("completed", 2, None)
    if first == "late_attempt":
        # Completed by attempt 1's transfer, although attempt 2 was the current one.
        assert done.outcome_update_id == delivered[0].update_id
    assert_paid_once(sb, requested.id, D(120))
    assert wallet(sb, "cust-0") == paid_before + D(120)
    assert balance(sb, "cust-0") == D(680)

    # Nothing is settled, retried or fenced later on.
    expire_current_attempt(sb, requested.id)
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.submitted, tick.fenced) == (0, 0, 0)
    assert ledger_view(sb).paid(requested.id) == 1


def test_the_retry_refused_for_its_spent_anchor_waits_for_ingestion_of_the_earlier_attempt(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "500", "300")
    requested = sb.withdraw("cust-0", "120", key="k1")
    sb.ledger.faults.late_commit_next()
    sb.withdrawal_worker().run_once()
    expire_current_attempt(sb, requested.id)

    # The worker queues the retry and reserves around the anchor; then, before it submits, the
    # late attempt lands. The ledger refuses the retry: its anchor is gone.
    worker = sb.withdrawal_worker()
    tick = WorkerTick()
    worker.settle_expired(tick)
    worker.reserve_queued(tick)
    ((late,),) = [sb.ledger.faults.deliver_late_commits()]
    assert late.committed
    worker.submit_reserved(tick)
    assert (tick.submitted, tick.submit_errors) == (0, 1)
    refused = record(sb, requested.id)
    assert (refused.status, refused.attempt) == ("submitted", 2)
    assert (refused.last_error or "").startswith("rejected")
    # Not failed, not credited back, no new anchor: the debit stands until ingestion has looked.
    assert balance(sb, "cust-0") == D(680)
    assert account(sb, IN_FLIGHT) == D(120)
    assert refused.anchor == requested.anchor

    sb.ingest()
    done = record(sb, requested.id)
    assert (done.status, done.outcome_update_id) == ("completed", late.update_id)
    assert_paid_once(sb, requested.id, D(120))
    expire_current_attempt(sb, requested.id)
    assert sb.withdrawal_worker().run_once().settled == 0


def test_inputs_are_selected_around_the_anchor_when_the_fee_allowance_changes(
    world: SandboxFactory,
) -> None:
    sb = world(coin_fee=D(5))
    fund(sb, "cust-0", "100", "50", "40")
    requested = sb.withdraw("cust-0", "120", key="k1")  # 125 with the fee: 100 + 50
    anchor = requested.anchor
    assert anchor is not None and len(requested.inputs) == 2

    sb.ledger.faults.late_commit_next()
    sb.withdrawal_worker().run_once()
    # The operator raises the fee the exchange allows for: 155 are needed now, and the anchor
    # is kept whatever else is chosen.
    with sb.database.engine.begin() as connection:
        connection.execute(
            sa.update(tables.instruments)
            .where(tables.instruments.c.id == sb.coin.id)
            .values(limits='{"transfer_fee": "35"}')
        )
    expire_current_attempt(sb, requested.id)
    sb.ledger.faults.late_commit_next()
    tick = sb.withdrawal_worker().run_once()
    assert (tick.retried, tick.reserved, tick.submit_errors) == (1, 1, 1)
    retry = record(sb, requested.id)
    assert retry.anchor == anchor and len(retry.inputs) == 3
    rows = attempts(sb, requested.id)
    assert [len(inputs) for _n, inputs, _t, _o in rows] == [2, 3]
    assert {inputs[0] for _n, inputs, _t, _o in rows} == {anchor}
    assert_live_inputs_disjoint(sb)

    delivered = sb.ledger.faults.deliver_late_commits()
    assert [d.committed for d in delivered] == [True, False]
    sb.ingest()
    assert_paid_once(sb, requested.id, D(120))
    assert account(sb, FEES) == D(-5)  # one network fee: the attempt that committed


def test_a_merge_retried_while_its_first_attempt_commits_late_merges_once(
    world: SandboxFactory,
) -> None:
    settings = WithdrawalSettings(merge_threshold=3, merge_small_below=D(10), attempts_max=3)
    sb = world(withdrawal_settings=settings)
    fund(sb, "cust-0", "1", "2", "3", "4", "5")
    assert sb.withdrawal_worker().run_once().upkeep_created == 1
    (merge,) = [w for w in list_withdrawals(sb.database.uow) if w.kind == "merge"]
    assert (merge.amount, len(merge.inputs), merge.attempts_max) == (D(15), 5, 3)

    sb.ledger.faults.late_commit_next()
    assert sb.withdrawal_worker().run_once().submit_errors == 1
    expire_current_attempt(sb, merge.id)
    # The retry spends the same inputs (its amount is theirs) and is in flight too.
    sb.ledger.faults.late_commit_next()
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.retried, tick.submit_errors, tick.upkeep_created) == (1, 1, 1, 0)
    retried = record(sb, merge.id)
    assert (retried.status, retried.attempt, retried.inputs) == ("submitted", 2, merge.inputs)

    delivered = sb.ledger.faults.deliver_late_commits()
    assert [(d.command_id, d.committed) for d in delivered] == [
        (f"{merge.id}-1", True),
        (f"{merge.id}-2", False),
    ]
    sb.ingest()
    done = record(sb, merge.id)
    assert (done.status, done.outcome_update_id) == ("completed", delivered[0].update_id)
    assert len(ledger_view(sb).with_reason(merge.id)) == 1
    amounts = sorted(h.amount for h in sb.ledger.active_holdings(sb.treasury, sb.coin))
    assert amounts == [D(15)]
    assert "withdrawal_paid_twice" not in alert_kinds(sb)
    assert reservations(sb) == {}
    assert balance(sb, "cust-0") == D(15)
    assert_books_balance(sb)


# --- the last attempt: a fence before the refund --------------------------------------------------


@pytest.mark.parametrize("first", ["fence", "late_attempt"])
def test_the_last_attempt_committing_late_is_either_paid_or_fenced_and_refunded(
    world: SandboxFactory, first: str
) -> None:
    sb = world(withdrawal_settings=WithdrawalSettings(attempts_max=1))
    fund(sb, "cust-0", "500")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "200", key="k1")
    sb.ledger.faults.late_commit_next()
    sb.withdrawal_worker().run_once()
    expire_current_attempt(sb, requested.id)

    # No attempt left, and one was sent: not credited back yet, the anchor is fenced first.
    if first == "late_attempt":
        sb.ledger.faults.late_commit_next()  # the fence is in flight when the attempt lands
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.fenced, tick.refunded, tick.retried) == (1, 1, 0, 0)
    fencing = record(sb, requested.id)
    assert (fencing.status, fencing.attempt, fencing.inputs) == (
        "submitted",
        2,
        (requested.anchor,),
    )
    assert fencing.failure == "1 attempt(s) expired without committing"
    assert balance(sb, "cust-0") == D(300)

    if first == "fence":
        sb.ingest()
        failed = record(sb, requested.id)
        assert (failed.status, failed.failure) == ("failed", fencing.failure)
        assert balance(sb, "cust-0") == D(500)
        assert account(sb, IN_FLIGHT) == ZERO
        # The late attempt lands after the refund: its input is gone, nothing commits.
        (late,) = sb.ledger.faults.deliver_late_commits()
        assert not late.committed and "inactive" in (late.error or "")
        sb.ingest()
        assert record(sb, requested.id).status == "failed"
        view = ledger_view(sb)
        assert view.paid(requested.id) == 0
        (fence,) = view.with_reason(requested.id)
        assert fence.fence and fence.receiver == sb.treasury
        assert wallet(sb, "cust-0") == paid_before
    else:
        delivered = sb.ledger.faults.deliver_late_commits()
        assert [(d.command_id, d.committed) for d in delivered] == [
            (f"{requested.id}-1", True),
            (f"{requested.id}-fence-2", False),
        ]
        sb.ingest()
        paid = record(sb, requested.id)
        assert (paid.status, paid.failure) == ("completed", None)
        assert_paid_once(sb, requested.id, D(200))
        assert balance(sb, "cust-0") == D(300)
        assert wallet(sb, "cust-0") == paid_before + D(200)
    assert reservations(sb) == {}
    assert "withdrawal_paid_twice" not in alert_kinds(sb)
    assert_books_balance(sb)
    # Nothing further happens to it.
    expire_current_attempt(sb, requested.id)
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.submitted, tick.fenced, tick.refunded) == (0, 0, 0, 0)


def test_a_fence_that_expires_unseen_is_tried_again_on_the_same_anchor(
    world: SandboxFactory,
) -> None:
    sb = world(withdrawal_settings=WithdrawalSettings(attempts_max=1))
    fund(sb, "cust-0", "500")
    requested = sb.withdraw("cust-0", "200", key="k1")
    sb.ledger.faults.late_commit_next()
    sb.withdrawal_worker().run_once()
    expire_current_attempt(sb, requested.id)
    sb.ledger.faults.fail_next_commands()
    tick = sb.withdrawal_worker().run_once()
    assert (tick.fenced, tick.submit_errors) == (1, 1)
    expire_current_attempt(sb, requested.id)
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.fenced, tick.refunded, tick.submitted) == (1, 1, 0, 1)
    rows = attempts(sb, requested.id)
    assert [(n, inputs) for n, inputs, _t, _o in rows] == [
        (1, requested.inputs),
        (2, (requested.anchor,)),
        (3, (requested.anchor,)),
    ]
    sb.ingest()
    assert record(sb, requested.id).status == "failed"
    assert balance(sb, "cust-0") == D(500)
    (late,) = sb.ledger.faults.deliver_late_commits()
    assert not late.committed
    assert ledger_view(sb).paid(requested.id) == 0
    assert_books_balance(sb)


def test_a_last_attempt_still_reserved_at_its_trec_tgt_is_sent_on_that_attempt(
    world: SandboxFactory,
) -> None:
    """A record still ``reserved`` when ingestion passes its trec_tgt was never sent on its
    attempt (``submitting`` is committed before any call): no attempt is counted, so even the
    last one is not failed and credited back; it goes back to the queue on the same attempt
    (its anchor kept), is reserved with a fresh trec_tgt and sent."""
    sb = world(withdrawal_settings=WithdrawalSettings(attempts_max=1))
    fund(sb, "cust-0", "500")
    requested = sb.withdraw("cust-0", "200", key="k1")
    anchor = requested.anchor
    expire_current_attempt(sb, requested.id)  # reserved, never claimed for submission
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.fenced, tick.refunded, tick.submitted) == (1, 0, 0, 1)
    resent = record(sb, requested.id)
    assert (resent.status, resent.attempt, resent.failure) == ("submitted", 1, None)
    assert resent.anchor == anchor
    assert resent.trec_tgt is not None and requested.trec_tgt is not None
    assert resent.trec_tgt > requested.trec_tgt
    assert ledger_view(sb).with_reason(requested.id) != []
    sb.ingest()
    assert_paid_once(sb, requested.id, D(200))
    assert balance(sb, "cust-0") == D(300)


# --- the anchor spent by another transaction ------------------------------------------------------


@pytest.mark.parametrize("attempts_max", [1, 2])
def test_an_anchor_spent_by_another_transaction_frees_the_record_at_once(
    world: SandboxFactory, attempts_max: int
) -> None:
    sb = world(withdrawal_settings=WithdrawalSettings(attempts_max=attempts_max))
    fund(sb, "cust-0", "500", "300")
    requested = sb.withdraw("cust-0", "120", key="k1")
    anchor = requested.anchor
    assert anchor is not None
    sb.ledger.faults.late_commit_next()
    sb.withdrawal_worker().run_once()
    # The treasury's own self-transfer (not one of the record's attempts) spends the anchor: no
    # attempt of the record can commit any more.
    amount = next(
        h.amount for h in sb.ledger.active_holdings(sb.treasury) if h.contract_id == anchor
    )
    sb.ledger.transfer(sb.treasury, sb.treasury, sb.coin, amount, inputs=[anchor])
    expire_current_attempt(sb, requested.id)
    tick = sb.withdrawal_worker().run_once()
    assert tick.fenced == 0
    if attempts_max == 1:
        # Credited back at once: the ledger itself proves the attempt can never commit.
        assert (tick.settled, tick.refunded) == (1, 1)
        assert record(sb, requested.id).status == "failed"
        assert balance(sb, "cust-0") == D(800)
    else:
        # Retried with a new anchor.
        assert (tick.settled, tick.retried, tick.submitted) == (1, 1, 1)
        retry = record(sb, requested.id)
        assert retry.anchor not in (None, anchor)
        sb.ingest()
        assert_paid_once(sb, requested.id, D(120))
    (late,) = sb.ledger.faults.deliver_late_commits()
    assert not late.committed
    sb.ingest()
    assert ledger_view(sb).paid(requested.id) == (0 if attempts_max == 1 else 1)
    assert reservations(sb) == {}
    assert "withdrawal_paid_twice" not in alert_kinds(sb)
    assert_books_balance(sb)


# --- a retry cannot be cancelled ------------------------------------------------------------------


def test_a_retry_cannot_be_cancelled_while_its_earlier_attempt_may_commit(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "500")
    requested = sb.withdraw("cust-0", "120", key="k1")
    sb.ledger.faults.late_commit_next()
    sb.withdrawal_worker().run_once()
    expire_current_attempt(sb, requested.id)
    worker = sb.withdrawal_worker()
    worker.settle_expired(WorkerTick())
    queued = record(sb, requested.id)
    assert (queued.status, queued.attempt, queued.inputs) == ("queued", 2, (requested.anchor,))
    assert reservations(sb) == {requested.anchor: requested.id}
    with pytest.raises(InvalidOperationStateError, match="may still commit"):
        cancel_withdrawal(
            sb.database.uow, requested.id, customer_id="cust-0", actor="cust-0", at=sb.clock()
        )
    assert record(sb, requested.id) == queued
    (late,) = sb.ledger.faults.deliver_late_commits()
    assert late.committed
    sb.ingest()
    assert_paid_once(sb, requested.id, D(120))
    assert balance(sb, "cust-0") == D(380)


# --- an earlier attempt landing as an offer, and inputs it spent under another record -------------


def test_a_late_offer_releases_the_retrys_inputs_and_the_record_holding_a_spent_one_starts_afresh(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-1", "300", "200", instrument=sb.token)
    first = sb.withdraw("cust-1", "400", instrument=sb.token, key="k1")
    assert len(first.inputs) == 2
    anchor, other = first.inputs
    sb.ledger.faults.late_commit_next()
    sb.withdrawal_worker().run_once()
    fund(sb, "cust-1", "150", instrument=sb.token)
    expire_current_attempt(sb, first.id)

    # The retry keeps the anchor; meanwhile another withdrawal takes the input it let go.
    worker = sb.withdrawal_worker()
    worker.settle_expired(WorkerTick())
    second = sb.withdraw("cust-1", "200", instrument=sb.token, key="k2")
    assert second.inputs == (other,)
    worker.reserve_queued(WorkerTick())
    retry = record(sb, first.id)
    assert retry.anchor == anchor and retry.inputs[1] not in (anchor, other)

    # The first attempt lands late as an offer: it spends the anchor and the input the second
    # withdrawal holds now.
    (late,) = sb.ledger.faults.deliver_late_commits()
    assert late.committed
    sb.ingest()
    assert record(sb, first.id).status == "offered"
    # The offer holds nothing reserved; the second withdrawal's input is gone.
    assert reservations(sb) == {}
    tick = sb.withdrawal_worker().run_once()
    assert (tick.submitted, tick.submit_errors) == (0, 1)  # the second one: its input is spent
    expire_current_attempt(sb, second.id)
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.retried, tick.reserved, tick.submitted) == (1, 1, 1, 1)
    assert record(sb, second.id).anchor not in (None, other)
    sb.ingest()
    assert record(sb, second.id).status == "offered"

    for withdrawal in (first, second):
        sb.ledger.accept(offer_to(sb, "cust-1", withdrawal.id), sb.customers["cust-1"])
    sb.ingest()
    view = ledger_view(sb)
    assert [view.paid(w.id) for w in (first, second)] == [1, 1]
    assert {record(sb, w.id).status for w in (first, second)} == {"completed"}
    assert balance(sb, "cust-1", sb.token) == D(50)
    assert account(sb, IN_FLIGHT, sb.token) == ZERO
    assert reservations(sb) == {}
    assert "withdrawal_paid_twice" not in alert_kinds(sb)
    assert_books_balance(sb)


# --- a worker that was away while the record moved on --------------------------------------------


class _AnswersOffer:
    """A registry that answers ``offer`` for every transfer (as it would for a receiver whose
    transfer preapproval was missing at that moment): the instrument is onboarded for ``direct``
    only, so the worker records a definite failure and sends nothing."""

    def __init__(self, inner: RegistryClient) -> None:
        self._inner = inner

    def transfer_factory(self, transfer: Transfer) -> FactoryChoice:
        return dataclasses.replace(self._inner.transfer_factory(transfer), transfer_kind="offer")

    def choice_context(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.choice_context(*args, **kwargs)


def test_a_worker_recording_an_attempt_the_record_has_moved_past_changes_nothing(
    world: SandboxFactory,
) -> None:
    """Worker 1 claims attempt 1, finds it cannot be sent, and is away before recording that.
    Meanwhile attempt 1 expires, worker 2 retries (attempt 2) and sends it, and the record is
    ``submitting`` again when worker 1 comes back. Worker 1's write must not replace attempt 2's
    row: written back, attempt 1 with its failure and passed ``trec_tgt`` would be refunded at
    once while attempt 2 commits — paid and credited back."""
    sb = world()
    fund(sb, "cust-0", "500", "300")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "120", key="k1")

    class AwayError(Exception):
        pass

    def worker_2_while_worker_1_is_away(claimed: Withdrawal) -> None:
        expire_current_attempt(sb, claimed.id)
        tick = WorkerTick()
        worker_2 = sb.withdrawal_worker()
        worker_2.settle_expired(tick)
        worker_2.reserve_queued(tick)
        assert (tick.retried, tick.reserved) == (1, 1)

        def away(_: Withdrawal) -> None:
            raise AwayError

        with pytest.raises(AwayError):  # sent attempt 2 (it commits), not yet recorded
            sb.withdrawal_worker(after_submit=away).submit_reserved(WorkerTick())
        assert (record(sb, claimed.id).status, record(sb, claimed.id).attempt) == ("submitting", 2)

    registries = sb.registries
    worker_1 = WithdrawalWorker(
        sb.database.uow,
        sb.commands,
        lambda instrument: _AnswersOffer(registries(instrument)),
        treasury=sb.treasury,
        connection=sb.connection,
        clock=sb.clock,
        settings=sb.withdrawal_settings,
        after_submit=worker_2_while_worker_1_is_away,
        compliance=sb.compliance,
    )
    tick = WorkerTick()
    worker_1.submit_reserved(tick)
    assert tick.submit_errors == 1 and "onboarded for direct only" in tick.errors[0]

    current = record(sb, requested.id)
    assert (current.status, current.attempt, current.failure) == ("submitting", 2, None)
    tick = sb.withdrawal_worker().run_once(upkeep=False)
    assert (tick.settled, tick.refunded, tick.fenced) == (0, 0, 0)

    sb.ingest()
    assert_paid_once(sb, requested.id, D(120))
    assert wallet(sb, "cust-0") == paid_before + D(120)
    assert balance(sb, "cust-0") == D(680)
