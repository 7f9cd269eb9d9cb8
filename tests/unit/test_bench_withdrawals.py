"""The withdrawal benchmark (:mod:`sluice.bench.withdrawals`): a quick run measures every figure,
prints it as JSON and records it in the Markdown file; recording adds a row to the withdrawals
table and keeps everything else the file holds, in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sluice.bench.withdrawals import (
    HEADER,
    QUICK,
    SECTION,
    WORKER_COUNTS,
    append_withdrawals_result,
    bench_command,
)

INGESTION = (
    "# Benchmarks\n\n## Ingestion (`sluice bench ingest`)\n\n"
    "| date | machine | db |\n|---|---|---|\n| 2026-01-01 | box | sqlite |\n\n"
    "### How to read these figures\n\nIngestion prose that must stay.\n"
)


def withdrawal_rows(text: str) -> list[list[str]]:
    """The cells of the data rows of the withdrawals table."""
    section = text.split(SECTION, 1)[1]
    rows = [line for line in section.splitlines() if line.startswith("| 20")]
    return [[cell.strip() for cell in row.strip().strip("|").split("|")] for row in rows]


def result(ratio: float, p99: float, *, completed: int = 10) -> dict[str, Any]:
    return {
        "db": "sqlite",
        "withdrawals": 10,
        "raw_transfers_per_s": 1000.0,
        "pipeline": [
            {
                "workers": k,
                "withdrawals": 10,
                "requests_per_s": 50.0 + k,
                "withdrawals_per_s": 100.0 * k,
                "rounds": 2,
                "completed": completed,
                "books_balance": True,
            }
            for k in WORKER_COUNTS
        ],
        "best_withdrawals_per_s": 400.0,
        "ratio": ratio,
        "selection_holdings": 10_000,
        "selection_runs": 100,
        "selection_p50_ms": 1.5,
        "selection_p99_ms": p99,
        "all_completed": completed == 10,
    }


@pytest.mark.slow
def test_a_quick_run_measures_and_records_every_figure(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record = tmp_path / "b.md"
    record.write_text(INGESTION)
    bench_command(record=record, quick=True)
    figures = json.loads(capsys.readouterr().out)

    assert figures["db"] == "sqlite"
    assert figures["withdrawals"] == QUICK.withdrawals
    assert [run["workers"] for run in figures["pipeline"]] == list(WORKER_COUNTS)
    for run in figures["pipeline"]:
        assert run["completed"] == run["withdrawals"] == QUICK.withdrawals
        assert run["books_balance"] is True
        assert run["withdrawals_per_s"] > 0 and run["requests_per_s"] > 0
    assert figures["all_completed"] is True
    raw = figures["raw_transfers_per_s"]
    best = max(run["withdrawals_per_s"] for run in figures["pipeline"])
    assert raw > 0 and figures["best_withdrawals_per_s"] == best
    assert figures["ratio"] == pytest.approx(best / raw, abs=0.002)
    assert figures["selection_holdings"] == QUICK.selection_holdings
    assert 0 < figures["selection_p50_ms"] <= figures["selection_p99_ms"]

    text = record.read_text()
    assert text.startswith(INGESTION.rstrip("\n"))  # what the file held is kept
    assert HEADER in text
    (row,) = withdrawal_rows(text)
    rates = " / ".join(str(run["withdrawals_per_s"]) for run in figures["pipeline"])
    assert row[2:9] == [
        "sqlite",
        str(QUICK.withdrawals),
        str(raw),
        str(min(run["requests_per_s"] for run in figures["pipeline"])),
        rates,
        str(figures["ratio"]),
        f"{figures['selection_p50_ms']} / {figures['selection_p99_ms']} "
        f"({QUICK.selection_holdings})",
    ]
    assert "ratio ≥ 0.5:" in row[9] and "p99 < 20 ms:" in row[9]
    assert row[10] == "balance"
    assert row[11] == f"`sluice bench withdrawals --quick --record {record}`"


def test_rows_go_under_the_table_before_the_prose_and_say_which_targets_are_missed(
    tmp_path: Path,
) -> None:
    record = tmp_path / "b.md"
    record.write_text(INGESTION)
    append_withdrawals_result(record, result(0.7, 3.0), command="first")
    text = record.read_text()
    record.write_text(text + "\n### Against the targets\n\nWithdrawal prose that must stay.\n")
    append_withdrawals_result(record, result(0.1, 25.0, completed=9), command="second")
    text = record.read_text()

    assert text.startswith(INGESTION.rstrip("\n"))
    assert text.count(SECTION) == 1
    first, second = withdrawal_rows(text)
    assert first[9] == "ratio ≥ 0.5: met; p99 < 20 ms: met" and first[11] == "`first`"
    assert second[9] == "ratio ≥ 0.5: NOT met; p99 < 20 ms: NOT met"
    assert second[6] == "incomplete / incomplete / incomplete"  # never a rate for a failed run
    # The second row sits right under the first, and the prose stays below the table.
    assert text.index("`second`") < text.index("Withdrawal prose that must stay.")
    assert text.rstrip().endswith("Withdrawal prose that must stay.")
    assert "Ingestion prose that must stay." in text.split(SECTION, 1)[0]
