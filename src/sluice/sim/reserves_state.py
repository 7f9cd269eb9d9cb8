"""The part of a simulation run's state that the reserves side adds: the reserves context over
the run's own sources (its Integration DB, the treasury's node reader, the Bitcoin custody's node
and wallet, the issuer's ledger) and what the reserves actor did that its checks then look at —
the readings recorded, the reconciliation runs and the proof-of-liabilities snapshots taken in
the current step.

It is kept beside the run's :class:`~sluice.sim.state.SimulationState` (by identity, for as long
as that state lives) rather than in it, so that the reserves side is one actor module, one state
module and one invariants module. The operator's proof-of-liabilities secret is fixed by the
seed (the trees, and so a run, are the same every time) and lives in a folder of its own that
goes with the run.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sluice.domain.reserves import Tolerances
from sluice.ports.reserves import ReconciliationRun, ReserveReading
from sluice.services.reserves_settings import ReservesContext, ReservesSettings
from sluice.sim.state import SimulationState

# The books hold 100 % of every token by construction, and the mint guard keeps iSTSi's backing
# at or above its supply: any ratio below 100 % is critical, and nothing above it is a warning
# (a thin iSTSi buffer is normal in a run, not something the checks should be told about).
SETTINGS = ReservesSettings(
    reconcile_interval_s=0.0,
    tolerances=Tolerances(),
    ratio_warning_bps=10_000,
    ratio_critical_bps=10_000,
)
SECRET_FILE = "por-secret"


@dataclass(slots=True)
class ReservesWorld:
    """The run's reserves side: the context every action uses, and what the current step did
    (the checks take these and clear them)."""

    ctx: ReservesContext
    folder: Path
    readings: list[ReserveReading] = field(default_factory=list)
    runs: list[ReconciliationRun] = field(default_factory=list)
    snapshots: list[str] = field(default_factory=list)  # snapshot ids
    snapshots_taken: list[str] = field(default_factory=list)  # every one of the run, in order
    # The roots each snapshot published when it was first checked: snapshot id → instrument key
    # → root JSON (they must never change).
    published: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)


_worlds: weakref.WeakKeyDictionary[SimulationState, ReservesWorld] = weakref.WeakKeyDictionary()


def world_of(sim: SimulationState) -> ReservesWorld | None:
    """The run's reserves side, if its actor has acted."""
    return _worlds.get(sim)


def keep(sim: SimulationState, world: ReservesWorld) -> ReservesWorld:
    """Keep ``world`` with ``sim``; its folder is removed when the run's state goes."""
    _worlds[sim] = world
    weakref.finalize(sim, shutil.rmtree, world.folder, ignore_errors=True)
    return world


def secret_folder(seed: int) -> Path:
    """A new folder holding the run's proof-of-liabilities secret (32 bytes from the seed, mode
    0600, as ``sluice por`` would have made it at random)."""
    folder = Path(tempfile.mkdtemp(prefix="sluice-sim-por-"))
    secret = hashlib.sha256(f"sluice simulation por secret {seed}".encode()).digest()
    descriptor = os.open(folder / SECRET_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, secret)
    finally:
        os.close(descriptor)
    return folder
