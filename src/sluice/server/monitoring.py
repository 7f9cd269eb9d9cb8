"""Monitoring inside ``sluice serve``: the metrics' collectors, the readiness probes of the
ledger, the Bitcoin node and NATS, and the circuit breakers' configuration.

Readiness (``/ready``) beyond the database and the loops:

* ``ledger``: the ledger's end offset can be read on the treasury's node.
* ``bitcoin_node``: with Bitcoin custody, the node answers ``getblockchaininfo``.
* ``nats``: with ``[events] bus = "nats"``, a TCP connection to the NATS server opens.

Each probe's answer is cached for a few seconds (:data:`PROBE_TTL_S`), so a load balancer's
polling never turns into a flood on the ledger, the node or NATS; the scrape shares the cached
ledger end and node tip.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sluice.monitoring.collectors import Cached, StateSources, install_state
from sluice.monitoring.metrics import is_timed, listen, timed_part
from sluice.server.loop import ServiceLoop
from sluice.services.breaker_proxies import GuardedBitcoinNode
from sluice.services.ingestion import connection_name

if TYPE_CHECKING:
    from sluice.server.wiring import Service

PROBE_TTL_S = 5.0
CONNECT_TIMEOUT_S = 2.0

Probe = Callable[[], tuple[bool, str]]


def install_monitoring(service: Service) -> None:
    """Install the service's metrics, readiness probes and circuit breakers."""
    listen()
    link = service.link
    ledger_end = Cached(link.client.ledger_end, PROBE_TTL_S)
    node = service.bitcoin.node if service.bitcoin is not None else None
    # Monitoring reads the node itself, not through the ``bitcoin`` breaker: a scrape or a
    # readiness probe takes no half-open probe slot (nor closes it), and an open breaker alone
    # does not make the node "not answering".
    if isinstance(node, GuardedBitcoinNode):
        node = node.inner
    node_tip: Cached[int] | None = None
    if node is not None:
        node_tip = Cached(lambda: int(node.getblockchaininfo()["blocks"]), PROBE_TTL_S)

    def record_time_at(offset: int) -> datetime | None:
        return link.record_time_at(link.node, offset)

    install_state(
        StateSources(
            engine=service.database.engine,
            clock=service.context.clock,
            connection=connection_name(service.treasury, link.node),
            ledger_end=ledger_end,
            record_time_at=record_time_at,
            node_tip=node_tip,
        )
    )
    probes: dict[str, Probe] = {"ledger": ledger_probe(ledger_end)}
    if node_tip is not None:
        probes["bitcoin_node"] = bitcoin_probe(node_tip)
    if service.config.events.bus == "nats":
        probes["nats"] = Cached(nats_probe(service.config.events.nats_url), PROBE_TTL_S)
    service.context.readiness = {**service.context.readiness, **probes}
    for loop in _loops(service):
        time_parts(loop)


def _loops(service: Service) -> list[ServiceLoop]:
    loops = [service.loop, service.bitcoin_loop, service.issuance_loop, service.reserves_loop]
    return [loop for loop in (*loops, *service.extra_loops) if loop is not None]


def time_parts(loop: ServiceLoop) -> None:
    """Each part's rounds timed in ``sluice_loop_part_duration_seconds{loop, part}`` (before the
    loop starts)."""
    loop.parts = tuple(
        part
        if is_timed(part.run)
        else replace(part, run=timed_part(loop.name, part.name, part.run))
        for part in loop.parts
    )


def ledger_probe(ledger_end: Callable[[], int]) -> Probe:
    def probe() -> tuple[bool, str]:
        try:
            return True, f"ledger end {ledger_end()}"
        except Exception as exc:
            return False, f"the ledger end cannot be read: {type(exc).__name__}: {exc}"[:300]

    return probe


def bitcoin_probe(node_tip: Callable[[], int]) -> Probe:
    def probe() -> tuple[bool, str]:
        try:
            return True, f"tip at height {node_tip()}"
        except Exception as exc:
            return False, f"the Bitcoin node does not answer: {type(exc).__name__}: {exc}"[:300]

    return probe


def nats_probe(url: str, timeout_s: float = CONNECT_TIMEOUT_S) -> Probe:
    """A TCP connection to the first server of ``url`` (``nats://host:port[,…]``) opens."""
    first = url.split(",")[0].strip()
    parts = urlsplit(first if "://" in first else f"nats://{first}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or 4222

    def probe() -> tuple[bool, str]:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                return True, f"{host}:{port} accepts connections"
        except OSError as exc:
            return False, f"{host}:{port} refuses connections: {type(exc).__name__}: {exc}"[:300]

    return probe
