"""The Canton adapter's transport and its reading client.

Plain HTTP goes to an ``httpx.MockTransport`` handler: retries of reads (503, 429 with
``Retry-After``, connection errors) and their bound, the statuses never retried, writes never
retried, malformed bodies, ``JsCantonError`` translation. The updates stream goes over a real
socket to a tiny ``websockets.sync.server`` on 127.0.0.1 (port 0) that replays canned messages,
while the HTTP side of the same base URL (ledger end, list form) is a :class:`FakeNode` behind a
MockTransport: a stream that ends at the ledger end, one cut part-way (only whole items are
yielded), a JsCantonError or malformed message, a normal close before the end, a node without the
WebSocket endpoint (HTTP list form, paging, 413 halving), an unreachable node, and the search of
an offset by record time. Sleeps are injected: nothing here waits for a backoff.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import yaml
from openapi_schema_validator import OAS30Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT4
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve
from websockets.typing import Subprotocol

from sluice.domain.ledger import format_timestamp
from sluice.ledger import wire
from sluice.ledger.canton import (
    CantonAuthError,
    CantonError,
    CantonLedgerClient,
    CantonReadError,
    CantonUnavailableError,
    LedgerHttp,
    ListTooLargeError,
    MalformedResponseError,
    NoAuth,
    StaticToken,
)
from sluice.ports import LedgerReadError
from tests.conftest import reference_path

PARTY = "exchange::1220aa"
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)


# --- canned ledger items --------------------------------------------------------------------------


def transaction(offset: int, time: datetime | None = None) -> dict[str, Any]:
    return {
        "update": {
            "Transaction": {
                "value": {
                    "updateId": f"update-{offset}",
                    "offset": offset,
                    "effectiveAt": format_timestamp(time or T0),
                    "recordTime": format_timestamp(time or T0 + timedelta(seconds=offset)),
                    "synchronizerId": "sync::1220bb",
                    "events": [],
                }
            }
        }
    }


def checkpoint(offset: int, time: datetime | None = None) -> dict[str, Any]:
    return {
        "update": {
            "OffsetCheckpoint": {
                "value": {
                    "offset": offset,
                    "synchronizerTimes": [
                        {
                            "synchronizerId": "sync::1220bb",
                            "recordTime": format_timestamp(time or T0 + timedelta(seconds=offset)),
                        }
                    ],
                }
            }
        }
    }


def offsets(items: list[dict[str, Any]]) -> list[int]:
    return [wire_offset(i) for i in items]


def wire_offset(item: dict[str, Any]) -> int:
    ((_, value),) = item["update"].items()
    return int(value["value"]["offset"])


class FakeNode:
    """The HTTP side of a participant node: the ledger end and the updates list form over
    ``items`` (the party's items, in offset order), with the node's list limit."""

    def __init__(
        self, items: list[dict[str, Any]], *, end: int | None = None, list_max: int = 200
    ) -> None:
        self.items = items
        self.end = end if end is not None else (wire_offset(items[-1]) if items else 0)
        self.list_max = list_max
        self.requests: list[tuple[str, str, dict[str, Any], Any]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = orjson.loads(request.content) if request.content else None
        params = dict(request.url.params)
        self.requests.append((request.method, request.url.path, params, body))
        if request.url.path.endswith("/v2/state/ledger-end"):
            return httpx.Response(200, json={"offset": self.end})
        if request.url.path.endswith("/v2/updates"):
            begin = body.get("beginExclusive", 0)
            end = body.get("endInclusive", self.end)
            found = [i for i in self.items if begin < wire_offset(i) <= end]
            limit = int(params["limit"]) if "limit" in params else None
            if limit is not None and limit <= self.list_max:
                return httpx.Response(200, json=found[:limit])
            if len(found) > self.list_max:
                _, error = wire.canton_error(
                    "JSON_API_MAXIMUM_LIST_ELEMENTS_NUMBER_REACHED",
                    f"more than {self.list_max} elements",
                    "InvalidGivenCurrentSystemStateOther",
                )
                return httpx.Response(413, json=error)
            return httpx.Response(200, json=found)
        return httpx.Response(404, text="no such endpoint")

    def list_requests(self) -> list[dict[str, Any]]:
        return [
            {"params": params, **body}
            for method, path, params, body in self.requests
            if path.endswith("/v2/updates")
        ]


# --- a WebSocket node -----------------------------------------------------------------------------


class Stream:
    """What the WebSocket endpoint does for one connection."""

    def __init__(
        self,
        messages: list[Any],
        *,
        close: str = "normal",  # normal | drop | error | hang
    ) -> None:
        self.messages = messages
        self.close = close


class WebSocketNode:
    def __init__(self) -> None:
        self.streams: list[Stream] = []
        self.first_messages: list[Any] = []
        self.protocols: list[str] = []
        self.authorizations: list[str | None] = []
        self.handshakes = 0
        self.reject_status: int | None = None
        self.url = ""
        self._release = threading.Event()

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self.handshakes += 1
        self.protocols.append(request.headers.get("Sec-WebSocket-Protocol", ""))
        self.authorizations.append(request.headers.get("Authorization"))
        if self.reject_status is not None:
            return connection.respond(self.reject_status, "Not Found\n")
        return None

    def handler(self, connection: ServerConnection) -> None:
        self.first_messages.append(orjson.loads(connection.recv(timeout=5)))
        stream = self.streams.pop(0) if self.streams else Stream([])
        for message in stream.messages:
            connection.send(message if isinstance(message, str) else orjson.dumps(message).decode())
        if stream.close == "normal":
            connection.close()
        elif stream.close == "error":
            connection.close(code=1011, reason="internal error")
        elif stream.close == "drop":
            connection.socket.shutdown(socket.SHUT_RDWR)
            connection.socket.close()
        elif stream.close == "hang":
            self._release.wait(timeout=10)

    def release(self) -> None:
        self._release.set()


@contextmanager
def websocket_node() -> Iterator[WebSocketNode]:
    node = WebSocketNode()
    with serve(
        node.handler,
        "127.0.0.1",
        0,
        process_request=node.process_request,
        subprotocols=[Subprotocol("daml.ws.auth")],
    ) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        node.url = f"http://127.0.0.1:{server.socket.getsockname()[1]}"
        try:
            yield node
        finally:
            node.release()
            server.shutdown()
            thread.join(timeout=5)


def client_for(
    url: str,
    fake: FakeNode,
    *,
    auth: Any = None,
    page_size: int = 200,
    use_websocket: bool = True,
    **http_options: Any,
) -> CantonLedgerClient:
    http = LedgerHttp(
        url,
        auth or NoAuth(),
        transport=httpx.MockTransport(fake.handle),
        sleep=lambda _: None,
        **http_options,
    )
    return CantonLedgerClient(http, page_size=page_size, use_websocket=use_websocket)


def read_until_error(iterator: Iterator[Any]) -> tuple[list[Any], Exception | None]:
    got: list[Any] = []
    try:
        for item in iterator:
            got.append(item)
    except Exception as exc:
        return got, exc
    return got, None


# --- plain HTTP: paths, retries, errors -----------------------------------------------------------


class Counter:
    """A MockTransport handler answering from a list of responses (the last one repeats)."""

    def __init__(self, *answers: httpx.Response | Callable[[httpx.Request], httpx.Response]):
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
        return answer(request) if callable(answer) else answer


def http_with(
    handler: Callable[[httpx.Request], httpx.Response], **options: Any
) -> tuple[LedgerHttp, list[float]]:
    sleeps: list[float] = []
    http = LedgerHttp(
        "http://node.example/prefix",
        NoAuth(),
        transport=httpx.MockTransport(handler),
        sleep=sleeps.append,
        **options,
    )
    return http, sleeps


def test_the_base_url_path_is_kept_in_front_of_the_api_path() -> None:
    seen = Counter(httpx.Response(200, json={"offset": 1}))
    http = LedgerHttp(
        "http://node.example/nodes/wallets/", NoAuth(), transport=httpx.MockTransport(seen)
    )
    http.get("/v2/state/ledger-end")
    assert str(seen.requests[0].url) == "http://node.example/nodes/wallets/v2/state/ledger-end"


def test_party_ids_stay_literal_in_registry_paths() -> None:
    seen = Counter(httpx.Response(200, json={}))
    http = LedgerHttp(
        "http://host/registries/admin::1220ab", NoAuth(), transport=httpx.MockTransport(seen)
    )
    http.get("/registry/metadata/v1/info")
    assert seen.requests[0].url.path == "/registries/admin::1220ab/registry/metadata/v1/info"


def test_a_read_is_retried_on_503_until_it_succeeds() -> None:
    handler = Counter(
        httpx.Response(503, text="busy"),
        httpx.Response(503, text="busy"),
        httpx.Response(200, json={"offset": 5}),
    )
    http, sleeps = http_with(handler, backoff_base_s=0.2, backoff_max_s=5)
    assert http.get("/v2/state/ledger-end") == {"offset": 5}
    assert len(handler.requests) == 3
    assert len(sleeps) == 2
    assert 0.1 <= sleeps[0] <= 0.2 and 0.2 <= sleeps[1] <= 0.4


@pytest.mark.parametrize("status", [502, 504])
def test_a_read_is_retried_on_gateway_failures(status: int) -> None:
    handler = Counter(httpx.Response(status), httpx.Response(200, json=[]))
    http, _ = http_with(handler)
    assert http.post("/v2/updates", {}) == []
    assert len(handler.requests) == 2


def test_429_honours_retry_after_seconds_capped() -> None:
    handler = Counter(
        httpx.Response(429, headers={"Retry-After": "7"}, text="slow down"),
        httpx.Response(429, headers={"Retry-After": "3600"}, text="slow down"),
        httpx.Response(200, json={}),
    )
    http, sleeps = http_with(handler, retry_after_max_s=30)
    http.get("/v2/version")
    assert sleeps == [7.0, 30.0]


def test_backoff_is_bounded_by_the_maximum() -> None:
    handler = Counter(httpx.Response(503))
    http, sleeps = http_with(handler, retries_max=8, backoff_base_s=1, backoff_max_s=3)
    with pytest.raises(CantonUnavailableError):
        http.get("/v2/version")
    assert len(sleeps) == 8
    assert max(sleeps) <= 3


def test_retries_are_bounded_then_the_node_is_unavailable() -> None:
    handler = Counter(httpx.Response(503, text="Service Unavailable"))
    http, sleeps = http_with(handler, retries_max=4)
    with pytest.raises(CantonUnavailableError, match="after 5 attempts") as caught:
        http.get("/v2/state/ledger-end")
    assert len(handler.requests) == 5
    assert len(sleeps) == 4
    assert caught.value.status == 503
    assert "GET /prefix/v2/state/ledger-end" in str(caught.value)


def test_connection_errors_are_retried_then_unavailable() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    handler = Counter(refuse)
    http, _ = http_with(handler, retries_max=2)
    with pytest.raises(CantonUnavailableError, match="connection failed"):
        http.get("/v2/state/ledger-end")
    assert len(handler.requests) == 3


def test_a_timeout_says_how_long_was_waited() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    http, _ = http_with(Counter(slow), retries_max=0, timeout_s=7)
    with pytest.raises(CantonUnavailableError, match="timed out after 7 s"):
        http.get("/v2/state/ledger-end")


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, CantonError),
        (401, CantonAuthError),
        (403, CantonAuthError),
        (404, CantonError),
        (409, CantonError),
        (413, ListTooLargeError),
        (500, CantonError),
        (501, CantonError),
    ],
)
def test_these_statuses_are_never_retried(status: int, error_class: type[CantonError]) -> None:
    handler = Counter(httpx.Response(status, text="no"))
    http, sleeps = http_with(handler)
    with pytest.raises(error_class) as caught:
        http.get("/v2/state/ledger-end")
    assert len(handler.requests) == 1
    assert sleeps == []
    assert caught.value.status == status
    assert not isinstance(caught.value, CantonUnavailableError)


def test_writes_are_never_retried_by_the_transport() -> None:
    handler = Counter(httpx.Response(503, text="busy"))
    http, sleeps = http_with(handler)
    with pytest.raises(CantonUnavailableError):
        http.post("/v2/commands/submit-and-wait", {}, read=False)
    assert len(handler.requests) == 1
    assert sleeps == []


def test_a_body_that_is_not_json_is_a_malformed_response() -> None:
    http, _ = http_with(Counter(httpx.Response(200, text="<html>proxy login</html>")))
    with pytest.raises(MalformedResponseError, match=r"not JSON.*proxy login"):
        http.get("/v2/state/ledger-end")


def test_a_canton_error_body_becomes_a_canton_error_with_its_fields() -> None:
    status, body = wire.canton_error(
        "CONTRACT_NOT_FOUND",
        "Contract could not be found with id 00ab",
        "InvalidGivenCurrentSystemStateResourceMissing",
    )
    http, _ = http_with(Counter(httpx.Response(status, json=body)))
    with pytest.raises(CantonError) as caught:
        http.post("/v2/commands/submit-and-wait", {}, read=False)
    error = caught.value
    assert error.status == 404
    assert error.node_code == "CONTRACT_NOT_FOUND"
    assert error.cause == "Contract could not be found with id 00ab"
    assert error.category == "InvalidGivenCurrentSystemStateResourceMissing"
    assert error.definite is True
    assert error.retryable is False
    assert error.code == 11  # the stable code of a failed component call
    assert str(error) == (
        "POST /prefix/v2/commands/submit-and-wait: HTTP 404 CONTRACT_NOT_FOUND: "
        "Contract could not be found with id 00ab"
    )


def test_a_duplicate_command_is_not_a_definite_answer() -> None:
    status, body = wire.canton_error(
        "DUPLICATE_COMMAND", "already submitted", "InvalidGivenCurrentSystemStateResourceExists"
    )
    http, _ = http_with(Counter(httpx.Response(status, json=body)))
    with pytest.raises(CantonError) as caught:
        http.post("/v2/commands/submit-and-wait", {}, read=False)
    assert caught.value.status == 409
    assert caught.value.definite is False


def test_a_canton_error_saying_definite_answer_is_definite() -> None:
    status, body = wire.canton_error(
        "SOME_REJECTION", "no", "ContentionOnSharedResources", definite=True
    )
    http, _ = http_with(Counter(httpx.Response(status, json=body)))
    with pytest.raises(CantonError) as caught:
        http.post("/v2/commands/submit-and-wait", {}, read=False)
    assert caught.value.definite is True
    assert caught.value.retryable is True


def test_the_plain_text_400_of_the_spec_gives_a_clear_error() -> None:
    text = "Invalid value for: body (Missing required field at 'commandId')"
    http, _ = http_with(Counter(httpx.Response(400, text=text)))
    with pytest.raises(CantonError) as caught:
        http.post("/v2/commands/submit-and-wait", {}, read=False)
    assert caught.value.status == 400
    assert caught.value.node_code is None
    assert caught.value.definite is True
    assert str(caught.value) == f"POST /prefix/v2/commands/submit-and-wait: HTTP 400: {text}"


def test_a_proxys_text_429_after_the_retries_is_unavailable_with_its_text() -> None:
    http, _ = http_with(Counter(httpx.Response(429, text="Too Many Requests")), retries_max=1)
    with pytest.raises(CantonUnavailableError, match="HTTP 429: Too Many Requests"):
        http.get("/v2/version")


def test_a_registry_error_response_gives_its_error_text() -> None:
    http, _ = http_with(Counter(httpx.Response(404, json={"error": "instrument not found"})))
    with pytest.raises(CantonError, match="HTTP 404: instrument not found"):
        http.get("/registry/metadata/v1/instruments/X")


# --- the updates stream over WebSocket ------------------------------------------------------------


def test_the_stream_yields_every_item_up_to_the_ledger_end() -> None:
    items = [transaction(1), checkpoint(2), transaction(3)]
    fake = FakeNode(items)
    with websocket_node() as node:
        node.streams.append(Stream(items))
        client = client_for(node.url, fake, auth=StaticToken("tok"))
        got = list(client.updates(PARTY, None))
    assert got == items
    assert node.first_messages == [wire.updates_request(PARTY, 0, 3)]
    assert node.protocols == ["daml.ws.auth, jwt.token.tok"]
    assert node.authorizations == ["Bearer tok"]
    assert fake.list_requests() == []  # the end was reached: no check needed


def test_the_stream_offers_only_the_auth_subprotocol_without_a_token() -> None:
    items = [transaction(1)]
    with websocket_node() as node:
        node.streams.append(Stream(items))
        list(client_for(node.url, FakeNode(items)).updates(PARTY, 0))
    assert node.protocols == ["daml.ws.auth"]
    assert node.authorizations == [None]


def test_the_stream_starts_after_the_given_offset() -> None:
    items = [transaction(5), transaction(6)]
    with websocket_node() as node:
        node.streams.append(Stream(items))
        got = list(client_for(node.url, FakeNode(items)).updates(PARTY, 4))
    assert offsets(got) == [5, 6]
    assert node.first_messages[0]["beginExclusive"] == 4
    assert node.first_messages[0]["endInclusive"] == 6


def test_nothing_is_read_when_the_cursor_is_at_the_ledger_end() -> None:
    fake = FakeNode([transaction(1)])
    with websocket_node() as node:
        assert list(client_for(node.url, fake).updates(PARTY, 1)) == []
    assert node.handshakes == 0


def test_a_cursor_after_the_ledger_end_is_a_read_error() -> None:
    fake = FakeNode([transaction(1)])
    with pytest.raises(CantonReadError, match="after the ledger end 1") as caught:
        client_for("http://127.0.0.1:9", fake).updates(PARTY, 7)
    assert caught.value.node_code == "OFFSET_AFTER_LEDGER_END"


def test_limit_stops_after_that_many_items_and_closes_the_socket() -> None:
    items = [transaction(o) for o in range(1, 6)]
    with websocket_node() as node:
        node.streams.append(Stream(items, close="hang"))
        got = list(client_for(node.url, FakeNode(items)).updates(PARTY, 0, limit=2))
    assert offsets(got) == [1, 2]


def test_a_dropped_connection_raises_after_yielding_only_whole_items() -> None:
    items = [transaction(o) for o in range(1, 6)]
    with websocket_node() as node:
        node.streams.append(Stream(items[:2], close="drop"))
        got, error = read_until_error(client_for(node.url, FakeNode(items)).updates(PARTY, 0))
    assert offsets(got) == [1, 2]
    assert isinstance(error, LedgerReadError)
    assert "stream cut after 2 items" in str(error)
    assert isinstance(error, CantonReadError) and error.items == 2


def test_an_abnormal_close_code_raises() -> None:
    items = [transaction(o) for o in range(1, 4)]
    with websocket_node() as node:
        node.streams.append(Stream(items[:1], close="error"))
        got, error = read_until_error(client_for(node.url, FakeNode(items)).updates(PARTY, 0))
    assert offsets(got) == [1]
    assert isinstance(error, LedgerReadError)
    assert "code 1011" in str(error)


def test_a_half_sent_message_is_never_yielded() -> None:
    items = [transaction(1), transaction(2)]
    truncated = orjson.dumps(items[1]).decode()[:40]
    with websocket_node() as node:
        node.streams.append(Stream([items[0], truncated]))
        got, error = read_until_error(client_for(node.url, FakeNode(items)).updates(PARTY, 0))
    assert offsets(got) == [1]
    assert isinstance(error, LedgerReadError)
    assert "not JSON" in str(error)


def test_a_canton_error_message_raises_with_the_nodes_code_and_cause() -> None:
    _, error_body = wire.canton_error(
        "OFFSET_AFTER_LEDGER_END",
        "Begin offset 9 is after ledger end 3",
        "InvalidGivenCurrentSystemStateSeekAfterEnd",
    )
    items = [transaction(1), transaction(2), transaction(3)]
    with websocket_node() as node:
        node.streams.append(Stream([items[0], error_body]))
        got, error = read_until_error(client_for(node.url, FakeNode(items)).updates(PARTY, 0))
    assert offsets(got) == [1]
    assert isinstance(error, CantonReadError)
    assert error.node_code == "OFFSET_AFTER_LEDGER_END"
    assert error.cause == "Begin offset 9 is after ledger end 3"
    assert "OFFSET_AFTER_LEDGER_END" in str(error)


def test_an_item_without_an_offset_is_not_yielded() -> None:
    items = [transaction(1), transaction(2)]
    with websocket_node() as node:
        node.streams.append(Stream([items[0], {"update": {"Transaction": {"value": {}}}}]))
        got, error = read_until_error(client_for(node.url, FakeNode(items)).updates(PARTY, 0))
    assert offsets(got) == [1]
    assert isinstance(error, LedgerReadError)
    assert "no readable offset" in str(error)


def test_items_out_of_order_are_refused() -> None:
    items = [transaction(1), transaction(2), transaction(3)]
    with websocket_node() as node:
        node.streams.append(Stream([items[1], items[0]]))
        got, error = read_until_error(client_for(node.url, FakeNode(items)).updates(PARTY, 0))
    assert offsets(got) == [2]
    assert isinstance(error, LedgerReadError)
    assert "out of order" in str(error)


def test_a_normal_close_before_the_end_is_complete_when_nothing_of_the_party_remains() -> None:
    # The ledger end (offset 5) belongs to another party on the node: the stream ends at 3.
    items = [transaction(1), transaction(3)]
    fake = FakeNode(items, end=5)
    with websocket_node() as node:
        node.streams.append(Stream(items))
        got = list(client_for(node.url, fake).updates(PARTY, 0))
    assert offsets(got) == [1, 3]
    (check,) = fake.list_requests()
    assert check["beginExclusive"] == 3 and check["endInclusive"] == 5
    assert check["params"] == {"limit": "1"}


def test_a_normal_close_before_the_end_with_items_remaining_is_a_cut_stream() -> None:
    items = [transaction(1), transaction(2), transaction(3)]
    with websocket_node() as node:
        node.streams.append(Stream(items[:1]))
        got, error = read_until_error(client_for(node.url, FakeNode(items)).updates(PARTY, 0))
    assert offsets(got) == [1]
    assert isinstance(error, LedgerReadError)
    assert "stream cut after 1 items" in str(error)
    assert "offset 2 remains" in str(error)


def test_a_silent_stream_times_out() -> None:
    items = [transaction(1), transaction(2)]
    with websocket_node() as node:
        node.streams.append(Stream(items[:1], close="hang"))
        client = client_for(node.url, FakeNode(items), stream_idle_timeout_s=0.3)
        got, error = read_until_error(client.updates(PARTY, 0))
    assert offsets(got) == [1]
    assert isinstance(error, LedgerReadError)
    assert "no message within 0.3 s" in str(error)


def test_an_unreachable_node_is_a_read_error() -> None:
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    fake = FakeNode([transaction(1)])
    client = client_for(f"http://127.0.0.1:{port}", fake, retries_max=1)
    got, error = read_until_error(client.updates(PARTY, 0))
    assert got == []
    assert isinstance(error, LedgerReadError)
    assert "connection failed" in str(error)
    assert client.uses_websocket  # unreachable is not "no WebSocket endpoint"


def test_a_failing_ledger_end_is_a_read_error() -> None:
    http = LedgerHttp(
        "http://node",
        NoAuth(),
        transport=httpx.MockTransport(lambda r: httpx.Response(500, text="boom")),
    )
    with pytest.raises(LedgerReadError, match=r"reading the ledger end failed.*HTTP 500"):
        CantonLedgerClient(http).updates(PARTY, 0)


def test_an_empty_ledger_end_answer_is_offset_zero() -> None:
    http = LedgerHttp(
        "http://node",
        NoAuth(),
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={})),
    )
    assert CantonLedgerClient(http).ledger_end() == 0


# --- no WebSocket endpoint: the HTTP list form ----------------------------------------------------


def test_without_a_websocket_endpoint_the_list_form_is_used_from_then_on() -> None:
    items = [transaction(o) for o in range(1, 8)]
    fake = FakeNode(items)
    with websocket_node() as node:
        node.reject_status = 404
        client = client_for(node.url, fake, page_size=3)
        assert offsets(list(client.updates(PARTY, 0))) == list(range(1, 8))
        assert offsets(list(client.updates(PARTY, 5))) == [6, 7]
    assert node.handshakes == 1
    assert not client.uses_websocket
    pages = fake.list_requests()
    assert [(p["beginExclusive"], p["params"]["limit"]) for p in pages] == [
        (0, "3"),
        (3, "3"),
        (6, "3"),
        (5, "3"),
    ]
    assert all(p["endInclusive"] == 7 for p in pages)


@pytest.mark.parametrize("status", [405, 501])
def test_other_no_websocket_statuses_also_fall_back(status: int) -> None:
    items = [transaction(1), transaction(2)]
    with websocket_node() as node:
        node.reject_status = status
        client = client_for(node.url, FakeNode(items))
        assert offsets(list(client.updates(PARTY, 0))) == [1, 2]
    assert not client.uses_websocket


def test_the_list_form_halves_its_page_on_413() -> None:
    items = [transaction(o) for o in range(1, 21)]
    fake = FakeNode(items, list_max=5)
    client = client_for("http://node", fake, page_size=16, use_websocket=False)
    assert offsets(list(client.updates(PARTY, 0))) == list(range(1, 21))
    limits = [p["params"]["limit"] for p in fake.list_requests()]
    assert limits[:3] == ["16", "8", "4"]
    assert client.page_size == 4


def test_the_list_form_respects_limit() -> None:
    items = [transaction(o) for o in range(1, 11)]
    fake = FakeNode(items)
    client = client_for("http://node", fake, page_size=4, use_websocket=False)
    assert offsets(list(client.updates(PARTY, 0, limit=6))) == list(range(1, 7))
    assert [p["params"]["limit"] for p in fake.list_requests()] == ["4", "2"]


def test_a_list_form_failure_part_way_keeps_what_was_yielded() -> None:
    items = [transaction(o) for o in range(1, 7)]
    fake = FakeNode(items)
    calls = 0

    def flaky(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        if request.url.path.endswith("/v2/updates"):
            calls += 1
            if calls == 2:
                status, body = wire.canton_error(
                    "PARTICIPANT_PRUNED_DATA_ACCESSED",
                    "pruned",
                    "InvalidGivenCurrentSystemStateOther",
                )
                return httpx.Response(status, json=body)
        return fake.handle(request)

    http = LedgerHttp("http://node", NoAuth(), transport=httpx.MockTransport(flaky))
    client = CantonLedgerClient(http, page_size=3, use_websocket=False)
    got, error = read_until_error(client.updates(PARTY, 0))
    assert offsets(got) == [1, 2, 3]
    assert isinstance(error, CantonReadError)
    assert error.node_code == "PARTICIPANT_PRUNED_DATA_ACCESSED"
    assert error.items == 3


# --- offsets by record time -----------------------------------------------------------------------


def test_offset_at_record_time_finds_the_last_item_at_or_before_the_time() -> None:
    # Items of the party at scattered offsets; record time = T0 + offset seconds.
    present = [2, 3, 7, 8, 15, 16, 30, 31, 64, 90]
    items = [checkpoint(o) if o % 5 == 0 else transaction(o) for o in present]
    fake = FakeNode(items, end=100)
    client = client_for("http://node", fake, use_websocket=False)
    for seconds in [-1, 0, 2, 5, 7, 29, 30, 63, 64, 89, 90, 200]:
        time = T0 + timedelta(seconds=seconds)
        expected = max((o for o in present if o <= seconds), default=0)
        fake.requests.clear()
        assert client.offset_at_record_time(PARTY, time) == expected, seconds
        assert len(fake.list_requests()) <= 8  # about log2(100)


def test_offset_at_record_time_of_an_empty_ledger_is_zero() -> None:
    client = client_for("http://node", FakeNode([]), use_websocket=False)
    assert client.offset_at_record_time(PARTY, T0) == 0


def test_offset_at_record_time_needs_a_time_zone() -> None:
    client = client_for("http://node", FakeNode([]), use_websocket=False)
    with pytest.raises(ValueError, match="time zone"):
        client.offset_at_record_time(PARTY, datetime(2025, 1, 1))


# --- further reads --------------------------------------------------------------------------------


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


def test_read_requests_match_the_ledger_api_schemas(ledger_api: dict[str, Any]) -> None:
    assert schema_errors(ledger_api, "GetUpdatesRequest", wire.updates_request(PARTY, 3, 9)) == []
    bodies: list[tuple[str, Any]] = []

    def node(request: httpx.Request) -> httpx.Response:
        bodies.append((request.url.path, orjson.loads(request.content)))
        return httpx.Response(200, json=[] if "completions" in request.url.path else {})

    client = CantonLedgerClient(
        LedgerHttp("http://n", NoAuth(), transport=httpx.MockTransport(node))
    )
    client.update_by_id("update-1", PARTY)
    client.events_by_contract_id("00abcd", PARTY)
    client.completions(PARTY, 4, user_id="sluice")
    schemas = {
        "/v2/updates/update-by-id": "GetUpdateByIdRequest",
        "/v2/events/events-by-contract-id": "GetEventsByContractIdRequest",
        "/v2/commands/completions": "CompletionStreamRequest",
    }
    assert [path for path, _ in bodies] == list(schemas)
    for path, body in bodies:
        assert schema_errors(ledger_api, schemas[path], body) == [], path


def test_update_by_id_asks_for_the_partys_ledger_effects() -> None:
    seen: list[Any] = []

    def node(request: httpx.Request) -> httpx.Response:
        seen.append(orjson.loads(request.content))
        return httpx.Response(200, json={"update": transaction(4)["update"]})

    client = CantonLedgerClient(
        LedgerHttp("http://n", NoAuth(), transport=httpx.MockTransport(node))
    )
    assert client.update_by_id("update-4", PARTY) == {"update": transaction(4)["update"]}
    assert seen == [
        {
            "updateId": "update-4",
            "updateFormat": wire.updates_request(PARTY, 0, None)["updateFormat"],
        }
    ]


def test_completions_use_the_list_form_with_limit_and_idle_timeout() -> None:
    seen: list[httpx.Request] = []

    def node(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=[{"completionResponse": {}}])

    client = CantonLedgerClient(
        LedgerHttp("http://n", NoAuth(), transport=httpx.MockTransport(node)), page_size=50
    )
    assert client.completions(PARTY, 7) == [{"completionResponse": {}}]
    assert dict(seen[0].url.params) == {"limit": "50", "stream_idle_timeout_ms": "1000"}
    assert orjson.loads(seen[0].content) == {"parties": [PARTY], "beginExclusive": 7}


def acs_item(contract_id: str) -> dict[str, Any]:
    return {
        "contractEntry": {
            "JsActiveContract": {
                "createdEvent": {"contractId": contract_id},
                "reassignmentCounter": 0,
            }
        }
    }


def test_active_contracts_stream_over_websocket_at_the_ledger_end(
    ledger_api: dict[str, Any],
) -> None:
    contracts = [acs_item("00a1"), acs_item("00a2")]
    fake = FakeNode([transaction(1), transaction(2)])
    with websocket_node() as node:
        node.streams.append(Stream(contracts))
        got = client_for(node.url, fake).active_contracts(PARTY)
    assert got == contracts
    assert node.first_messages == [{"activeAtOffset": 2, "eventFormat": wire.event_format(PARTY)}]
    assert schema_errors(ledger_api, "GetActiveContractsRequest", node.first_messages[0]) == []


def test_active_contracts_fall_back_to_the_list_form() -> None:
    contracts = [acs_item("00a1")]
    seen: list[httpx.Request] = []

    def node_http(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=contracts)

    with websocket_node() as node:
        node.reject_status = 404
        http = LedgerHttp(node.url, NoAuth(), transport=httpx.MockTransport(node_http))
        client = CantonLedgerClient(http)
        assert client.active_contracts(PARTY, at_offset=5) == contracts
    assert seen[0].url.path == "/v2/state/active-contracts"
    assert orjson.loads(seen[0].content)["activeAtOffset"] == 5


def test_active_contracts_list_form_refuses_a_possibly_truncated_answer() -> None:
    http = LedgerHttp(
        "http://n",
        NoAuth(),
        transport=httpx.MockTransport(
            lambda r: httpx.Response(200, json=[acs_item("00a1"), acs_item("00a2")])
        ),
    )
    client = CantonLedgerClient(http, use_websocket=False, active_contracts_max=2)
    with pytest.raises(ListTooLargeError, match="may be incomplete"):
        client.active_contracts(PARTY, at_offset=3)
