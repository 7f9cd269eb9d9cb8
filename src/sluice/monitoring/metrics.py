"""sluice's Prometheus metrics: the application's own registry and the metrics recorded as things
happen (HTTP requests, committed events, failed authentications, the service loops' rounds).

Gauges that describe the state of the Integration DB (queues, the outbox, ingestion lag,
reserves, the chain tip, circuit breakers) are computed when scraped, by
:mod:`sluice.monitoring.collectors`, and registered on the same :data:`REGISTRY`.

Conventions (Prometheus'): every name starts with ``sluice_``; durations are histograms in
seconds; counters end in ``_total``; labels are bounded sets (route templates, methods, status
classes, event types, loop and part names, instruments, flows) and never ids.

The registry is the application's, not prometheus_client's global default, so one process (a
test) can build several applications; the counters are the process's.
"""

from __future__ import annotations

import platform
import threading
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from prometheus_client import CollectorRegistry, Counter, Histogram, Info, disable_created_metrics

from sluice import __version__
from sluice.domain.errors import SystemPausedError
from sluice.domain.events import EVENT_TYPES, Event
from sluice.services.breakers import BreakerOpenError
from sluice.store.events_repository import add_commit_listener

T = TypeVar("T")

# No ``_created`` series beside each counter and histogram: Prometheus does not need them and
# they double the scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]
REGISTRY = CollectorRegistry()

BUILD_INFO = Info(
    "sluice_build", "The running sluice: its version and Python's.", registry=REGISTRY
)
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

# Latency buckets for an API answering in milliseconds, with room for slow database reads.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

HTTP_REQUESTS = Counter(
    "sluice_http_requests",
    "HTTP requests answered, by route template ('unmatched' for unknown paths), method and "
    "status class (2xx, 4xx, ...).",
    ["route", "method", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "sluice_http_request_duration_seconds",
    "Time from a request's arrival to the end of its answer, by route template and method.",
    ["route", "method"],
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)

OPERATIONS = Counter(
    "sluice_operations",
    "State changes committed, by event type (one per event written to the outbox).",
    ["type"],
    registry=REGISTRY,
)
# The event types that report a failed operation.
FAILURE_TYPES: frozenset[str] = frozenset(
    {"withdrawal_failed", "btc_payout_failed", "redemption_failed", "issuance_operation_stuck"}
)
OPERATION_FAILURES = Counter(
    "sluice_operation_failures",
    "Operations that failed, by the event type that reported the failure.",
    ["type"],
    registry=REGISTRY,
)

AUTH_REASONS = ("invalid", "missing")
AUTH_FAILURES = Counter(
    "sluice_auth_failures",
    "Requests refused with 401: 'invalid' credentials (a key or token that does not verify, "
    "a malformed Authorization header) or 'missing' ones on an endpoint that needs them.",
    ["reason"],
    registry=REGISTRY,
)

LOOP_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
LOOP_PART_DURATION = Histogram(
    "sluice_loop_part_duration_seconds",
    "Time one part of a service loop took in one round, by loop and part.",
    ["loop", "part"],
    buckets=LOOP_BUCKETS,
    registry=REGISTRY,
)
LOOP_PART_FAILURES = Counter(
    "sluice_loop_part_failures",
    "Rounds in which a part of a service loop raised, by loop and part.",
    ["loop", "part"],
    registry=REGISTRY,
)

SCRAPE_ERRORS = Counter(
    "sluice_scrape_errors",
    "Reads that failed while /metrics was collected, by component (database, ledger, "
    "bitcoin_node, breakers).",
    ["component"],
    registry=REGISTRY,
)

for _type in EVENT_TYPES:
    OPERATIONS.labels(_type)
for _type in FAILURE_TYPES:
    OPERATION_FAILURES.labels(_type)
for _reason in AUTH_REASONS:
    AUTH_FAILURES.labels(_reason)
for _component in ("database", "ledger", "bitcoin_node", "breakers"):
    SCRAPE_ERRORS.labels(_component)


def status_class(status: int) -> str:
    """``2xx``, ``4xx``, ...; ``0xx`` when no answer was started (the application raised)."""
    return f"{status // 100}xx"


def record_committed(events: Sequence[Event]) -> None:
    """A commit listener: counts each committed event by type, and the failures among them."""
    for event in events:
        OPERATIONS.labels(event.type).inc()
        if event.type in FAILURE_TYPES:
            OPERATION_FAILURES.labels(event.type).inc()


def auth_failed(reason: str) -> None:
    """Count one request refused for its credentials (``reason`` one of :data:`AUTH_REASONS`)."""
    AUTH_FAILURES.labels(reason).inc()


_listening = threading.Lock()
_listened = False


def listen() -> None:
    """Count committed events from now on (idempotent)."""
    global _listened
    with _listening:
        if not _listened:
            add_commit_listener(record_committed)
            _listened = True


# What a part raises to say it was skipped (the service loop records a skip, not a failure).
_SKIPS: tuple[type[BaseException], ...] = (SystemPausedError, BreakerOpenError)


def timed_part(loop: str, part: str, run: Callable[[], T]) -> Callable[[], T]:
    """``run`` observed: its duration in :data:`LOOP_PART_DURATION` and its exceptions (counted,
    then re-raised for the loop to record) in :data:`LOOP_PART_FAILURES` — except a pause or a
    circuit breaker's refusal, which the loop treats as a skip, not a failure."""
    duration = LOOP_PART_DURATION.labels(loop, part)
    failures = LOOP_PART_FAILURES.labels(loop, part)

    def observed() -> T:
        started = time.perf_counter()
        try:
            return run()
        except _SKIPS:
            raise
        except BaseException:
            failures.inc()
            raise
        finally:
            duration.observe(time.perf_counter() - started)

    observed.timed = True  # type: ignore[attr-defined]
    return observed


def is_timed(run: Callable[[], object]) -> bool:
    """Whether ``run`` came from :func:`timed_part` (so it is never timed twice)."""
    return bool(getattr(run, "timed", False))
