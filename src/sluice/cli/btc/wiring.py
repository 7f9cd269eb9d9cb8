"""The `sluice btc` command groups' shared wiring: the Typer groups, the custody and Integration
DB for one command, and how results and node failures are written."""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, NoReturn

import typer

from sluice import bootstrap
from sluice.cli.common import (
    deployment,
    fail,
    fail_with,
    log_to_stderr,
    note,
    open_database,
    timestamp_or_none,
)
from sluice.domain.errors import SluiceError
from sluice.ports.bitcoin import BitcoinNodeError, NodeUnavailableError

if TYPE_CHECKING:
    from sluice.bitcoin.chainfile import ChainFile

btc_app = typer.Typer(
    no_args_is_help=True,
    help="Bitcoin custody: keys, deposit addresses, deposits, payouts, the watcher, the sandbox.",
)
custody_app = typer.Typer(no_args_is_help=True, help="The custody's keys and descriptor.")
sandbox_app = typer.Typer(
    no_args_is_help=True,
    help="The embedded chain (no node configured): fund an address, mine blocks, make a reorg.",
)
btc_app.add_typer(custody_app, name="custody")
btc_app.add_typer(sandbox_app, name="sandbox")

SANDBOX_NOTE = (
    "sandbox custody: keys made in {directory} on an embedded in-memory regtest chain, for "
    "trying things only (configure [bitcoin] for real custody)"
)
# Exit code when the node could not be reached: the command may simply be tried again.
NODE_UNAVAILABLE_EXIT = 1


# --- wiring --------------------------------------------------------------------------------------


def _node_failed(exc: BitcoinNodeError) -> NoReturn:
    if isinstance(exc, NodeUnavailableError):
        fail(f"the Bitcoin node is not reachable: {exc}", code=NODE_UNAVAILABLE_EXIT)
    fail(f"the Bitcoin node refused: {exc}")


def _custody() -> bootstrap.BitcoinCustody:
    log_to_stderr()
    config = deployment()
    try:
        custody = bootstrap.bitcoin_custody(config)
    except SluiceError as exc:
        fail_with(exc)
    if not custody.configured:
        note(SANDBOX_NOTE.format(directory=bootstrap.bitcoin_directory(config) / "sandbox"))
    return custody


@contextmanager
def _custody_only() -> Iterator[bootstrap.BitcoinCustody]:
    """Custody without the Integration DB; a refusal or a node failure ends the command."""
    custody = _custody()
    try:
        yield custody
    except SluiceError as exc:
        fail_with(exc)
    except BitcoinNodeError as exc:
        _node_failed(exc)
    finally:
        custody.close()


@contextmanager
def _session(
    db: str | None,
) -> Iterator[tuple[bootstrap.BitcoinCustody, bootstrap.Database]]:
    """Custody and the Integration DB for one command, both closed whatever happens."""
    with _custody_only() as custody:
        database = open_database(db or deployment().database_url)
        try:
            yield custody, database
        finally:
            database.dispose()


def _sandbox(custody: bootstrap.BitcoinCustody) -> ChainFile:
    if custody.sandbox is None:
        fail(
            "`sluice btc sandbox` works on the embedded chain only; this configuration names a "
            f"real node ({custody.description}): fund, mine and reorg through the node itself"
        )
    return custody.sandbox


def _plain(value: object) -> object:
    """A service's record as JSON: dataclasses by field, Decimals exact, times as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return timestamp_or_none(value)
    return value


def _write(lines: list[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")


def _record_json(value: object) -> dict[str, Any]:
    record = _plain(value)
    assert isinstance(record, dict)
    return record
