"""Ingestion over the wire against ingestion in process: ``sluice bench wire``.

One treasury stream is generated once with the embedded ledger and kept in a ledger file. The
same ingestion then reads it three ways into a fresh SQLite Integration DB each time:

* **in process** — the embedded ledger's own client, in the ingesting process;
* **WebSocket** — ``sluice ledger serve`` on that file in a separate process, read by the Canton
  client's ``/v2/updates`` WebSocket stream (what a deployment does against a participant);
* **HTTP list** — the same server, read through the paged ``POST /v2/updates`` fallback.

Rounds alternate the three so a slow moment of the machine hits them alike; each figure is the
best of its rounds. The target is WebSocket ≥ 50% of in process.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from sluice import bootstrap
from sluice.bench.measure import set_up_exchange
from sluice.bench.record import machine
from sluice.bench.stream import StreamSetup, generate
from sluice.ledger.canton import CantonLedgerClient, LedgerHttp, NoAuth
from sluice.ledger.local import EmbeddedLedger
from sluice.ports import LedgerClient
from sluice.services.books import check_invariant
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name

NODE = "exchange"
SERVER_START_S = 180.0


@dataclass(frozen=True, slots=True)
class WireMeasurement:
    updates: int
    in_process_per_s: float
    websocket_per_s: float
    http_list_per_s: float
    ratio: float  # WebSocket / in process
    rounds: int
    books_balance: bool


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def start_server(ledger_file: Path) -> tuple[subprocess.Popen[bytes], str]:
    """``sluice ledger serve`` on the file, in its own process; returns it and its base URL once
    it answers."""
    port = free_port()
    script = Path(sys.executable).with_name("sluice")
    command = (
        [str(script)]
        if script.exists()
        else [sys.executable, "-c", "from sluice.cli import main; main()"]
    )
    process = subprocess.Popen(
        [*command, "ledger", "serve", "--ledger", str(ledger_file), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"`sluice ledger serve` exited with {process.returncode}")
        try:
            httpx.get(f"{url}/v2/state/ledger-end", timeout=1.0).raise_for_status()
            return process, url
        except httpx.HTTPError:
            time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"`sluice ledger serve` did not answer within {SERVER_START_S:.0f}s")


def ingest(client: LedgerClient, setup: StreamSetup, url: str) -> tuple[int, float, bool]:
    """Ingest everything into the (fresh) database at ``url``: (items, seconds, books balance)."""
    database = bootstrap.database(url)
    try:
        set_up_exchange(database, setup)
        ingestion = Ingestion(
            database.uow,
            client,
            setup.party,
            connection=connection_name(setup.party, NODE),
            settings=IngestionSettings(batch_size_max=500),
        )
        started = time.perf_counter()
        progress = ingestion.run()
        elapsed = time.perf_counter() - started
        books = check_invariant(database.uow).holds
        return progress.transactions + progress.checkpoints, elapsed, books
    finally:
        database.dispose()


def measure(updates: int, rounds: int, folder: Path) -> WireMeasurement:
    folder.mkdir(parents=True, exist_ok=True)
    stream = folder / f"wire-{updates}.jsonl"
    ledger_file = folder / f"wire-{updates}.ledger.db"
    setup_file = stream.with_suffix(".setup.json")
    if not (ledger_file.exists() and setup_file.exists()):
        ledger_file.unlink(missing_ok=True)
        generate(stream, updates, ledger_path=ledger_file)
    setup = StreamSetup.read(setup_file)
    best: dict[str, float] = {}
    count = 0
    balanced = True
    server, base = start_server(ledger_file)
    embedded = EmbeddedLedger.open(str(ledger_file), read_only=True)
    http = LedgerHttp(f"{base}/nodes/{NODE}", NoAuth(), timeout_s=60.0)
    clients: dict[str, LedgerClient] = {
        "in_process": embedded.client(setup.party),
        "websocket": CantonLedgerClient(http),
        "http_list": CantonLedgerClient(http, use_websocket=False),
    }
    try:
        with tempfile.TemporaryDirectory(prefix="sluice-bench-wire-") as scratch:
            for round_number in range(rounds):
                for name, client in clients.items():
                    url = f"sqlite:///{Path(scratch) / f'{name}-{round_number}.db'}"
                    items, seconds, books = ingest(client, setup, url)
                    count = items
                    balanced = balanced and books
                    best[name] = max(best.get(name, 0.0), items / seconds)
    finally:
        http.close()
        embedded.close()
        server.terminate()
        server.wait(timeout=30)
    return WireMeasurement(
        updates=count,
        in_process_per_s=round(best["in_process"], 1),
        websocket_per_s=round(best["websocket"], 1),
        http_list_per_s=round(best["http_list"], 1),
        ratio=round(best["websocket"] / best["in_process"], 3),
        rounds=rounds,
        books_balance=balanced,
    )


MARKER = "## Ingestion over the wire (`sluice bench wire`)"
HEADER = (
    "| date | machine | updates | in process/s | WebSocket/s | HTTP list/s | ratio | rounds "
    "| books | command |\n|---|---|---|---|---|---|---|---|---|---|\n"
)


def record(path: Path, result: WireMeasurement, command: str) -> None:
    """Add a row under this benchmark's table in ``path`` (the section is made if missing)."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if MARKER not in text:
        text = text.rstrip("\n") + f"\n\n{MARKER}\n\n{HEADER}"
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine()} | {result.updates} "
        f"| {result.in_process_per_s} | {result.websocket_per_s} | {result.http_list_per_s} "
        f"| {result.ratio} | {result.rounds} "
        f"| {'balance' if result.books_balance else 'BROKEN'} | `{command}` |\n"
    )
    head, _, tail = text.partition(MARKER)
    table_start = tail.index("|---")
    table_end = tail.find("\n\n", table_start)
    if table_end == -1:
        tail = tail.rstrip("\n") + "\n" + row
    else:
        tail = tail[:table_end] + "\n" + row.rstrip("\n") + tail[table_end:]
    path.write_text(head + MARKER + tail)


def bench_command(updates: int, rounds: int, record_to: Path | None) -> dict[str, Any]:
    result = measure(updates, rounds, Path("data/bench"))
    if record_to is not None:
        record(record_to, result, " ".join(["sluice", *sys.argv[1:]]))
    return asdict(result)
