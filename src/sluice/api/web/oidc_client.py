"""sluice as a client of an OIDC provider: the authorization-code flow with PKCE (RFC 7636) by
which staff sign in to the pages on the provider's own page (``docs/web.md``).

:meth:`OidcClient.start` makes a sign-in's secrets — ``state`` (binds the provider's answer to
the browser that asked, against login CSRF), ``nonce`` (binds the ID token to this sign-in,
against replayed tokens) and the PKCE ``verifier`` (binds the code to this client, against an
intercepted code) — and the provider's URL to send the browser to. :meth:`OidcClient.finish`
trades the code for tokens at the provider's token endpoint and verifies the ID token as the API
verifies bearer tokens (signature, issuer, expiry, the sluice role claim), with this client as
its audience and the sign-in's nonce. The provider's endpoints come from its discovery document
unless configured; the document is read once and must name the configured issuer.

Every failure is :class:`UnauthorizedError` (the provider refused, or its answer was not
acceptable) or :class:`ComponentCallFailedError` (the provider could not be reached), with the
reason; neither the code, the tokens nor the secret ever appear in a message.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import httpx

from sluice.api.oidc import JwtVerifier, OidcSettings
from sluice.domain.access import Principal
from sluice.domain.errors import ComponentCallFailedError, UnauthorizedError

TIMEOUT_S = 10.0
ANSWER_BYTES_MAX = 256 * 1024
DISCOVERY_PATH = "/.well-known/openid-configuration"


@dataclass(frozen=True, slots=True)
class OidcClientSettings:
    client_id: str
    redirect_uri: str
    client_secret: str | None = None
    token_auth: str = "client_secret_basic"  # or client_secret_post, none
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    scopes: str = "openid"
    provider_name: str = "the sign-in provider"


@dataclass(frozen=True, slots=True)
class SignInStart:
    """A sign-in under way: the secrets the browser keeps (in a cookie) until it comes back, and
    where to send it."""

    state: str
    nonce: str
    verifier: str
    url: str


def challenge(verifier: str) -> str:
    """PKCE's S256 challenge of ``verifier``."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcClient:
    """One OIDC provider's sign-in for the pages (thread-safe)."""

    def __init__(
        self,
        settings: OidcClientSettings,
        api: OidcSettings,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self._issuer = api.issuer.rstrip("/")
        # The ID token's audience is this client (the API's bearer tokens name the API).
        self._verifier = JwtVerifier(replace(api, audience=settings.client_id))
        self._http = httpx.Client(timeout=TIMEOUT_S, transport=transport)
        self._lock = threading.Lock()
        self._endpoints: tuple[str, str] | None = None
        if settings.authorization_endpoint and settings.token_endpoint:
            self._endpoints = (settings.authorization_endpoint, settings.token_endpoint)

    @property
    def provider_name(self) -> str:
        return self.settings.provider_name

    def close(self) -> None:
        self._http.close()

    def endpoints(self) -> tuple[str, str]:
        """(authorization, token) endpoints, configured or discovered once."""
        with self._lock:
            if self._endpoints is not None:
                return self._endpoints
        found = self._discover()
        with self._lock:
            self._endpoints = found
        return found

    def _discover(self) -> tuple[str, str]:
        document = self._json("GET", self._issuer + DISCOVERY_PATH, "discovery document")
        issuer = document.get("issuer")
        if not isinstance(issuer, str) or issuer.rstrip("/") != self._issuer:
            raise ComponentCallFailedError(
                f"the provider's discovery document names issuer {issuer!r}, not {self._issuer!r}"
            )
        found: list[str] = []
        for name in ("authorization_endpoint", "token_endpoint"):
            value = document.get(name)
            if not isinstance(value, str) or not value.startswith(("https://", "http://")):
                raise ComponentCallFailedError(f"the provider's discovery document has no {name}")
            found.append(value)
        return found[0], found[1]

    def start(self) -> SignInStart:
        """A new sign-in: its secrets and the provider's URL to send the browser to."""
        state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        verifier = secrets.token_urlsafe(48)  # 64 characters, within PKCE's 43..128
        authorization, _ = self.endpoints()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.settings.client_id,
                "redirect_uri": self.settings.redirect_uri,
                "scope": self.settings.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge(verifier),
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in authorization else "?"
        return SignInStart(state, nonce, verifier, f"{authorization}{separator}{query}")

    def finish(self, code: str, verifier: str, nonce: str) -> Principal:
        """The principal the provider signed in, for the ``code`` it gave this sign-in."""
        _, token_endpoint = self.endpoints()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.settings.redirect_uri,
            "code_verifier": verifier,
            "client_id": self.settings.client_id,
        }
        auth: tuple[str, str] | None = None
        secret = self.settings.client_secret
        if self.settings.token_auth == "client_secret_basic" and secret is not None:
            auth = (self.settings.client_id, secret)
        elif self.settings.token_auth == "client_secret_post" and secret is not None:
            form["client_secret"] = secret
        answer = self._json("POST", token_endpoint, "token endpoint", data=form, auth=auth)
        id_token = answer.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise UnauthorizedError("the provider's answer has no ID token (is 'openid' a scope?)")
        return self._verifier.authenticate(id_token, nonce=nonce)

    def _json(
        self,
        method: str,
        url: str,
        what: str,
        *,
        data: dict[str, str] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        try:
            answer = self._http.request(
                method, url, data=data, auth=auth, headers={"Accept": "application/json"}
            )
        except httpx.HTTPError as exc:
            raise ComponentCallFailedError(
                f"the sign-in provider's {what} could not be reached: {type(exc).__name__}"
            ) from None
        if len(answer.content) > ANSWER_BYTES_MAX:
            raise ComponentCallFailedError(f"the sign-in provider's {what} answered too much")
        try:
            body = answer.json()
        except ValueError:
            body = None
        if answer.status_code != 200:
            error = body.get("error") if isinstance(body, dict) else None
            reason = f"{error}" if isinstance(error, str) else f"HTTP {answer.status_code}"
            if answer.status_code >= 500 or what == "discovery document":
                raise ComponentCallFailedError(f"the sign-in provider's {what} answered {reason}")
            raise UnauthorizedError(f"the sign-in provider refused the code: {reason[:100]}")
        if not isinstance(body, dict):
            raise ComponentCallFailedError(
                f"the sign-in provider's {what} did not answer a JSON object"
            )
        return body
