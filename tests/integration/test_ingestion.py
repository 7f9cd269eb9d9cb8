"""Ingestion into the Integration DB, on SQLite and PostgreSQL, driven through ``Ingestion.run``.

Uses the real treasury-view fixtures (a 1-step deposit with a reason, an incoming offer and its
accept) and small hand-made streams for checkpoints, read errors, malformed updates and crashes
in the middle of a batch. Malformed updates come in every kind an operator meets: one with an id
(set aside by id), a transaction without ``updateId`` and an update of no known shape (set aside
by ``offset:N``, recorded with the problem and the raw update), and one without any readable
offset (the error points to moving the cursor instead).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId
from sluice.ledger.file import UpdateFile
from sluice.ports import LedgerReadError
from sluice.services.books import check_invariant, customer_balances, treasury_view
from sluice.services.ingestion import (
    Ingestion,
    IngestionSettings,
    IngestionStoppedError,
    quarantine_update,
)
from sluice.services.reference import onboard_instrument, register_customer
from sluice.store import tables
from sluice.store.repositories import SqlIngestionRepository
from tests.conftest import reference_path

DSO = "DSO::12204b8b621ec1dedd51ee2510085f8164cad194953496494d32f541f3f2c170e962"
AMULET = InstrumentId(DSO, "Amulet")
DEPOSIT_TREASURY = (
    "treasury-party::1220278a4a0eb2c244b425dff62853ef1cd04ca1095bffcea465c0de766faf9ab8cd"
)
OFFER_AMULET = InstrumentId(
    "DSO::1220d26d73867a428814de451fdd8e716acf45fe59c6569d76ad77d42270629f3ce9", "Amulet"
)
OFFER_TREASURY = (
    "treasury-party::12207bd11907b9b3c11ade702d30b556bfe635314d3d0f708f9677e09a4ff096ef87"
)


def fixture(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(reference_path("canton", "fixtures", name).read_text())
    return data


def transaction(item: Mapping[str, Any]) -> dict[str, Any]:
    value: dict[str, Any] = item["update"]["Transaction"]["value"]
    return value


def checkpoint(offset: int, record_time: str) -> dict[str, Any]:
    return {
        "update": {
            "OffsetCheckpoint": {
                "value": {
                    "offset": offset,
                    "synchronizerTimes": [
                        {"synchronizerId": "global-domain::1220", "recordTime": record_time}
                    ],
                }
            }
        }
    }


def write_lines(path: Path, items: list[Mapping[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def deposit_stream(count: int) -> list[dict[str, Any]]:
    """``count`` copies of the real 1-step deposit, each its own update at its own offset."""
    base = fixture("guide-1-step-transfer.json")
    items = []
    for n in range(count):
        item = copy.deepcopy(base)
        tx = transaction(item)
        tx["updateId"] = f"{tx['updateId']}-{n}"
        tx["offset"] = 1000 + n
        tx["recordTime"] = f"2026-01-01T00:00:{n:02d}.000000Z"
        for event in tx["events"]:
            body = next(iter(event.values()))
            body["offset"] = tx["offset"]
            if "CreatedEvent" in event:
                body["contractId"] = f"{body['contractId']}-{n}"
        items.append(item)
    return items


@pytest.fixture
def database(database_url: str) -> Iterator[bootstrap.Database]:
    db = bootstrap.database(database_url)
    yield db
    db.dispose()


def ingest(database: bootstrap.Database, source: Any, party: str, **settings: Any) -> Ingestion:
    ingestion = Ingestion(
        database.uow,
        source,
        party,
        connection="test",
        settings=IngestionSettings(**{"retry_delay_s": 0.0, **settings}),
        sleep=lambda _s: None,
    )
    ingestion.run()
    return ingestion


def test_deposit_with_known_account_is_credited_to_the_customer(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    register_customer(database.uow, "c-1", "Carol", ["deposit-account-id"])
    onboard_instrument(database.uow, AMULET)
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", [fixture("guide-1-step-transfer.json")]))
    ingest(database, source, DEPOSIT_TREASURY)
    balances = customer_balances(database.uow)
    assert balances["customer:c-1"] == {AMULET.key(): Decimal("200")}
    assert "suspense" not in balances
    assert check_invariant(database.uow).holds


def test_deposit_with_unknown_reason_goes_to_suspense_with_an_alert(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    onboard_instrument(database.uow, AMULET)
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", [fixture("guide-1-step-transfer.json")]))
    ingest(database, source, DEPOSIT_TREASURY)
    assert customer_balances(database.uow)["suspense"] == {AMULET.key(): Decimal("200")}
    with database.uow() as uow:
        (alert,) = uow.books.alerts()
    assert alert.kind == "deposit_unattributed"
    assert "unknown deposit account 'deposit-account-id'" in alert.message
    assert check_invariant(database.uow).holds


def test_deposit_of_an_instrument_not_onboarded_goes_to_suspense_with_an_alert(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    register_customer(database.uow, "c-1", "Carol", ["deposit-account-id"])
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", [fixture("guide-1-step-transfer.json")]))
    ingest(database, source, DEPOSIT_TREASURY)
    balances = customer_balances(database.uow)
    assert balances["suspense"] == {AMULET.key(): Decimal("200")}
    assert "customer:c-1" not in balances
    with database.uow() as uow:
        assert [a.kind for a in uow.books.alerts()] == ["instrument_not_onboarded"]


def test_incoming_offer_is_pending_and_credited_only_once_accepted(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    register_customer(database.uow, "c-1", "Carol", ["deposit-account-id"])
    onboard_instrument(database.uow, OFFER_AMULET)
    path = write_lines(tmp_path / "u.jsonl", [fixture("guide-transfer-instruction-create.json")])
    ingest(database, UpdateFile(path), OFFER_TREASURY)
    view = treasury_view(database.uow, OFFER_TREASURY, "test")
    (offer,) = view["pending_instructions"]
    assert offer["direction"] == "in"
    assert offer["amount"] == "1000.0000000000"
    assert "customer:c-1" not in customer_balances(database.uow)

    path = write_lines(
        tmp_path / "u.jsonl",
        [
            fixture("guide-transfer-instruction-create.json"),
            fixture("guide-transfer-instruction-accept.json"),
        ],
    )
    # The accept sits at a lower offset than the create in these captures; read from scratch.
    ingest(database, _FromStart(UpdateFile(path)), OFFER_TREASURY)
    view = treasury_view(database.uow, OFFER_TREASURY, "test")
    assert view["pending_instructions"] == []
    credited = customer_balances(database.uow)["customer:c-1"]
    assert credited == {OFFER_AMULET.key(): Decimal("1000")}
    assert check_invariant(database.uow).holds


class _FromStart:
    """Reads the whole source every time, whatever the cursor (like a node re-delivering)."""

    def __init__(self, source: Any) -> None:
        self._source = source

    def ledger_end(self) -> int:
        return 0

    def updates(self, party: str, after_offset: int | None, *, limit: int | None = None) -> Any:
        return self._source.updates(party, None)


def test_replaying_the_same_updates_changes_nothing(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    register_customer(database.uow, "c-1", "Carol", ["deposit-account-id"])
    onboard_instrument(database.uow, AMULET)
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", deposit_stream(5)))
    ingest(database, source, DEPOSIT_TREASURY)
    first = treasury_view(database.uow, DEPOSIT_TREASURY, "test")
    ingest(database, _FromStart(source), DEPOSIT_TREASURY)
    assert treasury_view(database.uow, DEPOSIT_TREASURY, "test") == first
    assert customer_balances(database.uow)["customer:c-1"] == {AMULET.key(): Decimal("1000")}


def test_checkpoints_advance_the_cursor_and_the_last_record_time(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    items: list[Mapping[str, Any]] = [*deposit_stream(1), checkpoint(1005, "2026-03-01T00:00:00Z")]
    ingest(database, UpdateFile(write_lines(tmp_path / "u.jsonl", items)), DEPOSIT_TREASURY)
    with database.uow() as uow:
        cursor = uow.ingestion.load_cursor("test")
    assert cursor is not None
    assert cursor.offset == 1005
    assert cursor.update_id == transaction(items[0])["updateId"]
    assert cursor.record_time is not None
    assert cursor.record_time.isoformat() == "2026-03-01T00:00:00+00:00"


class FlakyLedger:
    """Yields ``good`` items, then fails every read ``failures`` times before recovering."""

    def __init__(self, items: list[Mapping[str, Any]], fail_after: int, failures: int) -> None:
        self.items = items
        self.fail_after = fail_after
        self.failures_left = failures
        self.reads = 0

    def ledger_end(self) -> int:
        return 0

    def updates(
        self, party: str, after_offset: int | None, *, limit: int | None = None
    ) -> Iterator[Mapping[str, Any]]:
        self.reads += 1
        for index, item in enumerate(self.items):
            offset = transaction(item)["offset"]
            if after_offset is not None and offset <= after_offset:
                continue
            if index >= self.fail_after and self.failures_left > 0:
                self.failures_left -= 1
                raise LedgerReadError("connection reset by peer")
            yield item


def test_read_errors_are_retried_and_nothing_is_lost(database: bootstrap.Database) -> None:
    ledger = FlakyLedger(deposit_stream(6), fail_after=3, failures=2)
    ingest(database, ledger, DEPOSIT_TREASURY, batch_size_max=2, read_attempts_max=3)
    assert ledger.reads == 3
    with database.uow() as uow:
        assert len(uow.books.history("test")) == 6


def test_read_errors_past_the_bound_stop_ingestion_with_a_clear_error(
    database: bootstrap.Database,
) -> None:
    ledger = FlakyLedger(deposit_stream(6), fail_after=3, failures=99)
    with pytest.raises(IngestionStoppedError, match="failed 3 times in a row") as stopped:
        ingest(database, ledger, DEPOSIT_TREASURY, batch_size_max=2, read_attempts_max=3)
    assert "cursor stays at offset 1002" in str(stopped.value)
    with database.uow() as uow:
        cursor = uow.ingestion.load_cursor("test")
        assert cursor is not None and cursor.offset == 1002
        assert len(uow.books.history("test")) == 3


def test_a_malformed_update_stops_ingestion_and_quarantine_lets_it_continue(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    items = deposit_stream(4)
    bad = transaction(items[2])
    bad["events"][-2]["CreatedEvent"]["interfaceViews"][0]["viewValue"]["amount"] = "12,5"
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", items))
    with pytest.raises(IngestionStoppedError) as stopped:
        ingest(database, source, DEPOSIT_TREASURY)
    message = str(stopped.value)
    assert bad["updateId"] in message
    assert "'12,5' is not a decimal number" in message
    assert f"--quarantine {bad['updateId']}" in message
    with database.uow() as uow:
        cursor = uow.ingestion.load_cursor("test")
        assert cursor is not None and cursor.offset == 1001  # the two before it are in

    # Starting again stops at the same place: it never skips an update silently.
    with pytest.raises(IngestionStoppedError):
        ingest(database, source, DEPOSIT_TREASURY)

    assert quarantine_update(database.uow, "test", bad["updateId"], requested_by="ops")
    ingest(database, source, DEPOSIT_TREASURY)
    with database.uow() as uow:
        cursor = uow.ingestion.load_cursor("test")
        assert cursor is not None and cursor.offset == 1003
        assert len(uow.books.history("test")) == 3
    assert check_invariant(database.uow).holds


def test_a_batch_is_all_or_nothing(
    database: bootstrap.Database, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    register_customer(database.uow, "c-1", "Carol", ["deposit-account-id"])
    onboard_instrument(database.uow, AMULET)
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", deposit_stream(4)))
    original = SqlIngestionRepository.write_batch

    def crash_half_way(self: SqlIngestionRepository, batch: Any) -> None:
        batch.cursor = None  # the cursor would be written last; crash before it
        original(self, batch)
        raise RuntimeError("process died in the middle of the batch")

    monkeypatch.setattr(SqlIngestionRepository, "write_batch", crash_half_way)
    with pytest.raises(RuntimeError):
        ingest(database, source, DEPOSIT_TREASURY)
    monkeypatch.setattr(SqlIngestionRepository, "write_batch", original)
    with database.uow() as uow:
        assert uow.ingestion.load_cursor("test") is None
        assert uow.books.history("test") == []
        assert uow.books.balances() == {}
    ingest(database, source, DEPOSIT_TREASURY)
    assert customer_balances(database.uow)["customer:c-1"] == {AMULET.key(): Decimal("800")}


def quarantine_record(database: bootstrap.Database, key: str) -> dict[str, Any]:
    with database.engine.connect() as connection:
        row = connection.execute(
            sa.select(tables.quarantined_updates).where(
                tables.quarantined_updates.c.update_id == key
            )
        ).one()
    return dict(row._mapping)


def stop_message(database: bootstrap.Database, source: Any) -> str:
    with pytest.raises(IngestionStoppedError) as stopped:
        ingest(database, source, DEPOSIT_TREASURY)
    return " ".join(str(stopped.value).split())


def test_a_transaction_without_update_id_is_set_aside_by_offset_and_ingestion_continues(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    items = deposit_stream(4)
    del transaction(items[2])["updateId"]
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", items))
    message = stop_message(database, source)
    assert "a malformed update without a readable update id at offset 1002" in message
    assert "`sluice ingest --quarantine offset:1002`" in message

    assert quarantine_update(database.uow, "test", "offset:1002", requested_by="ops")
    # Recorded with the failure it caused: the problem and the raw update.
    record = quarantine_record(database, "offset:1002")
    assert record["offset"] == 1002
    assert "updateId" in record["problem"], record
    assert json.loads(record["raw"]) == items[2]

    ingest(database, source, DEPOSIT_TREASURY)
    with database.uow() as uow:
        cursor = uow.ingestion.load_cursor("test")
        assert cursor is not None and cursor.offset == 1003
        assert len(uow.books.history("test")) == 3
    assert quarantine_record(database, "offset:1002")["skipped_at"] is not None
    assert check_invariant(database.uow).holds


def test_an_update_of_unreadable_kind_is_named_by_its_offset_and_can_be_set_aside(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    items: list[Mapping[str, Any]] = list(deposit_stream(4))
    items[2] = {"update": {"Mystery": {"value": {"offset": 1002}}}}
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", items))
    message = stop_message(database, source)
    assert "ingestion stopped at a malformed update without a readable update id" in message
    assert "at offset 1002" in message
    assert "`sluice ingest --quarantine offset:1002`" in message
    assert "offset:None" not in message

    assert quarantine_update(database.uow, "test", "offset:1002", requested_by="ops")
    record = quarantine_record(database, "offset:1002")
    assert "Mystery" in record["problem"] and "Mystery" in record["raw"], record
    ingest(database, source, DEPOSIT_TREASURY)
    with database.uow() as uow:
        cursor = uow.ingestion.load_cursor("test")
        assert cursor is not None and cursor.offset == 1003
        assert len(uow.books.history("test")) == 3


def test_an_offset_key_sets_aside_a_malformed_update_that_has_an_id(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    items = deposit_stream(3)
    bad = transaction(items[1])
    bad["recordTime"] = "yesterday"
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", items))
    assert f"--quarantine {bad['updateId']}" in stop_message(database, source)
    assert quarantine_update(database.uow, "test", "offset:1001", requested_by="ops")
    assert "yesterday" in quarantine_record(database, "offset:1001")["problem"]
    ingest(database, source, DEPOSIT_TREASURY)
    with database.uow() as uow:
        cursor = uow.ingestion.load_cursor("test")
        assert cursor is not None and cursor.offset == 1002
        assert len(uow.books.history("test")) == 2


def test_an_offset_key_never_skips_a_well_formed_update(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", deposit_stream(3)))
    assert quarantine_update(database.uow, "test", "offset:1001", requested_by="ops")
    ingest(database, source, DEPOSIT_TREASURY)
    with database.uow() as uow:
        assert len(uow.books.history("test")) == 3
    assert quarantine_record(database, "offset:1001")["skipped_at"] is None


def test_an_update_without_a_readable_offset_points_to_moving_the_cursor(
    database: bootstrap.Database, tmp_path: Path
) -> None:
    items: list[Mapping[str, Any]] = list(deposit_stream(3))
    items[2] = {"mystery": True}
    source = UpdateFile(write_lines(tmp_path / "u.jsonl", items))
    message = stop_message(database, source)
    assert "a malformed update without a readable update id or offset" in message
    assert "offset:None" not in message and "--quarantine" not in message
    assert "after offset 1001" in message
    assert "`sluice ingest --once --from-offset N`" in message
    with database.uow() as uow:
        cursor = uow.ingestion.load_cursor("test")
        assert cursor is not None and cursor.offset == 1001


def test_an_offset_key_that_is_no_offset_is_refused(database: bootstrap.Database) -> None:
    with pytest.raises(InvalidInputError, match="offset:N"):
        quarantine_update(database.uow, "test", "offset:six", requested_by="ops")
    with database.engine.connect() as connection:
        assert connection.execute(sa.select(tables.quarantined_updates)).first() is None
