"""The history parser: one JSON Ledger API v2 update → the exchange-side facts it carries.

:func:`parse_update` takes an update exactly as the Ledger API hands it over (a
``JsGetUpdatesResponse``, a ``JsGetTransactionResponse`` or a bare ``JsTransaction`` in the
ledger-effects shape) and returns, for one party (the treasury), the entries of a
:class:`ParsedTransaction` or a :class:`~sluice.domain.ledger.Checkpoint`.

What it guarantees:

* It is pure and total over its input: any shape problem raises :class:`MalformedUpdateError`
  naming the update, the event (index and node id) and the field; no ``KeyError`` or
  ``TypeError`` escapes. Well-formed events it does not understand are ignored, never errors.
* Every holding of the party created or archived in the update lands in exactly one entry, so
  Σ created − Σ archived over the entries is the party's net holdings change. A holding created
  and archived inside the same entry (a transient, e.g. the unlocked amulet a transfer spends at
  once) is left out of both lists, as the Wallet SDK does. Apply an update's creates before its
  archives: a holding created by one entry may be archived by a later one.
* Archived contracts carry no payload in this shape, so an archive is resolved only through the
  ``holdings`` / ``instructions`` lookups or through what this update created earlier; an owner
  is never guessed.
* Templates and interfaces are matched by module and entity name, never by package id.

How entries are found (events in node-id order; an exercise covers its node id up to its
``lastDescendantNodeId``):

1. A token-standard exercise (:data:`TOKEN_STANDARD_CHOICES`) makes its whole subtree one entry.
2. Any other exercise whose ``exerciseResult.meta`` carries a ``tx-kind`` makes its subtree one
   entry of that kind (:data:`TX_KINDS`).
3. Any other exercise is no entry itself; its children are walked.
4. A transfer-instruction create outside any entry, where the party is sender or receiver, is a
   ``pending`` entry (that is how an incoming offer reaches its receiver).
5. The party's holdings created or archived outside any entry are grouped into one
   ``unrecognized`` entry per top-level (outermost visible) event, for review.

Choices this parser makes where the token standard leaves room:

* Direction: sender = receiver → ``self_transfer``; receiver = party → ``transfer_in``;
  sender = party → ``transfer_out``. When the party is neither (a witness, or the transfer's
  parties are unknown), the party's net holdings change decides: up → ``transfer_in``, down →
  ``transfer_out``, none (or several instruments) → ``unrecognized``. A ``tx-kind`` other than
  ``transfer`` in the merged metadata wins over the direction.
* Amounts follow the kind. Transfers: the transfer's amount (``TransferPreapproval_Send``: its
  ``amount`` argument; a ``tx-kind = transfer`` exercise without a transfer record: what the
  receiver's new holdings add up to). ``mint``: the party's net increase; ``burn``: its net
  decrease (both positive; the ``burned`` metadata counts network fees of whoever paid them, not
  the party's holdings, and stays in ``meta``). ``merge_split``, ``unlock``, ``expire_dust`` and
  non-transfer ``unrecognized`` entries: the party's signed net change (negative: fees paid).
  ``None`` when the party's holdings did not change or span several instruments.
* Transfers known only by their holdings (``TransferPreapproval_Send``, ``tx-kind = transfer``)
  take as receiver the owner of a holding they created that is not the sender's (the party's
  own first); a ``TransferPreapproval_Send`` the party did not make is to the party.
* An instruction choice on an instruction neither lookup knows takes its transfer from the first
  token-standard ``Transfer`` record in an exercise of its subtree (registries nest e.g.
  ``TransferRule_Transfer`` with it); without one, sender, receiver and amount stay unknown.
* Reason: only from metadata (for ``TransferPreapproval_Send`` that is the result metadata; its
  ``description`` argument is not a reason), merged with last write wins in this order: transfer
  meta, ``extraArgs`` meta, choice meta, the instruction's transfer meta, result meta. For choices
  outside the token standard only the metadata that has the standard's shape is read.
* Offers between two other parties are not the party's business: no entry, not recorded.
* ``ArchivedEvent`` (the ACS-delta shape) is read as an archive; any other event kind is
  malformed.

The parts: :mod:`.entries` (the types it returns), :mod:`.choices` (the token standard's names
and what they mean for an entry), :mod:`.fields` (reading the JSON shapes field by field),
:mod:`.walk` (one transaction walked in node order into entries) and :mod:`.parser` (the entry
points).
"""

from __future__ import annotations

from .choices import (
    HOLDING_INTERFACE,
    INSTRUCTION_STATUSES,
    RESULT_STATUSES,
    TOKEN_STANDARD_CHOICES,
    TRANSFER_INSTRUCTION_INTERFACE,
    TX_KINDS,
    ChoiceRole,
    qualified_name,
)
from .entries import (
    EntryKind,
    EntryStatus,
    HistoryEntry,
    HoldingLookup,
    InstructionLookup,
    ParsedTransaction,
    ParsedUpdate,
    UpdateKind,
)
from .parser import (
    item_offset,
    parse_checkpoint,
    parse_transaction,
    parse_transfer,
    parse_update,
    unwrap_update,
)

__all__ = [
    "HOLDING_INTERFACE",
    "INSTRUCTION_STATUSES",
    "RESULT_STATUSES",
    "TOKEN_STANDARD_CHOICES",
    "TRANSFER_INSTRUCTION_INTERFACE",
    "TX_KINDS",
    "ChoiceRole",
    "EntryKind",
    "EntryStatus",
    "HistoryEntry",
    "HoldingLookup",
    "InstructionLookup",
    "ParsedTransaction",
    "ParsedUpdate",
    "UpdateKind",
    "item_offset",
    "parse_checkpoint",
    "parse_transaction",
    "parse_transfer",
    "parse_update",
    "qualified_name",
    "unwrap_update",
]
