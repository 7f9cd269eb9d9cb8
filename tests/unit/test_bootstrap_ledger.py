"""Wiring a ledger connection from the deployment configuration.

Covers: each ``[ledger.auth]`` kind gives the matching token source (and a self-signed token names
the configured user); an instrument's registry URL is onboarding's (from the Integration DB)
before the configuration's; the Canton connection keeps one cursor name per participant URL; an
embedded ledger file that does not exist is refused clearly.
"""

from __future__ import annotations

from pathlib import Path

import jwt
import pytest

from sluice import bootstrap
from sluice.config import load_config
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId
from sluice.ledger.canton import (
    NoAuth,
    OAuth2ClientCredentials,
    SelfSignedToken,
    StaticToken,
)
from sluice.services.reference import onboard_instrument

ADMIN = "dso::1220" + "aa" * 32
OTHER = "issuer::1220" + "bb" * 32


def test_each_auth_kind_gives_its_token_source() -> None:
    def source(**env: str) -> object:
        return bootstrap.token_source(load_config(None, environ=env).ledger)

    assert isinstance(source(), NoAuth)
    static = source(SLUICE_LEDGER_AUTH_KIND="static", SLUICE_LEDGER_TOKEN="tok")
    assert isinstance(static, StaticToken)
    assert static.token() == "tok"
    signed = source(
        SLUICE_LEDGER_AUTH_KIND="hs256",
        SLUICE_LEDGER_AUTH_SECRET="s" * 32,
        SLUICE_LEDGER_USER_ID="sluice",
    )
    assert isinstance(signed, SelfSignedToken)
    oauth = source(
        SLUICE_LEDGER_AUTH_KIND="oauth2",
        SLUICE_LEDGER_TOKEN_URL="https://auth.example.com/token",
        SLUICE_LEDGER_CLIENT_ID="sluice",
        SLUICE_LEDGER_CLIENT_SECRET="pw",
    )
    assert isinstance(oauth, OAuth2ClientCredentials)


def test_a_self_signed_token_names_the_configured_user(tmp_path: Path) -> None:
    config_file = tmp_path / "c.toml"
    config_file.write_text(
        '[ledger.auth]\nkind = "hs256"\nsecret = "' + "k" * 32 + '"\nuser_id = "ingestion"\n'
    )
    auth = bootstrap.token_source(load_config(config_file, environ={}).ledger)
    token = auth.token()
    assert token is not None
    claims = jwt.decode(token, "k" * 32, algorithms=["HS256"], options={"verify_aud": False})
    assert claims["sub"] == "ingestion"


def test_the_registry_url_comes_from_onboarding_before_the_configuration() -> None:
    database = bootstrap.database("sqlite://")
    try:
        coin = InstrumentId(ADMIN, "Amulet")
        token = InstrumentId(OTHER, "USDX")
        onboard_instrument(database.uow, coin, registry_url="https://onboarded.example.com/r")
        onboard_instrument(database.uow, token)
        url_of = bootstrap.registry_urls(
            database.uow,
            {ADMIN: "https://configured.example.com/a", OTHER: "https://configured.example.com/b"},
        )
        assert url_of(coin) == "https://onboarded.example.com/r"
        assert url_of(token) == "https://configured.example.com/b"
        assert url_of(InstrumentId("x::1220" + "cc" * 32, "X")) is None
    finally:
        database.dispose()


def test_a_participant_keeps_one_cursor_name_per_url() -> None:
    assert bootstrap.participant_node("https://node.example.com:7575/api/json/") == (
        "node.example.com:7575/api/json"
    )
    assert bootstrap.participant_node("http://127.0.0.1:7575") == "127.0.0.1:7575"


def test_a_missing_embedded_ledger_file_is_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="no embedded ledger at"):
        bootstrap.embedded_connection(tmp_path / "absent.db", "exchange", writable=False)


def test_canton_needs_a_participant_url() -> None:
    database = bootstrap.database("sqlite://")
    try:
        with pytest.raises(InvalidInputError, match="no participant URL"):
            bootstrap.canton_connection(load_config(None, environ={}), database)
    finally:
        database.dispose()
