"""Reconciliation in a moving system (services/reconciliation*.py, server/reserves.py), in the
world of :mod:`tests.integration.test_reconciliation`:

* a raised ``[bitcoin] confirmations_min`` leaves the outputs the watcher already confirmed as
  reserves (the mint guard counts them by that status), so it reads as no shortfall;
* a reader that answers earlier offsets (a participant) is read at ingestion's cursor, so the
  ledger is compared while ingestion trails a busy ledger;
* a source left unchecked (not compared or failed) past the bound raises a
  ``reconciliation_stale`` warning, once per stale period;
* an unchanged discrepancy is not alerted (nor its halt) again at every run;
* an emergency turns another pause into the emergency pause.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sluice.domain.ledger import Cursor
from sluice.ports import LedgerReadError
from sluice.ports.reserves import ReconciliationRun
from sluice.server.loop import Outcome
from sluice.server.reserves import Every, reconciliation_part
from sluice.services import controls
from sluice.services.reconciliation import STALE_BOUND_MIN_S, STALE_KIND, reconcile, stale_alerts
from sluice.services.reconciliation_checks import SourceCheck
from sluice.services.reserves_settings import ReservesContext
from sluice.store.repositories import SqlIngestionRepository
from tests.integration import test_reconciliation as base
from tests.integration.issuance_deposit_world import CONFIRMATIONS
from tests.integration.test_reconciliation import SATS, SIZES, Reconciled, sources

# The fixtures of the world, shared with the base module.
wallet = base.wallet
world = base.world
sqlite_world = base.sqlite_world
ctx = base.ctx

# --- R1: confirmations_min raised after a mint ---------------------------------------------------


def test_a_raised_confirmations_min_keeps_confirmed_outputs_as_reserves(
    world: Reconciled, ctx: ReservesContext
) -> None:
    """The deposit was minted at CONFIRMATIONS; the operator then raises the setting. The
    watcher's row says confirmed, so the node's output still counts: no shortfall, no pause."""
    run = reconcile(replace(ctx, confirmations_min=CONFIRMATIONS + 3), trigger="schedule")
    supply = sources(run)["supply"]
    assert supply["state"] == "compared", supply
    assert (run.discrepancies, run.worst, run.actions) == ((), None, ()), run.report
    assert supply["reserves_units"] == str(SATS)
    assert supply["outputs_counted_by_status"] == 1
    assert not world.halted() and not world.paused()


def test_an_output_only_seen_is_no_reserve_until_deep_enough(
    sqlite_world: Reconciled, tmp_path: Path
) -> None:
    """The DB only selects among the node's outputs: an output the watcher has not confirmed
    counts by its depth alone."""
    world = sqlite_world
    ctx = world.reserves(tmp_path / "secret")
    world.deposit("alice", 1_000, confirm=False)
    assert world.watcher.run_once().error is None
    supply = sources(reconcile(ctx, trigger="manual"))["supply"]
    assert supply["state"] == "compared", supply
    assert supply["reserves_units"] == str(SATS)  # the new output is not confirmed yet


# --- R3: the ledger read at ingestion's cursor ----------------------------------------------------


class HistoricalReader:
    """A participant's reader over the embedded ledger: it answers the active contracts at the
    offsets it kept (as a participant answers within its pruning window), and records what it
    was asked."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.kept: dict[int, list[Any]] = {}
        self.asked: list[int | None] = []

    def keep(self, party: str) -> int:
        end, items = self.node.active_contracts_at_end(party)
        self.kept[end] = items
        return int(end)

    def ledger_end(self) -> int:
        return int(self.node.ledger_end())

    def active_contracts(self, party: str, at_offset: int | None = None) -> list[Any]:
        self.asked.append(at_offset)
        if at_offset not in self.kept:
            raise LedgerReadError(f"offset {at_offset} not kept")
        return self.kept[at_offset]


def test_the_ledger_is_compared_at_ingestions_cursor_while_ingestion_trails(
    world: Reconciled, ctx: ReservesContext
) -> None:
    reader = HistoricalReader(world.ledger.client(world.treasury))
    ingested = reader.keep(world.treasury)
    world.raise_journal(SIZES["warning"])  # the journal says 400 sats more than the ledger
    # The ledger moves on; ingestion has not read it.
    world.issuer.mint(world.treasury, 400, reason="not ingested", command_id="busy")
    run = reconcile(replace(ctx, ledger=reader), trigger="schedule")
    ledger = sources(run)["ledger"]
    assert ledger["state"] == "compared", ledger
    assert ledger["read_mode"] == "at_ingestion_offset"
    assert ledger["ledger_offset"] == ledger["ingestion_offset"] == ingested
    assert ledger["ledger_end"] > ingested
    assert reader.asked == [ingested]
    (short,) = [d for d in run.discrepancies if d.source == "ledger"]
    assert (short.severity, short.expected_units - short.actual_units) == ("warning", 400)


def test_the_embedded_ledger_is_still_read_at_its_end(ctx: ReservesContext) -> None:
    ledger = sources(reconcile(ctx, trigger="manual"))["ledger"]
    assert (ledger["state"], ledger["read_mode"]) == ("compared", "at_ledger_end")
    assert ledger["ledger_offset"] == ledger["ledger_end"] == ledger["ingestion_offset"]


# --- R5: a source left unchecked ----------------------------------------------------------------


def stale_alerts_of(world: Reconciled) -> list[tuple[str, str]]:
    return sorted((a.id, a.severity) for a in world.alerts() if a.kind == STALE_KIND)


def test_a_source_left_unchecked_past_the_bound_is_a_warning_once_per_period(
    sqlite_world: Reconciled, tmp_path: Path
) -> None:
    world = sqlite_world
    ctx = world.reserves(tmp_path / "secret")
    compared = reconcile(ctx, trigger="schedule")
    world.chain.mine()  # the watcher is stuck behind the node from now on
    first = reconcile(ctx, trigger="schedule")
    assert sources(first)["custody"]["state"] == "not_compared"
    assert stale_alerts_of(world) == []  # within the bound
    world.clock.now += timedelta(seconds=STALE_BOUND_MIN_S + 1)
    late = reconcile(ctx, trigger="schedule")
    expected = [
        (f"{STALE_KIND}:custody:after:{compared.id}", "warning"),
        (f"{STALE_KIND}:supply:after:{compared.id}", "warning"),
    ]
    assert stale_alerts_of(world) == expected  # the ledger is compared: no alert for it
    assert f"alert:{STALE_KIND}:custody:after:{compared.id}" in late.actions
    # Still stale: not raised (nor listed) again.
    world.clock.now += timedelta(seconds=60)
    again = reconcile(ctx, trigger="schedule")
    assert stale_alerts_of(world) == expected
    assert not [a for a in again.actions if STALE_KIND in a]
    # Caught up, then stuck again: a new period, a new alert.
    assert world.watcher.run_once().error is None
    caught_up = reconcile(ctx, trigger="schedule")
    assert sources(caught_up)["custody"]["state"] == "compared"
    world.chain.mine()
    world.clock.now += timedelta(seconds=STALE_BOUND_MIN_S + 1)
    reconcile(ctx, trigger="schedule")
    assert f"{STALE_KIND}:custody:after:{caught_up.id}" in dict(stale_alerts_of(world))


def test_a_source_never_compared_is_stale_from_the_first_run_that_did_not(
    sqlite_world: Reconciled, tmp_path: Path
) -> None:
    world = sqlite_world
    ctx = world.reserves(tmp_path / "secret")
    world.chain.mine()
    first = reconcile(ctx, trigger="schedule")
    world.clock.now += timedelta(seconds=STALE_BOUND_MIN_S + 1)
    part = reconciliation_part(ctx, Every(0.0, lambda: 0.0))
    outcome = part.run()
    assert isinstance(outcome, Outcome)
    assert f"{STALE_KIND}:custody:since:{first.id}" in dict(stale_alerts_of(world))
    # The serve loop logs it as a problem.
    assert any(f"{STALE_KIND}:custody:since:{first.id}" in p for p in outcome.problems)


# --- R10: an unchanged discrepancy --------------------------------------------------------------


def test_an_unchanged_discrepancy_is_alerted_once_and_the_halt_stays(
    sqlite_world: Reconciled, tmp_path: Path
) -> None:
    world = sqlite_world
    ctx = world.reserves(tmp_path / "secret")
    world.record_phantom_output(SIZES["critical"])
    first = reconcile(ctx, trigger="schedule")
    assert "minting_halted" in first.actions
    alerts = world.alerts()
    assert {a.id for a in alerts} >= {f"{first.id}:1", f"{first.id}:halt"}
    second = reconcile(ctx, trigger="schedule")
    assert second.discrepancies == first.discrepancies  # still recorded
    assert second.worst == "critical" and world.halted()
    assert "minting_still_halted" in second.actions
    assert f"unchanged_since:{first.id}:1" in second.actions
    assert [a.id for a in world.alerts()] == [a.id for a in alerts]
    # An operator resumes minting while it persists: halted again, said once more.
    with world.db.uow() as uow:
        uow.issuance.set_minting_halted(False, reason=None, at=world.clock())
        uow.commit()
    third = reconcile(ctx, trigger="schedule")
    assert "minting_halted" in third.actions and world.halted()
    new = {a.id for a in world.alerts()} - {a.id for a in alerts}
    assert new == {f"{third.id}:halt"}
    # A change in the finding is a new finding.
    world.issuer.mint(world.treasury, SIZES["minor"], reason="behind our back", command_id="x")
    fourth = reconcile(ctx, trigger="schedule")
    assert {a.kind for a in world.alerts() if a.id.startswith(f"{fourth.id}:")} == {
        "reconciliation_supply"
    }


def test_an_emergency_turns_a_maintenance_pause_into_the_emergency(
    sqlite_world: Reconciled, tmp_path: Path
) -> None:
    world = sqlite_world
    ctx = world.reserves(tmp_path / "secret")
    controls.pause(
        world.db.uow, mode="maintenance", reason="upgrade", actor="ops", at=world.clock()
    )
    world.record_phantom_output(SIZES["emergency"])
    run = reconcile(ctx, trigger="schedule")
    pause = controls.current_pause(world.db.uow)
    assert pause is not None and pause.mode == "emergency" and run.id in pause.reason
    assert "system_paused" in run.actions


def test_the_journal_is_read_again_while_ingestions_cursor_moves_under_it(
    sqlite_world: Reconciled, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL READ COMMITTED reads each statement at its own snapshot: a batch committed
    between the cursor and the balances shows as a cursor that moved, and the journal is read
    again before the ledger is asked for that offset; a cursor that never settles is not
    compared."""
    world = sqlite_world
    reader = HistoricalReader(world.ledger.client(world.treasury))
    ingested = reader.keep(world.treasury)
    ctx = replace(world.reserves(tmp_path / "secret"), ledger=reader)
    real = SqlIngestionRepository.load_cursor
    calls: list[int] = []

    def moving(moves: int) -> Any:
        def load_cursor(self: SqlIngestionRepository, connection: str) -> Cursor | None:
            cursor = real(self, connection)
            calls.append(1)
            if len(calls) <= moves and len(calls) % 2 == 1 and cursor is not None:
                return replace(cursor, offset=cursor.offset - 1)  # the "before" read
            return cursor

        return load_cursor

    monkeypatch.setattr(SqlIngestionRepository, "load_cursor", moving(1))
    ledger = sources(reconcile(ctx, trigger="manual"))["ledger"]
    assert ledger["state"] == "compared", ledger
    assert reader.asked == [ingested]
    assert len(calls) == 4  # the journal read twice, before and after each time
    calls.clear()
    reader.asked.clear()
    monkeypatch.setattr(SqlIngestionRepository, "load_cursor", moving(1_000))
    ledger = sources(reconcile(ctx, trigger="manual"))["ledger"]
    assert (ledger["state"], ledger["reason"]) == (
        "not_compared",
        f"ingestion at offset {ingested - 1} and moving",
    )
    assert reader.asked == []


def stored_run(
    number: int, at: datetime, custody: str, actions: tuple[str, ...] = ()
) -> ReconciliationRun:
    return ReconciliationRun(
        id=f"rec-{number:03d}",
        trigger="schedule",
        status="ok",
        started_at=at,
        finished_at=at,
        worst=None,
        report={"sources": {"custody": {"state": custody}}},
        actions=actions,
    )


def test_a_period_longer_than_the_runs_looked_at_is_reminded_daily_not_every_run() -> None:
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    check = SourceCheck("custody", "failed", "node down")
    step = timedelta(seconds=300)
    # Newest first, none compared custody.
    window = [stored_run(n, now - (n + 1) * step, "failed") for n in range(10)]
    (first,) = stale_alerts(window[:5], [check], now, 900.0, looked_at=10)
    assert first.id == f"{STALE_KIND}:custody:since:rec-004"
    (full,) = stale_alerts(window, [check], now, 900.0, looked_at=10)
    assert full.id == f"{STALE_KIND}:custody:still:2026-12-05"
    # Raised by a run of the period: not again.
    raised = [replace(window[0], actions=(f"alert:{full.id}",)), *window[1:]]
    assert stale_alerts(raised, [check], now, 900.0, looked_at=10) == []
    # A compared run ends the period; one not reading the source neither ends nor extends it.
    mixed = [
        stored_run(0, now - step, "failed"),
        stored_run(1, now - 2 * step, "not_read"),
        stored_run(2, now - 5 * step, "compared"),
    ]
    (after,) = stale_alerts(mixed, [check], now, 900.0, looked_at=10)
    assert after.id == f"{STALE_KIND}:custody:after:rec-002"
    assert stale_alerts(mixed, [check], now, 1_500.0, looked_at=10) == []
