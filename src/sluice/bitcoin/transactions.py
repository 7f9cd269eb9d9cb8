"""Raw transactions read back: :func:`decode_transaction` in ``getrawtransaction``'s verbose shape.

Tests read what the wallet signed through it. embit parses the bytes; this module insists they are
exactly one transaction (embit reads a short field as zeros) and names output script types as
Bitcoin Core does. :func:`compact_size` is shared with the wallet's vsize estimate;
:mod:`sluice.bitcoin.wallet` re-exports :func:`decode_transaction`.
"""

from __future__ import annotations

import hashlib
import io
from decimal import Decimal
from typing import Any

from embit.transaction import Transaction  # type: ignore[import-untyped]

from sluice.bitcoin.params import AddressCodec
from sluice.domain.chains import Chain, to_coins
from sluice.domain.errors import BitcoinTransactionError

__all__ = ["compact_size", "decode_transaction"]


def compact_size(n: int) -> int:
    """The length in bytes of ``n`` as a Bitcoin CompactSize (a count or a length prefix)."""
    if n < 0xFD:
        return 1
    if n <= 0xFFFF:
        return 3
    if n <= 0xFFFFFFFF:
        return 5
    return 9


def _script_type(script_bytes: bytes) -> str:
    """Bitcoin Core's name of an output script's type."""
    size = len(script_bytes)
    if size == 25 and script_bytes[:3] == b"\x76\xa9\x14" and script_bytes[23:] == b"\x88\xac":
        return "pubkeyhash"
    if size == 23 and script_bytes[:2] == b"\xa9\x14" and script_bytes[22] == 0x87:
        return "scripthash"
    if size == 22 and script_bytes[:2] == b"\x00\x14":
        return "witness_v0_keyhash"
    if size == 34 and script_bytes[:2] == b"\x00\x20":
        return "witness_v0_scripthash"
    if size == 34 and script_bytes[:2] == b"\x51\x20":
        return "witness_v1_taproot"
    if 4 <= size <= 42 and 0x51 <= script_bytes[0] <= 0x60 and script_bytes[1] == size - 2:
        return "witness_unknown"
    if size >= 1 and script_bytes[0] == 0x6A:
        return "nulldata"
    return "nonstandard"


def decode_transaction(raw_hex: str, chain: Chain | None = None) -> dict[str, Any]:
    """A raw transaction in ``getrawtransaction``'s verbose shape (``txid``, ``hash`` = wtxid,
    ``size``, ``vsize``, ``weight``, ``version``, ``locktime``, ``vin``, ``vout`` with ``value``
    in :class:`~decimal.Decimal` coins). With ``chain``, outputs with an address carry it.
    :class:`BitcoinTransactionError` for bytes that are not exactly one transaction."""
    try:
        raw = bytes.fromhex(raw_hex)
        stream = io.BytesIO(raw)
        tx = Transaction.read_from(stream)
        if stream.read(1):
            raise ValueError("bytes left after the transaction")
        # embit reads short fields as zeros; only an exact round trip proves the bytes were whole.
        if tx.serialize() != raw:
            raise ValueError("truncated or non-canonical encoding")
    except Exception as exc:
        raise BitcoinTransactionError(f"TX decode failed: {exc}") from None
    segwit = tx.is_segwit
    weight = _stripped_size(tx) * 3 + len(raw)
    codec = AddressCodec(chain) if chain is not None else None
    vin: list[dict[str, Any]] = []
    for txin in tx.vin:
        entry: dict[str, Any]
        if txin.txid == b"\x00" * 32 and txin.vout == 0xFFFFFFFF:
            entry = {"coinbase": txin.script_sig.data.hex()}
        else:
            entry = {
                "txid": txin.txid.hex(),
                "vout": txin.vout,
                "scriptSig": {"hex": txin.script_sig.data.hex()},
            }
        if segwit and txin.witness.items:
            entry["txinwitness"] = [item.hex() for item in txin.witness.items]
        entry["sequence"] = txin.sequence
        vin.append(entry)
    vout: list[dict[str, Any]] = []
    for n, txout in enumerate(tx.vout):
        script_bytes = bytes(txout.script_pubkey.data)
        script_pubkey: dict[str, Any] = {
            "hex": script_bytes.hex(),
            "type": _script_type(script_bytes),
        }
        if codec is not None:
            address = codec.address_of(script_bytes)
            if address is not None:
                script_pubkey["address"] = address
        value: Decimal = to_coins(txout.value)
        vout.append({"value": value, "n": n, "scriptPubKey": script_pubkey})
    return {
        "txid": tx.txid().hex(),
        "hash": hashlib.sha256(hashlib.sha256(raw).digest()).digest()[::-1].hex(),
        "version": tx.version,
        "size": len(raw),
        "vsize": -(-weight // 4),
        "weight": weight,
        "locktime": tx.locktime,
        "vin": vin,
        "vout": vout,
        "hex": raw_hex.lower(),
    }


def _stripped_size(tx: Any) -> int:
    """The size without witness data (what the txid hashes)."""
    size = 4 + compact_size(len(tx.vin)) + compact_size(len(tx.vout)) + 4
    for txin in tx.vin:
        script_length = len(txin.script_sig.data)
        size += 32 + 4 + compact_size(script_length) + script_length + 4
    for txout in tx.vout:
        size += len(txout.serialize())
    return size
