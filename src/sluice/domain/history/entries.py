"""What the history parser hands back: one party's entries of an update, and the update itself.

Frozen values only; how they are found is :mod:`.walk`'s business.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import field
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sluice.domain.ledger import Checkpoint, Holding, InstrumentId, TransferInstruction
from sluice.domain.values import value_class

EntryKind = Literal[
    "transfer_in",
    "transfer_out",
    "self_transfer",
    "mint",
    "burn",
    "merge_split",
    "unlock",
    "expire_dust",
    "unrecognized",
]
EntryStatus = Literal["completed", "pending", "rejected", "withdrawn", "failed"]

HoldingLookup = Callable[[str], Holding | None]
InstructionLookup = Callable[[str], TransferInstruction | None]


@value_class
class HistoryEntry:
    """One transfer or other token-standard action inside an update, from one party's view."""

    node_id: int
    kind: EntryKind
    status: EntryStatus | None
    sender: str | None
    receiver: str | None
    instrument: InstrumentId | None
    amount: Decimal | None
    reason: str | None
    correlation_id: str | None
    # The party's own holdings created / archived inside this entry's subtree.
    holdings_created: tuple[Holding, ...] = ()
    holdings_archived: tuple[Holding, ...] = ()
    # The token-standard choice (or the choice that carried the tx-kind) this entry came from;
    # None for a bare create.
    choice: str | None = None
    # The transfer instruction exercised (accept / reject / withdraw / update) or created.
    instruction_cid: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)


@value_class
class ParsedTransaction:
    update_id: str
    offset: int
    record_time: datetime
    synchronizer_id: str
    entries: tuple[HistoryEntry, ...]
    # Transfer instructions created in this update where the party is sender or receiver.
    instructions_created: tuple[TransferInstruction, ...] = ()
    # Contract ids of transfer instructions consumed in this update (known to the lookup).
    instructions_archived: tuple[str, ...] = ()

    @property
    def holdings_created(self) -> tuple[Holding, ...]:
        return tuple(h for e in self.entries for h in e.holdings_created)

    @property
    def holdings_archived(self) -> tuple[Holding, ...]:
        return tuple(h for e in self.entries for h in e.holdings_archived)


ParsedUpdate = ParsedTransaction | Checkpoint

UpdateKind = Literal["transaction", "checkpoint", "other"]
