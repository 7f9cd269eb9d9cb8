"""The recovery procedures of the runbooks, on SQLite and PostgreSQL, with the embedded ledger.

* Rewinding ingestion's cursor by offset re-reads what follows and skips every update already
  ingested (by update id): nothing is booked twice, and the cursor's record time is lowered to
  what the new position guarantees, never raised.
* After the exchange's node is restored from a backup (offsets after the backup change; update
  ids and record times do not), the old cursor points at the wrong place: customers' deposits made
  after the restore lie at or before it. Rewinding by the record time of the last trusted update
  re-reads from there: exactly the updates after the backup point come in (the ones ingested
  before are skipped), and the books equal the ledger's holdings.
* A deposit of a disabled instrument goes to suspense with an alert, like one that was never
  onboarded; once the instrument is enabled again, deposits are credited.
* A file of recorded updates answers ``offset_at_record_time`` as the embedded node does.

Built on :class:`sluice.sandbox.Sandbox` (the exchange wired to an in-memory embedded ledger).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from sluice.domain.errors import InstrumentNotOnboardedError, InvalidInputError
from sluice.domain.ledger import parse_timestamp
from sluice.ledger.file import UpdateFile
from sluice.sandbox import Sandbox
from sluice.services.books import check_invariant, customer_balances
from sluice.services.recovery import offset_for_record_time, rewind_cursor
from sluice.services.reference import set_instrument_enabled


@pytest.fixture
def sandbox(database_url: str) -> Iterator[Sandbox]:
    sb = Sandbox.create(database_url, customers=3)
    yield sb
    sb.close()


def deposit_round(sb: Sandbox, amounts: list[str]) -> None:
    """One 1-step deposit per customer in turn, the clock moving 40 s after each (so the node
    emits a checkpoint after every deposit)."""
    customers = sorted(sb.customers)
    for n, amount in enumerate(amounts):
        sb.deposit(customers[n % len(customers)], amount)
        sb.ledger.advance(40)


def cursor_of(sb: Sandbox) -> tuple[int, datetime | None]:
    with sb.database.uow() as uow:
        cursor = uow.ingestion.load_cursor(sb.connection)
    assert cursor is not None
    return cursor.offset, cursor.record_time


def treasury_transactions(sb: Sandbox) -> list[tuple[int, datetime]]:
    """(offset, record time) of every transaction on the treasury's stream, read from the
    ledger."""
    found = []
    for item in sb.ledger.updates(sb.treasury, None):
        transaction = item["update"].get("Transaction")
        if transaction is not None:
            value = transaction["value"]
            found.append((value["offset"], parse_timestamp(value["recordTime"])))
    return found


def history_offsets(sb: Sandbox) -> list[tuple[int, datetime, str]]:
    """(offset, record time, update id) of every transaction ingested, in order."""
    with sb.database.uow() as uow:
        records = uow.books.history(sb.connection)
    return sorted({(r.offset, r.record_time, r.update_id) for r in records})


def books_equal_the_ledger(sb: Sandbox) -> None:
    assert check_invariant(sb.database.uow).problems == []
    with sb.database.uow() as uow:
        ingested = {(h.contract_id, h.amount) for h in uow.books.active_holdings(sb.treasury)}
        balances = uow.books.balances()
    on_ledger = {(h.contract_id, h.amount) for h in sb.ledger.active_holdings(sb.treasury)}
    assert ingested == on_ledger
    held = sum((h.amount for h in sb.ledger.active_holdings(sb.treasury, sb.coin)), Decimal(0))
    owed = sum(
        (
            balance
            for account, balance in balances.items()
            if account.instrument == sb.coin and account.side != "asset"
        ),
        Decimal(0),
    )
    assert owed == held


def test_rewinding_by_offset_rereads_skips_what_was_ingested_and_changes_no_balance(
    sandbox: Sandbox,
) -> None:
    sb = sandbox
    deposit_round(sb, ["100", "200", "300", "40", "50", "60"])
    first = sb.ingest()
    assert first.transactions > 0
    end, end_time = cursor_of(sb)
    before = customer_balances(sb.database.uow)
    history = history_offsets(sb)
    target = history[2][0]  # re-read everything after the third transaction

    move = rewind_cursor(
        sb.database.uow,
        sb.connection,
        sb.treasury,
        offset=target,
        record_time=sb.ledger.record_time_at(sb.treasury, target),
    )

    assert move.previous is not None and move.previous.offset == end
    assert move.current.offset == target
    assert move.current.record_time == history[2][1]
    assert end_time is not None and move.current.record_time < end_time
    again = sb.ingest()
    assert again.transactions == 0
    assert again.skipped == len([t for t in treasury_transactions(sb) if t[0] > target])
    assert cursor_of(sb) == (end, end_time)
    assert customer_balances(sb.database.uow) == before
    assert history_offsets(sb) == history
    books_equal_the_ledger(sb)


def test_rewinding_never_claims_a_later_record_time_than_ingestion_reached(
    sandbox: Sandbox,
) -> None:
    sb = sandbox
    deposit_round(sb, ["10", "20"])
    sb.ingest()
    end, end_time = cursor_of(sb)
    assert end_time is not None

    later = rewind_cursor(
        sb.database.uow,
        sb.connection,
        sb.treasury,
        offset=end,
        record_time=end_time + timedelta(hours=1),
    )
    assert later.current.record_time == end_time
    to_start = rewind_cursor(
        sb.database.uow, sb.connection, sb.treasury, offset=0, record_time=None
    )
    assert to_start.current.record_time is None
    assert to_start.current.update_id is None
    with pytest.raises(InvalidInputError, match="must not be negative"):
        rewind_cursor(sb.database.uow, sb.connection, sb.treasury, offset=-1, record_time=None)
    again = sb.ingest()
    assert again.transactions == 0
    assert cursor_of(sb) == (end, end_time)


def test_after_a_node_restore_rewinding_by_record_time_picks_up_exactly_what_came_after(
    sandbox: Sandbox,
) -> None:
    sb = sandbox
    deposit_round(sb, ["101", "102", "103", "104", "105", "106", "107", "108", "109", "110"])
    sb.ingest()
    old_end, _ = cursor_of(sb)
    history = history_offsets(sb)
    # The node's backup was taken right after the fourth deposit; that update is the last one
    # the operator trusts.
    backup_offset, trusted_time, _ = history[3]
    trusted_on = [t for t in treasury_transactions(sb) if t[1] >= trusted_time]
    sb.ledger.faults.restore_node_from_backup("exchange", backup_offset)
    late = ["201", "202", "203"]
    for n, amount in enumerate(late):
        sb.deposit(f"cust-{n}", amount)
    # Checkpoints after the backup were not re-created, so the node's offsets shrank: a reader
    # resuming at the old cursor would never see the deposits made after the restore.
    assert sb.ledger.ledger_end(sb.treasury) <= old_end

    client = sb.ledger.client(sb.treasury)
    offset = offset_for_record_time(client, sb.treasury, trusted_time)
    assert offset < backup_offset
    assert sb.ledger.offset_at_record_time(sb.treasury, trusted_time) == backup_offset
    move = rewind_cursor(
        sb.database.uow,
        sb.connection,
        sb.treasury,
        offset=offset,
        record_time=sb.ledger.record_time_at(sb.treasury, offset),
    )
    assert move.current.record_time is not None and move.current.record_time < trusted_time
    progress = sb.ingest()

    assert progress.transactions == len(late)
    assert progress.skipped == len(trusted_on)  # the trusted update and everything after it
    balances = customer_balances(sb.database.uow)
    deposited = {
        "cust-0": ["101", "104", "107", "110", "201"],
        "cust-1": ["102", "105", "108", "202"],
        "cust-2": ["103", "106", "109", "203"],
    }
    for customer, amounts in deposited.items():
        expected = sum((Decimal(a) for a in amounts), Decimal(0))
        assert balances[f"customer:{customer}"] == {sb.coin.key(): expected}
    books_equal_the_ledger(sb)


def test_deposit_of_a_disabled_instrument_goes_to_suspense_with_an_alert(
    sandbox: Sandbox,
) -> None:
    sb = sandbox
    set_instrument_enabled(sb.database.uow, sb.coin, False)
    sb.deposit("cust-0", "75")
    sb.ingest()

    balances = customer_balances(sb.database.uow)
    assert balances["suspense"] == {sb.coin.key(): Decimal(75)}
    assert "customer:cust-0" not in balances
    with sb.database.uow() as uow:
        alerts = uow.books.alerts()
    assert [a.kind for a in alerts] == ["instrument_not_onboarded"]
    with pytest.raises(InstrumentNotOnboardedError, match="disabled"):
        sb.withdraw("cust-0", "1", key="while-disabled")

    set_instrument_enabled(sb.database.uow, sb.coin, True)
    sb.deposit("cust-0", "25")
    sb.ingest()
    balances = customer_balances(sb.database.uow)
    assert balances["customer:cust-0"] == {sb.coin.key(): Decimal(25)}
    assert balances["suspense"] == {sb.coin.key(): Decimal(75)}
    assert check_invariant(sb.database.uow).problems == []


def test_a_file_of_recorded_updates_finds_the_offset_before_a_record_time(
    tmp_path: Path,
) -> None:
    def checkpoint(offset: int, time: str) -> dict[str, object]:
        times = [{"synchronizerId": "sync::1220", "recordTime": time}]
        return {
            "update": {
                "OffsetCheckpoint": {"value": {"offset": offset, "synchronizerTimes": times}}
            }
        }

    path = tmp_path / "updates.jsonl"
    items = [
        checkpoint(3, "2026-01-01T00:00:10Z"),
        checkpoint(5, "2026-01-01T00:00:20Z"),
        checkpoint(9, "2026-01-01T00:00:30Z"),
    ]
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    source = UpdateFile(path)

    def at(text: str) -> datetime:
        return parse_timestamp(text)

    assert source.offset_at_record_time("p::1", at("2026-01-01T00:00:20Z")) == 5
    assert offset_for_record_time(source, "p::1", at("2026-01-01T00:00:20Z")) == 3
    assert offset_for_record_time(source, "p::1", at("2026-01-01T00:00:05Z")) == 0
    assert offset_for_record_time(source, "p::1", at("2026-01-02T00:00:00Z")) == 9
