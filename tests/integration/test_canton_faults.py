"""Bad answers and faults between sluice and a participant node, over a real socket.

How: each test builds a :class:`~sluice.sandbox.Sandbox` served over HTTP (``via_http=True``: the
embedded ledger behind :class:`~sluice.ledger.local.server.LedgerServer`), arms one fault of the
server (``server.faults``: an HTTP status, a body that is not JSON, a WebSocket stream cut in the
middle of a message, a slow registry) or serves it with auth, and drives ingestion or the
withdrawal worker through the Canton client (:class:`CantonLedgerClient`, :class:`CantonCommands`,
:class:`HttpRegistry`) against it. The client's HTTP requests are recorded by a transport that
wraps the real one, and its back-off pauses by an injected sleep, so retries are counted without
waiting for them.

Each test checks two things:

* the fault is handled as the transport promises: a clear error naming what failed (500, a body
  that is not JSON, an expired static token, a registry timing out) or a bounded retry that then
  succeeds (503, 429 after its ``Retry-After``, 413 by halving the page, a renewed token);
* ingestion's cursor never moves past an update that was not stored: after the fault, exactly
  the treasury's transactions at or before the cursor are in ``ingested_updates`` and none after
  it; and a clean run afterwards reaches the end of the treasury's stream with the books balancing
  and every deposit credited exactly once.

What the ledger holds is read independently of the DB, from the embedded ledger in process.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from sluice.domain.history import item_offset
from sluice.domain.ledger import InstrumentId
from sluice.domain.withdrawals import Withdrawal
from sluice.ledger.canton import (
    CantonCommands,
    CantonLedgerClient,
    HttpRegistry,
    LedgerHttp,
    NoAuth,
    OAuth2ClientCredentials,
    SelfSignedToken,
    StaticToken,
    TokenSource,
)
from sluice.ledger.local.server import LedgerServer, ServerAuth
from sluice.ports import RegistryClient
from sluice.sandbox import Sandbox
from sluice.services.books import check_invariant, customer_balances
from sluice.services.ingestion import Ingestion, IngestionSettings, IngestionStoppedError
from sluice.services.withdrawals import WithdrawalWorker
from sluice.store import tables

UPDATES = "/v2/updates"
LEDGER_END = "/v2/state/ledger-end"
NODE_PATH = "/nodes/exchange"  # the treasury's node, as the sandbox serves it
SECRET = "test-secret-for-the-ledger-server"


# --- recording what the client does ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Seen:
    """One HTTP request the client sent and the status it got."""

    method: str
    path: str
    limit: int | None
    status: int


class RecordingTransport(httpx.BaseTransport):
    """The real HTTP transport, recording each request; ``after`` runs once each answer is in."""

    def __init__(self, after: Callable[[Seen], None] | None = None) -> None:
        self._inner = httpx.HTTPTransport()
        self.seen: list[Seen] = []
        self.after = after

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self._inner.handle_request(request)
        limit = request.url.params.get("limit")
        seen = Seen(
            request.method,
            request.url.path,
            int(limit) if limit is not None else None,
            response.status_code,
        )
        self.seen.append(seen)
        if self.after is not None:
            self.after(seen)
        return response

    def close(self) -> None:
        self._inner.close()

    def statuses(self, path_suffix: str) -> list[int]:
        return [s.status for s in self.seen if s.path.endswith(path_suffix)]


@dataclass
class Reader:
    """A Canton client on the treasury's node, with what it sent and how long it paused."""

    client: CantonLedgerClient
    transport: RecordingTransport
    pauses: list[float] = field(default_factory=list)


ReaderFactory = Callable[..., Reader]


@pytest.fixture
def reader() -> Iterator[ReaderFactory]:
    """Makes :class:`Reader` s (closed after the test)."""
    made: list[LedgerHttp] = []

    def make(
        url: str,
        *,
        auth: TokenSource | None = None,
        use_websocket: bool = True,
        page_size: int = 200,
        after: Callable[[Seen], None] | None = None,
    ) -> Reader:
        transport = RecordingTransport(after)
        pauses: list[float] = []
        http = LedgerHttp(
            url,
            auth or NoAuth(),
            timeout_s=5,
            retries_max=2,
            sleep=pauses.append,
            transport=transport,
            stream_idle_timeout_s=5,
        )
        made.append(http)
        client = CantonLedgerClient(http, page_size=page_size, use_websocket=use_websocket)
        return Reader(client, transport, pauses)

    yield make
    for http in made:
        http.close()


def ingestion(sb: Sandbox, source: Reader, *, read_attempts_max: int = 5) -> Ingestion:
    return Ingestion(
        sb.database.uow,
        source.client,
        sb.treasury,
        connection=sb.connection,
        settings=IngestionSettings(read_attempts_max=read_attempts_max, retry_delay_s=0.0),
        sleep=lambda _s: None,
    )


# --- the world ------------------------------------------------------------------------------------


@dataclass
class World:
    sb: Sandbox
    deposits: dict[str, Decimal] = field(default_factory=dict)

    @property
    def server(self) -> LedgerServer:
        assert self.sb.server is not None
        return self.sb.server

    @property
    def node_url(self) -> str:
        return self.server.node_url(self.sb.node)

    def deposit(self, customer_id: str, amount: str) -> None:
        self.sb.deposit(customer_id, amount)
        self.deposits[customer_id] = self.deposits.get(customer_id, Decimal(0)) + Decimal(amount)

    def deposit_several(self, count: int) -> None:
        for n in range(count):
            self.deposit(f"cust-{n % 2}", str(10 + n))


@pytest.fixture
def world() -> Iterator[World]:
    sb = Sandbox.create("sqlite://", customers=2, via_http=True)
    try:
        yield World(sb)
    finally:
        sb.close()


def treasury_items(sb: Sandbox) -> list[dict[str, Any]]:
    """The treasury's stream as the ledger itself has it (not through HTTP)."""
    return [dict(i) for i in sb.ledger.client(sb.treasury).updates(sb.treasury, 0)]


def transactions(items: list[dict[str, Any]]) -> dict[str, int]:
    """Update id → offset of the transactions among ``items``."""
    found: dict[str, int] = {}
    for item in items:
        if "Transaction" in item["update"]:
            offset = item_offset(item)
            assert offset is not None
            found[item["update"]["Transaction"]["value"]["updateId"]] = offset
    return found


def stored_updates(sb: Sandbox) -> dict[str, int]:
    table = tables.ingested_updates
    with sb.database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.update_id, table.c.offset).where(table.c.connection == sb.connection)
        ).all()
    return {str(update_id): int(offset) for update_id, offset in rows}


def cursor_offset(sb: Sandbox) -> int | None:
    with sb.database.uow() as uow:
        cursor = uow.ingestion.load_cursor(sb.connection)
    return None if cursor is None else cursor.offset


def assert_cursor_not_past_storage(sb: Sandbox) -> int | None:
    """Exactly the treasury's transactions at or before the cursor are stored, and the cursor is
    no further than the last stored update (or a checkpoint after it). Returns the cursor."""
    offset = cursor_offset(sb)
    stored = stored_updates(sb)
    items = treasury_items(sb)
    if offset is None:
        assert stored == {}
        return None
    expected = {u: o for u, o in transactions(items).items() if o <= offset}
    assert stored == expected
    at_cursor = [i for i in items if item_offset(i) == offset]
    assert len(at_cursor) == 1, f"the cursor {offset} is at no item of the treasury's stream"
    if "Transaction" in at_cursor[0]["update"]:
        assert offset == max(stored.values())
    return offset


def assert_clean_run_completes(world: World) -> None:
    """With the faults gone, ingestion reaches the end; the books balance and each deposit is
    credited exactly once."""
    sb = world.sb
    world.server.faults.clear()
    sb.ingest()
    items = treasury_items(sb)
    assert cursor_offset(sb) == item_offset(items[-1])
    assert cursor_offset(sb) == sb.ledger_client().ledger_end()
    assert stored_updates(sb) == transactions(items)
    assert check_invariant(sb.database.uow).problems == []
    balances = customer_balances(sb.database.uow)
    for customer_id, total in world.deposits.items():
        assert balances[f"customer:{customer_id}"] == {sb.coin.key(): total}


def ingest_some_first(world: World) -> int | None:
    """Deposits ingested cleanly before the fault, so the cursor has somewhere to stay."""
    world.deposit_several(2)
    world.sb.ingest()
    return assert_cursor_not_past_storage(world.sb)


# --- HTTP statuses --------------------------------------------------------------------------------


def test_a_500_is_not_retried_and_stops_ingestion_with_the_nodes_error(
    world: World, reader: ReaderFactory
) -> None:
    before = ingest_some_first(world)
    world.deposit_several(3)
    world.server.faults.fail_next(LEDGER_END, 500, count=10)
    source = reader(world.node_url)
    with pytest.raises(IngestionStoppedError) as caught:
        ingestion(world.sb, source, read_attempts_max=3).run()
    message = str(caught.value)
    assert "failed 3 times in a row" in message
    assert f"GET {NODE_PATH}{LEDGER_END}: HTTP 500 INJECTED_HTTP_500" in message
    assert f"the cursor stays at offset {before}" in message
    # One request per ingestion attempt: the transport never asked again itself.
    assert source.transport.statuses(LEDGER_END) == [500, 500, 500]
    assert source.pauses == []
    assert assert_cursor_not_past_storage(world.sb) == before
    assert_clean_run_completes(world)


@pytest.mark.parametrize("use_websocket", [True, False], ids=["websocket", "list"])
def test_a_503_is_retried_with_backoff_then_ingestion_succeeds(
    world: World, reader: ReaderFactory, use_websocket: bool
) -> None:
    ingest_some_first(world)
    world.deposit_several(3)
    world.server.faults.fail_next(UPDATES, 503, count=2)
    source = reader(world.node_url, use_websocket=use_websocket)
    progress = ingestion(world.sb, source, read_attempts_max=1).run()
    assert progress.reached_end
    assert progress.read_retries == 0
    assert len(source.pauses) == 2  # two retries by the transport, within the backoff bounds
    assert all(0 < pause <= 5 for pause in source.pauses)
    if not use_websocket:
        assert source.transport.statuses(UPDATES) == [503, 503, 200]
    assert assert_cursor_not_past_storage(world.sb) == item_offset(treasury_items(world.sb)[-1])
    assert_clean_run_completes(world)


@pytest.mark.parametrize("use_websocket", [True, False], ids=["websocket", "list"])
def test_a_429_is_retried_after_the_delay_it_gives(
    world: World, reader: ReaderFactory, use_websocket: bool
) -> None:
    world.deposit_several(3)
    world.server.faults.fail_next(UPDATES, 429, retry_after=2)
    source = reader(world.node_url, use_websocket=use_websocket)
    progress = ingestion(world.sb, source, read_attempts_max=1).run()
    assert progress.reached_end
    assert source.pauses == [2.0]
    if not use_websocket:
        assert source.transport.statuses(UPDATES) == [429, 200]
    assert_cursor_not_past_storage(world.sb)
    assert_clean_run_completes(world)


def test_a_413_on_the_list_form_halves_the_page_until_the_node_takes_it(
    world: World, reader: ReaderFactory
) -> None:
    """A node whose list limit (2) is below the client's page (8): 413 for 8 and 4, then pages
    of 2 to the end."""
    world.deposit_several(5)
    strict = LedgerServer(world.sb.ledger, default_node=world.sb.node, list_limit=2, control=False)
    with strict.start():
        source = reader(strict.node_url(world.sb.node), use_websocket=False, page_size=8)
        progress = ingestion(world.sb, source, read_attempts_max=1).run()
    assert progress.reached_end
    pages = [(s.limit, s.status) for s in source.transport.seen if s.path.endswith(UPDATES)]
    assert pages[:3] == [(8, 413), (4, 413), (2, 200)]
    assert all(page == (2, 200) for page in pages[2:])
    items = treasury_items(world.sb)
    assert len(pages) - 2 == -(-len(items) // 2)  # ceil: every page after the halving was full
    assert source.client.page_size == 2
    assert source.pauses == []  # a 413 is answered by a smaller page, not by waiting
    assert_cursor_not_past_storage(world.sb)
    assert_clean_run_completes(world)


# --- streams and bodies that break ----------------------------------------------------------------


def test_a_stream_cut_mid_message_stores_only_the_whole_items_before_it(
    world: World, reader: ReaderFactory
) -> None:
    world.deposit_several(5)
    world.server.faults.cut_stream_after(2)
    source = reader(world.node_url)
    with pytest.raises(IngestionStoppedError) as caught:
        ingestion(world.sb, source, read_attempts_max=1).run()
    message = str(caught.value)
    items = treasury_items(world.sb)
    assert f"failed after 2 items (last offset {item_offset(items[1])})" in message
    assert f"WS {NODE_PATH}{UPDATES}: " in message
    assert f"the cursor stays at offset {item_offset(items[1])}" in message
    offset = assert_cursor_not_past_storage(world.sb)
    assert offset == item_offset(items[1])
    assert len(stored_updates(world.sb)) == 2
    assert_clean_run_completes(world)


def test_ingestion_resumes_a_cut_stream_from_its_cursor_by_itself(
    world: World, reader: ReaderFactory
) -> None:
    world.deposit_several(5)
    world.server.faults.cut_stream_after(3)
    progress = ingestion(world.sb, reader(world.node_url), read_attempts_max=2).run()
    assert progress.reached_end
    assert progress.read_retries == 1
    assert_cursor_not_past_storage(world.sb)
    assert_clean_run_completes(world)


def test_a_ledger_end_that_is_not_json_is_a_clear_error_and_nothing_moves(
    world: World, reader: ReaderFactory
) -> None:
    before = ingest_some_first(world)
    world.deposit_several(2)
    world.server.faults.malformed_next(LEDGER_END)
    source = reader(world.node_url)
    with pytest.raises(IngestionStoppedError) as caught:
        ingestion(world.sb, source, read_attempts_max=1).run()
    message = str(caught.value)
    assert "reading the ledger end failed" in message
    assert f"GET {NODE_PATH}{LEDGER_END}: HTTP 200: the answer is not JSON" in message
    assert source.transport.statuses(LEDGER_END) == [200]  # not asked again
    assert assert_cursor_not_past_storage(world.sb) == before
    assert_clean_run_completes(world)


def test_a_list_page_that_is_not_json_keeps_only_the_pages_before_it(
    world: World, reader: ReaderFactory
) -> None:
    world.deposit_several(4)
    server = world.server

    def break_the_second_page(seen: Seen) -> None:
        if seen.path.endswith(UPDATES) and len(source.transport.statuses(UPDATES)) == 1:
            server.faults.malformed_next(UPDATES)

    source = reader(world.node_url, use_websocket=False, page_size=2, after=break_the_second_page)
    with pytest.raises(IngestionStoppedError) as caught:
        ingestion(world.sb, source, read_attempts_max=1).run()
    message = str(caught.value)
    assert "failed after 2 items" in message
    assert f"POST {NODE_PATH}{UPDATES}: HTTP 200: the answer is not JSON" in message
    assert source.transport.statuses(UPDATES) == [200, 200]  # the broken page was not retried
    offset = assert_cursor_not_past_storage(world.sb)
    assert offset == item_offset(treasury_items(world.sb)[1])
    assert len(stored_updates(world.sb)) == 2
    assert_clean_run_completes(world)


# --- tokens ---------------------------------------------------------------------------------------


@pytest.fixture
def guarded(world: World) -> Iterator[tuple[LedgerServer, ServerAuth]]:
    """A second server on the same ledger that wants a token. The tokens it issues live 2 s
    (1 to 2 s, as ``exp`` is in whole seconds): short enough to wait for one to expire, long
    enough for a renewed one to last through a small ingestion."""
    auth = ServerAuth(SECRET, oauth_clients={"sluice": "client-secret"}, token_ttl_s=2)
    server = LedgerServer(world.sb.ledger, default_node=world.sb.node, auth=auth, control=False)
    with server.start():
        yield server, auth


class FrozenClock:
    """A client clock that stands still unless moved: the client believes a token valid for as
    long as the test likes."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def wait_until_expired(auth: ServerAuth, token: str, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (auth.check_token(token) or "").startswith("expired") is False:
        assert time.monotonic() < deadline, "the token did not expire in time"
        time.sleep(0.05)


def test_an_oauth_token_the_node_calls_expired_is_renewed_and_ingestion_carries_on(
    world: World, reader: ReaderFactory, guarded: tuple[LedgerServer, ServerAuth]
) -> None:
    server, auth = guarded
    before = ingest_some_first(world)
    world.deposit_several(3)
    tokens = OAuth2ClientCredentials(
        f"{server.url}/oauth/token", "sluice", "client-secret", clock=FrozenClock()
    )
    first = tokens.token()
    assert first is not None
    wait_until_expired(auth, first)  # the fault: the token the client holds runs out
    source = reader(server.node_url(world.sb.node), auth=tokens)

    progress = ingestion(world.sb, source, read_attempts_max=1).run()
    assert progress.reached_end
    assert progress.cursor is not None and before is not None
    assert progress.cursor.offset > before
    assert tokens.fetches == 2  # renewed once, on the node's 401
    assert [s.status for s in source.transport.seen][:2] == [401, 200]
    assert 401 not in [s.status for s in source.transport.seen][1:]
    assert source.pauses == []
    assert_cursor_not_past_storage(world.sb)
    assert_clean_run_completes(world)


def test_a_self_signed_token_is_renewed_before_it_expires_and_ingestion_carries_on(
    world: World, reader: ReaderFactory, guarded: tuple[LedgerServer, ServerAuth]
) -> None:
    server, _auth = guarded
    clock = FrozenClock()
    clock.now -= 55  # the first token is signed as if 55 s ago: it has about 5 s left
    tokens = SelfSignedToken(SECRET, "sluice", ttl_s=60, clock=clock)
    source = reader(server.node_url(world.sb.node), auth=tokens)
    world.deposit_several(2)
    ingestion(world.sb, source).run()
    first = tokens.token()
    world.deposit_several(3)
    clock.now = time.time()  # time has caught up: within the renewal margin of its expiry
    progress = ingestion(world.sb, source, read_attempts_max=1).run()
    assert progress.reached_end
    assert tokens.token() != first
    assert 401 not in [s.status for s in source.transport.seen]
    assert_cursor_not_past_storage(world.sb)
    assert_clean_run_completes(world)


def test_an_expired_static_token_fails_clearly_without_a_retry_storm(
    world: World, reader: ReaderFactory, guarded: tuple[LedgerServer, ServerAuth]
) -> None:
    server, auth = guarded
    before = ingest_some_first(world)
    world.deposit_several(2)
    expired = StaticToken(auth.issue_token("sluice", ttl_s=-60))
    source = reader(server.node_url(world.sb.node), auth=expired)
    with pytest.raises(IngestionStoppedError) as caught:
        ingestion(world.sb, source, read_attempts_max=2).run()
    message = str(caught.value)
    assert f"GET {NODE_PATH}{LEDGER_END}: HTTP 401 UNAUTHENTICATED" in message
    assert "expired: the access token has expired" in message
    assert "check the credentials" in message
    # Refused credentials stop ingestion at once: one request, repeated neither by the
    # transport nor by ingestion.
    assert [s.status for s in source.transport.seen] == [401]
    assert source.pauses == []
    assert assert_cursor_not_past_storage(world.sb) == before
    assert_clean_run_completes(world)


# --- registries -----------------------------------------------------------------------------------


def test_a_registry_that_times_out_delays_the_withdrawal_which_is_paid_once_later(
    world: World,
) -> None:
    sb = world.sb
    world.deposit("cust-0", "100")
    sb.ingest()
    withdrawal = sb.withdraw("cust-0", "30", key="w-1")
    receiver = sb.customers["cust-0"]
    held_before = sum(h.amount for h in sb.ledger.active_holdings(receiver, sb.coin))

    registry_pauses: list[float] = []
    opened: dict[str, HttpRegistry] = {}

    def registries(instrument: InstrumentId) -> RegistryClient:
        """Each admin's registry with a 0.2 s timeout and one retry."""
        if instrument.admin not in opened:
            opened[instrument.admin] = HttpRegistry(
                world.server.registry_url(instrument.admin),
                instrument.admin,
                timeout_s=0.2,
                retries_max=1,
                sleep=registry_pauses.append,
            )
        return opened[instrument.admin]

    commands_transport = RecordingTransport()
    commands_http = LedgerHttp(world.node_url, NoAuth(), transport=commands_transport)
    commands = CantonCommands(
        commands_http, clock=sb.clock, local_margin_s=sb.withdrawal_settings.trec_span_s / 4
    )
    worker = WithdrawalWorker(
        sb.database.uow,
        commands,
        registries,
        treasury=sb.treasury,
        connection=sb.connection,
        clock=sb.clock,
        settings=sb.withdrawal_settings,
    )
    try:
        pay_after_a_registry_timeout(world, worker, withdrawal, registry_pauses, commands_transport)
    finally:
        commands_http.close()
        for registry in opened.values():
            registry.close()
    held_after = sum(h.amount for h in sb.ledger.active_holdings(receiver, sb.coin))
    assert held_after - held_before == Decimal(30)
    world.deposits["cust-0"] -= Decimal(30)
    assert_cursor_not_past_storage(sb)
    assert_clean_run_completes(world)


def pay_after_a_registry_timeout(
    world: World,
    worker: WithdrawalWorker,
    withdrawal: Withdrawal,
    registry_pauses: list[float],
    commands_transport: RecordingTransport,
) -> None:
    sb = world.sb
    end = sb.ledger.ledger_end(sb.node)
    world.server.faults.delay_next("/transfer-factory", 1.0, count=2)

    tick = worker.run_once(upkeep=False)
    assert (tick.submitted, tick.submit_errors) == (0, 1)
    (error,) = tick.errors
    assert error.startswith(f"{withdrawal.id}: registry: the registry at {world.server.url}")
    assert "/transfer-factory: timed out after 0.2 s (after 2 attempts)" in error
    assert len(registry_pauses) == 1  # the registry was asked twice, as bounded
    assert commands_transport.seen == []  # nothing was submitted
    assert sb.ledger.ledger_end(sb.node) == end
    failed = _withdrawal(sb, withdrawal.id)
    assert failed.last_error is not None and failed.last_error.startswith("registry: ")

    # Once its attempt's trec_tgt has passed unseen, the worker tries again and pays.
    assert failed.trec_tgt is not None
    sb.ledger.advance((failed.trec_tgt - sb.clock()).total_seconds() + 1)
    sb.ledger.checkpoint()
    sb.ingest()
    tick = worker.run_once(upkeep=False)
    assert (tick.submitted, tick.submit_errors) == (1, 0)
    assert [s.path for s in commands_transport.seen] == [f"{NODE_PATH}/v2/commands/submit-and-wait"]
    sb.ingest()
    assert _withdrawal(sb, withdrawal.id).status == "completed"
    assert worker.run_once(upkeep=False).submitted == 0  # and never again
    assert len(commands_transport.seen) == 1


def _withdrawal(sb: Sandbox, withdrawal_id: str) -> Withdrawal:
    with sb.database.uow() as uow:
        found = uow.withdrawals.get(withdrawal_id)
    assert found is not None
    return found
