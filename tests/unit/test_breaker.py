"""The circuit breaker's state machine (closed → open → half-open → closed or open again, forced
states) on an injected monotonic clock, and the guard's accounting of what counts as a failure.

Each test drives one breaker with explicit successes and failures and reads its state and the
transitions its listener was told about."""

from __future__ import annotations

import pytest

from sluice.domain.breaker import BreakerSettings, CircuitBreaker
from sluice.domain.errors import (
    ComponentCallFailedError,
    InvalidInputError,
    NotFoundError,
    SystemPausedError,
)
from sluice.ports import CommandError
from sluice.ports.bitcoin import NodeRejectedError, NodeUnavailableError
from sluice.services.breaker_proxies import broadcast_failure, command_failure, node_failure
from sluice.services.breakers import (
    FLOWS,
    BreakerOpenError,
    Breakers,
    counts_as_failure,
    flow_open,
    guard,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _breaker(**settings: float) -> tuple[CircuitBreaker, Clock, list[tuple[str, str, str]]]:
    clock = Clock()
    seen: list[tuple[str, str, str]] = []
    breaker = CircuitBreaker(
        "ledger",
        BreakerSettings(**settings),  # type: ignore[arg-type]
        clock,
        listeners=(lambda _b, old, new, reason: seen.append((old, new, reason)),),
    )
    return breaker, clock, seen


def _open(breaker: CircuitBreaker) -> None:
    for _ in range(breaker.settings.min_calls):
        breaker.record_failure()
    assert breaker.state == "open"


def test_defaults_are_window_20_minimum_10_half_30_seconds_3_probes() -> None:
    settings = BreakerSettings()
    assert (settings.window, settings.min_calls, settings.failure_rate) == (20, 10, 0.5)
    assert (settings.open_s, settings.probes) == (30.0, 3)


def test_settings_refuse_a_minimum_above_the_window() -> None:
    with pytest.raises(ValueError, match="min_calls"):
        BreakerSettings(window=5, min_calls=6)


def test_failures_below_the_minimum_number_of_calls_do_not_open() -> None:
    breaker, _clock, seen = _breaker()
    for _ in range(9):
        breaker.record_failure()
    assert breaker.state == "closed"
    assert breaker.allow()
    breaker.record_failure()  # the tenth call: 10 of 10 failed
    assert breaker.state == "open"
    assert seen == [("closed", "open", "10 of the last 10 calls failed (threshold 50%)")]


def test_a_failure_rate_exactly_at_the_threshold_opens() -> None:
    breaker, _clock, _seen = _breaker()
    for _ in range(5):
        breaker.record_success()
    for _ in range(4):
        breaker.record_failure()
    assert breaker.state == "closed"  # 4 of 9, and below the minimum anyway
    breaker.record_failure()  # 5 of 10 = 50 %
    assert breaker.state == "open"


def test_a_failure_rate_just_below_the_threshold_stays_closed() -> None:
    breaker, _clock, _seen = _breaker()
    for _ in range(11):
        breaker.record_success()
    for _ in range(9):
        breaker.record_failure()  # 9 of 20 = 45 %
    assert breaker.state == "closed"
    assert breaker.snapshot().failures == 9


def test_the_window_slides_so_old_failures_leave_it() -> None:
    breaker, _clock, _seen = _breaker()
    for _ in range(9):
        breaker.record_failure()
    for _ in range(20):
        breaker.record_success()  # pushes the 9 failures out of the 20-call window
    snapshot = breaker.snapshot()
    assert (snapshot.calls, snapshot.failures) == (20, 0)
    for _ in range(9):
        breaker.record_failure()  # 9 of the last 20
    assert breaker.state == "closed"
    breaker.record_failure()  # 10 of the last 20 = 50 %
    assert breaker.state == "open"


def test_an_open_breaker_refuses_until_its_wait_is_over_then_half_opens() -> None:
    breaker, clock, seen = _breaker()
    _open(breaker)
    assert not breaker.allow()
    clock.now += 29.9
    assert not breaker.allow()
    assert breaker.state == "open"
    assert breaker.snapshot().open_remaining_s == pytest.approx(0.1)
    clock.now += 0.1
    assert breaker.state == "half_open"
    assert seen[-1] == ("open", "half_open", "open wait over, probing")


def test_half_open_lets_the_probes_through_and_closes_when_all_succeed() -> None:
    breaker, clock, seen = _breaker()
    _open(breaker)
    clock.now += 30
    assert [breaker.allow() for _ in range(4)] == [True, True, True, False]
    assert breaker.would_allow() is False  # every probe is out
    breaker.record_success()
    breaker.record_success()
    assert breaker.state == "half_open"
    breaker.record_success()
    assert breaker.state == "closed"
    assert seen[-1] == ("half_open", "closed", "3 probes succeeded")
    snapshot = breaker.snapshot()
    assert (snapshot.calls, snapshot.failures) == (0, 0)  # the window starts afresh


def test_a_failed_probe_opens_again_for_another_wait() -> None:
    breaker, clock, seen = _breaker()
    _open(breaker)
    clock.now += 30
    assert breaker.allow()
    breaker.record_success()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == "open"
    assert seen[-1] == ("half_open", "open", "a probe failed")
    clock.now += 29
    assert not breaker.allow()
    clock.now += 1
    assert breaker.allow()
    assert breaker.snapshot().opened_count == 2


def test_a_released_probe_is_given_back() -> None:
    breaker, clock, _seen = _breaker(probes=1)
    _open(breaker)
    clock.now += 30
    assert breaker.allow()
    assert not breaker.allow()
    breaker.release()
    assert breaker.allow()


def test_forced_open_refuses_and_forced_closed_allows_whatever_the_automatic_state() -> None:
    breaker, clock, seen = _breaker()
    breaker.force("open", "node maintenance")
    assert breaker.state == "open"
    assert breaker.forced == "open"
    assert not breaker.allow()
    clock.now += 3600
    assert not breaker.allow()  # no half-open while forced
    assert seen == [("closed", "open", "forced open: node maintenance")]
    breaker.force("closed", "node back")
    assert breaker.allow()
    for _ in range(20):
        breaker.record_failure()  # not recorded while forced
    assert breaker.state == "closed"
    breaker.force(None)
    assert breaker.forced is None
    assert breaker.state == "closed"
    assert breaker.snapshot().calls == 0


def test_forcing_closed_an_open_breaker_and_clearing_it_starts_afresh() -> None:
    breaker, _clock, seen = _breaker()
    _open(breaker)
    breaker.force("closed", "known false alarm")
    assert breaker.state == "closed"
    assert seen[-1] == ("open", "closed", "forced closed: known false alarm")
    breaker.force(None)
    assert breaker.state == "closed"
    assert breaker.allow()


def test_force_refuses_an_unknown_state() -> None:
    breaker, _clock, _seen = _breaker()
    with pytest.raises(ValueError, match="forced open or closed"):
        breaker.force("half_open")  # type: ignore[arg-type]


# --- the guard ---------------------------------------------------------------------------------


def _registry(**settings: float) -> tuple[Breakers, Clock]:
    clock = Clock()
    return Breakers(default=BreakerSettings(**settings), monotonic=clock), clock  # type: ignore[arg-type]


def test_the_registry_has_one_breaker_per_flow() -> None:
    registry, _clock = _registry()
    assert tuple(registry.states()) == FLOWS
    assert set(registry.states().values()) == {"closed"}
    with pytest.raises(InvalidInputError, match="ledger, registry, bitcoin"):
        registry.get("kafka")


def test_the_guard_records_failures_and_refuses_without_calling_once_open() -> None:
    registry, _clock = _registry()
    for _ in range(10):
        with pytest.raises(ComponentCallFailedError), guard("ledger", registry=registry):
            raise ComponentCallFailedError("node down")
    assert registry.states()["ledger"] == "open"
    assert flow_open("ledger", registry=registry)
    assert not flow_open("registry", registry=registry)
    called = []
    with pytest.raises(BreakerOpenError) as refused, guard("ledger", registry=registry):
        called.append(1)
    assert called == []
    assert refused.value.code == 54
    assert refused.value.error == "breaker_open"
    assert refused.value.http_status == 503
    assert refused.value.retry_after_s == pytest.approx(30)


def test_input_errors_are_not_failures_of_the_guard() -> None:
    registry, _clock = _registry()
    for error in (InvalidInputError("bad"), NotFoundError("gone"), SystemPausedError("p")):
        for _ in range(10):
            with pytest.raises(type(error)), guard("registry", registry=registry):
                raise error
    snapshot = registry.get("registry").snapshot()
    assert (snapshot.state, snapshot.calls, snapshot.failures) == ("closed", 0, 0)
    with guard("registry", registry=registry):
        pass
    assert registry.get("registry").snapshot().calls == 1


def test_half_open_probes_go_through_the_guard_and_close_it() -> None:
    registry, clock = _registry()
    for _ in range(10):
        with pytest.raises(OSError, match="refused"), guard("nats", registry=registry):
            raise OSError("connection refused")
    clock.now += 30
    for _ in range(3):
        with guard("nats", registry=registry):
            pass
    assert registry.states()["nats"] == "closed"


def test_what_counts_as_a_failure() -> None:
    assert counts_as_failure(OSError("refused"))
    assert counts_as_failure(ComponentCallFailedError("x"))
    assert not counts_as_failure(InvalidInputError("x"))
    assert not counts_as_failure(BreakerOpenError("bitcoin"))
    assert command_failure(CommandError("timeout", definite=False))
    assert command_failure(CommandError("injected", definite=True, code="component_call_failed"))
    assert not command_failure(CommandError("dup", definite=True, code="duplicate_operation"))
    assert not command_failure(CommandError("too late to send", definite=True))
    assert node_failure(NodeUnavailableError("down"))
    assert not node_failure(NodeRejectedError("bad tx", code=-26))
    assert broadcast_failure(NodeRejectedError("bad tx", code=-26))
    assert not broadcast_failure(NodeRejectedError("already in chain", code=-27))
