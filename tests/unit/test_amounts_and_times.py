"""Amounts and timestamps: the shortcuts for the ledger's usual spelling give exactly what the
general reading and formatting give, and refuse the same things."""

from __future__ import annotations

import decimal
import json
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.amounts import QUANTUM, format_amount, parse_amount
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import Holding, InstrumentId, format_timestamp, parse_timestamp
from sluice.store.postings import _ids_json

_CONTEXT = decimal.Context(prec=60, traps=[decimal.InvalidOperation])


def _general_format(value: Decimal) -> str:
    return f"{value.quantize(QUANTUM, context=_CONTEXT):f}"


@pytest.mark.parametrize(
    "text",
    [
        "132.6849000000",
        "-132.6849000000",
        "0.0000000000",
        "-0.0000000000",
        "00001.0000000000",
        "9" * 28 + ".9999999999",
        "1.5",
        "1e5",
        "-12",
    ],
)
def test_amounts_read_exactly_at_the_canonical_scale(text: str) -> None:
    value = parse_amount(text)
    assert value == Decimal(text)
    assert value.as_tuple().exponent == -10
    assert value.is_signed() == text.startswith("-")


@pytest.mark.parametrize(
    "text",
    [
        "9" * 29 + ".0000000000",  # too large
        "1.00000000001",  # more than 10 fractional digits
        "1_0.0000000000",
        "\uff11.0000000000",  # a non-ASCII digit
        " 1.0000000000",
        "+1.0000000000",
        "1.0000000000 ",
        "NaN",
        "",
    ],
)
def test_amounts_out_of_shape_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_amount(text)


@given(st.decimals(allow_nan=False, allow_infinity=False, min_value=-(10**27), max_value=10**27))
def test_format_amount_is_the_quantized_text(value: Decimal) -> None:
    try:
        expected = _general_format(value)
    except decimal.InvalidOperation:
        with pytest.raises(decimal.InvalidOperation):
            format_amount(value)
        return
    assert format_amount(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        Decimal("-0E-10"),
        Decimal("0E-10"),
        Decimal("1E-10"),
        Decimal("-1E-10"),
        Decimal("1E+5"),
        Decimal("-0"),
        Decimal("132.6849000000"),
        Decimal("132.6849"),
        Decimal("1.000000000000"),
    ],
)
def test_format_amount_edge_cases(value: Decimal) -> None:
    assert format_amount(value) == _general_format(value)


def test_format_amount_still_refuses_what_does_not_fit_the_context() -> None:
    with pytest.raises(decimal.InvalidOperation):
        format_amount(Decimal("1" * 55 + ".0000000000"))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-01-01T01:18:10.109977Z", datetime(2025, 1, 1, 1, 18, 10, 109977, tzinfo=UTC)),
        ("2025-01-01T01:18:10.109977+00:00", datetime(2025, 1, 1, 1, 18, 10, 109977, tzinfo=UTC)),
        ("2025-01-01T02:18:10.109977+01:00", datetime(2025, 1, 1, 1, 18, 10, 109977, tzinfo=UTC)),
        ("2025-01-01T01:18:10.1099770Z", datetime(2025, 1, 1, 1, 18, 10, 109977, tzinfo=UTC)),
        ("2025-01-01T01:18:10Z", datetime(2025, 1, 1, 1, 18, 10, tzinfo=UTC)),
    ],
)
def test_timestamps_read_as_utc(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "2025-13-01T01:18:10.109977Z",
        "2025-01-01T01:18:10.1099771Z",  # finer than a microsecond
        "2025-01-01T01:18:10.109977",  # no time zone
        "2025-01-01T01:18:10.1+2345Z",
        "2025-01-01T01:18:10.10997\u0667Z",
    ],
)
def test_malformed_timestamps_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_timestamp(text)


@pytest.mark.parametrize(
    "value",
    [
        datetime(2025, 1, 1, tzinfo=UTC),
        datetime(2025, 1, 1, 1, 18, 10, 109977, tzinfo=UTC),
        datetime(999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
        datetime(1000, 1, 1, tzinfo=UTC),
        datetime(2025, 1, 1, 5, tzinfo=timezone(timedelta(hours=5))),
    ],
)
def test_format_timestamp_is_the_strftime_text(value: datetime) -> None:
    expected = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    assert format_timestamp(value) == expected


@pytest.mark.parametrize(
    "ids",
    [[], ["00ab12"], ["00ab", "ffee"], ['a"b'], ["\u00e91"], [""], ["a b", "c"], ["a\\b", "\x01"]],
)
def test_contract_id_lists_are_their_json(ids: list[str]) -> None:
    instrument = InstrumentId("admin::1", "Amulet")
    holdings = tuple(Holding(cid, "owner::1", instrument, Decimal(1)) for cid in ids)
    assert _ids_json(holdings) == json.dumps(ids)
