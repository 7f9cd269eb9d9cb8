"""Property-based testing of the whole HTTP API from its published OpenAPI document.

How: schemathesis reads ``/openapi.json`` from the running application (a sandbox exchange with
funded customers, on SQLite) and, for every operation, generates requests that fit the schema —
with a super admin's API key, so every endpoint is reached past authorisation. Every answer
must not be a server error, must use a documented status code and content type, and must match
the documented response schema. Generated input includes the odd cases (huge numbers, empty and
non-ASCII strings, unknown ids); the API must answer each with a 4xx or a success.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from sluice import bootstrap
from sluice.config import DeploymentConfig
from sluice.domain.exchange import ExchangeSettings
from sluice.services.exchange import ExchangeContext
from sluice.services.reserves_settings import ReservesContext
from tests.api_support import ApiWorld, api_world
from tests.integration.issuance_api_support import add_issuance, custody_wallet


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiWorld]:
    url = f"sqlite:///{tmp_path_factory.mktemp('schema') / 'sluice.db'}"
    built = api_world(url, settings={"approvals.required": 2})
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
    for customer in ("cust-0", "cust-1"):
        built.sandbox.deposit(customer, Decimal(500))
    built.sandbox.ingest()
    # The reserves side, on the sandbox's ledger (reconciliation compares the journal there).
    built.context.reserves = ReservesContext(
        uow=built.sandbox.database.uow,
        clock=built.sandbox.clock,
        treasury=built.sandbox.treasury,
        secret_path=tmp_path_factory.mktemp("por") / "por-secret",
        ledger=built.sandbox.ledger.client(built.sandbox.treasury),
        connection=built.sandbox.connection,
    )
    yield built
    built.sandbox.close()


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
EXAMPLES_PER_OPERATION = 25


def test_generated_requests_get_documented_answers_and_never_a_server_error(
    world: ApiWorld,
) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", world.app)
    headers = {"X-API-Key": world.keys["super_admin"]}
    failures: list[str] = []
    operations = 0
    calls: dict[int, int] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            response = case.call_and_validate(
                headers={**(case.headers or {}), **headers}, checks=CHECKS
            )
            calls[response.status_code] = calls.get(response.status_code, 0) + 1

        try:
            run()
        except Exception as exc:
            failures.append(f"{operation.method.upper()} {operation.path}: {exc}")
    assert operations >= 40
    # Generation reached past validation: successes as well as refusals were answered.
    assert sum(n for status, n in calls.items() if status < 300) > operations
    assert sum(calls.values()) > operations * 5, calls
    assert not failures, "\n\n".join(failures)
