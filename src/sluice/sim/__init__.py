"""The deterministic simulation: customers, the exchange's workers and ingestion, ledger faults and
crashes, driven by one seed, with the exchange's guarantees checked after every step.

``sluice sim --seed S --steps N`` (and :func:`run_simulation`) builds a sandbox — an embedded
ledger whose seed is ``S``, an Integration DB, customers ``cust-N`` — and takes ``N`` steps. Each
step draws, from ``random.Random(S)`` only, perhaps a ledger fault and a crash, then one action of
one actor; after every step, every invariant is checked. At the end, faults stop and everything
runs until nothing is left to do; then the final checks run.

The parts, one concern each:

* :mod:`~sluice.sim.scenario`: the driver — the sandbox, the steps, the action draw, the drain at
  the end, the result;
* :mod:`~sluice.sim.actors`: who acts — the customers, the ledger's clock and admin, ingestion,
  the exchange's workers, Bitcoin custody, iSTSi issuance, reserves, the events relay, the price
  oracle and the cross-token exchange — one module each, registered in one list;
* :mod:`~sluice.sim.faults`: what goes wrong — the ledger's faults (with the runbook after a node
  restore) and the crash points inside the exchange's processes;
* :mod:`~sluice.sim.invariants`: the checks, one function each, registered in one list (a part
  with checks of its own keeps them, and its share of the run's state, in modules of its own:
  ``issuance_*``, ``reserves_*``, ``events_invariants``, ``exchange_*``);
* :mod:`~sluice.sim.state`: the state of a run they all share (the random source, the model of
  what the ledger committed, the Integration DB as the checks read it, the result);
* :mod:`~sluice.sim.database`: the run's Integration DB; :mod:`~sluice.sim.command`: the entry
  points.

The result is one JSON line ``{"seed", "steps", "deposits", "withdrawals", "crashes", "faults",
"violations"}`` (each violation names the step and the check; a check is reported at the first
step it fails). The same seed gives the same line — on SQLite and PostgreSQL alike: nothing
depends on wall-clock time or hash order. ``python -m sluice.sim --seeds 1-500`` runs many seeds
(``make soak``).
"""

from sluice.sim.command import main, simulate_command
from sluice.sim.database import empty_database
from sluice.sim.scenario import run_simulation
from sluice.sim.state import SimulationResult, Tamper

__all__ = [
    "SimulationResult",
    "Tamper",
    "empty_database",
    "main",
    "run_simulation",
    "simulate_command",
]
