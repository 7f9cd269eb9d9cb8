"""The exchange's workers: the withdrawal worker (reserve, submit, settle, retry, refund, withdraw
stale offers, merge and split the pool) and the deposit worker (accept or reject the customers'
offers, behind a compliance gate that refuses some), each with crash points around its commands."""

from __future__ import annotations

from decimal import Decimal

from sluice.domain.ledger import InstrumentId
from sluice.domain.withdrawals import Withdrawal
from sluice.services.deposit_worker import DepositWorker
from sluice.services.withdrawals import WithdrawalWorker
from sluice.sim.actors.actor import Action, Actor
from sluice.sim.faults import crash_point, crashing_commands
from sluice.sim.state import SimulationState

WITHDRAWAL_WORKER = "withdrawal_worker"
DEPOSIT_WORKER = "deposit_worker"


class DenyMultiplesOfEleven:
    """A compliance gate that refuses offers whose amount in cents is a multiple of 11 (about
    one in eleven), so the deposit worker's reject path is taken too."""

    def allows_deposit(
        self, customer_id: str, sender: str, instrument: InstrumentId, amount: Decimal
    ) -> tuple[bool, str]:
        if int(amount * 100) % 11 == 0:
            return False, "simulated compliance refusal"
        return True, "allowed"


def withdrawal_worker(sim: SimulationState) -> WithdrawalWorker:
    def after_submit(_record: Withdrawal) -> None:
        crash_point(sim, "after_submit")

    return sim.process(
        WITHDRAWAL_WORKER,
        lambda: sim.sandbox.withdrawal_worker(
            commands=crashing_commands(sim), after_submit=after_submit
        ),
    )


def deposit_worker(sim: SimulationState) -> DepositWorker:
    return sim.process(
        DEPOSIT_WORKER,
        lambda: DepositWorker(
            sim.sandbox.database.uow,
            crashing_commands(sim),
            sim.sandbox.registries,
            DenyMultiplesOfEleven(),
            treasury=sim.sandbox.treasury,
        ),
    )


def run_withdrawal_worker(sim: SimulationState) -> None:
    tick = withdrawal_worker(sim).run_once()
    outcomes = sim.result.outcomes
    outcomes["worker_retried"] += tick.retried
    outcomes["worker_refunded"] += tick.refunded
    outcomes["worker_fenced"] += tick.fenced
    outcomes["worker_submit_errors"] += tick.submit_errors
    outcomes["worker_offers_withdrawn"] += tick.offers_withdrawn
    outcomes["worker_upkeep"] += tick.upkeep_created


def run_deposit_worker(sim: SimulationState) -> None:
    tick = deposit_worker(sim).run_once()
    sim.result.outcomes["deposit_worker_rejected"] += tick.rejected


ACTOR = Actor(
    "workers",
    (
        Action("run_withdrawal_worker", 11, run_withdrawal_worker),
        Action("run_deposit_worker", 7, run_deposit_worker),
    ),
)
