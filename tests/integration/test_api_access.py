"""The access matrix of DESIGN §10, walked over every endpoint of the HTTP API.

How: every route the application publishes is called once with no credentials and once with an
API key of every role. The roles each endpoint must admit are written out here, endpoint by
endpoint, from the matrix (router admin, component updates, emergency pause, user operations —
users on their own customer only — and compliance override); the test fails if an endpoint is
missing from this table, if the permission it declares admits other roles than the table says,
or if the answer disagrees: refused principals get 401 (code 1) without credentials and 403
(code 2) with them; admitted ones never get either. Every answer carries a correlation id, and
every error answer the JSON body ``{code, error, message, details, correlation_id}``.

A second test checks that a user reaches nothing of another customer (404, as if it did not
exist) while reaching their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.routing import APIRoute

from sluice import bootstrap
from sluice.api.app import ROUTERS
from sluice.config import DeploymentConfig
from sluice.domain.access import ROLES, Permission, roles_admitted
from sluice.domain.exchange import ExchangeSettings
from sluice.services.exchange import ExchangeContext
from sluice.services.reserves_settings import ReservesContext
from tests.api_support import ApiWorld, api_world
from tests.integration.issuance_api_support import add_issuance, custody_wallet

ALL = frozenset(ROLES)
STAFF = ALL - {"user"}
S, Y, C, OP, U = "super_admin", "system_admin", "compliance_officer", "operator", "user"

# The expected roles per endpoint, from DESIGN §10's matrix ("public" = no credentials needed).
EXPECTED: dict[tuple[str, str], frozenset[str] | str] = {
    ("GET", "/health"): "public",
    ("GET", "/ready"): "public",
    ("GET", "/v1/system/status"): ALL,
    ("POST", "/v1/system/pause"): frozenset({S, Y, C}),
    ("POST", "/v1/system/resume"): frozenset({S, Y, C}),
    ("GET", "/v1/books/check"): STAFF,
    ("POST", "/v1/customers"): frozenset({S, Y, OP}),
    ("GET", "/v1/customers"): STAFF,
    ("GET", "/v1/customers/{customer_id}"): ALL,
    ("POST", "/v1/customers/{customer_id}/kyc"): frozenset({S, C}),
    ("GET", "/v1/customers/{customer_id}/balances"): ALL,
    ("GET", "/v1/customers/{customer_id}/deposit-instructions"): frozenset({S, Y, OP, U}),
    ("GET", "/v1/customers/{customer_id}/history"): ALL,
    ("GET", "/v1/customers/{customer_id}/withdrawals"): ALL,
    ("POST", "/v1/customers/{customer_id}/withdrawals"): frozenset({S, Y, OP, U}),
    ("GET", "/v1/withdrawals"): STAFF,
    ("GET", "/v1/withdrawals/{withdrawal_id}"): ALL,
    ("POST", "/v1/withdrawals/{withdrawal_id}/cancel"): frozenset({S, Y, OP, U}),
    ("GET", "/v1/instruments"): ALL,
    ("POST", "/v1/instruments"): frozenset({S}),
    ("POST", "/v1/instruments/enable"): frozenset({S}),
    ("POST", "/v1/instruments/disable"): frozenset({S}),
    ("GET", "/v1/compliance/holds"): frozenset({S, C}),
    ("POST", "/v1/compliance/holds/{hold_id}/release"): frozenset({S, C}),
    ("POST", "/v1/compliance/holds/{hold_id}/return"): frozenset({S, C}),
    ("GET", "/v1/compliance/reviews"): frozenset({S, C}),
    ("POST", "/v1/compliance/reviews/{review_id}/close"): frozenset({S, C}),
    ("GET", "/v1/compliance/limits"): frozenset({S, C}),
    ("PUT", "/v1/compliance/limits"): frozenset({S, C}),
    ("GET", "/v1/compliance/flagged-addresses"): frozenset({S, C}),
    ("POST", "/v1/compliance/flagged-addresses"): frozenset({S, C}),
    ("POST", "/v1/compliance/flagged-addresses/unflag"): frozenset({S, C}),
    ("POST", "/v1/compliance/check"): STAFF,
    ("POST", "/v1/compliance/screen"): frozenset({S, C}),
    ("GET", "/v1/suspense"): frozenset({S, Y, OP}),
    ("POST", "/v1/suspense/{item_id}/assign"): frozenset({S, Y, OP}),
    ("GET", "/v1/approvals"): ALL,
    ("GET", "/v1/approvals/{approval_id}"): ALL,
    ("POST", "/v1/approvals/{approval_id}/approve"): STAFF,
    ("POST", "/v1/approvals/{approval_id}/reject"): STAFF,
    ("POST", "/v1/approvals/{approval_id}/cancel"): ALL,
    ("GET", "/v1/config"): frozenset({S, Y}),
    ("POST", "/v1/config/changes"): frozenset({S, Y}),
    ("GET", "/v1/api-keys"): frozenset({S, Y}),
    ("POST", "/v1/api-keys"): frozenset({S, Y}),
    ("POST", "/v1/api-keys/{key_id}/revoke"): frozenset({S, Y}),
    ("GET", "/v1/audit"): frozenset({S, Y, C}),
    ("GET", "/v1/audit/verify"): frozenset({S, Y, C}),
    # iSTSi issuance
    ("GET", "/v1/customers/{customer_id}/istsi/deposit-address"): frozenset({S, Y, OP, U}),
    ("GET", "/v1/customers/{customer_id}/istsi/deposits"): ALL,
    ("GET", "/v1/customers/{customer_id}/balances/detail"): ALL,
    ("POST", "/v1/customers/{customer_id}/redemptions"): frozenset({S, Y, OP, U}),
    ("GET", "/v1/customers/{customer_id}/redemptions"): ALL,
    ("GET", "/v1/customers/{customer_id}/redemptions/{operation_id}"): ALL,
    ("GET", "/v1/issuance/operations"): STAFF,
    ("GET", "/v1/issuance/operations/{operation_id}"): STAFF,
    ("POST", "/v1/issuance/operations/{operation_id}/retry"): frozenset({S, Y}),
    ("POST", "/v1/issuance/operations/{operation_id}/compensate"): frozenset({S, Y}),
    ("POST", "/v1/issuance/operations/{operation_id}/resolve"): frozenset({S, Y}),
    ("GET", "/v1/issuance/guard"): STAFF,
    ("POST", "/v1/issuance/guard/resume"): frozenset({S, Y}),
    ("POST", "/v1/issuance/deposits/{operation_id}/release"): frozenset({S, C}),
    ("POST", "/v1/issuance/deposits/{operation_id}/return"): frozenset({S, C}),
    ("POST", "/v1/issuance/contracts"): frozenset({S, Y}),
    ("GET", "/v1/issuance/transfers"): STAFF,
    # reserves and reconciliation
    ("GET", "/v1/reserves"): STAFF,
    ("GET", "/v1/reserves/history"): STAFF,
    ("POST", "/v1/reserves/reconcile"): frozenset({S, Y}),
    ("GET", "/v1/reserves/reconciliations"): frozenset({S, Y, C}),
    ("GET", "/v1/reserves/reconciliations/{run_id}"): frozenset({S, Y, C}),
    # proof of reserves
    ("GET", "/v1/por/roots"): "public",
    ("GET", "/v1/por/snapshots"): "public",
    ("GET", "/v1/por/snapshots/{snapshot_id}/reserves"): "public",
    ("GET", "/v1/customers/{customer_id}/por/proof"): ALL,
    # metrics, alerts and circuit breakers
    ("GET", "/metrics"): "public",
    ("GET", "/v1/alerts"): STAFF,
    ("POST", "/v1/alerts/{alert_id}/acknowledge"): STAFF,
    ("GET", "/v1/breakers"): STAFF,
    ("POST", "/v1/breakers/{name}/force"): frozenset({S, Y}),
    ("GET", "/v1/oracle/health"): ALL,
    ("POST", "/v1/customers/{customer_id}/quotes"): frozenset({S, Y, OP, U}),
    ("POST", "/v1/customers/{customer_id}/swaps"): frozenset({S, Y, OP, U}),
    ("GET", "/v1/customers/{customer_id}/swaps"): ALL,
    ("GET", "/v1/exchange/inventory"): STAFF,
    ("POST", "/v1/exchange/inventory/fundings"): frozenset({S, Y, OP}),
}

PATH_VALUES = {
    "snapshot_id": "por-0000",
    "run_id": "rec-0000",
    "customer_id": "cust-0",
    "withdrawal_id": "wd-0000",
    "approval_id": "ap-0000",
    "hold_id": "hold-0000",
    "review_id": "review-0000",
    "item_id": "update-0000:0",
    "key_id": "0000",
    "operation_id": "redeem:cust-0:0000",
    "alert_id": "alert-0000",
    "name": "ledger",
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    url = f"sqlite:///{tmp_path_factory.mktemp('api') / 'sluice.db'}"
    built = api_world(url)
    add_issuance(built, custody_wallet(tmp_path_factory.mktemp("keys") / "custody"))
    # A price oracle with no feeds: its health endpoint answers (healthy, no pairs).
    built.context.oracle = bootstrap.oracle_service(DeploymentConfig(), built.context.uow)
    # And an exchange with no pairs: a quote is refused (84), a swap finds no quote (10).
    built.context.exchange = ExchangeContext(
        uow=built.context.uow,
        clock=built.context.clock,
        oracle=built.context.oracle,
        registry=built.context.compliance,
        settings=ExchangeSettings(),
    )
    # A reserves side with no sources: reconciliation runs and reports every source not read,
    # so walking its endpoints cannot halt minting or pause the system for the other calls.
    built.context.reserves = ReservesContext(
        uow=built.context.uow,
        clock=built.context.clock,
        treasury=built.context.treasury,
        secret_path=tmp_path_factory.mktemp("por") / "por-secret",
    )
    yield built
    built.sandbox.close()


def _permission(route: APIRoute) -> Permission | None:
    pending = list(route.dependant.dependencies)
    while pending:
        dependency = pending.pop()
        permission = getattr(dependency.call, "permission", None)
        if isinstance(permission, Permission):
            return permission
        pending.extend(dependency.dependencies)
    return None


def _routes(_world: ApiWorld) -> list[tuple[str, str, APIRoute]]:
    found = []
    for route in (route for router in ROUTERS for route in router.routes):
        if isinstance(route, APIRoute):
            for method in sorted(route.methods - {"HEAD", "OPTIONS"}):
                found.append((method, route.path, route))
    return found


def _call(world: ApiWorld, method: str, path: str, who: str | None) -> Any:
    url = path.format(**PATH_VALUES)
    body = {} if method in {"POST", "PUT"} else None
    headers = world.headers(who)
    if path == "/v1/customers/{customer_id}/withdrawals" and method == "POST":
        headers["Idempotency-Key"] = "matrix-walk"
    with world.client() as client:
        return client.request(method, url, json=body, headers=headers)


def test_every_endpoint_declares_the_permission_the_matrix_gives_it(world: ApiWorld) -> None:
    published = {(method, path) for method, path, _ in _routes(world)}
    assert published == set(EXPECTED), (
        f"not in the table: {sorted(published - set(EXPECTED))}; "
        f"in the table but not published: {sorted(set(EXPECTED) - published)}"
    )
    for method, path, route in _routes(world):
        expected = EXPECTED[(method, path)]
        permission = _permission(route)
        if expected == "public":
            assert permission is None, f"{method} {path} should need no credentials"
            continue
        assert permission is not None, f"{method} {path} declares no permission"
        assert roles_admitted(permission) == expected, (
            f"{method} {path}: declares {permission.describe()} → "
            f"{sorted(roles_admitted(permission))}, the matrix says {sorted(expected)}"
        )


def test_every_endpoint_times_every_role_and_no_credentials_answers_per_the_matrix(
    world: ApiWorld,
) -> None:
    problems: list[str] = []
    calls = 0
    for method, path, _route in _routes(world):
        expected = EXPECTED[(method, path)]
        for who in (None, *ROLES):
            response = _call(world, method, path, who)
            calls += 1
            if "x-correlation-id" not in response.headers:
                problems.append(f"{method} {path} as {who}: no X-Correlation-ID header")
            is_json = response.headers.get("content-type", "").startswith("application/json")
            body = response.json() if response.content and is_json else None
            if response.status_code >= 400:
                if not isinstance(body, dict) or set(body) != {
                    "code",
                    "error",
                    "message",
                    "details",
                    "correlation_id",
                }:
                    problems.append(f"{method} {path} as {who}: error body {body!r}")
                    continue
                if body["correlation_id"] != response.headers.get("x-correlation-id"):
                    problems.append(f"{method} {path} as {who}: correlation ids differ")
            if response.status_code >= 500:
                problems.append(f"{method} {path} as {who}: {response.status_code} {body}")
                continue
            admitted = expected == "public" or (who is not None and who in expected)
            code = body.get("code") if isinstance(body, dict) else None
            if admitted:
                if response.status_code == 401 or (response.status_code == 403 and code == 2):
                    problems.append(f"{method} {path} as {who}: refused ({response.status_code})")
            elif who is None:
                if (response.status_code, code) != (401, 1):
                    problems.append(f"{method} {path} anonymous: {response.status_code} {body}")
            elif (response.status_code, code) != (403, 2):
                problems.append(f"{method} {path} as {who}: {response.status_code} {body}")
    assert calls == len(EXPECTED) * (len(ROLES) + 1)
    assert not problems, "\n".join(problems)


def test_framework_pages_are_public_and_describe_every_endpoint(world: ApiWorld) -> None:
    with world.client() as client:
        spec = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    operations = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert operations == set(EXPECTED)


def test_a_user_reaches_only_their_own_customer(world: ApiWorld) -> None:
    sandbox = world.sandbox
    # cust-1 has a withdrawal; cust-0's user must not see or cancel it.
    sandbox.deposit("cust-1", Decimal(50))
    sandbox.ingest()
    other = world.client().post(
        "/v1/customers/cust-1/withdrawals",
        json={
            "receiver": sandbox.customers["cust-1"],
            "instrument": {"admin": sandbox.coin.admin, "id": sandbox.coin.id},
            "amount": "5",
        },
        headers={**world.headers("user:cust-1"), "Idempotency-Key": "own-1"},
    )
    assert other.status_code == 201, other.text
    foreign_id = other.json()["id"]
    with world.client() as client:
        me = world.headers("user")
        for path in (
            "/v1/customers/cust-1",
            "/v1/customers/cust-1/balances",
            "/v1/customers/cust-1/history",
            "/v1/customers/cust-1/withdrawals",
            "/v1/customers/cust-1/deposit-instructions",
            f"/v1/withdrawals/{foreign_id}",
        ):
            answer = client.get(path, headers=me)
            assert (answer.status_code, answer.json()["code"]) == (404, 10), path
            mine = client.get(path.replace("cust-1", "cust-0"), headers=me)
            if "wd-" not in path:
                assert mine.status_code == 200, (path, mine.text)
        refused = client.post(f"/v1/withdrawals/{foreign_id}/cancel", headers=me)
        assert (refused.status_code, refused.json()["code"]) == (404, 10)
        foreign = client.post(
            "/v1/customers/cust-1/withdrawals",
            json={
                "receiver": sandbox.customers["cust-0"],
                "instrument": {"admin": sandbox.coin.admin, "id": sandbox.coin.id},
                "amount": "1",
            },
            headers={**me, "Idempotency-Key": "not-mine"},
        )
        assert foreign.status_code == 404
        # The foreign withdrawal is untouched.
        still = client.get(f"/v1/withdrawals/{foreign_id}", headers=world.headers("operator"))
        assert still.json()["status"] in {"queued", "reserved"}
