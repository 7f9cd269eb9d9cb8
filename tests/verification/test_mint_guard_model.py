"""spin on verification/mint_guard.pml: the mint guard's properties are proved within the model's
bounds, and each has a mutant that spin refutes.

Properties (see the model's header): P1 ``guard_at_commit`` (at every mint's commit, supply ≤
reserves − pending), P2 ``no_double_mint`` (no deposit has two mint records nor two ledger mints),
P3 ``backing`` (supply ≤ reserves − pending + what reorged credited deposits held, every such
reorg halting minting). The bounds are the model's defaults (two deposits, one redemption, one
reorg, one resume, one lost answer) and a wider run (three deposits); each check takes well
under a second of pan's time.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.verification.spin import SpinResult, record_figures, run_spin

MODEL = Path(__file__).resolve().parents[2] / "verification" / "mint_guard.pml"
DEFAULT_BOUNDS = "ND=2 REDEMPTIONS=1 REORGS=1 RESUMES=1 CRASHES=1"
WIDE_BOUNDS = "ND=3 REDEMPTIONS=1 REORGS=1 RESUMES=1 CRASHES=1"


def check(
    tmp_path: Path, name: str, defines: tuple[str, ...] = (), bounds: str = DEFAULT_BOUNDS
) -> SpinResult:
    result = run_spin(MODEL, defines=defines, work_dir=tmp_path / name)
    record_figures(f"mint_guard: {name}", result, bounds)
    return result


def test_the_mint_guards_properties_hold_within_the_bounds(tmp_path: Path) -> None:
    result = check(tmp_path, "P1 P2 P3 proved")
    assert result.proved, result.output
    assert result.states_stored > 10_000  # the interleavings were explored, not one path


def test_the_properties_hold_with_three_deposits(tmp_path: Path) -> None:
    result = check(tmp_path, "P1 P2 P3 proved, three deposits", ("ND=3",), WIDE_BOUNDS)
    assert result.proved, result.output


def test_a_deposit_keyed_by_its_outpoint_is_never_minted_twice_even_without_the_guard(
    tmp_path: Path,
) -> None:
    """P2 holds without the guard: the operation's id, not the guard, makes the mint unique."""
    result = check(tmp_path, "P2 proved without the guard", ("MUTANT_NO_GUARD", "SKIP_P1"))
    assert result.proved, result.output


def test_the_guard_contains_a_double_mint_within_the_backing(tmp_path: Path) -> None:
    """With the deposit's key mutated, P2 breaks (below) but P3 still holds: the guard refuses
    the extra mint once the headroom is gone."""
    result = check(tmp_path, "P3 proved with MUTANT_DEPOSIT_KEY", ("MUTANT_DEPOSIT_KEY", "SKIP_P2"))
    assert result.proved, result.output


@pytest.mark.parametrize(
    ("name", "defines", "violated"),
    [
        pytest.param(
            "P1 refuted by MUTANT_GUARD_OUTSIDE_TX",
            ("MUTANT_GUARD_OUTSIDE_TX",),
            "assertion violated (supply<=(reserves-pending))",
            id="guard-read-outside-the-transaction",
        ),
        pytest.param(
            "P2 refuted by MUTANT_DEPOSIT_KEY",
            ("MUTANT_DEPOSIT_KEY",),
            "assertion violated ((recorded[i]<=1)&&(ledger_mints[i]<=1))",
            id="deposit-keyed-not-by-its-outpoint",
        ),
        pytest.param(
            "P3 refuted by MUTANT_DEPOSIT_KEY and MUTANT_NO_GUARD",
            ("MUTANT_DEPOSIT_KEY", "MUTANT_NO_GUARD", "SKIP_P1", "SKIP_P2"),
            "assertion violated (supply<=((reserves-pending)+lost))",
            id="double-mint-without-the-guard",
        ),
        pytest.param(
            "halt on reorg refuted by MUTANT_NO_HALT_ON_REORG",
            ("MUTANT_NO_HALT_ON_REORG",),
            "assertion violated halted",
            id="reorg-without-halt",
        ),
    ],
)
def test_each_mutant_is_refuted(
    tmp_path: Path, name: str, defines: tuple[str, ...], violated: str
) -> None:
    result = check(tmp_path, name, defines)
    assert result.errors == 1, result.output
    assert violated in result.output, result.output
    assert result.trail is not None and "assertion violated" in result.trail
