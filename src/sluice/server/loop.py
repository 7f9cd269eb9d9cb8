"""The service loop: the parts of a round (ingestion, the workers, …), run in order on one
background thread, and the ingestion part's standby side of the writer lock.

A part may name its flow (:data:`sluice.services.breakers.FLOWS`): while that flow's circuit
breaker is open the part is skipped (its work waits in the database) and its status says why; a
:class:`~sluice.services.breakers.BreakerOpenError` raised from inside a part is a skip as well,
not a failure.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog

from sluice.domain.errors import InvalidInputError, SystemPausedError
from sluice.domain.ledger import format_timestamp
from sluice.ports import UnitOfWorkFactory, WriterLock
from sluice.services.breakers import BreakerOpenError, flow_open
from sluice.services.controls import current_pause
from sluice.services.deposit_worker import DepositWorker
from sluice.services.ingestion import Ingestion
from sluice.services.standby import IngestionLockLostError, standby_message, took_over_message
from sluice.services.withdrawals import WithdrawalWorker

log = structlog.get_logger("sluice.server")

# Transactions one round ingests at most, so that a long backlog does not starve the workers.
ROUND_TRANSACTIONS_MAX = 10_000


def _wall_clock() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one part did in one round: whether it moved anything (then it is logged), counts for
    the log line, and problems with single items (logged as warnings; the part still ran)."""

    busy: bool = False
    counts: Mapping[str, object] = field(default_factory=dict)
    problems: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Part:
    """One step of a round. A part that moves value is skipped while sluice is paused; a part
    with a ``flow`` (or several) is skipped while one of their circuit breakers is open."""

    name: str
    run: Callable[[], Outcome | None]
    moves_value: bool = False
    # One flow, or several (a part that calls the registry and then the ledger waits while
    # either breaker is open).
    flow: str | tuple[str, ...] | None = None

    @property
    def flows(self) -> tuple[str, ...]:
        if self.flow is None:
            return ()
        return (self.flow,) if isinstance(self.flow, str) else tuple(self.flow)


@dataclass
class PartStatus:
    runs: int = 0
    failures_in_a_row: int = 0
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    skipped: str | None = None  # why the last round skipped it (a pause, an open breaker)


class ServiceLoop:
    """Runs ``parts`` in order, round after round, on one background thread.

    An exception in one part is logged and recorded (:meth:`status`) and the round goes on with
    the next part. Between rounds the loop sleeps ``interval_s`` unless :meth:`wake` or
    :meth:`stop` is called. :meth:`readiness` is true while the thread runs and its last round
    finished less than ``stale_after_s`` ago."""

    def __init__(
        self,
        parts: Sequence[Part],
        *,
        interval_s: float = 1.0,
        paused: Callable[[], str | None] | None = None,
        close: Callable[[], None] | None = None,
        stopping: threading.Event | None = None,
        stale_after_s: float | None = None,
        clock: Callable[[], datetime] = _wall_clock,
        monotonic: Callable[[], float] = time.monotonic,
        name: str = "service",
    ) -> None:
        if interval_s <= 0:
            raise InvalidInputError("the service loop's interval must be positive")
        names = [part.name for part in parts]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"part names must differ: {names}")
        self.parts = tuple(parts)
        self.name = name  # in its log lines and its thread's name, when a process runs several
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s or max(10 * interval_s, 30.0)
        self._paused = paused
        self._close = close
        self._stopping = stopping or threading.Event()
        self._wake = threading.Event()
        self._clock = clock
        self._monotonic = monotonic
        self._status = {part.name: PartStatus() for part in parts}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.rounds = 0
        self._last_round_end: float | None = None
        self._started_at: float | None = None

    # -- running --------------------------------------------------------------------------------

    @property
    def stopping(self) -> threading.Event:
        """Set when the loop is asked to stop: long parts (ingestion) poll it between batches."""
        return self._stopping

    def start(self) -> ServiceLoop:
        if self._thread is not None:
            raise InvalidInputError("the service loop is already started")
        if self._closed:
            raise InvalidInputError("the service loop was stopped; build a new one")
        self._started_at = self._monotonic()
        self._thread = threading.Thread(
            target=self._run, name=f"sluice-{self.name}-loop", daemon=True
        )
        self._thread.start()
        return self

    def _run(self) -> None:
        log.info("service loop started", loop=self.name, interval_s=self.interval_s)
        while not self._stopping.is_set():
            self.run_round()
            self._wake.wait(self.interval_s)
            self._wake.clear()
        log.info("service loop stopped", loop=self.name, rounds=self.rounds)

    def run_round(self) -> None:
        """One round: every part once, in order (callable directly, without the thread)."""
        pause = self._pause_reason()
        for part in self.parts:
            if part.moves_value and pause is not None:
                with self._lock:
                    self._status[part.name].skipped = pause
                continue
            breaker = self._breaker_reason(part)
            if breaker is not None:
                with self._lock:
                    self._status[part.name].skipped = breaker
                continue
            self._run_part(part)
        with self._lock:
            self.rounds += 1
            self._last_round_end = self._monotonic()

    def _pause_reason(self) -> str | None:
        if self._paused is None:
            return None
        try:
            return self._paused()
        except Exception as exc:  # an unreadable switch counts as on: nothing moves blindly
            log.warning("service loop cannot read the pause switch", error=str(exc))
            return f"pause switch unreadable: {exc}"

    def _breaker_reason(self, part: Part) -> str | None:
        """Why ``part`` waits for its flow's breaker now, or None (takes no half-open probe:
        the part's guarded calls do)."""
        for flow in part.flows:
            try:
                refusing = flow_open(flow)
            except Exception as exc:  # a breaker that cannot be read does not stop work
                log.warning("service loop cannot read a breaker", part=part.name, error=str(exc))
                continue
            if refusing:
                return f"{flow} circuit breaker open"
        return None

    def _run_part(self, part: Part) -> None:
        status = self._status[part.name]
        try:
            outcome = part.run()
        except (SystemPausedError, BreakerOpenError) as exc:
            with self._lock:
                status.skipped = str(exc)
            return
        except Exception as exc:
            # One failing part must not stop the others: record it, log it, go on.
            message = f"{type(exc).__name__}: {exc}"
            with self._lock:
                repeated = status.failures_in_a_row > 0 and status.last_error == message
                status.runs += 1
                status.failures_in_a_row += 1
                status.last_error = message
                status.last_error_at = self._clock()
                count = status.failures_in_a_row
            if not repeated:
                log.exception("service loop part failed", part=part.name, failures_in_a_row=count)
            elif count & (count - 1) == 0:
                # The same failure again: a line at 2, 4, 8, … rounds, not a traceback a second.
                log.warning(
                    "service loop part still failing",
                    part=part.name,
                    failures_in_a_row=count,
                    error=message,
                )
            return
        with self._lock:
            if status.failures_in_a_row:
                log.info("service loop part recovered", part=part.name)
            status.runs += 1
            status.failures_in_a_row = 0
            status.last_success_at = self._clock()
            status.skipped = None
        if outcome is None:
            return
        if outcome.busy:
            log.info("service loop part", part=part.name, **dict(outcome.counts))
        for problem in outcome.problems:
            log.warning("service loop problem", part=part.name, problem=problem)

    def wake(self) -> None:
        """Start the next round now instead of after the interval."""
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Let the round in progress finish, end the thread, then close (flush and close the
        ledger, dispose the DB). False when the thread was still busy after ``timeout_s``: then
        nothing is closed under its feet (the process is about to end anyway)."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("service loop still busy; not closing the ledger", timeout_s=timeout_s)
                return False
        if not self._closed:
            self._closed = True
            if self._close is not None:
                self._close()
        return True

    # -- what it reports ------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, PartStatus]:
        with self._lock:
            return {name: PartStatus(**vars(s)) for name, s in self._status.items()}

    def readiness(self) -> tuple[bool, str]:
        """(ready, detail) for the readiness endpoint."""
        if self._thread is None:
            return False, "not started"
        if not self._thread.is_alive():
            return False, "stopped"
        with self._lock:
            end, rounds = self._last_round_end, self.rounds
            failing = [
                f"{name}: {s.last_error}" for name, s in self._status.items() if s.failures_in_a_row
            ]
            skipped = sorted({s.skipped for s in self._status.values() if s.skipped})
        now = self._monotonic()
        if end is None:
            running = now - (self._started_at or now)
            return False, f"first round running for {running:.1f} s"
        age = now - end
        if age > self.stale_after_s:
            return False, f"last round finished {age:.1f} s ago (limit {self.stale_after_s:g} s)"
        detail = f"{rounds} rounds, last finished {age:.1f} s ago"
        if skipped:
            detail += f"; parts skipped ({'; '.join(skipped)})"
        if failing:
            detail += f"; failing: {'; '.join(failing)}"
        return True, detail


class IngestionStandby:
    """The ingestion part's side of the writer lock: each round it tries the lock without
    waiting (the API and the workers keep running meanwhile), logs once that it waits as a
    standby and for whom, and when it took over. A lock lost while writing is let go of; the
    next round tries again."""

    def __init__(self, lock: WriterLock, party: str, node: str) -> None:
        self.lock = lock
        self.party = party
        self.node = node
        self.holding = False
        self._announced: str | None = None

    def try_take(self) -> bool:
        if self.lock.try_acquire():
            if not self.holding:
                if self._announced is not None:
                    log.info(took_over_message(self.party, self.node))
                else:
                    log.info("ingestion lock taken", party=self.party, node=self.node)
            self.holding = True
            self._announced = None
            return True
        self.holding = False
        message = standby_message(self.party, self.node, self.lock.holder())
        if message != self._announced:
            log.info(message)
            self._announced = message
        return False

    def lost(self, error: IngestionLockLostError) -> str:
        self.lock.release()
        self.holding = False
        message = f"{error}; waiting as standby again"
        self._announced = message
        return message


def ingestion_part(
    ingestion: Ingestion, stopping: threading.Event, standby: IngestionStandby | None = None
) -> Part:
    """Ingest up to the ledger end (at most ``ROUND_TRANSACTIONS_MAX``). With ``standby``, only
    while this process holds the writer lock; ``ingestion`` must then commit through units of
    work fenced by that lock (:func:`sluice.services.standby.fenced`)."""

    def run() -> Outcome:
        if standby is not None and not standby.try_take():
            return Outcome()
        try:
            progress = ingestion.run(
                follow=False, stop=stopping.is_set, max_transactions=ROUND_TRANSACTIONS_MAX
            )
        except IngestionLockLostError as exc:
            if standby is None:
                raise
            return Outcome(problems=(standby.lost(exc),))
        return Outcome(
            busy=bool(progress.transactions or progress.quarantined),
            counts={
                "transactions": progress.transactions,
                "checkpoints": progress.checkpoints,
                "skipped": progress.skipped,
                "offset": progress.cursor.offset if progress.cursor else None,
            },
        )

    return Part("ingestion", run)


def withdrawal_part(worker: WithdrawalWorker) -> Part:
    def run() -> Outcome:
        tick = worker.run_once()
        return Outcome(
            busy=tick.busy,
            counts={
                "settled": tick.settled,
                "retried": tick.retried,
                "refunded": tick.refunded,
                "reserved": tick.reserved,
                "submitted": tick.submitted,
                "offers_withdrawn": tick.offers_withdrawn,
                "upkeep": tick.upkeep_created,
                "held": tick.held,
            },
            problems=tuple(tick.errors),
        )

    return Part("withdrawals", run, moves_value=True, flow=("ledger", "registry"))


def deposit_part(worker: DepositWorker) -> Part:
    def run() -> Outcome:
        tick = worker.run_once()
        return Outcome(
            busy=tick.busy,
            counts={
                "accepted": tick.accepted,
                "rejected": tick.rejected,
                "left_alone": tick.left_alone,
            },
            problems=tuple(tick.errors),
        )

    return Part("deposits", run, moves_value=True, flow=("ledger", "registry"))


def pause_reason(uow: UnitOfWorkFactory) -> Callable[[], str | None]:
    """Why value-moving parts must not run now (the emergency pause), or None."""

    def reason() -> str | None:
        state = current_pause(uow)
        return None if state is None else f"{state.mode} since {format_timestamp(state.since)}"

    return reason
