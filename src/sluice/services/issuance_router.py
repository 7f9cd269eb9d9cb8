"""The iSTSi router's engine: durable operations (a deposit to mint, a redemption to pay) run
step by step, each step its own unit of work, so that a crash at any point resumes where it
stopped and nothing is minted, burnt or paid twice.

An operation is a row (``issuance_operations``) naming the step to run next; its definition
(:class:`OperationDefinition`) maps step names to functions. The engine claims the operation,
runs the step's function (which does its own units of work), then records the step's outcome
and moves the operation in one transaction.

How a step could be done twice, and why it is not
--------------------------------------------------
1. *A crash between a step and its record.* The step's effect (a mint sent, a payout queued)
   may have happened while nothing says so. The claim left the operation at the same step with
   ``next_attempt_at`` = the end of its lease, so once the lease runs out the step runs again.
   That is why a step function must be idempotent: its commands carry ids derived from the
   operation (``issuance:<id>:mint``), written before they are sent, so running it again finds
   its own record or gets the ledger's first answer for the same command id. A crash counts as
   no failed attempt: nothing was recorded.
2. *Two routers on one operation.* Before a step, a router claims the operation: a conditional
   update on its ``version`` that also moves ``next_attempt_at`` to the end of a lease
   (``lease_s``, marked in ``result.leased_until``: :mod:`sluice.services.issuance_lease`). A
   second router reading the same version loses the update and leaves the
   operation alone; a tick only picks operations whose ``next_attempt_at`` has passed, so a
   leased one is not even looked at. Recording is conditional on the version the claim wrote:
   a router whose lease ran out and that another router claimed meanwhile records nothing (its
   step was idempotent, the other one runs it again and records it). The step records' key
   (operation, seq) is unique as well, so a step can never be recorded twice.
3. *The same operation created twice* (a watcher re-reading a block, a client resending a
   redemption). An operation id is derived from what it is for (``btc-deposit:<txid>:<vout>``,
   ``redeem:<customer>:<key>``) and inserted once; the second :func:`create_operation` raises
   :class:`DuplicateOperationError` (42) carrying the first operation, and creates nothing.
4. *The emergency pause.* It is read before each step, in the claim's transaction: once paused,
   no further step starts and nothing is recorded as failed; a step already running finishes and
   is recorded (stopping it half-way would be worse). Resuming picks up at the same step.
5. *Retrying for ever, or giving up silently.* A step that answers ``retry`` (or raises an
   unexpected exception) is tried again after ``backoff_base_s · 2^(attempt − 1)`` seconds (at
   most ``backoff_cap_s``); at ``attempts_max`` failed attempts the operation is ``stuck`` with
   a warning alert, and a step that answers ``fail`` (or raises a sluice error) makes it
   ``stuck`` at once with a critical alert. A stuck operation waits for an operator
   (:mod:`sluice.services.issuance_overrides`): retry, compensate or resolve, each audited.

Every move (creation, each recorded step, stuck, held, completed) is appended to the audit log.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from sluice.domain.audit import AuditEntry, current_correlation_id
from sluice.domain.deposits import Alert, Severity
from sluice.domain.errors import DuplicateOperationError, InvalidInputError, SluiceError
from sluice.domain.ledger import format_timestamp
from sluice.ports import UnitOfWork
from sluice.ports.issuance import (
    OPEN_STATUSES,
    OPERATION_TYPES,
    ContractAddresses,
    IssuanceOperation,
    OperationStatus,
    OperationType,
    StepKind,
    StepOutcomeKind,
    StepRecord,
)
from sluice.services.breakers import BreakerOpenError
from sluice.services.controls import current_pause, pause_state
from sluice.services.events import emit_all
from sluice.services.issuance_contracts import contract_addresses_in_force
from sluice.services.issuance_events import operation_events
from sluice.services.issuance_lease import (
    lease_end,
    leased,
    overrun_alert,
    with_lease,
    without_lease,
)
from sluice.services.issuance_settings import IssuanceContext, IssuanceSettings

log = logging.getLogger(__name__)

ROUTER_ACTOR = "router"
DONE = "done"
OPERATION_ID_MAX = 200


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """What a step answers; the engine records it and moves the operation accordingly."""

    kind: StepOutcomeKind  # done | wait | retry | hold | fail
    detail: Mapping[str, Any] = field(default_factory=dict)  # recorded on the step row
    result: Mapping[str, Any] = field(default_factory=dict)  # merged into operation.result
    error: str | None = None  # retry/fail/hold: why
    next_step: str | None = None  # done: run this step next ("done" ends it)
    status: OperationStatus | None = None  # done + next_step "done": final status
    wait_s: float | None = None  # wait: look again after (default settings.poll_s)


StepFn = Callable[[IssuanceContext, IssuanceOperation], StepOutcome]


@dataclass(frozen=True, slots=True)
class OperationDefinition:
    """An operation type's steps: the main path in order, the operator's compensation, and steps
    reached only by a ``next_step`` (say a re-mint after a payout failed for good)."""

    type: OperationType
    steps: tuple[tuple[str, StepFn], ...]
    compensate: StepFn
    extra_steps: Mapping[str, StepFn] = field(default_factory=dict)

    def step(self, name: str) -> StepFn | None:
        for step_name, function in self.steps:
            if step_name == name:
                return function
        return self.extra_steps.get(name)

    def after(self, name: str) -> str:
        """The step that follows ``name`` on the main path ("done" after the last one and after
        an extra step)."""
        names = [step_name for step_name, _ in self.steps]
        if name in names and names.index(name) + 1 < len(names):
            return names[names.index(name) + 1]
        return DONE


@dataclass(frozen=True, slots=True)
class RouterTick:
    """What one round of the router did."""

    paused: bool = False
    looked_at: int = 0  # operations due
    steps: int = 0  # step outcomes recorded
    completed: tuple[str, ...] = ()  # operations that reached a final status
    stuck: tuple[str, ...] = ()
    held: tuple[str, ...] = ()
    lost: tuple[str, ...] = ()  # claimed or moved by another worker meanwhile
    rebuilt: bool = False  # the contract addresses changed and the context was rebuilt
    error: str | None = None


# --- creating and showing operations ----------------------------------------------------------


def create_operation(
    uow: UnitOfWork,
    *,
    operation_id: str,
    type: OperationType,
    customer_id: str,
    amount_sats: int,
    params: Mapping[str, Any],
    first_step: str,
    at: datetime,
    correlation_id: str | None = None,
) -> IssuanceOperation:
    """A new operation, due at once, in the caller's transaction (the caller commits). An id
    used before raises :class:`DuplicateOperationError` carrying the first operation."""
    if not operation_id or len(operation_id) > OPERATION_ID_MAX:
        raise InvalidInputError(f"an operation id has 1 to {OPERATION_ID_MAX} characters")
    if type not in OPERATION_TYPES:
        raise InvalidInputError(f"unknown operation type {type!r}")
    if isinstance(amount_sats, bool) or not isinstance(amount_sats, int) or amount_sats <= 0:
        raise InvalidInputError(
            f"an operation's amount is a positive number of sats, got {amount_sats!r}"
        )
    if not first_step or first_step == DONE:
        raise InvalidInputError(f"an operation starts at a step, not {first_step!r}")
    operation = IssuanceOperation(
        id=operation_id,
        type=type,
        correlation_id=correlation_id or current_correlation_id.get() or uuid.uuid4().hex,
        status="pending",
        customer_id=customer_id,
        amount_sats=amount_sats,
        step=first_step,
        attempts=0,
        params=dict(params),
        result={},
        created_at=at,
        updated_at=at,
    )
    if not uow.issuance.insert_operation(operation):
        first = uow.issuance.get_operation(operation_id)
        raise DuplicateOperationError(
            f"operation {operation_id} exists already",
            first=operation_json(first) if first is not None else None,
        )
    uow.audit.append(
        [
            AuditEntry(
                operation_id=operation_id,
                operation="issuance_operation_created",
                actor=ROUTER_ACTOR,
                recorded_at=at,
                customer_id=customer_id,
                parameters={"type": type, "amount_sats": amount_sats, "step": first_step},
                state_changes=[{"status": "pending", "step": first_step}],
                correlation_id=operation.correlation_id,
            )
        ]
    )
    return operation


def _time(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


def step_json(record: StepRecord) -> dict[str, Any]:
    return {
        "seq": record.seq,
        "step": record.step,
        "kind": record.kind,
        "outcome": record.outcome,
        "attempt": record.attempt,
        "detail": dict(record.detail),
        "error": record.error,
        "at": format_timestamp(record.at),
    }


def operation_json(
    op: IssuanceOperation, steps: Sequence[StepRecord] | None = None
) -> dict[str, Any]:
    """An operation as JSON (times RFC 3339), with its step records when given."""
    data: dict[str, Any] = {
        "id": op.id,
        "type": op.type,
        "correlation_id": op.correlation_id,
        "status": op.status,
        "customer_id": op.customer_id,
        "amount_sats": op.amount_sats,
        "step": op.step,
        "attempts": op.attempts,
        "params": dict(op.params),
        "result": dict(op.result),
        "last_error": op.last_error,
        "next_attempt_at": _time(op.next_attempt_at),
        "created_at": format_timestamp(op.created_at),
        "updated_at": format_timestamp(op.updated_at),
        "completed_at": _time(op.completed_at),
    }
    if steps is not None:
        data["steps"] = [step_json(record) for record in steps]
    return data


# --- what the engine and the overrides share ----------------------------------------------------


def backoff_s(attempts: int, settings: IssuanceSettings) -> float:
    """Seconds before attempt ``attempts + 1`` of a step that failed ``attempts`` times."""
    exponent = min(max(attempts - 1, 0), 62)
    return float(min(settings.backoff_cap_s, settings.backoff_base_s * 2**exponent))


def next_seq(uow: UnitOfWork, operation_id: str) -> int:
    records = uow.issuance.steps(operation_id)
    return records[-1].seq + 1 if records else 1


def stuck_alert(op: IssuanceOperation, seq: int, severity: Severity, error: str) -> Alert:
    return Alert(
        id=f"issuance-stuck:{op.id}:{seq}",
        severity=severity,
        kind="issuance_stuck",
        message=f"issuance operation {op.id} is stuck at step {op.step}: {error}",
        details={"operation_id": op.id, "step": op.step, "error": error},
    )


def audit_move(
    uow: UnitOfWork,
    *,
    before: IssuanceOperation,
    after: IssuanceOperation,
    operation: str,
    actor: str,
    at: datetime,
    parameters: Mapping[str, object],
    error: str | None = None,
) -> None:
    uow.audit.append(
        [
            AuditEntry(
                operation_id=after.id,
                operation=operation,
                actor=actor,
                recorded_at=at,
                customer_id=after.customer_id,
                parameters=dict(parameters),
                state_changes=[
                    {
                        "status": after.status,
                        "was": before.status,
                        "step": after.step,
                        "step_was": before.step,
                        "attempts": after.attempts,
                    }
                ],
                error=error,
                correlation_id=after.correlation_id,
            )
        ]
    )


# --- the engine -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Run:
    """What running one operation for a while did."""

    operation: IssuanceOperation
    steps: int = 0
    lost: bool = False
    paused: bool = False


class IssuanceRouter:
    """Runs due operations step by step; see the module docstring for what makes it safe.

    ``rebuild``, when given, makes a new context from the contract addresses in force: at each
    tick the router reads them and, when they differ from those it runs with (``addresses``),
    rebuilds its context before running any step."""

    def __init__(
        self,
        ctx: IssuanceContext,
        definitions: Mapping[str, OperationDefinition],
        *,
        rebuild: Callable[[ContractAddresses], IssuanceContext] | None = None,
        addresses: ContractAddresses | None = None,
        actor: str = ROUTER_ACTOR,
    ) -> None:
        self.ctx = ctx
        self.definitions = dict(definitions)
        self.addresses = addresses
        self._rebuild = rebuild
        self._actor = actor

    @property
    def settings(self) -> IssuanceSettings:
        return self.ctx.settings

    def tick(self) -> RouterTick:
        """One bounded round: up to ``operations_per_round`` due operations, each run for up to
        ``steps_per_round`` steps."""
        rebuilt = False
        if self._rebuild is not None:
            try:
                rebuilt = self._rebuild_if_changed()
            except Exception as exc:  # a broken component must not run steps on stale wiring
                log.exception("issuance router: rebuilding the context failed")
                return RouterTick(error=f"rebuilding the context failed: {exc}")
        if current_pause(self.ctx.uow) is not None:
            return RouterTick(paused=True, rebuilt=rebuilt)
        with self.ctx.uow() as uow:
            due = uow.issuance.due_operations(self.ctx.clock(), self.settings.operations_per_round)
        steps = 0
        completed: list[str] = []
        stuck: list[str] = []
        held: list[str] = []
        lost: list[str] = []
        paused = False
        for op in due:
            run = self._run(op.id, force=False)
            steps += run.steps
            if run.lost:
                lost.append(op.id)
            status = run.operation.status
            if status in ("completed", "compensated", "resolved", "returned"):
                completed.append(op.id)
            elif status == "stuck":
                stuck.append(op.id)
            elif status == "held":
                held.append(op.id)
            if run.paused:
                paused = True
                break
        return RouterTick(
            paused=paused,
            looked_at=len(due),
            steps=steps,
            completed=tuple(completed),
            stuck=tuple(stuck),
            held=tuple(held),
            lost=tuple(lost),
            rebuilt=rebuilt,
        )

    def run_operation(self, operation_id: str) -> IssuanceOperation:
        """Run one operation now, whatever its schedule (a wait or a backoff), unless another
        worker holds its lease; returns it as it is afterwards."""
        return self._run(operation_id, force=True).operation

    def _rebuild_if_changed(self) -> bool:
        assert self._rebuild is not None
        in_force = contract_addresses_in_force(self.ctx.uow, self.ctx.clock())
        if in_force is None or in_force == self.addresses:
            return False
        self.ctx = self._rebuild(in_force)
        self.addresses = in_force
        log.info("issuance router: contract addresses changed, context rebuilt")
        return True

    def _run(self, operation_id: str, *, force: bool) -> _Run:
        steps = 0
        op: IssuanceOperation | None = None
        for _ in range(self.settings.steps_per_round):
            claim = self._claim(operation_id, force=force)
            force = False  # only the first step may be run ahead of its schedule
            if isinstance(claim, _Run):
                return replace(claim, steps=steps)
            op = claim
            outcome = self._call(op)
            moved = self._record(op, outcome)
            if moved is None:
                return _Run(self._read(operation_id), steps, lost=True)
            op, recorded = moved
            steps += recorded
            if op.status != "pending" or op.next_attempt_at is not None:
                return _Run(op, steps)
        return _Run(op if op is not None else self._read(operation_id), steps)

    def _read(self, operation_id: str) -> IssuanceOperation:
        with self.ctx.uow() as uow:
            op = uow.issuance.get_operation(operation_id)
        if op is None:
            raise InvalidInputError(f"no issuance operation {operation_id}")
        return op

    def _claim(self, operation_id: str, *, force: bool) -> IssuanceOperation | _Run:
        """Take the operation for one step (a lease), or say why not."""
        now = self.ctx.clock()
        with self.ctx.uow() as uow:
            op = uow.issuance.get_operation(operation_id, lock=True)
            if op is None:
                raise InvalidInputError(f"no issuance operation {operation_id}")
            if op.status not in OPEN_STATUSES:
                return _Run(op)
            if leased(op, now) or (
                not force and op.next_attempt_at is not None and op.next_attempt_at > now
            ):
                return _Run(op)
            if pause_state(uow) is not None:
                return _Run(op, paused=True)
            claimed = replace(
                op,
                version=op.version + 1,
                updated_at=now,
                next_attempt_at=now + timedelta(seconds=self.settings.lease_s),
                result=with_lease(op.result, now, self.settings.lease_s),
            )
            if not uow.issuance.update_operation(claimed, expected_version=op.version):
                return _Run(op, lost=True)
            uow.commit()
        return claimed

    def _call(self, op: IssuanceOperation) -> StepOutcome:
        definition = self.definitions.get(op.type)
        function = definition.step(op.step) if definition is not None else None
        if function is None:
            return StepOutcome("fail", error=f"no step {op.step!r} for operations of {op.type}")
        try:
            return function(self.ctx, op)
        except BreakerOpenError as exc:
            # Refused before anything was sent: the step runs again once the breaker lets
            # calls through, with the same records and command ids; no attempt is used up.
            return StepOutcome(
                "wait", detail={"breaker": exc.flow}, error=str(exc), wait_s=exc.retry_after_s
            )
        except SluiceError as exc:
            return StepOutcome("fail", error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("issuance step %s of %s raised; it will be retried", op.step, op.id)
            return StepOutcome("retry", error=f"{type(exc).__name__}: {exc}")

    def _record(
        self, claimed: IssuanceOperation, outcome: StepOutcome
    ) -> tuple[IssuanceOperation, int] | None:
        """Record the outcome and move the operation, in one transaction, only while it is
        still at the version the claim wrote; None when another worker moved it meanwhile."""
        now = self.ctx.clock()
        definition = self.definitions.get(claimed.type)
        with self.ctx.uow() as uow:
            current = uow.issuance.get_operation(claimed.id, lock=True)
            if current is None or current.version != claimed.version:
                return None
            history = uow.issuance.steps(claimed.id)
            seq = history[-1].seq + 1 if history else 1
            moved, severity = self._move(claimed, outcome, definition, now)
            attempt = claimed.attempts + 1
            previous = next((r for r in reversed(history) if r.step == claimed.step), None)
            repeated_wait = (
                outcome.kind == "wait"
                and previous is not None
                and previous.kind == "step"
                and previous.outcome == "wait"
                and previous.detail == dict(outcome.detail)
                and previous.error == outcome.error
            )
            if not uow.issuance.update_operation(moved, expected_version=claimed.version):
                return None
            emit_all(uow, operation_events(claimed, moved, now))
            recorded = 0
            if not repeated_wait:
                uow.issuance.add_step(
                    StepRecord(
                        operation_id=claimed.id,
                        seq=seq,
                        step=claimed.step,
                        kind="step",
                        outcome=outcome.kind,
                        attempt=attempt,
                        at=now,
                        detail=dict(outcome.detail),
                        error=outcome.error,
                    )
                )
                recorded = 1
                audit_move(
                    uow,
                    before=claimed,
                    after=moved,
                    operation=_audit_name(moved),
                    actor=self._actor,
                    at=now,
                    parameters={"step": claimed.step, "outcome": outcome.kind, "attempt": attempt},
                    error=outcome.error,
                )
            if severity is not None:
                error = moved.last_error or "failed"
                uow.issuance.add_alerts([stuck_alert(claimed, seq, severity, error)], now)
            end = lease_end(claimed)
            if end is not None and now > end:  # an override could have acted meanwhile
                uow.issuance.add_alerts([overrun_alert(claimed, seq, end, now)], now)
            uow.commit()
        if moved.status == "stuck":
            log.warning(
                "issuance operation %s stuck at %s: %s", moved.id, moved.step, moved.last_error
            )
        return moved, recorded

    def _move(
        self,
        op: IssuanceOperation,
        outcome: StepOutcome,
        definition: OperationDefinition | None,
        now: datetime,
    ) -> tuple[IssuanceOperation, Severity | None]:
        """The operation after ``outcome`` (and the severity of the alert it raises, if any)."""
        result = without_lease({**op.result, **outcome.result})
        base = replace(op, version=op.version + 1, updated_at=now, result=result)
        settings = self.settings
        if outcome.kind == "done":
            following = outcome.next_step or (definition.after(op.step) if definition else DONE)
            if following == DONE:
                status: OperationStatus = outcome.status or "completed"
                return replace(
                    base,
                    status=status,
                    step=DONE,
                    attempts=0,
                    next_attempt_at=None,
                    last_error=None,
                    completed_at=now,
                ), None
            if definition is None or definition.step(following) is None:
                error = f"step {op.step} named an unknown next step {following!r}"
                return replace(base, status="stuck", next_attempt_at=None, last_error=error), (
                    "critical"
                )
            return replace(
                base,
                status="pending",
                step=following,
                attempts=0,
                next_attempt_at=None,
                last_error=None,
            ), None
        if outcome.kind == "wait":
            wait_s = settings.poll_s if outcome.wait_s is None else max(0.0, outcome.wait_s)
            return replace(
                base, status="waiting", next_attempt_at=now + timedelta(seconds=wait_s)
            ), None
        error = outcome.error or f"step {op.step} answered {outcome.kind}"
        if outcome.kind == "retry":
            attempts = op.attempts + 1
            if attempts >= settings.attempts_max:
                return replace(
                    base, status="stuck", attempts=attempts, next_attempt_at=None, last_error=error
                ), "warning"
            delay = timedelta(seconds=backoff_s(attempts, settings))
            return replace(
                base,
                status="pending",
                attempts=attempts,
                next_attempt_at=now + delay,
                last_error=error,
            ), None
        if outcome.kind == "hold":
            return replace(base, status="held", next_attempt_at=None, last_error=error), None
        return replace(
            base, status="stuck", attempts=op.attempts + 1, next_attempt_at=None, last_error=error
        ), "critical"


def _audit_name(op: IssuanceOperation) -> str:
    if op.status in ("stuck", "held", "completed", "compensated"):
        return f"issuance_{op.status}"
    return "issuance_step"


def record_override(
    uow: UnitOfWork,
    op: IssuanceOperation,
    *,
    kind: StepKind,
    outcome: StepOutcomeKind,
    at: datetime,
    detail: Mapping[str, Any],
    error: str | None = None,
) -> None:
    """Append an operator's (or a compensation's) record to the operation's steps."""
    uow.issuance.add_step(
        StepRecord(
            operation_id=op.id,
            seq=next_seq(uow, op.id),
            step=op.step,
            kind=kind,
            outcome=outcome,
            attempt=op.attempts,
            at=at,
            detail=dict(detail),
            error=error,
        )
    )
