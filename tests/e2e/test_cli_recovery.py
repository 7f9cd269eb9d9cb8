"""The runbook "Ingestion stopped on a malformed update", driven as an operator drives it.

Covers: ``sluice ingest`` stopping on a malformed update with exit code 2 and a message that names
the update (its id, its offset and the problem) and the command that sets it aside (``sluice
ingest --quarantine ID``); nothing after it ingested, and a second run stopping at the same place
(an update is never skipped silently); ``sluice ingest --quarantine ID`` recording it; the next
``sluice ingest`` carrying on past it; ``sluice check`` finding the books balanced before and
after. The same for a transaction without ``updateId``: the message names it by offset (``sluice
ingest --quarantine offset:N``), the quarantine record carries the problem and the raw update, and
ingestion carries on past it.

How: an embedded ledger in memory records a stream of customers' deposits to the treasury. It is
written out as JSON lines with one deposit broken (a holding's amount ``12,5``, or no
``updateId``) and served by ``sluice ledger serve --replay``; every ``sluice`` command is the
virtualenv's console script run as a process against that server and an SQLite Integration DB.
The customers and the instrument are set up in the DB in process (each ``sluice`` start costs
seconds). What each run did is read back from the DB: the cursor, the balances, the quarantine
record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.ledger import InstrumentId
from sluice.ledger.local import EmbeddedLedger
from sluice.services.books import customer_balances
from sluice.services.ingestion import connection_name
from sluice.services.reference import onboard_instrument, register_customer
from sluice.store import tables
from tests.e2e.test_cli_over_the_wire import Done, Served, environment, sluice, start_server

pytestmark = pytest.mark.slow

CUSTOMERS = 3
# (customer, amount) of each deposit, in ledger order; the one at BROKEN is made malformed.
DEPOSITS = [(0, "10"), (1, "20"), (2, "30"), (0, "40"), (1, "50"), (2, "60")]
BROKEN = 2


@dataclass(frozen=True)
class Recording:
    """A file of recorded updates with one malformed update in it."""

    path: Path
    treasury: str
    coin: InstrumentId
    broken_offset: int
    broken_key: str  # what the operator passes to --quarantine


def holding_views(events: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """The interface views (``viewValue``) of the holdings a transaction creates."""
    for event in events:
        created = event.get("CreatedEvent")
        for view in (created or {}).get("interfaceViews") or []:
            value = view.get("viewValue")
            if isinstance(value, dict) and "amount" in value:
                yield value


def record_deposits(folder: Path, *, without_update_id: bool = False) -> Recording:
    """Customers' 1-step deposits recorded from the treasury's update stream; the deposit at
    ``BROKEN`` gets an amount that is no decimal, or (``without_update_id``) loses its
    ``updateId``, so only its offset names it."""
    ledger = EmbeddedLedger.open(":memory:", seed=14)
    try:
        for node in ("registry", "exchange", "wallets"):
            ledger.add_node(node)
        dso = ledger.allocate_party("dso", "registry")
        treasury = ledger.allocate_party("treasury", "exchange")
        coin = ledger.create_instrument(dso, "Amulet")
        ledger.create_preapproval(treasury, coin)
        people = [ledger.allocate_party(f"cust-{n}", "wallets") for n in range(CUSTOMERS)]
        for person in people:
            ledger.tap(person, coin, 1_000)
        deposit_offsets = []
        for customer, amount in DEPOSITS:
            ledger.transfer(
                people[customer], treasury, coin, Decimal(amount), reason=f"acct-{customer}"
            )
            deposit_offsets.append(ledger.ledger_end(treasury))
            ledger.advance(40)
            ledger.checkpoint()
        items = [json.loads(json.dumps(item)) for item in ledger.updates(treasury, None)]
    finally:
        ledger.close()

    broken_offset = deposit_offsets[BROKEN]
    (broken,) = [
        item["update"]["Transaction"]["value"]
        for item in items
        if item["update"].get("Transaction", {}).get("value", {}).get("offset") == broken_offset
    ]
    if without_update_id:
        del broken["updateId"]
        key = f"offset:{broken_offset}"
    else:
        views = [v for v in holding_views(broken["events"]) if v.get("owner") == treasury]
        assert views, "the deposit creates a holding of the treasury"
        views[0]["amount"] = "12,5"
        key = broken["updateId"]
    path = folder / "recorded.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return Recording(path, treasury, coin, broken_offset, key)


@dataclass(frozen=True)
class Exchange:
    """The operator's side: the DB, the served recording, the environment of every command."""

    db: str
    server: Served
    recording: Recording
    env: dict[str, str]

    def ingest(self, *options: str, code: int = 0) -> Done:
        return sluice(
            "ingest",
            *("--ledger-url", self.server.url, "--party", self.recording.treasury),
            *("--db", self.db),
            *options,
            env=self.env,
            code=code,
        )

    def check(self) -> Done:
        return sluice("check", "--db", self.db, env=self.env)

    def connection(self) -> str:
        return connection_name(self.recording.treasury, bootstrap.participant_node(self.server.url))

    def cursor_offset(self) -> int | None:
        database = bootstrap.database(self.db)
        try:
            with database.uow() as uow:
                cursor = uow.ingestion.load_cursor(self.connection())
        finally:
            database.dispose()
        return None if cursor is None else cursor.offset

    def balances(self) -> dict[str, Decimal]:
        database = bootstrap.database(self.db)
        try:
            found = customer_balances(database.uow)
        finally:
            database.dispose()
        coin = self.recording.coin.key()
        return {
            account.removeprefix("customer:"): held[coin]
            for account, held in found.items()
            if account.startswith("customer:") and coin in held
        }

    def quarantined(self) -> list[dict[str, Any]]:
        engine = sa.create_engine(self.db)
        try:
            with engine.connect() as connection:
                rows = connection.execute(sa.select(tables.quarantined_updates))
                return [dict(row._mapping) for row in rows]
        finally:
            engine.dispose()


def balances_of(deposits: list[tuple[int, str]]) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    for customer, amount in deposits:
        name = f"cust-{customer}"
        totals[name] = totals.get(name, Decimal(0)) + Decimal(amount)
    return totals


@pytest.fixture
def exchange(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Exchange]:
    """``@pytest.mark.parametrize("exchange", ["without_update_id"], indirect=True)``: the
    broken deposit has no ``updateId`` instead of a bad amount."""
    broken = getattr(request, "param", "bad_amount")
    recording = record_deposits(tmp_path, without_update_id=broken == "without_update_id")
    db = f"sqlite:///{tmp_path / 'sluice.db'}"
    database = bootstrap.database(db)
    try:
        for n in range(CUSTOMERS):
            register_customer(database.uow, f"cust-{n}", f"Customer {n}", [f"acct-{n}"])
        onboard_instrument(database.uow, recording.coin)
    finally:
        database.dispose()
    server = start_server(tmp_path / "server", "--replay", str(recording.path))
    try:
        yield Exchange(db, server, recording, environment(tmp_path / "data"))
    finally:
        server.stop()


def test_ingest_stops_on_a_malformed_update_and_quarantine_lets_it_continue(
    exchange: Exchange,
) -> None:
    key = exchange.recording.broken_key
    offset = exchange.recording.broken_offset

    stopped = exchange.ingest("--once", code=2)
    message = " ".join(stopped.stderr.split())  # the message may wrap
    assert "error 40 ingestion_stopped" in message, stopped.explained()
    assert f"at offset {offset}" in message, stopped.explained()
    assert f"malformed update '{key}'" in message, stopped.explained()
    assert "'12,5' is not a decimal" in message, stopped.explained()
    assert "Nothing after it was ingested" in message, stopped.explained()
    assert f"`sluice ingest --quarantine {key}`" in message, stopped.explained()
    # Everything before it is in, nothing after it.
    assert exchange.cursor_offset() == offset - 1
    assert exchange.balances() == balances_of(DEPOSITS[:BROKEN])
    assert "the books balance" in exchange.check().stderr

    # Starting again stops at the same place: the update is never skipped silently.
    again = exchange.ingest("--once", code=2)
    assert f"`sluice ingest --quarantine {key}`" in " ".join(again.stderr.split())
    assert exchange.cursor_offset() == offset - 1

    set_aside = exchange.ingest("--quarantine", key)
    assert f"update {key} set aside; ingestion will skip it" in set_aside.stderr
    (record,) = exchange.quarantined()
    assert (record["update_id"], record["offset"], record["skipped_at"]) == (key, offset, None)
    # Recorded with the failure it caused: the problem and the raw update.
    assert "'12,5' is not a decimal" in record["problem"], record
    assert key in record["raw"] and "12,5" in record["raw"]

    carried_on = exchange.ingest("--once")
    assert "ingested" in carried_on.stderr, carried_on.explained()
    assert exchange.cursor_offset() == exchange.server.ledger_end()
    # Every deposit but the quarantined one is credited, each once.
    expected = balances_of(DEPOSITS[:BROKEN] + DEPOSITS[BROKEN + 1 :])
    assert exchange.balances() == expected
    assert "the books balance" in exchange.check().stderr
    (record,) = exchange.quarantined()
    assert record["skipped_at"] is not None  # ingestion went past it


@pytest.mark.parametrize("exchange", ["without_update_id"], indirect=True)
def test_an_update_without_id_stops_ingestion_and_quarantine_by_offset_lets_it_continue(
    exchange: Exchange,
) -> None:
    key = exchange.recording.broken_key
    offset = exchange.recording.broken_offset
    assert key == f"offset:{offset}"

    stopped = exchange.ingest("--once", code=2)
    message = " ".join(stopped.stderr.split())
    assert "error 40 ingestion_stopped" in message, stopped.explained()
    assert (
        f"ingestion stopped at a malformed update without a readable update id at offset {offset}"
        in message
    ), stopped.explained()
    assert "updateId" in message, stopped.explained()
    assert f"`sluice ingest --quarantine {key}`" in message, stopped.explained()
    assert exchange.cursor_offset() == offset - 1
    assert exchange.balances() == balances_of(DEPOSITS[:BROKEN])

    set_aside = exchange.ingest("--quarantine", key)
    assert f"update {key} set aside; ingestion will skip it" in set_aside.stderr
    (record,) = exchange.quarantined()
    assert (record["update_id"], record["offset"], record["skipped_at"]) == (key, offset, None)
    # Recorded with the failure it caused: the problem and the raw update.
    assert record["problem"] and "updateId" in record["problem"], record
    recorded = json.loads(record["raw"] or "null")
    assert recorded["update"]["Transaction"]["value"]["offset"] == offset, record
    assert "updateId" not in recorded["update"]["Transaction"]["value"], record

    carried_on = exchange.ingest("--once")
    assert "ingested" in carried_on.stderr, carried_on.explained()
    assert exchange.cursor_offset() == exchange.server.ledger_end()
    expected = balances_of(DEPOSITS[:BROKEN] + DEPOSITS[BROKEN + 1 :])
    assert exchange.balances() == expected
    assert "the books balance" in exchange.check().stderr
    (record,) = exchange.quarantined()
    assert record["skipped_at"] is not None
