"""The cross-token exchange over HTTP: a customer's quotes and swaps (``docs/exchange.md``).

``POST …/quotes`` prices a sale and stores the quote; ``POST …/swaps`` executes one by its id,
which is the idempotency key: the same quote again answers the first swap. Refusals answer their
code (81 expired, 82 the price moved past the minimum received, 83 inventory, 84 pair not
configured, 62 balance, 20/21 KYC, 80 the oracle offline) and move nothing. Without
``[exchange]`` pairs and ``[[oracle.feeds]]`` the endpoints answer 503."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from sluice.api.context import ApiContext
from sluice.api.routes.common import ERRORS, Context, OwnOnly, OwnOrCompliance
from sluice.api.routes.customers import CustomerId
from sluice.api.schemas import ledger_decimal_pattern
from sluice.domain.errors import SluiceError
from sluice.services.exchange import (
    ExchangeContext,
    execute_swap,
    instrument_named,
    list_swaps,
    quote_json,
    request_quote,
    swap_json,
)

router = APIRouter(prefix="/v1/customers", tags=["exchange"], responses=ERRORS)

# Decimal text the ledger's amounts take (28 digits before the point, 10 after); sold: above 0.
AMOUNT = Field(min_length=1, max_length=40, pattern=ledger_decimal_pattern(positive=False))
SOLD = Field(min_length=1, max_length=40, pattern=ledger_decimal_pattern(positive=True))
INSTRUMENT = Field(min_length=1, max_length=700, description="ADMIN:ID, or a bare id")


class ExchangeNotConfiguredError(SluiceError):
    """The deployment has no ``[exchange]`` pairs or no price oracle (answered 503)."""

    code = 11
    error = "exchange_not_configured"
    http_status = 503


class QuoteIn(BaseModel):
    sell: Annotated[str, INSTRUMENT]
    buy: Annotated[str, INSTRUMENT]
    sell_amount: Annotated[str, SOLD]
    slippage: Annotated[str | None, Field(max_length=20, pattern=r"^0(\.[0-9]+)?$")] = None


class SwapIn(BaseModel):
    quote_id: Annotated[str, Field(min_length=1, max_length=100)]
    min_received: Annotated[str | None, AMOUNT] = None


class FeeOut(BaseModel):
    amount: str
    rate: str
    kind: str


class _PricedOut(BaseModel):
    """What a quote and the swap made from it both carry."""

    customer_id: str
    sell: dict[str, str]
    buy: dict[str, str]
    sell_amount: str
    rate: str
    price_impact: str
    fee: FeeOut
    received: str
    minimum_received: str
    oracle: dict[str, Any]


class QuoteOut(_PricedOut):
    id: str
    created_at: str
    expires_at: str


class SwapOut(_PricedOut):
    quote_id: str
    journal_transaction_id: str
    warnings: list[str]
    actor: str
    executed_at: str


def exchange_of(context: ApiContext) -> ExchangeContext:
    found = context.exchange
    if found is None:
        raise ExchangeNotConfiguredError(
            "no exchange: this deployment configures no [exchange] pairs or no [[oracle.feeds]]"
        )
    return found


@router.post(
    "/{customer_id}/quotes",
    response_model=QuoteOut,
    status_code=201,
    summary="Quote selling an amount of one instrument for another: rate, fee, price impact, "
    "what is received, the minimum received and the expiry",
)
def create_quote(
    customer_id: CustomerId, body: QuoteIn, context: Context, caller: OwnOnly
) -> QuoteOut:
    caller.check_customer(customer_id)
    ctx = exchange_of(context)
    found = request_quote(
        ctx,
        customer_id=customer_id,
        sell=instrument_named(ctx.uow, body.sell),
        buy=instrument_named(ctx.uow, body.buy),
        sell_amount=body.sell_amount,
        slippage=None if body.slippage is None else Decimal(body.slippage),
    )
    return QuoteOut.model_validate(quote_json(found))


@router.post(
    "/{customer_id}/swaps",
    response_model=SwapOut,
    summary="Execute a quote once (its id is the idempotency key: again, the first swap)",
)
def create_swap(
    customer_id: CustomerId, body: SwapIn, context: Context, caller: OwnOnly
) -> SwapOut:
    caller.check_customer(customer_id)
    done = execute_swap(
        exchange_of(context),
        body.quote_id,
        customer_id=customer_id,
        actor=caller.actor,
        min_received=body.min_received,
    )
    return SwapOut.model_validate(swap_json(done))


@router.get(
    "/{customer_id}/swaps",
    response_model=list[SwapOut],
    summary="The customer's swaps, newest first",
)
def customer_swaps(
    customer_id: CustomerId,
    context: Context,
    caller: OwnOrCompliance,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> list[SwapOut]:
    caller.check_customer(customer_id)
    found = list_swaps(exchange_of(context), customer_id, limit=limit)
    return [SwapOut.model_validate(swap_json(item)) for item in found]
