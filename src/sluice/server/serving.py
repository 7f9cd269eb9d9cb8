"""Serving: logging, the listening socket, the signals, and :func:`serve`, which runs the HTTP
API beside the service loop until SIGTERM or Ctrl-C.
"""

from __future__ import annotations

import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import uvicorn

from sluice.api.app import create_app
from sluice.config import DeploymentConfig
from sluice.domain.errors import InvalidInputError
from sluice.server.wiring import Service, build_service
from sluice.services.withdrawals import WithdrawalSettings

log = structlog.get_logger("sluice.server")

FIRST_KEY_HINT = (
    "no API keys yet: create the first one with `sluice admin create-api-key --role super_admin`"
)


def configure_logging() -> None:
    """Log lines (structlog) to stderr, unless the application configured logging already."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one), so that a taken port fails before anything
    starts and the real port is known."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInputError(f"cannot resolve --host {host!r}: {exc}") from exc
    family = infos[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@contextmanager
def _signals(stopping: threading.Event, forcing: threading.Event) -> Iterator[None]:
    """SIGINT / SIGTERM: the first asks for a graceful stop, the second cuts the wait short."""

    def handle(_signum: int, _frame: FrameType | None) -> None:
        # Only flags here: the main thread logs and acts once it wakes up.
        if stopping.is_set():
            forcing.set()
        stopping.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for handled in (signal.SIGINT, signal.SIGTERM):
            previous[handled] = signal.signal(handled, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def serve(
    config: DeploymentConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    interval_s: float = 1.0,
    database_url: str | None = None,
    ledger_path: Path | None = None,
    ledger_url: str | None = None,
    withdrawal_settings: WithdrawalSettings | None = None,
    graceful_s: float = 10.0,
    stop: threading.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> bool:
    """Run the API, the workers and ingestion until SIGINT / SIGTERM (or ``stop`` is set).

    Returns True when everything stopped cleanly: the HTTP server finished its requests and the
    service loop its round, and the ledger and DB were closed."""
    configure_logging()
    sock = bind(host or config.api.host, config.api.port if port is None else port)
    try:
        service = build_service(
            config,
            database_url=database_url,
            ledger_path=ledger_path,
            ledger_url=ledger_url,
            interval_s=interval_s,
            withdrawal_settings=withdrawal_settings,
        )
    except BaseException:
        sock.close()
        raise
    stopping = stop or threading.Event()
    forcing = threading.Event()
    try:
        app = create_app(service.context)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                lifespan="auto",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=max(1, int(graceful_s)),
            )
        )
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="sluice-http", daemon=True
        )
        with _signals(stopping, forcing):
            service.start()
            thread.start()
            url = url_of(sock)
            while not server.started and thread.is_alive() and not stopping.is_set():
                stopping.wait(0.01)
            if server.started:
                _announce(service, url)
                if on_ready is not None:
                    on_ready(url)
            while not stopping.is_set():
                if not thread.is_alive():
                    log.error("the HTTP server stopped on its own; shutting down")
                    break
                if not service.alive:
                    log.error("the service loop stopped on its own; shutting down")
                    break
                stopping.wait(0.5)
            clean = thread.is_alive() and service.alive
            log.info("stopping: HTTP requests in progress finish, then the service loop's round")
            server.should_exit = True
            deadline = time.monotonic() + graceful_s + 5
            while thread.is_alive() and time.monotonic() < deadline:
                if forcing.is_set():
                    server.force_exit = True
                thread.join(0.1)
            if thread.is_alive():
                server.force_exit = True
                thread.join(5)
                clean = False
            log.info("HTTP server stopped")
    finally:
        loop_stopped = service.close(timeout_s=graceful_s + 20)
        sock.close()
    clean = clean and loop_stopped
    log.info("sluice stopped", clean=clean)
    return clean


def _announce(service: Service, url: str) -> None:
    log.info(
        "sluice serving",
        url=url,
        openapi=f"{url}/openapi.json",
        database=service.database_description,
        ledger=service.link.description,
        treasury=service.treasury,
        interval_s=service.loop.interval_s,
    )
    if service.bitcoin is not None:
        log.info(
            "bitcoin custody: deposit watcher and payouts beside the service loop",
            custody=service.bitcoin.description,
        )
    if service.issuance is not None:
        log.info(
            "iSTSi issuance: router and KYC hold worker", issuance=service.issuance.description
        )
    if service.world is not None and service.world.created:
        log.info("embedded ledger created with Amulet and USDX", ledger=str(service.world.path))
    if not service.has_api_keys():
        log.info(FIRST_KEY_HINT)
