"""The ``sluice`` command line: translates arguments into service calls and prints results."""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from sluice import bootstrap
from sluice.config import Settings
from sluice.domain.errors import SluiceError
from sluice.ledger.file import UpdateFile
from sluice.services.books import check_invariant, treasury_view
from sluice.services.ingestion import (
    Ingestion,
    IngestionProgress,
    IngestionSettings,
    connection_name,
    quarantine_update,
)

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
ledger_app = typer.Typer(no_args_is_help=True, help="The token ledger: replay recorded updates.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (results go to docs/benchmarks.md).")
app.add_typer(ledger_app, name="ledger")
app.add_typer(bench_app, name="bench")

err = Console(stderr=True)

DbOption = Annotated[
    str | None,
    typer.Option("--db", help="Integration DB URL (sqlite:///path or postgresql://…)."),
]


def main() -> None:
    app()


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def ingestion_progress(label: str, total: int | None = None) -> Iterator[Any]:
    """A progress bar on stderr for long ingestion work; returns the on-batch callback."""
    columns = [
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed} updates"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as bar:
        task = bar.add_task(label, total=total)

        def on_batch(progress: IngestionProgress) -> None:
            bar.update(task, completed=progress.transactions + progress.checkpoints)

        yield on_batch


@ledger_app.command("replay")
def ledger_replay(
    file: Annotated[Path, typer.Argument(help="JSON array or JSON lines of updates.")],
    party: Annotated[str, typer.Option("--party", help="The treasury party to ingest for.")],
    db: DbOption = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
) -> None:
    """Ingest recorded updates for PARTY and print the treasury view as JSON."""
    with tempfile.TemporaryDirectory(prefix="sluice-replay-") as scratch:
        url = db or f"sqlite:///{Path(scratch) / 'replay.db'}"
        try:
            source = UpdateFile(file)
            database = bootstrap.database(url)
        except (FileNotFoundError, SluiceError) as exc:
            fail(str(exc))
            return
        try:
            connection = connection_name(party, f"file:{file.name}")
            with ingestion_progress(f"replaying {file.name}") as on_batch:
                Ingestion(
                    database.uow,
                    source,
                    party,
                    connection=connection,
                    settings=IngestionSettings(batch_size_max=batch_size),
                    on_batch=on_batch,
                ).run()
            view = treasury_view(database.uow, party, connection)
        except SluiceError as exc:
            fail(str(exc))
            return
        finally:
            database.dispose()
    sys.stdout.write(json.dumps(view, indent=2) + "\n")


@app.command("ingest")
def ingest(
    db: DbOption = None,
    party: Annotated[
        str | None, typer.Option("--party", help="Treasury party (default: SLUICE_TREASURY_PARTY).")
    ] = None,
    ledger: Annotated[
        Path | None,
        typer.Option("--ledger", help="Embedded ledger file (default: data/ledger.db)."),
    ] = None,
    node: Annotated[str | None, typer.Option("--node", help="Ledger node the party is on.")] = None,
    follow: Annotated[bool, typer.Option("--follow/--once", help="Keep polling.")] = True,
    quarantine: Annotated[
        str | None,
        typer.Option(
            "--quarantine",
            metavar="UPDATE_ID",
            help="Set a malformed update aside so ingestion can continue past it, then exit.",
        ),
    ] = None,
    batch_size: Annotated[int, typer.Option(min=1, max=10_000)] = 500,
) -> None:
    """Run the ingestion loop for the treasury party against the ledger, until stopped."""
    from sluice.ledger.local.engine import EmbeddedLedger

    settings = Settings.from_environment()
    party = party or settings.treasury_party
    if not party:
        fail("no treasury party: pass --party or set SLUICE_TREASURY_PARTY")
        return
    node_name = node or settings.node
    database = bootstrap.database(db or settings.database_url)
    connection = connection_name(party, node_name)
    if quarantine is not None:
        added = quarantine_update(
            database.uow, connection, quarantine, requested_by=os.environ.get("USER", "operator")
        )
        err.print(
            f"update {quarantine} {'set aside' if added else 'was already set aside'}; "
            "ingestion will skip it"
        )
        database.dispose()
        return
    ledger_file = ledger or settings.ledger_path
    if not ledger_file.exists():
        fail(f"no embedded ledger at {ledger_file} (run `sluice demo` first, or pass --ledger)")
        return
    stopping = False

    def request_stop(_signum: int, _frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    embedded = EmbeddedLedger.open(str(ledger_file), read_only=True)
    try:
        with ingestion_progress(f"ingesting for {party}") as on_batch:
            progress = Ingestion(
                database.uow,
                embedded.client(party),
                party,
                connection=connection,
                settings=IngestionSettings(batch_size_max=batch_size),
                on_batch=on_batch,
            ).run(follow=follow, stop=lambda: stopping)
        err.print(
            f"ingested {progress.transactions} transactions, {progress.checkpoints} checkpoints; "
            f"cursor {progress.cursor.as_json() if progress.cursor else None}"
        )
    except SluiceError as exc:
        fail(str(exc))
    finally:
        embedded.close()
        database.dispose()


@app.command("check")
def check(db: DbOption = None) -> None:
    """Check the books: customers + suspense + in-flight + fees = treasury holdings."""
    database = bootstrap.database(db or Settings.from_environment().database_url)
    result = check_invariant(database.uow)
    database.dispose()
    if result.holds:
        err.print("[green]the books balance[/]: every unit owed is held on the ledger")
        return
    for problem in result.problems:
        err.print(f"[red]✗[/] {problem}")
    raise typer.Exit(1)


@bench_app.command("ingest")
def bench_ingest(
    updates: Annotated[int, typer.Option("--updates", min=100, help="Stream length.")] = 100_000,
    db: Annotated[
        str, typer.Option("--db", help="Database to benchmark; it is EMPTIED first.")
    ] = "sqlite:///data/bench/bench.db",
    live_updates: Annotated[
        int, typer.Option(help="How many updates to replay one per DB transaction.")
    ] = 2_000,
    stream: Annotated[
        Path | None, typer.Option(help="Reuse (or keep) the generated stream at this path.")
    ] = None,
    record: Annotated[
        Path | None, typer.Option(help="Append the figures to this Markdown file.")
    ] = None,
) -> None:
    """Generate a realistic treasury stream, then measure replaying it into the database."""
    from sluice.bench.measure import measure_in_child
    from sluice.bench.record import append_result
    from sluice.bench.stream import generate

    path = stream or Path("data/bench") / f"stream-{updates}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    setup_file = path.with_suffix(".setup.json")
    if not (path.exists() and setup_file.exists()):
        with err.status(f"generating {updates} updates with the embedded ledger → {path}"):
            generate(path, updates)
    with err.status(f"measuring replay of {path} into {db}"):
        result = measure_in_child(path, db, live_updates)
    result["db"] = db.split("://", 1)[0]
    sys.stdout.write(json.dumps(result) + "\n")
    if record is not None:
        append_result(record, result, command=" ".join(["sluice", *sys.argv[1:]]))


@app.command("demo")
def demo(
    data: Annotated[
        Path, typer.Option("--data", help="Folder for the demo's ledger and database.")
    ] = Path("data/demo"),
    seed: Annotated[int, typer.Option(help="Seed for the demo's customers and amounts.")] = 1,
) -> None:
    """Run the whole flow on the embedded defaults and print a readable report."""
    from sluice.demo import run_demo

    ok = run_demo(data, seed=seed, console=Console())
    raise typer.Exit(0 if ok else 1)
