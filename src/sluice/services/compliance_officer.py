"""What a compliance officer does (DESIGN §6, §10 "compliance override"): work the review queue,
release or return held deposits, freeze and unfreeze customers, flag addresses, change tiers and
limits, and screen the customer base against a freshly loaded sanctions list.

Each command is one transaction that also appends its audit record naming the officer, so the
trail says who changed what, when and why. Money moves only between liability accounts of the
books (compliance hold → customer, compliance hold → in flight for a return), never out of them.
Releasing and returning held deposits move value, so they are refused while sluice is paused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sluice.domain.amounts import format_amount
from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import (
    HeldDeposit,
    KycStatus,
    Profile,
    ReviewItem,
    TierLimits,
    UsageRecord,
    check_operation,
    check_status,
    check_tier,
)
from sluice.domain.errors import (
    AddressBlacklistedError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
)
from sluice.domain.events import new_event
from sluice.domain.journal import (
    COMPLIANCE_HOLD,
    IN_FLIGHT,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
)
from sluice.domain.ledger import InstrumentId, check_party_id
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.services.compliance import KycRegistry, hold_event
from sluice.services.compliance_session import kyc_event
from sluice.services.controls import check_not_paused
from sluice.services.customer_screening import (
    NameHit,
    NameScreening,
    audit_screening,
    hold_for_sanctions,
    screen_names,
)
from sluice.services.events import emit_all
from sluice.services.withdrawal_attempts import withdrawal_event

# The aggregate of a compliance action about no one customer (an address, a tier's limits).
COMPLIANCE_AGGREGATE = "compliance"
_REASON_KEYS = ("reason", "resolution")


@dataclass(frozen=True, slots=True)
class ReviewQueue:
    reviews: list[ReviewItem]
    holds: list[HeldDeposit]
    customers: list[Profile]  # every customer who is not active
    flagged_addresses: list[tuple[str, str, str, datetime]]


def _require_actor(actor: str) -> str:
    if not actor.strip():
        raise InvalidInputError("the officer's name (actor) must not be empty")
    return actor


def _require_reason(reason: str) -> str:
    if not reason.strip():
        raise InvalidInputError("a reason is required: it goes into the audit trail")
    return reason


def _audit(
    uow: UnitOfWork,
    *,
    operation: str,
    operation_id: str,
    actor: str,
    at: datetime,
    customer: Profile | None = None,
    customer_id: str | None = None,
    parameters: dict[str, object] | None = None,
    state_changes: list[dict[str, object]] | None = None,
    about: str | None = None,
) -> None:
    """Append the officer's audit record and its ``compliance_action_taken`` event (aggregate: the
    customer concerned — ``about`` when the record names none — or ``compliance`` for a
    decision about no one customer: an address, a tier's limits)."""
    subject_customer = (customer.customer_id if customer is not None else customer_id) or about
    facts = parameters or {}
    reason = facts.get("reason", facts.get("resolution"))
    emit_all(
        uow,
        [
            new_event(
                "compliance_action_taken",
                subject_customer or COMPLIANCE_AGGREGATE,
                {
                    "customer_id": subject_customer,
                    "action": operation,
                    "subject": operation_id,
                    "reason": None if reason is None else str(reason),
                    "actor": actor,
                    "details": {
                        k: v for k, v in facts.items() if k not in ("reason", "resolution")
                    },
                    "changes": state_changes or [],
                },
                at=at,
            )
        ],
    )
    uow.audit.append(
        [
            AuditEntry(
                operation_id=operation_id,
                operation=operation,
                actor=actor,
                recorded_at=at,
                customer_id=customer.customer_id if customer is not None else customer_id,
                kyc=customer.as_dict() if customer is not None else None,
                parameters=parameters or {},
                state_changes=state_changes or [],
            )
        ]
    )


def _profile(uow: UnitOfWork, customer_id: str) -> Profile:
    profile = uow.compliance.profiles([customer_id], lock=True).get(customer_id)
    if profile is None:
        raise NotFoundError(f"unknown customer {customer_id!r}")
    return profile


# --- the queue ---------------------------------------------------------------------------------


def review_queue(uow_factory: UnitOfWorkFactory, *, limit: int = 1000) -> ReviewQueue:
    with uow_factory() as uow:
        repo = uow.compliance
        names = [customer_id for customer_id, _ in repo.customer_names()]
        profiles = repo.profiles(names)
        return ReviewQueue(
            reviews=repo.reviews(open_only=True, limit=limit),
            holds=repo.holds(status="held", limit=limit),
            customers=sorted(
                (p for p in profiles.values() if p.status != "active"),
                key=lambda p: p.customer_id,
            ),
            flagged_addresses=repo.flagged_addresses(),
        )


def close_review(
    uow_factory: UnitOfWorkFactory, review_id: str, *, actor: str, at: datetime, resolution: str
) -> ReviewItem:
    _require_actor(actor)
    _require_reason(resolution)
    with uow_factory() as uow:
        if not uow.compliance.close_review(review_id, actor, resolution, at):
            raise NotFoundError(f"no open review {review_id!r}")
        closed = uow.compliance.review(review_id)
        assert closed is not None, "a review just closed must be there"
        _audit(
            uow,
            operation="review_closed",
            operation_id=review_id,
            actor=actor,
            at=at,
            parameters={"resolution": resolution},
            state_changes=[{"review": review_id, "closed": True}],
            about=closed.customer_id,
        )
        uow.commit()
        return closed


# --- customers -----------------------------------------------------------------------------------


def set_customer_status(
    uow_factory: UnitOfWorkFactory,
    customer_id: str,
    status: str,
    *,
    actor: str,
    at: datetime,
    reason: str,
) -> Profile:
    """Freeze, unfreeze (active), put under review or blacklist a customer; takes effect for
    every operation at once (each one reads the status in its own transaction)."""
    _require_actor(actor)
    _require_reason(reason)
    new_status: KycStatus = check_status(status)
    with uow_factory() as uow:
        before = _profile(uow, customer_id)
        uow.compliance.set_profile(
            customer_id,
            at=at,
            status=new_status,
            status_reason=None if new_status == "active" else reason,
            risk_score=0 if new_status == "active" else None,
        )
        after = uow.compliance.profiles([customer_id])[customer_id]
        _audit(
            uow,
            operation="customer_status_changed",
            operation_id=f"status:{customer_id}:{at.isoformat()}",
            actor=actor,
            at=at,
            customer=before,
            parameters={"status": new_status, "reason": reason},
            state_changes=[{"status": new_status, "was": before.status}],
        )
        emit_all(uow, [kyc_event(before, after, at=at, actor=actor, reason=reason)])
        uow.commit()
        return after


def freeze_customer(
    uow_factory: UnitOfWorkFactory, customer_id: str, *, actor: str, at: datetime, reason: str
) -> Profile:
    return set_customer_status(
        uow_factory, customer_id, "frozen", actor=actor, at=at, reason=reason
    )


def unfreeze_customer(
    uow_factory: UnitOfWorkFactory, customer_id: str, *, actor: str, at: datetime, reason: str
) -> Profile:
    return set_customer_status(
        uow_factory, customer_id, "active", actor=actor, at=at, reason=reason
    )


def change_tier(
    uow_factory: UnitOfWorkFactory,
    customer_id: str,
    tier: int | str,
    *,
    actor: str,
    at: datetime,
    reason: str,
) -> Profile:
    _require_actor(actor)
    _require_reason(reason)
    new_tier = check_tier(tier)
    with uow_factory() as uow:
        before = _profile(uow, customer_id)
        uow.compliance.set_profile(customer_id, at=at, tier=new_tier)
        _audit(
            uow,
            operation="customer_tier_changed",
            operation_id=f"tier:{customer_id}:{at.isoformat()}",
            actor=actor,
            at=at,
            customer=before,
            parameters={"tier": new_tier, "reason": reason},
            state_changes=[{"tier": new_tier, "was": before.tier}],
        )
        after = uow.compliance.profiles([customer_id])[customer_id]
        emit_all(uow, [kyc_event(before, after, at=at, actor=actor, reason=reason)])
        uow.commit()
        return after


def set_limits(
    uow_factory: UnitOfWorkFactory,
    tier: int | str,
    operation: str,
    limits: TierLimits,
    *,
    actor: str,
    at: datetime,
    reason: str,
) -> None:
    """Override the configured ladder for one (tier, operation); effective for the next decision."""
    _require_actor(actor)
    _require_reason(reason)
    checked_tier = check_tier(tier)
    checked_operation = check_operation(operation)
    with uow_factory() as uow:
        before = uow.compliance.limit_overrides().get((checked_tier, checked_operation))
        uow.compliance.set_limits(checked_tier, checked_operation, limits, actor, at)
        _audit(
            uow,
            operation="limits_changed",
            operation_id=f"limits:{checked_tier}:{checked_operation}:{at.isoformat()}",
            actor=actor,
            at=at,
            parameters={
                "tier": checked_tier,
                "operation": checked_operation,
                "reason": reason,
                **limits.as_dict(),
            },
            state_changes=[
                {"limits": limits.as_dict(), "was": before.as_dict() if before else "configured"}
            ],
        )
        uow.commit()


# --- addresses -----------------------------------------------------------------------------------


def flag_address(
    uow_factory: UnitOfWorkFactory, address: str, *, actor: str, at: datetime, reason: str
) -> bool:
    """Refuse every operation with ``address`` from now on (deposits from it are held)."""
    _require_actor(actor)
    _require_reason(reason)
    if not address.strip():
        raise InvalidInputError("address must not be empty")
    with uow_factory() as uow:
        added = uow.compliance.flag_address(address, reason, actor, at)
        _audit(
            uow,
            operation="address_flagged",
            operation_id=f"flag:{address}:{at.isoformat()}",
            actor=actor,
            at=at,
            parameters={"address": address, "reason": reason},
            state_changes=[{"flagged": address, "new": added}],
        )
        uow.commit()
        return added


def unflag_address(
    uow_factory: UnitOfWorkFactory, address: str, *, actor: str, at: datetime, reason: str
) -> None:
    _require_actor(actor)
    _require_reason(reason)
    with uow_factory() as uow:
        if not uow.compliance.unflag_address(address):
            raise NotFoundError(f"address {address!r} is not flagged")
        _audit(
            uow,
            operation="address_unflagged",
            operation_id=f"unflag:{address}:{at.isoformat()}",
            actor=actor,
            at=at,
            parameters={"address": address, "reason": reason},
            state_changes=[{"unflagged": address}],
        )
        uow.commit()


# --- held deposits -------------------------------------------------------------------------------


def _open_hold(uow: UnitOfWork, hold_id: str) -> HeldDeposit:
    hold = uow.compliance.hold(hold_id, lock=True)
    if hold is None:
        raise NotFoundError(f"no held deposit {hold_id!r}")
    if hold.status != "held":
        raise InvalidOperationStateError(
            f"deposit {hold_id} was already {hold.status} by {hold.decided_by}"
        )
    return hold


def release_hold(
    uow_factory: UnitOfWorkFactory,
    hold_id: str,
    *,
    actor: str,
    at: datetime,
    reason: str,
    customer_id: str | None = None,
    registry: KycRegistry | None = None,
) -> HeldDeposit:
    """Credit a held deposit to its customer (or, for one whose reason named nobody, to
    ``customer_id``). An officer's override: the limits are not checked, but the amount counts
    against the customer's deposit usage from now on."""
    _require_actor(actor)
    _require_reason(reason)
    with uow_factory() as uow:
        check_not_paused(uow)
        hold = _open_hold(uow, hold_id)
        target = customer_id or hold.customer_id
        if target is None:
            raise InvalidInputError(
                f"deposit {hold_id} names no customer; say which customer to credit"
            )
        profile = _profile(uow, target)
        instrument = InstrumentId(hold.instrument_admin, hold.instrument_id)
        uow.withdrawals.post(
            [
                JournalTransaction(
                    id=f"release:{hold_id}",
                    kind="deposit_released",
                    postings=(
                        Posting(AccountRef(COMPLIANCE_HOLD, instrument), hold.amount),
                        Posting(
                            AccountRef(customer_account_name(target), instrument), -hold.amount
                        ),
                    ),
                    description=f"held deposit {hold_id} released to {target} by {actor}",
                )
            ]
        )
        value = (registry or KycRegistry()).settings.value(instrument, hold.amount)
        uow.compliance.record_usage(
            target, [UsageRecord(f"release:{hold_id}", "deposit", value, at, hold.sender)]
        )
        uow.compliance.close_hold(hold_id, "released", actor, at)
        uow.compliance.close_reviews_of(hold_id, actor, f"released: {reason}", at)
        _audit(
            uow,
            operation="deposit_released",
            operation_id=hold_id,
            actor=actor,
            at=at,
            customer=profile,
            parameters={
                "reason": reason,
                "amount": format_amount(hold.amount),
                "instrument": instrument.key(),
                "sender": hold.sender,
            },
            state_changes=[
                {"debited": COMPLIANCE_HOLD, "credited": customer_account_name(target)},
                {"hold": hold_id, "status": "released"},
            ],
        )
        emit_all(
            uow,
            [
                hold_event(
                    "deposit_released",
                    hold,
                    at=at,
                    status="released",
                    customer_id=target,
                    reason=reason,
                    actor=actor,
                )
            ],
        )
        uow.commit()
        return uow.compliance.hold(hold_id) or hold


def return_hold(
    uow_factory: UnitOfWorkFactory,
    hold_id: str,
    *,
    treasury: str,
    actor: str,
    at: datetime,
    reason: str,
    registry: KycRegistry | None = None,
    attempts_max: int = 3,
) -> Withdrawal:
    """Send a held deposit back to its sender: a ``return`` withdrawal funded by the
    compliance-hold account, run by the withdrawal worker like any payout (a failed return is
    credited back to the hold account). Funds from a listed or flagged sender are blocked, never
    returned: such a deposit can only stay held."""
    _require_actor(actor)
    _require_reason(reason)
    registry = registry or KycRegistry()
    with uow_factory() as uow:
        check_not_paused(uow)
        hold = _open_hold(uow, hold_id)
        check_party_id(hold.sender)
        session = registry.session(uow, [], [hold.sender], since=at, lock=False)
        listed = session.listed(hold.sender)
        if listed is not None:
            raise AddressBlacklistedError(
                f"deposit {hold_id} came from {hold.sender}, which is {listed}: its funds stay "
                f"blocked in the compliance-hold account and cannot be returned"
            )
        instrument = InstrumentId(hold.instrument_admin, hold.instrument_id)
        return_id = "return-" + hashlib.sha256(hold_id.encode()).hexdigest()[:32]
        withdrawal = Withdrawal(
            id=return_id,
            kind="return",
            customer_id=hold.customer_id,
            sender=treasury,
            receiver=hold.sender,
            instrument=instrument,
            amount=hold.amount,
            status="queued",
            attempts_max=attempts_max,
            idempotency_key=return_id,
            requested_at=at,
        )
        uow.withdrawals.post(
            [
                JournalTransaction(
                    id=f"return:{hold_id}",
                    kind="deposit_returning",
                    postings=(
                        Posting(AccountRef(COMPLIANCE_HOLD, instrument), hold.amount),
                        Posting(AccountRef(IN_FLIGHT, instrument), -hold.amount),
                    ),
                    description=f"held deposit {hold_id} returned to {hold.sender} by {actor}",
                )
            ]
        )
        uow.withdrawals.insert(withdrawal)
        uow.compliance.close_hold(hold_id, "returned", actor, at, withdrawal_id=return_id)
        uow.compliance.close_reviews_of(hold_id, actor, f"returned: {reason}", at)
        _audit(
            uow,
            operation="deposit_returned",
            operation_id=hold_id,
            actor=actor,
            at=at,
            customer_id=hold.customer_id,
            parameters={
                "reason": reason,
                "amount": format_amount(hold.amount),
                "instrument": instrument.key(),
                "receiver": hold.sender,
            },
            state_changes=[
                {"debited": COMPLIANCE_HOLD, "credited": IN_FLIGHT},
                {"hold": hold_id, "status": "returned", "withdrawal": return_id},
            ],
        )
        returned = [
            hold_event(
                "deposit_returned",
                hold,
                at=at,
                status="returned",
                reason=reason,
                withdrawal_id=return_id,
                actor=actor,
            ),
            withdrawal_event("withdrawal_requested", withdrawal, at=at, actor=actor),
        ]
        emit_all(uow, [event for event in returned if event is not None])
        uow.commit()
        return withdrawal


# --- screening the customer base -----------------------------------------------------------------


def screen_customers(
    uow_factory: UnitOfWorkFactory,
    screening: NameScreening,
    *,
    actor: str,
    at: datetime,
    on_progress: Callable[[int, int], None] | None = None,
) -> list[NameHit]:
    """Screen every name of every customer (the primary one and the others they gave, in
    whatever script); a match puts an active customer under review (an officer then clears or
    blacklists them) and opens a review item per listed entity. Returns the matching names,
    by customer, best first."""
    _require_actor(actor)
    if screening.explain is None:
        raise InvalidInputError("no sanctions list to screen the customers against")
    with uow_factory() as uow:
        names = uow.compliance.names_to_screen()
    found: dict[str, list[NameHit]] = {}
    for index, (customer_id, name) in enumerate(names, 1):
        hits = screen_names(screening, customer_id, [name])
        if hits:
            found.setdefault(customer_id, []).extend(hits)
        if on_progress is not None and (index % 500 == 0 or index == len(names)):
            on_progress(index, len(names))
    matches: list[NameHit] = []
    for customer_id, customer_hits in found.items():
        hits = sorted(customer_hits, key=lambda hit: -hit.result.score)
        with uow_factory() as uow:
            profile = _profile(uow, customer_id)
            status = hold_for_sanctions(uow, profile, hits, actor=actor, at=at)
            audit_screening(
                uow,
                profile,
                [hit.name for hit in hits],
                hits,
                actor=actor,
                at=at,
                operation_id=f"screen:{customer_id}:{at.isoformat()}",
                status=status,
                source=screening.source,
            )
            uow.commit()
        matches.extend(hits)
    # The run itself, matches or not: which list, how many names, what was found.
    with uow_factory() as uow:
        _audit(
            uow,
            operation="customer_base_screened",
            operation_id=f"screen-customers:{at.isoformat()}",
            actor=actor,
            at=at,
            parameters={
                "list": screening.source,
                "customers": len({customer_id for customer_id, _ in names}),
                "names": len(names),
                "matches": len(matches),
                "customers_matched": len(found),
            },
        )
        uow.commit()
    return matches


def limits_from_text(
    per_operation: str | None, daily: str | None, monthly: str | None
) -> TierLimits:
    """Limits as an operator types them: an amount, or ``none`` for no limit."""

    def parse(name: str, text: str | None) -> Decimal | None:
        if text is None or text.strip().lower() in ("", "none", "unlimited"):
            return None
        try:
            value = Decimal(text)
        except ArithmeticError:
            raise InvalidInputError(f"{name} must be an amount or 'none', got {text!r}") from None
        if not value.is_finite() or value < 0:
            raise InvalidInputError(f"{name} must be a non-negative amount, got {text!r}")
        return value

    return TierLimits(
        parse("per_operation", per_operation), parse("daily", daily), parse("monthly", monthly)
    )
