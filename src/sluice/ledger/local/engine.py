"""The embedded reference ledger: the Canton Network token standard, in process.

What it guarantees (every other test trusts these):

* **One global history.** Commands commit one at a time; each committed update gets a global
  update id and a record time from the synchronizer clock, strictly increasing (``max(now, last +
  1µs)``). A command whose record time would be at or after its ``max_record_time`` is rejected
  and nothing of it commits.
* **Token-standard semantics.** ``TransferFactory_Transfer`` checks the time bounds, that every
  input is active, owned by the sender, of the instrument and unlocked (or its lock expired), and
  that they cover amount + fee; it archives *all* inputs, so two transfers spending one holding can
  never both commit. ``self`` / ``direct`` / ``offer`` follow, then accept / reject / withdraw /
  update / expiry on instructions, mint, burn, tap, preapprovals. Per instrument, the holdings
  always add up to ``minted - burned - fees`` (asserted after every commit).
* **Per-node views.** Parties live on nodes. An update gets the next offset on every node hosting a
  party that sees any of it, and a party reads only its projection: the events it is an informee
  of, and everything below them, with the original node ids. Checkpoints tell each node's readers
  how far record time has advanced even when nothing happened.
* **Wire format.** Reads return ``JsGetUpdatesResponse`` objects exactly as the JSON Ledger API v2
  does (see :mod:`sluice.ledger.local.transactions`).
* **Determinism and persistence.** All ids derive from the seed; the clock moves only when told.
  :meth:`EmbeddedLedger.open` with a path journals every event to SQLite and a reopened file
  replays to exactly the same state (:mod:`sluice.ledger.local.persistence`).

Offsets: a transaction takes the node's next offset; so does a checkpoint (offset = the node's
ledger end once it is appended), so every offset names exactly one item of the node's stream and a
reader can resume after any item it has processed. ``updates(party, after_offset)`` yields the
items with a greater offset, up to the ledger end as it was when the call was made.
"""

from __future__ import annotations

import base64
import hashlib
import heapq
import json
import threading
import weakref
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sluice.domain.amounts import ZERO, format_amount, parse_amount
from sluice.domain.errors import (
    DuplicateOperationError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
    SluiceError,
)
from sluice.domain.ledger import (
    REASON_KEY,
    Holding,
    InstrumentId,
    Transfer,
    TransferInstruction,
    TransferKind,
    format_timestamp,
    parse_timestamp,
)
from sluice.ledger.wire import Json, copy_json
from sluice.ports import JsonObject, LedgerReadError

from .faults import Faults, ReadPlan
from .persistence import Journal, MemoryJournal, SqliteJournal
from .registry import (
    PREAPPROVAL_CONTEXT_KEY,
    RULES_CONTEXT_KEY,
    InstrumentConfig,
    Registry,
    RegistryPolicy,
    context_contract_id,
)
from .transactions import (
    Contract,
    HoldingContract,
    InstructionContract,
    PreapprovalContract,
    RulesContract,
    Tree,
    build_tree,
    created_event_body,
    project,
    trace_context_for,
)

DEFAULT_START_TIME = datetime(2025, 1, 1, tzinfo=UTC)
DEFAULT_EXECUTE_BEFORE_SPAN = timedelta(hours=24)
ONE_MICROSECOND = timedelta(microseconds=1)


# --- errors --------------------------------------------------------------------------------------


class LedgerError(SluiceError):
    """Root of the embedded ledger's errors."""

    code = 11
    error = "ledger_error"


class CommandRejectedError(LedgerError):
    """The ledger rejected a command; nothing of it was committed."""

    code = 11
    error = "command_rejected"

    def __init__(self, message: str, *, command_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.command_id = command_id


class InsufficientFundsError(CommandRejectedError, InvalidInputError):
    code = 70
    error = "insufficient_funds"


class LockedInputError(CommandRejectedError, InvalidInputError):
    code = 71
    error = "locked_input"


class InputNotOwnedError(CommandRejectedError, InvalidInputError):
    code = 72
    error = "input_not_owned"


class InactiveContractError(CommandRejectedError):
    """A contract the command uses is archived (or never existed): Canton's CONTRACT_NOT_FOUND."""

    code = 73
    error = "inactive_contract"


class ExpiredError(CommandRejectedError):
    code = 74
    error = "expired"


class TooManyInputsError(CommandRejectedError, InvalidInputError):
    code = 75
    error = "too_many_inputs"


class MaxRecordTimeExceededError(CommandRejectedError):
    code = 76
    error = "max_record_time_exceeded"


class PreapprovalMissingError(CommandRejectedError):
    code = 77
    error = "preapproval_missing"


class PreapprovalNotAllowedError(CommandRejectedError, InvalidInputError):
    code = 78
    error = "preapproval_not_allowed"


class InvalidTransferError(CommandRejectedError, InvalidInputError):
    """Time bounds, amounts, instruments or factory of a transfer do not fit."""

    code = 60
    error = "invalid_input"


class InvalidStateError(CommandRejectedError, InvalidOperationStateError):
    """The contract is not in a state that allows the choice (e.g. accept while on KYC hold)."""

    code = 41
    error = "invalid_operation_state"


class NotAuthorizedError(CommandRejectedError):
    """The submitting parties may not exercise the choice."""

    code = 2
    error = "insufficient_permissions"


class InjectedFailureError(CommandRejectedError):
    """A failure injected with ``ledger.faults``; retrying may succeed."""

    code = 11
    error = "component_call_failed"


class DuplicateCommandError(CommandRejectedError, DuplicateOperationError):
    """A command with the same (act_as, command_id) committed within the deduplication window;
    ``first`` is its outcome."""

    code = 42
    error = "duplicate_operation"

    def __init__(self, first: CommandResult) -> None:
        super().__init__(
            f"command {first.command_id!r} already committed as update {first.update_id} "
            f"at {format_timestamp(first.record_time)}",
            command_id=first.command_id,
        )
        self.first = first


class ResponseLostError(LedgerError):
    """The command committed but its response was lost (an injected fault). Look for the update,
    or resubmit with the same command id to get ``DuplicateCommandError`` with the outcome."""

    code = 40
    error = "operation_timeout"

    def __init__(self, command_id: str, result: CommandResult) -> None:
        super().__init__(f"the response to command {command_id!r} was lost")
        self.command_id = command_id
        self.result = result


class UnknownPartyError(LedgerError, NotFoundError):
    code = 10
    error = "not_found"


class UnknownInstrumentError(LedgerError, NotFoundError):
    code = 10
    error = "not_found"


class OffsetAfterLedgerEndError(LedgerError, InvalidInputError):
    """A read started after the node's ledger end: the node was restored or upgraded, or the
    reader's cursor belongs to another node."""

    code = 60
    error = "invalid_input"


class ReadOnlyLedgerError(LedgerError):
    code = 41
    error = "invalid_operation_state"


# --- results -------------------------------------------------------------------------------------


InstructionOutcome = Literal["completed", "pending", "rejected", "withdrawn", "failed"]


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What a committed command did."""

    update_id: str
    command_id: str
    act_as: tuple[str, ...]
    record_time: datetime
    # The update record's kind: transfer, accept, reject, withdraw, update, mint, tap, burn,
    # preapproval_create, preapproval_cancel, rules_create.
    kind: str
    status: InstructionOutcome
    transfer_kind: TransferKind | None = None
    # The instruction created (offer; update that passed it on) or exercised.
    instruction_cid: str | None = None
    receiver_holding_cids: tuple[str, ...] = ()
    sender_change_cids: tuple[str, ...] = ()
    # The preapproval or rules contract created or archived.
    contract_id: str | None = None
    burned: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class Completion:
    """A command's completion as one submitting party sees it."""

    sequence: int
    command_id: str
    act_as: tuple[str, ...]
    status: Literal["ok", "error"]
    code: int
    error: str
    message: str
    update_id: str | None
    # The update's offset on the party's node (None for errors or if the node no longer has it).
    offset: int | None
    record_time: datetime


@dataclass(frozen=True, slots=True)
class InstrumentTotals:
    minted: Decimal
    burned: Decimal
    fees: Decimal
    supply: Decimal


# --- internal state ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Update:
    update_id: str
    command_id: str
    act_as: tuple[str, ...]
    record_time: datetime
    visible: frozenset[str]
    record: str


@dataclass(slots=True)
class _CompletionRow:
    sequence: int
    command_id: str
    act_as: tuple[str, ...]
    update_seq: int | None
    record_time: datetime
    code: int
    error: str
    message: str


_CHECKPOINT = -1


class _Node:
    """One participant node's stream: parallel lists, one item per offset."""

    __slots__ = ("items", "name", "offset_by_seq", "offsets", "parties", "times")

    def __init__(self, name: str) -> None:
        self.name = name
        self.parties: set[str] = set()
        self.offsets: list[int] = []
        self.items: list[int] = []  # update sequence number, or _CHECKPOINT
        self.times: list[datetime] = []
        self.offset_by_seq: dict[int, int] = {}

    def end(self) -> int:
        return self.offsets[-1] if self.offsets else 0

    def append(self, item: int, time: datetime, offset: int | None = None) -> int:
        if offset is None:
            offset = self.end() + 1
        assert offset > self.end(), "node offsets must increase"
        self.offsets.append(offset)
        self.items.append(item)
        self.times.append(time)
        if item != _CHECKPOINT:
            self.offset_by_seq[item] = offset
        return offset


@dataclass(frozen=True, slots=True)
class _Settings:
    seed: int
    start_time: datetime
    synchronizer_id: str
    checkpoint_interval_s: float | None
    dedup_window_s: float

    def as_json(self) -> str:
        return json.dumps(
            {
                "seed": self.seed,
                "start_time": format_timestamp(self.start_time),
                "synchronizer_id": self.synchronizer_id,
                "checkpoint_interval_s": self.checkpoint_interval_s,
                "dedup_window_s": self.dedup_window_s,
            }
        )

    @classmethod
    def from_json(cls, text: str) -> _Settings:
        data = json.loads(text)
        return cls(
            seed=int(data["seed"]),
            start_time=parse_timestamp(data["start_time"]),
            synchronizer_id=data["synchronizer_id"],
            checkpoint_interval_s=data["checkpoint_interval_s"],
            dedup_window_s=float(data["dedup_window_s"]),
        )


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def _json_object(value: Mapping[str, Any]) -> dict[str, Any]:
    """A private deep copy of a JSON object given by a caller."""
    if not isinstance(value, Mapping):
        raise InvalidInputError("a choice context must be a JSON object")
    copied: dict[str, Any] = copy_json(dict(value))
    return copied


def _positive_amount(value: Decimal | str | int, field: str = "amount") -> Decimal:
    amount = parse_amount(value, field=field)
    if amount <= 0:
        raise InvalidTransferError(f"{field} must be positive, got {format_amount(amount)}")
    return amount


# --- the ledger ----------------------------------------------------------------------------------


class EmbeddedLedger:
    """The in-process token ledger. Build with :meth:`open` (memory or a SQLite file)."""

    def __init__(
        self,
        *,
        seed: int = 0,
        start_time: datetime = DEFAULT_START_TIME,
        synchronizer_id: str | None = None,
        checkpoint_interval_s: float | None = 60.0,
        dedup_window_s: float = 24 * 3600.0,
        journal: Journal | None = None,
        read_only: bool = False,
    ) -> None:
        if start_time.tzinfo is None:
            raise InvalidInputError("start_time must carry a time zone")
        if checkpoint_interval_s is not None and checkpoint_interval_s <= 0:
            raise InvalidInputError("checkpoint_interval_s must be positive (or None)")
        self._journal: Journal = journal or MemoryJournal()
        stored = self._journal.settings()
        if stored is not None:
            self._settings = _Settings.from_json(stored)
        else:
            self._settings = _Settings(
                seed=seed,
                start_time=start_time.astimezone(UTC),
                synchronizer_id=synchronizer_id
                or f"global-domain::1220{_digest(f'{seed}:synchronizer')}",
                checkpoint_interval_s=checkpoint_interval_s,
                dedup_window_s=dedup_window_s,
            )
            if not read_only:
                self._journal.save_settings(self._settings.as_json())
        self._read_only = read_only
        self._lock = threading.RLock()
        self._now = self._settings.start_time
        self._last_time = self._settings.start_time
        self._last_checkpoint_time = self._settings.start_time
        self._nodes: dict[str, _Node] = {}
        self._party_node: dict[str, str] = {}
        self._instruments: dict[InstrumentId, InstrumentConfig] = {}
        self._holdings: dict[str, HoldingContract] = {}
        self._accounts: dict[str, dict[InstrumentId, dict[str, HoldingContract]]] = {}
        self._instructions: dict[str, InstructionContract] = {}
        self._instructions_by_party: dict[str, dict[str, None]] = {}
        self._preapprovals: dict[str, PreapprovalContract] = {}
        self._preapproval_by_key: dict[tuple[str, InstrumentId], str] = {}
        self._rules: dict[str, RulesContract] = {}
        self._rules_by_admin: dict[str, str] = {}
        self._origin: dict[str, tuple[int, int]] = {}  # contract id -> (update seq, node id)
        self._supply: dict[InstrumentId, Decimal] = {}
        self._minted: dict[InstrumentId, Decimal] = {}
        self._burned: dict[InstrumentId, Decimal] = {}
        self._fees: dict[InstrumentId, Decimal] = {}
        self._updates: list[_Update] = []
        self._update_seq: dict[str, int] = {}
        self._dedup: dict[tuple[tuple[str, ...], str], CommandResult] = {}
        self._dedup_order: deque[tuple[datetime, tuple[tuple[str, ...], str]]] = deque()
        self._completions: list[_CompletionRow] = []
        self._completions_by_party: dict[str, list[int]] = {}
        self._journal_sequence = 0
        self._blobs: dict[str, tuple[str, str, str, str]] = {}
        self.faults = Faults(self, self._settings.seed)
        self._replay()
        # A ledger dropped (or left open at interpreter exit) still flushes its last batch.
        self._finalizer = weakref.finalize(self, self._journal.close)

    # --- opening and closing -------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | None = None,
        *,
        seed: int = 0,
        start_time: datetime = DEFAULT_START_TIME,
        synchronizer_id: str | None = None,
        checkpoint_interval_s: float | None = 60.0,
        dedup_window_s: float = 24 * 3600.0,
        batch_size: int = 2000,
        read_only: bool = False,
    ) -> EmbeddedLedger:
        """A ledger in memory (``path`` None or ``":memory:"``) or in a SQLite file.

        An existing file is replayed to the exact state it was left in; its stored settings win
        over the arguments. ``read_only`` opens a file another process writes; call
        :meth:`refresh` to catch up with what it flushed since.
        """
        journal: Journal | None = None
        if path is not None and path != ":memory:":
            journal = SqliteJournal(path, batch_size=batch_size)
        return cls(
            seed=seed,
            start_time=start_time,
            synchronizer_id=synchronizer_id,
            checkpoint_interval_s=checkpoint_interval_s,
            dedup_window_s=dedup_window_s,
            journal=journal,
            read_only=read_only,
        )

    def flush(self) -> None:
        """Write everything journaled so far (SQLite mode); a no-op in memory."""
        with self._lock:
            self._journal.flush()

    def close(self) -> None:
        """Flush and close the file (the ledger can still be read in memory afterwards)."""
        with self._lock:
            self._finalizer()

    def __enter__(self) -> EmbeddedLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def refresh(self) -> int:
        """Apply journal entries another process flushed since this ledger was opened (read-only
        mode). Returns how many were applied."""
        with self._lock:
            if not self._read_only:
                raise ReadOnlyLedgerError("refresh() is for ledgers opened read_only")
            return self._replay()

    @property
    def path(self) -> str | None:
        return self._journal.path

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def seed(self) -> int:
        return self._settings.seed

    @property
    def synchronizer_id(self) -> str:
        return self._settings.synchronizer_id

    # --- journal -------------------------------------------------------------------------------

    def _write(self, kind: str, body: str) -> None:
        self._journal.append(kind, body)

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyLedgerError("this ledger was opened read-only")

    def _replay(self) -> int:
        applied = 0
        for sequence, kind, body in self._journal.entries(self._journal_sequence):
            self._apply_entry(kind, body)
            self._journal_sequence = sequence
            applied += 1
        return applied

    def _apply_entry(self, kind: str, body: str) -> None:
        if kind == "commit":
            self._apply_commit(body, json.loads(body))
        elif kind == "checkpoint":
            self._apply_checkpoint(parse_timestamp(body))
        elif kind == "clock":
            self._now = parse_timestamp(body)
        elif kind == "node":
            self._apply_node(body)
        elif kind == "party":
            data = json.loads(body)
            self._apply_party(data["party"], data["node"])
        elif kind in ("instrument", "policy"):
            config = InstrumentConfig.from_json(json.loads(body))
            self._instruments[config.instrument] = config
        elif kind == "rejection":
            self._apply_rejection(json.loads(body))
        elif kind == "restore":
            data = json.loads(body)
            self._apply_restore(
                data["node"], data["backup_offset"], data["offset_shift"], data["time"]
            )
        elif kind == "upgrade":
            self._nodes[body] = self._reset_node(self._nodes[body])
        else:
            raise ValueError(f"unknown journal entry kind {kind!r}")

    # --- nodes and parties ---------------------------------------------------------------------

    def add_node(self, name: str) -> str:
        with self._lock:
            self._check_writable()
            if not name or name in self._nodes:
                raise InvalidInputError(f"node name {name!r} is empty or taken")
            self._apply_node(name)
            self._write("node", name)
            return name

    def _apply_node(self, name: str) -> None:
        self._nodes[name] = _Node(name)

    def allocate_party(self, hint: str, node: str) -> str:
        """A new party ``hint::1220<64 hex>`` hosted on ``node`` (deterministic from the seed)."""
        with self._lock:
            self._check_writable()
            if not hint or "::" in hint or any(c.isspace() for c in hint) or len(hint) > 100:
                raise InvalidInputError(f"party hint {hint!r}: 1-100 characters, no '::'")
            if node not in self._nodes:
                raise InvalidInputError(f"unknown node {node!r}")
            count = len(self._party_node)
            party = f"{hint}::1220{_digest(f'{self._settings.seed}:party:{hint}:{count}')}"
            self._apply_party(party, node)
            self._write("party", _dumps({"party": party, "node": node}))
            return party

    def _apply_party(self, party: str, node: str) -> None:
        self._party_node[party] = node
        self._nodes[node].parties.add(party)

    def nodes(self) -> list[str]:
        with self._lock:
            return list(self._nodes)

    def parties(self, node: str | None = None) -> list[str]:
        with self._lock:
            return [p for p, n in self._party_node.items() if node is None or n == node]

    def node_of(self, party: str) -> str:
        with self._lock:
            try:
                return self._party_node[party]
            except KeyError:
                raise UnknownPartyError(f"unknown party {party!r}") from None

    def _check_party(self, party: str) -> None:
        if party not in self._party_node:
            raise UnknownPartyError(f"unknown party {party!r}")

    # --- the clock and checkpoints -------------------------------------------------------------

    def time(self) -> datetime:
        """The synchronizer's current time: the clock, or the last record time if that is later."""
        with self._lock:
            return max(self._now, self._last_time)

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward; emits a checkpoint if the checkpoint interval has passed."""
        if seconds < 0:
            raise InvalidInputError("the clock does not go backwards")
        with self._lock:
            return self.set_time(self._now + timedelta(seconds=seconds))

    def set_time(self, time: datetime) -> datetime:
        with self._lock:
            self._check_writable()
            if time.tzinfo is None:
                raise InvalidInputError("time must carry a time zone")
            time = time.astimezone(UTC)
            if time < self._now:
                raise InvalidInputError(
                    f"the clock does not go backwards ({format_timestamp(time)} < "
                    f"{format_timestamp(self._now)})"
                )
            self._now = time
            self._write("clock", format_timestamp(time))
            self._maybe_checkpoint()
            return self.time()

    def checkpoint(self) -> datetime:
        """Every node emits an offset checkpoint at the synchronizer's current time. Nothing can
        commit at or before that time afterwards."""
        with self._lock:
            self._check_writable()
            time = self.time()
            self._apply_checkpoint(time)
            self._write("checkpoint", format_timestamp(time))
            return time

    def _apply_checkpoint(self, time: datetime) -> None:
        for node in self._nodes.values():
            node.append(_CHECKPOINT, time)
        self._last_time = max(self._last_time, time)
        self._last_checkpoint_time = time

    def _maybe_checkpoint(self) -> None:
        interval = self._settings.checkpoint_interval_s
        if interval is None:
            return
        if (self.time() - self._last_checkpoint_time).total_seconds() >= interval:
            self.checkpoint()

    def _next_record_time(self) -> datetime:
        return max(self._now, self._last_time + ONE_MICROSECOND)

    # --- instruments and registries ------------------------------------------------------------

    def create_instrument(
        self,
        admin: str,
        instrument_id: str,
        policy: RegistryPolicy | None = None,
        *,
        name: str | None = None,
        symbol: str | None = None,
        decimals: int = 10,
    ) -> InstrumentId:
        """Register an instrument of ``admin``; the admin's registry rules contract (its transfer
        factory) is created on the ledger with its first instrument."""
        with self._lock:
            self._check_writable()
            self._check_party(admin)
            instrument = InstrumentId(admin, instrument_id)
            if not instrument_id or instrument in self._instruments:
                raise InvalidInputError(f"instrument {instrument.key()} is empty or exists")
            if not 0 <= decimals <= 10:
                raise InvalidInputError("decimals must be between 0 and 10")
            if admin not in self._rules_by_admin:
                self._run(
                    act_as=(admin,),
                    command_id=None,
                    max_record_time=None,
                    prepare=lambda _t: {"kind": "rules_create", "admin": admin},
                )
            config = InstrumentConfig(
                instrument=instrument,
                name=name or instrument_id,
                symbol=symbol or instrument_id.upper()[:12],
                decimals=decimals,
                policy=policy or RegistryPolicy(),
            )
            self._instruments[instrument] = config
            self._write("instrument", _dumps(config.as_json()))
            return instrument

    def set_policy(self, instrument: InstrumentId, policy: RegistryPolicy) -> None:
        with self._lock:
            self._check_writable()
            config = self.instrument_config(instrument)
            config = InstrumentConfig(
                config.instrument, config.name, config.symbol, config.decimals, policy
            )
            self._instruments[instrument] = config
            self._write("policy", _dumps(config.as_json()))

    def instrument_config(self, instrument: InstrumentId) -> InstrumentConfig:
        with self._lock:
            try:
                return self._instruments[instrument]
            except KeyError:
                raise UnknownInstrumentError(f"unknown instrument {instrument.key()}") from None

    def instrument_configs(self) -> list[InstrumentConfig]:
        with self._lock:
            return list(self._instruments.values())

    def registry(self, admin: str) -> Registry:
        """The Registry API of ``admin`` (transfer factory, choice contexts, metadata)."""
        with self._lock:
            self._check_party(admin)
            return Registry(self, admin)

    def rules_id(self, admin: str) -> str:
        """The contract id of ``admin``'s registry rules (its transfer factory)."""
        with self._lock:
            try:
                return self._rules_by_admin[admin]
            except KeyError:
                raise UnknownInstrumentError(f"{admin} administers no instrument") from None

    def preapproval_id(self, receiver: str, instrument: InstrumentId) -> str | None:
        with self._lock:
            return self._preapproval_by_key.get((receiver, instrument))

    def contract(self, contract_id: str) -> Contract:
        """An active contract of any kind."""
        with self._lock:
            for table in (self._holdings, self._instructions, self._preapprovals, self._rules):
                found = table.get(contract_id)
                if found is not None:
                    return found
            raise NotFoundError(f"no active contract {contract_id}")

    def disclosed_contract(self, contract_id: str) -> Json:
        """An active contract as a ``DisclosedContract`` for a command; its ``createdEventBlob``
        is the base64 of the create's template and argument (the embedded ledger's stand-in for
        Canton's serialized contract)."""
        with self._lock:
            contract = self.contract(contract_id)
            cached = self._blobs.get(contract_id)
            if cached is None:
                body = created_event_body(contract, 0)
                payload = {
                    "templateId": body["templateId"],
                    "createArgument": body["createArgument"],
                }
                blob = base64.b64encode(_dumps(payload).encode()).decode()
                cached = (body["templateId"], blob, body["packageName"], body["createdAt"])
                if len(self._blobs) >= 10_000:
                    self._blobs.clear()
                self._blobs[contract_id] = cached
            template_id, blob, package_name, created_at = cached
            return {
                "templateId": template_id,
                "contractId": contract_id,
                "createdEventBlob": blob,
                "synchronizerId": self._settings.synchronizer_id,
                "debugPackageName": package_name,
                "debugCreatedAt": created_at,
            }

    def instruction_contract(self, instruction_cid: str) -> InstructionContract:
        with self._lock:
            try:
                return self._instructions[instruction_cid]
            except KeyError:
                raise InactiveContractError(
                    f"transfer instruction {instruction_cid} is not active"
                ) from None

    # --- commands: the common path -------------------------------------------------------------

    def _new_command_id(self) -> str:
        text = _digest(f"{self._settings.seed}:command:{len(self._completions)}")
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"

    def _run(
        self,
        *,
        act_as: Sequence[str],
        command_id: str | None,
        max_record_time: datetime | None,
        prepare: Callable[[datetime], dict[str, Any]],
    ) -> CommandResult:
        """Submit one command: faults, deduplication, record time, validation (``prepare``
        returns the update record or raises a rejection), commit, checkpoints."""
        self._check_writable()
        act_as = tuple(dict.fromkeys(act_as))
        if not act_as:
            raise InvalidInputError("act_as must name at least one party")
        for party in act_as:
            self._check_party(party)
        command_id = command_id or self._new_command_id()
        try:
            injected = self.faults.take_command_failure()
            if injected is not None:
                raise InjectedFailureError(injected)
            first = self._duplicate_of(act_as, command_id)
            if first is not None:
                raise DuplicateCommandError(first)
            record_time = self._next_record_time()
            if max_record_time is not None and record_time >= max_record_time:
                raise MaxRecordTimeExceededError(
                    f"the command would commit at {format_timestamp(record_time)}, at or after "
                    f"its max record time {format_timestamp(max_record_time)}"
                )
            record: dict[str, Any] = prepare(record_time)
        except CommandRejectedError as exc:
            exc.command_id = command_id
            self._reject(act_as, command_id, exc)
            raise
        seq = len(self._updates)
        record.update(
            update_id=f"1220{_digest(f'{self._settings.seed}:update:{seq}')}",
            command_id=command_id,
            act_as=list(act_as),
            record_time=format_timestamp(record_time),
        )
        text = _dumps(record)
        result = self._apply_commit(text, record)
        self._write("commit", text)
        self._maybe_checkpoint()
        if self.faults.take_response_drop():
            raise ResponseLostError(command_id, result)
        return result

    def _duplicate_of(self, act_as: tuple[str, ...], command_id: str) -> CommandResult | None:
        horizon = self.time() - timedelta(seconds=self._settings.dedup_window_s)
        while self._dedup_order and self._dedup_order[0][0] <= horizon:
            _, key = self._dedup_order.popleft()
            result = self._dedup.get(key)
            if result is not None and result.record_time <= horizon:
                del self._dedup[key]
        return self._dedup.get((tuple(sorted(act_as)), command_id))

    def _reject(self, act_as: tuple[str, ...], command_id: str, exc: CommandRejectedError) -> None:
        data = {
            "command_id": command_id,
            "act_as": list(act_as),
            "record_time": format_timestamp(self.time()),
            "code": exc.code,
            "error": exc.error,
            "message": exc.message,
        }
        self._apply_rejection(data)
        self._write("rejection", _dumps(data))

    def _apply_rejection(self, data: Mapping[str, Any]) -> None:
        self._add_completion(
            _CompletionRow(
                sequence=len(self._completions) + 1,
                command_id=data["command_id"],
                act_as=tuple(data["act_as"]),
                update_seq=None,
                record_time=parse_timestamp(data["record_time"]),
                code=int(data["code"]),
                error=data["error"],
                message=data["message"],
            )
        )

    def _add_completion(self, row: _CompletionRow) -> None:
        self._completions.append(row)
        for party in row.act_as:
            self._completions_by_party.setdefault(party, []).append(row.sequence - 1)

    def _apply_commit(self, text: str, record: Mapping[str, Any]) -> CommandResult:
        """Commit an update record: build its tree, apply its effects, give it offsets. Shared by
        live commits and replay, so both reach the same state."""
        tree = build_tree(record)
        seq = len(self._updates)
        record_time = parse_timestamp(record["record_time"])
        assert record_time > self._last_time, "record times must increase"
        act_as = tuple(record["act_as"])
        visible = tree.visible
        for is_create, value, node_id in tree.effects:
            if is_create:
                self._add_contract(value, seq, node_id)
            else:
                self._remove_contract(value)
        self._count(record)
        update = _Update(
            record["update_id"], record["command_id"], act_as, record_time, visible, text
        )
        self._updates.append(update)
        self._update_seq[update.update_id] = seq
        for node in self._nodes.values():
            if not node.parties.isdisjoint(visible):
                node.append(seq, record_time)
        self._last_time = record_time
        result = self._result_of(record, tree, record_time)
        key = (tuple(sorted(act_as)), update.command_id)
        self._dedup[key] = result
        self._dedup_order.append((record_time, key))
        self._add_completion(
            _CompletionRow(
                sequence=len(self._completions) + 1,
                command_id=update.command_id,
                act_as=act_as,
                update_seq=seq,
                record_time=record_time,
                code=0,
                error="",
                message="",
            )
        )
        return result

    def _count(self, record: Mapping[str, Any]) -> None:
        kind = record["kind"]
        if kind not in ("transfer", "mint", "tap", "burn"):
            return
        instrument = InstrumentId(record["admin"], record["instrument_id"])
        if kind == "transfer":
            table = self._fees
            amount = Decimal(record["fee"])
        elif kind == "burn":
            table = self._burned
            amount = Decimal(record["amount"])
        else:
            table = self._minted
            amount = Decimal(record["amount"])
        table[instrument] = table.get(instrument, ZERO) + amount
        # The paired assertion of the ledger's conservation law.
        supply = self._supply.get(instrument, ZERO)
        expected = (
            self._minted.get(instrument, ZERO)
            - self._burned.get(instrument, ZERO)
            - self._fees.get(instrument, ZERO)
        )
        assert supply == expected, f"{instrument.key()}: holdings {supply} != {expected}"

    def _result_of(
        self, record: Mapping[str, Any], tree: Tree, record_time: datetime
    ) -> CommandResult:
        outcome = tree.outcome
        kind = record["kind"]
        burned = ZERO
        if kind == "transfer":
            burned = Decimal(record["fee"])
        elif kind == "burn":
            burned = Decimal(record["amount"])
        return CommandResult(
            update_id=record["update_id"],
            command_id=record["command_id"],
            act_as=tuple(record["act_as"]),
            record_time=record_time,
            kind=kind,
            status=outcome.get("status", "completed"),
            transfer_kind=outcome.get("transfer_kind"),
            instruction_cid=outcome.get("instruction_cid"),
            receiver_holding_cids=tuple(outcome.get("receiver_holding_cids", ())),
            sender_change_cids=tuple(outcome.get("sender_change_cids", ())),
            contract_id=outcome.get("preapproval_cid") or outcome.get("rules_cid"),
            burned=burned,
        )

    def _add_contract(self, contract: Contract, seq: int, node_id: int) -> None:
        cid = contract.contract_id
        self._origin[cid] = (seq, node_id)
        if isinstance(contract, HoldingContract):
            self._holdings[cid] = contract
            instrument = contract.instrument
            self._accounts.setdefault(contract.owner, {}).setdefault(instrument, {})[cid] = contract
            self._supply[instrument] = self._supply.get(instrument, ZERO) + contract.amount
        elif isinstance(contract, InstructionContract):
            self._instructions[cid] = contract
            for party in (contract.admin, contract.sender, contract.receiver):
                self._instructions_by_party.setdefault(party, {})[cid] = None
        elif isinstance(contract, PreapprovalContract):
            self._preapprovals[cid] = contract
            self._preapproval_by_key[(contract.receiver, contract.instrument)] = cid
        else:
            self._rules[cid] = contract
            self._rules_by_admin[contract.admin] = cid

    def _remove_contract(self, cid: str) -> None:
        del self._origin[cid]
        holding = self._holdings.pop(cid, None)
        if holding is not None:
            instrument = holding.instrument
            del self._accounts[holding.owner][instrument][cid]
            self._supply[instrument] -= holding.amount
            return
        instruction = self._instructions.pop(cid, None)
        if instruction is not None:
            for party in (instruction.admin, instruction.sender, instruction.receiver):
                self._instructions_by_party[party].pop(cid, None)
            return
        preapproval = self._preapprovals.pop(cid, None)
        if preapproval is not None:
            del self._preapproval_by_key[(preapproval.receiver, preapproval.instrument)]
            return
        rules = self._rules.pop(cid)
        del self._rules_by_admin[rules.admin]

    # --- commands: transfers -------------------------------------------------------------------

    def transfer(
        self,
        sender: str,
        receiver: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        reason: str | None = None,
        meta: Mapping[str, str] | None = None,
        inputs: Sequence[str] | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        requested_at: datetime | None = None,
        execute_before: datetime | None = None,
        expect_kind: TransferKind | None = None,
    ) -> CommandResult:
        """Transfer ``amount`` the way a wallet does: pick inputs (oldest spendable first) unless
        given, ask the admin's registry for the factory and choice context, submit
        ``TransferFactory_Transfer``. ``reason`` goes into the transfer's metadata.
        ``expect_kind`` refuses (without submitting) if the registry would do something else."""
        with self._lock:
            config = self.instrument_config(instrument)
            value = _positive_amount(amount)
            requested_at = requested_at or self.time()
            if execute_before is None:
                span = DEFAULT_EXECUTE_BEFORE_SPAN
                cap = config.policy.execute_before_span_max_s
                if cap is not None:
                    span = min(span, timedelta(seconds=cap))
                execute_before = requested_at + span
            transfer_meta = dict(meta or {})
            if reason is not None:
                transfer_meta[REASON_KEY] = reason
            if inputs is None:
                self._check_party(sender)
                fee = ZERO if sender == receiver else config.policy.transfer_fee
                chosen = self.select_inputs(sender, instrument, value + fee)
                inputs = [h.contract_id for h in chosen]
            transfer = Transfer(
                sender=sender,
                receiver=receiver,
                amount=value,
                instrument=instrument,
                requested_at=requested_at,
                execute_before=execute_before,
                input_holding_cids=tuple(inputs),
                meta=transfer_meta,
            )
            self._check_party(sender)
            self._check_party(receiver)
            factory = self.registry(instrument.admin).transfer_factory(transfer)
            if expect_kind is not None and factory.transfer_kind != expect_kind:
                message = (
                    f"the registry would make this transfer {factory.transfer_kind!r}, "
                    f"not {expect_kind!r}"
                )
                if expect_kind == "direct":
                    raise PreapprovalMissingError(message, command_id=command_id)
                raise InvalidTransferError(message, command_id=command_id)
            return self.submit_transfer(
                transfer,
                factory_id=factory.factory_id,
                context=factory.choice_context.values,
                command_id=command_id,
                max_record_time=max_record_time,
            )

    def submit_transfer(
        self,
        transfer: Transfer,
        *,
        factory_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        extra_meta: Mapping[str, str] | None = None,
        command_id: str | None = None,
        act_as: Sequence[str] | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult:
        """Exercise ``TransferFactory_Transfer`` as the raw command would: the choice context
        decides the path (a ``transfer-preapproval`` entry means direct)."""
        with self._lock:
            submitters = tuple(act_as) if act_as is not None else (transfer.sender,)
            if context is None:
                self._check_party(transfer.instrument.admin)
                factory = self.registry(transfer.instrument.admin).transfer_factory(transfer)
                context = factory.choice_context.values
                factory_id = factory_id or factory.factory_id
            context_values = _json_object(context)
            meta_values = dict(extra_meta or {})
            return self._run(
                act_as=submitters,
                command_id=command_id,
                max_record_time=max_record_time,
                prepare=lambda t: self._prepare_transfer(
                    t, transfer, submitters, factory_id, context_values, meta_values
                ),
            )

    def _prepare_transfer(
        self,
        record_time: datetime,
        transfer: Transfer,
        act_as: tuple[str, ...],
        factory_id: str | None,
        context: dict[str, Any],
        extra_meta: dict[str, str],
    ) -> dict[str, Any]:
        instrument = transfer.instrument
        config = self._instruments.get(instrument)
        if config is None:
            raise InvalidTransferError(f"unknown instrument {instrument.key()}")
        policy = config.policy
        admin = instrument.admin
        sender, receiver = transfer.sender, transfer.receiver
        if sender not in act_as:
            raise NotAuthorizedError(f"the transfer must be submitted by its sender {sender}")
        for party in (sender, receiver):
            if party not in self._party_node:
                raise InvalidTransferError(f"unknown party {party!r}")
        rules_id = self._rules_by_admin[admin]
        if factory_id is not None and factory_id != rules_id:
            raise InactiveContractError(f"transfer factory {factory_id} is not active")
        context_rules = context_contract_id(context, RULES_CONTEXT_KEY)
        if context_rules is not None and context_rules != rules_id:
            raise InactiveContractError(f"registry rules {context_rules} are not active")
        amount = _positive_amount(transfer.amount)
        for key, value in transfer.meta.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidTransferError("transfer metadata keys and values must be text")
        # Time bounds, against ledger time (the record time this commit will get).
        if transfer.requested_at > record_time:
            raise InvalidTransferError(
                f"requested_at {format_timestamp(transfer.requested_at)} is in the future "
                f"(ledger time {format_timestamp(record_time)})"
            )
        if record_time >= transfer.execute_before:
            raise ExpiredError(
                f"the transfer expired at {format_timestamp(transfer.execute_before)} "
                f"(ledger time {format_timestamp(record_time)})"
            )
        span_max = policy.execute_before_span_max_s
        if span_max is not None and (
            transfer.execute_before - transfer.requested_at > timedelta(seconds=span_max)
        ):
            raise InvalidTransferError(
                f"execute_before - requested_at may be at most {span_max} s for {instrument.key()}"
            )
        inputs = self._check_inputs(
            transfer.input_holding_cids, sender, instrument, record_time, policy.inputs_max
        )
        # The path: self, direct (a valid preapproval in the context), or offer.
        preapproval_id: str | None = None
        if sender == receiver:
            kind: TransferKind = "self"
        else:
            preapproval_id = context_contract_id(context, PREAPPROVAL_CONTEXT_KEY)
            if preapproval_id is None:
                kind = "offer"
            else:
                if not policy.preapprovals_allowed or policy.kyc_hold:
                    raise PreapprovalNotAllowedError(
                        f"{instrument.key()} does not allow direct transfers to preapproved "
                        "receivers"
                    )
                preapproval = self._preapprovals.get(preapproval_id)
                if (
                    preapproval is None
                    or preapproval.receiver != receiver
                    or preapproval.instrument != instrument
                ):
                    raise PreapprovalMissingError(
                        f"{receiver} has no active preapproval {preapproval_id} for "
                        f"{instrument.key()}"
                    )
                kind = "direct"
        fee = ZERO if kind == "self" else policy.transfer_fee
        total = sum((h.amount for h, _ in inputs), ZERO)
        if total < amount + fee:
            raise InsufficientFundsError(
                f"the inputs hold {format_amount(total)}; the transfer needs "
                f"{format_amount(amount)} + fee {format_amount(fee)}"
            )
        return {
            "kind": "transfer",
            "transfer_kind": kind,
            "admin": admin,
            "rules_cid": rules_id,
            "preapproval_cid": preapproval_id,
            "sender": sender,
            "receiver": receiver,
            "instrument_id": instrument.id,
            "amount": format_amount(amount),
            "fee": format_amount(fee),
            "change": format_amount(total - amount - fee),
            "input_amount": format_amount(total),
            "requested_at": format_timestamp(transfer.requested_at),
            "execute_before": format_timestamp(transfer.execute_before),
            "inputs": [[h.contract_id, format_amount(h.amount), expired] for h, expired in inputs],
            "meta": dict(transfer.meta),
            "context": context,
            "extra_meta": extra_meta,
            "pending_internal_workflow": kind == "offer" and policy.kyc_hold,
        }

    def _check_inputs(
        self,
        input_cids: Sequence[str],
        owner: str,
        instrument: InstrumentId,
        record_time: datetime,
        inputs_max: int,
    ) -> list[tuple[HoldingContract, bool]]:
        """The input holdings, each with whether its (expired) lock must be released first."""
        if not input_cids:
            raise InvalidTransferError("a transfer needs at least one input holding")
        if len(input_cids) > inputs_max:
            raise TooManyInputsError(
                f"{len(input_cids)} inputs; {instrument.key()} allows at most {inputs_max}"
            )
        if len(set(input_cids)) != len(input_cids):
            raise InvalidTransferError("an input holding is listed twice")
        checked: list[tuple[HoldingContract, bool]] = []
        for cid in input_cids:
            holding = self._holdings.get(cid)
            if holding is None:
                raise InactiveContractError(f"input holding {cid} is not active")
            if holding.owner != owner:
                raise InputNotOwnedError(f"input holding {cid} is owned by {holding.owner}")
            if holding.instrument != instrument:
                raise InvalidTransferError(
                    f"input holding {cid} is {holding.instrument.key()}, not {instrument.key()}"
                )
            lock_expired = False
            if holding.lock is not None:
                if not holding.lock.is_expired(record_time):
                    raise LockedInputError(f"input holding {cid} is locked")
                lock_expired = True
            checked.append((holding, lock_expired))
        return checked

    def select_inputs(self, owner: str, instrument: InstrumentId, needed: Decimal) -> list[Holding]:
        """Spendable holdings covering ``needed``: oldest first, else the largest; at most the
        instrument's input limit. Raises :class:`InsufficientFundsError`."""
        with self._lock:
            inputs_max = self.instrument_config(instrument).policy.inputs_max
            account = self._accounts.get(owner, {}).get(instrument, {})
            now = self._next_record_time()
            chosen: list[HoldingContract] = []
            total = ZERO
            for holding in account.values():
                if holding.lock is not None and not holding.lock.is_expired(now):
                    continue
                chosen.append(holding)
                total += holding.amount
                if total >= needed:
                    return [h.to_domain() for h in chosen]
                if len(chosen) == inputs_max:
                    break
            spendable = (h for h in account.values() if h.lock is None or h.lock.is_expired(now))
            largest = heapq.nlargest(inputs_max, spendable, key=lambda h: h.amount)
            chosen, total = [], ZERO
            for holding in largest:
                chosen.append(holding)
                total += holding.amount
                if total >= needed:
                    return [h.to_domain() for h in chosen]
            raise InsufficientFundsError(
                f"{owner} has {format_amount(total)} spendable {instrument.key()} in at most "
                f"{inputs_max} holdings; {format_amount(needed)} needed"
            )

    # --- commands: transfer instructions -------------------------------------------------------

    def accept(
        self,
        instruction_cid: str,
        actor: str,
        *,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        extra_meta: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """The receiver accepts an offer (``TransferInstruction_Accept``)."""
        return self._instruction_choice(
            "accept", instruction_cid, actor, command_id, max_record_time, context, extra_meta
        )

    def reject(
        self,
        instruction_cid: str,
        actor: str,
        *,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        extra_meta: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """The receiver rejects an offer; the sender's funds come back unlocked."""
        return self._instruction_choice(
            "reject", instruction_cid, actor, command_id, max_record_time, context, extra_meta
        )

    def withdraw(
        self,
        instruction_cid: str,
        actor: str,
        *,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        extra_meta: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """The sender withdraws its offer; its funds come back unlocked."""
        return self._instruction_choice(
            "withdraw", instruction_cid, actor, command_id, max_record_time, context, extra_meta
        )

    def admin_update(
        self,
        instruction_cid: str,
        *,
        approve: bool,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult:
        """The admin ends the internal workflow of a held transfer (``TransferInstruction_Update``):
        ``approve`` passes it on to the receiver as a new instruction (``_Pending``); otherwise it
        fails and the sender's funds come back (``_Failed``)."""
        with self._lock:
            instruction = self.instruction_contract(instruction_cid)
            decision = "approved" if approve else (reason or "rejected")
            context = {"registry-decision": {"tag": "AV_Text", "value": decision}}
            return self._instruction_choice(
                "update",
                instruction_cid,
                instruction.admin,
                command_id,
                max_record_time,
                context,
                None,
                approve=approve,
            )

    def expire_instructions(self, admin: str | None = None) -> list[CommandResult]:
        """The admin fails every instruction whose ``execute_before`` has passed (each in its own
        update: ``TransferInstruction_Update`` → ``_Failed``, funds back to the sender)."""
        with self._lock:
            now = self._next_record_time()
            due = [
                c.contract_id
                for c in self._instructions.values()
                if (admin is None or c.admin == admin) and parse_timestamp(c.execute_before) <= now
            ]
            return [self.admin_update(cid, approve=False, reason="expired") for cid in due]

    def _instruction_choice(
        self,
        kind: str,
        instruction_cid: str,
        actor: str,
        command_id: str | None,
        max_record_time: datetime | None,
        context: Mapping[str, Any] | None,
        extra_meta: Mapping[str, str] | None,
        *,
        approve: bool = False,
    ) -> CommandResult:
        with self._lock:
            if context is None:
                instruction = self._instructions.get(instruction_cid)
                if instruction is not None:
                    context = (
                        self.registry(instruction.admin).accept_context(instruction_cid).values
                    )
            context_values = _json_object(context or {})
            meta_values = dict(extra_meta or {})

            def prepare(record_time: datetime) -> dict[str, Any]:
                return self._prepare_instruction_choice(
                    record_time, kind, instruction_cid, actor, approve, context_values, meta_values
                )

            return self._run(
                act_as=(actor,),
                command_id=command_id,
                max_record_time=max_record_time,
                prepare=prepare,
            )

    def _prepare_instruction_choice(
        self,
        record_time: datetime,
        kind: str,
        instruction_cid: str,
        actor: str,
        approve: bool,
        context: dict[str, Any],
        extra_meta: dict[str, str],
    ) -> dict[str, Any]:
        instruction = self._instructions.get(instruction_cid)
        if instruction is None:
            raise InactiveContractError(f"transfer instruction {instruction_cid} is not active")
        controller = {
            "accept": instruction.receiver,
            "reject": instruction.receiver,
            "withdraw": instruction.sender,
            "update": instruction.admin,
        }[kind]
        if actor != controller:
            raise NotAuthorizedError(
                f"only {controller} may {kind} transfer instruction {instruction_cid}"
            )
        expired = record_time >= parse_timestamp(instruction.execute_before)
        if kind == "accept" or (kind == "update" and approve):
            if kind == "accept" and instruction.pending_internal_workflow:
                raise InvalidStateError(
                    f"transfer instruction {instruction_cid} waits for the admin's update"
                )
            if kind == "update" and not instruction.pending_internal_workflow:
                raise InvalidStateError(
                    f"transfer instruction {instruction_cid} is not in an internal workflow"
                )
            if expired:
                raise ExpiredError(
                    f"transfer instruction {instruction_cid} expired at "
                    f"{instruction.execute_before}"
                )
        locked_active = instruction.locked_holding_cid in self._holdings
        assert locked_active or expired, "an unexpired lock cannot have been spent"
        return {
            "kind": kind,
            "instruction": instruction.snapshot(),
            "locked_holding_active": locked_active,
            "approve": approve,
            "context": context,
            "extra_meta": extra_meta,
        }

    # --- commands: mint, burn, tap, preapprovals -----------------------------------------------

    def mint(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult:
        """The admin mints a new holding for ``owner`` (who sees the exercise as choice
        observer)."""
        return self._mint("mint", owner, instrument, amount, reason, command_id, max_record_time)

    def tap(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        command_id: str | None = None,
    ) -> CommandResult:
        """The demo faucet: ``owner`` taps new tokens for itself (tx-kind mint, "tapped
        faucet")."""
        return self._mint("tap", owner, instrument, amount, None, command_id, None)

    def _mint(
        self,
        kind: str,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        reason: str | None,
        command_id: str | None,
        max_record_time: datetime | None,
    ) -> CommandResult:
        with self._lock:
            config = self.instrument_config(instrument)
            self._check_party(owner)
            value = _positive_amount(amount)
            act_as = (owner,) if kind == "tap" else (instrument.admin,)
            record = {
                "kind": kind,
                "admin": instrument.admin,
                "rules_cid": self._rules_by_admin[instrument.admin],
                "owner": owner,
                "instrument_id": instrument.id,
                "amount": format_amount(value),
                "reason": reason,
            }

            def prepare(_t: datetime) -> dict[str, Any]:
                if kind == "tap" and not config.policy.tap_allowed:
                    raise NotAuthorizedError(f"{instrument.key()} has no faucet")
                return dict(record)

            return self._run(
                act_as=act_as,
                command_id=command_id,
                max_record_time=max_record_time,
                prepare=prepare,
            )

    def burn(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        inputs: Sequence[str] | None = None,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult:
        """The admin burns ``amount`` of ``owner``'s holdings (``inputs``, or picked), returning
        any change to the owner."""
        with self._lock:
            config = self.instrument_config(instrument)
            self._check_party(owner)
            value = _positive_amount(amount)
            if inputs is None:
                inputs = [h.contract_id for h in self.select_inputs(owner, instrument, value)]
            input_cids = list(inputs)
            admin = instrument.admin

            def prepare(record_time: datetime) -> dict[str, Any]:
                checked = self._check_inputs(
                    input_cids, owner, instrument, record_time, config.policy.inputs_max
                )
                total = sum((h.amount for h, _ in checked), ZERO)
                if total < value:
                    raise InsufficientFundsError(
                        f"the inputs hold {format_amount(total)}; burning {format_amount(value)}"
                    )
                return {
                    "kind": "burn",
                    "admin": admin,
                    "rules_cid": self._rules_by_admin[admin],
                    "owner": owner,
                    "instrument_id": instrument.id,
                    "amount": format_amount(value),
                    "change": format_amount(total - value),
                    "inputs": [
                        [h.contract_id, format_amount(h.amount), expired] for h, expired in checked
                    ],
                    "reason": reason,
                }

            return self._run(
                act_as=(admin,),
                command_id=command_id,
                max_record_time=max_record_time,
                prepare=prepare,
            )

    def create_preapproval(
        self, receiver: str, instrument: InstrumentId, *, command_id: str | None = None
    ) -> CommandResult:
        """The receiver's standing consent to direct transfers of ``instrument``."""
        with self._lock:
            config = self.instrument_config(instrument)
            self._check_party(receiver)

            def prepare(_t: datetime) -> dict[str, Any]:
                if not config.policy.preapprovals_allowed:
                    raise PreapprovalNotAllowedError(
                        f"{instrument.key()} does not allow transfer preapprovals"
                    )
                if (receiver, instrument) in self._preapproval_by_key:
                    raise InvalidStateError(
                        f"{receiver} already has a preapproval for {instrument.key()}"
                    )
                return {
                    "kind": "preapproval_create",
                    "admin": instrument.admin,
                    "receiver": receiver,
                    "instrument_id": instrument.id,
                }

            return self._run(
                act_as=(receiver,), command_id=command_id, max_record_time=None, prepare=prepare
            )

    def cancel_preapproval(
        self, receiver: str, instrument: InstrumentId, *, command_id: str | None = None
    ) -> CommandResult:
        with self._lock:
            self.instrument_config(instrument)
            self._check_party(receiver)

            def prepare(_t: datetime) -> dict[str, Any]:
                preapproval_id = self._preapproval_by_key.get((receiver, instrument))
                if preapproval_id is None:
                    raise PreapprovalMissingError(
                        f"{receiver} has no preapproval for {instrument.key()}"
                    )
                return {
                    "kind": "preapproval_cancel",
                    "admin": instrument.admin,
                    "receiver": receiver,
                    "instrument_id": instrument.id,
                    "preapproval_cid": preapproval_id,
                }

            return self._run(
                act_as=(receiver,), command_id=command_id, max_record_time=None, prepare=prepare
            )

    # --- reading -------------------------------------------------------------------------------

    def ledger_end(self, node_or_party: str) -> int:
        """The current ledger end offset of a node (named directly or by one of its parties)."""
        with self._lock:
            return self._node(node_or_party).end()

    def _node(self, node_or_party: str) -> _Node:
        node = self._nodes.get(node_or_party)
        if node is not None:
            return node
        name = self._party_node.get(node_or_party)
        if name is None:
            raise UnknownPartyError(f"no node or party {node_or_party!r}")
        return self._nodes[name]

    def updates(
        self, party: str, after_offset: int | None, *, limit: int | None = None
    ) -> Iterator[JsonObject]:
        """``JsGetUpdatesResponse`` objects for ``party`` after ``after_offset`` (None: from the
        beginning) on its node: its projections of transactions, and checkpoints, in offset order
        up to the ledger end as of this call (or ``limit`` items). Raises
        :class:`sluice.ports.LedgerReadError` part-way when a fault is injected."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            if after_offset is None:
                after_offset = 0
            if after_offset < 0:
                raise InvalidInputError("after_offset must not be negative")
            if limit is not None and limit < 0:
                raise InvalidInputError("limit must not be negative")
            plan = self.faults.read_plan(node.name)
            end = node.end()
            if after_offset > end and plan.start_after is None:
                raise OffsetAfterLedgerEndError(
                    f"offset {after_offset} is after the ledger end {end} of node {node.name}"
                )
            start = (
                after_offset if plan.start_after is None else min(after_offset, plan.start_after)
            )
            stop = end if plan.stall_at is None else min(end, plan.stall_at)
            index = bisect_right(node.offsets, start)
        return self._stream(node, party, index, stop, limit, plan)

    def _stream(
        self, node: _Node, party: str, index: int, stop: int, limit: int | None, plan: ReadPlan
    ) -> Iterator[JsonObject]:
        delivered = 0
        while limit is None or delivered < limit:
            with self._lock:
                if plan.cut_after is not None and delivered >= plan.cut_after:
                    raise LedgerReadError(
                        f"injected fault: the stream of node {node.name} was cut after "
                        f"{delivered} items"
                    )
                if index >= len(node.offsets) or node.offsets[index] > stop:
                    return
                if plan.failure_rate and self.faults.roll(plan.failure_rate):
                    raise LedgerReadError(f"injected fault: reading node {node.name} failed")
                offset = node.offsets[index]
                item = node.items[index]
                time = node.times[index]
                index += 1
                if item == _CHECKPOINT:
                    response: Json = self._checkpoint_json(offset, time)
                else:
                    update = self._updates[item]
                    if party not in update.visible:
                        continue
                    response = self._transaction_json(update, party, offset)
            yield response
            delivered += 1

    def _checkpoint_json(self, offset: int, time: datetime) -> Json:
        return {
            "update": {
                "OffsetCheckpoint": {
                    "value": {
                        "offset": offset,
                        "synchronizerTimes": [
                            {
                                "synchronizerId": self._settings.synchronizer_id,
                                "recordTime": format_timestamp(time),
                            }
                        ],
                    }
                }
            }
        }

    def _transaction_json(self, update: _Update, party: str, offset: int) -> Json:
        tree = build_tree(json.loads(update.record))
        record_time = format_timestamp(update.record_time)
        return {
            "update": {
                "Transaction": {
                    "value": {
                        "updateId": update.update_id,
                        # Canton shows the command id to the submitting parties only.
                        "commandId": update.command_id if party in update.act_as else "",
                        "workflowId": "",
                        "effectiveAt": record_time,
                        "events": project(tree, party, offset),
                        "offset": offset,
                        "synchronizerId": self._settings.synchronizer_id,
                        "traceContext": trace_context_for(update.update_id),
                        "recordTime": record_time,
                    }
                }
            }
        }

    def update_by_id(self, update_id: str, party: str) -> JsonObject:
        """``JsGetUpdateResponse``: ``party``'s projection of one update, at its node's offset."""
        with self._lock:
            self._check_party(party)
            seq = self._update_seq.get(update_id)
            node = self._nodes[self._party_node[party]]
            offset = None if seq is None else node.offset_by_seq.get(seq)
            if seq is None or offset is None or party not in self._updates[seq].visible:
                raise NotFoundError(f"update {update_id} is not visible to {party}")
            return self._transaction_json(self._updates[seq], party, offset)

    def update_offset(self, update_id: str, node_or_party: str) -> int | None:
        """The offset of update ``update_id`` on a node (named directly or by one of its parties);
        None if the node does not have it (it sees nothing of it, or lost it in a restore)."""
        with self._lock:
            node = self._node(node_or_party)
            seq = self._update_seq.get(update_id)
            return None if seq is None else node.offset_by_seq.get(seq)

    def events_by_contract_id(self, contract_id: str, party: str) -> JsonObject:
        """``JsGetEventsByContractIdResponse``: the create of a contract ``party`` is a stakeholder
        of, and its archive if it was archived, at the offsets of the party's node.

        Active contracts are found at once; an archived one by searching the party's updates from
        the newest (O(updates the party sees) — a lookup for tools and tests, not a hot path)."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            synchronizer_id = self._settings.synchronizer_id
            result: Json = {}
            origin = self._origin.get(contract_id)
            if origin is not None:
                contract = self.contract(contract_id)
                if party not in contract.signatories and party not in contract.observers:
                    raise NotFoundError(f"contract {contract_id} is not visible to {party}")
                seq, node_id = origin
                body = created_event_body(contract, node_id)
                result["created"] = {
                    "createdEvent": {
                        "offset": node.offset_by_seq.get(seq, 0),
                        **body,
                        "witnessParties": [party],
                    },
                    "synchronizerId": synchronizer_id,
                }
                return result
            for seq in range(len(self._updates) - 1, -1, -1):
                update = self._updates[seq]
                if party not in update.visible:
                    continue
                tree = build_tree(json.loads(update.record))
                by_id = {n.node_id: n for n in tree.nodes}
                for is_create, value, node_id in tree.effects:
                    found_id = value.contract_id if is_create else value
                    tree_node = by_id.get(node_id)
                    if (
                        found_id != contract_id
                        or tree_node is None
                        or party not in tree_node.visible
                    ):
                        continue
                    offset = node.offset_by_seq.get(seq, 0)
                    event = tree_node.event()
                    if is_create and "created" not in result:
                        result["created"] = {
                            "createdEvent": {"offset": offset, **event, "witnessParties": [party]},
                            "synchronizerId": synchronizer_id,
                        }
                    elif not is_create and "archived" not in result:
                        result["archived"] = {
                            "archivedEvent": {
                                "offset": offset,
                                "nodeId": node_id,
                                "contractId": contract_id,
                                "templateId": event["templateId"],
                                "witnessParties": [party],
                                "packageName": event["packageName"],
                                "implementedInterfaces": list(event["implementedInterfaces"]),
                            },
                            "synchronizerId": synchronizer_id,
                        }
                if "created" in result:
                    return result
            if result:
                return result
            raise NotFoundError(f"contract {contract_id} is not visible to {party}")

    def offset_at_record_time(self, node_or_party: str, time: datetime) -> int:
        """The largest offset of the node whose record time is at or before ``time`` (0 if none):
        where to resume a reader that has processed everything up to ``time``."""
        with self._lock:
            node = self._node(node_or_party)
            index = bisect_right(node.times, time)
            return node.offsets[index - 1] if index else 0

    def record_time_at(self, node_or_party: str, offset: int) -> datetime | None:
        """The record time of the node's item at ``offset`` (None if there is none)."""
        with self._lock:
            node = self._node(node_or_party)
            index = bisect_right(node.offsets, offset)
            if index and node.offsets[index - 1] == offset:
                return node.times[index - 1]
            return None

    def active_holdings(self, party: str, instrument: InstrumentId | None = None) -> list[Holding]:
        """The holdings ``party`` owns (locked ones included), oldest first."""
        with self._lock:
            self._check_party(party)
            accounts = self._accounts.get(party, {})
            if instrument is not None:
                return [h.to_domain() for h in accounts.get(instrument, {}).values()]
            return [h.to_domain() for account in accounts.values() for h in account.values()]

    def holding(self, contract_id: str) -> Holding | None:
        with self._lock:
            found = self._holdings.get(contract_id)
            return None if found is None else found.to_domain()

    def active_instructions(self, party: str) -> list[TransferInstruction]:
        """Pending transfer instructions where ``party`` is sender, receiver or admin."""
        with self._lock:
            self._check_party(party)
            return [
                self._instructions[cid].to_domain()
                for cid in self._instructions_by_party.get(party, {})
            ]

    def instruction(self, contract_id: str) -> TransferInstruction:
        return self.instruction_contract(contract_id).to_domain()

    def active_contracts(self, party: str) -> list[JsonObject]:
        """``JsGetActiveContractsResponse`` items for every active contract ``party`` is a
        stakeholder of (a snapshot; O(active contracts))."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            items: list[JsonObject] = []
            tables: Iterable[Mapping[str, Contract]] = (
                self._rules,
                self._preapprovals,
                self._instructions,
                self._holdings,
            )
            for table in tables:
                for contract in table.values():
                    if party not in contract.signatories and party not in contract.observers:
                        continue
                    seq, node_id = self._origin[contract.contract_id]
                    event = created_event_body(contract, node_id)
                    event = {
                        "offset": node.offset_by_seq.get(seq, 0),
                        **event,
                        "witnessParties": [party],
                    }
                    items.append(
                        {
                            "workflowId": "",
                            "contractEntry": {
                                "JsActiveContract": {
                                    "createdEvent": event,
                                    "synchronizerId": self._settings.synchronizer_id,
                                    "reassignmentCounter": 0,
                                }
                            },
                        }
                    )
            return items

    def completions(self, party: str, after_sequence: int = 0) -> list[Completion]:
        """The completions of commands ``party`` submitted, after ``after_sequence``."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            result: list[Completion] = []
            for index in self._completions_by_party.get(party, []):
                row = self._completions[index]
                if row.sequence <= after_sequence:
                    continue
                update_id: str | None = None
                offset: int | None = None
                if row.update_seq is not None:
                    update_id = self._updates[row.update_seq].update_id
                    offset = node.offset_by_seq.get(row.update_seq)
                result.append(
                    Completion(
                        sequence=row.sequence,
                        command_id=row.command_id,
                        act_as=row.act_as,
                        status="ok" if row.update_seq is not None else "error",
                        code=row.code,
                        error=row.error,
                        message=row.message,
                        update_id=update_id,
                        offset=offset,
                        record_time=row.record_time,
                    )
                )
            return result

    def supply(self, instrument: InstrumentId) -> Decimal:
        """Σ active holdings of the instrument (locked ones included)."""
        with self._lock:
            return self._supply.get(instrument, ZERO)

    def totals(self, instrument: InstrumentId) -> InstrumentTotals:
        with self._lock:
            return InstrumentTotals(
                minted=self._minted.get(instrument, ZERO),
                burned=self._burned.get(instrument, ZERO),
                fees=self._fees.get(instrument, ZERO),
                supply=self._supply.get(instrument, ZERO),
            )

    def update_count(self) -> int:
        with self._lock:
            return len(self._updates)

    def completion_sequence(self) -> int:
        """The sequence number of the latest completion (of any party); 0 if none. A reader
        following :meth:`completions` polls this cheaply to see whether there is anything new."""
        with self._lock:
            return len(self._completions)

    def has_updates_after(self, party: str, offset: int) -> bool:
        """Whether ``party``'s node has a transaction ``party`` sees at an offset after
        ``offset`` (checkpoints do not count): if not, its active contracts at ``offset`` are
        exactly the current ones."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            for index in range(bisect_right(node.offsets, offset), len(node.offsets)):
                item = node.items[index]
                if item != _CHECKPOINT and party in self._updates[item].visible:
                    return True
            return False

    def client(self, party: str) -> NodeClient:
        """A :class:`sluice.ports.LedgerClient` on ``party``'s node."""
        return NodeClient(self, self.node_of(party))

    def node_client(self, node: str) -> NodeClient:
        with self._lock:
            if node not in self._nodes:
                raise InvalidInputError(f"unknown node {node!r}")
        return NodeClient(self, node)

    # --- node faults (called through ledger.faults) --------------------------------------------

    def _restore_node(self, name: str, backup_offset: int, offset_shift: int) -> None:
        with self._lock:
            self._check_writable()
            node = self._nodes.get(name)
            if node is None:
                raise InvalidInputError(f"unknown node {name!r}")
            if not 0 <= backup_offset <= node.end():
                raise InvalidInputError(
                    f"backup offset {backup_offset} is outside 0..{node.end()} of node {name}"
                )
            if offset_shift < 0:
                raise InvalidInputError("offset_shift must not be negative")
            time = format_timestamp(self.time())
            self._apply_restore(name, backup_offset, offset_shift, time)
            self._write(
                "restore",
                _dumps(
                    {
                        "node": name,
                        "backup_offset": backup_offset,
                        "offset_shift": offset_shift,
                        "time": time,
                    }
                ),
            )

    def _apply_restore(self, name: str, backup_offset: int, offset_shift: int, time: str) -> None:
        old = self._nodes[name]
        keep = bisect_right(old.offsets, backup_offset)
        node = self._reset_node(old)
        for index in range(keep):
            node.append(old.items[index], old.times[index], old.offsets[index])
        offset = backup_offset + offset_shift
        for index in range(keep, len(old.offsets)):
            if old.items[index] != _CHECKPOINT:
                offset += 1
                node.append(old.items[index], old.times[index], offset)
        checkpoint_time = parse_timestamp(time)
        node.append(_CHECKPOINT, checkpoint_time, max(offset, node.end()) + 1)
        self._last_time = max(self._last_time, checkpoint_time)
        self._nodes[name] = node

    def _upgrade_node(self, name: str) -> None:
        with self._lock:
            self._check_writable()
            if name not in self._nodes:
                raise InvalidInputError(f"unknown node {name!r}")
            self._nodes[name] = self._reset_node(self._nodes[name])
            self._write("upgrade", name)

    @staticmethod
    def _reset_node(old: _Node) -> _Node:
        node = _Node(old.name)
        node.parties = old.parties
        return node


class NodeClient:
    """One node of the embedded ledger as a :class:`sluice.ports.LedgerClient`.

    On a ledger opened ``read_only`` (a file another process writes), every call first picks up
    what the writer has flushed, so a reader in another process follows the writer."""

    def __init__(self, ledger: EmbeddedLedger, node: str) -> None:
        self._ledger = ledger
        self.node = node

    def _refresh(self) -> None:
        if self._ledger.read_only:
            self._ledger.refresh()

    def ledger_end(self) -> int:
        self._refresh()
        return self._ledger.ledger_end(self.node)

    def updates(
        self, party: str, after_offset: int | None, *, limit: int | None = None
    ) -> Iterator[JsonObject]:
        self._refresh()
        if self._ledger.node_of(party) != self.node:
            raise InvalidInputError(f"{party} is not hosted on node {self.node}")
        return self._ledger.updates(party, after_offset, limit=limit)

    def offset_at_record_time(self, party: str, time: datetime) -> int:
        self._refresh()
        if self._ledger.node_of(party) != self.node:
            raise InvalidInputError(f"{party} is not hosted on node {self.node}")
        return self._ledger.offset_at_record_time(self.node, time)


__all__ = [
    "CommandRejectedError",
    "CommandResult",
    "Completion",
    "DuplicateCommandError",
    "EmbeddedLedger",
    "ExpiredError",
    "InactiveContractError",
    "InjectedFailureError",
    "InputNotOwnedError",
    "InstrumentTotals",
    "InsufficientFundsError",
    "InvalidStateError",
    "InvalidTransferError",
    "LedgerError",
    "LockedInputError",
    "MaxRecordTimeExceededError",
    "NodeClient",
    "NotAuthorizedError",
    "OffsetAfterLedgerEndError",
    "PreapprovalMissingError",
    "PreapprovalNotAllowedError",
    "ReadOnlyLedgerError",
    "ResponseLostError",
    "TooManyInputsError",
    "UnknownInstrumentError",
    "UnknownPartyError",
]
