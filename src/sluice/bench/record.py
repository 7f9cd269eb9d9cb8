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


def insert_table_row(path: Path, section: str, header: str, row: str) -> None:
    """Add ``row`` to the table under ``section`` in ``path`` (the file, the section and its
    ``header`` are made on first use), right after the table's last row: everything else in the
    file, prose under the table included, stays in place."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if section not in text:
        text = text.rstrip("\n") + f"\n\n{section}\n\n{header}"
    head, _, tail = text.partition(section)
    lines = tail.splitlines(keepends=True)
    end = next(i for i, line in enumerate(lines) if line.startswith("| date |"))
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    if end == len(lines) and lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    lines.insert(end, row)
    path.write_text(head + section + "".join(lines))
