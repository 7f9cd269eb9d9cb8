"""The sanctions screening benchmark (``sluice.bench.screening``) on the 17-entry sample list.

Covers the labelled set (deterministic for a seed, positives made from listed names, negatives
that are not the list's names written differently), a small run of the benchmark whose report
must be consistent with itself (precision, recall and F1 from its confusion counts, latencies in
order), and recording the report in a benchmarks file next to other sections. No speed asserts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sluice.bench.screening import (
    SECTION,
    ScreeningBenchReport,
    build_labelled_set,
    measure_scripts,
    record_screening_report,
    run_screening_bench,
)
from sluice.screening import (
    DEFAULT_THRESHOLD,
    ListedSanctions,
    SanctionedEntity,
    SanctionsList,
    load_list,
    normalise_name,
)
from tests.conftest import reference_path


@pytest.fixture(scope="module")
def sample_directory() -> Path:
    return reference_path("sanctions")


@pytest.fixture(scope="module")
def sample(sample_directory: Path) -> SanctionsList:
    return load_list(sample_directory, "sample-")


@pytest.fixture(scope="module")
def report(sample_directory: Path) -> ScreeningBenchReport:
    return run_screening_bench(
        sample_directory, prefix="sample-", count=300, seed=5, positives_n=30, negatives_n=30
    )


def test_the_labelled_set_is_the_same_for_the_same_seed(sample: SanctionsList) -> None:
    first = build_labelled_set(sample, 11, 20, 20)
    assert first == build_labelled_set(sample, 11, 20, 20)
    assert first != build_labelled_set(sample, 12, 20, 20)


def test_the_labelled_set_has_the_sizes_asked_for(sample: SanctionsList) -> None:
    labelled = build_labelled_set(sample, 3, 25, 35)
    assert sum(item.listed for item in labelled) == 25
    assert sum(not item.listed for item in labelled) == 35
    assert len({item.query for item in labelled}) == len(labelled)


def test_positives_are_made_from_listed_names_of_their_entity(sample: SanctionsList) -> None:
    names_by_entity = {
        entity.entity_id: {entity.name, *entity.aliases} for entity in sample.entities
    }
    for item in build_labelled_set(sample, 4, 30, 10):
        if item.listed:
            assert item.entity_id is not None
            assert item.source_name in names_by_entity[item.entity_id]
            assert item.variation.split("+")[0] in {
                "reordered",
                "middle_dropped",
                "typo",
                "transliterated",
                "written",
            }


def test_negatives_are_not_listed_names_written_differently(sample: SanctionsList) -> None:
    listed = {frozenset(name.tokens) for name in sample.index.names}
    for item in build_labelled_set(sample, 6, 10, 40):
        if not item.listed:
            assert item.entity_id is None
            assert frozenset(normalise_name(item.query).tokens) not in listed
            assert item.variation in {"person", "company", "near_miss", "lookalike"}


def test_a_list_without_names_to_vary_is_refused() -> None:
    acronyms = SanctionsList.build(
        [SanctionedEntity("test:1", "HTC", "entity", "test")], source="acronyms only"
    )
    with pytest.raises(ValueError, match="no names"):
        build_labelled_set(acronyms, 1, 10, 10)


def test_report_counts_add_up(report: ScreeningBenchReport) -> None:
    assert report.positives == 30 and report.negatives == 30
    assert report.true_positives + report.false_negatives == report.positives
    assert report.false_positives + report.true_negatives == report.negatives
    assert sum(total for _, total in report.recall_by_variation.values()) == report.positives
    assert sum(found for found, _ in report.recall_by_variation.values()) == (report.true_positives)
    assert sum(total for _, total in report.false_positive_rate_by_variation.values()) == (
        report.negatives
    )
    assert report.entity_count == 17
    assert report.threshold == DEFAULT_THRESHOLD


def test_precision_recall_and_f1_come_from_the_confusion_counts(
    report: ScreeningBenchReport,
) -> None:
    precision = report.true_positives / (report.true_positives + report.false_positives)
    recall = report.true_positives / (report.true_positives + report.false_negatives)
    assert report.precision == pytest.approx(precision, abs=1e-4)
    assert report.recall == pytest.approx(recall, abs=1e-4)
    assert report.f1 == pytest.approx(
        2 * report.precision * report.recall / (report.precision + report.recall), abs=1e-4
    )


def test_examples_are_the_errors_they_claim_to_be(report: ScreeningBenchReport) -> None:
    assert len(report.false_positive_examples) == min(report.false_positives, 8)
    assert len(report.false_negative_examples) == min(report.false_negatives, 8)
    for example in report.false_positive_examples:
        assert example.score >= report.threshold
    for example in report.false_negative_examples:
        assert example.score < report.threshold


def test_speed_figures_are_consistent(report: ScreeningBenchReport) -> None:
    assert report.screenings == 300
    assert report.elapsed_s > 0
    assert report.screenings_per_s == pytest.approx(300 / report.elapsed_s, rel=0.01)
    assert 0 < report.p50_ms <= report.p99_ms <= report.max_ms
    assert report.load_s > 0


def test_report_as_dict_says_which_targets_are_met(report: ScreeningBenchReport) -> None:
    result = report.as_dict()
    assert set(result["targets_met"]) == set(report.targets_met)
    assert result["targets_met"]["precision ≥ 0.95"] == (report.precision >= 0.95)


def test_recording_adds_a_row_and_keeps_the_other_sections(
    tmp_path: Path, report: ScreeningBenchReport
) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text("# Benchmarks\n\n## Ingestion\n\nrows\n\n## Withdrawals\n\nmore rows\n")
    record_screening_report(report, path, command="sluice bench screening --record x")
    record_screening_report(report, path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\n## Ingestion\n\nrows\n")
    assert "## Withdrawals\n\nmore rows\n" in text
    assert text.count(SECTION) == 1
    section = text.split(SECTION)[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| 2")]
    assert len(rows) == 2
    assert "`sluice bench screening --record x`" in rows[0]
    assert f"| {report.precision} | {report.recall} |" in rows[1]
    assert section.count("### Latest run") == 1
    assert "CPU" in section or "cores" in section  # the machine


def test_recording_into_a_new_file_creates_it(tmp_path: Path, report: ScreeningBenchReport) -> None:
    path = tmp_path / "new.md"
    record_screening_report(report, path)
    text = path.read_text()
    assert text.startswith("# Benchmarks\n\n" + SECTION)


def test_a_time_boxed_run_screens_until_its_time_is_up(sample_directory: Path) -> None:
    timed = run_screening_bench(
        sample_directory,
        prefix="sample-",
        seconds=0.05,
        seed=5,
        positives_n=10,
        negatives_n=10,
    )
    assert timed.screenings >= 1
    assert timed.elapsed_s >= 0.05
    assert timed.screenings_per_s == pytest.approx(timed.screenings / timed.elapsed_s, rel=0.01)


def test_a_negative_whose_latin_spelling_matches_is_a_namesake_left_out_of_the_precision(
    sample: SanctionsList,
) -> None:
    screen = ListedSanctions(sample)
    names = [
        {"script": "cyrillic", "query": "Дмитрий Хорошев", "listed": "KHOROSHEV, Dmitry Yuryevich"},
        # Matched in its script, and its Latin spelling matches too: a near namesake.
        {
            "script": "cyrillic",
            "query": "Дмитрий Хорошев",
            "listed": None,
            "latin": "Dmitry Khoroshev",
        },
        # Matched in its script, but its Latin spelling does not match: a false positive.
        {"script": "cyrillic", "query": "Артем Лифшиц", "listed": None, "latin": "Ivan Petrov"},
        # No Latin spelling: an ordinary negative.
        {"script": "cyrillic", "query": "Иван Петров", "listed": None},
    ]
    figures = measure_scripts(screen, names)["cyrillic"]
    assert (figures.positives, figures.true_positives) == (1, 1)
    assert (figures.negatives, figures.false_positives, figures.namesakes) == (2, 1, 1)
    assert figures.precision == 0.5
    (namesake,) = figures.namesake_examples
    assert namesake.startswith("Дмитрий Хорошев → ")
    assert "in Latin, Dmitry Khoroshev → KHOROSHEV, Dmitry Yuryevich at " in namesake
    assert figures.false_positive_examples[0].startswith("Артем Лифшиц → LIFSHITS")
