"""The alerts over HTTP: ``GET /v1/alerts`` (staff; paged, filtered by status and severity)
and ``POST /v1/alerts/{alert_id}/acknowledge`` (staff; audited with the caller as actor, 409
when acknowledged before, 404 for an unknown id)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest

from sluice.domain.deposits import Alert
from sluice.store.bitcoin_rows import insert_alert
from tests.api_support import ApiWorld, api_world


@pytest.fixture
def world(sqlite_url: str) -> Iterator[ApiWorld]:
    built = api_world(sqlite_url, customers=1)
    yield built
    built.sandbox.close()


def test_alerts_are_listed_paged_and_acknowledged_by_the_caller(world: ApiWorld) -> None:
    now = world.context.clock()
    with world.context.uow() as uow:
        for n in range(5):
            insert_alert(
                uow._connection,  # type: ignore[attr-defined]
                Alert(
                    id=f"a{n}",
                    severity="critical" if n % 2 else "warning",
                    kind="stuck_payout",
                    message=f"alert {n}",
                    details={"n": str(n)},
                ),
                now + timedelta(seconds=n),
            )
        uow.commit()
    client = world.client()
    staff = world.headers("operator")

    first = client.get("/v1/alerts?limit=2", headers=staff)
    assert first.status_code == 200, first.text
    body = first.json()
    assert [a["id"] for a in body["items"]] == ["a4", "a3"]  # newest first
    assert body["next_offset"] == 2
    assert body["items"][0]["details"] == {"n": "4"} and body["items"][0]["status"] == "open"
    last = client.get("/v1/alerts?offset=4&limit=2", headers=staff).json()
    assert [a["id"] for a in last["items"]] == ["a0"] and last["next_offset"] is None
    critical = client.get("/v1/alerts?severity=critical", headers=staff).json()
    assert [a["id"] for a in critical["items"]] == ["a3", "a1"]
    assert client.get("/v1/alerts?severity=urgent", headers=staff).status_code == 422

    acked = client.post("/v1/alerts/a3/acknowledge", headers=staff)
    assert acked.status_code == 200, acked.text
    assert acked.json()["status"] == "resolved"  # the product's own: resolved when acknowledged
    actor = acked.json()["acknowledged_by"]
    assert actor
    again = client.post("/v1/alerts/a3/acknowledge", headers=staff)
    assert again.status_code == 409 and actor in again.text
    assert client.post("/v1/alerts/nope/acknowledge", headers=staff).status_code == 404
    assert (
        client.post("/v1/alerts/a1/acknowledge", headers=world.headers("user")).status_code == 403
    )

    resolved = client.get("/v1/alerts?status=resolved", headers=staff).json()
    assert [a["id"] for a in resolved["items"]] == ["a3"]
    still = client.get("/v1/alerts?status=open&status=acknowledged", headers=staff).json()
    assert [a["id"] for a in still["items"]] == ["a4", "a2", "a1", "a0"]
    with world.context.uow() as uow:
        audited = [
            r.entry for r in uow.audit.records() if r.entry.operation == "alert_acknowledged"
        ]
    assert [(e.actor, e.parameters["alert_id"]) for e in audited] == [(actor, "a3")]
