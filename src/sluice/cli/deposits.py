"""``sluice deposits``: incoming offers, as support needs to see them."""

from __future__ import annotations

import typer
from rich.table import Table

from sluice.cli.common import (
    DbOption,
    JsonOption,
    TreasuryOption,
    note,
    open_database,
    print_json,
    print_table,
    short_amount,
    timestamp_or_none,
    treasury_party,
)
from sluice.config import Settings
from sluice.domain.amounts import format_amount
from sluice.domain.ledger import InstrumentId
from sluice.ports import IncomingOffer
from sluice.services.deposit_worker import list_incoming_offers
from sluice.services.reference import list_instruments

deposits_app = typer.Typer(no_args_is_help=True, help="Deposits, as support needs to see them.")


def offer_json(offer: IncomingOffer, onboarded: set[InstrumentId]) -> dict[str, object]:
    transfer = offer.instruction.transfer
    return {
        "contract_id": offer.instruction.contract_id,
        "status": offer.status,
        "sender": transfer.sender,
        "amount": format_amount(transfer.amount),
        "instrument": transfer.instrument.as_json(),
        "instrument_onboarded": transfer.instrument in onboarded,
        "reason": transfer.reason,
        "known_account": offer.customer_id is not None,
        "customer_id": offer.customer_id,
        "requested_at": timestamp_or_none(transfer.requested_at),
        "execute_before": timestamp_or_none(transfer.execute_before),
        "action": offer.action,
        "attempts": offer.attempts,
        "last_error": offer.last_error,
    }


@deposits_app.command("offers")
def deposits_offers(
    treasury: TreasuryOption = None, db: DbOption = None, as_json: JsonOption = False
) -> None:
    """Pending incoming offers and what the deposit worker did with each."""
    settings = Settings.from_environment()
    party = treasury_party(treasury, settings)
    database = open_database(db, settings)
    try:
        offers = list_incoming_offers(database.uow, party)
        onboarded = {r.instrument for r in list_instruments(database.uow) if r.enabled}
    finally:
        database.dispose()
    if as_json:
        print_json([offer_json(o, onboarded) for o in offers])
        return
    if not offers:
        note("no pending incoming offers")
        return
    table = Table(title=f"{len(offers)} pending incoming offer(s)")
    columns = ("offer", "sender", "amount", "instrument", "reason", "customer", "status")
    for column in (*columns, "worker action", "attempts", "last error"):
        table.add_column(column)
    for offer in offers:
        transfer = offer.instruction.transfer
        instrument = transfer.instrument.id
        if transfer.instrument not in onboarded:
            instrument += " (not onboarded)"
        table.add_row(
            offer.instruction.contract_id[-16:],
            transfer.sender,
            short_amount(transfer.amount),
            instrument,
            transfer.reason or "—",
            offer.customer_id or "unknown account",
            offer.status,
            offer.action or "—",
            str(offer.attempts),
            offer.last_error or "",
        )
    print_table(table)


def register(app: typer.Typer) -> None:
    app.add_typer(deposits_app, name="deposits")
