"""Commands and the Registry API client of the Canton adapter, against ``httpx.MockTransport``.

Commands: the submit-and-wait body of a transfer and of an instruction choice validates against
the OpenAPI ``JsCommands`` schema (read from ``../shared/reference/canton/api/``), carries the
registry's disclosed contracts and a fresh ``submissionId``; an external party prepares (with
``maxRecordTime``), signs the prepared hash with Ed25519 (the signature verifies with its public
key) and executes with a fresh ``submissionId`` each time; node answers map to
:class:`sluice.ports.CommandError` definite or not; keys load from PEM, raw and hex files.

Registry: the transfer-factory and choice-context request bodies and paths, the context passed
through untouched, malformed answers, a timeout saying "timed out", the admin check, and the
lookup's cache.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId, Transfer
from sluice.ledger import wire
from sluice.ledger.canton import (
    CantonCommands,
    Ed25519Signer,
    HttpRegistry,
    LedgerHttp,
    NoAuth,
    StaticToken,
    registry_lookup,
)
from sluice.ports import ChoiceContextData, CommandError, FactoryChoice, RegistryError
from tests.conftest import reference_path

ADMIN = "registry::1220aa"
EXCHANGE = "exchange::1220bb"
CUSTOMER = "customer::1220cc"
EXTERNAL = "external::1220dd"
COIN = InstrumentId(ADMIN, "Coin")
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
DISCLOSED = {
    "templateId": "pkg:Splice.AmuletRules:AmuletRules",
    "contractId": "00rules",
    "createdEventBlob": "CgMyLjES",
    "synchronizerId": "global-domain::1220ee",
}
CONTEXT_VALUES = {
    "amulet-rules": {"tag": "AV_ContractId", "value": "00rules"},
    "featured": {"tag": "AV_Bool", "value": True},
}


@pytest.fixture(scope="module")
def ledger_api() -> dict[str, Any]:
    """The JSON Ledger API's OpenAPI document."""
    path = reference_path("canton", "api", "ledger-api-3.4.12-openapi.yaml")
    return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def schema_errors(spec: dict[str, Any], name: str, instance: Any) -> list[str]:
    """Why ``instance`` is not a valid ``#/components/schemas/<name>`` of ``spec``."""
    registry = Registry().with_resource(
        "urn:ledger-api", Resource.from_contents(spec, default_specification=DRAFT4)
    )
    validator = OAS30Validator(
        {"$ref": f"urn:ledger-api#/components/schemas/{name}"}, registry=registry
    )
    return sorted(f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(instance))


def a_transfer(sender: str = EXCHANGE) -> Transfer:
    return Transfer(
        sender=sender,
        receiver=CUSTOMER,
        amount=Decimal("12.5"),
        instrument=COIN,
        requested_at=NOW,
        execute_before=NOW + timedelta(hours=1),
        input_holding_cids=("00h1", "00h2"),
        meta={"splice.lfdecentralizedtrust.org/reason": "w-1"},
    )


def a_factory() -> FactoryChoice:
    return FactoryChoice("00factory", "direct", ChoiceContextData(CONTEXT_VALUES, (DISCLOSED,)))


class Node:
    """Records requests and answers each path from ``answers`` (a response or a function)."""

    def __init__(self, **answers: httpx.Response | Callable[[httpx.Request], httpx.Response]):
        self.answers = answers
        self.requests: list[tuple[str, Any]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content) if request.content else None
        self.requests.append((request.url.path, body))
        key = request.url.path.rsplit("/", 1)[-1].replace("-", "_")
        answer = self.answers.get(key)
        if answer is None:
            return httpx.Response(404, text=f"no answer for {request.url.path}")
        return answer(request) if callable(answer) else answer

    def bodies(self, path_end: str) -> list[Any]:
        return [body for path, body in self.requests if path.endswith(path_end)]


COMPLETED = httpx.Response(200, json={"updateId": "update-9", "completionOffset": 42})


def commands_for(node: Node, **options: Any) -> CantonCommands:
    http = LedgerHttp(
        "http://node.example",
        StaticToken("t"),
        transport=httpx.MockTransport(node),
        sleep=lambda _: None,
    )
    return CantonCommands(http, **options)


# --- local parties: submit-and-wait ---------------------------------------------------------------


def test_a_transfer_is_submitted_as_valid_js_commands(ledger_api: dict[str, Any]) -> None:
    node = Node(submit_and_wait=COMPLETED)
    commands = commands_for(node, user_id="sluice", synchronizer_id="global-domain::1220ee")
    commands.submit_transfer(
        a_transfer(), a_factory(), act_as=EXCHANGE, command_id="cmd-1", max_record_time=None
    )
    (body,) = node.bodies("/v2/commands/submit-and-wait")
    assert schema_errors(ledger_api, "JsCommands", body) == []
    assert body["commands"] == [wire.transfer_command(a_transfer(), "00factory", CONTEXT_VALUES)]
    assert body["commandId"] == "cmd-1"
    assert body["actAs"] == [EXCHANGE]
    assert body["userId"] == "sluice"
    assert body["synchronizerId"] == "global-domain::1220ee"
    assert body["disclosedContracts"] == [DISCLOSED]
    assert body["commands"][0]["ExerciseCommand"]["choiceArgument"]["expectedAdmin"] == ADMIN
    assert "maxRecordTime" not in body  # JsCommands has no such field


def test_an_instruction_choice_is_submitted_as_valid_js_commands(
    ledger_api: dict[str, Any],
) -> None:
    node = Node(submit_and_wait=COMPLETED)
    context = ChoiceContextData(CONTEXT_VALUES, (DISCLOSED,))
    commands_for(node).exercise_instruction(
        "accept", "00instr", context, act_as=EXCHANGE, command_id="cmd-2"
    )
    (body,) = node.bodies("/v2/commands/submit-and-wait")
    assert schema_errors(ledger_api, "JsCommands", body) == []
    assert body["commands"] == [wire.instruction_command("accept", "00instr", CONTEXT_VALUES)]
    assert body["disclosedContracts"] == [DISCLOSED]
    assert "userId" not in body


def test_each_submission_has_a_fresh_submission_id() -> None:
    node = Node(submit_and_wait=COMPLETED)
    commands = commands_for(node)
    for _ in range(2):
        commands.submit_transfer(
            a_transfer(), a_factory(), act_as=EXCHANGE, command_id="cmd-1", max_record_time=None
        )
    first, second = node.bodies("/v2/commands/submit-and-wait")
    assert first["commandId"] == second["commandId"] == "cmd-1"
    assert first["submissionId"] != second["submissionId"]


def canton_answer(code: str, category: str, **options: Any) -> httpx.Response:
    status, body = wire.canton_error(code, f"{code} happened", category, **options)
    return httpx.Response(status, json=body)


@pytest.mark.parametrize(
    ("answer", "definite", "code"),
    [
        (
            canton_answer("CONTRACT_NOT_FOUND", "InvalidGivenCurrentSystemStateResourceMissing"),
            True,
            "CONTRACT_NOT_FOUND",
        ),
        (
            canton_answer("DAML_INTERPRETATION_ERROR", "InvalidGivenCurrentSystemStateOther"),
            True,
            "DAML_INTERPRETATION_ERROR",
        ),
        (
            canton_answer("DUPLICATE_COMMAND", "InvalidGivenCurrentSystemStateResourceExists"),
            False,
            "DUPLICATE_COMMAND",
        ),
        (
            canton_answer("REQUEST_TIME_OUT", "DeadlineExceededRequestStateUnknown"),
            False,
            "REQUEST_TIME_OUT",
        ),
        (canton_answer("NODE_BUSY", "TransientServerFailure"), False, "NODE_BUSY"),
        (httpx.Response(500, text="Internal Server Error"), False, None),
        (httpx.Response(502, text="Bad Gateway"), False, None),
        (httpx.Response(400, text="Invalid value for: body"), True, None),
        (httpx.Response(200, text="not json"), False, None),
        (httpx.Response(200, json={"unexpected": True}), False, None),
    ],
)
def test_node_answers_map_to_definite_or_indefinite_command_errors(
    answer: httpx.Response, definite: bool, code: str | None
) -> None:
    node = Node(submit_and_wait=answer)
    with pytest.raises(CommandError) as caught:
        commands_for(node).submit_transfer(
            a_transfer(), a_factory(), act_as=EXCHANGE, command_id="cmd-1", max_record_time=None
        )
    assert caught.value.definite is definite
    assert caught.value.code == code
    assert "command cmd-1 acting as exchange::1220bb" in str(caught.value)
    assert len(node.requests) == 1  # never retried


def test_a_timeout_is_an_indefinite_command_error() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(CommandError, match=r"may have committed.*timed out") as caught:
        commands_for(Node(submit_and_wait=slow)).submit_transfer(
            a_transfer(), a_factory(), act_as=EXCHANGE, command_id="c", max_record_time=None
        )
    assert caught.value.definite is False


def test_a_lost_connection_is_an_indefinite_command_error() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection", request=request)

    with pytest.raises(CommandError) as caught:
        commands_for(Node(submit_and_wait=refuse)).submit_transfer(
            a_transfer(), a_factory(), act_as=EXCHANGE, command_id="c", max_record_time=None
        )
    assert caught.value.definite is False


@pytest.mark.parametrize("status", [401, 403])
def test_refused_credentials_are_a_definite_error_saying_authentication(status: int) -> None:
    node = Node(submit_and_wait=httpx.Response(status, text="denied"))
    with pytest.raises(CommandError, match="authentication failed") as caught:
        commands_for(node).submit_transfer(
            a_transfer(), a_factory(), act_as=EXCHANGE, command_id="c", max_record_time=None
        )
    assert caught.value.definite is True


# --- external parties: prepare, sign, execute -----------------------------------------------------


def prepared_answer(request: httpx.Request) -> httpx.Response:
    transaction = base64.b64encode(request.content).decode()
    digest = base64.b64encode(hashlib.sha256(request.content).digest()).decode()
    return httpx.Response(
        200,
        json={
            "preparedTransaction": transaction,
            "preparedTransactionHash": digest,
            "hashingSchemeVersion": wire.HASHING_SCHEME_VERSION,
        },
    )


def external_setup(**answers: Any) -> tuple[Node, CantonCommands, Ed25519Signer]:
    signer = Ed25519Signer(Ed25519PrivateKey.generate())
    node = Node(
        **{"prepare": prepared_answer, "executeAndWait": COMPLETED, **answers},
    )
    commands = commands_for(node, user_id="sluice", signers={EXTERNAL: signer})
    return node, commands, signer


def test_an_external_party_prepares_signs_the_hash_and_executes(
    ledger_api: dict[str, Any],
) -> None:
    node, commands, signer = external_setup()
    deadline = NOW + timedelta(minutes=5)
    commands.submit_transfer(
        a_transfer(EXTERNAL),
        a_factory(),
        act_as=EXTERNAL,
        command_id="cmd-x",
        max_record_time=deadline,
    )
    assert [path for path, _ in node.requests] == [
        "/v2/interactive-submission/prepare",
        "/v2/interactive-submission/executeAndWait",
    ]
    (prepare,) = node.bodies("/prepare")
    assert schema_errors(ledger_api, "JsPrepareSubmissionRequest", prepare) == []
    assert prepare["maxRecordTime"] == "2025-06-01T12:05:00.000000Z"
    assert prepare["actAs"] == [EXTERNAL]
    assert prepare["disclosedContracts"] == [DISCLOSED]
    (execute,) = node.bodies("/executeAndWait")
    assert schema_errors(ledger_api, "JsExecuteSubmissionAndWaitRequest", execute) == []
    assert execute["hashingSchemeVersion"] == wire.HASHING_SCHEME_VERSION
    assert execute["userId"] == "sluice"
    assert "deduplicationPeriod" not in execute
    (party_signatures,) = execute["partySignatures"]["signatures"]
    assert party_signatures["party"] == EXTERNAL
    (signature,) = party_signatures["signatures"]
    assert signature["format"] == wire.SIGNATURE_FORMAT
    assert signature["signingAlgorithmSpec"] == wire.SIGNING_ALGORITHM
    assert signature["signedBy"] == wire.key_fingerprint(signer.public_key_raw)
    # The signature is over the raw hash bytes and verifies with the party's public key.
    prepared = orjson.loads(base64.b64decode(execute["preparedTransaction"]))
    assert prepared == prepare
    digest = hashlib.sha256(orjson.dumps(prepare)).digest()
    Ed25519PublicKey.from_public_bytes(signer.public_key_raw).verify(
        base64.b64decode(signature["signature"]), digest
    )


def test_every_external_execution_has_a_fresh_submission_id() -> None:
    node, commands, _ = external_setup()
    context = ChoiceContextData(CONTEXT_VALUES, (DISCLOSED,))
    for _ in range(2):
        commands.exercise_instruction(
            "withdraw", "00instr", context, act_as=EXTERNAL, command_id="cmd-w"
        )
    first, second = node.bodies("/executeAndWait")
    assert first["submissionId"] != second["submissionId"]


def test_a_party_without_a_signer_uses_submit_and_wait() -> None:
    node, commands, _ = external_setup(submit_and_wait=COMPLETED)
    commands.submit_transfer(
        a_transfer(), a_factory(), act_as=EXCHANGE, command_id="c", max_record_time=None
    )
    assert [path for path, _ in node.requests] == ["/v2/commands/submit-and-wait"]


@pytest.mark.parametrize(("left_s", "submitted"), [(91, True), (89, False), (-5, False)])
def test_a_local_party_command_is_submitted_only_with_its_margin_before_max_record_time(
    left_s: int, submitted: bool
) -> None:
    """The node cannot enforce max_record_time for a local party; a command sent later than the
    margin before it could commit after the worker has already retried (a double payment)."""
    node = Node(submit_and_wait=COMPLETED)
    commands = commands_for(node, clock=lambda: NOW, local_margin_s=90)
    deadline = NOW + timedelta(seconds=left_s)
    if submitted:
        commands.submit_transfer(
            a_transfer(), a_factory(), act_as=EXCHANGE, command_id="c", max_record_time=deadline
        )
        assert [path for path, _ in node.requests] == ["/v2/commands/submit-and-wait"]
        return
    with pytest.raises(CommandError, match="not submitted") as caught:
        commands.submit_transfer(
            a_transfer(), a_factory(), act_as=EXCHANGE, command_id="c", max_record_time=deadline
        )
    assert caught.value.definite is True
    assert caught.value.code == "SUBMISSION_TOO_LATE"
    assert node.requests == []


def test_a_failed_prepare_is_definite_because_nothing_was_submitted() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    node, commands, _ = external_setup(prepare=slow)
    with pytest.raises(CommandError, match="preparing failed") as caught:
        commands.submit_transfer(
            a_transfer(EXTERNAL), a_factory(), act_as=EXTERNAL, command_id="c", max_record_time=NOW
        )
    assert caught.value.definite is True
    assert not node.bodies("/executeAndWait")


def test_a_prepare_answer_without_a_hash_is_refused_before_executing() -> None:
    answer = httpx.Response(
        200,
        json={"preparedTransaction": "eA==", "hashingSchemeVersion": "HASHING_SCHEME_VERSION_V2"},
    )
    node, commands, _ = external_setup(prepare=answer)
    with pytest.raises(CommandError, match="preparedTransactionHash") as caught:
        commands.submit_transfer(
            a_transfer(EXTERNAL), a_factory(), act_as=EXTERNAL, command_id="c", max_record_time=NOW
        )
    assert caught.value.definite is True
    assert not node.bodies("/executeAndWait")


def test_a_rejected_execution_is_definite_and_a_lost_one_is_not() -> None:
    rejected = canton_answer("INVALID_SIGNATURE", "InvalidIndependentOfSystemState")
    _, commands, _ = external_setup(executeAndWait=rejected)
    with pytest.raises(CommandError) as caught:
        commands.submit_transfer(
            a_transfer(EXTERNAL), a_factory(), act_as=EXTERNAL, command_id="c", max_record_time=NOW
        )
    assert (caught.value.definite, caught.value.code) == (True, "INVALID_SIGNATURE")

    _, commands, _ = external_setup(executeAndWait=httpx.Response(504, text="Gateway Timeout"))
    with pytest.raises(CommandError) as caught:
        commands.submit_transfer(
            a_transfer(EXTERNAL), a_factory(), act_as=EXTERNAL, command_id="c", max_record_time=NOW
        )
    assert caught.value.definite is False


# --- keys -----------------------------------------------------------------------------------------


def test_a_signer_loads_from_pem_raw_seed_and_hex(tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    seed = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    files = {"key.pem": pem, "key.seed": seed, "key.hex": seed.hex().encode() + b"\n"}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        signer = Ed25519Signer.from_file(tmp_path / name)
        assert signer.public_key_raw == public, name
        assert signer.fingerprint == wire.key_fingerprint(public)


def test_a_file_that_is_not_an_ed25519_key_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "secret.txt"
    path.write_bytes(b"this is not a key at all, no")
    with pytest.raises(InvalidInputError, match=r"secret\.txt: not a readable Ed25519"):
        Ed25519Signer.from_file(path)


# --- the Registry API -----------------------------------------------------------------------------

REGISTRY_URL = f"http://registry.example/registries/{ADMIN}"


def factory_answer(**changes: Any) -> dict[str, Any]:
    answer: dict[str, Any] = {
        "factoryId": "00factory",
        "transferKind": "offer",
        "choiceContext": {
            "choiceContextData": {"values": CONTEXT_VALUES},
            "disclosedContracts": [DISCLOSED],
        },
    }
    answer.update(changes)
    return answer


def registry_with(
    handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> HttpRegistry:
    return HttpRegistry(
        REGISTRY_URL, ADMIN, transport=httpx.MockTransport(handler), sleep=lambda _: None, **options
    )


def test_the_transfer_factory_is_asked_with_the_choice_arguments() -> None:
    seen: list[httpx.Request] = []

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=factory_answer())

    registry_with(registry).transfer_factory(a_transfer())
    (request,) = seen
    assert request.method == "POST"
    assert request.url.path == (
        f"/registries/{ADMIN}/registry/transfer-instruction/v1/transfer-factory"
    )
    assert orjson.loads(request.content) == {
        "choiceArguments": wire.transfer_factory_arguments(a_transfer()),
        "excludeDebugFields": True,
    }
    assert orjson.loads(request.content)["choiceArguments"]["extraArgs"] == {
        "context": {"values": {}},
        "meta": {"values": {}},
    }


def test_the_choice_context_is_passed_through_untouched() -> None:
    answer = factory_answer()
    answer["choiceContext"]["disclosedContracts"][0] = {**DISCLOSED, "debugPayload": {"x": 1}}
    registry = registry_with(lambda r: httpx.Response(200, json=answer))
    factory = registry.transfer_factory(a_transfer())
    assert factory.factory_id == "00factory"
    assert factory.transfer_kind == "offer"
    assert factory.context.values == CONTEXT_VALUES
    assert factory.context.disclosed_contracts == ({**DISCLOSED, "debugPayload": {"x": 1}},)


@pytest.mark.parametrize(
    ("answer", "problem"),
    [
        (factory_answer(transferKind="teleport"), "transferKind 'teleport'"),
        (factory_answer(factoryId=""), "no factoryId"),
        (factory_answer(choiceContext={"disclosedContracts": []}), "choiceContextData"),
        (
            factory_answer(choiceContext={"choiceContextData": {"values": {}}}),
            "disclosedContracts",
        ),
        ([], "not a JSON object"),
    ],
)
def test_a_malformed_factory_answer_is_a_registry_error(answer: Any, problem: str) -> None:
    registry = registry_with(lambda r: httpx.Response(200, json=answer))
    with pytest.raises(RegistryError, match=problem) as caught:
        registry.transfer_factory(a_transfer())
    assert REGISTRY_URL in str(caught.value)


def test_a_choice_context_is_asked_for_the_instruction_and_choice() -> None:
    seen: list[httpx.Request] = []
    context = {"choiceContextData": {"values": CONTEXT_VALUES}, "disclosedContracts": [DISCLOSED]}

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=context)

    found = registry_with(registry).choice_context("reject", "00instr")
    assert found == ChoiceContextData(CONTEXT_VALUES, (DISCLOSED,))
    assert seen[0].url.path == (
        f"/registries/{ADMIN}/registry/transfer-instruction/v1/00instr/choice-contexts/reject"
    )
    assert orjson.loads(seen[0].content) == {"meta": {}, "excludeDebugFields": True}


def test_a_registry_timeout_says_it_timed_out_and_names_the_registry() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    registry = registry_with(slow, timeout_s=2, retries_max=1)
    with pytest.raises(RegistryError, match="timed out after 2 s") as caught:
        registry.transfer_factory(a_transfer())
    assert REGISTRY_URL in str(caught.value)


def test_a_registry_refusal_carries_its_error_text() -> None:
    registry = registry_with(
        lambda r: httpx.Response(404, json={"error": "Transfer instruction 00x not found"})
    )
    with pytest.raises(RegistryError, match="HTTP 404: Transfer instruction 00x not found"):
        registry.choice_context("accept", "00x")


def test_a_transfer_of_another_admins_instrument_is_refused_without_asking() -> None:
    seen: list[httpx.Request] = []
    registry = registry_with(lambda r: seen.append(r) or httpx.Response(200, json={}))
    other = Transfer(
        sender=EXCHANGE,
        receiver=CUSTOMER,
        amount=Decimal(1),
        instrument=InstrumentId("other::1220ff", "Coin"),
        requested_at=NOW,
        execute_before=NOW + timedelta(hours=1),
    )
    with pytest.raises(RegistryError, match="serves admin registry::1220aa"):
        registry.transfer_factory(other)
    assert seen == []


def test_instruments_follow_the_next_page_token() -> None:
    pages = {
        None: {"instruments": [{"id": "A"}], "nextPageToken": "p2"},
        "p2": {"instruments": [{"id": "B"}]},
    }
    seen: list[dict[str, str]] = []

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append(dict(request.url.params))
        return httpx.Response(200, json=pages[request.url.params.get("pageToken")])

    assert registry_with(registry).instruments(page_size=1) == [{"id": "A"}, {"id": "B"}]
    assert seen == [{"pageSize": "1"}, {"pageSize": "1", "pageToken": "p2"}]


def test_info_and_instrument_are_read_from_the_metadata_api() -> None:
    seen: list[str] = []

    def registry(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return httpx.Response(200, json={"adminId": ADMIN, "id": "Coin"})

    registry = registry_with(registry)
    assert registry.info()["adminId"] == ADMIN
    assert registry.instrument("Coin")["id"] == "Coin"
    assert seen == [
        f"/registries/{ADMIN}/registry/metadata/v1/info",
        f"/registries/{ADMIN}/registry/metadata/v1/instruments/Coin",
    ]


def test_the_registry_lookup_keeps_one_client_per_url_and_admin() -> None:
    urls = {COIN: REGISTRY_URL, InstrumentId(ADMIN, "Other"): REGISTRY_URL + "/"}
    lookup = registry_lookup(urls.get, auth=NoAuth())
    first = lookup(COIN)
    assert lookup(InstrumentId(ADMIN, "Other")) is first
    assert isinstance(first, HttpRegistry) and first.admin == ADMIN


def test_an_instrument_without_a_registry_url_is_a_registry_error() -> None:
    lookup = registry_lookup(lambda instrument: None)
    with pytest.raises(RegistryError, match="Coin@registry::1220aa has no registry URL; onboard"):
        lookup(COIN)
