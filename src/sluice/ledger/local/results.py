"""What the embedded ledger's commands and reads return: a committed command's outcome, a
completion as a submitting party sees it, an instrument's totals.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Literal

from sluice.domain.amounts import ZERO
from sluice.domain.ledger import TransferKind

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
