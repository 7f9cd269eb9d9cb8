"""The scenario driver: one seed, ``N`` steps, then the drain.

:func:`run_simulation` builds a :class:`~sluice.sandbox.Sandbox` — an embedded ledger whose seed is
the run's, an Integration DB, customers ``cust-N`` — and takes the steps. Each step, drawing from
the seed's random source only: with probability ``fault_rate`` the ledger is given a fault, with
probability ``crash_rate`` the exchange's processes crash (:mod:`sluice.sim.faults`); a command
the node accepted late may commit now (only while one waits); then one
action is drawn by weight from the actions of the actors (:mod:`sluice.sim.actors`) and performed,
the model learns from the treasury's completions, and every invariant is checked
(:mod:`sluice.sim.invariants`).

At the end, faults stop, the clock moves past every deadline and the workers and ingestion run
until nothing is left to do (a bounded number of rounds); commands still waiting to commit late
are delivered in one of the first rounds, after the workers have settled what they could. Then
every check runs once more, with its final conditions (``settled``, ``wallets``).
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import event, func, select

from sluice.domain.withdrawals import LIVE_STATUSES
from sluice.ports import LedgerReadError
from sluice.sandbox import Sandbox
from sluice.services.ingestion import IngestionSettings, IngestionStoppedError
from sluice.sim.actors import (
    ACTIONS,
    Action,
    events,
    ingestion,
    issuance,
    ledger_admin,
    workers,
)
from sluice.sim.actors import (
    exchange as exchange_actor,
)
from sluice.sim.actors.customers import DEPOSIT_OFFER_SPANS_S
from sluice.sim.database import database_url, fast_sqlite
from sluice.sim.faults import Crash, deliver_late_commits, inject_fault
from sluice.sim.invariants import check_invariants
from sluice.sim.state import (
    CUSTOMERS,
    SETTINGS,
    TAP,
    SimulationResult,
    SimulationState,
    Tamper,
)
from sluice.store import tables

DRAIN_ROUNDS_MAX = 20
WITHOUT_EXCHANGE = tuple(a for a in ACTIONS if a not in exchange_actor.ACTOR.actions)
# Past every deadline at once: attempts, stale offers, offer expiries, customers' offers.
DRAIN_CLOCK_MOVE_S = (
    max(
        SETTINGS.trec_span_s,
        SETTINGS.offer_timeout_s,
        SETTINGS.offer_expiry_s,
        *DEPOSIT_OFFER_SPANS_S,
    )
    + 1.0
)
# One round of the drain, in order. The withdrawal worker twice: what one run reserves or plans,
# the next submits (before the clock moves past its trec_tgt).
DRAIN_ROUND: tuple[Callable[[SimulationState], None], ...] = (
    ingestion.ingest_everything,
    workers.run_deposit_worker,
    workers.run_withdrawal_worker,
    workers.run_withdrawal_worker,
    ingestion.ingest_everything,
    issuance.settle,  # iSTSi: router, hold worker, payouts, blocks, watcher (when the run has it)
    ingestion.ingest_everything,
    events.drain,  # the relay publishes what the round committed, with no faults
)


def run_simulation(
    seed: int,
    steps: int,
    *,
    crash_rate: float = 0.05,
    fault_rate: float = 0.05,
    db_url: str | None = None,
    tamper: Tamper | None = None,
    via_http: bool = False,
    late_commit_rate: float = 0.0,
    exchange: bool = True,
) -> SimulationResult:
    """Run ``steps`` steps of the simulation for ``seed`` and return what happened.

    ``db_url`` None: a fresh SQLite file in a temporary directory (deleted afterwards); otherwise
    that database is emptied first. ``tamper`` (for tests of the checks themselves) is called
    after each step's action, before the checks, with the step number and the sandbox.
    ``via_http``: the exchange side talks to the ledger through the Canton client over a local
    HTTP/WebSocket server (the ledger's faults then reach it as a node's errors would).
    ``late_commit_rate``: the share of injected faults that are a late commit of the treasury's
    next command (0, the default: none, and the other faults are drawn exactly as without it).
    ``exchange`` False: the oracle and exchange actor's actions are left out of the draw, so a
    seed runs as it did before that actor was added (tests whose seeds were chosen then).
    """
    if steps < 0:
        raise ValueError("steps must not be negative")
    rates = (("crash_rate", crash_rate), ("fault_rate", fault_rate))
    for name, rate in (*rates, ("late_commit_rate", late_commit_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    with database_url(db_url) as url:
        sandbox = Sandbox.create(
            url,
            customers=CUSTOMERS,
            seed=seed,
            tap=TAP,
            withdrawal_settings=SETTINGS,
            ingestion_settings=IngestionSettings(retry_delay_s=0.0, retry_delay_max_s=0.0),
            via_http=via_http,
        )
        try:
            if db_url is None:
                event.listen(sandbox.database.engine, "connect", fast_sqlite)
                sandbox.database.engine.dispose()
            actions = ACTIONS if exchange else WITHOUT_EXCHANGE
            simulation = _Simulation(seed, steps, sandbox, crash_rate, fault_rate, tamper, actions)
            simulation.sim.late_commit_rate = late_commit_rate
            return simulation.run()
        finally:
            sandbox.close()


class _Simulation:
    def __init__(
        self,
        seed: int,
        steps: int,
        sandbox: Sandbox,
        crash_rate: float,
        fault_rate: float,
        tamper: Tamper | None,
        actions: tuple[Action, ...] = ACTIONS,
    ) -> None:
        self.sim = SimulationState(seed, steps, sandbox, crash_rate)
        self.fault_rate = fault_rate
        self.tamper = tamper
        self.actions = actions

    def run(self) -> SimulationResult:
        sim = self.sim
        actions = self.actions
        weights = [action.weight for action in actions]
        # The issuer party and iSTSi are set up on the ledger (and onboarded in the books) before
        # any fault is armed: it is the deployment's own setup, done once before the exchange runs,
        # like the treasury's and the customers' parties the sandbox allocates.
        issuance.world(sim)
        for step in range(1, sim.result.steps + 1):
            sim.label = f"step {step}"
            if sim.rng.random() < self.fault_rate:
                inject_fault(sim)
            if sim.rng.random() < sim.crash_rate:
                sim.restart("restart")
            deliver_late_commits(sim)
            action = sim.rng.choices(actions, weights)[0]
            sim.result.outcomes[f"action_{action.name}"] += 1
            self._perform(action.perform, ledger_only=action.ledger_only)
            sim.absorb_completions()
            if self.tamper is not None:
                self.tamper(step, sim.sandbox)
                sim.dirty = True
            check_invariants(sim)
        sim.label = "end"
        self._drain()
        return sim.result

    def _perform(
        self, action: Callable[[SimulationState], None], *, ledger_only: bool = False
    ) -> None:
        sim = self.sim
        try:
            action(sim)
        except Crash as crash:
            sim.restart(str(crash))
        except IngestionStoppedError as exc:
            if isinstance(exc.__cause__, LedgerReadError):
                # Too many cut reads in a row: ingestion gives up; a restart resumes.
                sim.result.outcomes["ingestion_stopped"] += 1
                sim.stop(ingestion.PROCESS)
            else:
                sim.violation("error", f"ingestion stopped: {exc}")
        except Exception as exc:  # anything else the exchange raised is a finding
            sim.violation("error", f"{type(exc).__name__}: {exc}")
        finally:
            if not ledger_only:
                sim.dirty = True

    def _drain(self) -> None:
        """Stop the faults, move the clock past every deadline and run everything until nothing
        is left to do; then check that every withdrawal is finished and every wallet adds up."""
        sim = self.sim
        sim.ledger.faults.clear()
        sim.crash_rate = 0.0
        sim.stop_all()
        late_round = sim.rng.randint(0, 2) if sim.ledger.faults.late_commits_pending() else 0
        for round_ in range(DRAIN_ROUNDS_MAX):
            for action in DRAIN_ROUND:
                self._perform(action)
                sim.absorb_completions()
            if round_ == late_round:
                deliver_late_commits(sim, every=True)
                sim.absorb_completions()
                sim.dirty = True
            if self._quiet():
                break
            if round_ % 2 == 0:
                sim.ledger.advance(DRAIN_CLOCK_MOVE_S)
                sim.ledger.checkpoint()
            # After the clock moved, the admin expires what is due either at once or a round
            # later (the worker has withdrawn its stale offers by then).
            if round_ % 2 == 1 or sim.rng.random() < 0.5:
                self._perform(ledger_admin.expire_instructions, ledger_only=True)
                sim.absorb_completions()
        check_invariants(sim, final=True)
        for row in sim.read_database().records:
            sim.result.outcomes[f"end_{row.kind}_{_ending(row.status, row.failure)}"] += 1

    def _quiet(self) -> bool:
        sim = self.sim
        if sim.ledger.active_instructions(sim.sandbox.treasury):
            return False
        if sim.ledger.faults.late_commits_pending():
            return False
        with sim.engine.connect() as connection:
            live = connection.execute(
                select(func.count())
                .select_from(tables.withdrawals)
                .where(tables.withdrawals.c.status.in_(sorted(LIVE_STATUSES)))
            ).scalar_one()
            cursor = connection.execute(
                select(tables.ledger_cursors.c.offset).where(
                    tables.ledger_cursors.c.connection == sim.sandbox.connection
                )
            ).scalar_one_or_none()
        caught_up = cursor == sim.ledger.ledger_end(sim.sandbox.node)
        return live == 0 and caught_up and issuance.open_operations(sim) == 0


def _ending(status: str, failure: str | None) -> str:
    """How a record ended, for the outcome counts: completed, offer_rejected / _withdrawn /
    _failed (expired), attempts_expired, or failed."""
    if status != "failed" or not failure:
        return status
    if failure.startswith("offer "):
        return failure.replace(" ", "_")
    if "expired" in failure:
        return "attempts_expired"
    return "failed"
