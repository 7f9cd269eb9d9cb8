"""The token standard's names as the history parser reads them.

Interfaces, the choices that make an entry and what each means for it, the ``tx-kind`` values,
the result and instruction statuses, and the event tags of the JSON shape. Names are matched by
module and entity (:func:`qualified_name`), never by package id.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Literal

from sluice.domain.ledger import InstructionStatus

from .entries import EntryKind, EntryStatus

HOLDING_INTERFACE: Final = ("Splice.Api.Token.HoldingV1", "Holding")
TRANSFER_INSTRUCTION_INTERFACE: Final = (
    "Splice.Api.Token.TransferInstructionV1",
    "TransferInstruction",
)

# What a token-standard exercise means for its entry.
ChoiceRole = Literal[
    "factory_transfer",  # a transfer through a TransferFactory: completed, pending or failed
    "accept",  # the receiver accepts a transfer instruction
    "reject",  # the receiver rejects it
    "withdraw",  # the sender withdraws it
    "update",  # the admin moves it along its internal workflow
    "preapproval_send",  # Canton Coin's 1-step transfer to a preapproved receiver
    "other",  # any other token-standard action: kind from tx-kind, else unrecognized
]

_TRANSFER_INSTRUCTION_V1 = "Splice.Api.Token.TransferInstructionV1"
_ALLOCATION_V1 = "Splice.Api.Token.AllocationV1"
_ALLOCATION_INSTRUCTION_V1 = "Splice.Api.Token.AllocationInstructionV1"

# (module, entity, choice) → role. The module and entity are those of the exercise's interface
# when it has one (interface choices always do), else of its template. ``*_PublicFetch`` choices
# only read, so they are left out and walked like any other exercise.
TOKEN_STANDARD_CHOICES: Final[Mapping[tuple[str, str, str], ChoiceRole]] = {
    (_TRANSFER_INSTRUCTION_V1, "TransferFactory", "TransferFactory_Transfer"): "factory_transfer",
    (_TRANSFER_INSTRUCTION_V1, "TransferInstruction", "TransferInstruction_Accept"): "accept",
    (_TRANSFER_INSTRUCTION_V1, "TransferInstruction", "TransferInstruction_Reject"): "reject",
    (_TRANSFER_INSTRUCTION_V1, "TransferInstruction", "TransferInstruction_Withdraw"): "withdraw",
    (_TRANSFER_INSTRUCTION_V1, "TransferInstruction", "TransferInstruction_Update"): "update",
    ("Splice.AmuletRules", "TransferPreapproval", "TransferPreapproval_Send"): "preapproval_send",
    ("Splice.Api.Token.BurnMintV1", "BurnMintFactory", "BurnMintFactory_BurnMint"): "other",
    (_ALLOCATION_V1, "Allocation", "Allocation_ExecuteTransfer"): "other",
    (_ALLOCATION_V1, "Allocation", "Allocation_Cancel"): "other",
    (_ALLOCATION_V1, "Allocation", "Allocation_Withdraw"): "other",
    (_ALLOCATION_INSTRUCTION_V1, "AllocationFactory", "AllocationFactory_Allocate"): "other",
    (
        _ALLOCATION_INSTRUCTION_V1,
        "AllocationInstruction",
        "AllocationInstruction_Withdraw",
    ): "other",
    (_ALLOCATION_INSTRUCTION_V1, "AllocationInstruction", "AllocationInstruction_Update"): "other",
}

# The tx-kind metadata values and the entry kinds they stand for; "transfer" takes its
# direction from the parties.
TX_KINDS: Final[Mapping[str, EntryKind]] = {
    "transfer": "unrecognized",
    "merge-split": "merge_split",
    "burn": "burn",
    "mint": "mint",
    "unlock": "unlock",
    "expire-dust": "expire_dust",
}

RESULT_STATUSES: Final[Mapping[str, EntryStatus]] = {
    "TransferInstructionResult_Completed": "completed",
    "TransferInstructionResult_Pending": "pending",
    "TransferInstructionResult_Failed": "failed",
}

INSTRUCTION_STATUSES: Final[Mapping[str, InstructionStatus]] = {
    "TransferPendingReceiverAcceptance": "pending_receiver_acceptance",
    "TransferPendingInternalWorkflow": "pending_internal_workflow",
}

_TRANSFER_ROLES: Final = frozenset({"factory_transfer", "accept", "reject", "withdraw", "update"})
_FIXED_STATUSES: Final[Mapping[str, EntryStatus]] = {"reject": "rejected", "withdraw": "withdrawn"}

_CREATED = "CreatedEvent"
_EXERCISED = "ExercisedEvent"
_ARCHIVED = "ArchivedEvent"  # the ACS-delta shape: an archive without its exercise


_NAME_CACHE: dict[str, tuple[str, str]] = {}
_CACHE_SIZE_MAX = 4096


def qualified_name(identifier: str) -> tuple[str, str]:
    """(module, entity) of a template or interface id, whatever package reference precedes them.

    ``"#splice-amulet:Splice.Amulet:Amulet"`` and ``"6e9f…:Splice.Amulet:Amulet"`` both give
    ``("Splice.Amulet", "Amulet")``.
    """
    name = _NAME_CACHE.get(identifier)
    if name is None:
        head, _, entity = identifier.rpartition(":")
        name = (head.rpartition(":")[2], entity)
        if len(_NAME_CACHE) >= _CACHE_SIZE_MAX:
            _NAME_CACHE.clear()
        _NAME_CACHE[identifier] = name
    return name
