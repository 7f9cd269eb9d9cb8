"""``sluice reserves`` (the figures now), ``sluice reserves history`` (the readings kept) and
``sluice reserves record`` (one reading per instrument, stored, with the threshold alerts).

Everything is read from the Integration DB alone (no ledger, no Bitcoin node): iSTSi's supply
and custody as the router and the deposit watcher recorded them, and every token's books as
ingestion booked them (see :mod:`sluice.services.reserves` for what each figure means). The
independent reads are ``sluice reserves reconcile``'s.

Which instrument is iSTSi: ``[issuance] instrument_id`` of the issuer party named by the contract
addresses in force, else by ``[issuance] issuer_party``, else the one onboarded instrument with
that id (issuance onboards it when it starts). Building the issuance context would open the
issuer's ledger and create the instrument there, which a read must not do. Ingestion's cursor
(the token figures' read point) is the treasury's (``[treasury] party``, else the one the
embedded world recorded) on ``[ledger] node``.

JSON (a contract; units are integers as decimal strings, amounts decimal strings):

* ``sluice reserves --json``: ``{"taken_at", "thresholds": {"warning_bps", "critical_bps",
  "full_bps"}, "instruments": [READING…]}``, iSTSi first, then tokens by key.
* ``sluice reserves history --json``: ``[READING…]``, newest first.
* ``sluice reserves record --json``: ``{"readings": [READING…], "alerts": [{"id", "severity",
  "message"}…]}`` (the alerts this round raised).

READING: ``{"id"`` (the stored reading's, null when not stored), ``"instrument"`` (its key,
``<id>@<admin>``), ``"kind"`` (``istsi`` | ``token``), ``"decimals"`` (8 for iSTSi, 10 for tokens),
``"supply_units"``, ``"supply"`` (what is owed: iSTSi's supply; a token's liabilities),
``"reserves_units"``, ``"reserves"`` (what backs it: iSTSi's custody net of pending payouts; a
token's treasury holdings), ``"ratio_bps"`` (reserves × 10000 ÷ supply rounded down; null when
nothing is owed), ``"level"`` (``ok`` | ``warning`` | ``critical`` against the thresholds),
``"read_at": {"supply": POINT, "reserves": POINT}``, ``"figures"`` ({name: amount}: iSTSi's
``supply``, ``custody``, ``pending_redemptions``, ``pending_payouts``, ``backing``; for both kinds
the journal's ``customers``, ``suspense``, ``compliance_hold``, ``in_flight``, ``fees``, ``other``
and ``treasury``), ``"taken_at"``}.

POINT: ``{"source": "chain", "height", "block_hash"}`` (the watcher's block; both null before its
first), ``{"source": "ledger", "offset"}`` (ingestion's cursor; null before its first) or
``{"source": "db"}`` (the DB's own records).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Annotated

import typer
from rich.table import Table

from sluice import bootstrap
from sluice.cli.common import (
    DbOption,
    JsonOption,
    deployment,
    fail_with,
    note,
    open_database,
    print_json,
    print_table,
    utc_now,
)
from sluice.cli.reserves.wiring import reserves_app
from sluice.config import DeploymentConfig
from sluice.domain.errors import SluiceError
from sluice.domain.reserves import format_units
from sluice.ports.reserves import ReadPoint, ReserveReading
from sluice.services.ingestion import connection_name
from sluice.services.reserves import (
    HISTORY_LIMIT_MAX,
    decimals_of,
    find_istsi,
    percent,
    ratio_level,
    reading_history,
    reading_json,
    record,
    report_json,
    reserve_report,
    resolve_instrument,
)
from sluice.services.reserves_settings import ReservesContext, ReservesSettings


@dataclass(frozen=True, slots=True)
class Session:
    ctx: ReservesContext
    connection: str  # ingestion's, whose cursor the token figures are read at


@contextmanager
def reserves_session(db: str | None) -> Iterator[Session]:
    """The reserves context on the Integration DB alone, for one command; a sluice error ends
    the command (exit 2)."""
    config = deployment()
    database = open_database(db or config.database_url)
    try:
        try:
            yield _session(config, database)
        except SluiceError as exc:
            fail_with(exc)
    finally:
        database.dispose()


def _session(config: DeploymentConfig, database: bootstrap.Database) -> Session:
    with database.uow() as uow:
        from sluice.server.world import TREASURY_KEY  # the server's modules load the API

        treasury = config.treasury.party or uow.withdrawals.control(TREASURY_KEY)
        istsi = find_istsi(
            uow,
            utc_now(),
            instrument_id=config.issuance.instrument_id,
            issuer_party=config.issuance.issuer_party,
        )
    if not treasury:
        note("no treasury party known ([treasury] party): token figures show no ledger offset")
    ctx = bootstrap.reserves_context(config, database, treasury=treasury or "")
    return Session(replace(ctx, istsi=istsi), connection_name(treasury or "", config.ledger.node))


# --- commands ------------------------------------------------------------------------------------


@reserves_app.callback(invoke_without_command=True)
def reserves(context: typer.Context, db: DbOption = None, as_json: JsonOption = False) -> None:
    """The reserve ratio, supply and reserves per instrument, with the block (height and hash)
    or ledger offset each side was read at. With a subcommand, that subcommand."""
    if context.invoked_subcommand is not None:
        return
    with reserves_session(db) as session:
        report = reserve_report(session.ctx, connection=session.connection)
    settings = session.ctx.settings
    if as_json:
        print_json(report_json(report, settings))
        return
    if not report.readings:
        typer.echo("no instruments: no iSTSi issued and nothing in the journal")
        return
    title = f"reserves at {report.taken_at:%Y-%m-%d %H:%M:%S} UTC"
    print_readings(report.readings, settings, title=title)


@reserves_app.command("history")
def history(
    instrument: Annotated[
        str | None,
        typer.Option("--instrument", help="Its key (<id>@<admin>), or an id only one has."),
    ] = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, max=HISTORY_LIMIT_MAX, help="Readings to show.")
    ] = 20,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The readings kept (by `sluice reserves record` and `sluice serve`), newest first."""
    with reserves_session(db) as session:
        uow = session.ctx.uow
        key = resolve_instrument(uow, instrument) if instrument is not None else None
        found = reading_history(uow, key, limit=limit)
    settings = session.ctx.settings
    if as_json:
        print_json([reading_json(r, settings) for r in found])
        return
    if not found:
        typer.echo("no readings kept yet (`sluice reserves record` takes one)")
        return
    print_readings(found, settings, title=f"{len(found)} reading(s), newest first", ids=True)


@reserves_app.command("record")
def record_once(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Take one reading per instrument, keep it in the history and raise an alert for each
    ratio that crossed a threshold since the instrument's last reading (for cron; `sluice
    serve` does this on its own schedule)."""
    with reserves_session(db) as session:
        done = record(session.ctx, connection=session.connection)
    settings = session.ctx.settings
    if as_json:
        print_json(
            {
                "readings": [reading_json(r, settings) for r in done.readings],
                "alerts": [
                    {"id": a.id, "severity": a.severity, "message": a.message} for a in done.alerts
                ],
            }
        )
        return
    if done.readings:
        print_readings(done.readings, settings, title="recorded", ids=True)
    else:
        typer.echo("no instruments: nothing recorded")
    for alert in done.alerts:
        typer.echo(f"alert ({alert.severity}): {alert.message}")


# --- output --------------------------------------------------------------------------------------


def print_readings(
    readings: Sequence[ReserveReading],
    settings: ReservesSettings,
    *,
    title: str,
    ids: bool = False,
) -> None:
    """A table (the read points short), then each block's hash on a line of its own (a hash
    wrapped inside a cell could not be copied)."""
    table = Table(title=title)
    columns = ["instrument", "owed (supply)", "reserves", "ratio", "level", "read at"]
    if ids:
        columns = ["id", "taken at", *columns]
    for column in columns:
        table.add_column(column, justify="right" if column in ("ratio", "id") else "left")
    blocks: dict[int, str] = {}
    for reading in readings:
        decimals = decimals_of(reading)
        cells = [
            reading.instrument,
            format_units(reading.supply_units, decimals),
            format_units(reading.reserves_units, decimals),
            percent(reading.ratio_bps),
            ratio_level(reading, settings),
            read_at_text(reading),
        ]
        if ids:
            cells = [str(reading.id), f"{reading.taken_at:%Y-%m-%d %H:%M:%S}", *cells]
        table.add_row(*cells)
        for point in reading.read_at.values():
            if point.height is not None and point.block_hash is not None:
                blocks[point.height] = point.block_hash
    print_table(table)
    for height, block_hash in sorted(blocks.items()):
        typer.echo(f"block {height} {block_hash}")


def read_at_text(reading: ReserveReading) -> str:
    sides = dict(reading.read_at)
    if sides.get("supply") == sides.get("reserves") and "supply" in sides:
        return point_text(sides["supply"])
    return "; ".join(f"{side}: {point_text(point)}" for side, point in sorted(sides.items()))


def point_text(point: ReadPoint) -> str:
    if point.source == "chain":
        return f"block {point.height}" if point.height is not None else "no block watched yet"
    if point.source == "ledger":
        return f"ledger offset {point.offset}" if point.offset is not None else "not ingested yet"
    return "our records"
