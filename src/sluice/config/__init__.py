"""Configuration: the embedded defaults, and the file of a real deployment.

A newcomer needs none of it: everything lives under ``./data`` and uses the embedded ledger and
SQLite (:class:`Settings`, read from the environment only).

A real deployment writes a TOML file (``sluice --config FILE`` or ``SLUICE_CONFIG``) naming the
participant node, how to authenticate to it, the treasury party and where its signing key is, and
the registries; environment variables override single values (:data:`ENVIRONMENT_OVERRIDES`).
:func:`load_config` validates everything at start and reports *every* problem at once, each with
where the value came from, so a deployment never starts half-configured. Secrets are read from a
file or an environment variable named in the config (``*_file`` / ``*_env``), or given inline
(discouraged, allowed for local networks); they are never printed.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sluice.config.alerts import AlertsConfig as AlertsConfig
from sluice.config.bitcoin import BitcoinConfig as BitcoinConfig
from sluice.config.breakers import BreakerConfig as BreakerConfig
from sluice.config.breakers import BreakersConfig as BreakersConfig
from sluice.config.events import EventsConfig as EventsConfig
from sluice.config.exchange import ExchangeConfig as ExchangeConfig
from sluice.config.issuance import IssuanceConfig as IssuanceConfig
from sluice.config.oracle import OracleConfig as OracleConfig
from sluice.config.reserves import ReservesConfig as ReservesConfig
from sluice.config.reserves import ToleranceConfig as ToleranceConfig
from sluice.config.sections import (
    _check_url,
    _read_secret,
    _secret,
    _Section,
)
from sluice.config.web import WebConfig as WebConfig
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import check_party_id
from sluice.services.settings import check_setting

# The sections are pydantic models, whose base (in sluice.config.sections) ruff cannot see from
# here: pydantic copies a mutable default for each instance, hence the RUF012 exemptions.


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path
    database_url: str
    ledger_path: Path
    treasury_party: str | None
    node: str

    @classmethod
    def from_environment(cls) -> Settings:
        data_dir = Path(os.environ.get("SLUICE_DATA_DIR", "data"))
        return cls(
            data_dir=data_dir,
            database_url=os.environ.get(
                "SLUICE_DATABASE_URL", f"sqlite:///{data_dir / 'sluice.db'}"
            ),
            ledger_path=Path(os.environ.get("SLUICE_LEDGER_PATH", str(data_dir / "ledger.db"))),
            treasury_party=os.environ.get("SLUICE_TREASURY_PARTY") or None,
            node=os.environ.get("SLUICE_LEDGER_NODE", "exchange"),
        )


# --- the deployment file -----------------------------------------------------------------------


class ConfigError(InvalidInputError):
    """The configuration is not usable; ``problems`` lists each one as ``"key: problem"``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"configuration {source} has {len(problems)} problem(s):\n{listed}")


class LedgerAuthConfig(_Section):
    """How sluice authenticates to the participant's Ledger API (a bearer JWT)."""

    kind: Literal["none", "static", "hs256", "oauth2"] = "none"
    # static: a token issued elsewhere
    token: SecretStr | None = None
    token_file: Path | None = None
    token_env: str | None = None
    # hs256: sluice signs its own tokens (local networks whose node trusts a shared secret)
    secret: SecretStr | None = None
    secret_file: Path | None = None
    secret_env: str | None = None
    user_id: str | None = None
    audience: str | None = None
    # oauth2: client credentials against the identity provider
    token_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    client_secret_env: str | None = None
    scope: str | None = None

    _check_token_url = field_validator("token_url")(_check_url)

    @model_validator(mode="after")
    def _complete(self) -> LedgerAuthConfig:
        problems: list[str] = []
        if self.kind == "static":
            problems += _secret(self.token, self.token_file, self.token_env, "token")
        elif self.kind == "hs256":
            problems += _secret(self.secret, self.secret_file, self.secret_env, "secret")
        elif self.kind == "oauth2":
            if not self.token_url:
                problems.append("token_url is required for kind = 'oauth2'")
            if not self.client_id:
                problems.append("client_id is required for kind = 'oauth2'")
            problems += _secret(
                self.client_secret,
                self.client_secret_file,
                self.client_secret_env,
                "client_secret",
            )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def secret_value(self) -> str:
        """The token (static), the signing secret (hs256) or the client secret (oauth2)."""
        if self.kind == "static":
            return _read_secret(self.token, self.token_file, self.token_env)
        if self.kind == "hs256":
            return _read_secret(self.secret, self.secret_file, self.secret_env)
        if self.kind == "oauth2":
            return _read_secret(self.client_secret, self.client_secret_file, self.client_secret_env)
        raise InvalidInputError("no secret for ledger auth kind 'none'")


class LedgerConfig(_Section):
    """Which ledger sluice reads and submits to."""

    kind: Literal["embedded", "canton"] = "embedded"
    # embedded: the embedded ledger's file and the node the treasury is on
    path: Path | None = None
    node: str = "exchange"
    # canton: the participant's JSON Ledger API (e.g. https://validator.example.com/api/json-api)
    participant_url: str | None = None
    user_id: str | None = None
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    retries_max: Annotated[int, Field(ge=0, le=20)] = 4
    page_size: Annotated[int, Field(ge=1, le=10_000)] = 200
    websocket: bool = True
    # A local party's command is submitted only while this much is left before its deadline.
    local_margin_s: Annotated[float, Field(ge=0, le=3600)] = 90.0
    auth: LedgerAuthConfig = LedgerAuthConfig()

    _check_participant_url = field_validator("participant_url")(_check_url)

    @model_validator(mode="after")
    def _complete(self) -> LedgerConfig:
        if self.kind == "canton" and not self.participant_url:
            raise ValueError("participant_url is required for kind = 'canton'")
        if self.auth.kind == "hs256" and not self.token_subject:
            raise ValueError(
                "auth.user_id (or user_id) is required for auth kind = 'hs256': the token's subject"
            )
        return self

    @property
    def token_subject(self) -> str | None:
        """The Ledger API user a self-signed token names."""
        return self.auth.user_id or self.user_id


class TreasuryConfig(_Section):
    """The exchange's treasury party and, for an external party, its Ed25519 signing key."""

    party: str | None = None
    signing_key: Path | None = None

    @field_validator("party")
    @classmethod
    def _party(cls, value: str | None) -> str | None:
        return None if value is None else check_party_id(value)

    @field_validator("signing_key")
    @classmethod
    def _key(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"no such key file {value}")
        return value


class DatabaseConfig(_Section):
    url: str | None = None

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError(f"{value!r} is not a sqlite:// or postgresql:// URL")
        return value


class RegistriesConfig(_Section):
    """Registry URLs by admin party, used for instruments onboarded without ``--registry-url``
    (onboarding's URL, kept in the Integration DB, always wins)."""

    urls: dict[str, str] = {}  # noqa: RUF012
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0

    @field_validator("urls")
    @classmethod
    def _urls(cls, value: dict[str, str]) -> dict[str, str]:
        checked: dict[str, str] = {}
        for admin, url in value.items():
            check_party_id(admin)
            checked[admin] = _check_url(url) or url
        return checked


class LimitConfig(_Section):
    """One (tier, operation) of the limit ladder; an absent limit means none."""

    tier: Annotated[int, Field(ge=0, le=4)]
    operation: Literal["deposit", "withdrawal", "mint", "burn", "transfer", "exchange"]
    per_operation: Annotated[Decimal, Field(ge=0)] | None = None
    daily: Annotated[Decimal, Field(ge=0)] | None = None
    monthly: Annotated[Decimal, Field(ge=0)] | None = None


class ComplianceConfig(_Section):
    """The KYC registry: where the sanctions list is, the limit ladder (over DESIGN §6's default
    ladder), the risk rules and the reference rate of each instrument (key ``admin::id`` or id)."""

    sanctions_list: Path | None = None
    sanctions_prefix: str | None = None
    limits: list[LimitConfig] = []  # noqa: RUF012
    risk: dict[str, Any] = {}  # noqa: RUF012
    reference_rates: dict[str, Annotated[Decimal, Field(gt=0)]] = {}  # noqa: RUF012

    @field_validator("sanctions_list")
    @classmethod
    def _list(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"no such directory {value}")
        return value


# The token signature algorithms an OIDC provider may use: asymmetric only, since a shared
# secret would let anyone who can verify tokens also mint them.
JWT_ALGORITHMS = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)


class OidcConfig(_Section):
    """Bearer tokens from an OpenID Connect provider: who issues them, for which audience, and
    where its public keys are (``jwks_url``, or a ``jwks_file`` for a provider without one)."""

    issuer: Annotated[str, Field(min_length=1)]
    audience: Annotated[str, Field(min_length=1)]
    jwks_url: str | None = None
    jwks_file: Path | None = None
    algorithms: tuple[str, ...] = ("RS256", "ES256")
    role_claim: Annotated[str, Field(min_length=1)] = "sluice_role"
    customer_claim: Annotated[str, Field(min_length=1)] = "sluice_customer"
    leeway_s: Annotated[float, Field(ge=0, le=600)] = 30.0

    @field_validator("jwks_url")
    @classmethod
    def _jwks_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"{value!r} is not an http/https URL")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        refused = [a for a in value if a not in JWT_ALGORITHMS]
        if not value or refused:
            raise ValueError(
                f"algorithms must be some of {', '.join(JWT_ALGORITHMS)} (asymmetric only)"
                + (f"; not {', '.join(refused)}" if refused else "")
            )
        return value

    @model_validator(mode="after")
    def _keys(self) -> OidcConfig:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError("give exactly one of jwks_url and jwks_file")
        if self.jwks_file is not None and not self.jwks_file.is_file():
            raise ValueError(f"jwks_file: no such file {self.jwks_file}")
        return self


class ApiConfig(_Section):
    """The HTTP API: where it listens, the OIDC provider whose tokens it accepts (API keys work
    without one), and the defaults of the run-time settings (``approvals.required``,
    ``config.timelock_s``, ``withdrawals.approval_above``, ``rate_limits.*``), which approved
    changes override while sluice runs."""

    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 8080
    oidc: OidcConfig | None = None
    settings: dict[str, Any] = {}  # noqa: RUF012
    # Request bodies over this many bytes are answered 413 unread (the API and the pages).
    max_body_bytes: Annotated[int, Field(ge=1024, le=1024**3)] = 1024 * 1024

    @field_validator("settings")
    @classmethod
    def _settings(cls, value: dict[str, Any]) -> dict[str, Any]:
        problems: list[str] = []
        for key, item in value.items():
            try:
                check_setting(key, item)
            except InvalidInputError as exc:
                problems.append(str(exc))
        if problems:
            raise ValueError("; ".join(problems))
        return value


class DeploymentConfig(_Section):
    data_dir: Path = Path("data")
    database: DatabaseConfig = DatabaseConfig()
    ledger: LedgerConfig = LedgerConfig()
    treasury: TreasuryConfig = TreasuryConfig()
    registries: RegistriesConfig = RegistriesConfig()
    compliance: ComplianceConfig = ComplianceConfig()
    api: ApiConfig = ApiConfig()
    # Bitcoin custody; absent: the sandbox custody on the embedded chain (`sluice btc …` only,
    # never run by `sluice serve` or `sluice workers run`).
    bitcoin: BitcoinConfig | None = None
    # iSTSi issuance (runs where Bitcoin custody and an issuer ledger are available).
    issuance: IssuanceConfig = IssuanceConfig()
    # Reserves, reconciliation and proof of reserves.
    reserves: ReservesConfig = ReservesConfig()
    # Events: the outbox's relay to NATS JetStream or the in-process bus.
    events: EventsConfig = EventsConfig()
    # Alert rules and notification.
    alerts: AlertsConfig = AlertsConfig()
    # Circuit breakers, one per flow.
    breakers: BreakersConfig = BreakersConfig()
    # Price feeds for the cross-token exchange (none by default).
    oracle: OracleConfig = OracleConfig()
    # The cross-token exchange: pairs, fees, quotes, price impact and inventory.
    exchange: ExchangeConfig = ExchangeConfig()
    web: WebConfig = WebConfig()

    @model_validator(mode="after")
    def _web_oidc(self) -> DeploymentConfig:
        if self.web.oidc is not None and self.api.oidc is None:
            raise ValueError(
                "[web.oidc] signs staff in with the provider [api.oidc] trusts: configure "
                "[api.oidc] (issuer, keys, claims) too"
            )
        return self

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'sluice.db'}"

    @property
    def ledger_path(self) -> Path:
        return self.ledger.path or self.data_dir / "ledger.db"

    @property
    def por_secret_path(self) -> Path:
        return self.reserves.por_secret_file or self.data_dir / "por-secret"

    def redacted(self) -> dict[str, Any]:
        """The resolved configuration as JSON, secrets shown as ``***``."""
        return self.model_dump(mode="json")


# Environment variables that override one value each (applied over the file).
ENVIRONMENT_OVERRIDES: Mapping[str, tuple[str, ...]] = {
    "SLUICE_DATA_DIR": ("data_dir",),
    "SLUICE_DATABASE_URL": ("database", "url"),
    "SLUICE_LEDGER_KIND": ("ledger", "kind"),
    "SLUICE_LEDGER_URL": ("ledger", "participant_url"),
    "SLUICE_LEDGER_PATH": ("ledger", "path"),
    "SLUICE_LEDGER_NODE": ("ledger", "node"),
    "SLUICE_LEDGER_USER_ID": ("ledger", "user_id"),
    "SLUICE_LEDGER_AUTH_KIND": ("ledger", "auth", "kind"),
    "SLUICE_LEDGER_TOKEN": ("ledger", "auth", "token"),
    "SLUICE_LEDGER_AUTH_SECRET": ("ledger", "auth", "secret"),
    "SLUICE_LEDGER_CLIENT_ID": ("ledger", "auth", "client_id"),
    "SLUICE_LEDGER_CLIENT_SECRET": ("ledger", "auth", "client_secret"),
    "SLUICE_LEDGER_TOKEN_URL": ("ledger", "auth", "token_url"),
    "SLUICE_TREASURY_PARTY": ("treasury", "party"),
    "SLUICE_TREASURY_SIGNING_KEY": ("treasury", "signing_key"),
    "SLUICE_SANCTIONS_LIST": ("compliance", "sanctions_list"),
    "SLUICE_SANCTIONS_PREFIX": ("compliance", "sanctions_prefix"),
    "SLUICE_API_HOST": ("api", "host"),
    "SLUICE_API_PORT": ("api", "port"),
    "SLUICE_BITCOIN_NETWORK": ("bitcoin", "network"),
    "SLUICE_BITCOIN_RPC_URL": ("bitcoin", "rpc_url"),
    "SLUICE_BITCOIN_RPC_USER": ("bitcoin", "rpc_user"),
    "SLUICE_BITCOIN_RPC_PASSWORD": ("bitcoin", "rpc_password"),
    "SLUICE_BITCOIN_RPC_COOKIE_FILE": ("bitcoin", "rpc_cookie_file"),
}


def load_config(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> DeploymentConfig:
    """The deployment configuration: the TOML file at ``path`` (if any) with the environment's
    overrides applied, validated. :class:`ConfigError` lists every problem found."""
    environ = os.environ if environ is None else environ
    source = str(path) if path is not None else "(environment)"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(source, [f"no such file {path}"]) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(source, [f"not valid TOML: {exc}"]) from None
    origin: dict[tuple[str, ...], str] = {}
    for name, keys in ENVIRONMENT_OVERRIDES.items():
        value = environ.get(name)
        if not value:
            continue
        section = data
        for key in keys[:-1]:
            section = section.setdefault(key, {})
            if not isinstance(section, dict):
                raise ConfigError(source, [f"{'.'.join(keys[:-1])}: must be a table"])
        section[keys[-1]] = value
        origin[keys] = name
    ledger = data.get("ledger")
    if isinstance(ledger, dict) and ledger.get("participant_url") and "kind" not in ledger:
        ledger["kind"] = "canton"
    try:
        return DeploymentConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(source, [_problem(error, origin) for error in exc.errors()]) from None


def _problem(error: Mapping[str, Any], origin: Mapping[tuple[str, ...], str]) -> str:
    location = tuple(str(part) for part in error.get("loc", ()))
    key = ".".join(location) or "(top level)"
    message = str(error.get("msg", "invalid"))
    message = message.removeprefix("Value error, ")
    if error.get("type") == "extra_forbidden":
        message = "unknown key (misspelt?)"
    env = origin.get(location)
    return f"{key}: {message}" + (f" (from {env})" if env else "")
