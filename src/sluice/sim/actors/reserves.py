"""The reserves side, as ``sluice serve``'s reserves loop and an operator run it: reserve
readings are recorded, reconciliation runs over every independent source (the treasury's node's
active contracts, the custody's ``scantxoutset`` on the in-memory chain — through the connection
that drops now and then — and the issuer's iSTSi supply), and proof-of-liabilities snapshots are
taken, with their signed reserves documents.

The context (:func:`world`) is made the first time one of these actions is drawn, over the run's
own sources: the sandbox's Integration DB, clock and treasury reader, the Bitcoin custody's node
link and wallet, and the issuance actor's issuer ledger (made before the first step). The checks
(:mod:`sluice.sim.reserves_invariants`) look at what each action did in its step: every reading
against the journal, every run's comparisons, every snapshot's roots and each customer's
inclusion proof.
"""

from __future__ import annotations

from typing import cast

from sluice.domain.errors import SluiceError
from sluice.ports import ActiveContractsReader
from sluice.services.por_snapshots import take_snapshot
from sluice.services.reconciliation import reconcile
from sluice.services.reserves import record_readings
from sluice.services.reserves_settings import ReservesContext
from sluice.sim.actors.actor import Action, Actor
from sluice.sim.actors.bitcoin import custody, drop_link_now_and_then, quietly, watch
from sluice.sim.actors.ingestion import ingest_everything
from sluice.sim.actors.issuance import world as issuance_world
from sluice.sim.reserves_state import (
    SECRET_FILE,
    SETTINGS,
    ReservesWorld,
    keep,
    secret_folder,
    world_of,
)
from sluice.sim.state import SimulationState

CAUGHT_UP_SHARE = 0.5  # of runs and snapshots, those taken right after ingestion caught up


def world(sim: SimulationState) -> ReservesWorld:
    """The run's reserves side, made on first use."""
    found = world_of(sim)
    if found is not None:
        return found
    sandbox = sim.sandbox
    bitcoin = custody(sim)
    issuance = issuance_world(sim)
    folder = secret_folder(sim.result.seed)
    ctx = ReservesContext(
        uow=sandbox.database.uow,
        clock=sandbox.clock,
        treasury=sandbox.treasury,
        secret_path=folder / SECRET_FILE,
        settings=SETTINGS,
        ledger=cast("ActiveContractsReader", sandbox.ledger_client()),
        node=bitcoin.link,
        wallet=bitcoin.wallet,
        issuer=issuance.issuer,
        istsi=issuance.issuer.instrument,
        connection=sandbox.connection,
        confirmations_min=bitcoin.settings.confirmations_min,
    )
    return keep(sim, ReservesWorld(ctx, folder))


def record(sim: SimulationState) -> None:
    """One reading per instrument, as the serve loop records them every reading interval."""
    reserves = world(sim)
    reserves.readings += record_readings(reserves.ctx, connection=sim.sandbox.connection)
    sim.result.outcomes["reserves_recorded"] += 1


def reconcile_now(sim: SimulationState) -> None:
    """A scheduled reconciliation run; now and then the node's connection drops during it (its
    custody and supply sources are then failed, never compared). Half the time ingestion and
    the deposit watcher have just caught up (a quiet moment), so the journal and the ledger are
    at one offset and the watcher at the node's tip, and every source is compared; otherwise
    the run meets them wherever the other actors left them."""
    reserves = world(sim)
    if sim.rng.random() < CAUGHT_UP_SHARE:
        ingest_everything(sim)
        watch(sim)
    link = drop_link_now_and_then(sim)
    try:
        run = quietly(lambda: reconcile(reserves.ctx, trigger="schedule"))
    finally:
        link.disarm()
    reserves.runs.append(run)
    outcomes = sim.result.outcomes
    outcomes["reserves_reconciled"] += 1
    for source, report in sorted(dict(run.report.get("sources", {})).items()):
        outcomes[f"reconcile_{source}_{report.get('state')}"] += 1
    if link.dropped:
        outcomes[f"btc_link_dropped_at_{link.dropped}"] += 1


def snapshot(sim: SimulationState) -> None:
    """A proof-of-liabilities snapshot of every instrument, with its reserves document. A refused
    snapshot is a violation (``reserves_snapshot``): the books never hold a negative customer
    balance, and the run's secret is its own. Half the time ingestion has just caught up (a
    quiet moment): the document's Canton holdings, read at the ledger's end, are then at the
    journal's offset and its cover is determined for every token."""
    reserves = world(sim)
    if sim.rng.random() < CAUGHT_UP_SHARE:
        ingest_everything(sim)
    snapshot_id = f"sim-{len(reserves.snapshots_taken) + 1}"
    try:
        quietly(lambda: take_snapshot(reserves.ctx, snapshot_id=snapshot_id))
    except SluiceError as exc:
        sim.violation("reserves_snapshot", f"snapshot {snapshot_id} refused: {exc}")
        return
    reserves.snapshots.append(snapshot_id)
    reserves.snapshots_taken.append(snapshot_id)
    sim.result.outcomes["reserves_snapshots"] += 1


ACTOR = Actor(
    "reserves",
    (
        Action("reserves_record", 2, record),
        Action("reserves_reconcile", 4, reconcile_now),
        Action("reserves_snapshot", 2, snapshot),
    ),
)
