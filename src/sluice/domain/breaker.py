"""A circuit breaker: stop calling a component while most calls to it fail, then try it again.

One breaker guards one flow (ledger submissions, registry calls, ...). It is *closed* (calls go
through) until, over a sliding window of the last ``window`` recorded calls and after at least
``min_calls`` of them, the share that failed reaches ``failure_rate``; it then *opens* (calls are
refused without reaching the component) for ``open_s`` seconds of the injected monotonic clock,
then turns *half-open*: it lets ``probes`` calls through. When all of them succeed it closes with
an empty window; when one fails it opens again for another ``open_s``.

What counts as a failure is the caller's decision (an input error says nothing about the
component's health, so the guard records neither outcome for it and calls :meth:`release`).

An operator can force a breaker open or closed: the forced state overrides the automatic one
until it is cleared (``force(None)``), and clearing starts the automatic state afresh, closed with
an empty window. Calls made while a state is forced are not recorded.

Every change of the effective state is reported to the listeners as ``(breaker, old, new,
reason)``, after the breaker's lock is released (a listener may write to a database or read the
breaker). The breaker is thread-safe. Standard library only.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

BreakerState = Literal["closed", "open", "half_open"]
ForcedState = Literal["open", "closed"]
BREAKER_STATES: tuple[BreakerState, ...] = ("closed", "open", "half_open")
FORCED_STATES: tuple[ForcedState, ...] = ("open", "closed")

# (breaker, old state, new state, reason)
BreakerListener = Callable[["CircuitBreaker", str, str, str], None]


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """When a breaker opens and how it recovers (defaults: DESIGN §11 / the ``[breakers]``
    section)."""

    window: int = 20
    min_calls: int = 10
    failure_rate: float = 0.5
    open_s: float = 30.0
    probes: int = 3

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError("window must be at least 1")
        if not 1 <= self.min_calls <= self.window:
            raise ValueError("min_calls must be between 1 and window")
        if not 0 < self.failure_rate <= 1:
            raise ValueError("failure_rate must be above 0 and at most 1")
        if self.open_s <= 0:
            raise ValueError("open_s must be positive")
        if self.probes < 1:
            raise ValueError("probes must be at least 1")


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A breaker's figures at one moment (for listings, metrics and the API)."""

    name: str
    state: BreakerState
    forced: ForcedState | None
    automatic_state: BreakerState
    calls: int
    failures: int
    failure_rate: float
    open_remaining_s: float | None
    probes_succeeded: int
    opened_count: int
    settings: BreakerSettings


class CircuitBreaker:
    """One flow's breaker (see the module's docstring for the state machine)."""

    def __init__(
        self,
        name: str,
        settings: BreakerSettings | None = None,
        monotonic: Callable[[], float] | None = None,
        *,
        listeners: tuple[BreakerListener, ...] = (),
    ) -> None:
        self.name = name
        self.settings = settings or BreakerSettings()
        self._monotonic = monotonic or time.monotonic
        self._lock = threading.Lock()
        self._listeners: list[BreakerListener] = list(listeners)
        self._state: BreakerState = "closed"
        self._forced: ForcedState | None = None
        self._outcomes: deque[bool] = deque(maxlen=self.settings.window)  # True: failed
        self._opened_at = 0.0
        self._probes_allowed = 0
        self._probes_succeeded = 0
        self._opened_count = 0

    # --- listeners -------------------------------------------------------------------------

    def add_listener(self, listener: BreakerListener) -> None:
        """Report every change of the effective state to ``listener`` as well."""
        with self._lock:
            self._listeners.append(listener)

    def _notify(self, transitions: list[tuple[str, str, str]]) -> None:
        listeners = list(self._listeners)
        for old, new, reason in transitions:
            for listener in listeners:
                listener(self, old, new, reason)

    # --- state -----------------------------------------------------------------------------

    @property
    def forced(self) -> ForcedState | None:
        """The operator's forced state, None when the breaker is automatic."""
        return self._forced

    @property
    def state(self) -> BreakerState:
        """The effective state: the forced one if any, else the automatic one (an open breaker
        whose wait is over reads half-open)."""
        transitions: list[tuple[str, str, str]] = []
        with self._lock:
            self._advance(transitions)
            state = self._effective()
        self._notify(transitions)
        return state

    def _effective(self) -> BreakerState:
        return self._forced if self._forced is not None else self._state

    def _advance(self, transitions: list[tuple[str, str, str]]) -> None:
        """Open → half-open once the wait is over (lock held)."""
        if self._state == "open" and self._monotonic() - self._opened_at >= self.settings.open_s:
            self._set("half_open", "open wait over, probing", transitions)

    def _set(self, new: BreakerState, reason: str, transitions: list[tuple[str, str, str]]) -> None:
        """Change the automatic state (lock held); a change the forced state hides is not
        reported."""
        old = self._state
        if old == new:
            return
        self._state = new
        if new == "open":
            self._opened_at = self._monotonic()
            self._opened_count += 1
        if new == "half_open":
            self._probes_allowed = 0
            self._probes_succeeded = 0
        if new == "closed":
            self._outcomes.clear()
        if self._forced is None:
            transitions.append((old, new, reason))

    # --- calls -----------------------------------------------------------------------------

    def allow(self) -> bool:
        """May a call go through now? In half-open each True is one of the ``probes``: the
        caller must then record its outcome (or :meth:`release` it)."""
        transitions: list[tuple[str, str, str]] = []
        with self._lock:
            if self._forced is not None:
                allowed = self._forced == "closed"
            else:
                self._advance(transitions)
                if self._state == "closed":
                    allowed = True
                elif self._state == "open":
                    allowed = False
                elif self._probes_allowed < self.settings.probes:
                    self._probes_allowed += 1
                    allowed = True
                else:
                    allowed = False
        self._notify(transitions)
        return allowed

    def would_allow(self) -> bool:
        """Would a call go through now? Takes no probe (a loop asks this before starting work
        whose calls then ask :meth:`allow`)."""
        transitions: list[tuple[str, str, str]] = []
        with self._lock:
            if self._forced is not None:
                allowed = self._forced == "closed"
            else:
                self._advance(transitions)
                allowed = self._state == "closed" or (
                    self._state == "half_open" and self._probes_allowed < self.settings.probes
                )
        self._notify(transitions)
        return allowed

    def record_success(self) -> None:
        """A call that went through succeeded."""
        transitions: list[tuple[str, str, str]] = []
        with self._lock:
            if self._forced is None:
                if self._state == "closed":
                    self._outcomes.append(False)
                elif self._state == "half_open":
                    self._probes_succeeded += 1
                    if self._probes_succeeded >= self.settings.probes:
                        self._set("closed", f"{self.settings.probes} probes succeeded", transitions)
                # A late success of a call allowed before the breaker opened changes nothing.
        self._notify(transitions)

    def record_failure(self) -> None:
        """A call that went through failed."""
        transitions: list[tuple[str, str, str]] = []
        with self._lock:
            if self._forced is None:
                if self._state == "closed":
                    self._outcomes.append(True)
                    calls = len(self._outcomes)
                    failures = sum(self._outcomes)
                    if (
                        calls >= self.settings.min_calls
                        and failures / calls >= self.settings.failure_rate
                    ):
                        self._set(
                            "open",
                            f"{failures} of the last {calls} calls failed "
                            f"(threshold {self.settings.failure_rate:.0%})",
                            transitions,
                        )
                elif self._state == "half_open":
                    self._set("open", "a probe failed", transitions)
        self._notify(transitions)

    def release(self) -> None:
        """A call that went through ended without saying anything about the component (an input
        error): in half-open its probe is given back."""
        with self._lock:
            if self._forced is None and self._state == "half_open" and self._probes_allowed:
                self._probes_allowed -= 1

    # --- operator --------------------------------------------------------------------------

    def force(self, state: ForcedState | None, reason: str = "") -> None:
        """Force the breaker ``open`` or ``closed`` until cleared with None. Clearing starts the
        automatic state afresh (closed, empty window)."""
        if state is not None and state not in FORCED_STATES:
            raise ValueError(f"a breaker can be forced open or closed, not {state!r}")
        transitions: list[tuple[str, str, str]] = []
        with self._lock:
            if state == self._forced:
                return
            old = self._effective()
            self._forced = state
            if state is None:
                self._state = "closed"
                self._outcomes.clear()
                self._probes_allowed = 0
                self._probes_succeeded = 0
            new = self._effective()
            if new == "open" and old != "open":
                self._opened_count += 1
            if old != new:
                why = f"forced {state}" if state is not None else "forced state cleared"
                transitions.append((old, new, f"{why}: {reason}" if reason else why))
        self._notify(transitions)

    def snapshot(self) -> BreakerSnapshot:
        transitions: list[tuple[str, str, str]] = []
        with self._lock:
            self._advance(transitions)
            calls = len(self._outcomes)
            failures = sum(self._outcomes)
            remaining = None
            if self._state == "open":
                remaining = max(0.0, self.settings.open_s - (self._monotonic() - self._opened_at))
            snapshot = BreakerSnapshot(
                name=self.name,
                state=self._effective(),
                forced=self._forced,
                automatic_state=self._state,
                calls=calls,
                failures=failures,
                failure_rate=failures / calls if calls else 0.0,
                open_remaining_s=remaining,
                probes_succeeded=self._probes_succeeded,
                opened_count=self._opened_count,
                settings=self.settings,
            )
        self._notify(transitions)
        return snapshot

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.name!r}, state={self._effective()!r})"
