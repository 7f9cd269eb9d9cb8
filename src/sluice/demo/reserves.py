"""Chapter: reserves, reconciliation and a proof of reserves, on the world the issuance chapter
left — the demo's ledger (Canton Coin, USDX and iSTSi), the sandbox custody on the in-memory
chain and the issuer's iSTSi supply.

* **Reserve figures.** One reading per instrument: what is owed (customers, suspense, holds,
  in flight, fees; iSTSi's supply) against what backs it (the treasury's holdings as ingestion
  booked them; the confirmed custody outputs less pending outflows), each side with the ledger
  offset or the block (height and hash) it was read at, and iSTSi's reserve ratio.
* **A clean reconciliation.** Every source read independently of what ingestion and the watcher
  stored — the treasury's active contracts on the ledger at ingestion's offset, the custody
  descriptor's ``scantxoutset`` at the watcher's block, the issuer's supply — all compared, all
  agreeing.
* **A discrepancy, on purpose.** A transaction sluice never made moves Bitcoin out of custody
  (the in-memory chain checks no signatures): the backing falls just under the iSTSi supply. The
  watcher follows the chain, so custody's records and the node agree — it is the supply check
  that finds the shortfall, classes it critical and halts minting. The treasury desk sends the
  Bitcoin back to a custody change address, a new run is clean, and minting is resumed as an
  officer does it: an ``issuance.resume_minting`` proposal, approved by a second member of
  staff, runs the same executor as ``sluice issuance resume-minting``.
* **Proof of liabilities.** A snapshot: one Merkle-sum root per instrument, its total equal to
  the customers' balances in the journal. One customer's inclusion proof is checked with the
  standalone verifier (no database, no configuration, the published root only); a copy claiming
  one unit more is refused. The proof and the roots are written to ``por/`` in the data folder,
  for ``sluice por verify``.
* **The signed reserves document** stored with the snapshot verifies against the custody
  descriptor (2 of 3 signatures), the node's UTXO set and the published roots, and states that
  reserves cover what is owed for every instrument: the customers' balances in the tree and the
  other obligations (suspense, in flight, deposits not minted yet, pending payouts).

Fast: a handful of blocks, three reconciliation runs and three small trees.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, NoReturn, cast

from rich.console import Console
from rich.table import Table

from sluice.bitcoin.fakechain.records import build
from sluice.demo import bitcoin
from sluice.demo.bitcoin import Custody, Step, btc, sats_text
from sluice.demo.issuance import ALICE, CONFIRMATIONS
from sluice.demo.report import Chapter, Sections, Status, mark
from sluice.demo.world import OFFICER, Exchange
from sluice.domain.access import Principal
from sluice.domain.approvals import Approval
from sluice.domain.errors import InvalidOperationStateError
from sluice.domain.reserves import (
    ISTSI_DECIMALS,
    TOKEN_DECIMALS,
    decimals_for,
    format_units,
    units_of,
)
from sluice.ledger.local import EmbeddedLedger
from sluice.ledger.local.issuer import EmbeddedIssuerLedger, RemoteIssuerLedger
from sluice.por import Proof, Root, verify_proof
from sluice.ports import ActiveContractsReader
from sluice.ports.bitcoin_watch import CHANGE_BRANCH
from sluice.ports.issuance import IssuerLedger
from sluice.ports.reserves import ReconciliationRun, ReserveReading
from sluice.services.approvals import propose_operation, vote_on_approval
from sluice.services.issuance_approvals import issuance_executors
from sluice.services.por_reserves_verify import VerificationResult, verify_reserves
from sluice.services.por_snapshots import customer_proof, published_roots, take_snapshot
from sluice.services.reconciliation import reconcile
from sluice.services.reserves import find_istsi, get_reserve_ratio, percent, record_readings
from sluice.services.reserves_settings import ReservesContext

SHORTFALL_SATS = 200_000  # the backing left under the supply: 40 bps of it, critical
MOVE_FEE_SATS = 1_000
OUTSIDE_SCRIPT = "0014" + "77" * 20  # where the Bitcoin goes: a wallet outside custody
TREASURER = "demo-treasurer"  # the second member of staff who approves resuming minting
POR_DIR = "por"
SNAPSHOT_ID = "demo-1"


@dataclass(slots=True)
class ReservesStory:
    """What the chapter read and did; the figures, the runs, the roots, the verdicts."""

    symbols: dict[str, str]  # instrument key → symbol
    steps: list[Step] = field(default_factory=list)
    readings: list[ReserveReading] = field(default_factory=list)
    ratio_bps: int | None = None
    runs: list[ReconciliationRun] = field(default_factory=list)  # clean, short, back
    moved_sats: int = 0
    roots: list[dict[str, Any]] = field(default_factory=list)
    proof: dict[str, Any] = field(default_factory=dict)
    proof_ok: bool = False
    tampered_reason: str = ""
    document: VerificationResult | None = None
    approval_id: str = ""  # the proposal that resumed minting

    def check(self, what: str, result: str, ok: bool) -> None:
        self.steps.append(Step(what, result, ok))

    def symbol(self, key: str) -> str:
        return self.symbols.get(key, key.split("@", 1)[0])


class Reserves:
    """The reserves side over the demo's sources, as ``sluice serve`` wires it."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.uow = exchange.database.uow
        shared = exchange.custody
        assert isinstance(shared, Custody), "the reserves chapter goes on from the custody's"
        self.custody = shared
        ledger, world = exchange.ledger, exchange.world
        with self.uow() as uow:
            istsi = find_istsi(uow, exchange.clock())
        assert istsi is not None, "the reserves chapter goes on from the issuance chapter's"
        self.istsi = istsi
        issuer: IssuerLedger = (
            EmbeddedIssuerLedger(ledger, istsi.admin)
            if isinstance(ledger, EmbeddedLedger)
            else RemoteIssuerLedger(ledger, istsi.admin)
        )
        self.ctx = ReservesContext(
            uow=self.uow,
            clock=exchange.clock,
            treasury=world.treasury,
            secret_path=world.data_dir / "por-secret",
            ledger=cast("ActiveContractsReader", world.reader(ledger)),
            node=self.custody.node,
            wallet=self.custody.wallet,
            issuer=issuer,
            istsi=istsi,
            connection=world.connection,
            confirmations_min=CONFIRMATIONS,
        )

    def reconcile(self) -> ReconciliationRun:
        return reconcile(self.ctx, trigger="manual")

    def halted(self) -> bool:
        with self.uow() as uow:
            return uow.issuance.minting_state().minting_halted

    def caught_up(self) -> None:
        """Ingestion at the ledger's end and the watcher at the node's tip: every source is
        then read at the same point as the records it is compared with."""
        self.exchange.ingest()
        tick = self.custody.watcher.run_once()
        assert tick.error is None, tick.error


def _sources(run: ReconciliationRun) -> dict[str, dict[str, Any]]:
    return {k: dict(v) for k, v in dict(run.report.get("sources", {})).items()}


def _states(run: ReconciliationRun) -> str:
    return ", ".join(f"{source} {report['state']}" for source, report in _sources(run).items())


def readings(reserves: Reserves, story: ReservesStory) -> None:
    """One reading per instrument, and iSTSi's ratio."""
    reserves.caught_up()
    story.readings = record_readings(reserves.ctx)
    story.ratio_bps = get_reserve_ratio(reserves.ctx)
    tokens = [r for r in story.readings if r.kind == "token"]
    istsi = next((r for r in story.readings if r.kind == "istsi"), None)
    story.check(
        "reserve readings: owed against what backs it, per instrument",
        f"{', '.join(story.symbol(r.instrument) for r in tokens)} at {percent(10_000)} (the "
        f"treasury's holdings are what the books owe); iSTSi {percent(story.ratio_bps)} "
        "(Bitcoin deposits not minted, the held one included, back it too)",
        all(r.ratio_bps == 10_000 for r in tokens)
        and istsi is not None
        and story.ratio_bps == istsi.ratio_bps
        and story.ratio_bps is not None
        and story.ratio_bps >= 10_000,
    )


def clean_run(reserves: Reserves, story: ReservesStory) -> ReconciliationRun:
    run = reserves.reconcile()
    story.runs.append(run)
    sources = _sources(run)
    story.check(
        "reconciliation: the journal against the ledger's active contracts, custody against the "
        "node's scantxoutset, iSTSi supply against reserves",
        f"{run.status}: {_states(run)}; no discrepancy",
        run.status == "ok"
        and not run.discrepancies
        and all(s["state"] == "compared" for s in sources.values())
        and len(sources) == 3,
    )
    return run


def move_out(reserves: Reserves, clean: ReconciliationRun) -> tuple[int, str]:
    """Bitcoin out of custody in a transaction sluice never made, leaving the backing
    :data:`SHORTFALL_SATS` under the supply; the change goes to a custody change address.
    Answers what left custody and the change script."""
    supply = _sources(clean)["supply"]
    backing, owed = int(supply["backing_units"]), int(supply["supply_units"])
    leaving = backing - owed + SHORTFALL_SATS
    with reserves.uow() as uow:
        outputs = sorted(
            (o for o in uow.btc_watch.unspent_outputs() if o.status in ("confirmed", "credited")),
            key=lambda o: (-o.amount_sats, o.outpoint),
        )
        change = uow.btc_watch.addresses(branch=CHANGE_BRANCH)[0].script_hex
    spent, total = [], 0
    for output in outputs:
        if total >= leaving + bitcoin.DUST_SATS * 10:
            break
        spent.append(output)
        total += output.amount_sats
    inputs = [(bytes.fromhex(o.txid), o.vout, b"\x51", 0xFFFFFFFE) for o in spent]
    tx = build(inputs, [(OUTSIDE_SCRIPT, leaving - MOVE_FEE_SATS), (change, total - leaving)])
    reserves.custody.node.sendrawtransaction(tx.serialize().hex())
    reserves.custody.mine_and_watch()
    return leaving, change


def discrepancy(reserves: Reserves, story: ReservesStory, clean: ReconciliationRun) -> None:
    """The shortfall found, classed, and minting halted; then the Bitcoin back and minting
    resumed through an approval."""
    story.moved_sats, change = move_out(reserves, clean)
    short = reserves.reconcile()
    story.runs.append(short)
    found = [d for d in short.discrepancies if d.source == "supply"]
    halted = reserves.halted()
    ratio = get_reserve_ratio(reserves.ctx)
    story.check(
        f"{btc(story.moved_sats)} leaves custody in a transaction sluice never made (the "
        "watcher follows the chain, so custody's records still match the node)",
        f"{_states(short)}; supply: {found[0].severity if found else 'nothing found'} — "
        f"{found[0].message if found else ''}; minting halted; iSTSi ratio {percent(ratio)}",
        len(found) == 1
        and len(short.discrepancies) == 1
        and found[0].severity == "critical"
        and found[0].actual_units == found[0].expected_units - SHORTFALL_SATS
        and "minting_halted" in short.actions
        and "system_paused" not in short.actions
        and halted
        and ratio is not None
        and ratio < 10_000,
    )
    reserves.custody.node.fund(change, story.moved_sats)
    reserves.custody.mine_and_watch(CONFIRMATIONS)
    reserves.caught_up()
    back = reserves.reconcile()
    story.runs.append(back)
    approval = resume_through_approval(reserves)
    story.approval_id = approval.id
    story.check(
        "the treasury desk sends it back to a custody change address; an officer proposes "
        f"resuming minting and {TREASURER} approves",
        f"{back.status}: {_states(back)}; the approval {approval.status}, minting "
        + ("halted" if reserves.halted() else "on"),
        back.status == "ok"
        and not back.discrepancies
        and approval.status == "executed"
        and not reserves.halted(),
    )


def _no_router() -> NoReturn:
    raise InvalidOperationStateError("the demo's approvals resume minting only")


def resume_through_approval(reserves: Reserves) -> Approval:
    """``issuance.resume_minting``, proposed by the officer and approved by a second member of
    staff: the executor ``sluice issuance resume-minting`` and ``sluice serve`` run."""
    executors = {
        "issuance.resume_minting": issuance_executors(reserves.uow, _no_router)[
            "issuance.resume_minting"
        ]
    }
    now = reserves.exchange.clock()
    proposal = propose_operation(
        reserves.uow,
        operation="issuance.resume_minting",
        parameters={"reason": "reserves restored; reconciliation clean"},
        proposer=Principal(id=f"cli:{OFFICER}", role="system_admin"),
        at=now,
        required=2,
        executors=executors,
        reason="reserves restored; reconciliation clean",
    )
    voted = vote_on_approval(
        reserves.uow,
        proposal.id,
        principal=Principal(id=f"cli:{TREASURER}", role="system_admin"),
        decision="approve",
        at=now,
        executors=executors,
    )
    return voted


def liabilities(reserves: Reserves) -> dict[str, dict[str, int]]:
    """The customers' positive balances per instrument key, in units, from the journal."""
    found: dict[str, dict[str, int]] = {}
    with reserves.uow() as uow:
        balances = uow.books.balances()
    for account, balance in balances.items():
        if account.customer_id is not None and balance > 0:
            units = units_of(balance, decimals_for(account.instrument, reserves.istsi))
            found.setdefault(account.instrument.key(), {})[account.customer_id] = units
    return found


def proof_of_liabilities(reserves: Reserves, story: ReservesStory) -> None:
    """The snapshot, a customer's proof checked with the standalone verifier, a tampered copy."""
    owed = liabilities(reserves)
    take_snapshot(reserves.ctx, snapshot_id=SNAPSHOT_ID)
    story.roots = published_roots(reserves.uow, SNAPSHOT_ID)
    totals = {r["instrument"]: (int(r["total_units"]), r["leaf_count"]) for r in story.roots}
    expected = {key: (sum(c.values()), len(c)) for key, c in owed.items()}
    story.check(
        f"proof of liabilities: snapshot {SNAPSHOT_ID}, one Merkle-sum tree per instrument",
        "roots: "
        + ", ".join(
            f"{story.symbol(k)} {format_units(t, _decimals(reserves, k))} over {n} "
            + ("customer" if n == 1 else "customers")
            for k, (t, n) in sorted(totals.items())
        )
        + " = the customers' balances in the journal",
        all(totals.get(k) == v for k, v in expected.items()) and len(totals) == 3,
    )
    # Canton Coin, the largest tree, when Alice holds some (a demo run without its deposits:
    # iSTSi, which she always does).
    coin = reserves.exchange.world.coin.key()
    if ALICE.id not in owed.get(coin, {}):
        coin = reserves.istsi.key()
    story.proof = customer_proof(reserves.ctx, ALICE.id, coin, SNAPSHOT_ID)
    root = Root.from_json(next(r for r in story.roots if r["instrument"] == coin))
    proof = Proof.from_json(story.proof)
    verdict = verify_proof(proof, root)
    story.proof_ok = verdict.valid and proof.units == owed[coin][ALICE.id]
    forged = dict(story.proof) | {"units": str(proof.units + 1)}
    forged["balance"] = format_units(proof.units + 1, _decimals(reserves, coin))
    refused = verify_proof(Proof.from_json(forged), root)
    story.tampered_reason = refused.reason
    folder = reserves.exchange.world.data_dir / POR_DIR
    folder.mkdir(exist_ok=True)
    (folder / "alice-proof.json").write_text(json.dumps(story.proof, indent=2) + "\n")
    (folder / "roots.jsonl").write_text("".join(json.dumps(r) + "\n" for r in story.roots))
    story.check(
        f"{ALICE.name}'s inclusion proof for {story.symbol(coin)} ({len(proof.siblings)} "
        "siblings), checked against the published root only",
        f"{'valid' if verdict.valid else verdict.reason}: {proof.balance} {story.symbol(coin)}; "
        "a copy claiming "
        f"one unit more is refused — {refused.reason}",
        story.proof_ok and not refused.valid,
    )


def _decimals(reserves: Reserves, key: str) -> int:
    return ISTSI_DECIMALS if key == reserves.istsi.key() else TOKEN_DECIMALS


def reserves_document(reserves: Reserves, story: ReservesStory) -> None:
    with reserves.uow() as uow:
        snapshot = uow.reserves.snapshot(SNAPSHOT_ID)
    document = snapshot.reserves if snapshot is not None else None
    assert document is not None, "the snapshot was stored without its reserves document"
    result = verify_reserves(
        document,
        descriptor=reserves.custody.wallet.descriptor,
        node=reserves.custody.node,
        roots=[Root.from_json(r) for r in story.roots],
    )
    story.document = result
    covered = [c for c in result.coverage if c.get("reserves_cover_liabilities") is True]
    bitcoin_part = dict(document.get("bitcoin") or {})
    story.check(
        "the signed reserves document: custody's addresses and balances at a block, the "
        "treasury's holdings at a ledger offset",
        f"{'valid' if result.valid else '; '.join(result.reasons)}: signed by "
        f"{result.signatures_valid} custody keys ({result.threshold} needed), block "
        f"{bitcoin_part.get('height')}, "
        f"{sats_text(int(bitcoin_part.get('total_sats') or 0))} in custody, rechecked on the "
        "node; reserves cover what is owed (customers and other obligations) for "
        f"{len(covered)} of {len(result.coverage)} instruments",
        result.valid
        and result.threshold is not None
        and result.signatures_valid >= result.threshold
        and result.node is not None
        and not result.node.differences
        and len(covered) == len(result.coverage) == 3,
    )


def run(exchange: Exchange, status: Status) -> ReservesStory:
    world = exchange.world
    with (
        status("reserves: readings, reconciliation, a shortfall, a proof of reserves…"),
        bitcoin.custody_log(world.data_dir / bitcoin.LOG_FILE),
    ):
        reserves = Reserves(exchange)
        story = ReservesStory(
            {world.coin.key(): "CC", world.usdx.key(): "USDX", reserves.istsi.key(): "iSTSi"}
        )
        readings(reserves, story)
        clean = clean_run(reserves, story)
        discrepancy(reserves, story, clean)
        proof_of_liabilities(reserves, story)
        reserves_document(reserves, story)
    return story


# --- the report ----------------------------------------------------------------------------------


def _read_at(reading: ReserveReading, side: str) -> str:
    point = reading.read_at.get(side)
    if point is None:
        return "?"
    if point.source == "chain":
        return f"block {point.height} {str(point.block_hash)[:12]}…"
    if point.source == "ledger":
        return f"ledger offset {point.offset}"
    return "our records"


def show_readings(console: Console, story: ReservesStory, sections: Sections) -> None:
    table = Table(
        title=f"{sections.next()}. Reserves: what is owed against what backs it",
        title_justify="left",
    )
    for column in ("instrument", "owed", "read at", "reserves", "read at", "ratio"):
        table.add_column(column, justify="right" if column in ("owed", "reserves") else "left")
    for reading in story.readings:
        decimals = ISTSI_DECIMALS if reading.kind == "istsi" else TOKEN_DECIMALS
        table.add_row(
            story.symbol(reading.instrument),
            format_units(reading.supply_units, decimals),
            _read_at(reading, "supply"),
            format_units(reading.reserves_units, decimals),
            _read_at(reading, "reserves"),
            percent(reading.ratio_bps),
        )
    table.caption = (
        "tokens: Σ customers + suspense + holds + in flight + fees against the treasury's "
        "holdings, at ingestion's offset; iSTSi: supply against confirmed custody outputs less "
        "pending outflows, at the watcher's block"
    )
    console.print()
    console.print(table)


def show_runs(console: Console, story: ReservesStory, sections: Sections) -> None:
    table = Table(title=f"{sections.next()}. Reconciliation runs", title_justify="left")
    for column in ("run", "ledger", "custody", "supply", "worst", "actions"):
        table.add_column(column)
    for label, run in zip(("clean", "Bitcoin moved out", "Bitcoin back"), story.runs, strict=False):
        sources = _sources(run)
        table.add_row(
            label,
            *(str(sources.get(s, {}).get("state", "?")) for s in ("ledger", "custody", "supply")),
            run.worst or "none",
            ", ".join(a for a in run.actions if not a.startswith("alert:")) or "none",
        )
    console.print()
    console.print(table)


def show_roots(console: Console, story: ReservesStory, sections: Sections) -> None:
    table = Table(
        title=f"{sections.next()}. Proof of liabilities: published roots of {SNAPSHOT_ID}",
        title_justify="left",
    )
    for column in ("instrument", "customers", "total", "depth", "root hash"):
        table.add_column(column, justify="right" if column in ("customers", "total") else "left")
    for root in story.roots:
        table.add_row(
            story.symbol(root["instrument"]),
            str(root["leaf_count"]),
            root["total"],
            str(root["depth"]),
            f"{root['root_hash'][:16]}…",
        )
    table.caption = (
        f"check a proof with nothing else: sluice por verify {POR_DIR}/alice-proof.json "
        f"--root {POR_DIR}/roots.jsonl (in the data folder)"
    )
    console.print()
    console.print(table)


def show(console: Console, story: ReservesStory, sections: Sections) -> bool:
    show_readings(console, story, sections)
    steps = Table(
        title=f"{sections.next()}. Reconciliation and proof of reserves", title_justify="left"
    )
    for column in ("step", "result", ""):
        steps.add_column(column)
    for step in story.steps:
        steps.add_row(step.what, step.result, mark(step.ok))
    console.print()
    console.print(steps)
    show_runs(console, story, sections)
    show_roots(console, story, sections)
    return bool(story.steps) and all(step.ok for step in story.steps)


CHAPTER: Chapter[ReservesStory] = Chapter("reserves and proof of reserves", run, show)
