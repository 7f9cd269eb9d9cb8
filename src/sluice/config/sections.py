"""What every configuration section shares: the section base, URL and secret checks, and
problems raised as pydantic validation errors (so that one load reports all of them)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    SecretStr,
)
from pydantic_core import InitErrorDetails, PydanticCustomError


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
