"""The Bitcoin custody benchmark (:mod:`sluice.bench.bitcoin`) on the in-memory chain.

A tiny run (3 blocks of 40 outputs, 4 of them to customers' deposit addresses, one round, one
signing per input count) through :func:`bench_command`: the JSON line carries every figure the
issue asks for, consistent with the blocks made (outputs counted back from the chain, every
custody output found by the watcher, the ratio is watcher ÷ raw, a signing time per input count)
and no wall-clock bound is asserted. Recording adds a row to the section's table (made on first
use) and keeps the rest of the file, the prose under the table included. ``sluice bench bitcoin``
run as a program prints the JSON line alone on stdout (the watcher's log lines go to stderr).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sluice.bench.bitcoin import (
    HEADER,
    SECTION,
    SIGN_INPUTS,
    BitcoinBenchSettings,
    append_bitcoin_result,
    bench_command,
)

TINY = BitcoinBenchSettings(
    blocks=3,
    outputs_per_block=40,
    custody_per_block=4,
    customers=10,
    rounds=1,
    sign_runs=1,
    node="in-memory",
)
KEYS = {
    "node",
    "blocks",
    "outputs",
    "custody_outputs",
    "watcher_blocks_per_s",
    "raw_blocks_per_s",
    "ratio",
    "sign_ms",
    "libsecp256k1",
    "ratio_target_met",
    "sign_target_met",
}
EARLIER = (
    "# Benchmarks\n\n## Ingestion (`sluice bench ingest`)\n\n"
    "| date | machine | db |\n|---|---|---|\n| 2026-01-01 | box | sqlite |\n\n"
    "Ingestion prose that must stay.\n"
)


@pytest.fixture(scope="module")
def result() -> dict[str, Any]:
    return bench_command(TINY)


def check_line(line: dict[str, Any], settings: BitcoinBenchSettings) -> None:
    assert line.keys() >= KEYS
    assert line["blocks"] == settings.blocks
    # Each block: the payment's outputs and the coinbase's (at least one).
    assert line["outputs"] >= settings.blocks * (settings.outputs_per_block + 1)
    assert line["outputs"] < settings.blocks * (settings.outputs_per_block + 5)
    assert line["custody_outputs"] == settings.blocks * settings.custody_per_block
    assert line["raw_blocks_per_s"] > 0
    assert line["watcher_blocks_per_s"] > 0
    expected = line["watcher_blocks_per_s"] / line["raw_blocks_per_s"]
    assert line["ratio"] == pytest.approx(expected, rel=0.05, abs=0.002)
    assert len(line["raw_rounds_per_s"]) == len(line["watcher_rounds_per_s"]) == settings.rounds
    assert list(line["sign_ms"]) == [str(count) for count in settings.sign_inputs]
    assert all(ms > 0 for ms in line["sign_ms"].values())
    assert line["libsecp256k1"] is True  # the wallet refuses to start without it
    # The ratio's target is against a node's RPC; the in-memory chain has none.
    assert line["ratio_target_met"] is None


def test_tiny_run_measures_every_figure(result: dict[str, Any]) -> None:
    check_line(result, TINY)
    assert result["node"] == "in-memory"
    assert list(result["sign_ms"]) == ["1", "10", "100"] == [str(n) for n in SIGN_INPUTS]
    assert result["sign_target_met"] == (result["sign_ms"]["100"] < 500)


def test_the_printed_line_is_the_result(capsys: pytest.CaptureFixture[str]) -> None:
    settings = BitcoinBenchSettings(
        blocks=2,
        outputs_per_block=10,
        custody_per_block=2,
        customers=4,
        rounds=2,
        sign_inputs=(1, 2),
        sign_runs=2,
        node="in-memory",
    )
    line = bench_command(settings)
    check_line(line, settings)
    # In process the watcher logs where the test's logging sends it; the JSON line is one line.
    printed = [text for text in capsys.readouterr().out.splitlines() if text.startswith("{")]
    assert [json.loads(text) for text in printed] == [line]


def test_recording_adds_rows_and_keeps_the_file(tmp_path: Path, result: dict[str, Any]) -> None:
    path = tmp_path / "benchmarks.md"
    path.write_text(EARLIER)
    append_bitcoin_result(path, result, command="sluice bench bitcoin --record x")
    # Prose under the table stays below the rows added later.
    path.write_text(path.read_text() + "\nWhat the figures mean.\n")
    append_bitcoin_result(path, result, command="sluice bench bitcoin --record x")
    text = path.read_text()
    assert text.startswith(EARLIER)
    section = text.split(SECTION, 1)[1]
    assert HEADER in section
    rows = [line for line in section.splitlines() if line.startswith("| 20")]
    assert len(rows) == 2
    cells = [cell.strip() for cell in rows[0].strip().strip("|").split("|")]
    assert cells[2] == "in-memory"
    assert cells[3] == f"3 × {result['outputs_per_block']:,.0f}"
    assert cells[6] == str(result["ratio"])
    assert cells[8].startswith("ratio ≥ 0.5: n/a (no node); 100 inputs < 500 ms: ")
    assert section.index(rows[1]) < section.index("What the figures mean.")


def test_settings_refuse_what_cannot_be_paid() -> None:
    with pytest.raises(ValueError, match="custody outputs"):
        BitcoinBenchSettings(custody_per_block=11, customers=10)
    with pytest.raises(ValueError, match="node"):
        BitcoinBenchSettings(node="bitcoind")


def test_the_command_prints_one_json_line(tmp_path: Path) -> None:
    program = Path(sys.executable).with_name("sluice")
    record = tmp_path / "benchmarks.md"
    completed = subprocess.run(
        [
            str(program),
            "bench",
            "bitcoin",
            "--node",
            "in-memory",
            "--blocks",
            "2",
            "--outputs",
            "12",
            "--custody",
            "3",
            "--rounds",
            "1",
            "--sign-runs",
            "1",
            "--record",
            str(record),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 1, completed.stdout
    line = json.loads(lines[0])
    assert line["blocks"] == 2
    assert line["custody_outputs"] == 6
    assert SECTION in record.read_text()
