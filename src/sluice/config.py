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
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sluice.domain.chains import CHAINS, chain_named
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import check_party_id
from sluice.services.settings import check_setting


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


def _check_url(value: str | None, *, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in schemes or not parts.netloc:
        raise ValueError(f"{value!r} is not an {'/'.join(schemes)} URL")
    return value.rstrip("/")


def _secret(inline: SecretStr | None, file: Path | None, env: str | None, name: str) -> list[str]:
    """Problems with one secret given in one of three ways (an empty list when it is fine)."""
    given = [k for k, v in (("", inline), ("_file", file), ("_env", env)) if v is not None]
    if not given:
        return [f"{name} is required (or {name}_file / {name}_env)"]
    if len(given) > 1:
        return [f"give one of {', '.join(name + g for g in given)}, not several"]
    if file is not None and not file.is_file():
        return [f"{name}_file: no such file {file}"]
    if env is not None and not os.environ.get(env):
        return [f"{name}_env: the environment variable {env} is not set"]
    return []


def _detail(error: Any) -> InitErrorDetails:
    """A validation error as pydantic reports it, to be raised again with others."""
    kind = error["type"]
    if kind == "value_error":
        message = str(error["msg"]).removeprefix("Value error, ")
        return InitErrorDetails(
            type=PydanticCustomError("value_error", message), loc=error["loc"], input=error["input"]
        )
    return InitErrorDetails(
        type=kind, loc=error["loc"], input=error["input"], ctx=error.get("ctx", {})
    )


def _located(problem: str, data: Any) -> InitErrorDetails:
    """``"key: message"`` (or a message about the section) as a validation error at that key."""
    key, separator, message = problem.partition(": ")
    if separator and key.isidentifier():
        return InitErrorDetails(
            type=PydanticCustomError("value_error", message), loc=(key,), input=data
        )
    return InitErrorDetails(type=PydanticCustomError("value_error", problem), loc=(), input=data)


def _read_secret(inline: SecretStr | None, file: Path | None, env: str | None) -> str:
    if inline is not None:
        return inline.get_secret_value()
    if file is not None:
        return file.read_text().strip()
    assert env is not None
    return os.environ[env]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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

    urls: dict[str, str] = {}
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
    limits: list[LimitConfig] = []
    risk: dict[str, Any] = {}
    reference_rates: dict[str, Annotated[Decimal, Field(gt=0)]] = {}

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
    settings: dict[str, Any] = {}

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


class BitcoinConfig(_Section):
    """Bitcoin custody: the network, the node (none: the embedded in-memory chain under the data
    directory), the custody's 2-of-3 descriptor and the key files this process signs with, and
    the watcher's and the payouts' settings (:class:`~sluice.services.bitcoin_settings.
    BitcoinSettings`).

    The node's password is given in exactly one way: inline (discouraged), in a file, or as the
    node's cookie file (``<datadir>/.cookie``, rewritten at every start of the node, so it is
    read when connecting, not checked here). A key file entry is a path or ``env:NAME``."""

    network: str = "regtest"
    rpc_url: str | None = None
    rpc_user: str | None = None
    rpc_password: SecretStr | None = None
    rpc_password_file: Path | None = None
    rpc_cookie_file: Path | None = None
    rpc_timeout_s: Annotated[float, Field(gt=0, le=600)] = 10.0
    descriptor: Annotated[str, Field(min_length=1)]
    key_files: list[Annotated[str, Field(min_length=1)]] = []
    confirmations_min: Annotated[int, Field(ge=1, le=1000)] = 6
    fee_target_blocks: Annotated[int, Field(ge=1, le=1008)] = 6
    fee_rate_min_sat_vb: Annotated[Decimal, Field(gt=0, le=100_000)] = Decimal(2)
    fee_rate_max_sat_vb: Annotated[Decimal, Field(gt=0, le=100_000)] = Decimal(200)
    payout_fee_max_sats: Annotated[int, Field(ge=0)] = 50_000
    payout_batch_max: Annotated[int, Field(ge=1, le=1000)] = 50
    payout_batch_window_s: Annotated[float, Field(ge=0, le=86_400)] = 60.0
    payout_bump_after_blocks: Annotated[int, Field(ge=1, le=1000)] = 3
    watch_start_height: Annotated[int, Field(ge=0)] = 0

    _check_rpc_url = field_validator("rpc_url")(_check_url)

    @field_validator("network")
    @classmethod
    def _network(cls, value: str) -> str:
        if value not in CHAINS:
            raise ValueError(f"unknown network {value!r}: expected one of {', '.join(CHAINS)}")
        return value

    @model_validator(mode="wrap")
    @classmethod
    def _everything(cls, data: Any, handler: ModelWrapValidatorHandler[BitcoinConfig]) -> Any:
        """Every problem at once: pydantic skips the checks across keys when one key is already
        invalid, so on that path they are run here over the keys that were valid."""
        try:
            config = handler(data)
        except ValidationError as exc:
            errors = exc.errors()
            if not isinstance(data, Mapping) or any(not e["loc"] for e in errors):
                raise
            failed = {str(e["loc"][0]) for e in errors}
            valid: dict[str, Any] = {}
            for key, value in data.items():
                field = cls.model_fields.get(str(key))
                if field is not None and key not in failed:
                    valid[str(key)] = TypeAdapter(field.rebuild_annotation()).validate_python(value)
            partial = cls.model_construct(**valid)
            extra = partial._problems(failed)
            if not extra:
                raise
            details = [_detail(e) for e in errors] + [_located(p, data) for p in extra]
            raise ValidationError.from_exception_data(exc.title, details) from None
        problems = config._problems(set())
        if problems:
            located = [_located(p, data) for p in problems]
            raise ValidationError.from_exception_data(cls.__name__, located)
        return config

    def _problems(self, failed: set[str]) -> list[str]:
        """The checks across keys, each skipped when a key it needs is already invalid."""
        problems: list[str] = []
        if not failed & {
            "rpc_url",
            "rpc_user",
            "rpc_password",
            "rpc_password_file",
            "rpc_cookie_file",
        }:
            problems += self._node_problems()
        if "key_files" not in failed:
            problems += self._key_problems()
        if not failed & {"fee_rate_min_sat_vb", "fee_rate_max_sat_vb"} and (
            self.fee_rate_min_sat_vb > self.fee_rate_max_sat_vb
        ):
            problems.append(
                f"fee_rate_min_sat_vb: {self.fee_rate_min_sat_vb} must not exceed "
                f"fee_rate_max_sat_vb ({self.fee_rate_max_sat_vb})"
            )
        if not failed & {"network", "descriptor"}:
            problems += self._descriptor_problems()
        return problems

    def _node_problems(self) -> list[str]:
        given = [
            name
            for name, value in (
                ("rpc_password", self.rpc_password),
                ("rpc_password_file", self.rpc_password_file),
                ("rpc_cookie_file", self.rpc_cookie_file),
            )
            if value is not None
        ]
        if self.rpc_url is None:
            stray = given + (["rpc_user"] if self.rpc_user is not None else [])
            if stray:
                stray_keys = ", ".join(stray)
                return [f"rpc_url: required with {stray_keys} (no node to authenticate to)"]
            return []
        if urlsplit(self.rpc_url).password is not None:
            return ["rpc_url: holds a password; give it as rpc_password_file instead"]
        if not given:
            return ["rpc_url: needs one of rpc_password, rpc_password_file, rpc_cookie_file"]
        if len(given) > 1:
            return [f"give one of {', '.join(given)}, not several"]
        problems: list[str] = []
        if self.rpc_cookie_file is not None:
            if self.rpc_user is not None:
                problems.append("rpc_user: not used with rpc_cookie_file (the cookie names it)")
        elif not self.rpc_user:
            problems.append(f"rpc_user: required with {given[0]}")
        if self.rpc_password_file is not None and not self.rpc_password_file.is_file():
            problems.append(f"rpc_password_file: no such file {self.rpc_password_file}")
        return problems

    def _key_problems(self) -> list[str]:
        problems: list[str] = []
        if len(set(self.key_files)) != len(self.key_files):
            problems.append("key_files: the same key is named twice")
        for entry in self.key_files:
            if entry.startswith("env:"):
                name = entry.removeprefix("env:")
                if not name or not os.environ.get(name):
                    problems.append(f"key_files: the environment variable {name!r} is not set")
            elif not Path(entry).is_file():
                problems.append(f"key_files: no such file {entry}")
        return problems

    def _descriptor_problems(self) -> list[str]:
        # Imported here: the descriptor is checked with the wallet's own parser (embit), which
        # a command that never touches custody need not load.
        from sluice.bitcoin.wallet import parse_descriptor

        try:
            parse_descriptor(self.descriptor, chain_named(self.network))
        except InvalidInputError as exc:
            return [f"descriptor: {exc}"]
        return []

    @property
    def embedded(self) -> bool:
        """No node configured: the embedded in-memory chain under the data directory."""
        return self.rpc_url is None

    def rpc_password_value(self) -> str | None:
        """The node's password (inline or from its file); None with a cookie file."""
        if self.rpc_password is not None:
            return self.rpc_password.get_secret_value()
        if self.rpc_password_file is not None:
            return self.rpc_password_file.read_text().strip()
        return None


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

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_dir / 'sluice.db'}"

    @property
    def ledger_path(self) -> Path:
        return self.ledger.path or self.data_dir / "ledger.db"

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
