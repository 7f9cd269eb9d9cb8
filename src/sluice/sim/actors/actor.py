"""What an actor of the simulation is: a name and the actions it can take, each drawn with a
weight and performed on the :class:`~sluice.sim.state.SimulationState`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sluice.sim.state import SimulationState


@dataclass(frozen=True, slots=True)
class Action:
    """One thing an actor does in a step. ``ledger_only``: it touches only the ledger, never the
    Integration DB (so the checks can reuse their last reading of it)."""

    name: str
    weight: int
    perform: Callable[[SimulationState], None]
    ledger_only: bool = False


@dataclass(frozen=True, slots=True)
class Actor:
    name: str
    actions: tuple[Action, ...]
