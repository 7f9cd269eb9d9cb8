"""The two published documents of the proof of liabilities: a snapshot's root, and a customer's
inclusion proof; their JSON shapes, strict parsing, and how units are written as amounts.

Hashes are lowercase hex; units are decimal strings of integers (JSON numbers lose precision past
2^53); amounts (``total``, ``balance``) are the units divided by 10^decimals, written with no
exponent and no trailing zeros ("12.5", "0"). Parsing refuses anything else, so a document has
exactly one spelling and a verifier reads it exactly as it was written: units of more than 39
digits (2^127 has 39), a JSON object with the same key twice (one reader would take the first,
another the last), a JSON number of more than 39 digits, and a root file with two roots for the
same snapshot and instrument are refused, each with :class:`InvalidInputError`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from sluice.domain.errors import InvalidInputError
from sluice.por.hashing import HASH_SIZE

_HEX = re.compile(r"[0-9a-f]{64}")
# At most 39 digits: every value below 2^127 fits, and ``int()`` never meets a number long
# enough to be slow or to pass Python's limit on digits (a bare ValueError).
_UNITS = re.compile(r"0|[1-9][0-9]{0,38}")
_DIGITS_MAX = 39
_AMOUNT = re.compile(r"(0|[1-9][0-9]*)(?:\.([0-9]*[1-9]))?")

ROOT_FIELDS = (
    "snapshot_id",
    "instrument",
    "root_hash",
    "total_units",
    "total",
    "leaf_count",
    "depth",
    "taken_at",
)
PROOF_FIELDS = (
    "snapshot_id",
    "instrument",
    "customer_id",
    "nonce",
    "units",
    "balance",
    "index",
    "siblings",
)


class Sibling(NamedTuple):
    """A sibling on the path from a leaf to the root: its hash and its sum of units."""

    hash: bytes
    units: int


@dataclass(frozen=True, slots=True)
class Root:
    """A published root: what every customer checks their proof against."""

    snapshot_id: str
    instrument: str
    root_hash: bytes
    total_units: int
    total: str
    leaf_count: int
    depth: int
    taken_at: str

    def as_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "instrument": self.instrument,
            "root_hash": self.root_hash.hex(),
            "total_units": str(self.total_units),
            "total": self.total,
            "leaf_count": self.leaf_count,
            "depth": self.depth,
            "taken_at": self.taken_at,
        }

    @classmethod
    def from_json(cls, data: Any) -> Root:
        fields = _fields(data, ROOT_FIELDS, "root")
        return cls(
            snapshot_id=_text(fields, "snapshot_id"),
            instrument=_text(fields, "instrument"),
            root_hash=_hash(fields["root_hash"], "root_hash"),
            total_units=_units(fields["total_units"], "total_units"),
            total=_text(fields, "total"),
            leaf_count=_count(fields["leaf_count"], "leaf_count"),
            depth=_count(fields["depth"], "depth"),
            taken_at=_text(fields, "taken_at"),
        )


@dataclass(frozen=True, slots=True)
class Proof:
    """One customer's inclusion proof: their leaf's inputs and the siblings up to the root."""

    snapshot_id: str
    instrument: str
    customer_id: str
    nonce: bytes
    units: int
    balance: str
    index: int
    siblings: tuple[Sibling, ...] = field(default=())

    def as_json(self) -> dict[str, Any]:
        return {
            "snapshot_id": self.snapshot_id,
            "instrument": self.instrument,
            "customer_id": self.customer_id,
            "nonce": self.nonce.hex(),
            "units": str(self.units),
            "balance": self.balance,
            "index": self.index,
            "siblings": [
                {"hash": sibling.hash.hex(), "units": str(sibling.units)}
                for sibling in self.siblings
            ],
        }

    @classmethod
    def from_json(cls, data: Any) -> Proof:
        fields = _fields(data, PROOF_FIELDS, "proof")
        siblings = fields["siblings"]
        if not isinstance(siblings, list):
            raise InvalidInputError("proof: siblings is not a list")
        return cls(
            snapshot_id=_text(fields, "snapshot_id"),
            instrument=_text(fields, "instrument"),
            customer_id=_text(fields, "customer_id"),
            nonce=_hash(fields["nonce"], "nonce"),
            units=_units(fields["units"], "units"),
            balance=_text(fields, "balance"),
            index=_count(fields["index"], "index"),
            siblings=tuple(_sibling(item, level) for level, item in enumerate(siblings)),
        )


def format_units(units: int, decimals: int) -> str:
    """``units / 10^decimals`` as a plain decimal string without trailing zeros ("12.5")."""
    if units < 0 or decimals < 0:
        raise InvalidInputError(f"cannot write {units} units at {decimals} decimals")
    whole, fraction = divmod(units, 10**decimals)
    digits = str(fraction).rjust(decimals, "0").rstrip("0") if decimals else ""
    return f"{whole}.{digits}" if digits else str(whole)


def decimals_of(amount: str, units: int) -> int | None:
    """The d for which ``format_units(units, d) == amount``: -1 when every d fits (zero units
    written "0"), None when none does (the amount is not these units at any scale)."""
    match = _AMOUNT.fullmatch(amount)
    if match is None:
        return None
    whole, fraction = match.group(1), match.group(2) or ""
    written = int(whole + fraction)
    if written == 0 or units == 0:
        return -1 if written == units else None
    ratio, remainder = divmod(units, written)
    text = str(ratio)
    if remainder or text.rstrip("0") != "1":
        return None
    return len(fraction) + len(text) - 1


def _fields(data: Any, names: tuple[str, ...], what: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise InvalidInputError(f"{what}: not a JSON object")
    missing = [name for name in names if name not in data]
    if missing:
        raise InvalidInputError(f"{what}: missing {', '.join(missing)}")
    return data


def _text(fields: dict[str, Any], name: str) -> str:
    value = fields[name]
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} is not a string")
    return value


def _hash(value: Any, name: str) -> bytes:
    if not isinstance(value, str) or _HEX.fullmatch(value) is None:
        raise InvalidInputError(f"{name} is not {HASH_SIZE} bytes of lowercase hex")
    return bytes.fromhex(value)


def _units(value: Any, name: str) -> int:
    if not isinstance(value, str) or _UNITS.fullmatch(value) is None:
        raise InvalidInputError(f"{name} is not a non-negative integer in a decimal string")
    return int(value)


def _count(value: Any, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise InvalidInputError(f"{name} is not a non-negative integer")
    return value


def _sibling(item: Any, level: int) -> Sibling:
    if not isinstance(item, dict) or set(item) != {"hash", "units"}:
        raise InvalidInputError(f"sibling {level} is not an object of hash and units")
    return Sibling(
        _hash(item["hash"], f"sibling {level} hash"),
        _units(item["units"], f"sibling {level} units"),
    )


def load_strict_json(text: str) -> Any:
    """JSON text as a published document must be read: :class:`json.JSONDecodeError` when it
    is not JSON; :class:`InvalidInputError` for an object with a key twice, a number of more
    than 39 digits, NaN or Infinity, or nesting too deep to read."""
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except RecursionError as exc:
        raise InvalidInputError("the JSON is nested too deeply") from exc


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise InvalidInputError(f"the key {key!r} appears twice in one JSON object")
        found[key] = value
    return found


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _DIGITS_MAX:
        raise InvalidInputError(f"a JSON number of more than {_DIGITS_MAX} digits")
    return int(text)


def _no_constant(name: str) -> Any:
    raise InvalidInputError(f"{name} is not a JSON value")


def parse_roots(text: str) -> list[Root]:
    """The roots in a published root file: one JSON object, a JSON array of them, or JSON lines
    (one root per line, as ``sluice por snapshot`` prints them). A file with two roots for the
    same snapshot and instrument is refused: which one a verifier took would be a guess."""
    try:
        document = load_strict_json(text)
    except json.JSONDecodeError:
        document = None
        lines = [line for line in text.splitlines() if line.strip()]
        try:
            items = [load_strict_json(line) for line in lines]
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"the root file is not JSON nor JSON lines: {exc}") from exc
    else:
        items = document if isinstance(document, list) else [document]
    if not items:
        raise InvalidInputError("the root file holds no root")
    roots = [Root.from_json(item) for item in items]
    _check_one_root_each(roots)
    return roots


def parse_proof(text: str) -> Proof:
    try:
        document = load_strict_json(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"the proof is not JSON: {exc}") from exc
    return Proof.from_json(document)


def root_for(roots: list[Root], snapshot_id: str, instrument: str) -> Root:
    """The root of this snapshot and instrument among ``roots``; refused when there are
    several."""
    found = [r for r in roots if r.snapshot_id == snapshot_id and r.instrument == instrument]
    if len(found) == 1:
        return found[0]
    if found:
        raise InvalidInputError(_several_roots(snapshot_id, instrument, len(found)))
    raise InvalidInputError(
        f"no published root for snapshot {snapshot_id!r} and instrument {instrument!r} "
        f"among the {len(roots)} in the root file"
    )


def _check_one_root_each(roots: list[Root]) -> None:
    seen: set[tuple[str, str]] = set()
    for root in roots:
        key = (root.snapshot_id, root.instrument)
        if key in seen:
            count = sum(1 for r in roots if (r.snapshot_id, r.instrument) == key)
            raise InvalidInputError(_several_roots(*key, count))
        seen.add(key)


def _several_roots(snapshot_id: str, instrument: str, count: int) -> str:
    return (
        f"the root file holds {count} roots for snapshot {snapshot_id!r} and instrument "
        f"{instrument!r}: refused, a snapshot has one root per instrument"
    )
