"""Readiness and the serve-time collectors, on a service wired as ``sluice serve`` wires it.

How: ``build_service`` on the defaults (embedded ledger, SQLite) with ``[events] bus = "nats"``
pointing at the NATS server CI runs (127.0.0.1:4222) or at a port nobody listens on; the real
application around the service's context answers ``/ready`` and ``/metrics``. A Bitcoin node
that does not answer is a JSON-RPC client on a closed port. The service loop runs, so every
other check is ready and a 503 names only what failed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from sluice.api.app import create_app
from sluice.bitcoin.rpc import BitcoinRpc
from sluice.config import DeploymentConfig
from sluice.domain.breaker import BreakerSettings
from sluice.domain.errors import SystemPausedError
from sluice.monitoring.collectors import STATE, install_state
from sluice.monitoring.metrics import LOOP_PART_FAILURES, timed_part
from sluice.server.monitoring import install_monitoring
from sluice.server.wiring import Service, build_service
from sluice.services.breaker_proxies import GuardedBitcoinNode
from sluice.services.breakers import BreakerOpenError, Breakers
from tests.api_support import free_port
from tests.conftest import missing

NATS = ("127.0.0.1", 4222)


def _nats_up() -> bool:
    try:
        with socket.create_connection(NATS, timeout=2):
            return True
    except OSError:
        return False


def _wait_for(check: Callable[[], bool], what: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _loops_ready(service: Service) -> bool:
    """Every loop of the service (the service loop, and the reserves loop and any other the
    wiring started) has finished a round and is ready: what is not ready after that is not
    ready for a reason of its own, not because its loop has not run yet (under load the
    reserves loop's first round may come well after the service loop's)."""
    loops = {
        name: check for name, check in service.context.readiness.items() if name.endswith("_loop")
    }
    assert "service_loop" in loops, sorted(service.context.readiness)
    return all(check()[0] for check in loops.values())


def _service(tmp_path: Path, nats_url: str) -> Service:
    config = DeploymentConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "events": {"bus": "nats", "nats_url": nats_url, "relay_in_serve": False},
        }
    )
    return build_service(config, interval_s=0.05)


@pytest.fixture
def started() -> Iterator[list[Service]]:
    services: list[Service] = []
    yield services
    install_state(None)
    for service in services:
        assert service.close(timeout_s=10)


def _ready(service: Service) -> tuple[int, dict[str, Any]]:
    with TestClient(create_app(service.context, access_log=False)) as client:
        answer = client.get("/ready")
    return answer.status_code, answer.json()["checks"]


def _scrape(service: Service) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with TestClient(create_app(service.context, access_log=False)) as client:
        answer = client.get("/metrics")
    assert answer.status_code == 200
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def test_a_dead_nats_url_makes_the_service_not_ready_naming_nats(
    tmp_path: Path, started: list[Service]
) -> None:
    port = free_port()  # nobody listens there
    service = _service(tmp_path, f"nats://127.0.0.1:{port}")
    started.append(service)
    service.start()
    _wait_for(lambda: _loops_ready(service), "the service's loops", timeout_s=60.0)
    status, checks = _ready(service)
    assert status == 503
    failing = {name for name, check in checks.items() if not check["ready"]}
    # NATS is named, and only NATS: every other check (the loops included) is ready.
    assert failing == {"nats"}, checks
    assert f"127.0.0.1:{port}" in checks["nats"]["detail"]
    assert checks["ledger"]["ready"] is True
    assert checks["database"]["ready"] is True


def test_a_reachable_nats_and_ledger_make_the_service_ready(
    tmp_path: Path, started: list[Service]
) -> None:
    if not _nats_up():
        missing("NATS at 127.0.0.1:4222")
    service = _service(tmp_path, "nats://127.0.0.1:4222")
    started.append(service)
    service.start()
    _wait_for(lambda: _loops_ready(service), "the service's loops", timeout_s=60.0)
    status, checks = _ready(service)
    assert status == 200, checks
    assert checks["nats"]["ready"] is True
    assert checks["ledger"]["ready"] is True
    # The scrape reads the same ledger: its end and ingestion's lag behind it.
    samples = _scrape(service)
    end = service.link.client.ledger_end()
    assert samples["sluice_ledger_end_offset", frozenset()] == end
    assert samples["sluice_up", frozenset({("component", "ledger")})] == 1
    assert samples["sluice_up", frozenset({("component", "database")})] == 1


def test_a_closed_service_leaves_no_sources_and_a_later_api_scrapes_its_own_database(
    tmp_path: Path,
) -> None:
    """A stopped service's monitoring sources go with it: an API started later in the same
    process reads its own database, not the one the service disposed of."""
    service = _service(tmp_path / "first", "nats://127.0.0.1:1")
    assert STATE.sources is not None and STATE.sources.engine is service.database.engine
    assert service.close(timeout_s=10)
    assert STATE.sources is None
    later = _service(tmp_path / "later", "nats://127.0.0.1:1")
    try:
        install_state(None)  # as an API without serve's wiring starts: nothing installed
        with TestClient(create_app(later.context, access_log=False)) as client:
            assert client.get("/metrics").status_code == 200
        assert STATE.sources is not None and STATE.sources.engine is later.database.engine
    finally:
        install_state(None)
        assert later.close(timeout_s=10)


def test_an_unreachable_bitcoin_node_is_named_and_shows_up_0_in_metrics(
    tmp_path: Path, started: list[Service]
) -> None:
    service = _service(tmp_path, f"nats://127.0.0.1:{free_port()}")
    started.append(service)
    # Custody on a node that does not answer (only its node is read by monitoring).
    node = BitcoinRpc(f"http://127.0.0.1:{free_port()}", user="u", password="p", timeout_s=2)
    service.bitcoin = SimpleNamespace(node=node)  # type: ignore[assignment]
    install_monitoring(service)
    status, checks = _ready(service)
    assert status == 503
    assert checks["bitcoin_node"]["ready"] is False
    assert "does not answer" in checks["bitcoin_node"]["detail"]
    samples = _scrape(service)
    assert samples["sluice_up", frozenset({("component", "bitcoin_node")})] == 0
    assert ("sluice_bitcoin_node_height", frozenset()) not in samples
    assert samples["sluice_up", frozenset({("component", "database")})] == 1


def test_each_part_of_the_service_loop_is_timed_once_per_round(
    tmp_path: Path, started: list[Service]
) -> None:
    service = _service(tmp_path, f"nats://127.0.0.1:{free_port()}")
    started.append(service)
    install_monitoring(service)  # a second time: the parts are not timed twice
    parts = [part.name for part in service.loop.parts]
    assert "ingestion" in parts and "withdrawals" in parts

    def counts() -> dict[str, float]:
        samples = _scrape(service)
        return {
            part: samples.get(
                (
                    "sluice_loop_part_duration_seconds_count",
                    frozenset({("loop", "service"), ("part", part)}),
                ),
                0.0,
            )
            for part in parts
        }

    before = counts()
    service.loop.run_round()
    service.loop.run_round()
    after = counts()
    assert {part: after[part] - before[part] for part in parts} == dict.fromkeys(parts, 2.0)


class _Node:
    """A Bitcoin node that answers (only what monitoring reads)."""

    def __init__(self) -> None:
        self.calls = 0

    def getblockchaininfo(self) -> dict[str, Any]:
        self.calls += 1
        return {"blocks": 321}


def test_monitoring_reads_the_node_past_its_breaker(tmp_path: Path, started: list[Service]) -> None:
    """The ``bitcoin`` breaker open (forced): the node still answers, so readiness and the
    scrape say so, and their reads take nothing from the breaker (no probe, no call counted)."""
    service = _service(tmp_path, f"nats://127.0.0.1:{free_port()}")
    started.append(service)
    breakers = Breakers(default=BreakerSettings(), monotonic=lambda: 1000.0)
    breakers.get("bitcoin").force("open", "node maintenance")
    node = _Node()
    service.bitcoin = SimpleNamespace(  # type: ignore[assignment]
        node=GuardedBitcoinNode(node, registry=breakers)  # type: ignore[arg-type]
    )
    install_monitoring(service)
    _status, checks = _ready(service)
    assert checks["bitcoin_node"]["ready"] is True, checks["bitcoin_node"]
    samples = _scrape(service)
    assert samples["sluice_up", frozenset({("component", "bitcoin_node")})] == 1
    assert samples["sluice_bitcoin_node_height", frozenset()] == 321
    assert node.calls >= 1
    assert breakers.get("bitcoin").snapshot().calls == 0


def test_a_breaker_refusal_or_a_pause_in_a_part_is_no_part_failure() -> None:
    def refused() -> None:
        raise BreakerOpenError("ledger", retry_after_s=30)

    def paused() -> None:
        raise SystemPausedError("paused")

    def broken() -> None:
        raise RuntimeError("bug")

    failures = LOOP_PART_FAILURES.labels("test-skips", "part")
    before = failures._value.get()
    for run, raised in ((refused, BreakerOpenError), (paused, SystemPausedError)):
        with pytest.raises(raised):
            timed_part("test-skips", "part", run)()
    assert failures._value.get() == before
    with pytest.raises(RuntimeError):
        timed_part("test-skips", "part", broken)()
    assert failures._value.get() == before + 1
