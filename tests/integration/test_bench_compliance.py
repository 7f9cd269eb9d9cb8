"""The compliance benchmark (:mod:`sluice.bench.compliance`, ``sluice bench compliance``).

A small run through the command line on SQLite prints exactly one JSON line of the documented
shape and appends one row per engine to the Markdown file, keeping what the file held; the same
measurement on each engine (smaller histories) gives one figure per history size, every request
of which went through the service and was booked.
"""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from typer.testing import CliRunner

from sluice.bench.compliance import (
    SECTION,
    EngineResult,
    append_compliance_result,
    bench_command,
    customer_for,
)
from sluice.cli import app
from sluice.store import tables as t

KEYS = ["engine", "history_ops", "request_ms_p50", "request_ms_p99", "ratio_10000_to_10"]
EARLIER = (
    "# Benchmarks\n\n## Ingestion (`sluice bench ingest`)\n\nIngestion prose that must stay.\n"
)


def test_the_command_prints_one_json_line_of_the_documented_shape_and_records_it(
    tmp_path: Path,
) -> None:
    record = tmp_path / "benchmarks.md"
    record.write_text(EARLIER)
    url = f"sqlite:///{tmp_path / 'compliance.db'}"
    result = CliRunner().invoke(
        app,
        [
            "bench",
            "compliance",
            "--engines",
            "sqlite",
            "--sqlite",
            url,
            "--requests",
            "2",
            "--record",
            str(record),
        ],
    )
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1
    figures = json.loads(lines[0])
    assert list(figures) == KEYS
    assert figures["engine"] == "sqlite"
    assert figures["history_ops"] == [10, 1000, 10000]
    for name in ("request_ms_p50", "request_ms_p99"):
        assert len(figures[name]) == 3
        assert all(isinstance(value, float) and value > 0 for value in figures[name])
    p50 = figures["request_ms_p50"]
    assert figures["ratio_10000_to_10"] == round(p50[2] / p50[0], 3)

    text = record.read_text()
    assert text.startswith(EARLIER.rstrip("\n"))
    rows = [line for line in text.split(SECTION, 1)[1].splitlines() if line.startswith("| 20")]
    assert len(rows) == 1
    assert "| sqlite | 10 / 1,000 / 10,000 |" in rows[0]


def test_every_timed_request_went_through_the_service_and_was_booked(database_url: str) -> None:
    history = (10, 50, 100)
    (result,) = bench_command([database_url], requests=3, history=history)
    assert result.history_ops == list(history)
    assert len(result.request_ms_p50) == len(result.request_ms_p99) == 3
    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            for size in history:
                customer = customer_for(size)
                withdrawals = connection.execute(
                    sa.select(sa.func.count())
                    .select_from(t.withdrawals)
                    .where(t.withdrawals.c.customer_id == customer)
                ).scalar_one()
                usage = connection.execute(
                    sa.select(sa.func.count())
                    .select_from(t.compliance_usage)
                    .where(t.compliance_usage.c.customer_id == customer)
                ).scalar_one()
                assert withdrawals == 5 + 3  # warm-up and timed requests
                assert usage == size + withdrawals
    finally:
        engine.dispose()


def test_a_recorded_row_goes_under_the_last_row_and_keeps_the_prose_below_the_table(
    tmp_path: Path,
) -> None:
    record = tmp_path / "benchmarks.md"
    record.write_text(EARLIER)
    figures = EngineResult("sqlite", [10, 1000, 10000], [5.0, 5.1, 5.2], [7.0, 7.1, 7.2], 1.04)
    append_compliance_result(record, figures, command="first")
    record.write_text(record.read_text() + "\nProse under the table.\n\n## Next section\n")
    slower = EngineResult("postgresql", [10, 1000, 10000], [9.0, 9.5, 12.0], [20, 21, 30], 1.333)
    append_compliance_result(record, slower, command="second")

    section = record.read_text().split(SECTION, 1)[1]
    lines = section.splitlines()
    rows = [index for index, line in enumerate(lines) if line.startswith("| 20")]
    assert len(rows) == 2 and rows[1] == rows[0] + 1
    assert "`first`" in lines[rows[0]] and "ratio ≤ 1.3: met" in lines[rows[0]]
    assert "`second`" in lines[rows[1]] and "ratio ≤ 1.3: NOT met" in lines[rows[1]]
    assert lines.index("Prose under the table.") > rows[1]
    assert section.rstrip().endswith("## Next section")
