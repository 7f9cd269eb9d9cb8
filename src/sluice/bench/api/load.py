"""What the load clients send, and what a run returns: answers counted and latencies summed up."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from .exchange import Exchange
from .settings import SCENARIOS, WITHDRAWAL_AMOUNT


@dataclass(frozen=True, slots=True)
class Request:
    """One client's request; ``keyed`` ones get a new ``Idempotency-Key`` each time."""

    method: str
    path: str
    headers: tuple[tuple[str, str], ...]
    body: str | None
    keyed: bool


def requests_for(scenario: str, exchange: Exchange) -> list[Request]:
    """What each client sends in ``scenario`` (one of :data:`SCENARIOS`)."""
    made: list[Request] = []
    for client in exchange.clients:
        auth = (("X-API-Key", client.key),)
        if scenario == "health":
            made.append(Request("GET", "/health", (), None, keyed=False))
        elif scenario == "balance":
            path = f"/v1/customers/{client.customer_id}/balances"
            made.append(Request("GET", path, auth, None, keyed=False))
        elif scenario == "withdrawal":
            body = json.dumps(
                {
                    "receiver": client.party,
                    "instrument": {"admin": exchange.coin.admin, "id": exchange.coin.id},
                    "amount": WITHDRAWAL_AMOUNT,
                },
                separators=(",", ":"),
            )
            path = f"/v1/customers/{client.customer_id}/withdrawals"
            headers = (*auth, ("Content-Type", "application/json"))
            made.append(Request("POST", path, headers, body, keyed=True))
        else:
            raise ValueError(f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}")
    return made


def idempotency_key(run: str, client: int, n: int) -> str:
    """The key of client ``client``'s (1-based) ``n``-th request of ``run``."""
    return f"{run}-{client}-{n}"


# --- what a run returns --------------------------------------------------------------------------


@dataclass(slots=True)
class ClientTally:
    """One client's answers in a run: ``sent`` requests made (keys 1..sent when keyed), of
    which ``ok`` answered 2xx and ``failed`` otherwise; ``unanswered`` were lost with their
    connection, ``in_flight`` was still waiting for its answer when the run stopped, ``unsent``
    was made but never sent (wrk's verification of its script). The key lists name requests by
    their idempotency key (by their number when not keyed)."""

    client: int
    sent: int = 0
    ok: int = 0
    failed: int = 0
    statuses: dict[str, int] = field(default_factory=dict)
    failed_keys: list[str] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)
    in_flight: list[str] = field(default_factory=list)
    unsent: list[str] = field(default_factory=list)

    @property
    def unsettled(self) -> list[str]:
        """The requests whose outcome no answer told."""
        return [*self.unanswered, *self.in_flight, *self.unsent]


@dataclass(frozen=True, slots=True)
class RawRun:
    """What a generator measured: elapsed seconds, latency percentiles in ms, per-client tallies
    and errors below HTTP (connect, read, write, timeout)."""

    elapsed_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    tallies: tuple[ClientTally, ...]
    socket_errors: int


@dataclass(frozen=True, slots=True)
class LoadRun:
    """One measured run as reported."""

    workers: int
    scenario: str
    mode: str  # closed | paced
    tool: str
    clients: int
    duration_s: float
    offered_per_s: float | None  # the pace of a paced run
    answered: int
    ok: int
    failed: int  # answered, not 2xx
    lost: int  # sent, never answered: the connection failed
    in_flight: int  # still unanswered when the run stopped (wrk stops mid-request)
    socket_errors: int  # connect, read, write errors and timeouts
    statuses: dict[str, int]
    requests_per_s: float  # 2xx answers per second of the run
    p50_ms: float
    p99_ms: float
    max_ms: float
    load_1m: float | None = None  # the machine's 1-minute load average when the run ended

    @property
    def errors(self) -> int:
        return self.failed + self.lost


def load_run(
    raw: RawRun,
    *,
    workers: int,
    scenario: str,
    mode: str,
    tool: str,
    offered_per_s: float | None = None,
    load_1m: float | None = None,
) -> LoadRun:
    statuses: dict[str, int] = {}
    for tally in raw.tallies:
        for code, count in tally.statuses.items():
            statuses[code] = statuses.get(code, 0) + count
    ok = sum(t.ok for t in raw.tallies)
    failed = sum(t.failed for t in raw.tallies)
    return LoadRun(
        workers=workers,
        scenario=scenario,
        mode=mode,
        tool=tool,
        clients=len(raw.tallies),
        duration_s=round(raw.elapsed_s, 3),
        offered_per_s=offered_per_s,
        answered=ok + failed,
        ok=ok,
        failed=failed,
        lost=sum(len(t.unanswered) for t in raw.tallies),
        in_flight=sum(len(t.in_flight) for t in raw.tallies),
        socket_errors=raw.socket_errors,
        statuses=dict(sorted(statuses.items())),
        requests_per_s=round(ok / raw.elapsed_s, 1) if raw.elapsed_s > 0 else 0.0,
        p50_ms=round(raw.p50_ms, 3),
        p99_ms=round(raw.p99_ms, 3),
        max_ms=round(raw.max_ms, 3),
        load_1m=load_1m,
    )


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """Nearest rank; 0 for no samples."""
    if not ordered:
        return 0.0
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]
