"""spin on verification/redemption.pml: the redemption and payout protocol's properties are proved
within the model's bounds, and each has a mutant that spin refutes.

Properties (see the model's header): ``paid_once`` (never two transactions paying the payout in
the chain at once), ``remint_xor_paid`` (never a re-mint sent for a redemption whose payout was
ever mined, nor a refund of a burn that committed), and ``done`` (the redemption is eventually
completed or compensated, under weak fairness). The bounds are the model's defaults (one
redemption, two coins, one crash, one fee bump, one reorg, one eviction) and a wider run (two
of each); each check takes about a second or less of pan's time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.verification.spin import SpinResult, record_figures, run_spin

MODEL = Path(__file__).resolve().parents[2] / "verification" / "redemption.pml"
DEFAULT_BOUNDS = "NCOINS=2 CRASHES=1 BUMPS=1 REORGS=1 EVICTIONS=1"
WIDE = ("CRASHES=2", "BUMPS=2", "REORGS=2", "EVICTIONS=2")
WIDE_BOUNDS = "NCOINS=2 CRASHES=2 BUMPS=2 REORGS=2 EVICTIONS=2"


def check(
    tmp_path: Path,
    name: str,
    defines: tuple[str, ...] = (),
    *,
    ltl: str | None = None,
    bounds: str = DEFAULT_BOUNDS,
) -> SpinResult:
    result = run_spin(
        MODEL, defines=defines, ltl=ltl, liveness=ltl is not None, work_dir=tmp_path / "pan"
    )
    record_figures(f"redemption: {name}", result, bounds)
    return result


def test_a_payout_is_paid_once_and_never_both_paid_and_reminted(tmp_path: Path) -> None:
    result = check(tmp_path, "paid_once remint_xor_paid proved")
    assert result.proved, result.output
    assert result.states_stored > 1_000


def test_the_safety_properties_hold_under_wider_bounds(tmp_path: Path) -> None:
    result = check(tmp_path, "paid_once remint_xor_paid proved, wider", WIDE, bounds=WIDE_BOUNDS)
    assert result.proved, result.output


def test_every_redemption_is_eventually_paid_or_compensated(tmp_path: Path) -> None:
    result = check(tmp_path, "done proved (weak fairness)", ltl="done")
    assert result.proved, result.output


def test_liveness_holds_under_wider_bounds(tmp_path: Path) -> None:
    result = check(
        tmp_path, "done proved (weak fairness), wider", WIDE, ltl="done", bounds=WIDE_BOUNDS
    )
    assert result.proved, result.output


@pytest.mark.parametrize(
    ("name", "defines", "violated"),
    [
        pytest.param(
            "paid_once refuted by MUTANT_REBUILD_AFTER_CRASH",
            ("MUTANT_REBUILD_AFTER_CRASH",),
            "assertion violated (mined_count<=1)",
            id="rebuilt-after-a-crash",
        ),
        pytest.param(
            "paid_once refuted by MUTANT_BUMP_OTHER_COIN",
            ("MUTANT_BUMP_OTHER_COIN",),
            "assertion violated (mined_count<=1)",
            id="fee-bump-not-conflicting",
        ),
        pytest.param(
            "remint_xor_paid refuted by MUTANT_COMPENSATE_UNCHECKED",
            ("MUTANT_COMPENSATE_UNCHECKED",),
            "assertion violated  !((ledger_remint&&ever_paid))",
            id="compensation-without-the-payouts-state",
        ),
    ],
)
def test_each_safety_mutant_is_refuted(
    tmp_path: Path, name: str, defines: tuple[str, ...], violated: str
) -> None:
    result = check(tmp_path, name, defines)
    assert result.errors == 1, result.output
    assert violated in result.output, result.output
    assert result.trail is not None


def test_a_payout_not_sent_again_leaves_the_redemption_unfinished(tmp_path: Path) -> None:
    result = check(
        tmp_path, "done refuted by MUTANT_NO_REBROADCAST", ("MUTANT_NO_REBROADCAST",), ltl="done"
    )
    assert result.errors == 1, result.output
    assert "acceptance cycle" in result.output, result.output
    assert result.trail is not None
