"""What each party reads from the embedded ledger, and that it has the JSON Ledger API v2 shape.

Covers per-node offsets, projections (who sees which events, with which node ids), checkpoints in
the stream, ``update_by_id``, ``offset_at_record_time``, the active contract set, the
``LedgerClient`` view — and compares the emitted JSON with real Canton data from
``../shared/reference/canton/fixtures`` (key sets of transactions, events, interface views and
token-standard choices). Those comparisons skip where the reference folder is absent, and fail
under ``CI=true``.
"""

from __future__ import annotations

import json
import os
import statistics
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sluice.domain.ledger import REASON_KEY, InstrumentId
from sluice.ledger.local import EmbeddedLedger, OffsetAfterLedgerEndError
from sluice.ports import LedgerClient

FIXTURES = Path(__file__).resolve().parents[3] / "shared" / "reference" / "canton" / "fixtures"


def fixture(name: str) -> Any:
    path = FIXTURES / name
    if not path.exists():
        if os.environ.get("CI") == "true":
            pytest.fail(f"reference data {path} is required under CI=true but missing")
        pytest.skip(f"reference data {path} is not available here")
    return json.loads(path.read_text())


@dataclass
class World:
    ledger: EmbeddedLedger
    dso: str
    treasury: str
    alice: str
    bob: str
    cc: InstrumentId


@pytest.fixture
def world() -> World:
    ledger = EmbeddedLedger.open(None, seed=5, checkpoint_interval_s=None)
    for node in ("registry", "exchange", "customers"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    alice = ledger.allocate_party("alice", "customers")
    bob = ledger.allocate_party("bob", "customers")
    cc = ledger.create_instrument(dso, "Amulet")
    ledger.tap(alice, cc, "1000")
    return World(ledger, dso, treasury, alice, bob, cc)


def transactions(ledger: EmbeddedLedger, party: str, after: int = 0) -> list[dict[str, Any]]:
    return [
        u["update"]["Transaction"]["value"]
        for u in ledger.updates(party, after)
        if "Transaction" in u["update"]
    ]


def tx(ledger: EmbeddedLedger, update_id: str, party: str) -> dict[str, Any]:
    value: dict[str, Any] = ledger.update_by_id(update_id, party)["update"]["Transaction"]["value"]
    return value


def flat(value: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [next(iter(e.items())) for e in value["events"]]


# --- offsets and projections ----------------------------------------------------------------------


def test_each_node_numbers_its_own_offsets(world: World) -> None:
    ledger = world.ledger
    world.ledger.create_preapproval(world.treasury, world.cc)
    exchange_before = ledger.ledger_end("exchange")
    customers_before = ledger.ledger_end("customers")
    ledger.tap(world.bob, world.cc, "1")  # not the exchange's business
    assert ledger.ledger_end("exchange") == exchange_before
    assert ledger.ledger_end("customers") == customers_before + 1
    result = ledger.transfer(world.alice, world.treasury, world.cc, "5")
    on_exchange = tx(ledger, result.update_id, world.treasury)
    on_customers = tx(ledger, result.update_id, world.alice)
    assert on_exchange["offset"] == exchange_before + 1
    assert on_customers["offset"] == customers_before + 2
    assert on_exchange["updateId"] == on_customers["updateId"]
    assert on_exchange["recordTime"] == on_customers["recordTime"]
    assert all(e[1]["offset"] == on_exchange["offset"] for e in flat(on_exchange))


def test_a_party_reads_only_updates_it_sees_on_its_node(world: World) -> None:
    world.ledger.tap(world.bob, world.cc, "1")
    world.ledger.transfer(world.alice, world.alice, world.cc, "1")
    seen_by_bob = transactions(world.ledger, world.bob)
    assert len(seen_by_bob) == 1  # only its own tap, although alice is on the same node
    offsets = [t["offset"] for t in transactions(world.ledger, world.alice)]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == len(offsets)
    assert transactions(world.ledger, world.treasury) == []


def test_the_receiver_of_an_offer_sees_just_the_instruction_create(world: World) -> None:
    offer = world.ledger.transfer(world.alice, world.treasury, world.cc, "100", reason="acct-1")
    [(kind, created)] = flat(tx(world.ledger, offer.update_id, world.treasury))
    assert kind == "CreatedEvent"
    assert created["contractId"] == offer.instruction_cid
    assert created["templateId"].endswith(
        ":Sluice.Registry.TransferInstruction:TransferInstruction"
    )
    assert created["observers"] == [world.treasury]
    assert created["signatories"] == [world.dso, world.alice]
    assert created["witnessParties"] == [world.treasury]
    view = created["interfaceViews"][0]["viewValue"]
    assert view["status"] == {"tag": "TransferPendingReceiverAcceptance", "value": {}}
    assert view["transfer"]["meta"]["values"] == {REASON_KEY: "acct-1"}
    assert view["transfer"]["amount"] == "100.0000000000"
    # The sender sees the whole tree from the factory exercise down.
    sender_view = flat(tx(world.ledger, offer.update_id, world.alice))
    assert sender_view[0][1]["choice"] == "TransferFactory_Transfer"
    assert sender_view[0][1]["nodeId"] == 0
    assert len(sender_view) > 1


def test_the_receiver_of_a_direct_transfer_sees_it_from_the_preapproval_send(
    world: World,
) -> None:
    world.ledger.create_preapproval(world.treasury, world.cc)
    result = world.ledger.transfer(world.alice, world.treasury, world.cc, "200", reason="acct-9")
    received = flat(tx(world.ledger, result.update_id, world.treasury))
    kind, send = received[0]
    assert kind == "ExercisedEvent"
    assert send["choice"] == "TransferPreapproval_Send"
    assert send["templateId"].endswith(":Splice.AmuletRules:TransferPreapproval")
    assert send["nodeId"] > 0  # original node ids: the factory exercise above it is not shown
    assert send["consuming"] is False
    assert send["actingParties"] == [world.alice]
    assert send["lastDescendantNodeId"] == received[-1][1]["nodeId"]
    meta = send["exerciseResult"]["meta"]["values"]
    assert meta[REASON_KEY] == "acct-9"
    assert meta["splice.lfdecentralizedtrust.org/tx-kind"] == "transfer"
    assert meta["splice.lfdecentralizedtrust.org/sender"] == world.alice
    # Below it: the sender's input archived, the receiver's holding and the sender's change.
    archived = [b for k, b in received if k == "ExercisedEvent" and b["choice"] == "Archive"]
    created = [b for k, b in received if k == "CreatedEvent"]
    assert len(archived) == 1
    assert archived[0]["consuming"] is True
    owners = {b["createArgument"]["owner"]: b["createArgument"]["amount"] for b in created}
    assert owners == {world.treasury: "200.0000000000", world.alice: "800.0000000000"}
    assert all(b["witnessParties"] == [world.treasury] for _, b in received)
    # The admin sees everything from node 0.
    assert flat(tx(world.ledger, result.update_id, world.dso))[0][1]["nodeId"] == 0


def test_the_command_id_is_shown_to_the_submitter_only(world: World) -> None:
    world.ledger.create_preapproval(world.treasury, world.cc)
    result = world.ledger.transfer(world.alice, world.treasury, world.cc, "1", command_id="cmd-77")
    assert tx(world.ledger, result.update_id, world.alice)["commandId"] == "cmd-77"
    assert tx(world.ledger, result.update_id, world.treasury)["commandId"] == ""


def test_reading_resumes_after_an_offset_and_stops_at_the_limit(world: World) -> None:
    for _ in range(5):
        world.ledger.transfer(world.alice, world.alice, world.cc, "1")
    everything = list(world.ledger.updates(world.alice, 0))
    offsets = [u["update"]["Transaction"]["value"]["offset"] for u in everything]
    assert list(world.ledger.updates(world.alice, offsets[2])) == everything[3:]
    assert list(world.ledger.updates(world.alice, 0, limit=2)) == everything[:2]
    assert list(world.ledger.updates(world.alice, offsets[-1])) == []


def test_reading_after_the_ledger_end_is_refused(world: World) -> None:
    end = world.ledger.ledger_end(world.alice)
    with pytest.raises(OffsetAfterLedgerEndError):
        world.ledger.updates(world.alice, end + 1)


def test_a_checkpoint_lets_a_reader_move_past_updates_it_does_not_see(world: World) -> None:
    world.ledger.tap(world.bob, world.cc, "1")
    before = world.ledger.ledger_end(world.alice)
    world.ledger.tap(world.bob, world.cc, "1")  # on alice's node, invisible to alice
    assert list(world.ledger.updates(world.alice, before)) == []
    world.ledger.advance(10)
    time = world.ledger.checkpoint()
    [item] = world.ledger.updates(world.alice, before)
    checkpoint = item["update"]["OffsetCheckpoint"]["value"]
    assert checkpoint["offset"] == world.ledger.ledger_end(world.alice) == before + 2
    assert checkpoint["synchronizerTimes"][0]["recordTime"] == time.strftime(
        "%Y-%m-%dT%H:%M:%S.%fZ"
    )


def test_update_by_id_serves_the_partys_projection_or_nothing(world: World) -> None:
    result = world.ledger.transfer(world.alice, world.alice, world.cc, "1")
    value = tx(world.ledger, result.update_id, world.alice)
    assert value["updateId"] == result.update_id
    assert value in transactions(world.ledger, world.alice)
    with pytest.raises(LookupError):
        world.ledger.update_by_id(result.update_id, world.treasury)
    with pytest.raises(LookupError):
        world.ledger.update_by_id("1220" + "0" * 64, world.alice)


def test_offset_at_record_time_finds_where_to_resume(world: World) -> None:
    first = world.ledger.transfer(world.alice, world.alice, world.cc, "1")
    world.ledger.advance(10)
    second = world.ledger.transfer(world.alice, world.alice, world.cc, "1")
    first_offset = tx(world.ledger, first.update_id, world.alice)["offset"]
    second_offset = tx(world.ledger, second.update_id, world.alice)["offset"]
    assert world.ledger.offset_at_record_time("customers", first.record_time) == first_offset
    assert (
        world.ledger.offset_at_record_time(world.alice, second.record_time - timedelta(seconds=1))
        == first_offset
    )
    assert world.ledger.offset_at_record_time(world.alice, second.record_time) == second_offset
    assert world.ledger.offset_at_record_time("exchange", first.record_time) == 0
    assert world.ledger.record_time_at(world.alice, second_offset) == second.record_time


def test_a_node_client_is_a_ledger_client_for_its_parties(world: World) -> None:
    client: LedgerClient = world.ledger.client(world.alice)
    assert client.ledger_end() == world.ledger.ledger_end("customers")
    assert list(client.updates(world.alice, 0)) == list(world.ledger.updates(world.alice, 0))
    with pytest.raises(ValueError, match="not hosted"):
        client.updates(world.treasury, 0)


def test_the_active_contract_set_lists_a_partys_contracts(world: World) -> None:
    world.ledger.create_preapproval(world.treasury, world.cc)
    world.ledger.transfer(world.alice, world.treasury, world.cc, "10")
    acs = world.ledger.active_contracts(world.treasury)
    templates = sorted(
        c["contractEntry"]["JsActiveContract"]["createdEvent"]["templateId"].split(":", 1)[1]
        for c in acs
    )
    assert templates == [
        "Sluice.Registry.Holding:Holding",
        "Splice.AmuletRules:TransferPreapproval",
    ]
    for item in acs:
        event = item["contractEntry"]["JsActiveContract"]["createdEvent"]
        assert 0 < event["offset"] <= world.ledger.ledger_end(world.treasury)
    # The admin is a stakeholder of every holding of its instruments.
    assert len(world.ledger.active_contracts(world.dso)) == 4  # rules, preapproval, 2 holdings


def test_exercise_subtrees_are_contiguous_in_node_id_order(world: World) -> None:
    world.ledger.create_preapproval(world.treasury, world.cc)
    world.ledger.transfer(world.alice, world.treasury, world.cc, "10", reason="r")
    offer = world.ledger.transfer(world.alice, world.bob, world.cc, "10")
    assert offer.instruction_cid is not None
    world.ledger.accept(offer.instruction_cid, world.bob)
    for value in transactions(world.ledger, world.dso):
        node_ids = [body["nodeId"] for _, body in flat(value)]
        assert node_ids == sorted(node_ids)
        assert len(set(node_ids)) == len(node_ids)
        for kind, body in flat(value):
            if kind == "ExercisedEvent":
                assert body["lastDescendantNodeId"] >= body["nodeId"]
                assert body["lastDescendantNodeId"] <= node_ids[-1]


def test_amounts_are_ten_decimal_strings_and_times_are_utc(world: World) -> None:
    world.ledger.create_preapproval(world.treasury, world.cc)
    result = world.ledger.transfer(world.alice, world.treasury, world.cc, Decimal("0.5"))
    text = json.dumps(world.ledger.update_by_id(result.update_id, world.treasury))
    assert '"amount": "0.5000000000"' in text
    value = tx(world.ledger, result.update_id, world.treasury)
    assert value["recordTime"].endswith("Z")
    assert value["effectiveAt"] == value["recordTime"]


# --- the wire format against real Canton data -----------------------------------------------------


def key_sets(values: list[dict[str, Any]]) -> tuple[set[frozenset[str]], ...]:
    transaction_keys: set[frozenset[str]] = set()
    created_keys: set[frozenset[str]] = set()
    exercised_keys: set[frozenset[str]] = set()
    for value in values:
        transaction_keys.add(frozenset(value))
        for kind, body in flat(value):
            (created_keys if kind == "CreatedEvent" else exercised_keys).add(frozenset(body))
    return transaction_keys, created_keys, exercised_keys


def busy_world(world: World) -> list[dict[str, Any]]:
    """Every kind of update, as the admin (who sees all of them) reads them."""
    ledger = world.ledger
    ledger.create_preapproval(world.treasury, world.cc)
    ledger.transfer(world.alice, world.treasury, world.cc, "10", reason="acct")
    for settle in (ledger.accept, ledger.reject):
        offer = ledger.transfer(world.alice, world.bob, world.cc, "10")
        assert offer.instruction_cid is not None
        settle(offer.instruction_cid, world.bob)
    offer = ledger.transfer(world.alice, world.bob, world.cc, "10")
    assert offer.instruction_cid is not None
    ledger.withdraw(offer.instruction_cid, world.alice)
    ledger.transfer(world.alice, world.alice, world.cc, "3")
    ledger.mint(world.bob, world.cc, "4", reason="m")
    ledger.burn(world.bob, world.cc, "1")
    ledger.cancel_preapproval(world.treasury, world.cc)
    return transactions(ledger, world.dso)


def test_transactions_and_events_have_the_key_sets_of_real_canton_data(world: World) -> None:
    real = fixture("mock-txs.json")
    mine = busy_world(world)
    assert key_sets(mine) == key_sets(real)


def test_token_standard_choices_have_the_shapes_of_real_canton_data(world: World) -> None:
    real = list(fixture("mock-txs.json"))
    mine = busy_world(world)

    def shapes(values: list[dict[str, Any]], choice: str) -> set[tuple[frozenset[str], ...]]:
        found = set()
        for value in values:
            for kind, body in flat(value):
                if kind == "ExercisedEvent" and body["choice"] == choice:
                    argument, result = body["choiceArgument"], body["exerciseResult"]
                    found.add(
                        (
                            frozenset(argument),
                            frozenset(argument.get("transfer", {})),
                            frozenset(argument.get("extraArgs", {})),
                            frozenset(result),
                            frozenset(result["output"]["value"]) if "output" in result else None,
                        )
                    )
        return found  # type: ignore[return-value]

    for choice in (
        "TransferFactory_Transfer",
        "TransferInstruction_Accept",
        "TransferInstruction_Reject",
        "TransferInstruction_Withdraw",
    ):
        assert shapes(mine, choice) <= shapes(real, choice), choice
        assert shapes(mine, choice), choice
    # The preapproval send carries its result metadata like Amulet's.
    send = next(
        body
        for value in mine
        for kind, body in flat(value)
        if body.get("choice") == "TransferPreapproval_Send"
    )
    real_send = next(
        body
        for value in real
        for kind, body in flat(value)
        if body.get("choice") == "TransferPreapproval_Send"
    )
    assert set(send["exerciseResult"]) == set(real_send["exerciseResult"])
    assert set(real_send["choiceArgument"]) <= set(send["choiceArgument"])


def test_interface_views_have_the_shapes_of_real_canton_data(world: World) -> None:
    real = fixture("mock-txs.json")
    mine = busy_world(world)

    def views(values: list[dict[str, Any]]) -> dict[str, set[frozenset[str]]]:
        found: dict[str, set[frozenset[str]]] = {}
        for value in values:
            for kind, body in flat(value):
                if kind != "CreatedEvent":
                    continue
                for view in body["interfaceViews"]:
                    entity = view["interfaceId"].split(":", 1)[1]
                    shape = (
                        frozenset(view)
                        | frozenset(f"view.{k}" for k in view["viewValue"])
                        | frozenset(f"status.{k}" for k in view["viewStatus"])
                    )
                    lock = view["viewValue"].get("lock")
                    if lock:
                        shape |= frozenset(f"lock.{k}" for k in lock)
                    found.setdefault(entity, set()).add(shape)
        return found

    real_views, my_views = views(real), views(mine)
    for entity in (
        "Splice.Api.Token.HoldingV1:Holding",
        "Splice.Api.Token.TransferInstructionV1:TransferInstruction",
    ):
        assert my_views[entity] <= real_views[entity], entity


def test_the_receivers_view_of_a_deposit_looks_like_the_guides(world: World) -> None:
    guide = fixture("guide-1-step-transfer.json")["update"]["Transaction"]["value"]
    world.ledger.create_preapproval(world.treasury, world.cc)
    result = world.ledger.transfer(world.alice, world.treasury, world.cc, "200", reason="acct")
    mine = tx(world.ledger, result.update_id, world.treasury)
    assert set(mine) == set(guide)
    first_mine, first_guide = flat(mine)[0], flat(guide)[0]
    assert first_mine[0] == first_guide[0] == "ExercisedEvent"
    assert first_mine[1]["choice"] == first_guide[1]["choice"] == "TransferPreapproval_Send"
    assert set(first_mine[1]["exerciseResult"]["meta"]["values"]) == set(
        first_guide[1]["exerciseResult"]["meta"]["values"]
    )


def test_an_incoming_offer_looks_like_the_guides(world: World) -> None:
    guide = fixture("guide-transfer-instruction-create.json")["update"]["Transaction"]["value"]
    offer = world.ledger.transfer(world.alice, world.treasury, world.cc, "1000", reason="acct")
    mine = tx(world.ledger, offer.update_id, world.treasury)
    [(kind, created)] = flat(mine)
    [(guide_kind, guide_created)] = flat(guide)
    assert kind == guide_kind
    assert set(created) == set(guide_created)
    assert set(created["interfaceViews"][0]["viewValue"]) == set(
        guide_created["interfaceViews"][0]["viewValue"]
    )
    assert set(created["createArgument"]["transfer"]) == set(
        guide_created["createArgument"]["transfer"]
    )


def test_checkpoints_have_the_openapi_shape(world: World) -> None:
    world.ledger.checkpoint()
    [item] = list(world.ledger.updates(world.treasury, 0))
    assert set(item) == {"update"}
    assert set(item["update"]) == {"OffsetCheckpoint"}
    value = item["update"]["OffsetCheckpoint"]["value"]
    assert set(value) == {"offset", "synchronizerTimes"}
    assert set(value["synchronizerTimes"][0]) == {"synchronizerId", "recordTime"}


def test_updates_are_about_as_verbose_as_real_ones(world: World) -> None:
    real = fixture("mock-utility-payload-ledger-effects.json")
    real_median = statistics.median(len(json.dumps(u)) for u in real)
    busy_world(world)
    mine = [
        len(json.dumps(u))
        for party in (world.alice, world.treasury, world.bob)
        for u in world.ledger.updates(party, 0)
    ]
    assert real_median / 4 < statistics.median(mine) < real_median * 4
