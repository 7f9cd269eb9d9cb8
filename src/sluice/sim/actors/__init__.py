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
  payouts are requested and the payouts worker runs (crashing after recording, after sending);
* :mod:`~sluice.sim.actors.issuance`: iSTSi — Bitcoin deposits minted by the issuance router
  (dying mid-step), redemptions, the compliance officer's freezes, lists and releases, transfers
  between customers' parties and the KYC hold worker;
* :mod:`~sluice.sim.actors.reserves`: reserve readings, reconciliation runs over every source and
  proof-of-liabilities snapshots;
* :mod:`~sluice.sim.actors.events`: the outbox relay, through a bus that refuses or loses acks
  and relays crashing between publish and mark;
* :mod:`~sluice.sim.actors.exchange`: the price oracle's feeds move (now and then a bad reading of
  every kind, a divergent secondary and a fallback, an outage); customers quote and swap (at
  once, later, twice, beyond their balance, their KYC exchange limits, the inventory or a tight
  minimum received); the house's deposits in suspense fund the exchange's inventory.

Each actor with checks of its own keeps its part of the run's state in ``sim/<part>_state.py``
and its checks in ``sim/<part>_invariants.py``, registered in
:data:`~sluice.sim.invariants.INVARIANTS`.

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
