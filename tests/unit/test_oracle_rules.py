"""The price oracle's rules (``sluice.domain.oracle``): each rule fails closed in its own test,
the fallback to the secondary and the return to the primary, the ``[oracle]`` section and the
JSON pointers; then hypothesis drives the oracle service (on an in-memory repository and a
scripted reader) over sequences of readings and checks, against a reference written apart
from the code, that a price breaking a rule is never used and that a feed on its fallback
returns to the primary only when both sources agree."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import count
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from sluice.config import DeploymentConfig, OracleConfig
from sluice.domain.errors import NotFoundError, OracleOfflineError, SluiceError
from sluice.domain.oracle import (
    Accepted,
    Bounds,
    FeedSpec,
    Observation,
    OracleLimits,
    Reading,
    Rejection,
    SourceSpec,
    check_observation,
    cross_price,
    decide,
    divergence,
    invert_price,
)
from sluice.oracle.pointers import PointerError, parse_pointer, resolve_pointer
from sluice.ports.oracle import FeedState, RecordedRejection
from sluice.services.oracle import OracleService

D = Decimal
NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
LIMITS = OracleLimits()  # margin 60 s, skew 1 s, jump 50 %, divergence 5 %
HEARTBEAT_S = 3600


def source(*, bounds: Bounds | None = None, location: str = "primary") -> SourceSpec:
    return SourceSpec(
        kind="file",
        location=location,
        price_pointer="/price",
        time_pointer="/time",
        round_pointer="/round",
        decimals=8,
        heartbeat_s=HEARTBEAT_S,
        bounds=bounds,
    )


def seen(price: str, *, age_s: float = 10, round_id: int | None = 7) -> Observation:
    return Observation(D(price), NOW - timedelta(seconds=age_s), round_id)


def last(price: str, round_id: int | None = 7) -> Accepted:
    return Accepted(D(price), NOW - timedelta(seconds=100), round_id, NOW - timedelta(seconds=90))


def rule_of(
    observation: Observation, *, spec: SourceSpec | None = None, before: Accepted | None = None
) -> str | None:
    rejection = check_observation(
        observation, source=spec or source(), last=before, limits=LIMITS, now=NOW
    )
    return rejection.rule if rejection is not None else None


# --- each rule fails closed --------------------------------------------------------------------


def test_a_positive_fresh_in_bounds_price_passes_every_rule() -> None:
    spec = source(bounds=Bounds(D(1), D(1000)))
    assert rule_of(seen("100"), spec=spec, before=last("120", 6)) is None


@pytest.mark.parametrize("price", ["0", "-1", "-0.00000001"])
def test_a_price_that_is_not_positive_is_refused(price: str) -> None:
    assert rule_of(seen(price)) == "not_positive"


def test_a_price_without_a_time_is_refused() -> None:
    zero = Observation(D(100), datetime.fromtimestamp(0, UTC), 7)
    assert rule_of(zero) == "zero_time"


def test_a_price_from_the_future_is_refused_beyond_the_clock_skew() -> None:
    assert rule_of(seen("100", age_s=-5)) == "future"
    assert rule_of(seen("100", age_s=-1)) is None  # within the 1 s skew


def test_a_price_older_than_heartbeat_plus_margin_is_stale() -> None:
    assert rule_of(seen("100", age_s=HEARTBEAT_S + 60)) is None
    assert rule_of(seen("100", age_s=HEARTBEAT_S + 61)) == "stale"


def test_a_round_id_going_backwards_is_refused() -> None:
    assert rule_of(seen("100", round_id=6), before=last("100", 7)) == "round_backwards"
    assert rule_of(seen("100", round_id=7), before=last("100", 7)) is None


@pytest.mark.parametrize("price", ["1", "1000", "0.5", "2000"])
def test_a_price_pinned_at_its_bounds_is_refused(price: str) -> None:
    assert rule_of(seen(price), spec=source(bounds=Bounds(D(1), D(1000)))) == "at_bound"


def test_a_jump_beyond_the_limit_from_the_last_accepted_price_is_refused() -> None:
    assert rule_of(seen("150"), before=last("100")) is None  # exactly 50 %
    assert rule_of(seen("150.00000001"), before=last("100")) == "jump"
    assert rule_of(seen("49.99999999"), before=last("100")) == "jump"


def test_a_primary_diverging_from_a_valid_secondary_is_refused() -> None:
    decision = decide(seen("100"), seen("106"), on_fallback=False, limits=LIMITS)
    assert ("primary", "divergence") in [(s, r.rule) for s, r in decision.rejections]
    assert decision.source != "primary"
    assert divergence(D(100), D(105)) == D("0.05")
    assert decide(seen("100"), seen("105"), on_fallback=False, limits=LIMITS).source == "primary"


@pytest.mark.parametrize("rule", ["unreachable", "malformed"])
def test_a_source_that_cannot_be_read_leaves_a_feed_without_secondary_offline(rule: str) -> None:
    decision = decide(Rejection(rule, "no"), None, on_fallback=False, limits=LIMITS)  # type: ignore[arg-type]
    assert decision.health == "offline"
    assert decision.observation is None
    assert [r.rule for _, r in decision.rejections] == [rule]


# --- fallback and the return to the primary ----------------------------------------------------

BAD = Rejection("stale", "old")


def test_a_failed_primary_falls_back_to_a_valid_secondary_at_the_fallback_fee() -> None:
    decision = decide(BAD, seen("101"), on_fallback=False, limits=LIMITS)
    assert (decision.health, decision.source, decision.on_fallback) == (
        "degraded",
        "secondary",
        True,
    )


def test_neither_source_usable_is_offline() -> None:
    decision = decide(BAD, Rejection("unreachable", "down"), on_fallback=False, limits=LIMITS)
    assert (decision.health, decision.source, decision.observation) == ("offline", None, None)


def test_on_fallback_a_valid_primary_alone_does_not_bring_the_feed_back() -> None:
    diverging = decide(seen("100"), seen("120"), on_fallback=True, limits=LIMITS)
    assert (diverging.health, diverging.source) == ("degraded", "secondary")
    no_secondary = decide(seen("100"), BAD, on_fallback=True, limits=LIMITS)
    assert (no_secondary.health, no_secondary.on_fallback) == ("offline", True)


def test_on_fallback_the_primary_returns_when_both_agree_again() -> None:
    decision = decide(seen("100"), seen("103"), on_fallback=True, limits=LIMITS)
    assert (decision.health, decision.source, decision.on_fallback) == (
        "healthy",
        "primary",
        False,
    )


def test_a_healthy_primary_stays_in_use_when_only_the_secondary_fails() -> None:
    decision = decide(seen("100"), BAD, on_fallback=False, limits=LIMITS)
    assert (decision.health, decision.source) == ("healthy", "primary")
    assert [(s, r.rule) for s, r in decision.rejections] == [("secondary", "stale")]


# --- composition -------------------------------------------------------------------------------


def test_inverting_and_crossing_are_exact_to_the_feeds_decimals() -> None:
    assert invert_price(D(4), 8) == D("0.25000000")
    assert invert_price(D(3), 8) == D("0.33333333")
    assert cross_price(D("60000"), D("2"), 4) == D("30000.0000")
    assert cross_price(D(1), D(3), 2) == D("0.33")


# --- configuration -----------------------------------------------------------------------------

HTTP_FEED: dict[str, Any] = {
    "pair": "ISTSI/USD",
    "kind": "http",
    "url": "https://prices.example.com/istsi",
    "price_pointer": "/data/price",
    "time_pointer": "/data/updated_at",
    "round_pointer": "/data/round",
    "decimals": 8,
    "heartbeat_s": 600,
    "bounds": {"min": "1", "max": "1000000"},
    "secondary": {
        "kind": "file",
        "path": "/var/lib/prices/istsi.json",
        "price_pointer": "/p",
        "time_pointer": "/t",
    },
}


def test_the_deployment_has_no_feeds_by_default() -> None:
    assert DeploymentConfig().oracle.feeds == []
    assert DeploymentConfig().oracle.limits() == OracleLimits()


def test_a_configured_feed_becomes_its_spec() -> None:
    config = OracleConfig.model_validate(
        {
            "feeds": [
                HTTP_FEED,
                {
                    "pair": "CC/USD",
                    "kind": "file",
                    "path": "/tmp/cc.json",
                    "price_pointer": "/p",
                    "time_pointer": "/t",
                    "scaled": True,
                    "decimals": 6,
                },
                {"pair": "USD/CC", "kind": "inverted", "of": "CC/USD"},
                {"pair": "ISTSI/CC", "kind": "crossed", "legs": ["ISTSI/USD", "CC/USD"]},
            ],
            "jump_limit": "0.25",
        }
    )
    specs = config.specs()
    istsi = specs["ISTSI/USD"]
    assert istsi.primary is not None
    assert istsi.secondary is not None
    assert istsi.primary.bounds == Bounds(D(1), D(1000000))
    assert istsi.secondary.heartbeat_s == 600
    assert istsi.secondary.bounds is None
    assert specs["CC/USD"].primary is not None
    assert specs["CC/USD"].primary.scaled
    assert specs["USD/CC"].legs == ("CC/USD",)
    assert specs["ISTSI/CC"].legs == ("ISTSI/USD", "CC/USD")
    assert config.limits().jump_limit == D("0.25")


@pytest.mark.parametrize(
    ("feed", "problem"),
    [
        ({**HTTP_FEED, "price_pointer": "data/price"}, "JSON pointer"),
        ({**HTTP_FEED, "url": None}, "url"),
        ({**HTTP_FEED, "bounds": {"min": "5", "max": "5"}}, "min must be below max"),
        ({**HTTP_FEED, "pair": "ISTSI"}, "not a pair"),
        ({"pair": "USD/CC", "kind": "inverted", "of": "CC/EUR"}, "not the inverse"),
        ({"pair": "A/B", "kind": "crossed", "legs": ["A/USD", "B/EUR"]}, "not A/USD"),
        (
            {"pair": "USD/X", "kind": "inverted", "of": "X/USD", "url": "https://x.example"},
            "no source of its own",
        ),
    ],
)
def test_a_badly_configured_feed_is_refused_at_load(feed: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        OracleConfig.model_validate({"feeds": [feed]})


def test_feeds_must_exist_be_unique_and_not_be_composed_of_themselves() -> None:
    with pytest.raises(ValidationError, match="not defined"):
        OracleConfig.model_validate(
            {"feeds": [{"pair": "USD/CC", "kind": "inverted", "of": "CC/USD"}]}
        )
    with pytest.raises(ValidationError, match="defined twice"):
        OracleConfig.model_validate({"feeds": [HTTP_FEED, HTTP_FEED]})
    with pytest.raises(ValidationError, match="composed of itself"):
        OracleConfig.model_validate(
            {
                "feeds": [
                    {"pair": "USD/CC", "kind": "inverted", "of": "CC/USD"},
                    {"pair": "CC/USD", "kind": "inverted", "of": "USD/CC"},
                ]
            }
        )


# --- JSON pointers (RFC 6901) ------------------------------------------------------------------

DOCUMENT = {"foo": ["bar", "baz"], "": 0, "a/b": 1, "m~n": 8, " ": 7, 'k"l': 6}


@pytest.mark.parametrize(
    ("pointer", "value"),
    [
        ("", DOCUMENT),
        ("/foo", ["bar", "baz"]),
        ("/foo/0", "bar"),
        ("/", 0),
        ("/a~1b", 1),
        ("/m~0n", 8),
        ("/ ", 7),
        ('/k"l', 6),
    ],
)
def test_json_pointers_resolve_as_rfc_6901_says(pointer: str, value: object) -> None:
    assert resolve_pointer(DOCUMENT, pointer) == value


@pytest.mark.parametrize("pointer", ["foo", "/foo/2", "/foo/01", "/foo/-", "/nope", "/foo/0/x"])
def test_json_pointers_that_do_not_resolve_are_refused(pointer: str) -> None:
    with pytest.raises(PointerError):
        resolve_pointer(DOCUMENT, pointer)


def test_a_tilde_escape_is_decoded_once_in_the_rfc_order() -> None:
    assert parse_pointer("/~01") == ("~1",)
    with pytest.raises(PointerError):
        parse_pointer("/~2")


# --- the service over sequences of readings ----------------------------------------------------


@dataclass
class MemoryOracleRepository:
    """The oracle repository's contract, in memory (the SQL one has its tests on both DBs)."""

    states: dict[str, FeedState] = field(default_factory=dict)
    accepted_by: dict[tuple[str, str], Accepted] = field(default_factory=dict)
    recorded: list[RecordedRejection] = field(default_factory=list)
    ids: Any = field(default_factory=lambda: count(1))

    def feed(self, pair: str, *, lock: bool = False) -> FeedState | None:
        return self.states.get(pair)

    def feeds(self) -> list[FeedState]:
        return [self.states[p] for p in sorted(self.states)]

    def save_feed(self, state: FeedState) -> None:
        self.states[state.pair] = state

    def accepted(self, pair: str, source: str) -> Accepted | None:
        return self.accepted_by.get((pair, source))

    def save_accepted(self, pair: str, source: str, accepted: Accepted) -> None:
        self.accepted_by[(pair, source)] = accepted

    def add_rejection(self, pair, source, rule, detail, observed, at) -> int:  # type: ignore[no-untyped-def]
        self.recorded.append(
            RecordedRejection(next(self.ids), pair, source, rule, detail, observed, at)
        )
        return self.recorded[-1].id

    def rejections(self, pair: str | None = None, *, limit: int = 100) -> list[RecordedRejection]:
        rows = [r for r in reversed(self.recorded) if pair is None or r.pair == pair]
        return rows[:limit]

    def last_rejections(self) -> dict[str, RecordedRejection]:
        return {r.pair: r for r in self.recorded}


class MemoryUnitOfWork:
    """Commits by swapping in the copy it worked on; leaving without commit drops it."""

    def __init__(self, store: dict[str, MemoryOracleRepository]) -> None:
        self._store = store

    def __enter__(self) -> MemoryUnitOfWork:
        committed = self._store["oracle"]
        self.oracle = MemoryOracleRepository(
            dict(committed.states),
            dict(committed.accepted_by),
            list(committed.recorded),
            committed.ids,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        return None

    def commit(self) -> None:
        self._store["oracle"] = self.oracle


class ScriptedReader:
    def __init__(self) -> None:
        self.next: dict[str, Reading] = {}

    def read(self, spec: SourceSpec) -> Reading:
        return self.next[spec.location]


def service_with(
    *feeds: FeedSpec,
) -> tuple[OracleService, ScriptedReader, list[datetime], dict[str, MemoryOracleRepository]]:
    store = {"oracle": MemoryOracleRepository()}
    reader = ScriptedReader()
    clock = [NOW]
    service = OracleService(
        lambda: MemoryUnitOfWork(store),  # type: ignore[arg-type,return-value]
        reader,
        {feed.pair: feed for feed in feeds},
        limits=LIMITS,
        clock=lambda: clock[0],
    )
    return service, reader, clock, store


PAIR_BOUNDS = Bounds(D(10), D(1000))
WITH_SECONDARY = FeedSpec(
    pair="ISTSI/USD",
    kind="file",
    decimals=8,
    primary=source(bounds=PAIR_BOUNDS, location="primary"),
    secondary=source(location="secondary"),
)


def test_the_service_falls_back_records_the_rule_and_returns_when_both_agree() -> None:
    service, reader, clock, store = service_with(WITH_SECONDARY)
    reader.next = {"primary": seen("100", round_id=1), "secondary": seen("101", round_id=1)}
    first = service.current_price("ISTSI/USD")
    assert (first.price, first.source, first.fallback_fee) == (D(100), "primary", False)
    reader.next = {
        "primary": seen("100", age_s=9999, round_id=2),
        "secondary": seen("102", round_id=2),
    }
    second = service.current_price("ISTSI/USD")
    assert (second.price, second.source, second.health, second.fallback_fee) == (
        D(102),
        "secondary",
        "degraded",
        True,
    )
    assert store["oracle"].recorded[-1].rule == "stale"
    reader.next = {"primary": seen("130", round_id=3), "secondary": seen("103", round_id=3)}
    assert service.current_price("ISTSI/USD").source == "secondary"  # diverging: not back yet
    reader.next = {"primary": seen("104", round_id=4), "secondary": seen("103", round_id=4)}
    back = service.current_price("ISTSI/USD")
    assert (back.price, back.source, back.health) == (D(104), "primary", "healthy")
    status = service.oracle_status()
    assert status.health == "healthy"
    assert status.feeds[0].last_rejection is not None
    assert status.feeds[0].last_rejection.rule == "divergence"
    reader.next = {
        "primary": Rejection("unreachable", "down"),
        "secondary": Rejection("malformed", "bad"),
    }
    with pytest.raises(OracleOfflineError) as refused:
        service.current_price("ISTSI/USD")
    assert isinstance(refused.value, SluiceError)
    assert refused.value.code == 80
    assert refused.value.rules == ("unreachable", "malformed")
    assert service.oracle_status().health == "offline"
    with pytest.raises(NotFoundError):
        service.current_price("NOPE/USD")
    del clock


PRICES = st.sampled_from(
    ["0", "-5", "10", "1000", "55", "80", "99", "100", "101", "104", "120", "160", "300", "999"]
)
AGES = st.sampled_from([-30, -1, 0, 30, HEARTBEAT_S + 60, HEARTBEAT_S + 61, None])  # None: time 0
STEPS = st.sampled_from([-2, -1, 0, 1, 1, 2])


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    if draw(st.integers(0, 9)) == 0:
        return Rejection(draw(st.sampled_from(["unreachable", "malformed"])), "scripted")
    age = draw(AGES)
    at = datetime.fromtimestamp(0, UTC) if age is None else NOW - timedelta(seconds=age)
    return Observation(D(draw(PRICES)), at, 100 + draw(STEPS))


def passes(reading: Reading, before: Accepted | None, bounds: Bounds | None) -> bool:
    """The per-source rules, written apart from ``check_observation``."""
    if not isinstance(reading, Observation):
        return False
    p, age = reading.price, (NOW - reading.at).total_seconds()
    if p <= 0 or reading.at == datetime.fromtimestamp(0, UTC) or age < -1 or age > HEARTBEAT_S + 60:
        return False
    if bounds is not None and not bounds.low < p < bounds.high:
        return False
    if before is not None:
        if (
            reading.round_id is not None
            and before.round_id is not None
            and (reading.round_id < before.round_id)
        ):
            return False
        if abs(p - before.price) * 2 > before.price:
            return False
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(readings(), readings(), st.booleans()), min_size=1, max_size=25))
def test_a_price_that_breaks_a_rule_is_never_used(
    steps: list[tuple[Reading, Reading, bool]],
) -> None:
    service, reader, _clock, _store = service_with(WITH_SECONDARY)
    last: dict[str, Accepted | None] = {"primary": None, "secondary": None}
    rounds = {"primary": 0, "secondary": 0}
    on_fallback = False
    for primary, secondary, advance_round in steps:
        # Rounds move forward from the last accepted one unless the step drew a step back.
        scripted = {}
        for name, reading in (("primary", primary), ("secondary", secondary)):
            if isinstance(reading, Observation):
                rounds[name] += 1 if advance_round else 0
                reading = Observation(
                    reading.price, reading.at, (reading.round_id or 0) - 100 + rounds[name]
                )
            scripted[name] = reading
        reader.next = scripted
        ok = {
            "primary": passes(scripted["primary"], last["primary"], PAIR_BOUNDS),
            "secondary": passes(scripted["secondary"], last["secondary"], None),
        }
        agree = False
        if ok["primary"] and ok["secondary"]:
            p, s = sorted((scripted["primary"].price, scripted["secondary"].price))  # type: ignore[union-attr]
            agree = (s - p) * 20 <= p
        try:
            used = service.current_price("ISTSI/USD")
        except OracleOfflineError:
            used = None
        if used is not None:
            assert ok[used.source], f"{used.source} broke a rule and was used"
            assert used.price == scripted[used.source].price  # type: ignore[union-attr]
            assert used.fallback_fee == (used.source == "secondary")
            if used.source == "primary":
                # Back on (or kept on) the primary: it agrees with a valid secondary, or the
                # secondary failed while the feed was not on its fallback.
                assert agree or (not ok["secondary"] and not on_fallback)
        expected_primary = ok["primary"] and (agree or (not ok["secondary"] and not on_fallback))
        expected = "primary" if expected_primary else "secondary" if ok["secondary"] else None
        assert (used.source if used else None) == expected
        if expected == "primary":
            on_fallback = False
        elif expected == "secondary":
            on_fallback = True
        for name in ("primary", "secondary"):
            reading = scripted[name]
            if ok[name] and isinstance(reading, Observation):
                last[name] = Accepted(reading.price, reading.at, reading.round_id, NOW)
