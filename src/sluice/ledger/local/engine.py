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

:class:`EmbeddedLedger` is one object made of parts, each a mixin over the shared state
(:mod:`.state`): the synchronizer clock (:mod:`.clock`), nodes and parties and their faults
(:mod:`.nodes`), the common path of every command and its commit (:mod:`.commits`), instruments
and registries (:mod:`.instruments`), transfers and preapprovals (:mod:`.transfers`), transfer
instructions (:mod:`.instructions`), mint, burn and tap (:mod:`.minting`), the update stream
(:mod:`.updates`) and the party views (:mod:`.views`). This module opens, journals and replays it.
The errors are in :mod:`.errors`, the results in :mod:`.results`.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Iterator
from datetime import UTC, datetime

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import parse_timestamp
from sluice.ports import JsonObject, LedgerReadError

from .errors import (
    CommandRejectedError,
    CommandTimeoutError,
    DuplicateCommandError,
    ExpiredError,
    InactiveContractError,
    InjectedFailureError,
    InputNotOwnedError,
    InsufficientFundsError,
    InvalidStateError,
    InvalidTransferError,
    LedgerError,
    LockedInputError,
    MaxRecordTimeExceededError,
    NotAuthorizedError,
    OffsetAfterLedgerEndError,
    PreapprovalMissingError,
    PreapprovalNotAllowedError,
    ReadOnlyLedgerError,
    ResponseLostError,
    TooManyInputsError,
    UnknownInstrumentError,
    UnknownPartyError,
)
from .faults import Faults
from .instructions import Instructions
from .minting import Minting
from .nodes import Nodes
from .persistence import Journal, MemoryJournal, SqliteJournal
from .registry import InstrumentConfig
from .results import CommandResult, Completion, InstrumentTotals
from .state import Settings, digest
from .updates import UpdateStream
from .views import Views

DEFAULT_START_TIME = datetime(2025, 1, 1, tzinfo=UTC)


class EmbeddedLedger(Instructions, Minting, Views, UpdateStream, Nodes):
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
        journal = journal or MemoryJournal()
        stored = journal.settings()
        if stored is not None:
            settings = Settings.from_json(stored)
        else:
            settings = Settings(
                seed=seed,
                start_time=start_time.astimezone(UTC),
                synchronizer_id=synchronizer_id
                or f"global-domain::1220{digest(f'{seed}:synchronizer')}",
                checkpoint_interval_s=checkpoint_interval_s,
                dedup_window_s=dedup_window_s,
            )
            if not read_only:
                journal.save_settings(settings.as_json())
        super().__init__(journal, settings, read_only=read_only)
        self.faults = Faults(self, settings.seed)
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

    # --- journal replay ------------------------------------------------------------------------

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

    # --- clients -------------------------------------------------------------------------------

    def client(self, party: str) -> NodeClient:
        """A :class:`sluice.ports.LedgerClient` on ``party``'s node."""
        return NodeClient(self, self.node_of(party))

    def node_client(self, node: str) -> NodeClient:
        with self._lock:
            if node not in self._nodes:
                raise InvalidInputError(f"unknown node {node!r}")
        return NodeClient(self, node)


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

    def active_contracts(self, party: str, at_offset: int | None = None) -> list[JsonObject]:
        """``party``'s active contracts as the Canton JSON API lists them. The embedded ledger
        keeps no archived contracts, so it answers at its end only: an earlier ``at_offset``
        raises :class:`~sluice.ports.LedgerReadError` (read :meth:`active_contracts_at_end`
        to get the offset and the contracts of one moment)."""
        end, items = self.active_contracts_at_end(party)
        if at_offset is not None and at_offset != end:
            raise LedgerReadError(
                f"the embedded ledger reads active contracts at its end ({end}) only, not at "
                f"offset {at_offset}",
                retryable=at_offset > end,
            )
        return items

    def active_contracts_at_end(self, party: str) -> tuple[int, list[JsonObject]]:
        """The node's ledger end and ``party``'s active contracts there, read together."""
        self._refresh()
        if self._ledger.node_of(party) != self.node:
            raise InvalidInputError(f"{party} is not hosted on node {self.node}")
        with self._ledger._lock:
            return self._ledger.ledger_end(self.node), self._ledger.active_contracts(party)


__all__ = [
    "CommandRejectedError",
    "CommandResult",
    "CommandTimeoutError",
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
