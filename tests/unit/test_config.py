"""The deployment configuration: a TOML file plus environment overrides, validated at start.

Covers: the embedded defaults with no file; a full Canton deployment file; environment variables
overriding file values (and naming themselves in errors); every problem reported at once with its
key; unknown keys; secrets read from files / environment variables and never printed.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from sluice import bootstrap
from sluice.config import ConfigError, load_config
from sluice.domain.compliance import TierLimits
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId
from tests.conftest import reference_path

TREASURY = "treasury::1220" + "ab" * 32
DSO = "DSO::1220" + "cd" * 32


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return path


def test_no_file_and_no_environment_gives_the_embedded_defaults() -> None:
    config = load_config(None, environ={})
    assert config.ledger.kind == "embedded"
    assert config.database_url == "sqlite:///data/sluice.db"
    assert config.ledger_path == Path("data/ledger.db")
    assert config.treasury.party is None


def test_a_canton_deployment_file_is_read_whole(tmp_path: Path) -> None:
    key = tmp_path / "treasury.key"
    key.write_bytes(b"\x01" * 32)
    secret = tmp_path / "client-secret"
    secret.write_text("s3cret\n")
    path = write(
        tmp_path,
        f"""
[database]
url = "postgresql+psycopg://sluice@db.internal/sluice"

[ledger]
participant_url = "https://validator.example.com/api/json-api/"
user_id = "sluice-ingestion"
timeout_s = 5
page_size = 100

[ledger.auth]
kind = "oauth2"
token_url = "https://auth.example.com/oauth/token"
client_id = "sluice"
client_secret_file = "{secret}"
audience = "https://canton.network.global"

[treasury]
party = "{TREASURY}"
signing_key = "{key}"

[registries.urls]
"{DSO}" = "https://validator.example.com/api/validator/v0/scan-proxy"
""",
    )
    config = load_config(path, environ={})
    assert config.ledger.kind == "canton"  # implied by participant_url
    assert config.ledger.participant_url == "https://validator.example.com/api/json-api"
    assert config.ledger.timeout_s == 5
    assert config.ledger.auth.secret_value() == "s3cret"
    assert config.treasury.party == TREASURY
    assert config.registries.urls[DSO].endswith("/scan-proxy")
    assert config.database_url.startswith("postgresql")


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[ledger]\nparticipant_url = "http://node-a:7575"\n')
    config = load_config(
        path,
        environ={
            "SLUICE_LEDGER_URL": "http://node-b:7575",
            "SLUICE_TREASURY_PARTY": TREASURY,
            "SLUICE_DATABASE_URL": "sqlite:///x.db",
        },
    )
    assert config.ledger.participant_url == "http://node-b:7575"
    assert config.treasury.party == TREASURY
    assert config.database_url == "sqlite:///x.db"


def test_every_problem_is_reported_at_once_with_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[ledger]
kind = "canton"
timeout_s = -1
websockets = true

[ledger.auth]
kind = "oauth2"
client_id = "sluice"

[treasury]
party = "not a party"
signing_key = "/nonexistent/key"
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={"SLUICE_DATABASE_URL": "mysql://x"})
    problems = caught.value.problems
    text = "\n".join(problems)
    assert "ledger.timeout_s" in text
    assert "ledger.websockets: unknown key (misspelt?)" in text
    assert "token_url is required" in text
    assert "client_secret is required" in text
    assert "treasury.party" in text
    assert "treasury.signing_key: no such key file /nonexistent/key" in text
    assert "database.url" in text
    assert "(from SLUICE_DATABASE_URL)" in text
    assert len(problems) >= 6
    assert str(path) in str(caught.value)


def test_canton_needs_a_participant_url() -> None:
    with pytest.raises(ConfigError, match="participant_url is required"):
        load_config(None, environ={"SLUICE_LEDGER_KIND": "canton"})


def test_a_url_that_is_not_http_is_refused() -> None:
    with pytest.raises(ConfigError, match="is not an http/https URL"):
        load_config(None, environ={"SLUICE_LEDGER_URL": "validator:7575"})


def test_a_missing_file_and_bad_toml_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "absent.toml", environ={})
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "[ledger\nkind="), environ={})


def test_secrets_come_from_the_environment_and_are_never_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write(
        tmp_path,
        '[ledger]\nparticipant_url = "http://node:7575"\n'
        '[ledger.auth]\nkind = "hs256"\nsecret_env = "NODE_SECRET"\nuser_id = "sluice"\n',
    )
    monkeypatch.delenv("NODE_SECRET", raising=False)
    with pytest.raises(ConfigError, match="NODE_SECRET is not set"):
        load_config(path, environ={})
    monkeypatch.setenv("NODE_SECRET", "very-secret-value")
    config = load_config(path, environ={})
    assert config.ledger.auth.secret_value() == "very-secret-value"
    inline = load_config(
        None, environ={"SLUICE_LEDGER_TOKEN": "tok-123", "SLUICE_LEDGER_AUTH_KIND": "static"}
    )
    assert inline.ledger.auth.secret_value() == "tok-123"
    assert "tok-123" not in json.dumps(inline.redacted())


def test_the_compliance_section_builds_the_kyc_registry(tmp_path: Path) -> None:
    lists = reference_path("sanctions")
    path = tmp_path / "sluice.toml"
    path.write_text(
        f"""
[compliance]
sanctions_list = "{lists}"
sanctions_prefix = "sample-"
reference_rates = {{ "Amulet" = "0.5" }}

[[compliance.limits]]
tier = 1
operation = "withdrawal"
per_operation = "100"
daily = "250"

[compliance.risk]
threshold = 90
"""
    )
    registry = bootstrap.kyc_registry(load_config(path, environ={}))
    ladder = registry.settings.ladder
    assert ladder.of(1, "withdrawal") == TierLimits(Decimal(100), Decimal(250), None)
    assert ladder.of(1, "deposit").daily == Decimal(1_000_000)  # the default ladder elsewhere
    assert registry.settings.risk.threshold == 90
    assert registry.settings.value(InstrumentId("dso::1220aa", "Amulet"), Decimal(10)) == 5
    assert registry.screen is not None
    listed = registry.screen.screen_address("0x2f389ce8bd8ff92de3402ffce4691d17fc4f6535")
    assert listed is not None and listed.entity_id.startswith("ofac-sdn:")


def test_a_bad_compliance_section_is_refused_clearly(tmp_path: Path) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text(
        """
[compliance]
sanctions_list = "/no/such/dir"

[[compliance.limits]]
tier = 7
operation = "teleport"
"""
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    text = str(caught.value)
    assert "compliance.sanctions_list" in text and "no such directory" in text
    assert "compliance.limits.0.tier" in text and "compliance.limits.0.operation" in text
    path.write_text("[compliance.risk]\nthreshold = 70\nvelocity_weigth = 5\n")
    with pytest.raises(InvalidInputError, match="velocity_weigth"):
        bootstrap.kyc_registry(load_config(path, environ={}))
