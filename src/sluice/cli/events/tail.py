"""``sluice events tail``: follow the event stream, one event per line.

On NATS (``[events] bus = "nats"``): an ordered, ephemeral consumer on ``sluice.>`` of the
stream (nothing is left on the server after it), from new events on, from the stream's start
(``--from-start``) or from its last N messages (``--last N``). On the embedded bus: the outbox's
published rows, polled every ``[events] interval_s`` (a row is shown once the relay marked it; one
committing after higher ones, on PostgreSQL, is still shown, once).
``--type`` keeps one event type; ``--json`` prints each envelope as one JSON line (the bytes
published), else a line for people. ``--count N`` exits after N events; SIGTERM or Ctrl-C ends
it.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Annotated

import typer
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import ConsumerConfig, DeliverPolicy

from sluice.bus.nats import connect, stream_subjects
from sluice.cli.common import (
    DbOption,
    deployment,
    fail,
    fail_with,
    log_to_stderr,
    note,
    open_database,
    stop_signals,
)
from sluice.cli.events.wiring import events_app
from sluice.config.events import EventsConfig
from sluice.domain.errors import InvalidInputError, SluiceError
from sluice.domain.events import EVENT_TYPES, Event, decode_event
from sluice.ports import UnitOfWorkFactory
from sluice.ports.events import OutboxRow

PAGE = 1000
# Pages read past the cursor in one poll before showing what they hold.
PAGES_PER_POLL = 10
NEXT_WAIT_S = 0.5


@events_app.command("tail")
def tail_command(
    type: Annotated[
        str | None, typer.Option("--type", help="Only events of this type.", show_default=False)
    ] = None,
    from_start: Annotated[
        bool, typer.Option("--from-start", help="From the stream's first event.")
    ] = False,
    last: Annotated[
        int | None,
        typer.Option("--last", min=1, help="From the stream's last N events (then new ones)."),
    ] = None,
    count: Annotated[
        int | None, typer.Option("--count", min=1, help="Exit after this many events.")
    ] = None,
    json_lines: Annotated[
        bool, typer.Option("--json", help="Print each envelope as one JSON line.")
    ] = False,
    db: DbOption = None,
) -> None:
    """Follow the event stream (NATS JetStream, or the embedded outbox's published rows)."""
    if from_start and last is not None:
        fail("--from-start and --last are exclusive")
    if type is not None and type not in EVENT_TYPES:
        fail(f"unknown event type {type!r}; known: {', '.join(sorted(EVENT_TYPES))}")
    config = deployment()
    log_to_stderr()  # stdout is for the events
    shown = 0

    def show(event: Event) -> bool:
        """Print ``event``; False once ``--count`` is reached."""
        nonlocal shown
        if type is not None and event.type != type:
            return True
        line = event.encode().decode() if json_lines else _human(event)
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
        shown += 1
        return count is None or shown < count

    try:
        with stop_signals() as stopping:
            if config.events.bus == "nats":
                asyncio.run(_tail_nats(config.events, from_start, last, show, stopping))
            else:
                database = open_database(db or config.database_url)
                try:
                    _tail_outbox(
                        database.uow, config.events, type, from_start, last, show, stopping
                    )
                finally:
                    database.dispose()
    except SluiceError as exc:
        fail_with(exc)
    except BrokenPipeError:
        pass


def _human(event: Event) -> str:
    return (
        f"{event.occurred_at.isoformat()} {event.type} {event.aggregate_type}/"
        f"{event.aggregate_id} {event.event_id} {event.encode().decode()}"
    )


async def _tail_nats(
    config: EventsConfig,
    from_start: bool,
    last: int | None,
    show: Callable[[Event], bool],
    stopping: Callable[[], bool],
) -> None:
    nc = await connect(config.nats_url, name="sluice-events-tail")
    try:
        js = nc.jetstream()
        try:
            info = await js.stream_info(config.stream)
        except Exception as exc:
            raise SluiceError(f"cannot read JetStream stream {config.stream}: {exc}") from exc
        if from_start:
            consumer = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        elif last is not None:
            start = max(int(info.state.first_seq or 1), int(info.state.last_seq) - last + 1, 1)
            consumer = ConsumerConfig(
                deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start
            )
        else:
            consumer = ConsumerConfig(deliver_policy=DeliverPolicy.NEW)
        subscription = await js.subscribe(
            stream_subjects(config.subject_prefix)[0],
            stream=config.stream,
            ordered_consumer=True,
            config=consumer,
        )
        where = "its start" if from_start else f"its last {last}" if last else "new events"
        note(f"following stream {config.stream} ({config.nats_url}) from {where}")
        while not stopping():
            try:
                message = await subscription.next_msg(timeout=NEXT_WAIT_S)
            except (TimeoutError, NatsTimeoutError):
                continue
            try:
                event = decode_event(message.data)
            except InvalidInputError as exc:
                sys.stderr.write(f"skipped a message on {message.subject}: {exc}\n")
                continue
            if not show(event):
                break
        await subscription.unsubscribe()
    finally:
        await nc.close()


def _tail_outbox(
    uow: UnitOfWorkFactory,
    config: EventsConfig,
    type: str | None,
    from_start: bool,
    last: int | None,
    show: Callable[[Event], bool],
    stopping: Callable[[], bool],
) -> None:
    """Published rows, polled every ``interval_s`` (see :class:`OutboxFollower`)."""
    follower = OutboxFollower(uow, type)
    if not from_start:
        backlog = follower.skip_to_end(keep=last or 0)
        for row in backlog:
            if not show(row.event):
                return
    where = "the start" if from_start else f"the last {last}" if last else "new events"
    note(f"following the outbox's published events from {where}")
    while not stopping():
        rows, caught_up = follower.poll()
        for row in rows:
            if not show(row.event):
                return
        if caught_up:
            time.sleep(config.interval_s)


# A seq missing below the cursor (a row not committed yet, or a rolled back insert) is looked
# for again for this long and this many seqs back; a row committing later than that is missed.
GAP_WAIT_S = 120.0
GAP_SEQS = 5_000


class OutboxFollower:
    """Follows the outbox's published rows, each shown once, although neither seq order nor
    publish order is commit order: on PostgreSQL a transaction holding seq 10 can commit after
    one holding seq 11 (seq 10 is invisible while 11 is read), and the relay marks a row later
    than higher ones of another ordering key. (The relay's ``stream_seq`` on the in-process bus
    restarts with each process, so it cannot order rows across relays either.)

    So the cursor is the highest seq read, and every seq below it not shown yet waits in
    ``waiting``: a committed row not published yet (until it is; the cursor goes no further
    than :data:`GAP_SEQS` past it), or a missing seq (until it shows up, for at most
    :data:`GAP_WAIT_S` and while within :data:`GAP_SEQS` of the cursor). Each poll reads again
    from the lowest waiting seq, so the re-read costs nothing while nothing waits. Rows are read
    unfiltered (a missing seq must be told from a row of another type) and filtered here."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        type: str | None = None,
        *,
        gap_wait_s: float = GAP_WAIT_S,
        gap_seqs: int = GAP_SEQS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._uow = uow
        self._type = type
        self._gap_wait_s = gap_wait_s
        self._gap_seqs = gap_seqs
        self._monotonic = monotonic
        self.cursor = 0
        # seq -> when it was first missed (None: a committed row waiting for the relay).
        self.waiting: dict[int, float | None] = {}

    def _page(self, after: int) -> list[OutboxRow]:
        with self._uow() as work:
            return work.events.find(after_seq=after, limit=PAGE)

    def _wanted(self, row: OutboxRow) -> bool:
        return self._type is None or row.event.type == self._type

    def skip_to_end(self, keep: int = 0) -> list[OutboxRow]:
        """Move to the end of what is there now; rows published now are not shown (but the
        last ``keep`` of them, returned), rows published later are."""
        backlog: deque[OutboxRow] = deque(maxlen=keep or 1)
        while True:
            rows, caught_up = self.poll()
            if keep:
                backlog.extend(rows)
            if caught_up:
                break
        return list(backlog) if keep else []

    def poll(self) -> tuple[list[OutboxRow], bool]:
        """Rows to show now (published, of the type, not shown before), in seq order, and
        whether the end was reached (False: call again at once)."""
        now = self._monotonic()
        self._forget(now)
        out: list[OutboxRow] = []
        after = min(self.waiting) - 1 if self.waiting else self.cursor
        reads = 0
        # The lowest committed row waiting for the relay: the cursor stays within
        # ``gap_seqs`` of it, so memory and the re-read stay bounded and nothing is dropped.
        held = min((seq for seq, since in self.waiting.items() if since is None), default=None)
        while True:
            rows = self._page(after)
            reads += 1
            for row in rows:
                if row.seq <= self.cursor:
                    if row.seq not in self.waiting:
                        continue  # shown (or skipped) already
                    if row.published_at is None:
                        self.waiting[row.seq] = None
                        continue
                    del self.waiting[row.seq]
                else:
                    if held is not None and row.seq - held >= self._gap_seqs:
                        return out, True  # read no further until the relay catches up
                    for missing in range(max(self.cursor + 1, row.seq - self._gap_seqs), row.seq):
                        self.waiting[missing] = now
                    self.cursor = row.seq
                    if row.published_at is None:
                        self.waiting[row.seq] = None
                        held = row.seq if held is None else held
                        continue
                if self._wanted(row):
                    out.append(row)
            if len(rows) < PAGE:
                return out, True
            after = rows[-1].seq
            if after >= self.cursor and reads >= PAGES_PER_POLL:
                return out, False

    def _forget(self, now: float) -> None:
        """Drop missing seqs waited for long enough (rolled back, or too late to show)."""
        lowest = self.cursor - self._gap_seqs
        for seq, since in list(self.waiting.items()):
            if since is not None and (seq <= lowest or now - since >= self._gap_wait_s):
                del self.waiting[seq]
