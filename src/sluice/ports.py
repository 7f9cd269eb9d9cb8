"""What the services need from the outside world, as small protocols.

Updates cross the ledger port in the JSON Ledger API v2 shape (``JsGetUpdatesResponse`` objects as
decoded JSON), so one parser serves a real participant node and the embedded ledger alike.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

from sluice.domain.approvals import Approval
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
from sluice.domain.deposits import Alert
from sluice.domain.history import HistoryEntry
from sluice.domain.journal import AccountRef, JournalTransaction
from sluice.domain.ledger import (
    Cursor,
    Holding,
    InstrumentId,
    Transfer,
    TransferInstruction,
    TransferKind,
)
from sluice.domain.withdrawals import Withdrawal

JsonObject = Mapping[str, Any]


class LedgerReadError(Exception):
    """Reading from the ledger failed in a way that may succeed when tried again — unless
    ``retryable`` is False: the node refused the reader's credentials or rights, which no retry
    fixes."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


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

    def offset_at_record_time(self, party: str, time: datetime) -> int:
        """The largest offset of ``party``'s node whose record time is at or before ``time`` (0
        if none). Offsets are node-local; record times are not, so after a node was restored
        from a backup this is how a reader finds where it was on the node's new offsets."""
        ...


# --- Commands and the registry -----------------------------------------------------------------

InstructionChoice = Literal["accept", "reject", "withdraw"]


class CommandError(Exception):
    """A command was not confirmed. ``definite`` says it certainly did not commit (the node
    rejected it); otherwise (a lost response, a timeout) it may or may not have. Either way the
    outcome is learned from ingestion, never from this."""

    def __init__(self, message: str, *, definite: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.definite = definite
        self.code = code


class RegistryError(Exception):
    """The registry could not answer (unreachable, or it refused the request)."""


@dataclass(frozen=True, slots=True)
class ChoiceContextData:
    """A registry's choice context, passed through untouched, and the contracts to disclose."""

    values: JsonObject
    disclosed_contracts: tuple[JsonObject, ...] = ()


@dataclass(frozen=True, slots=True)
class FactoryChoice:
    """``POST /registry/transfer-instruction/v1/transfer-factory``: what the registry answers."""

    factory_id: str
    transfer_kind: TransferKind
    context: ChoiceContextData


class RegistryClient(Protocol):
    """The Registry API of one instrument admin."""

    def transfer_factory(self, transfer: Transfer) -> FactoryChoice: ...
    def choice_context(
        self, choice: InstructionChoice, instruction_cid: str
    ) -> ChoiceContextData: ...


class LedgerCommands(Protocol):
    """The submitting side of a ledger connection. Returning means the node confirmed the
    command; :class:`CommandError` means it did not (see there)."""

    def submit_transfer(
        self,
        transfer: Transfer,
        factory: FactoryChoice,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None,
    ) -> None: ...

    def exercise_instruction(
        self,
        choice: InstructionChoice,
        instruction_cid: str,
        context: ChoiceContextData,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None = None,
    ) -> None: ...


RegistryLookup = Callable[[InstrumentId], RegistryClient]
"""The registry of an instrument's admin (the URL comes from onboarding, in the DB)."""


class ComplianceGate(Protocol):
    """Whether the exchange may take funds from a sender (multi-step deposits): the KYC
    registry's decision, without recording any usage (the credit records it when it lands)."""

    def allows_deposit(
        self, customer_id: str, sender: str, instrument: InstrumentId, amount: Decimal
    ) -> tuple[bool, str]: ...


@dataclass(frozen=True, slots=True)
class NameMatch:
    """A sanctions screening result for one name."""

    name: str
    match: bool
    score: float
    entity_id: str | None
    matched_name: str | None


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """A listed digital currency address (or party) and the entity it belongs to."""

    address: str
    entity_id: str
    entity_name: str


class SanctionsScreen(Protocol):
    """The sanctions list in force (in memory; reloads swap it without downtime)."""

    def screen_name(self, name: str) -> NameMatch: ...
    def screen_address(self, address: str) -> AddressMatch | None: ...


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

    def add_customer(self, customer_id: str, name: str) -> bool: ...
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
        self, withdrawals: Collection[Withdrawal], *, expected_status: str | None = None
    ) -> int: ...

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

    def record_usage_of(self, records_by_customer: Mapping[str, Sequence[UsageRecord]]) -> None:
        """:meth:`record_usage` for many customers at once."""
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


# --- access control (DESIGN §10) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as stored: never the secret, only its sha256."""

    id: str
    secret_hash: str
    role: str
    customer_id: str | None
    label: str | None
    created_by: str
    created_at: datetime
    revoked_by: str | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SettingRecord:
    """One value of a run-time setting and the moment it takes (or took) effect."""

    key: str
    value: Any  # decoded JSON
    effective_at: datetime
    set_by: str
    approval_id: str | None = None


class AccessRepository(Protocol):
    """API keys, approvals of critical operations, run-time settings."""

    def add_api_key(self, record: ApiKeyRecord) -> None: ...
    def api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    def api_keys(self, *, offset: int = 0, limit: int = 100) -> list[ApiKeyRecord]: ...
    def revoke_api_key(self, key_id: str, actor: str, at: datetime) -> bool:
        """Mark the key revoked; False if it does not exist or was already revoked."""
        ...

    def add_approval(self, approval: Approval) -> bool:
        """Insert a proposal; False (nothing written) if one with its id exists."""
        ...

    def approval(self, approval_id: str, *, lock: bool = False) -> Approval | None: ...
    def update_approval(self, approval: Approval) -> None: ...
    def approvals(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Approval]:
        """Newest first."""
        ...

    def add_setting(self, record: SettingRecord) -> None: ...
    def settings(self) -> list[SettingRecord]:
        """Every row (past, current and scheduled), by key then effective_at."""
        ...


@dataclass(frozen=True, slots=True)
class SuspenseItem:
    """A deposit credited to suspense (no or unknown reason), and to whom it was assigned."""

    update_id: str
    node_id: int
    record_time: datetime
    instrument: InstrumentId
    amount: Decimal
    sender: str | None
    reason: str | None
    assigned_to: str | None = None
    assigned_by: str | None = None
    assigned_at: datetime | None = None

    @property
    def id(self) -> str:
        return f"{self.update_id}:{self.node_id}"


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    id: str
    name: str
    created_at: datetime
    profile: Profile
    deposit_accounts: tuple[str, ...] = ()


class AccountsRepository(Protocol):
    """Paged reads of customers and their accounts, and suspense assignment."""

    def customer(self, customer_id: str) -> CustomerRecord | None: ...
    def customers(self, *, offset: int = 0, limit: int = 100) -> list[CustomerRecord]: ...
    def customer_balances(self, customer_id: str) -> dict[InstrumentId, Decimal]: ...
    def customer_history(
        self, customer_id: str, *, offset: int = 0, limit: int = 100
    ) -> list[HistoryRecord]:
        """Deposits credited to the customer and the transfers of their withdrawals, newest
        first."""
        ...

    def customer_withdrawals(
        self,
        customer_id: str | None,
        *,
        statuses: Collection[str] = (),
        offset: int = 0,
        limit: int = 100,
    ) -> list[Withdrawal]:
        """Newest first; ``customer_id`` None: every customer's."""
        ...

    def suspense_items(
        self, *, open_only: bool = True, offset: int = 0, limit: int = 100
    ) -> list[SuspenseItem]: ...
    def suspense_item(self, update_id: str, node_id: int) -> SuspenseItem | None: ...
    def assign_suspense(
        self,
        item: SuspenseItem,
        customer_id: str,
        *,
        actor: str,
        at: datetime,
        approval_id: str | None,
        reason: str | None,
    ) -> bool:
        """Record the assignment; False if the item was already assigned."""
        ...


class UnitOfWork(Protocol):
    """One database transaction; nothing is written unless ``commit`` is called."""

    ingestion: IngestionRepository
    books: BooksRepository
    reference: ReferenceRepository
    withdrawals: WithdrawalRepository
    offers: DepositOfferRepository
    compliance: ComplianceRepository
    audit: AuditLog
    access: AccessRepository
    accounts: AccountsRepository

    def __enter__(self) -> UnitOfWork: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]


class AsyncReads(Protocol):
    """The API's hot reads, answered without a worker thread: one statement on a connection of
    an asyncio pool, opened and closed on the event loop that serves them (the application's
    lifespan). Each read is one statement in autocommit, so it sees one consistent snapshot."""

    @property
    def serving(self) -> bool:
        """True when open on the running event loop (the only loop it may be used on)."""
        ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def customer_balances(self, customer_id: str) -> dict[InstrumentId, Decimal]:
        """The customer's balances, as :meth:`AccountsRepository.customer_balances` reads
        them (empty for an unknown customer: telling those apart is the caller's business)."""
        ...


# --- one ingestion writer ----------------------------------------------------------------------


class WriterLockError(Exception):
    """The lock's own session could not be reached (the database is down or refused it)."""


class WriterLock(Protocol):
    """Which process writes ingestion's results for one (treasury party, node): the one that
    holds this lock. It lives on a session (or an open file) of its own, never inside a unit of
    work, and the writer keeps it for its life; a standby holds nothing while it waits."""

    def try_acquire(self) -> bool:
        """Take the lock if it is free, without waiting; True when it is held (also when it was
        already). Raises :class:`WriterLockError` when the lock's session cannot be opened."""
        ...

    def held(self) -> bool:
        """Whether the lock is still ours, checked on its session: False once that session
        broke (the database restarted, the connection was cut) or the lock file was replaced."""
        ...

    def holder(self) -> str | None:
        """Who holds the lock, as far as can be told (e.g. ``pid 4711 on host-a``), or None."""
        ...

    def release(self) -> None:
        """Let go of the lock and close its session; :meth:`try_acquire` may be called again."""
        ...
