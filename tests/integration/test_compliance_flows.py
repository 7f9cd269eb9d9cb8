"""The KYC registry enforced in the exchange's flows, end to end on the embedded ledger.

How: every test builds a :class:`~sluice.sandbox.Sandbox` (on SQLite and on PostgreSQL) and drives
it only through the real entry points — ``request_withdrawal`` (``sb.withdraw``), ingestion
(``sb.ingest``), the withdrawal and deposit workers, the compliance officer's commands
(``sluice.services.compliance_officer``) and ``verify_operation_compliance`` /
``batch_compliance_check``. Time is the ledger's clock, moved by the test.

Covers: withdrawals refused before the debit for a frozen customer (20), over a tier's daily limit
(21, counted across requests in the rolling 24 h and allowed again once the window has passed, to
the microsecond), to a flagged party (22); 1-step deposits held (flagged sender, frozen customer,
over the deposit limit) and released to the customer or returned to the sender on the ledger (a
flagged sender's funds cannot be returned); a multi-step deposit from a flagged sender rejected by
the deposit worker; the risk rules putting a customer under review (smurfing + new counterparty on
the default rules) until an officer makes them active again; the batch check; a listed address on
the sanctions list; concurrent withdrawals racing for one daily limit (PostgreSQL); and the audit
trail of a scenario, verified and then tampered with. The last section covers
defects found here and fixed: a failed return puts its deposit back on hold, a released deposit
counts in reference units, a refunded withdrawal stops counting against the limits, and a
withdrawal request no longer deadlocks with ingestion crediting the same customer (PostgreSQL).

After each scenario the books balance (``check_invariant``) and the audit trail verifies.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from sluice.domain.compliance import DAY, ComplianceRequest, HeldDeposit, TierLimits
from sluice.domain.errors import (
    AddressBlacklistedError,
    ComplianceError,
    InsufficientKycTierError,
    InvalidOperationStateError,
)
from sluice.domain.journal import COMPLIANCE_HOLD, IN_FLIGHT, AccountRef, customer_account_name
from sluice.domain.ledger import InstrumentId
from sluice.domain.risk import RiskRules
from sluice.domain.withdrawals import Withdrawal, withdrawal_id
from sluice.sandbox import Sandbox
from sluice.screening import ListedSanctions
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.services.books import check_invariant
from sluice.services.compliance import (
    ComplianceSettings,
    KycRegistry,
    batch_compliance_check,
    verify_operation_compliance,
)
from sluice.services.compliance_officer import (
    change_tier,
    flag_address,
    freeze_customer,
    release_hold,
    return_hold,
    review_queue,
    set_customer_status,
    set_limits,
    unflag_address,
    unfreeze_customer,
)
from sluice.store import tables
from tests.conftest import reference_path

D = Decimal
ZERO = Decimal(0)
OFFICER = "officer:alice"
LISTED_ADDRESS = "0x2f389ce8bd8ff92de3402ffce4691d17fc4f6535"  # ofac-sdn:33151, sample set


@pytest.fixture
def sb(database_url: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(database_url)
    yield sandbox
    sandbox.close()


# --- reading the DB and the ledger ----------------------------------------------------------------


def balance(sb: Sandbox, customer: str, instrument: InstrumentId | None = None) -> Decimal:
    return account(sb, customer_account_name(customer), instrument)


def account(sb: Sandbox, name: str, instrument: InstrumentId | None = None) -> Decimal:
    with sb.database.uow() as uow:
        return uow.withdrawals.balance(AccountRef(name, instrument or sb.coin))


def wallet(sb: Sandbox, customer: str, instrument: InstrumentId | None = None) -> Decimal:
    """The customer's holdings on the ledger itself."""
    holdings = sb.ledger.active_holdings(sb.customers[customer], instrument or sb.coin)
    return sum((h.amount for h in holdings), ZERO)


def withdrawal(sb: Sandbox, withdrawal_id: str) -> Withdrawal | None:
    with sb.database.uow() as uow:
        return uow.withdrawals.get(withdrawal_id)


def withdrawal_count(sb: Sandbox) -> int:
    with sb.database.engine.connect() as connection:
        count = connection.execute(sa.select(sa.func.count()).select_from(tables.withdrawals))
        return int(count.scalar_one())


def usage(sb: Sandbox, customer: str, operation: str) -> list[Decimal]:
    """The amounts recorded in ``compliance_usage`` for a customer's operation."""
    table = tables.compliance_usage
    with sb.database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.amount).where(
                table.c.customer_id == customer, table.c.operation == operation
            )
        )
        return [D(row.amount) for row in rows]


def held(sb: Sandbox) -> list[HeldDeposit]:
    return review_queue(sb.database.uow).holds


def status(sb: Sandbox, customer: str) -> str:
    with sb.database.uow() as uow:
        return uow.compliance.profiles([customer])[customer].status


def assert_books_and_trail(sb: Sandbox) -> None:
    assert check_invariant(sb.database.uow).problems == []
    verification = verify_audit_log(sb.database.uow)
    assert verification.ok, verification.findings


# --- driving the world ----------------------------------------------------------------------------


def fund(sb: Sandbox, customer: str, amount: str) -> None:
    """The customer deposits ``amount`` of Amulet and the exchange credits it."""
    before = balance(sb, customer)
    sb.deposit(customer, amount)
    sb.ingest()
    assert balance(sb, customer) == before + D(amount)


def settle(sb: Sandbox, withdrawal_id: str) -> Withdrawal:
    """Run the withdrawal worker and ingestion until the withdrawal is over."""
    worker = sb.withdrawal_worker()
    statuses: list[str] = []
    for _ in range(20):
        worker.run_once()
        sb.ingest()
        found = withdrawal(sb, withdrawal_id)
        assert found is not None
        if found.status in ("completed", "failed"):
            return found
        statuses.append(found.status)
    raise AssertionError(f"withdrawal {withdrawal_id} did not finish: {statuses}")


def limit_withdrawals(sb: Sandbox, tier: int, **limits: Decimal | None) -> None:
    set_limits(
        sb.database.uow,
        tier,
        "withdrawal",
        TierLimits(limits.get("per_operation"), limits.get("daily"), limits.get("monthly")),
        actor=OFFICER,
        at=sb.clock(),
        reason="test ladder",
    )


def officer_flags(sb: Sandbox, address: str) -> None:
    assert flag_address(
        sb.database.uow, address, actor=OFFICER, at=sb.clock(), reason="fraud report"
    )


# --- withdrawals ---------------------------------------------------------------------------------


def test_frozen_customer_withdrawal_is_refused_before_the_debit_and_allowed_once_unfrozen(
    sb: Sandbox,
) -> None:
    fund(sb, "cust-0", "500")
    freeze_customer(
        sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="court order 17"
    )

    with pytest.raises(ComplianceError) as refused:
        sb.withdraw("cust-0", "100", key="k1")
    assert type(refused.value) is ComplianceError and refused.value.code == 20
    assert "customer is frozen (court order 17)" in str(refused.value)
    assert ("status", False, "customer is frozen (court order 17)") in refused.value.checks
    assert balance(sb, "cust-0") == D(500)
    assert account(sb, IN_FLIGHT) == ZERO
    wid = withdrawal_id("cust-0", "k1")
    assert withdrawal(sb, wid) is None and withdrawal_count(sb) == 0
    assert usage(sb, "cust-0", "withdrawal") == []
    (check,) = list_audit_records(sb.database.uow, operation_id=wid)
    assert check.entry.operation == "compliance_check:withdrawal"
    assert check.entry.customer_id == "cust-0"
    assert check.entry.kyc == {"tier": 1, "status": "frozen", "risk_score": 0}
    assert check.entry.error is not None and check.entry.error.startswith("20: ")
    assert "frozen" in check.entry.error

    unfreeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="lifted")
    requested = sb.withdraw("cust-0", "100", key="k1")
    assert requested.id == wid
    assert balance(sb, "cust-0") == D(400)
    assert usage(sb, "cust-0", "withdrawal") == [D(100)]
    operations = [r.entry.operation for r in list_audit_records(sb.database.uow, operation_id=wid)]
    assert operations == [
        "compliance_check:withdrawal",
        "compliance_check:withdrawal",
        "withdrawal_requested",
    ]
    assert settle(sb, wid).status == "completed"
    assert_books_and_trail(sb)


def test_withdrawal_over_the_daily_limit_needs_the_next_tier_and_is_refused_before_the_debit(
    sb: Sandbox,
) -> None:
    fund(sb, "cust-0", "500")
    limit_withdrawals(sb, 1, per_operation=None, daily=D(100), monthly=None)

    with pytest.raises(InsufficientKycTierError) as refused:
        sb.withdraw("cust-0", "150", key="big")
    assert refused.value.code == 21 and refused.value.required_tier == 2
    assert "tier 2 is needed" in str(refused.value)
    assert "daily limit 100.0000000000 of tier 1 (used 0.0000000000)" in str(refused.value)
    assert balance(sb, "cust-0") == D(500) and withdrawal_count(sb) == 0

    change_tier(sb.database.uow, "cust-0", 2, actor=OFFICER, at=sb.clock(), reason="EDD passed")
    sb.withdraw("cust-0", "150", key="big")
    assert balance(sb, "cust-0") == D(350)
    assert usage(sb, "cust-0", "withdrawal") == [D(150)]
    assert_books_and_trail(sb)


def test_daily_usage_counts_across_requests_and_frees_up_exactly_24_hours_later(
    sb: Sandbox,
) -> None:
    fund(sb, "cust-1", "500")
    limit_withdrawals(sb, 1, per_operation=None, daily=D(100), monthly=None)

    first = sb.withdraw("cust-1", "60", key="a")
    first_at = sb.clock()
    with pytest.raises(InsufficientKycTierError) as refused:
        sb.withdraw("cust-1", "60", key="b")
    assert refused.value.code == 21 and refused.value.required_tier == 2
    assert "daily limit 100.0000000000 of tier 1 (used 60.0000000000)" in str(refused.value)
    assert balance(sb, "cust-1") == D(440)
    settle(sb, first.id)

    # The window is half-open: a withdrawal at t stops counting at exactly t + 24 h.
    sb.ledger.set_time(first_at + DAY - timedelta(microseconds=1))
    with pytest.raises(InsufficientKycTierError):
        sb.withdraw("cust-1", "60", key="b")
    sb.ledger.set_time(first_at + DAY)
    second = sb.withdraw("cust-1", "60", key="b")
    assert balance(sb, "cust-1") == D(380)
    assert sorted(usage(sb, "cust-1", "withdrawal")) == [D(60), D(60)]
    assert settle(sb, second.id).status == "completed"
    assert_books_and_trail(sb)


def test_withdrawal_to_a_flagged_party_is_refused_until_it_is_unflagged(sb: Sandbox) -> None:
    fund(sb, "cust-0", "500")
    receiver = sb.customers["cust-1"]
    officer_flags(sb, receiver)

    with pytest.raises(AddressBlacklistedError) as refused:
        sb.withdraw("cust-0", "100", key="k", receiver=receiver)
    assert refused.value.code == 22
    assert f"counterparty {receiver} is flagged (fraud report)" in str(refused.value)
    assert balance(sb, "cust-0") == D(500) and withdrawal_count(sb) == 0

    unflag_address(sb.database.uow, receiver, actor=OFFICER, at=sb.clock(), reason="cleared")
    requested = sb.withdraw("cust-0", "100", key="k", receiver=receiver)
    assert balance(sb, "cust-0") == D(400)
    assert settle(sb, requested.id).status == "completed"
    assert_books_and_trail(sb)


def test_freezing_a_customer_stops_a_payout_already_requested_until_unfrozen(
    sb: Sandbox,
) -> None:
    fund(sb, "cust-0", "500")
    requested = sb.withdraw("cust-0", "100", key="k")
    assert requested.status == "reserved"  # allowed when requested; not yet submitted
    before = wallet(sb, "cust-0")
    freeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="takeover")

    worker = sb.withdrawal_worker()
    tick = worker.run_once()
    assert (tick.submitted, tick.compliance_blocked) == (0, 1)
    # Past its trec_tgt it goes back to the queue and waits there while the customer is frozen.
    sb.ledger.advance(sb.withdrawal_settings.trec_span_s + 5)
    sb.ledger.checkpoint()
    sb.ingest()
    for _ in range(3):
        tick = worker.run_once()
        sb.ingest()
        assert tick.submitted == 0
    waiting = withdrawal(sb, requested.id)
    assert waiting is not None and waiting.status == "queued"
    assert waiting.last_error == "waiting: customer cust-0 is frozen"
    assert wallet(sb, "cust-0") == before  # nothing left the treasury

    unfreeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="cleared")
    assert settle(sb, requested.id).status == "completed"
    assert balance(sb, "cust-0") == D(400)
    assert_books_and_trail(sb)


def test_flagging_the_receiver_stops_a_payout_already_requested(sb: Sandbox) -> None:
    fund(sb, "cust-0", "500")
    receiver = sb.customers["cust-1"]
    sb.withdraw("cust-0", "100", key="k", receiver=receiver)
    before = wallet(sb, "cust-1")
    officer_flags(sb, receiver)
    tick = sb.withdrawal_worker().run_once()
    assert (tick.submitted, tick.compliance_blocked) == (0, 1)
    sb.ingest()
    assert wallet(sb, "cust-1") == before
    assert_books_and_trail(sb)


# --- 1-step deposits held, released, returned --------------------------------------------------


def test_deposit_from_a_flagged_sender_is_held_and_released_to_the_customer_by_an_officer(
    sb: Sandbox,
) -> None:
    sender = sb.customers["cust-0"]
    officer_flags(sb, sender)
    sb.deposit("cust-0", "250")
    sb.ingest()

    assert balance(sb, "cust-0") == ZERO
    assert account(sb, COMPLIANCE_HOLD) == D(250)
    assert_books_and_trail(sb)
    queue = review_queue(sb.database.uow)
    (hold,) = queue.holds
    assert (hold.customer_id, hold.sender, hold.amount, hold.status) == (
        "cust-0",
        sender,
        D(250),
        "held",
    )
    assert hold.deposit_account == "acct-0"
    assert f"counterparty {sender} is flagged (fraud report)" in hold.why
    (review,) = queue.reviews
    assert (review.kind, review.subject, review.customer_id) == ("deposit_held", hold.id, "cust-0")
    assert usage(sb, "cust-0", "deposit") == []
    records = list_audit_records(sb.database.uow, customer_id="cust-0")
    operations = [r.entry.operation for r in records]
    assert "deposit_held" in operations and "deposit_credited" not in operations
    # The hold and the refused decision behind it are one record.
    (held_record,) = [r.entry for r in records if r.entry.operation == "deposit_held"]
    assert held_record.error is not None and held_record.error.startswith("22: ")
    assert [c["name"] for c in held_record.checks if not c["passed"]] == ["sanctions_counterparty"]
    assert held_record.state_changes == [{"credited": "compliance_hold"}]

    released = release_hold(
        sb.database.uow, hold.id, actor=OFFICER, at=sb.clock(), reason="sender verified"
    )
    assert (released.status, released.decided_by) == ("released", OFFICER)
    assert balance(sb, "cust-0") == D(250)
    assert account(sb, COMPLIANCE_HOLD) == ZERO
    queue = review_queue(sb.database.uow)
    assert queue.holds == [] and queue.reviews == []
    assert usage(sb, "cust-0", "deposit") == [D(250)]
    with pytest.raises(InvalidOperationStateError) as again:
        release_hold(sb.database.uow, hold.id, actor=OFFICER, at=sb.clock(), reason="twice")
    assert again.value.code == 41
    assert balance(sb, "cust-0") == D(250)
    assert_books_and_trail(sb)


def test_deposit_for_a_frozen_customer_is_held_and_returned_to_the_sender_on_the_ledger(
    sb: Sandbox,
) -> None:
    freeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="KYC expired")
    before = wallet(sb, "cust-0")
    sb.deposit("cust-0", "300")
    sb.ingest()
    assert wallet(sb, "cust-0") == before - D(300)
    assert balance(sb, "cust-0") == ZERO and account(sb, COMPLIANCE_HOLD) == D(300)
    (hold,) = held(sb)
    assert "customer is frozen (KYC expired)" in hold.why

    returning = return_hold(
        sb.database.uow,
        hold.id,
        treasury=sb.treasury,
        actor=OFFICER,
        at=sb.clock(),
        reason="customer gone",
    )
    assert (returning.kind, returning.status, returning.receiver) == (
        "return",
        "queued",
        sb.customers["cust-0"],
    )
    assert returning.amount == D(300)
    assert account(sb, COMPLIANCE_HOLD) == ZERO and account(sb, IN_FLIGHT) == D(300)
    assert_books_and_trail(sb)

    assert settle(sb, returning.id).status == "completed"
    assert wallet(sb, "cust-0") == before
    assert account(sb, COMPLIANCE_HOLD) == ZERO and account(sb, IN_FLIGHT) == ZERO
    assert balance(sb, "cust-0") == ZERO
    with sb.database.uow() as uow:
        closed = uow.compliance.hold(hold.id)
    assert closed is not None
    assert (closed.status, closed.withdrawal_id) == ("returned", returning.id)
    assert review_queue(sb.database.uow).reviews == []
    assert_books_and_trail(sb)


def test_deposit_from_a_flagged_sender_cannot_be_returned_and_stays_held(sb: Sandbox) -> None:
    officer_flags(sb, sb.customers["cust-1"])
    sb.deposit("cust-1", "80")
    sb.ingest()
    (hold,) = held(sb)

    with pytest.raises(AddressBlacklistedError) as refused:
        return_hold(
            sb.database.uow,
            hold.id,
            treasury=sb.treasury,
            actor=OFFICER,
            at=sb.clock(),
            reason="send it back",
        )
    assert refused.value.code == 22
    assert "cannot be returned" in str(refused.value)
    assert [h.id for h in held(sb)] == [hold.id]
    assert account(sb, COMPLIANCE_HOLD) == D(80) and account(sb, IN_FLIGHT) == ZERO
    assert withdrawal_count(sb) == 0
    assert_books_and_trail(sb)


def test_deposit_over_the_tiers_per_operation_limit_is_held_and_a_small_one_credited(
    sb: Sandbox,
) -> None:
    set_limits(
        sb.database.uow,
        1,
        "deposit",
        TierLimits(D(100), None, None),
        actor=OFFICER,
        at=sb.clock(),
        reason="test ladder",
    )
    sb.deposit("cust-2", "150")
    sb.deposit("cust-2", "50")
    sb.ingest()

    assert balance(sb, "cust-2") == D(50)
    assert account(sb, COMPLIANCE_HOLD) == D(150)
    (hold,) = held(sb)
    assert hold.amount == D(150) and hold.customer_id == "cust-2"
    assert "per_operation limit 100.0000000000 of tier 1" in hold.why
    assert "tier 2 is needed" in hold.why
    assert usage(sb, "cust-2", "deposit") == [D(50)]
    assert_books_and_trail(sb)


# --- multi-step deposits -------------------------------------------------------------------------


def test_offer_from_a_flagged_sender_is_rejected_by_the_deposit_worker_and_nothing_credited(
    sb: Sandbox,
) -> None:
    sender = sb.customers["cust-0"]
    officer_flags(sb, sender)
    before = wallet(sb, "cust-0", sb.token)
    offer = sb.deposit("cust-0", "40", instrument=sb.token)
    assert offer is not None
    sb.ingest()

    tick = sb.deposit_worker().run_once()
    assert (tick.accepted, tick.rejected, tick.errors) == (0, 1, [])
    sb.ingest()
    assert offer not in {i.contract_id for i in sb.ledger.active_instructions(sb.treasury)}
    assert wallet(sb, "cust-0", sb.token) == before
    assert balance(sb, "cust-0", sb.token) == ZERO
    assert account(sb, COMPLIANCE_HOLD, sb.token) == ZERO
    assert held(sb) == []
    checks = [
        r
        for r in list_audit_records(sb.database.uow, customer_id="cust-0")
        if r.entry.operation == "compliance_check:deposit"
    ]
    (check,) = checks
    assert check.entry.actor == "deposit-worker"
    assert check.entry.error is not None and check.entry.error.startswith("22: ")
    assert sender in check.entry.error
    assert sb.deposit_worker().run_once().rejected == 0  # answered once
    assert_books_and_trail(sb)


# --- risk --------------------------------------------------------------------------------------


def test_many_small_deposits_then_a_withdrawal_to_a_new_party_put_the_customer_under_review(
    sb: Sandbox,
) -> None:
    """The default rules: smurfing (50) + a new counterparty (20) reach the threshold (70)."""
    sb.compliance = KycRegistry(ComplianceSettings(risk=RiskRules()))
    sb.ledger.tap(sb.customers["cust-0"], sb.coin, D(200_000))
    for _ in range(12):
        sb.deposit("cust-0", "9000")
    sb.ingest()
    assert balance(sb, "cust-0") == D(108_000)
    assert status(sb, "cust-0") == "active"

    stranger = sb.customers["cust-1"]
    with pytest.raises(ComplianceError) as refused:
        sb.withdraw("cust-0", "100000", key="out", receiver=stranger)
    assert type(refused.value) is ComplianceError and refused.value.code == 20
    assert "smurfing" in str(refused.value) and "new_counterparty" in str(refused.value)
    assert "risk score 70 ≥ threshold 70" in str(refused.value)
    assert balance(sb, "cust-0") == D(108_000) and withdrawal_count(sb) == 0
    with sb.database.uow() as uow:
        profile = uow.compliance.profiles(["cust-0"])["cust-0"]
    assert (profile.status, profile.risk_score) == ("under_review", 70)
    queue = review_queue(sb.database.uow)
    (review,) = [r for r in queue.reviews if r.customer_id == "cust-0"]
    assert review.kind == "risk" and "smurfing" in review.reason
    assert [p.customer_id for p in queue.customers] == ["cust-0"]

    # Under review everywhere: a small withdrawal to themselves is refused, a deposit held.
    with pytest.raises(ComplianceError) as again:
        sb.withdraw("cust-0", "10", key="small")
    assert again.value.code == 20 and "under compliance review" in str(again.value)
    sb.deposit("cust-0", "20")
    sb.ingest()
    assert balance(sb, "cust-0") == D(108_000)
    (hold,) = held(sb)
    assert hold.amount == D(20) and "under compliance review" in hold.why
    assert_books_and_trail(sb)

    set_customer_status(
        sb.database.uow, "cust-0", "active", actor=OFFICER, at=sb.clock(), reason="explained"
    )
    assert status(sb, "cust-0") == "active"
    small = sb.withdraw("cust-0", "10", key="small")
    assert balance(sb, "cust-0") == D(107_990)
    assert settle(sb, small.id).status == "completed"
    assert_books_and_trail(sb)


# --- the registry asked directly ------------------------------------------------------------------


def test_batch_check_decides_each_request_on_its_own_and_lists_every_check(sb: Sandbox) -> None:
    freeze_customer(sb.database.uow, "cust-1", actor=OFFICER, at=sb.clock(), reason="hold")
    officer_flags(sb, sb.customers["cust-0"])
    limit_withdrawals(sb, 1, per_operation=None, daily=D(100), monthly=None)
    requests = [
        ComplianceRequest("cust-2", "withdrawal", D(60), sb.customers["cust-2"]),
        ComplianceRequest("cust-2", "withdrawal", D(60), sb.customers["cust-2"]),
        ComplianceRequest("cust-2", "withdrawal", D(150)),
        ComplianceRequest("cust-1", "deposit", D(10)),
        ComplianceRequest("cust-2", "transfer", D(10), sb.customers["cust-0"]),
        ComplianceRequest("nobody", "deposit", D(10)),
    ]
    decisions = batch_compliance_check(sb.database.uow, sb.compliance, requests, at=sb.clock())

    assert [d.request for d in decisions] == requests
    assert [d.code for d in decisions] == [0, 0, 21, 20, 22, 20]
    assert decisions[2].required_tier == 2
    full = ["status", "sanctions_customer", "sanctions_counterparty", "limits", "risk"]
    without_counterparty = ["status", "sanctions_customer", "limits", "risk"]
    names = [[check.name for check in d.checks] for d in decisions]
    assert names[:5] == [full, full, without_counterparty, without_counterparty, full]
    assert names[5] == ["customer", "sanctions_customer"]
    assert [c.name for c in decisions[3].failed] == ["status"]
    assert [c.name for c in decisions[4].failed] == ["sanctions_counterparty"]
    # Only checked: nothing was used, and each decision was audited.
    assert usage(sb, "cust-2", "withdrawal") == []
    records = list_audit_records(sb.database.uow, limit=1000)
    checks = [r for r in records if r.entry.operation.startswith("compliance_check:")]
    assert len(checks) == len(requests)
    assert [r.entry.error is None for r in checks] == [d.allowed for d in decisions]
    assert_books_and_trail(sb)


def test_counterparty_on_the_sanctions_list_is_refused_with_code_22(sb: Sandbox) -> None:
    screen = ListedSanctions.load(reference_path("sanctions"), "sample-")
    sb.compliance = KycRegistry(sb.compliance.settings, screen)

    decision = verify_operation_compliance(
        sb.database.uow,
        sb.compliance,
        "cust-0",
        "transfer",
        D(10),
        LISTED_ADDRESS.upper().replace("0X", "0x"),
        at=sb.clock(),
        operation_id="probe-1",
    )
    assert decision.code == 22 and not decision.allowed
    (failed,) = decision.failed
    assert failed.name == "sanctions_counterparty"
    assert "on the sanctions list (ofac-sdn:33151" in failed.reason
    error = decision.error()
    assert isinstance(error, AddressBlacklistedError) and error.code == 22
    clean = verify_operation_compliance(
        sb.database.uow, sb.compliance, "cust-0", "transfer", D(10), "0x" + "1" * 40, at=sb.clock()
    )
    assert clean.allowed
    (record,) = list_audit_records(sb.database.uow, operation_id="probe-1")
    assert record.entry.error is not None and record.entry.error.startswith("22: ")
    assert_books_and_trail(sb)


# --- concurrency -------------------------------------------------------------------------------


@pytest.mark.postgres
@pytest.mark.parametrize("instruments", ["one instrument", "two instruments"])
def test_concurrent_withdrawals_cannot_slip_under_one_daily_limit_together(
    postgres_url: str, instruments: str
) -> None:
    """Eight requests at once, each on its own transaction; with two instruments the balance rows
    differ, so only the registry's lock on the customer keeps them in line."""
    sb = Sandbox.create(postgres_url)
    try:
        fund(sb, "cust-0", "5000")
        sb.deposit("cust-0", "5000", instrument=sb.token)
        sb.ingest()
        assert sb.deposit_worker().run_once().accepted == 1
        sb.ingest()
        assert balance(sb, "cust-0", sb.token) == D(5000)
        amount, threads = D(100), 8
        limit_withdrawals(sb, 1, per_operation=None, daily=3 * amount, monthly=None)
        chosen = [
            sb.coin if n % 2 == 0 or instruments == "one instrument" else sb.token
            for n in range(threads)
        ]
        barrier = threading.Barrier(threads)
        outcomes: list[object] = [None] * threads

        def request(n: int) -> None:
            barrier.wait()
            try:
                outcomes[n] = sb.withdraw("cust-0", amount, key=f"race-{n}", instrument=chosen[n])
            except BaseException as exc:  # judged by the main thread
                outcomes[n] = exc

        workers = [threading.Thread(target=request, args=(n,)) for n in range(threads)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join(timeout=120)
        assert not any(thread.is_alive() for thread in workers)

        allowed = [o for o in outcomes if isinstance(o, Withdrawal)]
        refused = [o for o in outcomes if isinstance(o, InsufficientKycTierError)]
        assert (len(allowed), len(refused)) == (3, 5), outcomes
        assert all(error.code == 21 for error in refused)
        assert sum(usage(sb, "cust-0", "withdrawal"), ZERO) == 3 * amount
        debited = sum(
            (D(5000) - balance(sb, "cust-0", instrument) for instrument in (sb.coin, sb.token)),
            ZERO,
        )
        assert debited == 3 * amount
        for instrument in (sb.coin, sb.token):
            paid = sum((w.amount for w in allowed if w.instrument == instrument), ZERO)
            assert balance(sb, "cust-0", instrument) == D(5000) - paid
            assert account(sb, IN_FLIGHT, instrument) == paid
        assert withdrawal_count(sb) == 3
        assert_books_and_trail(sb)
    finally:
        sb.close()


# --- the audit trail -----------------------------------------------------------------------------


def test_audit_trail_of_a_scenario_verifies_and_names_a_tampered_record(sb: Sandbox) -> None:
    fund(sb, "cust-0", "500")
    freeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="check")
    with pytest.raises(ComplianceError):
        sb.withdraw("cust-0", "100", key="k")
    unfreeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="ok")
    sb.withdraw("cust-0", "100", key="k")
    trail = list_audit_records(sb.database.uow, customer_id="cust-0")
    assert [r.entry.operation for r in trail] == [
        "customer_registered",
        "deposit_credited",
        "customer_status_changed",
        "compliance_check:withdrawal",
        "customer_status_changed",
        "compliance_check:withdrawal",
        "withdrawal_requested",
    ]
    # Ingestion audits a deposit's compliance decision and its credit in one record: the
    # customer's KYC state, every check with its reason, the usage it adds and where it went.
    credited = trail[1].entry
    assert credited.kyc == {"tier": 1, "status": "active", "risk_score": 0}
    assert [check["name"] for check in credited.checks] == [
        "status",
        "sanctions_customer",
        "sanctions_counterparty",
        "limits",
        "risk",
    ]
    assert all(check["passed"] for check in credited.checks) and credited.error is None
    assert credited.parameters["operation"] == "deposit"
    assert credited.parameters["instrument_amount"] == "500.0000000000"
    assert [change.get("usage") for change in credited.state_changes] == ["deposit", None]
    assert credited.state_changes[-1] == {"credited": "customer:cust-0"}
    assert verify_audit_log(sb.database.uow).ok

    target = trail[3].seq  # the refused check
    with sb.database.engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(
                "ALTER TABLE audit_records DISABLE TRIGGER audit_records_no_change"
            )
        else:
            connection.exec_driver_sql("DROP TRIGGER audit_records_no_update")
        connection.exec_driver_sql(
            'UPDATE audit_records SET parameters = \'{"amount":"1.0000000000"}\' '
            f"WHERE seq = {target}"
        )
    result = verify_audit_log(sb.database.uow)
    assert not result.ok
    assert [(f.seq, f.kind) for f in result.findings] == [(target, "modified")]
    assert f"record {target} (compliance_check:withdrawal" in result.findings[0].message


# --- defects found while writing these tests, fixed ---------------------------------------------


def held_usdx_deposit(sb: Sandbox, customer: str, amount: str) -> HeldDeposit:
    """A USDX offer the deposit worker accepted while the customer was active; the customer is
    frozen before ingestion sees the accept, so the arrived deposit is held."""
    sb.deposit(customer, amount, instrument=sb.token)
    sb.ingest()
    assert sb.deposit_worker().run_once().accepted == 1
    freeze_customer(sb.database.uow, customer, actor=OFFICER, at=sb.clock(), reason="late hit")
    sb.ingest()
    (hold,) = held(sb)
    assert hold.amount == D(amount) and account(sb, COMPLIANCE_HOLD, sb.token) == D(amount)
    return hold


def test_a_return_the_sender_rejects_puts_the_deposit_back_on_hold(sb: Sandbox) -> None:
    hold = held_usdx_deposit(sb, "cust-0", "40")
    returning = return_hold(
        sb.database.uow, hold.id, treasury=sb.treasury, actor=OFFICER, at=sb.clock(), reason="no"
    )
    sb.withdrawal_worker().run_once()
    sb.ingest()
    offered = withdrawal(sb, returning.id)
    assert offered is not None and offered.instruction_cid is not None
    sb.ledger.reject(offered.instruction_cid, sb.customers["cust-0"])
    sb.ingest()
    failed = withdrawal(sb, returning.id)
    assert failed is not None and failed.status == "failed"
    assert account(sb, COMPLIANCE_HOLD, sb.token) == D(40)
    assert_books_and_trail(sb)
    # The officer must still be able to act on the money sitting in compliance_hold.
    assert [h.id for h in held(sb)] == [hold.id]
    release_hold(sb.database.uow, hold.id, actor=OFFICER, at=sb.clock(), reason="retry")
    assert balance(sb, "cust-0", sb.token) == D(40)


def test_a_released_deposit_counts_against_the_limits_in_reference_units(sb: Sandbox) -> None:
    sb.compliance = KycRegistry(
        ComplianceSettings(risk=sb.compliance.settings.risk, reference_rates={sb.coin.key(): D(2)})
    )
    freeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="check")
    sb.deposit("cust-0", "100")
    sb.ingest()
    unfreeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="ok")
    sb.deposit("cust-0", "100")
    sb.ingest()
    (hold,) = held(sb)
    release_hold(
        sb.database.uow,
        hold.id,
        actor=OFFICER,
        at=sb.clock(),
        reason="ok",
        registry=sb.compliance,
    )
    assert balance(sb, "cust-0") == D(200)
    # 100 Amulet are 200 reference units, whether credited by ingestion or released.
    assert usage(sb, "cust-0", "deposit") == [D(200), D(200)]


def test_a_refunded_withdrawal_no_longer_counts_against_the_daily_limit(sb: Sandbox) -> None:
    limit_withdrawals(sb, 1, per_operation=None, daily=D(100), monthly=None)
    sb.deposit("cust-1", "500", instrument=sb.token)
    sb.ingest()
    assert sb.deposit_worker().run_once().accepted == 1
    sb.ingest()
    requested = sb.withdraw("cust-1", "100", instrument=sb.token, key="k1")
    sb.withdrawal_worker().run_once()
    sb.ingest()
    offered = withdrawal(sb, requested.id)
    assert offered is not None and offered.instruction_cid is not None
    sb.ledger.reject(offered.instruction_cid, sb.customers["cust-1"])
    sb.ingest()
    refunded = withdrawal(sb, requested.id)
    assert refunded is not None and refunded.status == "failed"
    assert balance(sb, "cust-1", sb.token) == D(500)
    assert_books_and_trail(sb)
    sb.withdraw("cust-1", "50", instrument=sb.token, key="k2")


@pytest.mark.postgres
def test_a_withdrawal_request_racing_ingestion_of_a_deposit_of_the_same_customer_both_succeed(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two transactions are made to meet half-way: the request holds what it locks first
    while ingestion takes what it locks first (each waits at most a few seconds for the other)."""
    from sluice.store.compliance_repository import SqlComplianceRepository
    from sluice.store.withdrawal_repository import SqlWithdrawalRepository

    sb = Sandbox.create(postgres_url)
    try:
        fund(sb, "cust-0", "500")
        sb.deposit("cust-0", "100")  # ingested while the request runs
        request_locked = threading.Event()
        ingestion_locked = threading.Event()
        profiles = SqlComplianceRepository.profiles
        customer_exists = SqlWithdrawalRepository.customer_exists

        def profiles_then_meet(
            self: SqlComplianceRepository, ids: list[str], *, lock: bool = False
        ) -> object:
            found = profiles(self, ids, lock=lock)
            if lock and threading.current_thread().name == "ingestion":
                ingestion_locked.set()
                request_locked.wait(3)
            return found

        def meet_then_exists(self: SqlWithdrawalRepository, customer_id: str) -> bool:
            if threading.current_thread().name == "request":
                request_locked.set()
                ingestion_locked.wait(3)
            return customer_exists(self, customer_id)

        monkeypatch.setattr(SqlComplianceRepository, "profiles", profiles_then_meet)
        monkeypatch.setattr(SqlWithdrawalRepository, "customer_exists", meet_then_exists)
        outcomes: dict[str, object] = {}

        def run(name: str, action: object) -> None:
            try:
                outcomes[name] = action()  # type: ignore[operator]
            except BaseException as exc:  # judged by the main thread
                outcomes[name] = exc

        threads = [
            threading.Thread(target=run, args=("ingestion", sb.ingest), name="ingestion"),
            threading.Thread(
                target=run,
                args=("request", lambda: sb.withdraw("cust-0", "10", key="k")),
                name="request",
            ),
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        monkeypatch.undo()
        assert not any(isinstance(o, BaseException) for o in outcomes.values()), outcomes
        assert balance(sb, "cust-0") == D(590)
        assert_books_and_trail(sb)
    finally:
        sb.close()
