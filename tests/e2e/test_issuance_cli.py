"""``sluice issuance``, ``sluice redeem`` and ``sluice balances`` as an operator drives them, on
an embedded world and the sandbox custody.

Covers: a customer's Bitcoin deposits on the sandbox chain (``sluice btc sandbox fund``, one
``--from`` an address on the deployment's sanctions list) confirmed by ``sluice btc watch --once``
open one ``bitcoin_deposit`` operation each; ``sluice issuance run --once`` reads each sender: the
deposit within the tier's mint limit goes on to be minted, the one over it and the listed sender's
are held; the listed sender's can be neither released nor returned (41: the funds stay frozen,
shown as held iSTSi), the other one ``issuance release`` lets on; minted iSTSi to the treasury
waits for ingestion's credit (booked here in process, as ingestion would), then completes; ``list``
and ``show --json`` keys (a contract) and their filters; ``sluice balances --customer --json``
shows the iSTSi; ``sluice redeem`` moves it to in flight and opens the redemption; the same key
again is refused with error 42 showing the first operation (``details.first`` under ``--json``, and
on stdout for people); an override (``issuance compensate``) is only proposed while two approvals
are required, and with one it runs at once (the redemption refunded, the iSTSi available again); a
second compensation is refused (41) with nothing changed; ``issuance resolve`` (proposed, then
run with one approval) closes a held deposit and ``issuance retry`` puts a stuck one back at its
step, which runs again without a second mint; a retry or resolve of a completed deposit and a
resolve of a burned, unpaid redemption are refused (41) and audited; ``issuance guard``; bad
input (unknown status, unknown operation, an address of another network, a party id) gets a clear
error and exit code 2.

How: every ``sluice`` is the virtualenv's console script run as a process with
``SLUICE_DATA_DIR`` in ``tmp_path`` (the helpers of ``test_cli_over_the_wire``); the embedded
world (ledger file, treasury, instruments) and the customer are made in process first, as `sluice
demo` would; a configuration (``SLUICE_CONFIG``) names the one-entry sanctions list's directory and
tier 1's mint limit, as a deployment does. Each ``sluice`` start costs seconds, so the steps
share few tests.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.params import AddressCodec
from sluice.demo.issuance import write_sanctions
from sluice.domain.audit import AuditRecord
from sluice.domain.chains import CHAINS
from sluice.domain.journal import (
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.ledger.local.engine import EmbeddedLedger
from sluice.ports.issuance import IssuanceOperation, sats_to_amount
from sluice.server.world import prepare_embedded_world
from sluice.services.audit import list_audit_records
from sluice.services.reference import register_customer
from tests.e2e.test_cli_over_the_wire import Done, environment, sluice
from tests.ledger_holdings import mirror_holdings

pytestmark = pytest.mark.slow

# An address outside custody (BIP 173's P2WPKH example, on regtest).
OUTSIDE = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
MAINNET = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"
OPERATION_KEYS = {
    "id",
    "type",
    "correlation_id",
    "status",
    "customer_id",
    "amount_sats",
    "step",
    "attempts",
    "params",
    "result",
    "last_error",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "completed_at",
}
STEP_KEYS = {"seq", "step", "kind", "outcome", "attempt", "detail", "error", "at"}
GUARD_KEYS = {
    "supply_sats",
    "ledger_supply_sats",
    "reserves_sats",
    "pending_redemptions_sats",
    "pending_payouts_sats",
    "unminted_deposits_sats",
    "headroom_sats",
    "minting_halted",
    "halted_reason",
}
CLEAN_SATS = 60_000  # under alice's tier's mint limit: minted at once
DEPOSIT_SATS = 150_000  # over it: held until an officer releases it
LISTED_SATS = 40_000  # from the listed address: held, never released nor returned
MINTED = sats_to_amount(CLEAN_SATS + DEPOSIT_SATS)
ZERO = Decimal(0)
FROZEN = sats_to_amount(LISTED_SATS)  # the listed deposit, held for good
# The sanctioned sender (a P2WPKH script outside custody) and the deployment's KYC section: the
# one-entry list's directory (as `sluice` loads lists) and tier 1's mint limit per operation.
LISTED = AddressCodec(CHAINS["regtest"]).address_of(bytes.fromhex("0014" + "66" * 20)) or ""
MINT_LIMIT = "0.001"
REDEEM_SATS = 100_000  # at least the payout fee maximum (50 000 sats) + dust


def run(env: dict[str, str], *args: str, code: int = 0) -> Done:
    return sluice(*args, env=env, code=code)


def as_json(env: dict[str, str], *args: str, code: int = 0) -> Any:
    """``sluice ARGS --json``: exactly one JSON document on stdout, decoded."""
    return json.loads(run(env, *args, "--json", code=code).stdout)


class World:
    """The data directory: an embedded ledger with the sandbox's world, the Integration DB."""

    def __init__(self, data: Path) -> None:
        self.data = data
        write_sanctions(data / "sanctions", LISTED)
        # The router polls a waiting operation again at once: each `issuance run --once` then
        # finds it due, however fast the commands before it ran.
        self.config = (
            f'[compliance]\nsanctions_list = "{data / "sanctions"}"\n\n'
            f'[[compliance.limits]]\ntier = 1\noperation = "mint"\nper_operation = "{MINT_LIMIT}"\n'
            "\n[issuance]\npoll_s = 0.001\n"
        )
        (data / "sluice.toml").write_text(self.config)
        self.env = environment(
            data, SLUICE_ACTOR="operator-1", SLUICE_CONFIG=str(data / "sluice.toml")
        )
        self.database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
        world = prepare_embedded_world(data / "ledger.db", self.database, actor="test")
        self.treasury = world.treasury
        world.ledger.close()
        register_customer(self.database.uow, "alice", "Alice Example", [])

    def credit_mint(self, operation_id: str, sats: int) -> None:
        """What ingestion does with a mint to the treasury: books it to the customer and marks
        the mint record credited, in one transaction."""
        with self.database.uow() as uow:
            (istsi,) = [
                r.instrument for r in uow.reference.instruments() if r.instrument.id == "iSTSi"
            ]
            value = sats_to_amount(sats)
            uow.withdrawals.post(
                [
                    JournalTransaction(
                        id=f"test:{operation_id}:mint",
                        kind="issuance_mint",
                        postings=(
                            Posting(AccountRef(treasury_account_name(self.treasury), istsi), value),
                            Posting(AccountRef(customer_account_name("alice"), istsi), -value),
                        ),
                    )
                ]
            )
            uow.issuance.mark_mint_credited(f"issuance:{operation_id}:mint")
            uow.commit()

    def operation(self, operation_id: str) -> IssuanceOperation:
        with self.database.uow() as uow:
            found = uow.issuance.get_operation(operation_id)
        assert found is not None, operation_id
        return found

    def close(self) -> None:
        self.database.dispose()


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path / "data")
    yield made
    made.close()


def istsi_line(env: dict[str, str]) -> tuple[Decimal, Decimal, Decimal]:
    """Alice's iSTSi: (available, held, in flight)."""
    balances = as_json(env, "balances", "--customer", "alice")
    assert balances["customer_id"] == "alice"
    (line,) = [b for b in balances["balances"] if b["instrument"]["id"] == "iSTSi"]
    return Decimal(line["available"]), Decimal(line["held"]), Decimal(line["in_flight"])


def test_a_deposit_is_minted_redeemed_once_and_compensated_through_the_cli(world: World) -> None:
    env = world.env
    address = as_json(env, "btc", "address", "--customer", "alice")["address"]
    ids = {}
    for name, sats, sender in (
        ("clean", CLEAN_SATS, ()),
        ("large", DEPOSIT_SATS, ()),
        ("listed", LISTED_SATS, ("--from", LISTED)),
    ):
        funded = as_json(
            env, "btc", "sandbox", "fund", "--address", address, "--amount", str(sats), *sender
        )
        ids[name] = f"btc-deposit:{funded['txid']}:{funded['vout']}"
    as_json(env, "btc", "sandbox", "mine", "6")
    assert as_json(env, "btc", "watch", "--once")["watch"]["confirmed"] == 3

    # The watcher opened one operation per deposit; nothing ran yet.
    listed = {op["id"]: op for op in as_json(env, "issuance", "list")}
    assert set(listed) == set(ids.values())
    for name, sats in (("clean", CLEAN_SATS), ("large", DEPOSIT_SATS), ("listed", LISTED_SATS)):
        op = listed[ids[name]]
        assert set(op) == OPERATION_KEYS
        assert (op["type"], op["status"], op["step"]) == ("bitcoin_deposit", "pending", "kyc")
        assert (op["customer_id"], op["amount_sats"]) == ("alice", sats)

    # KYC reads each deposit's sender: the clean one goes on to be minted at once; the one over
    # the tier's mint limit and the one from the listed address are held.
    tick = as_json(env, "issuance", "run", "--once")
    assert sorted(tick["router"]["held"]) == sorted([ids["large"], ids["listed"]])
    assert tick["router"]["error"] is None
    assert set(tick["transfers"]) == {"approved", "rejected", "resent", "failed"}
    held = as_json(
        env,
        "issuance",
        "list",
        "--status",
        "held",
        "--customer",
        "alice",
        "--type",
        "bitcoin_deposit",
    )
    assert sorted(op["id"] for op in held) == sorted([ids["large"], ids["listed"]])
    why = {op["id"]: op["last_error"] for op in held}
    assert f"sender {LISTED} is" in why[ids["listed"]] and "sanctions" in why[ids["listed"]]
    assert "over the per_operation limit 0.0010000000 of tier 1" in why[ids["large"]]
    clean = world.operation(ids["clean"])  # read in process: no sluice start
    assert (clean.status, clean.step, clean.result["kyc"]) == ("waiting", "credit", "allowed")

    # The listed sender's Bitcoin stays frozen: neither released nor returned (41).
    for refused in (
        run(env, "issuance", "release", ids["listed"], "--reason", "looks fine", code=2),
        run(
            env,
            "issuance",
            "return",
            ids["listed"],
            "--to",
            OUTSIDE,
            "--reason",
            "send back",
            code=2,
        ),
    ):
        assert "error 41" in refused.stderr and f"sender {LISTED} is listed" in refused.stderr
    # The limit's hold is an officer's to lift.
    released = as_json(env, "issuance", "release", ids["large"], "--reason", "source checked")
    assert (released["status"], released["step"]) == ("pending", "reserve")

    # Reserved and minted to the treasury; then both wait for ingestion's credit.
    as_json(env, "issuance", "run", "--once")
    shown = as_json(env, "issuance", "show", ids["large"])
    assert set(shown) == OPERATION_KEYS | {"steps"}
    assert all(set(step) == STEP_KEYS for step in shown["steps"])
    assert (shown["status"], shown["step"]) == ("waiting", "credit"), shown
    kinds = [(s["step"], s["kind"], s["outcome"]) for s in shown["steps"]]
    assert kinds[:3] == [
        ("kyc", "step", "hold"),
        ("kyc", "override", "done"),
        ("reserve", "step", "done"),
    ], kinds
    assert ("mint", "step", "done") in kinds
    guard = as_json(env, "issuance", "guard")
    assert set(guard) == GUARD_KEYS
    assert guard["supply_sats"] == CLEAN_SATS + DEPOSIT_SATS and guard["minting_halted"] is False

    world.credit_mint(ids["clean"], CLEAN_SATS)
    world.credit_mint(ids["large"], DEPOSIT_SATS)
    tick = as_json(env, "issuance", "run", "--once")
    assert sorted(tick["router"]["completed"]) == sorted([ids["clean"], ids["large"]])
    # The listed deposit's iSTSi shows as held: never minted, never released.
    assert istsi_line(env) == (MINTED, FROZEN, ZERO)

    # A redemption: the iSTSi moves to in flight at once.
    redemption = as_json(
        env,
        "redeem",
        "--customer",
        "alice",
        "--amount",
        str(REDEEM_SATS),
        "--to",
        OUTSIDE,
        "--idempotency-key",
        "r-1",
    )
    assert set(redemption) == OPERATION_KEYS
    assert (redemption["id"], redemption["status"], redemption["step"]) == (
        "redeem:alice:r-1",
        "pending",
        "burn",
    )
    assert redemption["params"]["address"] == OUTSIDE
    assert istsi_line(env) == (MINTED - Decimal("0.001"), FROZEN, Decimal("0.001"))

    # The same key again: error 42 with the first operation, nothing taken twice.
    again = run(
        env,
        "redeem",
        "--customer",
        "alice",
        "--amount",
        "120000",
        "--to",
        OUTSIDE,
        "--idempotency-key",
        "r-1",
        "--json",
        code=2,
    )
    document = json.loads(again.stdout)
    assert (document["code"], document["error"]) == (42, "duplicate_operation")
    assert document["details"]["first"]["id"] == "redeem:alice:r-1"
    assert document["details"]["first"]["amount_sats"] == REDEEM_SATS
    assert "error 42 duplicate_operation" in again.stderr
    people = run(
        env,
        "redeem",
        "--customer",
        "alice",
        "--amount",
        str(REDEEM_SATS),
        "--to",
        OUTSIDE,
        "--idempotency-key",
        "r-1",
        code=2,
    )
    assert "operation redeem:alice:r-1: pending at step burn" in people.stdout
    assert "error 42" in people.stderr
    assert istsi_line(env) == (MINTED - Decimal("0.001"), FROZEN, Decimal("0.001"))

    # Two approvals required (the default): the compensation is only proposed.
    proposed = as_json(env, "issuance", "compensate", "redeem:alice:r-1", "--reason", "asked")
    approval = proposed["approval"]
    assert (approval["operation"], approval["status"]) == ("issuance.compensate", "pending")
    assert (approval["approvals"], approval["required"]) == (1, 2)
    assert approval["parameters"] == {"operation_id": "redeem:alice:r-1", "reason": "asked"}
    assert as_json(env, "issuance", "show", "redeem:alice:r-1")["status"] == "pending"

    # One approval suffices: it runs at once and refunds the redemption (nothing was burned).
    config = world.data / "one-approval.toml"
    config.write_text(world.config + '\n[api.settings]\n"approvals.required" = 1\n')
    single = {**env, "SLUICE_CONFIG": str(config)}
    done = as_json(single, "issuance", "compensate", "redeem:alice:r-1", "--reason", "asked")
    assert done["approval"]["status"] == "executed"
    assert done["operation"]["id"] == "redeem:alice:r-1"
    if done["operation"]["status"] != "compensated":  # handed to the refund step
        as_json(env, "issuance", "run", "--once")
    final = as_json(env, "issuance", "show", "redeem:alice:r-1")
    assert final["status"] == "compensated"
    assert any(s["kind"] == "override" for s in final["steps"])
    assert istsi_line(env) == (MINTED, FROZEN, ZERO)

    # A second compensation is refused (41) and changes nothing.
    refused = run(single, "issuance", "compensate", "redeem:alice:r-1", "--reason", "again", code=2)
    assert "error 41" in refused.stderr
    assert istsi_line(env) == (MINTED, FROZEN, ZERO)


def test_bad_input_gets_a_clear_error(world: World) -> None:
    env = world.env
    bad_status = run(env, "issuance", "list", "--status", "lost", code=2)
    assert "--status 'lost': expected one of pending" in bad_status.stderr
    unknown = run(env, "issuance", "show", "btc-deposit:nope:0", "--json", code=2)
    assert json.loads(unknown.stdout)["code"] == 10
    assert "error 10 not_found: unknown issuance operation" in unknown.stderr
    other_network = run(
        env,
        "redeem",
        "--customer",
        "alice",
        "--amount",
        "50000",
        "--to",
        MAINNET,
        "--idempotency-key",
        "k",
        code=2,
    )
    assert "error 64" in other_network.stderr
    bad_party = run(
        env, "issuance", "set-party", "--customer", "alice", "--party", "not a party", code=2
    )
    assert "error 60" in bad_party.stderr
    nobody = run(env, "balances", "--customer", "carol", code=2)
    assert "error 10 not_found: unknown customer 'carol'" in nobody.stderr
    party = f"alice::1220{'ab' * 32}"
    chosen = as_json(
        env, "issuance", "set-party", "--customer", "alice", "--party", party, "--mint-to-party"
    )
    assert chosen == {"customer_id": "alice", "party": party, "mint_to_party": True}
    with world.database.uow() as uow:
        assert uow.issuance.mint_to_party("alice") == party


def mark_stuck(world: World, operation_id: str, error: str) -> None:
    """What the router leaves when a step's attempts ran out: the operation ``stuck`` at its
    step (in process: no sluice start, and no step of the CLI world fails by itself)."""
    with world.database.uow() as uow:
        op = uow.issuance.get_operation(operation_id, lock=True)
        assert op is not None
        stuck = replace(op, status="stuck", version=op.version + 1, last_error=error)
        assert uow.issuance.update_operation(stuck, expected_version=op.version)
        uow.commit()


def mirror_treasury(world: World) -> None:
    """Ingestion's booking of the treasury's iSTSi holdings (which a burn spends), read from the
    ledger file while no ``sluice`` has it open."""
    with world.database.uow() as uow:
        (istsi,) = [r.instrument for r in uow.reference.instruments() if r.instrument.id == "iSTSi"]
    ledger = EmbeddedLedger.open(str(world.data / "ledger.db"), read_only=True)
    try:
        mirror_holdings(world.database, ledger, world.treasury, istsi)
    finally:
        ledger.close()


def refusals(world: World, operation: str) -> list[AuditRecord]:
    records = list_audit_records(world.database.uow, limit=500)
    return [r for r in records if r.entry.operation == operation]


def test_retry_and_resolve_run_through_the_cli_and_refuse_a_second_mint_or_a_lost_burn(
    world: World,
) -> None:
    """``sluice issuance resolve`` closes a held deposit (only proposed while two approvals are
    required, run at once with one); ``sluice issuance retry`` puts a stuck deposit back at its
    step, which runs again without minting a second time; a retry or resolve of the completed
    deposit is refused (41: its mint would be repeated or its record closed over), and so is a
    resolve of a redemption whose iSTSi was burned and whose Bitcoin is not paid yet (it would
    close it with the customer owed); each refusal is audited and changes nothing."""
    env = world.env
    config = world.data / "one-approval.toml"
    config.write_text(world.config + '\n[api.settings]\n"approvals.required" = 1\n')
    single = {**env, "SLUICE_CONFIG": str(config)}
    address = as_json(env, "btc", "address", "--customer", "alice")["address"]
    ids = {}
    for name, sats, sender in (
        ("first", CLEAN_SATS, ()),
        ("second", CLEAN_SATS, ()),
        ("listed", LISTED_SATS, ("--from", LISTED)),
    ):
        funded = as_json(
            env, "btc", "sandbox", "fund", "--address", address, "--amount", str(sats), *sender
        )
        ids[name] = f"btc-deposit:{funded['txid']}:{funded['vout']}"
    as_json(env, "btc", "sandbox", "mine", "6")
    assert as_json(env, "btc", "watch", "--once")["watch"]["confirmed"] == 3
    tick = as_json(env, "issuance", "run", "--once")
    assert tick["router"]["held"] == [ids["listed"]]
    minted = 2 * CLEAN_SATS
    assert as_json(env, "issuance", "guard")["supply_sats"] == minted

    # resolve: proposed while two approvals are required; nothing moves.
    proposed = as_json(env, "issuance", "resolve", ids["listed"], "--reason", "case closed")
    assert (proposed["approval"]["operation"], proposed["approval"]["status"]) == (
        "issuance.resolve",
        "pending",
    )
    assert world.operation(ids["listed"]).status == "held"
    # With one approval it runs at once: closed with the reason, nothing minted for it.
    done = as_json(single, "issuance", "resolve", ids["listed"], "--reason", "case closed")
    assert done["approval"]["status"] == "executed"
    assert (done["operation"]["id"], done["operation"]["status"]) == (ids["listed"], "resolved")
    shown = as_json(env, "issuance", "show", ids["listed"])
    assert shown["status"] == "resolved" and shown["completed_at"] is not None
    (override,) = [s for s in shown["steps"] if s["kind"] == "override"]
    assert override["detail"]["action"] == "resolve"
    assert override["detail"]["reason"] == "case closed"
    assert override["detail"]["actor"] == f"approval:{done['approval']['id']}"
    assert as_json(env, "issuance", "guard")["supply_sats"] == minted
    people = run(single, "issuance", "resolve", ids["listed"], "--reason", "again", code=2)
    assert "error 41" in people.stderr and "is resolved" in people.stderr

    # retry: the first deposit is stuck at its credit step (its mint is on the ledger already).
    mark_stuck(world, ids["first"], "ingestion did not answer")
    retried = as_json(single, "issuance", "retry", ids["first"], "--reason", "ingestion is back")
    assert retried["approval"]["status"] == "executed"
    operation = retried["operation"]
    assert (operation["status"], operation["step"], operation["attempts"]) == (
        "pending",
        "credit",
        0,
    )
    assert operation["last_error"] is None
    # The step runs again and finds the mint it made: nothing is minted a second time.
    as_json(env, "issuance", "run", "--once")
    assert world.operation(ids["first"]).status == "waiting"
    guard = as_json(env, "issuance", "guard")
    assert (guard["supply_sats"], guard["ledger_supply_sats"]) == (minted, minted)
    world.credit_mint(ids["first"], CLEAN_SATS)
    world.credit_mint(ids["second"], CLEAN_SATS)
    tick = as_json(env, "issuance", "run", "--once")
    assert sorted(tick["router"]["completed"]) == sorted([ids["first"], ids["second"]])

    # A retry or a resolve of the completed deposit is refused: the mint is never repeated.
    for action in ("retry", "resolve"):
        refused = run(
            single, "issuance", action, ids["first"], "--reason", "mint it again", "--json", code=2
        )
        assert json.loads(refused.stdout)["code"] == 41, refused.stdout
        assert "error 41" in refused.stderr and "is completed" in refused.stderr
    assert world.operation(ids["first"]).status == "completed"
    guard = as_json(env, "issuance", "guard")
    assert (guard["supply_sats"], guard["ledger_supply_sats"]) == (minted, minted)
    assert istsi_line(env)[0] == sats_to_amount(minted)

    # A redemption burned and waiting for its payout: resolving it would close it with the
    # customer owed its Bitcoin; refused, and the operator is pointed to compensate.
    as_json(
        env,
        "redeem",
        "--customer",
        "alice",
        "--amount",
        str(REDEEM_SATS),
        "--to",
        OUTSIDE,
        "--idempotency-key",
        "r-2",
    )
    mirror_treasury(world)
    as_json(env, "issuance", "run", "--once")
    burned = world.operation("redeem:alice:r-2")
    assert burned.status == "waiting" and burned.step != "burn", burned
    refused = run(single, "issuance", "resolve", "redeem:alice:r-2", "--reason", "done", code=2)
    assert "error 41" in refused.stderr and "its iSTSi was burned" in refused.stderr
    assert "compensate it instead" in refused.stderr
    after = world.operation("redeem:alice:r-2")
    assert (after.status, after.step, after.version) == (burned.status, burned.step, burned.version)
    assert as_json(env, "issuance", "guard")["supply_sats"] == minted - REDEEM_SATS

    # Every refusal left an audit record with the operator's reason.
    assert len(refusals(world, "issuance_retry_refused")) == 1
    resolved_refusals = refusals(world, "issuance_resolve_refused")
    assert [r.entry.operation_id for r in resolved_refusals] == [
        ids["listed"],
        ids["first"],
        "redeem:alice:r-2",
    ]
    assert all(r.entry.parameters["code"] == 41 for r in resolved_refusals)
