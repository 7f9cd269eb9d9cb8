"""The outbox (events written in the caller's transaction), what the relay publishes to, and
what receives events in process."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sluice.domain.events import Event


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """An event as the outbox keeps it. ``seq`` orders rows of one ordering key as they were
    inserted; it is never a cursor (ids are taken before commit, so a lower one may commit
    later): unpublished rows are found by ``published_at IS NULL``."""

    seq: int
    event: Event
    ordering_key: str
    attempts: int
    published_at: datetime | None = None
    stream_seq: int | None = None
    last_error: str | None = None
    # The envelope as published (``event.encode()``'s bytes), when the outbox made it already.
    data: bytes | None = None


@dataclass(frozen=True, slots=True)
class OutboxStats:
    pending: int
    oldest_pending_at: datetime | None
    published: int


class EventOutbox(Protocol):
    """The transactional outbox, in the caller's transaction."""

    def add(self, events: Sequence[Event]) -> None:
        """Insert ``events`` (unpublished); they commit or roll back with the caller."""
        ...

    def claim(
        self,
        *,
        ordering_key: str | None = None,
        limit: int = 500,
        lock: bool = False,
        exclude: Collection[int] = (),
    ) -> list[OutboxRow]:
        """Unpublished rows (of ``ordering_key`` when given) in ``seq`` order, leaving out the
        rows whose ``seq`` is in ``exclude`` (a batch still in flight). With ``lock`` on
        PostgreSQL, ``FOR UPDATE SKIP LOCKED``: rows another relay's transaction holds are
        skipped, and these stay held until the caller's transaction ends."""
        ...

    def mark_published(self, published: Sequence[tuple[str, int]], at: datetime) -> int:
        """Mark rows published, each ``(event_id, stream_seq)``; rows already marked are left
        as they are. Returns how many were marked now."""
        ...

    def record_failure(self, event_ids: Sequence[str], error: str) -> None:
        """Count a failed publish attempt of each row and keep the error's text."""
        ...

    def ordering_keys(self) -> list[str]:
        """The ordering keys that have unpublished rows."""
        ...

    def pending_count(self) -> int:
        """How many rows wait (cheaper than :meth:`stats`)."""
        ...

    def stats(self) -> OutboxStats:
        """How many rows wait, since when, and how many were published."""
        ...

    def find(
        self,
        *,
        after_seq: int = 0,
        limit: int = 100,
        type: str | None = None,
        published: bool | None = None,
    ) -> list[OutboxRow]:
        """Rows after ``after_seq`` in seq order (of ``type``; published only / unpublished only
        when ``published`` is given): for reading the outbox, never to pick what to publish."""
        ...

    def get(self, event_id: str) -> OutboxRow | None: ...


@dataclass(frozen=True, slots=True)
class PublishAck:
    """The bus took an event: its stream and sequence there; ``duplicate`` when the bus had
    it already (the dedup id was seen within the stream's duplicate window)."""

    stream: str
    seq: int
    duplicate: bool = False


class PublishError(Exception):
    """The bus refused or did not answer a publish; ``outcome_unknown`` when it may have stored
    it anyway (a timeout): publish again with the same event id."""

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class EventPublisher(Protocol):
    """Where the relay publishes: NATS JetStream, or the in-process bus."""

    async def start(self) -> None:
        """Connect, and create or check the stream."""
        ...

    async def publish_many(self, events: Sequence[Event]) -> list[PublishAck | PublishError]:
        """Publish ``events`` in order, with bounded acks in flight; one result per event, in
        the same order (an error is returned, never swallowed or raised part-way)."""
        ...

    async def close(self) -> None: ...


Subscriber = Callable[[Event], None]
