"""Reserve arithmetic: amounts as integer units, the reserve ratio in basis points, and how a
discrepancy is classed.

Units are integers in an instrument's smallest unit: token-standard amounts carry 10 decimals
(:data:`TOKEN_DECIMALS`), iSTSi 8 (1 unit = 1 satoshi). Every sum and ratio is exact integer
arithmetic.
"""

from __future__ import annotations

import decimal
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId

Severity = Literal["minor", "warning", "critical", "emergency"]
SEVERITIES: tuple[Severity, ...] = ("minor", "warning", "critical", "emergency")

TOKEN_DECIMALS = 10
ISTSI_DECIMALS = 8
FULL_BPS = 10_000  # a ratio of 100 %
UNITS_LIMIT = 2**127  # every balance and sum stays below this (u128 with a spare bit)

# Where amounts become units and are added: 80 significant digits hold any NUMERIC(38, 10)
# amount, any sum of them and any count of units below 2^127 (39 digits) with room to spare,
# and a result that would still need rounding (or an exponent past 10^100) raises instead of
# silently losing digits, as the default 28-digit context would.
EXACT = decimal.Context(
    prec=80,
    rounding=decimal.ROUND_HALF_EVEN,
    Emax=100,
    traps=[decimal.InvalidOperation, decimal.Inexact, decimal.Rounded, decimal.Overflow],
)


def decimals_for(instrument: InstrumentId, istsi: InstrumentId | None) -> int:
    """The decimals an instrument's units are counted in: 8 for iSTSi (satoshis), else 10."""
    return ISTSI_DECIMALS if istsi is not None and instrument == istsi else TOKEN_DECIMALS


def units_of(amount: Decimal, decimals: int) -> int:
    """``amount`` in units of 10^-decimals, exactly; refused when it has finer digits than
    that, or is too large to count exactly (see :data:`EXACT`)."""
    if not amount.is_finite():
        raise InvalidInputError(f"{amount} is not a finite amount")
    try:
        scaled = amount.scaleb(decimals, context=EXACT)
    except decimal.DecimalException as exc:
        if amount and amount.adjusted() < -decimals:  # every digit finer than one unit
            raise InvalidInputError(f"{amount} has more than {decimals} decimals") from exc
        raise InvalidInputError(
            f"{amount} cannot be counted exactly in units of 10^-{decimals}: too large or too "
            "many digits"
        ) from exc
    units = int(scaled)
    if scaled != units:
        raise InvalidInputError(f"{amount} has more than {decimals} decimals")
    return units


def amount_of(units: int, decimals: int) -> Decimal:
    """The decimal amount of ``units`` (exact at any size: built from its digits, no context
    rounds it)."""
    return Decimal(f"{units}E{-decimals}")


def exact_sum(amounts: Iterable[Decimal], start: Decimal = Decimal(0)) -> Decimal:
    """``start`` plus ``amounts``, exactly: a sum that would need rounding raises
    :class:`InvalidInputError` (the default context would round past 28 digits)."""
    total = start
    try:
        for amount in amounts:
            total = EXACT.add(total, amount)
    except decimal.DecimalException as exc:
        raise InvalidInputError(
            f"a sum of amounts past {total} cannot be kept exactly: too large or too many digits"
        ) from exc
    return total


def format_units(units: int, decimals: int) -> str:
    """The decimal amount as text, without exponent or trailing zeros ("12.5", "0", "-3")."""
    text = format(amount_of(units, decimals), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def ratio_bps(reserves_units: int, owed_units: int) -> int | None:
    """reserves × 10000 ÷ owed, rounded down (so 100 % is never claimed for less); None when
    nothing is owed."""
    if owed_units <= 0:
        return None
    return max(reserves_units, 0) * FULL_BPS // owed_units


@dataclass(frozen=True, slots=True)
class Tolerances:
    """How big a difference is, relative to what our records expect, in basis points (rounded
    up): up to ``minor_bps`` it is minor, up to ``warning_bps`` a warning, up to
    ``critical_bps`` critical, beyond that an emergency. A surplus (more found than expected) is
    never worse than ``surplus_max``: nobody's money is missing, but the records are wrong."""

    minor_bps: int = 1
    warning_bps: int = 10
    critical_bps: int = 100
    surplus_max: Severity = "warning"

    def __post_init__(self) -> None:
        if not 0 <= self.minor_bps <= self.warning_bps <= self.critical_bps:
            raise InvalidInputError(
                "tolerances must satisfy 0 ≤ minor_bps ≤ warning_bps ≤ critical_bps"
            )


def difference_bps(expected_units: int, actual_units: int) -> int:
    """|actual − expected| relative to |expected| (at least one unit), in basis points rounded
    up."""
    base = max(abs(expected_units), 1)
    return -(-abs(actual_units - expected_units) * FULL_BPS // base)


def classify(expected_units: int, actual_units: int, tolerances: Tolerances) -> Severity | None:
    """The severity of finding ``actual`` where our records say ``expected``; None when they
    agree."""
    if actual_units == expected_units:
        return None
    size = difference_bps(expected_units, actual_units)
    severity: Severity
    if size <= tolerances.minor_bps:
        severity = "minor"
    elif size <= tolerances.warning_bps:
        severity = "warning"
    elif size <= tolerances.critical_bps:
        severity = "critical"
    else:
        severity = "emergency"
    surplus = actual_units > expected_units
    if surplus and SEVERITIES.index(severity) > SEVERITIES.index(tolerances.surplus_max):
        severity = tolerances.surplus_max
    return severity
