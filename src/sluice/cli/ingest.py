"""``sluice ingest``: the ingestion loop for the treasury party, and moving its cursor."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Annotated

import typer

from sluice.bootstrap import LedgerConnection
from sluice.cli.common import (
    DbOption,
    LedgerOption,
    LedgerUrlOption,
    deployment,
    fail,
    fail_with,
    ingestion_progress,
    kyc_registry,
    note,
    open_database,
    open_ledger,
    stop_signals,
    timestamp_or_none,
)
from sluice.config import Settings
from sluice.domain.errors import InvalidInputError, SluiceError
from sluice.domain.ledger import parse_timestamp
from sluice.ports import UnitOfWorkFactory
from sluice.services.ingestion import (
    Ingestion,
    IngestionProgress,
    IngestionSettings,
    connection_name,
    quarantine_update,
)
from sluice.services.recovery import offset_for_record_time, rewind_cursor
from sluice.services.standby import fenced, run_as_writer, take_lock


def ingest(
    db: DbOption = None,
    party: Annotated[
        str | None, typer.Option("--party", help="Treasury party (default: SLUICE_TREASURY_PARTY).")
    ] = None,
    ledger: LedgerOption = None,
    node: Annotated[str | None, typer.Option("--node", help="Ledger node the party is on.")] = None,
    follow: Annotated[bool, typer.Option("--follow/--once", help="Keep polling.")] = True,
    quarantine: Annotated[
        str | None,
        typer.Option(
            "--quarantine",
            metavar="UPDATE_ID|offset:N",
            help=(
                "Set a malformed update aside (by its update id, or offset:N when it has no "
                "readable id) so ingestion can continue past it, then exit."
            ),
        ),
    ] = None,
    from_offset: Annotated[
        int | None,
        typer.Option(
            "--from-offset",
            min=0,
            help="First move the cursor to this offset (re-read what follows; updates already "
            "ingested are skipped).",
        ),
    ] = None,
    from_record_time: Annotated[
        str | None,
        typer.Option(
            "--from-record-time",
            metavar="RFC3339",
            help="First move the cursor to just before the first update at or after this "
            "record time (after a node restore: offsets changed, record times did not).",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
    ledger_url: LedgerUrlOption = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="When another process ingests for the same party and node, wait as a hot "
            "standby and take over when it stops (default), or exit at once with an error.",
        ),
    ] = True,
) -> None:
    """Run the ingestion loop for the treasury party against the ledger, until stopped.

    One process ingests per (party, node): a second one waits as a hot standby (holding
    nothing but its wait) and takes over from the cursor when the first one stops or dies."""
    settings = Settings.from_environment()
    config = deployment()
    party = party or config.treasury.party
    if not party:
        fail("no treasury party: pass --party or set SLUICE_TREASURY_PARTY (or treasury.party)")
    if from_offset is not None and from_record_time is not None:
        fail("--from-offset and --from-record-time are alternatives: pass one of them")
    rewinding = from_offset is not None or from_record_time is not None
    if quarantine is not None and rewinding:
        fail("--quarantine cannot be combined with --from-offset / --from-record-time")
    since: datetime | None = None
    if from_record_time is not None:
        try:
            since = parse_timestamp(from_record_time, field="--from-record-time")
        except InvalidInputError as exc:
            fail_with(exc)
    database = open_database(db or config.database_url, settings)
    try:
        link = open_ledger(config, database, ledger, ledger_url, node, writable=False)
    except SluiceError as exc:
        database.dispose()
        fail_with(exc)
    connection = connection_name(party, link.node)
    if quarantine is not None:
        added = quarantine_update(
            database.uow, connection, quarantine, requested_by=os.environ.get("USER", "operator")
        )
        note(
            f"update {quarantine} {'set aside' if added else 'was already set aside'}; "
            "ingestion will skip it"
        )
        link.close()
        database.dispose()
        return
    lock = database.writer_lock(connection)
    try:
        with stop_signals() as stopping:
            writing = take_lock(
                lock, party=party, node=link.node, stop=stopping, wait=wait, notify=note
            )
            if not writing:
                note("stopped while waiting as standby; nothing was ingested")
                return
            if rewinding:
                _rewind(link, fenced(database.uow, lock), connection, party, from_offset, since)
            with ingestion_progress(f"ingesting for {party}") as on_batch:

                def work(uow: UnitOfWorkFactory) -> IngestionProgress:
                    return Ingestion(
                        uow,
                        link.client,
                        party,
                        connection=connection,
                        settings=IngestionSettings(batch_size_max=batch_size),
                        on_batch=on_batch,
                        compliance=kyc_registry(reload_on_hangup=follow),
                    ).run(follow=follow, stop=stopping)

                progress = run_as_writer(
                    lock,
                    database.uow,
                    work,
                    party=party,
                    node=link.node,
                    stop=stopping,
                    wait=wait,
                    notify=note,
                )
        if progress is None:
            note("stopped while waiting as standby again; nothing more was ingested")
            return
        note(
            f"ingested {progress.transactions} transactions, {progress.checkpoints} checkpoints"
            f" ({progress.skipped} already ingested, skipped); "
            f"cursor {progress.cursor.as_json() if progress.cursor else None}"
        )
    except SluiceError as exc:
        fail_with(exc)
    finally:
        lock.release()
        link.close()
        database.dispose()


def _rewind(
    link: LedgerConnection,
    uow: UnitOfWorkFactory,
    connection: str,
    party: str,
    from_offset: int | None,
    since: datetime | None,
) -> None:
    """Move the cursor before ingesting (``--from-offset`` / ``--from-record-time``)."""
    client = link.client
    end = client.ledger_end()
    if since is not None:
        offset = offset_for_record_time(client, party, since)
    else:
        assert from_offset is not None
        offset = from_offset
        if offset > end:
            fail(f"offset {offset} is after the ledger end {end} of {party}'s node")
    move = rewind_cursor(
        uow,
        connection,
        party,
        offset=offset,
        record_time=link.record_time_at(party, offset) if offset else None,
    )
    was = move.previous.offset if move.previous is not None else "none"
    note(
        f"cursor moved from offset {was} to {move.current.offset} (record time "
        f"{timestamp_or_none(move.current.record_time) or 'none'}); updates already "
        "ingested will be skipped"
    )


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
