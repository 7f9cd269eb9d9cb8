"""What the ``sluice issuance``, ``redeem`` and ``balances`` commands share: the Typer group, the
Integration DB or the whole issuance context for one command, how a refusal is written (on
stderr with the sluice error's code, and under ``--json`` also as the error document on stdout),
and the operation's human summary."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NoReturn

import typer
from rich.table import Table

from sluice import bootstrap
from sluice.cli.common import (
    deployment,
    fail,
    fail_with,
    note,
    open_database,
    print_json,
    print_table,
    timestamp_or_none,
)
from sluice.domain.errors import DuplicateOperationError, SluiceError
from sluice.ports.bitcoin import BitcoinNodeError, NodeUnavailableError

if TYPE_CHECKING:
    from sluice.domain.approvals import Approval

issuance_app = typer.Typer(
    no_args_is_help=True,
    help="iSTSi issuance: the router's operations, its overrides, the mint guard, held deposits.",
)

SANDBOX_NOTE = (
    "sandbox custody: keys made in {directory} on an embedded in-memory regtest chain, for "
    "trying things only (configure [bitcoin] for real custody)"
)
# Exit code when the Bitcoin node could not be reached: the command may simply be tried again.
NODE_UNAVAILABLE_EXIT = 1


# --- refusals ------------------------------------------------------------------------------------


def error_document(exc: SluiceError) -> dict[str, Any]:
    """The error as the HTTP API answers it: ``{code, error, message, details}``."""
    # Imported here: the API's modules are only needed when a command is refused.
    from sluice.api.errors import details_of

    return {"code": exc.code, "error": exc.error, "message": str(exc), "details": details_of(exc)}


def refuse(exc: SluiceError, *, as_json: bool) -> NoReturn:
    """End the command with ``exc``: ``error <code> <name>: message`` on stderr (exit 2); under
    ``--json`` its error document on stdout; a duplicate request also shows the first
    operation (its id names the same request), so a retried script learns what happened."""
    if as_json:
        print_json(error_document(exc))
    elif isinstance(exc, DuplicateOperationError) and exc.first_operation is not None:
        write(["the first request:", *operation_lines(exc.first_operation)])
    fail_with(exc)


@contextmanager
def refusals(*, as_json: bool) -> Iterator[None]:
    """A sluice error ends the command (see :func:`refuse`); a Bitcoin node failure too."""
    try:
        yield
    except SluiceError as exc:
        refuse(exc, as_json=as_json)
    except BitcoinNodeError as exc:
        if isinstance(exc, NodeUnavailableError):
            fail(f"the Bitcoin node is not reachable: {exc}", code=NODE_UNAVAILABLE_EXIT)
        fail(f"the Bitcoin node refused: {exc}")


# --- wiring --------------------------------------------------------------------------------------


@contextmanager
def database_only(db: str | None, *, as_json: bool) -> Iterator[bootstrap.Database]:
    """The Integration DB alone (listing, showing, balances: no ledger, no custody needed)."""
    database = open_database(db or deployment().database_url)
    try:
        with refusals(as_json=as_json):
            yield database
    finally:
        database.dispose()


@contextmanager
def issuance_session(db: str | None, *, as_json: bool) -> Iterator[bootstrap.Issuance]:
    """The whole issuance context (the issuer on the token ledger, the custody, the KYC
    registry, the router) for one command, closed whatever happens."""
    config = deployment()
    database = open_database(db or config.database_url)
    try:
        with refusals(as_json=as_json):
            custody = bootstrap.bitcoin_custody(config)
            try:
                if not custody.configured:
                    directory = bootstrap.bitcoin_directory(config) / "sandbox"
                    note(SANDBOX_NOTE.format(directory=directory))
                issuance = bootstrap.issuance(config, database, custody=custody)
                try:
                    yield issuance
                finally:
                    issuance.close()
            finally:
                custody.close()
    finally:
        database.dispose()


# --- output --------------------------------------------------------------------------------------


def write(lines: Sequence[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")


def operation_lines(op: Mapping[str, Any]) -> list[str]:
    """An operation (its JSON form) for people, a few lines."""
    lines = [
        f"operation {op['id']}: {op['status']} at step {op['step']}",
        f"  {op['type']} of {op['amount_sats']} sats for customer {op['customer_id']}",
        f"  attempts: {op['attempts']}; created {op['created_at']}, updated {op['updated_at']}",
    ]
    if op.get("next_attempt_at"):
        lines.append(f"  next attempt: {op['next_attempt_at']}")
    if op.get("completed_at"):
        lines.append(f"  completed: {op['completed_at']}")
    if op.get("last_error"):
        lines.append(f"  last error: {op['last_error']}")
    for name, value in sorted(dict(op.get("params") or {}).items()):
        lines.append(f"  {name}: {value}")
    for name, value in sorted(dict(op.get("result") or {}).items()):
        lines.append(f"  result.{name}: {value}")
    return lines


def print_steps(steps: Sequence[Mapping[str, Any]]) -> None:
    table = Table(title=f"{len(steps)} step record(s)")
    for column in ("seq", "step", "kind", "outcome", "attempt", "at", "error / detail"):
        table.add_column(column, no_wrap=column in ("seq", "at"))
    for record in steps:
        detail = record["error"] or ", ".join(
            f"{key}={value}" for key, value in sorted(dict(record["detail"]).items())
        )
        table.add_row(
            str(record["seq"]),
            str(record["step"]),
            str(record["kind"]),
            str(record["outcome"]),
            str(record["attempt"]),
            str(record["at"]),
            detail,
        )
    print_table(table)


def approval_json(approval: Approval) -> dict[str, Any]:
    return {
        "id": approval.id,
        "operation": approval.operation,
        "parameters": dict(approval.parameters),
        "status": approval.status,
        "required": approval.required,
        "approvals": len(approval.approvers),
        "proposed_by": approval.proposed_by,
        "proposed_at": timestamp_or_none(approval.proposed_at),
        "executed_at": timestamp_or_none(approval.executed_at),
        "result": dict(approval.result) if approval.result is not None else None,
        "error": approval.error,
        "reason": approval.reason,
    }
