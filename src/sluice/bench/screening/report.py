"""Recording the screening benchmark in ``docs/benchmarks.md``, and ``sluice bench screening``."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from sluice.bench.record import machine

from .benchmark import DEFAULT_SEED, Example, ScreeningBenchReport, run_screening_bench
from .scripts import (
    COMPARISON,
    SCRIPT_PRECISION_TARGET,
    SCRIPT_RECALL_TARGET,
    SETS_NOTE,
    ScriptFigures,
)

SECTION = "## Sanctions screening (`sluice bench screening`)"
HEADER = (
    "| date | machine | list | load s | screenings | screenings/s | p50 / p99 ms "
    "| positives / negatives (seed) | threshold | precision | recall | F1 | targets | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def _targets(report: ScreeningBenchReport) -> str:
    return "; ".join(
        f"{target}: {'met' if met else 'NOT met'}" for target, met in report.targets_met.items()
    )


def _examples(title: str, examples: Sequence[Example]) -> str:
    if not examples:
        return f"* {title}: none\n"
    lines = [f"* {title}:\n"]
    for example in examples:
        lines.append(
            f"  * `{example.query}` ({example.variation}; from `{example.source_name}`) → "
            f"`{example.matched_name}` at {example.score:.1f}\n"
        )
    return "".join(lines)


def _script_table(title: str, by_script: dict[str, ScriptFigures]) -> list[str]:
    lines = [
        f"\n### {title}\n\n",
        "| script | positives / negatives | precision | recall | wrong entity | screenings/s "
        f"| precision ≥ {SCRIPT_PRECISION_TARGET}, recall ≥ {SCRIPT_RECALL_TARGET} |\n",
        "|---|---|---|---|---|---|---|\n",
    ]
    for figures in by_script.values():
        lines.append(
            f"| {figures.script} | {figures.positives} / {figures.negatives} "
            f"| {figures.precision} | {figures.recall} | {figures.wrong_entity} "
            f"| {figures.screenings_per_s} | {'met' if figures.targets_met else 'NOT met'} |\n"
        )
    for figures in by_script.values():
        for kind, examples in (
            ("false negatives", figures.false_negative_examples),
            ("false positives", figures.false_positive_examples),
            ("near namesakes (left out of the precision)", figures.namesake_examples),
        ):
            if examples:
                lines.append(f"* {figures.script} {kind}: " + "; ".join(examples) + "\n")
    if not any(
        figures.false_negative_examples or figures.false_positive_examples
        for figures in by_script.values()
    ):
        lines.append("* No false positives or false negatives.\n")
    return lines


def _scripts(report: ScreeningBenchReport) -> str:
    """The per-script tables (names written in their own script), when the run measured them."""
    if not report.by_script and not report.by_script_check:
        return ""
    lines: list[str] = []
    if report.by_script:
        lines += _script_table(
            "Names written in other scripts: development set (`tests/data/screening/scripts.json`)",
            report.by_script,
        )
    if report.by_script_check:
        lines += _script_table(
            "Names written in other scripts: check set (`tests/data/screening/scripts-check.json`)",
            report.by_script_check,
        )
    lines.append(f"\n* {SETS_NOTE}\n* {COMPARISON}\n")
    return "".join(lines)


def record_screening_report(
    report: ScreeningBenchReport, path: Path, *, command: str = "sluice bench screening"
) -> None:
    """Add a row for ``report`` to the table of the "Sanctions screening" section of ``path``
    (created the first time) and rewrite the section's details below the table with this run's
    breakdown; the rest of the file is kept as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head, found, tail = text.partition(SECTION)
    rows: list[str] = []
    rest = ""
    if found:
        section, separator, after = tail.partition("\n## ")
        rest = separator + after if separator else ""
        rows = [line + "\n" for line in section.splitlines() if line.startswith("| 2")]
    else:
        head = text.rstrip("\n") + "\n\n"
    source = Path(report.list_source.split(" (")[0]).name or report.list_source
    rows.append(
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine()}, load {os.getloadavg()[0]:.1f}"
        f"{f', pinned to CPU {report.pinned_cpu}' if report.pinned_cpu is not None else ''} "
        f"| {source}: {report.entity_count} entities, {report.name_count} names "
        f"| {report.load_s} | {report.screenings} | {report.screenings_per_s} "
        f"| {report.p50_ms} / {report.p99_ms} "
        f"| {report.positives} / {report.negatives} ({report.seed}) | {report.threshold} "
        f"| {report.precision} | {report.recall} | {report.f1} | {_targets(report)} "
        f"| `{command}` |\n"
    )
    recall_lines = ", ".join(
        f"{kind} {found}/{total}" for kind, (found, total) in report.recall_by_variation.items()
    )
    negative_lines = ", ".join(
        f"{kind} {found}/{total}"
        for kind, (found, total) in report.false_positive_rate_by_variation.items()
    )
    details = (
        "\n### Latest run\n\n"
        f"* List: {report.list_source}; {report.address_count} digital currency addresses.\n"
        f"* Confusion at threshold {report.threshold}: {report.true_positives} true positives, "
        f"{report.false_negatives} false negatives, {report.false_positives} false positives, "
        f"{report.true_negatives} true negatives; {report.wrong_entity} positives matched "
        "another entity than the one they were made from.\n"
        f"* Recall by variation (found/total, first variation of each name): {recall_lines}.\n"
        f"* False positives by kind of negative (matched/total): {negative_lines}.\n"
        f"* Latency max {report.max_ms} ms over {report.screenings} screenings "
        f"({report.elapsed_s} s).\n"
        + _examples("False positives", report.false_positive_examples)
        + _examples("False negatives", report.false_negative_examples)
        + _scripts(report)
    )
    body = f"{SECTION}\n\n{HEADER}{''.join(rows)}{details}"
    path.write_text(head + body + ("\n" + rest.lstrip("\n") if rest else ""))


def bench_command(
    list_dir: Path,
    *,
    prefix: str | None = "full-",
    count: int = 20_000,
    seconds: float | None = None,
    seed: int = DEFAULT_SEED,
    record: Path | None = None,
) -> ScreeningBenchReport:
    """``sluice bench screening``: measure, print the figures as JSON, record when asked."""
    report = run_screening_bench(list_dir, prefix=prefix, count=count, seconds=seconds, seed=seed)
    sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False, default=str) + "\n")
    if record is not None:
        command = " ".join(["sluice", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None
        record_screening_report(report, record, command=command or "sluice bench screening")
    return report
