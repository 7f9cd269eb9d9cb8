"""``sluice audit``: verify the audit trail's hash chain, list its records."""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from sluice.cli.common import DbOption, note, open_database, timestamp_or_none
from sluice.services.audit import list_audit_records, verify_audit_log

audit_app = typer.Typer(no_args_is_help=True, help="The audit trail: verify its chain, list it.")


@audit_app.command("verify")
def audit_verify(db: DbOption = None) -> None:
    """Check the audit trail's hash chain; names any modified, deleted or reordered record."""
    database = open_database(db)
    try:
        result = verify_audit_log(
            database.uow,
            on_progress=lambda n: note(f"checked {n} records") if n % 100_000 == 0 else None,
        )
    finally:
        database.dispose()
    for finding in result.findings:
        sys.stdout.write(f"{finding.kind}: {finding.message}\n")
    if result.ok:
        sys.stdout.write(f"audit trail intact: {result.records_checked} records\n")
        return
    sys.stdout.write(
        f"audit trail BROKEN: {len(result.findings)} finding(s) in "
        f"{result.records_checked} records\n"
    )
    raise typer.Exit(1)


@audit_app.command("list")
def audit_list(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    operation_id: Annotated[
        str | None, typer.Option("--operation-id", help="Only this operation.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=100_000)] = 100,
    db: DbOption = None,
) -> None:
    """Audit records, newest last, as JSON lines."""
    database = open_database(db)
    try:
        records = list_audit_records(
            database.uow, customer_id=customer, operation_id=operation_id, limit=limit
        )
    finally:
        database.dispose()
    for record in records:
        entry = record.entry
        sys.stdout.write(
            json.dumps(
                {
                    "seq": record.seq,
                    "recorded_at": timestamp_or_none(entry.recorded_at),
                    "operation": entry.operation,
                    "operation_id": entry.operation_id,
                    "actor": entry.actor,
                    "customer_id": entry.customer_id,
                    "kyc": entry.kyc,
                    "parameters": entry.parameters,
                    "checks": list(entry.checks),
                    "state_changes": list(entry.state_changes),
                    "error": entry.error,
                    "hash": record.hash,
                },
                default=str,
            )
            + "\n"
        )


def register(app: typer.Typer) -> None:
    app.add_typer(audit_app, name="audit")
