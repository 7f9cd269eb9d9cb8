"""One transaction's compliance decisions, and the usage kept across one writer's transactions.

A :class:`ComplianceSession` (opened by :meth:`sluice.services.compliance.KycRegistry.session`)
reads the customers concerned once, in the operation's own transaction, decides in memory and
writes what it decided — usage against the limits, status changes, review items, held deposits
and the audit records — into that same transaction. So an operation and the usage it consumed
commit together or not at all, and two concurrent operations of one customer cannot both slip under
a limit: the customer's row is locked (PostgreSQL ``FOR UPDATE``) before the usage is read.

What a session reads of a customer's usage is bounded, whatever their history: the hour and day
totals and the edge records of the rolling windows (exact sums, see
:class:`~sluice.domain.compliance.UsageWindows`), the latest operations the risk rules look at
(at most ``RiskRules.recent_operations`` within the rules' longest window) and, for a payout, one
indexed look-up of whether its counterparty was dealt with in the last 30 days.

A :class:`UsageCache` keeps what sessions read of a customer's usage from one transaction to the
next of the same writer (ingestion, batch after batch): while the customer's usage version says
nobody else changed it, a session reads only what it lacks. :mod:`sluice.services.compliance`
re-exports the public names.
"""

from __future__ import annotations

from bisect import bisect_right, insort
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from operator import attrgetter
from typing import TYPE_CHECKING, cast

from sluice.domain.amounts import format_amount
from sluice.domain.audit import AuditEntry, FloatFreeArray, FloatFreeObject
from sluice.domain.compliance import (
    MONTH,
    OPERATIONS,
    Check,
    ComplianceDecision,
    ComplianceRequest,
    HeldDeposit,
    LimitLadder,
    Profile,
    ReviewItem,
    UsageRecord,
    UsageSpan,
    UsageWindows,
    decide,
)
from sluice.domain.events import Event, new_event
from sluice.domain.risk import CASH_OUT_OPERATIONS, assess_risk
from sluice.ports import UnitOfWork
from sluice.ports.repositories import UsageWrite

if TYPE_CHECKING:
    # Only for annotations: the registry module imports this one to open sessions.
    from sluice.services.compliance import KycRegistry

# Given a decision, the operation its audit record is named for and the state change that record
# adds (see ComplianceSession.decide).
AuditedAs = Callable[[ComplianceDecision], tuple[str, dict[str, object]]]


_LAST_KEY = "\U0010ffff"  # after every operation id: (t, _LAST_KEY) follows every record at t


@dataclass(slots=True)
class _Kept:
    """One customer's usage as a cache keeps it: the windows for decisions in their span, and
    every usage row with ``(occurred_at, operation_id) >= complete_from`` and ``occurred_at <=
    high`` for the risk rules, all as of usage version ``version``."""

    version: int
    windows: UsageWindows
    recent: list[UsageRecord]
    complete_from: tuple[datetime, str]
    high: datetime


class UsageCache:
    """Customers' usage kept across the sessions of one writer (ingestion, batch after batch).

    Every transaction that changes a customer's usage rows moves their usage version (see
    ``ComplianceRepository.usage_versions``). A session reads the versions of its customers; one
    still at the version kept — nobody else changed the usage since, and what this writer added
    was kept along — is not read again: only the ranges the new span needs beyond the old one,
    and the rows after the last time kept. Anyone else's change (a withdrawal request, a refund,
    an officer's release, in this process or another) shows as another version, and the
    customer is read afresh. What a session adds is trusted only once its transaction commits
    (:meth:`commit`); a transaction that does not commit must :meth:`clear` the cache.
    """

    CUSTOMERS_MAX = 20_000  # kept at most; beyond, the cache starts over

    def __init__(self) -> None:
        self._kept: dict[str, _Kept] = {}
        self._settled: dict[str, int] = {}  # the versions the open transaction leaves

    def __len__(self) -> int:
        return len(self._kept)

    def clear(self) -> None:
        self._kept.clear()
        self._settled.clear()

    def commit(self) -> None:
        """The transaction that used the cache committed: keep what it left, at its versions."""
        for customer_id, version in self._settled.items():
            kept = self._kept.get(customer_id)
            if kept is not None:
                kept.version = version
        self._settled.clear()
        if len(self._kept) > self.CUSTOMERS_MAX:
            self._kept.clear()

    def _drop(self, customer_id: str) -> None:
        self._kept.pop(customer_id, None)
        self._settled.pop(customer_id, None)


def effective_ladder(configured: LimitLadder, uow: UnitOfWork) -> LimitLadder:
    """The limit ladder in force: the configured one with the compliance officer's overrides
    (read again every time: an officer's change counts from the next transaction on)."""
    return configured.with_overrides(uow.compliance.limit_overrides())


class ComplianceSession:
    """The decisions of one transaction (see the module docstring)."""

    def __init__(
        self,
        registry: KycRegistry,
        uow: UnitOfWork,
        customer_ids: Collection[str],
        counterparties: Collection[str],
        *,
        since: datetime,
        until: datetime | None,
        operations: Collection[str],
        lock: bool,
        cache: UsageCache | None = None,
    ) -> None:
        self._registry = registry
        self._uow = uow
        self._cache = cache
        rules = registry.settings.risk
        self._recent_window, self._recent_count = rules.recent_window, rules.recent_operations
        repo = uow.compliance
        ids = sorted(set(customer_ids))
        self.profiles: dict[str, Profile] = repo.profiles(ids, lock=lock) if ids else {}
        self._windows: dict[str, UsageWindows] = {}
        self._recent: dict[str, list[UsageRecord]] = {}
        self._versions: dict[str, int] = {}
        # The cache's rows of each customer, which the usage this session records joins too.
        self._kept_recent: dict[str, list[UsageRecord]] = {}
        if ids and cache is not None:
            self._read_usage_kept(cache, ids, since, until or since, operations)
        elif ids:
            self._read_usage(ids, since, until or since, operations)
        self.ladder = effective_ladder(registry.settings.ladder, uow)
        self._flagged: dict[str, str] = repo.flagged(set(counterparties)) if counterparties else {}
        self._asked_flags: set[str] = set(counterparties)
        self._new_usage: dict[str, list[UsageRecord]] = {}
        self._profile_changes: dict[str, Profile] = {}
        self._reviews: list[ReviewItem] = []
        self._holds: list[HeldDeposit] = []
        self._audit: list[AuditEntry] = []
        self._events: list[Event] = []
        # The audit content of the checks and KYC states the decisions share, by identity (most
        # checks pass the same way every time and are the same objects, see
        # sluice.domain.compliance.decide; a customer's profile is one object until it changes).
        # Each is kept with its content, so its id is not another object's while kept.
        self._check_contents: dict[int, tuple[Check, Mapping[str, object]]] = {}
        self._kyc_contents: dict[int, tuple[Profile, Mapping[str, object]]] = {}

    # -- reading ----------------------------------------------------------------------------------

    def _read_usage(
        self,
        customer_ids: Collection[str],
        first: datetime,
        last: datetime,
        operations: Collection[str],
    ) -> None:
        repo = self._uow.compliance
        rules = self._registry.settings.risk
        self._windows.update(repo.usage_windows(customer_ids, first, last, operations))
        self._recent.update(
            repo.recent_usage(
                customer_ids, first - rules.recent_window, last, rules.recent_operations
            )
        )

    def _read_usage_kept(
        self,
        cache: UsageCache,
        customer_ids: Sequence[str],
        first: datetime,
        last: datetime,
        operations: Collection[str],
    ) -> None:
        """:meth:`_read_usage` through ``cache``: customers still at the version kept are read
        only for what the span ``[first, last]`` needs beyond what is kept."""
        repo = self._uow.compliance
        rules = self._registry.settings.risk
        window, count = rules.recent_window, rules.recent_operations
        span = UsageSpan.of(first, last)
        kinds = frozenset(operations)
        self._versions = repo.usage_versions(customer_ids)
        kept: dict[str, _Kept] = {}
        for customer_id in customer_ids:
            found = cache._kept.get(customer_id)
            if (
                found is not None
                and found.version == self._versions[customer_id]
                and found.windows.operations == kinds
            ):
                kept[customer_id] = found
            else:
                cache._drop(customer_id)
        # The risk rules' rows after the last time kept: every one up to the span's end, so
        # what is kept stays complete (grouped: one read per time kept).
        by_high: dict[datetime, list[str]] = {}
        for customer_id, found in kept.items():
            if found.high < last:
                by_high.setdefault(found.high, []).append(customer_id)
        for high, group in by_high.items():
            newer = repo.usage_between(group, high, last)
            for customer_id in group:
                found = kept[customer_id]
                found.recent.extend(newer[customer_id])
                found.high = last
        # The slice a fresh read gives is the latest ``count`` rows in (first − window, last];
        # kept rows give the same only if they hold all of those.
        for customer_id in list(kept):
            if not _slice_kept(kept[customer_id], first - window, last, count):
                del kept[customer_id]
                cache._drop(customer_id)
        # The windows: only the ranges the span needs beyond the one kept (grouped by span).
        by_span: dict[UsageSpan, dict[str, UsageWindows]] = {}
        for customer_id, found in kept.items():
            if found.windows.span != span:
                by_span.setdefault(found.windows.span, {})[customer_id] = found.windows
        for old_span, windows in by_span.items():
            records, hours, days = span.beyond(old_span)
            for found_windows in windows.values():
                found_windows.retain(span)
            repo.read_usage_ranges(windows, records, hours, days)
        fresh = [customer_id for customer_id in customer_ids if customer_id not in kept]
        if fresh:
            windows_read = repo.usage_windows(fresh, first, last, operations)
            recent_read = repo.recent_usage(fresh, first - window, last, count)
            for customer_id in fresh:
                recent = recent_read[customer_id]
                complete_from = (
                    (first - window, _LAST_KEY) if len(recent) < count else _record_order(recent[0])
                )
                kept[customer_id] = cache._kept[customer_id] = _Kept(
                    self._versions[customer_id],
                    windows_read[customer_id],
                    list(recent),
                    complete_from,
                    last,
                )
        for customer_id, found in kept.items():
            self._windows[customer_id] = found.windows
            self._recent[customer_id] = _slice(found, first - window, last, count)
            _prune_recent(found, first - window, count)
            self._kept_recent[customer_id] = found.recent

    def _usage_at(self, customer_id: str, operation: str, at: datetime) -> UsageWindows:
        """The customer's usage read for decisions at ``at`` (read again if the session's span
        does not cover it; what this session recorded and has not flushed is added back)."""
        windows = self._windows.get(customer_id)
        if windows is None or not windows.covers(operation, at):
            if self._cache is not None:
                self._cache._drop(customer_id)  # read afresh below, no longer what it keeps
                self._kept_recent.pop(customer_id, None)
            self._read_usage([customer_id], at, at, OPERATIONS)
            windows = self._windows[customer_id]
            for record in self._new_usage.get(customer_id, ()):
                windows.add(record)
                _insort(self._recent[customer_id], record)
        return windows

    def _recent_before(self, customer_id: str, at: datetime) -> list[UsageRecord]:
        """The slice of recent operations the risk rules see for a decision at ``at``."""
        recent = self._recent.get(customer_id)
        if not recent:
            return []
        # The rows are in (time, operation id) order: the slice is found by halving — or at once
        # in the usual case, every row at or before ``at`` and none before the window (what
        # bisect_right gives then, without its probes).
        until = (at, _LAST_KEY)
        if _record_order(recent[-1]) <= until:
            high = len(recent)
        else:
            high = bisect_right(recent, until, key=_record_order)
        start = (at - self._recent_window, _LAST_KEY)
        if start < _record_order(recent[0]):
            low = 0
        else:
            low = bisect_right(recent, start, key=_record_order)
        return recent[max(low, high - self._recent_count) : high]

    def _counterparties_seen(self, request: ComplianceRequest, at: datetime) -> set[str]:
        counterparty = request.counterparty
        if counterparty is None or request.operation not in CASH_OUT_OPERATIONS:
            return set()
        return self._uow.compliance.counterparties_seen(
            request.customer_id, [counterparty], at - MONTH, at
        )

    def listed(self, address: str) -> str | None:
        """Why ``address`` may not be dealt with (flagged by an officer, or on the sanctions list),
        or None."""
        if address not in self._asked_flags:
            self._flagged.update(self._uow.compliance.flagged([address]))
            self._asked_flags.add(address)
        reason = self._flagged.get(address)
        if reason is not None:
            return f"flagged ({reason})"
        screen = self._registry.screen
        if screen is not None:
            hit = screen.screen_address(address)
            if hit is not None:
                return f"on the sanctions list ({hit.entity_id} {hit.entity_name})"
        return None

    # -- deciding -------------------------------------------------------------------------------

    def decide(
        self,
        request: ComplianceRequest,
        *,
        operation_id: str,
        at: datetime,
        actor: str,
        record: bool,
        parameters: Mapping[str, object] | None = None,
        audited_as: AuditedAs | None = None,
    ) -> ComplianceDecision:
        """Decide ``request`` at ``at``; when allowed and ``record``, its usage counts from now on
        (for later decisions of this session too). Always audited: by a record of its own
        (``compliance_check:<operation>``), or, with ``audited_as``, by the record of what the
        caller does with the decision — the operation that names and the state change it adds
        (ingestion credits or holds a deposit this way, one record for the decision and what
        came of it)."""
        registry = self._registry
        rules = registry.settings.risk
        customer_id, requested, counterparty = (
            request.customer_id,
            request.operation,
            request.counterparty,
        )
        profile = self.profiles.get(customer_id)
        # _usage_at's test of what was read, inline (it reads only when that does not cover at).
        windows = self._windows.get(customer_id)
        if (
            windows is None
            or requested not in windows.operations
            or not windows.span.first <= at <= windows.span.last
        ):
            windows = self._usage_at(customer_id, requested, at)
        daily, monthly = windows.used(requested, at)
        current = UsageRecord(operation_id, requested, request.amount, at, counterparty)
        risk = None
        if profile is not None and request.amount > 0:
            risk = assess_risk(
                self._recent_before(customer_id, at),
                current,
                rules=rules,
                limits=self.ladder.of(profile.tier, requested),
                now=at,
                counterparties_seen=(
                    self._counterparties_seen(request, at)
                    if counterparty is not None and requested in CASH_OUT_OPERATIONS
                    else ()
                ),
                in_order=True,  # _recent_before's slice: in time order, none after at
            )
        listed: str | None = None
        if counterparty:
            if counterparty in self._asked_flags and registry.screen is None:
                # listed(), for an address already asked about and no sanctions list.
                reason = self._flagged.get(counterparty)
                listed = None if reason is None else f"flagged ({reason})"
            else:
                listed = self.listed(counterparty)
        decision = decide(
            request,
            profile,
            ladder=self.ladder,
            used_daily=daily,
            used_monthly=monthly,
            counterparty_listed=listed,
            risk_score=risk.score if risk is not None else 0,
            risk_threshold=rules.threshold,
            risk_flags=risk.flag_names() if risk is not None else (),
        )
        allowed = decision.allowed
        changes: list[Mapping[str, object]] = []
        amount_text = format_amount(request.amount)
        if allowed and record:
            windows.add(current)
            _insort(self._recent.setdefault(request.customer_id, []), current)
            kept_recent = self._kept_recent.get(request.customer_id)
            if kept_recent is not None:
                _insort(kept_recent, current)
            self._new_usage.setdefault(request.customer_id, []).append(current)
            changes.append(
                _texts(
                    {
                        "usage": request.operation,
                        "amount": amount_text,
                        "daily_used": format_amount(daily + request.amount),
                        "monthly_used": format_amount(monthly + request.amount),
                    }
                )
            )
        over = risk is not None and risk.over_threshold
        if over and profile is not None and risk is not None and profile.status == "active":
            reason = f"risk score {risk.score}: {', '.join(risk.flag_names())}"
            changed = replace(
                profile, status="under_review", status_reason=reason, risk_score=risk.score
            )
            self.set_profile(changed)
            self._events.append(kyc_event(profile, changed, at=at, actor=actor, reason=reason))
            self.open_review(
                ReviewItem(
                    id=f"risk:{request.customer_id}:{operation_id}",
                    kind="risk",
                    reason=reason,
                    opened_at=at,
                    customer_id=request.customer_id,
                    subject=operation_id,
                )
            )
            changes.append(_texts({"status": "under_review", "was": "active", "reason": reason}))
        if audited_as is not None:
            operation, outcome = audited_as(decision)
            changes.append(_texts(outcome))
        else:
            operation = f"compliance_check:{request.operation}"
        self._audit.append(  # what self.audit does
            AuditEntry(
                operation_id=operation_id,
                operation=operation,
                actor=actor,
                recorded_at=at,
                customer_id=request.customer_id,
                kyc=_kyc_content(profile, self._kyc_contents) if profile is not None else None,
                parameters=_texts(
                    {
                        "operation": request.operation,
                        "amount": amount_text,
                        "counterparty": request.counterparty,
                        **(parameters or {}),
                    }
                ),
                checks=_checks_content(decision.checks, self._check_contents),
                state_changes=_array(changes),
                error=None if allowed else f"{decision.code}: {decision.summary()}",
            )
        )
        return decision

    # -- writing ----------------------------------------------------------------------------------

    def set_profile(self, profile: Profile) -> None:
        self.profiles[profile.customer_id] = profile
        self._profile_changes[profile.customer_id] = profile

    def open_review(self, review: ReviewItem) -> None:
        self._reviews.append(review)

    def hold(self, held: HeldDeposit) -> None:
        self._holds.append(held)

    def audit(self, entry: AuditEntry) -> None:
        self._audit.append(entry)

    def flush(self) -> None:
        """Write what the session decided into the caller's transaction (the caller commits)."""
        repo = self._uow.compliance
        if self._new_usage:
            written = repo.record_usage_of(self._new_usage)
            if self._cache is not None:
                self._settle_cache(self._cache, written)
        changed_at = max((entry.recorded_at for entry in self._audit), default=None)
        for profile in self._profile_changes.values():
            assert changed_at is not None, "a status change is always audited"
            repo.set_profile(
                profile.customer_id,
                at=changed_at,
                status=profile.status,
                status_reason=profile.status_reason,
                risk_score=profile.risk_score,
            )
        for held in self._holds:
            repo.add_hold(held)
        for review in self._reviews:
            repo.open_review(review)
        if self._audit:
            self._uow.audit.append(self._audit)
        if self._events:
            self._uow.events.add(self._events)
            self._events = []
        self._new_usage = {}
        self._profile_changes = {}
        self._holds = []
        self._reviews = []
        self._audit = []

    def _settle_cache(self, cache: UsageCache, written: UsageWrite) -> None:
        """What the cache may keep once this transaction commits: a customer whose every new
        row went in and whose version moved by exactly this write (nobody else's in between)."""
        for customer_id, records in self._new_usage.items():
            version = written.versions.get(customer_id)
            if (
                customer_id in cache._kept
                and version == self._versions.get(customer_id, -2) + 1
                and all(record.operation_id in written.inserted for record in records)
            ):
                cache._settled[customer_id] = version
            else:
                cache._drop(customer_id)


# -- audit content ------------------------------------------------------------------------------
# A decision's audit record is built of values whose types are known here, so it is marked
# float-free (FloatFreeObject/FloatFreeArray) where they are checked to be what canonical content
# holds as it is — sparing the audit log a walk over every record; anything else (a caller's
# parameter that is not text, say) stays a plain dict or list, which the log walks as before.


def _texts(value: Mapping[str, object]) -> Mapping[str, object]:
    """``value`` marked float-free when every key is text and every value text or nothing."""
    for key, item in value.items():
        if type(key) is not str or not (item is None or type(item) is str):
            return value
    return FloatFreeObject(value)


def _array(values: list[Mapping[str, object]]) -> Sequence[Mapping[str, object]]:
    """``values`` marked float-free when every one of them is."""
    for value in values:
        if type(value) is not FloatFreeObject:
            return values
    return cast(Sequence[Mapping[str, object]], FloatFreeArray(values))


def _kyc_content(
    profile: Profile, known: dict[int, tuple[Profile, Mapping[str, object]]]
) -> Mapping[str, object]:
    """``profile.as_dict()``, marked float-free when its fields are what they should be (that
    content is kept in ``known``, see ComplianceSession.__init__)."""
    found = known.get(id(profile))
    if found is not None and found[0] is profile:
        return found[1]
    tier, status, risk_score = profile.tier, profile.status, profile.risk_score
    if (
        type(profile) is Profile
        and type(tier) is int
        and -(2**63) <= tier < 2**63
        and type(status) is str
        and type(risk_score) is int
        and -(2**63) <= risk_score < 2**63
    ):
        # What Profile.as_dict gives, in its order.
        content = FloatFreeObject(tier=tier, status=status, risk_score=risk_score)
        known[id(profile)] = (profile, content)
        return content
    return profile.as_dict()


def _checks_content(
    checks: Sequence[Check], known: dict[int, tuple[Check, Mapping[str, object]]]
) -> Sequence[Mapping[str, object]]:
    """The checks as the audit record lists them (``Check.as_dict``), marked float-free when
    every field is of its declared type (such content is kept in ``known``, see
    ComplianceSession.__init__)."""
    content: list[Mapping[str, object]] = []
    plain = True
    for check in checks:
        found = known.get(id(check))
        if found is not None and found[0] is check:
            content.append(found[1])
            continue
        name, passed, reason = check.name, check.passed, check.reason
        if (
            type(check) is Check
            and type(name) is str
            and type(passed) is bool
            and type(reason) is str
        ):
            # What Check.as_dict gives, in its order.
            item = FloatFreeObject(name=name, passed=passed, reason=reason)
            known[id(check)] = (check, item)
            content.append(item)
        else:
            content.append(check.as_dict())
            plain = False
    return cast(Sequence[Mapping[str, object]], FloatFreeArray(content)) if plain else content


# The order of usage rows: (time, operation id). An attrgetter, not a function: the bisections
# and insertions of every decision call it (a C call instead of a Python frame).
_record_order: Callable[[UsageRecord], tuple[datetime, str]] = attrgetter(
    "occurred_at", "operation_id"
)


def _insort(records: list[UsageRecord], record: UsageRecord) -> None:
    """``insort(records, record, key=_record_order)``; a record after every one (the usual case:
    decisions come in time order) is appended without bisecting."""
    if not records or _record_order(records[-1]) <= _record_order(record):
        records.append(record)
    else:
        insort(records, record, key=_record_order)


def _between(records: list[UsageRecord], start: datetime, last: datetime) -> tuple[int, int]:
    """The positions of the rows with ``start < occurred_at <= last`` in ``records`` (in time
    order, so found by halving: ``(t, _LAST_KEY)`` follows every row at ``t``)."""
    low = bisect_right(records, (start, _LAST_KEY), key=_record_order)
    return low, bisect_right(records, (last, _LAST_KEY), lo=low, key=_record_order)


def _slice_kept(kept: _Kept, start: datetime, last: datetime, count: int) -> bool:
    """Whether the kept rows hold the latest ``count`` rows in ``(start, last]`` as the
    database has them: all rows after ``start`` are kept, or at least ``count`` of them (every
    row from ``complete_from`` on is)."""
    if kept.complete_from <= (start, _LAST_KEY):
        return True
    low, high = _between(kept.recent, start, last)
    return high - low >= count


def _slice(kept: _Kept, start: datetime, last: datetime, count: int) -> list[UsageRecord]:
    """The latest ``count`` kept rows in ``(start, last]``, oldest first: what
    ``recent_usage(…, start, last, count)`` reads (see :func:`_slice_kept`)."""
    low, high = _between(kept.recent, start, last)
    return kept.recent[low:high][-count:]


def _prune_recent(kept: _Kept, start: datetime, count: int) -> None:
    """Forget the rows no later slice needs while time moves on: those at or before ``start``,
    and all but the latest ``count`` (a later slice ends at a later time, so its latest rows are
    among these and the ones added after)."""
    recent = kept.recent
    by_time = 0
    while by_time < len(recent) and recent[by_time].occurred_at <= start:
        by_time += 1
    # Every row after ``start`` is still kept (from complete_from on)…
    complete_from = max(kept.complete_from, (start, _LAST_KEY))
    cut = by_time
    if len(recent) - count > by_time:
        # … unless older ones go by count: then complete from the oldest one kept.
        cut = len(recent) - count
        complete_from = _record_order(recent[cut])
    del recent[:cut]
    kept.complete_from = complete_from


def kyc_event(
    before: Profile, after: Profile, *, at: datetime, actor: str, reason: str | None
) -> Event:
    """``customer_kyc_changed``: the customer's tier or status, and what they were."""
    return new_event(
        "customer_kyc_changed",
        after.customer_id,
        {
            "customer_id": after.customer_id,
            "tier": after.tier,
            "was_tier": before.tier,
            "status": after.status,
            "was_status": before.status,
            "reason": reason,
            "actor": actor,
        },
        at=at,
    )
