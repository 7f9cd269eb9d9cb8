"""The request bodies :mod:`sluice.ledger.wire` builds are what the published OpenAPI files accept,
and the server-side decoding inverts the builders.

Covers ``js_commands`` with ``TransferFactory_Transfer`` and transfer-instruction commands
(``JsCommands``), ``prepare_request`` (``JsPrepareSubmissionRequest``), ``updates_request``
(``GetUpdatesRequest``), the registry's transfer-factory request (``GetFactoryRequest`` of the
token standard's transfer-instruction API), ``event_format`` and every ``canton_error`` category
(``JsCantonError``); ``decode_command`` round trips (hypothesis) and refusals; and that the
recorded Canton transactions in ``../shared/reference/canton/fixtures`` pass the same checks (the
few places where real nodes differ from the 3.4.12 file are listed in :mod:`tests.openapi_spec`).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId, Transfer
from sluice.ledger import wire
from tests.conftest import reference_path
from tests.openapi_spec import (
    check_schema,
    ledger_api,
    transfer_instruction_api,
)

DSO = "dso::1220" + "ab" * 32
ALICE = "alice::1220" + "cd" * 32
TREASURY = "treasury::1220" + "ef" * 32
CID = "00" + "11" * 32 + "ca111220" + "22" * 32
FACTORY = "00" + "33" * 32 + "ca111220" + "44" * 32
CONTEXT = {"registry-rules": {"tag": "AV_ContractId", "value": FACTORY}}
WHEN = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def a_transfer(**changes: Any) -> Transfer:
    fields: dict[str, Any] = {
        "sender": ALICE,
        "receiver": TREASURY,
        "amount": Decimal("12.5"),
        "instrument": InstrumentId(DSO, "Amulet"),
        "requested_at": WHEN,
        "execute_before": WHEN + timedelta(hours=1),
        "input_holding_cids": (CID,),
        "meta": {"splice.lfdecentralizedtrust.org/reason": "acct-1"},
    }
    fields.update(changes)
    return Transfer(**fields)


# --- request bodies against the OpenAPI files --------------------------------------------------


def test_transfer_command_in_js_commands_is_a_valid_js_commands() -> None:
    command = wire.transfer_command(a_transfer(), FACTORY, CONTEXT)
    body = wire.js_commands(
        [command],
        command_id="wd-1",
        act_as=[ALICE],
        user_id="sluice",
        disclosed_contracts=[{"contractId": FACTORY, "createdEventBlob": "AAA="}],
        submission_id="sub-1",
    )
    check_schema(ledger_api(), "JsCommands", body)
    check_schema(ledger_api(), "#/components/schemas/Command", command)


@pytest.mark.parametrize("choice", ["accept", "reject", "withdraw"])
def test_instruction_commands_are_valid_js_commands(choice: wire.InstructionChoiceName) -> None:
    command = wire.instruction_command(choice, CID, CONTEXT)
    check_schema(
        ledger_api(), "JsCommands", wire.js_commands([command], command_id="c", act_as=[ALICE])
    )


def test_prepare_request_with_max_record_time_is_a_valid_prepare_submission_request() -> None:
    body = wire.prepare_request(
        [wire.transfer_command(a_transfer(), FACTORY, CONTEXT)],
        command_id="wd-2",
        act_as=[ALICE],
        user_id="sluice",
        synchronizer_id="global-domain::1220" + "00" * 32,
        max_record_time=WHEN + timedelta(minutes=5),
    )
    check_schema(ledger_api(), "JsPrepareSubmissionRequest", body)
    assert body["maxRecordTime"] == "2025-03-01T12:05:00.000000Z"


@pytest.mark.parametrize("end", [None, 42])
def test_updates_request_is_a_valid_get_updates_request(end: int | None) -> None:
    body = wire.updates_request(TREASURY, 7, end)
    check_schema(ledger_api(), "GetUpdatesRequest", body)
    check_schema(ledger_api(), "EventFormat", wire.event_format(TREASURY))
    assert wire.requested_party(body["updateFormat"]["includeTransactions"]["eventFormat"]) == (
        TREASURY
    )


def test_registry_transfer_factory_request_is_a_valid_get_factory_request() -> None:
    body = {
        "choiceArguments": wire.transfer_factory_arguments(a_transfer()),
        "excludeDebugFields": True,
    }
    check_schema(transfer_instruction_api(), "GetFactoryRequest", body)
    assert body["choiceArguments"]["extraArgs"] == {
        "context": {"values": {}},
        "meta": {"values": {}},
    }


@pytest.mark.parametrize("category", sorted(wire.CATEGORIES))
def test_every_canton_error_category_makes_a_valid_js_canton_error(category: str) -> None:
    status, body = wire.canton_error(
        "SOME_CODE", "what happened", category, definite=True, correlation_id="c-1"
    )
    check_schema(ledger_api(), "JsCantonError", body)
    assert status == wire.CATEGORIES[category].http_status


@pytest.mark.parametrize(
    "name",
    [
        "guide-1-step-transfer.json",
        "guide-transfer-instruction-create.json",
        "guide-transfer-instruction-accept.json",
    ],
)
def test_recorded_canton_transactions_pass_the_same_checks(name: str) -> None:
    item = json.loads(reference_path("canton", "fixtures", name).read_text())
    check_schema(ledger_api(), "JsGetUpdatesResponse", item)


def test_a_schema_violation_fails_with_the_place_it_is_at() -> None:
    body = wire.js_commands(
        [wire.instruction_command("accept", CID, {})], command_id="c", act_as=[ALICE]
    )
    body["commands"][0]["ExerciseCommand"]["contractId"] = 7
    with pytest.raises(AssertionError, match="commands/0/ExerciseCommand/contractId"):
        check_schema(ledger_api(), "JsCommands", body)


# --- decode_command inverts the builders ---------------------------------------------------------

hex_ids = st.text(alphabet="0123456789abcdef", min_size=8, max_size=16)
parties = st.builds(
    lambda hint, tail: f"{hint}::1220{tail}", st.sampled_from(["a", "b", "c"]), hex_ids
)
amounts = st.decimals(
    min_value=Decimal("0.0000000001"), max_value=Decimal("1e12"), places=10, allow_nan=False
)
times = st.datetimes(
    min_value=datetime(2024, 1, 1), max_value=datetime(2030, 1, 1), timezones=st.just(UTC)
)
texts = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)
contexts = st.dictionaries(
    st.sampled_from(["registry-rules", "transfer-preapproval", "expire-lock"]),
    st.one_of(
        st.builds(lambda cid: {"tag": "AV_ContractId", "value": cid}, hex_ids),
        st.booleans().map(lambda b: {"tag": "AV_Bool", "value": b}),
    ),
)


@st.composite
def transfers(draw: st.DrawFn) -> Transfer:
    requested = draw(times)
    return Transfer(
        sender=draw(parties),
        receiver=draw(parties),
        amount=draw(amounts),
        instrument=InstrumentId(draw(parties), draw(st.sampled_from(["Amulet", "USDX"]))),
        requested_at=requested,
        execute_before=requested + timedelta(seconds=draw(st.integers(1, 10**7))),
        input_holding_cids=tuple(draw(st.lists(hex_ids, max_size=4))),
        meta=draw(st.dictionaries(texts, texts, max_size=3)),
    )


@settings(max_examples=60, deadline=None)
@given(transfer=transfers(), factory=hex_ids, context=contexts)
def test_decode_command_inverts_transfer_command(
    transfer: Transfer, factory: str, context: dict[str, Any]
) -> None:
    decoded = wire.decode_command(wire.transfer_command(transfer, factory, context))
    assert decoded == wire.TransferCommand(transfer, factory, context, transfer.instrument.admin)


@settings(max_examples=40, deadline=None)
@given(
    choice=st.sampled_from(["accept", "reject", "withdraw"]),
    instruction=hex_ids,
    context=contexts,
)
def test_decode_command_inverts_instruction_command(
    choice: wire.InstructionChoiceName, instruction: str, context: dict[str, Any]
) -> None:
    decoded = wire.decode_command(wire.instruction_command(choice, instruction, context))
    assert decoded == wire.InstructionCommand(choice, instruction, context, {})


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ({"CreateCommand": {"templateId": "x", "createArguments": {}}}, "only ExerciseCommand"),
        ("not an object", "must be an object"),
        (
            {
                "ExerciseCommand": {
                    "contractId": CID,
                    "choice": "Archive",
                    "choiceArgument": {"extraArgs": {}},
                }
            },
            "not supported",
        ),
        ({"ExerciseCommand": {"choice": "TransferInstruction_Accept"}}, "contractId"),
        (
            {
                "ExerciseCommand": {
                    "contractId": CID,
                    "choice": "TransferInstruction_Accept",
                    "choiceArgument": {},
                }
            },
            "extraArgs",
        ),
    ],
)
def test_decode_command_refuses_what_it_does_not_serve(command: Any, problem: str) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        wire.decode_command(command)


def test_decode_command_refuses_an_expected_admin_that_is_not_the_instruments() -> None:
    command = wire.transfer_command(a_transfer(), FACTORY, CONTEXT)
    command["ExerciseCommand"]["choiceArgument"]["expectedAdmin"] = TREASURY
    with pytest.raises(InvalidInputError, match="expectedAdmin"):
        wire.decode_command(command)
