"""The KYC registry's rules (DESIGN §6): whether a customer may perform an operation.

A decision is made from what the caller read in the operation's own transaction — the customer's
tier and status, what the customer used of the tier's limits in the rolling windows, whether
either party is listed or flagged, and the risk assessment — and lists every check with its
reason, so the audit trail and the error both say exactly why. Nothing here touches a database.

Limits are in the instrument's reference currency units (``amount × reference rate``). What a
customer used in the rolling windows is summed in :mod:`sluice.domain.compliance_windows` (hour
and day bucket totals, records only at the windows' edges); its names are re-exported here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.compliance_windows import (
    BUCKET_LENGTHS_S,
    DAY,
    HOUR,
    MONTH,
    OPERATIONS,
    WINDOWS,
    Operation,
    UsageBucket,
    UsageRecord,
    UsageSpan,
    UsageWindows,
    bucket_start,
    usage_buckets,
    usage_in_windows,
)
from sluice.domain.errors import (
    AddressBlacklistedError,
    ComplianceError,
    InsufficientKycTierError,
    InvalidInputError,
)
from sluice.domain.values import value_class

# The usage arithmetic lives in compliance_windows; its names are re-exported so that they stay
# importable from here.
__all__ = [
    "BUCKET_LENGTHS_S",
    "DAY",
    "DEFAULT_STEPS",
    "HOUR",
    "MONTH",
    "NOTHING",
    "OPERATIONS",
    "STATUSES",
    "TIERS",
    "TIER_MAX",
    "WINDOWS",
    "Check",
    "ComplianceDecision",
    "ComplianceRequest",
    "HeldDeposit",
    "HoldStatus",
    "KycStatus",
    "LimitLadder",
    "Operation",
    "Profile",
    "ReviewItem",
    "ReviewKind",
    "TierLimits",
    "UsageBucket",
    "UsageRecord",
    "UsageSpan",
    "UsageWindows",
    "bucket_start",
    "check_operation",
    "check_status",
    "check_tier",
    "decide",
    "usage_buckets",
    "usage_in_windows",
]

KycStatus = Literal["active", "under_review", "frozen", "blacklisted"]
STATUSES: tuple[KycStatus, ...] = ("active", "under_review", "frozen", "blacklisted")
TIERS = range(5)
TIER_MAX = 4


def check_operation(value: str) -> Operation:
    for operation in OPERATIONS:
        if value == operation:
            return operation
    raise InvalidInputError(f"unknown operation {value!r}; one of {', '.join(OPERATIONS)}")


def check_status(value: str) -> KycStatus:
    for status in STATUSES:
        if value == status:
            return status
    raise InvalidInputError(f"unknown KYC status {value!r}; one of {', '.join(STATUSES)}")


def check_tier(value: int | str) -> int:
    try:
        tier = int(value)
    except (TypeError, ValueError):
        raise InvalidInputError(f"KYC tier must be a whole number 0–4, got {value!r}") from None
    if tier not in TIERS:
        raise InvalidInputError(f"KYC tier must be 0–4, got {tier}")
    return tier


@dataclass(frozen=True, slots=True)
class TierLimits:
    """What one tier may do of one operation; ``None`` means no limit."""

    per_operation: Decimal | None
    daily: Decimal | None
    monthly: Decimal | None

    def __post_init__(self) -> None:
        for name in ("per_operation", "daily", "monthly"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise InvalidInputError(f"limit {name} must not be negative")

    def allows(self, amount: Decimal, used_daily: Decimal, used_monthly: Decimal) -> bool:
        return not _over(self, amount, used_daily, used_monthly)

    def as_dict(self) -> dict[str, str | None]:
        return {
            "per_operation": _text(self.per_operation),
            "daily": _text(self.daily),
            "monthly": _text(self.monthly),
        }


NOTHING = TierLimits(ZERO, ZERO, ZERO)


def _text(value: Decimal | None) -> str | None:
    return None if value is None else format_amount(value)


def _over(limits: TierLimits, amount: Decimal, daily: Decimal, monthly: Decimal) -> list[str]:
    over = []
    if limits.per_operation is not None and amount > limits.per_operation:
        over.append("per_operation")
    if limits.daily is not None and daily + amount > limits.daily:
        over.append("daily")
    if limits.monthly is not None and monthly + amount > limits.monthly:
        over.append("monthly")
    return over


def _ladder_step(daily: str, monthly: str) -> TierLimits:
    return TierLimits(Decimal(daily), Decimal(daily), Decimal(monthly))


# DESIGN §6's ladder: tier 0 may move nothing; a single operation may use the whole daily limit.
DEFAULT_STEPS: Mapping[int, TierLimits] = {
    0: NOTHING,
    1: _ladder_step("1000000", "10000000"),
    2: _ladder_step("5000000", "50000000"),
    3: _ladder_step("20000000", "200000000"),
    4: _ladder_step("100000000", "1000000000"),
}


@dataclass(frozen=True, slots=True)
class LimitLadder:
    """Limits per (tier, operation); a pair not listed may move nothing."""

    limits: Mapping[tuple[int, str], TierLimits]

    @classmethod
    def default(cls) -> LimitLadder:
        return cls({(tier, op): step for tier, step in DEFAULT_STEPS.items() for op in OPERATIONS})

    def of(self, tier: int, operation: str) -> TierLimits:
        return self.limits.get((tier, operation), NOTHING)

    def with_override(self, tier: int, operation: str, limits: TierLimits) -> LimitLadder:
        return self.with_overrides({(tier, operation): limits})

    def with_overrides(self, overrides: Mapping[tuple[int, str], TierLimits]) -> LimitLadder:
        """This ladder with ``overrides`` in place of its limits of those (tier, operation)
        pairs; the ladder itself when there are none."""
        if not overrides:
            return self
        return LimitLadder({**self.limits, **overrides})

    def required_tier(
        self,
        operation: str,
        amount: Decimal,
        used_daily: Decimal,
        used_monthly: Decimal,
        *,
        above: int = -1,
    ) -> int | None:
        """The lowest tier above ``above`` whose limits would allow the operation now (None: no
        such tier would — enhanced verification cannot help)."""
        for tier in TIERS:
            if tier <= above:
                continue
            if self.of(tier, operation).allows(amount, used_daily, used_monthly):
                return tier
        return None


@dataclass(frozen=True, slots=True)
class Profile:
    """A customer as the KYC registry knows them."""

    customer_id: str
    tier: int
    status: KycStatus
    status_reason: str | None = None
    risk_score: int = 0

    def as_dict(self) -> dict[str, object]:
        return {"tier": self.tier, "status": self.status, "risk_score": self.risk_score}


@value_class
class Check:
    name: str
    passed: bool
    reason: str

    def as_tuple(self) -> tuple[str, bool, str]:
        return (self.name, self.passed, self.reason)

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "passed": self.passed, "reason": self.reason}


@value_class
class ComplianceRequest:
    customer_id: str
    operation: Operation
    amount: Decimal  # reference units
    counterparty: str | None = None


@value_class
class ComplianceDecision:
    request: ComplianceRequest
    checks: tuple[Check, ...]
    code: int = 0  # 0 allowed, else the error code (20, 21, 22)
    required_tier: int | None = None
    risk_flags: tuple[str, ...] = field(default=())

    @property
    def allowed(self) -> bool:
        return self.code == 0

    @property
    def failed(self) -> tuple[Check, ...]:
        return tuple(check for check in self.checks if not check.passed)

    def summary(self) -> str:
        if self.allowed:
            return "allowed"
        return "; ".join(check.reason for check in self.failed)

    def error(self) -> ComplianceError:
        """The error to raise for a denied decision."""
        assert not self.allowed, "an allowed decision has no error"
        checks = tuple(check.as_tuple() for check in self.checks)
        request = self.request
        message = (
            f"{request.operation} of {format_amount(request.amount)} for customer "
            f"{request.customer_id} refused: {self.summary()}"
        )
        if self.code == 21:
            return InsufficientKycTierError(
                message, required_tier=self.required_tier, checks=checks
            )
        if self.code == 22:
            return AddressBlacklistedError(message, checks=checks)
        return ComplianceError(message, checks=checks)

    def as_dict(self) -> dict[str, object]:
        return {
            "allowed": self.allowed,
            "code": self.code,
            "required_tier": self.required_tier,
            "checks": [check.as_dict() for check in self.checks],
            "risk_flags": list(self.risk_flags),
        }


def decide(
    request: ComplianceRequest,
    profile: Profile | None,
    *,
    ladder: LimitLadder,
    used_daily: Decimal,
    used_monthly: Decimal,
    customer_listed: str | None = None,
    counterparty_listed: str | None = None,
    risk_score: int = 0,
    risk_threshold: int | None = None,
    risk_flags: tuple[str, ...] = (),
) -> ComplianceDecision:
    """Every check of DESIGN §6, in order; the first failing one sets the error code, except that a
    listed or blacklisted party (22) wins over everything else."""
    checks: list[Check] = []
    code = 0
    required: int | None = None

    def fail(check: Check, error_code: int) -> None:
        nonlocal code
        checks.append(check)
        if error_code == 22 or code == 0:
            code = error_code

    if request.amount <= 0:
        fail(Check("amount", False, "amount must be positive"), 20)
    if profile is None:
        fail(Check("customer", False, f"unknown customer {request.customer_id!r}"), 20)
    elif profile.status == "blacklisted":
        fail(Check("status", False, _status_reason(profile)), 22)
    elif profile.status != "active":
        fail(Check("status", False, _status_reason(profile)), 20)
    else:
        checks.append(_ACTIVE)

    if customer_listed:
        fail(
            Check("sanctions_customer", False, f"customer on a sanctions list: {customer_listed}"),
            22,
        )
    else:
        checks.append(_CUSTOMER_NOT_LISTED)
    if request.counterparty is not None:
        if counterparty_listed:
            fail(
                Check(
                    "sanctions_counterparty",
                    False,
                    f"counterparty {request.counterparty} is {counterparty_listed}",
                ),
                22,
            )
        else:
            checks.append(_COUNTERPARTY_NOT_LISTED)

    if profile is None:
        return ComplianceDecision(request, tuple(checks), code or 20)
    limits = ladder.of(profile.tier, request.operation)
    over = _over(limits, request.amount, used_daily, used_monthly)
    if over:
        required = ladder.required_tier(
            request.operation, request.amount, used_daily, used_monthly, above=profile.tier
        )
        need = (
            f"tier {required} is needed (enhanced verification)"
            if required is not None
            else "no KYC tier allows it"
        )
        parts = []
        for name in over:
            limit = getattr(limits, name)
            used = {"per_operation": ZERO, "daily": used_daily, "monthly": used_monthly}[name]
            parts.append(
                f"{name} limit {format_amount(limit)} of tier {profile.tier} "
                f"(used {format_amount(used)})"
            )
        fail(Check("limits", False, f"over the {', '.join(parts)}: {need}"), 21)
    else:
        checks.append(
            Check(
                "limits",
                True,
                f"within tier {profile.tier} limits (24 h used {format_amount(used_daily)}, "
                f"30 days used {format_amount(used_monthly)})",
            )
        )

    if risk_threshold is not None:
        if risk_score >= risk_threshold:
            flags = f" ({', '.join(risk_flags)})" if risk_flags else ""
            fail(
                Check(
                    "risk", False, f"risk score {risk_score} ≥ threshold {risk_threshold}{flags}"
                ),
                20,
            )
        else:
            checks.append(_below_threshold(risk_score, risk_threshold))
    return ComplianceDecision(request, tuple(checks), code, required, risk_flags)


# The checks that pass the same way every time, made once (a Check is immutable; most
# decisions pass them all).
_ACTIVE = Check("status", True, "customer is active")
_CUSTOMER_NOT_LISTED = Check("sanctions_customer", True, "customer not listed")
_COUNTERPARTY_NOT_LISTED = Check("sanctions_counterparty", True, "counterparty not listed")
_BELOW_THRESHOLD: dict[tuple[int, int], Check] = {}


def _below_threshold(risk_score: int, risk_threshold: int) -> Check:
    """``Check("risk", True, …)``, remembered for plain integers (bounded)."""
    if type(risk_score) is not int or type(risk_threshold) is not int:
        return Check("risk", True, f"risk score {risk_score} < {risk_threshold}")
    key = (risk_score, risk_threshold)
    check = _BELOW_THRESHOLD.get(key)
    if check is None:
        check = Check("risk", True, f"risk score {risk_score} < {risk_threshold}")
        if len(_BELOW_THRESHOLD) < 1024:
            _BELOW_THRESHOLD[key] = check
    return check


def _status_reason(profile: Profile) -> str:
    text = {
        "under_review": "customer is under compliance review",
        "frozen": "customer is frozen",
        "blacklisted": "customer is blacklisted",
    }.get(profile.status, f"customer status is {profile.status}")
    return f"{text} ({profile.status_reason})" if profile.status_reason else text


HoldStatus = Literal["held", "released", "returned"]


@dataclass(frozen=True, slots=True)
class HeldDeposit:
    """A deposit that arrived but was not credited: it sits in the compliance-hold account until a
    compliance officer releases it to the customer or returns it to the sender."""

    id: str
    sender: str
    instrument_admin: str
    instrument_id: str
    amount: Decimal
    update_id: str
    why: str
    held_at: datetime
    customer_id: str | None = None
    deposit_account: str | None = None
    status: HoldStatus = "held"
    decided_by: str | None = None
    decided_at: datetime | None = None
    withdrawal_id: str | None = None


ReviewKind = Literal[
    "deposit_held", "offer_rejected", "risk", "sanctions_match", "customer_flagged", "denied"
]


@dataclass(frozen=True, slots=True)
class ReviewItem:
    """One entry of the compliance officer's review queue."""

    id: str
    kind: str
    reason: str
    opened_at: datetime
    customer_id: str | None = None
    subject: str | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    resolution: str | None = None
