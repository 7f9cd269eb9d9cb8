"""The cross-token exchange (DESIGN §9, ``docs/exchange.md``): quotes priced by the oracle, and
swaps that execute them as one journal transaction under the customer's KYC exchange limits and
the exchange's inventory.

:func:`request_quote` prices a sale of instrument A for instrument B from the oracle (outside
any transaction), applies the depth curve's price impact and the fee (the fallback fee when the
price came from a fallback source), and stores the quote with its expiry and minimum received.
:func:`execute_swap` executes a quote: it prices the sale again from the oracle, and in one
transaction takes the locks, passes the KYC registry (``exchange``), checks the balance and the
inventory, posts the journal transaction, records the swap, its audit record and its
``swap_executed`` event, and commits.

How a swap could lose or double-pay a unit, and why it cannot here
------------------------------------------------------------------
1. *Executing a quote twice.* The swap's primary key is the quote id (the idempotency key) and
   its journal transaction's id is ``swap:<quote id>``, both unique in the DB. A second execute
   finds the first swap and returns it; one racing the first waits on the customer's row lock
   and then finds it, or loses the insert and rolls back everything (usage included).
2. *Half a swap.* The debit of A, the credit of B, the fee and both inventory legs are the
   postings of one balanced :class:`~sluice.domain.journal.JournalTransaction`, written in the
   same transaction as the swap row, the KYC usage, the audit record and the event: a crash at
   any point before the commit leaves none of them.
3. *Spending a balance or an inventory twice.* The customer's row is locked first (the order of
   withdrawals, redemptions and ingestion), then every account the swap posts to, in account id
   order (the order :func:`~sluice.store.postings.post_journal` locks in), before their balances
   are read: concurrent swaps of one customer, or on one inventory, are serialised, and two
   swaps in opposite directions cannot deadlock.
4. *Pricing on a bad price.* Both the quote and the swap take the oracle's validated price;
   offline, they are refused (80). What the swap books is priced at execution, and refused
   (82) when it is below the minimum received.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, ROUND_UP, Decimal
from typing import Any, Final

import structlog

from sluice.domain.amounts import QUANTUM, ZERO, format_amount, parse_amount
from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import ComplianceRequest
from sluice.domain.errors import (
    ExchangePairNotConfiguredError,
    InstrumentNotOnboardedError,
    InsufficientBalanceError,
    InsufficientInventoryError,
    InvalidAmountError,
    InvalidInputError,
    NotFoundError,
    OracleOfflineError,
    QuoteExpiredError,
    SlippageExceededError,
    SluiceError,
    SystemPausedError,
)
from sluice.domain.events import Event, new_event
from sluice.domain.exchange import (
    EXCHANGE_INVENTORY,
    ExchangeSettings,
    Pricing,
    Quote,
    Swap,
    inverse_rate,
    limit_warnings,
    minimum_received,
    price_sale,
    swap_transaction,
    swap_transaction_id,
)
from sluice.domain.journal import FEES, AccountRef, customer_account_name
from sluice.domain.ledger import InstrumentId
from sluice.domain.oracle import OraclePrice
from sluice.domain.reserves import decimals_for
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.services.compliance import KycRegistry, check_operation_allowed
from sluice.services.compliance_session import effective_ladder
from sluice.services.controls import check_not_paused
from sluice.services.events import emit_all
from sluice.services.oracle import OracleService
from sluice.services.reserves import find_istsi

log = structlog.get_logger("sluice.exchange")

QUOTE_ID_MAX = 64
OPERATION: Final = "exchange"


@dataclass(frozen=True, slots=True)
class ExchangeContext:
    """What the exchange's commands need: the Integration DB, the time, the oracle, the KYC
    registry and the ``[exchange]`` settings."""

    uow: UnitOfWorkFactory
    clock: Callable[[], datetime]
    oracle: OracleService
    registry: KycRegistry
    settings: ExchangeSettings


# --- quotes ------------------------------------------------------------------------------------


def request_quote(
    ctx: ExchangeContext,
    *,
    customer_id: str,
    sell: InstrumentId,
    buy: InstrumentId,
    sell_amount: Decimal | str,
    slippage: Decimal | None = None,
) -> Quote:
    """A quote for selling ``sell_amount`` of ``sell`` for ``buy``, stored, valid for the
    configured lifetime. Refused: an unknown customer (10), an instrument not onboarded (63), a
    pair not configured (84), an amount that is not positive or buys nothing (61), the oracle
    offline (80). ``slippage`` (default: the configured one) sets the minimum received."""
    amount = _sell_amount(sell_amount)
    tolerance = ctx.settings.slippage if slippage is None else slippage
    if not ZERO <= tolerance < Decimal("0.5"):
        raise InvalidInputError(f"slippage must be in [0, 0.5), got {tolerance}")
    oracle_pair, inverted = _resolve_pair(ctx.settings, sell, buy)
    with ctx.uow() as uow:
        _check_parties(uow, customer_id, sell, buy)
        quanta = _quanta(ctx, uow, sell, buy)
    _check_units(sell, amount, quanta[0])
    price = ctx.oracle.current_price(oracle_pair)
    pricing = _price(ctx, sell, amount, price, inverted, quanta[1])
    if pricing.received <= 0:
        raise InvalidAmountError(
            f"selling {format_amount(amount)} {sell.id} would receive nothing of {buy.id}"
        )
    now = ctx.clock()
    quote = Quote(
        id=f"q-{uuid.uuid4().hex}",
        customer_id=customer_id,
        sell=sell,
        buy=buy,
        sell_amount=amount,
        rate=pricing.rate,
        price_impact=pricing.impact,
        fee_rate=pricing.fee_rate,
        fee_kind=pricing.fee_kind,
        fee_amount=pricing.fee,
        gross=pricing.gross,
        received=pricing.received,
        minimum_received=minimum_received(pricing.received, tolerance, quanta[1]),
        oracle_pair=oracle_pair,
        oracle_source=price.source,
        oracle_health=price.health,
        oracle_round=price.round_id,
        observed_at=price.observed_at,
        created_at=now,
        expires_at=now + timedelta(seconds=ctx.settings.quote_lifetime_s),
    )
    with ctx.uow() as uow:
        uow.exchange.add_quote(quote)
        uow.commit()
    log.info("quote created", quote_id=quote.id, customer_id=customer_id, pair=oracle_pair)
    return quote


def get_quote(ctx: ExchangeContext, quote_id: str) -> Quote:
    """The quote; NotFoundError (10) when there is none of that id."""
    with ctx.uow() as uow:
        quote = uow.exchange.quote(quote_id)
    if quote is None:
        raise NotFoundError(f"no quote {quote_id!r}")
    return quote


def list_swaps(
    ctx: ExchangeContext, customer_id: str | None = None, *, limit: int = 100
) -> list[Swap]:
    """The newest swaps first (of one customer, or all), at most ``limit`` (≤ 1000)."""
    with ctx.uow() as uow:
        return uow.exchange.swaps(customer_id, limit=limit)


# --- swaps -------------------------------------------------------------------------------------


def execute_swap(
    ctx: ExchangeContext,
    quote_id: str,
    *,
    customer_id: str,
    actor: str,
    min_received: Decimal | str | None = None,
) -> Swap:
    """Execute the customer's quote (see the module docstring). The same quote again returns
    the first swap, whatever it is asked now. Refused, with nothing moved: a quote of another
    customer or none (10), expired (81), what would be received now under the minimum (82), the
    exchange's inventory short (83), the customer's balance short (62), the oracle offline
    (80), a pause (50–52): each leaves a ``swap_refused`` audit record; a KYC refusal (20, 21)
    leaves the registry's."""
    if not actor.strip():
        raise InvalidInputError("a swap names who executed it")
    floor = None if min_received is None else parse_amount(min_received, field="min_received")
    with ctx.uow() as uow:
        quote = uow.exchange.quote(quote_id)
        first = uow.exchange.swap(quote_id)
    if quote is None or quote.customer_id != customer_id:
        raise NotFoundError(f"no quote {quote_id!r} of customer {customer_id!r}")
    if first is not None:
        return first
    try:
        return _execute(ctx, quote, floor, actor)
    except REFUSALS as exc:
        _audit_refusal(ctx, quote, actor, exc)
        raise


# Refusals audited by a ``swap_refused`` record of their own (the registry audits its refusals).
REFUSALS = (
    QuoteExpiredError,
    SlippageExceededError,
    InsufficientInventoryError,
    InsufficientBalanceError,
    OracleOfflineError,
    SystemPausedError,
)


def _execute(ctx: ExchangeContext, quote: Quote, floor: Decimal | None, actor: str) -> Swap:
    if quote.is_expired(ctx.clock()):
        raise QuoteExpiredError(
            f"quote {quote.id} expired at {quote.expires_at.isoformat()}: ask for a new quote"
        )
    oracle_pair, inverted = _resolve_pair(ctx.settings, quote.sell, quote.buy)
    with ctx.uow() as uow:
        _sold, bought = _quanta(ctx, uow, quote.sell, quote.buy)
    price = ctx.oracle.current_price(oracle_pair)
    pricing = _price(ctx, quote.sell, quote.sell_amount, price, inverted, bought)
    minimum = max(quote.minimum_received, floor if floor is not None else ZERO)
    if pricing.received < minimum:
        raise SlippageExceededError(
            f"the price moved: swap {quote.id} would receive {format_amount(pricing.received)} "
            f"{quote.buy.id} now, under the minimum {format_amount(minimum)}",
            received=format_amount(pricing.received),
            minimum=format_amount(minimum),
        )
    with ctx.uow() as uow:
        check_not_paused(uow)
        swap, new = _book(ctx, uow, quote, pricing, minimum, price, actor)
        if new:
            uow.commit()
            log.info("swap executed", quote_id=quote.id, customer_id=quote.customer_id)
    return swap


def _audit_refusal(ctx: ExchangeContext, quote: Quote, actor: str, exc: SluiceError) -> None:
    """A refused swap's record, in a transaction of its own (the swap's rolled back)."""
    with ctx.uow() as uow:
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=swap_transaction_id(quote.id),
                    operation="swap_refused",
                    actor=actor,
                    recorded_at=ctx.clock(),
                    customer_id=quote.customer_id,
                    parameters={
                        "quote_id": quote.id,
                        "sell": quote.sell.key(),
                        "sell_amount": format_amount(quote.sell_amount),
                        "buy": quote.buy.key(),
                        "minimum_received": format_amount(quote.minimum_received),
                    },
                    error=f"{exc.code}: {exc}",
                )
            ]
        )
        uow.commit()
    log.warning("swap refused", quote_id=quote.id, code=exc.code, reason=str(exc))


def _book(
    ctx: ExchangeContext,
    uow: UnitOfWork,
    quote: Quote,
    pricing: Pricing,
    minimum: Decimal,
    price: OraclePrice,
    actor: str,
) -> tuple[Swap, bool]:
    """Book the swap in ``uow`` (not committed): the swap and True, or the first swap of the
    quote and False."""
    customer = customer_account_name(quote.customer_id)
    sold = AccountRef(customer, quote.sell)
    wanted = AccountRef(EXCHANGE_INVENTORY, quote.buy)
    # The customer's row, then every account the swap posts to in id order (see point 3).
    uow.compliance.profiles([quote.customer_id], lock=True)
    accounts = {
        sold,
        AccountRef(customer, quote.buy),
        AccountRef(EXCHANGE_INVENTORY, quote.sell),
        wanted,
        AccountRef(FEES, quote.buy),
    }
    balances = {
        account: uow.withdrawals.balance(account, lock=True)
        for account in sorted(accounts, key=lambda account: account.id)
    }
    first = uow.exchange.swap(quote.id)
    if first is not None:
        return first, False
    now = ctx.clock()
    if quote.is_expired(now):
        raise QuoteExpiredError(f"quote {quote.id} expired at {quote.expires_at.isoformat()}")
    parameters = {
        "quote_id": quote.id,
        "sell": quote.sell.key(),
        "sell_amount": format_amount(quote.sell_amount),
        "buy": quote.buy.key(),
    }
    check_operation_allowed(
        uow,
        ctx.registry,
        ComplianceRequest(
            quote.customer_id,
            OPERATION,
            ctx.registry.settings.value(quote.sell, quote.sell_amount),
        ),
        operation_id=swap_transaction_id(quote.id),
        at=now,
        actor=actor,
        parameters=parameters,
    )
    if balances[sold] < quote.sell_amount:
        raise InsufficientBalanceError(
            f"customer {quote.customer_id} has {format_amount(balances[sold])} {quote.sell.id},"
            f" cannot swap {format_amount(quote.sell_amount)}"
        )
    free = free_inventory(balances[wanted], ctx.settings.inventory_reserve_ratio)
    if pricing.gross > free:
        raise InsufficientInventoryError(
            f"the exchange's free inventory of {quote.buy.id} is {format_amount(free)}, "
            f"the swap needs {format_amount(pricing.gross)}"
        )
    transaction = swap_transaction(
        quote.id, quote.customer_id, quote.sell, quote.buy, quote.sell_amount, pricing
    )
    uow.withdrawals.post([transaction])
    swap = Swap(
        quote_id=quote.id,
        customer_id=quote.customer_id,
        sell=quote.sell,
        buy=quote.buy,
        sell_amount=quote.sell_amount,
        rate=pricing.rate,
        price_impact=pricing.impact,
        fee_rate=pricing.fee_rate,
        fee_kind=pricing.fee_kind,
        fee_amount=pricing.fee,
        gross=pricing.gross,
        received=pricing.received,
        minimum_received=minimum,
        journal_transaction_id=transaction.id,
        oracle_source=price.source,
        oracle_health=price.health,
        oracle_round=price.round_id,
        warnings=_warnings(ctx, uow, quote.customer_id, now),
        actor=actor,
        executed_at=now,
    )
    uow.exchange.add_swap(swap)
    postings = [
        {
            "account": posting.account.name,
            "instrument": posting.account.instrument.key(),
            "amount": format_amount(posting.amount),
        }
        for posting in transaction.postings
    ]
    uow.audit.append([_audit_entry(swap, postings)])
    emit_all(uow, [swap_executed_event(swap)])
    return swap, True


def free_inventory(balance: Decimal, reserve_ratio: Decimal) -> Decimal:
    """What swaps may take of an inventory balance: all but ``reserve_ratio`` of it."""
    if balance <= 0:
        return ZERO
    kept = (balance * reserve_ratio).quantize(QUANTUM, rounding=ROUND_UP)
    return balance - kept


def _warnings(
    ctx: ExchangeContext, uow: UnitOfWork, customer_id: str, now: datetime
) -> tuple[str, ...]:
    """The exchange limits of the customer's tier whose use, this swap included (the registry
    recorded it), reached the warning ratio."""
    profile = uow.compliance.profiles([customer_id]).get(customer_id)
    if profile is None:
        return ()
    limits = effective_ladder(ctx.registry.settings.ladder, uow).of(profile.tier, OPERATION)
    windows = uow.compliance.usage_windows([customer_id], now, now, [OPERATION])
    used = windows.get(customer_id)
    if used is None:
        return ()
    daily, monthly = used.used(OPERATION, now)
    return limit_warnings(
        daily, monthly, limits.daily, limits.monthly, ctx.settings.limit_warning_ratio
    )


# --- helpers of both commands -------------------------------------------------------------------


def _sell_amount(value: Decimal | str) -> Decimal:
    amount = parse_amount(value, field="sell_amount")
    if amount <= 0:
        raise InvalidAmountError(f"sell_amount must be positive, got {format_amount(amount)}")
    return amount


def _resolve_pair(
    settings: ExchangeSettings, sell: InstrumentId, buy: InstrumentId
) -> tuple[str, bool]:
    found = settings.oracle_pair(sell.id, buy.id) if sell != buy else None
    if found is None:
        raise ExchangePairNotConfiguredError(
            f"no exchange pair prices {sell.id} in {buy.id} (see [[exchange.pairs]])"
        )
    return found


def _check_parties(
    uow: UnitOfWork, customer_id: str, sell: InstrumentId, buy: InstrumentId
) -> None:
    if not uow.withdrawals.customer_exists(customer_id):
        raise NotFoundError(f"unknown customer {customer_id!r}")
    for instrument in (sell, buy):
        record = uow.withdrawals.instrument(instrument)
        if record is None or not record.enabled:
            raise InstrumentNotOnboardedError(
                f"instrument {instrument.key()} is not onboarded"
                + ("" if record is None else " (it is disabled)")
            )


def _price(
    ctx: ExchangeContext,
    sell: InstrumentId,
    sell_amount: Decimal,
    price: OraclePrice,
    inverted: bool,
    quantum: Decimal,
) -> Pricing:
    settings = ctx.settings
    rate = inverse_rate(price.price) if inverted else price.price
    impact = settings.depth_curve.impact(ctx.registry.settings.value(sell, sell_amount))
    if price.fallback_fee:
        return price_sale(
            sell_amount, rate, impact, settings.fallback_fee_rate, "fallback", quantum
        )
    return price_sale(sell_amount, rate, impact, settings.fee_rate, "oracle", quantum)


def _quanta(
    ctx: ExchangeContext, uow: UnitOfWork, sell: InstrumentId, buy: InstrumentId
) -> tuple[Decimal, Decimal]:
    """The smallest unit of the sold and of the bought instrument: a satoshi for iSTSi, 10^-10
    for any other token (what the books, the reserves and the proof of reserves count in)."""
    istsi = find_istsi(uow, ctx.clock())
    return (
        Decimal(1).scaleb(-decimals_for(sell, istsi)),
        Decimal(1).scaleb(-decimals_for(buy, istsi)),
    )


def _check_units(sell: InstrumentId, amount: Decimal, quantum: Decimal) -> None:
    if amount != amount.quantize(quantum, rounding=ROUND_DOWN):
        raise InvalidAmountError(
            f"sell_amount {format_amount(amount)} has more places than {sell.id} counts in "
            f"(its smallest unit is {quantum.normalize():f})"
        )


# --- what is written about a swap ---------------------------------------------------------------


def swap_json(swap: Swap) -> dict[str, Any]:
    """A swap as the API, the CLI, its audit record and its event show it."""
    return {
        "quote_id": swap.quote_id,
        "customer_id": swap.customer_id,
        "sell": swap.sell.as_json(),
        "buy": swap.buy.as_json(),
        "sell_amount": format_amount(swap.sell_amount),
        "rate": str(swap.rate),
        "price_impact": str(swap.price_impact),
        "fee": {
            "amount": format_amount(swap.fee_amount),
            "rate": str(swap.fee_rate),
            "kind": swap.fee_kind,
        },
        "received": format_amount(swap.received),
        "minimum_received": format_amount(swap.minimum_received),
        "journal_transaction_id": swap.journal_transaction_id,
        "oracle": {
            "source": swap.oracle_source,
            "health": swap.oracle_health,
            "round_id": str(swap.oracle_round) if swap.oracle_round is not None else None,
        },
        "warnings": list(swap.warnings),
        "actor": swap.actor,
        "executed_at": swap.executed_at.isoformat(),
    }


def quote_json(quote: Quote) -> dict[str, Any]:
    """A quote as the API and the CLI show it."""
    return {
        "id": quote.id,
        "customer_id": quote.customer_id,
        "sell": quote.sell.as_json(),
        "buy": quote.buy.as_json(),
        "sell_amount": format_amount(quote.sell_amount),
        "rate": str(quote.rate),
        "price_impact": str(quote.price_impact),
        "fee": {
            "amount": format_amount(quote.fee_amount),
            "rate": str(quote.fee_rate),
            "kind": quote.fee_kind,
        },
        "received": format_amount(quote.received),
        "minimum_received": format_amount(quote.minimum_received),
        "oracle": {
            "pair": quote.oracle_pair,
            "source": quote.oracle_source,
            "health": quote.oracle_health,
            "round_id": str(quote.oracle_round) if quote.oracle_round is not None else None,
            "observed_at": quote.observed_at.isoformat(),
        },
        "created_at": quote.created_at.isoformat(),
        "expires_at": quote.expires_at.isoformat(),
    }


def _audit_entry(swap: Swap, postings: list[dict[str, str]]) -> AuditEntry:
    return AuditEntry(
        operation_id=swap.journal_transaction_id,
        operation="swap_executed",
        actor=swap.actor,
        recorded_at=swap.executed_at,
        customer_id=swap.customer_id,
        parameters={
            "quote_id": swap.quote_id,
            "sell": swap.sell.key(),
            "sell_amount": format_amount(swap.sell_amount),
            "buy": swap.buy.key(),
            "minimum_received": format_amount(swap.minimum_received),
            "rate": str(swap.rate),
            "oracle_source": swap.oracle_source,
            "oracle_health": swap.oracle_health,
            "warnings": list(swap.warnings),
        },
        state_changes=postings,
    )


def swap_executed_event(swap: Swap) -> Event:
    return new_event(
        "swap_executed",
        swap.quote_id,
        {
            "quote_id": swap.quote_id,
            "customer_id": swap.customer_id,
            "sell": swap.sell.key(),
            "sell_amount": format_amount(swap.sell_amount),
            "buy": swap.buy.key(),
            "received": format_amount(swap.received),
            "fee": format_amount(swap.fee_amount),
            "fee_kind": swap.fee_kind,
            "rate": str(swap.rate),
            "price_impact": str(swap.price_impact),
            "oracle_health": swap.oracle_health,
            "warnings": list(swap.warnings),
        },
        at=swap.executed_at,
    )


def instrument_named(uow: UnitOfWorkFactory, text: str) -> InstrumentId:
    """An instrument from ``ADMIN:ID`` (split at the last colon: party ids contain ``::``), or
    from a bare id that exactly one onboarded instrument has (NotFound: none; invalid input:
    several)."""
    head, sep, tail = text.rpartition(":")
    if sep and head and tail and not head.endswith(":"):
        return InstrumentId(head, tail)
    with uow() as work:
        found = [r.instrument for r in work.reference.instruments() if r.instrument.id == text]
    if len(found) == 1:
        return found[0]
    if not found:
        raise NotFoundError(f"no onboarded instrument {text!r} (name it ADMIN:ID)")
    raise InvalidInputError(
        f"{len(found)} onboarded instruments are called {text!r}: name one as ADMIN:ID"
    )
