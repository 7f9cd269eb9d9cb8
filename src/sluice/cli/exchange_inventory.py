"""``sluice exchange inventory`` and ``sluice exchange fund``: what the exchange's swaps pay
customers from (``docs/exchange.md``, Inventory).

``inventory`` lists the exchange's inventory per instrument. ``fund ITEM`` books a deposit sitting
in suspense (the exchange's own tokens, sent to the treasury with no deposit account) to the
inventory. Funding is a critical operation (``exchange.inventory.fund``), proposed as the person at
the command line (a local principal ``cli:<actor>`` with the system admin's role, whose proposal
counts as its first approval): with ``approvals.required`` 1 it runs at once and the command prints
the funded deposit; otherwise it prints the proposal, which other staff approve through the HTTP
API (``POST /v1/approvals/<id>/approve``) and `sluice serve` runs. A deposit funds the inventory
once; one already given to a customer is refused (41).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import typer

from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    deployment,
    fail,
    fail_with,
    open_database,
    print_json,
    utc_now,
)
from sluice.domain.access import Principal
from sluice.domain.amounts import format_amount
from sluice.domain.approvals import Approval
from sluice.domain.errors import SluiceError
from sluice.ports import UnitOfWorkFactory
from sluice.services.approvals import propose_operation
from sluice.services.exchange_inventory import OPERATION, fund_inventory, inventory_balances
from sluice.services.settings import RuntimeSettings
from sluice.services.suspense import get_suspense_item

exchange_app = typer.Typer(
    no_args_is_help=True,
    help="The exchange's inventory: what swaps pay customers from, funded from suspense.",
)


def register(app: typer.Typer) -> None:
    app.add_typer(exchange_app, name="exchange")


@exchange_app.command("inventory")
def inventory(db: DbOption = None, as_json: JsonOption = False) -> None:
    """The exchange's inventory per instrument."""
    database = open_database(db)
    try:
        balances = inventory_balances(database.uow)
    finally:
        database.dispose()
    rows: list[dict[str, Any]] = [
        {"instrument": {"id": i.id, "admin": i.admin}, "balance": format_amount(balance)}
        for i, balance in sorted(balances.items(), key=lambda kv: kv[0].key())
    ]
    if as_json:
        print_json(rows)
        return
    if not rows:
        typer.echo(
            "the exchange's inventory is empty: fund it with `sluice exchange fund ITEM` "
            "(a deposit in suspense; `sluice suspense` lists them)"
        )
        return
    for row in rows:
        typer.echo(
            f"{row['instrument']['id']:<20} {row['balance']:>24}  {row['instrument']['admin']}"
        )


@exchange_app.command("fund")
def fund(
    item_id: Annotated[str, typer.Argument(help="The suspense deposit, '<update id>:<node id>'.")],
    reason: Annotated[str, typer.Option("--reason", help="Why, for the audit trail.")],
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Book a deposit in suspense to the exchange's inventory (approval-gated)."""
    if not reason.strip():
        fail("--reason must not be empty")
    who = actor_name(actor)
    config = deployment()
    database = open_database(db)
    try:
        try:
            item = get_suspense_item(database.uow, item_id)
            settings = RuntimeSettings(database.uow, dict(config.api.settings), clock=utc_now)
            approval = propose_operation(
                database.uow,
                operation=OPERATION,
                parameters={
                    "item_id": item.id,
                    "instrument_admin": item.instrument.admin,
                    "instrument_id": item.instrument.id,
                    "amount": format_amount(item.amount),
                },
                proposer=Principal(id=f"cli:{who}", role="system_admin"),
                at=utc_now(),
                required=settings.approvals_required(),
                executors={
                    OPERATION: lambda proposal, at: _run(database.uow, proposal, at),
                },
                reason=reason,
            )
        except SluiceError as exc:
            fail_with(exc)
    finally:
        database.dispose()
    if approval.status == "failed":
        result = dict(approval.result or {})
        code = result.get("code")
        fail(
            f"error {code if isinstance(code, int) else 41}: {OPERATION} (approval "
            f"{approval.id}) refused: {approval.error}"
        )
    shown = {
        "approval": {
            "id": approval.id,
            "status": approval.status,
            "required": approval.required,
            "approvals": len(approval.approvers),
        },
        "item_id": item.id,
        "instrument": {"id": item.instrument.id, "admin": item.instrument.admin},
        "amount": format_amount(item.amount),
    }
    if as_json:
        print_json(shown)
        return
    if approval.status == "executed":
        typer.echo(
            f"funded the exchange's inventory with {format_amount(item.amount)} "
            f"{item.instrument.id} from deposit {item.id} (approval {approval.id})"
        )
        return
    typer.echo(
        f"proposed {OPERATION}: approval {approval.id} ({len(approval.approvers)} of "
        f"{approval.required} approvals)\n  other staff approve it through the API: "
        f"POST /v1/approvals/{approval.id}/approve"
    )


def _run(uow: UnitOfWorkFactory, approval: Approval, at: datetime) -> dict[str, object]:
    item = fund_inventory(
        uow,
        str(approval.parameters["item_id"]),
        actor=f"approval:{approval.id}",
        at=at,
        approval_id=approval.id,
        reason=approval.reason,
    )
    return {"item_id": item.id, "assigned_to": item.assigned_to}
