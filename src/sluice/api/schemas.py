"""The API's request and response bodies (pydantic), and how domain records become them.

Amounts are decimal strings (10 fractional digits at most, as on the ledger); times are RFC 3339
UTC; party ids are ``hint::fingerprint``. Unknown fields in a request body are refused, so a
misspelt field is an error rather than silently ignored.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from sluice.domain.amounts import format_amount
from sluice.domain.approvals import Approval
from sluice.domain.compliance import HeldDeposit, Profile, ReviewItem
from sluice.domain.ledger import InstrumentId
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import ApiKeyRecord, CustomerRecord, HistoryRecord, InstrumentRecord, SuspenseItem

T = TypeVar("T")

Text = Annotated[str, StringConstraints(min_length=1, max_length=500, strip_whitespace=True)]
Reason = Annotated[str, StringConstraints(min_length=1, max_length=1000, strip_whitespace=True)]
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:@-]+$")
]
PartyId = Annotated[
    str, StringConstraints(min_length=3, max_length=512, pattern=r"^[^:\s]+::[0-9A-Za-z]+$")
]
AmountIn = Annotated[
    Decimal, Field(gt=0, max_digits=38, decimal_places=10, description="a positive decimal")
]
LimitIn = Annotated[Decimal, Field(ge=0, max_digits=38, decimal_places=10)]
Amount = Annotated[str, Field(description="decimal amount as a string", examples=["12.5"])]


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


def amount_text(value: Decimal | None) -> str | None:
    return None if value is None else format_amount(value)


# --- common --------------------------------------------------------------------------------------


class Page(Out, Generic[T]):
    items: list[T]
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page; null on the last")


def page(items: Sequence[T], offset: int, limit: int) -> dict[str, Any]:
    return {
        "items": list(items),
        "offset": offset,
        "limit": limit,
        "next_offset": offset + len(items) if len(items) == limit else None,
    }


class ErrorOut(Out):
    code: int
    error: str
    message: str
    details: dict[str, Any]
    correlation_id: str | None


class InstrumentRef(Out):
    admin: str
    id: str


def instrument_ref(instrument: InstrumentId) -> InstrumentRef:
    return InstrumentRef(admin=instrument.admin, id=instrument.id)


class InstrumentIn(Body):
    admin: PartyId
    id: Identifier


# --- customers -----------------------------------------------------------------------------------


class KycOut(Out):
    tier: int
    status: str
    status_reason: str | None
    risk_score: int


def kyc_out(profile: Profile) -> KycOut:
    return KycOut(
        tier=profile.tier,
        status=profile.status,
        status_reason=profile.status_reason,
        risk_score=profile.risk_score,
    )


class CustomerOut(Out):
    id: str
    name: str
    created_at: datetime
    kyc: KycOut
    deposit_accounts: list[str]


def customer_out(record: CustomerRecord) -> CustomerOut:
    return CustomerOut(
        id=record.id,
        name=record.name,
        created_at=record.created_at,
        kyc=kyc_out(record.profile),
        deposit_accounts=list(record.deposit_accounts),
    )


class CustomerIn(Body):
    id: Identifier
    name: Text
    tier: int | None = Field(default=None, ge=0, le=4)
    deposit_accounts: list[Identifier] = Field(default_factory=list, max_length=20)


class BalanceOut(Out):
    instrument: InstrumentRef
    amount: Amount


class BalancesOut(Out):
    customer_id: str
    balances: list[BalanceOut]


class DepositInstructionOut(Out):
    treasury: str
    instrument: InstrumentRef
    transfer_kinds: list[str]
    deposit_account: str
    reason_key: str
    description: str


class HistoryOut(Out):
    update_id: str
    node_id: int
    offset: int
    record_time: datetime
    kind: str
    status: str | None
    sender: str | None
    receiver: str | None
    instrument: InstrumentRef | None
    amount: Amount | None
    reason: str | None
    disposition: str


def history_out(record: HistoryRecord) -> HistoryOut:
    return HistoryOut(
        update_id=record.update_id,
        node_id=record.node_id,
        offset=record.offset,
        record_time=record.record_time,
        kind=record.kind,
        status=record.status,
        sender=record.sender,
        receiver=record.receiver,
        instrument=instrument_ref(record.instrument) if record.instrument else None,
        amount=amount_text(record.amount),
        reason=record.reason,
        disposition=record.disposition,
    )


class KycChangeIn(Body):
    status: Literal["active", "under_review", "frozen", "blacklisted"] | None = None
    tier: int | None = Field(default=None, ge=0, le=4)
    reason: Reason


# --- withdrawals ---------------------------------------------------------------------------------


class WithdrawalIn(Body):
    receiver: PartyId
    instrument: InstrumentIn
    amount: AmountIn


class WithdrawalOut(Out):
    id: str
    customer_id: str | None
    receiver: str
    instrument: InstrumentRef
    amount: Amount
    status: str
    attempt: int
    attempts_max: int
    idempotency_key: str | None
    trec_tgt: datetime | None
    requested_at: datetime | None
    failure: str | None


def withdrawal_out(record: Withdrawal) -> WithdrawalOut:
    return WithdrawalOut(
        id=record.id,
        customer_id=record.customer_id,
        receiver=record.receiver,
        instrument=instrument_ref(record.instrument),
        amount=format_amount(record.amount),
        status=record.status,
        attempt=record.attempt,
        attempts_max=record.attempts_max,
        idempotency_key=record.idempotency_key,
        trec_tgt=record.trec_tgt,
        requested_at=record.requested_at,
        failure=record.failure,
    )


# --- instruments ---------------------------------------------------------------------------------


class InstrumentOut(Out):
    admin: str
    id: str
    registry_url: str | None
    trusted: bool
    transfer_kinds: list[str]
    enabled: bool
    limits: dict[str, str]


def instrument_out(record: InstrumentRecord) -> InstrumentOut:
    return InstrumentOut(
        admin=record.instrument.admin,
        id=record.instrument.id,
        registry_url=record.registry_url,
        trusted=record.trusted,
        transfer_kinds=list(record.transfer_kinds),
        enabled=record.enabled,
        limits={key: str(value) for key, value in (record.limits or {}).items()},
    )


TransferKindIn = Literal["direct", "offer", "self"]


def _direct_only() -> list[TransferKindIn]:
    return ["direct"]


class OnboardIn(Body):
    admin: PartyId
    id: Identifier
    registry_url: Annotated[str, StringConstraints(max_length=500)] | None = None
    trusted: bool = True
    transfer_kinds: list[TransferKindIn] = Field(
        default_factory=_direct_only, min_length=1, max_length=3
    )
    limits: dict[Identifier, LimitIn] | None = None
    reason: Reason | None = None


class InstrumentStateIn(Body):
    admin: PartyId
    id: Identifier
    reason: Reason | None = None


# --- suspense and compliance ---------------------------------------------------------------------


class SuspenseOut(Out):
    id: str
    update_id: str
    node_id: int
    record_time: datetime
    instrument: InstrumentRef
    amount: Amount
    sender: str | None
    reason: str | None
    assigned_to: str | None
    assigned_by: str | None
    assigned_at: datetime | None


def suspense_out(item: SuspenseItem) -> SuspenseOut:
    return SuspenseOut(
        id=item.id,
        update_id=item.update_id,
        node_id=item.node_id,
        record_time=item.record_time,
        instrument=instrument_ref(item.instrument),
        amount=format_amount(item.amount),
        sender=item.sender,
        reason=item.reason,
        assigned_to=item.assigned_to,
        assigned_by=item.assigned_by,
        assigned_at=item.assigned_at,
    )


class AssignIn(Body):
    customer_id: Identifier
    reason: Reason


class HoldOut(Out):
    id: str
    customer_id: str | None
    deposit_account: str | None
    sender: str
    instrument: InstrumentRef
    amount: Amount
    update_id: str
    why: str
    status: str
    held_at: datetime
    decided_by: str | None
    decided_at: datetime | None


def hold_out(hold: HeldDeposit) -> HoldOut:
    return HoldOut(
        id=hold.id,
        customer_id=hold.customer_id,
        deposit_account=hold.deposit_account,
        sender=hold.sender,
        instrument=InstrumentRef(admin=hold.instrument_admin, id=hold.instrument_id),
        amount=format_amount(hold.amount),
        update_id=hold.update_id,
        why=hold.why,
        status=hold.status,
        held_at=hold.held_at,
        decided_by=hold.decided_by,
        decided_at=hold.decided_at,
    )


class ReasonIn(Body):
    reason: Reason


class ReviewOut(Out):
    id: str
    kind: str
    reason: str
    opened_at: datetime
    customer_id: str | None
    subject: str | None
    closed_at: datetime | None
    closed_by: str | None
    resolution: str | None


def review_out(review: ReviewItem) -> ReviewOut:
    return ReviewOut(
        id=review.id,
        kind=review.kind,
        reason=review.reason,
        opened_at=review.opened_at,
        customer_id=review.customer_id,
        subject=review.subject,
        closed_at=review.closed_at,
        closed_by=review.closed_by,
        resolution=review.resolution,
    )


class ResolutionIn(Body):
    resolution: Reason


class LimitsIn(Body):
    tier: int = Field(ge=0, le=4)
    operation: Literal["deposit", "withdrawal", "mint", "burn", "transfer", "exchange"]
    per_operation: LimitIn | None = None
    daily: LimitIn | None = None
    monthly: LimitIn | None = None
    reason: Reason


class LimitOut(Out):
    tier: int
    operation: str
    per_operation: Amount | None
    daily: Amount | None
    monthly: Amount | None


class AddressIn(Body):
    address: Annotated[str, StringConstraints(min_length=1, max_length=600, strip_whitespace=True)]
    reason: Reason


class FlaggedOut(Out):
    address: str
    reason: str
    flagged_by: str
    flagged_at: datetime


class ComplianceCheckIn(Body):
    customer_id: Identifier
    operation: Literal["deposit", "withdrawal", "mint", "burn", "transfer", "exchange"]
    instrument: InstrumentIn | None = None
    amount: AmountIn
    counterparty: PartyId | None = None


class CheckOut(Out):
    name: str
    passed: bool
    reason: str


class DecisionOut(Out):
    allowed: bool
    code: int
    required_tier: int | None
    reference_amount: Amount
    checks: list[CheckOut]
    risk_flags: list[str]


class ScreenIn(Body):
    name: Text


class ScreenOut(Out):
    name: str
    matched: bool
    score: float
    listed_name: str | None
    entity_id: str | None


# --- controls ------------------------------------------------------------------------------------


class PauseIn(Body):
    mode: Literal["paused", "emergency", "maintenance"] = "paused"
    reason: Reason


class PauseOut(Out):
    mode: str
    reason: str
    actor: str
    since: datetime


class StatusOut(Out):
    running: bool
    pause: PauseOut | None
    treasury: str
    time: datetime


class VoteOut(Out):
    principal_id: str
    role: str
    decision: str
    at: datetime
    comment: str | None


class ApprovalOut(Out):
    id: str
    operation: str
    parameters: dict[str, Any]
    status: str
    required: int
    approvals: int
    votes: list[VoteOut]
    proposed_by: str
    proposed_at: datetime
    customer_id: str | None
    timelock_s: float
    effective_at: datetime | None
    executed_at: datetime | None
    result: dict[str, Any] | None
    error: str | None
    reason: str | None
    correlation_id: str | None


def approval_out(approval: Approval) -> ApprovalOut:
    return ApprovalOut(
        id=approval.id,
        operation=approval.operation,
        parameters=dict(approval.parameters),
        status=approval.status,
        required=approval.required,
        approvals=len(approval.approvers),
        votes=[
            VoteOut(
                principal_id=v.principal_id,
                role=v.role,
                decision=v.decision,
                at=v.at,
                comment=v.comment,
            )
            for v in approval.votes
        ],
        proposed_by=approval.proposed_by,
        proposed_at=approval.proposed_at,
        customer_id=approval.customer_id,
        timelock_s=approval.timelock_s,
        effective_at=approval.effective_at,
        executed_at=approval.executed_at,
        result=dict(approval.result) if approval.result is not None else None,
        error=approval.error,
        reason=approval.reason,
        correlation_id=approval.correlation_id,
    )


class VoteIn(Body):
    comment: Annotated[str, StringConstraints(max_length=1000)] | None = None


class ConfigChangeIn(Body):
    key: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    value: Any = Field(description="the new value (JSON); null where the setting allows none")
    reason: Reason


class SettingOut(Out):
    key: str
    value: Any
    default: Any
    description: str
    scheduled: list[dict[str, Any]]


class ConfigOut(Out):
    settings: list[SettingOut]
    deployment: dict[str, Any]


class ApiKeyIn(Body):
    role: Literal["super_admin", "system_admin", "compliance_officer", "operator", "user"]
    customer_id: Identifier | None = None
    label: Annotated[str, StringConstraints(max_length=200)] | None = None


class ApiKeyOut(Out):
    id: str
    role: str
    customer_id: str | None
    label: str | None
    created_by: str
    created_at: datetime
    revoked_by: str | None
    revoked_at: datetime | None


def api_key_out(record: ApiKeyRecord) -> ApiKeyOut:
    return ApiKeyOut(
        id=record.id,
        role=record.role,
        customer_id=record.customer_id,
        label=record.label,
        created_by=record.created_by,
        created_at=record.created_at,
        revoked_by=record.revoked_by,
        revoked_at=record.revoked_at,
    )


class NewApiKeyOut(ApiKeyOut):
    key: str = Field(description="the key itself: shown this once, never stored")


class AuditOut(Out):
    seq: int
    operation_id: str
    operation: str
    actor: str
    recorded_at: datetime
    customer_id: str | None
    parameters: Any
    checks: Any
    state_changes: Any
    error: str | None
    correlation_id: str | None
    hash: str


class AuditVerifyOut(Out):
    ok: bool
    records: int
    findings: list[dict[str, Any]]


class BooksOut(Out):
    holds: bool
    problems: list[str]


class HealthOut(Out):
    status: str


class ReadyOut(Out):
    ready: bool
    checks: dict[str, dict[str, Any]]


def mapping_of(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value or {})
