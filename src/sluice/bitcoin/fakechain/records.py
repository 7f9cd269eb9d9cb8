"""What the embedded chain holds: transactions, coins and blocks, and Bitcoin Core's constants.

A raw transaction is decoded into a :class:`Tx` (refused with Core's "TX decode failed" unless its
bytes are exactly one transaction) and the chain builds its own coinbase and funding transactions
with :func:`build`. The RPC error codes and policy figures are Core's (see the package docstring
for what the mempool checks with them).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from embit.base import EmbitError  # type: ignore[import-untyped]
from embit.script import Script  # type: ignore[import-untyped]
from embit.transaction import (  # type: ignore[import-untyped]
    Transaction,
    TransactionInput,
    TransactionOutput,
)

from sluice.ports.bitcoin import NodeRejectedError

Outpoint = tuple[str, int]

# Bitcoin Core's RPC error codes, as its answers carry them.
RPC_INVALID_PARAMETER = -8
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_DESERIALIZATION_ERROR = -22
RPC_TRANSACTION_ERROR = -25
RPC_TRANSACTION_REJECTED = -26
RPC_TRANSACTION_ALREADY_IN_CHAIN = -27

COINBASE_MATURITY = 100
SUBSIDY_SATS = 50 * 100_000_000
RELAY_FEE_SAT_VB = 1  # Core's minrelaytxfee and incrementalrelayfee: 1,000 sat/kvB
MAX_FEE_RATE_SAT_VB = 10_000  # sendrawtransaction's default maxfeerate, 0.1 coin/kvB
REPLACEMENT_EVICTIONS_MAX = 100
SCAN_RANGE_DEFAULT = 1000
SCAN_RANGE_MAX = 1_000_000
FINAL_SEQUENCE_MIN = 0xFFFFFFFE  # an input below it signals BIP 125 replaceability
# Coinbase outputs pay P2WSH(OP_TRUE): spendable with the witness [OP_TRUE, script].
MINER_SCRIPT_HEX = "0020" + hashlib.sha256(b"\x51").hexdigest()


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def coins(sats: int) -> Decimal:
    """Satoshis as Core prints coins (eight decimals), as the RPC client decodes them."""
    return Decimal(sats).scaleb(-8)


@dataclass(frozen=True, slots=True)
class Input:
    txid: str
    vout: int
    script_sig_hex: str
    witness: tuple[str, ...]
    sequence: int

    @property
    def outpoint(self) -> Outpoint:
        return (self.txid, self.vout)


@dataclass(slots=True)
class Tx:
    txid: str
    wtxid: str
    raw_hex: str
    version: int
    locktime: int
    size: int
    weight: int
    inputs: tuple[Input, ...]
    outputs: tuple[tuple[str, int], ...]  # (script hex, satoshis)
    coinbase: bool = False
    external: bool = False  # a funding transaction: its inputs are outside this chain
    fee_sats: int = 0
    time: int = 0  # when it entered the mempool
    entry_height: int = 0

    @property
    def vsize(self) -> int:
        return (self.weight + 3) // 4

    @property
    def signals_rbf(self) -> bool:
        return any(inp.sequence < FINAL_SEQUENCE_MIN for inp in self.inputs)


@dataclass(frozen=True, slots=True)
class Coin:
    script_hex: str
    sats: int
    height: int
    coinbase: bool


@dataclass(slots=True)
class Block:
    hash: str
    height: int
    previous_hash: str | None
    time: int
    txids: tuple[str, ...]
    undo: dict[Outpoint, Coin] = field(default_factory=dict)  # the coins it spent


class PolicyError(Exception):
    """A mempool refusal: ``reason`` is Core's reject reason, ``code`` its RPC error code."""

    def __init__(self, reason: str, code: int = RPC_TRANSACTION_REJECTED, detail: str = "") -> None:
        super().__init__(f"{reason}, {detail}" if detail else reason)
        self.reason = reason
        self.code = code


def decode(raw_hex: str) -> Tx:
    """The transaction in ``raw_hex``; Core's "TX decode failed" when it is not exactly one."""
    try:
        raw = bytes.fromhex(raw_hex)
        parsed = Transaction.parse(raw)
        if parsed.serialize() != raw:
            raise EmbitError("the transaction does not serialize back to its bytes")
    except (ValueError, TypeError, RuntimeError, IndexError, EmbitError) as exc:
        raise NodeRejectedError("TX decode failed", code=RPC_DESERIALIZATION_ERROR) from exc
    return from_embit(parsed, raw)


def from_embit(parsed: Any, raw: bytes) -> Tx:
    # The weight counts the serialization without witnesses four times, the witnesses once.
    stripped = 8 + len(compact(len(parsed.vin))) + len(compact(len(parsed.vout)))
    stripped += sum(len(inp.serialize()) for inp in parsed.vin)
    stripped += sum(len(out.serialize()) for out in parsed.vout)
    inputs = tuple(
        Input(
            txid=inp.txid.hex(),
            vout=inp.vout,
            script_sig_hex=inp.script_sig.data.hex(),
            witness=tuple(item.hex() for item in inp.witness.items),
            sequence=inp.sequence,
        )
        for inp in parsed.vin
    )
    return Tx(
        txid=parsed.txid().hex(),
        wtxid=sha256d(raw)[::-1].hex(),
        raw_hex=raw.hex(),
        version=parsed.version,
        locktime=parsed.locktime,
        size=len(raw),
        weight=stripped * 3 + len(raw),
        inputs=inputs,
        outputs=tuple((out.script_pubkey.data.hex(), out.value) for out in parsed.vout),
    )


def compact(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    return b"\xfe" + n.to_bytes(4, "little")


def build(
    inputs: Iterable[tuple[bytes, int, bytes, int]], outputs: Iterable[tuple[str, int]]
) -> Any:
    """An embit transaction from (prev txid, vout, scriptSig, sequence) and (script hex, sats)."""
    vin = [
        TransactionInput(txid, vout, script_sig=Script(sig), sequence=sequence)
        for txid, vout, sig, sequence in inputs
    ]
    vout = [TransactionOutput(sats, Script(bytes.fromhex(script))) for script, sats in outputs]
    return Transaction(version=2, vin=vin, vout=vout, locktime=0)


def dust_limit_sats(script_hex: str, dust_relay_fee_sat_per_kvb: int) -> int:
    """Core's GetDustThreshold: the fee, at the dust relay rate, of the output and its spend."""
    script = bytes.fromhex(script_hex)
    if script[:1] == b"\x6a":  # OP_RETURN: unspendable, never dust
        return 0
    size = 8 + len(compact(len(script))) + len(script)
    witness_program = (
        4 <= len(script) <= 42
        and (script[0] == 0 or 0x51 <= script[0] <= 0x60)
        and script[1] == len(script) - 2
    )
    size += 32 + 4 + 1 + 107 // 4 + 4 if witness_program else 32 + 4 + 1 + 107 + 4
    return size * dust_relay_fee_sat_per_kvb // 1000
