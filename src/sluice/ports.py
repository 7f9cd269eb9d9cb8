"""What the services need from the outside world, as small protocols.

Updates cross the ledger port in the JSON Ledger API v2 shape (``JsGetUpdatesResponse`` objects as
decoded JSON), so one parser serves a real participant node and the embedded ledger alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from sluice.domain.deposits import Alert
from sluice.domain.history import HistoryEntry
from sluice.domain.journal import AccountRef, JournalTransaction
from sluice.domain.ledger import Cursor, Holding, InstrumentId, TransferInstruction

JsonObject = Mapping[str, Any]


class LedgerReadError(Exception):
    """Reading from the ledger failed in a way that may succeed when tried again."""


class LedgerClient(Protocol):
    """The reading side of one ledger connection (one participant node)."""

    def ledger_end(self) -> int:
        """The node's current ledger end offset."""
        ...

    def updates(
        self, party: str, after_offset: int | None, *, limit: int | None = None
    ) -> Iterator[JsonObject]:
        """``JsGetUpdatesResponse`` objects (transactions and offset checkpoints) visible to
        ``party`` with an offset greater than ``after_offset`` (None: from the beginning), in
        offset order.

        Ends at the current ledger end (or after ``limit`` items). Raises
        :class:`LedgerReadError` when the read fails part-way; items already yielded stand.
        """
        ...


# --- The Integration DB as the services see it -------------------------------------------------


@dataclass(frozen=True, slots=True)
class IngestedUpdate:
    update_id: str
    offset: int
    record_time: datetime
    status: str  # "ingested" | "quarantined"


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """A history entry as stored, with what the exchange did with it."""

    update_id: str
    offset: int
    record_time: datetime
    entry: HistoryEntry
    disposition: str
    customer_id: str | None


@dataclass(frozen=True, slots=True)
class HistoryRecord:
    """A stored history entry, as the treasury view shows it."""

    update_id: str
    offset: int
    record_time: datetime
    node_id: int
    kind: str
    status: str | None
    sender: str | None
    receiver: str | None
    instrument: InstrumentId | None
    amount: Decimal | None
    reason: str | None
    correlation_id: str | None
    holdings_created: tuple[str, ...]
    holdings_archived: tuple[str, ...]
    disposition: str
    customer_id: str | None


@dataclass(slots=True)
class IngestBatch:
    """Everything one ingestion batch writes, in one transaction with the cursor."""

    connection: str
    party: str
    updates: list[IngestedUpdate] = field(default_factory=list)
    holdings_created: list[tuple[Holding, str, int]] = field(default_factory=list)
    holdings_archived: list[tuple[str, str, int]] = field(default_factory=list)  # cid, update, off
    instructions_created: list[tuple[TransferInstruction, str, str]] = field(
        default_factory=list
    )  # instruction, direction, update id
    instructions_closed: list[tuple[str, str, str]] = field(default_factory=list)  # cid, st, upd
    entries: list[EntryRecord] = field(default_factory=list)
    journal: list[JournalTransaction] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    quarantine_skipped: list[str] = field(default_factory=list)
    cursor: Cursor | None = None


class IngestionRepository(Protocol):
    def load_cursor(self, connection: str) -> Cursor | None: ...
    def known_update_ids(self, update_ids: Collection[str]) -> set[str]: ...
    def quarantined_keys(self, keys: Collection[str]) -> set[str]: ...
    def holdings_by_ids(self, contract_ids: Collection[str]) -> dict[str, Holding]: ...
    def instructions_by_ids(
        self, contract_ids: Collection[str]
    ) -> dict[str, TransferInstruction]: ...
    def customers_for_reasons(self, reasons: Collection[str]) -> dict[str, str]: ...
    def onboarded_instruments(self) -> set[InstrumentId]: ...
    def write_batch(self, batch: IngestBatch) -> None: ...
    def refresh_statistics(self) -> None: ...
    def record_failure(
        self, connection: str, update_id: str | None, offset: int | None, problem: str, raw: str
    ) -> None: ...
    def last_failure(self, connection: str, update_id: str) -> tuple[int | None, str, str] | None:
        """(offset, problem, raw) of the latest failure recorded for that update."""
        ...

    def quarantine(
        self,
        key: str,
        connection: str,
        offset: int | None,
        problem: str | None,
        raw: str | None,
        requested_by: str,
    ) -> bool: ...
    def set_cursor(self, connection: str, party: str, cursor: Cursor) -> None: ...


class BooksRepository(Protocol):
    def balances(self) -> dict[AccountRef, Decimal]: ...
    def balances_from_postings(self) -> dict[AccountRef, Decimal]: ...
    def active_holdings(self, owner: str | None = None) -> list[Holding]: ...
    def pending_instructions(self) -> list[tuple[TransferInstruction, str, str]]: ...
    def history(self, connection: str) -> list[HistoryRecord]: ...
    def alerts(self, limit: int = 1000) -> list[Alert]: ...


class ReferenceRepository(Protocol):
    """Customers, deposit accounts and onboarded instruments."""

    def add_customer(self, customer_id: str, name: str) -> bool: ...
    def add_deposit_account(self, account_id: str, customer_id: str) -> bool: ...
    def customer_of_deposit_account(self, account_id: str) -> str | None: ...
    def add_instrument(
        self, instrument: InstrumentId, registry_url: str | None, trusted: bool, kinds: str
    ) -> bool: ...
    def customers(self) -> list[tuple[str, str]]: ...


class UnitOfWork(Protocol):
    """One database transaction; nothing is written unless ``commit`` is called."""

    ingestion: IngestionRepository
    books: BooksRepository
    reference: ReferenceRepository

    def __enter__(self) -> UnitOfWork: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]
