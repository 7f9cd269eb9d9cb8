"""Reading the JSON shapes of an update, field by field, for the history parser.

Every reader takes the path of its object inside the event and raises :class:`_ShapeError`
(``"<path>: <problem>"``) on anything but the expected type; the parser wraps it with the update
into a :class:`~sluice.domain.errors.MalformedUpdateError`. No ``KeyError`` or ``TypeError``
escapes a reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any, Final

from sluice.domain.amounts import CANONICAL_TEXT, parse_amount
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import (
    Holding,
    InstrumentId,
    Lock,
    Transfer,
    TransferInstruction,
    parse_timestamp,
)

from .choices import _CACHE_SIZE_MAX, INSTRUCTION_STATUSES, RESULT_STATUSES
from .entries import EntryStatus

_MISSING: Final = object()
_EMPTY_META: Final[Mapping[str, str]] = {}

_INSTRUMENT_CACHE: dict[tuple[str, str], InstrumentId] = {}


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
    if CANONICAL_TEXT.match(value):
        return Decimal(value)  # what parse_amount makes of it, without spelling out the path
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
    if not (type(obj) is dict or isinstance(obj, Mapping)):
        return None
    meta = obj.get("meta")
    if not (type(meta) is dict or isinstance(meta, Mapping)):
        return None
    values = meta.get("values")
    if not (type(values) is dict or isinstance(values, Mapping)):
        return None
    if all(type(value) is str for value in values.values()):
        return values
    return {key: value for key, value in values.items() if type(value) is str}


def _instrument(obj: Mapping[str, Any], key: str, path: str) -> InstrumentId:
    value = obj.get(key)
    if type(value) is not dict:
        value = _object(obj, key, path)
    admin, identifier = value.get("admin"), value.get("id")
    if type(admin) is not str or type(identifier) is not str:
        # The path is only spelled out for the error (this runs for every holding).
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
    # The readers inlined for the common case (a string owner, no lock): every holding created
    # in every update comes through here.
    owner = view.get("owner")
    if type(owner) is not str:
        owner = _text(view, "owner", path)
    instrument = _instrument(view, "instrumentId", path)
    amount = _amount(view, "amount", path)
    lock = view.get("lock")
    return Holding(
        contract_id,
        owner,
        instrument,
        amount,
        None if lock is None else _lock(lock, path + "lock"),
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
    if not (type(result) is dict or isinstance(result, Mapping)):
        raise _wrong("exerciseResult", _MISSING if result is None else result, "an object")
    output = _object(result, "output", "exerciseResult.")
    tag = _text(output, "tag", "exerciseResult.output.")
    status = RESULT_STATUSES.get(tag)
    if status is None:
        raise _ShapeError(f"exerciseResult.output.tag: {tag!r} is not a transfer result")
    value = output.get("value")
    return status, value if (type(value) is dict or isinstance(value, Mapping)) else _EMPTY_META
