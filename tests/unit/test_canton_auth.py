"""Token sources of the Canton adapter and how the transport uses them.

Covers the static token, the self-signed HS256 token (its claims, its renewal, driven by an
injected clock), the OAuth2 client credentials grant against an ``httpx.MockTransport`` token
endpoint (caching, refresh on expiry and after ``invalidate``, refusals), and the transport's
answer to a 401: one fresh token and a retry for a renewable source, then :class:`CantonAuthError`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
from websockets.http11 import Request, Response
from websockets.sync.server import ServerConnection, serve
from websockets.typing import Subprotocol

from sluice.ledger.canton import (
    CantonAuthError,
    CantonUnavailableError,
    LedgerHttp,
    NoAuth,
    OAuth2ClientCredentials,
    SelfSignedToken,
    StaticToken,
)

SECRET = "a-shared-secret-of-enough-length-for-hs256"


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class IdentityProvider:
    """A token endpoint: each grant gets a new token ``token-N``."""

    def __init__(self, *, expires_in: Any = 300, status: int = 200) -> None:
        self.expires_in = expires_in
        self.status = status
        self.forms: list[dict[str, list[str]]] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.forms.append(parse_qs(request.content.decode()))
        if self.status != 200:
            return httpx.Response(self.status, text="invalid_client")
        body: dict[str, Any] = {"access_token": f"token-{len(self.forms)}", "token_type": "Bearer"}
        if self.expires_in is not None:
            body["expires_in"] = self.expires_in
        return httpx.Response(200, json=body)

    def source(self, clock: FakeClock, **kwargs: Any) -> OAuth2ClientCredentials:
        return OAuth2ClientCredentials(
            "https://idp.example/oauth/token",
            "sluice",
            "client-secret",
            http=httpx.Client(transport=httpx.MockTransport(self.handle)),
            clock=clock,
            **kwargs,
        )


# --- static and self-signed -----------------------------------------------------------------------


def test_static_token_is_sent_as_bearer_and_is_not_renewable() -> None:
    seen: list[str | None] = []

    def node(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={"offset": 3})

    http = LedgerHttp(
        "http://node", StaticToken("abc.def.ghi"), transport=httpx.MockTransport(node)
    )
    assert http.get("/v2/state/ledger-end") == {"offset": 3}
    assert seen == ["Bearer abc.def.ghi"]
    assert StaticToken("x").renewable is False


def test_no_auth_sends_no_authorization_header() -> None:
    seen: list[str | None] = []

    def node(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        return httpx.Response(200, json={})

    LedgerHttp("http://node", NoAuth(), transport=httpx.MockTransport(node)).get("/v2/version")
    assert seen == [None]


def test_self_signed_token_carries_user_audience_scope_and_lifetime() -> None:
    clock = FakeClock()
    source = SelfSignedToken(SECRET, "sluice-user", audience="https://canton.example", clock=clock)
    token = source.token()
    assert token is not None
    claims = jwt.decode(
        token,
        SECRET,
        algorithms=["HS256"],
        audience="https://canton.example",
        options={"verify_exp": False, "verify_iat": False},
    )
    assert claims["sub"] == "sluice-user"
    assert claims["aud"] == "https://canton.example"
    assert claims["scope"] == "daml_ledger_api"
    assert claims["iat"] == int(clock.now)
    assert claims["exp"] == int(clock.now) + 3600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_self_signed_token_without_audience_has_no_aud_claim() -> None:
    token = SelfSignedToken(SECRET, "u", scope=None, clock=FakeClock()).token()
    assert token is not None
    claims = jwt.decode(token, options={"verify_signature": False})
    assert "aud" not in claims
    assert "scope" not in claims


def test_self_signed_token_is_reused_then_renewed_shortly_before_expiry() -> None:
    clock = FakeClock()
    source = SelfSignedToken(SECRET, "u", ttl_s=600, clock=clock)
    first = source.token()
    clock.now += 500  # 100 s left; renewal starts at 60 s left
    assert source.token() == first
    clock.now += 45  # 55 s left
    renewed = source.token()
    assert renewed != first
    assert jwt.decode(renewed or "", options={"verify_signature": False})["iat"] == int(clock.now)


def test_self_signed_token_is_renewed_after_invalidate() -> None:
    clock = FakeClock()
    source = SelfSignedToken(SECRET, "u", clock=clock)
    first = source.token()
    clock.now += 1
    source.invalidate()
    assert source.token() != first


# --- OAuth2 client credentials --------------------------------------------------------------------


def test_oauth2_posts_the_client_credentials_grant_form_encoded() -> None:
    idp = IdentityProvider()
    source = idp.source(FakeClock(), audience="https://ledger", scope="daml_ledger_api")
    assert source.token() == "token-1"
    assert idp.forms == [
        {
            "grant_type": ["client_credentials"],
            "client_id": ["sluice"],
            "client_secret": ["client-secret"],
            "audience": ["https://ledger"],
            "scope": ["daml_ledger_api"],
        }
    ]


def test_oauth2_token_is_cached_until_expiry_minus_margin() -> None:
    clock = FakeClock()
    idp = IdentityProvider(expires_in=300)
    source = idp.source(clock, margin_s=30)
    assert source.token() == "token-1"
    clock.now += 269
    assert source.token() == "token-1"
    assert len(idp.forms) == 1
    clock.now += 1  # 270 s = 300 - 30
    assert source.token() == "token-2"
    assert len(idp.forms) == 2


def test_oauth2_token_is_fetched_again_after_invalidate() -> None:
    idp = IdentityProvider()
    source = idp.source(FakeClock())
    assert source.token() == "token-1"
    source.invalidate()
    assert source.token() == "token-2"


def test_oauth2_without_expires_in_uses_the_default_lifetime() -> None:
    clock = FakeClock()
    idp = IdentityProvider(expires_in=None)
    source = idp.source(clock, lifetime_default_s=100, margin_s=10)
    source.token()
    clock.now += 89
    assert source.token() == "token-1"
    clock.now += 1
    assert source.token() == "token-2"


def test_oauth2_refusal_by_the_identity_provider_is_an_auth_error() -> None:
    source = IdentityProvider(status=401).source(FakeClock())
    with pytest.raises(CantonAuthError, match="refused the client credentials") as caught:
        source.token()
    assert caught.value.status == 401
    assert "idp.example/oauth/token" in str(caught.value)


def test_oauth2_failing_identity_provider_is_unavailable_not_auth() -> None:
    source = IdentityProvider(status=503).source(FakeClock())
    with pytest.raises(CantonUnavailableError):
        source.token()


# --- the transport's answer to a 401 --------------------------------------------------------------


def test_401_with_a_renewable_source_refreshes_once_and_succeeds() -> None:
    idp = IdentityProvider()
    seen: list[str | None] = []

    def node(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") == "Bearer token-1":
            return httpx.Response(401, json={"code": "x", "cause": "expired", "errorCategory": 6})
        return httpx.Response(200, json={"offset": 9})

    http = LedgerHttp(
        "http://node", idp.source(FakeClock()), transport=httpx.MockTransport(node), retries_max=0
    )
    assert http.get("/v2/state/ledger-end") == {"offset": 9}
    assert seen == ["Bearer token-1", "Bearer token-2"]


def test_401_twice_is_an_auth_error_after_exactly_one_refresh() -> None:
    idp = IdentityProvider()
    calls: list[str | None] = []

    def node(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers.get("Authorization"))
        return httpx.Response(401, text="token expired")

    http = LedgerHttp("http://node", idp.source(FakeClock()), transport=httpx.MockTransport(node))
    with pytest.raises(CantonAuthError, match="HTTP 401") as caught:
        http.get("/v2/state/ledger-end")
    assert calls == ["Bearer token-1", "Bearer token-2"]
    assert caught.value.definite is True


def test_401_of_a_write_is_also_retried_once_with_a_fresh_token() -> None:
    clock = FakeClock()
    source = SelfSignedToken(SECRET, "u", clock=clock)
    tokens: list[str] = []

    def node(request: httpx.Request) -> httpx.Response:
        tokens.append(request.headers["Authorization"])
        if len(tokens) == 1:
            clock.now += 1  # the next token differs
            return httpx.Response(401, text="expired")
        return httpx.Response(200, json={"updateId": "u1", "completionOffset": 3})

    http = LedgerHttp("http://node", source, transport=httpx.MockTransport(node))
    answer = http.post("/v2/commands/submit-and-wait", {"commands": []}, read=False)
    assert answer["updateId"] == "u1"
    assert len(tokens) == 2
    assert tokens[0] != tokens[1]


def test_401_with_a_static_token_is_not_retried() -> None:
    calls = 0

    def node(request: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(401, text="no")

    http = LedgerHttp("http://node", StaticToken("t"), transport=httpx.MockTransport(node))
    with pytest.raises(CantonAuthError):
        http.get("/v2/state/ledger-end")
    assert calls == 1


@contextmanager
def websocket_node(accepted_token: str) -> Iterator[tuple[str, list[str]]]:
    """A WebSocket endpoint answering 401 at the upgrade unless ``jwt.token.<accepted>`` is
    offered; it then echoes one message and closes normally."""
    offered: list[str] = []

    def check(connection: ServerConnection, request: Request) -> Response | None:
        protocols = request.headers.get("Sec-WebSocket-Protocol", "")
        offered.append(protocols)
        if f"jwt.token.{accepted_token}" not in protocols:
            return connection.respond(401, "token expired\n")
        return None

    def handler(connection: ServerConnection) -> None:
        connection.send(connection.recv(timeout=5))
        connection.close()

    with serve(
        handler,
        "127.0.0.1",
        0,
        process_request=check,
        subprotocols=[Subprotocol("daml.ws.auth")],
    ) as s:
        thread = threading.Thread(target=s.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{s.socket.getsockname()[1]}", offered
        finally:
            s.shutdown()
            thread.join(timeout=5)


def test_websocket_401_at_the_upgrade_refreshes_the_token_once() -> None:
    idp = IdentityProvider()
    with websocket_node("token-2") as (url, offered):
        http = LedgerHttp(url, idp.source(FakeClock()), retries_max=0)
        messages = list(http.websocket("/v2/updates", {"hello": 1}))
    assert messages == [{"hello": 1}]
    assert offered == ["daml.ws.auth, jwt.token.token-1", "daml.ws.auth, jwt.token.token-2"]


def test_websocket_401_twice_is_an_auth_error() -> None:
    idp = IdentityProvider()
    with websocket_node("never") as (url, offered):
        http = LedgerHttp(url, idp.source(FakeClock()), retries_max=0)
        with pytest.raises(CantonAuthError, match="HTTP 401"):
            list(http.websocket("/v2/updates", {}))
    assert len(offered) == 2
