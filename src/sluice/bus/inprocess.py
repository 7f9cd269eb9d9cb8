"""The embedded default's bus: in-process subscribers receive the envelopes the relay publishes.

One bus per process (:func:`bus`), thread-safe. :meth:`InProcessBus.subscribe` registers a
function (for every event, or for one ``type``); the relay's :class:`InProcessPublisher` hands
each event to them in the order published and acks it with the bus's own increasing sequence.
An event id seen before (the relay publishing again after a crash between publish and mark) is
acked as a duplicate with its first sequence and not delivered again, like JetStream's dedup
window. A subscriber that raises is logged; the event still counts as published (the bus took
it; a subscriber's failure is its own).
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import structlog

from sluice.domain.events import Event
from sluice.ports.events import PublishAck, PublishError, Subscriber

log = structlog.get_logger("sluice.events")

STREAM = "in-process"
# Event ids remembered for dedup (the newest ones).
DEDUP_IDS_MAX = 100_000


class InProcessBus:
    """Subscribers and the sequence of what was published, shared by the whole process."""

    def __init__(self, dedup_max: int = DEDUP_IDS_MAX) -> None:
        self._lock = threading.RLock()
        self._subscribers: list[tuple[Subscriber, str | None]] = []
        self._seen: OrderedDict[str, int] = OrderedDict()
        self._dedup_max = dedup_max
        self.seq = 0

    def subscribe(self, fn: Subscriber, type: str | None = None) -> Callable[[], None]:
        """Call ``fn(event)`` for every event published from now on (of ``type`` only when
        given); returns the function that unsubscribes it."""
        entry = (fn, type)
        with self._lock:
            self._subscribers.append(entry)

        def unsubscribe() -> None:
            with self._lock:
                if entry in self._subscribers:
                    self._subscribers.remove(entry)

        return unsubscribe

    def publish(self, event: Event) -> PublishAck:
        """Deliver ``event`` to the subscribers (in the caller's thread) and ack it."""
        with self._lock:
            known = self._seen.get(event.event_id)
            if known is not None:
                return PublishAck(STREAM, known, duplicate=True)
            self.seq += 1
            seq = self.seq
            self._seen[event.event_id] = seq
            while len(self._seen) > self._dedup_max:
                self._seen.popitem(last=False)
            targets = [fn for fn, kind in self._subscribers if kind is None or kind == event.type]
            # Delivered under the lock: every subscriber sees the events in sequence order.
            for fn in targets:
                try:
                    fn(event)
                except Exception:
                    log.exception(
                        "events: an in-process subscriber failed",
                        event_id=event.event_id,
                        type=event.type,
                    )
        return PublishAck(STREAM, seq)


_bus = InProcessBus()


def bus() -> InProcessBus:
    """The process's bus."""
    return _bus


def subscribe(fn: Subscriber, type: str | None = None) -> Callable[[], None]:
    """Subscribe ``fn`` to the process's bus (see :meth:`InProcessBus.subscribe`)."""
    return _bus.subscribe(fn, type)


class InProcessPublisher:
    """The relay's :class:`~sluice.ports.events.EventPublisher` on the in-process bus."""

    def __init__(self, target: InProcessBus | None = None) -> None:
        self.bus = target or _bus

    async def start(self) -> None:
        return None

    async def publish_many(self, events: Sequence[Event]) -> list[PublishAck | PublishError]:
        results: list[PublishAck | PublishError] = []
        for event in events:
            try:
                results.append(self.bus.publish(event))
            except Exception as exc:  # returned, never swallowed
                results.append(PublishError(f"{type(exc).__name__}: {exc}"))
        return results

    async def close(self) -> None:
        return None
