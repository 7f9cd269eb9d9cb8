"""Where the bearer token of a participant node (or a registry) comes from.

* :class:`NoAuth` — no token (a local node without authentication);
* :class:`StaticToken` — a token given by the operator; when it expires, the node says 401 and the
  operator renews it;
* :class:`SelfSignedToken` — an HS256 token signed with a shared secret (a local network whose
  node is configured with ``unsafe-jwt-hmac-256``), renewed shortly before it expires;
* :class:`OAuth2ClientCredentials` — the OAuth2 client credentials grant against the identity
  provider's token endpoint; the access token is cached until ``expires_in`` minus a margin.

The renewable sources (``renewable`` is true) are asked for a fresh token after ``invalidate()``:
the transport does that once when the node answers 401 (an expired or revoked token). Every source
is thread-safe and takes an injectable clock for tests.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

import httpx
import jwt
import orjson

from .errors import CantonAuthError, CantonUnavailableError

Clock = Callable[[], float]


class TokenSource(Protocol):
    """A bearer token for each request."""

    @property
    def renewable(self) -> bool:
        """Whether :meth:`invalidate` followed by :meth:`token` can give a different token."""
        ...

    def token(self) -> str | None:
        """The token to send now (None: send no Authorization header)."""
        ...

    def invalidate(self) -> None:
        """The node refused the current token: the next :meth:`token` gets a fresh one."""
        ...


class NoAuth:
    renewable = False

    def token(self) -> str | None:
        return None

    def invalidate(self) -> None:
        pass


class StaticToken:
    renewable = False

    def __init__(self, token: str) -> None:
        if not token.strip():
            raise ValueError("the static token is empty")
        self._token = token.strip()

    def token(self) -> str | None:
        return self._token

    def invalidate(self) -> None:
        pass


class SelfSignedToken:
    """An HS256 JWT for ``user_id`` (``sub``), with ``aud`` when given, ``scope`` (Canton's
    scope-based token; None leaves it out), ``iat`` and ``exp`` = ``iat`` + ``ttl_s``. A new token
    is signed when less than ``renew_before_s`` (default: a tenth of the lifetime, at most 60 s)
    remains."""

    renewable = True

    def __init__(
        self,
        secret: str,
        user_id: str,
        audience: str | None = None,
        ttl_s: float = 3600,
        scope: str | None = "daml_ledger_api",
        *,
        renew_before_s: float | None = None,
        clock: Clock = time.time,
    ) -> None:
        if not secret:
            raise ValueError("the HS256 secret is empty")
        if not user_id:
            raise ValueError("the user id is empty")
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive")
        self._secret = secret
        self.user_id = user_id
        self.audience = audience
        self.ttl_s = ttl_s
        self.scope = scope
        self._renew_before_s = (
            min(60.0, ttl_s / 10) if renew_before_s is None else min(renew_before_s, ttl_s / 2)
        )
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires_at = 0.0

    def token(self) -> str | None:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires_at - self._renew_before_s:
                issued_at = int(now)
                expires_at = issued_at + int(self.ttl_s)
                claims: dict[str, object] = {
                    "sub": self.user_id,
                    "iat": issued_at,
                    "exp": expires_at,
                }
                if self.audience:
                    claims["aud"] = self.audience
                if self.scope:
                    claims["scope"] = self.scope
                self._token = jwt.encode(claims, self._secret, algorithm="HS256")
                self._expires_at = float(expires_at)
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None


class OAuth2ClientCredentials:
    """The OAuth2 client credentials grant: ``POST token_url`` with a form-encoded
    ``grant_type=client_credentials``, ``client_id``, ``client_secret`` (and ``audience`` /
    ``scope`` when given). The token is kept until ``expires_in`` minus ``margin_s`` (at most
    half the lifetime) and fetched again after that or after :meth:`invalidate`.

    A refusal by the identity provider (4xx) raises :class:`CantonAuthError`; an unreachable or
    failing one (connection error, timeout, 5xx) :class:`CantonUnavailableError`.
    """

    renewable = True

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: str,
        audience: str | None = None,
        scope: str | None = None,
        *,
        http: httpx.Client | None = None,
        timeout_s: float = 10,
        margin_s: float = 30,
        lifetime_default_s: float = 300,
        clock: Clock = time.time,
    ) -> None:
        if not token_url:
            raise ValueError("the OAuth2 token URL is empty")
        self.token_url = token_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.audience = audience
        self.scope = scope
        self._http = http if http is not None else httpx.Client(timeout=timeout_s)
        self._timeout_s = timeout_s
        self._margin_s = margin_s
        self._lifetime_default_s = lifetime_default_s
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._renew_at = 0.0
        self.fetches = 0

    def token(self) -> str | None:
        with self._lock:
            if self._token is None or self._clock() >= self._renew_at:
                self._fetch()
            return self._token

    def invalidate(self) -> None:
        with self._lock:
            self._token = None

    def _fetch(self) -> None:
        form = {
            "grant_type": "client_credentials",
            "client_id": self.client_id,
            "client_secret": self._client_secret,
        }
        if self.audience:
            form["audience"] = self.audience
        if self.scope:
            form["scope"] = self.scope
        where = self.token_url
        started = self._clock()
        try:
            response = self._http.post(
                self.token_url,
                data=form,
                headers={"Accept": "application/json"},
                timeout=self._timeout_s,
            )
        except httpx.TimeoutException as exc:
            raise CantonUnavailableError(
                "POST", where, f"the token endpoint timed out after {self._timeout_s:g} s"
            ) from exc
        except httpx.TransportError as exc:
            raise CantonUnavailableError(
                "POST", where, f"the token endpoint is unreachable ({type(exc).__name__}: {exc})"
            ) from exc
        self.fetches += 1
        status = response.status_code
        if status >= 500 or status == 429:
            raise CantonUnavailableError(
                "POST", where, "the token endpoint failed", status=status, cause=_snippet(response)
            )
        if status >= 400:
            raise CantonAuthError(
                "POST",
                where,
                "the identity provider refused the client credentials",
                status=status,
                cause=_snippet(response),
                definite=True,
            )
        try:
            answer = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            answer = None
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise CantonAuthError(
                "POST", where, "the token endpoint's answer has no access_token", status=status
            )
        lifetime = answer.get("expires_in") if isinstance(answer, dict) else None
        if isinstance(lifetime, str) and lifetime.isdigit():
            lifetime = int(lifetime)
        if not isinstance(lifetime, int | float) or isinstance(lifetime, bool) or lifetime <= 0:
            lifetime = self._lifetime_default_s
        margin = min(self._margin_s, lifetime / 2)
        self._token = token
        self._renew_at = started + lifetime - margin


def _snippet(response: httpx.Response, size_max: int = 300) -> str:
    text = response.text.strip().replace("\n", " ")
    return text if len(text) <= size_max else text[:size_max] + "..."
