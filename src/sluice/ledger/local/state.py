"""The embedded ledger's state: the records it keeps per update, completion and node, its
settings, and :class:`LedgerState`, the fields every part of
:class:`~sluice.ledger.local.engine.EmbeddedLedger` works on.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId, format_timestamp, parse_timestamp
from sluice.ledger.wire import copy_json

from .errors import InvalidTransferError, ReadOnlyLedgerError, UnknownPartyError
from .faults import Faults
from .persistence import Journal
from .registry import InstrumentConfig
from .results import CommandResult
from .transactions import HoldingContract, InstructionContract, PreapprovalContract, RulesContract


@dataclass(slots=True)
class CommittedUpdate:
    update_id: str
    command_id: str
    act_as: tuple[str, ...]
    record_time: datetime
    visible: frozenset[str]
    record: str


@dataclass(slots=True)
class CompletionRow:
    sequence: int
    command_id: str
    act_as: tuple[str, ...]
    update_seq: int | None
    record_time: datetime
    code: int
    error: str
    message: str


CHECKPOINT = -1


class Node:
    """One participant node's stream: parallel lists, one item per offset."""

    __slots__ = ("items", "name", "offset_by_seq", "offsets", "parties", "times")

    def __init__(self, name: str) -> None:
        self.name = name
        self.parties: set[str] = set()
        self.offsets: list[int] = []
        self.items: list[int] = []  # update sequence number, or CHECKPOINT
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
        if item != CHECKPOINT:
            self.offset_by_seq[item] = offset
        return offset


@dataclass(frozen=True, slots=True)
class Settings:
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
    def from_json(cls, text: str) -> Settings:
        data = json.loads(text)
        return cls(
            seed=int(data["seed"]),
            start_time=parse_timestamp(data["start_time"]),
            synchronizer_id=data["synchronizer_id"],
            checkpoint_interval_s=data["checkpoint_interval_s"],
            dedup_window_s=float(data["dedup_window_s"]),
        )


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def json_object(value: Mapping[str, Any]) -> dict[str, Any]:
    """A private deep copy of a JSON object given by a caller."""
    if not isinstance(value, Mapping):
        raise InvalidInputError("a choice context must be a JSON object")
    copied: dict[str, Any] = copy_json(dict(value))
    return copied


def positive_amount(value: Decimal | str | int, field: str = "amount") -> Decimal:
    amount = parse_amount(value, field=field)
    if amount <= 0:
        raise InvalidTransferError(f"{field} must be positive, got {format_amount(amount)}")
    return amount


class LedgerState:
    """The state every part of the ledger reads and writes, all of it under ``_lock``: the
    journal, the settings, the clock, the nodes and parties, the active contracts by kind, the
    committed updates, deduplication and completions. :class:`~.engine.EmbeddedLedger` is this
    state plus the parts (mixins) that act on it; the ``_apply_*`` methods each part has are the
    only writers, shared by live commands and replay."""

    # Set by EmbeddedLedger once the state exists (the faults hold a proxy of the ledger).
    faults: Faults

    def __init__(self, journal: Journal, settings: Settings, *, read_only: bool) -> None:
        self._journal = journal
        self._settings = settings
        self._read_only = read_only
        self._lock = threading.RLock()
        self._now = settings.start_time
        self._last_time = settings.start_time
        self._last_checkpoint_time = settings.start_time
        self._nodes: dict[str, Node] = {}
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
        self._updates: list[CommittedUpdate] = []
        self._update_seq: dict[str, int] = {}
        self._dedup: dict[tuple[tuple[str, ...], str], CommandResult] = {}
        self._dedup_order: deque[tuple[datetime, tuple[tuple[str, ...], str]]] = deque()
        self._completions: list[CompletionRow] = []
        self._completions_by_party: dict[str, list[int]] = {}
        self._journal_sequence = 0
        self._blobs: dict[str, tuple[str, str, str, str]] = {}

    def _write(self, kind: str, body: str) -> None:
        self._journal.append(kind, body)

    def _check_writable(self) -> None:
        if self._read_only:
            raise ReadOnlyLedgerError("this ledger was opened read-only")

    def _check_party(self, party: str) -> None:
        if party not in self._party_node:
            raise UnknownPartyError(f"unknown party {party!r}")
