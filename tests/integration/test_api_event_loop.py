"""The event loop every request shares never waits on the database.

How: the real application around a sandbox exchange (``tests.api_support.api_world``, on SQLite
and PostgreSQL), served through its lifespan, with the context's unit-of-work factory wrapped so
that it records every unit of work opened *on the event loop's thread* (a running loop in the
calling thread); the key verifier and the settings are rebuilt on that factory, once with their
caches off (every request looks its key and the settings up) and once with them on.

Covers: authentication with a key that must be looked up, a wrong key, a malformed header,
rate-limit refusals (and the audit record of the first), permission refusals, the balance read
(on the event loop on PostgreSQL, on a worker thread on SQLite), another customer's 404, a
withdrawal request and the staff reads open no unit of work on the loop; the refusals and the
audit record are still there.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Callable
from decimal import Decimal

import pytest

from sluice.ports import UnitOfWork
from sluice.services.access import ApiKeyVerifier
from sluice.services.settings import RuntimeSettings
from tests.api_support import UNLIMITED, ApiWorld, api_world
from tests.integration.test_withdrawals import fund


def watch_the_loop(world: ApiWorld, *, ttl_s: float) -> list[str]:
    """Record (as stacks) every unit of work opened on an event loop's thread."""
    on_loop: list[str] = []
    inner: Callable[[], UnitOfWork] = world.context.uow

    def uow() -> UnitOfWork:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass  # a worker thread: fine
        else:
            on_loop.append("".join(traceback.format_stack(limit=8)))
        return inner()

    limits = {
        **UNLIMITED,
        "rate_limits.key_per_s": 0.01,
        "rate_limits.key_burst": 3,
    }
    world.context.uow = uow
    world.context.keys = ApiKeyVerifier(uow, ttl_s=ttl_s)
    world.context.settings = RuntimeSettings(
        uow,
        limits,
        clock=world.context.clock,
        ttl_s=ttl_s,
    )
    return on_loop


@pytest.mark.parametrize("ttl_s", [0.0, 60.0], ids=["caches off", "caches on"])
def test_no_request_opens_a_unit_of_work_on_the_event_loop(database_url: str, ttl_s: float) -> None:
    world = api_world(database_url)
    try:
        fund(world.sandbox, "cust-0", "40")
        on_loop = watch_the_loop(world, ttl_s=ttl_s)
        user = world.headers("user")
        officer = world.headers("compliance_officer")
        with world.client() as client:
            statuses = {
                "balance": client.get("/v1/customers/cust-0/balances", headers=user).status_code,
                "other customer": client.get(
                    "/v1/customers/cust-1/balances", headers=user
                ).status_code,
                "unknown customer": client.get(
                    "/v1/customers/nobody/balances", headers=officer
                ).status_code,
                "withdrawal": client.post(
                    "/v1/customers/cust-0/withdrawals",
                    json={
                        "instrument": {
                            "admin": world.sandbox.coin.admin,
                            "id": world.sandbox.coin.id,
                        },
                        "amount": "1.5",
                        "receiver": world.sandbox.customers["cust-0"],
                    },
                    headers={**user, "Idempotency-Key": "loop-1"},
                ).status_code,
                "staff list": client.get("/v1/customers", headers=officer).status_code,
                "not allowed": client.post(
                    "/v1/system/pause", headers=world.headers("operator"), json={}
                ).status_code,
                "wrong key": client.get(
                    "/v1/customers/cust-0/balances",
                    headers={"X-API-Key": world.keys["user"][:-4] + "AAAA"},
                ).status_code,
                "malformed": client.get(
                    "/v1/instruments", headers={"Authorization": "Basic x"}
                ).status_code,
            }
            # The user's bucket (burst 3, nearly no refill) is spent by now: refused, audited.
            flood = [
                client.get("/v1/customers/cust-0/balances", headers=user).status_code
                for _ in range(3)
            ]
        assert statuses == {
            "balance": 200,
            "other customer": 404,
            "unknown customer": 404,
            "withdrawal": 201,
            "staff list": 200,
            "not allowed": 403,
            "wrong key": 401,
            "malformed": 401,
        }
        assert flood == [429, 429, 429]
        with world.context.uow() as uow:
            records = uow.audit.records(limit=1000)
        refusals = [r for r in records if r.entry.operation == "rate_limited"]
        assert [r.entry.actor for r in refusals] == [f"key:{world.keys['user'].split('_')[1]}"]
        assert on_loop == [], on_loop[0]
        assert world.sandbox.database.uow  # the exchange is intact
        with world.context.uow() as uow:
            assert uow.accounts.customer_balances("cust-0")[world.sandbox.coin] == Decimal("38.5")
    finally:
        world.sandbox.close()
