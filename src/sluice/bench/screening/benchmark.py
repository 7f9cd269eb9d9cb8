"""Running the screening benchmark: load the list, screen for speed on one core, then for quality.

:func:`run_screening_bench` returns a :class:`ScreeningBenchReport` with the figures and the
targets they are judged against.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sluice.screening.index import DEFAULT_THRESHOLD
from sluice.screening.lists import load_list
from sluice.screening.screen import ListedSanctions

from .labelled import build_labelled_set
from .scripts import CHECK_SET, SCRIPTS_SET, ScriptFigures, load_scripts_set, measure_scripts

SCREENINGS_PER_S_TARGET = 1_000.0
PRECISION_TARGET = 0.95
RECALL_TARGET = 0.90
EXAMPLES_MAX = 8
SCREENINGS_MAX = 10_000_000
"""The bound on a time-boxed run (``seconds``)."""
DEFAULT_SEED = 20_251_121
"""The seed reported; the scoring was tuned on other seeds (1, 2, 3)."""


@dataclass(frozen=True, slots=True)
class Example:
    query: str
    variation: str
    source_name: str | None
    matched_name: str | None
    score: float


@dataclass(frozen=True, slots=True)
class ScreeningBenchReport:
    list_source: str
    entity_count: int
    name_count: int
    address_count: int
    load_s: float
    seed: int
    threshold: float
    positives: int
    negatives: int
    screenings: int
    elapsed_s: float
    screenings_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    pinned_cpu: int | None
    true_positives: int
    false_negatives: int
    false_positives: int
    true_negatives: int
    precision: float
    recall: float
    f1: float
    wrong_entity: int
    recall_by_variation: dict[str, tuple[int, int]] = field(default_factory=dict)
    false_positive_rate_by_variation: dict[str, tuple[int, int]] = field(default_factory=dict)
    false_positive_examples: tuple[Example, ...] = ()
    false_negative_examples: tuple[Example, ...] = ()
    by_script: dict[str, ScriptFigures] = field(default_factory=dict)
    by_script_check: dict[str, ScriptFigures] = field(default_factory=dict)

    @property
    def targets_met(self) -> dict[str, bool]:
        return {
            f"≥ {SCREENINGS_PER_S_TARGET:,.0f} screenings/s": (
                self.screenings_per_s >= SCREENINGS_PER_S_TARGET
            ),
            f"precision ≥ {PRECISION_TARGET}": self.precision >= PRECISION_TARGET,
            f"recall ≥ {RECALL_TARGET}": self.recall >= RECALL_TARGET,
        }

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["targets_met"] = self.targets_met
        result["by_script_targets_met"] = {
            script: figures.targets_met for script, figures in self.by_script.items()
        }
        result["by_script_check_targets_met"] = {
            script: figures.targets_met for script, figures in self.by_script_check.items()
        }
        return result


@contextmanager
def _one_core() -> Iterator[int | None]:
    """Pin the process to one CPU while measuring (restored afterwards), where possible."""
    getter = getattr(os, "sched_getaffinity", None)
    setter = getattr(os, "sched_setaffinity", None)
    if getter is None or setter is None:
        yield None
        return
    before = getter(0)
    cpu = max(before)
    try:
        setter(0, {cpu})
    except OSError:
        yield None
        return
    try:
        yield cpu
    finally:
        setter(0, before)


def _ratio(numerator: int, denominator: int) -> float:
    return round(numerator / denominator, 4) if denominator else 0.0


def run_screening_bench(
    list_dir: Path,
    *,
    prefix: str | None = "full-",
    count: int = 20_000,
    seconds: float | None = None,
    seed: int = DEFAULT_SEED,
    positives_n: int = 1_500,
    negatives_n: int = 1_500,
    threshold: float = DEFAULT_THRESHOLD,
    scripts_set: Path | None = SCRIPTS_SET,
    check_set: Path | None = CHECK_SET,
) -> ScreeningBenchReport:
    """Load the list, build the labelled set, screen ``count`` queries for speed — or as many
    as fit in ``seconds`` when given (at most ``SCREENINGS_MAX``) — and every labelled name once
    for quality (see the module docstring); then the names written in other scripts of
    ``scripts_set`` (skipped when None or absent), per script (:mod:`.scripts`)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if seconds is not None and seconds <= 0:
        raise ValueError("seconds must be positive")
    started = time.perf_counter()
    sanctions_list = load_list(Path(list_dir), prefix)
    load_s = time.perf_counter() - started
    screen = ListedSanctions(sanctions_list, threshold=threshold)
    labelled = build_labelled_set(sanctions_list, seed, positives_n, negatives_n)
    queries = [item.query for item in labelled]

    latencies_ns: list[int] = []
    with _one_core() as cpu:
        clock = time.perf_counter_ns
        stream_started = clock()
        deadline = stream_started + int(seconds * 1e9) if seconds is not None else None
        limit = SCREENINGS_MAX if deadline is not None else count
        for position in range(limit):
            query = queries[position % len(queries)]
            before = clock()
            screen.screen_name(query)
            after = clock()
            latencies_ns.append(after - before)
            if deadline is not None and after >= deadline:
                break
        elapsed_s = (clock() - stream_started) / 1e9
    count = len(latencies_ns)

    true_positives = false_negatives = false_positives = true_negatives = wrong_entity = 0
    by_variation: dict[str, list[int]] = {}
    negatives_by_kind: dict[str, list[int]] = {}
    false_positive_examples: list[Example] = []
    false_negative_examples: list[Example] = []
    for item in labelled:
        result = screen.screen_name(item.query)
        example = Example(
            item.query, item.variation, item.source_name, result.matched_name, result.score
        )
        if item.listed:
            tally = by_variation.setdefault(item.variation.split("+")[0], [0, 0])
            tally[1] += 1
            if result.match:
                true_positives += 1
                tally[0] += 1
                wrong_entity += result.entity_id != item.entity_id
            else:
                false_negatives += 1
                if len(false_negative_examples) < EXAMPLES_MAX:
                    false_negative_examples.append(example)
        else:
            tally = negatives_by_kind.setdefault(item.variation, [0, 0])
            tally[1] += 1
            if result.match:
                false_positives += 1
                tally[0] += 1
                if len(false_positive_examples) < EXAMPLES_MAX:
                    false_positive_examples.append(example)
            else:
                true_negatives += 1
    by_script: dict[str, ScriptFigures] = {}
    by_script_check: dict[str, ScriptFigures] = {}
    with _one_core():
        if scripts_set is not None and Path(scripts_set).exists():
            by_script = measure_scripts(screen, load_scripts_set(Path(scripts_set)))
        if check_set is not None and Path(check_set).exists():
            by_script_check = measure_scripts(screen, load_scripts_set(Path(check_set)))
    precision = _ratio(true_positives, true_positives + false_positives)
    recall = _ratio(true_positives, true_positives + false_negatives)
    f1 = round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0
    ordered = sorted(latencies_ns)
    return ScreeningBenchReport(
        list_source=sanctions_list.source,
        entity_count=sanctions_list.entity_count,
        name_count=sanctions_list.name_count,
        address_count=sanctions_list.address_count,
        load_s=round(load_s, 3),
        seed=seed,
        threshold=threshold,
        positives=sum(1 for item in labelled if item.listed),
        negatives=sum(1 for item in labelled if not item.listed),
        screenings=count,
        elapsed_s=round(elapsed_s, 6),
        screenings_per_s=round(count / elapsed_s, 1) if elapsed_s else 0.0,
        p50_ms=round(statistics.median(ordered) / 1e6, 3),
        p99_ms=round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6, 3),
        max_ms=round(ordered[-1] / 1e6, 3),
        pinned_cpu=cpu,
        true_positives=true_positives,
        false_negatives=false_negatives,
        false_positives=false_positives,
        true_negatives=true_negatives,
        precision=precision,
        recall=recall,
        f1=f1,
        wrong_entity=wrong_entity,
        recall_by_variation={kind: (found, total) for kind, (found, total) in by_variation.items()},
        false_positive_rate_by_variation={
            kind: (found, total) for kind, (found, total) in negatives_by_kind.items()
        },
        false_positive_examples=tuple(false_positive_examples),
        false_negative_examples=tuple(false_negative_examples),
        by_script=by_script,
        by_script_check=by_script_check,
    )
