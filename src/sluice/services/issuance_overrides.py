"""An operator's hands on the router's operations: retry, compensate, resolve. Each is the
executor of an approval-gated operation (``issuance.retry``, ``issuance.compensate``,
``issuance.resolve``), is audited, and leaves an ``override`` record in the operation's steps.

Why an override cannot mint or pay twice
----------------------------------------
* *Racing a router.* An override moves the operation with the same version check the router
  records with, so a router that claimed it before records nothing afterwards (its step was
  idempotent). An override of an operation whose lease a router holds right now (a step may be
  half-way) is refused (41): the operator tries again once the step is recorded.
* *Retry* only puts a ``stuck`` or ``waiting`` operation back at the step it stopped at, with
  its attempts at zero: the step is idempotent (command ids derived from the operation), so
  running it again finds what it did before instead of doing it again.
* *Compensate* first claims the operation: it is made ``stuck`` (which no router runs) with a
  lease that refuses a second override meanwhile, so nothing else acts on it while the
  definition's compensation looks at what really happened (a burn committed or not, a payout
  still cancellable) and undoes it. A crash during the compensation leaves it ``stuck`` for an
  operator (the compensation is idempotent, as steps are). The compensation refuses (41)
  whatever it cannot undo without paying twice, and the operation is then left as it was. A
  completed, compensated, resolved or returned operation is refused outright.
* *Resolve* only closes a ``stuck``, ``held`` or ``waiting`` operation with the operator's
  reason: it moves no value, and nothing runs it afterwards. Because it moves no value, it must
  not close a redemption that took value and gave nothing back: a ``token_withdrawal`` is
  resolved only once its payout is ``completed``, its burn was refunded (the burn record
  ``failed`` with ``update_id = "refunded"``) or its burned iSTSi re-minted (the re-mint record
  ``committed``, or credited by ingestion); anything else (iSTSi burned and no BTC sent, or held in
  ``in_flight``) is refused (41) and the operator is pointed to ``compensate``.

Every refusal (41, a missing reason, an unknown operation, the pause) leaves an audit record
(``issuance_<action>_refused``) with the operator, the reason given and the error, in its own
transaction after the refused one rolled back.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import timedelta

from sluice.domain.audit import AuditEntry
from sluice.domain.deposits import Severity
from sluice.domain.errors import (
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
    SluiceError,
)
from sluice.ports import UnitOfWork
from sluice.ports.issuance import IssuanceOperation, OperationStatus, StepOutcomeKind
from sluice.services.controls import check_not_paused
from sluice.services.events import emit_all
from sluice.services.issuance_events import operation_events
from sluice.services.issuance_lease import leased, with_lease, without_lease
from sluice.services.issuance_redeem import REFUNDED, burn_id_of, payout_id_of, remint_id_of
from sluice.services.issuance_router import (
    DONE,
    OperationDefinition,
    StepOutcome,
    audit_move,
    record_override,
    stuck_alert,
)
from sluice.services.issuance_settings import IssuanceContext

log = logging.getLogger(__name__)

RETRYABLE: tuple[OperationStatus, ...] = ("stuck", "waiting")
RESOLVABLE: tuple[OperationStatus, ...] = ("stuck", "held", "waiting")
NOT_COMPENSABLE: tuple[OperationStatus, ...] = ("completed", "compensated", "resolved", "returned")


def _reason(reason: str) -> str:
    if not reason or not reason.strip():
        raise InvalidInputError("an override needs a reason")
    return reason.strip()


def _load(uow: UnitOfWork, ctx: IssuanceContext, operation_id: str) -> IssuanceOperation:
    op = uow.issuance.get_operation(operation_id, lock=True)
    if op is None:
        raise NotFoundError(f"no issuance operation {operation_id}")
    if leased(op, ctx.clock()):
        raise InvalidOperationStateError(
            f"operation {operation_id} is running step {op.step} right now; try again once it "
            "is recorded"
        )
    return op


@contextmanager
def _refusals_audited(
    ctx: IssuanceContext, operation_id: str, *, action: str, actor: str, reason: str
) -> Iterator[None]:
    """Audit a refused override (any sluice error raised inside), then let the error go on."""
    try:
        yield
    except SluiceError as exc:
        _audit_refusal(ctx, operation_id, action=action, actor=actor, reason=reason, error=exc)
        raise


def _audit_refusal(
    ctx: IssuanceContext,
    operation_id: str,
    *,
    action: str,
    actor: str,
    reason: str,
    error: SluiceError,
) -> None:
    try:
        with ctx.uow() as uow:
            op = uow.issuance.get_operation(operation_id)
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=operation_id,
                        operation=f"issuance_{action}_refused",
                        actor=actor,
                        recorded_at=ctx.clock(),
                        customer_id=op.customer_id if op is not None else None,
                        parameters={
                            "reason": reason,
                            "status": op.status if op is not None else None,
                            "step": op.step if op is not None else None,
                            "code": getattr(error, "code", None),
                        },
                        error=f"{type(error).__name__}: {error}",
                        correlation_id=op.correlation_id if op is not None else None,
                    )
                ]
            )
            uow.commit()
    except Exception:  # the refusal itself must reach the operator even if this fails
        log.exception("auditing the refused %s of %s failed", action, operation_id)


def _check_resolvable(uow: UnitOfWork, op: IssuanceOperation) -> None:
    """A redemption is closed without moving value only when nothing is owed: its payout paid,
    its burn refunded, or the burned iSTSi re-minted; otherwise 41, pointing to compensate."""
    if op.type != "token_withdrawal":
        return
    burn = uow.issuance.get_burn(burn_id_of(op.id))
    if burn is not None and burn.status == "failed" and burn.update_id == REFUNDED:
        return
    remint = uow.issuance.get_mint(remint_id_of(op.id))
    if remint is not None and (remint.status == "committed" or remint.credited):
        return
    payout = uow.btc_payouts.get_payout(payout_id_of(op.id))  # in this transaction (SQLite)
    if payout is not None and payout.status == "completed":
        return
    burned = burn is not None and burn.status == "committed"
    raise InvalidOperationStateError(
        f"redemption {op.id} cannot be resolved: "
        + (
            "its iSTSi was burned and "
            + ("no payout was requested" if payout is None else f"its payout is {payout.status}")
            if burned
            else "the customer's iSTSi is held in flight (burn "
            + ("not recorded" if burn is None else burn.status)
            + ")"
        )
        + "; compensate it instead (a refund or a re-mint gives the value back)"
    )


def _override(
    ctx: IssuanceContext,
    operation_id: str,
    *,
    action: str,
    allowed: tuple[OperationStatus, ...],
    reason: str,
    actor: str,
    move: dict[str, object],
) -> IssuanceOperation:
    with _refusals_audited(ctx, operation_id, action=action, actor=actor, reason=reason):
        return _override_unaudited(
            ctx, operation_id, action=action, allowed=allowed, reason=reason, actor=actor, move=move
        )


def _override_unaudited(
    ctx: IssuanceContext,
    operation_id: str,
    *,
    action: str,
    allowed: tuple[OperationStatus, ...],
    reason: str,
    actor: str,
    move: dict[str, object],
) -> IssuanceOperation:
    reason = _reason(reason)
    now = ctx.clock()
    with ctx.uow() as uow:
        op = _load(uow, ctx, operation_id)
        if op.status not in allowed:
            raise InvalidOperationStateError(
                f"operation {operation_id} is {op.status}; {action} needs it {' or '.join(allowed)}"
            )
        if action == "resolve":
            _check_resolvable(uow, op)
        moved = replace(op, version=op.version + 1, updated_at=now, **move)  # type: ignore[arg-type]
        moved = replace(moved, result=without_lease(moved.result))
        if move.get("status") in ("resolved",):
            moved = replace(moved, completed_at=now)
        if not uow.issuance.update_operation(moved, expected_version=op.version):
            raise InvalidOperationStateError(f"operation {operation_id} moved meanwhile; try again")
        emit_all(uow, operation_events(op, moved, now, actor=actor, reason=reason))
        outcome: StepOutcomeKind = "retry" if action == "retry" else "done"
        record_override(
            uow,
            op,
            kind="override",
            outcome=outcome,
            at=now,
            detail={"action": action, "reason": reason, "actor": actor},
        )
        audit_move(
            uow,
            before=op,
            after=moved,
            operation=f"issuance_{action}",
            actor=actor,
            at=now,
            parameters={"reason": reason, "step": op.step},
        )
        uow.commit()
    return moved


def retry_operation(
    ctx: IssuanceContext, operation_id: str, *, reason: str, actor: str
) -> IssuanceOperation:
    """Run a stuck (or waiting) operation's step again, at once, with its attempts at zero."""
    return _override(
        ctx,
        operation_id,
        action="retry",
        allowed=RETRYABLE,
        reason=reason,
        actor=actor,
        move={"status": "pending", "attempts": 0, "next_attempt_at": None, "last_error": None},
    )


def resolve_operation(
    ctx: IssuanceContext, operation_id: str, *, reason: str, actor: str
) -> IssuanceOperation:
    """Close a stuck, held or waiting operation with the operator's reason (moves no value)."""
    return _override(
        ctx,
        operation_id,
        action="resolve",
        allowed=RESOLVABLE,
        reason=reason,
        actor=actor,
        move={"status": "resolved", "next_attempt_at": None},
    )


def compensate_operation(
    ctx: IssuanceContext,
    definitions: Mapping[str, OperationDefinition],
    operation_id: str,
    *,
    reason: str,
    actor: str,
) -> IssuanceOperation:
    """Undo what the operation did, by its definition's compensation. Refused (41) for a
    completed, compensated, resolved or returned operation, and whenever the compensation
    refuses; the operation is then left as it was."""
    with _refusals_audited(ctx, operation_id, action="compensate", actor=actor, reason=reason):
        return _compensate(ctx, definitions, operation_id, reason=reason, actor=actor)


def _compensate(
    ctx: IssuanceContext,
    definitions: Mapping[str, OperationDefinition],
    operation_id: str,
    *,
    reason: str,
    actor: str,
) -> IssuanceOperation:
    reason = _reason(reason)
    now = ctx.clock()
    with ctx.uow() as uow:
        check_not_paused(uow)
        op = _load(uow, ctx, operation_id)
        if op.status in NOT_COMPENSABLE:
            raise InvalidOperationStateError(
                f"operation {operation_id} is {op.status}; it cannot be compensated"
            )
        definition = definitions.get(op.type)
        if definition is None:
            raise InvalidOperationStateError(f"no definition for operations of {op.type}")
        # The claim: no router runs a step of it while the compensation looks and acts.
        claimed = replace(
            op,
            status="stuck",
            version=op.version + 1,
            updated_at=now,
            next_attempt_at=now + timedelta(seconds=ctx.settings.lease_s),
            result=with_lease(op.result, now, ctx.settings.lease_s),
            last_error=f"being compensated ({actor}: {reason})",
        )
        if not uow.issuance.update_operation(claimed, expected_version=op.version):
            raise InvalidOperationStateError(f"operation {operation_id} moved meanwhile; try again")
        uow.commit()
    try:
        outcome = definition.compensate(ctx, claimed)
    except InvalidOperationStateError:
        _release(ctx, op, claimed)
        raise
    except SluiceError as exc:
        outcome = StepOutcome("fail", error=f"{type(exc).__name__}: {exc}")
    except Exception as exc:
        log.exception("compensation of %s raised", operation_id)
        outcome = StepOutcome("retry", error=f"{type(exc).__name__}: {exc}")
    return _record_compensation(ctx, definition, op, claimed, outcome, reason=reason, actor=actor)


def _release(ctx: IssuanceContext, before: IssuanceOperation, claimed: IssuanceOperation) -> None:
    """Give the operation back as it was before a refused compensation claimed it."""
    with ctx.uow() as uow:
        restored = replace(
            claimed,
            version=claimed.version + 1,
            status=before.status,
            updated_at=ctx.clock(),
            next_attempt_at=before.next_attempt_at,
            result=without_lease(claimed.result),
            last_error=before.last_error,
        )
        if uow.issuance.update_operation(restored, expected_version=claimed.version):
            uow.commit()


def _record_compensation(
    ctx: IssuanceContext,
    definition: OperationDefinition,
    before: IssuanceOperation,
    claimed: IssuanceOperation,
    outcome: StepOutcome,
    *,
    reason: str,
    actor: str,
) -> IssuanceOperation:
    now = ctx.clock()
    result = without_lease({**claimed.result, **outcome.result})
    base = replace(claimed, version=claimed.version + 1, updated_at=now, result=result)
    alert = False
    if outcome.kind == "done":
        following = outcome.next_step or DONE
        if following == DONE:
            moved = replace(
                base,
                status=outcome.status or "compensated",
                step=DONE,
                attempts=0,
                next_attempt_at=None,
                last_error=None,
                completed_at=now,
            )
        elif definition.step(following) is None:
            moved = replace(
                base,
                status="stuck",
                next_attempt_at=None,
                last_error=f"the compensation named an unknown step {following!r}",
            )
            alert = True
        else:  # the router runs the compensation's steps (a re-mint, say)
            moved = replace(
                base,
                status="pending",
                step=following,
                attempts=0,
                next_attempt_at=None,
                last_error=None,
            )
    else:
        error = outcome.error or f"the compensation answered {outcome.kind}"
        moved = replace(base, status="stuck", next_attempt_at=None, last_error=error)
        alert = True
    with ctx.uow() as uow:
        if not uow.issuance.update_operation(moved, expected_version=claimed.version):
            raise InvalidOperationStateError(
                f"operation {claimed.id} moved while it was being compensated"
            )
        # From the operation as it was before the compensation claimed it (the claim's
        # ``stuck`` is a lease, not an event).
        emit_all(uow, operation_events(before, moved, now, actor=actor, reason=reason))
        record_override(
            uow,
            claimed,
            kind="override",
            outcome="done",
            at=now,
            detail={"action": "compensate", "reason": reason, "actor": actor},
        )
        record_override(
            uow,
            claimed,
            kind="compensation",
            outcome=outcome.kind,
            at=now,
            detail=dict(outcome.detail),
            error=outcome.error,
        )
        audit_move(
            uow,
            before=before,
            after=moved,
            operation="issuance_compensate",
            actor=actor,
            at=now,
            parameters={"reason": reason, "step": claimed.step, "outcome": outcome.kind},
            error=outcome.error,
        )
        if alert:
            seq = uow.issuance.steps(claimed.id)[-1].seq
            severity: Severity = "critical" if outcome.kind in ("fail", "done") else "warning"
            uow.issuance.add_alerts(
                [stuck_alert(claimed, seq, severity, moved.last_error or "")], now
            )
        uow.commit()
    return moved
