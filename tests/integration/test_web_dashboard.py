"""The admin dashboard (``/dashboard`` and its pages) through the real application, on SQLite
and PostgreSQL: each page renders for the staff roles the API's matrix lets read it and is
refused (403) to the others and to every customer; each action (assign from suspense, release
and return a held deposit, close a review, acknowledge an alert, approve and reject a proposal,
pause and resume, reconcile) goes through the same service as the API, is audited, and is
refused to a role the API refuses; a service's refusal is shown on the page, not as a 500; an
action without its CSRF token, or with another one, is refused (403) and changes nothing; the
reserve ratio is drawn as an SVG in the page; the audit trail is searched and its chain verified.

How: a sandbox exchange (:func:`tests.api_support.api_world`, two approvals required) with the
test client on ``https://testserver`` (the session cookie is Secure), signed in through
``/login`` with a role's API key as a browser would: the form's hidden CSRF token, then the
cookie. A page's CSRF token is read from its sign-out form."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from sluice.domain.compliance import ReviewItem
from sluice.domain.ledger import InstrumentId
from sluice.services import accounts
from sluice.services.audit import list_audit_records
from sluice.services.compliance_officer import freeze_customer, review_queue, unfreeze_customer
from sluice.services.controls import current_pause
from sluice.services.reserves import record_readings
from sluice.services.reserves_settings import ReservesContext, ReservesSettings
from tests.api_support import ApiWorld, api_world

HIDDEN = r'name="{name}" value="([^"]*)"'
STAFF = ("super_admin", "system_admin", "compliance_officer", "operator")
# Page → the roles that may read it (the API's permission for the same reads).
PAGES: dict[str, frozenset[str]] = {
    "/dashboard": frozenset(STAFF),
    "/dashboard/health": frozenset(STAFF),
    "/dashboard/ingestion": frozenset(STAFF),
    "/dashboard/pending": frozenset(STAFF),
    "/dashboard/reserves": frozenset(STAFF),
    "/dashboard/holds": frozenset(STAFF),
    "/dashboard/reviews": frozenset({"super_admin", "compliance_officer"}),
    "/dashboard/alerts": frozenset(STAFF),
    "/dashboard/approvals": frozenset(STAFF),
    "/dashboard/controls": frozenset(STAFF),
    "/dashboard/audit": frozenset({"super_admin", "system_admin", "compliance_officer"}),
}
ACTIONS = (
    "/dashboard/holds/suspense/assign",
    "/dashboard/holds/release",
    "/dashboard/holds/return",
    "/dashboard/reviews/close",
    "/dashboard/alerts/acknowledge",
    "/dashboard/approvals/approve",
    "/dashboard/approvals/reject",
    "/dashboard/controls/pause",
    "/dashboard/controls/resume",
    "/dashboard/reserves/reconcile",
    "/dashboard/health/force",
)


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    built = api_world(
        database_url,
        settings={"approvals.required": 2, "withdrawals.approval_above": "500"},
    )
    yield built
    built.sandbox.close()


def sign_in(world: ApiWorld, who: str) -> TestClient:
    client = TestClient(world.app, base_url="https://testserver")
    token = re.search(HIDDEN.format(name="csrf_token"), client.get("/login").text)
    assert token is not None
    answer = client.post(
        "/login",
        data={"credential": world.keys[who], "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return client


def csrf(client: TestClient) -> str:
    found = re.search(HIDDEN.format(name="csrf_token"), client.get("/dashboard/controls").text)
    assert found is not None
    return found.group(1)


def post(client: TestClient, path: str, **form: str) -> Any:
    """Post a dashboard form with the session's CSRF token; the page it redirects to."""
    answer = client.post(path, data={"csrf_token": csrf(client), **form}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return client.get(answer.headers["location"])


def table(html: str, table_id: str) -> str:
    start = html.index(f'<table id="{table_id}"')
    return html[start : html.index("</table>", start)]


def audited(world: ApiWorld, operation: str) -> list[Any]:
    records = list_audit_records(world.context.uow, limit=1000)
    return [r.entry for r in records if r.entry.operation == operation]


def _fund(world: ApiWorld, customer: str, amount: str) -> None:
    world.sandbox.deposit(customer, Decimal(amount))
    world.sandbox.ingest()


def _balance(world: ApiWorld, customer: str) -> Decimal:
    balances = accounts.customer_balances(world.context.uow, customer)
    return balances.get(world.sandbox.coin, Decimal(0))


def _withdraw(world: ApiWorld, amount: str, key: str) -> Any:
    """cust-0 asks for a withdrawal over the API (above 500: a proposal awaiting approvals)."""
    coin = world.sandbox.coin
    return world.client().post(
        "/v1/customers/cust-0/withdrawals",
        json={
            "receiver": world.sandbox.customers["cust-0"],
            "instrument": {"admin": coin.admin, "id": coin.id},
            "amount": amount,
        },
        headers={**world.headers("user"), "Idempotency-Key": key},
    )


# --- who sees what -------------------------------------------------------------------------------


def test_each_page_renders_for_the_roles_the_api_lets_read_it_and_is_refused_to_the_others(
    world: ApiWorld,
) -> None:
    for role in STAFF:
        client = sign_in(world, role)
        for path, roles in PAGES.items():
            answer = client.get(path)
            expected = 200 if role in roles else 403
            assert answer.status_code == expected, (role, path, answer.text[-500:])
            if expected == 200:
                assert "<h1>" in answer.text
                assert "style=" not in answer.text
                scripts = re.findall(r"<script[^>]*>", answer.text)
                assert set(scripts) <= {'<script src="/static/vendor/htmx.min.js" defer>'}
                assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
        # No page links to a page the role would be refused.
        forbidden = [path for path, roles in PAGES.items() if role not in roles]
        for path, roles in PAGES.items():
            if role in roles:
                shown = client.get(path).text
                assert not [f for f in forbidden if f'href="{f}"' in shown], (role, path)


def test_a_customer_gets_403_on_every_dashboard_page_and_action(world: ApiWorld) -> None:
    client = sign_in(world, "user")
    token = re.search(HIDDEN.format(name="csrf_token"), client.get("/me").text)
    assert token is not None
    for path in PAGES:
        assert client.get(path).status_code == 403, path
    for path in ACTIONS:
        answer = client.post(path, data={"csrf_token": token.group(1), "reason": "x"})
        assert answer.status_code == 403, path
    assert current_pause(world.context.uow) is None


def test_without_a_session_a_dashboard_page_redirects_to_sign_in(world: ApiWorld) -> None:
    client = TestClient(world.app, base_url="https://testserver")
    answer = client.get("/dashboard/audit", follow_redirects=False)
    assert (answer.status_code, answer.headers["location"]) == (
        303,
        "/login?next=/dashboard/audit",
    )
    refused = client.post("/dashboard/controls/pause", data={"reason": "x"}, follow_redirects=False)
    assert refused.status_code == 303 and current_pause(world.context.uow) is None


def test_read_only_pages_refresh_live_with_the_vendored_htmx_and_pages_with_forms_do_not(
    world: ApiWorld,
) -> None:
    client = sign_in(world, "super_admin")
    script = '<script src="/static/vendor/htmx.min.js" defer></script>'
    for path in ("/dashboard", "/dashboard/health", "/dashboard/ingestion", "/dashboard/pending"):
        page = client.get(f"{path}?flash=done").text
        assert script in page and '"includeIndicatorStyles": false' in page, path
        assert f'hx-get="{path}"' in page  # its own URL, less the outcome shown once
    for path in ("/dashboard/holds", "/dashboard/approvals", "/dashboard/controls"):
        assert "<script" not in client.get(path).text, path
    served = client.get("/static/vendor/htmx.min.js")
    assert served.status_code == 200 and 'version:"2.0.4"' in served.text
    # A refresh after the session ended sends the whole page to /login (the pages' own answer)
    # instead of swapping the sign-in page into it.
    signed_out = TestClient(world.app, base_url="https://testserver")
    refresh = signed_out.get("/dashboard/health", headers={"HX-Request": "true"})
    assert refresh.status_code == 204
    assert refresh.headers["HX-Redirect"] == "/login?next=/dashboard/health"
    plain = signed_out.get("/dashboard/health", follow_redirects=False)
    assert (plain.status_code, plain.headers["location"]) == (303, "/login?next=/dashboard/health")


# --- CSRF ----------------------------------------------------------------------------------------


def test_an_action_without_or_with_a_wrong_csrf_token_is_refused_and_changes_nothing(
    world: ApiWorld,
) -> None:
    client = sign_in(world, "system_admin")
    other = sign_in(world, "super_admin")
    forged = {"": None, "wrong": "x" * 43, "another session's": csrf(other)}
    for what, token in forged.items():
        form = {"mode": "emergency", "reason": f"forged ({what})"}
        if token is not None:
            form["csrf_token"] = token
        answer = client.post("/dashboard/controls/pause", data=form, follow_redirects=False)
        assert answer.status_code == 403, what
        assert "CSRF" in answer.text
    assert current_pause(world.context.uow) is None
    assert audited(world, "system_paused") == []
    # The same form with the page's token works.
    page = post(client, "/dashboard/controls/pause", mode="paused", reason="drill")
    assert "The system is paused" in page.text


# --- pause and resume ----------------------------------------------------------------------------


def test_pause_and_resume_from_the_dashboard_are_audited_and_refused_to_an_operator(
    world: ApiWorld,
) -> None:
    operator = sign_in(world, "operator")
    controls = operator.get("/dashboard/controls").text
    assert "The system is running" in controls and ">Pause</button>" not in controls
    refused = operator.post(
        "/dashboard/controls/pause",
        data={"csrf_token": csrf(operator), "reason": "not mine"},
        follow_redirects=False,
    )
    assert refused.status_code == 403 and "emergency_pause" in refused.text
    assert current_pause(world.context.uow) is None

    officer = sign_in(world, "compliance_officer")
    page = post(officer, "/dashboard/controls/pause", mode="emergency", reason="incident 12")
    assert page.status_code == 200
    assert 'id="flash"' in page.text and "emergency" in page.text
    state = current_pause(world.context.uow)
    assert state is not None and (state.mode, state.reason) == ("emergency", "incident 12")
    (paused,) = audited(world, "system_paused")
    assert paused.actor.startswith("compliance_officer:")
    assert "paused (emergency)" in officer.get("/dashboard/health").text
    assert 'id="figure-system"' in officer.get("/dashboard").text

    blank = post(officer, "/dashboard/controls/resume", reason="")
    assert 'id="flash-error"' in blank.text and current_pause(world.context.uow) is not None
    resumed = post(officer, "/dashboard/controls/resume", reason="fixed")
    assert "The system is running" in resumed.text
    assert current_pause(world.context.uow) is None
    assert len(audited(world, "system_resumed")) == 1


# --- approvals -----------------------------------------------------------------------------------


def test_a_large_withdrawal_is_approved_on_the_dashboard_by_two_distinct_staff(
    world: ApiWorld,
) -> None:
    _fund(world, "cust-0", "2000")
    proposal = _withdraw(world, "800", "big-one")
    assert proposal.status_code == 202, proposal.text
    approval_id = proposal.json()["id"]

    operator = sign_in(world, "operator")
    listed = operator.get("/dashboard/approvals").text
    assert approval_id in table(listed, "approvals") and ">Approve</button>" in listed
    first = post(operator, "/dashboard/approvals/approve", approval_id=approval_id, comment="ok")
    assert "now pending, 1 of 2 approvals" in first.text
    assert "you voted" in first.text
    twice = post(operator, "/dashboard/approvals/approve", approval_id=approval_id)
    assert 'id="flash-error"' in twice.text and "code 41" in twice.text  # shown, not a 500

    officer = sign_in(world, "compliance_officer")
    ineligible = post(officer, "/dashboard/approvals/approve", approval_id=approval_id)
    assert 'id="flash-error"' in ineligible.text and "code 2" in ineligible.text
    assert _balance(world, "cust-0") == Decimal(2000)

    admin = sign_in(world, "system_admin")
    done = post(admin, "/dashboard/approvals/approve", approval_id=approval_id)
    assert "now executed, 2 of 2 approvals" in done.text, done.text
    assert _balance(world, "cust-0") == Decimal(1200)
    approvers = [e.actor for e in audited(world, "approval_approved")]
    assert len(approvers) == 2 and approvers[0].startswith("operator:")
    assert approvers[1].startswith("system_admin:")
    assert len(audited(world, "approval_executed")) == 1
    pending = admin.get("/dashboard/pending").text
    assert "800" in table(pending, "pending-withdrawals")


def test_a_rejected_proposal_never_runs(world: ApiWorld) -> None:
    _fund(world, "cust-0", "2000")
    approval_id = _withdraw(world, "900", "rejected-one").json()["id"]
    operator = sign_in(world, "operator")
    rejected = post(operator, "/dashboard/approvals/reject", approval_id=approval_id, comment="no")
    assert "Rejected" in rejected.text and "now rejected" in rejected.text
    assert approval_id not in operator.get("/dashboard/approvals").text  # pending only
    assert approval_id in operator.get("/dashboard/approvals?status=rejected").text
    (vote,) = audited(world, "approval_rejected")
    assert vote.actor.startswith("operator:")
    assert _balance(world, "cust-0") == Decimal(2000)


# --- suspense, holds, reviews --------------------------------------------------------------------


def test_a_suspense_deposit_is_assigned_by_proposal_and_approved_on_the_dashboard(
    world: ApiWorld,
) -> None:
    sandbox = world.sandbox
    sandbox.ledger.transfer(
        sandbox.customers["cust-1"], sandbox.treasury, sandbox.coin, Decimal(33), reason="huh"
    )
    sandbox.ingest()
    operator = sign_in(world, "operator")
    page = operator.get("/dashboard/holds").text
    assert 'id="holds"' not in page  # holds are compliance's
    item_id = re.search(HIDDEN.format(name="item_id"), table(page, "suspense"))
    assert item_id is not None
    missing = post(operator, "/dashboard/holds/suspense/assign", item_id=item_id.group(1))
    assert 'id="flash-error"' in missing.text and "customer_id" in missing.text
    proposed = post(
        operator,
        "/dashboard/holds/suspense/assign",
        item_id=item_id.group(1),
        customer_id="cust-1",
        reason="ticket 881",
    )
    assert "was proposed as" in proposed.text and "pending, 1 of 2 approvals" in proposed.text
    assert _balance(world, "cust-1") == Decimal(0)
    admin = sign_in(world, "system_admin")
    listed = admin.get("/dashboard/approvals").text
    found = re.search(r'name="approval_id" value="([^"]+)"', table(listed, "approvals"))
    assert found is not None and "suspense.assign" in listed
    done = post(admin, "/dashboard/approvals/approve", approval_id=found.group(1))
    assert "now executed" in done.text, done.text
    assert _balance(world, "cust-1") == Decimal(33)
    assert "Nothing in suspense" in admin.get("/dashboard/holds").text
    assert [e.customer_id for e in audited(world, "suspense_assigned")] == ["cust-1"]


def _held(world: ApiWorld, count: int) -> list[str]:
    """``count`` deposits of cust-2, held because cust-2 was frozen meanwhile; their hold ids."""
    uow, at = world.context.uow, world.sandbox.clock()
    freeze_customer(uow, "cust-2", actor="test", at=at, reason="check")
    for n in range(count):
        world.sandbox.deposit("cust-2", str(10 + n))
    world.sandbox.ingest()
    unfreeze_customer(uow, "cust-2", actor="test", at=world.sandbox.clock(), reason="cleared")
    holds = review_queue(uow).holds
    assert len(holds) == count
    return [hold.id for hold in holds]


def test_held_deposits_are_released_and_returned_by_a_compliance_officer_only(
    world: ApiWorld,
) -> None:
    first, second = _held(world, 2)
    operator = sign_in(world, "operator")
    refused = operator.post(
        "/dashboard/holds/release",
        data={"csrf_token": csrf(operator), "hold_id": first, "reason": "mine?"},
        follow_redirects=False,
    )
    assert refused.status_code == 403

    officer = sign_in(world, "compliance_officer")
    page = officer.get("/dashboard/holds").text
    assert 'id="suspense"' not in page  # suspense is the operators'
    holds = table(page, "holds")
    assert first in holds and second in holds and ">Release</button>" in holds
    released = post(officer, "/dashboard/holds/release", hold_id=first, reason="KYC done")
    assert f"Released {first} to cust-2" in released.text
    assert _balance(world, "cust-2") == Decimal(10)
    returned = post(officer, "/dashboard/holds/return", hold_id=second, reason="not ours")
    assert f"Returning {second} to its sender" in returned.text
    assert "No deposit on hold" in returned.text
    again = post(officer, "/dashboard/holds/release", hold_id=first, reason="twice")
    assert 'id="flash-error"' in again.text  # a service refusal, shown on the page
    assert [e.actor.split(":")[0] for e in audited(world, "deposit_released")] == [
        "compliance_officer"
    ]
    assert len(audited(world, "deposit_returned")) == 1


def test_a_review_item_is_closed_from_the_queue_by_a_compliance_officer(world: ApiWorld) -> None:
    with world.context.uow() as uow:
        uow.compliance.open_review(
            ReviewItem(
                id="review-test-1",
                kind="manual",
                reason="large deposits in a row",
                opened_at=world.sandbox.clock(),
                customer_id="cust-2",
            )
        )
        uow.commit()
    officer = sign_in(world, "compliance_officer")
    reviews = table(officer.get("/dashboard/reviews").text, "reviews")
    assert "review-test-1" in reviews and "large deposits in a row" in reviews
    blank = post(officer, "/dashboard/reviews/close", review_id="review-test-1")
    assert 'id="flash-error"' in blank.text
    closed = post(officer, "/dashboard/reviews/close", review_id="review-test-1", resolution="ok")
    assert "Closed review review-test-1" in closed.text
    assert "The queue is empty" in closed.text
    assert "closed by compliance_officer:" in officer.get("/dashboard/reviews?closed=true").text
    (record,) = audited(world, "review_closed")
    assert record.actor.startswith("compliance_officer:")


# --- alerts --------------------------------------------------------------------------------------


def test_an_alert_is_acknowledged_from_the_dashboard_and_audited(world: ApiWorld) -> None:
    with world.context.uow() as uow:
        uow.alerts.raise_rule_alert(
            alert_id="rule:test:1",
            rule="test",
            severity="warning",
            message="the queue is long",
            details={},
            at=world.sandbox.clock(),
        )
        uow.commit()
    operator = sign_in(world, "operator")
    assert ">1</span> Open alerts" in operator.get("/dashboard").text
    listed = table(operator.get("/dashboard/alerts").text, "alerts")
    assert "the queue is long" in listed and ">Acknowledge</button>" in listed
    done = post(operator, "/dashboard/alerts/acknowledge", alert_id="rule:test:1")
    assert "Acknowledged alert rule:test:1" in done.text
    assert "the queue is long" not in table(done.text, "alerts")  # open ones only
    shown = operator.get("/dashboard/alerts?view=acknowledged").text
    assert "the queue is long" in shown
    (record,) = audited(world, "alert_acknowledged")
    assert record.actor.startswith("operator:")
    twice = post(operator, "/dashboard/alerts/acknowledge", alert_id="rule:test:1")
    assert 'id="flash-error"' in twice.text


# --- reserves ------------------------------------------------------------------------------------


def test_the_reserve_ratio_is_drawn_as_an_svg_and_a_reconciliation_runs_from_the_page(
    world: ApiWorld, tmp_path: Path
) -> None:
    _fund(world, "cust-0", "57.25")
    context = ReservesContext(
        uow=world.context.uow,
        clock=world.context.clock,
        treasury=world.sandbox.treasury,
        secret_path=tmp_path / "por-secret",
        settings=ReservesSettings(),
        istsi=InstrumentId("issuer::1220ab", "iSTSi"),
    )
    world.context.reserves = context
    operator = sign_in(world, "operator")
    assert 'id="no-readings"' in operator.get("/dashboard/reserves").text
    for _ in range(3):
        record_readings(context)
    page = operator.get("/dashboard/reserves").text
    assert "57.25" in table(page, "reserves-now") and "100.00 %" in page
    assert '<svg id="ratio-chart-1"' in page and "<polyline" in page
    assert page.count('class="chart-point"') == 3
    assert "Reconcile now" not in page  # router admins only
    assert 'id="reconciliation-note"' in page  # and reports are the auditors'

    admin = sign_in(world, "system_admin")
    ran = post(admin, "/dashboard/reserves/reconcile")
    assert "Reconciliation " in ran.text and 'id="flash"' in ran.text, ran.text[-2000:]
    assert "manual" in table(ran.text, "reconciliations")


# --- pending, ingestion, health ------------------------------------------------------------------


def test_pending_ingestion_and_health_show_what_the_api_shows(world: ApiWorld) -> None:
    _fund(world, "cust-0", "100")
    assert _withdraw(world, "12.5", "small").status_code == 201
    operator = sign_in(world, "operator")
    pending = operator.get("/dashboard/pending").text
    row = table(pending, "pending-withdrawals")
    assert "12.5000000000" in row and "cust-0" in row and "reserved" in row
    for other in ("pending-offers", "pending-redemptions", "pending-payouts"):
        assert "None pending" in table(pending, other)
    assert ">1</span> Pending withdrawals" in operator.get("/dashboard").text

    ingestion = operator.get("/dashboard/ingestion").text
    assert 'id="cursor"' in ingestion and "sluice_ingestion_lag_offsets" in ingestion
    assert "withdrawals" in table(ingestion, "queues")

    health = operator.get("/dashboard/health").text
    assert "database" in table(health, "readiness") and "answers" in health
    ready = world.client().get("/ready").json()
    assert ("not ready" in health) is (not ready["ready"])
    breakers = world.client().get("/v1/breakers", headers=world.headers("operator")).json()
    for breaker in breakers:
        assert breaker["flow"] in table(health, "breakers")


def test_a_router_admin_forces_a_breaker_from_the_health_page_and_an_operator_cannot(
    world: ApiWorld,
) -> None:
    operator = sign_in(world, "operator")
    assert "Force a breaker" not in operator.get("/dashboard/health").text
    flow = world.client().get("/v1/breakers", headers=world.headers("operator")).json()[0]["flow"]
    refused = operator.post(
        "/dashboard/health/force",
        data={"csrf_token": csrf(operator), "flow": flow, "state": "open", "reason": "x"},
        follow_redirects=False,
    )
    assert refused.status_code == 403

    admin = sign_in(world, "system_admin")
    assert "Force a breaker" in admin.get("/dashboard/health").text
    unknown = post(admin, "/dashboard/health/force", flow="no-such-flow", state="open", reason="x")
    assert 'id="flash-error"' in unknown.text
    forced = post(admin, "/dashboard/health/force", flow=flow, state="open", reason="drill")
    assert f"The {flow} breaker is forced open" in forced.text
    assert "open by system_admin:" in table(forced.text, "breakers")
    (record,) = audited(world, "breaker_forced")
    assert record.actor.startswith("system_admin:")
    post(admin, "/dashboard/health/force", flow=flow, state="auto", reason="done")
    assert "automatic" in table(admin.get("/dashboard/health").text, "breakers")


# --- audit ---------------------------------------------------------------------------------------


def test_the_audit_trail_is_searched_by_operation_customer_and_actor_with_its_chain_verified(
    world: ApiWorld,
) -> None:
    _fund(world, "cust-0", "100")
    _fund(world, "cust-1", "50")
    officer = sign_in(world, "compliance_officer")
    post(officer, "/dashboard/controls/pause", reason="drill")
    post(officer, "/dashboard/controls/resume", reason="done")

    everything = officer.get("/dashboard/audit").text
    assert "system_paused" in everything and "Verify the chain" in everything
    by_operation = table(officer.get("/dashboard/audit?operation=system_").text, "audit")
    assert "system_paused" in by_operation and "system_resumed" in by_operation
    assert "deposit" not in by_operation
    by_actor = table(officer.get("/dashboard/audit?actor=compliance_officer").text, "audit")
    assert "system_paused" in by_actor
    by_customer = table(officer.get("/dashboard/audit?customer_id=cust-1").text, "audit")
    assert "cust-1" in by_customer and "cust-0" not in by_customer
    none = officer.get("/dashboard/audit?actor=nobody-at-all").text
    assert "No record matches" in none

    verified = officer.get("/dashboard/audit?verify=true").text
    assert "The chain verifies" in verified
