"""Events of the exchange side written to the outbox with the state change they describe.

How: each test builds a :class:`~sluice.sandbox.Sandbox` (the embedded ledger and the Integration
DB, on SQLite and on PostgreSQL) or the HTTP API around one, drives the real flows — customers'
transfers on the ledger, ingestion, the deposit and withdrawal workers, the compliance officer's
commands, approvals, the pause — and reads the outbox (``uow.events``) afterwards.

Covers: deposits credited, held in suspense or in the compliance hold, released (assigned from
suspense, released from the hold) and returned; withdrawals requested, submitted, completed,
cancelled and failed after exhausted attempts, and a return's lifecycle; offers accepted and
rejected; officer's actions and KYC changes, a refused withdrawal; approvals proposed, signed and
executed; pause and resume with the API request's correlation id. Each flow writes exactly its
events, with the envelope's type, aggregate and payload; a refused step and an ingestion batch
that dies before its commit write none, and the batch re-ingested writes each event once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from sluice.domain.access import Principal
from sluice.domain.amounts import format_amount
from sluice.domain.approvals import Approval
from sluice.domain.audit.records import current_correlation_id
from sluice.domain.errors import InsufficientBalanceError, SluiceError
from sluice.domain.events import Event
from sluice.sandbox import Sandbox
from sluice.services.approvals import propose_operation, vote_on_approval
from sluice.services.compliance_officer import (
    change_tier,
    close_review,
    freeze_customer,
    release_hold,
    return_hold,
    review_queue,
    unfreeze_customer,
)
from sluice.services.controls import pause, resume
from sluice.services.ingestion import Ingestion, IngestionSettings
from sluice.services.suspense import assign_suspense, list_suspense
from sluice.services.withdrawals import WithdrawalSettings, cancel_withdrawal
from tests.api_support import ApiWorld, api_world
from tests.integration.test_compliance_flows import officer_flags, settle
from tests.integration.test_withdrawals import (
    CrashError,
    CrashingUnitOfWork,
    fund,
    pass_beyond,
    record,
)

D = Decimal
OFFICER = "officer:alice"


@pytest.fixture
def sb(database_url: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(database_url)
    yield sandbox
    sandbox.close()


def outbox(sb: Sandbox) -> list[Event]:
    """Every event of the exchange side written so far, in the order they were added (the
    alerts a flow raises are events of their own, not these tests' subject)."""
    with sb.database.uow() as uow:
        rows = uow.events.find(limit=100_000)
    return [row.event for row in rows if row.event.aggregate_type != "alert"]


def since(sb: Sandbox, mark: int) -> list[Event]:
    return outbox(sb)[mark:]


def types(events: list[Event]) -> list[str]:
    return [event.type for event in events]


def coin(sb: Sandbox) -> dict[str, str]:
    return {"id": sb.coin.id, "admin": sb.coin.admin}


def amt(text: str) -> str:
    """An amount as events carry it (the ledger's canonical text)."""
    return format_amount(D(text))


def the(events: list[Event], type: str) -> Event:
    (found,) = [event for event in events if event.type == type]
    return found


# --- deposits ------------------------------------------------------------------------------------


def test_deposits_credited_and_held_in_suspense_then_assigned_write_one_event_each(
    sb: Sandbox,
) -> None:
    fund(sb, "cust-0", "5")
    (credited,) = outbox(sb)
    assert (credited.type, credited.aggregate_type) == ("deposit_credited", "deposit")
    assert credited.correlation_id is None  # ingestion acts for no request
    payload = dict(credited.payload)
    update_id, _, node = credited.aggregate_id.rpartition(":")
    assert node.isdigit() and payload["update_id"] == update_id
    assert isinstance(payload["offset"], int)
    assert {k: payload[k] for k in ("deposit_id", "customer_id", "amount", "status")} == {
        "deposit_id": credited.aggregate_id,
        "customer_id": "cust-0",
        "amount": amt("5"),
        "status": "credited",
    }
    assert payload["instrument"] == coin(sb)
    assert (payload["deposit_account"], payload["sender"]) == ("acct-0", sb.customers["cust-0"])
    assert payload["held_in"] is None and payload["hold_id"] is None
    assert credited.subject == f"sluice.deposit.{credited.aggregate_id}".replace(":", "_")

    sb.ledger.transfer(sb.customers["cust-1"], sb.treasury, sb.coin, D(25), reason=None)
    sb.ledger.advance(1)
    sb.ledger.transfer(sb.customers["cust-2"], sb.treasury, sb.coin, D(40), reason="acct-x")
    mark = len(outbox(sb))
    sb.ingest()
    held = since(sb, mark)
    assert types(held) == ["deposit_held", "deposit_held"]
    items = list_suspense(sb.database.uow)
    assert [e.aggregate_id for e in held] == [item.id for item in items]
    assert [(e.payload["held_in"], e.payload["reason"], e.payload["amount"]) for e in held] == [
        ("suspense", "no deposit account", amt("25")),
        ("suspense", "unknown deposit account", amt("40")),
    ]
    assert [e.payload["customer_id"] for e in held] == [None, None]

    # Ingesting again finds nothing new and writes nothing.
    mark = len(outbox(sb))
    sb.ingest()
    assert since(sb, mark) == []

    at = sb.clock() + timedelta(seconds=3)
    token = current_correlation_id.set("ticket-88")
    try:
        assign_suspense(
            sb.database.uow,
            items[1].id,
            "cust-1",
            actor="operator:olga",
            at=at,
            approval_id="ap-1",
            reason="support ticket 88",
        )
    finally:
        current_correlation_id.reset(token)
    (released,) = since(sb, mark)
    assert (released.type, released.aggregate_id, released.correlation_id) == (
        "deposit_released",
        items[1].id,
        "ticket-88",
    )
    assert released.occurred_at == at
    assert {
        k: released.payload[k]
        for k in ("customer_id", "status", "held_in", "approval_id", "actor", "reason", "amount")
    } == {
        "customer_id": "cust-1",
        "status": "released",
        "held_in": "suspense",
        "approval_id": "ap-1",
        "actor": "operator:olga",
        "reason": "support ticket 88",
        "amount": amt("40"),
    }
    # The same assignment again (an approval executed twice) changes nothing: no event.
    assign_suspense(sb.database.uow, items[1].id, "cust-1", actor="operator:olga", at=at)
    assert len(outbox(sb)) == mark + 1
    # Refused (another customer): nothing written.
    with pytest.raises(SluiceError):
        assign_suspense(sb.database.uow, items[1].id, "cust-2", actor="operator:olga", at=at)
    assert len(outbox(sb)) == mark + 1


def test_a_compliance_hold_is_held_released_and_a_returned_one_runs_as_a_return(
    sb: Sandbox,
) -> None:
    sender = sb.customers["cust-0"]
    officer_flags(sb, sender)
    (flagged,) = outbox(sb)
    assert (flagged.type, flagged.aggregate_type, flagged.aggregate_id) == (
        "compliance_action_taken",
        "customer",
        "compliance",
    )
    assert flagged.payload["action"] == "address_flagged"
    assert flagged.payload["details"] == {"address": sender}
    assert (flagged.payload["reason"], flagged.payload["actor"]) == ("fraud report", OFFICER)

    sb.deposit("cust-0", "250")
    mark = len(outbox(sb))
    sb.ingest()
    (held,) = since(sb, mark)
    (hold,) = review_queue(sb.database.uow).holds
    assert held.type == "deposit_held"
    assert held.aggregate_id == hold.id.removeprefix("hold:").removesuffix(f":{sb.coin.key()}")
    assert {k: held.payload[k] for k in ("customer_id", "held_in", "hold_id", "status")} == {
        "customer_id": "cust-0",
        "held_in": "compliance_hold",
        "hold_id": hold.id,
        "status": "held",
    }
    assert held.payload["reason"] == hold.why

    mark = len(outbox(sb))
    release_hold(sb.database.uow, hold.id, actor=OFFICER, at=sb.clock(), reason="verified")
    assert types(since(sb, mark)) == ["compliance_action_taken", "deposit_released"]
    action, released = since(sb, mark)
    assert (action.aggregate_id, action.payload["action"]) == ("cust-0", "deposit_released")
    assert released.aggregate_id == held.aggregate_id
    assert (released.payload["customer_id"], released.payload["actor"]) == ("cust-0", OFFICER)
    # Refused the second time: nothing written.
    with pytest.raises(SluiceError):
        release_hold(sb.database.uow, hold.id, actor=OFFICER, at=sb.clock(), reason="twice")
    assert len(outbox(sb)) == mark + 2

    # A frozen customer's deposit is held; the officer returns it to its sender.
    mark = len(outbox(sb))
    freeze_customer(sb.database.uow, "cust-1", actor=OFFICER, at=sb.clock(), reason="KYC expired")
    assert types(since(sb, mark)) == ["compliance_action_taken", "customer_kyc_changed"]
    kyc = the(since(sb, mark), "customer_kyc_changed")
    assert (kyc.aggregate_type, kyc.aggregate_id) == ("customer", "cust-1")
    assert {k: kyc.payload[k] for k in ("status", "was_status", "tier", "was_tier")} == {
        "status": "frozen",
        "was_status": "active",
        "tier": 1,
        "was_tier": 1,
    }
    sb.deposit("cust-1", "300")
    sb.ingest()
    (frozen_hold,) = review_queue(sb.database.uow).holds
    mark = len(outbox(sb))
    returning = return_hold(
        sb.database.uow,
        frozen_hold.id,
        treasury=sb.treasury,
        actor=OFFICER,
        at=sb.clock(),
        reason="customer gone",
    )
    assert types(since(sb, mark)) == [
        "compliance_action_taken",
        "deposit_returned",
        "withdrawal_requested",
    ]
    returned = the(since(sb, mark), "deposit_returned")
    assert returned.payload["withdrawal_id"] == returning.id
    requested = the(since(sb, mark), "withdrawal_requested")
    assert (requested.aggregate_id, requested.payload["kind"]) == (returning.id, "return")
    assert requested.payload["receiver"] == sb.customers["cust-1"]

    mark = len(outbox(sb))
    assert settle(sb, returning.id).status == "completed"
    lifecycle = [e for e in since(sb, mark) if e.aggregate_id == returning.id]
    assert types(lifecycle) == ["withdrawal_submitted", "withdrawal_completed"]


# --- withdrawals ---------------------------------------------------------------------------------


def test_a_withdrawal_is_requested_submitted_and_completed_with_one_event_each(
    sb: Sandbox,
) -> None:
    fund(sb, "cust-0", "100")
    mark = len(outbox(sb))
    token = current_correlation_id.set("order-17")
    try:
        requested = sb.withdraw("cust-0", "40", key="k1")
    finally:
        current_correlation_id.reset(token)
    (event,) = since(sb, mark)
    assert (event.type, event.aggregate_type, event.aggregate_id, event.correlation_id) == (
        "withdrawal_requested",
        "withdrawal",
        requested.id,
        "order-17",
    )
    assert {
        k: event.payload[k]
        for k in ("withdrawal_id", "kind", "customer_id", "amount", "status", "attempt", "actor")
    } == {
        "withdrawal_id": requested.id,
        "kind": "withdrawal",
        "customer_id": "cust-0",
        "amount": amt("40"),
        "status": requested.status,
        "attempt": 1,
        "actor": "customer:cust-0",
    }
    assert event.payload["instrument"] == coin(sb)
    # The same request again is a replay: nothing new.
    sb.withdraw("cust-0", "40", key="k1")
    assert len(outbox(sb)) == mark + 1

    assert sb.withdrawal_worker().run_once().submitted == 1
    (submitted,) = since(sb, mark + 1)
    assert (submitted.type, submitted.aggregate_id) == ("withdrawal_submitted", requested.id)
    assert submitted.payload["status"] == "submitting"
    assert submitted.correlation_id is None

    sb.ingest()
    (completed,) = since(sb, mark + 2)
    done = record(sb, requested.id)
    assert (completed.type, completed.payload["status"]) == ("withdrawal_completed", "completed")
    assert completed.payload["update_id"] == done.outcome_update_id
    assert isinstance(completed.payload["offset"], int)
    assert {e.aggregate_id for e in since(sb, mark)} == {requested.id}


def test_cancelled_and_refused_withdrawals(sb: Sandbox) -> None:
    fund(sb, "cust-0", "100")
    requested = sb.withdraw("cust-0", "40", key="k1")
    mark = len(outbox(sb))
    cancel_withdrawal(
        sb.database.uow, requested.id, customer_id="cust-0", actor="customer:cust-0", at=sb.clock()
    )
    (cancelled,) = since(sb, mark)
    assert (cancelled.type, cancelled.aggregate_id) == ("withdrawal_cancelled", requested.id)
    assert (cancelled.payload["status"], cancelled.payload["failure"]) == ("failed", "cancelled")
    with pytest.raises(SluiceError):  # twice: refused, nothing written
        cancel_withdrawal(
            sb.database.uow, requested.id, customer_id="cust-0", actor="c", at=sb.clock()
        )
    assert len(outbox(sb)) == mark + 1

    # Refused for its balance: the step rolls back and writes no event.
    with pytest.raises(InsufficientBalanceError):
        sb.withdraw("cust-0", "1000", key="k2")
    assert len(outbox(sb)) == mark + 1

    # Refused by the KYC registry: only the officer's decision behind it is an event.
    freeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="court")
    mark = len(outbox(sb))
    with pytest.raises(SluiceError):
        sb.withdraw("cust-0", "10", key="k3")
    (refused,) = since(sb, mark)
    assert (refused.type, refused.aggregate_id) == ("compliance_action_taken", "cust-0")
    assert refused.payload["action"] == "withdrawal_refused"
    assert "frozen" in str(refused.payload["reason"])
    assert (
        isinstance(refused.payload["code"], int) and refused.payload["actor"] == "customer:cust-0"
    )


def test_exhausted_attempts_fail_the_withdrawal_with_one_failed_event(
    database_url: str,
) -> None:
    sb = Sandbox.create(database_url, withdrawal_settings=WithdrawalSettings(attempts_max=1))
    try:
        fund(sb, "cust-0", "500")
        requested = sb.withdraw("cust-0", "200", key="k1")
        mark = len(outbox(sb))
        sb.ledger.faults.fail_next_commands(1)
        assert sb.withdrawal_worker().run_once().submit_errors == 1
        current = record(sb, requested.id)
        assert current.trec_tgt is not None
        pass_beyond(sb, current.trec_tgt)
        sb.withdrawal_worker().run_once()  # fences the anchor (no payment attempt)
        sb.ingest()
        assert record(sb, requested.id).status == "failed"
        mine = [e for e in since(sb, mark) if e.aggregate_id == requested.id]
        assert types(mine) == ["withdrawal_submitted", "withdrawal_failed"]
        failed = mine[-1]
        assert failed.payload["status"] == "failed"
        assert "attempt" in str(failed.payload["failure"])
        assert failed.payload["actor"] == f"ingestion:{sb.connection}"
    finally:
        sb.close()


def test_an_ingestion_batch_that_dies_writes_no_event_and_is_ingested_once_after(
    sb: Sandbox,
) -> None:
    for n in range(3):
        sb.deposit(f"cust-{n}", str(10 + n))
    crashing = CrashingUnitOfWork(sb.database, crash_on=1)
    dying = Ingestion(
        crashing,
        sb.ledger.client(sb.treasury),
        sb.treasury,
        connection=sb.connection,
        settings=IngestionSettings(),
        sleep=lambda _s: None,
        compliance=sb.compliance,
    )
    with pytest.raises(CrashError):
        dying.run()
    assert outbox(sb) == []
    sb.ingest()
    events = outbox(sb)
    assert types(events) == ["deposit_credited"] * 3
    assert [e.payload["customer_id"] for e in events] == ["cust-0", "cust-1", "cust-2"]
    assert len({e.event_id for e in events}) == len({e.aggregate_id for e in events}) == 3


# --- offers --------------------------------------------------------------------------------------


def test_offers_accepted_and_rejected(sb: Sandbox) -> None:
    offer = sb.deposit("cust-0", "40", instrument=sb.token)
    sb.ingest()
    assert outbox(sb) == []  # an offer credits nothing yet
    assert sb.deposit_worker().run_once().accepted == 1
    (accepted,) = outbox(sb)
    assert (accepted.type, accepted.aggregate_type, accepted.aggregate_id) == (
        "offer_accepted",
        "offer",
        offer,
    )
    assert {k: accepted.payload[k] for k in ("customer_id", "amount", "status", "attempt")} == {
        "customer_id": "cust-0",
        "amount": amt("40"),
        "status": "accepted",
        "attempt": 1,
    }
    assert accepted.payload["instrument"] == {"id": sb.token.id, "admin": sb.token.admin}
    sb.ingest()
    assert types(outbox(sb)) == ["offer_accepted", "deposit_credited"]

    officer_flags(sb, sb.customers["cust-1"])
    rejected_offer = sb.deposit("cust-1", "7", instrument=sb.token)
    sb.ingest()
    mark = len(outbox(sb))
    assert sb.deposit_worker().run_once().rejected == 1
    (rejected,) = since(sb, mark)
    assert (rejected.type, rejected.aggregate_id) == ("offer_rejected", rejected_offer)
    assert "flagged" in str(rejected.payload["reason"])
    assert sb.deposit_worker().run_once().rejected == 0
    assert len(outbox(sb)) == mark + 1


# --- compliance ----------------------------------------------------------------------------------


def test_officer_actions_and_kyc_changes(sb: Sandbox) -> None:
    change_tier(sb.database.uow, "cust-2", 2, actor=OFFICER, at=sb.clock(), reason="docs")
    action, kyc = outbox(sb)
    assert (action.type, action.aggregate_id, action.payload["action"]) == (
        "compliance_action_taken",
        "cust-2",
        "customer_tier_changed",
    )
    assert action.payload["changes"] == [{"tier": 2, "was": 1}]
    assert (kyc.type, kyc.payload["tier"], kyc.payload["was_tier"]) == (
        "customer_kyc_changed",
        2,
        1,
    )
    unfreeze_customer(sb.database.uow, "cust-2", actor=OFFICER, at=sb.clock(), reason="ok")
    assert types(outbox(sb))[2:] == ["compliance_action_taken", "customer_kyc_changed"]

    freeze_customer(sb.database.uow, "cust-0", actor=OFFICER, at=sb.clock(), reason="late")
    sb.deposit("cust-0", "9")
    sb.ingest()
    (review,) = review_queue(sb.database.uow).reviews
    mark = len(outbox(sb))
    close_review(sb.database.uow, review.id, actor=OFFICER, at=sb.clock(), resolution="seen")
    (closed,) = since(sb, mark)
    assert (closed.aggregate_id, closed.payload["action"], closed.payload["reason"]) == (
        "cust-0",
        "review_closed",
        "seen",
    )
    assert closed.payload["subject"] == review.id


# --- approvals and the pause ---------------------------------------------------------------------


def test_approvals_proposed_signed_and_executed(sb: Sandbox) -> None:
    ran: list[str] = []

    def run(approval: Approval, _at: Any) -> dict[str, object]:
        ran.append(approval.id)
        return {"done": True}

    executors = {"config.change": run}
    proposer = Principal("key:p", "system_admin")
    token = current_correlation_id.set("change-5")
    try:
        proposed = propose_operation(
            sb.database.uow,
            operation="config.change",
            parameters={"key": "withdrawals.approval_above", "value": "secret-ish"},
            proposer=proposer,
            at=sb.clock(),
            required=2,
            executors=executors,
            reason="raise the threshold",
        )
    finally:
        current_correlation_id.reset(token)
    (event,) = outbox(sb)
    assert (event.type, event.aggregate_type, event.aggregate_id, event.correlation_id) == (
        "approval_proposed",
        "approval",
        proposed.id,
        "change-5",
    )
    assert "parameters" not in event.payload  # they stay in the audit trail
    assert (event.payload["approvals"], event.payload["required"]) == (1, 2)
    vote_on_approval(
        sb.database.uow,
        proposed.id,
        principal=Principal("key:q", "super_admin"),
        decision="approve",
        at=sb.clock(),
        executors=executors,
    )
    assert ran == [proposed.id]
    signed, executed = outbox(sb)[1:]
    assert (signed.type, signed.payload["decision"], signed.payload["was"]) == (
        "approval_signed",
        "approve",
        "pending",
    )
    assert (executed.type, executed.payload["status"]) == ("approval_executed", "executed")
    # Executed under the proposal's own correlation id.
    assert executed.correlation_id == "change-5"


def test_pause_and_resume_over_http_carry_the_requests_correlation_id(
    database_url: str,
) -> None:
    world: ApiWorld = api_world(database_url)
    try:
        client = world.client()
        paused = client.post(
            "/v1/system/pause",
            json={"mode": "emergency", "reason": "incident 12"},
            headers={**world.headers("system_admin"), "X-Correlation-ID": "incident-12"},
        )
        assert paused.status_code == 200, paused.text
        refused = client.post(
            "/v1/system/pause",
            json={"mode": "bogus", "reason": "x"},
            headers=world.headers("system_admin"),
        )
        assert refused.status_code >= 400
        resumed = client.post(
            "/v1/system/resume",
            json={"reason": "fixed"},
            headers={**world.headers("system_admin"), "X-Correlation-ID": "incident-12b"},
        )
        assert resumed.status_code == 200, resumed.text
        system = [e for e in outbox(world.sandbox) if e.aggregate_type == "system"]
        assert [(e.type, e.aggregate_id, e.correlation_id) for e in system] == [
            ("system_paused", "system", "incident-12"),
            ("system_resumed", "system", "incident-12b"),
        ]
        assert dict(system[0].payload) == {
            "mode": "emergency",
            "was": "running",
            "reason": "incident 12",
            "actor": system[0].payload["actor"],
        }
        assert system[1].payload["was"] == "emergency"
    finally:
        world.sandbox.close()


def test_resuming_when_not_paused_writes_nothing(sb: Sandbox) -> None:
    pause(sb.database.uow, mode="paused", reason="r", actor="admin", at=sb.clock())
    resume(sb.database.uow, reason="done", actor="admin", at=sb.clock())
    assert types(outbox(sb)) == ["system_paused", "system_resumed"]
    with pytest.raises(SluiceError):
        resume(sb.database.uow, reason="again", actor="admin", at=sb.clock())
    assert len(outbox(sb)) == 2
