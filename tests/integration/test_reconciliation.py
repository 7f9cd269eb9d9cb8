"""Reconciliation (services/reconciliation.py, reconciliation_checks.py) on SQLite and PostgreSQL,
through the real watcher, router, ingestion, embedded ledger and in-memory chain.

The world: one Bitcoin deposit of 400,000 sats minted as iSTSi by the router and booked by
ingestion, so that the journal, the ledger, the watcher's outputs, the node's UTXO set and the
issuer's supply all agree (a run reports ok). Then a discrepancy of each severity is injected in
each source, sized against the default tolerances (1 / 10 / 100 bps) — 40, 400, 4,000 and
40,000 sats on 400,000 — behind the back of what the source is compared with:

* ledger: the journal is tampered with (the treasury's iSTSi asset balance raised against
  suspense, so the ledger's holdings fall short of it);
* custody: an output the node does not have is recorded in the DB at the watcher's block;
* supply: iSTSi is minted on the issuer's ledger directly (ingestion is not run, so the ledger
  source reports "not compared" and stays out of it).

Each checks the class, the alert (minor → info, warning → warning, critical/emergency →
critical), the minting halt (critical and worse) and the emergency pause. Also: not compared
when ingestion or the watcher is behind, the ingestion-lag warning past its bound, a surplus
capped at warning, a node that is down reported as failed, and the stored history.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.journal import (
    SUSPENSE,
    AccountRef,
    JournalTransaction,
    Posting,
    treasury_account_name,
)
from sluice.ports.bitcoin_watch import FoundOutput
from sluice.ports.issuance import sats_to_amount
from sluice.ports.reserves import ReconciliationRun
from sluice.services import controls
from sluice.services.compliance import KycRegistry
from sluice.services.ingestion import Ingestion, IngestionSettings
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.reconciliation import (
    get_run,
    list_runs,
    reconcile,
    run_json,
)
from sluice.services.reconciliation_checks import INGESTION_LAG_BOUND_S, _ingestion_lag
from sluice.services.reference import onboard_instrument
from sluice.services.reserves_settings import ReservesContext
from tests.api_support import api_world
from tests.integration.issuance_deposit_world import CHAIN, CONFIRMATIONS, World

SATS = 400_000
CONNECTION = "test"
# Injected differences by severity, on 400,000 sats, against the default tolerances.
SIZES = {"minor": 40, "warning": 400, "critical": 4_000, "emergency": 40_000}
ALERT = {"minor": "info", "warning": "warning", "critical": "critical", "emergency": "critical"}


class Reconciled(World):
    """The deposit world with ingestion and every operation type, and the reserves context."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.router = IssuanceRouter(self.ctx, DEFINITIONS)
        self.istsi = self.issuer.instrument
        onboard_instrument(self.db.uow, self.istsi, transfer_kinds=("direct", "offer"))

    def reserves(self, secret: Path) -> ReservesContext:
        return ReservesContext(
            uow=self.db.uow,
            clock=self.clock,
            treasury=self.treasury,
            secret_path=secret,
            ledger=self.ledger.client(self.treasury),
            node=self.chain,
            wallet=self.wallet,
            issuer=self.issuer,
            istsi=self.istsi,
            connection=CONNECTION,
            confirmations_min=CONFIRMATIONS,
        )

    def ingest(self) -> None:
        Ingestion(
            self.db.uow,
            self.ledger.client(self.treasury),
            self.treasury,
            connection=CONNECTION,
            settings=IngestionSettings(retry_delay_s=0.0),
            sleep=lambda _s: None,
        ).run()

    def deposit_credited(self, customer: str, sats: int) -> str:
        op_id = self.deposit(customer, sats)
        assert self.router.run_operation(op_id).step == "credit"
        self.ingest()
        assert self.router.run_operation(op_id).status == "completed"
        return op_id

    # -- tampering --------------------------------------------------------------------------------

    def raise_journal(self, sats: int) -> None:
        """The treasury's iSTSi asset balance raised by ``sats`` against suspense."""
        amount = sats_to_amount(sats)
        with self.db.uow() as uow:
            uow.withdrawals.post(
                [
                    JournalTransaction(
                        id=f"tamper-{sats}",
                        kind="tamper",
                        postings=(
                            Posting(
                                AccountRef(treasury_account_name(self.treasury), self.istsi), amount
                            ),
                            Posting(AccountRef(SUSPENSE, self.istsi), -amount),
                        ),
                    )
                ]
            )
            uow.commit()

    def record_phantom_output(self, sats: int) -> None:
        """An output at the watcher's block that the node never saw."""
        with self.db.uow() as uow:
            cursor = uow.btc_watch.cursor()
            assert cursor is not None
            (address,) = uow.btc_watch.addresses(branch=0)
            uow.btc_watch.record_outputs(
                [
                    FoundOutput(
                        txid="ab" * 32,
                        vout=7,
                        kind="deposit",
                        address=address.address,
                        script_hex=address.script_hex,
                        customer_id=address.customer_id,
                        amount_sats=sats,
                        status="seen",
                    )
                ],
                cursor.height,
                cursor.hash,
                self.clock(),
            )
            uow.commit()

    # -- reads ------------------------------------------------------------------------------------

    def alert_severities(self, run: ReconciliationRun) -> list[tuple[str, str]]:
        return sorted(
            (a.kind, a.severity)
            for a in self.alerts()
            if a.id.startswith(f"{run.id}:") and a.id != f"{run.id}:halt"
        )

    def paused(self) -> bool:
        return controls.current_pause(self.db.uow) is not None


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    keys_dir = tmp_path_factory.mktemp("custody") / "keys"
    custody = create_sandbox_custody(keys_dir, CHAIN)
    return EmbitCustodyWallet(custody.descriptor, CHAIN, load_signing_keys(custody.key_files))


def open_world(url: str, wallet: EmbitCustodyWallet) -> Reconciled:
    world = Reconciled(bootstrap.database(url), wallet, KycRegistry())
    world.customer("alice")
    world.deposit_credited("alice", SATS)
    return world


@pytest.fixture
def world(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[Reconciled]:
    """On each engine."""
    world = open_world(database_url, wallet)
    yield world
    world.db.dispose()


@pytest.fixture
def sqlite_world(sqlite_url: str, wallet: EmbitCustodyWallet) -> Iterator[Reconciled]:
    """On SQLite only: the full matrix of sources and severities (a PostgreSQL database per
    test costs seconds; each engine runs the emergency of every source below)."""
    world = open_world(sqlite_url, wallet)
    yield world
    world.db.dispose()


@pytest.fixture
def ctx(world: Reconciled, tmp_path: Path) -> ReservesContext:
    return world.reserves(tmp_path / "por-secret")


def sources(run: ReconciliationRun) -> dict[str, Any]:
    return dict(run.report["sources"])


def test_a_clean_world_reconciles_ok(world: Reconciled, ctx: ReservesContext) -> None:
    run = reconcile(ctx, trigger="manual")
    assert (run.status, run.worst, run.discrepancies, run.actions) == ("ok", None, (), ())
    found = sources(run)
    assert {name: s["state"] for name, s in found.items()} == {
        "ledger": "compared",
        "custody": "compared",
        "supply": "compared",
    }, found
    ledger = found["ledger"]
    assert ledger["ledger_offset"] == ledger["ingestion_offset"] > 0
    assert ledger["instruments"][world.istsi.key()]["actual_units"] == str(SATS)
    custody = found["custody"]
    assert custody["read_at"]["chain"] == custody["read_at"]["watcher"]
    assert custody["expected_units"] == custody["actual_units"]
    supply = found["supply"]
    assert (supply["supply_units"], supply["reserves_units"]) == (str(SATS), str(SATS))
    assert supply["from_db"] == ["pending_redemptions_units", "pending_payouts_units"]
    assert not world.halted() and not world.paused()
    assert [r.id for r in list_runs(ctx)] == [run.id]
    assert get_run(ctx, run.id) == run
    assert run_json(run)["sources"]["supply"]["state"] == "compared"


def inject(world: Reconciled, source: str, sats: int) -> None:
    if source == "ledger":
        world.raise_journal(sats)
    elif source == "custody":
        world.record_phantom_output(sats)
    else:
        world.issuer.mint(world.treasury, sats, reason="behind our back", command_id=f"x-{sats}")


def check_reaction(world: Reconciled, source: str, severity: str) -> ReconciliationRun:
    ctx = world.reserves(Path("unused-secret"))
    inject(world, source, SIZES[severity])
    run = reconcile(ctx, trigger="schedule")
    (found,) = run.discrepancies
    assert (found.source, found.severity, run.worst, run.status) == (
        source,
        severity,
        severity,
        "discrepancies",
    ), run.report
    assert found.expected_units - found.actual_units == SIZES[severity]
    assert sources(run)[source]["state"] == "compared"
    assert world.alert_severities(run) == [(f"reconciliation_{source}", ALERT[severity])]
    critical = severity in ("critical", "emergency")
    assert world.halted() is critical
    assert ("minting_halted" in run.actions) is critical
    if critical:
        with world.db.uow() as uow:
            state = uow.issuance.minting_state()
        assert run.id in (state.halted_reason or "")
        assert [a.kind for a in world.alerts() if a.id == f"{run.id}:halt"] == [
            "reconciliation_critical"
        ]
    pause = controls.current_pause(world.db.uow)
    if severity == "emergency":
        assert pause is not None and pause.mode == "emergency" and run.id in pause.reason
        assert "system_paused" in run.actions
    else:
        assert pause is None
    assert get_run(ctx, run.id) == run
    return run


@pytest.mark.parametrize("severity", list(SIZES))
@pytest.mark.parametrize("source", ["ledger", "custody", "supply"])
def test_each_severity_in_each_source_is_classed_alerted_and_reacted_to(
    sqlite_world: Reconciled, source: str, severity: str
) -> None:
    check_reaction(sqlite_world, source, severity)


@pytest.mark.parametrize("source", ["ledger", "custody", "supply"])
def test_an_emergency_halts_minting_and_pauses_on_each_engine(
    world: Reconciled, source: str
) -> None:
    check_reaction(world, source, "emergency")
    # A second emergency leaves the pause as it is.
    first = controls.current_pause(world.db.uow)
    run = reconcile(world.reserves(Path("unused-secret")), trigger="manual")
    assert run.worst == "emergency"
    assert "system_already_paused" in run.actions and "system_paused" not in run.actions
    assert controls.current_pause(world.db.uow) == first


def test_a_surplus_is_never_worse_than_a_warning(sqlite_world: Reconciled, tmp_path: Path) -> None:
    ctx = sqlite_world.reserves(tmp_path / "secret")
    sqlite_world.raise_journal(-SIZES["emergency"])  # the ledger holds more than booked
    with sqlite_world.db.engine.begin() as connection:  # the DB lost its only output row
        connection.execute(sa.text("DELETE FROM btc_outputs"))
    run = reconcile(ctx, trigger="manual")
    assert sorted((d.source, d.severity) for d in run.discrepancies) == [
        ("custody", "warning"),
        ("ledger", "warning"),
    ]
    (custody,) = [d for d in run.discrepancies if d.source == "custody"]
    assert custody.details["missing_in_db"] and not custody.details["missing_on_node"]
    assert not sqlite_world.halted()


def test_nothing_is_compared_while_ingestion_or_the_watcher_is_behind(
    sqlite_world: Reconciled, tmp_path: Path
) -> None:
    world = sqlite_world
    ctx = world.reserves(tmp_path / "secret")
    world.issuer.mint(world.treasury, 400, reason="unbooked", command_id="unbooked")
    world.chain.mine()  # the watcher has not seen this block
    run = reconcile(ctx, trigger="manual")
    found = sources(run)
    assert {s["state"] for s in found.values()} == {"not_compared"}, found
    ledger = found["ledger"]
    assert ledger["reason"] == (
        f"ingestion at offset {ledger['ingestion_offset']}, "
        f"ledger read at {ledger['ledger_offset']}"
    )
    # Custody and supply: the node's tip is not the watcher's block (a payout's inputs could be
    # gone from the one and still pending in the other).
    assert "watcher at block" in found["custody"]["reason"]
    assert found["supply"]["reason"] == found["custody"]["reason"]
    assert run.discrepancies == () and run.status == "ok"
    # Still behind past the bound: the lag is a warning of its own.
    world.clock.now += timedelta(seconds=INGESTION_LAG_BOUND_S + 1)
    later = reconcile(ctx, trigger="manual")
    lag = [d for d in later.discrepancies if d.source == "ledger"]
    assert [(d.severity, d.details["kind"]) for d in lag] == [("warning", "ingestion_lag")]
    # Caught up: compared again (the mint went to suspense, the ledger agrees with the books).
    world.ingest()
    assert world.watcher.run_once().error is None
    caught_up = reconcile(ctx, trigger="manual")
    assert sources(caught_up)["ledger"]["state"] == "compared"
    assert sources(caught_up)["custody"]["state"] == "compared"
    # The iSTSi minted behind our back is 400 sats of supply nothing backs.
    (short,) = caught_up.discrepancies
    assert (short.source, short.severity, short.actual_units) == ("supply", "warning", SATS)


class DownNode:
    def __getattr__(self, name: str) -> Any:
        raise ConnectionError("node down")


def test_a_source_that_cannot_be_read_fails_without_raising(
    sqlite_world: Reconciled, tmp_path: Path
) -> None:
    ctx = sqlite_world.reserves(tmp_path / "secret")
    run = reconcile(replace(ctx, node=DownNode()), trigger="schedule")
    found = sources(run)
    assert found["custody"]["state"] == found["supply"]["state"] == "failed"
    assert "node down" in found["custody"]["reason"]
    assert found["ledger"]["state"] == "compared"
    assert (run.status, run.worst) == ("failed", None)
    bare = ReservesContext(
        uow=ctx.uow, clock=ctx.clock, treasury=ctx.treasury, secret_path=tmp_path
    )
    alone = reconcile(bare, trigger="manual")
    assert {s["state"] for s in sources(alone).values()} == {"not_read"}
    assert alone.status == "ok"
    assert [r.id for r in list_runs(ctx)] == [alone.id, run.id]


# --- over HTTP -----------------------------------------------------------------------------------


def test_the_api_runs_and_shows_reconciliations_to_whom_it_may(
    sqlite_url: str, tmp_path: Path
) -> None:
    """POST /v1/reserves/reconcile needs router_admin; the reports are for the auditors
    (compliance_override or router_admin); without a reserves side, 503."""
    world = api_world(sqlite_url, customers=1)
    try:
        sandbox = world.sandbox
        sandbox.ingest()
        client = world.client()
        assert (
            client.post("/v1/reserves/reconcile", headers=world.headers("system_admin")).status_code
            == 503
        )
        world.context.reserves = ReservesContext(
            uow=sandbox.database.uow,
            clock=sandbox.clock,
            treasury=sandbox.treasury,
            secret_path=tmp_path / "secret",
            ledger=sandbox.ledger.client(sandbox.treasury),
            connection=sandbox.connection,
        )
        for refused in ("compliance_officer", "operator", "user", None):
            answer = client.post("/v1/reserves/reconcile", headers=world.headers(refused))
            assert answer.status_code in (401, 403), (refused, answer.text)
        answer = client.post("/v1/reserves/reconcile", headers=world.headers("system_admin"))
        assert answer.status_code == 200, answer.text
        run = answer.json()
        assert (run["trigger"], run["status"], run["worst"]) == ("manual", "ok", None)
        assert run["sources"]["ledger"]["state"] == "compared"
        assert run["sources"]["custody"]["state"] == "not_read"
        for reader in ("compliance_officer", "system_admin", "super_admin"):
            listed = client.get("/v1/reserves/reconciliations", headers=world.headers(reader))
            assert listed.status_code == 200, (reader, listed.text)
            assert [r["id"] for r in listed.json()["items"]] == [run["id"]]
            shown = client.get(
                f"/v1/reserves/reconciliations/{run['id']}", headers=world.headers(reader)
            )
            assert shown.json() == run
        for refused in ("operator", "user"):
            answer = client.get("/v1/reserves/reconciliations", headers=world.headers(refused))
            assert answer.status_code == 403, (refused, answer.text)
        missing = client.get(
            "/v1/reserves/reconciliations/recon-none", headers=world.headers("system_admin")
        )
        assert missing.status_code == 404
    finally:
        world.sandbox.close()


def test_an_offset_read_before_a_node_restore_is_no_lag() -> None:
    """After a restore from backup the node's offsets are renumbered and ingestion rewinds: an
    earlier run's read beyond the ledger's end now says nothing about ingestion's lag."""
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    earlier = ReconciliationRun(
        id="rec-earlier",
        trigger="schedule",
        status="ok",
        started_at=now - timedelta(seconds=INGESTION_LAG_BOUND_S + 60),
        finished_at=now - timedelta(seconds=INGESTION_LAG_BOUND_S + 60),
        worst=None,
        report={"sources": {"ledger": {"ledger_offset": 12}}},
    )
    # The ledger's end is now 11 (renumbered), ingestion at 7 and catching up: no warning.
    assert _ingestion_lag([earlier], 7, 11, now) is None
    # Without a restore (the ledger still has offset 12), ingestion at 7 is behind.
    lag = _ingestion_lag([earlier], 7, 20, now)
    assert lag is not None and lag.severity == "warning"


def _run(run_id: str, seconds_ago: float, now: datetime, **ledger: int) -> ReconciliationRun:
    """An earlier run whose ledger check saw ``ledger`` (ingestion_offset, ledger_end)."""
    at = now - timedelta(seconds=seconds_ago)
    return ReconciliationRun(
        id=run_id,
        trigger="schedule",
        status="ok",
        started_at=at,
        finished_at=at,
        worst=None,
        report={"sources": {"ledger": dict(ledger)}},
    )


def test_a_run_from_before_a_restore_is_no_lag_once_the_new_numbering_passed_it() -> None:
    """After a restore the renumbered ledger grew past the old offset again: a later run saw the
    smaller end, so the run before it (old numbering) is not compared with today's cursor."""
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    old = INGESTION_LAG_BOUND_S + 60
    before = _run("rec-before", old + 120, now, ingestion_offset=5, ledger_end=9)
    after = _run("rec-after", old, now, ingestion_offset=5, ledger_end=5)
    # The ledger's end is 12 now; ingestion is at 7, below the 9 read in the old numbering.
    assert _ingestion_lag([after, before], 7, 12, now) is None
    # Without the restore (the ends only grew) the same old read is a lag.
    grown = _run("rec-after", old, now, ingestion_offset=5, ledger_end=10)
    lag = _ingestion_lag([grown, before], 7, 12, now)
    assert lag is not None and lag.details["earlier_run"] == "rec-after"


def test_a_run_from_before_the_cursor_was_rewound_is_no_lag() -> None:
    """The runbook moved ingestion's cursor back (44 → 10): the run that saw the cursor at 44
    and every run before it say nothing of ingestion's lag since."""
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    old = INGESTION_LAG_BOUND_S + 12
    runs = [
        _run("rec-2", old, now, ingestion_offset=44, ledger_end=44),
        _run("rec-1", old + 60, now, ingestion_offset=20, ledger_end=21),
    ]
    assert _ingestion_lag(runs, 10, 50, now) is None
    # A cursor that only moved forward (to 10 from 8) and is still below 21: a lag.
    runs = [
        _run("rec-2", old, now, ingestion_offset=8, ledger_end=44),
        _run("rec-1", old + 60, now, ingestion_offset=8, ledger_end=21),
    ]
    lag = _ingestion_lag(runs, 10, 50, now)
    assert lag is not None and lag.details["earlier_ledger_offset"] == 44
    # Ingestion not started now although a run saw it at 3: the cursor was removed since.
    started = [_run("rec-1", old, now, ingestion_offset=3, ledger_end=21)]
    assert _ingestion_lag(started, None, 50, now) is None
    never = [_run("rec-1", old, now, ledger_end=21)]
    lag = _ingestion_lag(never, None, 50, now)
    assert lag is not None and "has not started" in lag.message


def test_a_run_within_the_bound_still_marks_a_rewind_before_it() -> None:
    """A recent run (inside the bound, not itself compared) that saw a smaller cursor than an
    older run still ends the walk: the older run is from before the rewind."""
    now = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
    runs = [
        _run("rec-2", 30, now, ingestion_offset=12, ledger_end=40),
        _run("rec-1", INGESTION_LAG_BOUND_S + 100, now, ingestion_offset=30, ledger_end=35),
    ]
    assert _ingestion_lag(runs, 20, 40, now) is None
