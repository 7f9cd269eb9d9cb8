"""Running critical operations through M-of-N approvals (DESIGN §10).

A critical operation is recorded as a proposal (:func:`propose_operation`); eligible principals
vote on it (:func:`vote_on_approval`); once ``required`` distinct principals have approved it, its
*executor* runs it. The rules of who may vote live in :mod:`sluice.domain.approvals`; this module
keeps the proposals in the Integration DB, audits every step and runs the executors.

How an approved operation is run, and what happens when something breaks half-way:

1. The vote that completes the approvals is committed first (status ``approved``).
2. The executor runs, outside that transaction, in its own unit(s) of work.
3. Its outcome is recorded in a new transaction: ``executed`` with the executor's result, or
   ``failed`` with the error of a :class:`SluiceError` it raised (a refusal: the operation did
   not happen and trying again would not help).

A crash (or an unexpected, non-sluice error such as a lost database connection) between 1 and 3
leaves the proposal ``approved`` with no ``executed_at``. :func:`run_approved`, which ``sluice
serve`` calls periodically, runs such proposals again once they have been approved for
``grace_s`` (so it does not race the vote that is still running them). **An executor may
therefore run more than once for one proposal and must be idempotent**, e.g. by using the
approval id as the operation's idempotency key.

The time lock of a proposal is carried by ``effective_at`` (approval time + ``timelock_s``). The
executor runs at approval time and is responsible for deferring the effect: the
``config.change`` executor writes the new value with that ``effective_at``, so it is visible as a
scheduled change and comes into force only then.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Literal

from sluice.domain import approvals as rules
from sluice.domain.access import Principal
from sluice.domain.approvals import CRITICAL_OPERATIONS, Approval
from sluice.domain.audit import AuditEntry, current_correlation_id, json_value
from sluice.domain.errors import (
    DuplicateOperationError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
    SluiceError,
)
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.services.events import emit

log = logging.getLogger(__name__)

Executor = Callable[[Approval, datetime], Mapping[str, object]]
"""Runs an approved operation in its own unit(s) of work and returns what it did (JSON-able).
Raising a :class:`SluiceError` marks the proposal ``failed``. Must be idempotent: it may run
again for the same proposal after a crash."""

APPROVAL_ID_LENGTH_MAX = 120
TEXT_LENGTH_MAX = 2000  # reasons and comments
REQUIRED_MAX = 10
TIMELOCK_S_MAX = 30 * 86_400.0
EXECUTION_GRACE_S = 60.0
RUNNER_ACTOR = "system:approvals"
_SCAN_MAX = 10_000  # bound on the approved proposals run_approved looks at in one round
_PAGE = 1000


def _check_text(name: str, value: str | None) -> str | None:
    if value is not None and len(value) > TEXT_LENGTH_MAX:
        raise InvalidInputError(
            f"{name} is {len(value)} characters long (at most {TEXT_LENGTH_MAX})"
        )
    return value


def _check_approval_id(approval_id: str) -> str:
    if not approval_id or len(approval_id) > APPROVAL_ID_LENGTH_MAX:
        raise InvalidInputError(
            f"an approval id is 1..{APPROVAL_ID_LENGTH_MAX} characters long, got {len(approval_id)}"
        )
    if not approval_id.isprintable() or any(c.isspace() for c in approval_id):
        raise InvalidInputError("an approval id must not contain spaces or control characters")
    return approval_id


def _parameters(parameters: Mapping[str, object]) -> dict[str, object]:
    """The parameters in the JSON form they are stored (and compared) in."""
    normalised = json_value(parameters, "parameters")
    if not isinstance(normalised, dict):
        raise InvalidInputError("parameters must be a JSON object")
    return normalised


# The audited operations that are events. A proposal's parameters and result and the votes'
# comments stay in the audit trail (a configuration change's parameters may be confidential).
_EVENT_OF = {
    "approval_proposed": "approval_proposed",
    "approval_approved": "approval_signed",
    "approval_rejected": "approval_signed",
    "approval_cancelled": "approval_cancelled",
    "approval_executed": "approval_executed",
    "approval_failed": "approval_executed",
}


def _audit(
    uow: UnitOfWork,
    approval: Approval,
    *,
    operation: str,
    operation_id: str,
    actor: str,
    at: datetime,
    parameters: Mapping[str, object] | None = None,
    was: str | None = None,
    error: str | None = None,
) -> None:
    change: dict[str, object] = {
        "approval": approval.id,
        "status": approval.status,
        "approvals": len(approval.approvers),
        "required": approval.required,
    }
    if was is not None:
        change["was"] = was
    event_type = _EVENT_OF.get(operation)
    if event_type is not None:
        decision = (parameters or {}).get("decision")
        emit(
            uow,
            event_type,
            approval.id,
            {
                "approval_id": approval.id,
                "operation": approval.operation,
                "customer_id": approval.customer_id,
                "status": approval.status,
                "was": was,
                "approvals": len(approval.approvers),
                "required": approval.required,
                "decision": decision,
                "reason": approval.reason,
                "error": error,
                "actor": actor,
            },
            at=at,
        )
    uow.audit.append(
        [
            AuditEntry(
                operation_id=operation_id,
                operation=operation,
                actor=actor,
                recorded_at=at,
                customer_id=approval.customer_id,
                parameters={
                    "approval_id": approval.id,
                    "operation": approval.operation,
                    **(parameters or {}),
                },
                state_changes=[change],
                error=error,
            )
        ]
    )


def propose_operation(
    uow_factory: UnitOfWorkFactory,
    *,
    operation: str,
    parameters: Mapping[str, object],
    proposer: Principal,
    at: datetime,
    required: int,
    executors: Mapping[str, Executor],
    customer_id: str | None = None,
    timelock_s: float = 0.0,
    approval_id: str | None = None,
    reason: str | None = None,
) -> Approval:
    """Record a proposal to run ``operation`` once ``required`` distinct eligible principals
    approve it (the proposer counting when eligible).

    With a given ``approval_id`` the call is idempotent: a proposal with that id and the same
    operation and parameters is returned as it stands; another one with that id is
    :class:`DuplicateOperationError`. A proposal complete at once (``required`` 1 and an
    eligible proposer) is executed before this returns."""
    if operation not in CRITICAL_OPERATIONS:
        raise InvalidInputError(
            f"{operation!r} is not an operation that takes approvals: one of "
            f"{', '.join(sorted(CRITICAL_OPERATIONS))}"
        )
    if operation not in executors:
        raise InvalidInputError(f"operation {operation!r} cannot be run here (no executor)")
    if isinstance(required, bool) or not 1 <= required <= REQUIRED_MAX:
        raise InvalidInputError(f"required approvals must be within 1..{REQUIRED_MAX}")
    if not 0 <= timelock_s <= TIMELOCK_S_MAX:
        raise InvalidInputError(f"a time lock must be within 0..{TIMELOCK_S_MAX:.0f} s")
    if at.tzinfo is None:
        raise InvalidInputError("the proposal time must carry a time zone")
    _check_text("reason", reason)
    approval_id = _check_approval_id(approval_id) if approval_id is not None else None
    new_id = approval_id or f"ap-{uuid.uuid4().hex}"
    normalised = _parameters(parameters)
    approval = rules.propose(
        approval_id=new_id,
        operation=operation,
        parameters=normalised,
        proposer=proposer,
        required=required,
        at=at,
        customer_id=customer_id,
        timelock_s=float(timelock_s),
        correlation_id=current_correlation_id.get(),
        reason=reason,
    )
    with uow_factory() as uow:
        if not uow.access.add_approval(approval):
            existing = uow.access.approval(new_id)
            assert existing is not None
            if existing.operation == operation and dict(existing.parameters) == normalised:
                return existing
            raise DuplicateOperationError(
                f"approval id {new_id!r} is taken by another proposal ({existing.operation})"
            )
        _audit(
            uow,
            approval,
            operation="approval_proposed",
            operation_id=f"approval:{new_id}:proposed",
            actor=proposer.actor,
            at=at,
            parameters={
                "parameters": normalised,
                "required": required,
                "timelock_s": float(timelock_s),
                "reason": reason,
            },
        )
        uow.commit()
    if approval.status == "approved":
        return _execute(uow_factory, approval.id, executors, actor=proposer.actor, now=at)[0]
    return approval


def vote_on_approval(
    uow_factory: UnitOfWorkFactory,
    approval_id: str,
    *,
    principal: Principal,
    decision: Literal["approve", "reject"],
    at: datetime,
    executors: Mapping[str, Executor],
    comment: str | None = None,
) -> Approval:
    """Record ``principal``'s vote (:class:`NotFoundError` for an unknown proposal; 2 for a
    principal who may not vote on it; 41 for a second vote or a proposal no longer pending).
    The vote that completes the approvals also runs the operation and returns its outcome."""
    _check_text("comment", comment)
    if decision not in ("approve", "reject"):
        raise InvalidInputError(f"a vote is 'approve' or 'reject', not {decision!r}")
    with uow_factory() as uow:
        approval = uow.access.approval(approval_id, lock=True)
        if approval is None:
            raise NotFoundError(f"unknown approval {approval_id!r}")
        voted = rules.vote(approval, principal, decision, at, comment)
        uow.access.update_approval(voted)
        _audit(
            uow,
            voted,
            operation="approval_approved" if decision == "approve" else "approval_rejected",
            operation_id=f"approval:{approval_id}:vote:{principal.id}",
            actor=principal.actor,
            at=at,
            parameters={"decision": decision, "comment": comment},
            was=approval.status,
        )
        uow.commit()
    if voted.status == "approved":
        return _execute(uow_factory, approval_id, executors, actor=principal.actor, now=at)[0]
    return voted


def cancel_approval(
    uow_factory: UnitOfWorkFactory, approval_id: str, *, principal: Principal, at: datetime
) -> Approval:
    """The proposer withdraws a pending proposal."""
    with uow_factory() as uow:
        approval = uow.access.approval(approval_id, lock=True)
        if approval is None:
            raise NotFoundError(f"unknown approval {approval_id!r}")
        cancelled = rules.cancel(approval, principal)
        uow.access.update_approval(cancelled)
        _audit(
            uow,
            cancelled,
            operation="approval_cancelled",
            operation_id=f"approval:{approval_id}:cancelled",
            actor=principal.actor,
            at=at,
            was=approval.status,
        )
        uow.commit()
    return cancelled


def get_approval(uow_factory: UnitOfWorkFactory, approval_id: str) -> Approval:
    with uow_factory() as uow:
        approval = uow.access.approval(approval_id)
    if approval is None:
        raise NotFoundError(f"unknown approval {approval_id!r}")
    return approval


def list_approvals(
    uow_factory: UnitOfWorkFactory,
    *,
    status: str | None = None,
    customer_id: str | None = None,
    offset: int = 0,
    limit: int = 100,
) -> list[Approval]:
    """Proposals, newest first."""
    if status is not None and status not in rules.APPROVAL_STATUSES:
        raise InvalidInputError(
            f"unknown approval status {status!r}: one of {', '.join(rules.APPROVAL_STATUSES)}"
        )
    with uow_factory() as uow:
        return uow.access.approvals(
            status=status, customer_id=customer_id, offset=offset, limit=limit
        )


def approved_at(approval: Approval) -> datetime:
    """When the last approval needed was given."""
    return max(
        (v.at for v in approval.votes if v.decision == "approve"), default=approval.proposed_at
    )


def run_approved(
    uow_factory: UnitOfWorkFactory,
    executors: Mapping[str, Executor],
    now: datetime,
    *,
    grace_s: float = EXECUTION_GRACE_S,
) -> int:
    """Run the proposals left ``approved`` but never executed (a crash, or an unexpected error,
    between approval and execution), oldest first, once they have been approved for ``grace_s``;
    how many were run. One that fails unexpectedly again is logged and left for the next round;
    the others still run."""
    cutoff = now - timedelta(seconds=grace_s)
    waiting: list[Approval] = []
    with uow_factory() as uow:
        for offset in range(0, _SCAN_MAX, _PAGE):
            page = uow.access.approvals(status="approved", offset=offset, limit=_PAGE)
            waiting += page
            if len(page) < _PAGE:
                break
    waiting = [a for a in waiting if a.executed_at is None and approved_at(a) <= cutoff]
    waiting.sort(key=lambda a: (approved_at(a), a.proposed_at, a.id))
    ran = 0
    for approval in waiting:
        try:
            _, executed = _execute(uow_factory, approval.id, executors, actor=RUNNER_ACTOR, now=now)
        except Exception:
            log.exception(
                "approval %s (%s) could not be run; it stays approved and is tried again",
                approval.id,
                approval.operation,
            )
            continue
        ran += executed
    return ran


def _execute(
    uow_factory: UnitOfWorkFactory,
    approval_id: str,
    executors: Mapping[str, Executor],
    *,
    actor: str,
    now: datetime,
) -> tuple[Approval, bool]:
    """Run an approved proposal's executor and record the outcome; (the proposal as it stands
    afterwards, whether the executor was called)."""
    with uow_factory() as uow:
        approval = uow.access.approval(approval_id)
    if approval is None:
        raise NotFoundError(f"unknown approval {approval_id!r}")
    if approval.status != "approved" or approval.executed_at is not None:
        return approval, False  # already run (or never approved)
    executor = executors.get(approval.operation)
    result: Mapping[str, object] | None = None
    failure: SluiceError | None = None
    # The executor's own audit records name the request that proposed the operation when it
    # runs outside any request (the periodic runner).
    token = (
        current_correlation_id.set(approval.correlation_id)
        if current_correlation_id.get() is None and approval.correlation_id is not None
        else None
    )
    try:
        if executor is None:
            failure = InvalidOperationStateError(
                f"no executor for operation {approval.operation!r} in this process"
            )
        else:
            try:
                result = executor(approval, now)
            except SluiceError as exc:
                failure = exc
        return _record_outcome(uow_factory, approval_id, result, failure, actor=actor, now=now)
    finally:
        if token is not None:
            current_correlation_id.reset(token)


def _record_outcome(
    uow_factory: UnitOfWorkFactory,
    approval_id: str,
    result: Mapping[str, object] | None,
    failure: SluiceError | None,
    *,
    actor: str,
    now: datetime,
) -> tuple[Approval, bool]:
    with uow_factory() as uow:
        current = uow.access.approval(approval_id, lock=True)
        assert current is not None
        if current.status != "approved" or current.executed_at is not None:
            # Another run recorded its outcome first; the executor is idempotent, so ours
            # changed nothing more.
            return current, True
        if failure is None:
            try:
                recorded = json_value(dict(result or {}), "result")
            except InvalidInputError as exc:
                recorded = {"unrecorded": str(exc)}
            outcome = replace(
                current,
                status="executed",
                executed_at=now,
                result=recorded if isinstance(recorded, dict) else {"result": recorded},
                error=None,
            )
        else:
            outcome = replace(
                current,
                status="failed",
                executed_at=now,
                result={"code": failure.code, "error": failure.error},
                error=str(failure) or failure.error,
            )
        uow.access.update_approval(outcome)
        _audit(
            uow,
            outcome,
            operation="approval_executed" if failure is None else "approval_failed",
            operation_id=f"approval:{approval_id}:{outcome.status}",
            actor=actor,
            at=now,
            parameters={"parameters": dict(outcome.parameters), "result": outcome.result},
            was=current.status,
            error=outcome.error,
        )
        uow.commit()
    return outcome, True
