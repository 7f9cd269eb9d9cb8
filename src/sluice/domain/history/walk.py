"""One transaction walked once in node order: which events make which entry, and what it says.

The rules it follows (how entries are found, direction, amounts, receivers, metadata order) are
those listed in :mod:`sluice.domain.history`'s docstring.
"""

from __future__ import annotations

import decimal
import itertools
from collections.abc import Mapping
from decimal import Decimal
from typing import Any, Final, Literal

from sluice.domain.amounts import ZERO
from sluice.domain.ledger import (
    REASON_KEY,
    SENDER_KEY,
    TX_KIND_KEY,
    Holding,
    InstrumentId,
    Transfer,
    TransferInstruction,
)

from .choices import (
    _ARCHIVED,
    _CREATED,
    _EXERCISED,
    _FIXED_STATUSES,
    _TRANSFER_ROLES,
    HOLDING_INTERFACE,
    TOKEN_STANDARD_CHOICES,
    TRANSFER_INSTRUCTION_INTERFACE,
    TX_KINDS,
    ChoiceRole,
    qualified_name,
)
from .entries import EntryKind, EntryStatus, HistoryEntry, HoldingLookup, InstructionLookup
from .fields import (
    _EMPTY_META,
    _MISSING,
    _amount,
    _holding,
    _instruction,
    _integer,
    _loose_meta_values,
    _meta_values,
    _object,
    _optional_object,
    _result_status,
    _ShapeError,
    _text,
    _transfer,
    _view_value,
    _wrong,
)

_SUM = decimal.Context(prec=60, traps=[decimal.InvalidOperation, decimal.Inexact])


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
    """The party's holdings changed under one top-level event, outside any entry (made only for
    a top-level event that has such holdings: most have none)."""

    __slots__ = ("archived", "choice", "created")

    def __init__(self, choice: str | None) -> None:
        self.choice = choice
        self.created: list[Holding] = []
        self.archived: list[Holding] = []


class _Walk:
    """One transaction, walked once in node order."""

    __slots__ = (
        "entries",
        "group",
        "groups",
        "holdings",
        "instructions",
        "instructions_archived",
        "instructions_created",
        "party",
        "top_exercise",
        "top_node",
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
        # The top-level event being walked (its exercise, if it is one) and its group, if made.
        self.top_node = -1
        self.top_exercise: Mapping[str, Any] | None = None
        self.group: _Group | None = None
        self.tx_holdings: dict[str, Holding] = {}  # the party's, created in this update
        self.tx_instructions: dict[str, TransferInstruction] = {}
        self.instructions_created: list[TransferInstruction] = []
        self.instructions_archived: list[str] = []

    def run(self, ordered: list[tuple[int, int, int, str, Mapping[str, Any]]]) -> None:
        scope: _Scope | None = None
        top_end = -1
        for node, end, index, tag, body in ordered:
            if scope is not None and node > scope.end:
                self._close(scope)
                scope = None
            try:
                if node > top_end:
                    top_end = end
                    self.top_node = node
                    self.top_exercise = body if tag == _EXERCISED else None
                    self.group = None
                if tag == _CREATED:
                    self._created(node, body, scope)
                    continue
                if tag == _EXERCISED:
                    consuming = body.get("consuming", _MISSING)
                    if type(consuming) is not bool:
                        raise _wrong("consuming", consuming, "a boolean")
                    if scope is None:
                        scope = self._open(index, node, end, body)
                    elif scope.wants_transfer:
                        scope.fallback = self._nested_transfer(body)
                        scope.wants_transfer = scope.fallback is None
                    if not consuming:
                        continue
                # A consuming exercise or an archive (a plain str read inline).
                contract_id = body.get("contractId")
                if type(contract_id) is not str:
                    contract_id = _text(body, "contractId", "")
                self._consumed(contract_id, scope)
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

    def _created(self, node: int, body: Mapping[str, Any], scope: _Scope | None) -> None:
        views = body.get("interfaceViews")
        if not views:
            return
        if type(views) is not list:
            raise _wrong("interfaceViews", views, "a list")
        # Plain strs read inline (this runs for every view of every create); the reader, which
        # says what is wrong, only for anything else.
        contract_id = body.get("contractId")
        if type(contract_id) is not str:
            contract_id = _text(body, "contractId", "")
        for position, view in enumerate(views):
            if not (type(view) is dict or isinstance(view, Mapping)):
                raise _wrong(f"interfaceViews[{position}]", view, "an object")
            # The readers get paths relative to the view; the view's own path is put in front
            # only when one fails (building it for every view costs more than the read).
            try:
                interface_id = view.get("interfaceId")
                if type(interface_id) is not str:
                    interface_id = _text(view, "interfaceId", "")
                name = qualified_name(interface_id)
                if name == HOLDING_INTERFACE:
                    value = _view_value(view, "")
                    if value is None:
                        continue
                    holding = _holding(contract_id, value, "viewValue.")
                    if scope is not None:
                        scope.all_created.append(holding)
                    if holding.owner == self.party:
                        self.tx_holdings[contract_id] = holding
                        (scope or self._group()).created.append(holding)
                elif name == TRANSFER_INSTRUCTION_INTERFACE:
                    value = _view_value(view, "")
                    if value is None:
                        continue
                    instruction = _instruction(contract_id, value, "viewValue.")
                    self.tx_instructions[contract_id] = instruction
                    transfer = instruction.transfer
                    if self.party in (transfer.sender, transfer.receiver):
                        self.instructions_created.append(instruction)
                        if scope is None:
                            self.entries.append(self._offer(node, instruction))
            except _ShapeError as exc:
                raise _ShapeError(f"interfaceViews[{position}].{exc}") from None

    def _consumed(self, contract_id: str, scope: _Scope | None) -> None:
        holding = self.tx_holdings.get(contract_id) or self.holdings(contract_id)
        if holding is not None:
            if holding.owner == self.party:
                (scope or self._group()).archived.append(holding)
            return
        if contract_id in self.tx_instructions or self.instructions(contract_id) is not None:
            self.instructions_archived.append(contract_id)

    def _group(self) -> _Group:
        """The current top-level event's group, made when it first gets a holding."""
        group = self.group
        if group is None:
            exercise = self.top_exercise
            group = self.group = _Group(None if exercise is None else exercise.get("choice"))
            self.groups[self.top_node] = group
        return group

    def _find_instruction(self, contract_id: str) -> TransferInstruction | None:
        return self.tx_instructions.get(contract_id) or self.instructions(contract_id)

    @staticmethod
    def _nested_transfer(body: Mapping[str, Any]) -> Transfer | None:
        argument = body.get("choiceArgument")
        if not (type(argument) is dict or isinstance(argument, Mapping)):
            return None
        value = argument.get("transfer")
        # Only a token-standard Transfer record will do (Amulet's own transfers differ).
        if (
            (type(value) is dict or isinstance(value, Mapping))
            and "receiver" in value
            and "instrumentId" in value
        ):
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
        choice = body.get("choice")
        if type(choice) is not str:
            choice = _text(body, "choice", "")
        interface_id = body.get("interfaceId")
        if interface_id is None:
            identifier = body.get("templateId")
            if type(identifier) is not str:
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
        if not (type(argument) is dict or isinstance(argument, Mapping)):
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
        # Plain ints read inline; the path is spelled out only for anything else.
        value = body.get("nodeId")
        node = value if type(value) is int else _integer(body, "nodeId", f"events[{index}] {tag}.")
        if node < 0:
            raise _ShapeError(f"events[{index}] {tag}.nodeId: {node} is negative")
        end = node
        if tag == _EXERCISED:
            value = body.get("lastDescendantNodeId")
            if type(value) is int:
                end = value
            else:
                end = _integer(body, "lastDescendantNodeId", f"events[{index}] {tag}.")
            if end < node:
                raise _ShapeError(
                    f"events[{index}] {tag}.lastDescendantNodeId: {end} is before its own node "
                    f"id {node}"
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
