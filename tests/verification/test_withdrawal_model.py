"""spin proves the withdrawal protocol's properties on its model, and refutes every mutant.

The model is ``verification/withdrawal.pml`` (its header names the code each step models and
the bounds). Each check is one exhaustive search by ``tests/verification/spin.py``:

* the safety properties (never two committed transfers for one withdrawal; never a refund of a
  withdrawal that was paid) under three mixes of bounds, since all faults at once with two
  workers would take minutes: two workers; one worker under every fault; a DB restore;
* the liveness property (every withdrawal is eventually completed or credited back, for good)
  under weak fairness, with the timely-workers assumption (``TIMELY``), with two workers and
  with a DB restore (after which the DB must come to agree with the ledger again);
* each mutant (a naive variant of one rule of the code) breaks the property it names, and spin
  prints the counterexample;
* the hold after a DB restore rests on time: with late commits spin finds the double payment,
  which docs/verification.md states as the assumption.

``SLUICE_SPIN_FIGURES=FILE`` records each check's figures (see ``spin.py``) for the docs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.verification.spin import SpinResult, record_figures, run_spin

MODEL = Path(__file__).resolve().parents[2] / "verification" / "withdrawal.pml"

# The bounds of each configuration (the model's header explains each name).
TWO_WORKERS = ("WORKERS=2", "AMAX=2", "CRASHES=1", "FAULTS=2", "LATE=1", "OTHERS=0", "TMAX=8")
EVERY_FAULT = ("WORKERS=1", "AMAX=2", "CRASHES=2", "FAULTS=2", "LATE=1", "OTHERS=1", "TMAX=9")
RESTORE = ("RESTORE", "WORKERS=1", "AMAX=2", "CRASHES=1", "FAULTS=2", "OTHERS=0", "TMAX=7")
LIVENESS = (
    "TIMELY",
    "WORKERS=2",
    "AMAX=2",
    "CRASHES=1",
    "FAULTS=2",
    "LATE=1",
    "OTHERS=1",
    "TMAX=12",
)

LIVENESS_RESTORE = (
    "TIMELY",
    "RESTORE",
    "WORKERS=1",
    "AMAX=2",
    "CRASHES=1",
    "FAULTS=2",
    "OTHERS=0",
    "TMAX=12",
)

# The assertions as pan prints them when they fail.
ONE_TRANSFER = "assertion violated (committed<=1)"
NO_REFUND_OF_PAID = "assertion violated ((refunds==0)||(committed==0))"


def check(
    name: str,
    defines: tuple[str, ...],
    work_dir: Path,
    *,
    ltl: str | None = None,
) -> SpinResult:
    result = run_spin(
        MODEL,
        defines=defines,
        ltl=ltl,
        liveness=ltl is not None,
        work_dir=work_dir,
        compile_flags=("-DCOLLAPSE",),
    )
    record_figures(f"withdrawal: {name}", result, bounds=" ".join(defines))
    return result


def bounds_of(defines: tuple[str, ...]) -> str:
    return ", ".join(defines)


@pytest.mark.parametrize(
    ("name", "defines"),
    [
        ("safety, two workers", TWO_WORKERS),
        ("safety, every fault", EVERY_FAULT),
        ("safety, DB restore", RESTORE),
    ],
)
def test_spin_proves_one_transfer_and_no_refund_of_a_paid_withdrawal(
    name: str, defines: tuple[str, ...], tmp_path: Path
) -> None:
    result = check(name, defines, tmp_path)
    assert result.proved, (
        f"{bounds_of(defines)}: {result.summary()}\n{result.trail or result.output}"
    )
    assert result.states_stored > 1000, result.output  # the search did explore the model


@pytest.mark.parametrize(
    ("name", "defines"),
    [
        ("liveness (settles)", LIVENESS),
        ("liveness (settles), DB restore", LIVENESS_RESTORE),
    ],
)
def test_spin_proves_every_withdrawal_is_settled_under_weak_fairness(
    name: str, defines: tuple[str, ...], tmp_path: Path
) -> None:
    result = check(name, defines, tmp_path, ltl="settles")
    assert result.proved, f"{result.summary()}\n{result.trail or result.output}"
    assert result.states_stored > 1000, result.output


# Situations the safety checks must reach, or their proofs would say little: each (a probe of
# the model, REACH_...) is found by spin under the bounds of the check named.
SITUATIONS = [
    ("REACH_LATE_COMMIT_AFTER_RETRY", TWO_WORKERS),
    ("REACH_RETRY_COMPLETES", TWO_WORKERS),
    ("REACH_FENCE_CREDITS_BACK", TWO_WORKERS),
    ("REACH_TWO_CLAIMS", TWO_WORKERS),
    ("REACH_STALE_CLAIM", TWO_WORKERS),
    ("REACH_ANCHOR_SPENT_ELSEWHERE_THEN_PAID", EVERY_FAULT),
    ("REACH_RESTORED_DB_COMPLETES", RESTORE),
]


@pytest.mark.parametrize(("situation", "defines"), SITUATIONS, ids=[s[0] for s in SITUATIONS])
def test_the_safety_checks_reach_the_situations_that_matter(
    situation: str, defines: tuple[str, ...], tmp_path: Path
) -> None:
    result = run_spin(
        MODEL, defines=(*defines, situation), work_dir=tmp_path, compile_flags=("-DCOLLAPSE",)
    )
    assert result.errors == 1 and "assertion violated 0" in result.output, (
        f"never reached: {situation}\n{result.output}"
    )


@dataclass(frozen=True)
class Mutant:
    name: str
    defines: tuple[str, ...]
    # the failed assertion pan prints, or None for the ltl property
    breaks: str | None


MUTANTS = [
    # A retry that chooses its inputs afresh: attempt 1, lost, commits late; attempt 2 as well.
    Mutant(
        "MUTANT_RETRY_FRESH_INPUTS",
        (*TWO_WORKERS, "MUTANT_RETRY_FRESH_INPUTS", "CHECK_ONE_TRANSFER"),
        ONE_TRANSFER,
    ),
    # A credit back decided from the command's error: the lost submission commits later.
    Mutant(
        "MUTANT_REFUND_ON_COMMAND_ERROR",
        (*TWO_WORKERS, "MUTANT_REFUND_ON_COMMAND_ERROR", "CHECK_NO_REFUND_OF_PAID"),
        NO_REFUND_OF_PAID,
    ),
    # A credit back once the last attempt's trec_tgt has passed, without a fence: it commits late.
    Mutant(
        "MUTANT_REFUND_WITHOUT_FENCE",
        (*TWO_WORKERS, "MUTANT_REFUND_WITHOUT_FENCE", "CHECK_NO_REFUND_OF_PAID"),
        NO_REFUND_OF_PAID,
    ),
    # The worker records its attempt over a later one another worker claimed meanwhile.
    Mutant(
        "MUTANT_RECORD_ANY_ATTEMPT",
        (*TWO_WORKERS, "MUTANT_RECORD_ANY_ATTEMPT"),
        NO_REFUND_OF_PAID,
    ),
    # A restore without hold_until_safe: the restored DB forgot an attempt that committed.
    Mutant(
        "MUTANT_RESTORE_WITHOUT_HOLD",
        (*RESTORE, "MUTANT_RESTORE_WITHOUT_HOLD", "CHECK_ONE_TRANSFER"),
        ONE_TRANSFER,
    ),
    # Settling only submitted records: one a crash left submitting waits forever.
    Mutant(
        "MUTANT_SETTLE_SUBMITTED_ONLY",
        (*LIVENESS, "MUTANT_SETTLE_SUBMITTED_ONLY"),
        None,
    ),
]


@pytest.mark.parametrize("mutant", MUTANTS, ids=[m.name for m in MUTANTS])
def test_spin_refutes_each_mutant_with_a_counterexample(mutant: Mutant, tmp_path: Path) -> None:
    ltl = "settles" if mutant.breaks is None else None
    result = check(mutant.name, mutant.defines, tmp_path, ltl=ltl)
    assert result.errors >= 1, f"spin did not refute {mutant.name}: {result.summary()}"
    assert result.trail is not None, result.output
    if mutant.breaks is None:
        assert "acceptance cycle" in result.output, result.output
    else:
        assert mutant.breaks in result.output, result.output


def test_the_hold_after_a_restore_rests_on_time(tmp_path: Path) -> None:
    """With commits after max_record_time, a forgotten attempt commits after the hold and is
    paid a second time: why the hold relies on the adapter's margin (docs/verification.md)."""
    defines = (*RESTORE, "RESTORE_WITH_LATE", "CHECK_ONE_TRANSFER")
    result = check("restore with late commits (the stated assumption)", defines, tmp_path)
    assert result.errors >= 1, result.summary()
    assert ONE_TRANSFER in result.output, result.output
