"""Recording the HTTP API benchmark in ``docs/benchmarks.md``, and ``sluice bench api`` itself."""

from __future__ import annotations

import json
import os
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from sluice.bench.record import machine

from .benchmark import ApiBenchReport, ApiBenchSettings, _read_target_met, measure
from .load import LoadRun
from .settings import READ_P99_TARGET_MS, READS_PER_S_TARGET

SECTION = "## HTTP API (`sluice bench api`)"
HEADER = (
    "| date | machine | db | clients, load generator | server | health req/s (p50 / p99 ms) "
    "| balance req/s (p50 / p99 ms) | balance paced: req/s (p50 / p99 ms) "
    "| withdrawal req/s (p50 / p99 ms) | errors | withdrawals booked / answered 2xx | books "
    "| target | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


_DATED_ROW = re.compile(r"^\| \d{4}-\d{2}-\d{2} \|")


def _figure(run: LoadRun | None) -> str:
    if run is None:
        return "—"
    return f"{run.requests_per_s:,.0f} ({run.p50_ms:.1f} / {run.p99_ms:.1f})"


def _target(met: bool) -> str:
    return f"≥ {READS_PER_S_TARGET:,.0f} reads/s with p99 < {READ_P99_TARGET_MS:.0f} ms: " + (
        "met" if met else "NOT met"
    )


def _details(report: ApiBenchReport) -> str:
    lines = [
        "\n### Latest run\n\n",
        f"{report.clients} clients, {report.duration_s:g} s per run after {report.warmup_s:g} s "
        f"of warm-up; closed loop with {report.tool}",
        (
            f", paced balance reads at {report.paced_rate:,.0f}/s with the Python generator.\n\n"
            if report.paced_rate is not None
            else ".\n\n"
        ),
        "| workers | request | pace | answered | 2xx | other statuses | lost | in flight at end "
        "| socket errors | req/s | p50 ms | p99 ms | max ms | load |\n",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    ]
    for result in report.results:
        for run in result.runs:
            others = ", ".join(
                f"{code} ×{count}" for code, count in run.statuses.items() if code[0] != "2"
            )
            load = (
                f"paced {run.offered_per_s:,.0f}/s ({run.tool})"
                if run.mode == "paced" and run.offered_per_s is not None
                else f"closed ({run.tool})"
            )
            lines.append(
                f"| {run.workers} | {run.scenario} | {load} | {run.answered} | {run.ok} "
                f"| {others or 'none'} | {run.lost} | {run.in_flight} | {run.socket_errors} "
                f"| {run.requests_per_s:,.1f} | {run.p50_ms} | {run.p99_ms} | {run.max_ms} "
                f"| {run.load_1m if run.load_1m is not None else '—'} |\n"
            )
    lines.append("\n")
    for result in report.results:
        check = result.withdrawals
        lines.append(
            f"* {result.workers} worker(s): {check.sent} withdrawal requests (warm-up included), "
            f"{check.answered_ok} answered 2xx, {check.answered_failed} refused, "
            f"{check.resent} left without an answer (in flight when a run stopped, or lost) "
            f"sent again with their key ({check.resent_booked_before} had been booked); "
            f"{check.recorded} withdrawals recorded — {check.missing} missing, "
            f"{check.unexpected} unexpected; books "
            f"{'balance' if check.books_balance else 'BROKEN'}.\n"
        )
    return "".join(lines)


def record_api_report(report: ApiBenchReport, path: Path, *, command: str) -> None:
    """Add a row per worker count to the table of the "HTTP API" section of ``path`` (created
    the first time, at the end) and rewrite the "Latest run" details under it; any other prose
    in the section (after the details) and the rest of the file are kept."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head, found, tail = text.partition(SECTION)
    rows: list[str] = []
    prose = ""
    rest = ""
    if found:
        section, separator, after = tail.partition("\n## ")
        rest = separator + after if separator else ""
        rows = [line + "\n" for line in section.splitlines() if _DATED_ROW.match(line)]
        # Prose written under the details is kept: it starts at the first "### " heading that
        # is not the details' own.
        for marker in section.split("\n### ")[1:]:
            if not marker.startswith("Latest run"):
                prose += "\n### " + marker
        prose = prose.rstrip("\n") + "\n" if prose else ""
    else:
        head = text.rstrip("\n") + "\n\n"
    stamp = f"{datetime.now(UTC):%Y-%m-%d}"
    where = f"{machine()}, load {os.getloadavg()[0]:.1f}"
    for result in report.results:
        check = result.withdrawals
        errors = sum(run.errors for run in result.runs)
        rows.append(
            f"| {stamp} | {where} | {report.db} | {report.clients} clients, {report.tool} "
            f"| {report.server} × {result.workers} | {_figure(result.run('health'))} "
            f"| {_figure(result.run('balance'))} | {_figure(result.run('balance', 'paced'))} "
            f"| {_figure(result.run('withdrawal'))} | {errors} "
            f"| {check.recorded} / {check.answered_ok}"
            f"{'' if check.exact else ' MISMATCH'} "
            f"| {'balance' if check.books_balance else 'BROKEN'} "
            f"| {_target(_read_target_met(result, report.paced_rate))} "
            f"| `{command}` |\n"
        )
    body = f"{SECTION}\n\n{HEADER}{''.join(rows)}{_details(report)}{prose}"
    path.write_text(head + body + ("\n" + rest.lstrip("\n") if rest else ""))


def bench_command(settings: ApiBenchSettings, record: Path | None) -> ApiBenchReport:
    """``sluice bench api``: measure, print the figures as JSON, record them when asked."""
    report = measure(settings)
    sys.stdout.write(json.dumps(report.as_dict(), default=str) + "\n")
    if record is not None:
        command = " ".join(["sluice", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None
        record_api_report(report, record, command=command or "sluice bench api")
    return report
