"""NATS JetStream for the events tests: the server CI runs at 127.0.0.1:4222 (skipped when
absent, failing under ``CI=true``), a stream and a subject prefix of each test's own (a stream's
subjects may not overlap another's; deleted afterwards), and a NATS server of a test's own that
it can stop and start again on the same port and store."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest

from sluice.domain.events import Event, decode_event
from tests.conftest import missing

NATS_URL = os.environ.get("SLUICE_TEST_NATS_URL", "nats://127.0.0.1:4222")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"


def _reachable(url: str) -> bool:
    host_port = url.split("://", 1)[-1].rsplit("@", 1)[-1]
    host, _, port = host_port.partition(":")
    try:
        with socket.create_connection((host, int(port or 4222)), timeout=2):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class NatsTarget:
    """Where a test publishes: the server, its own stream and subject prefix."""

    url: str
    stream: str
    prefix: str  # e.g. "t1a2b3c." before "sluice.>"

    @property
    def subjects(self) -> str:
        return f"{self.prefix}sluice.>"

    def config_toml(self, *, database_url: str | None = None, **extra: object) -> str:
        lines = ["[events]", 'bus = "nats"', f'nats_url = "{self.url}"']
        lines += [f'stream = "{self.stream}"', f'subject_prefix = "{self.prefix}"']
        lines += [f"{key} = {_toml(value)}" for key, value in extra.items()]
        text = "\n".join(lines) + "\n"
        if database_url is not None:
            text = f'[database]\nurl = "{database_url}"\n\n' + text
        return text


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


async def _delete_stream(url: str, stream: str) -> None:
    nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        with contextlib.suppress(Exception):
            await js.delete_stream(stream)
    finally:
        await nc.close()


@pytest.fixture
def nats_target() -> Iterator[NatsTarget]:
    if not _reachable(NATS_URL):
        missing(f"NATS JetStream at {NATS_URL}")
    tag = uuid.uuid4().hex[:10]
    target = NatsTarget(NATS_URL, f"TEST_{tag}", f"t{tag}.")
    try:
        yield target
    finally:
        asyncio.run(_delete_stream(NATS_URL, target.stream))


Message = tuple[int, str, Event, str | None]


async def read_stream(
    url: str, stream: str, subjects: str, *, expect: int, wait_s: float = 20.0
) -> list[Message]:
    """Every message of ``stream`` from its start: (stream seq, subject, event, Nats-Msg-Id),
    read by an ordered consumer until ``expect`` arrived or nothing more came for a while."""
    nc = await nats.connect(url, connect_timeout=3)
    try:
        js = nc.jetstream()
        sub = await js.subscribe(subjects, stream=stream, ordered_consumer=True)
        out: list[Message] = []
        deadline = time.monotonic() + wait_s
        while len(out) < expect and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except Exception:
                continue
            msg_id = (msg.headers or {}).get("Nats-Msg-Id")
            out.append((msg.metadata.sequence.stream, msg.subject, decode_event(msg.data), msg_id))
        # Anything beyond what was expected (a duplicate would show here).
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                break
            msg_id = (msg.headers or {}).get("Nats-Msg-Id")
            out.append((msg.metadata.sequence.stream, msg.subject, decode_event(msg.data), msg_id))
        await sub.unsubscribe()
        return out
    finally:
        await nc.close()


async def stream_state(url: str, stream: str) -> Any:
    nc = await nats.connect(url, connect_timeout=3)
    try:
        return (await nc.jetstream().stream_info(stream)).state
    finally:
        await nc.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnNatsServer:
    """``nats-server -js`` on a free port with a store directory; :meth:`stop` kills it,
    :meth:`start` runs it again on the same port and store."""

    def __init__(self, store: Path) -> None:
        if not Path(NATS_SERVER).exists():
            missing(f"the nats-server binary ({NATS_SERVER})")
        self.port = free_port()
        self.store = store
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [NATS_SERVER, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 15
        while not _reachable(self.url):
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"nats-server did not start on {self.port}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait(10)


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[OwnNatsServer]:
    server = OwnNatsServer(tmp_path / "jetstream")
    server.start()
    try:
        yield server
    finally:
        server.stop()
