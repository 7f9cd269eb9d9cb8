"""``sluice events relay``: publish the outbox's committed events.

To NATS JetStream when ``[events] bus = "nats"`` (the stream created or checked at start). With
the embedded bus it is refused (exit 2): that bus's subscribers live inside ``sluice serve``,
which runs the relay itself, so this process would publish to nobody and mark the rows
published, and ``sluice serve``'s subscribers would never get them. ``--force`` publishes to
this process's in-process bus anyway (the rows are marked published; e.g. to drain an outbox no
one reads). Runs until SIGTERM or Ctrl-C, logging each round that moved something on stderr;
``--once`` publishes what is pending (batch after batch) and prints a JSON summary:

``{"published", "duplicates", "failed", "pending", "rounds", "bus", "stream", "error"}``
(``duplicates``: rows the bus had already, e.g. published before a crash and not marked;
``pending``: rows left unpublished). The exit code is 1 when a publish failed.
"""

from __future__ import annotations

from typing import Annotated

import structlog
import typer

from sluice.cli.common import (
    DbOption,
    deployment,
    fail,
    fail_with,
    log_to_stderr,
    open_database,
    print_json,
    stop_signals,
)
from sluice.cli.events.wiring import events_app
from sluice.domain.errors import SluiceError
from sluice.services.relay import Relay, RelayRound
from sluice.store.events_repository import add_commit_listener, remove_commit_listener

log = structlog.get_logger("sluice.events")

# Rounds ``--once`` runs at most (each up to ``[events] batch`` rows per ordering key).
ONCE_ROUNDS_MAX = 100_000


@events_app.command("relay")
def relay_command(
    once: Annotated[
        bool,
        typer.Option("--once", help="Publish what is pending, print a JSON summary and exit."),
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help=(
                'With [events] bus = "embedded": publish to this process\'s in-process bus '
                "anyway, which no one else receives, and mark the rows published."
            ),
        ),
    ] = False,
    db: DbOption = None,
) -> None:
    """Publish the outbox's committed events to NATS JetStream (the embedded bus: --force)."""
    config = deployment()
    events = config.events
    if events.bus == "embedded" and not force:
        fail(
            'refused with [events] bus = "embedded": the embedded bus\'s subscribers live '
            "inside `sluice serve`, which runs the relay itself; this process would mark the "
            'events published with nobody to receive them. Set [events] bus = "nats" to '
            "publish to NATS JetStream, or pass --force to publish to this process's bus "
            "anyway (the events are marked published and lost to `sluice serve`)."
        )
    from sluice.server.events import relay_for  # the server's modules load the API: only here

    database = open_database(db or config.database_url)
    relay = relay_for(events, database)
    log_to_stderr()
    try:
        if once:
            try:
                relay.start()
            except SluiceError as exc:
                fail_with(exc)
            _once(relay, events.bus, events.stream)
            return
        # Running on: a bus that cannot be reached at start is tried again each round (logged).
        log.info(
            "events relay running",
            bus=events.bus,
            stream=events.stream if events.bus == "nats" else None,
            batch=events.batch,
            interval_s=events.interval_s,
        )

        def progress(done: RelayRound) -> None:
            if done.published or done.failed or done.skipped:
                log.info("events relay round", **done.as_json())

        add_commit_listener(relay.wake)
        try:
            with stop_signals() as stopping:
                relay.run(stop=stopping, interval_s=events.interval_s, on_round=progress)
        finally:
            remove_commit_listener(relay.wake)
        stats = relay.stats
        log.info(
            "events relay stopped",
            rounds=stats.rounds,
            published=stats.published,
            duplicates=stats.duplicates,
            failed=stats.failed,
        )
    finally:
        relay.close()
        database.dispose()


def _once(relay: Relay, bus: str, stream: str) -> None:
    published = duplicates = failed = rounds = 0
    pending = 0
    error: str | None = None
    for _ in range(ONCE_ROUNDS_MAX):
        try:
            done = relay.run_round()
        except SluiceError as exc:
            fail_with(exc)
        except Exception as exc:
            fail(f"the relay's round failed: {type(exc).__name__}: {exc}", code=1)
        rounds += 1
        published += done.published
        duplicates += done.duplicates
        failed += done.failed
        pending = done.pending
        error = error or done.error
        if not done.more or done.failed or done.breaker_open:
            break
    print_json(
        {
            "published": published,
            "duplicates": duplicates,
            "failed": failed,
            "pending": pending,
            "rounds": rounds,
            "bus": bus,
            "stream": stream if bus == "nats" else None,
            "error": error,
        }
    )
    if failed or error:
        raise typer.Exit(1)
