"""``sluice bench events`` as an operator runs it, against the real NATS JetStream server at
127.0.0.1:4222 (skipped when it is not there, failed under ``CI=true``).

A small run (2,000 events, one bare / relay pair) prints one JSON line with the documented
figures, every event committed to the outbox is marked published (the command itself checks the
stream held them all, or fails), the bench-only stream is deleted afterwards, and ``--record``
adds one row under the benchmark's section, keeping what the file held. Speed is not checked.
"""

from __future__ import annotations

import asyncio
import json
import socket
import uuid
from pathlib import Path

import pytest

from sluice.bench.events import SECTION
from tests.conftest import missing
from tests.e2e.test_cli_over_the_wire import environment, sluice

pytestmark = pytest.mark.slow

NATS_HOST, NATS_PORT = "127.0.0.1", 4222
NATS_URL = f"nats://{NATS_HOST}:{NATS_PORT}"
EVENTS = 2_000
EARLIER = "# Benchmarks\n\n## Ingestion (`sluice bench ingest`)\n\nIngestion prose that stays.\n"


def require_nats() -> None:
    try:
        with socket.create_connection((NATS_HOST, NATS_PORT), timeout=3):
            pass
    except OSError:
        missing(f"NATS with JetStream at {NATS_URL}")


async def _stream_names() -> list[str | None]:
    import nats

    client = await nats.connect(NATS_URL, connect_timeout=3)
    try:
        return [info.config.name for info in await client.jetstream().streams_info()]
    finally:
        await client.close()


def _run(tmp_path: Path, *extra: str) -> tuple[dict[str, object], str, Path]:
    require_nats()
    stream = f"SLUICE_BENCH_TEST_{uuid.uuid4().hex[:8].upper()}"
    record = tmp_path / "benchmarks.md"
    record.write_text(EARLIER)
    done = sluice(
        "bench",
        "events",
        "--events",
        str(EVENTS),
        "--rounds",
        "1",
        "--nats-url",
        NATS_URL,
        "--stream",
        stream,
        "--record",
        str(record),
        *extra,
        env=environment(tmp_path / "data"),
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.output
    return json.loads(lines[0]), stream, record


def _check(figures: dict[str, object], stream: str, record: Path, db: str) -> None:
    assert figures["events"] == EVENTS
    assert figures["published"] == EVENTS
    assert figures["db"] == db
    assert figures["stream"] == stream
    bare, relay = figures["bare_per_s"], figures["events_per_s"]
    assert isinstance(bare, float) and bare > 0
    assert isinstance(relay, float) and relay > 0
    assert figures["ratio"] == round(relay / bare, 3)
    assert len(figures["bare_s"]) == len(figures["relay_s"]) == 1  # type: ignore[arg-type]
    assert figures["max_in_flight"] == 1024 and figures["batch"] == 1000
    assert isinstance(figures["machine"], str) and "cores" in figures["machine"]
    assert 250 <= figures["payload_bytes"] <= 350  # type: ignore[operator]
    assert stream not in asyncio.run(_stream_names())

    text = record.read_text()
    assert text.startswith(EARLIER.rstrip("\n"))
    rows = [line for line in text.split(SECTION, 1)[1].splitlines() if line.startswith("| 20")]
    assert len(rows) == 1
    assert f"| {db} | 2,000 | 1024 | 1000 |" in rows[0]
    assert "`sluice bench events --events 2000" in rows[0]


def test_every_event_of_a_fresh_sqlite_outbox_is_published_and_the_run_recorded(
    tmp_path: Path,
) -> None:
    figures, stream, record = _run(tmp_path)
    _check(figures, stream, record, "sqlite")


@pytest.mark.postgres
def test_the_same_on_postgresql(tmp_path: Path, postgres_url: str) -> None:
    figures, stream, record = _run(tmp_path, "--db", postgres_url)
    _check(figures, stream, record, "postgresql")
