"""The KYC registry as a use case: every operation that moves value asks it first (DESIGN §6).

``verify_operation_compliance`` is the one call; flows use it through a :class:`ComplianceSession`,
which reads the customers concerned once, in the operation's own transaction, decides in memory
and writes what it decided — usage against the limits, status changes, review items, held deposits
and the audit records — into that same transaction. So an operation and the usage it consumed
commit together or not at all, and two concurrent operations of one customer cannot both slip under
a limit: the customer's row is locked (PostgreSQL ``FOR UPDATE``) before the usage is read.

The session, what it reads of a customer's usage (bounded, whatever their history) and the
:class:`UsageCache` that keeps usage across one writer's transactions live in
:mod:`sluice.services.compliance_session`; their names are re-exported here.

A denied operation still leaves a trace: the caller commits the session's writes (the audit record,
a status change the risk rules made) without the operation, then raises the decision's error.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import format_amount
from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import (
    OPERATIONS,
    ComplianceDecision,
    ComplianceRequest,
    HeldDeposit,
    LimitLadder,
    Operation,
    ReviewItem,
)
from sluice.domain.errors import InvalidInputError
from sluice.domain.events import Event, new_event
from sluice.domain.ledger import InstrumentId
from sluice.domain.risk import RiskRules
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import SanctionsScreen, UnitOfWork, UnitOfWorkFactory
from sluice.services.compliance_session import AuditedAs, ComplianceSession, UsageCache
from sluice.services.events import emit_all
from sluice.services.withdrawal_attempts import instrument_payload, withdrawal_events

# The session and the usage cache live in compliance_session; their names are re-exported so that
# they stay importable from here.
__all__ = [
    "SYSTEM_ACTOR",
    "AuditedAs",
    "ComplianceSession",
    "ComplianceSettings",
    "KycRegistry",
    "RegistryGate",
    "UsageCache",
    "batch_compliance_check",
    "check_operation_allowed",
    "describe_decisions",
    "undo_failed_payouts",
    "verify_operation_compliance",
]

SYSTEM_ACTOR = "system"


@dataclass(frozen=True, slots=True)
class ComplianceSettings:
    """The registry's configuration: the limit ladder, the risk rules and, per instrument, how
    many reference currency units one unit is worth (1 when not listed)."""

    ladder: LimitLadder = field(default_factory=LimitLadder.default)
    risk: RiskRules = field(default_factory=RiskRules)
    reference_rates: Mapping[str, Decimal] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for key, rate in self.reference_rates.items():
            if rate <= 0:
                raise InvalidInputError(f"reference rate of {key} must be positive")

    def value(self, instrument: InstrumentId | None, amount: Decimal) -> Decimal:
        """``amount`` of ``instrument`` in reference currency units."""
        if instrument is None or not self.reference_rates:
            return amount
        rate = self.reference_rates.get(instrument.key()) or self.reference_rates.get(instrument.id)
        return amount if rate is None else amount * rate


class KycRegistry:
    """The registry's configuration plus the sanctions list in force (optional: without one,
    counterparties are checked against the flagged addresses only)."""

    def __init__(
        self, settings: ComplianceSettings | None = None, screen: SanctionsScreen | None = None
    ) -> None:
        self.settings = settings or ComplianceSettings()
        self.screen = screen

    def session(
        self,
        uow: UnitOfWork,
        customer_ids: Collection[str],
        counterparties: Collection[str] = (),
        *,
        since: datetime,
        until: datetime | None = None,
        operations: Collection[str] = OPERATIONS,
        lock: bool = True,
        cache: UsageCache | None = None,
    ) -> ComplianceSession:
        """A session for decisions of ``operations`` at times in ``[since, until]`` (``until``
        defaults to ``since``; another decision reads that customer's usage again). With a
        ``cache``, what it kept of a customer's usage is used while their usage version says
        nobody else changed it, and only what it lacks is read (see :class:`UsageCache`)."""
        return ComplianceSession(
            self,
            uow,
            customer_ids,
            counterparties,
            since=since,
            until=until,
            operations=operations,
            lock=lock,
            cache=cache,
        )


# --- the one call, and its batch form ---------------------------------------------------------


def verify_operation_compliance(
    uow_factory: UnitOfWorkFactory,
    registry: KycRegistry,
    customer_id: str,
    operation: Operation,
    amount: Decimal,
    counterparty: str | None = None,
    *,
    at: datetime,
    actor: str = SYSTEM_ACTOR,
    operation_id: str | None = None,
) -> ComplianceDecision:
    """Would the registry allow this operation now? Audited; records no usage (the operation
    records it when it happens, in its own transaction)."""
    return batch_compliance_check(
        uow_factory,
        registry,
        [ComplianceRequest(customer_id, operation, amount, counterparty)],
        at=at,
        actor=actor,
        operation_ids=[operation_id] if operation_id else None,
    )[0]


def batch_compliance_check(
    uow_factory: UnitOfWorkFactory,
    registry: KycRegistry,
    requests: Sequence[ComplianceRequest],
    *,
    at: datetime,
    actor: str = SYSTEM_ACTOR,
    operation_ids: Sequence[str] | None = None,
) -> list[ComplianceDecision]:
    """Decide many requests in one transaction, each on its own (none counts against another)."""
    if operation_ids is not None and len(operation_ids) != len(requests):
        raise InvalidInputError("one operation id per request")
    ids = operation_ids or [f"check:{at.isoformat()}:{index}" for index in range(len(requests))]
    with uow_factory() as uow:
        session = registry.session(
            uow,
            [request.customer_id for request in requests],
            [request.counterparty for request in requests if request.counterparty],
            since=at,
            operations={request.operation for request in requests},
            lock=False,
        )
        decisions = [
            session.decide(request, operation_id=oid, at=at, actor=actor, record=False)
            for request, oid in zip(requests, ids, strict=True)
        ]
        session.flush()
        uow.commit()
    return decisions


def check_operation_allowed(
    uow: UnitOfWork,
    registry: KycRegistry,
    request: ComplianceRequest,
    *,
    operation_id: str,
    at: datetime,
    actor: str,
    parameters: Mapping[str, object] | None = None,
) -> None:
    """The guard a flow calls first thing in its transaction, before it writes anything: records
    the usage on success (the caller then writes the operation and commits); on a denial commits
    the audit trail alone and raises the decision's error."""
    session = registry.session(
        uow,
        [request.customer_id],
        [request.counterparty] if request.counterparty else [],
        since=at,
        operations=[request.operation],
        lock=True,
    )
    decision = session.decide(
        request, operation_id=operation_id, at=at, actor=actor, record=True, parameters=parameters
    )
    session.flush()
    if not decision.allowed:
        emit_all(
            uow,
            [
                compliance_event(
                    request.customer_id,
                    f"{request.operation}_refused",
                    at=at,
                    actor=actor,
                    reason=decision.summary(),
                    subject=operation_id,
                    code=decision.code,
                )
            ],
        )
        uow.commit()
        raise decision.error()


def describe_decisions(decisions: Iterable[ComplianceDecision]) -> list[dict[str, object]]:
    return [
        {
            "customer_id": decision.request.customer_id,
            "operation": decision.request.operation,
            "amount": format_amount(decision.request.amount),
            "counterparty": decision.request.counterparty,
            **decision.as_dict(),
        }
        for decision in decisions
    ]


class RegistryGate:
    """The deposit worker's compliance gate: the KYC registry decides whether an incoming offer
    may be accepted (a denial makes the worker reject it, so the sender gets the funds back).
    Records no usage — the credit does, when ingestion sees the accept commit."""

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        registry: KycRegistry,
        clock: Callable[[], datetime],
        *,
        actor: str = "deposit-worker",
    ) -> None:
        self._uow = uow_factory
        self._registry = registry
        self._clock = clock
        self._actor = actor

    def allows_deposit(
        self, customer_id: str, sender: str, instrument: InstrumentId, amount: Decimal
    ) -> tuple[bool, str]:
        at = self._clock()
        decision = verify_operation_compliance(
            self._uow,
            self._registry,
            customer_id,
            "deposit",
            self._registry.settings.value(instrument, amount),
            sender,
            at=at,
            actor=self._actor,
            operation_id=f"offer:{customer_id}:{format_amount(amount)}:{at.isoformat()}",
        )
        return decision.allowed, decision.summary()


def deposit_event(
    type: str,
    deposit_id: str,
    *,
    at: datetime,
    instrument: InstrumentId,
    amount: Decimal,
    status: str,
    customer_id: str | None = None,
    sender: str | None = None,
    deposit_account: str | None = None,
    held_in: str | None = None,
    reason: str | None = None,
    update_id: str | None = None,
    offset: int | None = None,
    hold_id: str | None = None,
    withdrawal_id: str | None = None,
    approval_id: str | None = None,
    actor: str | None = None,
) -> Event:
    """The event of a deposit's state change (``deposit_*``); ``deposit_id`` is
    ``<update id>:<node id>`` of the ledger entry that brought it (a suspense item's id)."""
    return new_event(
        type,
        deposit_id,
        {
            "deposit_id": deposit_id,
            "customer_id": customer_id,
            "sender": sender,
            "deposit_account": deposit_account,
            "instrument": instrument_payload(instrument),
            "amount": format_amount(amount),
            "status": status,
            "held_in": held_in,
            "reason": reason,
            "update_id": update_id,
            "offset": offset,
            "hold_id": hold_id,
            "withdrawal_id": withdrawal_id,
            "approval_id": approval_id,
            "actor": actor,
        },
        at=at,
    )


def held_deposit_id(hold: HeldDeposit) -> str:
    """The deposit a compliance hold holds (``hold:<update id>:<node id>:<instrument>``)."""
    instrument = InstrumentId(hold.instrument_admin, hold.instrument_id)
    return hold.id.removeprefix("hold:").removesuffix(f":{instrument.key()}")


def hold_event(type: str, hold: HeldDeposit, *, at: datetime, status: str, **facts: Any) -> Event:
    """:func:`deposit_event` for a deposit in the compliance hold."""
    facts.setdefault("customer_id", hold.customer_id)
    return deposit_event(
        type,
        held_deposit_id(hold),
        at=at,
        instrument=InstrumentId(hold.instrument_admin, hold.instrument_id),
        amount=hold.amount,
        status=status,
        sender=hold.sender,
        deposit_account=hold.deposit_account,
        held_in="compliance_hold",
        update_id=hold.update_id,
        hold_id=hold.id,
        **facts,
    )


def compliance_event(
    customer_id: str,
    action: str,
    *,
    at: datetime,
    actor: str,
    reason: str | None = None,
    subject: str | None = None,
    **facts: Any,
) -> Event:
    """``compliance_action_taken``: an officer's decision about ``customer_id`` (aggregate = the
    customer), ``action`` naming it (the audit record's operation)."""
    return new_event(
        "compliance_action_taken",
        customer_id,
        {
            "customer_id": customer_id,
            "action": action,
            "subject": subject,
            "reason": reason,
            "actor": actor,
            **facts,
        },
        at=at,
    )


def undo_failed_payouts(
    uow: UnitOfWork, failed: Iterable[Withdrawal], *, at: datetime, actor: str
) -> None:
    """After payouts failed and were credited back, in the same transaction: a customer's
    withdrawal no longer counts against their limits (nothing left the account), and a failed
    return puts its deposit back on hold with a review item, so the officer decides again."""
    failed = list(failed)
    withdrawals = [record.id for record in failed if record.kind == "withdrawal"]
    uow.compliance.forget_usage(withdrawals)
    emit_all(uow, withdrawal_events("withdrawal_failed", failed, at=at, actor=actor))
    for record in failed:
        if record.kind != "return":
            continue
        hold = uow.compliance.reopen_hold(record.id)
        if hold is None:
            continue
        reason = f"the return {record.id} failed ({record.failure or 'no reason'}); held again"
        uow.compliance.open_review(
            ReviewItem(
                id=f"return-failed:{record.id}",
                kind="deposit_held",
                reason=reason,
                opened_at=at,
                customer_id=hold.customer_id,
                subject=hold.id,
            )
        )
        emit_all(
            uow,
            [
                hold_event(
                    "deposit_held",
                    hold,
                    at=at,
                    status="held",
                    reason=reason,
                    withdrawal_id=record.id,
                    actor=actor,
                )
            ],
        )
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=hold.id,
                    operation="deposit_held_again",
                    actor=actor,
                    recorded_at=at,
                    customer_id=hold.customer_id,
                    parameters={"withdrawal_id": record.id, "failure": record.failure},
                    state_changes=[{"hold": hold.id, "status": "held", "was": "returned"}],
                )
            ]
        )
