"""How much of its limits a customer used in the rolling windows (DESIGN §6), summed exactly.

Rolling windows are half-open: an operation at ``t`` counts in the 24 h window of every ``now``
with ``now - 24h < t <= now``.

What a customer used in a window is summed from :class:`UsageWindows`: totals per operation in
hour and day buckets for the bulk of the window, and the individual records only in the hours
where a window's edges fall (the hour ``now - 24h`` or ``now - 30 days`` lies in, and the hour of
``now`` itself). So a decision needs a bounded number of rows — about 30 day totals, 70 hour
totals and three hours of records per operation — however long the customer's history, and the
sums stay exact to the microsecond at both edges. :class:`UsageSpan` says which rows decisions
over a stretch of time need, and what a later stretch needs beyond them. Nothing here touches a
database; :mod:`sluice.domain.compliance` re-exports every public name.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal, TypeVar

from sluice.domain.amounts import ZERO
from sluice.domain.values import value_class

# The operations the registry decides on; usage is kept and summed per operation.
Operation = Literal["deposit", "withdrawal", "mint", "burn", "transfer", "exchange"]
OPERATIONS: tuple[Operation, ...] = (
    "deposit",
    "withdrawal",
    "mint",
    "burn",
    "transfer",
    "exchange",
)
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
MONTH = timedelta(days=30)
WINDOWS = (DAY, MONTH)
BUCKET_LENGTHS_S = (3600, 86400)  # hour and day buckets of usage
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_K = TypeVar("_K")


@value_class
class UsageRecord:
    """One allowed operation, as it counts against its customer's limits."""

    operation_id: str
    operation: str
    amount: Decimal  # reference units
    occurred_at: datetime
    counterparty: str | None = None


def usage_in_windows(
    records: Iterable[UsageRecord], operation: str, now: datetime
) -> tuple[Decimal, Decimal]:
    """What the customer used of ``operation`` in the rolling 24 h and 30 days before ``now``,
    summed the way a decision sums it: from buckets, with the records only at the edges."""
    return UsageWindows.of_records(records, now, now).used(operation, now)


def bucket_start(at: datetime, length_s: int) -> datetime:
    """The start of the ``length_s`` bucket (hour or day, in UTC) that ``at`` falls in."""
    if at.tzinfo is UTC and type(at) is datetime:
        # The same instant without the arithmetic (every decision and usage row asks): in UTC
        # an hour or day starts where the smaller fields are zero. What replace gives depends
        # on the fields kept alone, so the starts made are remembered by those (see _STARTS).
        if length_s == 3600:
            hour_key = (at.year, at.month, at.day, at.hour, at.fold)
            start = _HOUR_STARTS.get(hour_key)
            if start is None:
                start = at.replace(minute=0, second=0, microsecond=0)
                _remember(_HOUR_STARTS, hour_key, start)
            return start
        if length_s == 86400:
            day_key = (at.year, at.month, at.day, at.fold)
            start = _DAY_STARTS.get(day_key)
            if start is None:
                start = at.replace(hour=0, minute=0, second=0, microsecond=0)
                _remember(_DAY_STARTS, day_key, start)
            return start
    elapsed = at - _EPOCH
    seconds = elapsed.days * 86400 + elapsed.seconds
    return _EPOCH + timedelta(seconds=seconds - seconds % length_s)


# The UTC hour and day starts recently made, by the fields they are made of (year, month, day,
# [hour,] fold): a decision and its usage row ask for the same few several times, and a look-up
# costs a third of datetime.replace (which parses keyword arguments). Handing out the same object
# also keeps its hash, which the totals and bounds keyed by it would otherwise compute afresh.
# Bounded; emptied when full. A dict's get and set are atomic, so threads at worst make one again.
_HOUR_STARTS: dict[tuple[int, int, int, int, int], datetime] = {}
_DAY_STARTS: dict[tuple[int, int, int, int], datetime] = {}
_STARTS_MAX = 4096


def _remember(starts: dict[_K, datetime], key: _K, start: datetime) -> None:
    if len(starts) >= _STARTS_MAX:
        starts.clear()
    starts[key] = start


@value_class
class UsageBucket:
    """The total of one operation's usage in one hour or day (``length_s`` 3600 or 86400)."""

    operation: str
    length_s: int
    starts_at: datetime
    amount: Decimal
    count: int


def usage_buckets(
    records: Iterable[UsageRecord], sign: int = 1
) -> dict[tuple[str, int, datetime], UsageBucket]:
    """The hour and day totals ``records`` add to (``sign`` -1: what removing them takes off)."""
    sums: dict[tuple[str, int, datetime], tuple[Decimal, int]] = {}
    for record in records:
        amount = sign * record.amount
        for length_s in BUCKET_LENGTHS_S:
            key = (record.operation, length_s, bucket_start(record.occurred_at, length_s))
            known = sums.get(key)
            sums[key] = (amount, sign) if known is None else (known[0] + amount, known[1] + sign)
    return {
        key: UsageBucket(key[0], key[1], key[2], amount, count)
        for key, (amount, count) in sums.items()
    }


@value_class
class UsageSpan:
    """What must be read to decide at any ``now`` in ``[first, last]``: the records in
    ``record_ranges``, the hour buckets starting in ``hour_ranges`` and the day buckets starting
    in ``day_ranges`` (every range half-open, ``[low, high)``)."""

    first: datetime
    last: datetime
    record_ranges: tuple[tuple[datetime, datetime], ...]
    hour_ranges: tuple[tuple[datetime, datetime], ...]
    day_ranges: tuple[tuple[datetime, datetime], ...]

    @classmethod
    def of(cls, first: datetime, last: datetime) -> UsageSpan:
        assert first <= last, "a span runs forwards"
        after_last = last + timedelta(microseconds=1)
        records = [(bucket_start(first, 3600), after_last)]
        hours = [(bucket_start(first, 86400), after_last)]
        for window in WINDOWS:
            records.append(
                (bucket_start(first - window, 3600), bucket_start(last - window, 3600) + HOUR)
            )
            # The full hours between the hour a window starts in and the next day.
            hours.append(
                (
                    bucket_start(first - window, 3600) + HOUR,
                    _day_after(bucket_start(last - window, 3600) + HOUR),
                )
            )
        days = ((bucket_start(first - MONTH, 86400), after_last),)
        return cls(first, last, _merged(records), _merged(hours), days)

    def covers(self, now: datetime) -> bool:
        return self.first <= now <= self.last

    def beyond(
        self, known: UsageSpan
    ) -> tuple[
        tuple[tuple[datetime, datetime], ...],
        tuple[tuple[datetime, datetime], ...],
        tuple[tuple[datetime, datetime], ...],
    ]:
        """What this span needs that ``known`` did not: its record, hour and day ranges less
        those of ``known``."""
        return (
            _minus(self.record_ranges, known.record_ranges),
            _minus(self.hour_ranges, known.hour_ranges),
            _minus(self.day_ranges, known.day_ranges),
        )


def _minus(
    ranges: Sequence[tuple[datetime, datetime]], taken: Sequence[tuple[datetime, datetime]]
) -> tuple[tuple[datetime, datetime], ...]:
    """The parts of the half-open ``ranges`` outside every range of ``taken``."""
    left: list[tuple[datetime, datetime]] = []
    for low, high in ranges:
        pieces = [(low, high)]
        for taken_low, taken_high in taken:
            cut: list[tuple[datetime, datetime]] = []
            for piece_low, piece_high in pieces:
                if taken_high <= piece_low or piece_high <= taken_low:
                    cut.append((piece_low, piece_high))
                    continue
                if piece_low < taken_low:
                    cut.append((piece_low, taken_low))
                if taken_high < piece_high:
                    cut.append((taken_high, piece_high))
            pieces = cut
        left.extend(pieces)
    return tuple(left)


def _within(at: datetime, ranges: Sequence[tuple[datetime, datetime]]) -> bool:
    return any(low <= at < high for low, high in ranges)


def _edges_of(ranges: Sequence[tuple[datetime, datetime]]) -> list[datetime]:
    """The edges of the half-open ``ranges``, merged, as one sorted list ``[low, high, low, …]``:
    ``at`` lies in one of them (:func:`_within`) exactly when ``bisect_right(edges, at)`` is odd
    (``low <= at < high``; an empty range's two equal edges hold no ``at`` between them)."""
    return [edge for low_high in _merged(ranges) for edge in low_high]


def _day_after(at: datetime) -> datetime:
    """The first day boundary at or after ``at``."""
    return bucket_start(at - timedelta(microseconds=1), 86400) + DAY


def _merged(ranges: Sequence[tuple[datetime, datetime]]) -> tuple[tuple[datetime, datetime], ...]:
    merged: list[tuple[datetime, datetime]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return tuple(merged)


def _window_parts(
    now: datetime, window: timedelta
) -> tuple[
    list[tuple[datetime, datetime]], list[tuple[datetime, datetime]], tuple[datetime, datetime]
]:
    """How the window ``(now - window, now]`` is summed: hour buckets in the first ranges, day
    buckets in the second, and records (exactly) in ``start < t < first full hour`` and
    ``hour of now <= t <= now`` — the third item gives those two bounds."""
    start = now - window
    first_hour = bucket_start(start, 3600) + HOUR
    last_hour = bucket_start(now, 3600)
    if first_hour > last_hour:
        return [], [], (now, now)  # shorter than an hour: records only
    first_day = _day_after(first_hour)
    last_day = bucket_start(last_hour, 86400)
    if first_day <= last_day:
        hours = [(first_hour, first_day), (last_day, last_hour)]
        days = [(first_day, last_day)]
    else:
        hours, days = [(first_hour, last_hour)], []
    return hours, days, (first_hour, last_hour)


class UsageWindows:
    """One customer's usage as far as decisions at times in ``span`` need it: bucket totals and
    the records at the windows' edges (see the module docstring). Usage recorded later in the
    same transaction is added with :meth:`add`, so later decisions count it."""

    def __init__(self, span: UsageSpan, operations: Iterable[str] = OPERATIONS) -> None:
        self.span = span
        self.operations = frozenset(operations)
        self._records: dict[str, list[UsageRecord]] = {}
        self._totals: dict[str, dict[tuple[int, datetime], Decimal]] = {}
        # What :meth:`used` summed of an operation's totals for decisions in one UTC hour:
        # (operation, hour) → (daily, monthly). Valid while the totals it walked are unchanged
        # (see add and _forget_totals_sums).
        self._totals_sums: dict[tuple[str, datetime], tuple[Decimal, Decimal]] = {}

    @classmethod
    def of_records(
        cls, records: Iterable[UsageRecord], first: datetime, last: datetime
    ) -> UsageWindows:
        windows = cls(UsageSpan.of(first, last))
        for record in records:
            windows.add(record)
        return windows

    def covers(self, operation: str, now: datetime) -> bool:
        """Whether ``used(operation, now)`` can be answered from what was read."""
        return operation in self.operations and self.span.covers(now)

    def add_total(
        self, operation: str, length_s: int, starts_at: datetime, amount: Decimal
    ) -> None:
        totals = self._totals.setdefault(operation, {})
        key = (length_s, starts_at)
        totals[key] = totals.get(key, ZERO) + amount
        if self._totals_sums:
            self._totals_sums.clear()

    def add_record(self, record: UsageRecord) -> None:
        """A record as read from the edges (its buckets are read separately)."""
        self._records.setdefault(record.operation, []).append(record)

    def add(self, record: UsageRecord) -> None:
        """A record and its share of the buckets."""
        # add_record and add_total, inline (every allowed decision adds its record).
        operation, at, amount = record.operation, record.occurred_at, record.amount
        self._records.setdefault(operation, []).append(record)
        totals = self._totals.setdefault(operation, {})
        for length_s in BUCKET_LENGTHS_S:
            key = (length_s, bucket_start(at, length_s))
            totals[key] = totals.get(key, ZERO) + amount
        sums = self._totals_sums
        if sums:
            # A sum for the hour H walks only buckets that start before H and its day: a record
            # at H or later (the usual case, decisions come in time order) changes none of the
            # buckets it added up, whether it adds to a bucket or makes a new one (which comes
            # last in the walk). Anything earlier forgets the operation's sums.
            stale = [known for known in sums if known[0] == operation and not (at >= known[1])]
            for known in stale:
                del sums[known]

    def retain(self, span: UsageSpan) -> None:
        """Keep only what ``span`` needs (its records and bucket totals; what was added for
        decisions inside the old span lies in its ranges, so it is kept or was never read),
        and answer for ``span`` from now on — after the caller adds what
        ``span.beyond(old span)`` reads."""
        records = _edges_of(span.record_ranges)
        hours, days = _edges_of(span.hour_ranges), _edges_of(span.day_ranges)
        # Every record and total of the customer is tested (a cache keeps them batch after
        # batch): by halving over the ranges' edges, one C call each (see _edges_of).
        self._records = {
            operation: [record for record in kept if bisect_right(records, record.occurred_at) & 1]
            for operation, kept in self._records.items()
        }
        self._totals = {
            operation: {
                key: amount
                for key, amount in totals.items()
                if bisect_right(hours if key[0] == 3600 else days, key[1]) & 1
            }
            for operation, totals in self._totals.items()
        }
        self._totals_sums.clear()
        self.span = span

    def used(self, operation: str, now: datetime) -> tuple[Decimal, Decimal]:
        """What was used of ``operation`` in the 24 h and the 30 days up to ``now``."""
        # covers(), inline: every decision asks.
        span = self.span
        assert operation in self.operations, f"usage of {operation} was not read"
        assert span.first <= now <= span.last, f"usage at {now} was not read"
        records = self._records.get(operation, ())
        # Both windows in one walk over the totals and records (each sum adds the same values in
        # the same order as _window_sum would on its own).
        (
            (d_hour_0, d_hour_1, d_days, d_first, d_last),
            (m_hour_0, m_hour_1, m_days, m_first, m_last),
        ) = _hour_bounds(now)
        d_start, m_start = now - DAY, now - MONTH
        # The totals' part depends only on the hour of now (in UTC; the bounds above are that
        # hour's): summed once per hour and operation while the totals it walked stay as they
        # were, then the records are added to it as before (the same additions in the same
        # order).
        key = (operation, d_last)
        known = self._totals_sums.get(key) if now.tzinfo is UTC else None
        if known is None:
            daily, monthly = self._totals_sum(
                operation, d_hour_0, d_hour_1, d_days, m_hour_0, m_hour_1, m_days
            )
            if now.tzinfo is UTC:
                self._totals_sums[key] = (daily, monthly)
        else:
            daily, monthly = known
        if d_last == m_last:
            # Both windows end in the hour of now (always, see _both_window_bounds): a record in
            # it, up to now, counts in both, and is found with one test instead of one per
            # window (most records are recent). The same additions in the same order.
            for record in records:
                at = record.occurred_at
                if d_last <= at <= now:
                    daily += record.amount
                    monthly += record.amount
                else:
                    if d_start < at < d_first:
                        daily += record.amount
                    if m_start < at < m_first:
                        monthly += record.amount
            return daily, monthly
        for record in records:
            at = record.occurred_at
            if d_start < at < d_first or d_last <= at <= now:
                daily += record.amount
            if m_start < at < m_first or m_last <= at <= now:
                monthly += record.amount
        return daily, monthly

    def _totals_sum(
        self,
        operation: str,
        d_hour_0: _Range,
        d_hour_1: _Range,
        d_days: _Range,
        m_hour_0: _Range,
        m_hour_1: _Range,
        m_days: _Range,
    ) -> tuple[Decimal, Decimal]:
        """The totals' part of :meth:`used` (the bucket totals in the windows' ranges)."""
        daily = monthly = ZERO
        for (length_s, starts_at), amount in self._totals.get(operation, {}).items():
            if length_s == 3600:
                if d_hour_0[0] <= starts_at < d_hour_0[1] or d_hour_1[0] <= starts_at < d_hour_1[1]:
                    daily += amount
                if m_hour_0[0] <= starts_at < m_hour_0[1] or m_hour_1[0] <= starts_at < m_hour_1[1]:
                    monthly += amount
            else:
                if d_days[0] <= starts_at < d_days[1]:
                    daily += amount
                if m_days[0] <= starts_at < m_days[1]:
                    monthly += amount
        return daily, monthly


_Range = tuple[datetime, datetime]
_Bounds = tuple[_Range, _Range, _Range, datetime, datetime, datetime]
_ONE_US = timedelta(microseconds=1)
_DAY_HOURS_BACK = DAY - HOUR
_MONTH_DAYS_BACK = MONTH - DAY


def _both_window_bounds(now: datetime) -> tuple[_Bounds, _Bounds]:
    """:func:`_window_bounds` of the 24 h and the 30-day window, from the hour of ``now``: both
    windows are whole hours long (30 days whole days), so their hour and day boundaries are that
    hour's and its day's moved back — three bucket computations instead of eight."""
    last_hour = bucket_start(now, 3600)
    last_day = bucket_start(last_hour, 86400)
    empty = (now, now)
    bounds = []
    for window, first_day in (
        (DAY, bucket_start(last_hour - _DAY_HOURS_BACK - _ONE_US, 86400) + DAY),
        # The 30-day window starts in the hour of now − 30 days, whose day is last_day − 30 days.
        (MONTH, last_day - _MONTH_DAYS_BACK),
    ):
        first_hour = last_hour - window + HOUR
        if first_day <= last_day:
            hour_0, hour_1, days = (
                (first_hour, first_day),
                (last_day, last_hour),
                (first_day, last_day),
            )
        else:
            hour_0, hour_1, days = (first_hour, last_hour), empty, empty
        bounds.append((hour_0, hour_1, days, now - window, first_hour, last_hour))
    return bounds[0], bounds[1]


# What _hour_bounds gives for the recent hours.
_HOUR_BOUNDS: dict[datetime, tuple[_HourBounds, _HourBounds]] = {}
_HOUR_BOUNDS_MAX = 4096


_HourBounds = tuple[_Range, _Range, _Range, datetime, datetime]


def _hour_bounds(now: datetime) -> tuple[_HourBounds, _HourBounds]:
    """:func:`_both_window_bounds` for :meth:`UsageWindows.used` without the windows' starts
    (``now - window``, which the caller subtracts), remembered per hour: every decision asks,
    and ingestion decides many times in each hour. Within the hour of ``now`` nothing else
    moves with ``now`` but the empty ranges, remembered as ``(hour, hour)`` instead of ``(now,
    now)`` — as empty (nothing lies in ``[x, x)``). Bounded; emptied when full."""
    if now.tzinfo is not UTC:
        return _without_starts(_both_window_bounds(now))
    # In UTC an hour bucket starts where minutes, seconds and microseconds are zero.
    hour = bucket_start(now, 3600)
    known = _HOUR_BOUNDS.get(hour)
    if known is None:
        if len(_HOUR_BOUNDS) >= _HOUR_BOUNDS_MAX:
            _HOUR_BOUNDS.clear()
        known = _HOUR_BOUNDS[hour] = _without_starts(_both_window_bounds(hour))
    return known


def _without_starts(bounds: tuple[_Bounds, _Bounds]) -> tuple[_HourBounds, _HourBounds]:
    daily, monthly = bounds
    return (*daily[:3], *daily[4:]), (*monthly[:3], *monthly[4:])


def _window_bounds(
    now: datetime, window: timedelta
) -> tuple[_Range, _Range, _Range, datetime, datetime, datetime]:
    """:func:`_window_parts` as :meth:`UsageWindows.used` walks it: the two hour ranges and the
    day range (missing ones empty), the window's start, and the two bounds of its records."""
    hours, days, (first_hour, last_hour) = _window_parts(now, window)
    empty = (now, now)
    hour_0 = hours[0] if hours else empty
    hour_1 = hours[1] if len(hours) > 1 else empty
    return hour_0, hour_1, days[0] if days else empty, now - window, first_hour, last_hour


def _window_sum(
    totals: Mapping[tuple[int, datetime], Decimal],
    records: Iterable[UsageRecord],
    now: datetime,
    window: timedelta,
) -> Decimal:
    hours, days, (first_hour, last_hour) = _window_parts(now, window)
    start = now - window
    total = ZERO
    # At most two hour ranges and one day range (see _window_parts); missing ones are empty.
    (hour_low_0, hour_high_0), (hour_low_1, hour_high_1) = (*hours, (now, now), (now, now))[:2]
    day_low, day_high = days[0] if days else (now, now)
    for (length_s, starts_at), amount in totals.items():
        if length_s == 3600:
            if hour_low_0 <= starts_at < hour_high_0 or hour_low_1 <= starts_at < hour_high_1:
                total += amount
        elif day_low <= starts_at < day_high:
            total += amount
    for record in records:
        at = record.occurred_at
        if start < at < first_hour or last_hour <= at <= now:
            total += record.amount
    return total
