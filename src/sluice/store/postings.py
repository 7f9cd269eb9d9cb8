"""Journal postings and the cached balances they move; ingestion's batch write shares its
prebuilt statements and row shapes."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from decimal import Decimal
from json.encoder import encode_basestring_ascii

from sqlalchemy import Connection, bindparam, update

from sluice.domain.amounts import ZERO
from sluice.domain.audit import timestamp_text
from sluice.domain.journal import AccountRef, JournalTransaction, balance_change
from sluice.domain.ledger import Holding
from sluice.ports import EntryRecord
from sluice.store import tables as t
from sluice.store.bulk import execute_many, insert_rows, money_read, money_value, select_in


def post_journal(
    c: Connection,
    journal: Iterable[JournalTransaction],
    now: str,
    *,
    forbid_negative_customers: bool = True,
) -> None:
    """Journal transactions, their postings and the cached balances they move."""
    deltas: dict[str, Decimal] = {}
    refs: dict[str, AccountRef] = {}
    money = money_value(c)
    postings: list[tuple[object, ...]] = []
    transactions: list[tuple[object, ...]] = []
    for txn in journal:
        transactions.append((txn.id, txn.kind, txn.update_id, txn.description, now))
        for seq, posting in enumerate(txn.postings):
            account_id = posting.account.id
            refs[account_id] = posting.account
            deltas[account_id] = deltas.get(account_id, ZERO) + balance_change(
                posting.account, posting.amount
            )
            postings.append((txn.id, seq, account_id, money(posting.amount)))
    if not transactions:
        return
    insert_rows(
        c,
        t.journal_transactions,
        ("id", "kind", "update_id", "description", "created_at"),
        transactions,
    )
    apply_balance_deltas(c, deltas, refs, forbid_negative_customers=forbid_negative_customers)
    insert_rows(c, t.journal_postings, ("transaction_id", "seq", "account_id", "amount"), postings)


def apply_balance_deltas(
    c: Connection,
    deltas: dict[str, Decimal],
    refs: dict[str, AccountRef],
    *,
    forbid_negative_customers: bool = True,
) -> None:
    """Move cached balances, creating accounts on first use; rows are locked while read."""
    # Locked in key order (select_in's for_update), as everywhere, so two writers never wait on
    # each other; a balance converted as the Money column reads it (the driver gives text on
    # SQLite).
    existing: dict[str, Decimal] = {
        account_id: money_read(balance)
        for account_id, balance in select_in(
            c, t.accounts, ("id", "balance"), "id", sorted(deltas), for_update=True
        )
    }
    money = money_value(c)
    new_rows: list[tuple[object, ...]] = []
    changed: list[tuple[str, Decimal]] = []
    for account_id, delta in deltas.items():
        if account_id in existing:
            if delta:
                changed.append((account_id, existing[account_id] + delta))
        else:
            ref = refs[account_id]
            new_rows.append(
                (
                    account_id,
                    ref.name,
                    ref.instrument.admin,
                    ref.instrument.id,
                    ref.side,
                    money(delta),
                )
            )
    for account_id, balance in changed if forbid_negative_customers else ():
        ref = refs[account_id]
        assert not (ref.customer_id and balance < 0), (
            f"customer account {ref.id} would go negative: {balance}"
        )
    insert_rows(c, t.accounts, _ACCOUNT_COLUMNS, new_rows)
    if changed:
        execute_many(
            c,
            _SET_BALANCE,
            [{"aid": account_id, "bal": money(balance)} for account_id, balance in changed],
        )


# Prebuilt, so the driver's executemany runs each one compiled once (see store/bulk.py).
_ARCHIVE_HOLDING = (
    update(t.holdings)
    .where(t.holdings.c.contract_id == bindparam("cid"))
    .values(archived_update_id=bindparam("upd"), archived_offset=bindparam("off"))
)
_CLOSE_INSTRUCTION = (
    update(t.transfer_instructions)
    .where(t.transfer_instructions.c.contract_id == bindparam("cid"))
    .values(status=bindparam("st"), closed_update_id=bindparam("upd"))
)
_SET_BALANCE = (
    update(t.accounts).where(t.accounts.c.id == bindparam("aid")).values(balance=bindparam("bal"))
)
_ACCOUNT_COLUMNS = ("id", "name", "instrument_admin", "instrument_id", "side", "balance")
_HOLDING_COLUMNS = (
    "contract_id",
    "owner",
    "instrument_admin",
    "instrument_id",
    "amount",
    "lock_holders",
    "lock_expires_at",
    "lock_context",
    "created_update_id",
    "created_offset",
)
_ENTRY_COLUMNS = (
    "update_id",
    "node_id",
    "connection",
    "offset",
    "record_time",
    "kind",
    "status",
    "sender",
    "receiver",
    "instrument_admin",
    "instrument_id",
    "amount",
    "reason",
    "correlation_id",
    "holdings_created",
    "holdings_archived",
    "disposition",
    "customer_id",
)


def _entry_row(
    connection: str, record: EntryRecord, money: Callable[[Decimal], object]
) -> tuple[object, ...]:
    """The row of ``_ENTRY_COLUMNS`` that stores ``record``."""
    e = record.entry
    return (
        record.update_id,
        e.node_id,
        connection,
        record.offset,
        timestamp_text(record.record_time),
        e.kind,
        e.status,
        e.sender,
        e.receiver,
        e.instrument.admin if e.instrument else None,
        e.instrument.id if e.instrument else None,
        money(e.amount) if e.amount is not None else None,
        e.reason,
        e.correlation_id,
        _ids_json(e.holdings_created),
        _ids_json(e.holdings_archived),
        record.disposition,
        record.customer_id,
    )


def _ids_json(holdings: tuple[Holding, ...]) -> str:
    """``json.dumps`` of the holdings' contract ids, the same text built from each id's JSON
    string (``json.dumps`` of a list costs more than the rest of the row; checking that an id
    needs no escaping cost about as much, a character at a time)."""
    if not holdings:
        return "[]"
    return "[" + ", ".join([encode_basestring_ascii(h.contract_id) for h in holdings]) + "]"
