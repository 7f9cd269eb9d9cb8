"""The real Canton fixtures read the same from their files as streamed by a server replaying them.

How: each fixture of ``../shared/reference/canton/fixtures`` that holds a stream of updates (the
Wallet SDK's ``mock-txs.json`` and ``mock-utility-payload-ledger-effects.json``, and the
exchange integration guide's captures, each a stream of one update) is served in place by
:meth:`LedgerServer.replay` on a local port and read back with :class:`CantonLedgerClient` — over
the ``/v2/updates`` WebSocket, and once more with the HTTP list form in small pages. The items
must be the file's own, in order, each as a ``JsGetUpdatesResponse`` (a bare ``JsTransaction`` of
the file wrapped as ``{"update": {"Transaction": {"value": ...}}}``; the normalisation is written
out here, not borrowed from the server).

Then both readings are ingested into fresh in-memory Integration DBs — the file the way
``sluice ledger replay`` reads it (:class:`UpdateFile`), the stream through the Canton client — and
what ingestion stored must be the same: the treasury view (cursor, holdings, pending
instructions, history), the balances, the books' check, and the stored updates.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.history import item_offset
from sluice.ledger.canton import CantonLedgerClient, LedgerHttp, NoAuth
from sluice.ledger.file import UpdateFile
from sluice.ledger.local.server import LedgerServer
from sluice.ports import LedgerClient
from sluice.services.books import check_invariant, customer_balances, treasury_view
from sluice.services.ingestion import Ingestion, IngestionSettings
from sluice.store import tables
from tests.conftest import reference_path

pytestmark = pytest.mark.conformance

# Each stream and the party whose view it is (None: the witness of its first event).
STREAMS: dict[str, str | None] = {
    "mock-txs.json": "alice::normalized",
    "mock-utility-payload-ledger-effects.json": None,
    "guide-1-step-transfer.json": None,
    "guide-transfer-instruction-create.json": None,
    "guide-transfer-instruction-accept.json": None,
}
SEVERAL_UPDATES = ["mock-txs.json", "mock-utility-payload-ledger-effects.json"]
CONNECTION = "conformance"
READERS = ["websocket", "list"]


def fixture_path(name: str) -> Path:
    return reference_path("canton", "fixtures", name)


def file_items(path: Path) -> list[dict[str, Any]]:
    """The file's items as recorded: a JSON array, or one object as a stream of one."""
    with path.open(encoding="utf-8") as file:
        content = json.load(file)
    items = content if isinstance(content, list) else [content]
    assert items and all(isinstance(item, dict) for item in items)
    return items


def as_update_response(item: dict[str, Any]) -> dict[str, Any]:
    """A recorded item as a ``JsGetUpdatesResponse``: as it is if it already is one, else a
    ``JsTransaction`` wrapped."""
    if "update" in item:
        return item
    assert "updateId" in item and "events" in item, "a recorded item is not a JsTransaction"
    return {"update": {"Transaction": {"value": item}}}


def transaction_of(item: dict[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = as_update_response(item)["update"]["Transaction"]["value"]
    return value


def party_of(name: str, items: list[dict[str, Any]]) -> str:
    party = STREAMS[name]
    if party is not None:
        return party
    event = transaction_of(items[0])["events"][0]
    witness: str = next(iter(event.values()))["witnessParties"][0]
    return witness


def client_of(server: LedgerServer, reader: str) -> CantonLedgerClient:
    # Small pages on the list form, so that a stream of several items takes several pages.
    http = LedgerHttp(server.url, NoAuth(), timeout_s=10, retries_max=0)
    if reader == "websocket":
        return CantonLedgerClient(http)
    return CantonLedgerClient(http, use_websocket=False, page_size=3)


@pytest.fixture(params=list(STREAMS))
def stream(request: pytest.FixtureRequest) -> Iterator[tuple[str, Path, LedgerServer]]:
    """A fixture file and a server replaying it on a free local port (in a thread)."""
    name: str = request.param
    path = fixture_path(name)
    with LedgerServer.replay(path, port=0).start() as server:
        yield name, path, server


# --- the items ------------------------------------------------------------------------------------


@pytest.mark.parametrize("reader", READERS)
def test_the_served_stream_is_the_files_items_in_order(
    stream: tuple[str, Path, LedgerServer], reader: str
) -> None:
    name, path, server = stream
    items = file_items(path)
    client = client_of(server, reader)
    expected = [as_update_response(item) for item in items]
    got = list(client.updates(party_of(name, items), None))
    # Offsets first: a missing or extra item shows as such, not as a diff of whole updates.
    assert [item_offset(item) for item in got] == [item_offset(item) for item in expected]
    assert got == expected
    assert client.uses_websocket == (reader == "websocket")  # no fallback was needed


def test_the_ledger_end_is_the_files_last_offset(stream: tuple[str, Path, LedgerServer]) -> None:
    _name, path, server = stream
    offsets = [item_offset(as_update_response(item)) for item in file_items(path)]
    assert None not in offsets
    assert client_of(server, "websocket").ledger_end() == max(o for o in offsets if o is not None)
    assert UpdateFile(path).ledger_end() == client_of(server, "list").ledger_end()


@pytest.mark.parametrize("stream", SEVERAL_UPDATES, indirect=True)
def test_reading_after_an_offset_serves_the_rest_of_the_file(
    stream: tuple[str, Path, LedgerServer],
) -> None:
    name, path, server = stream
    items = [as_update_response(item) for item in file_items(path)]
    assert len(items) > 2
    middle = item_offset(items[len(items) // 2])
    assert middle is not None
    rest = [item for item in items if (item_offset(item) or 0) > middle]
    for reader in READERS:
        got = list(client_of(server, reader).updates(party_of(name, items), middle))
        assert got == rest, reader


# --- what ingestion makes of them -----------------------------------------------------------------


def ingested(source: LedgerClient, party: str) -> dict[str, Any]:
    """Everything ingestion stored from ``source``, in a fresh in-memory DB."""
    database = bootstrap.database("sqlite://")
    try:
        progress = Ingestion(
            database.uow,
            source,
            party,
            connection=CONNECTION,
            settings=IngestionSettings(batch_size_max=4, read_attempts_max=1),
            sleep=lambda _s: None,
        ).run()
        assert progress.reached_end
        table = tables.ingested_updates
        with database.engine.connect() as connection:
            updates = connection.execute(
                sa.select(table.c.update_id, table.c.offset, table.c.status).order_by(
                    table.c.offset
                )
            ).all()
        return {
            "view": treasury_view(database.uow, party, CONNECTION),
            "balances": customer_balances(database.uow),
            "books": check_invariant(database.uow).problems,
            "updates": [tuple(row) for row in updates],
        }
    finally:
        database.dispose()


@pytest.mark.parametrize("reader", READERS)
def test_ingesting_the_stream_stores_what_ingesting_the_file_stores(
    stream: tuple[str, Path, LedgerServer], reader: str
) -> None:
    name, path, server = stream
    items = file_items(path)
    party = party_of(name, items)
    from_file = ingested(UpdateFile(path), party)
    from_server = ingested(client_of(server, reader), party)
    assert from_server["updates"] == from_file["updates"]
    assert from_server == from_file
    assert from_file["view"]["history"], "nothing was ingested: the comparison would be empty"
    stored_ids = [update_id for update_id, _offset, _status in from_file["updates"]]
    assert sorted(stored_ids) == sorted(transaction_of(item)["updateId"] for item in items)
    assert from_file["view"]["cursor"]["offset"] == UpdateFile(path).ledger_end()
