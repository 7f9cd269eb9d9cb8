"""Chapter: ingestion in another process, killed and resumed.

``sluice ingest --once`` runs as a child process and is killed with SIGKILL once the cursor it
committed is a third of the way in; a second run resumes from that cursor (not from zero) and
ends at the ledger end. The child reads the ledger file read-only (or the ledger over HTTP);
the demo process stays its only writer.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from sqlalchemy import create_engine

from sluice import bootstrap
from sluice.demo.report import Chapter, Sections, Status, mark
from sluice.demo.world import NODE, POLL_S, Exchange, World, load_cursor
from sluice.domain.ledger import Cursor

BATCH_SIZE = 20
CHILD_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class FirstRun:
    killed: bool
    cursor: Cursor | None


@dataclass(frozen=True, slots=True)
class SecondRun:
    started_after: int | None
    cursor: Cursor | None
    transactions: int | None
    checkpoints: int | None


def sluice_command() -> list[str]:
    """The installed ``sluice`` script next to this interpreter, or the same through Python."""
    script = Path(sys.executable).with_name("sluice")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from sluice.cli import main; main()"]


def ingest_command(world: World) -> list[str]:
    if world.wire is not None:
        source = ["--ledger-url", world.wire.participant_url]
    else:
        source = ["--ledger", str(world.ledger_path), "--node", NODE]
    return [
        *sluice_command(),
        "ingest",
        "--once",
        "--party",
        world.treasury,
        "--db",
        world.db_url,
        *source,
        "--batch-size",
        str(BATCH_SIZE),
    ]


def read_only(world: World) -> bootstrap.Database:
    """A read-only connection to the Integration DB: watching the cursor through it never takes
    the write lock the ingestion being watched needs (SQLite in WAL mode: readers never wait)."""
    path = world.db_url.removeprefix("sqlite:///")
    return bootstrap.Database(create_engine(f"sqlite:///file:{path}?mode=ro&uri=true"))


def run_and_kill(world: World) -> FirstRun:
    """Start ``sluice ingest``; SIGKILL it once its committed cursor is a third of the way in."""
    target = max(1, world.ledger_end // 3)
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    watcher = read_only(world)
    try:
        with (
            (world.data_dir / "ingest-1.log").open("w") as log,
            subprocess.Popen(ingest_command(world), stdout=log, stderr=log) as child,
        ):
            while time.monotonic() < deadline:
                cursor = load_cursor(watcher, world)
                if cursor is not None and target <= cursor.offset < world.ledger_end:
                    child.send_signal(signal.SIGKILL)
                    killed = child.wait() == -signal.SIGKILL  # not if it had just finished
                    return FirstRun(killed=killed, cursor=load_cursor(watcher, world))
                try:
                    child.wait(timeout=POLL_S)  # returns at once if it ended: it was too fast
                except subprocess.TimeoutExpired:
                    continue
                return FirstRun(killed=False, cursor=load_cursor(watcher, world))
            child.kill()
    finally:
        watcher.dispose()
    raise RuntimeError(f"`sluice ingest` made no progress in {CHILD_TIMEOUT_S:.0f}s")


SUMMARY = re.compile(r"ingested (\d+) transactions, (\d+) checkpoints")


def run_to_end(world: World, database: bootstrap.Database) -> SecondRun:
    started = load_cursor(database, world)
    done = subprocess.run(
        ingest_command(world), capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, check=False
    )
    (world.data_dir / "ingest-2.log").write_text(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"`sluice ingest` failed ({done.returncode}):\n{done.stderr}")
    found = SUMMARY.search(done.stderr)
    return SecondRun(
        started_after=started.offset if started else None,
        cursor=load_cursor(database, world),
        transactions=int(found.group(1)) if found else None,
        checkpoints=int(found.group(2)) if found else None,
    )


@dataclass(frozen=True, slots=True)
class Resumed:
    """Both runs of ``sluice ingest`` against the treasury's stream, offsets 1…``ledger_end``."""

    ledger_end: int
    first: FirstRun
    second: SecondRun


def run(exchange: Exchange, status: Status) -> Resumed:
    world = exchange.world
    with status("ingesting in another process (to be killed part-way)…"):
        first = run_and_kill(world)
    with status("ingesting again: resuming from the cursor…"):
        second = run_to_end(world, exchange.database)
    return Resumed(world.ledger_end, first, second)


def show(console: Console, story: Resumed, sections: Sections) -> bool:
    end, first, second = story.ledger_end, story.first, story.second
    console.print()
    console.print(
        f"[bold]{sections.next()}. Ingestion[/] in another process: "
        f"sluice ingest --once --batch-size {BATCH_SIZE}"
    )
    killed_at = first.cursor.offset if first.cursor else 0
    if first.killed:
        console.print(
            f"  run 1: SIGKILL when its committed cursor was at offset [bold]{killed_at}[/] of "
            f"{end}; a batch it was still writing dies with its open transaction"
        )
    else:
        console.print(
            f"  run 1: [yellow]finished (offset {killed_at} of {end}) before it could be "
            "killed[/]; this machine is fast, the resume below then has nothing to do"
        )
    resumed = second.started_after == killed_at
    ended = second.cursor is not None and second.cursor.offset == end
    counted = ""
    if second.transactions is not None and second.checkpoints is not None:
        items = second.transactions + second.checkpoints
        counted = (
            f": ingested {second.transactions} transactions + {second.checkpoints} checkpoints"
            f" = {items} items: the {end - killed_at} after offset {killed_at}, not all {end}"
        )
    console.print(
        f"  run 2: resumed from offset {second.started_after} {mark(resumed)}{counted}; "
        f"ended at offset {second.cursor.offset if second.cursor else None} = ledger end "
        f"{mark(ended)}"
    )
    return resumed and ended


CHAPTER = Chapter("ingestion killed and resumed", run, show)
