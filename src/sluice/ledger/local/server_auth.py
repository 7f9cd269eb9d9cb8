"""Auth of the embedded ledger's server: HS256 JWTs on every protected request (a bearer header,
or a WebSocket subprotocol), refused with 401 by :class:`AuthMiddleware`, and the
client-credentials token endpoint.
"""

from __future__ import annotations

import base64
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import jwt
import orjson
from starlette.requests import Request
from starlette.responses import Response

from sluice.ledger import wire

from .remote import CONTROL_PATH
from .server_faults import ASGIApp, Receive, Scope, Send
from .server_problems import Problem, json_response
from .server_requests import read_body

AUTH_SUBPROTOCOL = "daml.ws.auth"
TOKEN_SUBPROTOCOL_PREFIX = "jwt.token."
_PROTECTED_PREFIXES = ("/v2/", "/nodes/", "/registries/", CONTROL_PATH + "/")


@dataclass(frozen=True)
class ServerAuth:
    """HS256 JWT auth, with a client-credentials token endpoint for ``oauth_clients``
    (client id → secret)."""

    hs256_secret: str
    audience: str | None = None
    oauth_clients: Mapping[str, str] = field(default_factory=dict)
    token_ttl_s: int = 300

    def issue_token(self, subject: str, *, ttl_s: float | None = None) -> str:
        """A token for ``subject`` valid ``ttl_s`` seconds (negative: already expired)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "sub": subject,
            "iat": now,
            "exp": now + int(self.token_ttl_s if ttl_s is None else ttl_s),
            "scope": "daml_ledger_api",
        }
        if self.audience is not None:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.hs256_secret, algorithm="HS256")

    def check_token(self, token: str | None) -> str | None:
        """None if ``token`` is acceptable, else why not (``missing``/``expired``/``invalid``)."""
        if not token:
            return "missing: the request carries no access token (Authorization: Bearer <JWT>)"
        try:
            jwt.decode(
                token,
                self.hs256_secret,
                algorithms=["HS256"],
                audience=self.audience,
                options={"verify_aud": self.audience is not None},
            )
        except jwt.ExpiredSignatureError:
            return "expired: the access token has expired"
        except jwt.InvalidTokenError as exc:
            return f"invalid: the access token was rejected ({exc})"
        return None


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def _token_of(scope: Scope) -> str | None:
    authorization = _header(scope, b"authorization")
    if authorization:
        kind, _, token = authorization.partition(" ")
        if kind.lower() == "bearer" and token.strip():
            return token.strip()
    if scope["type"] == "websocket":
        for subprotocol in scope.get("subprotocols", ()):
            if subprotocol.startswith(TOKEN_SUBPROTOCOL_PREFIX):
                return str(subprotocol[len(TOKEN_SUBPROTOCOL_PREFIX) :])
    return None


class AuthMiddleware:
    """Refuses protected requests without a valid token: 401, or a refused WebSocket handshake
    (HTTP 401 with the same JsCantonError body)."""

    def __init__(self, app: ASGIApp, auth: ServerAuth) -> None:
        self.app = app
        self.auth = auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or not scope["path"].startswith(
            _PROTECTED_PREFIXES
        ):
            await self.app(scope, receive, send)
            return
        problem = self.auth.check_token(_token_of(scope))
        if problem is None:
            await self.app(scope, receive, send)
            return
        status, body = wire.canton_error(
            "UNAUTHENTICATED", problem, "AuthInterceptorInvalidAuthenticationCredentials"
        )
        raw = orjson.dumps(body)
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
            (b"www-authenticate", b'Bearer error="invalid_token"'),
        ]
        prefix = ""
        if scope["type"] == "websocket":
            prefix = "websocket."
            await receive()  # websocket.connect
        await send({"type": f"{prefix}http.response.start", "status": status, "headers": headers})
        await send({"type": f"{prefix}http.response.body", "body": raw})


class OAuthTokens:
    """``POST /oauth/token``: client-credentials tokens for the configured clients."""

    def __init__(self, auth: ServerAuth) -> None:
        self.auth = auth

    async def token(self, request: Request) -> Response:
        try:
            raw = (await read_body(request)).decode("utf-8", errors="replace")
        except Problem:
            return json_response({"error": "invalid_request"}, 413)
        form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
        authorization = request.headers.get("authorization", "")
        if authorization.lower().startswith("basic "):
            with contextlib.suppress(ValueError):
                decoded = base64.b64decode(authorization[6:].strip()).decode()
                client_id, _, secret = decoded.partition(":")
                form.setdefault("client_id", client_id)
                form.setdefault("client_secret", secret)
        if form.get("grant_type") != "client_credentials":
            return json_response({"error": "unsupported_grant_type"}, 400)
        client_id = form.get("client_id", "")
        expected = self.auth.oauth_clients.get(client_id)
        if expected is None or form.get("client_secret") != expected:
            return json_response({"error": "invalid_client"}, 401)
        return json_response(
            {
                "access_token": self.auth.issue_token(client_id),
                "token_type": "Bearer",
                "expires_in": self.auth.token_ttl_s,
            }
        )
