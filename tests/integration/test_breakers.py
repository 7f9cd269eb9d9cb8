"""The ledger's circuit breaker opening under injected ledger faults and closing after, with
the withdrawal worker on the embedded ledger and PostgreSQL; forcing breakers through the CLI and
the API (audited).

How: a :class:`~sluice.sandbox.Sandbox` on PostgreSQL; the worker submits through
:class:`~sluice.services.breaker_proxies.GuardedLedgerCommands` and runs as the service loop's
withdrawals part (gated on the ``ledger`` flow), one round at a time. The process's breakers are
configured with small settings, the test's monotonic clock and the sandbox's database (alerts,
events, forced states). The embedded ledger's ``faults.fail_next_commands`` rejects the next
submissions as a node failing would. What was paid is read back from the ledger's own update
stream: every withdrawal ends completed, paid exactly once.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from sluice.cli import app
from sluice.domain.breaker import BreakerSettings
from sluice.sandbox import Sandbox
from sluice.server.loop import ServiceLoop, withdrawal_part
from sluice.services.breaker_proxies import GuardedLedgerCommands
from sluice.services.breakers import (
    FLOWS,
    BreakerOpenError,
    Breakers,
    breakers,
    configure_breakers,
    guard,
)
from sluice.services.withdrawals import WithdrawalSettings
from tests.api_support import api_world
from tests.integration.test_withdrawals import (
    alert_kinds,
    assert_books_balance,
    fund,
    ledger_view,
    pass_beyond,
    record,
)

FORCE = ["breakers", "force"]
SETTINGS = BreakerSettings(window=8, min_calls=4, failure_rate=0.5, open_s=30.0, probes=2)


class Monotonic:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def sandbox(postgres_url: str) -> Iterator[Sandbox]:
    sb = Sandbox.create(
        postgres_url,
        customers=2,
        withdrawal_settings=WithdrawalSettings(claim_batch=4, merge_threshold=0),
    )
    yield sb
    sb.close()


@pytest.fixture
def clock() -> Iterator[Monotonic]:
    yield Monotonic()
    configure_breakers()  # the process's breakers back to the defaults, detached


def _registry(sb: Sandbox, clock: Monotonic) -> Breakers:
    return configure_breakers(
        default=SETTINGS, monotonic=clock, uow_factory=sb.database.uow, clock=sb.clock
    )


def _events(sb: Sandbox, kind: str) -> list[dict[str, object]]:
    with sb.database.uow() as uow:
        return [dict(row.event.payload) for row in uow.events.find(type=kind, limit=100)]


def _audited(sb: Sandbox, operation: str) -> list[tuple[str, object]]:
    """(actor, parameters) of the audit records of ``operation``, in order."""
    with sb.database.uow() as uow:
        records = uow.audit.records(limit=1000)
    return [(r.entry.actor, r.entry.parameters) for r in records if r.entry.operation == operation]


def test_the_ledger_breaker_opens_under_ledger_faults_pauses_withdrawals_and_closes_after(
    sandbox: Sandbox, clock: Monotonic
) -> None:
    sb = sandbox
    registry = _registry(sb, clock)
    fund(sb, "cust-0", *["40"] * 6)
    requested = [sb.withdraw("cust-0", "10", key=f"k{n}") for n in range(6)]
    states: list[str] = []
    worker = sb.withdrawal_worker(
        commands=GuardedLedgerCommands(sb.commands),
        after_submit=lambda _record: states.append(registry.get("ledger").state),
    )
    loop = ServiceLoop([withdrawal_part(worker)], name="breakers-test")

    # The node fails every submission: the breaker opens at the minimum number of calls.
    sb.ledger.faults.fail_next_commands(4)
    loop.run_round()
    assert states == ["closed", "closed", "closed", "open"]
    assert registry.states()["ledger"] == "open"
    failed_first = [r.id for r in requested if record(sb, r.id).last_error]
    assert len(failed_first) == 4

    # While it is open the withdrawals part is skipped: the rest wait, reserved and never sent.
    loop.run_round()
    assert loop.status()["withdrawals"].skipped == "ledger circuit breaker open"
    waiting = [r.id for r in requested if r.id not in failed_first]
    assert [(record(sb, i).status, record(sb, i).attempt) for i in waiting] == [
        ("reserved", 1),
        ("reserved", 1),
    ]
    assert {record(sb, r.id).status for r in requested} == {"reserved", "submitted"}
    assert "breaker_open" in alert_kinds(sb)
    opened = _events(sb, "breaker_opened")
    assert [(e["flow"], e["failures"], e["calls"]) for e in opened] == [("ledger", 4, 4)]
    assert _events(sb, "breaker_closed") == []

    # The faults are over; after the wait the probes go through and close it.
    clock.now += SETTINGS.open_s - 0.5
    loop.run_round()
    assert loop.status()["withdrawals"].skipped == "ledger circuit breaker open"
    clock.now += 0.5
    assert registry.states()["ledger"] == "half_open"
    loop.run_round()
    assert registry.states()["ledger"] == "closed"
    assert [(e["flow"], e["old_state"]) for e in _events(sb, "breaker_closed")] == [
        ("ledger", "half_open")
    ]
    assert loop.status()["withdrawals"].skipped is None
    assert {record(sb, i).status for i in waiting} == {"submitted"}
    assert {record(sb, i).attempt for i in waiting} == {1}  # refused work burnt no attempt

    # The attempts the node rejected expire unseen and are retried; every withdrawal then
    # completes, paid exactly once.
    sb.ingest()
    latest = max(record(sb, i).trec_tgt for i in failed_first)  # type: ignore[type-var]
    assert latest is not None
    pass_beyond(sb, latest + timedelta(seconds=1))
    for _ in range(3):
        loop.run_round()
        sb.ingest()
    view = ledger_view(sb)
    for withdrawal in requested:
        done = record(sb, withdrawal.id)
        assert done.status == "completed", (withdrawal.id, done)
        assert view.paid(withdrawal.id) == 1
    assert {record(sb, i).attempt for i in failed_first} == {2}
    assert registry.states()["ledger"] == "closed"
    assert alert_kinds(sb).count("breaker_open") == 1
    assert_books_balance(sb)


def test_a_forced_open_breaker_pauses_the_flow_until_given_back(
    sandbox: Sandbox, clock: Monotonic
) -> None:
    sb = sandbox
    _registry(sb, clock)
    runner = CliRunner()
    db = ["--db", sb.database.engine.url.render_as_string(hide_password=False)]
    result = runner.invoke(
        app,
        [*FORCE, "ledger", "open", "--reason", "node upgrade", "--actor", "ops-1", *db],
    )
    assert result.exit_code == 0, result.output
    # Another process (here: the registry the service uses) reads it within its refresh.
    fresh = _registry(sb, clock)
    assert fresh.states()["ledger"] == "open"
    assert fresh.get("ledger").forced == "open"

    fund(sb, "cust-0", "40")
    withdrawal = sb.withdraw("cust-0", "10", key="forced")
    worker = sb.withdrawal_worker(commands=GuardedLedgerCommands(sb.commands))
    loop = ServiceLoop([withdrawal_part(worker)], name="breakers-test")
    clock.now += 3600  # no half-open while forced
    loop.run_round()
    assert loop.status()["withdrawals"].skipped == "ledger circuit breaker open"
    assert record(sb, withdrawal.id).status in {"queued", "reserved"}
    assert "breaker_open" in alert_kinds(sb)

    listed = runner.invoke(app, ["breakers", "list", "--json", *db])
    assert listed.exit_code == 0, listed.output
    assert '"forced_reason": "node upgrade"' in listed.output

    given_back = runner.invoke(
        app, ["breakers", "force", "ledger", "auto", "--reason", "done", "--actor", "ops-1", *db]
    )
    assert given_back.exit_code == 0, given_back.output
    fresh.refresh_forced(now=True)
    assert fresh.states()["ledger"] == "closed"
    loop.run_round()
    assert record(sb, withdrawal.id).status == "submitted"
    assert _audited(sb, "breaker_forced") == [
        ("ops-1", {"flow": "ledger", "state": "open", "reason": "node upgrade"}),
        ("ops-1", {"flow": "ledger", "state": "auto", "reason": "done"}),
    ]
    assert [e["new_state"] for e in _events(sb, "breaker_opened")] == ["open"]
    assert [e["new_state"] for e in _events(sb, "breaker_closed")] == ["closed"]

    refused = runner.invoke(app, ["breakers", "force", "kafka", "open", "--reason", "x", *db])
    assert refused.exit_code == 2
    assert "ledger, registry, bitcoin, payouts, nats, webhooks" in refused.output


def test_the_withdrawals_part_waits_for_the_registry_breaker_too(
    sandbox: Sandbox, clock: Monotonic
) -> None:
    """A withdrawal asks the registry (transfer factory) before the ledger: while the registry's
    breaker is open the part is skipped, nothing is claimed and nothing is announced."""
    sb = sandbox
    registry = _registry(sb, clock)
    fund(sb, "cust-0", "40")
    withdrawal = sb.withdraw("cust-0", "10", key="registry-open")
    worker = sb.withdrawal_worker(commands=GuardedLedgerCommands(sb.commands))
    loop = ServiceLoop([withdrawal_part(worker)], name="breakers-test")
    registry.get("registry").force("open", "registry maintenance")
    for _ in range(3):
        loop.run_round()
    assert loop.status()["withdrawals"].skipped == "registry circuit breaker open"
    assert record(sb, withdrawal.id).status == "reserved"
    assert _events(sb, "withdrawal_submitted") == []
    registry.get("registry").force(None)
    loop.run_round()
    assert record(sb, withdrawal.id).status == "submitted"
    assert [e["attempt"] for e in _events(sb, "withdrawal_submitted")] == [1]


def test_one_breaker_alert_per_flow_counted_again_resolved_on_close_and_reopened(
    sandbox: Sandbox, clock: Monotonic
) -> None:
    """A flapping breaker (a failed half-open probe opens it again) keeps one alert for its
    flow, with one more occurrence; closing resolves it (``alert_resolved``); opening after
    that reopens the same alert."""
    sb = sandbox
    registry = _registry(sb, clock)

    def fail(times: int) -> None:
        for _ in range(times):
            with pytest.raises(ConnectionError), guard("ledger", registry=registry):
                raise ConnectionError("node down")

    def succeed(times: int) -> None:
        for _ in range(times):
            with guard("ledger", registry=registry):
                pass

    def alert() -> tuple[int, bool]:
        with sb.database.uow() as uow:
            found = [a for a in uow.alerts.find(limit=100) if a.kind == "breaker_open"]
        assert [a.id for a in found] == ["breaker_open:ledger"]
        return found[0].occurrences, found[0].resolved_at is not None

    fail(SETTINGS.min_calls)
    assert alert() == (1, False)
    clock.now += SETTINGS.open_s
    fail(1)  # the half-open probe fails: open again
    assert registry.states()["ledger"] == "open"
    assert alert() == (2, False)
    clock.now += SETTINGS.open_s
    succeed(SETTINGS.probes)
    assert registry.states()["ledger"] == "closed"
    assert alert() == (2, True)
    resolved = _events(sb, "alert_resolved")
    assert [(e["alert_id"], e["reason"]) for e in resolved] == [
        ("breaker_open:ledger", "breaker_closed")
    ]

    fail(SETTINGS.min_calls)
    assert alert() == (1, False)
    raised = _events(sb, "alert_raised")
    assert [e["alert_id"] for e in raised] == ["breaker_open:ledger"] * 2
    assert len(_events(sb, "breaker_opened")) == 3


def test_the_process_registry_is_the_configured_one(sandbox: Sandbox, clock: Monotonic) -> None:
    registry = _registry(sandbox, clock)
    assert breakers() is registry
    assert registry.attached
    assert registry.get("webhooks").settings == SETTINGS


def test_the_api_lists_breakers_and_forces_one_audited(postgres_url: str) -> None:
    world = api_world(postgres_url, customers=1)
    try:
        registry = configure_breakers(default=SETTINGS, uow_factory=world.context.uow)
        with world.client() as client:
            listed = client.get("/v1/breakers", headers=world.headers("compliance_officer"))
            assert listed.status_code == 200, listed.text
            rows = listed.json()
            assert [row["flow"] for row in rows] == list(FLOWS)
            assert {row["state"] for row in rows} == {"closed"}
            assert rows[0]["settings"] == {
                "window": 8,
                "min_calls": 4,
                "failure_rate": 0.5,
                "open_s": 30.0,
                "probes": 2,
            }

            body = {"state": "open", "reason": "registry maintenance"}
            refused = client.post(
                "/v1/breakers/registry/force", json=body, headers=world.headers("operator")
            )
            assert refused.status_code == 403
            forced = client.post(
                "/v1/breakers/registry/force", json=body, headers=world.headers("system_admin")
            )
            assert forced.status_code == 200, forced.text
            assert (forced.json()["state"], forced.json()["forced"]) == ("open", "open")
            assert registry.states()["registry"] == "open"
            with pytest.raises(BreakerOpenError), guard("registry"):
                pytest.fail("a forced-open breaker let a call through")

            unknown = client.post(
                "/v1/breakers/kafka/force", json=body, headers=world.headers("system_admin")
            )
            assert unknown.status_code == 422
            # The flows are the path parameter's enum: the refusal names each of them.
            message = unknown.json()["message"]
            assert all(f"'{flow}'" in message for flow in FLOWS), message

            back = client.post(
                "/v1/breakers/registry/force",
                json={"state": "auto", "reason": "done"},
                headers=world.headers("super_admin"),
            )
            assert back.status_code == 200, back.text
            assert (back.json()["state"], back.json()["forced"]) == ("closed", None)
        audited = _audited(world.sandbox, "breaker_forced")
        assert [parameters for _actor, parameters in audited] == [
            {"flow": "registry", "state": "open", "reason": "registry maintenance"},
            {"flow": "registry", "state": "auto", "reason": "done"},
        ]
        assert all(actor for actor, _parameters in audited)
        kinds = alert_kinds(world.sandbox)
        assert kinds.count("breaker_open") == 1
    finally:
        configure_breakers()
        world.sandbox.close()
