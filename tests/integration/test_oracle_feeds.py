"""Price feeds against a real local HTTP server (``http.server`` in a thread) and real files:
a good price, a Chainlink-style scaled answer, timeouts, 5xx, malformed JSON, a missing pointer,
a refused connection and an oversized body each become a named rejection, never an exception.
Then the oracle service on the Integration DB (SQLite and PostgreSQL): prices validated against
the persisted state, across a restart; every rejection recorded with its rule; the fallback to
the secondary; inverted and crossed pairs, each leg validated on its own; and migration 0012
against the tables the code declares."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice.config import OracleConfig
from sluice.domain.errors import OracleOfflineError
from sluice.domain.oracle import Observation, Rejection, SourceSpec
from sluice.oracle.feeds import FeedReader
from sluice.services.oracle import OracleService
from sluice.store.database import open_database
from sluice.store.oracle_tables import oracle_rejections, oracle_sources
from sluice.store.unit_of_work import SqlUnitOfWork
from tests.schema_check import schema_differences

D = Decimal
NOW = datetime.now(UTC).replace(microsecond=0)


@dataclass
class Answer:
    status: int = 200
    body: bytes | Callable[[], bytes] = b"{}"  # a callable: computed for each request
    delay_s: float = 0.0


@dataclass
class PriceServer:
    url: str
    answers: dict[str, Answer] = field(default_factory=dict)
    release: threading.Event = field(default_factory=threading.Event)

    def serve(
        self,
        path: str,
        document: Any = None,
        *,
        status: int = 200,
        raw: bytes | None = None,
        delay_s: float = 0.0,
    ) -> str:
        body = raw if raw is not None else json.dumps(document).encode()
        self.answers[path] = Answer(status, body, delay_s)
        return f"{self.url}{path}"


@pytest.fixture
def server() -> Iterator[PriceServer]:
    answers: dict[str, Answer] = {}
    release = threading.Event()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer = answers.get(self.path, Answer(404, b"not found"))
            if callable(answer.body):
                answer = Answer(answer.status, answer.body(), answer.delay_s)
            if answer.delay_s:
                release.wait(answer.delay_s)
            self.send_response(answer.status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(answer.body)))
            self.end_headers()
            assert isinstance(answer.body, bytes)
            self.wfile.write(answer.body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    class Server(ThreadingHTTPServer):
        request_queue_size = 64  # the concurrency test connects 8 at once (default backlog 5)

    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield PriceServer(f"http://127.0.0.1:{httpd.server_address[1]}", answers, release)
    finally:
        release.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def reader() -> Iterator[FeedReader]:
    with FeedReader(timeout_s=0.5, body_bytes_max=4096) as feed_reader:
        yield feed_reader


def http_source(url: str, **overrides: Any) -> SourceSpec:
    values: dict[str, Any] = {
        "kind": "http",
        "location": url,
        "price_pointer": "/data/price",
        "time_pointer": "/data/updated_at",
        "round_pointer": "/data/round",
        "decimals": 8,
        "heartbeat_s": 3600,
    }
    return SourceSpec(**{**values, **overrides})


def quote(price: Any, *, at: datetime = NOW, round_id: Any = 42) -> dict[str, Any]:
    return {"data": {"price": price, "updated_at": at.isoformat(), "round": round_id}}


# --- HTTP sources --------------------------------------------------------------------------------


def test_a_good_http_price_is_read_exactly(server: PriceServer, reader: FeedReader) -> None:
    url = server.serve(
        "/istsi",
        raw=b'{"data": {"price": 61234.123456789, "updated_at": '
        + str(int(NOW.timestamp())).encode()
        + b', "round": "18446744073709551617"}}',
    )
    observation = reader.read(http_source(url))
    assert observation == Observation(D("61234.12345679"), NOW, 18446744073709551617)


def test_a_scaled_integer_answer_is_divided_by_its_decimals(
    server: PriceServer, reader: FeedReader
) -> None:
    url = server.serve("/cl", quote(6123412345678))
    observation = reader.read(http_source(url, scaled=True))
    assert isinstance(observation, Observation)
    assert observation.price == D("61234.12345678")


def test_a_source_slower_than_the_timeout_is_unreachable(
    server: PriceServer, reader: FeedReader
) -> None:
    url = server.serve("/slow", quote("100"), delay_s=3.0)
    started = datetime.now(UTC)
    rejection = reader.read(http_source(url))
    assert isinstance(rejection, Rejection)
    assert rejection.rule == "unreachable"
    assert "timed out" in rejection.detail
    assert datetime.now(UTC) - started < timedelta(seconds=2.5)


@pytest.mark.parametrize("status", [500, 502, 503, 404])
def test_a_non_2xx_answer_is_unreachable(
    server: PriceServer, reader: FeedReader, status: int
) -> None:
    url = server.serve(f"/status{status}", quote("100"), status=status)
    rejection = reader.read(http_source(url))
    assert rejection == Rejection("unreachable", f"GET {url} answered HTTP {status}", str(status))


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b'{"data": {"price": 1', "not JSON"),
        (b"<html>maintenance</html>", "not JSON"),
        (b'{"data": {"price": NaN, "updated_at": 1, "round": 1}}', "NaN"),
        (b'{"data": {"updated_at": 1700000000, "round": 1}}', "no member 'price'"),
        (b'{"data": {"price": "one hundred", "updated_at": 1700000000}}', "not a decimal"),
        (b'{"data": {"price": true, "updated_at": 1700000000}}', "not a price"),
        (b'{"data": {"price": "100", "updated_at": "yesterday"}}', "not an RFC 3339"),
        (b'{"data": {"price": "100", "updated_at": "2026-12-05T10:00:00"}}', "no UTC offset"),
        (b'{"data": {"price": "100", "updated_at": 1700000000, "round": -3}}', "not a round id"),
        (b'{"data": [1, 2]}', "no element 'price'"),
        (b'{"data": {"price": "1", "updated_at": 1, "round": 1' + b"0" * 40 + b"}}", "round id"),
        (b'{"data": {"price": "\xff\xfe"}}', "not JSON"),
        (b'{"data": {"price": 1e999999, "updated_at": 1700000000}}', "does not fit"),
    ],
)
def test_a_malformed_answer_is_malformed(
    server: PriceServer, reader: FeedReader, raw: bytes, says: str
) -> None:
    url = server.serve("/bad", raw=raw)
    rejection = reader.read(http_source(url))
    assert isinstance(rejection, Rejection)
    assert rejection.rule == "malformed"
    assert says in rejection.detail


def test_a_refused_connection_and_an_oversized_body_are_unreachable(
    server: PriceServer, reader: FeedReader
) -> None:
    refused = reader.read(http_source("http://127.0.0.1:9/nothing-listens-here"))
    assert isinstance(refused, Rejection)
    assert refused.rule == "unreachable"
    url = server.serve("/huge", {"pad": "x" * 10_000, **quote("100")})
    huge = reader.read(http_source(url))
    assert isinstance(huge, Rejection)
    assert (huge.rule, "over 4096 bytes" in huge.detail) == ("unreachable", True)


# --- file sources --------------------------------------------------------------------------------


def file_source(path: Path) -> SourceSpec:
    return SourceSpec("file", str(path), "/p", "/t", None, 4, 3600)


def test_file_sources_are_read_with_the_same_pointers(tmp_path: Path, reader: FeedReader) -> None:
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"p": "1.23456", "t": NOW.isoformat()}))
    assert reader.read(file_source(good)) == Observation(D("1.2346"), NOW, None)
    missing = reader.read(file_source(tmp_path / "absent.json"))
    assert isinstance(missing, Rejection)
    assert missing.rule == "unreachable"
    broken = tmp_path / "broken.json"
    broken.write_text('{"p": ')
    assert isinstance(rejected := reader.read(file_source(broken)), Rejection)
    assert rejected.rule == "malformed"


# --- the service on the Integration DB ---------------------------------------------------------


@dataclass
class Deployment:
    service: OracleService
    engine: sa.Engine
    clock: list[datetime]
    files: dict[str, Path]

    def restart(self, config: OracleConfig, reader: FeedReader) -> None:
        self.service = OracleService(
            lambda: SqlUnitOfWork(self.engine),
            reader,
            config.specs(),
            limits=config.limits(),
            clock=lambda: self.clock[0],
        )

    def rules(self, pair: str) -> list[tuple[str | None, str]]:
        with self.engine.connect() as connection:
            rows = connection.execute(
                sa.select(oracle_rejections.c.source, oracle_rejections.c.rule)
                .where(oracle_rejections.c.pair == pair)
                .order_by(oracle_rejections.c.id)
            ).all()
        return [(row.source, row.rule) for row in rows]


def write(path: Path, price: str, *, at: datetime = NOW, round_id: int | None = None) -> None:
    document: dict[str, Any] = {"p": price, "t": int(at.timestamp())}
    if round_id is not None:
        document["r"] = round_id
    path.write_text(json.dumps(document))


@pytest.fixture
def deployment(
    database_url: str, server: PriceServer, reader: FeedReader, tmp_path: Path
) -> Iterator[tuple[Deployment, OracleConfig]]:
    files = {name: tmp_path / f"{name}.json" for name in ("istsi_secondary", "cc")}
    config = OracleConfig.model_validate(
        {
            "feeds": [
                {
                    "pair": "ISTSI/USD",
                    "kind": "http",
                    "url": f"{server.url}/istsi",
                    "price_pointer": "/data/price",
                    "time_pointer": "/data/updated_at",
                    "round_pointer": "/data/round",
                    "decimals": 8,
                    "heartbeat_s": 600,
                    "bounds": {"min": "1", "max": "10000000"},
                    "secondary": {
                        "kind": "file",
                        "path": str(files["istsi_secondary"]),
                        "price_pointer": "/p",
                        "time_pointer": "/t",
                    },
                },
                {
                    "pair": "CC/USD",
                    "kind": "file",
                    "path": str(files["cc"]),
                    "price_pointer": "/p",
                    "time_pointer": "/t",
                    "round_pointer": "/r",
                    "decimals": 6,
                    "heartbeat_s": 60,
                },
                {"pair": "USD/CC", "kind": "inverted", "of": "CC/USD", "decimals": 10},
                {
                    "pair": "ISTSI/CC",
                    "kind": "crossed",
                    "legs": ["ISTSI/USD", "CC/USD"],
                    "decimals": 6,
                },
            ]
        }
    )
    engine = open_database(database_url)
    deployed = Deployment(None, engine, [NOW], files)  # type: ignore[arg-type]
    deployed.restart(config, reader)
    try:
        yield deployed, config
    finally:
        engine.dispose()


def test_the_service_validates_persists_and_records_every_rejection(
    deployment: tuple[Deployment, OracleConfig], server: PriceServer, reader: FeedReader
) -> None:
    deployed, config = deployment
    server.serve("/istsi", quote("60000", round_id=10))
    write(deployed.files["istsi_secondary"], "60300")
    price = deployed.service.current_price("ISTSI/USD")
    assert (price.price, price.source, price.health, price.fallback_fee, price.round_id) == (
        D("60000"),
        "primary",
        "healthy",
        False,
        10,
    )

    # A restart keeps the last accepted price: the jump and round rules still hold.
    deployed.restart(config, reader)
    server.serve("/istsi", quote("95000", round_id=11))  # +58 %: a jump
    degraded = deployed.service.current_price("ISTSI/USD")
    assert (degraded.price, degraded.source, degraded.fallback_fee) == (
        D("60300"),
        "secondary",
        True,
    )
    server.serve("/istsi", quote("60100", round_id=9))  # back in range, but an older round
    assert deployed.service.current_price("ISTSI/USD").source == "secondary"
    server.serve("/istsi", quote("60200", round_id=12), status=503)
    assert deployed.service.current_price("ISTSI/USD").source == "secondary"
    server.serve("/istsi", quote("60200", round_id=12))  # agrees again: back to the primary
    back = deployed.service.current_price("ISTSI/USD")
    assert (back.price, back.source, back.health) == (D("60200"), "primary", "healthy")
    assert deployed.rules("ISTSI/USD") == [
        ("primary", "jump"),
        ("primary", "round_backwards"),
        ("primary", "unreachable"),
    ]

    # Neither usable: refused, with the rules, and shown in the status.
    server.serve("/istsi", raw=b"{")
    write(deployed.files["istsi_secondary"], "60200", at=NOW - timedelta(hours=2))
    with pytest.raises(OracleOfflineError) as refused:
        deployed.service.current_price("ISTSI/USD")
    assert (refused.value.code, refused.value.rules) == (80, ("malformed", "stale"))
    status = {feed.pair: feed for feed in deployed.service.oracle_status().feeds}
    assert status["ISTSI/USD"].health == "offline"
    assert status["ISTSI/USD"].last_rejection is not None
    assert status["ISTSI/USD"].last_rejection.rule == "stale"
    assert status["CC/USD"].health is None  # never evaluated
    assert [r.rule for r in deployed.service.rejections("ISTSI/USD", limit=2)] == [
        "stale",
        "malformed",
    ]
    with deployed.engine.connect() as connection:
        kept = connection.execute(
            sa.select(oracle_sources.c.source, oracle_sources.c.price, oracle_sources.c.round_id)
            .where(oracle_sources.c.pair == "ISTSI/USD")
            .order_by(oracle_sources.c.source)
        ).all()
    assert [(r.source, D(r.price), r.round_id) for r in kept] == [
        ("primary", D("60200"), "12"),
        ("secondary", D("60300"), None),  # its stale 60200 was not accepted
    ]


def test_inverted_and_crossed_pairs_validate_each_leg_on_its_own(
    deployment: tuple[Deployment, OracleConfig], server: PriceServer
) -> None:
    deployed, _config = deployment
    server.serve("/istsi", quote("60000", round_id=10))
    write(deployed.files["istsi_secondary"], "60000")
    write(deployed.files["cc"], "0.25", at=NOW - timedelta(seconds=30), round_id=5)
    inverted = deployed.service.current_price("USD/CC")
    assert (inverted.price, inverted.source) == (D("4.0000000000"), "primary")
    crossed = deployed.service.current_price("ISTSI/CC")
    assert crossed.price == D("240000.000000")
    assert crossed.observed_at == NOW - timedelta(seconds=30)  # the older leg's time
    assert crossed.health == "healthy"

    # The primary leg falls back: the crossed pair is degraded and pays the fallback fee.
    server.serve("/istsi", quote("60000", round_id=11), status=500)
    degraded = deployed.service.current_price("ISTSI/CC")
    assert (degraded.source, degraded.health, degraded.fallback_fee) == (
        "secondary",
        "degraded",
        True,
    )

    # A stale leg takes both composed pairs offline, and its rule is recorded under the leg.
    deployed.clock[0] = NOW + timedelta(seconds=120)
    with pytest.raises(OracleOfflineError) as refused:
        deployed.service.current_price("ISTSI/CC")
    assert refused.value.pair == "ISTSI/CC"
    assert refused.value.rules == ("stale",)
    with pytest.raises(OracleOfflineError):
        deployed.service.current_price("USD/CC")
    assert deployed.rules("CC/USD") == [("primary", "stale"), ("primary", "stale")]
    status = {feed.pair: feed.health for feed in deployed.service.oracle_status().feeds}
    assert status == {
        "CC/USD": "offline",
        "ISTSI/CC": "offline",
        "ISTSI/USD": "degraded",
        "USD/CC": "offline",
    }
    assert deployed.service.refresh()["ISTSI/USD"] == "degraded"


def test_migration_0012_creates_the_oracle_tables_as_declared(database_url: str) -> None:
    assert schema_differences(database_url, "oracle") == []


def test_concurrent_evaluations_of_a_pair_never_take_its_round_backwards(
    deployment: tuple[Deployment, OracleConfig], server: PriceServer
) -> None:
    """Many threads ask for one pair at once, its server answering a higher round each time:
    each evaluation locks the pair (its first one too), so the stored round only moves forward
    and ends at the highest round any evaluation used; a reading overtaken by a newer one is
    rejected as round_backwards, never stored."""
    deployed, _config = deployment
    rounds = count(1)
    counter_lock = threading.Lock()

    def next_quote() -> bytes:
        with counter_lock:
            round_id = next(rounds)
        return json.dumps(quote("60000", round_id=round_id)).encode()

    server.answers["/istsi"] = Answer(body=next_quote)
    write(deployed.files["istsi_secondary"], "60000")
    used: list[int] = []
    failures: list[BaseException] = []
    start = threading.Barrier(8)

    def ask() -> None:
        start.wait()
        for _ in range(5):
            try:
                price = deployed.service.current_price("ISTSI/USD")
            except OracleOfflineError:
                continue
            except BaseException as exc:
                failures.append(exc)
                return
            if price.source == "primary":
                assert price.round_id is not None
                used.append(price.round_id)

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert failures == []
    assert used
    with deployed.engine.connect() as connection:
        stored = connection.execute(
            sa.select(oracle_sources.c.round_id).where(
                oracle_sources.c.pair == "ISTSI/USD", oracle_sources.c.source == "primary"
            )
        ).scalar_one()
    assert int(stored) == max(used)
    assert {rule for _source, rule in deployed.rules("ISTSI/USD")} <= {"round_backwards"}
