"""The process's circuit breakers, one per flow, and the guard every guarded call goes through.

Flows (:data:`FLOWS`): ``ledger`` (command submissions to the ledger), ``registry`` (instrument
admins' Registry API calls), ``bitcoin`` (Bitcoin node calls), ``payouts`` (broadcasting
payouts), ``nats`` (the outbox relay's publish rounds) and ``webhooks`` (alert notifications).

``with guard(flow):`` around a call: while the flow's breaker refuses, :class:`BreakerOpenError`
(code 54) is raised *before* the call is made, so the work it was part of waits and is tried
again later — nothing is lost. A normal exit records a success; an exception records a failure
unless it is an input error or another answer that says nothing about the component's health
(:func:`counts_as_failure`), and is re-raised either way.

Each opening raises a critical alert (kind ``breaker_open``) and writes a ``breaker_opened``
event, each closing a ``breaker_closed`` event, in one transaction, when the registry is attached
to a database (:func:`configure_breakers` with ``uow_factory``). An operator's forced states live
in the ``circuit_breakers`` table (:func:`force_breaker`, audited); every process re-reads them
every ``refresh_s`` seconds, so ``sluice breakers force`` reaches a running ``sluice serve``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Literal

import structlog

from sluice.domain.audit import AuditEntry
from sluice.domain.breaker import (
    BreakerSettings,
    BreakerSnapshot,
    CircuitBreaker,
    ForcedState,
)
from sluice.domain.deposits import Alert
from sluice.domain.errors import (
    BitcoinTransactionError,
    ComponentCallFailedError,
    InvalidInputError,
    MalformedUpdateError,
    OperationTimeoutError,
    SluiceError,
)
from sluice.domain.ledger import format_timestamp
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.breakers import ForcedBreaker
from sluice.services.events import emit

log = structlog.get_logger("sluice.breakers")

Flow = Literal["ledger", "registry", "bitcoin", "payouts", "nats", "webhooks"]
FLOWS: tuple[Flow, ...] = ("ledger", "registry", "bitcoin", "payouts", "nats", "webhooks")

FLOW_DESCRIPTIONS: Mapping[str, str] = {
    "ledger": "command submissions to the ledger (withdrawals, returns, issuance)",
    "registry": "calls to the instrument admins' Registry API",
    "bitcoin": "calls to the Bitcoin node",
    "payouts": "broadcasting Bitcoin payouts",
    "nats": "the outbox relay's publish rounds to NATS JetStream",
    "webhooks": "alert notifications to webhooks",
}

FORCE_CHOICES: tuple[str, ...] = ("open", "closed", "auto")
REFRESH_S = 5.0


class BreakerOpenError(SluiceError):
    """The flow's circuit breaker is open: the call was refused before it was made, so the work
    waits and is tried again once the breaker lets calls through. 503."""

    code = 54
    error = "breaker_open"
    http_status = 503

    def __init__(self, flow: str, *, retry_after_s: float | None = None) -> None:
        wait = f"; calls are tried again in {retry_after_s:.0f} s" if retry_after_s else ""
        super().__init__(f"the {flow} circuit breaker is open: the call was not made{wait}")
        self.flow = flow
        self.retry_after_s = retry_after_s


# SluiceErrors that mean the component failed (everything else sluice raises on purpose is an
# answer about the request: bad input, a refusal, a state, and says the component works).
_COMPONENT_FAILURES: tuple[type[SluiceError], ...] = (
    ComponentCallFailedError,
    MalformedUpdateError,
    OperationTimeoutError,
    BitcoinTransactionError,
)


def counts_as_failure(exc: BaseException) -> bool:
    """Does ``exc``, raised by a guarded call, count against the component? Input errors and
    the other client-side answers sluice raises on purpose (:class:`InvalidInputError`, not
    found, compliance refusals, pauses, another breaker's refusal, ...) do not; component
    errors and anything unexpected (connection errors, timeouts, a node's rejection) do."""
    if isinstance(exc, _COMPONENT_FAILURES):
        return True
    if isinstance(exc, (SluiceError, InvalidInputError)):
        return False
    return isinstance(exc, Exception)


def check_flow(flow: str) -> Flow:
    """``flow`` as one of :data:`FLOWS`, else an input error listing them."""
    for known in FLOWS:
        if flow == known:
            return known
    raise InvalidInputError(f"unknown circuit breaker {flow!r}; the flows are {', '.join(FLOWS)}")


class Breakers:
    """One :class:`CircuitBreaker` per flow, and what happens when one changes state."""

    def __init__(
        self,
        settings_by_flow: Mapping[str, BreakerSettings] | None = None,
        *,
        default: BreakerSettings | None = None,
        monotonic: Callable[[], float] | None = None,
        uow_factory: UnitOfWorkFactory | None = None,
        clock: Callable[[], datetime] | None = None,
        refresh_s: float = REFRESH_S,
    ) -> None:
        settings_by_flow = dict(settings_by_flow or {})
        for name in settings_by_flow:
            check_flow(name)
        self._monotonic = monotonic or time.monotonic
        self._uow_factory = uow_factory
        self._clock = clock or (lambda: datetime.now(UTC))
        self._refresh_s = refresh_s
        self._refreshed_at: float | None = None
        self._refresh_lock = threading.Lock()
        self._breakers: dict[str, CircuitBreaker] = {
            flow: CircuitBreaker(
                flow,
                settings_by_flow.get(flow, default or BreakerSettings()),
                self._monotonic,
                listeners=(self._on_transition,),
            )
            for flow in FLOWS
        }
        self._listeners: list[Callable[[str, str, str, str], None]] = []

    # --- reading ---------------------------------------------------------------------------

    def get(self, flow: str) -> CircuitBreaker:
        """The flow's breaker (forced states re-read first when they are due)."""
        breaker = self._breakers[check_flow(flow)]
        self.refresh_forced()
        return breaker

    def states(self) -> dict[str, str]:
        """Each flow's effective state."""
        self.refresh_forced()
        return {flow: breaker.state for flow, breaker in self._breakers.items()}

    def snapshots(self) -> list[BreakerSnapshot]:
        self.refresh_forced()
        return [breaker.snapshot() for breaker in self._breakers.values()]

    def add_listener(self, listener: Callable[[str, str, str, str], None]) -> None:
        """Also report every transition as ``listener(flow, old, new, reason)`` (metrics)."""
        self._listeners.append(listener)

    @property
    def attached(self) -> bool:
        """True when transitions are recorded in a database and forced states read from it."""
        return self._uow_factory is not None

    # --- forced states ---------------------------------------------------------------------

    def apply_forced(
        self, forced: Mapping[str, ForcedState | None], reasons: Mapping[str, str]
    ) -> None:
        """Make each breaker's forced state what ``forced`` says (a flow missing: automatic)."""
        for flow, breaker in self._breakers.items():
            breaker.force(forced.get(flow), reasons.get(flow, ""))

    def refresh_forced(self, *, now: bool = False) -> None:
        """Re-read the forced states from the database when ``refresh_s`` has passed since the
        last read (``now``: at once). A failed read keeps the states in force and is logged."""
        if self._uow_factory is None:
            return
        moment = self._monotonic()
        due = self._refreshed_at is None or moment - self._refreshed_at >= self._refresh_s
        if not (now or due):
            return
        if not self._refresh_lock.acquire(blocking=now):
            return  # another thread is reading them
        try:
            self._refreshed_at = moment
            try:
                with self._uow_factory() as uow:
                    rows = uow.breakers.forced()
            except Exception as exc:
                log.warning("breakers.forced_states_unreadable", error=str(exc))
                return
            self.apply_forced(
                {row.name: row.forced for row in rows},
                {row.name: row.reason or "" for row in rows},
            )
        finally:
            self._refresh_lock.release()

    # --- transitions -----------------------------------------------------------------------

    def _on_transition(self, breaker: CircuitBreaker, old: str, new: str, reason: str) -> None:
        level = log.error if new == "open" else log.warning if new == "half_open" else log.info
        level(
            "breakers.transition",
            flow=breaker.name,
            old=old,
            new=new,
            reason=reason,
            forced=breaker.forced,
        )
        for listener in list(self._listeners):
            try:
                listener(breaker.name, old, new, reason)
            except Exception:
                log.exception("breakers.listener_failed", flow=breaker.name)
        # An operator's forced states are recorded once, by force_breaker, in the transaction
        # that stores them (every process applies them, and would record them again).
        if self._uow_factory is None or new == "half_open" or reason.startswith("forced"):
            return
        snapshot = breaker.snapshot()
        try:
            with self._uow_factory() as uow:
                record_transition(
                    uow,
                    breaker.name,
                    old=old,
                    new=new,
                    reason=reason,
                    forced=None,
                    calls=snapshot.calls,
                    failures=snapshot.failures,
                    at=self._clock(),
                )
                uow.commit()
        except Exception:
            log.exception("breakers.transition_not_recorded", flow=breaker.name, new=new)


def record_transition(
    uow: UnitOfWork,
    flow: str,
    *,
    old: str,
    new: str,
    reason: str,
    forced: ForcedState | None,
    calls: int,
    failures: int,
    at: datetime,
) -> None:
    """In ``uow``: a breaker that opened raises its alert and writes ``breaker_opened``; one
    that closed resolves the alert (``alert_resolved``) and writes ``breaker_closed``.

    One alert per flow while its breaker is not closed (id ``breaker_open:<flow>``; critical,
    or a warning when an operator forced it): opening again before it closed (a failed
    half-open probe) adds an occurrence to it; opening after it closed reopens it (a new
    ``alert_raised``)."""
    payload: dict[str, object] = {
        "flow": flow,
        "old_state": old,
        "new_state": new,
        "reason": reason,
        "forced": forced,
        "calls": calls,
        "failures": failures,
    }
    alert_id = breaker_alert_id(flow)
    if new == "open":
        severity: Literal["critical", "warning"] = "warning" if forced == "open" else "critical"
        alert = Alert(
            id=alert_id,
            severity=severity,
            kind="breaker_open",
            message=(
                f"the {flow} circuit breaker opened ({reason}): "
                f"{FLOW_DESCRIPTIONS[flow]} are paused until it closes"
            ),
            details={key: str(value) for key, value in payload.items()},
        )
        # A new alert is inserted with its ``alert_raised``; an existing row (unresolved, or
        # resolved by an earlier closing) is counted again or reopened in place.
        existing = uow.alerts.get(alert_id, lock=True)
        if existing is not None or not uow.breakers.add_alert(alert, at):
            outcome = uow.alerts.raise_rule_alert(
                alert_id=alert_id,
                rule=f"breaker:{flow}",
                severity=severity,
                message=alert.message,
                details=alert.details,
                at=at,
            )
            if outcome != "repeated":
                emit(
                    uow,
                    "alert_raised",
                    alert_id,
                    {
                        "alert_id": alert_id,
                        "severity": severity,
                        "kind": "breaker_open",
                        "message": alert.message,
                        "update_id": None,
                        "details": dict(alert.details),
                        "reopened": outcome == "reopened",
                    },
                    at=at,
                )
        emit(uow, "breaker_opened", flow, payload, at=at)
    elif new == "closed":
        raised = uow.alerts.get(alert_id, lock=True)
        if raised is not None and uow.alerts.resolve(alert_id, at=at):
            emit(
                uow,
                "alert_resolved",
                alert_id,
                {
                    "alert_id": alert_id,
                    "rule": None,
                    "severity": raised.severity,
                    "kind": raised.kind,
                    "reason": "breaker_closed",
                },
                at=at,
            )
        emit(uow, "breaker_closed", flow, payload, at=at)


def breaker_alert_id(flow: str) -> str:
    """The id of a flow's breaker alert (one per flow, reopened each time it opens again)."""
    return f"breaker_open:{flow}"


# --- the process's registry ----------------------------------------------------------------

_registry = Breakers()
_registry_lock = threading.Lock()


def breakers() -> Breakers:
    """The process's breakers (defaults until :func:`configure_breakers`)."""
    return _registry


def configure_breakers(
    settings_by_flow: Mapping[str, BreakerSettings] | None = None,
    *,
    default: BreakerSettings | None = None,
    monotonic: Callable[[], float] | None = None,
    uow_factory: UnitOfWorkFactory | None = None,
    clock: Callable[[], datetime] | None = None,
    refresh_s: float = REFRESH_S,
) -> Breakers:
    """Replace the process's breakers with fresh ones (closed, empty windows) built from these
    settings; ``uow_factory`` attaches them to the database (alerts, events, forced states)."""
    global _registry
    registry = Breakers(
        settings_by_flow,
        default=default,
        monotonic=monotonic,
        uow_factory=uow_factory,
        clock=clock,
        refresh_s=refresh_s,
    )
    with _registry_lock:
        _registry = registry
    registry.refresh_forced(now=True)
    return registry


@contextmanager
def guard(
    flow: str,
    *,
    registry: Breakers | None = None,
    failure: Callable[[BaseException], bool] = counts_as_failure,
) -> Iterator[CircuitBreaker]:
    """Run the block as one call of ``flow``: refused with :class:`BreakerOpenError` (the block
    does not run) while the breaker is open; a success or a failure recorded otherwise (what
    counts as a failure: ``failure``, by default :func:`counts_as_failure`); the block's
    exception re-raised."""
    breaker = (registry or breakers()).get(flow)
    if not breaker.allow():
        snapshot = breaker.snapshot()
        raise BreakerOpenError(flow, retry_after_s=snapshot.open_remaining_s)
    try:
        yield breaker
    except BaseException as exc:
        if failure(exc):
            breaker.record_failure()
        else:
            breaker.release()
        raise
    breaker.record_success()


def flow_open(flow: str, *, registry: Breakers | None = None) -> bool:
    """True while ``flow``'s breaker refuses calls (takes no half-open probe): a loop skips the
    flow's work meanwhile."""
    return not (registry or breakers()).get(flow).would_allow()


# --- operator ------------------------------------------------------------------------------


def list_forced(uow_factory: UnitOfWorkFactory) -> dict[str, ForcedBreaker]:
    """The forced states stored, by flow."""
    with uow_factory() as uow:
        return {row.name: row for row in uow.breakers.forced()}


def force_breaker(
    uow_factory: UnitOfWorkFactory,
    *,
    flow: str,
    state: str,
    reason: str,
    actor: str,
    at: datetime,
    registry: Breakers | None = None,
) -> ForcedBreaker:
    """Force ``flow``'s breaker ``open`` or ``closed``, or give it back to the automatic state
    (``auto``), in every process (stored; each re-reads within a few seconds, this one at once).
    Audited."""
    name = check_flow(flow)
    if state not in FORCE_CHOICES:
        raise InvalidInputError(f"state must be one of {', '.join(FORCE_CHOICES)}, got {state!r}")
    if not reason.strip():
        raise InvalidInputError("forcing a circuit breaker needs a reason")
    forced: ForcedState | None = None
    if state == "open":
        forced = "open"
    elif state == "closed":
        forced = "closed"
    row = ForcedBreaker(name=name, forced=forced, actor=actor, reason=reason.strip(), updated_at=at)
    with uow_factory() as uow:
        previous = {item.name: item for item in uow.breakers.forced()}.get(name)
        before = previous.forced if previous is not None else None
        uow.breakers.set_forced(row)
        why = f"forced {state} by {actor}: {row.reason}"
        if forced == "open" and before != "open":
            record_transition(
                uow,
                name,
                old=before or "auto",
                new="open",
                reason=why,
                forced=forced,
                calls=0,
                failures=0,
                at=at,
            )
        elif (forced == "closed" and before != "closed") or (forced is None and before == "open"):
            record_transition(
                uow,
                name,
                old=before or "auto",
                new="closed",
                reason=why,
                forced=forced,
                calls=0,
                failures=0,
                at=at,
            )
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=f"breaker_force:{name}:{format_timestamp(at)}",
                    operation="breaker_forced",
                    actor=actor,
                    recorded_at=at,
                    parameters={"flow": name, "state": state, "reason": row.reason},
                    state_changes=[
                        {
                            "breaker": name,
                            "from": before or "auto",
                            "to": state,
                        }
                    ],
                )
            ]
        )
        uow.commit()
    target = registry or breakers()
    target.get(name).force(forced, row.reason or "")
    log.warning("breakers.forced", flow=name, state=state, reason=row.reason, actor=actor)
    return row


def breaker_report(
    uow_factory: UnitOfWorkFactory | None, registry: Breakers | None = None
) -> list[dict[str, object]]:
    """Each flow's breaker as this process sees it (state, window, wait left) with the stored
    forced state (who forced it, why, when), for listings."""
    target = registry or breakers()
    stored = list_forced(uow_factory) if uow_factory is not None else {}
    if uow_factory is not None:
        target.apply_forced(
            {name: row.forced for name, row in stored.items()},
            {name: row.reason or "" for name, row in stored.items()},
        )
    rows: list[dict[str, object]] = []
    for snapshot in target.snapshots():
        row = stored.get(snapshot.name)
        rows.append(
            {
                "flow": snapshot.name,
                "description": FLOW_DESCRIPTIONS[snapshot.name],
                "state": snapshot.state,
                "forced": snapshot.forced,
                "forced_by": row.actor if row is not None and row.forced else None,
                "forced_reason": row.reason if row is not None and row.forced else None,
                "forced_at": (
                    format_timestamp(row.updated_at) if row is not None and row.forced else None
                ),
                "calls": snapshot.calls,
                "failures": snapshot.failures,
                "failure_rate": round(snapshot.failure_rate, 4),
                "open_remaining_s": (
                    round(snapshot.open_remaining_s, 3)
                    if snapshot.open_remaining_s is not None
                    else None
                ),
                "opened_count": snapshot.opened_count,
                "settings": {
                    "window": snapshot.settings.window,
                    "min_calls": snapshot.settings.min_calls,
                    "failure_rate": snapshot.settings.failure_rate,
                    "open_s": snapshot.settings.open_s,
                    "probes": snapshot.settings.probes,
                },
            }
        )
    return rows
