"""The cross-token exchange's arithmetic and its journal entry (DESIGN §9, ``docs/exchange.md``).

A quote sells ``sell_amount`` of instrument A for instrument B at the oracle's rate (units of B
per unit of A), less the price impact of the depth curve, less the fee:

    gross    = ⌊sell_amount × rate × (1 − impact)⌋       (what leaves the exchange's inventory)
    fee      = ⌈gross × fee_rate⌉                         (booked to ``fees`` in B)
    received = gross − fee                                (credited to the customer in B)
    minimum  = ⌊received × (1 − slippage)⌋

Amounts are quantized to the ledger's 10 places, rounding against the customer (down what they
get, up the fee), so no unit is ever invented. A swap is one balanced journal transaction that
moves the customer's claim from A to B and the exchange's own inventory the other way:

    customer:C / A              +sell_amount   (debit: the customer is owed less A)
    exchange_inventory / A      −sell_amount   (credit: the exchange's own A grows)
    exchange_inventory / B      +gross         (debit: the exchange's own B shrinks)
    customer:C / B              −received
    fees / B                    −fee

Every instrument's postings sum to zero and no treasury account moves, so the books' invariant
(Σ liabilities = treasury account = holdings on the ledger, per instrument) holds before and
after: the holdings on the ledger do not change, only who they are owed to.
"""

from __future__ import annotations

import decimal
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sluice.domain.amounts import QUANTUM
from sluice.domain.errors import InvalidInputError
from sluice.domain.journal import EXCHANGE_INVENTORY as EXCHANGE_INVENTORY
from sluice.domain.journal import (
    FEES,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
)
from sluice.domain.ledger import InstrumentId

# Rates are kept to this many places (an inverted pair's 1/price is not exact).
RATE_DECIMALS = 18
IMPACT_MAX = Decimal("0.5")
SWAP_KIND = "exchange_swap"

FeeKind = Literal["oracle", "fallback"]
FEE_KINDS: tuple[FeeKind, ...] = ("oracle", "fallback")

_CONTEXT = decimal.Context(prec=60, traps=[decimal.InvalidOperation, decimal.DivisionByZero])
_RATE_QUANTUM = Decimal(1).scaleb(-RATE_DECIMALS)


@dataclass(frozen=True, slots=True)
class DepthPoint:
    """At a sold value (reference units) of ``amount``, the price impact is ``impact``."""

    amount: Decimal
    impact: Decimal


@dataclass(frozen=True, slots=True)
class DepthCurve:
    """Price impact by sold value: linear between its points, from (0, 0), flat after the last.
    Points ascend in amount; impact never decreases and stays below ``IMPACT_MAX``."""

    points: tuple[DepthPoint, ...] = ()

    def __post_init__(self) -> None:
        previous = DepthPoint(Decimal(0), Decimal(0))
        for point in self.points:
            if point.amount <= previous.amount:
                raise InvalidInputError("depth curve: amounts must ascend from above 0")
            if point.impact < previous.impact or point.impact >= IMPACT_MAX:
                raise InvalidInputError(
                    f"depth curve: impact must not decrease and stay below {IMPACT_MAX}"
                )
            previous = point

    def impact(self, value: Decimal) -> Decimal:
        """The impact of selling ``value`` reference units (quantized to ``RATE_DECIMALS``)."""
        low = DepthPoint(Decimal(0), Decimal(0))
        for point in self.points:
            if value <= point.amount:
                share = _CONTEXT.divide(value - low.amount, point.amount - low.amount)
                exact = low.impact + (point.impact - low.impact) * share
                return exact.quantize(_RATE_QUANTUM, rounding=decimal.ROUND_HALF_EVEN)
            low = point
        return low.impact


@dataclass(frozen=True, slots=True)
class ExchangeSettings:
    """What the exchange service needs of ``[exchange]`` (the section's docstring says what
    each setting means)."""

    pairs: tuple[tuple[str, str, str], ...] = ()  # (sell id, buy id, oracle pair)
    fee_rate: Decimal = Decimal("0.003")
    fallback_fee_rate: Decimal = Decimal("0.005")
    quote_lifetime_s: int = 30
    depth_curve: DepthCurve = field(default_factory=DepthCurve)
    slippage: Decimal = Decimal("0.005")
    inventory_reserve_ratio: Decimal = Decimal(0)
    limit_warning_ratio: Decimal = Decimal("0.8")

    def oracle_pair(self, sell: str, buy: str) -> tuple[str, bool] | None:
        """The oracle pair pricing ``sell`` in ``buy`` and whether its price is inverted."""
        for pair_sell, pair_buy, oracle_pair in self.pairs:
            if (pair_sell, pair_buy) == (sell, buy):
                return oracle_pair, False
            if (pair_sell, pair_buy) == (buy, sell):
                return oracle_pair, True
        return None


@dataclass(frozen=True, slots=True)
class Pricing:
    """The amounts of a sale at one rate: see the module docstring."""

    rate: Decimal
    impact: Decimal
    fee_rate: Decimal
    fee_kind: FeeKind
    gross: Decimal
    fee: Decimal
    received: Decimal


def price_sale(
    sell_amount: Decimal,
    rate: Decimal,
    impact: Decimal,
    fee_rate: Decimal,
    fee_kind: FeeKind,
    quantum: Decimal = QUANTUM,
) -> Pricing:
    """The amounts of selling ``sell_amount`` at ``rate`` (exact; rounded against the buyer),
    in whole units of the bought instrument: ``quantum`` is its smallest unit (10^-10 for a
    token, 10^-8 for iSTSi, whose unit is the satoshi)."""
    assert sell_amount > 0, "a sale sells something"
    assert rate > 0, "at a positive rate"
    assert 0 <= impact < 1, "an impact is a fraction"
    assert 0 <= fee_rate < 1, "a fee rate is a fraction"
    gross_exact = _CONTEXT.multiply(_CONTEXT.multiply(sell_amount, rate), 1 - impact)
    gross = gross_exact.quantize(quantum, rounding=decimal.ROUND_DOWN, context=_CONTEXT)
    fee = _CONTEXT.multiply(gross, fee_rate).quantize(
        quantum, rounding=decimal.ROUND_UP, context=_CONTEXT
    )
    received = gross - fee
    return Pricing(rate, impact, fee_rate, fee_kind, gross, fee, received)


def minimum_received(received: Decimal, slippage: Decimal, quantum: Decimal = QUANTUM) -> Decimal:
    return _CONTEXT.multiply(received, 1 - slippage).quantize(
        quantum, rounding=decimal.ROUND_DOWN, context=_CONTEXT
    )


def direct_rate(price: Decimal) -> Decimal:
    return price


def inverse_rate(price: Decimal) -> Decimal:
    """Units of B per unit of A from the price of B in A (rounded down: against the buyer)."""
    return _CONTEXT.divide(Decimal(1), price).quantize(
        _RATE_QUANTUM, rounding=decimal.ROUND_DOWN, context=_CONTEXT
    )


@dataclass(frozen=True, slots=True)
class Quote:
    """A priced offer to one customer, valid until ``expires_at``; its id is the swap's
    idempotency key."""

    id: str
    customer_id: str
    sell: InstrumentId
    buy: InstrumentId
    sell_amount: Decimal
    rate: Decimal
    price_impact: Decimal
    fee_rate: Decimal
    fee_kind: FeeKind
    fee_amount: Decimal
    gross: Decimal
    received: Decimal
    minimum_received: Decimal
    oracle_pair: str
    oracle_source: str
    oracle_health: str
    oracle_round: int | None
    observed_at: datetime
    created_at: datetime
    expires_at: datetime

    def is_expired(self, now: datetime) -> bool:
        return now >= self.expires_at


@dataclass(frozen=True, slots=True)
class Swap:
    """An executed quote, at the price of its execution (``rate`` … ``received``), with the KYC
    limit warnings it raised (``"daily 85 %"``)."""

    quote_id: str
    customer_id: str
    sell: InstrumentId
    buy: InstrumentId
    sell_amount: Decimal
    rate: Decimal
    price_impact: Decimal
    fee_rate: Decimal
    fee_kind: FeeKind
    fee_amount: Decimal
    gross: Decimal
    received: Decimal
    minimum_received: Decimal
    journal_transaction_id: str
    oracle_source: str
    oracle_health: str
    oracle_round: int | None
    warnings: tuple[str, ...]
    actor: str
    executed_at: datetime


def swap_transaction_id(quote_id: str) -> str:
    return f"swap:{quote_id}"


def swap_transaction(
    quote_id: str,
    customer_id: str,
    sell: InstrumentId,
    buy: InstrumentId,
    sell_amount: Decimal,
    pricing: Pricing,
) -> JournalTransaction:
    """The swap's one journal transaction (see the module docstring)."""
    customer = customer_account_name(customer_id)
    postings: Sequence[Posting] = (
        Posting(AccountRef(customer, sell), sell_amount),
        Posting(AccountRef(EXCHANGE_INVENTORY, sell), -sell_amount),
        Posting(AccountRef(EXCHANGE_INVENTORY, buy), pricing.gross),
        Posting(AccountRef(customer, buy), -pricing.received),
        Posting(AccountRef(FEES, buy), -pricing.fee),
    )
    return JournalTransaction(
        id=swap_transaction_id(quote_id),
        kind=SWAP_KIND,
        postings=tuple(p for p in postings if p.amount != 0),
        description=(
            f"swap {quote_id}: {sell_amount} {sell.id} for {pricing.received} {buy.id} "
            f"(fee {pricing.fee})"
        ),
    )


def limit_warnings(
    used_daily: Decimal,
    used_monthly: Decimal,
    daily: Decimal | None,
    monthly: Decimal | None,
    threshold: Decimal,
) -> tuple[str, ...]:
    """The limits whose use (this swap included) reached ``threshold`` of them."""
    warnings = []
    for name, used, limit in (("daily", used_daily, daily), ("monthly", used_monthly, monthly)):
        if limit is not None and limit > 0 and used >= limit * threshold:
            percent = (used * 100 / limit).quantize(Decimal(1), rounding=decimal.ROUND_DOWN)
            warnings.append(f"{name} {percent} %")
    return tuple(warnings)
