"""The proof-of-reserves endpoints on SQLite and PostgreSQL: the published roots, the snapshots
and a snapshot's reserves document answered to anyone without credentials; a customer's own
inclusion proof with their key, verified against the public roots; another customer's proof
answered 404 to a user, 401 without credentials; no proof without the reserves side (503).

How: a sandbox exchange where customers deposit Amulet (ingested into the journal), a snapshot
taken with ``take_snapshot`` as ``sluice por snapshot`` does, and the real application."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from sluice.por.documents import Proof, parse_roots, root_for
from sluice.por.verify import verify_proof
from sluice.services.por_snapshots import published_roots, take_snapshot
from sluice.services.reserves_settings import ReservesContext
from tests.api_support import ApiWorld, api_world


@pytest.fixture
def world(database_url: str, tmp_path: Path) -> Iterator[ApiWorld]:
    built = api_world(database_url)
    built.context.reserves = ReservesContext(
        uow=built.context.uow,
        clock=built.sandbox.clock,
        treasury=built.sandbox.treasury,
        secret_path=tmp_path / "por-secret",
    )
    yield built
    built.sandbox.close()


def test_roots_are_public_and_a_customer_gets_their_own_proof_only(world: ApiWorld) -> None:
    client = world.client()
    nothing = client.get("/v1/por/roots")
    assert nothing.status_code == 404 and nothing.json()["code"] == 10
    for customer, amount in (("cust-0", "125.5"), ("cust-1", "7")):
        world.sandbox.deposit(customer, Decimal(amount))
    world.sandbox.ingest()
    ctx = world.context.reserves
    assert ctx is not None
    roots_taken = {root.instrument: root for root in take_snapshot(ctx, snapshot_id="snap-api")}
    coin, token = world.sandbox.coin.key(), world.sandbox.token.key()
    # Every onboarded instrument has a root; nobody holds the token: an empty tree at 0.
    assert sorted(roots_taken) == sorted([coin, token])
    assert (roots_taken[coin].leaf_count, roots_taken[coin].total) == (2, "132.5")
    assert (roots_taken[token].leaf_count, roots_taken[token].total_units) == (0, 0)

    roots = client.get("/v1/por/roots")  # no credentials
    assert roots.status_code == 200, roots.text
    assert roots.json() == published_roots(world.context.uow)
    assert client.get("/v1/por/roots", params={"snapshot": "snap-api"}).json() == roots.json()
    assert client.get("/v1/por/roots", params={"snapshot": "snap-x"}).status_code == 404
    snapshots = client.get("/v1/por/snapshots").json()
    assert [item["id"] for item in snapshots["items"]] == ["snap-api"]
    assert snapshots["items"][0]["instruments"] == sorted([coin, token])
    reserves = client.get("/v1/por/snapshots/snap-api/reserves")
    assert reserves.status_code == 200 and reserves.json()["snapshot_id"] == "snap-api"
    assert client.get("/v1/por/snapshots/snap-x/reserves").status_code == 404

    own = client.get(
        "/v1/customers/cust-0/por/proof",
        params={"instrument": "Amulet"},
        headers=world.headers("user"),
    )
    assert own.status_code == 200, own.text
    proof = Proof.from_json(own.json())
    assert (proof.customer_id, proof.balance) == ("cust-0", "125.5")
    published = root_for(parse_roots(roots.text), "snap-api", coin)
    verdict = verify_proof(proof, published)
    assert verdict.valid, verdict.reason

    path = "/v1/customers/cust-1/por/proof"
    params = {"instrument": coin, "snapshot": "snap-api"}
    foreign = client.get(path, params=params, headers=world.headers("user"))
    assert foreign.status_code == 404 and foreign.json()["message"] == "not found"
    assert client.get(path, params=params).status_code == 401
    theirs = client.get(path, params=params, headers=world.headers("user:cust-1"))
    assert theirs.status_code == 200 and theirs.json()["balance"] == "7"
    staff = client.get(path, params=params, headers=world.headers("compliance_officer"))
    assert staff.json() == theirs.json()
    # cust-2 deposited nothing: no leaf, no proof.
    none = client.get(
        "/v1/customers/cust-2/por/proof", params=params, headers=world.headers("operator")
    )
    assert none.status_code == 404 and "no balance" in none.json()["message"]

    world.context.reserves = None
    unwired = client.get(path, params=params, headers=world.headers("user:cust-1"))
    assert unwired.status_code == 503 and unwired.json()["error"] == "reserves_not_configured"
    # A customer without a leaf is answered 404 before the secret is needed.
    nothing_owed = client.get(
        "/v1/customers/cust-2/por/proof", params=params, headers=world.headers("operator")
    )
    assert nothing_owed.status_code == 404
    assert client.get("/v1/por/roots").status_code == 200
