"""The iSTSi router's engine (``services/issuance_router``), its operator overrides
(``services/issuance_overrides``) and its contract addresses (``services/issuance_contracts``),
on SQLite and PostgreSQL.

How: each test opens a real Integration DB and runs the real :class:`IssuanceRouter` over
operation definitions written here (steps that succeed, wait, retry, hold, fail, raise), with a
fake clock that only moves when the test moves it. Issuer, wallet, node and registry are never
called by these steps, so the context carries an inert stand-in for them. Step functions count
their side effects by a command id, the way real steps send idempotent commands, so a test can
tell a step that *ran* twice (allowed after a crash) from one *recorded* twice (never).

Covers: a path of steps to completion with results merged and every move audited; waits
(recorded once while nothing changes, polled again after ``wait_s``); the retry backoff schedule
and ``stuck`` with a warning alert at ``attempts_max``; hold; fail (and a sluice error) stuck with
a critical alert; an unexpected exception retried; an unknown next step; a crash between a step
and its record resumed after the lease; the pause stopping an operation between steps; two
routers on one operation (the lease keeps the second away, and once it ran out only one of them
records the step); a duplicate operation id (42 with the first operation); retry, compensate
and resolve with their refusals (41); contract addresses validated, written once per approval,
in force only after their time lock, and the router rebuilding its context then; the lease
marked explicitly (a wait of exactly ``lease_s`` is no lease); every refused override audited;
a redemption resolved only once nothing is owed (payout paid, burn refunded, or re-minted).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.errors import (
    DuplicateOperationError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
    SystemPausedError,
)
from sluice.ports.issuance import (
    BurnRecord,
    ContractAddresses,
    IssuanceOperation,
    MintRecord,
    StepRecord,
)
from sluice.services.audit import list_audit_records
from sluice.services.controls import pause, resume
from sluice.services.issuance_contracts import (
    apply_contract_addresses,
    check_contract_addresses,
    contract_addresses_in_force,
    descriptor_checksum,
)
from sluice.services.issuance_overrides import (
    compensate_operation,
    resolve_operation,
    retry_operation,
)
from sluice.services.issuance_router import (
    IssuanceRouter,
    OperationDefinition,
    StepOutcome,
    create_operation,
    operation_json,
)
from sluice.services.issuance_settings import IssuanceContext, IssuanceSettings
from sluice.store import tables

T0 = datetime(2026, 12, 5, 6, 0, 0, tzinfo=UTC)
SETTINGS = IssuanceSettings(
    attempts_max=5, backoff_base_s=2.0, backoff_cap_s=10.0, poll_s=5.0, lease_s=60.0
)
PARTY = "issuer::1220" + "ab" * 32


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Inert:
    """Stands in for the issuer, wallet, node and registry: these steps never call them."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the test's steps do not use {name}")


@dataclass
class World:
    db: bootstrap.Database
    clock: Clock
    ctx: IssuanceContext
    # command id -> how many times a step sent it (a real step's idempotent side effect)
    sent: dict[str, int] = field(default_factory=dict)
    # what a step answers next, per step name (the last one stays)
    script: dict[str, list[StepOutcome]] = field(default_factory=dict)
    hooks: dict[str, Callable[[IssuanceOperation], None]] = field(default_factory=dict)
    compensation: list[StepOutcome | Exception] = field(default_factory=list)

    def step(self, name: str) -> Callable[[IssuanceContext, IssuanceOperation], StepOutcome]:
        def run(_ctx: IssuanceContext, op: IssuanceOperation) -> StepOutcome:
            key = f"{op.id}:{name}"
            self.sent[key] = self.sent.get(key, 0) + 1
            hook = self.hooks.get(name)
            if hook is not None:
                hook(op)
            answers = self.script.get(name) or [StepOutcome("done", result={name: "ok"})]
            answer = answers.pop(0) if len(answers) > 1 else answers[0]
            return answer

        return run

    def compensate(self, _ctx: IssuanceContext, op: IssuanceOperation) -> StepOutcome:
        self.sent[f"{op.id}:compensate"] = self.sent.get(f"{op.id}:compensate", 0) + 1
        answer = self.compensation.pop(0) if self.compensation else StepOutcome("done")
        if isinstance(answer, Exception):
            raise answer
        return answer

    def definitions(self) -> dict[str, OperationDefinition]:
        return {
            "bitcoin_deposit": OperationDefinition(
                type="bitcoin_deposit",
                steps=(("a", self.step("a")), ("b", self.step("b")), ("c", self.step("c"))),
                compensate=self.compensate,
                extra_steps={"x": self.step("x")},
            ),
            "token_withdrawal": OperationDefinition(
                type="token_withdrawal",
                steps=(("burn", self.step("burn")), ("payout", self.step("payout"))),
                compensate=self.compensate,
            ),
        }

    def router(self, **kwargs: Any) -> IssuanceRouter:
        return IssuanceRouter(self.ctx, self.definitions(), **kwargs)

    def create(self, operation_id: str = "op-1", amount_sats: int = 50_000) -> IssuanceOperation:
        with self.db.uow() as uow:
            op = create_operation(
                uow,
                operation_id=operation_id,
                type="bitcoin_deposit",
                customer_id="cust-1",
                amount_sats=amount_sats,
                params={"txid": "ab" * 32, "vout": 0},
                first_step="a",
                at=self.clock(),
            )
            uow.commit()
        return op

    def op(self, operation_id: str = "op-1") -> IssuanceOperation:
        with self.db.uow() as uow:
            op = uow.issuance.get_operation(operation_id)
        assert op is not None
        return op

    def steps(self, operation_id: str = "op-1") -> list[StepRecord]:
        with self.db.uow() as uow:
            return uow.issuance.steps(operation_id)

    def alerts(self) -> list[dict[str, Any]]:
        with self.db.engine.connect() as connection:
            rows = connection.execute(sa.select(tables.alerts).order_by(tables.alerts.c.id))
            return [dict(row._mapping) for row in rows]


def context(db: bootstrap.Database, clock: Clock, settings: IssuanceSettings) -> IssuanceContext:
    inert = cast(Any, Inert())
    return IssuanceContext(
        uow=db.uow,
        clock=clock,
        issuer=inert,
        registry=inert,
        wallet=inert,
        node=inert,
        treasury="treasury::1220" + "cd" * 32,
        settings=settings,
    )


@pytest.fixture
def world(database_url: str) -> Iterator[World]:
    db = bootstrap.database(database_url)
    clock = Clock()
    yield World(db, clock, context(db, clock, SETTINGS))
    db.dispose()


def outcomes(world: World) -> list[tuple[str, str, str]]:
    return [(r.step, r.kind, r.outcome) for r in world.steps()]


# --- the main path --------------------------------------------------------------------------------


def test_steps_run_in_order_to_completion_with_results_merged_and_audited(world: World) -> None:
    world.create()
    tick = world.router().tick()
    op = world.op()
    assert tick.looked_at == 1 and tick.steps == 3 and tick.completed == ("op-1",)
    assert op.status == "completed" and op.step == "done" and op.completed_at == T0
    assert op.result == {"a": "ok", "b": "ok", "c": "ok"}
    assert outcomes(world) == [("a", "step", "done"), ("b", "step", "done"), ("c", "step", "done")]
    assert world.sent == {"op-1:a": 1, "op-1:b": 1, "op-1:c": 1}
    names = [r.entry.operation for r in list_audit_records(world.db.uow, operation_id="op-1")]
    assert names == [
        "issuance_operation_created",
        "issuance_step",
        "issuance_step",
        "issuance_completed",
    ]
    assert world.router().tick().looked_at == 0  # nothing due any more


def test_next_step_and_final_status_come_from_the_outcome(world: World) -> None:
    world.script["a"] = [StepOutcome("done", next_step="x")]
    world.script["x"] = [StepOutcome("done", next_step="done", status="compensated")]
    world.create()
    op = world.router().run_operation("op-1")
    assert op.status == "compensated"
    assert outcomes(world) == [("a", "step", "done"), ("x", "step", "done")]


def test_an_unknown_next_step_makes_the_operation_stuck(world: World) -> None:
    world.script["a"] = [StepOutcome("done", next_step="nowhere")]
    world.create()
    op = world.router().run_operation("op-1")
    assert op.status == "stuck" and "nowhere" in (op.last_error or "")
    assert [a["severity"] for a in world.alerts()] == ["critical"]


def test_a_wait_is_recorded_once_while_nothing_changes_and_polled_after_wait_s(
    world: World,
) -> None:
    world.script["b"] = [
        StepOutcome("wait", detail={"confirmations": 1}, wait_s=30),
        StepOutcome("wait", detail={"confirmations": 1}, wait_s=30),
        StepOutcome("wait", detail={"confirmations": 2}),
        StepOutcome("done"),
    ]
    world.create()
    router = world.router()
    op = router.run_operation("op-1")
    assert op.status == "waiting" and op.step == "b"
    assert op.next_attempt_at == T0 + timedelta(seconds=30)
    world.clock.advance(29)
    assert router.tick().looked_at == 0
    world.clock.advance(1)
    assert router.tick().steps == 0  # the same wait again: not recorded a second time
    assert world.sent["op-1:b"] == 2
    world.clock.advance(30)
    router.tick()  # a different detail is recorded; the default wait is poll_s
    assert world.op().next_attempt_at == world.clock.now + timedelta(seconds=SETTINGS.poll_s)
    world.clock.advance(SETTINGS.poll_s)
    assert router.tick().completed == ("op-1",)
    assert outcomes(world) == [
        ("a", "step", "done"),
        ("b", "step", "wait"),
        ("b", "step", "wait"),
        ("b", "step", "done"),
        ("c", "step", "done"),
    ]


# --- failures -------------------------------------------------------------------------------------


def test_retries_back_off_exponentially_then_the_operation_is_stuck_with_a_warning(
    world: World,
) -> None:
    world.script["a"] = [StepOutcome("retry", error="node down")]
    world.create()
    router = world.router()
    delays = []
    for attempt in range(1, SETTINGS.attempts_max):
        tick = router.tick()
        assert tick.steps == 1
        op = world.op()
        assert op.status == "pending" and op.attempts == attempt and op.last_error == "node down"
        assert op.next_attempt_at is not None
        delays.append((op.next_attempt_at - world.clock.now).total_seconds())
        world.clock.advance(delays[-1] - 0.5)
        assert router.tick().looked_at == 0  # not before its time
        world.clock.advance(0.5)
    assert delays == [2.0, 4.0, 8.0, 10.0]  # base 2, doubled, capped at 10
    tick = router.tick()
    op = world.op()
    assert tick.stuck == ("op-1",)
    assert op.status == "stuck" and op.attempts == SETTINGS.attempts_max
    assert op.next_attempt_at is None
    [alert] = world.alerts()
    assert alert["severity"] == "warning" and alert["kind"] == "issuance_stuck"
    assert [r.attempt for r in world.steps()] == [1, 2, 3, 4, 5]
    world.clock.advance(3600)
    assert router.tick().looked_at == 0  # stuck waits for an operator
    names = [r.entry.operation for r in list_audit_records(world.db.uow, operation_id="op-1")]
    assert names[-1] == "issuance_stuck"


def test_an_unexpected_exception_counts_as_a_retry(world: World) -> None:
    def boom(_op: IssuanceOperation) -> None:
        raise ConnectionError("reset by peer")

    world.hooks["a"] = boom
    world.create()
    op = world.router().run_operation("op-1")
    assert op.status == "pending" and op.attempts == 1
    assert op.last_error == "ConnectionError: reset by peer"
    assert world.alerts() == []


def test_a_sluice_error_or_fail_makes_it_stuck_at_once_with_a_critical_alert(
    world: World,
) -> None:
    def refuse(_op: IssuanceOperation) -> None:
        raise InvalidInputError("bad params")

    world.hooks["a"] = refuse
    world.create("op-1")
    world.script["b"] = [StepOutcome("fail", error="contract archived")]
    world.create("op-2")
    with world.db.uow() as uow:  # op-2 starts at b
        op2 = uow.issuance.get_operation("op-2")
        assert op2 is not None
        from dataclasses import replace

        assert uow.issuance.update_operation(
            replace(op2, step="b", version=op2.version + 1), expected_version=op2.version
        )
        uow.commit()
    tick = world.router().tick()
    assert sorted(tick.stuck) == ["op-1", "op-2"]
    assert world.op("op-1").last_error == "InvalidInputError: bad params"
    assert world.op("op-2").last_error == "contract archived"
    assert [a["severity"] for a in world.alerts()] == ["critical", "critical"]


def test_hold_parks_the_operation_for_an_officer(world: World) -> None:
    world.script["a"] = [StepOutcome("hold", error="sender listed", detail={"list": "ofac"})]
    world.create()
    tick = world.router().tick()
    assert tick.held == ("op-1",)
    op = world.op()
    assert op.status == "held" and op.last_error == "sender listed"
    assert world.steps()[-1].detail == {"list": "ofac"}
    world.clock.advance(3600)
    assert world.router().tick().looked_at == 0


# --- crashes, the pause, two routers --------------------------------------------------------------


def test_a_crash_between_a_step_and_its_record_runs_the_step_again_after_the_lease(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.create()
    router = world.router()
    original = IssuanceRouter._record
    crashed: list[str] = []

    def crash_once(self: IssuanceRouter, claimed: IssuanceOperation, outcome: StepOutcome) -> Any:
        if claimed.step == "b" and not crashed:
            crashed.append(claimed.step)
            raise SystemExit("killed")
        return original(self, claimed, outcome)

    monkeypatch.setattr(IssuanceRouter, "_record", crash_once)
    with pytest.raises(SystemExit):
        router.tick()
    op = world.op()
    assert op.status == "pending" and op.step == "b" and op.attempts == 0
    assert world.sent["op-1:b"] == 1
    assert outcomes(world) == [("a", "step", "done")]
    # a new router (the restarted process) leaves it alone while the lease runs
    restarted = world.router()
    world.clock.advance(SETTINGS.lease_s - 1)
    assert restarted.tick().looked_at == 0
    assert restarted.run_operation("op-1").step == "b"  # not even when asked to
    world.clock.advance(1)
    assert restarted.tick().completed == ("op-1",)
    assert world.sent == {"op-1:a": 1, "op-1:b": 2, "op-1:c": 1}  # b ran again (idempotent)
    assert outcomes(world) == [("a", "step", "done"), ("b", "step", "done"), ("c", "step", "done")]


def test_the_pause_stops_an_operation_between_steps_and_resuming_continues(world: World) -> None:
    def pause_now(_op: IssuanceOperation) -> None:
        pause(world.db.uow, mode="emergency", reason="drill", actor="ops", at=world.clock())

    world.hooks["a"] = pause_now
    world.create()
    router = world.router()
    tick = router.tick()
    op = world.op()
    assert tick.paused and tick.steps == 1
    assert op.status == "pending" and op.step == "b" and op.last_error is None
    assert outcomes(world) == [("a", "step", "done")]  # nothing recorded as failed
    world.clock.advance(600)
    assert router.tick().paused
    assert router.run_operation("op-1").step == "b"
    assert "op-1:b" not in world.sent
    resume(world.db.uow, reason="drill over", actor="ops", at=world.clock())
    assert router.tick().completed == ("op-1",)


def test_a_second_router_leaves_a_leased_operation_alone(world: World) -> None:
    second = world.router()
    seen: list[Any] = []

    def look(_op: IssuanceOperation) -> None:
        seen.append(second.tick())
        seen.append(second.run_operation("op-1"))

    world.hooks["a"] = look
    world.create()
    world.router().run_operation("op-1")
    assert seen[0].looked_at == 0
    assert seen[1].step == "a" and seen[1].status == "pending"
    assert world.sent["op-1:a"] == 1
    assert world.op().status == "completed"


def test_after_the_lease_ran_out_only_one_of_two_routers_records_the_step(world: World) -> None:
    second = world.router()
    ticks: list[Any] = []
    calls: list[int] = []

    def slow(_op: IssuanceOperation) -> None:
        calls.append(1)
        if len(calls) == 1:  # the first router is slow: its lease runs out, the second takes over
            world.clock.advance(SETTINGS.lease_s + 1)
            ticks.append(second.tick())

    world.hooks["a"] = slow
    world.create()
    first = world.router().tick()
    assert ticks[0].completed == ("op-1",) and ticks[0].steps == 3
    assert first.lost == ("op-1",) and first.steps == 0
    assert world.sent["op-1:a"] == 2
    assert outcomes(world) == [("a", "step", "done"), ("b", "step", "done"), ("c", "step", "done")]


def test_the_same_operation_id_is_created_once_and_answers_the_first_operation(
    world: World,
) -> None:
    first = world.create()
    world.router().tick()
    with pytest.raises(DuplicateOperationError) as caught:
        world.create(amount_sats=99)
    assert caught.value.code == 42 and "op-1" in str(caught.value)
    assert caught.value.first_operation is not None
    assert caught.value.first_operation["status"] == "completed"
    assert caught.value.first_operation["amount_sats"] == first.amount_sats
    assert caught.value.first_operation == operation_json(world.op())
    with world.db.uow() as uow:
        assert len(uow.issuance.operations()) == 1


def test_operation_json_has_times_as_rfc3339_and_steps_when_given(world: World) -> None:
    world.create()
    world.router().tick()
    data = operation_json(world.op(), world.steps())
    assert data["created_at"] == "2026-12-05T06:00:00.000000Z"
    assert data["next_attempt_at"] is None
    assert [s["step"] for s in data["steps"]] == ["a", "b", "c"]
    assert set(data["steps"][0]) == {
        "seq",
        "step",
        "kind",
        "outcome",
        "attempt",
        "detail",
        "error",
        "at",
    }


def test_create_operation_refuses_bad_input(world: World) -> None:
    with world.db.uow() as uow, pytest.raises(InvalidInputError):
        create_operation(
            uow,
            operation_id="op-1",
            type="bitcoin_deposit",
            customer_id="c",
            amount_sats=0,
            params={},
            first_step="a",
            at=T0,
        )


# --- overrides ------------------------------------------------------------------------------------


def stuck(world: World, operation_id: str = "op-1") -> IssuanceOperation:
    world.script["a"] = [StepOutcome("fail", error="broken"), StepOutcome("done")]
    world.create(operation_id)
    op = world.router().run_operation(operation_id)
    assert op.status == "stuck"
    return op


def test_retry_puts_a_stuck_operation_back_at_its_step(world: World) -> None:
    stuck(world)
    op = retry_operation(world.ctx, "op-1", reason="node fixed", actor="admin:ada")
    assert op.status == "pending" and op.attempts == 0 and op.step == "a"
    assert world.steps()[-1].kind == "override"
    assert world.steps()[-1].detail == {
        "action": "retry",
        "reason": "node fixed",
        "actor": "admin:ada",
    }
    assert world.router().tick().completed == ("op-1",)
    with pytest.raises(InvalidOperationStateError):  # completed: nothing to retry
        retry_operation(world.ctx, "op-1", reason="again", actor="admin:ada")
    with pytest.raises(InvalidInputError):
        retry_operation(world.ctx, "op-1", reason=" ", actor="admin:ada")
    with pytest.raises(NotFoundError):
        retry_operation(world.ctx, "nope", reason="x", actor="admin:ada")
    names = [r.entry.operation for r in list_audit_records(world.db.uow, operation_id="op-1")]
    assert "issuance_retry" in names


def test_resolve_closes_a_stuck_or_held_operation_and_nothing_else(world: World) -> None:
    stuck(world)
    op = resolve_operation(world.ctx, "op-1", reason="paid by hand", actor="admin:ada")
    assert op.status == "resolved" and op.completed_at == T0
    with pytest.raises(InvalidOperationStateError):
        resolve_operation(world.ctx, "op-1", reason="again", actor="admin:ada")
    world.script["a"] = [StepOutcome("done")]
    world.create("op-2")
    world.router().run_operation("op-2")
    with pytest.raises(InvalidOperationStateError):  # completed
        resolve_operation(world.ctx, "op-2", reason="x", actor="admin:ada")
    world.create("op-3")  # pending: a router may run it, resolve is refused
    with pytest.raises(InvalidOperationStateError):
        resolve_operation(world.ctx, "op-3", reason="x", actor="admin:ada")


def test_compensate_runs_the_definitions_compensation_once(world: World) -> None:
    stuck(world)
    world.compensation = [StepOutcome("done", detail={"refunded": 50_000})]
    op = compensate_operation(
        world.ctx, world.definitions(), "op-1", reason="refund", actor="admin:ada"
    )
    assert op.status == "compensated" and op.step == "done"
    assert [(r.kind, r.outcome) for r in world.steps()[-2:]] == [
        ("override", "done"),
        ("compensation", "done"),
    ]
    with pytest.raises(InvalidOperationStateError):  # compensated: never twice
        compensate_operation(world.ctx, world.definitions(), "op-1", reason="x", actor="a")
    assert world.sent["op-1:compensate"] == 1


def test_a_compensation_that_refuses_leaves_the_operation_as_it_was(world: World) -> None:
    before = stuck(world)
    world.compensation = [InvalidOperationStateError("a batch holds the payout")]
    with pytest.raises(InvalidOperationStateError, match="batch"):
        compensate_operation(world.ctx, world.definitions(), "op-1", reason="x", actor="a")
    after = world.op()
    assert after.status == before.status == "stuck"
    assert after.next_attempt_at == before.next_attempt_at
    assert after.last_error == before.last_error == "broken"
    assert all(r.kind == "step" for r in world.steps())


def test_a_compensation_may_hand_back_to_the_router_at_an_extra_step(world: World) -> None:
    stuck(world)
    world.compensation = [StepOutcome("done", next_step="x")]
    world.script["x"] = [StepOutcome("done", status="compensated")]
    op = compensate_operation(world.ctx, world.definitions(), "op-1", reason="r", actor="a")
    assert op.status == "pending" and op.step == "x"
    assert world.router().tick().completed == ("op-1",)
    assert world.op().status == "compensated"


def test_overrides_are_refused_while_a_router_runs_a_step(world: World) -> None:
    refusals: list[Exception] = []

    def operator(_op: IssuanceOperation) -> None:
        actions: list[Callable[[], IssuanceOperation]] = [
            lambda: compensate_operation(
                world.ctx, world.definitions(), "op-1", reason="r", actor="a"
            ),
            lambda: resolve_operation(world.ctx, "op-1", reason="r", actor="a"),
            lambda: retry_operation(world.ctx, "op-1", reason="r", actor="a"),
        ]
        for action in actions:
            try:
                action()
            except InvalidOperationStateError as exc:
                refusals.append(exc)

    world.hooks["a"] = operator
    world.create()
    world.router().run_operation("op-1")
    assert len(refusals) == 3 and all("right now" in str(e) for e in refusals)
    assert "op-1:compensate" not in world.sent
    assert world.op().status == "completed"


def test_compensate_is_refused_for_a_completed_operation_and_while_paused(world: World) -> None:
    world.create()
    world.router().tick()
    with pytest.raises(InvalidOperationStateError):
        compensate_operation(world.ctx, world.definitions(), "op-1", reason="r", actor="a")
    stuck(world, "op-2")
    pause(world.db.uow, mode="paused", reason="drill", actor="ops", at=world.clock())
    with pytest.raises(SystemPausedError) as caught:
        compensate_operation(world.ctx, world.definitions(), "op-2", reason="r", actor="a")
    assert caught.value.code == 50
    assert "op-2:compensate" not in world.sent


# --- contract addresses ---------------------------------------------------------------------------


def descriptor() -> str:
    body = (
        "wpkh([d34db33f/84h/1h/0h]tpubD6NzVbkrYhZ4WaWSyoBvQwbpLkojyoTZPRsgXELWz3Popb3qkjcJyJUG"
        "LnL4qHHoQvao8ESaAstxYSnhyswJ76uZPStJRJCTKvosUCJZL5B/0/*)"
    )
    return f"{body}#{descriptor_checksum(body)}"


def test_contract_addresses_are_validated(world: World) -> None:
    good = check_contract_addresses(
        {"bitcoin_node_url": "http://127.0.0.1:18443", "issuer_party": PARTY}
    )
    assert good.bitcoin_node_url == "http://127.0.0.1:18443" and good.registry_url is None
    assert check_contract_addresses({"custody_descriptor": descriptor()}).custody_descriptor
    bad: list[dict[str, object]] = [
        {},
        {"bitcoin_node_url": "ftp://host"},
        {"registry_url": "http://"},
        {"bitcoin_node_url": "http://host:99999"},
        {"issuer_party": "issuer::1221" + "ab" * 32},
        {"issuer_party": "issuer::1220abc"},
        {"issuer_party": "no-namespace"},
        {"custody_descriptor": descriptor()[:-1] + ("q" if descriptor()[-1] != "q" else "p")},
        {"custody_descriptor": "wpkh(xyz)"},
        {"nonsense": "x"},
        {"registry_url": 5},
    ]
    for mapping in bad:
        with pytest.raises(InvalidInputError):
            check_contract_addresses(mapping)


def test_contract_addresses_take_effect_after_their_time_lock_and_the_router_rebuilds(
    world: World,
) -> None:
    addresses = ContractAddresses("http://node-2:8332", None, PARTY, None)
    effective = T0 + timedelta(hours=24)
    assert apply_contract_addresses(
        world.db.uow, addresses, approval_id="ap-1", effective_at=effective, actor="a", at=T0
    )
    assert not apply_contract_addresses(  # the executor run again: nothing more
        world.db.uow, addresses, approval_id="ap-1", effective_at=effective, actor="a", at=T0
    )
    audited = list_audit_records(world.db.uow, limit=100)
    assert [r.entry.operation for r in audited].count("issuance_contract_addresses_updated") == 1
    assert contract_addresses_in_force(world.db.uow, T0) is None

    rebuilt: list[ContractAddresses] = []
    new_ctx = context(world.db, world.clock, SETTINGS)

    def rebuild(given: ContractAddresses) -> IssuanceContext:
        rebuilt.append(given)
        return new_ctx

    seen_ctx: list[IssuanceContext] = []
    world.hooks["a"] = lambda _op: None
    router = world.router(rebuild=rebuild)
    definitions = world.definitions()
    original = definitions["bitcoin_deposit"]

    def see(ctx: IssuanceContext, op: IssuanceOperation) -> StepOutcome:
        seen_ctx.append(ctx)
        return StepOutcome("done")

    router.definitions["bitcoin_deposit"] = OperationDefinition(
        type="bitcoin_deposit", steps=(("a", see),), compensate=original.compensate
    )
    assert not router.tick().rebuilt
    world.clock.now = effective
    world.create()
    tick = router.tick()
    assert tick.rebuilt and rebuilt == [addresses]
    assert seen_ctx == [new_ctx] and seen_ctx[0] is not world.ctx  # rebuilt before the step
    assert not router.tick().rebuilt  # unchanged: not rebuilt again
    assert contract_addresses_in_force(world.db.uow, effective) == addresses


def test_a_failing_rebuild_runs_no_step(world: World) -> None:
    apply_contract_addresses(
        world.db.uow,
        ContractAddresses("http://node-2:8332", None, None, None),
        approval_id="ap-1",
        effective_at=T0,
        actor="a",
        at=T0,
    )

    def rebuild(_given: ContractAddresses) -> IssuanceContext:
        raise ConnectionError("node-2 unreachable")

    world.create()
    tick = world.router(rebuild=rebuild).tick()
    assert tick.error is not None and "unreachable" in tick.error
    assert world.sent == {} and world.op().status == "pending"


def test_nothing_else_acts_on_an_operation_while_it_is_compensated(world: World) -> None:
    world.script["a"] = [StepOutcome("retry", error="slow node")]
    world.create()
    world.router().run_operation("op-1")
    world.clock.advance(60)  # due again: a router would run it
    seen: list[Any] = []

    def compensation(_ctx: IssuanceContext, op: IssuanceOperation) -> StepOutcome:
        seen.append(world.router().tick())
        actions: list[Callable[[], IssuanceOperation]] = [
            lambda: compensate_operation(
                world.ctx, world.definitions(), "op-1", reason="r", actor="b"
            ),
            lambda: resolve_operation(world.ctx, "op-1", reason="r", actor="b"),
        ]
        for action in actions:
            with pytest.raises(InvalidOperationStateError, match="right now"):
                action()
        return StepOutcome("done")

    definitions = world.definitions()
    definitions["bitcoin_deposit"] = OperationDefinition(
        type="bitcoin_deposit",
        steps=definitions["bitcoin_deposit"].steps,
        compensate=compensation,
    )
    op = compensate_operation(world.ctx, definitions, "op-1", reason="refund", actor="a")
    assert seen[0].looked_at == 0
    assert world.sent["op-1:a"] == 1
    assert op.status == "compensated"


# --- the lease, refusals audited, redemptions resolved only once nothing is owed ------------------


def test_a_wait_of_exactly_lease_s_is_not_taken_for_a_lease(world: World) -> None:
    during: list[dict[str, Any]] = []
    world.hooks["a"] = lambda _op: during.append(dict(world.op().result))
    world.script["a"] = [StepOutcome("wait", wait_s=SETTINGS.lease_s, detail={"why": "node"})]
    world.create()
    op = world.router().run_operation("op-1")
    assert op.status == "waiting"
    assert op.next_attempt_at == T0 + timedelta(seconds=SETTINGS.lease_s)
    # No worker holds it: the operator's retry is not refused as "running right now".
    retried = retry_operation(world.ctx, "op-1", reason="node back", actor="admin:ada")
    assert retried.status == "pending" and "leased_until" not in retried.result
    # While the step ran, the claim's lease was marked; recording the outcome removed it.
    assert during == [{"leased_until": "2026-12-05T06:01:00.000000Z"}]
    assert "leased_until" not in op.result


def test_a_step_that_outlives_its_lease_is_recorded_with_a_warning(world: World) -> None:
    world.hooks["a"] = lambda _op: world.clock.advance(SETTINGS.lease_s + 30)
    world.script["a"] = [StepOutcome("done", next_step="done")]
    world.create()
    assert world.router().run_operation("op-1").status == "completed"
    assert [(a["kind"], a["severity"]) for a in world.alerts()] == [
        ("issuance_lease_overrun", "warning")
    ]


def test_every_refused_override_is_audited_with_its_reason(world: World) -> None:
    def refusals(operation_id: str) -> list[tuple[str, str, Any, str | None]]:
        return [
            (r.entry.operation, r.entry.actor, r.entry.parameters.get("reason"), r.entry.error)
            for r in list_audit_records(world.db.uow, operation_id=operation_id)
            if r.entry.operation.endswith("_refused")
        ]

    world.create()  # pending: neither retry nor resolve may touch it
    with pytest.raises(InvalidOperationStateError):
        retry_operation(world.ctx, "op-1", reason="try", actor="admin:ada")
    with pytest.raises(InvalidOperationStateError):
        resolve_operation(world.ctx, "op-1", reason="close", actor="admin:bob")
    stuck(world, "op-2")
    world.compensation = [InvalidOperationStateError("a batch holds the payout")]
    with pytest.raises(InvalidOperationStateError):
        compensate_operation(world.ctx, world.definitions(), "op-2", reason="undo", actor="x")
    with pytest.raises(NotFoundError):
        retry_operation(world.ctx, "nope", reason="why", actor="admin:ada")

    first = refusals("op-1")
    assert [(name, actor, reason) for name, actor, reason, _ in first] == [
        ("issuance_retry_refused", "admin:ada", "try"),
        ("issuance_resolve_refused", "admin:bob", "close"),
    ]
    assert all(error and "InvalidOperationStateError" in error for *_, error in first)
    ((name, _, reason, error),) = refusals("op-2")
    assert (name, reason) == ("issuance_compensate_refused", "undo")
    assert error is not None and "a batch holds the payout" in error
    assert [(n, r) for n, _, r, _ in refusals("nope")] == [("issuance_retry_refused", "why")]
    assert world.op("op-2").status == "stuck"


def stuck_redemption(world: World, operation_id: str) -> IssuanceOperation:
    world.script["burn"] = [StepOutcome("fail", error="broken")]
    with world.db.uow() as uow:
        create_operation(
            uow,
            operation_id=operation_id,
            type="token_withdrawal",
            customer_id="cust-1",
            amount_sats=50_000,
            params={"address": "bcrt1qexample", "idempotency_key": operation_id},
            first_step="burn",
            at=world.clock(),
        )
        uow.commit()
    op = world.router().run_operation(operation_id)
    assert op.status == "stuck"
    return op


def burn(world: World, operation_id: str, status: Any, update_id: str | None = None) -> None:
    with world.db.uow() as uow:
        assert uow.issuance.insert_burn(
            BurnRecord(
                id=f"issuance:{operation_id}:burn",
                operation_id=operation_id,
                customer_id="cust-1",
                owner=world.ctx.treasury,
                amount_sats=50_000,
                reason=f"issuance:{operation_id}:burn",
                status=status,
                created_at=world.clock(),
                update_id=update_id,
            )
        )
        uow.commit()


def test_resolve_of_a_redemption_that_took_value_and_gave_nothing_back_is_refused(
    world: World,
) -> None:
    # Nothing burned yet: the customer's iSTSi is held in flight.
    stuck_redemption(world, "redeem:cust-1:k1")
    with pytest.raises(InvalidOperationStateError, match="compensate") as caught:
        resolve_operation(world.ctx, "redeem:cust-1:k1", reason="close", actor="admin:ada")
    assert caught.value.code == 41 and "in flight" in str(caught.value)
    # Burned, and no payout: the customer would be left with nothing.
    burn(world, "redeem:cust-1:k1", "committed", "update-1")
    with pytest.raises(InvalidOperationStateError, match="burned and no payout"):
        resolve_operation(world.ctx, "redeem:cust-1:k1", reason="close", actor="admin:ada")
    assert world.op("redeem:cust-1:k1").status == "stuck"
    names = [
        r.entry.operation for r in list_audit_records(world.db.uow, operation_id="redeem:cust-1:k1")
    ]
    assert names.count("issuance_resolve_refused") == 2 and "issuance_resolve" not in names

    # Re-minted: the value went back, resolve may close it.
    with world.db.uow() as uow:
        assert uow.issuance.insert_mint(
            MintRecord(
                id="issuance:redeem:cust-1:k1:remint",
                operation_id="redeem:cust-1:k1",
                customer_id="cust-1",
                owner=world.ctx.treasury,
                amount_sats=50_000,
                reason="issuance:redeem:cust-1:k1:remint",
                status="submitted",
                created_at=world.clock(),
            )
        )
        uow.commit()
    with pytest.raises(InvalidOperationStateError):  # not committed yet: it may still fail
        resolve_operation(world.ctx, "redeem:cust-1:k1", reason="close", actor="admin:ada")
    with world.db.uow() as uow:
        uow.issuance.set_mint_status(
            "issuance:redeem:cust-1:k1:remint", "committed", update_id="update-2"
        )
        uow.commit()
    op = resolve_operation(world.ctx, "redeem:cust-1:k1", reason="re-minted", actor="admin:ada")
    assert op.status == "resolved"

    # Refunded (the burn fenced as failed and refunded): resolve may close it too.
    stuck_redemption(world, "redeem:cust-1:k2")
    burn(world, "redeem:cust-1:k2", "failed", "refunded")
    op = resolve_operation(world.ctx, "redeem:cust-1:k2", reason="refunded", actor="admin:ada")
    assert op.status == "resolved"
    # A rejected burn that was not refunded leaves the value in flight: refused.
    stuck_redemption(world, "redeem:cust-1:k3")
    burn(world, "redeem:cust-1:k3", "failed")
    with pytest.raises(InvalidOperationStateError, match="compensate"):
        resolve_operation(world.ctx, "redeem:cust-1:k3", reason="close", actor="admin:ada")
