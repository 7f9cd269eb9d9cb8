"""The spin harness on a model of a few lines: it reports a proof, an assertion's
counterexample with its replay, an ltl property under fairness, and a mutant chosen by -D."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.verification.spin import run_spin

COUNTER = """
byte count;
bool finished;

active proctype counter() {
    do
    :: count < LIMIT -> count++
    :: else -> break
    od;
    finished = true;
#ifdef MUTANT_OVERSHOOT
    count++;
#endif
    assert(count <= LIMIT)
}

ltl finishes { <> finished }
ltl bounded { [] (count <= LIMIT) }
"""


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model" / "counter.pml"
    path.parent.mkdir()
    path.write_text(COUNTER)
    return path


def test_a_correct_model_is_proved_with_its_figures(model: Path, tmp_path: Path) -> None:
    result = run_spin(model, defines=["LIMIT=3"], work_dir=tmp_path / "safe")
    assert result.proved, result.output
    assert result.states_stored > 0 and result.transitions > 0 and result.depth_reached > 0
    assert result.trail is None


def test_a_mutant_selected_by_a_define_is_refuted_with_a_replay(
    model: Path, tmp_path: Path
) -> None:
    result = run_spin(model, defines=["LIMIT=3", "MUTANT_OVERSHOOT"], work_dir=tmp_path / "mutant")
    assert result.errors == 1
    assert result.trail is not None and "assertion violated" in result.trail


def test_the_shortest_counterexample_and_what_the_model_printed_along_it(
    model: Path, tmp_path: Path
) -> None:
    path = model.with_name("printing.pml")
    path.write_text(
        model.read_text().replace("count++\n", 'count++; printf("STEP count=%d\\n", count)\n')
    )
    result = run_spin(
        path, defines=["LIMIT=3", "MUTANT_OVERSHOOT"], shortest=True, work_dir=tmp_path / "short"
    )
    assert result.errors == 1
    assert result.printed is not None
    steps = [line.strip() for line in result.printed.splitlines() if "STEP" in line]
    assert steps == ["STEP count=1", "STEP count=2", "STEP count=3"]  # then the overshoot


def test_ltl_properties_are_checked_one_by_name(model: Path, tmp_path: Path) -> None:
    liveness = run_spin(
        model, defines=["LIMIT=3"], ltl="finishes", liveness=True, work_dir=tmp_path / "live"
    )
    assert liveness.proved, liveness.output
    mutant = run_spin(
        model,
        defines=["LIMIT=3", "MUTANT_OVERSHOOT"],
        ltl="bounded",
        work_dir=tmp_path / "bounded",
    )
    assert mutant.errors == 1, mutant.output


def test_an_unknown_ltl_name_is_an_error(model: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no ltl block"):
        run_spin(model, defines=["LIMIT=3"], ltl="absent", work_dir=tmp_path / "absent")
