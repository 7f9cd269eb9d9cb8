"""``sluice por snapshot``, ``proof``, ``roots`` and ``snapshots``: the liabilities side of the
proof of reserves, from the Integration DB.

* ``snapshot`` reads customers' balances from the journal in one read transaction, builds one
  Merkle-sum tree per instrument, stores the snapshot and prints each published root as one JSON
  line on stdout (nothing else goes there; progress is logged on stderr).
* ``roots`` prints a snapshot's published roots (the latest by default) the same way: exactly
  the file ``sluice por verify PROOF --root ROOTS`` takes.
* ``proof`` prints one customer's inclusion proof (the issue's proof JSON).
* ``snapshots`` lists the snapshots taken, newest first.

Root JSON keys: ``snapshot_id``, ``instrument`` (the key ``<id>@<admin>``), ``root_hash`` (hex),
``total_units`` (decimal string), ``total`` (the amount), ``leaf_count``, ``depth``,
``taken_at``. Proof JSON keys: ``snapshot_id``, ``instrument``, ``customer_id``, ``nonce``
(hex), ``units``, ``balance``, ``index``, ``siblings`` (``[{"hash", "units"}]``, leaf upwards).
``snapshots --json``: a list of ``{id, taken_at, instruments, report, has_reserves}``.
Refusals: ``error <code> <name>: message`` on stderr, exit 2.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Annotated, Any

import structlog
import typer
from rich.table import Table

from sluice import bootstrap
from sluice.cli.common import (
    DbOption,
    JsonOption,
    deployment,
    fail_with,
    open_database,
    print_json,
    print_table,
    utc_now,
)
from sluice.cli.por.wiring import por_app
from sluice.domain.errors import SluiceError
from sluice.services.reserves_settings import ReservesContext

SnapshotOption = Annotated[
    str | None,
    typer.Option("--snapshot", help="The snapshot's id (default: the latest one)."),
]


def _log_to_stderr() -> None:
    """Progress lines on stderr: stdout carries the JSON alone."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


@contextmanager
def _database(db: str | None) -> Iterator[bootstrap.Database]:
    """The Integration DB for one command; a refusal ends it (exit 2), and it is closed."""
    _log_to_stderr()
    database = open_database(db or deployment().database_url)
    try:
        yield database
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()


def _context(database: bootstrap.Database) -> ReservesContext:
    """The reserves context of this command: the DB, the secret file of the configuration and
    which instrument is iSTSi (its units are satoshis). No ledger or node is read here."""
    from sluice.services.por_snapshots import find_istsi

    config = deployment()
    context = bootstrap.reserves_context(
        config, database, treasury=config.treasury.party or "", clock=utc_now
    )
    istsi = find_istsi(
        database.uow, utc_now(), config.issuance.instrument_id, config.issuance.issuer_party
    )
    return dataclasses.replace(context, istsi=istsi)


def _lines(documents: Sequence[dict[str, Any]]) -> None:
    sys.stdout.write("".join(json.dumps(document) + "\n" for document in documents))


@por_app.command("snapshot")
def snapshot_command(
    instruments: Annotated[
        list[str] | None,
        typer.Option(
            "--instrument",
            help="An instrument (its key <id>@<admin>, or its id when only one has it); "
            "repeat for several. Default: every instrument onboarded or held by a customer.",
        ),
    ] = None,
    snapshot_id: Annotated[
        str | None,
        typer.Option("--id", help="The snapshot's id (default: por-<UTC time>); never reused."),
    ] = None,
    db: DbOption = None,
) -> None:
    """Snapshot customers' liabilities: one Merkle-sum root per instrument, a JSON line each."""
    from sluice.services.por_snapshots import root_json, take_snapshot

    with _database(db) as database:
        roots = take_snapshot(
            _context(database), instruments=instruments or None, snapshot_id=snapshot_id
        )
    _lines([root_json(root) for root in roots])


@por_app.command("roots")
def roots_command(snapshot_id: SnapshotOption = None, db: DbOption = None) -> None:
    """Print a snapshot's published roots, a JSON line each (what `por verify --root` takes)."""
    from sluice.services.por_snapshots import published_roots

    with _database(db) as database:
        roots = published_roots(database.uow, snapshot_id)
    _lines(roots)


@por_app.command("proof")
def proof_command(
    customer: Annotated[str, typer.Option("--customer", help="The customer's id.")],
    instrument: Annotated[
        str, typer.Option("--instrument", help="The instrument's key (or its id when unique).")
    ],
    snapshot_id: SnapshotOption = None,
    db: DbOption = None,
) -> None:
    """Print a customer's inclusion proof in a snapshot, as JSON (for `sluice por verify`)."""
    from sluice.services.por_snapshots import customer_proof

    with _database(db) as database:
        proof = customer_proof(_context(database), customer, instrument, snapshot_id)
    print_json(proof)


@por_app.command("snapshots")
def snapshots_command(
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000, help="At most.")] = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The proof-of-liabilities snapshots taken, newest first."""
    from sluice.services.por_snapshots import snapshot_history

    with _database(db) as database:
        history = snapshot_history(database.uow, limit=limit)
    if as_json:
        print_json(history)
        return
    table = Table(title=f"{len(history)} snapshot(s); their roots: sluice por roots --snapshot ID")
    for column in ("id", "taken at", "instruments", "reserves"):
        table.add_column(column, no_wrap=column == "id")
    for item in history:
        table.add_row(
            item["id"],
            item["taken_at"],
            str(len(item["instruments"])),
            "stored" if item["has_reserves"] else "-",
        )
    print_table(table)
