"""The simulation's reserves side (:mod:`sluice.sim.actors.reserves` and
:mod:`sluice.sim.reserves_invariants`): seeds record readings, reconcile over every source and
take proof-of-liabilities snapshots through crashes and ledger faults without a false finding,
and each reserves check does fail when a proof, the journal or custody's records lie.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import pytest
from sqlalchemy import func, select, update

from sluice.domain.journal import (
    SUSPENSE,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.sandbox import Sandbox
from sluice.services import por_snapshots as por_snapshots_service
from sluice.sim import run_simulation
from sluice.store.bitcoin_tables import btc_outputs
from sluice.store.reserves_tables import por_leaves, por_roots, por_snapshots

pytestmark = pytest.mark.slow

SEEDS = range(1, 4)
STEPS = 200
# What the sweep must reach: every source compared during the run and at the end, proofs and
# reserves documents verified, readings recorded, and the node's link dropping in a run.
REACHED = (
    "reserves_recorded",
    "reconcile_ledger_compared",
    "reconcile_custody_compared",
    "reconcile_supply_compared",
    "reconcile_final_ledger_compared",
    "reconcile_final_custody_compared",
    "reconcile_final_supply_compared",
    "reserves_proofs_verified",
    "reserves_documents_verified",
    # A token's holdings read at the journal's offset: its cover determined, and covering.
    "reserves_document_covered_canton",
)
TAMPER_SEED = 2
POSTGRES_SEED = 1
TAMPER_STEPS = 120

Tamper = Callable[[int, Sandbox], None]


@pytest.fixture(autouse=True)
def _no_cached_trees() -> None:
    """Each run starts without the process's cache of rebuilt liability trees: two runs of one
    seed publish the same snapshot id under the same secret, so a tree the untampered run
    rebuilt would answer the tampered run's proofs instead of its own (changed) stored leaves."""
    with por_snapshots_service._trees_lock:
        por_snapshots_service._trees.clear()


def test_seeds_keep_the_reserves_guarantees_through_crashes_and_faults() -> None:
    reached: Counter[str] = Counter()
    failures: list[str] = []
    for seed in SEEDS:
        result = run_simulation(seed, STEPS, crash_rate=0.1, fault_rate=0.1)
        if not result.ok:
            failures.append(result.as_json_line())
        reached.update(result.outcomes)
    assert failures == []
    assert [outcome for outcome in REACHED if reached[outcome] == 0] == [], reached
    # No run's reconciliation halted minting or paused: nothing worse than minor was compared.
    assert not [k for k in reached if k.startswith("reconcile_") and k.endswith("_minor")]


@pytest.mark.postgres
def test_a_seed_with_reserves_gives_the_same_line_on_postgresql(postgres_url: str) -> None:
    """The same run on PostgreSQL: the same line and the same reserves outcomes (every source
    compared as often, the same proofs verified)."""
    on_sqlite = run_simulation(POSTGRES_SEED, STEPS, crash_rate=0.1, fault_rate=0.1)
    assert on_sqlite.ok, on_sqlite.as_json_line()
    on_postgres = run_simulation(
        POSTGRES_SEED, STEPS, crash_rate=0.1, fault_rate=0.1, db_url=postgres_url
    )
    assert on_postgres.as_json_line() == on_sqlite.as_json_line()
    reserves = [k for k in on_sqlite.outcomes if k.startswith(("reserves_", "reconcile_"))]
    assert reserves and all(on_postgres.outcomes[k] == on_sqlite.outcomes[k] for k in reserves)


def _at_first_snapshot(change: Callable[[Sandbox], None]) -> Tamper:
    """A tamper made once, in the step the run's first snapshot is taken (after it, before the
    checks)."""
    done = False

    def tamper(step: int, sandbox: Sandbox) -> None:
        nonlocal done
        if done:
            return
        with sandbox.database.engine.connect() as connection:
            taken = connection.execute(select(func.count()).select_from(por_snapshots)).scalar()
        if taken:
            done = True
            change(sandbox)

    return tamper


def _execute(statement: object) -> Callable[[Sandbox], None]:
    def change(sandbox: Sandbox) -> None:
        with sandbox.database.engine.begin() as connection:
            connection.execute(statement)  # type: ignore[call-overload]

    return change


def _violations(tamper: Tamper) -> list[str]:
    return run_simulation(TAMPER_SEED, TAMPER_STEPS, tamper=tamper).violations


def _named(violations: list[str], check: str) -> list[str]:
    return [v for v in violations if f": {check}: " in v]


def test_the_untampered_run_used_below_takes_a_snapshot_and_holds() -> None:
    result = run_simulation(TAMPER_SEED, TAMPER_STEPS)
    assert result.ok, result.as_json_line()
    assert result.outcomes["reserves_snapshots"] > 0 and result.outcomes["reserves_reconciled"]


def test_a_balance_changed_under_a_proof_is_refused() -> None:
    # The stored balance a customer's proof is rebuilt from: the tree no longer gives the root.
    violations = _violations(_at_first_snapshot(_execute(update(por_leaves).values(units="1"))))
    found = _named(violations, "reserves_proofs")
    assert found and "do not rebuild the published root" in found[0], violations


def test_a_published_root_changed_is_refused() -> None:
    root_hash = "00" * 32
    violations = _violations(
        _at_first_snapshot(_execute(update(por_roots).values(root_hash=root_hash)))
    )
    assert _named(violations, "reserves_proofs"), violations


def test_a_journal_that_is_not_the_snapshot_is_reported() -> None:
    """A balanced entry crediting a customer from suspense in the snapshot's step: the root's
    total is no longer the customers' balances in the journal."""

    def credit_from_suspense(sandbox: Sandbox) -> None:
        with sandbox.database.uow() as uow:
            uow.withdrawals.post(
                [
                    JournalTransaction(
                        id="tampered-liabilities",
                        kind="deposit",
                        postings=(
                            Posting(AccountRef(SUSPENSE, sandbox.coin), Decimal(1)),
                            Posting(
                                AccountRef(customer_account_name("cust-0"), sandbox.coin),
                                Decimal(-1),
                            ),
                        ),
                    )
                ]
            )
            uow.commit()

    violations = _violations(_at_first_snapshot(credit_from_suspense))
    found = _named(violations, "reserves_proofs")
    assert found and "the journal's customers" in found[0], violations


def test_custody_records_that_are_not_the_chain_are_a_compared_discrepancy() -> None:
    """Custody's records claim more Bitcoin than the chain holds: the next run that compares
    custody (at the latest the one at the end) finds it, and its halt or pause is a violation,
    not a quiet reaction."""
    done = False

    def inflate_one_output(step: int, sandbox: Sandbox) -> None:
        nonlocal done
        if done:
            return
        with sandbox.database.engine.begin() as connection:
            row = connection.execute(
                select(btc_outputs.c.txid, btc_outputs.c.vout, btc_outputs.c.amount_sats)
                .where(btc_outputs.c.spent_txid.is_(None), btc_outputs.c.block_height.is_not(None))
                .order_by(btc_outputs.c.amount_sats.desc())
                .limit(1)
            ).first()
            if row is None:
                return
            connection.execute(
                update(btc_outputs)
                .where(btc_outputs.c.txid == row.txid, btc_outputs.c.vout == row.vout)
                .values(amount_sats=row.amount_sats * 2)
            )
            done = True

    violations = _violations(inflate_one_output)
    found = _named(violations, "reserves_reconcile")
    assert found and "custody compared and found" in found[0], violations


def test_a_journal_that_is_not_the_ledger_is_a_compared_discrepancy() -> None:
    """The journal books 1,000 Canton Coin into the treasury (and suspense) that the ledger's
    active contracts do not hold: the ledger source, compared at ingestion's offset, finds it."""

    def book_from_nowhere(step: int, sandbox: Sandbox) -> None:
        if step != 10:
            return
        with sandbox.database.uow() as uow:
            uow.withdrawals.post(
                [
                    JournalTransaction(
                        id="tampered-treasury",
                        kind="deposit",
                        postings=(
                            Posting(
                                AccountRef(treasury_account_name(sandbox.treasury), sandbox.coin),
                                Decimal(1000),
                            ),
                            Posting(AccountRef(SUSPENSE, sandbox.coin), Decimal(-1000)),
                        ),
                    )
                ]
            )
            uow.commit()

    violations = _violations(book_from_nowhere)
    found = _named(violations, "reserves_reconcile")
    assert found and "ledger compared and found" in found[0], violations
