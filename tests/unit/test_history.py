"""The history parser on small, hand-built updates in the JSON Ledger API v2 shape.

Covers the wrappers an update arrives in, checkpoints, every kind of malformed input (each must
raise MalformedUpdateError naming the update and the field), the metadata merge order, interface
matching by module and entity, archive resolution through the lookups only, how entries are
found (token-standard subtrees, tx-kind subtrees, wrappers walked through, bare offers, grouped
leftovers), and two properties checked with hypothesis on generated transactions: a well-formed
transaction never raises and its entries account for exactly the party's net holdings change; a
corrupted one raises nothing but MalformedUpdateError.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.domain.errors import MalformedUpdateError
from sluice.domain.history import (
    ParsedTransaction,
    parse_transaction,
    parse_update,
    qualified_name,
    unwrap_update,
)
from sluice.domain.ledger import (
    REASON_KEY,
    SENDER_KEY,
    TX_KIND_KEY,
    Checkpoint,
    Holding,
    InstrumentId,
    Lock,
    Transfer,
    TransferInstruction,
)

PARTY = "treasury::1220aa"
OTHER = "customer::1220bb"
THIRD = "someone::1220cc"
ADMIN = "dso::1220dd"
AMULET = InstrumentId(ADMIN, "Amulet")
LOAD = InstrumentId(ADMIN, "LOAD")

HOLDING_IFACE = "718a0f77e505a8de22f188bd4c87fe74:Splice.Api.Token.HoldingV1:Holding"
TI_PACKAGE = "55ba4deb0ad4662c4168b39859738a0e"
INSTRUCTION_IFACE = f"{TI_PACKAGE}:Splice.Api.Token.TransferInstructionV1:TransferInstruction"
FACTORY_IFACE = f"{TI_PACKAGE}:Splice.Api.Token.TransferInstructionV1:TransferFactory"
AMULET_TEMPLATE = "6e9fc50fb94e5675:Splice.Amulet:Amulet"
INSTRUCTION_TEMPLATE = "6e9fc50fb94e5675:Splice.AmuletTransferInstruction:AmuletTransferInstruction"
FACTORY_TEMPLATE = "6e9fc50fb94e5675:Splice.ExternalPartyAmuletRules:ExternalPartyAmuletRules"
PREAPPROVAL_TEMPLATE = "#splice-amulet:Splice.AmuletRules:TransferPreapproval"
RULES_TEMPLATE = "#splice-amulet:Splice.AmuletRules:AmuletRules"
WALLET_TEMPLATE = "#splice-wallet:Splice.Wallet.Install:WalletAppInstall"

WHEN = "2025-06-18T00:00:00.000000Z"

Json = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Builders of ledger-effects JSON
# ---------------------------------------------------------------------------------------------


def meta(**values: str) -> Json:
    return {"values": dict(values)}


def holding_view(
    owner: str,
    amount: str,
    instrument: InstrumentId = AMULET,
    lock: Json | None = None,
) -> Json:
    return {
        "owner": owner,
        "instrumentId": {"admin": instrument.admin, "id": instrument.id},
        "amount": amount,
        "lock": lock,
        "meta": meta(),
    }


def create_holding(
    node: int,
    cid: str,
    owner: str = PARTY,
    amount: str = "10.0000000000",
    *,
    instrument: InstrumentId = AMULET,
    interface: str = HOLDING_IFACE,
    lock: Json | None = None,
    status_code: int = 0,
) -> Json:
    return {
        "CreatedEvent": {
            "nodeId": node,
            "contractId": cid,
            "templateId": AMULET_TEMPLATE,
            "createArgument": {},
            "interfaceViews": [
                {
                    "interfaceId": interface,
                    "viewStatus": {"code": status_code, "message": "", "details": []},
                    "viewValue": holding_view(owner, amount, instrument, lock),
                }
            ],
            "witnessParties": [PARTY],
        }
    }


def transfer_record(
    sender: str,
    receiver: str,
    amount: str = "100.0000000000",
    *,
    instrument: InstrumentId = AMULET,
    values: Mapping[str, str] | None = None,
) -> Json:
    return {
        "sender": sender,
        "receiver": receiver,
        "amount": amount,
        "instrumentId": {"admin": instrument.admin, "id": instrument.id},
        "requestedAt": WHEN,
        "executeBefore": WHEN,
        "inputHoldingCids": ["in-1"],
        "meta": {"values": dict(values or {})},
    }


def create_instruction(
    node: int,
    cid: str,
    sender: str = OTHER,
    receiver: str = PARTY,
    *,
    values: Mapping[str, str] | None = None,
    original: str | None = None,
    status: str = "TransferPendingReceiverAcceptance",
) -> Json:
    return {
        "CreatedEvent": {
            "nodeId": node,
            "contractId": cid,
            "templateId": INSTRUCTION_TEMPLATE,
            "createArgument": {},
            "interfaceViews": [
                {
                    "interfaceId": INSTRUCTION_IFACE,
                    "viewStatus": {"code": 0, "message": "", "details": []},
                    "viewValue": {
                        "originalInstructionCid": original,
                        "transfer": transfer_record(sender, receiver, values=values),
                        "status": {"tag": status, "value": {}},
                        "meta": meta(),
                    },
                }
            ],
            "witnessParties": [PARTY],
        }
    }


def exercise(
    node: int,
    cid: str,
    choice: str,
    *,
    last: int | None = None,
    template: str = RULES_TEMPLATE,
    interface: str | None = None,
    consuming: bool = False,
    argument: Any = None,
    result: Any = None,
) -> Json:
    return {
        "ExercisedEvent": {
            "nodeId": node,
            "lastDescendantNodeId": node if last is None else last,
            "contractId": cid,
            "templateId": template,
            "interfaceId": interface,
            "choice": choice,
            "choiceArgument": {} if argument is None else argument,
            "consuming": consuming,
            "exerciseResult": {} if result is None else result,
            "implementedInterfaces": [],
            "witnessParties": [PARTY],
        }
    }


def archive(node: int, cid: str) -> Json:
    return exercise(node, cid, "Archive", template=AMULET_TEMPLATE, consuming=True)


def factory_transfer(
    node: int,
    last: int,
    transfer: Json,
    *,
    tag: str = "TransferInstructionResult_Completed",
    value: Json | None = None,
    extra: Mapping[str, str] | None = None,
    choice_meta: Mapping[str, str] | None = None,
    result_meta: Mapping[str, str] | None = None,
    interface: str = FACTORY_IFACE,
) -> Json:
    argument: Json = {
        "expectedAdmin": ADMIN,
        "transfer": transfer,
        "extraArgs": {"context": {"values": {}}, "meta": {"values": dict(extra or {})}},
    }
    if choice_meta is not None:
        argument["meta"] = {"values": dict(choice_meta)}
    return exercise(
        node,
        "factory",
        "TransferFactory_Transfer",
        last=last,
        template=FACTORY_TEMPLATE,
        interface=interface,
        argument=argument,
        result={
            "output": {"tag": tag, "value": value or {}},
            "senderChangeCids": [],
            "meta": {"values": dict(result_meta or {})},
        },
    )


def instruction_choice(
    node: int,
    last: int,
    cid: str,
    choice: str,
    *,
    tag: str = "TransferInstructionResult_Completed",
    extra: Mapping[str, str] | None = None,
    result_meta: Mapping[str, str] | None = None,
) -> Json:
    return exercise(
        node,
        cid,
        choice,
        last=last,
        template=INSTRUCTION_TEMPLATE,
        interface=INSTRUCTION_IFACE,
        consuming=True,
        argument={"extraArgs": {"context": {"values": {}}, "meta": meta(**(extra or {}))}},
        result={
            "output": {"tag": tag, "value": {}},
            "meta": {"values": dict(result_meta or {})},
        },
    )


def transaction(*events: Json, update_id: str = "update-1", offset: int = 7) -> Json:
    return {
        "updateId": update_id,
        "commandId": "",
        "workflowId": "",
        "effectiveAt": "2025-06-18T00:00:01Z",
        "offset": offset,
        "synchronizerId": "global-domain::1220ee",
        "recordTime": "2025-06-18T00:00:01.000123Z",
        "events": list(events),
    }


def holding(
    cid: str, amount: str = "10.0000000000", owner: str = PARTY, instrument: InstrumentId = AMULET
) -> Holding:
    return Holding(cid, owner, instrument, Decimal(amount))


def instruction(
    cid: str,
    sender: str = OTHER,
    receiver: str = PARTY,
    *,
    values: Mapping[str, str] | None = None,
    original: str | None = None,
) -> TransferInstruction:
    when = datetime(2025, 6, 18, tzinfo=UTC)
    transfer = Transfer(sender, receiver, Decimal(100), AMULET, when, when, (), dict(values or {}))
    return TransferInstruction(cid, transfer, "pending_receiver_acceptance", original)


def parse(
    tx: Json,
    holdings: Mapping[str, Holding] | None = None,
    instructions: Mapping[str, TransferInstruction] | None = None,
) -> ParsedTransaction:
    known_holdings, known_instructions = dict(holdings or {}), dict(instructions or {})
    return parse_transaction(tx, PARTY, known_holdings.get, known_instructions.get)


def nothing(_contract_id: str) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# Wrappers and checkpoints
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "wrap",
    [
        lambda tx: {"update": {"Transaction": {"value": tx}}},
        lambda tx: {"update": {"Transaction": tx}},
        lambda tx: {"transaction": tx},
        lambda tx: tx,
    ],
    ids=["updates-response", "updates-response-without-value", "transaction-response", "bare"],
)
def test_every_wrapper_of_a_transaction_unwraps_to_it(wrap: Callable[[Json], Json]) -> None:
    tx = transaction(create_holding(0, "h1"))
    assert unwrap_update(wrap(tx)) == ("transaction", tx)
    parsed = parse_update(wrap(tx), PARTY, nothing, nothing)
    assert isinstance(parsed, ParsedTransaction)
    assert (parsed.update_id, parsed.offset) == ("update-1", 7)
    assert parsed.record_time == datetime(2025, 6, 18, 0, 0, 1, 123, tzinfo=UTC)
    assert parsed.synchronizer_id == "global-domain::1220ee"


@pytest.mark.parametrize("kind", ["Reassignment", "TopologyTransaction"])
def test_reassignments_and_topology_transactions_are_other_and_parse_to_nothing(kind: str) -> None:
    raw = {"update": {kind: {"value": {"updateId": "x", "offset": 3}}}}
    assert unwrap_update(raw)[0] == "other"
    assert parse_update(raw, PARTY, nothing, nothing) is None


def test_checkpoint_carries_offset_and_first_synchronizer_time() -> None:
    raw = {
        "update": {
            "OffsetCheckpoint": {
                "value": {
                    "offset": 42,
                    "synchronizerTimes": [
                        {"synchronizerId": "sync::1", "recordTime": "2025-06-18T00:00:02Z"},
                        {"synchronizerId": "sync::2", "recordTime": "2025-06-18T00:00:09Z"},
                    ],
                }
            }
        }
    }
    assert parse_update(raw, PARTY, nothing, nothing) == Checkpoint(
        offset=42, synchronizer_id="sync::1", record_time=datetime(2025, 6, 18, 0, 0, 2, tzinfo=UTC)
    )


def test_a_bare_checkpoint_value_is_a_checkpoint_too() -> None:
    value = {"offset": 5, "synchronizerTimes": [{"synchronizerId": "s", "recordTime": WHEN}]}
    assert unwrap_update(value) == ("checkpoint", value)
    parsed = parse_update(value, PARTY, nothing, nothing)
    assert parsed == Checkpoint(5, "s", datetime(2025, 6, 18, tzinfo=UTC))


@pytest.mark.parametrize("times", [[], None])
def test_checkpoint_without_synchronizer_time_is_nothing(times: list[Any] | None) -> None:
    value: Json = {"offset": 42}
    if times is not None:
        value["synchronizerTimes"] = times
    assert (
        parse_update({"update": {"OffsetCheckpoint": {"value": value}}}, PARTY, nothing, nothing)
        is None
    )


def test_checkpoint_with_a_bad_record_time_is_malformed() -> None:
    raw = {
        "update": {
            "OffsetCheckpoint": {
                "value": {
                    "offset": 42,
                    "synchronizerTimes": [{"synchronizerId": "s", "recordTime": "soon"}],
                }
            }
        }
    }
    with pytest.raises(MalformedUpdateError) as caught:
        parse_update(raw, PARTY, nothing, nothing)
    assert caught.value.offset == 42
    assert caught.value.problem == (
        "OffsetCheckpoint.synchronizerTimes[0].recordTime: 'soon' is not an RFC 3339 timestamp"
    )


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (
            {"update": {"Mystery": {"value": {}}}},
            "update: expected one of ['OffsetCheckpoint', 'Reassignment', 'Topology"
            "Transaction', 'Transaction'], got ['Mystery']",
        ),
        ({"update": []}, "update: expected an object, got a list"),
        ({"update": {"Transaction": "tx"}}, "update.Transaction: expected an object, got a string"),
        ({"transaction": 3}, "transaction: expected an object, got a number"),
        (
            {"id": "u"},
            "update: not a JsGetUpdatesResponse, JsGetTransactionResponse, JsTransaction or "
            "OffsetCheckpoint (keys: ['id'])",
        ),
        ([1, 2], "update: expected a JSON object, got a list"),
    ],
)
def test_an_unknown_wrapper_is_malformed(raw: Any, problem: str) -> None:
    with pytest.raises(MalformedUpdateError) as caught:
        unwrap_update(raw)
    assert caught.value.problem == problem
    assert isinstance(caught.value, ValueError)


# ---------------------------------------------------------------------------------------------
# Malformed transactions
# ---------------------------------------------------------------------------------------------


def _set(path: tuple[Any, ...], value: Any) -> Callable[[Json], None]:
    def apply(tx: Json) -> None:
        target: Any = tx
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return apply


def _delete(path: tuple[Any, ...]) -> Callable[[Json], None]:
    def apply(tx: Json) -> None:
        target: Any = tx
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return apply


VIEW = ("events", 0, "CreatedEvent", "interfaceViews", 0, "viewValue")
SECOND = ("events", 1, "ExercisedEvent")

MALFORMED = [
    (
        _set((*VIEW, "amount"), "abc"),
        "update-1",
        "events[0] (node 0) CreatedEvent.interfaceViews[0].viewValue.amount: 'abc' is not a "
        "decimal number",
    ),
    (
        _set((*VIEW, "amount"), "1e100"),
        "update-1",
        "events[0] (node 0) CreatedEvent.interfaceViews[0].viewValue.amount: '1e100' is too large",
    ),
    (
        _set((*VIEW, "amount"), 12.5),
        "update-1",
        "events[0] (node 0) CreatedEvent.interfaceViews[0].viewValue.amount: expected a decimal "
        "string, got a number",
    ),
    (
        _set((*VIEW, "owner"), 7),
        "update-1",
        "events[0] (node 0) CreatedEvent.interfaceViews[0].viewValue.owner: expected a string, "
        "got a number",
    ),
    (
        _delete((*VIEW, "instrumentId")),
        "update-1",
        "events[0] (node 0) CreatedEvent.interfaceViews[0].viewValue.instrumentId: missing",
    ),
    (
        _set((*VIEW, "lock"), {"holders": [ADMIN], "expiresAt": "never"}),
        "update-1",
        "events[0] (node 0) CreatedEvent.interfaceViews[0].viewValue.lock.expiresAt: 'never' is "
        "not an RFC 3339 timestamp",
    ),
    (_delete(("updateId",)), None, "updateId: missing"),
    (_set(("updateId",), ""), None, "updateId: expected a non-empty string, got a string"),
    (_delete(("recordTime",)), "update-1", "recordTime: missing"),
    (
        _set(("recordTime",), "yesterday"),
        "update-1",
        "recordTime: 'yesterday' is not an RFC 3339 timestamp",
    ),
    (
        _set(("recordTime",), "9999-12-31T23:59:59-01:00"),
        "update-1",
        "recordTime: '9999-12-31T23:59:59-01:00' is not an RFC 3339 timestamp",
    ),
    (_set(("offset",), True), "update-1", "offset: expected an integer, got a boolean"),
    (_delete(("events",)), "update-1", "events: missing"),
    (_set(("events",), {}), "update-1", "events: expected a list, got an object"),
    (
        _set(("events", 0), {"Mystery": {}}),
        "update-1",
        "events[0]: expected a CreatedEvent, ExercisedEvent or ArchivedEvent, got ['Mystery']",
    ),
    (
        _set(("events", 0), "event"),
        "update-1",
        "events[0]: expected an object, got a string",
    ),
    (
        _delete(("events", 0, "CreatedEvent", "nodeId")),
        "update-1",
        "events[0] CreatedEvent.nodeId: missing",
    ),
    (
        _set((*SECOND, "lastDescendantNodeId"), 0),
        "update-1",
        "events[1] ExercisedEvent.lastDescendantNodeId: 0 is before its own node id 1",
    ),
    (
        _set((*SECOND, "nodeId"), 0),
        "update-1",
        "events[1] ExercisedEvent.nodeId: 0 is also the node id of events[0]",
    ),
    (
        _set((*SECOND, "consuming"), "yes"),
        "update-1",
        "events[1] (node 1) ExercisedEvent.consuming: expected a boolean, got a string",
    ),
    (
        _delete((*SECOND, "choice")),
        "update-1",
        "events[1] (node 1) ExercisedEvent.choice: missing",
    ),
    (
        _set((*SECOND, "exerciseResult", "output", "tag"), "Nope"),
        "update-1",
        "events[1] (node 1) ExercisedEvent.exerciseResult.output.tag: 'Nope' is not a transfer "
        "result",
    ),
    (
        _set((*SECOND, "choiceArgument", "transfer", "executeBefore"), None),
        "update-1",
        "events[1] (node 1) ExercisedEvent.choiceArgument.transfer.executeBefore: expected an "
        "RFC 3339 timestamp, got null",
    ),
    (
        # Metadata is read when the entry closes; the error still names the exercise.
        _set((*SECOND, "exerciseResult", "meta", "values", REASON_KEY), 5),
        "update-1",
        "events[1] (node 1) ExercisedEvent.exerciseResult.meta.values['splice.lfdecentralized"
        "trust.org/reason']: expected a string, got a number",
    ),
]


@pytest.mark.parametrize(("corrupt", "update_id", "problem"), MALFORMED)
def test_a_malformed_transaction_names_the_update_and_the_field(
    corrupt: Callable[[Json], None], update_id: str | None, problem: str
) -> None:
    tx = transaction(
        create_holding(0, "h1"),
        factory_transfer(1, 2, transfer_record(PARTY, OTHER)),
        create_holding(2, "h2", OTHER),
    )
    parse(tx)  # well-formed before the corruption
    corrupt(tx)
    with pytest.raises(MalformedUpdateError) as caught:
        parse_update({"update": {"Transaction": {"value": tx}}}, PARTY, nothing, nothing)
    assert caught.value.problem == problem
    assert caught.value.update_id == update_id
    assert caught.value.offset == (7 if "offset" not in problem else None)
    assert caught.value.code == 12


# ---------------------------------------------------------------------------------------------
# Metadata, interfaces, archives
# ---------------------------------------------------------------------------------------------

LAYERS = ["transfer", "extra", "choice", "result"]


@pytest.mark.parametrize("present", list(range(16)))
def test_metadata_merges_with_the_last_write_winning(present: int) -> None:
    layers = [name for bit, name in enumerate(LAYERS) if present & (1 << bit)]

    def values(name: str) -> dict[str, str]:
        return {REASON_KEY: name, f"layer/{name}": "yes"} if name in layers else {}

    tx = transaction(
        factory_transfer(
            0,
            0,
            transfer_record(OTHER, PARTY, values=values("transfer")),
            extra=values("extra"),
            choice_meta=values("choice"),
            result_meta=values("result"),
        )
    )
    [entry] = parse(tx).entries
    assert entry.reason == (layers[-1] if layers else None)
    assert {key for key in entry.meta if key.startswith("layer/")} == {f"layer/{n}" for n in layers}


@pytest.mark.parametrize(
    ("extra", "known", "result", "reason"),
    [
        ("extra", "instruction", "result", "result"),
        ("extra", "instruction", None, "instruction"),
        ("extra", None, None, "extra"),
        (None, None, None, None),
    ],
)
def test_an_instructions_transfer_meta_sits_between_the_choice_and_the_result(
    extra: str | None, known: str | None, result: str | None, reason: str | None
) -> None:
    def values(name: str | None) -> dict[str, str]:
        return {REASON_KEY: name} if name else {}

    tx = transaction(
        instruction_choice(
            0,
            0,
            "ti-1",
            "TransferInstruction_Accept",
            extra=values(extra),
            result_meta=values(result),
        )
    )
    [entry] = parse(tx, instructions={"ti-1": instruction("ti-1", values=values(known))}).entries
    assert entry.reason == reason


@pytest.mark.parametrize(
    "package",
    ["#splice-api-token-holding-v1", "718a0f77e505a8de22f188bd4c87fe74", "0123456789abcdef"],
)
def test_interfaces_match_by_module_and_entity_whatever_the_package(package: str) -> None:
    tx = transaction(
        create_holding(
            0, "h1", amount="5.5", interface=f"{package}:Splice.Api.Token.HoldingV1:Holding"
        )
    )
    [entry] = parse(tx).entries
    assert entry.holdings_created == (holding("h1", "5.5"),)
    assert qualified_name(f"{package}:Splice.Api.Token.HoldingV1:Holding") == (
        "Splice.Api.Token.HoldingV1",
        "Holding",
    )


@pytest.mark.parametrize(
    "interface",
    [
        "x:Splice.Api.Token.HoldingV2:Holding",
        "x:Other.HoldingV1:Holding",
        "x:Splice.Api.Token.HoldingV1:Lock",
    ],
)
def test_a_look_alike_interface_is_not_a_holding(interface: str) -> None:
    assert parse(transaction(create_holding(0, "h1", interface=interface))).entries == ()


def test_a_token_standard_choice_is_recognized_through_any_package() -> None:
    other_package = "ffff:Splice.Api.Token.TransferInstructionV1:TransferFactory"
    tx = transaction(factory_transfer(0, 0, transfer_record(OTHER, PARTY), interface=other_package))
    [entry] = parse(tx).entries
    assert (entry.kind, entry.choice) == ("transfer_in", "TransferFactory_Transfer")


def test_a_view_that_failed_to_compute_is_not_a_holding() -> None:
    assert parse(transaction(create_holding(0, "h1", status_code=9))).entries == ()


def test_an_archive_is_resolved_only_through_the_lookup() -> None:
    tx = transaction(archive(0, "h1"))
    assert parse(tx).entries == ()
    [entry] = parse(tx, holdings={"h1": holding("h1", "3")}).entries
    assert (entry.kind, entry.status, entry.amount) == ("unrecognized", None, Decimal(-3))
    assert entry.holdings_archived == (holding("h1", "3"),)
    # A lookup answering with someone else's holding is not believed.
    assert parse(tx, holdings={"h1": holding("h1", "3", OTHER)}).entries == ()


def test_an_archive_event_of_the_acs_delta_shape_archives_too() -> None:
    tx = transaction(
        {"ArchivedEvent": {"nodeId": 0, "contractId": "h1", "templateId": AMULET_TEMPLATE}}
    )
    [entry] = parse(tx, holdings={"h1": holding("h1")}).entries
    assert entry.holdings_archived == (holding("h1"),)


def test_a_holding_created_and_spent_in_one_event_changes_nothing() -> None:
    wrapper = exercise(0, "w", "Wallet_Do", last=2, template=WALLET_TEMPLATE)
    tx = transaction(wrapper, create_holding(1, "h1"), archive(2, "h1"))
    assert parse(tx).entries == ()


def test_a_holding_created_by_one_event_and_spent_by_the_next_shows_in_both() -> None:
    tx = transaction(create_holding(0, "h1", amount="4"), archive(1, "h1"))
    first, second = parse(tx).entries
    assert (first.node_id, first.amount) == (0, Decimal(4))
    assert (second.node_id, second.amount) == (1, Decimal(-4))


def test_the_lock_of_a_holding_is_read() -> None:
    lock = {"holders": [ADMIN], "expiresAt": WHEN, "expiresAfter": None, "context": "offer"}
    [entry] = parse(transaction(create_holding(0, "h1", lock=lock))).entries
    [created] = entry.holdings_created
    assert created.lock == Lock((ADMIN,), datetime(2025, 6, 18, tzinfo=UTC), "offer")


def test_events_out_of_node_order_are_put_in_order() -> None:
    tx = transaction(
        create_holding(2, "h2", OTHER),
        factory_transfer(0, 2, transfer_record(OTHER, PARTY)),
        create_holding(1, "h1", PARTY),
    )
    [entry] = parse(tx).entries
    assert (entry.node_id, entry.kind) == (0, "transfer_in")
    assert entry.holdings_created == (holding("h1"),)


# ---------------------------------------------------------------------------------------------
# Entries
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "receiver", "own_change", "kind"),
    [
        (PARTY, OTHER, None, "transfer_out"),
        (OTHER, PARTY, None, "transfer_in"),
        (PARTY, PARTY, None, "self_transfer"),
        (OTHER, THIRD, "5", "transfer_in"),
        (OTHER, THIRD, None, "unrecognized"),
    ],
)
def test_a_transfers_direction_comes_from_its_parties(
    sender: str, receiver: str, own_change: str | None, kind: str
) -> None:
    events = [factory_transfer(0, 1, transfer_record(sender, receiver))]
    events.append(create_holding(1, "h1", PARTY if own_change else THIRD, own_change or "1"))
    [entry] = parse(transaction(*events)).entries
    assert (entry.kind, entry.status, entry.sender, entry.receiver) == (
        kind,
        "completed",
        sender,
        receiver,
    )
    assert (entry.amount, entry.instrument) == (Decimal(100), AMULET)


@pytest.mark.parametrize(
    ("tx_kind", "kind"),
    [
        ("merge-split", "merge_split"),
        ("unlock", "unlock"),
        ("expire-dust", "expire_dust"),
        ("transfer", "self_transfer"),
    ],
)
def test_a_tx_kind_other_than_transfer_wins_over_the_direction(tx_kind: str, kind: str) -> None:
    tx = transaction(
        factory_transfer(
            0,
            2,
            transfer_record(PARTY, PARTY),
            result_meta={TX_KIND_KEY: tx_kind},
        ),
        archive(1, "h1"),
        create_holding(2, "h2", PARTY, "9"),
    )
    [entry] = parse(tx, holdings={"h1": holding("h1", "10")}).entries
    assert entry.kind == kind
    assert entry.amount == (Decimal(100) if kind == "self_transfer" else Decimal(-1))


def test_a_pending_transfer_is_correlated_by_its_instruction() -> None:
    tx = transaction(
        factory_transfer(
            0,
            1,
            transfer_record(PARTY, OTHER),
            tag="TransferInstructionResult_Pending",
            value={"transferInstructionCid": "ti-1"},
        ),
        create_instruction(1, "ti-1", PARTY, OTHER),
    )
    parsed = parse(tx)
    [entry] = parsed.entries
    assert (entry.kind, entry.status) == ("transfer_out", "pending")
    assert entry.instruction_cid == entry.correlation_id == "ti-1"
    assert [i.contract_id for i in parsed.instructions_created] == ["ti-1"]


@pytest.mark.parametrize(
    ("choice", "tag", "status"),
    [
        ("TransferInstruction_Accept", "TransferInstructionResult_Completed", "completed"),
        ("TransferInstruction_Accept", "TransferInstructionResult_Pending", "pending"),
        ("TransferInstruction_Accept", "TransferInstructionResult_Failed", "failed"),
        ("TransferInstruction_Reject", "TransferInstructionResult_Failed", "rejected"),
        ("TransferInstruction_Withdraw", "TransferInstructionResult_Failed", "withdrawn"),
        ("TransferInstruction_Update", "TransferInstructionResult_Pending", "pending"),
        ("TransferInstruction_Update", "TransferInstructionResult_Completed", "completed"),
    ],
)
def test_instruction_choices_settle_the_known_instruction(
    choice: str, tag: str, status: str
) -> None:
    known = instruction("ti-2", original="ti-1", values={REASON_KEY: "account-7"})
    parsed = parse(
        transaction(instruction_choice(0, 0, "ti-2", choice, tag=tag)), instructions={"ti-2": known}
    )
    [entry] = parsed.entries
    assert (entry.kind, entry.status, entry.choice) == ("transfer_in", status, choice)
    assert (entry.instruction_cid, entry.correlation_id) == ("ti-2", "ti-1")
    assert (entry.sender, entry.amount, entry.reason) == (OTHER, Decimal(100), "account-7")
    assert parsed.instructions_archived == ("ti-2",)


def test_an_instruction_created_earlier_in_the_update_is_known_to_its_accept() -> None:
    tx = transaction(
        create_instruction(0, "ti-1", OTHER, PARTY, values={REASON_KEY: "account-7"}),
        instruction_choice(1, 2, "ti-1", "TransferInstruction_Accept"),
        create_holding(2, "h1", PARTY, "100"),
    )
    parsed = parse(tx)
    offer, accept = parsed.entries
    assert (offer.kind, offer.status, offer.correlation_id) == ("transfer_in", "pending", "ti-1")
    assert (accept.status, accept.correlation_id, accept.reason) == (
        "completed",
        "ti-1",
        "account-7",
    )
    assert parsed.instructions_archived == ("ti-1",)


def test_an_accept_of_an_unknown_instruction_reads_the_nested_transfer() -> None:
    nested = exercise(
        1,
        "rule",
        "TransferRule_Transfer",
        last=2,
        template="x:Utility.Registry.V0.Rule.Transfer:TransferRule",
        argument={"transfer": transfer_record(OTHER, PARTY, values={REASON_KEY: "account-7"})},
    )
    tx = transaction(
        instruction_choice(0, 2, "ti-9", "TransferInstruction_Accept"),
        nested,
        create_holding(2, "h1", PARTY, "100"),
    )
    [entry] = parse(tx).entries
    assert (entry.kind, entry.sender, entry.amount, entry.reason) == (
        "transfer_in",
        OTHER,
        Decimal(100),
        "account-7",
    )
    assert entry.correlation_id == "ti-9"


def test_a_wrapper_exercise_is_walked_into() -> None:
    send = exercise(
        1,
        "preapproval",
        "TransferPreapproval_Send",
        last=3,
        template=PREAPPROVAL_TEMPLATE,
        argument={"sender": OTHER, "amount": "20.0000000000", "description": "ignored"},
        result={"meta": meta(**{TX_KIND_KEY: "transfer", REASON_KEY: "account-7"})},
    )
    tx = transaction(
        exercise(0, "w", "WalletAppInstall_ExecuteBatch", last=3, template=WALLET_TEMPLATE),
        send,
        create_holding(2, "h1", PARTY, "20"),
        create_holding(3, "h2", OTHER, "70", instrument=AMULET),
    )
    [entry] = parse(tx).entries
    assert (entry.node_id, entry.kind, entry.status) == (1, "transfer_in", "completed")
    assert (entry.sender, entry.receiver, entry.amount, entry.instrument) == (
        OTHER,
        PARTY,
        Decimal(20),
        AMULET,
    )
    assert entry.reason == "account-7"


def test_a_preapproved_send_by_the_party_goes_to_the_other_holder() -> None:
    send = exercise(
        0,
        "preapproval",
        "TransferPreapproval_Send",
        last=2,
        template=PREAPPROVAL_TEMPLATE,
        argument={"sender": PARTY, "amount": "20.0000000000"},
        result={"meta": meta(**{TX_KIND_KEY: "transfer"})},
    )
    tx = transaction(send, create_holding(1, "h1", OTHER, "20", instrument=LOAD), archive(2, "h0"))
    [entry] = parse(tx, holdings={"h0": holding("h0", "25", instrument=LOAD)}).entries
    assert (entry.kind, entry.receiver, entry.amount, entry.instrument) == (
        "transfer_out",
        OTHER,
        Decimal(20),
        LOAD,
    )


@pytest.mark.parametrize(
    ("tx_kind", "kind", "amount"),
    [
        ("mint", "mint", Decimal(7)),
        ("burn", "burn", Decimal(3)),
        ("merge-split", "merge_split", Decimal(-3)),
        ("novel", "unrecognized", Decimal(-3)),
    ],
)
def test_a_tx_kind_on_any_exercise_makes_its_subtree_an_entry(
    tx_kind: str, kind: str, amount: Decimal
) -> None:
    rules = exercise(
        0,
        "rules",
        "AmuletRules_Something",
        last=2,
        result={"meta": meta(**{TX_KIND_KEY: tx_kind, REASON_KEY: "why", SENDER_KEY: PARTY})},
    )
    holdings_before = {"h0": holding("h0", "10")} if tx_kind != "mint" else {}
    tx = transaction(rules, archive(1, "h0"), create_holding(2, "h1", PARTY, "7"))
    [entry] = parse(tx, holdings=holdings_before).entries
    assert (entry.kind, entry.status, entry.reason, entry.choice) == (
        kind,
        "completed",
        "why",
        "AmuletRules_Something",
    )
    assert (entry.amount, entry.instrument) == (amount, AMULET)


def test_a_tx_kind_transfer_on_any_exercise_finds_its_receiver_in_the_holdings() -> None:
    rules = exercise(
        0,
        "rules",
        "AmuletRules_Transfer",
        last=2,
        result={"meta": meta(**{TX_KIND_KEY: "transfer", SENDER_KEY: OTHER})},
    )
    tx = transaction(
        rules, create_holding(1, "h1", PARTY, "8"), create_holding(2, "h2", OTHER, "1")
    )
    [entry] = parse(tx).entries
    assert (entry.kind, entry.sender, entry.receiver, entry.amount) == (
        "transfer_in",
        OTHER,
        PARTY,
        Decimal(8),
    )


def test_a_tx_kind_transfer_between_others_is_unrecognized_for_a_witness() -> None:
    result = {"meta": meta(**{TX_KIND_KEY: "transfer", SENDER_KEY: OTHER})}
    rules = exercise(0, "rules", "AmuletRules_Transfer", last=1, result=result)
    tx = transaction(rules, create_holding(1, "h1", THIRD, "8"))
    [entry] = parse(tx).entries
    assert (entry.kind, entry.sender, entry.receiver, entry.amount) == (
        "unrecognized",
        OTHER,
        THIRD,
        Decimal(8),
    )
    assert entry.holdings_created == ()


def test_a_tx_kind_is_found_in_a_result_that_is_not_token_standard() -> None:
    odd = exercise(
        0, "x", "Odd_Choice", result={"meta": {"values": {TX_KIND_KEY: "burn", "n": 3}}, "meta2": 1}
    )
    [entry] = parse(transaction(odd)).entries
    assert (entry.kind, entry.amount) == ("burn", None)


def test_non_object_results_and_arguments_of_unknown_choices_are_fine() -> None:
    tx = transaction(
        exercise(0, "x", "Cancel", consuming=True, argument="text", result="Cancelled")
    )
    assert parse(tx).entries == ()


@pytest.mark.parametrize(
    ("sender", "receiver", "kind"), [(OTHER, PARTY, "transfer_in"), (PARTY, OTHER, "transfer_out")]
)
def test_a_bare_offer_is_a_pending_transfer(sender: str, receiver: str, kind: str) -> None:
    tx = transaction(
        create_instruction(0, "ti-2", sender, receiver, original="ti-1", values={REASON_KEY: "r"})
    )
    parsed = parse(tx)
    [entry] = parsed.entries
    assert (entry.kind, entry.status, entry.choice, entry.reason) == (kind, "pending", None, "r")
    assert (entry.instruction_cid, entry.correlation_id) == ("ti-2", "ti-1")
    assert [i.contract_id for i in parsed.instructions_created] == ["ti-2"]


def test_an_offer_between_others_is_not_ours() -> None:
    parsed = parse(transaction(create_instruction(0, "ti-1", OTHER, THIRD)))
    assert (parsed.entries, parsed.instructions_created) == ((), ())


def test_leftover_holdings_are_grouped_per_top_level_event() -> None:
    tx = transaction(
        exercise(0, "w", "Wallet_Do", last=2, template=WALLET_TEMPLATE),
        create_holding(1, "h1", PARTY, "1"),
        create_holding(2, "h2", PARTY, "2"),
        create_holding(3, "h3", PARTY, "4"),
        create_holding(4, "h4", PARTY, "8", instrument=LOAD),
        archive(5, "h0"),
    )
    entries = parse(tx, holdings={"h0": holding("h0", "16", instrument=LOAD)}).entries
    assert [(e.node_id, e.kind, e.amount, e.choice) for e in entries] == [
        (0, "unrecognized", Decimal(3), "Wallet_Do"),
        (3, "unrecognized", Decimal(4), None),
        (4, "unrecognized", Decimal(8), None),
        (5, "unrecognized", Decimal(-16), "Archive"),
    ]


def test_a_leftover_change_in_two_instruments_has_no_single_amount() -> None:
    tx = transaction(
        exercise(0, "w", "Wallet_Do", last=2, template=WALLET_TEMPLATE),
        create_holding(1, "h1", PARTY, "1"),
        create_holding(2, "h2", PARTY, "2", instrument=LOAD),
    )
    [entry] = parse(tx).entries
    assert (entry.instrument, entry.amount, len(entry.holdings_created)) == (None, None, 2)


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

amounts = st.decimals(min_value=Decimal("0.0000000001"), max_value=Decimal(10**9), places=10)
parties = st.sampled_from([PARTY, OTHER, THIRD])
instruments = st.sampled_from([AMULET, LOAD])
RESULT_TAGS = [
    "TransferInstructionResult_Completed",
    "TransferInstructionResult_Pending",
    "TransferInstructionResult_Failed",
]
INSTRUCTION_CHOICES = [
    "TransferInstruction_Accept",
    "TransferInstruction_Reject",
    "TransferInstruction_Withdraw",
    "TransferInstruction_Update",
]


class _Generated:
    """A random well-formed transaction, and what it does to the party's holdings."""

    def __init__(self, draw: st.DrawFn) -> None:
        self.draw: Callable[[st.SearchStrategy[Any]], Any] = draw
        self.events: list[Json] = []
        self.node = 0
        # The lookup: the party's holdings from earlier updates (never those created here).
        self.before: dict[str, Holding] = {}
        self.known: dict[str, Holding] = {}
        self.live: list[str] = []  # the party's holdings that may be spent
        self.instructions: list[str] = []
        self.net: dict[InstrumentId, Decimal] = {}
        self.cids = 0
        for _ in range(draw(st.integers(0, 3))):
            cid = self.cid()
            self.known[cid] = holding(cid, str(draw(amounts)), PARTY, draw(instruments))
            self.before[cid] = self.known[cid]
            self.live.append(cid)

    def cid(self) -> str:
        self.cids += 1
        return f"c{self.cids}"

    def change(self, instrument: InstrumentId, amount: Decimal) -> None:
        self.net[instrument] = self.net.get(instrument, Decimal(0)) + amount

    def spend(self) -> str:
        """A contract id to consume: the party's holding (counted), or anything else."""
        if self.live and self.draw(st.booleans()):
            cid = self.live.pop(self.draw(st.integers(0, len(self.live) - 1)))
            spent = self.known[cid]
            self.change(spent.instrument, -spent.amount)
            return cid
        return (
            self.draw(st.sampled_from(["unknown", *self.instructions]))
            if self.instructions
            else "unknown"
        )

    def leaf(self) -> None:
        node, self.node = self.node, self.node + 1
        what = self.draw(st.sampled_from(["holding", "holding", "archive", "instruction"]))
        if what == "holding":
            cid, owner = self.cid(), self.draw(parties)
            amount, instrument = self.draw(amounts), self.draw(instruments)
            self.events.append(create_holding(node, cid, owner, str(amount), instrument=instrument))
            if owner == PARTY:
                self.known[cid] = holding(cid, str(amount), PARTY, instrument)
                self.live.append(cid)
                self.change(instrument, amount)
        elif what == "archive":
            self.events.append(archive(node, self.spend()))
        else:
            cid = self.cid()
            self.instructions.append(cid)
            self.events.append(
                create_instruction(node, cid, self.draw(parties), self.draw(parties))
            )

    def exercise(self, depth: int) -> None:
        node, self.node = self.node, self.node + 1
        position = len(self.events)
        self.events.append({})
        what = self.draw(
            st.sampled_from(["wrapper", "tx_kind", "factory", "instruction", "send", "spend"])
        )
        if what == "wrapper":
            event = exercise(node, "w", "Wallet_Do", template=WALLET_TEMPLATE)
        elif what == "tx_kind":
            kind = self.draw(
                st.sampled_from(["transfer", "mint", "burn", "merge-split", "unlock", "odd"])
            )
            result = {"meta": meta(**{TX_KIND_KEY: kind, SENDER_KEY: self.draw(parties)})}
            event = exercise(node, "rules", "AmuletRules_Do", result=result)
        elif what == "factory":
            tag = self.draw(st.sampled_from(RESULT_TAGS))
            transfer = transfer_record(
                self.draw(parties), self.draw(parties), str(self.draw(amounts))
            )
            event = factory_transfer(
                node, node, transfer, tag=tag, value={"transferInstructionCid": "p"}
            )
        elif what == "instruction":
            choice = self.draw(st.sampled_from(INSTRUCTION_CHOICES))
            cid = self.draw(st.sampled_from([*self.instructions, "unknown-ti"]))
            event = instruction_choice(
                node, node, cid, choice, tag=self.draw(st.sampled_from(RESULT_TAGS))
            )
        elif what == "send":
            argument = {"sender": self.draw(parties), "amount": str(self.draw(amounts))}
            event = exercise(
                node,
                "pa",
                "TransferPreapproval_Send",
                template=PREAPPROVAL_TEMPLATE,
                argument=argument,
            )
        else:
            event = exercise(
                node, self.spend(), "LockedAmulet_Unlock", template=AMULET_TEMPLATE, consuming=True
            )
        for _ in range(self.draw(st.integers(0, 3))):
            self.subtree(depth + 1)
        event["ExercisedEvent"]["lastDescendantNodeId"] = self.node - 1
        self.events[position] = event

    def subtree(self, depth: int) -> None:
        if depth < 3 and self.draw(st.booleans()):
            self.exercise(depth)
        else:
            self.leaf()


@st.composite
def generated_transactions(draw: st.DrawFn) -> _Generated:
    generated = _Generated(draw)
    for _ in range(draw(st.integers(1, 4))):
        generated.subtree(0)
    return generated


def _entries_net(parsed: ParsedTransaction) -> dict[InstrumentId, Decimal]:
    net: dict[InstrumentId, Decimal] = {}
    for entry in parsed.entries:
        for created in entry.holdings_created:
            net[created.instrument] = net.get(created.instrument, Decimal(0)) + created.amount
        for archived in entry.holdings_archived:
            net[archived.instrument] = net.get(archived.instrument, Decimal(0)) - archived.amount
    return net


def _nonzero(net: Mapping[InstrumentId, Decimal]) -> dict[InstrumentId, Decimal]:
    return {instrument: amount for instrument, amount in net.items() if amount != 0}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_transactions())
def test_entries_account_for_exactly_the_partys_net_holdings_change(generated: _Generated) -> None:
    tx = transaction(*generated.events)
    parsed = parse(tx, holdings=generated.before)
    assert _nonzero(_entries_net(parsed)) == _nonzero(generated.net)
    node_ids = [entry.node_id for entry in parsed.entries]
    assert node_ids == sorted(set(node_ids))
    every = [*parsed.holdings_created, *parsed.holdings_archived]
    assert all(h.owner == PARTY for h in every)
    assert len({h.contract_id for h in parsed.holdings_created}) == len(parsed.holdings_created)


def _slots(value: Any) -> list[tuple[Any, Any]]:
    """Every (container, key) in a JSON tree."""
    found: list[tuple[Any, Any]] = []
    pending = [value]
    while pending:
        current = pending.pop()
        items = current.items() if isinstance(current, dict) else enumerate(current)
        for key, inner in items:
            found.append((current, key))
            if isinstance(inner, dict | list):
                pending.append(inner)
    return found


_JUNK = [None, 0, -1, True, "", "x", "1e100", "9999-12-31T23:59:59-01:00", [], {}, [1], {"a": 1}]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(generated_transactions(), st.data())
def test_a_corrupted_transaction_raises_nothing_but_malformed_update_error(
    generated: _Generated, data: st.DataObject
) -> None:
    tx = copy.deepcopy(transaction(*generated.events))
    for _ in range(data.draw(st.integers(1, 3))):
        slots = _slots(tx)
        container, key = data.draw(st.sampled_from(slots))
        if isinstance(container, dict) and data.draw(st.booleans()):
            del container[key]
        else:
            container[key] = copy.deepcopy(data.draw(st.sampled_from(_JUNK)))
    wrapped = data.draw(
        st.sampled_from([tx, {"update": {"Transaction": {"value": tx}}}, {"transaction": tx}])
    )
    before = generated.before
    with contextlib.suppress(MalformedUpdateError):
        parse_update(wrapped, PARTY, before.get, nothing)
