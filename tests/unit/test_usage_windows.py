"""What a decision reads of a customer's usage (sluice.domain.compliance.UsageSpan / UsageWindows).

Property (hypothesis): a random history of operations — on an hour grid give or take a second
and a microsecond, so the windows' edges and the buckets' boundaries are hit often — is summed
into hour and day totals; only the totals and records :class:`UsageSpan` asks for are kept, as a
repository would read them. For every decision time in the span, the windows summed from that
restricted view equal sums written out by hand over the whole history. So reading less loses
nothing at the edges, and the number of totals read is bounded whatever the history's length.

Examples: bucket starts, and the most a span of one instant asks for.
"""

from __future__ import annotations

from bisect import bisect_right
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.domain.compliance import (
    DAY,
    MONTH,
    UsageRecord,
    UsageSpan,
    UsageWindows,
    bucket_start,
    usage_buckets,
)
from sluice.domain.compliance_windows import (
    _both_window_bounds,
    _edges_of,
    _hour_bounds,
    _within,
)

EPOCH = datetime(2025, 3, 1, tzinfo=UTC)
HOUR_S = 3600
OPERATIONS = ("deposit", "withdrawal")


def hand_sum(
    records: list[UsageRecord], operation: str, now: datetime, window: timedelta
) -> Decimal:
    return sum(
        (
            record.amount
            for record in records
            if record.operation == operation and now - window < record.occurred_at <= now
        ),
        Decimal(0),
    )


def restricted(records: list[UsageRecord], span: UsageSpan) -> UsageWindows:
    """What a repository reads for ``span``: the totals starting in its ranges and the records
    in its record ranges."""
    windows = UsageWindows(span)
    for (operation, length_s, starts_at), bucket in usage_buckets(records).items():
        ranges = span.hour_ranges if length_s == HOUR_S else span.day_ranges
        if any(low <= starts_at < high for low, high in ranges):
            windows.add_total(operation, length_s, starts_at, bucket.amount)
    for record in records:
        if any(low <= record.occurred_at < high for low, high in span.record_ranges):
            windows.add_record(record)
    return windows


moments = st.tuples(
    st.integers(0, 40 * 24),  # hours after EPOCH
    st.sampled_from((0, 0, 1, -1, 1799)),  # seconds
    st.sampled_from((0, 0, 1, -1)),  # microseconds
).map(lambda t: EPOCH + timedelta(hours=t[0], seconds=t[1], microseconds=t[2]))
histories = st.lists(
    st.tuples(moments, st.sampled_from(OPERATIONS), st.integers(1, 50)), max_size=60
)


@settings(max_examples=300, deadline=None)
@given(
    history=histories,
    first=moments,
    length_h=st.sampled_from((0, 0, 1, 5, 30)),
    offsets=st.lists(st.floats(0, 1), min_size=1, max_size=4),
)
def test_windows_read_through_a_span_equal_the_sums_over_the_whole_history(
    history: list[tuple[datetime, str, int]],
    first: datetime,
    length_h: int,
    offsets: list[float],
) -> None:
    records = [
        UsageRecord(f"op-{index}", operation, Decimal(amount), at)
        for index, (at, operation, amount) in enumerate(history)
    ]
    last = first + timedelta(hours=length_h)
    span = UsageSpan.of(first, last)
    windows = restricted(records, span)
    for offset in [*offsets, 0.0, 1.0]:
        now = first + (last - first) * offset
        for operation in OPERATIONS:
            expected = (
                hand_sum(records, operation, now, DAY),
                hand_sum(records, operation, now, MONTH),
            )
            assert windows.used(operation, now) == expected


@settings(max_examples=300, deadline=None)
@given(
    history=histories,
    first=moments,
    length_h=st.sampled_from((0, 1, 5, 30)),
    steps=st.lists(
        st.tuples(st.floats(0, 1), st.sampled_from(OPERATIONS), st.integers(1, 50)),
        min_size=1,
        max_size=30,
    ),
)
def test_sums_remembered_per_hour_are_those_of_windows_read_afresh(
    history: list[tuple[datetime, str, int]],
    first: datetime,
    length_h: int,
    steps: list[tuple[float, str, int]],
) -> None:
    """Decisions at times in the span (mostly forwards, sometimes back), each adding its record
    as an allowed decision does: every sum equals that of the same windows built anew from what
    was read plus what was added, in the same order."""
    records = [
        UsageRecord(f"op-{index}", operation, Decimal(amount), at)
        for index, (at, operation, amount) in enumerate(history)
    ]
    last = first + timedelta(hours=length_h)
    span = UsageSpan.of(first, last)
    windows = restricted(records, span)
    added: list[UsageRecord] = []
    for index, (offset, operation, amount) in enumerate(steps):
        now = first + (last - first) * offset
        fresh = restricted(records, span)
        for record in added:
            fresh.add(record)
        for asked in OPERATIONS:
            assert windows.used(asked, now) == fresh.used(asked, now)
        record = UsageRecord(f"new-{index}", operation, Decimal(amount), now)
        windows.add(record)
        added.append(record)


def test_buckets_start_on_the_utc_hour_and_day() -> None:
    at = datetime(2026, 12, 5, 13, 59, 59, 999999, tzinfo=UTC)
    assert bucket_start(at, HOUR_S) == datetime(2026, 12, 5, 13, tzinfo=UTC)
    assert bucket_start(at, 86400) == datetime(2026, 12, 5, tzinfo=UTC)
    on_the_hour = datetime(2026, 12, 5, 14, tzinfo=UTC)
    assert bucket_start(on_the_hour, HOUR_S) == on_the_hour


def test_a_span_of_one_instant_asks_for_a_bounded_number_of_totals_and_three_hours_of_records() -> (
    None
):
    now = datetime(2026, 12, 5, 13, 30, tzinfo=UTC)
    span = UsageSpan.of(now, now)
    hours = sum((high - low) // timedelta(hours=1) + 1 for low, high in span.hour_ranges)
    days = sum((high - low) // DAY + 1 for low, high in span.day_ranges)
    record_time = sum((high - low for low, high in span.record_ranges), timedelta(0))
    assert hours <= 3 * 24
    assert days <= 32
    assert record_time <= timedelta(hours=3)


# --- the shortcuts of the hot path ---------------------------------------------------------------

_ANY_TIME = st.datetimes(
    min_value=datetime(1971, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)


def _slow_bucket_start(at: datetime, length_s: int) -> datetime:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    seconds = int((at - epoch) // timedelta(seconds=1))
    return epoch + timedelta(seconds=seconds - seconds % length_s)


@given(at=_ANY_TIME)
@settings(max_examples=300, deadline=None)
def test_a_bucket_starts_at_the_same_instant_whatever_the_way_it_is_found(at: datetime) -> None:
    for length_s in (3600, 86400):
        assert bucket_start(at, length_s) == _slow_bucket_start(at, length_s)
        assert bucket_start(at, length_s).tzinfo is UTC
    east = at.astimezone(timezone(timedelta(hours=5, minutes=30)))
    assert bucket_start(east, 3600) == bucket_start(at, 3600)


def _nonempty(bounds: tuple[object, ...]) -> tuple[object, ...]:
    """The bounds with every empty range written as None (empty is empty wherever it lies)."""
    return tuple(
        None if isinstance(item, tuple) and item[0] == item[1] else item for item in bounds
    )


@given(at=_ANY_TIME)
@settings(max_examples=300, deadline=None)
def test_the_window_bounds_remembered_per_hour_are_those_of_the_time_itself(at: datetime) -> None:
    remembered = _hour_bounds(at)
    assert _hour_bounds(at) == remembered  # the second time from memory
    computed = _both_window_bounds(at)
    for mine, theirs, window in zip(remembered, computed, (DAY, MONTH), strict=True):
        hour_0, hour_1, days, first, last = mine
        assert theirs[3] == at - window  # the start the caller subtracts
        assert _nonempty((hour_0, hour_1, days, first, last)) == _nonempty(
            (*theirs[:3], *theirs[4:])
        )


@given(
    edges=st.lists(_ANY_TIME, max_size=8),
    probes=st.lists(_ANY_TIME, max_size=8),
)
@settings(max_examples=300, deadline=None)
def test_ranges_found_by_halving_hold_what_the_ranges_hold(
    edges: list[datetime], probes: list[datetime]
) -> None:
    ranges = [(low, max(low, high)) for low, high in zip(edges[::2], edges[1::2], strict=False)]
    halved = _edges_of(ranges)
    for at in [*probes, *edges]:
        assert bool(bisect_right(halved, at) & 1) == _within(at, ranges)
