"""``sluice events tail``: follow the event stream, one event per line.

On NATS (``[events] bus = "nats"``): an ordered, ephemeral consumer on ``sluice.>`` of the
stream (nothing is left on the server after it), from new events on, from the stream's start
(``--from-start``) or from its last N messages (``--last N``). On the embedded bus: the outbox's
published rows, polled every ``[events] interval_s`` (a row is shown once the relay marked it).
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
    """Published rows in seq order. The cursor only moves past rows that are published, so a
    row the relay marks later than higher ones (a late commit) is still shown, once."""

    def page(after: int) -> list[OutboxRow]:
        with uow() as work:
            return work.events.find(after_seq=after, limit=PAGE, type=type)

    cursor = 0
    backlog: deque[OutboxRow] = deque(maxlen=last or 1)
    if not from_start:
        # To the end of what is published now, keeping the last N to show.
        while True:
            rows = page(cursor)
            for row in rows:
                if row.published_at is None:
                    break
                cursor = row.seq
                backlog.append(row)
            else:
                if len(rows) == PAGE:
                    continue
            break
        if last is not None:
            for row in backlog:
                if not show(row.event):
                    return
    where = "the start" if from_start else f"the last {last}" if last else "new events"
    note(f"following the outbox's published events from {where}")
    shown: set[int] = set()
    while not stopping():
        rows = page(cursor)
        advancing = True
        for row in rows:
            if row.published_at is None:
                advancing = False
                continue
            if row.seq not in shown:
                if not show(row.event):
                    return
                shown.add(row.seq)
            if advancing:
                cursor = row.seq
                shown.discard(row.seq)
        if len(rows) < PAGE or not advancing:
            time.sleep(config.interval_s)
