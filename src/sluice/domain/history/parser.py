"""The history parser's entry points: an update as the Ledger API hands it over → its facts.

:func:`parse_update` unwraps the update (:func:`unwrap_update`) and parses a transaction
(:func:`parse_transaction`) or a checkpoint (:func:`parse_checkpoint`); shape problems become
:class:`~sluice.domain.errors.MalformedUpdateError` naming the update, the event and the field.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from sluice.domain.errors import InvalidInputError, MalformedUpdateError
from sluice.domain.ledger import Checkpoint, Transfer

from .entries import HoldingLookup, InstructionLookup, ParsedTransaction, ParsedUpdate, UpdateKind
from .fields import (
    _MISSING,
    _integer,
    _list,
    _ShapeError,
    _text,
    _time,
    _transfer,
    _type_name,
    _wrong,
)
from .walk import _order_events, _Walk


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
    if not (type(tx) is dict or isinstance(tx, Mapping)):
        raise MalformedUpdateError(None, str(_wrong("transaction", tx, "an object")))
    raw_offset = tx.get("offset")
    offset = raw_offset if type(raw_offset) is int else None
    update_id = tx.get("updateId", _MISSING)
    if type(update_id) is not str or not update_id:
        problem = "a non-empty string"
        raise MalformedUpdateError(None, str(_wrong("updateId", update_id, problem)), offset=offset)
    try:
        # Values of the expected type are taken as read; the readers (which say what is wrong
        # with anything else) only for the rest.
        if offset is None:
            offset = _integer(tx, "offset", "")
        record_time = _time(tx, "recordTime", "")
        synchronizer_id = tx.get("synchronizerId")
        if type(synchronizer_id) is not str:
            synchronizer_id = _text(tx, "synchronizerId", "")
        events = tx.get("events")
        if type(events) is not list:
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
    The error for an update of no known shape carries its offset when one can be read, so an
    operator can still name it.
    """
    try:
        return _unwrap(raw)
    except MalformedUpdateError as exc:
        offset = item_offset(raw) if isinstance(raw, Mapping) else None
        if offset is None:
            raise
        raise MalformedUpdateError(exc.update_id, exc.problem, offset=offset) from None


def _unwrap(raw: Mapping[str, Any]) -> tuple[UpdateKind, Mapping[str, Any]]:
    if not (type(raw) is dict or isinstance(raw, Mapping)):
        raise MalformedUpdateError(None, f"update: expected a JSON object, got {_type_name(raw)}")
    update = raw.get("update")
    if update is not None:
        if not (type(update) is dict or isinstance(update, Mapping)):
            problem = f"update: expected an object, got {_type_name(update)}"
            raise MalformedUpdateError(None, problem)
        for key, kind in _UPDATE_KINDS.items():
            inner = update.get(key)
            if inner is None:
                continue
            if not (type(inner) is dict or isinstance(inner, Mapping)):
                problem = f"update.{key}: expected an object, got {_type_name(inner)}"
                raise MalformedUpdateError(None, problem)
            value = inner.get("value")
            if type(value) is dict or isinstance(value, Mapping):
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
        if not (type(transaction) is dict or isinstance(transaction, Mapping)):
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
