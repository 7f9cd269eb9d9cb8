"""Audit records and their hash chain: what is appended, its canonical content and its hash.

Every record's content (its seq and every field of its entry) has one serialisation (see
:func:`canonical_content` and :func:`canonical_bytes`), and ``hash = sha256(previous_hash ‖
canonical content)`` links it to the record before; the first record links to
:data:`GENESIS_HASH`.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import field
from datetime import UTC, datetime
from decimal import Decimal
from enum import Enum

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import format_timestamp
from sluice.domain.values import value_class

GENESIS_HASH = "0" * 64

# Column widths of the audit_records table: refused here so that both engines behave alike.
FIELD_LENGTH_MAX = {
    "operation_id": 300,
    "operation": 60,
    "actor": 200,
    "customer_id": 100,
    "correlation_id": 100,
}
# Integers beyond 64 bits are stored and hashed as their decimal text.
_INT_MIN = -(2**63)
_INT_MAX = 2**63 - 1
_DECIMAL_EXPONENT_MAX = 100  # beyond this, plain notation would be needlessly long


@value_class
class AuditEntry:
    """A record to append (the log assigns its sequence number and hashes)."""

    operation_id: str
    operation: str
    actor: str
    recorded_at: datetime
    customer_id: str | None = None
    kyc: Mapping[str, object] | None = None
    parameters: Mapping[str, object] = field(default_factory=dict)
    checks: Sequence[Mapping[str, object]] = ()
    state_changes: Sequence[Mapping[str, object]] = ()
    error: str | None = None
    # The request that caused it; the log fills it from ``current_correlation_id`` when unset.
    correlation_id: str | None = None


# Set by an entry point (the HTTP API, per request) so every record appended while it handles
# the request names it, without threading it through every service call.
current_correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)


@value_class
class AuditRecord:
    """A record as stored: its entry, its place in the chain and its hashes.

    ``damage`` says why a stored row could not be read back as written (e.g. a column that is no
    longer JSON); the entry then holds placeholders and the record never verifies.
    """

    seq: int
    entry: AuditEntry
    previous_hash: str
    hash: str
    damage: str | None = None


# --- canonical content ---------------------------------------------------------------------------


def json_value(value: object, path: str = "value") -> object:
    """``value`` as plain JSON values (dict with str keys, list, str, int, float, bool, None),
    the form the log stores and hashes. Deterministic and idempotent; refuses what has no
    canonical form."""
    try:
        return _plain_value(value)
    except InvalidInputError:
        # Walked again naming each field on the way, so the error says which one it is.
        return _named_value(value, path)


def _plain_value(value: object) -> object:
    """:func:`json_value` for the values records are made of, without naming each field on the
    way (the hot path: ingestion appends two records per deposit); any other value takes the
    general walk."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is dict:
        result: dict[str, object] = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                return _named_value(value, "value")
            # Text and nothing, the usual leaves, are taken as they are without a call.
            result[key] = item if type(item) is str or item is None else _plain_value(item)
        return result
    if kind is list or kind is tuple:
        return [
            item if type(item) is str or item is None else _plain_value(item)
            for item in value  # type: ignore[attr-defined]
        ]
    if kind is int and _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
        return value
    if kind is Decimal:
        return _decimal_text(value)  # type: ignore[arg-type]
    return _named_value(value, "value")


class _NotPlainError(Exception):
    """A value :func:`_float_free_value` leaves to :func:`json_value`."""


class FloatFreeObject(dict[str, object]):
    """A JSON object its builder guarantees to be in canonical form already and to hold no float:
    text keys, and values that are text, nothing, booleans, 64-bit integers, or
    :class:`FloatFreeObject` / :class:`FloatFreeArray` values themselves. :func:`canonical_content`
    takes it as it is instead of walking it (the walk costs more than building the record on the
    hot path of ingestion). Whoever builds one must only put such values in: content that may hold
    anything else (a float, a decimal, a time, a caller's values) belongs in a plain dict, which
    is walked. Stored and hashed exactly like an equal plain dict."""

    __slots__ = ()


class FloatFreeArray(list[object]):
    """A JSON array of values as in :class:`FloatFreeObject` (same guarantee, same use)."""

    __slots__ = ()


def _float_free_value(value: object) -> object:
    """:func:`_plain_value` of a value made only of text, nothing, booleans, 64-bit integers,
    decimals, lists and objects with text keys; raises :class:`_NotPlainError` on anything else (a
    float above all), so that the result is known to hold no float."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is FloatFreeObject or kind is FloatFreeArray:
        return value  # canonical and float-free by construction: nothing to walk
    if kind is dict:
        result: dict[str, object] = {}
        for key, item in value.items():  # type: ignore[attr-defined]
            if type(key) is not str:
                raise _NotPlainError
            result[key] = item if type(item) is str or item is None else _float_free_value(item)
        return result
    if kind is list or kind is tuple:
        return [
            item if type(item) is str or item is None else _float_free_value(item)
            for item in value  # type: ignore[attr-defined]
        ]
    if kind is int and _INT_MIN <= value <= _INT_MAX:  # type: ignore[operator]
        return value
    if kind is Decimal:
        return _decimal_text(value)  # type: ignore[arg-type]
    raise _NotPlainError


# The JSON fields' values _float_free_value returns as they are, without a walk.
_AS_THEY_ARE = frozenset({FloatFreeObject, FloatFreeArray, type(None)})


class FloatFreeContent(dict[str, object]):
    """Canonical content known to hold no float: nothing but text, nothing, booleans, 64-bit
    integers, lists and objects with text keys. Its canonical bytes are therefore what any JSON
    encoder gives that sorts keys by code point, writes no spaces, leaves non-ASCII text as UTF-8
    and escapes control characters as ``json`` does — floats are the one value whose text such
    encoders write differently (``1e-05`` or ``1e-5``). The store hashes such content with its
    faster encoder; verification always uses :func:`canonical_bytes`."""

    __slots__ = ()


def _named_value(value: object, path: str) -> object:
    if value is None or value is True or value is False:
        return value
    if isinstance(value, str):
        if type(value) is str:
            return value
        return _named_value(value.value, path) if isinstance(value, Enum) else str.__str__(value)
    if isinstance(value, dict):
        return _json_object(value, path)
    if isinstance(value, list | tuple):
        return [_named_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, Enum):
        return _named_value(value.value, path)
    if isinstance(value, int):
        number = int(value)
        return number if _INT_MIN <= number <= _INT_MAX else str(number)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise InvalidInputError(f"audit record {path}: {value!r} is not a finite number")
        return float(value)
    if isinstance(value, Decimal):
        return _decimal_text(value)
    if isinstance(value, datetime):
        return _timestamp_text(value, path)
    if isinstance(value, Mapping):
        return _json_object(value, path)
    if isinstance(value, set | frozenset):
        items = [_named_value(item, f"{path}[]") for item in value]
        return sorted(items, key=_canonical_text)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_named_value(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise InvalidInputError(f"audit record {path}: a {type(value).__name__} cannot be recorded")


def _json_object(value: Mapping[object, object], path: str) -> dict[str, object]:
    result: dict[str, object] = {}
    for key, item in value.items():
        if isinstance(key, str):
            name = str.__str__(key)
        elif isinstance(key, int) and not isinstance(key, bool):
            name = str(int(key))
        else:
            raise InvalidInputError(
                f"audit record {path}: key {key!r} is a {type(key).__name__}, not a string"
            )
        if name in result:
            raise InvalidInputError(f"audit record {path}: key {name!r} appears twice")
        result[name] = _named_value(item, f"{path}.{name}")
    return result


def _decimal_text(value: Decimal) -> str:
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and abs(exponent) <= _DECIMAL_EXPONENT_MAX:
        return format(value, "f")
    return str(value)  # NaN, infinities and extreme exponents: their own exact text


# UTC times recently written and their text: ingestion writes each update's record time to
# several tables a batch (updates, history entries, usage rows, audit records), table by table.
# Bounded; emptied when full. A dict's get and set are atomic, so threads at worst format a time
# again.
_UTC_TEXTS: dict[datetime, str] = {}
_UTC_TEXTS_MAX = 8192


def timestamp_text(value: datetime) -> str:
    """:func:`~sluice.domain.ledger.format_timestamp` of ``value``, remembered for recent UTC
    times (the same text: equal UTC datetimes are the same instant)."""
    if value.tzinfo is not UTC:
        return format_timestamp(value)
    text = _UTC_TEXTS.get(value)
    if text is None:
        if len(_UTC_TEXTS) >= _UTC_TEXTS_MAX:
            _UTC_TEXTS.clear()
        text = _UTC_TEXTS[value] = format_timestamp(value)
    return text


def _timestamp_text(value: datetime, path: str) -> str:
    if value.tzinfo is UTC:
        return timestamp_text(value)
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"audit record {path}: {value.isoformat()} has no time zone")
    return format_timestamp(value)


# Built once: json.dumps with these options would build an encoder on every call.
_CANONICAL_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def _canonical_text(value: object) -> str:
    return _CANONICAL_ENCODER.encode(value)


def check_entry(entry: AuditEntry) -> None:
    """Refuse an entry the log cannot store as given (empty or over-long identifying fields)."""
    operation_id, operation, actor = entry.operation_id, entry.operation, entry.actor
    customer_id, correlation_id = entry.customer_id, entry.correlation_id
    lengths = FIELD_LENGTH_MAX
    if (
        type(operation_id) is str
        and type(operation) is str
        and type(actor) is str
        and 0 < len(operation_id) <= lengths["operation_id"]
        and 0 < len(operation) <= lengths["operation"]
        and 0 < len(actor) <= lengths["actor"]
        and (customer_id is None or len(customer_id) <= lengths["customer_id"])
        and (correlation_id is None or len(correlation_id) <= lengths["correlation_id"])
    ):
        return  # the usual entry, checked without a loop (ingestion appends one per deposit)
    for name in ("operation_id", "operation", "actor"):
        if not getattr(entry, name):
            raise InvalidInputError(f"audit record {name} must not be empty")
    for name, length_max in FIELD_LENGTH_MAX.items():
        value = getattr(entry, name)
        if value is not None and len(value) > length_max:
            raise InvalidInputError(
                f"audit record {name} is {len(value)} characters long (at most {length_max})"
            )


def canonical_content(seq: int, entry: AuditEntry) -> dict[str, object]:
    """The record's content in the normalised form that is stored and hashed: a
    :class:`FloatFreeContent` when it holds no float (the usual case), else a plain dict."""
    fast = _float_free_content(seq, entry)
    if fast is not None:
        return fast
    # Text and nothing, what the identifying fields usually hold, are their own normal form;
    # anything else takes json_value (same result, one call less on the hot path).
    operation_id, actor, customer_id = entry.operation_id, entry.actor, entry.customer_id
    operation, error = entry.operation, entry.error
    content: dict[str, object] = {
        "seq": seq,
        "operation_id": (
            operation_id if type(operation_id) is str else json_value(operation_id, "operation_id")
        ),
        "recorded_at": _timestamp_text(entry.recorded_at, "recorded_at"),
        "actor": actor if type(actor) is str else json_value(actor, "actor"),
        "customer_id": (
            customer_id
            if customer_id is None or type(customer_id) is str
            else json_value(customer_id, "customer_id")
        ),
        "kyc": json_value(entry.kyc, "kyc"),
        "operation": operation if type(operation) is str else json_value(operation, "operation"),
        "parameters": json_value(entry.parameters, "parameters"),
        "checks": json_value(entry.checks, "checks"),
        "state_changes": json_value(entry.state_changes, "state_changes"),
        "error": error if error is None or type(error) is str else json_value(error, "error"),
    }
    # Hashed only when present, so records written before correlation ids still verify.
    if entry.correlation_id is not None:
        content["correlation_id"] = json_value(entry.correlation_id, "correlation_id")
    return content


def _float_free_content(seq: int, entry: AuditEntry) -> FloatFreeContent | None:
    """The content of :func:`canonical_content` when every identifying field is text (or
    nothing) and the JSON fields hold no float; None when any of them needs the general walk."""
    operation_id, actor, customer_id = entry.operation_id, entry.actor, entry.customer_id
    operation, error, correlation_id = entry.operation, entry.error, entry.correlation_id
    if (
        type(operation_id) is not str
        or type(actor) is not str
        or type(operation) is not str
        or not (customer_id is None or type(customer_id) is str)
        or not (error is None or type(error) is str)
        or not (correlation_id is None or type(correlation_id) is str)
        or type(seq) is not int
        or not _INT_MIN <= seq <= _INT_MAX
    ):
        return None
    kyc: object = entry.kyc
    parameters: object = entry.parameters
    checks: object = entry.checks
    state_changes: object = entry.state_changes
    try:
        # What _float_free_value takes as it is (a decision's record is all marked content)
        # is taken without the call.
        if type(kyc) not in _AS_THEY_ARE:
            kyc = _float_free_value(kyc)
        if type(parameters) not in _AS_THEY_ARE:
            parameters = _float_free_value(parameters)
        if type(checks) not in _AS_THEY_ARE:
            checks = _float_free_value(checks)
        if type(state_changes) not in _AS_THEY_ARE:
            state_changes = _float_free_value(state_changes)
    except _NotPlainError:
        return None
    content = FloatFreeContent(
        seq=seq,
        operation_id=operation_id,
        recorded_at=_timestamp_text(entry.recorded_at, "recorded_at"),
        actor=actor,
        customer_id=customer_id,
        kyc=kyc,
        operation=operation,
        parameters=parameters,
        checks=checks,
        state_changes=state_changes,
        error=error,
    )
    if correlation_id is not None:
        content["correlation_id"] = correlation_id
    return content


def canonical_bytes(content: Mapping[str, object]) -> bytes:
    """The one serialisation of normalised content: sorted keys, no spaces, UTF-8."""
    try:
        return _canonical_text(content).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"audit record: text that is not valid Unicode cannot be recorded ({exc.reason})"
        ) from exc
    except (TypeError, ValueError) as exc:  # content that did not come from json_value
        raise InvalidInputError(f"audit record: {exc}") from exc


def content_hash(previous_hash: str, content: Mapping[str, object]) -> str:
    """sha256 hex of the previous hash followed by the canonical content."""
    return bytes_hash(previous_hash, canonical_bytes(content))


def bytes_hash(previous_hash: str, canonical: bytes) -> str:
    """sha256 hex of the previous hash followed by ``canonical``, content's canonical bytes."""
    digest = hashlib.sha256(previous_hash.encode("ascii", "replace"))
    digest.update(canonical)
    return digest.hexdigest()


def chain_hash(previous_hash: str, seq: int, entry: AuditEntry) -> str:
    """The hash of ``entry`` appended as record ``seq`` after a record whose hash is
    ``previous_hash``."""
    return content_hash(previous_hash, canonical_content(seq, entry))


def chain_entries(
    entries: Iterable[AuditEntry], *, after_seq: int = 0, previous_hash: str = GENESIS_HASH
) -> list[AuditRecord]:
    """Chain ``entries`` after record ``after_seq`` (whose hash is ``previous_hash``)."""
    records: list[AuditRecord] = []
    for seq, entry in enumerate(entries, start=after_seq + 1):
        check_entry(entry)
        digest = chain_hash(previous_hash, seq, entry)
        records.append(AuditRecord(seq, entry, previous_hash, digest))
        previous_hash = digest
    return records
