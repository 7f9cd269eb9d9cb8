"""``sluice admin``: the HTTP API's keys: create, list, revoke."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    compliance_database,
    deployment,
    fail,
    note,
    print_json,
    print_table,
    timestamp_or_none,
    utc_now,
)
from sluice.domain.access import ROLES, check_role
from sluice.ports import ApiKeyRecord
from sluice.services.access import create_api_key, list_api_keys, revoke_api_key

admin_app = typer.Typer(
    no_args_is_help=True, help="Administration of the HTTP API: create, list and revoke API keys."
)


def api_key_json(record: ApiKeyRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "role": record.role,
        "customer_id": record.customer_id,
        "label": record.label,
        "created_by": record.created_by,
        "created_at": timestamp_or_none(record.created_at),
        "revoked_by": record.revoked_by,
        "revoked_at": timestamp_or_none(record.revoked_at),
    }


@admin_app.command("create-api-key")
def admin_create_api_key(
    role: Annotated[str, typer.Option("--role", help=f"One of: {', '.join(ROLES)}.")],
    customer: Annotated[
        str | None, typer.Option("--customer", help="The customer a `user` key acts for.")
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="What the key is for (shown in lists).")
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Create an API key and print it: only its hash is stored, so it is shown this once."""
    try:
        checked = check_role(role)
    except ValueError as exc:
        fail(f"--role: {exc}")
    who = actor_name(actor)
    with compliance_database(db or deployment().database_url) as database:
        record, secret = create_api_key(
            database.uow, role=checked, customer_id=customer, label=label, actor=who, at=utc_now()
        )
    if as_json:
        print_json({**api_key_json(record), "key": secret})
    else:
        lines = [f"key: {secret}", f"id: {record.id}", f"role: {record.role}"]
        if record.customer_id:
            lines.append(f"customer: {record.customer_id}")
        if record.label:
            lines.append(f"label: {record.label}")
        sys.stdout.write("\n".join(lines) + "\n")
    note(
        "keep the key now: it will not be shown again (send it as the X-API-Key header; "
        f"revoke it with `sluice admin revoke-api-key {record.id}`)"
    )


@admin_app.command("list-api-keys")
def admin_list_api_keys(
    offset: Annotated[int, typer.Option("--offset", min=0, help="Skip this many keys.")] = 0,
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """API keys (never their secrets), revoked ones included."""
    with compliance_database(db or deployment().database_url) as database:
        records = list_api_keys(database.uow, offset=offset, limit=limit)
    if as_json:
        print_json([api_key_json(r) for r in records])
        return
    if not records:
        note("no API keys (create one with `sluice admin create-api-key --role super_admin`)")
        return
    table = Table(title=f"{len(records)} API key(s)")
    for column in ("id", "role", "customer", "label", "created by", "created at", "revoked"):
        table.add_column(column, no_wrap=column == "id")
    for r in records:
        revoked = f"{timestamp_or_none(r.revoked_at)} by {r.revoked_by}" if r.revoked_at else ""
        table.add_row(
            r.id,
            r.role,
            r.customer_id or "—",
            r.label or "",
            r.created_by,
            timestamp_or_none(r.created_at),
            revoked,
        )
    print_table(table)


@admin_app.command("revoke-api-key")
def admin_revoke_api_key(
    key_id: Annotated[str, typer.Argument(help="The key's id (from list-api-keys).")],
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Revoke an API key: requests with it are refused from now on (within seconds)."""
    who = actor_name(actor)
    with compliance_database(db or deployment().database_url) as database:
        revoke_api_key(database.uow, key_id, actor=who, at=utc_now())
    note(f"API key {key_id} revoked")


def register(app: typer.Typer) -> None:
    app.add_typer(admin_app, name="admin")
