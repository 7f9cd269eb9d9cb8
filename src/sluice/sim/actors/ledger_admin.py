"""The ledger's clock and its admin: time moves on (usually with a checkpoint), and the admin
expires the instructions that are due."""

from __future__ import annotations

from sluice.ledger.local import CommandRejectedError, ResponseLostError
from sluice.sim.actors.actor import Action, Actor
from sluice.sim.state import SimulationState

CLOCK_MOVES_S = (1, 5, 15, 30, 60, 90, 180)


def advance_clock(sim: SimulationState) -> None:
    sim.ledger.advance(sim.rng.choice(CLOCK_MOVES_S))
    if sim.rng.random() < 0.7:
        sim.ledger.checkpoint()


def expire_instructions(sim: SimulationState) -> None:
    try:
        expired = sim.ledger.expire_instructions()
    except ResponseLostError:
        expired = []
    except CommandRejectedError:
        sim.result.outcomes["admin_command_rejected"] += 1
        return
    sim.result.outcomes["instructions_expired"] += len(expired)


ACTOR = Actor(
    "ledger_admin",
    (
        Action("advance_clock", 10, advance_clock, ledger_only=True),
        Action("expire_instructions", 3, expire_instructions, ledger_only=True),
    ),
)
