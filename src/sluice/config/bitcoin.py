"""The ``[bitcoin]`` section of the deployment file: Bitcoin custody's network, node, descriptor,
key files, and the watcher's and the payouts' settings."""

from __future__ import annotations

import os
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import (
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from sluice.config.sections import _check_url, _detail, _located, _Section

# The sections are pydantic models, whose base (in sluice.config.sections) ruff cannot see from
# here: pydantic copies a mutable default for each instance, hence the RUF012 exemptions.
from sluice.domain.chains import CHAINS, chain_named
from sluice.domain.errors import InvalidInputError


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
    key_files: list[Annotated[str, Field(min_length=1)]] = []  # noqa: RUF012
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
