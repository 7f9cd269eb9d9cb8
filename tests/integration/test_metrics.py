"""Prometheus metrics after scripted flows, on SQLite and PostgreSQL.

How: a sandbox exchange with the real application around it (:mod:`tests.api_support`); the
test makes requests (some refused), funds customers through ingestion, requests withdrawals,
writes events and a reserve reading, then scrapes ``GET /metrics`` and parses the text format
with prometheus_client's parser. Counters are the process's, so each test compares a scrape
after the flow with one before it; gauges are compared with the database's own figures.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select

from sluice.bus.inprocess import InProcessBus, InProcessPublisher
from sluice.domain.events import new_event
from sluice.monitoring.collectors import StateSources, install_state
from sluice.ports.reserves import ReserveReading
from sluice.services.breakers import FLOWS, Breakers, configure_breakers
from sluice.services.events import emit_all
from sluice.services.relay import Relay
from sluice.store.tables import withdrawals
from tests.api_support import ApiWorld, api_world

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    built = api_world(database_url)
    yield built
    install_state(None)  # the next test's API scrapes its own database
    built.sandbox.close()


def scrape_text(world: ApiWorld) -> str:
    answer = world.client().get("/metrics")
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == CONTENT_TYPE_LATEST
    return answer.text


def scrape(world: ApiWorld) -> Samples:
    samples: Samples = {}
    for family in text_string_to_metric_families(scrape_text(world)):
        for sample in family.samples:
            samples[sample.name, frozenset(sample.labels.items())] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(after: Samples, before: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def _withdraw(world: ApiWorld, customer: str, amount: str, key: str) -> Any:
    return world.client().post(
        f"/v1/customers/{customer}/withdrawals",
        json={
            "receiver": world.sandbox.customers[customer],
            "instrument": {"admin": world.sandbox.coin.admin, "id": world.sandbox.coin.id},
            "amount": amount,
        },
        headers={**world.headers("user"), "Idempotency-Key": key},
    )


# --- HTTP requests and authentication ------------------------------------------------------------


def test_requests_are_counted_by_route_template_and_refused_credentials_by_reason(
    world: ApiWorld,
) -> None:
    before = scrape(world)
    client = world.client()
    assert client.get("/v1/system/status", headers=world.headers("operator")).status_code == 200
    assert client.get("/v1/system/status", headers=world.headers("operator:2")).status_code == 200
    assert client.get("/v1/system/status").status_code == 401  # missing
    assert client.get("/v1/system/status", headers={"X-API-Key": "sk_nope"}).status_code == 401
    bad_scheme = {"Authorization": "Basic abc"}
    assert client.get("/v1/system/status", headers=bad_scheme).status_code == 401
    one = client.get("/v1/withdrawals/wd-0123456789abcdef", headers=world.headers("operator"))
    other = client.get("/v1/withdrawals/wd-fedcba9876543210", headers=world.headers("operator"))
    assert one.status_code == other.status_code == 404
    assert client.get("/no/such/path/42").status_code == 404
    after = scrape(world)

    status = {"route": "/v1/system/status", "method": "GET"}
    assert delta(after, before, "sluice_http_requests_total", **status, status="2xx") == 2
    assert delta(after, before, "sluice_http_requests_total", **status, status="4xx") == 3
    assert delta(after, before, "sluice_http_request_duration_seconds_count", **status) == 5
    one_template = {"route": "/v1/withdrawals/{withdrawal_id}", "method": "GET"}
    assert delta(after, before, "sluice_http_requests_total", **one_template, status="4xx") == 2
    unmatched = {"route": "unmatched", "method": "GET", "status": "4xx"}
    assert delta(after, before, "sluice_http_requests_total", **unmatched) == 1
    # The first scrape itself was answered (counted) before the second one ran.
    scraped = {"route": "/metrics", "method": "GET", "status": "2xx"}
    assert delta(after, before, "sluice_http_requests_total", **scraped) == 1
    assert delta(after, before, "sluice_auth_failures_total", reason="missing") == 1
    assert delta(after, before, "sluice_auth_failures_total", reason="invalid") == 2
    # No path of a request ever became a label value.
    assert not any("wd-" in v or "/no/such" in v for _name, labels in after for _k, v in labels)


def test_an_unknown_http_method_is_labelled_other(world: ApiWorld) -> None:
    """A client's arbitrary method tokens do not become label values (one series each)."""
    before = scrape(world)
    client = world.client()
    for token in ("X1", "X2", "BREW"):
        client.request(token, "/v1/system/status", headers=world.headers("operator"))
    client.request("get", "/no/such/path")
    after = scrape(world)
    methods = {v for _name, labels in after for k, v in labels if k == "method"}
    assert not methods & {"X1", "X2", "BREW", "get"}
    other = {"route": "/v1/system/status", "method": "other"}
    assert delta(after, before, "sluice_http_request_duration_seconds_count", **other) == 3
    unmatched = {"route": "unmatched", "method": "GET"}
    assert delta(after, before, "sluice_http_request_duration_seconds_count", **unmatched) == 1


# --- operations, queues, the outbox --------------------------------------------------------------


def test_queue_depth_outbox_and_operations_follow_the_flows(world: ApiWorld) -> None:
    sandbox = world.sandbox
    sandbox.deposit("cust-0", Decimal("100"))
    sandbox.ingest()
    before = scrape(world)
    assert value(before, "sluice_queue_depth", queue="withdrawals", status="queued") == 0
    for n in range(3):
        answer = _withdraw(world, "cust-0", "5", f"metrics-{n}")
        assert answer.status_code in (200, 201, 202), answer.text
    # Events of a failure and of an ordinary operation, written as every state change writes
    # them: in a unit of work, counted once it commits.
    at = sandbox.clock()
    with sandbox.database.uow() as uow:
        emit_all(
            uow,
            [
                new_event("withdrawal_failed", "wd-x", {"reason": "test"}, at=at),
                new_event("withdrawal_failed", "wd-y", {"reason": "test"}, at=at),
                new_event("system_paused", "system", {"mode": "all"}, at=at),
            ],
        )
        uow.commit()
    with sandbox.database.uow() as uow:  # written, then rolled back: never counted
        emit_all(uow, [new_event("system_resumed", "system", {}, at=at)])
    after = scrape(world)

    with sandbox.database.uow() as uow:
        pending = uow.events.stats().pending
    with sandbox.database.engine.connect() as connection:
        by_status = dict(
            connection.execute(
                select(withdrawals.c.status, func.count()).group_by(withdrawals.c.status)
            ).all()
        )
    assert sum(by_status.values()) == 3  # one reserved at once, the others queued behind it
    live = ("queued", "reserved", "submitting", "submitted", "offered")
    for status in live:
        shown = value(after, "sluice_queue_depth", queue="withdrawals", status=status)
        assert shown == by_status.get(status, 0), status
    assert sum(value(after, "sluice_queue_depth", queue="withdrawals", status=s) for s in live) == 3
    oldest = value(after, "sluice_queue_oldest_age_seconds", queue="withdrawals", status="queued")
    assert oldest >= 0
    assert value(after, "sluice_outbox_pending_events") == pending
    assert pending >= 3
    assert delta(after, before, "sluice_outbox_pending_events") >= 3
    assert delta(after, before, "sluice_operation_failures_total", type="withdrawal_failed") == 2
    assert delta(after, before, "sluice_operations_total", type="system_paused") == 1
    assert delta(after, before, "sluice_operations_total", type="system_resumed") == 0
    assert delta(after, before, "sluice_operations_total", type="withdrawal_failed") == 2
    # Every catalogued type has its series from the start, so rate() works from the first event.
    assert ("sluice_operations_total", frozenset({("type", "breaker_opened")})) in after
    for queue, status in (("payouts", "queued"), ("redemptions", "pending")):
        assert value(after, "sluice_queue_depth", queue=queue, status=status) == 0


def test_reserve_ratio_and_value_held_are_the_latest_reading_per_instrument(
    world: ApiWorld,
) -> None:
    sandbox = world.sandbox
    coin = sandbox.coin.key()
    at = sandbox.clock()
    with sandbox.database.uow() as uow:
        for taken_at, supply, reserves, ratio in (
            (at - timedelta(minutes=2), 1_000, 900, 9_000),
            (at - timedelta(minutes=1), 1_000, 1_250, 12_500),
        ):
            uow.reserves.add_reading(
                ReserveReading(coin, "token", supply, reserves, ratio, taken_at=taken_at)
            )
        uow.reserves.add_reading(
            ReserveReading(sandbox.token.key(), "token", 0, 40, None, taken_at=at)
        )
        uow.commit()
    samples = scrape(world)
    assert value(samples, "sluice_reserve_ratio", instrument=sandbox.coin.id) == 1.25
    assert value(samples, "sluice_reserve_held_units", instrument=sandbox.coin.id) == 1_250
    assert value(samples, "sluice_reserve_supply_units", instrument=sandbox.coin.id) == 1_000
    age = value(samples, "sluice_reserve_reading_age_seconds", instrument=sandbox.coin.id)
    assert age == pytest.approx(60.0, abs=5.0)
    # Nothing owed: no ratio, but the value held is there.
    token = sandbox.token.id
    assert ("sluice_reserve_ratio", frozenset({("instrument", token)})) not in samples
    assert value(samples, "sluice_reserve_held_units", instrument=token) == 40


# --- ingestion lag -------------------------------------------------------------------------------


def test_ingestion_lag_in_offsets_and_record_time(world: ApiWorld) -> None:
    sandbox = world.sandbox
    client = sandbox.ledger_client()
    sandbox.ingest()
    install_state(
        StateSources(
            engine=sandbox.database.engine,
            clock=sandbox.clock,
            connection=sandbox.connection,
            ledger_end=client.ledger_end,
            record_time_at=lambda offset: sandbox.ledger.record_time_at(sandbox.node, offset),
        )
    )
    caught_up = scrape(world)
    assert value(caught_up, "sluice_up", component="ledger") == 1
    assert value(caught_up, "sluice_ingestion_lag_offsets") == 0
    assert value(caught_up, "sluice_ledger_end_offset") == client.ledger_end()
    cursor = value(caught_up, "sluice_ingestion_cursor_offset")

    sandbox.ledger.advance(30)
    sandbox.deposit("cust-1", Decimal("7"))
    behind = scrape(world)
    end = client.ledger_end()
    assert value(behind, "sluice_ingestion_cursor_offset") == cursor
    assert value(behind, "sluice_ingestion_lag_offsets") == end - cursor > 0
    assert value(behind, "sluice_ingestion_lag_seconds") == pytest.approx(30, abs=0.001)

    sandbox.ingest()
    again = scrape(world)
    assert value(again, "sluice_ingestion_lag_offsets") == 0
    assert value(again, "sluice_ingestion_lag_seconds") == 0


# --- robustness and conventions ------------------------------------------------------------------


def test_a_failing_database_read_answers_the_scrape_with_up_0(
    world: ApiWorld, tmp_path: Any
) -> None:
    dead = create_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'no.db'}")
    install_state(StateSources(engine=dead, clock=world.sandbox.clock))
    try:
        before_errors = None
        first = scrape(world)
        before_errors = value(first, "sluice_scrape_errors_total", component="database")
        second = scrape(world)
    finally:
        dead.dispose()
    assert value(second, "sluice_up", component="database") == 0
    assert value(second, "sluice_scrape_errors_total", component="database") == before_errors + 1
    assert (
        "sluice_queue_depth",
        frozenset({("queue", "withdrawals"), ("status", "queued")}),
    ) not in second
    # What does not need the database is still answered.
    assert any(name == "sluice_build_info" for name, _labels in second)


_ID_LIKE = re.compile(r"[0-9a-f]{12,}|::|^wd-|^\d{5,}$|@|[0-9a-f]{8}-[0-9a-f]{4}-")


def test_metric_names_follow_the_conventions_and_labels_are_never_ids(world: ApiWorld) -> None:
    sandbox = world.sandbox
    sandbox.deposit("cust-0", Decimal("20"))
    sandbox.ingest()
    assert _withdraw(world, "cust-0", "1", "conventions").status_code in (200, 201, 202)
    world.client().get("/v1/withdrawals/wd-0123456789abcdef", headers=world.headers("operator"))
    text = scrape_text(world)
    families = list(text_string_to_metric_families(text))
    names = {family.name: family for family in families}
    # An Info metric: in the text format a gauge of 1 whose labels carry the information.
    info = names["sluice_build_info"]
    assert info.type == "gauge"
    (build,) = info.samples
    assert build.name == "sluice_build_info" and build.value == 1
    assert set(build.labels) == {"version", "python"}
    for family in families:
        assert family.name.startswith("sluice_"), family.name
        for sample in family.samples:
            assert sample.name.startswith("sluice_"), sample.name
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            for label, text_value in sample.labels.items():
                if label == "le" or (family.name == "sluice_build_info" and label == "python"):
                    continue
                assert not _ID_LIKE.search(text_value), (sample.name, label, text_value)
        if family.type == "histogram":
            assert family.name.endswith("_seconds"), family.name
        if "duration" in family.name or "age" in family.name:
            assert family.name.endswith("_seconds"), family.name
    for expected in (
        "sluice_http_requests",
        "sluice_http_request_duration_seconds",
        "sluice_operations",
        "sluice_operation_failures",
        "sluice_auth_failures",
        "sluice_queue_depth",
        "sluice_queue_oldest_age_seconds",
        "sluice_outbox_pending_events",
        "sluice_outbox_oldest_pending_age_seconds",
        "sluice_up",
    ):
        assert expected in names, expected
    assert names["sluice_http_request_duration_seconds"].type == "histogram"


# --- circuit breakers and the relay --------------------------------------------------------------


def test_circuit_breaker_states_show_one_state_per_flow(world: ApiWorld) -> None:
    registry = configure_breakers()  # the process's, fresh: every flow closed
    try:
        registry.get("ledger").force("open")
        samples = scrape(world)
    finally:
        configure_breakers()
    for flow in FLOWS:
        shown = {
            state: value(samples, "sluice_circuit_breaker_state", flow=flow, state=state)
            for state in ("closed", "open", "half_open")
        }
        expected = "open" if flow == "ledger" else "closed"
        assert shown == {s: (1.0 if s == expected else 0.0) for s in shown}, flow


def test_the_relay_publishing_empties_the_outbox_and_counts_what_it_published(
    world: ApiWorld,
) -> None:
    sandbox = world.sandbox
    at = sandbox.clock()
    with sandbox.database.uow() as uow:
        emit_all(uow, [new_event("system_paused", "system", {"n": n}, at=at) for n in range(4)])
        uow.commit()
    with sandbox.database.uow() as uow:
        pending = uow.events.stats().pending
    before = scrape(world)
    assert value(before, "sluice_outbox_pending_events") == pending >= 4
    assert value(before, "sluice_outbox_oldest_pending_age_seconds") >= 0
    relay = Relay(sandbox.database.uow, InProcessPublisher(InProcessBus()), breakers=Breakers())
    relay.start()
    try:
        for _ in range(50):
            if relay.run_round().pending == 0:
                break
        after = scrape(world)
    finally:
        relay.close()
    assert value(after, "sluice_outbox_pending_events") == 0
    assert value(after, "sluice_outbox_oldest_pending_age_seconds") == 0
    assert value(after, "sluice_relay_published_events_total") == pending
    assert value(after, "sluice_relay_failed_publishes_total") == 0
    assert value(after, "sluice_relay_rounds_total") >= 1
