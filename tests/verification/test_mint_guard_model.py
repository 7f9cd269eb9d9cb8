"""spin on verification/mint_guard.pml: the mint guard's properties are proved within the model's
bounds, each has a mutant that spin refutes, and the two gaps spin found in the operators' payout
check are shown.

Properties (see the model's header): P1 ``guard_at_commit`` (at every mint's commit, supply ≤
reserves − pending), P2 ``no_double_mint`` (no deposit has two mint records nor two ledger mints),
P3 ``backing`` (supply ≤ reserves − pending + what reorged credited deposits held, every such
reorg halting minting).

The operators' payout check (``btc_payouts._dips_into_backing``) as it was broke P3 in two ways,
which spin found: a payout was not checked at all while the supply was 0, which it also is when
everything issued was burned for redemptions still to be paid; and a redemption waiting for its
re-mint was counted nowhere. The code now checks every payout and counts the re-mint as owed,
as the model does by default; the rule before is the two mutants
``MUTANT_PAYOUT_ZERO_SUPPLY_EXEMPT`` and ``MUTANT_PAYOUT_REMINT_UNOWED`` (the tests named
``..._gap_...``). Bounds: the model's defaults
(two deposits, one redemption, two operators' payouts, one reorg, one resume, one lost answer);
each check's pan run takes under a second.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.verification.spin import SpinResult, record_figures, run_spin

MODEL = Path(__file__).resolve().parents[2] / "verification" / "mint_guard.pml"
BOUNDS = "ND=2 REDEMPTIONS=1 PAYOUTS=2 EXCESS=1 REORGS=1 RESUMES=1 CRASHES=1"
EXEMPT = "MUTANT_PAYOUT_ZERO_SUPPLY_EXEMPT"
UNOWED = "MUTANT_PAYOUT_REMINT_UNOWED"
P1_VIOLATED = "assertion violated (supply<=(reserves-pending))"
P2_VIOLATED = "assertion violated ((recorded[i]<=1)&&(ledger_mints[i]<=1))"
P3_VIOLATED = "assertion violated (supply<=((reserves-pending)+lost))"


def check(tmp_path: Path, name: str, defines: tuple[str, ...]) -> SpinResult:
    result = run_spin(MODEL, defines=defines, work_dir=tmp_path / "pan")
    bounds = dict(item.split("=", 1) for item in BOUNDS.split())
    bounds.update(dict(item.split("=", 1) for item in defines if "=" in item))
    record_figures(f"mint_guard: {name}", result, " ".join(f"{k}={v}" for k, v in bounds.items()))
    return result


def test_the_mint_guards_properties_hold(tmp_path: Path) -> None:
    result = check(tmp_path, "P1 P2 P3 proved", ())
    assert result.proved, result.output
    assert result.states_stored > 100_000  # the interleavings were explored, not one path


def test_the_properties_hold_with_three_deposits_and_no_operators_payout(tmp_path: Path) -> None:
    result = check(
        tmp_path,
        "P1 P2 P3 proved, three deposits, no operators' payout",
        ("ND=3", "PAYOUTS=0"),
    )
    assert result.proved, result.output


def test_the_payout_checks_gaps_break_the_backing(tmp_path: Path) -> None:
    """The check as it was, both gaps: spin finds an operator's payout taking Bitcoin owed."""
    result = check(tmp_path, "P3 refuted: the payout check as it was", (EXEMPT, UNOWED))
    assert result.errors == 1, result.output
    assert P3_VIOLATED in result.output


def test_the_payout_gap_of_a_zero_supply_with_redemptions_pending(tmp_path: Path) -> None:
    """With the re-mint counted as owed, the exemption alone still breaks P3: everything issued
    was burned, a redemption is still to be paid, and an unchecked payout takes its Bitcoin."""
    result = check(tmp_path, "P3 refuted: the zero-supply exemption", (EXEMPT,))
    assert result.errors == 1, result.output
    assert P3_VIOLATED in result.output
    assert result.trail is not None and "EV burn" in result.trail


def test_the_payout_gap_of_a_redemption_waiting_for_its_remint(tmp_path: Path) -> None:
    """With every payout checked, the re-mint counted nowhere still breaks P3: a payout takes
    the Bitcoin the re-mint needs, and the re-mint passes the guard on another deposit's."""
    result = check(tmp_path, "P3 refuted: the re-mint owed nowhere", (UNOWED,))
    assert result.errors == 1, result.output
    assert P3_VIOLATED in result.output
    assert result.trail is not None and "EV to_remint" in result.trail


def test_a_deposit_keyed_by_its_outpoint_is_never_minted_twice_even_without_the_guard(
    tmp_path: Path,
) -> None:
    """P2 (and P3) hold without the guard: the operation's id, not the guard, makes the mint
    unique, and every mint is backed by its own deposit."""
    result = check(tmp_path, "P2 P3 proved without the guard", ("MUTANT_NO_GUARD", "SKIP_P1"))
    assert result.proved, result.output


def test_the_guard_contains_a_double_mint_within_the_backing(tmp_path: Path) -> None:
    """With the deposit's key mutated, P2 breaks (below) but P3 still holds: the guard refuses
    the extra mint once the headroom is gone."""
    result = check(
        tmp_path,
        "P3 proved with MUTANT_DEPOSIT_KEY",
        ("PAYOUTS=0", "MUTANT_DEPOSIT_KEY", "SKIP_P2"),
    )
    assert result.proved, result.output


@pytest.mark.parametrize(
    ("name", "defines", "violated"),
    [
        pytest.param(
            "P1 refuted by MUTANT_GUARD_OUTSIDE_TX",
            ("MUTANT_GUARD_OUTSIDE_TX",),
            P1_VIOLATED,
            id="guard-read-outside-the-transaction",
        ),
        pytest.param(
            "P2 refuted by MUTANT_DEPOSIT_KEY",
            ("MUTANT_DEPOSIT_KEY",),
            P2_VIOLATED,
            id="deposit-keyed-not-by-its-outpoint",
        ),
        pytest.param(
            "P3 refuted by MUTANT_DEPOSIT_KEY and MUTANT_NO_GUARD",
            ("MUTANT_DEPOSIT_KEY", "MUTANT_NO_GUARD", "SKIP_P1", "SKIP_P2"),
            P3_VIOLATED,
            id="double-mint-without-the-guard",
        ),
        pytest.param(
            "P3 refuted by MUTANT_PAYOUT_CHECK_OUTSIDE_LOCK",
            ("MUTANT_PAYOUT_CHECK_OUTSIDE_LOCK", "SKIP_P1", "REDEMPTIONS=0"),
            P3_VIOLATED,
            id="payout-check-outside-the-lock",
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
