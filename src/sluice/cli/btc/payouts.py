"""`sluice btc payout`, `payout cancel`, `batch release` and `payouts`: an operator's payouts."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sluice.cli.btc.wiring import (
    _session,
    _write,
    btc_app,
)
from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    fail,
    note,
    print_json,
    print_table,
    utc_now,
)

# --- payouts -------------------------------------------------------------------------------------


payout_app = typer.Typer(
    invoke_without_command=True,
    help="Queue an operator's payout (--id --to --amount), or `cancel` one not yet batched.",
)
batch_app = typer.Typer(no_args_is_help=True, help="Payout batches: an operator's decisions.")
btc_app.add_typer(payout_app, name="payout")
btc_app.add_typer(batch_app, name="batch")


@payout_app.callback()
def btc_payout(
    ctx: typer.Context,
    payout_id: Annotated[
        str | None,
        typer.Option("--id", help="The payout's id: the same id again is the same payout."),
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="The destination address.")] = None,
    amount: Annotated[
        int | None,
        typer.Option("--amount", min=1, help="Satoshis; the network fee is deducted from it."),
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue an operator's payout. The payouts worker (`sluice serve`, `sluice workers run`,
    `sluice btc watch`) batches, signs 2-of-3 and broadcasts it."""
    if ctx.invoked_subcommand is not None:
        return
    from sluice.services.btc_payouts import request_payout

    missing = [
        name
        for name, value in (("--id", payout_id), ("--to", to), ("--amount", amount))
        if value is None
    ]
    if missing:
        fail(f"Missing option {', '.join(repr(m) for m in missing)}")
    assert payout_id is not None
    assert to is not None
    assert amount is not None
    requested_by = actor_name(actor)
    with _session(db) as (custody, database):
        payout = request_payout(
            database.uow,
            custody.wallet,
            custody.settings,
            payout_id=payout_id,
            address=to,
            amount_sats=amount,
            kind="operator",
            requested_by=requested_by,
            clock=utc_now,
        )
        problem = custody.signing_problem()
    if problem is not None:
        note(f"queued, but {problem}")
    record = payout.to_json()
    if as_json:
        print_json(record)
        return
    _write([f"payout {record['id']}: {record['status']} ({record['amount_sats']} sats to {to})"])


@payout_app.command("cancel")
def btc_payout_cancel(
    payout_id: Annotated[str, typer.Option("--id", help="The payout to cancel.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the audit.")] = None,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a payout not yet in a batch (queued or waiting_fee), audited. A batched payout is
    not cancellable (error 41): a signed transaction paying it is recorded and may be mined."""
    from sluice.services.btc_payouts import cancel_payout

    cancelled_by = actor_name(actor)
    with _session(db) as (_custody, database):
        payout = cancel_payout(
            database.uow,
            payout_id=payout_id,
            cancelled_by=cancelled_by,
            clock=utc_now,
            reason=reason,
        )
    record = payout.to_json()
    if as_json:
        print_json(record)
        return
    _write([f"payout {record['id']}: {record['status']}"])


@batch_app.command("release")
def btc_batch_release(
    batch_id: Annotated[str, typer.Option("--id", help="The orphaned batch to release.")],
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Release an orphaned batch (an input was reorged out of the chain): its payouts are queued
    again for a successor batch that spends every surviving input of this one, so the two can
    never both be mined. Refused (error 41) unless it is orphaned, an input survived and the node
    holds none of its versions."""
    from sluice.services.btc_payouts import release_batch

    released_by = actor_name(actor)
    with _session(db) as (custody, database):
        released = release_batch(
            database.uow,
            custody.node,
            batch_id=batch_id,
            released_by=released_by,
            clock=utc_now,
        )
    record = released.to_json()
    if as_json:
        print_json(record)
        return
    _write(
        [
            f"batch {batch_id}: released; payouts queued again: "
            + (", ".join(released.requeued) or "none")
        ]
    )


@btc_app.command("payouts")
def btc_payouts(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Payouts with the custody outpoints they spend, their fee, confirmations and status."""
    from sluice.services.btc_payouts import list_payouts

    with _session(db) as (custody, database):
        payouts = list_payouts(database.uow, custody.settings)
    rows = [p.to_json() for p in payouts]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "amount (sats)", "fee (sats)", "txid", "confirmations", "status")
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["amount_sats"]),
            str(row["fee_sats"] if row["fee_sats"] is not None else ""),
            str(row["txid"] or ""),
            str(row["confirmations"]),
            str(row["status"]),
        )
    print_table(table)
