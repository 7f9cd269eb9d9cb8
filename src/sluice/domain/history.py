"""The history parser: one JSON Ledger API v2 update → the exchange-side facts it carries.

The types come first, the parser below them. :func:`parse_update` takes an update exactly as the
Ledger API hands it over (a ``JsGetUpdatesResponse``, a ``JsGetTransactionResponse`` or a bare
``JsTransaction`` in the ledger-effects shape) and returns, for one party (the treasury), the
entries of a :class:`ParsedTransaction` or a :class:`~sluice.domain.ledger.Checkpoint`.

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
"""

from __future__ import annotations

import decimal
import itertools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Final, Literal

from sluice.domain.amounts import ZERO, parse_amount
from sluice.domain.errors import InvalidInputError, MalformedUpdateError
from sluice.domain.ledger import (
    REASON_KEY,
    SENDER_KEY,
    TX_KIND_KEY,
    Checkpoint,
    Holding,
    InstructionStatus,
    InstrumentId,
    Lock,
    Transfer,
    TransferInstruction,
    parse_timestamp,
)

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


@dataclass(frozen=True, slots=True)
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


@dataclass(frozen=True, slots=True)
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


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------

UpdateKind = Literal["transaction", "checkpoint", "other"]

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

_MISSING: Final = object()
_EMPTY_META: Final[Mapping[str, str]] = {}
_SUM = decimal.Context(prec=60, traps=[decimal.InvalidOperation, decimal.Inexact])

_NAME_CACHE: dict[str, tuple[str, str]] = {}
_INSTRUMENT_CACHE: dict[tuple[str, str], InstrumentId] = {}
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


class _ShapeError(Exception):
    """A shape problem, as ``"<path inside the event>: <problem>"``; wrapped with the update."""


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, list):
        return "a list"
    if type(value) is dict or isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _wrong(path: str, value: object, expected: str) -> _ShapeError:
    if value is _MISSING:
        return _ShapeError(f"{path}: missing")
    return _ShapeError(f"{path}: expected {expected}, got {_type_name(value)}")


def _text(obj: Mapping[str, Any], key: str, path: str) -> str:
    value = obj.get(key, _MISSING)
    if type(value) is str:
        return value
    raise _wrong(path + key, value, "a string")


def _optional_text(obj: Mapping[str, Any], key: str, path: str) -> str | None:
    value = obj.get(key)
    if value is None or type(value) is str:
        return value
    raise _wrong(path + key, value, "a string or null")


def _object(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any]:
    value = obj.get(key, _MISSING)
    if type(value) is dict or isinstance(value, Mapping):
        return value
    raise _wrong(path + key, value, "an object")


def _optional_object(obj: Mapping[str, Any], key: str, path: str) -> Mapping[str, Any] | None:
    value = obj.get(key)
    if value is None or type(value) is dict or isinstance(value, Mapping):
        return value
    raise _wrong(path + key, value, "an object or null")


def _list(obj: Mapping[str, Any], key: str, path: str) -> list[Any]:
    value = obj.get(key, _MISSING)
    if type(value) is list:
        return value
    raise _wrong(path + key, value, "a list")


def _integer(obj: Mapping[str, Any], key: str, path: str) -> int:
    value = obj.get(key, _MISSING)
    if type(value) is int:
        return value
    # int64 values may come as decimal strings from some JSON encoders.
    if type(value) is str and value.isascii() and value.isdigit():
        return int(value)
    raise _wrong(path + key, value, "an integer")


def _amount(obj: Mapping[str, Any], key: str, path: str) -> Decimal:
    value = obj.get(key, _MISSING)
    if type(value) is not str:
        raise _wrong(path + key, value, "a decimal string")
    try:
        return parse_amount(value, field=path + key)
    except InvalidInputError as exc:
        raise _ShapeError(str(exc)) from None


def _time(obj: Mapping[str, Any], key: str, path: str) -> datetime:
    value = obj.get(key, _MISSING)
    if type(value) is not str:
        raise _wrong(path + key, value, "an RFC 3339 timestamp")
    try:
        return parse_timestamp(value, field=path + key)
    except InvalidInputError as exc:
        raise _ShapeError(str(exc)) from None


def _text_tuple(obj: Mapping[str, Any], key: str, path: str) -> tuple[str, ...]:
    values = _list(obj, key, path)
    for index, value in enumerate(values):
        if type(value) is not str:
            raise _wrong(f"{path}{key}[{index}]", value, "a string")
    return tuple(values)


def _meta_values(obj: Mapping[str, Any] | None, path: str) -> Mapping[str, str] | None:
    """``obj.meta.values`` (a token-standard ``Metadata``), or None when there is none."""
    if obj is None:
        return None
    meta = obj.get("meta")
    if meta is None:
        return None
    if not (type(meta) is dict or isinstance(meta, Mapping)):
        raise _wrong(path + "meta", meta, "an object")
    values = meta.get("values")
    if values is None:
        return None
    if not (type(values) is dict or isinstance(values, Mapping)):
        raise _wrong(path + "meta.values", values, "an object")
    for key, value in values.items():
        if type(value) is not str:
            raise _wrong(f"{path}meta.values[{key!r}]", value, "a string")
    return values


def _loose_meta_values(obj: object) -> Mapping[str, str] | None:
    """``obj.meta.values`` of a value that may not be token-standard at all: its text entries."""
    if not isinstance(obj, Mapping):
        return None
    meta = obj.get("meta")
    if not isinstance(meta, Mapping):
        return None
    values = meta.get("values")
    if not isinstance(values, Mapping):
        return None
    if all(type(value) is str for value in values.values()):
        return values
    return {key: value for key, value in values.items() if type(value) is str}


def _instrument(obj: Mapping[str, Any], key: str, path: str) -> InstrumentId:
    value = _object(obj, key, path)
    inner = path + key + "."
    admin, identifier = _text(value, "admin", inner), _text(value, "id", inner)
    instrument = _INSTRUMENT_CACHE.get((admin, identifier))
    if instrument is None:
        instrument = InstrumentId(admin, identifier)
        if len(_INSTRUMENT_CACHE) >= _CACHE_SIZE_MAX:
            _INSTRUMENT_CACHE.clear()
        _INSTRUMENT_CACHE[(admin, identifier)] = instrument
    return instrument


def _lock(value: object, path: str) -> Lock | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise _wrong(path, value, "an object or null")
    inner = path + "."
    expires = value.get("expiresAt")
    return Lock(
        holders=_text_tuple(value, "holders", inner),
        expires_at=None if expires is None else _time(value, "expiresAt", inner),
        context=_optional_text(value, "context", inner),
    )


def _holding(contract_id: str, view: Mapping[str, Any], path: str) -> Holding:
    return Holding(
        contract_id=contract_id,
        owner=_text(view, "owner", path),
        instrument=_instrument(view, "instrumentId", path),
        amount=_amount(view, "amount", path),
        lock=_lock(view.get("lock"), path + "lock"),
    )


def _transfer(value: Mapping[str, Any], path: str) -> Transfer:
    """A token-standard ``Transfer`` record."""
    cids = value.get("inputHoldingCids")
    return Transfer(
        sender=_text(value, "sender", path),
        receiver=_text(value, "receiver", path),
        amount=_amount(value, "amount", path),
        instrument=_instrument(value, "instrumentId", path),
        requested_at=_time(value, "requestedAt", path),
        execute_before=_time(value, "executeBefore", path),
        input_holding_cids=() if cids is None else _text_tuple(value, "inputHoldingCids", path),
        meta=_meta_values(value, path) or _EMPTY_META,
    )


def _instruction(contract_id: str, view: Mapping[str, Any], path: str) -> TransferInstruction:
    status = _object(view, "status", path)
    tag = _text(status, "tag", path + "status.")
    instruction_status = INSTRUCTION_STATUSES.get(tag)
    if instruction_status is None:
        raise _ShapeError(f"{path}status.tag: {tag!r} is not a transfer instruction status")
    return TransferInstruction(
        contract_id=contract_id,
        transfer=_transfer(_object(view, "transfer", path), path + "transfer."),
        status=instruction_status,
        original_instruction_cid=_optional_text(view, "originalInstructionCid", path),
        meta=_meta_values(view, path) or _EMPTY_META,
    )


def _view_value(view: Mapping[str, Any], path: str) -> Mapping[str, Any] | None:
    """The view's value, or None when the view could not be computed (non-zero status)."""
    status = view.get("viewStatus")
    if status is not None:
        if not (type(status) is dict or isinstance(status, Mapping)):
            raise _wrong(path + "viewStatus", status, "an object")
        code = status.get("code", 0)
        if type(code) is not int:
            raise _wrong(path + "viewStatus.code", code, "an integer")
        if code != 0:
            return None
    return _optional_object(view, "viewValue", path)


def _result_status(result: object) -> tuple[EntryStatus, Mapping[str, Any]]:
    """The status a ``TransferInstructionResult`` reports, and its ``output.value``."""
    if not isinstance(result, Mapping):
        raise _wrong("exerciseResult", _MISSING if result is None else result, "an object")
    output = _object(result, "output", "exerciseResult.")
    tag = _text(output, "tag", "exerciseResult.output.")
    status = RESULT_STATUSES.get(tag)
    if status is None:
        raise _ShapeError(f"exerciseResult.output.tag: {tag!r} is not a transfer result")
    value = output.get("value")
    return status, value if isinstance(value, Mapping) else _EMPTY_META


def _direction(
    sender: str | None, receiver: str | None, party: str, net: Decimal | None
) -> EntryKind:
    if sender is not None and sender == receiver:
        return "self_transfer"
    if receiver == party:
        return "transfer_in"
    if sender == party:
        return "transfer_out"
    if net is None or net == 0:
        return "unrecognized"
    return "transfer_in" if net > 0 else "transfer_out"


def _net(
    created: tuple[Holding, ...], archived: tuple[Holding, ...]
) -> tuple[InstrumentId | None, Decimal | None]:
    """The party's net holdings change, when it is in one instrument."""
    instrument: InstrumentId | None = None
    total = ZERO
    for holding in created:
        if instrument is None:
            instrument = holding.instrument
        elif holding.instrument != instrument:
            return None, None
        total = _SUM.add(total, holding.amount)
    for holding in archived:
        if instrument is None:
            instrument = holding.instrument
        elif holding.instrument != instrument:
            return None, None
        total = _SUM.subtract(total, holding.amount)
    if instrument is None:
        return None, None
    return instrument, total


def _own_amount(
    kind: EntryKind, created: tuple[Holding, ...], archived: tuple[Holding, ...]
) -> tuple[Decimal | None, InstrumentId | None]:
    """An entry's amount from the party's own holdings: burns count what went away."""
    instrument, net = _net(created, archived)
    if net is None:
        return None, None
    return (-net if kind == "burn" else net), instrument


def _received(created: list[Holding], owner: str, instrument: InstrumentId) -> Decimal:
    total = ZERO
    for holding in created:
        if holding.owner == owner and holding.instrument == instrument:
            total = _SUM.add(total, holding.amount)
    return total


def _drop_transients(
    created: list[Holding], archived: list[Holding]
) -> tuple[tuple[Holding, ...], tuple[Holding, ...]]:
    if created and archived:
        both = {h.contract_id for h in created} & {h.contract_id for h in archived}
        if both:
            created = [h for h in created if h.contract_id not in both]
            archived = [h for h in archived if h.contract_id not in both]
    return tuple(created), tuple(archived)


class _Scope:
    """An entry being collected: a token-standard or tx-kind exercise and its subtree."""

    __slots__ = (
        "all_created",
        "archived",
        "body",
        "choice",
        "created",
        "end",
        "fallback",
        "index",
        "instruction",
        "instruction_cid",
        "node",
        "role",
        "send_amount",
        "send_sender",
        "status",
        "transfer",
        "wants_transfer",
    )

    def __init__(
        self, index: int, node: int, end: int, body: Mapping[str, Any], choice: str
    ) -> None:
        self.index = index
        self.node = node
        self.end = end
        self.body = body
        self.choice = choice
        self.role: ChoiceRole | Literal["tx_kind"] = "other"
        self.status: EntryStatus | None = "completed"
        self.transfer: Transfer | None = None
        self.instruction: TransferInstruction | None = None
        self.instruction_cid: str | None = None
        # A transfer record found deeper in the subtree, for instruction choices on unknown
        # instructions (registries nest e.g. TransferRule_Transfer carrying it).
        self.fallback: Transfer | None = None
        self.wants_transfer = False
        # TransferPreapproval_Send's arguments.
        self.send_sender: str | None = None
        self.send_amount: Decimal | None = None
        self.created: list[Holding] = []  # the party's
        self.archived: list[Holding] = []  # the party's
        self.all_created: list[Holding] = []  # everyone's, to find receivers and instruments


class _Group:
    """The party's holdings changed under one top-level event, outside any entry."""

    __slots__ = ("archived", "choice", "created")

    def __init__(self, choice: str | None) -> None:
        self.choice = choice
        self.created: list[Holding] = []
        self.archived: list[Holding] = []


class _Walk:
    """One transaction, walked once in node order."""

    __slots__ = (
        "entries",
        "groups",
        "holdings",
        "instructions",
        "instructions_archived",
        "instructions_created",
        "party",
        "tx_holdings",
        "tx_instructions",
    )

    def __init__(
        self, party: str, holdings: HoldingLookup, instructions: InstructionLookup
    ) -> None:
        self.party = party
        self.holdings = holdings
        self.instructions = instructions
        self.entries: list[HistoryEntry] = []
        self.groups: dict[int, _Group] = {}
        self.tx_holdings: dict[str, Holding] = {}  # the party's, created in this update
        self.tx_instructions: dict[str, TransferInstruction] = {}
        self.instructions_created: list[TransferInstruction] = []
        self.instructions_archived: list[str] = []

    def run(self, ordered: list[tuple[int, int, int, str, Mapping[str, Any]]]) -> None:
        scope: _Scope | None = None
        group: _Group | None = None
        top_end = -1
        for node, end, index, tag, body in ordered:
            if scope is not None and node > scope.end:
                self._close(scope)
                scope = None
            try:
                if group is None or node > top_end:
                    top_end = end
                    group = _Group(body.get("choice") if tag == _EXERCISED else None)
                    self.groups[node] = group
                if tag == _CREATED:
                    self._created(node, body, scope, group)
                elif tag == _EXERCISED:
                    consuming = body.get("consuming", _MISSING)
                    if type(consuming) is not bool:
                        raise _wrong("consuming", consuming, "a boolean")
                    if scope is None:
                        scope = self._open(index, node, end, body)
                    elif scope.wants_transfer:
                        scope.fallback = self._nested_transfer(body)
                        scope.wants_transfer = scope.fallback is None
                    if consuming:
                        self._consumed(_text(body, "contractId", ""), scope, group)
                else:
                    self._consumed(_text(body, "contractId", ""), scope, group)
            except _ShapeError as exc:
                raise _ShapeError(f"events[{index}] (node {node}) {tag}.{exc}") from None
        if scope is not None:
            self._close(scope)
        for node, group in self.groups.items():
            created, archived = _drop_transients(group.created, group.archived)
            if created or archived:
                instrument, amount = _net(created, archived)
                self.entries.append(
                    HistoryEntry(
                        node_id=node,
                        kind="unrecognized",
                        status=None,
                        sender=None,
                        receiver=None,
                        instrument=instrument,
                        amount=amount,
                        reason=None,
                        correlation_id=None,
                        holdings_created=created,
                        holdings_archived=archived,
                        choice=group.choice if type(group.choice) is str else None,
                    )
                )
        self.entries.sort(key=_node_id)

    # -- facts ---------------------------------------------------------------------------------

    def _created(
        self, node: int, body: Mapping[str, Any], scope: _Scope | None, group: _Group
    ) -> None:
        views = body.get("interfaceViews")
        if not views:
            return
        if type(views) is not list:
            raise _wrong("interfaceViews", views, "a list")
        contract_id = _text(body, "contractId", "")
        for position, view in enumerate(views):
            if not (type(view) is dict or isinstance(view, Mapping)):
                raise _wrong(f"interfaceViews[{position}]", view, "an object")
            path = f"interfaceViews[{position}]."
            name = qualified_name(_text(view, "interfaceId", path))
            if name == HOLDING_INTERFACE:
                value = _view_value(view, path)
                if value is None:
                    continue
                holding = _holding(contract_id, value, path + "viewValue.")
                if scope is not None:
                    scope.all_created.append(holding)
                if holding.owner == self.party:
                    self.tx_holdings[contract_id] = holding
                    (scope or group).created.append(holding)
            elif name == TRANSFER_INSTRUCTION_INTERFACE:
                value = _view_value(view, path)
                if value is None:
                    continue
                instruction = _instruction(contract_id, value, path + "viewValue.")
                self.tx_instructions[contract_id] = instruction
                transfer = instruction.transfer
                if self.party in (transfer.sender, transfer.receiver):
                    self.instructions_created.append(instruction)
                    if scope is None:
                        self.entries.append(self._offer(node, instruction))

    def _consumed(self, contract_id: str, scope: _Scope | None, group: _Group) -> None:
        holding = self.tx_holdings.get(contract_id) or self.holdings(contract_id)
        if holding is not None:
            if holding.owner == self.party:
                (scope or group).archived.append(holding)
            return
        if contract_id in self.tx_instructions or self.instructions(contract_id) is not None:
            self.instructions_archived.append(contract_id)

    def _find_instruction(self, contract_id: str) -> TransferInstruction | None:
        return self.tx_instructions.get(contract_id) or self.instructions(contract_id)

    @staticmethod
    def _nested_transfer(body: Mapping[str, Any]) -> Transfer | None:
        argument = body.get("choiceArgument")
        if not isinstance(argument, Mapping):
            return None
        value = argument.get("transfer")
        # Only a token-standard Transfer record will do (Amulet's own transfers differ).
        if isinstance(value, Mapping) and "receiver" in value and "instrumentId" in value:
            return _transfer(value, "choiceArgument.transfer.")
        return None

    # -- entries -------------------------------------------------------------------------------

    def _close(self, scope: _Scope) -> None:
        try:
            self.entries.append(self._finish(scope))
        except _ShapeError as exc:
            where = f"events[{scope.index}] (node {scope.node}) {_EXERCISED}"
            raise _ShapeError(f"{where}.{exc}") from None

    def _open(self, index: int, node: int, end: int, body: Mapping[str, Any]) -> _Scope | None:
        """The entry this exercise starts, or None when it is walked through."""
        choice = _text(body, "choice", "")
        interface_id = body.get("interfaceId")
        if interface_id is None:
            identifier = _text(body, "templateId", "")
        elif type(interface_id) is str:
            identifier = interface_id
        else:
            raise _wrong("interfaceId", interface_id, "a string or null")
        module, entity = qualified_name(identifier)
        role = TOKEN_STANDARD_CHOICES.get((module, entity, choice))
        result = body.get("exerciseResult")
        if role is None:
            # Any exercise may carry a tx-kind; its result need not be token-standard at all.
            tx_kind = (_loose_meta_values(result) or _EMPTY_META).get(TX_KIND_KEY)
            if tx_kind is None:
                return None
            scope = _Scope(index, node, end, body, choice)
            scope.role = "tx_kind"
            return scope
        scope = _Scope(index, node, end, body, choice)
        scope.role = role
        if role == "factory_transfer":
            argument = _object(body, "choiceArgument", "")
            scope.transfer = _transfer(
                _object(argument, "transfer", "choiceArgument."), "choiceArgument.transfer."
            )
            scope.status, value = _result_status(result)
            if scope.status == "pending":
                scope.instruction_cid = _text(
                    value, "transferInstructionCid", "exerciseResult.output.value."
                )
        elif role in _TRANSFER_ROLES:
            contract_id = _text(body, "contractId", "")
            scope.instruction_cid = contract_id
            scope.instruction = self._find_instruction(contract_id)
            scope.wants_transfer = scope.instruction is None
            fixed = _FIXED_STATUSES.get(role)
            scope.status = fixed if fixed is not None else _result_status(result)[0]
        elif role == "preapproval_send":
            argument = _object(body, "choiceArgument", "")
            scope.send_sender = _text(argument, "sender", "choiceArgument.")
            scope.send_amount = _amount(argument, "amount", "choiceArgument.")
        return scope

    def _finish(self, scope: _Scope) -> HistoryEntry:
        party = self.party
        body = scope.body
        argument = body.get("choiceArgument")
        if not isinstance(argument, Mapping):
            argument = _EMPTY_META
        instruction_transfer = scope.fallback
        if scope.instruction is not None:
            instruction_transfer = scope.instruction.transfer

        # Metadata, last write wins. A token-standard choice's arguments and result have the
        # standard's shape; any other choice's are read for what fits and otherwise ignored.
        meta: dict[str, str] = {}
        if scope.transfer is not None:
            meta.update(scope.transfer.meta)
        if scope.role == "tx_kind":
            nested = argument.get("transfer")
            meta.update(_loose_meta_values(nested) or _EMPTY_META)
            meta.update(_loose_meta_values(argument.get("extraArgs")) or _EMPTY_META)
            meta.update(_loose_meta_values(argument) or _EMPTY_META)
            meta.update(_loose_meta_values(body.get("exerciseResult")) or _EMPTY_META)
        else:
            if scope.transfer is None:
                nested = _optional_object(argument, "transfer", "choiceArgument.")
                meta.update(_meta_values(nested, "choiceArgument.transfer.") or _EMPTY_META)
            extra = _optional_object(argument, "extraArgs", "choiceArgument.")
            meta.update(_meta_values(extra, "choiceArgument.extraArgs.") or _EMPTY_META)
            meta.update(_meta_values(argument, "choiceArgument.") or _EMPTY_META)
            if instruction_transfer is not None:
                meta.update(instruction_transfer.meta)
            result = _optional_object(body, "exerciseResult", "")
            meta.update(_meta_values(result, "exerciseResult.") or _EMPTY_META)
        tx_kind = meta.get(TX_KIND_KEY)
        special = TX_KINDS.get(tx_kind) if tx_kind is not None and tx_kind != "transfer" else None

        created, archived = _drop_transients(scope.created, scope.archived)
        instrument, net = _net(created, archived)
        sender: str | None = None
        receiver: str | None = None
        amount: Decimal | None = None
        correlation_id: str | None = None
        kind: EntryKind
        role = scope.role

        if role in _TRANSFER_ROLES:
            transfer = scope.transfer if role == "factory_transfer" else instruction_transfer
            if transfer is not None:
                sender, receiver = transfer.sender, transfer.receiver
                amount, instrument = transfer.amount, transfer.instrument
            if scope.instruction is not None:
                correlation_id = scope.instruction.correlation_id
            elif role == "factory_transfer" and scope.instruction_cid is not None:
                known = self.tx_instructions.get(scope.instruction_cid)
                correlation_id = known.correlation_id if known else scope.instruction_cid
            else:
                correlation_id = scope.instruction_cid
            if special is not None:
                kind = special
                amount, instrument = _own_amount(special, created, archived)
            else:
                kind = _direction(sender, receiver, party, net)
        elif role == "preapproval_send" or tx_kind == "transfer":
            # A transfer known only by the holdings it created.
            sender = scope.send_sender if role == "preapproval_send" else meta.get(SENDER_KEY)
            preapproved = role == "preapproval_send"
            receiver, received = self._receiver(sender, scope.all_created, preapproved)
            if special is not None:
                kind = special
                amount, instrument = _own_amount(special, created, archived)
            else:
                kind = _direction(sender, receiver, party, net)
                if received is not None:
                    instrument = received.instrument
                elif scope.all_created:
                    instrument = scope.all_created[0].instrument
                if role == "preapproval_send":
                    amount = scope.send_amount
                elif received is not None:
                    amount = _received(scope.all_created, received.owner, received.instrument)
                else:
                    amount = instrument = None
        else:
            sender = meta.get(SENDER_KEY)
            kind = special or "unrecognized"
            amount, instrument = _own_amount(kind, created, archived)

        return HistoryEntry(
            node_id=scope.node,
            kind=kind,
            status=scope.status,
            sender=sender,
            receiver=receiver,
            instrument=instrument,
            amount=amount,
            reason=meta.get(REASON_KEY),
            correlation_id=correlation_id,
            holdings_created=created,
            holdings_archived=archived,
            choice=scope.choice,
            instruction_cid=scope.instruction_cid,
            meta=meta,
        )

    def _receiver(
        self, sender: str | None, created: list[Holding], preapproved: bool
    ) -> tuple[str | None, Holding | None]:
        """Who received a transfer, from the holdings it created: the party if it got one.

        A party that sees a ``TransferPreapproval_Send`` it did not make is its receiver (the
        preapproval is the receiver's), even when it cannot see what was created.
        """
        first: Holding | None = None
        for holding in created:
            if holding.owner != sender:
                if holding.owner == self.party:
                    return self.party, holding
                if first is None:
                    first = holding
        if first is not None:
            return first.owner, first
        if preapproved and sender != self.party:
            return self.party, None
        return None, None

    def _offer(self, node: int, instruction: TransferInstruction) -> HistoryEntry:
        transfer = instruction.transfer
        return HistoryEntry(
            node_id=node,
            kind=_direction(transfer.sender, transfer.receiver, self.party, None),
            status="pending",
            sender=transfer.sender,
            receiver=transfer.receiver,
            instrument=transfer.instrument,
            amount=transfer.amount,
            reason=transfer.meta.get(REASON_KEY),
            correlation_id=instruction.correlation_id,
            choice=None,
            instruction_cid=instruction.contract_id,
            meta=dict(transfer.meta),
        )


def _node_id(entry: HistoryEntry) -> int:
    return entry.node_id


_EVENT_TAGS: Final = (_CREATED, _EXERCISED, _ARCHIVED)


def _order_events(events: list[Any]) -> list[tuple[int, int, int, str, Mapping[str, Any]]]:
    """(node id, last descendant node id, index, tag, body) per event, in node-id order."""
    ordered: list[tuple[int, int, int, str, Mapping[str, Any]]] = []
    previous = -1
    in_order = True
    for index, event in enumerate(events):
        if not (type(event) is dict or isinstance(event, Mapping)):
            raise _wrong(f"events[{index}]", event, "an object")
        body: Any = None
        tag = ""
        for tag in _EVENT_TAGS:
            body = event.get(tag)
            if body is not None:
                break
        else:
            keys = sorted(str(key) for key in event)
            raise _ShapeError(
                f"events[{index}]: expected a CreatedEvent, ExercisedEvent or ArchivedEvent, "
                f"got {keys}"
            )
        if not (type(body) is dict or isinstance(body, Mapping)):
            raise _wrong(f"events[{index}] {tag}", body, "an object")
        path = f"events[{index}] {tag}."
        node = _integer(body, "nodeId", path)
        if node < 0:
            raise _ShapeError(f"{path}nodeId: {node} is negative")
        end = node
        if tag == _EXERCISED:
            end = _integer(body, "lastDescendantNodeId", path)
            if end < node:
                raise _ShapeError(
                    f"{path}lastDescendantNodeId: {end} is before its own node id {node}"
                )
        if node <= previous:
            in_order = False
        previous = node
        ordered.append((node, end, index, tag, body))
    if not in_order:
        ordered.sort(key=_first)
        for before, after in itertools.pairwise(ordered):
            if before[0] == after[0]:
                raise _ShapeError(
                    f"events[{after[2]}] {after[3]}.nodeId: {after[0]} is also the node id of "
                    f"events[{before[2]}]"
                )
    return ordered


def _first(item: tuple[int, int, int, str, Mapping[str, Any]]) -> int:
    return item[0]


def parse_transaction(
    tx: Mapping[str, Any],
    party: str,
    holdings: HoldingLookup,
    instructions: InstructionLookup,
) -> ParsedTransaction:
    """The party's entries in one ``JsTransaction`` (ledger-effects shape).

    ``holdings(cid)`` / ``instructions(cid)`` return the party's holding / a recorded transfer
    instruction with that contract id, or None; archives are resolved through them and through
    what this transaction created before.
    """
    if not isinstance(tx, Mapping):
        raise MalformedUpdateError(None, str(_wrong("transaction", tx, "an object")))
    raw_offset = tx.get("offset")
    offset = raw_offset if type(raw_offset) is int else None
    update_id = tx.get("updateId", _MISSING)
    if type(update_id) is not str or not update_id:
        problem = "a non-empty string"
        raise MalformedUpdateError(None, str(_wrong("updateId", update_id, problem)), offset=offset)
    try:
        offset = _integer(tx, "offset", "")
        record_time = _time(tx, "recordTime", "")
        synchronizer_id = _text(tx, "synchronizerId", "")
        events = _list(tx, "events", "")
        walk = _Walk(party, holdings, instructions)
        walk.run(_order_events(events))
    except _ShapeError as exc:
        raise MalformedUpdateError(update_id, str(exc), offset=offset) from None
    return ParsedTransaction(
        update_id=update_id,
        offset=offset,
        record_time=record_time,
        synchronizer_id=synchronizer_id,
        entries=tuple(walk.entries),
        instructions_created=tuple(walk.instructions_created),
        instructions_archived=tuple(walk.instructions_archived),
    )


def parse_transfer(value: Mapping[str, Any]) -> Transfer:
    """A token-standard ``Transfer`` record (as in a ``TransferFactory_Transfer`` argument);
    :class:`InvalidInputError` naming the field that is wrong."""
    if not isinstance(value, Mapping):
        raise InvalidInputError(str(_wrong("transfer", value, "an object")))
    try:
        return _transfer(value, "transfer.")
    except _ShapeError as exc:
        raise InvalidInputError(str(exc)) from None


_UPDATE_KINDS: Final[Mapping[str, UpdateKind]] = {
    "Transaction": "transaction",
    "OffsetCheckpoint": "checkpoint",
    "Reassignment": "other",
    "TopologyTransaction": "other",
}


def unwrap_update(raw: Mapping[str, Any]) -> tuple[UpdateKind, Mapping[str, Any]]:
    """What kind of update this is, and its body (a ``JsTransaction``, an ``OffsetCheckpoint``…).

    Accepts a ``JsGetUpdatesResponse`` (``{"update": {"Transaction": {"value": tx}}}``, also
    without ``"value"``), a ``JsGetTransactionResponse`` (``{"transaction": tx}``), a bare
    ``JsTransaction`` (has ``updateId`` and ``events``) or a bare ``OffsetCheckpoint`` value.
    """
    if not isinstance(raw, Mapping):
        raise MalformedUpdateError(None, f"update: expected a JSON object, got {_type_name(raw)}")
    update = raw.get("update")
    if update is not None:
        if not isinstance(update, Mapping):
            problem = f"update: expected an object, got {_type_name(update)}"
            raise MalformedUpdateError(None, problem)
        for key, kind in _UPDATE_KINDS.items():
            inner = update.get(key)
            if inner is None:
                continue
            if not isinstance(inner, Mapping):
                problem = f"update.{key}: expected an object, got {_type_name(inner)}"
                raise MalformedUpdateError(None, problem)
            value = inner.get("value")
            if isinstance(value, Mapping):
                return kind, value
            if value is not None:
                problem = f"update.{key}.value: expected an object, got {_type_name(value)}"
                raise MalformedUpdateError(None, problem)
            return kind, inner
        keys = sorted(str(key) for key in update)
        raise MalformedUpdateError(
            None,
            f"update: expected one of {sorted(_UPDATE_KINDS)}, got {keys}",
        )
    transaction = raw.get("transaction")
    if transaction is not None:
        if not isinstance(transaction, Mapping):
            problem = f"transaction: expected an object, got {_type_name(transaction)}"
            raise MalformedUpdateError(None, problem)
        return "transaction", transaction
    if "events" in raw and "updateId" in raw:
        return "transaction", raw
    if "synchronizerTimes" in raw and "offset" in raw:
        return "checkpoint", raw
    update_id = raw.get("updateId")
    keys = sorted(str(key) for key in raw)
    raise MalformedUpdateError(
        update_id if type(update_id) is str else None,
        "update: not a JsGetUpdatesResponse, JsGetTransactionResponse, JsTransaction or "
        f"OffsetCheckpoint (keys: {keys})",
    )


def parse_checkpoint(checkpoint: Mapping[str, Any]) -> Checkpoint | None:
    """An ``OffsetCheckpoint``'s offset and first synchronizer time (None when it has none)."""
    raw_offset = checkpoint.get("offset")
    offset = raw_offset if type(raw_offset) is int else None
    try:
        offset = _integer(checkpoint, "offset", "OffsetCheckpoint.")
        times = checkpoint.get("synchronizerTimes")
        if not times:
            return None
        if type(times) is not list:
            raise _wrong("OffsetCheckpoint.synchronizerTimes", times, "a list")
        first = times[0]
        path = "OffsetCheckpoint.synchronizerTimes[0]"
        if not isinstance(first, Mapping):
            raise _wrong(path, first, "an object")
        return Checkpoint(
            offset=offset,
            synchronizer_id=_text(first, "synchronizerId", path + "."),
            record_time=_time(first, "recordTime", path + "."),
        )
    except _ShapeError as exc:
        raise MalformedUpdateError(None, str(exc), offset=offset) from None


def parse_update(
    raw: Mapping[str, Any],
    party: str,
    holdings: HoldingLookup,
    instructions: InstructionLookup,
) -> ParsedUpdate | None:
    """One update as the Ledger API hands it over → the party's facts, a checkpoint, or None.

    None for reassignments and topology transactions, and for checkpoints without a
    synchronizer time.
    """
    kind, body = unwrap_update(raw)
    if kind == "transaction":
        return parse_transaction(body, party, holdings, instructions)
    if kind == "checkpoint":
        return parse_checkpoint(body)
    return None


def item_offset(item: Mapping[str, Any]) -> int | None:
    """The offset of a ``JsGetUpdatesResponse`` / ``JsTransaction`` / checkpoint, if readable."""
    offset = item.get("offset")
    if isinstance(offset, int):
        return offset
    update = item.get("update")
    if isinstance(update, Mapping):
        for value in update.values():
            if isinstance(value, Mapping):
                inner = value.get("value", value)
                if isinstance(inner, Mapping) and isinstance(inner.get("offset"), int):
                    return int(inner["offset"])
    transaction = item.get("transaction")
    if isinstance(transaction, Mapping) and isinstance(transaction.get("offset"), int):
        return int(transaction["offset"])
    return None
