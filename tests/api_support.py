"""Test support for the HTTP API: an ApiContext around a sandbox exchange, a key per role, and a
live uvicorn server on a free port for tests that need real concurrency.

The application is the real one (``create_app``) with the real services and database; only the
world around the exchange (customers' wallets, the token admins, the ledger clock) is the
sandbox's embedded ledger.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime

import httpx
import uvicorn
from fastapi import FastAPI
from fastapi.testclient import TestClient

from sluice.api.app import create_app
from sluice.api.context import ApiContext
from sluice.domain.access import ROLES
from sluice.sandbox import Sandbox
from sluice.services.access import ApiKeyVerifier, create_api_key
from sluice.services.settings import RuntimeSettings

# Generous limits so tests that are not about rate limits never meet them.
UNLIMITED = {
    "rate_limits.key_per_s": 100_000.0,
    "rate_limits.key_burst": 100_000,
    "rate_limits.global_per_s": 1_000_000.0,
    "rate_limits.global_burst": 1_000_000,
}


@dataclass
class ApiWorld:
    sandbox: Sandbox
    context: ApiContext
    app: FastAPI
    keys: dict[str, str] = field(default_factory=dict)  # role (or "user:<customer>") → key

    def client(self) -> TestClient:
        return TestClient(self.app, raise_server_exceptions=False)

    def headers(self, who: str | None) -> dict[str, str]:
        return {} if who is None else {"X-API-Key": self.keys[who]}

    def add_key(self, name: str, role: str, customer_id: str | None = None) -> str:
        _record, key = create_api_key(
            self.context.uow,
            role=role,
            customer_id=customer_id,
            label=name,
            actor="test",
            at=self.sandbox.clock(),
        )
        self.keys[name] = key
        return key


def api_world(
    database_url: str,
    *,
    customers: int = 3,
    settings: Mapping[str, object] | None = None,
    clock: object | None = None,
) -> ApiWorld:
    """A sandbox exchange with the API around it and one key per role (users: ``user`` acts for
    cust-0, ``user:cust-1`` for cust-1)."""
    sandbox = Sandbox.create(database_url, customers=customers)
    uow = sandbox.database.uow
    now = clock if clock is not None else sandbox.clock
    runtime = RuntimeSettings(
        uow,
        {**UNLIMITED, **(settings or {})},
        clock=now,  # type: ignore[arg-type]
        ttl_s=0.0,
    )
    context = ApiContext(
        uow=uow,
        treasury=sandbox.treasury,
        clock=now,  # type: ignore[arg-type]
        compliance=sandbox.compliance,
        settings=runtime,
        keys=ApiKeyVerifier(uow, ttl_s=0.0),
        registries=sandbox.registries,
        withdrawal_settings=sandbox.withdrawal_settings,
        reads=sandbox.database.async_reads(),
    )
    world = ApiWorld(sandbox=sandbox, context=context, app=create_app(context))
    for role in ROLES:
        if role == "user":
            world.add_key("user", "user", "cust-0")
            if customers > 1:
                world.add_key("user:cust-1", "user", "cust-1")
        else:
            world.add_key(role, role)
            world.add_key(f"{role}:2", role)
    return world


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def live_server(app: FastAPI, *, workers_max: int = 64) -> Iterator[str]:
    """Serve ``app`` with uvicorn in a thread; yields its base URL."""
    import anyio.to_thread

    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    async def raise_thread_limit() -> None:
        anyio.to_thread.current_default_thread_limiter().total_tokens = workers_max

    def run() -> None:
        import asyncio

        async def main() -> None:
            await raise_thread_limit()
            await server.serve()

        asyncio.run(main())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.05)
    else:
        raise RuntimeError("the API server did not start within 20 s")
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=20)


class ManualClock:
    """A clock tests move by hand (time locks)."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now
