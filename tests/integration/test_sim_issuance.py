"""The simulation's iSTSi issuance (:mod:`sluice.sim.actors.issuance` and
:mod:`sluice.sim.issuance_invariants`): seeds keep every issuance guarantee through crashes of the
router between a step and its record, KYC refusals, repeated redemption keys and held transfers,
and each issuance check does fail when the tables lie.
"""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import update

from sluice.sandbox import Sandbox
from sluice.sim import run_simulation
from sluice.store.bitcoin_tables import btc_outputs
from sluice.store.issuance_tables import issuance_mints, issuance_operations

pytestmark = pytest.mark.slow

SEEDS = range(1, 13)
STEPS = 200


def test_seeds_keep_issuance_guarantees() -> None:
    reached: Counter[str] = Counter()
    for seed in SEEDS:
        result = run_simulation(seed, STEPS, crash_rate=0.1)
        assert result.ok, result.as_json_line()
        reached.update(result.outcomes)
    # The sweep reaches what matters: mints completed, redemptions, KYC refusals, crashes of the
    # router after a step ran, repeated keys.
    for outcome in ("istsi_completed", "istsi_redeemed", "istsi_redeem_refused_kyc"):
        assert reached[outcome] > 0, outcome
    assert any(k.startswith("crash_istsi_after_") for k in reached), reached


def _tampered(tamper_at: int, statement: object) -> list[str]:
    def tamper(step: int, sandbox: Sandbox) -> None:
        if step == tamper_at:
            with sandbox.database.engine.begin() as connection:
                connection.execute(statement)  # type: ignore[call-overload]

    return run_simulation(5, tamper_at + 5, tamper=tamper).violations


def test_minted_once_reports_a_second_mint_record() -> None:
    # Every mint record re-pointed at one deposit: that deposit is minted several times.
    first = "btc-deposit:x:0"
    violations = _tampered(250, update(issuance_mints).values(operation_id=first))
    assert any("istsi_minted_once" in v for v in violations), violations


def test_reserves_reports_supply_over_reserves() -> None:
    violations = _tampered(250, update(btc_outputs).values(status="reorged"))
    assert any("istsi_reserves" in v for v in violations), violations


def test_redeemed_once_reports_a_completed_unpaid_redemption() -> None:
    violations = _tampered(
        250,
        update(issuance_operations)
        .where(issuance_operations.c.type == "token_withdrawal")
        .values(status="completed"),
    )
    assert any("istsi_redeemed_once" in v for v in violations), violations
