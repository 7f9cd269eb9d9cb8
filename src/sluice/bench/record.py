"""Appending measured figures, with the machine and the command, to ``docs/benchmarks.md``."""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HEADER = (
    "| date | machine | db | updates | median bytes | decode floor/s | updates/s | ratio "
    "| live/s | peak RSS MB | books | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def append_result(path: Path, result: dict[str, Any], *, command: str) -> None:
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    marker = "## Ingestion (`sluice bench ingest`)"
    if marker not in text:
        text += f"\n{marker}\n\n{HEADER}"
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine()} | {result['db']} | {result['updates']} "
        f"| {result['median_update_bytes']} | {result['decode_floor_per_s']} "
        f"| {result['updates_per_s']} | {result['ratio']} | {result['live_updates_per_s']} "
        f"| {result['peak_rss_mb']} | {'balance' if result['books_balance'] else 'BROKEN'} "
        f"| `{command}` |\n"
    )
    head, _, tail = text.partition(marker)
    section, sep, rest = tail.partition("\n## ")
    text = head + marker + section.rstrip("\n") + "\n" + row + (sep + rest if sep else "")
    path.write_text(text)
