"""The demo's reserves chapter (:mod:`sluice.demo.reserves`), after the Bitcoin custody and iSTSi
issuance chapters it goes on from, on a small demo world: the demo's own ledger and Integration
DB with a few Canton Coin deposits ingested, the sandbox custody on the in-memory chain.

How: the three chapters run against the real :class:`Exchange`, then the reserves chapter's
report is printed to a string. Every step it reports must hold, and what it reports is checked
again independently of the chapter, from the Integration DB, the ledger and the chain: the
readings' figures and read points, the three reconciliation runs (clean, the critical shortfall
that halted minting, clean again) and the approval that resumed minting, the Bitcoin that left
custody on the chain, the roots against the customers' balances, the proof file the chapter
wrote verified by ``sluice por verify`` in another process (and a tampered copy refused), and
the signed reserves document.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from sluice.demo import bitcoin, issuance, reserves
from sluice.demo.ingestion import sluice_command
from sluice.demo.issuance import ALICE, OWN_PARTY_SATS, REDEMPTIONS, TREASURY_DEPOSITS
from sluice.demo.report import Sections
from sluice.demo.reserves import (
    MOVE_FEE_SATS,
    OUTSIDE_SCRIPT,
    POR_DIR,
    SHORTFALL_SATS,
    SNAPSHOT_ID,
    TREASURER,
    ReservesStory,
)
from sluice.demo.world import (
    BLOCKED,
    BLOCKED_OFFER_AMOUNT,
    CUSTOMERS,
    OFFER_AMOUNT,
    OFFICER,
    Exchange,
    held_on_ledger,
    load_cursor,
)
from sluice.domain.reserves import units_of
from sluice.ports import UnitOfWorkFactory
from sluice.ports.reserves import ReconciliationRun
from sluice.services.approvals import get_approval
from sluice.services.balances import customer_balances
from tests.e2e.demo_support import small_demo, small_plan

STEPS = 7
DEPOSITS = 12  # Canton Coin deposits of the demo's plan, so CC is owed and held


@dataclass
class Told:
    story: ReservesStory
    report: str
    exchange: Exchange
    data: Path

    @property
    def uow(self) -> UnitOfWorkFactory:
        return self.exchange.database.uow

    def runs(self) -> list[ReconciliationRun]:
        """The chapter's runs, in its order, as stored (and no other run)."""
        with self.uow() as uow:
            stored = {run.id: run for run in uow.reserves.runs(limit=100)}
        assert sorted(stored) == sorted(run.id for run in self.story.runs)
        return [stored[run.id] for run in self.story.runs]

    @property
    def custody(self) -> bitcoin.Custody:
        custody = self.exchange.custody
        assert isinstance(custody, bitcoin.Custody)
        return custody


@pytest.fixture(scope="module")
def told(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Told]:
    data = tmp_path_factory.mktemp("demo") / "data"
    small = small_plan(DEPOSITS)
    assert (small.offer.amount, small.blocked_offer.customer) == (OFFER_AMOUNT, BLOCKED)
    assert small.blocked_offer.amount == BLOCKED_OFFER_AMOUNT
    ledger, exchange = small_demo(data, small)
    database = exchange.database
    status = lambda _message: nullcontext()  # noqa: E731
    bitcoin.CHAPTER.run(exchange, status)
    issuance.CHAPTER.run(exchange, status)
    story = reserves.CHAPTER.run(exchange, status)
    output = io.StringIO()
    console = Console(file=output, width=600, color_system=None)  # no row wraps
    ok = reserves.CHAPTER.show(console, story, Sections())
    assert ok, output.getvalue()
    yield Told(story, output.getvalue(), exchange, data)
    database.dispose()
    ledger.close()


def test_every_step_of_the_chapter_holds_and_is_reported(told: Told) -> None:
    report = told.report
    assert [step.ok for step in told.story.steps] == [True] * STEPS
    assert "1. Reserves: what is owed against what backs it" in report
    assert "2. Reconciliation and proof of reserves" in report
    assert "3. Reconciliation runs" in report
    assert f"4. Proof of liabilities: published roots of {SNAPSHOT_ID}" in report
    assert "✗" not in report and report.count("✓") == STEPS
    assert "ok: ledger compared, custody compared, supply compared; no discrepancy" in report
    assert "supply: critical" in report and "minting halted" in report
    assert "the approval executed, minting on" in report
    assert "a copy claiming one unit more is refused" in report
    assert "reserves cover what is owed (customers and other obligations) for 3 of 3" in report


def test_the_readings_are_the_books_and_the_chain_at_their_read_points(told: Told) -> None:
    readings = {r.instrument: r for r in told.story.readings}
    world = told.exchange.world
    coin = readings[world.coin.key()]
    cursor = load_cursor(told.exchange.database, world)
    assert cursor is not None
    assert coin.ratio_bps == 10_000 and coin.read_at["reserves"].offset == cursor.offset
    held = held_on_ledger(told.exchange.ledger, world.treasury)[world.coin]
    assert coin.reserves_units == units_of(held, 10)
    (istsi,) = [r for r in readings.values() if r.kind == "istsi"]
    assert istsi.ratio_bps == told.story.ratio_bps and istsi.ratio_bps is not None
    minted = sum(sats for _, sats in TREASURY_DEPOSITS) + OWN_PARTY_SATS
    burned = sum(sats for _, sats in REDEMPTIONS)
    assert istsi.ratio_bps >= 10_000 and istsi.supply_units == minted - burned
    point = istsi.read_at["reserves"]
    assert point.height is not None
    assert told.custody.node.getblockhash(point.height) == point.block_hash


def test_the_shortfall_halted_minting_and_an_approval_resumed_it(told: Told) -> None:
    clean, short, back = told.runs()
    assert (clean.status, short.status, back.status) == ("ok", "discrepancies", "ok")
    (found,) = short.discrepancies
    assert (found.source, found.severity) == ("supply", "critical")
    assert found.expected_units - found.actual_units == SHORTFALL_SATS
    assert "minting_halted" in short.actions and "system_paused" not in short.actions
    for run in (clean, short, back):
        states = {k: v["state"] for k, v in dict(run.report["sources"]).items()}
        assert states == {"ledger": "compared", "custody": "compared", "supply": "compared"}
    # What left custody is on the chain, paid to a wallet outside it.
    ((_txid, sats),) = told.custody.payments_on_chain(OUTSIDE_SCRIPT)
    assert sats == told.story.moved_sats - MOVE_FEE_SATS
    with told.uow() as uow:
        alerts = {a.kind: a.severity for a in uow.books.alerts(limit=10_000)}
        assert not uow.issuance.minting_state().minting_halted
    assert alerts.get("reconciliation_supply") == "critical"
    assert alerts.get("reconciliation_critical") == "critical"
    approval = get_approval(told.uow, told.story.approval_id)
    assert approval.operation == "issuance.resume_minting" and approval.status == "executed"
    assert sorted(approval.approvers) == sorted([f"cli:{OFFICER}", f"cli:{TREASURER}"])


def test_the_roots_are_the_customers_balances_and_a_proof_verifies_elsewhere(
    told: Told, tmp_path: Path
) -> None:
    roots = {r["instrument"]: r for r in told.story.roots}
    world = told.exchange.world
    # A leaf is the customer's account in the journal: what is available to them. A deposit
    # held for KYC (Erin's iSTSi, never minted) or a withdrawal in flight is not in it.
    expected: dict[str, tuple[int, int]] = {}
    for customer in CUSTOMERS:
        for line in customer_balances(told.uow, customer.id):
            key = line.instrument.key()
            units = units_of(line.available, 8 if line.instrument.id == "iSTSi" else 10)
            if units > 0:
                total, count = expected.get(key, (0, 0))
                expected[key] = (total + units, count + 1)
    assert {k: (int(r["total_units"]), r["leaf_count"]) for k, r in roots.items()} == {
        **dict.fromkeys(roots, (0, 0)),
        **expected,
    }
    assert told.story.proof["instrument"] == world.coin.key()
    assert told.story.proof["customer_id"] == ALICE.id and told.story.proof_ok
    # The files the chapter wrote, checked by `sluice por verify` in another process with
    # nothing of the operator's around; a copy claiming one unit more is refused.
    folder = told.data / POR_DIR
    done = _verify(tmp_path / "clean", folder / "alice-proof.json", folder / "roots.jsonl")
    assert done.returncode == 0, done.stdout + done.stderr
    forged = dict(told.story.proof)
    forged["units"] = str(int(forged["units"]) + 1)
    forged["balance"] = str(Decimal(forged["balance"]) + Decimal("1E-10"))
    forged_file = tmp_path / "forged.json"
    forged_file.write_text(json.dumps(forged))
    refused = _verify(tmp_path / "forged", forged_file, folder / "roots.jsonl")
    assert refused.returncode == 2, refused.stdout + refused.stderr


def test_the_signed_reserves_document_verifies_against_the_node_and_the_roots(
    told: Told,
) -> None:
    result = told.story.document
    assert result is not None and result.valid, result
    assert result.threshold == 2 and result.signatures_valid >= 2 and result.descriptor_pinned
    assert result.node is not None and not result.node.differences
    coverage = {c["instrument"]: c for c in result.coverage}
    assert set(coverage) == {r["instrument"] for r in told.story.roots}
    assert all(c["reserves_cover_liabilities"] is True for c in coverage.values())
    for key, root in ((r["instrument"], r) for r in told.story.roots):
        assert coverage[key]["liabilities_units"] == root["total_units"]


def _verify(workdir: Path, proof: Path, roots: Path) -> subprocess.CompletedProcess[str]:
    workdir.mkdir()
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)}
    return subprocess.run(
        [*sluice_command(), "por", "verify", str(proof), "--root", str(roots)],
        cwd=workdir,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
