"""Exact token amounts.

Amounts on the token ledger are Daml ``Numeric 10`` values carried as decimal strings. sluice keeps
them as :class:`decimal.Decimal` quantized to 10 fractional digits from the moment they are read to
the moment they are written, and never lets a float near them.
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal

from sluice.domain.errors import InvalidAmountError

SCALE = 10
QUANTUM = Decimal(1).scaleb(-SCALE)
ZERO = Decimal(0).quantize(QUANTUM)
# NUMERIC(38, 10): 28 integer digits.
MAXIMUM = Decimal(10) ** 28 - QUANTUM

_CONTEXT = decimal.Context(
    prec=60, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation]
)


_DECIMAL_TEXT = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?\Z", re.ASCII)
# The ledger's own spelling of a Numeric 10 that fits NUMERIC(38, 10): at most 28 integer digits
# and exactly 10 fractional ones. Text of this shape is exact, in range and already at the
# canonical scale, so it needs none of the checks below (most amounts read are of this shape;
# the history parser's readers test it themselves before calling parse_amount).
CANONICAL_TEXT = re.compile(r"-?[0-9]{1,28}\.[0-9]{10}\Z", re.ASCII)


def parse_amount(text: object, *, field: str = "amount") -> Decimal:
    """Read a ledger decimal string exactly; refuse anything that would lose or invent precision.

    Accepts decimal text as the ledger writes it (``"-12.5"``, or with an exponent); no spaces,
    underscores or non-ASCII digits.
    """
    if type(text) is str and CANONICAL_TEXT.match(text):
        return Decimal(text)
    if isinstance(text, bool) or not isinstance(text, str | int | Decimal):
        raise InvalidAmountError(f"{field}: expected a decimal string, got {type(text).__name__}")
    if isinstance(text, str) and not _DECIMAL_TEXT.match(text):
        raise InvalidAmountError(f"{field}: {text!r} is not a decimal number")
    try:
        value = Decimal(text) if not isinstance(text, Decimal) else text
    except decimal.InvalidOperation as exc:
        raise InvalidAmountError(f"{field}: {text!r} is not a decimal number") from exc
    if not value.is_finite():
        raise InvalidAmountError(f"{field}: {text!r} is not a finite number")
    if abs(value) > MAXIMUM:
        raise InvalidAmountError(f"{field}: {text!r} is too large")
    quantized = value.quantize(QUANTUM, context=_CONTEXT)
    if quantized != value:
        raise InvalidAmountError(f"{field}: {text!r} has more than {SCALE} fractional digits")
    if abs(quantized) > MAXIMUM:
        raise InvalidAmountError(f"{field}: {text!r} is too large")
    return quantized


def quantize(value: Decimal) -> Decimal:
    """Bring an exact arithmetic result back to the canonical scale (it must already fit)."""
    quantized = value.quantize(QUANTUM, context=_CONTEXT)
    assert quantized == value, f"amount {value} does not fit {SCALE} fractional digits"
    return quantized


def format_amount(value: Decimal) -> str:
    """The canonical text of an amount: always 10 fractional digits, as the ledger writes it."""
    # Most amounts are already at the canonical scale, and then their plain ``str`` is the text
    # (about three times cheaper than quantizing). ``str`` switches to an exponent for tiny
    # values and zero ("1E-10", "0E-10"), and a value too long for the context must still fail
    # to quantize as before; those take the general path.
    text = str(value)
    if len(text) < 60 and text[-11:-10] == "." and "E" not in text:
        return text
    return f"{value.quantize(QUANTUM, context=_CONTEXT):f}"


def to_units(value: Decimal) -> int:
    """The amount as an integer count of 10^-10 units (exact, for integer storage and sums)."""
    return int(value.scaleb(SCALE, context=_CONTEXT))


def from_units(units: int) -> Decimal:
    return Decimal(units).scaleb(-SCALE, context=_CONTEXT).quantize(QUANTUM, context=_CONTEXT)
