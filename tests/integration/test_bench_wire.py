"""``sluice bench wire``: ingestion of one stream in process, over WebSocket and over the HTTP list
form from ``sluice ledger serve`` in its own process — every way ingests the whole stream with the
books balancing, and the figures land under their table in the benchmarks page.

A short stream (a smoke test of the benchmark, not a measurement).
"""

from __future__ import annotations

from pathlib import Path

from sluice.bench.wire import MARKER, measure, record


def test_the_three_ways_ingest_the_same_stream_and_are_recorded(tmp_path: Path) -> None:
    result = measure(300, 1, tmp_path / "bench")
    assert result.updates >= 300
    assert result.books_balance
    assert min(result.in_process_per_s, result.websocket_per_s, result.http_list_per_s) > 0
    # the ratio is taken from the unrounded rates, the rates shown to one decimal
    assert abs(result.ratio - result.websocket_per_s / result.in_process_per_s) < 0.002

    page = tmp_path / "benchmarks.md"
    page.write_text("# Benchmarks\n\n## Earlier\n\ntext\n")
    record(page, result, "sluice bench wire --updates 300")
    record(page, result, "sluice bench wire --updates 300 --rounds 1")
    text = page.read_text()
    assert text.count(MARKER) == 1
    rows = [line for line in text.splitlines() if line.startswith("| 20")]
    assert len(rows) == 2
    assert "`sluice bench wire --updates 300 --rounds 1`" in rows[1]
    assert "## Earlier" in text
