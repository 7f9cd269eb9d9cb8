"""The Integration DB as the services see it: ingestion, the books, reference data, withdrawals,
deposit offers, the KYC registry's tables and the audit trail, each read and written in the
caller's transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from sluice.domain.audit import AuditEntry, AuditRecord
from sluice.domain.compliance import (
    HeldDeposit,
    KycStatus,
    Profile,
    ReviewItem,
    TierLimits,
    UsageRecord,
    UsageWindows,
)
from sluice.domain.customer_names import CustomerName
from sluice.domain.deposits import Alert
from sluice.domain.history import HistoryEntry
from sluice.domain.journal import AccountRef, JournalTransaction
from sluice.domain.ledger import Cursor, Holding, InstrumentId, TransferInstruction
from sluice.domain.withdrawals import Withdrawal


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


@dataclass(frozen=True, slots=True)
class UsageWrite:
    """What recording usage changed: the new usage version of every customer with a row that
    went in, and the operation ids of those rows (a replayed one is left out)."""

    versions: dict[str, int]
    inserted: set[str]


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
    withdrawals_new: dict[str, Withdrawal] = field(default_factory=dict)
    withdrawals_changed: dict[str, Withdrawal] = field(default_factory=dict)
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
    def withdrawals_by_ids(self, ids: Collection[str]) -> dict[str, Withdrawal]:
        """Locked until the batch commits (workers skip them meanwhile)."""
        ...

    def write_batch(self, batch: IngestBatch) -> None: ...
    def refresh_statistics(self) -> None: ...
    def record_failure(
        self, connection: str, update_id: str | None, offset: int | None, problem: str, raw: str
    ) -> None: ...
    def last_failure(self, connection: str, update_id: str) -> tuple[int | None, str, str] | None:
        """(offset, problem, raw) of the latest failure recorded for that update."""
        ...

    def last_failure_at_offset(
        self, connection: str, offset: int
    ) -> tuple[int | None, str, str] | None:
        """(offset, problem, raw) of the latest failure recorded at that offset."""
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

    def add_customer(self, customer_id: str, name: str, name_script: str | None = None) -> bool: ...
    def customer_names_of(self, customer_id: str) -> list[CustomerName] | None:
        """The customer's names, the primary one first (None: no such customer)."""
        ...

    def add_customer_names(
        self, customer_id: str, names: Sequence[CustomerName], *, actor: str, at: datetime
    ) -> None: ...
    def add_deposit_account(self, account_id: str, customer_id: str) -> bool: ...
    def customer_of_deposit_account(self, account_id: str) -> str | None: ...
    def add_instrument(
        self,
        instrument: InstrumentId,
        registry_url: str | None,
        trusted: bool,
        kinds: str,
        limits: Mapping[str, str] | None = None,
    ) -> bool: ...
    def set_instrument_enabled(self, instrument: InstrumentId, enabled: bool) -> bool: ...
    def instruments(self) -> list[InstrumentRecord]: ...
    def customers(self) -> list[tuple[str, str]]: ...


@dataclass(frozen=True, slots=True)
class InstrumentRecord:
    instrument: InstrumentId
    registry_url: str | None
    trusted: bool
    enabled: bool
    transfer_kinds: tuple[str, ...]
    limits: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class IncomingOffer:
    """A pending incoming transfer instruction, with what the deposit worker did about it."""

    instruction: TransferInstruction
    status: str
    customer_id: str | None
    action: str | None  # accept | reject | None (left alone)
    attempts: int
    last_error: str | None


class WithdrawalRepository(Protocol):
    def get(self, withdrawal_id: str, *, lock: bool = False) -> Withdrawal | None: ...
    def insert(self, withdrawal: Withdrawal) -> None: ...
    def update(self, withdrawal: Withdrawal, *, expected_status: str | None = None) -> bool:
        """Write the record; with ``expected_status``, only if it still has that status."""
        ...

    def update_many(
        self,
        withdrawals: Collection[Withdrawal],
        *,
        expected_status: str | None = None,
        same_attempt: bool = False,
    ) -> int:
        """Write the records; with ``expected_status``, only those that still have it; with
        ``same_attempt``, only those still on the written record's attempt and ``trec_tgt``."""
        ...

    def claim(
        self,
        statuses: Collection[str],
        limit: int,
        *,
        kinds: Collection[str] = (),
        trec_tgt_at_most: datetime | None = None,
    ) -> list[Withdrawal]:
        """Live records in these statuses, locked for this transaction; rows another worker has
        locked are skipped (``FOR UPDATE SKIP LOCKED`` on PostgreSQL)."""
        ...

    def find(
        self,
        *,
        statuses: Collection[str] = (),
        customer_id: str | None = None,
        kinds: Collection[str] = (),
        limit: int = 1000,
    ) -> list[Withdrawal]: ...
    def largest_live_trec_tgt(self) -> datetime | None: ...
    def record_attempt(
        self, withdrawal_id: str, attempt: int, inputs: tuple[str, ...], trec_tgt: datetime
    ) -> None: ...
    def close_attempt(
        self, withdrawal_id: str, attempt: int, outcome: str, error: str | None
    ) -> None: ...

    def spendable_holdings(self, owner: str, instrument: InstrumentId) -> list[Holding]:
        """Active, unreserved holdings (locked ones included: selection decides; their locks
        carry only the expiry)."""
        ...

    def reserve(self, contract_ids: Collection[str], withdrawal_id: str) -> bool:
        """Reserve free, active holdings for a record; False (nothing reserved) if any is not."""
        ...

    def release(self, withdrawal_id: str) -> int: ...
    def reserved_by(self, holder_id: str) -> list[str]:
        """The holdings ``holder_id`` reserved (a withdrawal record, or an iSTSi burn), archived
        ones too, by contract id."""
        ...

    def post(self, journal: list[JournalTransaction]) -> None: ...
    def balance(self, account: AccountRef, *, lock: bool = False) -> Decimal: ...
    def cursor(self, connection: str) -> Cursor | None: ...
    def control(self, key: str) -> str | None: ...
    def set_control(self, key: str, value: str | None) -> None: ...
    def instrument(self, instrument: InstrumentId) -> InstrumentRecord | None: ...
    def customer_exists(self, customer_id: str) -> bool: ...
    def live_instruction(self, correlation_id: str) -> str | None:
        """The contract id of the pending instruction of a multi-step transfer, if any."""
        ...


class DepositOfferRepository(Protocol):
    def pending_incoming(self, party: str, limit: int = 1000) -> list[IncomingOffer]: ...
    def record_action(
        self, instruction_cid: str, action: str, error: str | None, decided: str
    ) -> None: ...


class ComplianceRepository(Protocol):
    """The KYC registry's tables, read and written in the caller's transaction."""

    def profiles(self, customer_ids: Collection[str], *, lock: bool = False) -> dict[str, Profile]:
        """KYC tier and status per customer (``lock``: hold their rows until commit, so two
        operations of one customer decide one after the other)."""
        ...

    def usage(self, customer_ids: Collection[str], since: datetime) -> dict[str, list[UsageRecord]]:
        """Every usage row after ``since`` (for display; decisions read the bounded forms)."""
        ...

    def usage_windows(
        self,
        customer_ids: Collection[str],
        first: datetime,
        last: datetime,
        operations: Collection[str] = ...,
    ) -> dict[str, UsageWindows]:
        """The usage totals and edge records decisions of ``operations`` (default: all) at
        times in ``[first, last]`` need."""
        ...

    def recent_usage(
        self, customer_ids: Collection[str], after: datetime, until: datetime, limit: int
    ) -> dict[str, list[UsageRecord]]:
        """Each customer's latest ``limit`` usage rows in ``(after, until]``, oldest first."""
        ...

    def counterparties_seen(
        self, customer_id: str, counterparties: Collection[str], after: datetime, until: datetime
    ) -> set[str]: ...
    def record_usage(self, customer_id: str, records: Sequence[UsageRecord]) -> None:
        """Insert usage rows; one already recorded under the same operation id is left alone."""
        ...

    def record_usage_of(
        self, records_by_customer: Mapping[str, Sequence[UsageRecord]]
    ) -> UsageWrite:
        """:meth:`record_usage` for many customers at once; what went in."""
        ...

    def read_usage_ranges(
        self,
        windows: Mapping[str, UsageWindows],
        record_ranges: Sequence[tuple[datetime, datetime]],
        hour_ranges: Sequence[tuple[datetime, datetime]],
        day_ranges: Sequence[tuple[datetime, datetime]],
    ) -> None:
        """Add to each customer's ``windows`` the usage records in ``record_ranges`` and the
        hour and day totals starting in ``hour_ranges`` and ``day_ranges``."""
        ...

    def usage_between(
        self, customer_ids: Collection[str], after: datetime, until: datetime
    ) -> dict[str, list[UsageRecord]]:
        """Every usage row of each customer in ``(after, until]``, oldest first."""
        ...

    def usage_versions(self, customer_ids: Collection[str]) -> dict[str, int]:
        """Each customer's usage version: it moves in every transaction that changes the
        customer's usage rows (0: never changed)."""
        ...

    def forget_usage(self, operation_ids: Collection[str]) -> int:
        """Remove the usage of operations that in the end moved nothing (refunded payouts)."""
        ...

    def limit_overrides(self) -> dict[tuple[int, str], TierLimits]: ...
    def set_limits(
        self, tier: int, operation: str, limits: TierLimits, actor: str, at: datetime
    ) -> None: ...
    def flagged(self, addresses: Collection[str]) -> dict[str, str]: ...
    def flag_address(self, address: str, reason: str, actor: str, at: datetime) -> bool: ...
    def unflag_address(self, address: str) -> bool: ...
    def flagged_addresses(self) -> list[tuple[str, str, str, datetime]]: ...
    def set_profile(
        self,
        customer_id: str,
        *,
        at: datetime,
        tier: int | None = None,
        status: KycStatus | None = None,
        status_reason: str | None = None,
        risk_score: int | None = None,
        risk_flags: Sequence[str] | None = None,
        sanctions_match: Mapping[str, object] | None = None,
    ) -> bool: ...
    def customer_names(self) -> list[tuple[str, str]]: ...
    def names_to_screen(self) -> list[tuple[str, CustomerName]]:
        """Every name of every customer, by customer id, each customer's primary name first."""
        ...

    def add_hold(self, hold: HeldDeposit) -> bool: ...
    def holds(
        self, *, status: str | None = "held", offset: int = 0, limit: int = 1000
    ) -> list[HeldDeposit]: ...
    def hold(self, hold_id: str, *, lock: bool = False) -> HeldDeposit | None: ...
    def close_hold(
        self, hold_id: str, status: str, actor: str, at: datetime, withdrawal_id: str | None = None
    ) -> bool: ...
    def reopen_hold(self, withdrawal_id: str) -> HeldDeposit | None:
        """Put the deposit a failed return paid from back on hold."""
        ...

    def open_review(self, review: ReviewItem) -> bool: ...
    def reviews(
        self, *, open_only: bool = True, offset: int = 0, limit: int = 1000
    ) -> list[ReviewItem]: ...
    def review(self, review_id: str) -> ReviewItem | None: ...
    def close_review(self, review_id: str, actor: str, resolution: str, at: datetime) -> bool: ...
    def close_reviews_of(self, subject: str, actor: str, resolution: str, at: datetime) -> int: ...


class AuditLog(Protocol):
    """The append-only, hash-chained audit trail, in the caller's transaction."""

    def append(self, entries: Sequence[AuditEntry]) -> list[int]:
        """Chain and insert ``entries`` (locking the chain's head until commit); their seqs."""
        ...

    def records(self, after_seq: int = 0, limit: int = 1000) -> list[AuditRecord]: ...
    def head(self) -> tuple[int, str] | None: ...
    def find(
        self,
        *,
        customer_id: str | None = None,
        operation_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditRecord]: ...
