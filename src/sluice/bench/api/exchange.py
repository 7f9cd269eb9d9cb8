"""The exchange under load and the API server over it.

:func:`prepare_exchange` builds the benchmark's exchange in an emptied database;
:func:`api_server` serves the real application over it in spawned processes, configured as
``sluice serve`` has it (see :mod:`sluice.bench.api`).
"""

from __future__ import annotations

import importlib.util
import multiprocessing
import os
import queue
import socket
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import uvicorn

from sluice import bootstrap
from sluice.api.app import create_app
from sluice.api.context import ApiContext
from sluice.bench.measure import reset_database
from sluice.domain.ledger import InstrumentId
from sluice.ledger.local import EmbeddedLedger
from sluice.sandbox import Sandbox, sandbox_registry
from sluice.server import configure_logging, url_of
from sluice.services.access import ApiKeyVerifier, create_api_key
from sluice.services.compliance_officer import change_tier
from sluice.services.settings import RuntimeSettings
from sluice.services.withdrawals import WithdrawalSettings

from .settings import (
    ACTOR,
    CLIENTS,
    DEPOSIT,
    LISTEN_BACKLOG,
    RATE_LIMITS_OFF,
    SERVER_START_S,
    SERVER_STOP_S,
    TIER,
)

if TYPE_CHECKING:
    from multiprocessing.queues import Queue


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
