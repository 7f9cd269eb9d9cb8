"""``sluice quote`` and ``sluice swap``: the cross-token exchange priced by the oracle.

``quote`` prices selling an amount of one instrument for another (``docs/exchange.md``): the
rate, the fee (on the oracle, or the fallback's higher one), the price impact, what would be
received, the minimum received and the expiry, and stores the quote. ``swap QUOTE_ID`` executes
it once: the quote id is the idempotency key, so running it again answers the first swap. A
refusal (expired 81, the price moved past the minimum 82, inventory 83, balance 62, KYC 20/21,
the oracle offline 80) moves nothing and exits 2 naming its code.

Instruments are named ``ADMIN:ID``, or by their bare id when one onboarded instrument has it.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Annotated

import typer

from sluice import bootstrap
from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    compliance_database,
    deployment,
    fail,
    kyc_registry,
    log_to_stderr,
    print_json,
    utc_now,
)
from sluice.config import DeploymentConfig
from sluice.services.exchange import (
    ExchangeContext,
    execute_swap,
    instrument_named,
    quote_json,
    request_quote,
    swap_json,
)

CustomerOption = Annotated[str, typer.Option("--customer", help="The customer swapping.")]


def register(app: typer.Typer) -> None:
    app.command("quote")(quote)
    app.command("swap")(swap)


def _decimal(value: str | None, option: str) -> Decimal | None:
    if value is None:
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        fail(f"{option} {value!r} is not a decimal number")


def _context(config: DeploymentConfig, database: bootstrap.Database) -> ExchangeContext:
    return ExchangeContext(
        uow=database.uow,
        clock=utc_now,
        oracle=bootstrap.oracle_service(config, database.uow),
        registry=kyc_registry(),
        settings=config.exchange.settings(),
    )


def quote(
    customer: CustomerOption,
    sell: Annotated[str, typer.Option("--sell", metavar="INSTRUMENT", help="What is sold.")],
    buy: Annotated[str, typer.Option("--buy", metavar="INSTRUMENT", help="What is bought.")],
    amount: Annotated[str, typer.Option("--amount", help="How much of --sell is sold.")],
    slippage: Annotated[
        str | None,
        typer.Option(
            "--slippage",
            help="The tolerance under the quoted amount for the minimum received (0.005 = "
            "0.5 %; default: [exchange] slippage).",
        ),
    ] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Quote selling --amount of --sell for --buy: rate, fee, impact, what is received, the
    minimum received and when the quote expires (execute it with `sluice swap QUOTE_ID`)."""
    config = deployment()
    log_to_stderr()
    tolerance = _decimal(slippage, "--slippage")
    with compliance_database(db or config.database_url) as database:
        ctx = _context(config, database)
        try:
            found = request_quote(
                ctx,
                customer_id=customer,
                sell=instrument_named(database.uow, sell),
                buy=instrument_named(database.uow, buy),
                sell_amount=amount,
                slippage=tolerance,
            )
        finally:
            ctx.oracle.close()
    shown = quote_json(found)
    if as_json:
        print_json(shown)
        return
    fee = shown["fee"]
    typer.echo(
        f"quote {shown['id']}: {shown['sell_amount']} {found.sell.id} → {shown['received']} "
        f"{found.buy.id} at {shown['rate']} (fee {fee['amount']} {found.buy.id}, {fee['kind']} "
        f"{fee['rate']}; impact {shown['price_impact']}); at least {shown['minimum_received']}; "
        f"expires {shown['expires_at']}"
    )


def swap(
    quote_id: Annotated[str, typer.Argument(help="The quote to execute (its idempotency key).")],
    customer: CustomerOption,
    min_received: Annotated[
        str | None,
        typer.Option("--min-received", help="Refuse unless at least this much is received."),
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Execute a quote once, as one journal transaction (the same quote again answers the first
    swap). Refused, with nothing moved: expired, the price moved past the minimum received, the
    exchange's inventory or the customer's balance short, KYC limits, the oracle offline."""
    config = deployment()
    log_to_stderr()
    floor = _decimal(min_received, "--min-received")
    who = actor_name(actor)
    with compliance_database(db or config.database_url) as database:
        ctx = _context(config, database)
        try:
            done = execute_swap(ctx, quote_id, customer_id=customer, actor=who, min_received=floor)
        finally:
            ctx.oracle.close()
    shown = swap_json(done)
    if as_json:
        print_json(shown)
        return
    warnings = f" (warnings: {', '.join(done.warnings)})" if done.warnings else ""
    typer.echo(
        f"swapped {shown['sell_amount']} {done.sell.id} for {shown['received']} {done.buy.id} "
        f"(fee {shown['fee']['amount']}), journal {shown['journal_transaction_id']}{warnings}"
    )
