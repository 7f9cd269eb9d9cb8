"""The simulation's Bitcoin custody (:mod:`sluice.sim.actors.bitcoin` and the ``btc_*`` checks of
:mod:`sluice.sim.invariants`): seeds keep every custody guarantee, and the checks do fail when the
custody tables lie.

How: :func:`sluice.sim.run_simulation` runs its usual steps, among them the bitcoin actor's
(deposits with some dust, mining with full blocks now and then, reorgs of depth 1–3 that may drop
a transaction, evictions, the deposit watcher, payout requests, the payouts worker dying after
recording or after broadcasting). After every step the checks compare the ``btc_*`` tables with
the in-memory chain's blocks as its node calls answer them.

* a sweep of seeds, some with crashes at four times the default rate: no violation, and together
  they reach every custody path that matters (dust, reorgs of each depth and one dropping a
  transaction, evictions, full blocks, batches, rebroadcasts, fee bumps, a recovery after a crash,
  payouts completed, crashes after recording and after broadcasting, a broadcast whose answer
  was lost) — a sweep that stopped reaching one would prove nothing about it;
* a seed with bitcoin activity gives the same line on PostgreSQL as on SQLite;
* four runs with the custody tables tampered with mid-run — a deposit marked confirmed before
  its confirmations; a deposit recorded for another customer; a confirmed, unspent deposit
  deleted (the books lose money the chain holds); a completed payout put back in the queue, so
  that the worker pays it again from other coins — each reported by the check that exists for
  it at the step of the tampering, and the second payment by ``btc_paid_twice``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest
from sqlalchemy import delete, select, update

from sluice.sandbox import Sandbox
from sluice.sim import run_simulation
from sluice.store.bitcoin_tables import btc_outputs, btc_payouts

pytestmark = pytest.mark.slow

# The seeds here were chosen before the exchange actor was added: the sweep and the PostgreSQL
# seed run without its draws, as they did then.
EXCHANGE = False

# (seed, crash rate, fault rate): odd seeds crash at four times the default rate, which kills the
# payouts worker between recording and broadcasting often enough; even ones at the default rates,
# where it lives long enough to bump fees and complete payouts.
# Seed 34 is added for the node link dropped at sendrawtransaction: since operator payouts that
# would spend Bitcoin backing iSTSi are refused, seeds 1–24 make fewer batches and none of them
# drops the link at that call.
SWEEP = tuple((seed, 0.2, 0.1) if seed % 2 else (seed, 0.05, 0.05) for seed in (*range(1, 25), 34))
SWEEP_STEPS = 300
# What the sweep must have made happen at least once (SimulationResult.outcomes).
PATHS = (
    "btc_deposit",
    "btc_deposit_dust",
    "btc_confirmed",
    "btc_reorg_1",
    "btc_reorg_2",
    "btc_reorg_3",
    "btc_watch_reorgs",
    "btc_evicted",
    "btc_blocks_mined_empty",
    "btc_payout_requested",
    "btc_payout_repeated",
    "btc_batches",
    "btc_rebroadcast",
    "btc_bumped",
    "btc_link_dropped_at_sendrawtransaction",
    "btc_recovered",
    "btc_payouts_completed",
    "crash_btc_after_record",
    "crash_btc_after_broadcast",
)


def test_many_seeds_keep_every_custody_guarantee() -> None:
    outcomes: Counter[str] = Counter()
    failures: list[str] = []
    for seed, crash_rate, fault_rate in SWEEP:
        result = run_simulation(
            seed, SWEEP_STEPS, crash_rate=crash_rate, fault_rate=fault_rate, exchange=EXCHANGE
        )
        outcomes.update(result.outcomes)
        if result.violations:
            failures.append(result.as_json_line())
    assert failures == []
    assert [path for path in PATHS if outcomes[path] == 0] == []
    assert sum(n for name, n in outcomes.items() if name.endswith("_dropping")) > 0


@pytest.mark.postgres
def test_a_seed_with_payouts_gives_the_same_line_on_postgresql(postgres_url: str) -> None:
    on_sqlite = run_simulation(21, 200, exchange=EXCHANGE)
    assert on_sqlite.outcomes["btc_batches"] > 0 and on_sqlite.ok
    on_postgres = run_simulation(21, 200, db_url=postgres_url, exchange=EXCHANGE)
    assert on_postgres.as_json_line() == on_sqlite.as_json_line()
    assert on_postgres.outcomes == on_sqlite.outcomes


def tamper_once(
    change: Callable[[Sandbox], bool],
) -> tuple[Callable[[int, Sandbox], None], list[int]]:
    """A tamper hook applying ``change`` at the first step it finds something to change."""
    done: list[int] = []

    def tamper(step: int, sandbox: Sandbox) -> None:
        if not done and change(sandbox):
            done.append(step)

    return tamper, done


def checks_at(violations: list[str], step: int) -> set[str]:
    return {v.split(": ")[1] for v in violations if v.startswith(f"step {step}: ")}


def test_a_deposit_confirmed_early_is_reported() -> None:
    def confirm_a_seen_deposit(sandbox: Sandbox) -> bool:
        with sandbox.database.engine.begin() as connection:
            changed = connection.execute(
                update(btc_outputs)
                .where(
                    btc_outputs.c.txid
                    == select(btc_outputs.c.txid)
                    .where(btc_outputs.c.status == "seen", btc_outputs.c.block_height.is_not(None))
                    .limit(1)
                    .scalar_subquery()
                )
                .values(status="confirmed")
            ).rowcount
        return bool(changed)

    tamper, done = tamper_once(confirm_a_seen_deposit)
    result = run_simulation(4, 300, tamper=tamper)
    assert done
    assert "btc_deposits" in checks_at(result.violations, done[0]), result.violations
    assert any("expected seen" in v for v in result.violations)


def test_a_deposit_recorded_for_another_customer_is_reported() -> None:
    def give_a_deposit_to_someone_else(sandbox: Sandbox) -> bool:
        with sandbox.database.engine.begin() as connection:
            row = connection.execute(
                select(btc_outputs.c.txid, btc_outputs.c.customer_id).where(
                    btc_outputs.c.kind == "deposit"
                )
            ).first()
            if row is None:
                return False
            other = "cust-1" if row.customer_id != "cust-1" else "cust-2"
            connection.execute(
                update(btc_outputs).where(btc_outputs.c.txid == row.txid).values(customer_id=other)
            )
        return True

    tamper, done = tamper_once(give_a_deposit_to_someone_else)
    result = run_simulation(4, 300, tamper=tamper)
    assert done
    assert checks_at(result.violations, done[0]) == {"btc_deposits"}, result.violations
    assert any("sent" in v and "to their address" in v for v in result.violations)


def test_a_lost_deposit_is_reported() -> None:
    """A confirmed deposit deleted from the books: the chain still holds it."""

    def delete_a_confirmed_deposit(sandbox: Sandbox) -> bool:
        with sandbox.database.engine.begin() as connection:
            row = connection.execute(
                select(btc_outputs.c.txid, btc_outputs.c.vout).where(
                    btc_outputs.c.status == "confirmed", btc_outputs.c.spent_txid.is_(None)
                )
            ).first()
            if row is None:
                return False
            connection.execute(
                delete(btc_outputs).where(
                    btc_outputs.c.txid == row.txid, btc_outputs.c.vout == row.vout
                )
            )
        return True

    tamper, done = tamper_once(delete_a_confirmed_deposit)
    result = run_simulation(4, 200, tamper=tamper)
    assert done
    assert "btc_deposits" in checks_at(result.violations, done[0]), result.violations
    assert any(": btc_utxos: " in v for v in result.violations), result.violations


def test_a_payout_paid_twice_is_reported() -> None:
    """A completed payout put back in the queue (as a worker that lost track of its batch would
    do): the worker batches it again, from other coins."""
    requeued: list[str] = []

    def requeue_a_completed_payout(sandbox: Sandbox) -> bool:
        with sandbox.database.engine.begin() as connection:
            payout_id = connection.execute(
                select(btc_payouts.c.id).where(btc_payouts.c.status == "completed").limit(1)
            ).scalar_one_or_none()
            if payout_id is None:
                return False
            connection.execute(
                update(btc_payouts)
                .where(btc_payouts.c.id == payout_id)
                .values(status="queued", batch_id=None, vout=None, fee_sats=None)
            )
        requeued.append(payout_id)
        return True

    tamper, done = tamper_once(requeue_a_completed_payout)
    result = run_simulation(21, 300, tamper=tamper)
    assert done
    # The books' lie is seen at once (paid by a transaction of no batch of its own); the second
    # payment when the worker batches it again.
    assert "btc_payouts" in checks_at(result.violations, done[0]), result.violations
    # (in two batches, or paid by two transactions: which one the seed's draws decide)
    assert any(f": btc_paid_twice: {requeued[0]} " in v for v in result.violations), (
        result.violations
    )
