"""The Python load generator: closed-loop or paced clients, each on its own keep-alive connection.

Paced clients measure latency from each request's due time, so a late answer's wait counts (no
coordinated omission).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx

from .load import ClientTally, RawRun, Request, _percentile, idempotency_key
from .settings import DRAIN_S, LATENCIES_MAX, REQUEST_TIMEOUT_S


class HttpConnection:
    """One keep-alive HTTP/1.1 connection that sends prepared requests and reads the status and
    the ``Content-Length`` body of each answer; a few microseconds of Python per request, so the
    generator leaves the CPU to the server it measures."""

    def __init__(self, host: str, port: int) -> None:
        self._host = host
        self._port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def exchange(self, data: bytes) -> int:
        """Send ``data`` and return the answer's status; :class:`ConnectionError` when the
        connection fails (it is closed then, and opened again by the next call)."""
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self._host, self._port)
            assert self._reader is not None
            self._writer.write(data)
            line = await self._reader.readline()
            if not line:
                raise ConnectionError("the server closed the connection")
            status = int(line.split(b" ", 2)[1])
            length = 0
            keep = True
            while True:
                header = await self._reader.readline()
                if header in (b"\r\n", b""):
                    break
                name, _, value = header.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    keep = False
                elif name == b"transfer-encoding":
                    raise ConnectionError("chunked answers are not read by this client")
            if length:
                await self._reader.readexactly(length)
            if not keep:
                self.close()
            return status
        except (OSError, ValueError, IndexError, asyncio.IncompleteReadError) as exc:
            self.close()
            raise ConnectionError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._reader = self._writer = None


def _encode(request: Request, host: str, key: str | None) -> bytes:
    lines = [f"{request.method} {request.path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{name}: {value}" for name, value in request.headers]
    if key is not None:
        lines.append(f"Idempotency-Key: {key}")
    body = (request.body or "").encode()
    if request.body is not None:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _python_run(
    base: str,
    requests: Sequence[Request],
    *,
    run: str,
    duration_s: float,
    rate: float | None,
) -> RawRun:
    split = httpx.URL(base)
    host, port = split.host, split.port or 80
    authority = f"{host}:{port}"
    connections = [HttpConnection(host, port) for _ in requests]
    tallies = [ClientTally(client=index + 1) for index in range(len(requests))]
    latencies: list[float] = []
    socket_errors = 0
    clients = len(requests)
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + duration_s
    last_answer = started

    async def client(index: int) -> None:
        nonlocal socket_errors, last_answer
        request, tally, connection = requests[index], tallies[index], connections[index]
        fixed = None if request.keyed else _encode(request, authority, None)
        n = 0
        while True:
            due = started + (n * clients + index) / rate if rate is not None else loop.time()
            if due >= deadline or loop.time() > deadline + DRAIN_S:
                return  # the schedule is done, or the server fell hopelessly behind it
            n += 1
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            key = idempotency_key(run, tally.client, n) if request.keyed else None
            data = fixed if fixed is not None else _encode(request, authority, key)
            tally.sent += 1
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    status = await connection.exchange(data)
            except (ConnectionError, TimeoutError):
                socket_errors += 1
                connection.close()
                tally.unanswered.append(key if key is not None else str(n))
                continue
            now = loop.time()
            last_answer = max(last_answer, now)
            if len(latencies) < LATENCIES_MAX:
                latencies.append((now - due) * 1000)
            code = str(status)
            tally.statuses[code] = tally.statuses.get(code, 0) + 1
            if 200 <= status < 300:
                tally.ok += 1
            else:
                tally.failed += 1
                if key is not None:
                    tally.failed_keys.append(key)

    try:
        await asyncio.gather(*(client(index) for index in range(clients)))
    finally:
        for connection in connections:
            connection.close()
    # A closed loop lasts until its last answer; a paced one for its schedule (or until late
    # answers came in, when the server fell behind).
    elapsed = max(last_answer, deadline if rate is not None else started) - started
    ordered = sorted(latencies)
    return RawRun(
        elapsed_s=elapsed,
        p50_ms=_percentile(ordered, 0.50),
        p99_ms=_percentile(ordered, 0.99),
        max_ms=ordered[-1] if ordered else 0.0,
        tallies=tuple(tallies),
        socket_errors=socket_errors,
    )


def python_run(
    base: str,
    requests: Sequence[Request],
    *,
    run: str,
    duration_s: float,
    rate: float | None = None,
) -> RawRun:
    """One run of the Python generator: a closed loop, or paced at ``rate`` requests/s over all
    clients (see the module docstring). Requests still unanswered after the duration are waited
    for (each within ``REQUEST_TIMEOUT_S``); a paced run that falls more than ``DRAIN_S`` behind
    its schedule stops sending (its ``answered`` then falls short of rate × duration)."""
    return asyncio.run(_python_run(base, requests, run=run, duration_s=duration_s, rate=rate))
