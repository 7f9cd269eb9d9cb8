"""The embedded ledger's HTTP/WebSocket server, over a real socket.

Each test builds a small world on an in-memory :class:`EmbeddedLedger` (nodes ``registry``,
``exchange``, ``wallets``; Amulet of the DSO, 1-step to the preapproved treasury; USDX of an issuer,
offers only; alice and an external party on ``wallets``), starts :class:`LedgerServer` on a free
port and talks to it with ``httpx`` and ``websockets.sync.client`` directly. Every answer, success
and error, is checked against the published OpenAPI files (:mod:`tests.openapi_spec`); streams are
compared item for item with the ledger's own ``updates()``. Also covered: the list limit (413),
JWT auth and the OAuth token endpoint, each injected transport fault, the sandbox control endpoint
through :class:`RemoteLedger`, replay mode, and ``serve_forever`` stopping on SIGINT / SIGTERM (in
a subprocess). Most tests share one running server whose app is switched to a fresh world.
"""

from __future__ import annotations

import base64
import json
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.ledger import InstrumentId, Transfer
from sluice.ledger import wire
from sluice.ledger.local import (
    DuplicateCommandError,
    EmbeddedLedger,
    InsufficientFundsError,
    RegistryPolicy,
)
from sluice.ledger.local.remote import RemoteLedger
from sluice.ledger.local.server import LedgerServer, ServerAuth, build_app, load_public_key
from sluice.ledger.local.server_faults import ServerFaults
from tests.openapi_spec import (
    Spec,
    check_response,
    check_schema,
    ledger_api,
    token_metadata_api,
    transfer_instruction_api,
)

SECRET = "a-test-secret-of-at-least-32-bytes!!"
AUDIENCE = "https://sluice.test/ledger"


@dataclass
class World:
    ledger: EmbeddedLedger
    server: LedgerServer
    http: httpx.Client
    dso: str
    issuer: str
    treasury: str
    alice: str
    external: str
    external_key: Ed25519PrivateKey
    coin: InstrumentId
    token: InstrumentId

    def ws(self, path: str, **kwargs: Any) -> ClientConnection:
        return connect(self.server.url.replace("http://", "ws://") + path, **kwargs)

    def registry(self, admin: str) -> str:
        return f"/registries/{admin}/registry"


def build_ledger() -> tuple[EmbeddedLedger, dict[str, Any]]:
    ledger = EmbeddedLedger.open(None, seed=7, checkpoint_interval_s=None)
    for node in ("registry", "exchange", "wallets"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    issuer = ledger.allocate_party("issuer", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    alice = ledger.allocate_party("alice", "wallets")
    external = ledger.allocate_party("external", "wallets")
    coin = ledger.create_instrument(dso, "Amulet")
    token = ledger.create_instrument(issuer, "USDX", RegistryPolicy(preapprovals_allowed=False))
    ledger.create_preapproval(treasury, coin)
    for party in (alice, external):
        ledger.tap(party, coin, 1000)
        ledger.tap(party, token, 1000)
    return ledger, {
        "dso": dso,
        "issuer": issuer,
        "treasury": treasury,
        "alice": alice,
        "external": external,
        "coin": coin,
        "token": token,
    }


def external_key() -> tuple[Ed25519PrivateKey, bytes]:
    key = Ed25519PrivateKey.from_private_bytes(bytes(range(32)))
    return key, key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@contextmanager
def running_world(**server_options: Any) -> Iterator[World]:
    """A world with a server of its own (for tests of the server's settings and lifecycle)."""
    ledger, names = build_ledger()
    key, raw = external_key()
    server = LedgerServer(ledger, external_keys={names["external"]: raw}, **server_options)
    server.start()
    try:
        with httpx.Client(base_url=server.url, timeout=10) as http:
            yield World(ledger, server, http, external_key=key, **names)
    finally:
        server.stop()


class SwitchedApp:
    """The app of the module's one running server, switched to a fresh world's per test (a
    server's shutdown takes uvicorn a good 0.1 s; the socket, uvicorn and every endpoint are still
    the real ones)."""

    def __init__(self) -> None:
        self.app: Any = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[tuple[LedgerServer, SwitchedApp]]:
    switch = SwitchedApp()
    server = LedgerServer(None, app=switch, faults=ServerFaults()).start()
    yield server, switch
    server.stop()


@pytest.fixture
def world(shared_server: tuple[LedgerServer, SwitchedApp]) -> Iterator[World]:
    server, switch = shared_server
    ledger, names = build_ledger()
    key, raw = external_key()
    server.faults.clear()
    switch.app = build_app(ledger, external_keys={names["external"]: raw}, faults=server.faults)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        yield World(ledger, server, http, external_key=key, **names)


# --- checking answers -----------------------------------------------------------------------------


def body_of(response: httpx.Response) -> Any:
    if response.headers.get("content-type", "").startswith("application/json"):
        return response.json()
    return response.text


def checked(
    response: httpx.Response, path: str, status: int = 200, *, spec: Spec | None = None
) -> Any:
    """The answer's body, after checking its status and that the spec documents it."""
    body = body_of(response)
    assert response.status_code == status, (response.status_code, body)
    method = response.request.method
    check_response(spec or ledger_api(), path, method, status, body)
    return body


def canton_error(response: httpx.Response, path: str, status: int, code: str) -> dict[str, Any]:
    body = checked(response, path, status)
    assert wire.is_canton_error(body), body
    assert body["code"] == code, body
    return dict(body)


def recv_all(ws: ClientConnection, timeout: float = 5.0) -> tuple[list[str], ConnectionClosed]:
    """Every message until the server closes the stream, and how it closed."""
    messages: list[str] = []
    while True:
        try:
            message = ws.recv(timeout=timeout)
        except ConnectionClosed as closed:
            return messages, closed
        assert isinstance(message, str), "messages must be text"
        messages.append(message)


def updates_path(node: str | None = None) -> str:
    return f"/nodes/{node}/v2/updates" if node else "/v2/updates"


# --- state and version ----------------------------------------------------------------------------


def test_ledger_end_is_the_default_nodes_and_each_nodes_own(world: World) -> None:
    path = "/v2/state/ledger-end"
    body = checked(world.http.get(path), path)
    assert body == {"offset": world.ledger.ledger_end("exchange")}
    wallets = checked(world.http.get("/nodes/wallets" + path), path)
    assert wallets == {"offset": world.ledger.ledger_end("wallets")}
    assert wallets != body


def test_an_unknown_node_is_a_canton_error(world: World) -> None:
    path = "/v2/state/ledger-end"
    canton_error(world.http.get("/nodes/nowhere" + path), path, 404, "NODE_NOT_FOUND")


def test_version_is_a_ledger_api_version_response(world: World) -> None:
    body = checked(world.http.get("/v2/version"), "/v2/version")
    assert body["version"].startswith("3.")


def test_unsupported_endpoints_answer_501_with_a_canton_error(world: World) -> None:
    response = world.http.get("/v2/parties")
    body = canton_error(response, "/v2/parties", 501, "UNSUPPORTED_OPERATION")
    assert wire.category_name(body["errorCategory"]) == "InternalUnsupportedOperation"


# --- updates --------------------------------------------------------------------------------------


def test_updates_list_is_the_ledgers_own_stream(world: World) -> None:
    world.ledger.transfer(world.alice, world.treasury, world.coin, 10, reason="acct-1")
    world.ledger.checkpoint()
    body = checked(
        world.http.post("/v2/updates", json=wire.updates_request(world.treasury, 0, None)),
        "/v2/updates",
    )
    assert body == list(world.ledger.updates(world.treasury, 0))
    assert len(body) == 3


def test_updates_list_serves_the_section_asked_for_on_the_parties_node(world: World) -> None:
    # wallets: 1, 2 alice's taps; 3, 4 the external party's; 5 alice's transfer.
    world.ledger.transfer(world.alice, world.treasury, world.coin, 1)
    assert world.ledger.ledger_end("wallets") == 5
    request = wire.updates_request(world.alice, 1, 4)
    body = checked(world.http.post(updates_path("wallets"), json=request), "/v2/updates")
    assert body == list(world.ledger.updates(world.alice, 1, limit=1))
    assert [i["update"]["Transaction"]["value"]["offset"] for i in body] == [2]


def test_updates_list_accepts_the_legacy_filter_field(world: World) -> None:
    request = {"beginExclusive": 0, "filter": {"filtersByParty": {world.treasury: {}}}}
    body = checked(world.http.post("/v2/updates", json=request), "/v2/updates")
    assert body == list(world.ledger.updates(world.treasury, 0))


def test_updates_list_over_the_list_limit_is_413_unless_a_smaller_limit_is_given() -> None:
    with running_world(list_limit=3) as world:
        for _ in range(2):
            world.ledger.transfer(world.alice, world.treasury, world.coin, 1)
        request = wire.updates_request(world.alice, 0, None)
        path = updates_path("wallets")
        assert len(list(world.ledger.updates(world.alice, 0))) > 3
        too_many = canton_error(
            world.http.post(path, json=request),
            "/v2/updates",
            413,
            "MAXIMUM_LIST_ELEMENTS_NUMBER_REACHED",
        )
        assert "3" in too_many["cause"]
        two = checked(world.http.post(path, json=request, params={"limit": 2}), "/v2/updates")
        assert two == list(world.ledger.updates(world.alice, 0))[:2]
        canton_error(
            world.http.post(path, json=request, params={"limit": 50}),
            "/v2/updates",
            413,
            "MAXIMUM_LIST_ELEMENTS_NUMBER_REACHED",
        )
        end = world.ledger.ledger_end("wallets")
        small = checked(
            world.http.post(path, json=wire.updates_request(world.alice, end - 2, None)),
            "/v2/updates",
        )
        assert len(small) == 2


def test_updates_after_the_ledger_end_is_offset_after_ledger_end(world: World) -> None:
    end = world.ledger.ledger_end("exchange")
    for request in (
        wire.updates_request(world.treasury, end + 1, None),
        wire.updates_request(world.treasury, 0, end + 5),
    ):
        body = canton_error(
            world.http.post("/v2/updates", json=request),
            "/v2/updates",
            400,
            "OFFSET_AFTER_LEDGER_END",
        )
        assert wire.category_name(body["errorCategory"]) == (
            "InvalidGivenCurrentSystemStateSeekAfterEnd"
        )


def test_a_party_of_another_node_is_permission_denied_and_an_unknown_one_missing(
    world: World,
) -> None:
    request = wire.updates_request(world.alice, 0, None)
    denied = canton_error(
        world.http.post("/v2/updates", json=request), "/v2/updates", 403, "PERMISSION_DENIED"
    )
    assert wire.category_name(denied["errorCategory"]) == "InsufficientPermission"
    unknown = wire.updates_request("ghost::1220" + "00" * 32, 0, None)
    canton_error(
        world.http.post("/v2/updates", json=unknown),
        "/v2/updates",
        404,
        "PARTY_NOT_KNOWN_ON_LEDGER",
    )


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"{",
        b"[1, 2]",
        b'"text"',
        b'{"beginExclusive": 0}',
        b'{"beginExclusive": "zero", "updateFormat": {}}',
        b'{"beginExclusive": -1, "updateFormat": {}}',
    ],
)
def test_an_unreadable_updates_request_is_400_plain_text(world: World, body: bytes) -> None:
    response = world.http.post("/v2/updates", content=body)
    text = checked(response, "/v2/updates", 400)
    assert text.startswith("Invalid value for: body")


def test_a_bad_limit_is_400_plain_text(world: World) -> None:
    request = wire.updates_request(world.treasury, 0, None)
    response = world.http.post("/v2/updates", json=request, params={"limit": "many"})
    assert "limit" in checked(response, "/v2/updates", 400)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/updates",
        "/v2/state/active-contracts",
        "/v2/events/events-by-contract-id",
        "/v2/updates/update-by-id",
        "/v2/commands/submit-and-wait",
        "/v2/commands/completions",
        "/v2/interactive-submission/prepare",
        "/v2/interactive-submission/execute",
        "/v2/interactive-submission/executeAndWait",
    ],
)
@pytest.mark.parametrize(
    "body",
    [b"null", b"{}", b'{"commands": "x", "actAs": 3, "commandId": []}', b'{"parties": [1]}'],
)
def test_bad_input_is_never_a_server_error(world: World, path: str, body: bytes) -> None:
    response = world.http.post(path, content=body)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    check_response(ledger_api(), path, "post", response.status_code, body_of(response))


# --- updates over WebSocket -----------------------------------------------------------------------


def test_websocket_stream_equals_the_ledgers_updates_and_closes_at_end_inclusive(
    world: World,
) -> None:
    world.ledger.transfer(world.alice, world.treasury, world.coin, 10)
    world.ledger.transfer(world.alice, world.treasury, world.token, 5)
    world.ledger.checkpoint()
    for party, node in ((world.treasury, None), (world.alice, "wallets")):
        end = world.ledger.ledger_end(party)
        with world.ws(updates_path(node)) as ws:
            ws.send(json.dumps(wire.updates_request(party, 0, end)))
            messages, closed = recv_all(ws)
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1000
        items = [json.loads(m) for m in messages]
        assert items == list(world.ledger.updates(party, 0))
        for item in items:
            check_schema(ledger_api(), "JsGetUpdatesResponse", item)


def test_websocket_stream_without_end_follows_new_updates(world: World) -> None:
    with world.ws("/v2/updates") as ws:
        ws.send(json.dumps(wire.updates_request(world.treasury, 0, None)))
        first = [json.loads(ws.recv(timeout=5)) for _ in world.ledger.updates(world.treasury, 0)]
        assert first == list(world.ledger.updates(world.treasury, 0))
        end = world.ledger.ledger_end("exchange")
        # Something the treasury does not see moves no offset of its node: nothing arrives.
        world.ledger.transfer(world.alice, world.alice, world.coin, 1)
        result = world.ledger.transfer(world.alice, world.treasury, world.coin, 3)
        world.ledger.checkpoint()
        new = [json.loads(ws.recv(timeout=5)) for _ in range(2)]
        assert new == list(world.ledger.updates(world.treasury, end))
        assert new[0]["update"]["Transaction"]["value"]["updateId"] == result.update_id
        assert "OffsetCheckpoint" in new[1]["update"]


def test_websocket_request_errors_are_a_canton_error_message_then_close(world: World) -> None:
    end = world.ledger.ledger_end("exchange")
    with world.ws("/v2/updates") as ws:
        ws.send(json.dumps(wire.updates_request(world.treasury, end + 1, None)))
        messages, closed = recv_all(ws)
    assert len(messages) == 1
    error = json.loads(messages[0])
    check_schema(ledger_api(), "JsCantonError", error)
    assert error["code"] == "OFFSET_AFTER_LEDGER_END"
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1008
    with world.ws("/v2/updates") as ws:
        ws.send("not json")
        messages, _ = recv_all(ws)
    assert json.loads(messages[0])["code"] == "INVALID_ARGUMENT"


def test_a_read_failure_mid_stream_is_an_error_message_and_1011_or_a_503_list(
    world: World,
) -> None:
    world.ledger.faults.cut_stream_after(2)
    end = world.ledger.ledger_end("wallets")
    with world.ws(updates_path("wallets")) as ws:
        ws.send(json.dumps(wire.updates_request(world.alice, 0, end)))
        messages, closed = recv_all(ws)
    assert [json.loads(m) for m in messages[:2]] == list(world.ledger.updates(world.alice, 0))[:2]
    error = json.loads(messages[2])
    check_schema(ledger_api(), "JsCantonError", error)
    assert wire.category_name(error["errorCategory"]) == "TransientServerFailure"
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1011
    world.ledger.faults.cut_stream_after(1)
    response = world.http.post(
        updates_path("wallets"), json=wire.updates_request(world.alice, 0, None)
    )
    canton_error(response, "/v2/updates", 503, "UNAVAILABLE")


def test_stop_ends_a_following_stream() -> None:
    with running_world() as world, world.ws("/v2/updates") as ws:
        ws.send(json.dumps(wire.updates_request(world.treasury, 0, None)))
        ws.recv(timeout=5)
        world.server.stop(timeout_s=5)
        with pytest.raises(ConnectionClosed):
            while True:
                ws.recv(timeout=5)


SERVE_SCRIPT = """
from sluice.ledger.local import EmbeddedLedger
from sluice.ledger.local.server import LedgerServer
ledger = EmbeddedLedger.open(None)
ledger.add_node("exchange")
LedgerServer(ledger).serve_forever(on_ready=lambda url: print(url, flush=True))
print("stopped", flush=True)
"""


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_serve_forever_stops_cleanly_on_sigint_and_sigterm(signum: signal.Signals) -> None:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE_SCRIPT], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        ready, _, _ = select.select([process.stdout], [], [], 30)
        assert ready, "the server did not report its URL"
        url = process.stdout.readline().strip()
        assert httpx.get(url + "/v2/state/ledger-end").json() == {"offset": 0}
        process.send_signal(signum)
        assert process.wait(timeout=30) == 0
        assert process.stdout.read().strip() == "stopped"
    finally:
        process.kill()
        process.wait()


# --- active contracts -----------------------------------------------------------------------------


def acs_request(party: str, offset: int) -> dict[str, Any]:
    return {"activeAtOffset": offset, "eventFormat": wire.event_format(party)}


def test_active_contracts_at_the_ledger_end_are_the_ledgers_snapshot(world: World) -> None:
    world.ledger.transfer(world.alice, world.treasury, world.coin, 10)
    world.ledger.transfer(world.alice, world.treasury, world.token, 5)
    path = "/v2/state/active-contracts"
    end = world.ledger.ledger_end("exchange")
    body = checked(world.http.post(path, json=acs_request(world.treasury, end)), path)
    assert body == world.ledger.active_contracts(world.treasury)
    assert len(body) == 3
    assert checked(world.http.post(path, json=acs_request(world.treasury, 0)), path) == []
    with world.ws(path) as ws:
        ws.send(json.dumps(acs_request(world.treasury, end)))
        messages, closed = recv_all(ws)
    assert [json.loads(m) for m in messages] == body
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1000


def test_active_contracts_at_an_older_offset_are_served_only_if_nothing_changed_since(
    world: World,
) -> None:
    path = "/v2/state/active-contracts"
    before = world.ledger.ledger_end("exchange")
    world.ledger.transfer(world.alice, world.alice, world.coin, 1)  # not the treasury's
    world.ledger.checkpoint()
    body = checked(world.http.post(path, json=acs_request(world.treasury, before)), path)
    assert body == world.ledger.active_contracts(world.treasury)
    world.ledger.transfer(world.alice, world.treasury, world.coin, 1)
    canton_error(
        world.http.post(path, json=acs_request(world.treasury, before)),
        path,
        400,
        "ACTIVE_AT_OFFSET_NOT_AVAILABLE",
    )
    after = world.ledger.ledger_end("exchange") + 1
    canton_error(
        world.http.post(path, json=acs_request(world.treasury, after)),
        path,
        400,
        "OFFSET_AFTER_LEDGER_END",
    )


# --- single lookups -------------------------------------------------------------------------------


def test_events_by_contract_id_has_the_create_and_for_an_archived_contract_the_archive(
    world: World,
) -> None:
    path = "/v2/events/events-by-contract-id"
    world.ledger.transfer(world.alice, world.treasury, world.coin, 10)
    (holding,) = world.ledger.active_holdings(world.treasury, world.coin)
    request = {"contractId": holding.contract_id, "eventFormat": wire.event_format(world.treasury)}
    active = checked(world.http.post(path, json=request), path)
    assert set(active) == {"created"}
    assert active["created"]["createdEvent"]["contractId"] == holding.contract_id
    world.ledger.transfer(world.treasury, world.treasury, world.coin, 4)
    archived = checked(world.http.post(path, json=request), path)
    assert set(archived) == {"created", "archived"}
    assert archived["created"] == active["created"]
    assert archived["archived"]["archivedEvent"]["contractId"] == holding.contract_id
    assert archived["archived"]["archivedEvent"]["offset"] == world.ledger.ledger_end("exchange")
    assert archived == world.ledger.events_by_contract_id(holding.contract_id, world.treasury)
    missing = {"contractId": "00" + "99" * 32, "eventFormat": wire.event_format(world.treasury)}
    canton_error(world.http.post(path, json=missing), path, 404, "CONTRACT_EVENTS_NOT_FOUND")


def test_update_by_id_is_the_parties_projection_or_not_found(world: World) -> None:
    path = "/v2/updates/update-by-id"
    result = world.ledger.transfer(world.alice, world.treasury, world.coin, 10)
    update_format = wire.updates_request(world.treasury, 0, None)["updateFormat"]
    request = {"updateId": result.update_id, "updateFormat": update_format}
    body = checked(world.http.post(path, json=request), path)
    assert body == world.ledger.update_by_id(result.update_id, world.treasury)
    assert body["update"]["Transaction"]["value"]["updateId"] == result.update_id
    request["updateId"] = "1220" + "00" * 32
    canton_error(world.http.post(path, json=request), path, 404, "UPDATE_NOT_FOUND")


# --- commands -------------------------------------------------------------------------------------


def a_transfer(world: World, sender: str, instrument: InstrumentId, amount: str) -> Transfer:
    inputs = [h.contract_id for h in world.ledger.active_holdings(sender, instrument)]
    now = world.ledger.time()
    return Transfer(
        sender=sender,
        receiver=world.treasury,
        amount=Decimal(amount),
        instrument=instrument,
        requested_at=now,
        execute_before=now + timedelta(hours=1),
        input_holding_cids=tuple(inputs[:1]),
        meta={"splice.lfdecentralizedtrust.org/reason": "acct-1"},
    )


def factory_for(world: World, transfer: Transfer) -> dict[str, Any]:
    path = "/registry/transfer-instruction/v1/transfer-factory"
    request = {"choiceArguments": wire.transfer_factory_arguments(transfer)}
    check_schema(transfer_instruction_api(), "GetFactoryRequest", request)
    response = world.http.post(world.registry(transfer.instrument.admin) + path[9:], json=request)
    body: dict[str, Any] = checked(response, path, spec=transfer_instruction_api())
    return body


def transfer_commands(world: World, transfer: Transfer, command_id: str) -> dict[str, Any]:
    factory = factory_for(world, transfer)
    context = factory["choiceContext"]
    command = wire.transfer_command(
        transfer, factory["factoryId"], context["choiceContextData"]["values"]
    )
    return wire.js_commands(
        [command],
        command_id=command_id,
        act_as=[transfer.sender],
        disclosed_contracts=context["disclosedContracts"],
    )


SUBMIT = "/v2/commands/submit-and-wait"


def test_submit_and_wait_runs_a_one_step_transfer(world: World) -> None:
    transfer = a_transfer(world, world.alice, world.coin, "10")
    body = transfer_commands(world, transfer, "cmd-1")
    check_schema(ledger_api(), "JsCommands", body)
    answer = checked(world.http.post("/nodes/wallets" + SUBMIT, json=body), SUBMIT)
    assert answer["completionOffset"] == world.ledger.update_offset(answer["updateId"], "wallets")
    (holding,) = world.ledger.active_holdings(world.treasury, world.coin)
    assert holding.amount == Decimal(10)
    tx = world.ledger.update_by_id(answer["updateId"], world.alice)
    assert tx["update"]["Transaction"]["value"]["commandId"] == "cmd-1"


def test_submit_and_wait_accepts_an_offer_with_the_registrys_choice_context(world: World) -> None:
    offer = world.ledger.transfer(world.alice, world.treasury, world.token, 5)
    assert offer.instruction_cid is not None
    path = "/registry/transfer-instruction/v1/{transferInstructionId}/choice-contexts/accept"
    response = world.http.post(
        world.registry(world.issuer)
        + f"/transfer-instruction/v1/{offer.instruction_cid}/choice-contexts/accept",
        json={"meta": {}, "excludeDebugFields": True},
    )
    context = checked(response, path, spec=transfer_instruction_api())
    assert all(not key.startswith("debug") for c in context["disclosedContracts"] for key in c)
    command = wire.instruction_command(
        "accept", offer.instruction_cid, context["choiceContextData"]["values"]
    )
    body = wire.js_commands([command], command_id="accept-1", act_as=[world.treasury])
    answer = checked(world.http.post(SUBMIT, json=body), SUBMIT)
    assert answer["completionOffset"] == world.ledger.ledger_end("exchange")
    (holding,) = world.ledger.active_holdings(world.treasury, world.token)
    assert holding.amount == Decimal(5)


def test_a_rejected_command_is_a_definite_canton_error_naming_the_ledgers_reason(
    world: World,
) -> None:
    transfer = a_transfer(world, world.alice, world.coin, "5000")
    body = transfer_commands(world, transfer, "too-much")
    error = canton_error(
        world.http.post("/nodes/wallets" + SUBMIT, json=body),
        SUBMIT,
        400,
        "DAML_INTERPRETATION_ERROR",
    )
    assert error["cause"].startswith("insufficient_funds: ")
    assert error["definiteAnswer"] is True
    assert wire.is_definite_rejection(error)


def test_a_duplicate_command_id_is_an_undecided_duplicate_command(world: World) -> None:
    transfer = a_transfer(world, world.alice, world.coin, "10")
    body = transfer_commands(world, transfer, "twice")
    first = checked(world.http.post("/nodes/wallets" + SUBMIT, json=body), SUBMIT)
    error = canton_error(
        world.http.post("/nodes/wallets" + SUBMIT, json=body), SUBMIT, 409, "DUPLICATE_COMMAND"
    )
    assert error["definiteAnswer"] is False
    assert not wire.is_definite_rejection(error)
    assert error["context"]["existing_update_id"] == first["updateId"]


def test_a_lost_response_is_a_request_time_out_although_the_command_committed(
    world: World,
) -> None:
    transfer = a_transfer(world, world.alice, world.coin, "10")
    body = transfer_commands(world, transfer, "lost")
    world.ledger.faults.drop_next_responses()
    error = canton_error(
        world.http.post("/nodes/wallets" + SUBMIT, json=body), SUBMIT, 504, "REQUEST_TIME_OUT"
    )
    assert error["definiteAnswer"] is False
    assert world.ledger.active_holdings(world.treasury, world.coin)


def test_spent_inputs_are_contract_not_found_and_a_strangers_accept_not_authorized(
    world: World,
) -> None:
    transfer = a_transfer(world, world.alice, world.coin, "10")
    body = transfer_commands(world, transfer, "spend-1")
    checked(world.http.post("/nodes/wallets" + SUBMIT, json=body), SUBMIT)
    body["commandId"] = "spend-2"
    error = canton_error(
        world.http.post("/nodes/wallets" + SUBMIT, json=body), SUBMIT, 404, "CONTRACT_NOT_FOUND"
    )
    assert error["definiteAnswer"] is True
    offer = world.ledger.transfer(world.alice, world.treasury, world.token, 5)
    assert offer.instruction_cid is not None
    command = wire.instruction_command("accept", offer.instruction_cid, {})
    stranger = wire.js_commands([command], command_id="not-mine", act_as=[world.alice])
    error = canton_error(
        world.http.post("/nodes/wallets" + SUBMIT, json=stranger),
        SUBMIT,
        400,
        "DAML_AUTHORIZATION_ERROR",
    )
    assert wire.category_name(error["errorCategory"]) == "InvalidIndependentOfSystemState"


@pytest.mark.parametrize(
    ("change", "status", "code"),
    [
        (lambda b: b.update(commands=[{"CreateCommand": {}}]), 400, "INVALID_ARGUMENT"),
        (lambda b: b.update(commands=b["commands"] * 2), 400, "INVALID_ARGUMENT"),
        (lambda b: b.update(actAs=[]), 400, "INVALID_ARGUMENT"),
        (lambda b: b.update(commandId=""), 400, "INVALID_ARGUMENT"),
        (lambda b: b.update(actAs=["ghost::1220" + "00" * 32]), 404, "PARTY_NOT_KNOWN_ON_LEDGER"),
    ],
)
def test_invalid_commands_are_canton_errors(
    world: World, change: Any, status: int, code: str
) -> None:
    command = wire.instruction_command("accept", "00" + "12" * 32, {})
    body = wire.js_commands([command], command_id="bad", act_as=[world.treasury])
    change(body)
    canton_error(world.http.post(SUBMIT, json=body), SUBMIT, status, code)


def test_a_command_for_a_party_of_another_node_is_permission_denied(world: World) -> None:
    transfer = a_transfer(world, world.alice, world.coin, "10")
    body = transfer_commands(world, transfer, "wrong-node")
    canton_error(world.http.post(SUBMIT, json=body), SUBMIT, 403, "PERMISSION_DENIED")


# --- completions ----------------------------------------------------------------------------------


COMPLETIONS = "/v2/commands/completions"


def test_completions_report_successes_with_update_ids_and_failures_with_a_status(
    world: World,
) -> None:
    ok = transfer_commands(world, a_transfer(world, world.alice, world.coin, "10"), "c-ok")
    checked(world.http.post("/nodes/wallets" + SUBMIT, json=ok), SUBMIT)
    bad = transfer_commands(world, a_transfer(world, world.alice, world.coin, "9999"), "c-bad")
    world.http.post("/nodes/wallets" + SUBMIT, json=bad)
    request = {"parties": [world.alice], "beginExclusive": 0, "userId": "exchange"}
    check_schema(ledger_api(), "CompletionStreamRequest", request)
    body = checked(world.http.post("/nodes/wallets" + COMPLETIONS, json=request), COMPLETIONS)
    by_command = {c["completionResponse"]["Completion"]["value"]["commandId"]: c for c in body}
    success = by_command["c-ok"]["completionResponse"]["Completion"]["value"]
    assert success["status"]["code"] == 0
    assert success["offset"] == world.ledger.update_offset(success["updateId"], world.alice)
    assert success["actAs"] == [world.alice]
    assert success["userId"] == "exchange"
    failure = by_command["c-bad"]["completionResponse"]["Completion"]["value"]
    assert "updateId" not in failure
    assert failure["status"]["code"] == 9
    assert "insufficient_funds" in failure["status"]["message"]
    later = dict(request, beginExclusive=success["offset"])
    rest = checked(world.http.post("/nodes/wallets" + COMPLETIONS, json=later), COMPLETIONS)
    assert [c["completionResponse"]["Completion"]["value"]["commandId"] for c in rest] == ["c-bad"]


def test_completions_over_websocket_follow_new_commands(world: World) -> None:
    request = {"parties": [world.alice], "beginExclusive": 0}
    with world.ws("/nodes/wallets" + COMPLETIONS) as ws:
        ws.send(json.dumps(request))
        taps = [json.loads(ws.recv(timeout=5)) for _ in range(2)]
        assert len(taps) == 2
        result = world.ledger.transfer(world.alice, world.treasury, world.coin, 1)
        new = json.loads(ws.recv(timeout=5))
    check_schema(ledger_api(), "CompletionStreamResponse", new)
    assert new["completionResponse"]["Completion"]["value"]["updateId"] == result.update_id


# --- external parties -----------------------------------------------------------------------------


PREPARE = "/v2/interactive-submission/prepare"
EXECUTE = "/v2/interactive-submission/execute"
EXECUTE_AND_WAIT = "/v2/interactive-submission/executeAndWait"


def prepared(world: World, command_id: str, **options: Any) -> dict[str, Any]:
    transfer = a_transfer(world, world.external, world.coin, "10")
    commands = transfer_commands(world, transfer, command_id)
    request = wire.prepare_request(
        commands["commands"],
        command_id=command_id,
        act_as=[world.external],
        disclosed_contracts=commands["disclosedContracts"],
        **options,
    )
    check_schema(ledger_api(), "JsPrepareSubmissionRequest", request)
    body: dict[str, Any] = checked(
        world.http.post("/nodes/wallets" + PREPARE, json=request), PREPARE
    )
    return body


def signed(
    world: World, prepared_body: dict[str, Any], key: Ed25519PrivateKey | None = None
) -> dict[str, Any]:
    signer = key or world.external_key
    digest = base64.b64decode(prepared_body["preparedTransactionHash"])
    public = signer.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    request = {
        "preparedTransaction": prepared_body["preparedTransaction"],
        "partySignatures": {
            "signatures": [
                {
                    "party": world.external,
                    "signatures": [
                        {
                            "format": wire.SIGNATURE_FORMAT,
                            "signature": base64.b64encode(signer.sign(digest)).decode(),
                            "signedBy": wire.key_fingerprint(public),
                            "signingAlgorithmSpec": wire.SIGNING_ALGORITHM,
                        }
                    ],
                }
            ]
        },
        "submissionId": "submission-1",
        "hashingSchemeVersion": prepared_body["hashingSchemeVersion"],
    }
    check_schema(ledger_api(), "JsExecuteSubmissionAndWaitRequest", request)
    return request


def test_prepare_then_execute_and_wait_with_the_parties_key_commits(world: World) -> None:
    body = prepared(world, "ext-1")
    assert body["hashingSchemeVersion"] == wire.HASHING_SCHEME_VERSION
    answer = checked(
        world.http.post("/nodes/wallets" + EXECUTE_AND_WAIT, json=signed(world, body)),
        EXECUTE_AND_WAIT,
    )
    assert answer["completionOffset"] == world.ledger.update_offset(answer["updateId"], "wallets")
    tx = world.ledger.update_by_id(answer["updateId"], world.external)
    assert tx["update"]["Transaction"]["value"]["commandId"] == "ext-1"


def test_execute_answers_at_once_and_the_outcome_is_in_the_completions(world: World) -> None:
    body = prepared(world, "ext-async")
    answer = checked(world.http.post("/nodes/wallets" + EXECUTE, json=signed(world, body)), EXECUTE)
    assert answer == {}
    (completion,) = [
        c for c in world.ledger.completions(world.external) if c.command_id == "ext-async"
    ]
    assert completion.status == "ok"


def test_a_wrong_signature_or_a_tampered_transaction_is_invalid_signature(world: World) -> None:
    body = prepared(world, "ext-2")
    stranger = Ed25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    path = "/nodes/wallets" + EXECUTE_AND_WAIT
    error = canton_error(
        world.http.post(path, json=signed(world, body, stranger)),
        EXECUTE_AND_WAIT,
        400,
        "INVALID_SIGNATURE",
    )
    assert error["definiteAnswer"] is True
    other = prepared(world, "ext-3")
    tampered = signed(world, body)
    tampered["preparedTransaction"] = other["preparedTransaction"]
    canton_error(world.http.post(path, json=tampered), EXECUTE_AND_WAIT, 400, "INVALID_SIGNATURE")
    assert not [c for c in world.ledger.completions(world.external) if c.command_id == "ext-3"]


def test_a_party_without_an_external_key_cannot_execute(world: World) -> None:
    transfer = a_transfer(world, world.alice, world.coin, "10")
    commands = transfer_commands(world, transfer, "alice-ext")
    request = wire.prepare_request(
        commands["commands"], command_id="alice-ext", act_as=[world.alice]
    )
    body = checked(world.http.post("/nodes/wallets" + PREPARE, json=request), PREPARE)
    execute = signed(world, body)
    execute["partySignatures"]["signatures"][0]["party"] = world.alice
    error = canton_error(
        world.http.post("/nodes/wallets" + EXECUTE_AND_WAIT, json=execute),
        EXECUTE_AND_WAIT,
        400,
        "INVALID_SIGNATURE",
    )
    assert world.alice in error["cause"]


def test_the_max_record_time_travels_inside_the_prepared_transaction(world: World) -> None:
    body = prepared(world, "ext-late", max_record_time=world.ledger.time())
    error = canton_error(
        world.http.post("/nodes/wallets" + EXECUTE_AND_WAIT, json=signed(world, body)),
        EXECUTE_AND_WAIT,
        400,
        "MAX_RECORD_TIME_EXCEEDED",
    )
    assert error["definiteAnswer"] is True


def test_public_keys_load_from_raw_hex_and_pem_files(world: World, tmp_path: Path) -> None:
    public = world.external_key.public_key()
    raw = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    files = {
        "raw.key": raw,
        "hex.key": raw.hex().encode() + b"\n",
        "pem.key": public.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo),
    }
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        assert load_public_key(tmp_path / name) == raw
    (tmp_path / "bad.key").write_text("not a key")
    with pytest.raises(ValueError, match="not an Ed25519 public key"):
        load_public_key(tmp_path / "bad.key")


# --- the Registry API -----------------------------------------------------------------------------


def test_transfer_factory_says_direct_for_a_preapproved_receiver_and_offer_otherwise(
    world: World,
) -> None:
    direct = factory_for(world, a_transfer(world, world.alice, world.coin, "1"))
    assert direct["transferKind"] == "direct"
    assert direct["factoryId"] == world.ledger.rules_id(world.dso)
    assert {c["contractId"] for c in direct["choiceContext"]["disclosedContracts"]} == {
        world.ledger.rules_id(world.dso),
        world.ledger.preapproval_id(world.treasury, world.coin),
    }
    offer = factory_for(world, a_transfer(world, world.alice, world.token, "1"))
    assert offer["transferKind"] == "offer"


def test_transfer_factory_errors_are_the_registrys_error_responses(world: World) -> None:
    path = "/registry/transfer-instruction/v1/transfer-factory"
    spec = transfer_instruction_api()
    transfer = a_transfer(world, world.alice, world.coin, "1")
    arguments = wire.transfer_factory_arguments(transfer)
    url = world.registry(world.issuer) + path[9:]
    wrong_admin = world.http.post(url, json={"choiceArguments": arguments})
    assert "expectedAdmin" in checked(wrong_admin, path, 400, spec=spec)["error"]
    ghost_admin = "ghost::1220" + "00" * 32
    ghost = world.registry(ghost_admin) + path[9:]
    ghost_arguments = dict(arguments, expectedAdmin=ghost_admin)
    checked(world.http.post(ghost, json={"choiceArguments": ghost_arguments}), path, 404, spec=spec)
    broken = dict(arguments, transfer={"sender": 1})
    own = world.registry(world.dso) + path[9:]
    checked(world.http.post(own, json={"choiceArguments": broken}), path, 400, spec=spec)
    checked(world.http.post(own, content=b"{"), path, 400, spec=spec)
    unknown = dict(arguments, transfer=dict(arguments["transfer"]))
    unknown["transfer"]["instrumentId"] = {"admin": world.dso, "id": "Nothing"}
    checked(world.http.post(own, json={"choiceArguments": unknown}), path, 404, spec=spec)


def test_transfer_factory_leaves_out_debug_fields_when_asked(world: World) -> None:
    transfer = a_transfer(world, world.alice, world.coin, "1")
    url = world.registry(world.dso) + "/transfer-instruction/v1/transfer-factory"
    arguments = wire.transfer_factory_arguments(transfer)
    full = world.http.post(url, json={"choiceArguments": arguments}).json()
    lean = world.http.post(url, json={"choiceArguments": arguments, "excludeDebugFields": True})
    contracts = lean.json()["choiceContext"]["disclosedContracts"]
    assert any(
        k.startswith("debug") for c in full["choiceContext"]["disclosedContracts"] for k in c
    )
    assert not any(k.startswith("debug") for c in contracts for k in c)


def test_choice_context_of_an_inactive_instruction_is_404(world: World) -> None:
    offer = world.ledger.transfer(world.alice, world.treasury, world.token, 5)
    assert offer.instruction_cid is not None
    world.ledger.withdraw(offer.instruction_cid, world.alice)
    path = "/registry/transfer-instruction/v1/{transferInstructionId}/choice-contexts/withdraw"
    url = (
        world.registry(world.issuer)
        + f"/transfer-instruction/v1/{offer.instruction_cid}/choice-contexts/withdraw"
    )
    checked(world.http.post(url, json={}), path, 404, spec=transfer_instruction_api())


def test_registry_metadata_info_and_instruments_with_paging(world: World) -> None:
    spec = token_metadata_api()
    world.ledger.create_instrument(world.dso, "Second")
    world.ledger.create_instrument(world.dso, "Third")
    base = world.registry(world.dso) + "/metadata/v1"
    info = checked(world.http.get(base + "/info"), "/registry/metadata/v1/info", spec=spec)
    assert info["adminId"] == world.dso
    path = "/registry/metadata/v1/instruments"
    seen: list[str] = []
    token: str | None = None
    for _ in range(5):
        params: dict[str, Any] = {"pageSize": 2}
        if token:
            params["pageToken"] = token
        page = checked(world.http.get(base + "/instruments", params=params), path, spec=spec)
        seen += [i["id"] for i in page["instruments"]]
        token = page.get("nextPageToken")
        if token is None:
            break
    assert seen == ["Amulet", "Second", "Third"]
    one = checked(
        world.http.get(base + "/instruments/Amulet"),
        "/registry/metadata/v1/instruments/{instrumentId}",
        spec=spec,
    )
    assert Decimal(one["totalSupply"]) == world.ledger.supply(world.coin)
    checked(
        world.http.get(base + "/instruments/Nothing"),
        "/registry/metadata/v1/instruments/{instrumentId}",
        404,
        spec=spec,
    )
    bad = world.http.get(base + "/instruments", params={"pageSize": 0})
    assert bad.status_code == 400
    assert "pageSize" in bad.json()["error"]


def test_registry_paths_take_the_admin_literally_or_percent_encoded(world: World) -> None:
    encoded = f"/registries/{quote(world.dso, safe='')}/registry/metadata/v1/info"
    assert "%3A%3A" in encoded
    assert world.http.get(encoded).json()["adminId"] == world.dso


# --- auth -----------------------------------------------------------------------------------------


@pytest.fixture
def auth_world() -> Iterator[World]:
    auth = ServerAuth(SECRET, audience=AUDIENCE, oauth_clients={"exchange": "s3cret"})
    with running_world(auth=auth) as found:
        yield found


def test_requests_without_a_valid_token_are_401_saying_why(auth_world: World) -> None:
    auth = ServerAuth(SECRET, audience=AUDIENCE)
    stranger = ServerAuth("another-secret-of-at-least-32-bytes!!", audience=AUDIENCE)
    path = "/v2/state/ledger-end"
    cases = {
        "missing": {},
        "expired": {"Authorization": f"Bearer {auth.issue_token('x', ttl_s=-30)}"},
        "invalid": {"Authorization": f"Bearer {stranger.issue_token('x')}"},
    }
    for why, headers in cases.items():
        error = canton_error(
            auth_world.http.get(path, headers=headers), path, 401, "UNAUTHENTICATED"
        )
        assert error["cause"].startswith(why), error
        assert wire.category_name(error["errorCategory"]) == (
            "AuthInterceptorInvalidAuthenticationCredentials"
        )
    wrong_audience = ServerAuth(SECRET, audience="elsewhere").issue_token("x")
    canton_error(
        auth_world.http.get(path, headers={"Authorization": f"Bearer {wrong_audience}"}),
        path,
        401,
        "UNAUTHENTICATED",
    )
    good = {"Authorization": f"Bearer {auth.issue_token('x')}"}
    assert checked(auth_world.http.get(path, headers=good), path)["offset"] > 0
    registry = auth_world.registry(auth_world.dso) + "/metadata/v1/info"
    assert auth_world.http.get(registry).status_code == 401
    assert auth_world.http.get(registry, headers=good).status_code == 200
    assert auth_world.http.get("/livez").status_code == 200


def test_the_oauth_endpoint_issues_tokens_for_configured_clients(auth_world: World) -> None:
    form = {"grant_type": "client_credentials", "client_id": "exchange", "client_secret": "s3cret"}
    answer = auth_world.http.post("/oauth/token", data=form)
    assert answer.status_code == 200
    token = answer.json()
    assert token["token_type"] == "Bearer"
    assert token["expires_in"] == 300
    headers = {"Authorization": f"Bearer {token['access_token']}"}
    assert auth_world.http.get("/v2/state/ledger-end", headers=headers).status_code == 200
    wrong = auth_world.http.post("/oauth/token", data=dict(form, client_secret="nope"))
    assert (wrong.status_code, wrong.json()) == (401, {"error": "invalid_client"})
    grant = auth_world.http.post("/oauth/token", data=dict(form, grant_type="password"))
    assert (grant.status_code, grant.json()) == (400, {"error": "unsupported_grant_type"})


def test_websockets_take_the_token_as_a_subprotocol(auth_world: World) -> None:
    token = ServerAuth(SECRET, audience=AUDIENCE).issue_token("x")
    end = auth_world.ledger.ledger_end("exchange")
    request = json.dumps(wire.updates_request(auth_world.treasury, 0, end))
    with auth_world.ws("/v2/updates", subprotocols=["daml.ws.auth", f"jwt.token.{token}"]) as ws:
        assert ws.subprotocol == "daml.ws.auth"
        ws.send(request)
        messages, _ = recv_all(ws)
    assert [json.loads(m) for m in messages] == list(
        auth_world.ledger.updates(auth_world.treasury, 0)
    )
    with pytest.raises(InvalidStatus) as refused, auth_world.ws("/v2/updates"):
        pass
    assert refused.value.response.status_code == 401
    assert json.loads(refused.value.response.body or b"{}")["cause"].startswith("missing")


# --- injected transport faults --------------------------------------------------------------------


def test_fail_next_answers_the_status_without_handling_the_request(world: World) -> None:
    world.server.faults.fail_next("/submit-and-wait", 503, count=2, retry_after=2)
    transfer = a_transfer(world, world.alice, world.coin, "10")
    body = transfer_commands(world, transfer, "after-faults")
    for _ in range(2):
        response = world.http.post("/nodes/wallets" + SUBMIT, json=body)
        error = canton_error(response, SUBMIT, 503, "INJECTED_HTTP_503")
        assert response.headers["retry-after"] == "2"
        assert wire.category_name(error["errorCategory"]) == "TransientServerFailure"
    assert not world.ledger.active_holdings(world.treasury, world.coin)
    checked(world.http.post("/nodes/wallets" + SUBMIT, json=body), SUBMIT)
    world.server.faults.fail_next("/transfer-factory", 429)
    url = world.registry(world.dso) + "/transfer-instruction/v1/transfer-factory"
    limited = world.http.post(url, json={"choiceArguments": {}})
    assert limited.status_code == 429
    assert "error" in limited.json()
    world.server.faults.fail_next("/v2/updates", 500, body="plain trouble")
    plain = world.http.post("/v2/updates", json=wire.updates_request(world.treasury, 0, None))
    assert (plain.status_code, plain.text) == (500, "plain trouble")


def test_fail_next_refuses_a_websocket_handshake(world: World) -> None:
    world.server.faults.fail_next("/v2/updates", 503)
    with pytest.raises(InvalidStatus) as refused, world.ws("/v2/updates"):
        pass
    assert refused.value.response.status_code == 503


def test_malformed_next_answers_200_with_a_body_that_is_not_json(world: World) -> None:
    world.server.faults.malformed_next("/ledger-end")
    response = world.http.get("/v2/state/ledger-end")
    assert response.status_code == 200
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(response.content)
    assert world.http.get("/v2/state/ledger-end").json()["offset"] > 0
    world.server.faults.malformed_next("/v2/updates", process=True)
    request = wire.updates_request(world.treasury, 0, None)
    truncated = world.http.post("/v2/updates", json=request).content
    whole = world.http.post("/v2/updates", json=request).content
    assert truncated == whole[: len(whole) // 2]


def test_delay_next_makes_a_client_time_out_once(world: World) -> None:
    world.server.faults.delay_next("/ledger-end", 0.5)
    with pytest.raises(httpx.ReadTimeout):
        world.http.get("/v2/state/ledger-end", timeout=0.1)
    assert world.http.get("/v2/state/ledger-end").status_code == 200


def test_cut_stream_after_sends_half_a_message_then_drops_the_connection(world: World) -> None:
    world.ledger.transfer(world.alice, world.treasury, world.coin, 10)
    world.ledger.transfer(world.alice, world.treasury, world.token, 10)
    world.server.faults.cut_stream_after(2)
    with world.ws("/v2/updates") as ws:
        ws.send(json.dumps(wire.updates_request(world.treasury, 0, None)))
        messages, closed = recv_all(ws)
    expected = [orjson.dumps(i).decode() for i in world.ledger.updates(world.treasury, 0)]
    assert messages[:2] == expected[:2]
    assert messages[2] == expected[2][: len(expected[2]) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(messages[2])
    assert isinstance(closed, ConnectionClosedError)
    assert closed.rcvd is None, "no close frame: the TCP connection was dropped"
    with world.ws("/v2/updates") as ws:
        ws.send(
            json.dumps(wire.updates_request(world.treasury, 0, world.ledger.ledger_end("exchange")))
        )
        again, _ = recv_all(ws)
    assert again == expected


# --- sandbox control ------------------------------------------------------------------------------


def test_remote_ledger_drives_the_world_through_the_control_endpoint(world: World) -> None:
    with RemoteLedger(world.server.url) as remote:
        carol = remote.allocate_party("carol", "wallets")
        assert carol in world.ledger.parties("wallets")
        assert remote.nodes() == world.ledger.nodes()
        tapped = remote.tap(carol, world.coin, "50")
        assert tapped.kind == "tap"
        result = remote.transfer(carol, world.treasury, world.coin, Decimal("20"), reason="acct-9")
        assert result.transfer_kind == "direct"
        assert world.ledger.update_by_id(result.update_id, world.treasury)
        holdings = remote.active_holdings(carol, world.coin)
        assert sum(h.amount for h in holdings) == Decimal(30)
        assert holdings == world.ledger.active_holdings(carol, world.coin)
        before = remote.time()
        assert before == world.ledger.time()
        assert remote.advance(60) == world.ledger.time() > before + timedelta(seconds=59)
        assert remote.supply(world.coin) == world.ledger.supply(world.coin)
        assert remote.totals(world.coin) == world.ledger.totals(world.coin)
        assert remote.ledger_end("exchange") == world.ledger.ledger_end("exchange")
        gold = remote.create_instrument(
            world.dso, "Gold", RegistryPolicy(preapprovals_allowed=False, transfer_fee=Decimal(1))
        )
        assert world.ledger.instrument_config(gold).policy.transfer_fee == Decimal(1)
        offer = remote.transfer(world.alice, world.treasury, world.token, 3)
        assert offer.instruction_cid is not None
        accepted = remote.accept(offer.instruction_cid, world.treasury)
        assert accepted.status == "completed"


def test_remote_ledger_raises_the_ledgers_own_errors(world: World) -> None:
    with RemoteLedger(world.server.url) as remote:
        with pytest.raises(InsufficientFundsError, match="spendable"):
            remote.transfer(world.alice, world.treasury, world.coin, 10**6)
        first = remote.transfer(world.alice, world.treasury, world.coin, 1, command_id="once")
        with pytest.raises(DuplicateCommandError) as duplicate:
            remote.transfer(world.alice, world.treasury, world.coin, 1, command_id="once")
        assert duplicate.value.first == first
        with pytest.raises(NotFoundError):
            remote.call("set_policy", instrument=world.coin)
        with pytest.raises(InvalidInputError, match="unknown arguments"):
            remote.call("time", when="now")
        with pytest.raises(InvalidInputError, match="hint"):
            remote.allocate_party("bad::hint", "wallets")


def test_the_control_endpoint_can_be_switched_off() -> None:
    with running_world(control=False) as world:
        assert world.http.post("/sandbox/v1/time", json={}).status_code == 404


# --- replay ---------------------------------------------------------------------------------------


def test_replay_serves_a_recorded_file_in_order_whatever_the_party(tmp_path: Path) -> None:
    ledger, names = build_ledger()
    ledger.transfer(names["alice"], names["treasury"], names["coin"], 10)
    ledger.checkpoint()
    items = list(ledger.updates(names["treasury"], 0))
    recorded = [items[0]["update"]["Transaction"]["value"], *items[1:]]  # a bare JsTransaction too
    path = tmp_path / "updates.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(i) for i in recorded) + b"\n")
    with LedgerServer.replay(path).start() as server, httpx.Client(base_url=server.url) as http:
        end = checked(http.get("/v2/state/ledger-end"), "/v2/state/ledger-end")["offset"]
        assert end == ledger.ledger_end("exchange")
        anyone = wire.updates_request("whoever::1220" + "00" * 32, 0, None)
        assert checked(http.post("/v2/updates", json=anyone), "/v2/updates") == items
        later = wire.updates_request("whoever::1220" + "00" * 32, 1, end)
        assert http.post("/nodes/any/v2/updates", json=later).json() == items[1:]
        url = server.url.replace("http://", "ws://") + "/v2/updates"
        with connect(url) as ws:
            ws.send(json.dumps(wire.updates_request("x::1220", 0, end)))
            messages, closed = recv_all(ws)
        assert [json.loads(m) for m in messages] == items
        assert closed.rcvd is not None
        assert closed.rcvd.code == 1000
        for response in (
            http.post("/v2/commands/submit-and-wait", json={}),
            http.get("/registries/x/registry/metadata/v1/info"),
            http.post("/sandbox/v1/time", json={}),
        ):
            assert response.status_code == 501
            assert wire.category_name(response.json()["errorCategory"]) == (
                "InternalUnsupportedOperation"
            )
        assert http.get("/v2/version").status_code == 200
