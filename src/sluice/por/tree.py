"""The proof-of-liabilities Merkle-sum tree of one instrument at one snapshot: building it, its
published root, and each customer's inclusion proof.

Construction (byte by byte in ``sluice.por.hashing`` and ``docs/proof-of-reserves.md``): one leaf
per customer, binding the snapshot, the instrument, the customer's uid and their units; leaves
ordered by uid ascending (bytewise) — the uid is keyed by the operator's secret and the
snapshot, so the order is a per-snapshot shuffle that costs no extra hash; the leaf level padded
to a power of two with padding leaves at sum 0; every node hashes both children and both sums.
One customer: depth 0, the root is their leaf. No customer: depth 0, the root is the padding
leaf at index 0 with total 0, and ``leaf_count`` (which counts customers, never padding) is 0.

Two builders give byte-identical trees: the C extension ``sluice.por._merkle`` (ten million
leaves in seconds) and the pure-Python ``PythonTree`` below, used when the extension is not
importable. ``NATIVE`` says which one ``build_tree`` uses.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Protocol

from sluice.domain.errors import InvalidInputError
from sluice.por.documents import Proof, Root, Sibling, format_units
from sluice.por.hashing import (
    SUM_LIMIT,
    depth_for,
    instrument_label,
    leaf_hash,
    node_hash,
    nonce_for,
    padding_leaf_hash,
    snapshot_label,
    uid_for,
)

logger = logging.getLogger(__name__)


class BuiltTree(Protocol):
    """What either builder returns (the C extension's ``Tree`` has the same members)."""

    @property
    def root_hash(self) -> bytes: ...
    @property
    def total_units(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def leaf_count(self) -> int: ...
    def leaf_index(self, position: int, /) -> int: ...
    def input_position(self, index: int, /) -> int: ...
    def nonce(self, position: int, /) -> bytes: ...
    def siblings(self, index: int, /) -> list[tuple[bytes, int]]: ...


Builder = Callable[[bytes, str, str, Sequence[str], Sequence[int]], BuiltTree]


class PythonTree:
    """The tree in pure Python (hashlib and hmac). Same layout as the C extension: per level
    only the nodes holding at least one customer's leaf, plus the one padding-only node per
    level that can be a sibling (at the right edge)."""

    def __init__(
        self,
        secret: bytes,
        snapshot_id: str,
        instrument: str,
        customer_ids: Sequence[str],
        units: Sequence[int],
    ) -> None:
        if len(customer_ids) != len(units):
            raise ValueError("customer_ids and units differ in length")
        self._secret = secret
        self._snapshot_id = snapshot_id
        self._customer_ids = customer_ids
        label = instrument_label(snapshot_id, instrument)
        self._padding_label = snapshot_label(snapshot_id)
        records = []
        for position, (customer_id, amount) in enumerate(zip(customer_ids, units, strict=True)):
            if not isinstance(customer_id, str):
                raise TypeError(f"customer id at position {position} is not a str")
            _check_units(amount, f"customer {customer_id}")
            uid = uid_for(nonce_for(secret, snapshot_id, customer_id), customer_id)
            records.append((uid, position, amount))
        records.sort()
        for before, after in itertools.pairwise(records):
            if before[0] == after[0]:
                raise ValueError(f"customer {customer_ids[after[1]]} appears more than once")
        self._input_of_leaf = [position for _, position, _ in records]
        self._leaf_of_input = [0] * len(records)
        for index, position in enumerate(self._input_of_leaf):
            self._leaf_of_input[position] = index
        self.leaf_count = len(records)
        self.depth = depth_for(self.leaf_count)
        if records:
            leaves = [(leaf_hash(label, uid, amount), amount) for uid, _, amount in records]
        else:
            leaves = [(padding_leaf_hash(0, self._padding_label), 0)]
        self._levels = [leaves]
        self._padding: list[bytes] = []
        for level in range(self.depth):
            self._levels.append(self._parents(self._levels[level], level))
        self.root_hash, self.total_units = self._levels[-1][0]

    def _parents(self, nodes: list[tuple[bytes, int]], level: int) -> list[tuple[bytes, int]]:
        count = len(nodes)
        edge = self._padding_subtree(count << level, level) if count % 2 else b""
        self._padding.append(edge)
        padded = [*nodes, (edge, 0)] if count % 2 else nodes
        parents = []
        for m in range(0, count, 2):
            (left, left_units), (right, right_units) = padded[m], padded[m + 1]
            total = left_units + right_units
            if total >= SUM_LIMIT:
                raise ValueError("the total of the balances is not below 2^127")
            parents.append((node_hash(left, left_units, right, right_units), total))
        return parents

    def _padding_subtree(self, first: int, level: int) -> bytes:
        """The hash of the 2^level padding leaves from index ``first`` (all at sum 0)."""
        stack: list[tuple[bytes, int]] = []
        for index in range(first, first + (1 << level)):
            stack.append((padding_leaf_hash(index, self._padding_label), 0))
            while len(stack) >= 2 and stack[-1][1] == stack[-2][1]:
                (right, height), (left, _) = stack.pop(), stack.pop()
                stack.append((node_hash(left, 0, right, 0), height + 1))
        return stack[0][0]

    def leaf_index(self, position: int, /) -> int:
        return self._leaf_of_input[_in_range(position, self.leaf_count, "input position")]

    def input_position(self, index: int, /) -> int:
        return self._input_of_leaf[_in_range(index, self.leaf_count, "leaf index")]

    def nonce(self, position: int, /) -> bytes:
        customer_id = self._customer_ids[_in_range(position, self.leaf_count, "input position")]
        return nonce_for(self._secret, self._snapshot_id, customer_id)

    def siblings(self, index: int, /) -> list[tuple[bytes, int]]:
        _in_range(index, self.leaf_count, "leaf index")
        path = []
        for level in range(self.depth):
            sibling = (index >> level) ^ 1
            nodes = self._levels[level]
            path.append(nodes[sibling] if sibling < len(nodes) else (self._padding[level], 0))
        return path


def _check_units(amount: int, what: str) -> None:
    if type(amount) is not int:  # exactly int, as the C extension requires
        raise TypeError(f"{what}: units must be an int, not {type(amount).__name__}")
    if amount < 0:
        raise ValueError(f"{what}: units are negative ({amount})")
    if amount >= SUM_LIMIT:
        raise ValueError(f"{what}: units {amount} are not below 2^127")


def _in_range(value: int, count: int, what: str) -> int:
    if not 0 <= value < count:
        raise IndexError(f"{what} {value} out of range ({count} leaves)")
    return value


def _native_builder() -> Builder | None:
    try:
        from sluice.por import _merkle
    except ImportError:
        return None
    build: Builder = _merkle.build
    return build


_NATIVE_BUILD = _native_builder()
NATIVE: bool = _NATIVE_BUILD is not None
IMPLEMENTATION = "native (C, OpenSSL)" if NATIVE else "pure Python"
if not NATIVE:
    logger.info("sluice.por: the C extension is not built; using the pure-Python Merkle tree")


class LiabilityTree:
    """A built tree with what it publishes: the root, and any customer's proof."""

    def __init__(
        self,
        built: BuiltTree,
        *,
        snapshot_id: str,
        instrument: str,
        customer_ids: Sequence[str],
        units: Sequence[int],
        decimals: int,
    ) -> None:
        self.built = built
        self.snapshot_id = snapshot_id
        self.instrument = instrument
        self.decimals = decimals
        self._customer_ids = customer_ids
        self._units = units
        self._positions: dict[str, int] | None = None

    def root(self, taken_at: datetime) -> Root:
        """The document to publish; ``taken_at`` is when the balances were read."""
        if taken_at.tzinfo is None:
            raise InvalidInputError("taken_at must be timezone-aware")
        return Root(
            snapshot_id=self.snapshot_id,
            instrument=self.instrument,
            root_hash=self.built.root_hash,
            total_units=self.built.total_units,
            total=format_units(self.built.total_units, self.decimals),
            leaf_count=self.built.leaf_count,
            depth=self.built.depth,
            taken_at=taken_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        )

    def proof_at(self, position: int) -> Proof:
        """The proof of the customer at ``position`` in the builder's input."""
        built = self.built
        index = built.leaf_index(position)
        units = self._units[position]
        return Proof(
            snapshot_id=self.snapshot_id,
            instrument=self.instrument,
            customer_id=self._customer_ids[position],
            nonce=built.nonce(position),
            units=units,
            balance=format_units(units, self.decimals),
            index=index,
            siblings=tuple(Sibling(hash_, sum_) for hash_, sum_ in built.siblings(index)),
        )

    def proof(self, customer_id: str) -> Proof:
        """The proof of this customer (NotFound-like InvalidInputError when not in the tree)."""
        if self._positions is None:
            self._positions = {customer: i for i, customer in enumerate(self._customer_ids)}
        position = self._positions.get(customer_id)
        if position is None:
            raise InvalidInputError(f"customer {customer_id} has no leaf in this tree")
        return self.proof_at(position)


def build_tree(
    secret: bytes,
    snapshot_id: str,
    instrument: str,
    customer_ids: Sequence[str],
    units: Sequence[int],
    *,
    decimals: int,
    native: bool | None = None,
) -> LiabilityTree:
    """Build the tree of ``instrument`` at ``snapshot_id`` over the customers' balances in the
    instrument's smallest unit (``units[i]`` is ``customer_ids[i]``'s). Refuses the whole build
    (InvalidInputError) for a negative balance, one of 2^127 or more, a total of 2^127 or more,
    or a customer given twice. ``native`` forces one builder (None: the C extension when built).
    """
    if not secret:
        raise InvalidInputError("the tree's secret is empty")
    if decimals < 0:
        raise InvalidInputError(f"decimals must be non-negative, not {decimals}")
    builder: Builder = PythonTree
    if native or (native is None and _NATIVE_BUILD is not None):
        if _NATIVE_BUILD is None:
            raise InvalidInputError("the C extension sluice.por._merkle is not built")
        builder = _NATIVE_BUILD
    try:
        built = builder(secret, snapshot_id, instrument, customer_ids, units)
    except (ValueError, TypeError) as exc:
        raise InvalidInputError(f"cannot build the tree of {instrument}: {exc}") from exc
    return LiabilityTree(
        built,
        snapshot_id=snapshot_id,
        instrument=instrument,
        customer_ids=customer_ids,
        units=units,
        decimals=decimals,
    )
