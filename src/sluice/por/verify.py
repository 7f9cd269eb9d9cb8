"""Verifying an inclusion proof against a published root, with nothing else: no database, no
configuration, no secret.

Everything is recomputed from the proof's inputs — the nonce (the verifier cannot make one, it
has no secret), the customer id and the units give the uid and the leaf; the siblings, in the
order the index's bits say, give every parent and its sum — and the result is compared with the
PUBLISHED root: its hash and its total units, never values the proof carries about the root. A
sibling's sum must be non-negative and below 2^127, and so must every parent's; the path must be
exactly as long as the root's depth, the index below 2^depth and below the root's leaf count
(padding leaves come after every customer's leaf).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sluice.por.documents import Proof, Root, decimals_of
from sluice.por.hashing import (
    SUM_LIMIT,
    depth_for,
    instrument_label,
    leaf_hash,
    node_hash,
    uid_for,
)

Path = Sequence[tuple[bytes, int]]
PathRoot = Callable[[str, str, str, bytes, int, int, Path], tuple[bytes, int]]


@dataclass(frozen=True, slots=True)
class Verification:
    """The verdict: ``valid``, and when not, the first thing found wrong."""

    valid: bool
    reason: str

    def __bool__(self) -> bool:
        return self.valid


VALID = Verification(True, "the path leads to the published root hash and total")


def compute_root(
    snapshot_id: str,
    instrument: str,
    customer_id: str,
    nonce: bytes,
    units: int,
    index: int,
    siblings: Sequence[tuple[bytes, int]],
) -> tuple[bytes, int]:
    """The root hash and total a path leads to (pure Python). ValueError with the reason when a
    value is out of range."""
    if len(nonce) != 32:
        raise ValueError("the nonce is not 32 bytes")
    if not 0 <= units < SUM_LIMIT:
        raise ValueError(f"the proof's balance: units {units} are not in [0, 2^127)")
    if not 0 <= index < 1 << len(siblings):
        raise ValueError(f"the index {index} is not below 2^{len(siblings)}")
    node = leaf_hash(instrument_label(snapshot_id, instrument), uid_for(nonce, customer_id), units)
    total = units
    for level, (sibling, sibling_units) in enumerate(siblings):
        if len(sibling) != 32:
            raise ValueError(f"sibling {level}: the hash is not 32 bytes")
        if not 0 <= sibling_units < SUM_LIMIT:
            raise ValueError(f"sibling {level}: units {sibling_units} are not in [0, 2^127)")
        if index >> level & 1:
            node = node_hash(sibling, sibling_units, node, total)
        else:
            node = node_hash(node, total, sibling, sibling_units)
        total += sibling_units
        if total >= SUM_LIMIT:
            raise ValueError(f"the sum at level {level + 1} is not below 2^127")
    return node, total


def _native_compute_root() -> PathRoot | None:
    try:
        from sluice.por import _merkle
    except ImportError:
        return None
    native: PathRoot = _merkle.compute_root
    return native


NATIVE_COMPUTE_ROOT = _native_compute_root()


def verify_proof(proof: Proof, root: Root, *, native: bool | None = None) -> Verification:
    """Check ``proof`` against the published ``root``. ``native`` picks the path hashing (None:
    the C extension when built); both give the same verdicts."""
    mismatch = _check_shape(proof, root)
    if mismatch:
        return Verification(False, mismatch)
    path_root: PathRoot = compute_root
    if native or (native is None and NATIVE_COMPUTE_ROOT is not None):
        if NATIVE_COMPUTE_ROOT is None:
            return Verification(False, "the C extension sluice.por._merkle is not built")
        path_root = NATIVE_COMPUTE_ROOT
    try:
        root_hash, total = path_root(
            proof.snapshot_id,
            proof.instrument,
            proof.customer_id,
            proof.nonce,
            proof.units,
            proof.index,
            proof.siblings,
        )
    except (ValueError, TypeError) as exc:
        return Verification(False, str(exc))
    if total != root.total_units:
        return Verification(
            False,
            f"the path adds up to {total} units, the published root says {root.total_units}",
        )
    if root_hash != root.root_hash:
        return Verification(
            False, f"the path leads to root {root_hash.hex()}, not the published one"
        )
    return VALID


@functools.lru_cache(maxsize=64)
def _root_scale(total: str, total_units: int) -> int | None:
    """decimals_of for a root: one root is checked against many proofs."""
    return decimals_of(total, total_units)


def _check_shape(proof: Proof, root: Root) -> str:
    """What must hold before hashing: the same tree, a consistent root, amounts that are the
    units written at one scale; the empty string when all is well."""
    if proof.snapshot_id != root.snapshot_id:
        return f"the proof is for snapshot {proof.snapshot_id!r}, the root for {root.snapshot_id!r}"
    if proof.instrument != root.instrument:
        return f"the proof is for instrument {proof.instrument!r}, the root for {root.instrument!r}"
    if len(proof.siblings) != root.depth:
        return f"the proof has {len(proof.siblings)} siblings, the root's depth is {root.depth}"
    if root.leaf_count < 1 or depth_for(root.leaf_count) != root.depth:
        return f"the root's depth {root.depth} does not fit its {root.leaf_count} leaves"
    if proof.index >= root.leaf_count:
        return f"the index {proof.index} is not below the root's {root.leaf_count} leaves"
    total_scale = _root_scale(root.total, root.total_units)
    if total_scale is None:
        return f"the root's total {root.total!r} is not its {root.total_units} units"
    balance_scale = decimals_of(proof.balance, proof.units)
    if balance_scale is None:
        return f"the balance {proof.balance!r} is not the proof's {proof.units} units"
    if -1 not in (total_scale, balance_scale) and total_scale != balance_scale:
        return (
            f"the balance {proof.balance!r} and the root's total {root.total!r} are written "
            "with different decimals"
        )
    return ""
