"""The ``[exchange]`` section: which oracle pair prices which two instruments, the fees, the
quote lifetime, the depth curve of price impact, the default slippage and the inventory rule
(DESIGN §9, ``docs/exchange.md``). No pairs by default: nothing can be swapped.

Guarantees at load: each pair names an oracle pair well formed, two different instruments, and
is defined once (in either direction); the depth curve ascends; rates are fractions below 1.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from pydantic import Field, field_validator, model_validator

from sluice.config.sections import _Section
from sluice.domain.exchange import DepthCurve, DepthPoint, ExchangeSettings
from sluice.domain.oracle import check_pair

RATE = Annotated[Decimal, Field(ge=0, lt=Decimal("0.1"))]


class ExchangePairConfig(_Section):
    """``sell`` and ``buy`` are instrument ids (``ISTSI``, ``Amulet``); ``oracle_pair`` is the
    ``[[oracle.feeds]]`` pair whose price is units of ``buy`` per unit of ``sell``. The reverse
    direction is priced by the same feed, inverted."""

    sell: Annotated[str, Field(min_length=1, max_length=200)]
    buy: Annotated[str, Field(min_length=1, max_length=200)]
    oracle_pair: str

    @field_validator("oracle_pair")
    @classmethod
    def _pair(cls, value: str) -> str:
        return check_pair(value)

    @model_validator(mode="after")
    def _different(self) -> ExchangePairConfig:
        if self.sell == self.buy:
            raise ValueError(f"exchange pair {self.sell}/{self.buy}: the same instrument twice")
        return self


class DepthPointConfig(_Section):
    """At a sold value of ``amount`` reference units, the price impact is ``impact``."""

    amount: Annotated[Decimal, Field(gt=0)]
    impact: Annotated[Decimal, Field(ge=0, lt=Decimal("0.5"))]


class ExchangeConfig(_Section):
    """``pairs``: ``[[exchange.pairs]]``. ``fee_rate`` on a healthy oracle (0.003 = 0.3 %),
    ``fallback_fee_rate`` when the price came from a fallback source (0.5 %).
    ``quote_lifetime_s``: how long a quote may be executed. ``depth_curve``: price impact by the
    sold value in reference units (``[[exchange.depth_curve]] amount = … impact = …``).
    ``slippage``: the default tolerance of a quote's minimum received. ``inventory_reserve_ratio``:
    the share of the exchange's inventory of an instrument that swaps may not take.
    ``limit_warning_ratio``: a swap that brings a KYC exchange limit's use to this share is
    recorded with a warning."""

    pairs: list[ExchangePairConfig] = Field(default_factory=list)
    fee_rate: RATE = Decimal("0.003")
    fallback_fee_rate: RATE = Decimal("0.005")
    quote_lifetime_s: Annotated[int, Field(ge=1, le=3600)] = 30
    depth_curve: list[DepthPointConfig] = Field(default_factory=list)
    slippage: Annotated[Decimal, Field(ge=0, lt=Decimal("0.5"))] = Decimal("0.005")
    inventory_reserve_ratio: Annotated[Decimal, Field(ge=0, lt=1)] = Decimal(0)
    limit_warning_ratio: Annotated[Decimal, Field(gt=0, le=1)] = Decimal("0.8")

    @model_validator(mode="after")
    def _check(self) -> ExchangeConfig:
        seen: set[frozenset[str]] = set()
        for pair in self.pairs:
            key = frozenset((pair.sell, pair.buy))
            if key in seen:
                raise ValueError(f"exchange pairs: {pair.sell}/{pair.buy} is defined twice")
            seen.add(key)
        self.settings()  # checks the depth curve
        return self

    def settings(self) -> ExchangeSettings:
        return ExchangeSettings(
            pairs=tuple((p.sell, p.buy, p.oracle_pair) for p in self.pairs),
            fee_rate=self.fee_rate,
            fallback_fee_rate=self.fallback_fee_rate,
            quote_lifetime_s=self.quote_lifetime_s,
            depth_curve=DepthCurve(tuple(DepthPoint(p.amount, p.impact) for p in self.depth_curve)),
            slippage=self.slippage,
            inventory_reserve_ratio=self.inventory_reserve_ratio,
            limit_warning_ratio=self.limit_warning_ratio,
        )
