"""The reserves side inside ``sluice serve``: reserve readings every ``[reserves]
reading_interval_s`` and a reconciliation run every ``reconcile_interval_s`` (0: on demand only),
on a loop of their own.

Its own thread, because its reads are slow and must not hold up ingestion or the workers: a
``scantxoutset`` walks the node's whole UTXO set, and the ledger's active contracts are read in
full. Neither part moves value, so the emergency pause (which reconciliation may itself set)
does not stop them. A run that cannot read a source reports it as failed and stores the run; a
part that raises is logged by the loop and tried again at its next turn.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

from sluice.ports.reserves import RECONCILE_SOURCES
from sluice.server.loop import Outcome, Part, ServiceLoop
from sluice.services.reconciliation import STALE_KIND, reconcile
from sluice.services.reserves_settings import ReservesContext

log = structlog.get_logger("sluice.server")

READINGS_PART = "reserve_readings"
RECONCILIATION_PART = "reconciliation"
# The reserves loop wakes at most this often, however short the intervals.
RESERVES_INTERVAL_MIN_S = 0.5


class Every:
    """Whether a part's turn has come: at the first round, then ``interval_s`` after the
    previous turn began."""

    def __init__(self, interval_s: float, monotonic: Callable[[], float] = time.monotonic):
        self.interval_s = interval_s
        self._monotonic = monotonic
        self._last: float | None = None

    def due(self) -> bool:
        now = self._monotonic()
        if self._last is not None and now - self._last < self.interval_s:
            return False
        self._last = now
        return True


def readings_part(ctx: ReservesContext, every: Every) -> Part:
    """One reading per instrument, stored with its alerts (:mod:`sluice.services.reserves`)."""

    def run() -> Outcome | None:
        if not every.due():
            return None
        from sluice.services.reserves import record_readings  # the readings' own module

        readings = record_readings(ctx, connection=ctx.connection)
        return Outcome(counts={"readings": len(readings)})

    return Part(READINGS_PART, run)


def reconciliation_part(ctx: ReservesContext, every: Every) -> Part:
    """A scheduled reconciliation run; a source that could not be read, and a source left
    unchecked too long (its ``reconciliation_stale`` alert raised in this run), are problems to
    log."""

    def run() -> Outcome | None:
        if not every.due():
            return None
        done = reconcile(ctx, trigger="schedule")
        sources = dict(done.report.get("sources", {}))
        problems = tuple(
            f"{name}: {sources[name].get('reason')}"
            for name in RECONCILE_SOURCES
            if sources.get(name, {}).get("state") == "failed"
        ) + tuple(
            f"raised {action.removeprefix('alert:')}: a source left unchecked too long"
            for action in done.actions
            if action.startswith(f"alert:{STALE_KIND}:")
        )
        return Outcome(
            busy=True,
            counts={
                "run": done.id,
                "status": done.status,
                "worst": done.worst,
                "discrepancies": len(done.discrepancies),
            },
            problems=problems,
        )

    return Part(RECONCILIATION_PART, run)


def reserves_loop(
    ctx: ReservesContext,
    *,
    monotonic: Callable[[], float] = time.monotonic,
) -> ServiceLoop | None:
    """The readings and reconciliation parts on their own loop, each at its own interval; None
    when both are off (an interval of 0). Nothing is closed when it stops: the sources belong
    to the rest of the service."""
    settings = ctx.settings
    parts: list[Part] = []
    intervals: list[float] = []
    if settings.reading_interval_s > 0:
        parts.append(readings_part(ctx, Every(settings.reading_interval_s, monotonic)))
        intervals.append(settings.reading_interval_s)
    if settings.reconcile_interval_s > 0:
        parts.append(reconciliation_part(ctx, Every(settings.reconcile_interval_s, monotonic)))
        intervals.append(settings.reconcile_interval_s)
    if not parts:
        log.info("reserves: readings and scheduled reconciliation are off")
        return None
    interval_s = max(min(intervals), RESERVES_INTERVAL_MIN_S)
    log.info(
        "reserves",
        reading_interval_s=settings.reading_interval_s,
        reconcile_interval_s=settings.reconcile_interval_s,
    )
    return ServiceLoop(
        parts,
        interval_s=interval_s,
        # A slow scan must not read as a dead loop: stale only well past the longest interval.
        stale_after_s=max(10 * max(intervals), 60.0),
        monotonic=monotonic,
        name="reserves",
    )
