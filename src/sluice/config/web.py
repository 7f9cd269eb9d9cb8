"""The ``[web]`` section: the pages' session lifetimes (short for staff), whether the session
cookie is ``Secure``, how many failed sign-ins a client address gets per minute, and
``[web.oidc]``, the pages' sign-in through the OIDC provider's own page (the authorization-code
flow with PKCE; ``docs/web.md``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from sluice.config.sections import _check_url, _read_secret, _secret, _Section

SECONDS = Annotated[int, Field(ge=60, le=30 * 86_400)]
CALLBACK_PATH = "/login/oidc/callback"


class WebOidcConfig(_Section):
    """sluice as a client of the OIDC provider that ``[api.oidc]`` trusts: staff press "Sign in
    with …" on ``/login`` and come back signed in. ``redirect_uri`` is this site's callback as
    registered with the provider (its path ends in ``/login/oidc/callback``); the provider's
    endpoints come from its discovery document (``<issuer>/.well-known/openid-configuration``)
    unless both are given. A confidential client authenticates with its secret
    (``client_secret``, ``_file`` or ``_env``; ``token_auth`` says how); a public one sends none
    (``token_auth = "none"``) and relies on PKCE alone."""

    client_id: Annotated[str, Field(min_length=1, max_length=255)]
    redirect_uri: str
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    token_auth: Literal["client_secret_basic", "client_secret_post", "none"] = "client_secret_basic"
    authorization_endpoint: str | None = None
    token_endpoint: str | None = None
    scopes: Annotated[str, Field(min_length=1, max_length=500)] = "openid"
    # The button's words: "Sign in with <provider_name>".
    provider_name: Annotated[str, Field(min_length=1, max_length=80)] = "the sign-in provider"

    _check_endpoints = field_validator("authorization_endpoint", "token_endpoint")(_check_url)

    @field_validator("redirect_uri")
    @classmethod
    def _redirect(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"redirect_uri {value!r} is not an http/https URL")
        if not parts.path.endswith(CALLBACK_PATH) or parts.query or parts.fragment:
            raise ValueError(
                f"redirect_uri must be this site's {CALLBACK_PATH} (no query), not {value!r}"
            )
        return value

    @field_validator("scopes")
    @classmethod
    def _scopes(cls, value: str) -> str:
        if "openid" not in value.split():
            raise ValueError("scopes must include 'openid' (the ID token is what signs in)")
        return value

    @model_validator(mode="after")
    def _complete(self) -> WebOidcConfig:
        problems: list[str] = []
        if (self.authorization_endpoint is None) != (self.token_endpoint is None):
            problems.append(
                "give both authorization_endpoint and token_endpoint, or neither (discovery)"
            )
        given = any(
            v is not None
            for v in (self.client_secret, self.client_secret_file, self.client_secret_env)
        )
        if self.token_auth == "none":
            if given:
                problems.append("token_auth = 'none' sends no secret: remove client_secret*")
        else:
            problems += _secret(
                self.client_secret,
                self.client_secret_file,
                self.client_secret_env,
                "client_secret",
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def secret_value(self) -> str | None:
        """The client secret, or None for a public client."""
        if self.token_auth == "none":
            return None
        return _read_secret(self.client_secret, self.client_secret_file, self.client_secret_env)


class WebConfig(_Section):
    staff_idle_s: SECONDS = 15 * 60
    staff_max_s: SECONDS = 8 * 3600
    customer_idle_s: SECONDS = 60 * 60
    customer_max_s: SECONDS = 24 * 3600
    secure_cookies: bool = True
    login_failures_per_minute: Annotated[int, Field(ge=1, le=1000)] = 5
    oidc: WebOidcConfig | None = None

    @model_validator(mode="after")
    def _idle_within_max(self) -> WebConfig:
        for who in ("staff", "customer"):
            if getattr(self, f"{who}_idle_s") > getattr(self, f"{who}_max_s"):
                raise ValueError(f"{who}_idle_s must not exceed {who}_max_s")
        return self
