"""The guarantees of the reserves side, checked after every step in which the reserves actor
acted (registered in :data:`sluice.sim.invariants.INVARIANTS`), against the Integration DB as the
checks read it — nothing else runs between the action and the checks, so the journal they read
is the one the action read:

* ``reserves_readings``: every reading recorded has the journal's figures — a token's owed
  (Σ of its liability accounts) and held (the treasury's asset account) in units of 10⁻¹⁰, iSTSi's
  supply and backing (confirmed reserves less pending redemptions and payouts) from the mint
  guard's figures — and no ratio below 100 %;
* ``reserves_reconcile``: a source a reconciliation run compared (the journal and the ledger's
  active contracts at one offset, custody outputs and the node's scan at one block, the issuer's
  supply and the scan at the watcher's block) never differs by more than a minor discrepancy,
  and no run halts minting or pauses the system. The books invariant and the mint guard hold in
  the simulation, so such a finding is a bug in reconciliation or in the books — never a quiet
  pause. Discrepancies of sources not compared (ingestion's lag) and minor ones are counted in
  the outcomes. At the end, one more run over the settled system must find nothing worse;
* ``reserves_proofs``: a snapshot's root for each instrument has the total and the leaf count
  of the customers' positive balances in the journal, every instrument a customer holds has a
  root, each of those customers' inclusion proofs verifies with the standalone verifier against
  the published root and carries their balance, and the signed reserves document stored with
  the snapshot verifies (its descriptor, signatures, sums and the roots' liabilities) and shows
  reserves covering what is owed wherever the cover is determined (a token's holdings read at
  the ledger's end while ingestion trails it leave it undetermined: counted in the outcomes).
  At the end every snapshot of the run still has the roots first published, and its proofs
  still verify.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import structlog

from sluice.domain.amounts import ZERO
from sluice.domain.errors import SluiceError
from sluice.domain.journal import AccountRef
from sluice.domain.reserves import FULL_BPS, decimals_for, units_of
from sluice.por import Proof, Root, verify_proof
from sluice.ports.reserves import ReconciliationRun, ReserveReading, severity_rank
from sluice.services.por_reserves_verify import verify_reserves
from sluice.services.por_snapshots import customer_proof, published_roots
from sluice.services.reconciliation import reconcile
from sluice.sim.reserves_state import ReservesWorld, world_of
from sluice.sim.state import DatabaseState, SimulationState

MINOR = severity_rank("minor")
HALTS = ("minting_halted", "minting_still_halted", "system_paused", "system_already_paused")

# Customers' balances per instrument key, in units: {key: {customer id: units}}.
Liabilities = dict[str, dict[str, int]]


# --- readings ------------------------------------------------------------------------------------


def check_readings(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    reserves = world_of(sim)
    if reserves is None or not reserves.readings:
        return
    readings, reserves.readings = reserves.readings, []
    istsi = reserves.ctx.istsi
    books = _books(state.balances, reserves)
    with reserves.ctx.uow() as uow:
        guard = uow.issuance.guard_figures()
    for reading in readings:
        if istsi is not None and reading.instrument == istsi.key():
            expected = (
                guard.supply,
                guard.reserves - guard.pending_redemptions - guard.pending_payouts,
            )
        else:
            owed, held = books.get(reading.instrument, (0, 0))
            expected = (owed, held)
        found = (reading.supply_units, reading.reserves_units)
        if found != expected:
            sim.violation(
                "reserves_readings",
                f"{reading.instrument}: the reading says owed {found[0]}, reserves {found[1]} "
                f"units; the journal and the guard's figures {expected[0]}, {expected[1]}",
            )
        _check_ratio(sim, reading)
    for key in sorted(set(books) - {r.instrument for r in readings}):
        if books[key] != (0, 0):
            sim.violation("reserves_readings", f"no reading of {key}, which the books hold")


def _books(
    balances: Mapping[AccountRef, Decimal], reserves: ReservesWorld
) -> dict[str, tuple[int, int]]:
    """Per token instrument key: (owed, held) in units, straight from the journal's balances."""
    istsi = reserves.ctx.istsi
    owed: dict[str, Decimal] = {}
    held: dict[str, Decimal] = {}
    decimals: dict[str, int] = {}
    for account, balance in balances.items():
        if istsi is not None and account.instrument == istsi:
            continue
        key = account.instrument.key()
        decimals[key] = decimals_for(account.instrument, istsi)
        side = held if account.side == "asset" else owed
        side[key] = side.get(key, ZERO) + balance
    return {
        key: (
            units_of(owed.get(key, ZERO), decimals[key]),
            units_of(held.get(key, ZERO), decimals[key]),
        )
        for key in decimals
    }


def _check_ratio(sim: SimulationState, reading: ReserveReading) -> None:
    if reading.ratio_bps is not None and reading.ratio_bps < FULL_BPS:
        sim.violation(
            "reserves_readings",
            f"{reading.instrument}: reserve ratio {reading.ratio_bps} bps (reserves "
            f"{reading.reserves_units}, owed {reading.supply_units} units)",
        )


# --- reconciliation ------------------------------------------------------------------------------


def check_reconciliation(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    reserves = world_of(sim)
    if reserves is None:
        return
    runs, reserves.runs = reserves.runs, []
    if final:
        with structlog.testing.capture_logs():  # the run's outcomes say what it found
            runs.append(reconcile(reserves.ctx, trigger="manual"))
    for run in runs:
        _check_run(sim, reserves, run, final)


def _check_run(
    sim: SimulationState, reserves: ReservesWorld, run: ReconciliationRun, final: bool
) -> None:
    name = "reserves_reconcile"
    outcomes = sim.result.outcomes
    sources: Mapping[str, Any] = dict(run.report.get("sources", {}))
    with reserves.ctx.uow() as uow:
        stored = uow.reserves.run(run.id)
    if stored is None or stored.discrepancies != run.discrepancies:
        sim.violation(name, f"a run with {len(run.discrepancies)} discrepancies is not as stored")
    for found in run.discrepancies:
        compared = (sources.get(found.source) or {}).get("state") == "compared"
        if not compared:
            outcomes[f"reconcile_{found.source}_{found.severity}_not_compared"] += 1
        elif severity_rank(found.severity) <= MINOR:
            outcomes[f"reconcile_{found.source}_minor"] += 1
        else:
            sim.violation(
                name,
                f"{found.source} compared and found {found.severity}: {found.message} "
                f"(expected {found.expected_units}, actual {found.actual_units})",
            )
    for action in run.actions:
        if action in HALTS:
            sim.violation(name, f"the run's reaction: {action} (worst {run.worst})")
    if final:
        for source in sorted(sources):
            outcomes[f"reconcile_final_{source}_{sources[source].get('state')}"] += 1


# --- proof of liabilities ------------------------------------------------------------------------


def check_snapshots(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    reserves = world_of(sim)
    if reserves is None:
        return
    taken, reserves.snapshots = reserves.snapshots, []
    if taken:
        liabilities = _liabilities(state.balances, reserves)
        for snapshot_id in taken:
            roots = _published(sim, reserves, snapshot_id)
            if roots is None:
                continue
            reserves.published[snapshot_id] = roots
            _check_roots(sim, snapshot_id, roots, liabilities)
            _check_proofs(sim, reserves, snapshot_id, roots)
            _check_document(sim, reserves, snapshot_id, roots)
    if final:
        for snapshot_id, first in sorted(reserves.published.items()):
            roots = _published(sim, reserves, snapshot_id)
            if roots is not None and roots != first:
                sim.violation("reserves_proofs", f"{snapshot_id}: the published roots changed")
            elif roots is not None:
                _check_proofs(sim, reserves, snapshot_id, roots)


def _liabilities(balances: Mapping[AccountRef, Decimal], reserves: ReservesWorld) -> Liabilities:
    istsi = reserves.ctx.istsi
    found: Liabilities = {}
    for account, balance in balances.items():
        customer = account.customer_id
        if customer is None or balance <= 0:
            continue
        units = units_of(balance, decimals_for(account.instrument, istsi))
        found.setdefault(account.instrument.key(), {})[customer] = units
    return found


def _published(
    sim: SimulationState, reserves: ReservesWorld, snapshot_id: str
) -> dict[str, dict[str, Any]] | None:
    try:
        roots = published_roots(reserves.ctx.uow, snapshot_id)
    except SluiceError as exc:
        sim.violation("reserves_proofs", f"{snapshot_id}: no published roots: {exc}")
        return None
    return {str(root["instrument"]): root for root in roots}


def _check_roots(
    sim: SimulationState,
    snapshot_id: str,
    roots: Mapping[str, Mapping[str, Any]],
    liabilities: Liabilities,
) -> None:
    for key in sorted(set(liabilities) - set(roots)):
        sim.violation("reserves_proofs", f"{snapshot_id}: customers hold {key}, it has no root")
    for key, root in sorted(roots.items()):
        balances = liabilities.get(key, {})
        expected = (str(sum(balances.values())), len(balances))
        found = (root["total_units"], root["leaf_count"])
        if found != expected:  # an instrument nobody holds: an empty tree, 0 over 0 leaves
            sim.violation(
                "reserves_proofs",
                f"{snapshot_id} {key}: the root's total {found[0]} units over {found[1]} leaves; "
                f"the journal's customers {expected[0]} units, {expected[1]} customers",
            )


def _check_proofs(
    sim: SimulationState,
    reserves: ReservesWorld,
    snapshot_id: str,
    roots: Mapping[str, Mapping[str, Any]],
) -> None:
    """Every leaf's proof, from the stored balances the snapshot was built from."""
    with reserves.ctx.uow() as uow:
        leaves = {key: uow.reserves.leaves(snapshot_id, key) for key in roots}
    for key, root_json in sorted(roots.items()):
        root = Root.from_json(root_json)
        for customer, units in leaves[key]:
            try:
                proof = Proof.from_json(customer_proof(reserves.ctx, customer, key, snapshot_id))
            except SluiceError as exc:
                sim.violation("reserves_proofs", f"{snapshot_id} {key} {customer}: {exc}")
                continue
            verdict = verify_proof(proof, root)
            if not verdict.valid or proof.units != units or proof.customer_id != customer:
                sim.violation(
                    "reserves_proofs",
                    f"{snapshot_id} {key} {customer}: the proof of {proof.units} units (stored "
                    f"{units}) does not verify: {verdict.reason}",
                )
            else:
                sim.result.outcomes["reserves_proofs_verified"] += 1


def _check_document(
    sim: SimulationState,
    reserves: ReservesWorld,
    snapshot_id: str,
    roots: Mapping[str, Mapping[str, Any]],
) -> None:
    name = "reserves_proofs"
    with reserves.ctx.uow() as uow:
        snapshot = uow.reserves.snapshot(snapshot_id)
    document = snapshot.reserves if snapshot is not None else None
    if document is None:
        sim.violation(name, f"{snapshot_id}: no reserves document was stored")
        return
    wallet = reserves.ctx.wallet
    verdict = verify_reserves(
        document,
        descriptor=wallet.descriptor if wallet is not None else None,
        roots=[Root.from_json(root) for root in roots.values()],
    )
    if not verdict.valid:
        sim.violation(name, f"{snapshot_id}: the reserves document: {'; '.join(verdict.reasons)}")
        return
    for report in document.get("reports", ()):
        if report.get("reserves_cover_liabilities") is False:
            sim.violation(
                name,
                f"{snapshot_id} {report.get('instrument')}: the document says reserves "
                f"{report.get('reserves_units')} units do not cover what is owed "
                f"{report.get('owed_units')} (liabilities {report.get('liabilities_units')}, "
                f"other obligations {json.dumps(report.get('other_obligations'))})",
            )
        elif report.get("reserves_read") is not True:
            sim.result.outcomes["reserves_document_not_read"] += 1
        elif report.get("reserves_cover_liabilities") is None:
            # Holdings read at the ledger's end, the journal at ingestion's offset behind it.
            sim.result.outcomes["reserves_document_undetermined"] += 1
        else:
            sim.result.outcomes[f"reserves_document_covered_{report.get('reserves_source')}"] += 1
    sim.result.outcomes["reserves_documents_verified"] += 1
