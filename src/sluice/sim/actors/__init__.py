"""The actors of the simulation: who acts on the ledger and the exchange, one module each.

Each step draws one action, by weight, from the actions of all :data:`ACTORS` in their order:

* :mod:`~sluice.sim.actors.customers` deposit (1-step and offers), withdraw their offers, request
  withdrawals and answer the exchange's offers;
* :mod:`~sluice.sim.actors.ledger_admin`: the clock advances (usually with a checkpoint); the
  admin expires due instructions;
* :mod:`~sluice.sim.actors.ingestion` runs (sometimes only for a few transactions, always in small
  batches);
* :mod:`~sluice.sim.actors.workers`: the withdrawal worker runs (reserve, submit, settle, retry,
  refund, withdraw stale offers, merge and split the pool), the deposit worker runs;
* :mod:`~sluice.sim.actors.bitcoin`: custody on the in-memory chain — customers deposit (some
  dust), blocks are mined, the chain reorganises, the node evicts, the deposit watcher runs,
  payouts are requested and the payouts worker runs (crashing after recording, after sending).

A new actor is one module defining its ``ACTOR`` (an :class:`Actor`: its :class:`Action`\\ s, each
a name, a weight and a function of the :class:`~sluice.sim.state.SimulationState`) and one line
below. The order is the draw's: a new actor goes at the end (every seed then draws differently,
as with any new action).
"""

from sluice.sim.actors import (
    bitcoin,
    customers,
    events,
    exchange,
    ingestion,
    issuance,
    ledger_admin,
    reserves,
    workers,
)
from sluice.sim.actors.actor import Action, Actor

ACTORS: tuple[Actor, ...] = (
    customers.ACTOR,
    ledger_admin.ACTOR,
    ingestion.ACTOR,
    workers.ACTOR,
    bitcoin.ACTOR,
    issuance.ACTOR,
    reserves.ACTOR,
    events.ACTOR,
    exchange.ACTOR,
)

ACTIONS: tuple[Action, ...] = tuple(action for actor in ACTORS for action in actor.actions)

__all__ = ["ACTIONS", "ACTORS", "Action", "Actor"]
