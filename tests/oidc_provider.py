"""A small OpenID Connect provider for the pages' sign-in tests: a real HTTP server on a free
local port, speaking the authorization-code flow with PKCE as a provider does.

* ``/.well-known/openid-configuration``: its discovery document;
* ``/authorize``: checks the client, the redirect URI, the scope and the S256 challenge, then
  shows a page with one button ("Continue as …") that sends the browser back to the client's
  redirect URI with a one-time code and the client's state (``auto_approve`` sends it back at
  once, for tests without a browser); ``deny`` answers ``error=access_denied`` instead;
* ``/token``: trades a code once, for the client that asked for it (HTTP Basic with its secret),
  the same redirect URI and the verifier whose challenge the code was asked with, for an ID token
  signed with an RSA key (RS256, with ``kid``) carrying ``iss``, ``aud`` (the client), ``sub``,
  ``exp``, ``iat``, ``nonce`` and the user's claims;
* ``/jwks``: the public key.

What the provider saw is kept in ``authorize_requests`` and ``token_requests``; ``user`` is the
claims of whoever "signs in" next, ``nonce_override`` puts another nonce in the ID token.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import secrets
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

CLIENT_ID = "sluice-pages"
CLIENT_SECRET = "pages-secret-of-the-test"
KEY_ID = "test-provider-1"


@dataclass
class FakeProvider:
    issuer: str = ""
    key: rsa.RSAPrivateKey = field(
        default_factory=lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048)
    )
    user: dict[str, Any] = field(
        default_factory=lambda: {"sub": "ops-1", "sluice_role": "operator"}
    )
    auto_approve: bool = True
    deny: bool = False
    nonce_override: str | None = None
    authorize_requests: list[dict[str, str]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        return {"keys": [{**public, "kid": KEY_ID, "alg": "RS256", "use": "sig"}]}

    def id_token(self, nonce: str) -> str:
        now = int(time.time())
        claims = {
            "iss": self.issuer,
            "aud": CLIENT_ID,
            "iat": now,
            "exp": now + 300,
            "nonce": self.nonce_override or nonce,
            **self.user,
        }
        return jwt.encode(claims, self.key, algorithm="RS256", headers={"kid": KEY_ID})


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _handler(provider: FakeProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _send(self, status: int, body: bytes, kind: str, **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def _json(self, status: int, value: object) -> None:
            self._send(status, json.dumps(value).encode(), "application/json")

        def _back(self, redirect_uri: str, **query: str) -> None:
            self._send(303, b"", "text/plain", Location=f"{redirect_uri}?{urlencode(query)}")

        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            if parts.path == "/.well-known/openid-configuration":
                self._json(
                    200,
                    {
                        "issuer": provider.issuer,
                        "authorization_endpoint": provider.issuer + "/authorize",
                        "token_endpoint": provider.issuer + "/token",
                        "jwks_uri": provider.issuer + "/jwks",
                    },
                )
            elif parts.path == "/jwks":
                self._json(200, provider.jwks())
            elif parts.path == "/authorize":
                self._authorize(query)
            elif parts.path == "/authorize/approve":
                self._approve(query.get("request", ""))
            else:
                self._json(404, {"error": "not_found"})

        def _authorize(self, query: dict[str, str]) -> None:
            provider.authorize_requests.append(query)
            wrong = (
                query.get("client_id") != CLIENT_ID
                or query.get("response_type") != "code"
                or "openid" not in query.get("scope", "").split()
                or query.get("code_challenge_method") != "S256"
                or not query.get("code_challenge")
                or not query.get("redirect_uri")
            )
            if wrong:
                self._json(400, {"error": "invalid_request"})
                return
            if provider.deny:
                self._back(query["redirect_uri"], error="access_denied", state=query["state"])
                return
            handle = secrets.token_urlsafe(16)
            provider.codes[handle] = {**query, "approved": ""}
            if provider.auto_approve:
                self._approve(handle)
                return
            page = (
                "<!doctype html><html lang=en><title>Test provider</title>"
                '<link rel=icon href="data:,"><main>'
                "<h1>Test provider</h1><form method=get action=/authorize/approve>"
                f"<input type=hidden name=request value={handle}>"
                f"<button type=submit>Continue as {html.escape(provider.user['sub'])}</button>"
                "</form></main></html>"
            )
            self._send(200, page.encode(), "text/html; charset=utf-8")

        def _approve(self, handle: str) -> None:
            asked = provider.codes.pop(handle, None)
            if asked is None:
                self._json(400, {"error": "invalid_request"})
                return
            code = secrets.token_urlsafe(24)
            provider.codes[code] = asked
            self._back(asked["redirect_uri"], code=code, state=asked.get("state", ""))

        def do_POST(self) -> None:
            if urlsplit(self.path).path != "/token":
                self._json(404, {"error": "not_found"})
                return
            length = int(self.headers.get("Content-Length", "0"))
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            provider.token_requests.append(form)
            expected = "Basic " + base64.b64encode(f"{CLIENT_ID}:{CLIENT_SECRET}".encode()).decode()
            if self.headers.get("Authorization") != expected:
                self._json(401, {"error": "invalid_client"})
                return
            asked = provider.codes.pop(form.get("code", ""), None)
            if (
                form.get("grant_type") != "authorization_code"
                or asked is None
                or form.get("redirect_uri") != asked["redirect_uri"]
                or _challenge(form.get("code_verifier", "")) != asked["code_challenge"]
            ):
                self._json(400, {"error": "invalid_grant"})
                return
            self._json(
                200,
                {
                    "access_token": secrets.token_urlsafe(24),
                    "token_type": "Bearer",
                    "expires_in": 300,
                    "id_token": provider.id_token(asked.get("nonce", "")),
                },
            )

    return Handler


@contextmanager
def running_provider() -> Iterator[FakeProvider]:
    """A provider serving on a free local port until the block ends."""
    provider = FakeProvider()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(provider))
    provider.issuer = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield provider
    finally:
        server.shutdown()
        server.server_close()
