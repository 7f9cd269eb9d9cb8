"""Measuring the HTTP API under load: a balance read and a withdrawal request, next to a baseline.

What is measured, in one run (``sluice bench api``):

* **The exchange.** An emptied database (PostgreSQL by default; created when missing) holding a
  :class:`~sluice.sandbox.Sandbox` world with ``clients`` customers (50), each raised to KYC tier 4
  (the risk rules are off in the sandbox's registry), each credited by a real deposit that
  ingestion booked, and one ``user`` API key per customer. The embedded ledger is closed once the
  deposits are ingested: the API needs only the database, so no worker runs and withdrawals stay
  ``reserved`` (while the treasury's holdings last) or ``queued`` — either way a request has done
  its whole path: authentication, rate limits, the pause check, the customer's lock, the KYC
  decision, the debit, the record and its audit entries, committed.
* **The server.** uvicorn serving the real application (:func:`sluice.api.app.create_app`) on
  127.0.0.1 in spawned processes — 1 (what ``sluice serve`` runs), then 2, each with its own
  listening socket on the same port (see :func:`api_server`) — configured as ``sluice serve``
  has it:
  uvicorn's default HTTP and event loop implementations (:func:`server_stack` names them), sluice's
  own access log line per request to stderr (here a file in the scratch folder)
  instead of uvicorn's, the production caches of API keys (5 s) and runtime settings (1 s), the
  default thread pool (40) and connection pool (10 + 10), and the application's lifespan, which
  opens the asyncio read pool (2–10 connections) that answers balance reads on the event loop.
  Each process builds its own context and engine (:func:`serve`); the context's clock is the
  system clock, and the rate limits are raised so that they never refuse the benchmark. Each
  process count starts from a freshly built exchange. The load generator runs on the same
  machine, and so does PostgreSQL: the figures are those of the whole machine, which the report
  names.
* **The load.** ``clients`` concurrent clients, each with its own keep-alive connection, customer
  and key, in a closed loop (a client sends its next request when the previous one is answered)
  for ``duration_s`` after ``warmup_s`` of the same load, for three requests:
  ``GET /health`` (the **baseline**: the framework, no credentials, no database),
  ``GET /v1/customers/{id}/balances``, and ``POST /v1/customers/{id}/withdrawals`` of 0.01 CC
  with a new ``Idempotency-Key`` every time. The load generator is ``wrk`` when it is installed
  (installed with apt-get when missing and possible) with one thread per connection and a
  generated Lua script that gives each connection its client; else the Python generator below.
  The report says which one ran. (wrk, not wrk2: it cannot pace, hence the Python generator
  for the paced run.)
* **Paced reads.** A closed loop measures the most the server does; latency at a given rate is
  another question. The balance read is also sent open-loop at ``paced_rate`` (1,000/s) by the
  Python generator: client *i*'s *n*-th request is due at ``t0 + (n·clients + i) / rate``, and
  its latency runs from that due time (a late answer delays the next request of the same client,
  and that wait counts: no coordinated omission).

**Counting.** Every figure is counted from answers: ``ok`` is the 2xx answers, ``failed`` every
other status, and ``requests/s`` is ``ok`` per second of the run — a refused request is an error,
never throughput. Latencies (p50, p99, max) are over all answers. ``wrk`` counts through the Lua
``response`` hook, the Python generator per answer.

**Checked after each worker count.** Every withdrawal request has a unique idempotency key
``<run>-<client>-<n>``; the generators record which keys were answered with an error and which
were never answered: still in flight when wrk stopped, lost with a connection, or (one per wrk
run) made by wrk to verify the script and never sent. Those are sent again with the same key
(answered 200 if the first one was booked, 201 if it never arrived), then the withdrawal records
in the database must be exactly the keys answered 2xx — none missing, none extra, none twice —
and the books invariant (:func:`sluice.services.books.check_invariant`) must hold.

**Targets** (issue 6): ≥ 1,000 balance reads/s with p99 < 50 ms. Met when some worker count
serves ≥ 1,000 reads/s in the closed loop without errors and, where the paced run was made,
answers the paced reads at 1,000/s with p99 < 50 ms (else the closed loop's p99 is what is
judged). Each row of the recorded table is judged for its own worker count.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import math
import multiprocessing
import os
import queue
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import sqlalchemy as sa
import uvicorn

from sluice import bootstrap
from sluice.api.app import create_app
from sluice.api.context import ApiContext
from sluice.bench.measure import reset_database
from sluice.bench.record import machine
from sluice.domain.ledger import InstrumentId
from sluice.ledger.local import EmbeddedLedger
from sluice.sandbox import Sandbox, sandbox_registry
from sluice.server import configure_logging, url_of
from sluice.services.access import ApiKeyVerifier, create_api_key
from sluice.services.books import check_invariant
from sluice.services.compliance_officer import change_tier
from sluice.services.settings import RuntimeSettings
from sluice.services.withdrawals import WithdrawalSettings
from sluice.store import tables

if TYPE_CHECKING:
    from multiprocessing.queues import Queue

DEFAULT_DB = "postgresql+psycopg://postgres@127.0.0.1:5432/sluice_bench_api"
CLIENTS = 50
DURATION_S = 10.0
WARMUP_S = 2.0
PACED_RATE = 1_000.0
WORKER_COUNTS = (1, 2)
TIER = 4
DEPOSIT = Decimal(5_000)  # per customer: 500,000 withdrawals of 0.01 before a balance runs dry
WITHDRAWAL_AMOUNT = "0.01"
READS_PER_S_TARGET = 1_000.0
READ_P99_TARGET_MS = 50.0
ACTOR = "sluice bench api"
SCENARIOS = ("health", "balance", "withdrawal")

# Rate limits far above anything the benchmark sends: they are not what is measured.
RATE_LIMITS_OFF: dict[str, object] = {
    "rate_limits.key_per_s": 1_000_000.0,
    "rate_limits.key_burst": 1_000_000,
    "rate_limits.global_per_s": 10_000_000.0,
    "rate_limits.global_burst": 10_000_000,
}

SERVER_START_S = 60.0
LISTEN_BACKLOG = 2048  # as sluice serve listens
SERVER_STOP_S = 30.0
REQUEST_TIMEOUT_S = 30.0
DRAIN_S = 60.0  # how long a paced run may overrun its duration before it stops sending
WRK_SLACK_S = 120.0  # wrk's own time limit beyond the run's duration
INSTALL_S = 300.0
LATENCIES_MAX = 2_000_000  # bound on the latencies one Python run keeps

SECTION = "## HTTP API (`sluice bench api`)"
HEADER = (
    "| date | machine | db | clients, load generator | server | health req/s (p50 / p99 ms) "
    "| balance req/s (p50 / p99 ms) | balance paced: req/s (p50 / p99 ms) "
    "| withdrawal req/s (p50 / p99 ms) | errors | withdrawals booked / answered 2xx | books "
    "| target | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


# --- the exchange --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Client:
    """One load client: the customer it speaks for, that customer's key and wallet party."""

    customer_id: str
    key: str
    party: str


@dataclass(frozen=True, slots=True)
class Exchange:
    url: str
    treasury: str
    coin: InstrumentId
    clients: tuple[Client, ...]


def prepare_exchange(url: str, clients: int = CLIENTS) -> Exchange:
    """Empty the database at ``url`` (creating it when missing) and build the benchmark's
    exchange in it (see the module docstring); the embedded ledger is gone when this returns."""
    reset_database(url)
    start = datetime.now(UTC)
    ledger = EmbeddedLedger.open(None, seed=1, start_time=start, checkpoint_interval_s=30.0)
    sandbox = Sandbox.create(url, customers=clients, ledger=ledger, tap=DEPOSIT * 2)
    try:
        uow = sandbox.database.uow
        for customer_id in sandbox.customers:
            change_tier(uow, customer_id, TIER, actor=ACTOR, at=sandbox.clock(), reason="benchmark")
        for customer_id in sandbox.customers:
            sandbox.deposit(customer_id, DEPOSIT)
        sandbox.ingest()
        made: list[Client] = []
        for customer_id, party in sandbox.customers.items():
            _record, key = create_api_key(
                uow,
                role="user",
                customer_id=customer_id,
                label=f"benchmark {customer_id}",
                actor=ACTOR,
                at=datetime.now(UTC),
            )
            made.append(Client(customer_id, key, party))
        return Exchange(url, sandbox.treasury, sandbox.coin, tuple(made))
    finally:
        sandbox.close()


def api_context(database: bootstrap.Database, treasury: str) -> ApiContext:
    """The API's context as ``sluice serve`` builds it, on the system clock, rate limits off."""

    def clock() -> datetime:
        return datetime.now(UTC)

    return ApiContext(
        uow=database.uow,
        treasury=treasury,
        clock=clock,
        compliance=sandbox_registry(),
        settings=RuntimeSettings(database.uow, RATE_LIMITS_OFF, clock=clock),
        keys=ApiKeyVerifier(database.uow),
        withdrawal_settings=WithdrawalSettings(),
        reads=database.async_reads(),
    )


def serve(sock: socket.socket, url: str, treasury: str, log_path: str, ready: Queue[int]) -> None:
    """One server process (the target of each spawned worker): the API over the database at
    ``url`` on the listening ``sock`` until SIGTERM, with logging as ``sluice serve`` has it (one
    access line per request, to stderr — here ``log_path``). Puts its pid on ``ready`` once the
    application is built."""
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    configure_logging()
    app = create_app(api_context(bootstrap.database(url), treasury))
    config = uvicorn.Config(app, lifespan="on", access_log=False, log_level="warning")
    server = uvicorn.Server(config)
    ready.put(os.getpid())
    server.run(sockets=[sock])


def server_stack() -> str:
    """uvicorn's version and the HTTP parser and event loop its defaults pick here (httptools and
    uvloop when they are installed, else h11 and asyncio), as for ``sluice serve``."""

    def installed(module: str) -> bool:
        return importlib.util.find_spec(module) is not None

    http = "httptools" if installed("httptools") else "h11"
    loop = "uvloop" if installed("uvloop") else "asyncio"
    return f"uvicorn {uvicorn.__version__} ({http}, {loop})"


@contextmanager
def api_server(exchange: Exchange, workers: int, log_path: Path) -> Iterator[str]:
    """The API over ``exchange``'s database in ``workers`` spawned processes on one port of
    127.0.0.1; yields the base URL once every process is up and ``/health`` answers, stops them
    afterwards (SIGTERM, then SIGKILL after ``SERVER_STOP_S``).

    Each process gets its own listening socket on the same port (``SO_REUSEPORT``), so that
    the kernel spreads the clients' connections over the processes; with one shared socket the
    first process to wake takes a whole burst of new connections, and keep-alive clients stay
    where they landed. The sockets are created with ``IPPROTO_TCP`` as :func:`sluice.server.bind`
    creates ``sluice serve``'s, so asyncio sets ``TCP_NODELAY`` on every connection it accepts.
    (uvicorn's ``--workers`` binds with protocol 0, and then asyncio leaves Nagle's algorithm on:
    an answer written as headers then body waits for the client's delayed ACK, ~40 ms a request.)
    """
    sockets = listening_sockets(workers)
    base = url_of(sockets[0])
    context = multiprocessing.get_context("spawn")
    ready: Queue[int] = context.Queue()
    processes = [
        context.Process(
            target=serve,
            args=(sock, exchange.url, exchange.treasury, str(log_path), ready),
            name=f"sluice-bench-api-{n}",
        )
        for n, sock in enumerate(sockets)
    ]
    started: list[BaseProcess] = []
    try:
        for process in processes:
            process.start()
            started.append(process)
        _wait_until_serving(base, processes, ready, log_path)
        yield base
    finally:
        for child in started:
            if child.is_alive():
                child.terminate()
        for child in started:
            child.join(SERVER_STOP_S)
            if child.is_alive():
                child.kill()
                child.join(SERVER_STOP_S)
        for sock in sockets:
            sock.close()


def listening_sockets(count: int) -> list[socket.socket]:
    """``count`` TCP sockets listening on one free port of 127.0.0.1 (``SO_REUSEPORT``)."""
    sockets: list[socket.socket] = []
    port = 0
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", port))
            sock.listen(LISTEN_BACKLOG)
            port = int(sock.getsockname()[1])
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _wait_until_serving(
    base: str, processes: Sequence[BaseProcess], ready: Queue[int], log_path: Path
) -> None:
    deadline = time.monotonic() + SERVER_START_S
    started = 0
    while started < len(processes) and time.monotonic() < deadline:
        if not all(process.is_alive() for process in processes):
            break
        try:
            ready.get(timeout=0.2)
            started += 1
        except queue.Empty:
            continue
    while started == len(processes) and time.monotonic() < deadline:
        try:
            with httpx.Client(timeout=2.0) as client:
                if client.get(f"{base}/health").status_code == 200:
                    return
        except httpx.HTTPError:
            time.sleep(0.1)
    tail = log_path.read_text(errors="replace")[-2_000:] if log_path.exists() else ""
    raise RuntimeError(f"the API server did not start within {SERVER_START_S:.0f} s:\n{tail}")


# --- what the clients send -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request:
    """One client's request; ``keyed`` ones get a new ``Idempotency-Key`` each time."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: str | None
    keyed: bool


def requests_for(scenario: str, exchange: Exchange) -> list[Request]:
    """What each client sends in ``scenario`` (one of :data:`SCENARIOS`)."""
    made: list[Request] = []
    for client in exchange.clients:
        auth = (("X-API-Key", client.key),)
        if scenario == "health":
            made.append(Request("GET", "/health", (), None, keyed=False))
        elif scenario == "balance":
            path = f"/v1/customers/{client.customer_id}/balances"
            made.append(Request("GET", path, auth, None, keyed=False))
        elif scenario == "withdrawal":
            body = json.dumps(
                {
                    "receiver": client.party,
                    "instrument": {"admin": exchange.coin.admin, "id": exchange.coin.id},
                    "amount": WITHDRAWAL_AMOUNT,
                },
                separators=(",", ":"),
            )
            path = f"/v1/customers/{client.customer_id}/withdrawals"
            headers = (*auth, ("Content-Type", "application/json"))
            made.append(Request("POST", path, headers, body, keyed=True))
        else:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    return made


def idempotency_key(run: str, client: int, n: int) -> str:
    """The key of client ``client``'s (1-based) ``n``-th request of ``run``."""
    return f"{run}-{client}-{n}"


# --- what a run returns --------------------------------------------------------------------------


@dataclass(slots=True)
class ClientTally:
    """One client's answers in a run: ``sent`` requests made (keys 1..sent when keyed), of
    which ``ok`` answered 2xx and ``failed`` otherwise; ``unanswered`` were lost with their
    connection, ``in_flight`` was still waiting for its answer when the run stopped, ``unsent``
    was made but never sent (wrk's verification of its script). The key lists name requests by
    their idempotency key (by their number when not keyed)."""

    client: int
    sent: int = 0
    ok: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failed_keys: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)

    @property
    def unsettled(self) -> list[str]:
        """The requests whose outcome no answer told."""
        return [*self.unanswered, *self.in_flight, *self.unsent]


@dataclass(frozen=True, slots=True)
class RawRun:
    """What a generator measured: elapsed seconds, latency percentiles in ms, per-client tallies
    and errors below HTTP (connect, read, write, timeout)."""

    elapsed_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    tallies: tuple[ClientTally, ...]
    socket_errors: int


@dataclass(frozen=True, slots=True)
class LoadRun:
    """One measured run as reported."""

    workers: int
    scenario: str
    mode: str  # closed | paced
    tool: str
    clients: int
    duration_s: float
    offered_per_s: float | None  # the pace of a paced run
    answered: int
    ok: int
    failed: int  # answered, not 2xx
    lost: int  # sent, never answered: the connection failed
    in_flight: int  # still unanswered when the run stopped (wrk stops mid-request)
    socket_errors: int  # connect, read, write errors and timeouts
    statuses: dict[str, int]
    requests_per_s: float  # 2xx answers per second of the run
    p50_ms: float
    p99_ms: float
    max_ms: float
    load_1m: float | None = None  # the machine's 1-minute load average when the run ended

    @property
    def errors(self) -> int:
        return self.failed + self.lost


def load_run(
    raw: RawRun,
    *,
    workers: int,
    scenario: str,
    mode: str,
    tool: str,
    offered_per_s: float | None = None,
    load_1m: float | None = None,
) -> LoadRun:
    statuses: dict[str, int] = {}
    for tally in raw.tallies:
        for code, count in tally.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
    ok = sum(t.ok for t in raw.tallies)
    failed = sum(t.failed for t in raw.tallies)
    return LoadRun(
        workers=workers,
        scenario=scenario,
        mode=mode,
        tool=tool,
        clients=len(raw.tallies),
        duration_s=round(raw.elapsed_s, 3),
        offered_per_s=offered_per_s,
        answered=ok + failed,
        ok=ok,
        failed=failed,
        lost=sum(len(t.unanswered) for t in raw.tallies),
        in_flight=sum(len(t.in_flight) for t in raw.tallies),
        socket_errors=raw.socket_errors,
        statuses=dict(sorted(statuses.items())),
        requests_per_s=round(ok / raw.elapsed_s, 1) if raw.elapsed_s > 0 else 0.0,
        p50_ms=round(raw.p50_ms, 3),
        p99_ms=round(raw.p99_ms, 3),
        max_ms=round(raw.max_ms, 3),
        load_1m=load_1m,
    )


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank; 0 for no samples."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# --- the Python generator ------------------------------------------------------------------------


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads the status and
    the ``Content-Length`` body of each answer; a few microseconds of Python per request, so the
    generator leaves the CPU to the server it measures."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def exchange(self, data: bytes) -> int:
        """Send ``data`` and return the answer's status; :class:`ConnectionError` when the
        connection fails (it is closed then, and opened again by the next call)."""
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            assert self._reader is not None
            self._writer.write(data)
            line = await self._reader.readline()
            if not line:
                raise ConnectionError("the server closed the connection")
            status = int(line.split(b" ", 2)[1])
            length = 0
            keep = True
            while True:
                header = await self._reader.readline()
                if header in (b"\r\n", b""):
                    break
                name, _, value = header.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep = False
                elif name == b"transfer-encoding":
                    raise ConnectionError("chunked answers are not read by this client")
            if length:
                await self._reader.readexactly(length)
            if not keep:
                self.close()
            return status
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            self.close()
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _encode(request: Request, host: str, key: str | None) -> bytes:
    lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in request.headers]
    if key is not None:
        lines.append(f"Idempotency-Key: {key}")
    body = (request.body or "").encode()
    if request.body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _python_run(
    base: str,
    requests: Sequence[Request],
    *,
    run: str,
    duration_s: float,
    rate: float | None,
) -> RawRun:
    split = httpx.URL(base)
    host, port = split.host, split.port or 80
    authority = f"{host}:{port}"
    connections = [HttpConnection(host, port) for _ in requests]
    tallies = [ClientTally(client=index + 1) for index in range(len(requests))]
    latencies: list[float] = []
    socket_errors = 0
    clients = len(requests)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + duration_s
    last_answer = started

    async def client(index: int) -> None:
        nonlocal socket_errors, last_answer
        request, tally, connection = requests[index], tallies[index], connections[index]
        fixed = None if request.keyed else _encode(request, authority, None)
        n = 0
        while True:
            due = started + (n * clients + index) / rate if rate is not None else loop.time()
            if due >= deadline or loop.time() > deadline + DRAIN_S:
                return  # the schedule is done, or the server fell hopelessly behind it
            n += 1
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            key = idempotency_key(run, tally.client, n) if request.keyed else None
            data = fixed if fixed is not None else _encode(request, authority, key)
            tally.sent += 1
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status = await connection.exchange(data)
            except (ConnectionError, TimeoutError):
                socket_errors += 1
                connection.close()
                tally.unanswered.append(key if key is not None else str(n))
                continue
            now = loop.time()
            last_answer = max(last_answer, now)
            if len(latencies) < LATENCIES_MAX:
                latencies.append((now - due) * 1000)
            code = str(status)
            tally.statuses[code] = tally.statuses.get(code, 0) + 1
            if 200 <= status < 300:
                tally.ok += 1
            else:
                tally.failed += 1
                if key is not None:
                    tally.failed_keys.append(key)

    try:
        await asyncio.gather(*(client(index) for index in range(clients)))
    finally:
        for connection in connections:
            connection.close()
    # A closed loop lasts until its last answer; a paced one for its schedule (or until late
    # answers came in, when the server fell behind).
    elapsed = max(last_answer, deadline if rate is not None else started) - started
    ordered = sorted(latencies)
    return RawRun(
        elapsed_s=elapsed,
        p50_ms=_percentile(ordered, 0.50),
        p99_ms=_percentile(ordered, 0.99),
        max_ms=ordered[-1] if ordered else 0.0,
        tallies=tuple(tallies),
        socket_errors=socket_errors,
    )


def python_run(
    base: str,
    requests: Sequence[Request],
    *,
    run: str,
    duration_s: float,
    rate: float | None = None,
) -> RawRun:
    """One run of the Python generator: a closed loop, or paced at ``rate`` requests/s over all
    clients (see the module docstring). Requests still unanswered after the duration are waited
    for (each within ``REQUEST_TIMEOUT_S``); a paced run that falls more than ``DRAIN_S`` behind
    its schedule stops sending (its ``answered`` then falls short of rate × duration)."""
    return asyncio.run(_python_run(base, requests, run=run, duration_s=duration_s, rate=rate))


# --- wrk -----------------------------------------------------------------------------------------


def _lua_string(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


LUA_TEMPLATE = """\
-- Generated by sluice.bench.api: one wrk thread per client, one connection each, so thread N
-- sends client N's request; keyed requests get a new Idempotency-Key each time. Answers are
-- counted per status in the response hook; done() writes every thread's tally as JSON.
-- wrk calls request() once on the first thread to verify the script, before any connection,
-- and never sends that request: a second request() with nothing answered yet on that thread
-- marks the first as unsent. Any other request() while one is pending means the pending one
-- was lost with its connection.
local clients = {
%(clients)s
}
local method = %(method)s
local keyed = %(keyed)s
local run = %(run)s
local out = %(out)s
local threads = {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("index", #threads)
end

function init(args)
  local client = clients[index]
  path, body, headers = client.path, client.body, {}
  for name, value in pairs(client.headers) do headers[name] = value end
  sent, ok, failed, pending = 0, 0, 0, nil
  statuses, failed_keys, unanswered, unsent = {}, {}, {}, {}
  if not keyed then fixed = wrk.format(method, path, headers, body) end
end

function request()
  if pending ~= nil then
    if index == 1 and sent == 1 and ok + failed == 0 and #unsent == 0 then
      table.insert(unsent, pending)
    else
      table.insert(unanswered, pending)
    end
  end
  sent = sent + 1
  if keyed then
    pending = run .. "-" .. index .. "-" .. sent
    headers["Idempotency-Key"] = pending
    return wrk.format(method, path, headers, body)
  end
  pending = tostring(sent)
  return fixed
end

function response(status, answer_headers, answer_body)
  local code = tostring(status)
  statuses[code] = (statuses[code] or 0) + 1
  if status >= 200 and status < 300 then
    ok = ok + 1
  else
    failed = failed + 1
    if keyed then table.insert(failed_keys, pending) end
  end
  pending = nil
end

local function strings(items)
  local quoted = {}
  for i, item in ipairs(items) do quoted[i] = '"' .. item .. '"' end
  return "[" .. table.concat(quoted, ",") .. "]"
end

function done(summary, latency, requests)
  local tallies = {}
  for i, thread in ipairs(threads) do
    local codes = {}
    for code, count in pairs(thread:get("statuses")) do
      table.insert(codes, string.format('"%%s":%%d', code, count))
    end
    local pending = thread:get("pending")
    tallies[i] = string.format(
      '{"client":%%d,"sent":%%d,"ok":%%d,"failed":%%d,"statuses":{%%s},'
        .. '"failed_keys":%%s,"unanswered":%%s,"in_flight":%%s,"unsent":%%s}',
      thread:get("index"), thread:get("sent"), thread:get("ok"), thread:get("failed"),
      table.concat(codes, ","), strings(thread:get("failed_keys")),
      strings(thread:get("unanswered")), strings(pending and {pending} or {}),
      strings(thread:get("unsent")))
  end
  local errors = summary.errors
  local file = assert(io.open(out, "w"))
  file:write(string.format(
    '{"duration_us":%%.0f,"requests":%%.0f,"socket_errors":%%.0f,'
      .. '"p50_us":%%.3f,"p99_us":%%.3f,"max_us":%%.3f,"tallies":[%%s]}',
    summary.duration, summary.requests, errors.connect + errors.read + errors.write
      + errors.timeout, latency:percentile(50), latency:percentile(99), latency.max,
    table.concat(tallies, ",")))
  file:close()
end
"""


def wrk_script(requests: Sequence[Request], *, run: str, out: Path) -> str:
    """The Lua script that has wrk send ``requests`` (one per thread) and write its tallies as
    JSON to ``out``."""
    entries = []
    for request in requests:
        headers = ", ".join(
            f"[{_lua_string(name)}] = {_lua_string(value)}" for name, value in request.headers
        )
        body = "nil" if request.body is None else _lua_string(request.body)
        entries.append(
            f"  {{path = {_lua_string(request.path)}, body = {body}, headers = {{{headers}}}}},"
        )
    methods = {request.method for request in requests}
    keyed = {request.keyed for request in requests}
    if len(methods) != 1 or len(keyed) != 1:
        raise ValueError("every client of a wrk run sends the same method, keyed or not")
    return LUA_TEMPLATE % {
        "clients": "\n".join(entries),
        "method": _lua_string(methods.pop()),
        "keyed": "true" if keyed.pop() else "false",
        "run": _lua_string(run),
        "out": _lua_string(str(out)),
    }


def wrk_version() -> str | None:
    """``wrk <version>`` when wrk is on the PATH, else None."""
    if shutil.which("wrk") is None:
        return None
    answer = subprocess.run(["wrk", "-v"], capture_output=True, text=True, timeout=30)
    first = (answer.stdout or answer.stderr).strip().splitlines()
    words = first[0].split() if first else []
    return " ".join(words[:2]) if len(words) >= 2 else "wrk"


def install_wrk() -> str | None:
    """wrk's version, installing the Debian package with apt-get first when it is missing and
    this process may (root, apt-get present); None when it is still missing."""
    found = wrk_version()
    if found is not None:
        return found
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        return None
    sys.stderr.write("wrk is missing: apt-get install -y -qq wrk\n")
    install = ["apt-get", "install", "-y", "-qq", "wrk"]
    # The package lists may be stale or absent: update them once if the first try fails.
    for commands in ([install], [["apt-get", "update", "-qq"], install]):
        try:
            for command in commands:
                subprocess.run(command, capture_output=True, timeout=INSTALL_S, check=False)
        except subprocess.TimeoutExpired:
            return None
        found = wrk_version()
        if found is not None:
            return found
    return None


def wrk_run(
    base: str, requests: Sequence[Request], *, run: str, duration_s: float, scratch: Path
) -> RawRun:
    """One closed-loop run of wrk: ``len(requests)`` threads with one connection each."""
    script = scratch / f"{run}.lua"
    out = scratch / f"{run}.json"
    out.unlink(missing_ok=True)
    script.write_text(wrk_script(requests, run=run, out=out))
    clients = len(requests)
    command = [
        "wrk",
        "-t",
        str(clients),
        "-c",
        str(clients),
        "-d",
        f"{max(1, round(duration_s))}s",
        "--timeout",
        f"{REQUEST_TIMEOUT_S:.0f}s",
        "--latency",
        "-s",
        str(script),
        base + requests[0].path,
    ]
    answer = subprocess.run(
        command, capture_output=True, text=True, timeout=duration_s + WRK_SLACK_S
    )
    if answer.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({answer.returncode}): {answer.stderr or answer.stdout}")
    data = json.loads(out.read_text())
    tallies = tuple(
        ClientTally(
            client=int(item["client"]),
            sent=int(item["sent"]),
            ok=int(item["ok"]),
            failed=int(item["failed"]),
            statuses={str(k): int(v) for k, v in item["statuses"].items()},
            failed_keys=[str(k) for k in item["failed_keys"]],
            unanswered=[str(k) for k in item["unanswered"]],
            in_flight=[str(k) for k in item["in_flight"]],
            unsent=[str(k) for k in item["unsent"]],
        )
        for item in data["tallies"]
    )
    counted = sum(t.ok + t.failed for t in tallies)
    if counted != int(data["requests"]):
        raise RuntimeError(f"wrk counted {data['requests']} answers, the script {counted}")
    return RawRun(
        elapsed_s=float(data["duration_us"]) / 1e6,
        p50_ms=float(data["p50_us"]) / 1000,
        p99_ms=float(data["p99_us"]) / 1000,
        max_ms=float(data["max_us"]) / 1000,
        tallies=tuple(sorted(tallies, key=lambda t: t.client)),
        socket_errors=int(data["socket_errors"]),
    )


# --- the withdrawal check ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WithdrawalCheck:
    """Withdrawal requests against the records they left (see the module docstring)."""

    sent: int  # requests made, each with its own key (wrk's unsent one included)
    answered_ok: int  # 2xx answers, the resent unanswered ones included
    answered_failed: int
    resent: int  # unanswered in their run (see ClientTally.unsettled), sent again with their key
    resent_booked_before: int  # of those, answered 200: the first request had been booked
    recorded: int  # withdrawal records with one of the runs' keys
    missing: int  # answered 2xx, not recorded
    unexpected: int  # recorded, not answered 2xx
    books_balance: bool

    @property
    def exact(self) -> bool:
        return self.missing == 0 and self.unexpected == 0 and self.recorded == self.answered_ok


def resend(base: str, exchange: Exchange, key: str) -> int:
    """Send the withdrawal request of ``key`` (``<run>-<client>-<n>``) again; its status."""
    client_index = int(key.rsplit("-", 2)[1])
    request = requests_for("withdrawal", exchange)[client_index - 1]
    headers = {**dict(request.headers), "Idempotency-Key": key}
    with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT_S) as client:
        answer = client.post(request.path, content=request.body, headers=headers)
    return answer.status_code


def check_withdrawals(
    base: str, exchange: Exchange, runs: Sequence[tuple[str, RawRun]]
) -> WithdrawalCheck:
    """Settle the requests left unanswered by ``runs`` (run name, what it measured) by sending
    them again, then compare the keys answered 2xx with the withdrawal records, and check the
    books."""
    expected: set[str] = set()
    sent = failed = resent = booked_before = 0
    for run, raw in runs:
        for tally in raw.tallies:
            sent += tally.sent
            keys = {idempotency_key(run, tally.client, n) for n in range(1, tally.sent + 1)}
            keys -= set(tally.failed_keys)
            failed += len(tally.failed_keys)
            for key in tally.unsettled:
                resent += 1
                status = resend(base, exchange, key)
                booked_before += status == 200
                if not 200 <= status < 300:
                    keys.discard(key)
                    failed += 1
            expected |= keys
    table = tables.withdrawals
    database = bootstrap.database(exchange.url)
    try:
        with database.engine.connect() as connection:
            rows = connection.execute(
                sa.select(table.c.idempotency_key).where(
                    table.c.kind == "withdrawal",
                    sa.or_(*(table.c.idempotency_key.like(f"{run}-%") for run, _raw in runs)),
                )
            )
            recorded = [str(row[0]) for row in rows]
        books = check_invariant(database.uow).holds
    finally:
        database.dispose()
    found = set(recorded)
    return WithdrawalCheck(
        sent=sent,
        answered_ok=len(expected),
        answered_failed=failed,
        resent=resent,
        resent_booked_before=booked_before,
        recorded=len(recorded),
        missing=len(expected - found),
        unexpected=len(found - expected) + (len(recorded) - len(found)),
        books_balance=books,
    )


# --- the whole benchmark -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiBenchSettings:
    url: str = DEFAULT_DB
    clients: int = CLIENTS
    duration_s: float = DURATION_S
    warmup_s: float = WARMUP_S
    paced_rate: float | None = PACED_RATE
    worker_counts: tuple[int, ...] = WORKER_COUNTS
    tool: str = "auto"  # auto (wrk when it can be had) | wrk | python


@dataclass(frozen=True, slots=True)
class WorkersResult:
    workers: int
    runs: tuple[LoadRun, ...]
    withdrawals: WithdrawalCheck

    def run(self, scenario: str, mode: str = "closed") -> LoadRun | None:
        return next((r for r in self.runs if r.scenario == scenario and r.mode == mode), None)


@dataclass(frozen=True, slots=True)
class ApiBenchReport:
    db: str
    tool: str
    server: str  # see server_stack
    clients: int
    duration_s: float
    warmup_s: float
    paced_rate: float | None
    results: tuple[WorkersResult, ...]

    def target_met(self) -> bool:
        return any(_read_target_met(result, self.paced_rate) for result in self.results)

    @property
    def books_balance(self) -> bool:
        return all(result.withdrawals.books_balance for result in self.results)

    @property
    def withdrawals_exact(self) -> bool:
        return all(result.withdrawals.exact for result in self.results)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["target_met"] = self.target_met()
        data["books_balance"] = self.books_balance
        data["withdrawals_exact"] = self.withdrawals_exact
        return data


def _read_target_met(result: WorkersResult, paced_rate: float | None) -> bool:
    closed = result.run("balance")
    if closed is None or closed.errors or closed.requests_per_s < READS_PER_S_TARGET:
        return False
    paced = result.run("balance", "paced")
    if paced is not None and paced_rate is not None and paced_rate >= READS_PER_S_TARGET:
        return paced.errors == 0 and paced.p99_ms < READ_P99_TARGET_MS
    return closed.p99_ms < READ_P99_TARGET_MS


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def choose_tool(tool: str) -> str:
    """The load generator to use: ``wrk <version>`` or ``python``."""
    if tool == "python":
        return "python"
    found = install_wrk() if tool == "auto" else wrk_version()
    if found is not None:
        return found
    if tool == "wrk":
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    return "python"


def measure_workers(
    exchange: Exchange, workers: int, settings: ApiBenchSettings, tool: str, scratch: Path
) -> WorkersResult:
    """Every run against one server with ``workers`` processes, then the withdrawal check."""
    runs: list[LoadRun] = []
    withdrawal_runs: list[tuple[str, RawRun]] = []
    log = scratch / f"server-{workers}.log"
    with api_server(exchange, workers, log) as base:

        def closed(scenario: str, run: str, duration_s: float) -> RawRun:
            requests = requests_for(scenario, exchange)
            if tool == "python":
                return python_run(base, requests, run=run, duration_s=duration_s)
            return wrk_run(base, requests, run=run, duration_s=duration_s, scratch=scratch)

        for scenario in SCENARIOS:
            name = f"api-w{workers}-{scenario}"
            if settings.warmup_s > 0:
                warm = closed(scenario, f"{name}-warmup", settings.warmup_s)
                if scenario == "withdrawal":
                    withdrawal_runs.append((f"{name}-warmup", warm))
            raw = closed(scenario, name, settings.duration_s)
            if scenario == "withdrawal":
                withdrawal_runs.append((name, raw))
            runs.append(
                load_run(
                    raw,
                    workers=workers,
                    scenario=scenario,
                    mode="closed",
                    tool=tool,
                    load_1m=_load(),
                )
            )
            if scenario == "balance" and settings.paced_rate is not None:
                paced = python_run(
                    base,
                    requests_for("balance", exchange),
                    run=f"{name}-paced",
                    duration_s=settings.duration_s,
                    rate=settings.paced_rate,
                )
                runs.append(
                    load_run(
                        paced,
                        workers=workers,
                        scenario="balance",
                        mode="paced",
                        tool="python",
                        offered_per_s=settings.paced_rate,
                        load_1m=_load(),
                    )
                )
        check = check_withdrawals(base, exchange, withdrawal_runs)
    return WorkersResult(workers=workers, runs=tuple(runs), withdrawals=check)


def measure(settings: ApiBenchSettings, *, scratch: Path | None = None) -> ApiBenchReport:
    """The whole benchmark (see the module docstring); ``scratch`` keeps wrk's scripts and the
    server's log (a temporary folder when not given)."""
    if settings.clients < 1 or settings.duration_s <= 0 or settings.warmup_s < 0:
        raise ValueError("clients ≥ 1, duration > 0 and warm-up ≥ 0 are required")
    tool = choose_tool(settings.tool)
    with _scratch(scratch) as folder:
        results = []
        for workers in settings.worker_counts:
            exchange = prepare_exchange(settings.url, settings.clients)
            results.append(measure_workers(exchange, workers, settings, tool, folder))
    return ApiBenchReport(
        db=sa.engine.make_url(settings.url).get_backend_name(),
        tool=tool,
        server=server_stack(),
        clients=settings.clients,
        duration_s=settings.duration_s,
        warmup_s=settings.warmup_s,
        paced_rate=settings.paced_rate,
        results=tuple(results),
    )


@contextmanager
def _scratch(given: Path | None) -> Iterator[Path]:
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="sluice-bench-api-") as folder:
        yield Path(folder)


# --- recording -----------------------------------------------------------------------------------


_DATED_ROW = re.compile(r"^\| \d{4}-\d{2}-\d{2} \|")


def _figure(run: LoadRun | None) -> str:
    if run is None:
        return "—"
    return f"{run.requests_per_s:,.0f} ({run.p50_ms:.1f} / {run.p99_ms:.1f})"


def _target(met: bool) -> str:
    return f"≥ {READS_PER_S_TARGET:,.0f} reads/s with p99 < {READ_P99_TARGET_MS:.0f} ms: " + (
        "met" if met else "NOT met"
    )


def _details(report: ApiBenchReport) -> str:
    lines = [
        "\n### Latest run\n\n",
        f"{report.clients} clients, {report.duration_s:g} s per run after {report.warmup_s:g} s "
        f"of warm-up; closed loop with {report.tool}",
        (
            f", paced balance reads at {report.paced_rate:,.0f}/s with the Python generator.\n\n"
            if report.paced_rate is not None
            else ".\n\n"
        ),
        "| workers | request | pace | answered | 2xx | other statuses | lost | in flight at end "
        "| socket errors | req/s | p50 ms | p99 ms | max ms | load |\n",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    ]
    for result in report.results:
        for run in result.runs:
            others = ", ".join(
                f"{code} ×{count}" for code, count in run.statuses.items() if code[0] != "2"
            )
            load = (
                f"paced {run.offered_per_s:,.0f}/s ({run.tool})"
                if run.mode == "paced" and run.offered_per_s is not None
                else f"closed ({run.tool})"
            )
            lines.append(
                f"| {run.workers} | {run.scenario} | {load} | {run.answered} | {run.ok} "
                f"| {others or 'none'} | {run.lost} | {run.in_flight} | {run.socket_errors} "
                f"| {run.requests_per_s:,.1f} | {run.p50_ms} | {run.p99_ms} | {run.max_ms} "
                f"| {run.load_1m if run.load_1m is not None else '—'} |\n"
            )
    lines.append("\n")
    for result in report.results:
        check = result.withdrawals
        lines.append(
            f"* {result.workers} worker(s): {check.sent} withdrawal requests (warm-up included), "
            f"{check.answered_ok} answered 2xx, {check.answered_failed} refused, "
            f"{check.resent} left without an answer (in flight when a run stopped, or lost) "
            f"sent again with their key ({check.resent_booked_before} had been booked); "
            f"{check.recorded} withdrawals recorded — {check.missing} missing, "
            f"{check.unexpected} unexpected; books "
            f"{'balance' if check.books_balance else 'BROKEN'}.\n"
        )
    return "".join(lines)


def record_api_report(report: ApiBenchReport, path: Path, *, command: str) -> None:
    """Add a row per worker count to the table of the "HTTP API" section of ``path`` (created
    the first time, at the end) and rewrite the "Latest run" details under it; any other prose
    in the section (after the details) and the rest of the file are kept."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head, found, tail = text.partition(SECTION)
    rows: list[str] = []
    prose = ""
    rest = ""
    if found:
        section, separator, after = tail.partition("\n## ")
        rest = separator + after if separator else ""
        rows = [line + "\n" for line in section.splitlines() if _DATED_ROW.match(line)]
        # Prose written under the details is kept: it starts at the first "### " heading that
        # is not the details' own.
        for marker in section.split("\n### ")[1:]:
            if not marker.startswith("Latest run"):
                prose += "\n### " + marker
        prose = prose.rstrip("\n") + "\n" if prose else ""
    else:
        head = text.rstrip("\n") + "\n\n"
    stamp = f"{datetime.now(UTC):%Y-%m-%d}"
    where = f"{machine()}, load {os.getloadavg()[0]:.1f}"
    for result in report.results:
        check = result.withdrawals
        errors = sum(run.errors for run in result.runs)
        rows.append(
            f"| {stamp} | {where} | {report.db} | {report.clients} clients, {report.tool} "
            f"| {report.server} × {result.workers} | {_figure(result.run('health'))} "
            f"| {_figure(result.run('balance'))} | {_figure(result.run('balance', 'paced'))} "
            f"| {_figure(result.run('withdrawal'))} | {errors} "
            f"| {check.recorded} / {check.answered_ok}"
            f"{'' if check.exact else ' MISMATCH'} "
            f"| {'balance' if check.books_balance else 'BROKEN'} "
            f"| {_target(_read_target_met(result, report.paced_rate))} "
            f"| `{command}` |\n"
        )
    body = f"{SECTION}\n\n{HEADER}{''.join(rows)}{_details(report)}{prose}"
    path.write_text(head + body + ("\n" + rest.lstrip("\n") if rest else ""))


def bench_command(settings: ApiBenchSettings, record: Path | None) -> ApiBenchReport:
    """``sluice bench api``: measure, print the figures as JSON, record them when asked."""
    report = measure(settings)
    sys.stdout.write(json.dumps(report.as_dict(), default=str) + "\n")
    if record is not None:
        command = " ".join(["sluice", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None
        record_api_report(report, record, command=command or "sluice bench api")
    return report
