"""The ``[api]`` section of the deployment configuration: where the HTTP API listens, the OIDC
provider it trusts, and the defaults of the run-time settings.

Covers: the defaults with no file; a full section read from TOML and turned into the verifier's
settings; environment overrides of host and port; every problem (bad port, OIDC without keys or
with both kinds, a shared-secret algorithm, a setting out of range or unknown) reported with its
key.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path

import pytest

from sluice.api.oidc import OidcSettings
from sluice.config import ConfigError, load_config
from sluice.services.settings import RuntimeSettings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return path


def test_without_a_file_the_api_listens_locally_with_built_in_settings() -> None:
    config = load_config(None, environ={})
    assert config.api.host == "127.0.0.1"
    assert config.api.port == 8080
    assert config.api.oidc is None
    assert config.api.settings == {}


def test_an_api_section_is_read_whole(tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": []}))
    path = write(
        tmp_path,
        f"""
[api]
host = "0.0.0.0"
port = 9000

[api.oidc]
issuer = "https://id.example.com/realms/exchange"
audience = "sluice-api"
jwks_file = "{jwks}"
algorithms = ["RS256"]
role_claim = "role"
leeway_s = 10

[api.settings]
"approvals.required" = 3
"config.timelock_s" = 3600
"withdrawals.approval_above" = "25000.50"
"rate_limits.key_per_s" = 20
""",
    )
    config = load_config(path, environ={})
    assert (config.api.host, config.api.port) == ("0.0.0.0", 9000)
    oidc = config.api.oidc
    assert oidc is not None
    settings = OidcSettings(**oidc.model_dump())
    assert settings.algorithms == ("RS256",)
    assert settings.role_claim == "role"
    assert settings.customer_claim == "sluice_customer"
    assert settings.jwks_file == jwks


def test_the_settings_section_becomes_the_runtime_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[api.settings]
"approvals.required" = 3
"withdrawals.approval_above" = "25000.50"
"rate_limits.global_burst" = 10
""",
    )
    config = load_config(path, environ={})
    settings = RuntimeSettings(
        lambda: pytest.fail("no database read expected"),  # type: ignore[arg-type,return-value]
        config.api.settings,
        clock=lambda: pytest.fail("no clock read expected"),  # type: ignore[arg-type,return-value]
    )
    assert settings.default("approvals.required") == 3
    assert settings.default("withdrawals.approval_above") == Decimal("25000.50")
    assert settings.default("rate_limits.global_burst") == 10
    assert settings.default("config.timelock_s") == 86_400.0


def test_the_environment_overrides_host_and_port() -> None:
    config = load_config(None, environ={"SLUICE_API_HOST": "::", "SLUICE_API_PORT": "8443"})
    assert (config.api.host, config.api.port) == ("::", 8443)
    with pytest.raises(ConfigError, match=r"api\.port.*\(from SLUICE_API_PORT\)"):
        load_config(None, environ={"SLUICE_API_PORT": "http"})


def test_every_problem_of_the_api_section_is_reported_with_its_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[api]
port = 70000
colour = "blue"

[api.settings]
"approvals.required" = 0
"approvals.requird" = 2
"withdrawals.approval_above" = "lots"
""",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    problems = "\n".join(caught.value.problems)
    assert "api.port:" in problems
    assert "api.colour: unknown key" in problems
    assert "approvals.required: 0 is out of range" in problems
    assert "unknown setting 'approvals.requird'" in problems
    assert "withdrawals.approval_above: expected a decimal amount" in problems


@pytest.mark.parametrize(
    ("oidc", "problem"),
    [
        ('issuer = "https://id"\naudience = "a"', "exactly one of jwks_url and jwks_file"),
        (
            'issuer = "https://id"\naudience = "a"\njwks_url = "https://id/certs"\n'
            'jwks_file = "/etc/hosts"',
            "exactly one of jwks_url and jwks_file",
        ),
        ('issuer = "https://id"\naudience = "a"\njwks_url = "ftp://id/certs"', "http/https URL"),
        ('issuer = "https://id"\naudience = "a"\njwks_file = "/no/such/jwks.json"', "no such"),
        (
            'issuer = "https://id"\naudience = "a"\njwks_url = "https://id/certs"\n'
            'algorithms = ["HS256"]',
            "asymmetric only",
        ),
        ('audience = "a"\njwks_url = "https://id/certs"', "api.oidc.issuer"),
    ],
)
def test_an_unusable_oidc_section_is_refused(tmp_path: Path, oidc: str, problem: str) -> None:
    path = write(tmp_path, f"[api.oidc]\n{oidc}\n")
    with pytest.raises(ConfigError, match=problem):
        load_config(path, environ={})
