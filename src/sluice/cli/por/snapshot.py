"""``sluice por snapshot``, ``proof``, ``roots`` and ``snapshots``: the liabilities side of the
proof of reserves, from the Integration DB.

* ``snapshot`` reads customers' balances from the journal in one read transaction, builds one
  Merkle-sum tree per instrument, stores the snapshot and prints each published root as one JSON
  line on stdout (nothing else goes there; progress is logged on stderr). It stores with it the
  reserves document (``sluice por reserves``), read from every source this process can open as
  ``sluice reserves reconcile`` opens them: the treasury's holdings from the ledger's active
  contracts (``--ledger`` file or ``--ledger-url`` participant, default: configured) and the
  custody's outputs from the Bitcoin node (``[bitcoin]``, else the sandbox custody), signed by
  the custody keys held here. A source that cannot be opened or read is stated in the document
  as not read, with the reason, and said on stderr; it never refuses the snapshot.
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
from contextlib import ExitStack, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from sluice import bootstrap
from sluice.cli.common import (
    DbOption,
    JsonOption,
    LedgerOption,
    LedgerUrlOption,
    deployment,
    fail_with,
    log_to_stderr,
    note,
    open_database,
    print_json,
    print_table,
    recorded_treasury,
    reserves_sources,
    utc_now,
)
from sluice.cli.por.wiring import por_app
from sluice.config import DeploymentConfig
from sluice.domain.errors import SluiceError
from sluice.services.reserves_settings import ReservesContext

SnapshotOption = Annotated[
    str | None,
    typer.Option("--snapshot", help="The snapshot's id (default: the latest one)."),
]


@contextmanager
def _database(db: str | None) -> Iterator[bootstrap.Database]:
    """The Integration DB for one command; a refusal ends it (exit 2), and it is closed."""
    log_to_stderr()
    database = open_database(db or deployment().database_url)
    try:
        yield database
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()


def _database_context(database: bootstrap.Database) -> ReservesContext:
    """The reserves context of a command that reads the DB alone: the secret file of the
    configuration and which instrument is iSTSi (its units are satoshis)."""
    config = deployment()
    context = bootstrap.reserves_context(
        config, database, treasury=config.treasury.party or "", clock=utc_now
    )
    return _with_istsi(context, config)


def _sources_context(
    database: bootstrap.Database,
    stack: ExitStack,
    ledger: Path | None,
    ledger_url: str | None,
    taken_at: datetime,
) -> ReservesContext:
    """The snapshot's context: every source this process can open (each closed by ``stack``),
    its clock stopped at ``taken_at`` (the snapshot's time and its default id agree)."""
    config = deployment()
    treasury = recorded_treasury(config, database) or ""
    context = reserves_sources(
        config, stack, database, treasury=treasury, ledger=ledger, ledger_url=ledger_url
    )
    return dataclasses.replace(_with_istsi(context, config), clock=lambda: taken_at)


def _with_istsi(context: ReservesContext, config: DeploymentConfig) -> ReservesContext:
    """``context`` knowing iSTSi: the issuer's instrument when its ledger is open, else the one
    the DB and the configuration name (:func:`~sluice.services.por_snapshots.find_istsi`)."""
    from sluice.services.por_snapshots import find_istsi

    if context.istsi is not None:
        return context
    istsi = find_istsi(
        context.uow, utc_now(), config.issuance.instrument_id, config.issuance.issuer_party
    )
    return dataclasses.replace(context, istsi=istsi)


def _say_reserves(database: bootstrap.Database, snapshot_id: str) -> None:
    """On stderr: what the stored reserves document read, and each part not read with why."""
    with database.uow() as uow:
        stored = uow.reserves.snapshot(snapshot_id)
    document = stored.reserves if stored is not None else None
    if document is None:
        note(f"reserves: snapshot {snapshot_id} has no reserves document (see the log above)")
        return
    for part in ("bitcoin", "canton"):
        read = dict(document.get(part) or {})
        if not read.get("read"):
            note(f"reserves: {part} not read ({read.get('reason') or 'no reason given'})")
        elif part == "bitcoin":
            note(
                f"reserves: bitcoin read at block {read.get('height')}: "
                f"{read.get('total_sats')} sats, {len(document.get('signatures') or ())} "
                "custody signature(s)"
            )
        else:
            note(
                f"reserves: canton read at offset {read.get('offset')}: "
                f"{len(read.get('instruments') or ())} instrument(s) held by {read.get('party')}"
            )


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
    ledger: LedgerOption = None,
    ledger_url: LedgerUrlOption = None,
    db: DbOption = None,
) -> None:
    """Snapshot customers' liabilities: one Merkle-sum root per instrument, a JSON line each;
    the reserves document, read from every source this process can open, is stored with it."""
    from sluice.services.por_snapshots import default_snapshot_id, root_json, take_snapshot

    taken_at = utc_now()
    snapshot_id = snapshot_id or default_snapshot_id(taken_at)
    with _database(db) as database, ExitStack() as stack:
        context = _sources_context(database, stack, ledger, ledger_url, taken_at)
        roots = take_snapshot(context, instruments=instruments or None, snapshot_id=snapshot_id)
        _say_reserves(database, snapshot_id)
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
        proof = customer_proof(_database_context(database), customer, instrument, snapshot_id)
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
