"""The iSTSi issuance endpoints through the real application (``create_app`` with the test
client), on SQLite and PostgreSQL: a customer's redemption with an Idempotency-Key (the same key
again: 409, code 42, the first redemption in ``details.first``), what a user may not see of
another customer, staff's lists and views, overrides/resume/contracts proposed (202), held
deposits, the deposit address and deposits, and 503 when issuance is not configured. Overrides
through their whole path: proposed by one staff member, approved by a second through
``/v1/approvals/{id}/approve`` and executed (retry, compensate, resolve: the operation moves, an
override step and an audit record name the approval), and refused when they run (41, audited,
nothing moved) when they would refund twice or close a burned, unpaid redemption. Contract
addresses proposed, approved by a second router admin and in force once the time lock (shrunk to
an hour on a clock the test moves) passed: a new descriptor or node URL stops the router until a
restart, a new issuer party is switched by the running router (docs/issuance.md)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.config import DeploymentConfig
from sluice.demo.issuance import write_sanctions
from sluice.domain.ledger import InstrumentId
from sluice.services.audit import list_audit_records
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_contracts import contract_addresses_in_force, descriptor_checksum
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_redeem import burn_id_of
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.mint_guard import halt_minting
from tests.api_support import ApiWorld, ManualClock, api_world
from tests.integration.issuance_api_support import (
    CONFIRMATIONS,
    IssuanceWorld,
    add_issuance,
    custody_wallet,
)

AMOUNT = 200_000


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    return custody_wallet(tmp_path_factory.mktemp("keys") / "custody")


@pytest.fixture
def world(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[IssuanceWorld]:
    api = api_world(database_url, settings={"approvals.required": 2})
    built = add_issuance(api, wallet)
    built.give_istsi("cust-0", 1_000_000)
    built.give_istsi("cust-1", 1_000_000)
    yield built
    api.sandbox.close()


def redeem(
    world: IssuanceWorld, who: str, customer: str, key: str, *, amount: int = AMOUNT, **body: Any
) -> Any:
    payload = {"amount_sats": amount, "address": world.outside_address(customer), **body}
    with world.api.client() as client:
        return client.post(
            f"/v1/customers/{customer}/redemptions",
            json=payload,
            headers={**world.api.headers(who), "Idempotency-Key": key},
        )


def get(world: IssuanceWorld, who: str, path: str, **params: Any) -> Any:
    with world.api.client() as client:
        return client.get(path, headers=world.api.headers(who), params=params)


def post(world: IssuanceWorld, who: str, path: str, body: Any) -> Any:
    with world.api.client() as client:
        return client.post(path, json=body, headers=world.api.headers(who))


def test_a_customer_redeems_once_per_idempotency_key(world: IssuanceWorld) -> None:
    first = redeem(world, "user", "cust-0", "k-1")
    assert first.status_code == 201, first.text
    op = first.json()
    assert op["id"] == "redeem:cust-0:k-1"
    assert (op["type"], op["status"], op["step"]) == ("token_withdrawal", "pending", "burn")
    assert op["amount_sats"] == AMOUNT
    assert op["params"]["address"] == world.outside_address("cust-0")
    assert op["params"]["requested_by"].startswith("user:")

    again = redeem(world, "user", "cust-0", "k-1", amount=AMOUNT + 1)
    assert again.status_code == 409, again.text
    error = again.json()
    assert error["code"] == 42
    assert error["details"]["first"]["id"] == op["id"]
    assert error["details"]["first"]["amount_sats"] == AMOUNT

    # Taken once: in flight is the first amount only.
    lines = get(world, "user", "/v1/customers/cust-0/balances/detail").json()["balances"]
    istsi = [line for line in lines if line["instrument"]["id"] == "iSTSi"]
    assert len(istsi) == 1
    assert Decimal(istsi[0]["in_flight"]) == Decimal("0.002")
    assert Decimal(istsi[0]["available"]) == Decimal("0.008")

    shown = get(world, "user", f"/v1/customers/cust-0/redemptions/{op['id']}")
    assert shown.status_code == 200, shown.text
    assert shown.json()["id"] == op["id"]
    assert shown.json()["steps"] == []
    listed = get(world, "user", "/v1/customers/cust-0/redemptions").json()
    assert [item["id"] for item in listed["items"]] == [op["id"]]


def test_refused_redemptions_take_nothing(world: IssuanceWorld) -> None:
    bad = redeem(world, "user", "cust-0", "k-bad", address="bc1qnotanaddressofthisnetwork")
    assert (bad.status_code, bad.json()["code"]) == (422, 64), bad.text
    mainnet = redeem(
        world, "user", "cust-0", "k-main", address="bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
    )
    assert (mainnet.status_code, mainnet.json()["code"]) == (422, 64), mainnet.text
    too_much = redeem(world, "user", "cust-0", "k-much", amount=2_000_000)
    assert (too_much.status_code, too_much.json()["code"]) == (422, 62), too_much.text
    no_key = post(
        world,
        "user",
        "/v1/customers/cust-0/redemptions",
        {"amount_sats": AMOUNT, "address": world.outside_address("x")},
    )
    assert no_key.status_code == 422
    with world.ctx.uow() as uow:
        assert uow.issuance.operations(customer_id="cust-0") == []
    lines = get(world, "user", "/v1/customers/cust-0/balances/detail").json()["balances"]
    istsi = [line for line in lines if line["instrument"]["id"] == "iSTSi"]
    assert [Decimal(line["available"]) for line in istsi] == [Decimal("0.01")]
    assert [Decimal(line["in_flight"]) for line in istsi] == [Decimal(0)]


def test_a_user_reaches_nothing_of_another_customer(world: IssuanceWorld) -> None:
    theirs = redeem(world, "user:cust-1", "cust-1", "theirs")
    assert theirs.status_code == 201, theirs.text
    their_id = theirs.json()["id"]
    for path in (
        f"/v1/customers/cust-1/redemptions/{their_id}",
        "/v1/customers/cust-1/redemptions",
        "/v1/customers/cust-1/istsi/deposits",
        "/v1/customers/cust-1/istsi/deposit-address",
        "/v1/customers/cust-1/balances/detail",
        # Their redemption under my own customer's path is not mine either.
        f"/v1/customers/cust-0/redemptions/{their_id}",
    ):
        answer = get(world, "user", path)
        assert (answer.status_code, answer.json()["code"]) == (404, 10), (path, answer.text)
    foreign = redeem(world, "user", "cust-1", "not-mine")
    assert (foreign.status_code, foreign.json()["code"]) == (404, 10)
    # Staff endpoints refuse users outright.
    for path in ("/v1/issuance/operations", f"/v1/issuance/operations/{their_id}"):
        answer = get(world, "user", path)
        assert (answer.status_code, answer.json()["code"]) == (403, 2)
    # A compliance officer may look but not redeem for a customer.
    seen = get(world, "compliance_officer", f"/v1/customers/cust-1/redemptions/{their_id}")
    assert seen.status_code == 200, seen.text
    refused = redeem(world, "compliance_officer", "cust-1", "officer")
    assert (refused.status_code, refused.json()["code"]) == (403, 2)
    with world.ctx.uow() as uow:
        assert [op.id for op in uow.issuance.operations()] == [their_id]


def test_staff_list_and_show_operations(world: IssuanceWorld) -> None:
    mine = redeem(world, "user", "cust-0", "a").json()["id"]
    theirs = redeem(world, "user:cust-1", "cust-1", "b").json()["id"]
    all_ops = get(world, "operator", "/v1/issuance/operations").json()
    assert {item["id"] for item in all_ops["items"]} == {mine, theirs}
    only = get(world, "compliance_officer", "/v1/issuance/operations", customer_id="cust-1")
    assert [item["id"] for item in only.json()["items"]] == [theirs]
    paged = get(world, "operator", "/v1/issuance/operations", limit=1, offset=1).json()
    assert len(paged["items"]) == 1 and paged["next_offset"] == 2
    none = get(world, "operator", "/v1/issuance/operations", status="completed").json()
    assert none["items"] == []

    world.issuance.router.run_operation(mine)  # the burn commits, the payout is queued
    shown = get(world, "operator", f"/v1/issuance/operations/{mine}").json()
    assert shown["step"] != "burn"
    assert [step["step"] for step in shown["steps"]][:1] == ["burn"]
    assert shown["steps"][0]["outcome"] == "done"
    missing = get(world, "operator", "/v1/issuance/operations/redeem:cust-0:nope")
    assert (missing.status_code, missing.json()["code"]) == (404, 10)

    guard = get(world, "operator", "/v1/issuance/guard").json()
    assert guard["supply_sats"] == 2_000_000 - AMOUNT
    assert guard["minting_halted"] is False
    assert get(world, "system_admin", "/v1/issuance/transfers").json()["items"] == []


def test_overrides_resume_and_contracts_are_proposed(world: IssuanceWorld) -> None:
    op_id = redeem(world, "user", "cust-0", "o").json()["id"]
    for action in ("retry", "compensate", "resolve"):
        answer = post(
            world, "system_admin", f"/v1/issuance/operations/{op_id}/{action}", {"reason": "x"}
        )
        assert answer.status_code == 202, answer.text
        approval = answer.json()
        assert approval["operation"] == f"issuance.{action}"
        assert approval["parameters"]["operation_id"] == op_id
        assert approval["status"] == "pending"
        assert approval["required"] == 2
    refused = post(world, "operator", f"/v1/issuance/operations/{op_id}/retry", {"reason": "x"})
    assert (refused.status_code, refused.json()["code"]) == (403, 2)
    missing = post(
        world, "super_admin", "/v1/issuance/operations/redeem:cust-0:nope/retry", {"reason": "x"}
    )
    assert (missing.status_code, missing.json()["code"]) == (404, 10)
    # Nothing ran: the operation is as it was.
    with world.ctx.uow() as uow:
        op = uow.issuance.get_operation(op_id)
    assert op is not None and (op.status, op.step) == ("pending", "burn")

    not_halted = post(world, "super_admin", "/v1/issuance/guard/resume", {"reason": "ok"})
    assert (not_halted.status_code, not_halted.json()["code"]) == (409, 41)
    halt_minting(
        world.ctx.uow,
        reason="test",
        kind="test",
        details={},
        at=world.ctx.clock(),
        actor="test",
    )
    resumed = post(world, "super_admin", "/v1/issuance/guard/resume", {"reason": "checked"})
    assert resumed.status_code == 202, resumed.text
    assert resumed.json()["operation"] == "issuance.resume_minting"
    assert get(world, "operator", "/v1/issuance/guard").json()["minting_halted"] is True
    # A second principal approves: the executor resumes minting.
    approved = post(world, "system_admin:2", f"/v1/approvals/{resumed.json()['id']}/approve", {})
    assert approved.status_code == 200, approved.text
    assert get(world, "operator", "/v1/issuance/guard").json()["minting_halted"] is False

    contracts = post(
        world,
        "system_admin",
        "/v1/issuance/contracts",
        {"bitcoin_node_url": "http://127.0.0.1:18443", "reason": "new node"},
    )
    assert contracts.status_code == 202, contracts.text
    assert contracts.json()["operation"] == "issuance.update_contract_addresses"
    assert contracts.json()["parameters"]["bitcoin_node_url"] == "http://127.0.0.1:18443"
    bad = post(world, "system_admin", "/v1/issuance/contracts", {"bitcoin_node_url": "nope"})
    assert (bad.status_code, bad.json()["code"]) == (422, 60), bad.text


def test_held_deposit_actions_refuse_what_is_not_held(world: IssuanceWorld) -> None:
    op_id = redeem(world, "user", "cust-0", "h").json()["id"]
    release = post(
        world, "compliance_officer", f"/v1/issuance/deposits/{op_id}/release", {"reason": "r"}
    )
    assert release.status_code in {404, 409}, release.text
    assert release.json()["code"] in {10, 41}
    returned = post(
        world,
        "super_admin",
        "/v1/issuance/deposits/btc-deposit:00:0/return",
        {"address": world.outside_address("back"), "reason": "r"},
    )
    assert (returned.status_code, returned.json()["code"]) == (404, 10), returned.text
    refused = post(world, "system_admin", f"/v1/issuance/deposits/{op_id}/release", {"reason": "r"})
    assert (refused.status_code, refused.json()["code"]) == (403, 2)


def test_deposit_address_and_deposits(world: IssuanceWorld) -> None:
    first = get(world, "user", "/v1/customers/cust-0/istsi/deposit-address")
    assert first.status_code == 200, first.text
    address = first.json()["address"]
    assert get(world, "user", "/v1/customers/cust-0/istsi/deposit-address").json()["address"] == (
        address
    )
    assert get(world, "user", "/v1/customers/cust-0/istsi/deposits").json()["items"] == []
    script = world.wallet.validate_address(address)
    txid, vout = world.chain.fund(script, 150_000, mine=True)
    world.chain.mine(CONFIRMATIONS)
    watcher = DepositWatcher(
        world.ctx.uow, world.chain, world.wallet, world.ctx.bitcoin, world.ctx.clock
    )
    assert watcher.run_once().error is None
    deposits = get(world, "compliance_officer", "/v1/customers/cust-0/istsi/deposits").json()
    assert len(deposits["items"]) == 1
    item = deposits["items"][0]
    assert (item["txid"], item["vout"], item["amount_sats"]) == (txid, vout, 150_000)
    assert item["operation_id"] == f"btc-deposit:{txid}:{vout}"
    with world.ctx.uow() as uow:
        op = uow.issuance.get_operation(item["operation_id"])
    assert item["operation_status"] == (op.status if op is not None else None)
    # Paid: the next request answers a fresh address.
    fresh = get(world, "user", "/v1/customers/cust-0/istsi/deposit-address").json()["address"]
    assert fresh != address


def test_not_configured_answers_503(tmp_path: Path) -> None:
    api: ApiWorld = api_world(f"sqlite:///{tmp_path / 'sluice.db'}")
    try:
        assert api.context.issuance is None
        for path in (
            "/v1/issuance/guard",
            "/v1/issuance/operations",
            "/v1/customers/cust-0/redemptions",
            "/v1/customers/cust-0/istsi/deposit-address",
        ):
            answer = get_plain(api, "super_admin", path)
            assert answer.status_code == 503, (path, answer.text)
            body = answer.json()
            assert body["error"] == "issuance_not_configured"
            assert "issuance is not configured" in body["message"]
        # Permission comes first: a user is refused staff endpoints with 403 even so.
        assert get_plain(api, "user", "/v1/issuance/guard").status_code == 403
        # Balances need no issuance.
        assert get_plain(api, "user", "/v1/customers/cust-0/balances/detail").status_code == 200
    finally:
        api.sandbox.close()


def get_plain(api: ApiWorld, who: str, path: str) -> Any:
    with api.client() as client:
        return client.get(path, headers=api.headers(who))


# --- overrides approved by a second staff member and executed -----------------------------------


def approve(world: IssuanceWorld, approval_id: str, who: str = "system_admin:2") -> Any:
    answer = post(world, who, f"/v1/approvals/{approval_id}/approve", {})
    assert answer.status_code == 200, answer.text
    return answer.json()


def propose_override(world: IssuanceWorld, op_id: str, action: str, reason: str) -> Any:
    answer = post(
        world, "system_admin", f"/v1/issuance/operations/{op_id}/{action}", {"reason": reason}
    )
    assert answer.status_code == 202, answer.text
    proposal = answer.json()
    assert (proposal["operation"], proposal["status"]) == (f"issuance.{action}", "pending")
    return proposal


def operation(world: IssuanceWorld, op_id: str) -> Any:
    shown = get(world, "operator", f"/v1/issuance/operations/{op_id}")
    assert shown.status_code == 200, shown.text
    return shown.json()


def audited(world: IssuanceWorld, op_id: str) -> list[tuple[str, str]]:
    """(operation, actor) of the operation's audit records, oldest first."""
    records = list_audit_records(world.ctx.uow, operation_id=op_id, limit=500)
    return [(r.entry.operation, r.entry.actor) for r in records]


def mark_stuck(world: IssuanceWorld, op_id: str) -> None:
    """What the router leaves when a step's attempts ran out."""
    with world.ctx.uow() as uow:
        op = uow.issuance.get_operation(op_id, lock=True)
        assert op is not None
        stuck = replace(op, status="stuck", version=op.version + 1, last_error="node timed out")
        assert uow.issuance.update_operation(stuck, expected_version=op.version)
        uow.commit()


def istsi_of(world: IssuanceWorld, customer: str) -> tuple[Decimal, Decimal]:
    """The customer's iSTSi: (available, in flight)."""
    lines = get(world, "user", f"/v1/customers/{customer}/balances/detail").json()["balances"]
    (line,) = [line for line in lines if line["instrument"]["id"] == "iSTSi"]
    return Decimal(line["available"]), Decimal(line["in_flight"])


def watched_deposit(world: IssuanceWorld, customer: str, sats: int) -> str:
    """A deposit to the customer's address, confirmed: the watcher opens its operation."""
    who = "user" if customer == "cust-0" else f"user:{customer}"
    address = get(world, who, f"/v1/customers/{customer}/istsi/deposit-address").json()
    txid, vout = world.chain.fund(world.wallet.validate_address(address["address"]), sats)
    world.chain.mine(CONFIRMATIONS)
    watcher = DepositWatcher(
        world.ctx.uow, world.chain, world.wallet, world.ctx.bitcoin, world.ctx.clock
    )
    assert watcher.run_once().error is None
    return f"btc-deposit:{txid}:{vout}"


def test_retry_compensate_and_resolve_run_once_a_second_staff_member_approves(
    world: IssuanceWorld,
) -> None:
    # compensate: a redemption not burned yet; the compensation refunds the customer.
    compensated = redeem(world, "user", "cust-0", "c").json()["id"]
    assert istsi_of(world, "cust-0") == (Decimal("0.008"), Decimal("0.002"))
    proposal = propose_override(world, compensated, "compensate", "customer asked")
    # The proposer's own second vote does not count: one distinct principal so far.
    again = post(world, "system_admin", f"/v1/approvals/{proposal['id']}/approve", {})
    assert again.status_code in {403, 409}, again.text
    assert operation(world, compensated)["status"] == "pending"
    approved = approve(world, proposal["id"])
    assert approved["status"] == "executed", approved
    assert approved["result"]["operation"]["id"] == compensated
    if operation(world, compensated)["status"] != "compensated":  # handed to its refund step
        world.issuance.router.run_operation(compensated)
    shown = operation(world, compensated)
    assert shown["status"] == "compensated"
    actor = f"approval:{proposal['id']}"
    assert any(s["kind"] == "override" and s["detail"]["actor"] == actor for s in shown["steps"]), (
        shown["steps"]
    )
    assert ("issuance_compensate", actor) in audited(world, compensated)
    assert istsi_of(world, "cust-0") == (Decimal("0.01"), Decimal(0))

    # retry: a redemption burned, then stuck at its next step; put back there, attempts zero.
    retried = redeem(world, "user:cust-1", "cust-1", "r").json()["id"]
    world.issuance.router.run_operation(retried)  # the burn commits
    step = operation(world, retried)["step"]
    assert step != "burn"
    mark_stuck(world, retried)
    proposal = propose_override(world, retried, "retry", "the node is back")
    assert operation(world, retried)["status"] == "stuck"
    approved = approve(world, proposal["id"], "super_admin")
    assert approved["status"] == "executed", approved
    shown = operation(world, retried)
    assert (shown["status"], shown["step"], shown["attempts"]) == ("pending", step, 0)
    assert shown["last_error"] is None
    assert ("issuance_retry", f"approval:{proposal['id']}") in audited(world, retried)
    with world.ctx.uow() as uow:
        burns = uow.issuance.get_burn(burn_id_of(retried))
    assert burns is not None and burns.status == "committed"  # the burn is not sent again

    # resolve: a deposit stuck before anything was minted; closed with the reason.
    deposit = watched_deposit(world, "cust-0", 150_000)
    mark_stuck(world, deposit)
    supply = get(world, "operator", "/v1/issuance/guard").json()["supply_sats"]
    proposal = propose_override(world, deposit, "resolve", "returned off-band")
    approved = approve(world, proposal["id"])
    assert approved["status"] == "executed", approved
    shown = operation(world, deposit)
    assert shown["status"] == "resolved" and shown["completed_at"] is not None
    assert ("issuance_resolve", f"approval:{proposal['id']}") in audited(world, deposit)
    world.issuance.router.tick()  # nothing runs a resolved operation
    assert operation(world, deposit)["status"] == "resolved"
    assert get(world, "operator", "/v1/issuance/guard").json()["supply_sats"] == supply


def test_an_approved_override_that_would_pay_or_mint_twice_is_refused(
    world: IssuanceWorld,
) -> None:
    compensated = redeem(world, "user", "cust-0", "c").json()["id"]
    first = propose_override(world, compensated, "compensate", "asked")
    assert approve(world, first["id"])["status"] == "executed"
    if operation(world, compensated)["status"] != "compensated":
        world.issuance.router.run_operation(compensated)
    assert operation(world, compensated)["status"] == "compensated"
    refunded = istsi_of(world, "cust-0")

    # A second compensation (the refund again) is refused when it runs: 41, nothing moves.
    second = propose_override(world, compensated, "compensate", "asked again")
    refused = approve(world, second["id"])
    assert refused["status"] == "failed", refused
    assert refused["result"]["code"] == 41 and "compensated" in refused["error"]
    assert operation(world, compensated)["status"] == "compensated"
    assert istsi_of(world, "cust-0") == refunded

    # Resolving a burned redemption whose Bitcoin is not paid would close it with the customer
    # owed: refused, the operator pointed to compensate.
    burned = redeem(world, "user:cust-1", "cust-1", "b").json()["id"]
    world.issuance.router.run_operation(burned)
    before = operation(world, burned)
    assert before["step"] != "burn"
    mark_stuck(world, burned)
    proposal = propose_override(world, burned, "resolve", "close it")
    refused = approve(world, proposal["id"])
    assert refused["status"] == "failed" and refused["result"]["code"] == 41, refused
    assert "its iSTSi was burned" in refused["error"] and "compensate" in refused["error"]
    after = operation(world, burned)
    assert (after["status"], after["step"]) == ("stuck", before["step"])
    trail = audited(world, burned)
    assert ("issuance_resolve_refused", f"approval:{proposal['id']}") in trail
    assert ("issuance_compensate_refused", f"approval:{second['id']}") in audited(
        world, compensated
    )


# --- update_contract_addresses through approval, time lock and the router -------------------------

TIMELOCK_S = 3600.0
START = datetime(2026, 12, 6, 9, 0, tzinfo=UTC)


@pytest.fixture
def timed(
    database_url: str, wallet: EmbitCustodyWallet, tmp_path: Path
) -> Iterator[tuple[IssuanceWorld, ManualClock]]:
    """An issuance world on a clock the test moves (past the time lock), whose router rebuilds
    its context for the contract addresses in force as `sluice serve`'s does
    (:func:`bootstrap.issuance_rebuild` over the sandbox custody it runs)."""
    clock = ManualClock(START)
    api = api_world(
        database_url,
        settings={"approvals.required": 2, "config.timelock_s": TIMELOCK_S},
        clock=clock,
    )
    built = add_issuance(api, wallet)
    ctx = built.ctx
    custody = bootstrap.BitcoinCustody(
        node=built.chain,
        wallet=wallet,
        settings=ctx.bitcoin,
        description="sandbox custody on the in-memory chain",
        configured=False,
        signers=2,
    )
    rebuild = bootstrap.issuance_rebuild(
        ctx, api.sandbox.ledger, custody, DeploymentConfig(data_dir=tmp_path), api.sandbox.database
    )
    router = IssuanceRouter(ctx, DEFINITIONS, rebuild=rebuild)
    built.issuance = replace(built.issuance, router=router)
    api.context.issuance = built.issuance
    yield built, clock
    api.sandbox.close()


def other_descriptor(descriptor: str) -> str:
    """Another well-formed descriptor (1 of 3 keys instead of 2), with its right checksum."""
    body = descriptor.partition("#")[0]
    assert "multi(2," in body
    changed = body.replace("multi(2,", "multi(1,", 1)
    return f"{changed}#{descriptor_checksum(changed)}"


def propose_contracts(world: IssuanceWorld, body: dict[str, str]) -> Any:
    """Proposed by one router admin, approved by a second: the executor writes the addresses with
    the time lock's ``effective_at``."""
    proposed = post(world, "system_admin", "/v1/issuance/contracts", body)
    assert proposed.status_code == 202, proposed.text
    assert (proposed.json()["status"], proposed.json()["timelock_s"]) == ("pending", TIMELOCK_S)
    approved = approve(world, proposed.json()["id"])
    assert approved["status"] == "executed", approved
    (record,) = list_audit_records(
        world.ctx.uow, operation_id=f"contract-addresses:{approved['id']}"
    )
    assert record.entry.operation == "issuance_contract_addresses_updated"
    return approved


def test_contract_addresses_take_effect_after_approval_and_time_lock(
    timed: tuple[IssuanceWorld, ManualClock],
) -> None:
    """A new custody descriptor or node URL in force stops the router (no step runs) until the
    process is restarted with a matching ``[bitcoin]``; a new issuer party is switched by the
    running router at its next round. Each update is the whole set: one that names only the
    issuer party puts the configured node and descriptor back in force."""
    world, clock = timed
    router = world.issuance.router
    configured = router.ctx.issuer.instrument

    # A new descriptor: within the time lock nothing changes.
    approved = propose_contracts(
        world,
        {"custody_descriptor": other_descriptor(world.wallet.descriptor), "reason": "new keys"},
    )
    effective = datetime.fromisoformat(approved["effective_at"])
    assert effective == START + timedelta(seconds=TIMELOCK_S)
    assert contract_addresses_in_force(world.ctx.uow, clock()) is None
    assert router.tick().error is None
    # Past it: every round fails before any step, saying what to restart with.
    clock.now = effective + timedelta(seconds=1)
    deposit = watched_deposit(world, "cust-1", 150_000)  # confirmed now: due at its kyc step
    tick = router.tick()
    assert tick.error is not None and "restart with that [bitcoin] descriptor" in tick.error
    assert router.tick().error == tick.error
    assert (operation(world, deposit)["status"], operation(world, deposit)["steps"]) == (
        "pending",
        [],
    )

    # A node URL other than the running custody's stops it the same way.
    approved = propose_contracts(
        world, {"bitcoin_node_url": "http://127.0.0.1:18443", "reason": "new node"}
    )
    clock.now = datetime.fromisoformat(approved["effective_at"]) + timedelta(seconds=1)
    tick = router.tick()
    assert tick.error is not None and "restart with [bitcoin] rpc_url" in tick.error
    assert operation(world, deposit)["steps"] == []

    # A new issuer party (and nothing else): the running router's next round moves the issuer's
    # commands to that party's iSTSi (created on the ledger, onboarded in the books), and runs
    # again on the configured custody.
    new_issuer = world.api.sandbox.ledger.allocate_party("issuer-two", "registry")
    approved = propose_contracts(world, {"issuer_party": new_issuer, "reason": "issuer rotated"})
    assert approved["result"]["issuer_party"] == new_issuer
    assert router.tick().error is not None  # the node's row is still the one in force
    clock.now = datetime.fromisoformat(approved["effective_at"]) + timedelta(seconds=1)
    tick = router.tick()
    assert tick.rebuilt and tick.error is None, tick
    moved_to = InstrumentId(new_issuer, "iSTSi")
    assert router.ctx.issuer.instrument == moved_to != configured
    assert router.ctx.node is world.chain and router.ctx.wallet is world.wallet
    with world.ctx.uow() as uow:
        assert moved_to in {r.instrument for r in uow.reference.instruments()}
    # The deposit's steps run now, and its iSTSi is minted by the new issuer.
    shown = operation(world, deposit)
    assert (shown["status"], shown["step"]) == ("waiting", "credit"), shown
    assert router.ctx.issuer.supply() == 150_000


def test_a_redemption_to_an_address_on_the_sanctions_list_is_refused_before_any_burn(
    world: IssuanceWorld, tmp_path: Path
) -> None:
    """The destination is screened against the sanctions list's digital currency addresses (an
    OFAC SDN entry ``Digital Currency Address - XBT``), not only against officer-flagged ones:
    refused before anything is taken or burned."""
    listed = world.outside_address("sanctioned")
    ctx = replace(
        world.ctx,
        registry=KycRegistry(
            world.ctx.registry.settings, write_sanctions(tmp_path / "sdn", listed)
        ),
    )
    world.issuance = replace(world.issuance, context=ctx, router=IssuanceRouter(ctx, DEFINITIONS))
    world.api.context.issuance = world.issuance
    supply = ctx.issuer.supply()

    refused = redeem(world, "user", "cust-0", "to-listed", address=listed)
    assert refused.status_code == 403, refused.text
    body = refused.json()
    assert body["code"] == 22 and listed in body["message"], body
    with world.ctx.uow() as uow:
        assert uow.issuance.operations(customer_id="cust-0") == []
        assert uow.issuance.get_burn(burn_id_of("redeem:cust-0:to-listed")) is None
    assert istsi_of(world, "cust-0") == (Decimal("0.01"), Decimal(0))
    assert world.issuance.router.tick().error is None
    assert ctx.issuer.supply() == supply  # nothing burned

    # Another address of the same customer goes through.
    fine = redeem(world, "user", "cust-0", "to-fine")
    assert fine.status_code == 201, fine.text
