"""Gauges computed when ``/metrics`` is scraped: the state of the Integration DB (ingestion's
cursor, the queues, the outbox, the latest reserve readings, the Bitcoin watcher's tip), the
ledger's end and the Bitcoin node's tip where the process has them, and the circuit breakers.

Every database read is bounded and indexed: live queue rows through the status indexes, the
outbox's pending rows through its partial index, one reserve reading per instrument through
``(instrument, taken_at)``, the watcher's tip through the blocks' primary key. No read walks a
history table, so a scrape costs the same after a year as on the first day.

A read that fails does not fail the scrape: ``sluice_up{component}`` says 0 and
``sluice_scrape_errors_total{component}`` counts it; what could be read is still answered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Connection, Engine, func, select, text

from sluice.domain.withdrawals import LIVE_STATUSES, PAYOUT_KINDS
from sluice.monitoring.metrics import REGISTRY, SCRAPE_ERRORS
from sluice.services.breakers import breakers
from sluice.services.relay import current_relay
from sluice.store.bitcoin_tables import btc_blocks, btc_payouts
from sluice.store.events_tables import event_outbox
from sluice.store.issuance_tables import issuance_operations
from sluice.store.rows import optional_time
from sluice.store.tables import ledger_cursors, withdrawals

log = structlog.get_logger("sluice.monitoring")
T = TypeVar("T")

# The statuses of rows still waiting for something, per queue (terminal rows are history).
WITHDRAWAL_STATUSES = tuple(sorted(LIVE_STATUSES))
PAYOUT_STATUSES = ("queued", "waiting_fee", "batched", "broadcast", "mined")
ISSUANCE_STATUSES = ("pending", "waiting", "held", "stuck")
# Issuance operation type → queue name.
ISSUANCE_QUEUES = {"token_withdrawal": "redemptions", "bitcoin_deposit": "bitcoin_deposits"}
BREAKER_STATES = ("closed", "open", "half_open")


class Cached(Generic[T]):
    """``read()`` at most once every ``ttl_s`` seconds; in between the last answer (or the last
    exception, raised again) is given. Thread-safe; a probe and a scrape share one."""

    def __init__(
        self,
        read: Callable[[], T],
        ttl_s: float = 5.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._at: float | None = None
        self._value: T | None = None
        self._error: BaseException | None = None

    def __call__(self) -> T:
        with self._lock:
            now = self._monotonic()
            if self._at is None or now - self._at >= self._ttl_s:
                try:
                    self._value, self._error = self._read(), None
                except Exception as exc:
                    self._value, self._error = None, exc
                self._at = now
            if self._error is not None:
                raise self._error
            return self._value  # type: ignore[return-value]


@dataclass
class StateSources:
    """What the scrape reads: the Integration DB (``engine``), the clock ages are measured on,
    and, when this process has them, ingestion's connection name, the ledger's end (and the
    record time at an offset), and the Bitcoin node's tip height."""

    engine: Engine | None
    clock: Callable[[], datetime]
    connection: str | None = None
    ledger_end: Callable[[], int] | None = None
    record_time_at: Callable[[int], datetime | None] | None = None
    node_tip: Callable[[], int] | None = None


def engine_of(uow: object) -> Engine | None:
    """The engine behind a unit-of-work factory that is a bound ``Database.uow`` (as the API's
    context holds it), or None."""
    owner = getattr(uow, "__self__", None)
    engine = getattr(owner, "engine", None)
    return engine if isinstance(engine, Engine) else None


def _gauge(name: str, doc: str, labels: Sequence[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


def _age(now: datetime, then: datetime | None) -> float:
    return max(0.0, (now - then).total_seconds()) if then is not None else 0.0


class StateCollector(Collector):
    """The scrape-time gauges, for the sources last installed (:func:`install_state`)."""

    def __init__(self) -> None:
        self.sources: StateSources | None = None

    def describe(self) -> list[Metric]:
        return []  # computed at collection; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        sources = self.sources
        up = _gauge(
            "sluice_up",
            "Whether the last read of a component during this scrape succeeded (1) or not (0).",
            ["component"],
        )
        if sources is not None:
            yield from self._database(sources, up)
            yield from self._ledger(sources, up)
            yield from self._bitcoin_node(sources, up)
        yield from self._breakers()
        yield from self._relay()
        yield up

    # -- the Integration DB ---------------------------------------------------------------------

    def _database(self, sources: StateSources, up: GaugeMetricFamily) -> Iterator[Metric]:
        if sources.engine is None:
            return
        try:
            with sources.engine.connect() as connection:
                now = sources.clock()
                families = [
                    *_cursor(connection, sources, now),
                    *_queues(connection, now),
                    *_outbox(connection, now),
                    *_reserves(connection, now),
                    *_watcher(connection, sources),
                ]
        except Exception as exc:
            log.warning("metrics: the database could not be read", error=repr(exc))
            SCRAPE_ERRORS.labels("database").inc()
            up.add_metric(["database"], 0)
            return
        up.add_metric(["database"], 1)
        yield from families

    # -- the ledger and the node -----------------------------------------------------------------

    def _ledger(self, sources: StateSources, up: GaugeMetricFamily) -> Iterator[Metric]:
        yield from _read_one(
            "ledger",
            "the ledger end",
            sources.ledger_end,
            _gauge("sluice_ledger_end_offset", "The ledger's end offset on this node."),
            up,
        )

    def _bitcoin_node(self, sources: StateSources, up: GaugeMetricFamily) -> Iterator[Metric]:
        yield from _read_one(
            "bitcoin_node",
            "the Bitcoin node's tip",
            sources.node_tip,
            _gauge("sluice_bitcoin_node_height", "The Bitcoin node's chain tip height."),
            up,
        )

    # -- circuit breakers ------------------------------------------------------------------------

    def _breakers(self) -> Iterator[Metric]:
        try:
            states: dict[str, str] = breakers().states()
        except Exception as exc:
            log.warning("metrics: the circuit breakers could not be read", error=repr(exc))
            SCRAPE_ERRORS.labels("breakers").inc()
            return
        gauge = _gauge(
            "sluice_circuit_breaker_state",
            "1 for the state each flow's circuit breaker is in, 0 for the others.",
            ["flow", "state"],
        )
        for flow, current in sorted(states.items()):
            for state in BREAKER_STATES:
                gauge.add_metric([flow, state], 1 if current == state else 0)
        yield gauge

    # -- the outbox relay ------------------------------------------------------------------------

    def _relay(self) -> Iterator[Metric]:
        relay = current_relay()
        if relay is None:
            return
        stats = relay.stats
        for name, doc, total in (
            ("sluice_relay_rounds", "Rounds the outbox relay ran.", stats.rounds),
            (
                "sluice_relay_published_events",
                "Events the relay published and marked (acked by the bus).",
                stats.published,
            ),
            (
                "sluice_relay_duplicate_events",
                "Published events the bus already had (a publish repeated after a crash or a "
                "timeout; dropped by the bus's duplicate window).",
                stats.duplicates,
            ),
            (
                "sluice_relay_failed_publishes",
                "Publishes that failed or timed out (the rows are published again).",
                stats.failed,
            ),
        ):
            counter = CounterMetricFamily(name, doc)
            counter.add_metric([], total)
            yield counter


def _cursor(connection: Connection, sources: StateSources, now: datetime) -> Iterator[Metric]:
    """Ingestion's cursor (one row per connection; this process's, or the only one)."""
    rows = connection.execute(
        select(ledger_cursors.c.connection, ledger_cursors.c.offset, ledger_cursors.c.record_time)
    ).all()
    if sources.connection is not None:
        rows = [row for row in rows if row.connection == sources.connection]
    if len(rows) != 1:
        return
    row = rows[0]
    offset = _gauge("sluice_ingestion_cursor_offset", "The last ledger offset ingestion stored.")
    offset.add_metric([], row.offset)
    yield offset
    record_time = optional_time(row.record_time)
    age = _gauge(
        "sluice_ingestion_cursor_age_seconds",
        "Time since the record time of the last update ingestion stored (grows while the "
        "ledger is quiet too: read with the lag).",
    )
    age.add_metric([], _age(now, record_time))
    yield age
    if sources.ledger_end is None:
        return
    try:
        end = sources.ledger_end()
    except Exception:
        return  # reported by the ledger's own reading
    lag = _gauge(
        "sluice_ingestion_lag_offsets", "The ledger's end offset minus ingestion's cursor."
    )
    lag.add_metric([], max(0, end - int(row.offset)))
    yield lag
    if sources.record_time_at is None or record_time is None:
        return
    try:
        end_time = sources.record_time_at(end)
    except Exception:
        end_time = None
    if end_time is None:
        return
    seconds = _gauge(
        "sluice_ingestion_lag_seconds",
        "Record time at the ledger's end minus the record time of ingestion's cursor.",
    )
    seconds.add_metric([], max(0.0, (end_time - record_time).total_seconds()))
    yield seconds


def _queues(connection: Connection, now: datetime) -> Iterator[Metric]:
    depth = _gauge(
        "sluice_queue_depth",
        "Rows waiting in a queue (withdrawals, redemptions, bitcoin_deposits, payouts), by status.",
        ["queue", "status"],
    )
    oldest = _gauge(
        "sluice_queue_oldest_age_seconds",
        "Age of the oldest row waiting in a queue, by status (0 when none).",
        ["queue", "status"],
    )
    found: dict[tuple[str, str], tuple[int, datetime | None]] = {}
    w = withdrawals.c
    for status, count, first in connection.execute(
        select(w.status, func.count(), func.min(w.created_at))
        .where(w.status.in_(WITHDRAWAL_STATUSES), w.kind.in_(sorted(PAYOUT_KINDS)))
        .group_by(w.status)
    ):
        found["withdrawals", status] = (int(count), optional_time(first))
    p = btc_payouts.c
    for status, count, first in connection.execute(
        select(p.status, func.count(), func.min(p.requested_at))
        .where(p.status.in_(PAYOUT_STATUSES))
        .group_by(p.status)
    ):
        found["payouts", status] = (int(count), optional_time(first))
    o = issuance_operations.c
    for kind, status, count, first in connection.execute(
        select(o.type, o.status, func.count(), func.min(o.created_at))
        .where(o.status.in_(ISSUANCE_STATUSES), o.type.in_(sorted(ISSUANCE_QUEUES)))
        .group_by(o.type, o.status)
    ):
        found[ISSUANCE_QUEUES[kind], status] = (int(count), optional_time(first))
    every = [
        *(("withdrawals", status) for status in WITHDRAWAL_STATUSES),
        *(("payouts", status) for status in PAYOUT_STATUSES),
        *(
            (queue, status)
            for queue in sorted(ISSUANCE_QUEUES.values())
            for status in ISSUANCE_STATUSES
        ),
    ]
    for key in every:
        count, first = found.get(key, (0, None))
        depth.add_metric(list(key), count)
        oldest.add_metric(list(key), _age(now, first))
    yield depth
    yield oldest


def _outbox(connection: Connection, now: datetime) -> Iterator[Metric]:
    pending, first = connection.execute(
        select(func.count(), func.min(event_outbox.c.occurred_at)).where(
            event_outbox.c.published_at.is_(None)
        )
    ).one()
    count = _gauge("sluice_outbox_pending_events", "Events in the outbox not yet published.")
    count.add_metric([], int(pending))
    age = _gauge(
        "sluice_outbox_oldest_pending_age_seconds",
        "Age of the oldest event not yet published (0 when none).",
    )
    age.add_metric([], _age(now, optional_time(first)))
    yield count
    yield age


# The instruments with readings, one index probe each (a loose index scan), then each one's
# latest reading through (instrument, taken_at).
_READ_INSTRUMENTS = text(
    """
    WITH RECURSIVE seen(instrument) AS (
        SELECT MIN(instrument) FROM reserve_readings
        UNION ALL
        SELECT (
            SELECT MIN(r.instrument) FROM reserve_readings r
            WHERE r.instrument > seen.instrument
        )
        FROM seen WHERE seen.instrument IS NOT NULL
    )
    SELECT instrument FROM seen WHERE instrument IS NOT NULL
    """
)
_LATEST_READING = text(
    """
    SELECT supply_units, reserves_units, ratio_bps, taken_at FROM reserve_readings
    WHERE instrument = :instrument ORDER BY taken_at DESC, id DESC LIMIT 1
    """
)


def _instrument_labels(keys: Sequence[str]) -> dict[str, str]:
    """Each instrument key's label: its id (``iSTSi``, ``Coin``), or the whole key where two
    admins use the same id."""
    ids = {key: key.partition("@")[0] or key for key in keys}
    counts: dict[str, int] = {}
    for value in ids.values():
        counts[value] = counts.get(value, 0) + 1
    return {key: (value if counts[value] == 1 else key) for key, value in ids.items()}


def _reserves(connection: Connection, now: datetime) -> Iterator[Metric]:
    keys = list(connection.execute(_READ_INSTRUMENTS).scalars())
    labels = _instrument_labels(keys)
    ratio = _gauge(
        "sluice_reserve_ratio",
        "Reserves over supply in the latest reading (1 = fully backed), by instrument.",
        ["instrument"],
    )
    held = _gauge(
        "sluice_reserve_held_units",
        "Value held in reserve in the latest reading, in the instrument's smallest units.",
        ["instrument"],
    )
    supply = _gauge(
        "sluice_reserve_supply_units",
        "Supply (what is owed) in the latest reading, in the instrument's smallest units.",
        ["instrument"],
    )
    age = _gauge(
        "sluice_reserve_reading_age_seconds",
        "Age of the latest reserve reading, by instrument.",
        ["instrument"],
    )
    for key in keys:
        row: Any = connection.execute(_LATEST_READING, {"instrument": key}).one()
        label = [labels[key]]
        if row.ratio_bps is not None:
            ratio.add_metric(label, int(row.ratio_bps) / 10_000)
        held.add_metric(label, float(int(row.reserves_units)))
        supply.add_metric(label, float(int(row.supply_units)))
        age.add_metric(label, _age(now, optional_time(row.taken_at)))
    yield from (ratio, held, supply, age)


def _watcher(connection: Connection, sources: StateSources) -> Iterator[Metric]:
    height = connection.execute(select(func.max(btc_blocks.c.height))).scalar()
    if height is None:
        return
    gauge = _gauge(
        "sluice_bitcoin_watcher_height", "The highest block the Bitcoin watcher processed."
    )
    gauge.add_metric([], int(height))
    yield gauge
    if sources.node_tip is None:
        return
    try:
        tip = sources.node_tip()
    except Exception:
        return  # reported by the node's own reading
    lag = _gauge(
        "sluice_bitcoin_watcher_lag_blocks",
        "The Bitcoin node's tip height minus the watcher's highest processed block.",
    )
    lag.add_metric([], max(0, tip - int(height)))
    yield lag


STATE = StateCollector()
REGISTRY.register(STATE)
# Whether the installed sources came from :func:`ensure_state` (then the next API scraping
# another database replaces them) rather than from :func:`install_state` (kept until replaced).
_automatic = False


def install_state(sources: StateSources | None) -> None:
    """Scrape ``sources`` from now on (the process's one service; tests install theirs); None
    forgets them."""
    global _automatic
    STATE.sources = sources
    _automatic = False


def forget_state(engine: Engine) -> None:
    """A stopped service's sources forgotten (when they are still the ones installed): nothing
    scrapes a database the service has disposed of, and an API started later in the process
    scrapes its own (:func:`ensure_state`)."""
    current = STATE.sources
    if current is not None and current.engine is engine:
        install_state(None)


def ensure_state(uow: object, clock: Callable[[], datetime]) -> None:
    """Called by the scrape: when no sources are installed, or only ones this function chose for
    another database, scrape the database behind ``uow`` (an API without ``sluice serve``'s
    wiring: no ledger, no node)."""
    global _automatic
    current = STATE.sources
    engine = engine_of(uow)
    if current is None or (_automatic and current.engine is not engine):
        STATE.sources = StateSources(engine=engine, clock=clock)
        _automatic = True


def _read_one(
    component: str,
    what: str,
    read: Callable[[], int] | None,
    gauge: GaugeMetricFamily,
    up: GaugeMetricFamily,
) -> Iterator[Metric]:
    """One value read from a component at scrape time (nothing when the source is not there):
    the gauge with it, and ``up`` 1 — or 0 and a scrape error when the read fails."""
    if read is None:
        return
    try:
        value = read()
    except Exception as exc:
        log.warning(f"metrics: {what} could not be read", error=repr(exc))
        SCRAPE_ERRORS.labels(component).inc()
        up.add_metric([component], 0)
        return
    up.add_metric([component], 1)
    gauge.add_metric([], value)
    yield gauge
