"""Concurrency over real HTTP: 100 withdrawal requests at once against one balance on
PostgreSQL never overdraw it, and a bearer JWT from an OIDC provider authenticates like a key.

How: the application runs in uvicorn on a local port (threads serve requests in parallel, as in
production); 100 client threads, released together by a barrier, each ask to withdraw 15 CC from a
customer who has 1,000. At most 66 can succeed; every other answer must be a clean 422 with code
62 (insufficient balance). Afterwards the customer's balance is exactly 1,000 − 15 × successes,
never negative, the DB holds exactly that many withdrawals, and the books balance.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from sluice.api.oidc import JwtVerifier, OidcSettings
from sluice.services.books import check_invariant
from tests.api_support import ApiWorld, api_world, live_server

REQUESTS = 100
AMOUNT = Decimal(15)
FUNDS = Decimal(1000)


@pytest.fixture
def pg_world(postgres_url: str) -> Iterator[ApiWorld]:
    built = api_world(postgres_url, customers=2)
    yield built
    built.sandbox.close()


@pytest.mark.postgres
def test_a_hundred_concurrent_withdrawal_requests_never_overdraw_one_balance(
    pg_world: ApiWorld,
) -> None:
    world = pg_world
    world.sandbox.deposit("cust-0", FUNDS)
    world.sandbox.ingest()
    body = {
        "receiver": world.sandbox.customers["cust-0"],
        "instrument": {"admin": world.sandbox.coin.admin, "id": world.sandbox.coin.id},
        "amount": str(AMOUNT),
    }
    barrier = threading.Barrier(REQUESTS)
    answers: list[tuple[int, dict[str, object]]] = []
    lock = threading.Lock()

    with live_server(world.app, workers_max=REQUESTS) as base:

        def request(n: int) -> None:
            with httpx.Client(base_url=base, timeout=60) as client:
                barrier.wait()
                answer = client.post(
                    "/v1/customers/cust-0/withdrawals",
                    json=body,
                    headers={**world.headers("user"), "Idempotency-Key": f"race-{n}"},
                )
            with lock:
                answers.append((answer.status_code, answer.json()))

        threads = [threading.Thread(target=request, args=(n,)) for n in range(REQUESTS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=120)
        assert time.monotonic() - started < 120
    assert len(answers) == REQUESTS
    statuses = sorted({status for status, _ in answers})
    assert set(statuses) <= {201, 422}, answers
    refused = [body for status, body in answers if status == 422]
    assert all(body["code"] == 62 for body in refused), refused
    accepted = sum(1 for status, _ in answers if status == 201)
    assert accepted == int(FUNDS // AMOUNT)  # 66: every request that fit was served
    with world.context.uow() as uow:
        balances = uow.accounts.customer_balances("cust-0")
        recorded = uow.accounts.customer_withdrawals("cust-0", limit=1000)
    left = balances[world.sandbox.coin]
    assert left == FUNDS - AMOUNT * accepted and left >= 0
    assert len(recorded) == accepted
    assert check_invariant(world.sandbox.database.uow).holds


def _jwks(tmp_path: Path) -> tuple[rsa.RSAPrivateKey, Path]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    public.update({"kid": "test-key", "use": "sig", "alg": "RS256"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps({"keys": [public]}))
    return key, path


def test_a_bearer_jwt_from_the_oidc_provider_authenticates_with_its_role_and_customer(
    sqlite_url: str, tmp_path: Path
) -> None:
    world = api_world(sqlite_url, customers=2)
    try:
        key, jwks = _jwks(tmp_path)
        world.context.jwt = JwtVerifier(
            OidcSettings(issuer="https://idp.example", audience="sluice", jwks_file=jwks)
        )
        now = int(time.time())

        def token(**claims: object) -> str:
            payload = {
                "iss": "https://idp.example",
                "aud": "sluice",
                "sub": "alice",
                "iat": now,
                "exp": now + 300,
                **claims,
            }
            return jwt.encode(payload, key, algorithm="RS256", headers={"kid": "test-key"})

        client = world.client()
        user = {"Authorization": f"Bearer {token(sluice_role='user', sluice_customer='cust-1')}"}
        assert client.get("/v1/customers/cust-1/balances", headers=user).status_code == 200
        assert client.get("/v1/customers/cust-0/balances", headers=user).status_code == 404
        assert client.get("/v1/withdrawals", headers=user).status_code == 403
        officer = {"Authorization": f"Bearer {token(sluice_role='compliance_officer')}"}
        assert client.get("/v1/compliance/holds", headers=officer).status_code == 200
        expired = {"Authorization": f"Bearer {token(sluice_role='operator', exp=now - 100)}"}
        answer = client.get("/v1/withdrawals", headers=expired)
        assert (answer.status_code, answer.json()["code"]) == (401, 1)
        wrong = {"Authorization": f"Bearer {token(sluice_role='operator', aud='other')}"}
        assert client.get("/v1/withdrawals", headers=wrong).status_code == 401
        garbage = client.get("/v1/withdrawals", headers={"Authorization": "Bearer x.y.z"})
        assert garbage.status_code == 401
        basic = client.get("/v1/withdrawals", headers={"Authorization": "Basic abc"})
        assert basic.status_code == 401
    finally:
        world.sandbox.close()
