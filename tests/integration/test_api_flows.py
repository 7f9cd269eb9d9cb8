"""Every flow of the HTTP API driven over HTTP, on SQLite and PostgreSQL.

How: a sandbox exchange (embedded ledger, real Integration DB) with the real application around
it (:mod:`tests.api_support`); customers deposit on the ledger and ingestion credits them; every
other step goes through the API with an API key of the role that would do it: withdrawals with
idempotency keys and cancellation, the emergency pause and resume, M-of-N approvals of large
withdrawals, limit changes, suspense assignment and onboarding, configuration changes with
their time lock, rate limits, API key management, correlation ids in the audit trail, and the
error body. The books are checked after the flows that move value.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from sluice.domain.ledger import InstrumentId
from sluice.services.books import check_invariant
from tests.api_support import ApiWorld, api_world


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    built = api_world(
        database_url,
        settings={
            "approvals.required": 2,
            "config.timelock_s": 3600,
            "withdrawals.approval_above": "500",
        },
    )
    yield built
    built.sandbox.close()


def _instrument(world: ApiWorld, instrument: InstrumentId | None = None) -> dict[str, str]:
    chosen = instrument or world.sandbox.coin
    return {"admin": chosen.admin, "id": chosen.id}


def _withdraw(
    world: ApiWorld, who: str, customer: str, amount: str, key: str, receiver: str | None = None
) -> Any:
    return world.client().post(
        f"/v1/customers/{customer}/withdrawals",
        json={
            "receiver": receiver or world.sandbox.customers[customer],
            "instrument": _instrument(world),
            "amount": amount,
        },
        headers={**world.headers(who), "Idempotency-Key": key},
    )


def _fund(world: ApiWorld, customer: str, amount: str) -> None:
    world.sandbox.deposit(customer, Decimal(amount))
    world.sandbox.ingest()


def _balance(world: ApiWorld, customer: str) -> Decimal:
    answer = world.client().get(
        f"/v1/customers/{customer}/balances", headers=world.headers("operator")
    )
    assert answer.status_code == 200, answer.text
    for row in answer.json()["balances"]:
        if row["instrument"] == _instrument(world):
            return Decimal(row["amount"])
    return Decimal(0)


def _books_hold(world: ApiWorld) -> None:
    assert check_invariant(world.sandbox.database.uow).holds


# --- customers, deposits, balances -------------------------------------------------------------


def test_a_customer_registered_over_http_deposits_and_sees_balance_history_and_instructions(
    world: ApiWorld,
) -> None:
    client = world.client()
    created = client.post(
        "/v1/customers",
        json={"id": "cust-9", "name": "Nine", "tier": 2, "deposit_accounts": ["acct-9"]},
        headers=world.headers("operator"),
    )
    assert created.status_code == 201, created.text
    assert created.json()["kyc"] == {
        "tier": 2,
        "status": "active",
        "status_reason": None,
        "risk_score": 0,
    }
    world.add_key("user:cust-0", "user", "cust-0")
    _fund(world, "cust-0", "120")
    me = world.headers("user")
    instructions = client.get("/v1/customers/cust-0/deposit-instructions", headers=me).json()
    coin = next(i for i in instructions if i["instrument"] == _instrument(world))
    assert coin["treasury"] == world.sandbox.treasury
    assert coin["deposit_account"] == "acct-0"
    assert coin["reason_key"] == "splice.lfdecentralizedtrust.org/reason"
    assert _balance(world, "cust-0") == Decimal(120)
    history = client.get("/v1/customers/cust-0/history", headers=me).json()
    assert history["items"][0]["disposition"] == "credited"
    assert Decimal(history["items"][0]["amount"]) == Decimal(120)
    listed = client.get("/v1/customers?limit=2", headers=world.headers("operator")).json()
    assert len(listed["items"]) == 2 and listed["next_offset"] == 2
    rest = client.get("/v1/customers?offset=2&limit=50", headers=world.headers("operator")).json()
    assert {c["id"] for c in listed["items"] + rest["items"]} == {
        "cust-0",
        "cust-1",
        "cust-2",
        "cust-9",
    }
    assert rest["next_offset"] is None


# --- withdrawals -------------------------------------------------------------------------------


def test_the_same_idempotency_key_twice_creates_one_withdrawal(world: ApiWorld) -> None:
    _fund(world, "cust-0", "100")
    first = _withdraw(world, "user", "cust-0", "30", "order-17")
    again = _withdraw(world, "user", "cust-0", "30", "order-17")
    assert first.status_code == 201, first.text
    assert again.status_code == 200 and again.headers["idempotent-replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert _balance(world, "cust-0") == Decimal(70)
    listed = world.client().get("/v1/customers/cust-0/withdrawals", headers=world.headers("user"))
    assert [w["id"] for w in listed.json()["items"]] == [first.json()["id"]]
    other = _withdraw(world, "user", "cust-0", "31", "order-17")
    assert (other.status_code, other.json()["code"]) == (409, 42)
    _books_hold(world)


def test_a_withdrawal_not_yet_submitted_can_be_cancelled_and_is_never_paid(
    world: ApiWorld,
) -> None:
    _fund(world, "cust-0", "100")
    created = _withdraw(world, "user", "cust-0", "40", "to-cancel").json()
    cancelled = world.client().post(
        f"/v1/withdrawals/{created['id']}/cancel", headers=world.headers("user")
    )
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "failed" and cancelled.json()["failure"] == "cancelled"
    assert _balance(world, "cust-0") == Decimal(100)
    tick = world.sandbox.withdrawal_worker().run_once()
    assert tick.submitted == 0
    again = world.client().post(
        f"/v1/withdrawals/{created['id']}/cancel", headers=world.headers("user")
    )
    assert (again.status_code, again.json()["code"]) == (409, 41)
    _books_hold(world)


def test_a_submitted_withdrawal_cannot_be_cancelled(world: ApiWorld) -> None:
    _fund(world, "cust-0", "100")
    created = _withdraw(world, "user", "cust-0", "10", "paid").json()
    world.sandbox.withdrawal_worker().run_once()
    refused = world.client().post(
        f"/v1/withdrawals/{created['id']}/cancel", headers=world.headers("operator")
    )
    assert (refused.status_code, refused.json()["code"]) == (409, 41)
    world.sandbox.ingest()
    status = world.client().get(f"/v1/withdrawals/{created['id']}", headers=world.headers("user"))
    assert status.json()["status"] == "completed"
    _books_hold(world)


def test_bad_withdrawal_requests_answer_4xx_naming_the_problem(world: ApiWorld) -> None:
    _fund(world, "cust-0", "10")
    too_much = _withdraw(world, "user", "cust-0", "11", "too-much")
    assert (too_much.status_code, too_much.json()["code"]) == (422, 62)
    negative = _withdraw(world, "user", "cust-0", "-1", "negative")
    assert negative.status_code == 422
    assert negative.json()["details"]["fields"][0]["field"] == "body.amount"
    bad_party = _withdraw(world, "user", "cust-0", "1", "bad-party", receiver="nobody")
    assert bad_party.json()["details"]["fields"][0]["field"] == "body.receiver"
    no_key = world.client().post(
        "/v1/customers/cust-0/withdrawals",
        json={
            "receiver": world.sandbox.customers["cust-0"],
            "instrument": _instrument(world),
            "amount": "1",
        },
        headers=world.headers("user"),
    )
    assert no_key.status_code == 422
    assert no_key.json()["details"]["fields"][0]["field"] == "header.Idempotency-Key"
    garbage = world.client().post(
        "/v1/customers/cust-0/withdrawals",
        content=b"{not json",
        headers={
            **world.headers("user"),
            "Idempotency-Key": "g",
            "Content-Type": "application/json",
        },
    )
    assert garbage.status_code == 422 and garbage.json()["code"] == 60
    unknown = world.client().get("/v1/withdrawals/wd-unknown", headers=world.headers("operator"))
    assert (unknown.status_code, unknown.json()["code"]) == (404, 10)


# --- emergency pause ---------------------------------------------------------------------------


@pytest.mark.parametrize(("mode", "code"), [("paused", 50), ("emergency", 51), ("maintenance", 52)])
def test_a_pause_stops_value_moving_endpoints_and_workers_until_resumed(
    world: ApiWorld, mode: str, code: int
) -> None:
    _fund(world, "cust-0", "100")
    queued = _withdraw(world, "user", "cust-0", "5", "before-pause").json()
    client = world.client()
    paused = client.post(
        "/v1/system/pause",
        json={"mode": mode, "reason": "incident 42"},
        headers=world.headers("compliance_officer"),
    )
    assert paused.status_code == 200, paused.text
    refused = _withdraw(world, "user", "cust-0", "5", "during-pause")
    assert (refused.status_code, refused.json()["code"]) == (503, code)
    cancel = client.post(f"/v1/withdrawals/{queued['id']}/cancel", headers=world.headers("user"))
    assert (cancel.status_code, cancel.json()["code"]) == (503, code)
    # Reads keep working.
    assert _balance(world, "cust-0") == Decimal(95)
    status = client.get("/v1/system/status", headers=world.headers("user")).json()
    assert status["running"] is False and status["pause"]["mode"] == mode
    tick = world.sandbox.withdrawal_worker().run_once()
    assert tick.paused == mode and tick.submitted == 0
    assert world.sandbox.deposit_worker().run_once().paused == mode
    operator = client.post(
        "/v1/system/resume", json={"reason": "fixed"}, headers=world.headers("operator")
    )
    assert operator.status_code == 403
    resumed = client.post(
        "/v1/system/resume", json={"reason": "fixed"}, headers=world.headers("system_admin")
    )
    assert resumed.status_code == 200
    assert _withdraw(world, "user", "cust-0", "5", "after-pause").status_code == 201
    assert world.sandbox.withdrawal_worker().run_once().submitted >= 1
    audit = client.get("/v1/audit?limit=1000", headers=world.headers("super_admin")).json()
    operations = [r["operation"] for r in audit]
    assert "system_paused" in operations and "system_resumed" in operations
    pause_record = next(r for r in audit if r["operation"] == "system_paused")
    assert pause_record["correlation_id"] == paused.headers["x-correlation-id"]
    _books_hold(world)


# --- approvals ---------------------------------------------------------------------------------


def test_a_large_withdrawal_runs_only_after_two_distinct_staff_approvals(world: ApiWorld) -> None:
    _fund(world, "cust-0", "2000")
    proposal = _withdraw(world, "user", "cust-0", "800", "big-one")
    assert proposal.status_code == 202, proposal.text
    approval = proposal.json()
    assert approval["status"] == "pending" and approval["approvals"] == 0
    assert _balance(world, "cust-0") == Decimal(2000)  # nothing moved yet
    # Asking again with the same key is the same proposal, not a second one.
    assert _withdraw(world, "user", "cust-0", "800", "big-one").json()["id"] == approval["id"]
    client = world.client()
    url = f"/v1/approvals/{approval['id']}"
    assert client.post(f"{url}/approve", json={}, headers=world.headers("user")).status_code == 403
    ineligible = client.post(f"{url}/approve", json={}, headers=world.headers("compliance_officer"))
    assert (ineligible.status_code, ineligible.json()["code"]) == (403, 2)
    first = client.post(f"{url}/approve", json={}, headers=world.headers("operator"))
    assert first.json()["status"] == "pending" and first.json()["approvals"] == 1
    twice = client.post(f"{url}/approve", json={}, headers=world.headers("operator"))
    assert (twice.status_code, twice.json()["code"]) == (409, 41)
    second = client.post(
        f"{url}/approve",
        json={"comment": "called the customer"},
        headers=world.headers("system_admin"),
    )
    assert second.status_code == 200, second.text
    done = second.json()
    assert done["status"] == "executed", done
    withdrawal_id = done["result"]["withdrawal_id"]
    assert _balance(world, "cust-0") == Decimal(1200)
    replay = _withdraw(world, "user", "cust-0", "800", "big-one")
    assert replay.status_code == 200 and replay.json()["id"] == withdrawal_id
    mine = client.get("/v1/approvals", headers=world.headers("user")).json()["items"]
    assert [a["id"] for a in mine] == [approval["id"]]
    assert client.get("/v1/approvals", headers=world.headers("user:cust-1")).json()["items"] == []
    _books_hold(world)


def test_a_rejected_proposal_never_runs(world: ApiWorld) -> None:
    _fund(world, "cust-0", "2000")
    approval = _withdraw(world, "user", "cust-0", "900", "rejected-one").json()
    client = world.client()
    rejected = client.post(
        f"/v1/approvals/{approval['id']}/reject",
        json={"comment": "no"},
        headers=world.headers("operator"),
    )
    assert rejected.json()["status"] == "rejected"
    late = client.post(
        f"/v1/approvals/{approval['id']}/approve", json={}, headers=world.headers("system_admin")
    )
    assert (late.status_code, late.json()["code"]) == (409, 41)
    assert _balance(world, "cust-0") == Decimal(2000)


def test_limit_changes_need_approvals_and_then_apply(world: ApiWorld) -> None:
    client = world.client()
    proposal = client.put(
        "/v1/compliance/limits",
        json={"tier": 1, "operation": "withdrawal", "per_operation": "25", "reason": "policy 7"},
        headers=world.headers("compliance_officer"),
    ).json()
    assert proposal["status"] == "pending" and proposal["approvals"] == 1

    def withdrawal_limit() -> str | None:
        limits = client.get("/v1/compliance/limits", headers=world.headers("compliance_officer"))
        row = next(r for r in limits.json() if (r["tier"], r["operation"]) == (1, "withdrawal"))
        return row["per_operation"]

    assert withdrawal_limit() != "25"
    approved = client.post(
        f"/v1/approvals/{proposal['id']}/approve", json={}, headers=world.headers("super_admin")
    ).json()
    assert approved["status"] == "executed", approved
    assert Decimal(withdrawal_limit() or "0") == Decimal(25)
    _fund(world, "cust-0", "100")
    over = _withdraw(world, "user", "cust-0", "30", "over-limit")
    assert (over.status_code, over.json()["code"]) == (403, 21)


def test_suspense_assignment_needs_approvals_and_credits_the_customer(world: ApiWorld) -> None:
    sandbox = world.sandbox
    sandbox.ledger.transfer(
        sandbox.customers["cust-1"], sandbox.treasury, sandbox.coin, Decimal(33), reason="who-knows"
    )
    sandbox.ingest()
    client = world.client()
    items = client.get("/v1/suspense", headers=world.headers("operator")).json()["items"]
    assert len(items) == 1 and Decimal(items[0]["amount"]) == Decimal(33)
    proposal = client.post(
        f"/v1/suspense/{items[0]['id']}/assign",
        json={"customer_id": "cust-1", "reason": "ticket 881: forgot the reason"},
        headers=world.headers("operator"),
    ).json()
    assert proposal["status"] == "pending"
    assert _balance(world, "cust-1") == Decimal(0)
    done = client.post(
        f"/v1/approvals/{proposal['id']}/approve", json={}, headers=world.headers("system_admin")
    ).json()
    assert done["status"] == "executed", done
    assert _balance(world, "cust-1") == Decimal(33)
    assert client.get("/v1/suspense", headers=world.headers("operator")).json()["items"] == []
    audit = client.get(
        "/v1/audit?customer_id=cust-1&limit=100", headers=world.headers("compliance_officer")
    ).json()
    assert any(r["operation"] == "suspense_assigned" for r in audit)
    _books_hold(world)


def test_onboarding_an_instrument_takes_two_super_admins(world: ApiWorld) -> None:
    client = world.client()
    admin = world.sandbox.ledger.allocate_party("newissuer", "registry")
    proposal = client.post(
        "/v1/instruments",
        json={"admin": admin, "id": "GOLD", "transfer_kinds": ["direct", "offer"]},
        headers=world.headers("super_admin"),
    ).json()
    assert proposal["status"] == "pending"
    listed = client.get("/v1/instruments", headers=world.headers("user")).json()
    assert all(i["id"] != "GOLD" for i in listed)
    system = client.post(
        f"/v1/approvals/{proposal['id']}/approve", json={}, headers=world.headers("system_admin")
    )
    assert (system.status_code, system.json()["code"]) == (403, 2)
    done = client.post(
        f"/v1/approvals/{proposal['id']}/approve", json={}, headers=world.headers("super_admin:2")
    ).json()
    assert done["status"] == "executed", done
    listed = client.get("/v1/instruments", headers=world.headers("user")).json()
    assert any(i["id"] == "GOLD" and i["transfer_kinds"] == ["direct", "offer"] for i in listed)
    with world.context.uow() as uow:
        records = uow.audit.records(limit=1000)
    (onboarded,) = [
        r.entry
        for r in records
        if r.entry.operation == "instrument_onboarded" and r.entry.parameters.get("id") == "GOLD"
    ]
    assert onboarded.actor == f"approval:{proposal['id']}"
    assert onboarded.correlation_id is not None  # written during the approving request


def test_a_configuration_change_takes_effect_only_after_the_time_lock(world: ApiWorld) -> None:
    _fund(world, "cust-0", "1000")
    client = world.client()
    proposal = client.post(
        "/v1/config/changes",
        json={"key": "withdrawals.approval_above", "value": "50", "reason": "tighter"},
        headers=world.headers("system_admin"),
    ).json()
    assert proposal["status"] == "pending" and proposal["timelock_s"] == 3600
    done = client.post(
        f"/v1/approvals/{proposal['id']}/approve", json={}, headers=world.headers("super_admin")
    ).json()
    assert done["status"] == "executed", done
    config = client.get("/v1/config", headers=world.headers("system_admin")).json()
    setting = next(s for s in config["settings"] if s["key"] == "withdrawals.approval_above")
    assert Decimal(str(setting["value"])) == Decimal(500)
    assert len(setting["scheduled"]) == 1
    # Before the time lock has passed the old threshold is in force...
    assert _withdraw(world, "user", "cust-0", "60", "before-lock").status_code == 201
    world.sandbox.ledger.advance(3599)
    assert _withdraw(world, "user", "cust-0", "60", "still-before").status_code == 201
    # ...and after it, the new one.
    world.sandbox.ledger.advance(2)
    world.context.settings.refresh()
    assert _withdraw(world, "user", "cust-0", "60", "after-lock").status_code == 202
    bad = client.post(
        "/v1/config/changes",
        json={"key": "rate_limits.key_per_s", "value": -1, "reason": "oops"},
        headers=world.headers("system_admin"),
    )
    assert bad.status_code == 422 and "rate_limits.key_per_s" in bad.json()["message"]
    unknown = client.post(
        "/v1/config/changes",
        json={"key": "no.such.key", "value": 1, "reason": "oops"},
        headers=world.headers("system_admin"),
    )
    assert unknown.status_code == 422


# --- rate limits, keys, correlation ------------------------------------------------------------


def test_rate_limits_answer_429_with_retry_after_per_key_and_globally(sqlite_url: str) -> None:
    world = api_world(
        sqlite_url,
        settings={
            "rate_limits.key_per_s": 1,
            "rate_limits.key_burst": 3,
            "rate_limits.global_per_s": 1,
            "rate_limits.global_burst": 5,
        },
    )
    try:
        client = world.client()
        answers = [
            client.get("/v1/instruments", headers=world.headers("operator")) for _ in range(4)
        ]
        assert [a.status_code for a in answers] == [200, 200, 200, 429]
        limited = answers[-1]
        assert limited.json()["code"] == 53 and int(limited.headers["retry-after"]) >= 1
        # Another key still has its own bucket, until the global one runs dry.
        other = [client.get("/v1/instruments", headers=world.headers("user")) for _ in range(3)]
        assert [a.status_code for a in other] == [200, 200, 429]
        assert "global" in other[-1].json()["message"]
        audit = [
            r
            for r in client.get("/v1/audit", headers=world.headers("operator")).json()
            if isinstance(r, dict)
        ]
        assert audit == [] or all("operation" in r for r in audit)
        with world.context.uow() as uow:
            records = uow.audit.records(limit=1000)
        assert any(r.entry.operation == "rate_limited" for r in records)
    finally:
        world.sandbox.close()


def test_api_keys_are_created_shown_once_and_revoked_over_http(world: ApiWorld) -> None:
    client = world.client()
    created = client.post(
        "/v1/api-keys",
        json={"role": "operator", "label": "payments"},
        headers=world.headers("system_admin"),
    )
    assert created.status_code == 201
    key = created.json()["key"]
    assert client.get("/v1/withdrawals", headers={"X-API-Key": key}).status_code == 200
    assert (
        client.get("/v1/withdrawals", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    )
    listed = client.get("/v1/api-keys?limit=500", headers=world.headers("system_admin")).json()
    assert all("key" not in k for k in listed["items"])
    escalate = client.post(
        "/v1/api-keys", json={"role": "super_admin"}, headers=world.headers("system_admin")
    )
    assert (escalate.status_code, escalate.json()["code"]) == (403, 2)
    user_key = client.post(
        "/v1/api-keys", json={"role": "user"}, headers=world.headers("system_admin")
    )
    assert user_key.status_code == 422
    revoked = client.post(
        f"/v1/api-keys/{created.json()['id']}/revoke", headers=world.headers("system_admin")
    )
    assert revoked.status_code == 200 and revoked.json()["revoked_at"] is not None
    after = client.get("/v1/withdrawals", headers={"X-API-Key": key})
    assert (after.status_code, after.json()["code"]) == (401, 1)
    wrong = client.get("/v1/withdrawals", headers={"X-API-Key": key[:-2] + "xx"})
    assert wrong.status_code == 401 and key[-10:] not in wrong.text


def test_the_callers_correlation_id_is_echoed_and_written_to_the_audit_trail(
    world: ApiWorld,
) -> None:
    _fund(world, "cust-0", "10")
    answer = world.client().post(
        "/v1/customers/cust-0/withdrawals",
        json={
            "receiver": world.sandbox.customers["cust-0"],
            "instrument": _instrument(world),
            "amount": "1",
        },
        headers={
            **world.headers("user"),
            "Idempotency-Key": "c1",
            "X-Correlation-ID": "order-4711",
        },
    )
    assert answer.headers["x-correlation-id"] == "order-4711"
    audit = (
        world.client()
        .get("/v1/audit?customer_id=cust-0&limit=50", headers=world.headers("compliance_officer"))
        .json()
    )
    requested = [r for r in audit if r["operation"] == "withdrawal_requested"]
    assert requested and requested[-1]["correlation_id"] == "order-4711"
    verified = world.client().get("/v1/audit/verify", headers=world.headers("system_admin")).json()
    assert verified["ok"] is True and verified["records"] > 0
    odd = world.client().get(
        "/v1/system/status", headers={**world.headers("user"), "X-Correlation-ID": "bad id!"}
    )
    assert odd.headers["x-correlation-id"] != "bad id!"


def test_every_request_is_logged_with_its_correlation_id_and_principal(world: ApiWorld) -> None:
    import structlog
    from structlog.testing import LogCapture

    capture = LogCapture()
    previous = structlog.get_config()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, capture])
    try:
        answer = world.client().get(
            "/v1/instruments", headers={**world.headers("operator"), "X-Correlation-ID": "trace-9"}
        )
    finally:
        structlog.configure(**previous)
    assert answer.status_code == 200
    lines = [line for line in capture.entries if line.get("event") == "request"]
    assert lines, capture.entries
    assert lines[-1]["path"] == "/v1/instruments" and lines[-1]["status"] == 200
    assert lines[-1]["correlation_id"] == "trace-9"
    assert str(lines[-1]["principal"]).startswith("key:")


def test_guessing_keys_is_rate_limited_by_client_address(sqlite_url: str) -> None:
    # A token back every 100 s: on a loaded machine the five requests may take over a second,
    # and a rate of 1/s gave one back mid-way (401 where 429 was due).
    world = api_world(
        sqlite_url, settings={"rate_limits.key_per_s": 0.01, "rate_limits.key_burst": 3}
    )
    try:
        client = world.client()
        bad = {"X-API-Key": "sk_0123456789abcdef_not-the-secret"}
        answers = [client.get("/v1/instruments", headers=bad).status_code for _ in range(5)]
        assert answers == [401, 401, 401, 429, 429]
        # A valid key has its own bucket.
        assert client.get("/v1/instruments", headers=world.headers("operator")).status_code == 200
    finally:
        world.sandbox.close()
