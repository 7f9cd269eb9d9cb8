"""The exchange's inventory over HTTP on SQLite and PostgreSQL: ``POST
/v1/exchange/inventory/fundings`` proposes funding it from a suspense deposit, which runs only
once two distinct staff approved it (the proposer's own approval counts; through
``/v1/approvals``), once; ``GET /v1/exchange/inventory`` shows it; a deposit already given
away is refused (409, 41), a malformed id 422, and a customer's key reaches neither endpoint."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import pytest

from sluice.services.books import check_invariant
from sluice.services.suspense import list_suspense
from tests.api_support import ApiWorld, api_world

PATH = "/v1/exchange/inventory"


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    found = api_world(database_url)
    yield found
    found.sandbox.close()


def _suspense_deposit(world: ApiWorld, amount: str) -> str:
    """cust-1's wallet sends Amulet to the treasury with no reason: ingested to suspense."""
    sandbox = world.sandbox
    sandbox.ledger.transfer(
        sandbox.customers["cust-1"], sandbox.treasury, sandbox.coin, Decimal(amount), reason=None
    )
    sandbox.ingest()
    (item,) = list_suspense(sandbox.database.uow)
    return item.id


def test_funding_runs_after_two_staff_approvals_and_shows_in_the_inventory(
    world: ApiWorld,
) -> None:
    item_id = _suspense_deposit(world, "300")
    client = world.client()
    assert client.get(PATH, headers=world.headers("operator")).json() == []

    proposed = client.post(
        f"{PATH}/fundings",
        json={"item_id": item_id, "reason": "market-making float"},
        headers=world.headers("operator"),
    )
    assert proposed.status_code == 202, proposed.text
    approval = proposed.json()
    assert (approval["operation"], approval["status"]) == ("exchange.inventory.fund", "pending")
    assert client.get(PATH, headers=world.headers("operator")).json() == []

    assert (approval["approvals"], approval["required"]) == (1, 2)  # the proposer's own
    url = f"/v1/approvals/{approval['id']}/approve"
    twice = client.post(url, json={}, headers=world.headers("operator"))
    assert (twice.status_code, twice.json()["code"]) == (409, 41)  # not twice by one person
    second = client.post(url, json={}, headers=world.headers("system_admin"))
    assert second.status_code == 200, second.text
    assert second.json()["status"] == "executed"
    assert second.json()["result"] == {"item_id": item_id, "assigned_to": "exchange_inventory"}

    coin = world.sandbox.coin
    shown = client.get(PATH, headers=world.headers("compliance_officer")).json()
    assert shown == [
        {"instrument": {"id": coin.id, "admin": coin.admin}, "balance": "300.0000000000"}
    ]
    assert check_invariant(world.sandbox.database.uow).holds

    # The same deposit again: refused at the proposal, nothing moves.
    again = client.post(
        f"{PATH}/fundings",
        json={"item_id": item_id, "reason": "twice"},
        headers=world.headers("operator"),
    )
    assert (again.status_code, again.json()["code"]) == (409, 41)
    malformed = client.post(
        f"{PATH}/fundings",
        json={"item_id": "nonsense", "reason": "x"},
        headers=world.headers("operator"),
    )
    assert malformed.status_code == 422
    assert client.get(PATH, headers=world.headers("operator")).json() == shown


def test_a_customer_reaches_neither_endpoint(world: ApiWorld) -> None:
    item_id = _suspense_deposit(world, "10")
    client = world.client()
    assert client.get(PATH, headers=world.headers("user")).status_code == 403
    refused = client.post(
        f"{PATH}/fundings",
        json={"item_id": item_id, "reason": "mine now"},
        headers=world.headers("user"),
    )
    assert refused.status_code == 403
    assert list_suspense(world.sandbox.database.uow)[0].assigned_to is None
