"""The API's request and response bodies (pydantic), and how domain records become them.

Amounts are decimal strings (10 fractional digits at most, as on the ledger); times are RFC 3339
UTC; party ids are ``hint::fingerprint``. Unknown fields in a request body are refused, so a
misspelt field is an error rather than silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StringConstraints,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from sluice.domain.amounts import format_amount
from sluice.domain.approvals import Approval
from sluice.domain.compliance import HeldDeposit, Profile, ReviewItem
from sluice.domain.customer_names import NAME_LENGTH_MAX, OTHER_NAMES_MAX, script_label
from sluice.domain.ledger import InstrumentId
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import ApiKeyRecord, CustomerRecord, HistoryRecord, InstrumentRecord, SuspenseItem
from sluice.screening.scripts import scripts_of
from sluice.services.settings import DEFINITIONS, SettingDefinition

T = TypeVar("T")

# White space, spelled out: ``\s`` is not the same set in Python's regex, in pydantic's (Rust)
# regex and in the ECMA-262 regex a JSON Schema pattern is read with, and the document must mean
# what the server does. STRIPPED is what pydantic's strip_whitespace removes (Unicode
# White_Space); SPACES adds what Python's str.isspace also counts (the services check with it).
STRIPPED = r"\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
SPACES = rf"\x1c-\x1f{STRIPPED}"
# Free text must hold something besides spaces (it is stripped before its length is checked).
NOT_BLANK = rf"[^{STRIPPED}]"
Text = Annotated[
    str,
    StringConstraints(min_length=1, max_length=500, strip_whitespace=True, pattern=NOT_BLANK),
]
Reason = Annotated[
    str,
    StringConstraints(min_length=1, max_length=1000, strip_whitespace=True, pattern=NOT_BLANK),
]
IDENTIFIER_PATTERN = r"^[A-Za-z0-9._:@-]+$"
# An http(s) URL with a host name (or address), an optional port (0–65535) and anything after.
PORT_PATTERN = (
    r"(?:[0-9]{1,4}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"
)
HTTP_URL_PATTERN = rf"^https?://[A-Za-z0-9.-]+(:{PORT_PATTERN})?([/?#][!-~]*)?$"
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=100, pattern=IDENTIFIER_PATTERN)
]
PartyId = Annotated[
    str, StringConstraints(min_length=3, max_length=512, pattern=rf"^[^:{SPACES}]+::[0-9A-Za-z]+$")
]


def _json_integer(value: object) -> object:
    """A JSON integer as JSON Schema has it: a number with no fraction (``2`` or ``2.0``), not
    ``true`` and not ``"2"``."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("expected a whole number")
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError("expected a whole number")
        return int(value)
    return value


JSON_INTEGER = BeforeValidator(_json_integer)
# A KYC tier: a JSON integer 0–4.
Tier = Annotated[int, Field(ge=0, le=4), JSON_INTEGER]


def _positive_decimal_pattern(whole_digits: int, fraction_digits: int) -> str:
    """Decimal text above zero: no sign, no exponent, no leading zeros, at most
    ``whole_digits`` before the point and ``fraction_digits`` after it."""
    whole = rf"[1-9][0-9]{{0,{whole_digits - 1}}}(\.[0-9]{{1,{fraction_digits}}})?"
    # Below one: a fraction with a non-zero digit among its first ``fraction_digits``.
    fractions = "|".join(
        rf"0{{{zeros}}}[1-9][0-9]{{0,{fraction_digits - 1 - zeros}}}"
        for zeros in range(fraction_digits)
    )
    return rf"^(?:{whole}|0\.(?:{fractions}))$"


def ledger_decimal_pattern(*, positive: bool) -> str:
    """Decimal text ``domain.amounts.parse_amount`` reads exactly (leading zeros and trailing
    fractional zeros allowed, at most 28 significant digits before the point and 10 after),
    without sign or exponent; ``positive``: above zero."""
    fractions = "|".join(rf"0{{{zeros}}}[1-9][0-9]{{0,{9 - zeros}}}" for zeros in range(10))
    whole = r"[1-9][0-9]{0,27}(?:\.[0-9]{1,10}0*)?"
    if positive:
        return rf"^0*(?:{whole}|0\.(?:{fractions})0*)$"
    return rf"^0*(?:{whole}|0(?:\.[0-9]{{1,10}}0*)?)$"


# Amounts in requests are decimal strings, as in answers: 28 digits before the point at most and
# 10 after (the ledger's precision). The pattern is the whole check, here and in the document.
POSITIVE_AMOUNT_PATTERN = _positive_decimal_pattern(28, 10)
AMOUNT_PATTERN = rf"^(?:0(\.[0-9]{{1,10}})?|{POSITIVE_AMOUNT_PATTERN[4:-2]})$"


def _decimal_text(pattern: str, what: str) -> Any:
    compiled = re.compile(pattern)

    def parse(value: object) -> object:
        if not isinstance(value, str) or compiled.match(value) is None:
            raise ValueError(f'expected {what} as a decimal string such as "12.5"')
        return Decimal(value)

    return BeforeValidator(parse)


AmountIn = Annotated[
    Decimal,
    _decimal_text(POSITIVE_AMOUNT_PATTERN, "a positive amount"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": POSITIVE_AMOUNT_PATTERN,
            "description": "a positive decimal string (at most 28 digits before the point "
            "and 10 after)",
            "examples": ["12.5"],
        }
    ),
]
LimitIn = Annotated[
    Decimal,
    _decimal_text(AMOUNT_PATTERN, "an amount"),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": AMOUNT_PATTERN,
            "description": "a decimal string, zero or more (at most 28 digits before the point "
            "and 10 after)",
            "examples": ["1000"],
        }
    ),
]
Amount = Annotated[str, Field(description="decimal amount as a string", examples=["12.5"])]

# ``<update id>:<node id>``: an update id of 1–256 characters, then after the last colon a node
# id of at most 10 digits no greater than 2^31 - 1 (services.suspense.parse_item_id).
NODE_ID_PATTERN = (
    r"(?:[0-9]{1,9}|0[0-9]{9}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}"
    r"|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}"
    r"|21474836[0-3][0-9]|214748364[0-7])"
)
SUSPENSE_ITEM_ID_PATTERN = rf"^.{{1,256}}:{NODE_ID_PATTERN}$"
SuspenseItemId = Annotated[
    str, StringConstraints(min_length=3, max_length=267, pattern=SUSPENSE_ITEM_ID_PATTERN)
]

RFC3339_PATTERN = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?"
    r"([Zz]|[+-][0-9]{2}:[0-9]{2})$"
)


def _rfc3339(value: object) -> object:
    if not isinstance(value, str) or re.match(RFC3339_PATTERN, value) is None:
        raise ValueError("expected an RFC 3339 time with its offset, such as 2025-01-31T12:00:00Z")
    return value.upper()


# A time given in a request: RFC 3339 text with an offset (not a number of seconds, not a date).
Rfc3339 = Annotated[
    datetime,
    BeforeValidator(_rfc3339),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


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


class CustomerNameOut(Out):
    name: str
    script: str = Field(
        description="the script(s) the name is written in, joined by '+' when several: latin, "
        "cyrillic, greek, arabic, han, hangul, kana, other"
    )


class CustomerOut(Out):
    id: str
    name: str
    name_script: str = Field(description="the script(s) of the primary name")
    names: list[CustomerNameOut] = Field(
        description="the customer's other names (other scripts, maiden names, aliases), in the "
        "order given"
    )
    created_at: datetime
    kyc: KycOut
    deposit_accounts: list[str]


def customer_out(record: CustomerRecord) -> CustomerOut:
    # A primary name recorded before scripts were has its script told now.
    script = record.name_script or script_label(scripts_of(record.name))
    return CustomerOut(
        id=record.id,
        name=record.name,
        name_script=script,
        names=[
            CustomerNameOut(
                name=name.name, script=name.script or script_label(scripts_of(name.name))
            )
            for name in record.other_names
        ],
        created_at=record.created_at,
        kyc=kyc_out(record.profile),
        deposit_accounts=list(record.deposit_accounts),
    )


class NameMatchOut(Out):
    name: str = Field(description="the customer's name that matched")
    script: str | None
    primary: bool
    entity_id: str | None
    matched_name: str | None = Field(description="the listed name it matched")
    score: float = Field(description="0–100, one decimal")
    transliteration: str | None = Field(
        description="how a name in another script was brought to Latin letters for the match "
        "(null: Latin letters, or the default transliteration)"
    )


class ScreeningOut(Out):
    screened: bool = Field(
        description="false: no sanctions list is configured, so the names were recorded but "
        "not screened"
    )
    sanctions_list: str | None = Field(description="the sanctions list screened against")
    names: list[str] = Field(description="the names screened now (those new to the customer)")
    matches: list[NameMatchOut]
    status: str | None = Field(
        description="the KYC status a match put the customer in (null: unchanged)"
    )
    note: str | None


class CustomerRegisteredOut(CustomerOut):
    screening: ScreeningOut


# A customer's name: stripped, at most 200 characters, with something in it besides white space
# (as Python's str.strip counts it, which the service strips with).
CustomerNameText = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=NAME_LENGTH_MAX, strip_whitespace=True, pattern=rf"[^{SPACES}]"
    ),
]


class CustomerIn(Body):
    id: Identifier
    name: CustomerNameText = Field(description="the legal (primary) name; screened")
    names: list[CustomerNameText] = Field(
        default_factory=list,
        max_length=OTHER_NAMES_MAX,
        description="other names (other scripts, maiden names, aliases), each screened; for a "
        "customer already registered, those new to them are added",
    )
    tier: Tier | None = None
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


KycStatus = Literal["active", "under_review", "frozen", "blacklisted"]


class KycChangeIn(Body):
    """A status, a tier or both (at least one of them, not null)."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"anyOf": [{"required": ["status"]}, {"required": ["tier"]}]},
    )

    status: Annotated[
        KycStatus | None, WithJsonSchema({"type": "string", "enum": list(get_args(KycStatus))})
    ] = None
    tier: Annotated[
        Tier | None, WithJsonSchema({"type": "integer", "minimum": 0, "maximum": 4})
    ] = None
    reason: Reason

    @field_validator("status", "tier", mode="before")
    @classmethod
    def _not_null(cls, value: object) -> object:
        if value is None:
            raise ValueError("leave it out rather than null")
        return value

    @model_validator(mode="after")
    def _one_at_least(self) -> KycChangeIn:
        if self.status is None and self.tier is None:
            raise ValueError("give a status, a tier or both")
        return self


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


# A limit's name: withdrawal_max, transfer_fee… (services.reference.check_limits).
LIMIT_NAME_PATTERN = r"^[a-z][a-z0-9_]{0,63}$"
LimitName = Annotated[str, StringConstraints(pattern=LIMIT_NAME_PATTERN)]

# How the exchange sends an instrument out ("self", a transfer to oneself, is not a choice).
TransferKindIn = Literal["direct", "offer"]


def _direct_only() -> list[TransferKindIn]:
    return ["direct"]


class OnboardIn(Body):
    admin: PartyId
    id: Identifier
    registry_url: (
        Annotated[str, StringConstraints(max_length=500, pattern=HTTP_URL_PATTERN)] | None
    ) = None
    trusted: StrictBool = True
    transfer_kinds: list[TransferKindIn] = Field(
        default_factory=_direct_only, min_length=1, max_length=3
    )
    limits: Annotated[
        dict[LimitName, LimitIn] | None,
        WithJsonSchema(
            {
                "anyOf": [
                    {
                        "type": "object",
                        "propertyNames": {"pattern": LIMIT_NAME_PATTERN},
                        "additionalProperties": {"type": "string", "pattern": AMOUNT_PATTERN},
                    },
                    {"type": "null"},
                ]
            }
        ),
    ] = None
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
    tier: Tier
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
    # At most 256 characters: the audit record's operation id (300 at most) holds it.
    address: Annotated[
        str,
        StringConstraints(min_length=1, max_length=256, strip_whitespace=True, pattern=NOT_BLANK),
    ]
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


# A decimal setting given as text: at most 15 digits before the point (they are all below 10^15).
DECIMAL_SETTING_PATTERN = r"^(?:0|[1-9][0-9]{0,14})(?:\.[0-9]{1,10})?$"


def _json_number(value: int | float | Decimal) -> int | float:
    return value if isinstance(value, int) else float(value)


def setting_value_schema(spec: SettingDefinition) -> dict[str, Any]:
    """The JSON Schema of the values setting ``spec`` takes over the API."""
    bounds: dict[str, Any] = {}
    if spec.minimum is not None:
        low = "exclusiveMinimum" if spec.minimum_exclusive else "minimum"
        bounds[low] = _json_number(spec.minimum)
    if spec.maximum is not None:
        bounds["maximum"] = _json_number(spec.maximum)
    choices: list[dict[str, Any]]
    if spec.kind == "int":
        choices = [{"type": "integer", **bounds}]
    elif spec.kind == "float":
        choices = [{"type": "number", **bounds}]
    else:
        choices = [
            {"type": "string", "pattern": DECIMAL_SETTING_PATTERN},
            {"type": "number", **bounds},
        ]
    if spec.nullable:
        choices.append({"type": "null"})
    return choices[0] if len(choices) == 1 else {"anyOf": choices}


def check_setting_value(spec: SettingDefinition, value: object) -> None:
    """Refuse (ValueError) a value :func:`setting_value_schema` does not describe: the JSON type
    first (the settings service would also take numbers as text); the bounds stay the
    service's."""
    if value is None and spec.nullable:
        return
    if spec.kind == "decimal" and isinstance(value, str):
        if re.match(DECIMAL_SETTING_PATTERN, value) is None:
            raise ValueError(f'{spec.key}: expected a decimal such as "1000.5"')
        return
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not number or (spec.kind == "int" and not float(value).is_integer()):  # type: ignore[arg-type]
        kind = "a whole number" if spec.kind == "int" else "a number"
        raise ValueError(f"{spec.key}: expected {kind}, got {value!r}")


def _config_change_schema(schema: dict[str, Any]) -> None:
    """One alternative per setting: its key and the values it takes."""
    reason = schema["properties"]["reason"]
    alternatives = [
        {
            "type": "object",
            "properties": {
                "key": {"const": key, "description": spec.description},
                "value": setting_value_schema(spec),
                "reason": reason,
            },
            "required": ["key", "value", "reason"],
            "additionalProperties": False,
        }
        for key, spec in DEFINITIONS.items()
    ]
    title = schema.get("title")
    schema.clear()
    schema.update({"title": title, "oneOf": alternatives})


class ConfigChangeIn(Body):
    """A setting (one of ``GET /v1/config``'s keys) and its new value."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_config_change_schema)

    key: str
    value: Any = Field(description="the new value (JSON); null where the setting allows none")
    reason: Reason

    @model_validator(mode="after")
    def _known_and_typed(self) -> ConfigChangeIn:
        spec = DEFINITIONS.get(self.key)
        if spec is None:
            raise ValueError(f"unknown setting {self.key!r}: one of {', '.join(DEFINITIONS)}")
        check_setting_value(spec, self.value)
        return self


class SettingOut(Out):
    key: str
    value: Any
    default: Any
    description: str
    scheduled: list[dict[str, Any]]


class ConfigOut(Out):
    settings: list[SettingOut]
    deployment: dict[str, Any]


ApiRole = Literal["super_admin", "system_admin", "compliance_officer", "operator", "user"]


class ApiKeyIn(Body):
    """A user's key names the customer it acts for; a staff key names none."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {
                    "properties": {"role": {"const": "user"}, "customer_id": {"type": "string"}},
                    "required": ["role", "customer_id"],
                },
                {
                    "properties": {
                        "role": {"enum": [r for r in get_args(ApiRole) if r != "user"]},
                        "customer_id": {"type": "null"},
                    }
                },
            ]
        },
    )

    role: ApiRole
    customer_id: Identifier | None = None
    label: Annotated[str, StringConstraints(max_length=200)] | None = None

    @model_validator(mode="after")
    def _customer_for_users_only(self) -> ApiKeyIn:
        if (self.role == "user") != (self.customer_id is not None):
            raise ValueError("a user's key names its customer (customer_id); no other key does")
        return self


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
