"""The byte layout of the proof-of-liabilities Merkle-sum tree: every hash it is made of.

This is the whole construction at the level of bytes (``docs/proof-of-reserves.md`` states it in
prose); the tree builders and the verifier are written over these functions, and the C extension
``sluice.por._merkle`` is checked against them byte for byte. Every hash is SHA-256; every
number is big-endian; every string is UTF-8. The first byte of a hashed message says what it is
(0x00 a leaf, 0x01 a node, 0x02 a padding leaf), so no leaf can pass for a node or a padding leaf.
"""

from __future__ import annotations

import hashlib
import hmac

HASH_SIZE = 32
SUM_LIMIT = 1 << 127  # every leaf's units and every sum must be below this
LEAF_TAG = b"\x00"
NODE_TAG = b"\x01"
PADDING_TAG = b"\x02"

_sha256 = hashlib.sha256


def u128be(value: int) -> bytes:
    """16 bytes, big-endian; ``value`` must be in [0, 2^128)."""
    return value.to_bytes(16, "big")


def u64be(value: int) -> bytes:
    return value.to_bytes(8, "big")


def nonce_for(secret: bytes, snapshot_id: str, customer_id: str) -> bytes:
    """``HMAC-SHA-256(secret, UTF-8(snapshot_id) ‖ 0x00 ‖ UTF-8(customer_id))``: 32 bytes only
    the operator can compute, which hide the customer's id in the tree and change every
    snapshot (so that two snapshots cannot be linked leaf by leaf)."""
    message = snapshot_id.encode() + b"\x00" + customer_id.encode()
    return hmac.new(secret, message, hashlib.sha256).digest()


def uid_for(nonce: bytes, customer_id: str) -> bytes:
    """``SHA-256(nonce ‖ UTF-8(customer_id))``: the customer's identity inside the tree."""
    return _sha256(nonce + customer_id.encode()).digest()


def instrument_label(snapshot_id: str, instrument: str) -> bytes:
    """``SHA-256(UTF-8(snapshot_id ‖ "/" ‖ instrument))``: binds every leaf to one tree."""
    return _sha256(f"{snapshot_id}/{instrument}".encode()).digest()


def snapshot_label(snapshot_id: str) -> bytes:
    """``SHA-256(UTF-8(snapshot_id))``, hashed into every padding leaf."""
    return _sha256(snapshot_id.encode()).digest()


def leaf_hash(label: bytes, uid: bytes, units: int) -> bytes:
    """``SHA-256(0x00 ‖ instrument_label ‖ uid ‖ u128be(units))``."""
    return _sha256(LEAF_TAG + label + uid + u128be(units)).digest()


def node_hash(left: bytes, left_units: int, right: bytes, right_units: int) -> bytes:
    """``SHA-256(0x01 ‖ h_left ‖ u128be(sum_left) ‖ h_right ‖ u128be(sum_right))``. Both child
    sums are hashed, not only their total: with the total alone an operator could move
    liabilities between siblings and under-report (one child's sum shown lower to each of two
    customers)."""
    return _sha256(NODE_TAG + left + u128be(left_units) + right + u128be(right_units)).digest()


def padding_leaf_hash(index: int, snapshot: bytes) -> bytes:
    """``SHA-256(0x02 ‖ u64be(index) ‖ SHA-256(UTF-8(snapshot_id)))``, at sum 0."""
    return _sha256(PADDING_TAG + u64be(index) + snapshot).digest()


def depth_for(leaf_count: int) -> int:
    """The number of levels above the leaves: the smallest d with 2^d ≥ leaf_count (0 for one
    leaf or none)."""
    return max(leaf_count - 1, 0).bit_length()
