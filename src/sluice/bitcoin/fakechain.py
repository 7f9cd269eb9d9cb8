"""An in-memory Bitcoin chain that answers like Bitcoin Core: the node of the embedded defaults.

:class:`FakeChain` implements :class:`~sluice.ports.bitcoin.BitcoinNode` with Bitcoin Core's JSON
shapes (``getblock`` at verbosity 2, verbose ``getrawtransaction``, ``estimatesmartfee`` with no
``feerate`` on a young chain, …) and its error codes, so the deposit watcher and the payout worker
run against it unchanged. Tests and the demo drive it: :meth:`~FakeChain.mine`,
:meth:`~FakeChain.fund`, :meth:`~FakeChain.reorg`, :meth:`~FakeChain.evict`,
:meth:`~FakeChain.set_fee_rate` and the ``down`` flag.

What it checks, as a node's mempool does: the transaction parses; each input is an unspent output
of the chain or of the mempool (coinbase outputs after 100 blocks); outputs are not dust; the fee
is not negative and meets the 1 sat/vB relay floor and the 0.1 coin/kvB ``maxfeerate``; and
BIP 125 replacement (the conflicting transactions signalled, the new one pays a higher fee rate,
at least their fees, plus 1 sat/vB of its own size, and spends no new unconfirmed input), as
Bitcoin Core 0.21 does it (a conflict's own signal counts, not an ancestor's). What it does not
check is signatures: each input must carry a witness or a scriptSig, but what they prove is left
to the tests against a real node (``tests/integration/bitcoin``). Blocks hold the whole mempool,
with no weight limit.

Deterministic: block hashes come from (height, previous hash, txids, a counter), so a branch
mined after :meth:`~FakeChain.reorg` has new hashes at the same heights. Funding transactions spend
made-up outpoints of an outside source, which the chain never checks. Answers are built fresh on
every call: callers may keep or change them without touching the chain. A lock makes it safe to
share between the worker threads of ``sluice serve``.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from functools import lru_cache
from typing import Any

from embit.base import EmbitError  # type: ignore[import-untyped]
from embit.descriptor import Descriptor  # type: ignore[import-untyped]
from embit.descriptor.checksum import checksum  # type: ignore[import-untyped]
from embit.script import Script  # type: ignore[import-untyped]
from embit.transaction import (  # type: ignore[import-untyped]
    Transaction,
    TransactionInput,
    TransactionOutput,
)

from sluice.domain.chains import CHAINS, Chain
from sluice.ports.bitcoin import (
    JsonObject,
    NodeRejectedError,
    NodeUnavailableError,
    NotFoundError,
)

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


def _sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def _coins(sats: int) -> Decimal:
    """Satoshis as Core prints coins (eight decimals), as the RPC client decodes them."""
    return Decimal(sats).scaleb(-8)


@dataclass(frozen=True, slots=True)
class _Input:
    txid: str
    vout: int
    script_sig_hex: str
    witness: tuple[str, ...]
    sequence: int

    @property
    def outpoint(self) -> Outpoint:
        return (self.txid, self.vout)


@dataclass(slots=True)
class _Tx:
    txid: str
    wtxid: str
    raw_hex: str
    version: int
    locktime: int
    size: int
    weight: int
    inputs: tuple[_Input, ...]
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
class _Coin:
    script_hex: str
    sats: int
    height: int
    coinbase: bool


@dataclass(slots=True)
class _Block:
    hash: str
    height: int
    previous_hash: str | None
    time: int
    txids: tuple[str, ...]
    undo: dict[Outpoint, _Coin] = field(default_factory=dict)  # the coins it spent


class _PolicyError(Exception):
    """A mempool refusal: ``reason`` is Core's reject reason, ``code`` its RPC error code."""

    def __init__(self, reason: str, code: int = RPC_TRANSACTION_REJECTED, detail: str = "") -> None:
        super().__init__(f"{reason}, {detail}" if detail else reason)
        self.reason = reason
        self.code = code


def _decode(raw_hex: str) -> _Tx:
    """The transaction in ``raw_hex``; Core's "TX decode failed" when it is not exactly one."""
    try:
        raw = bytes.fromhex(raw_hex)
        parsed = Transaction.parse(raw)
        if parsed.serialize() != raw:
            raise EmbitError("the transaction does not serialize back to its bytes")
    except (ValueError, TypeError, RuntimeError, IndexError, EmbitError) as exc:
        raise NodeRejectedError("TX decode failed", code=RPC_DESERIALIZATION_ERROR) from exc
    return _from_embit(parsed, raw)


def _from_embit(parsed: Any, raw: bytes) -> _Tx:
    # The weight counts the serialization without witnesses four times, the witnesses once.
    stripped = 8 + len(_compact(len(parsed.vin))) + len(_compact(len(parsed.vout)))
    stripped += sum(len(inp.serialize()) for inp in parsed.vin)
    stripped += sum(len(out.serialize()) for out in parsed.vout)
    inputs = tuple(
        _Input(
            txid=inp.txid.hex(),
            vout=inp.vout,
            script_sig_hex=inp.script_sig.data.hex(),
            witness=tuple(item.hex() for item in inp.witness.items),
            sequence=inp.sequence,
        )
        for inp in parsed.vin
    )
    return _Tx(
        txid=parsed.txid().hex(),
        wtxid=_sha256d(raw)[::-1].hex(),
        raw_hex=raw.hex(),
        version=parsed.version,
        locktime=parsed.locktime,
        size=len(raw),
        weight=stripped * 3 + len(raw),
        inputs=inputs,
        outputs=tuple((out.script_pubkey.data.hex(), out.value) for out in parsed.vout),
    )


def _compact(n: int) -> bytes:
    if n < 0xFD:
        return bytes([n])
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    return b"\xfe" + n.to_bytes(4, "little")


def _build(
    inputs: Iterable[tuple[bytes, int, bytes, int]], outputs: Iterable[tuple[str, int]]
) -> Any:
    """An embit transaction from (prev txid, vout, scriptSig, sequence) and (script hex, sats)."""
    vin = [
        TransactionInput(txid, vout, script_sig=Script(sig), sequence=sequence)
        for txid, vout, sig, sequence in inputs
    ]
    vout = [TransactionOutput(sats, Script(bytes.fromhex(script))) for script, sats in outputs]
    return Transaction(version=2, vin=vin, vout=vout, locktime=0)


def _dust_limit_sats(script_hex: str, dust_relay_fee_sat_per_kvb: int) -> int:
    """Core's GetDustThreshold: the fee, at the dust relay rate, of the output and its spend."""
    script = bytes.fromhex(script_hex)
    if script[:1] == b"\x6a":  # OP_RETURN: unspendable, never dust
        return 0
    size = 8 + len(_compact(len(script))) + len(script)
    witness_program = (
        4 <= len(script) <= 42
        and (script[0] == 0 or 0x51 <= script[0] <= 0x60)
        and script[1] == len(script) - 2
    )
    size += 32 + 4 + 1 + 107 // 4 + 4 if witness_program else 32 + 4 + 1 + 107 + 4
    return size * dust_relay_fee_sat_per_kvb // 1000


_SCRIPT_TYPES = {
    "p2pkh": "pubkeyhash",
    "p2sh": "scripthash",
    "p2wpkh": "witness_v0_keyhash",
    "p2wsh": "witness_v0_scripthash",
    "p2tr": "witness_v1_taproot",
}


@lru_cache(maxsize=100_000)
def _script_pub_key(script_hex: str, chain: Chain) -> tuple[tuple[str, Any], ...]:
    """The ``scriptPubKey`` object's fields (Core 22's shape, with ``address``), cached."""
    script = Script(bytes.fromhex(script_hex))
    kind = script.script_type()
    if kind is None:
        nulldata = script_hex.startswith("6a")
        return (("hex", script_hex), ("type", "nulldata" if nulldata else "nonstandard"))
    network = {
        "p2pkh": bytes([chain.p2pkh_version]),
        "p2sh": bytes([chain.p2sh_versions[0]]),
        "bech32": chain.bech32_hrp,
    }
    return (
        ("hex", script_hex),
        ("address", script.address(network)),
        ("type", _SCRIPT_TYPES[kind]),
    )


@lru_cache(maxsize=64)
def _parse_descriptor(text: str) -> Any:
    try:
        return Descriptor.from_string(text)
    except (EmbitError, ValueError, TypeError, IndexError, KeyError) as exc:
        message = f"Invalid descriptor {text!r}: {exc}"
        raise NodeRejectedError(message, code=RPC_INVALID_ADDRESS_OR_KEY) from exc


@lru_cache(maxsize=50_000)
def _derived_script(text: str, index: int) -> str:
    return str(_parse_descriptor(text).derive(index).script_pubkey().data.hex())


def _descriptor_scripts(item: str | JsonObject) -> tuple[str, set[str]]:
    """The descriptor's text (checksum verified when given) and the output scripts it covers."""
    if isinstance(item, dict):
        if "desc" not in item:
            raise NodeRejectedError("Scan object needs a 'desc'", code=RPC_INVALID_PARAMETER)
        desc, scan_range = str(item["desc"]), item.get("range")
    else:
        desc, scan_range = item, None
    text, _, given = desc.partition("#")
    if given and given != checksum(text):
        message = f"Provided checksum '{given}' does not match computed checksum"
        raise NodeRejectedError(message, code=RPC_INVALID_ADDRESS_OR_KEY)
    if text.startswith("raw(") and text.endswith(")"):
        ranged, scripts = False, {text[4:-1].lower()}
    else:
        parsed = _parse_descriptor(text)
        ranged = bool(parsed.is_wildcard)
        scripts = set() if ranged else {str(parsed.script_pubkey().data.hex())}
    if not ranged:
        if scan_range is not None:
            message = "Range should not be specified for an un-ranged descriptor"
            raise NodeRejectedError(message, code=RPC_INVALID_PARAMETER)
        return text, scripts
    if scan_range is None:
        start, end = 0, SCAN_RANGE_DEFAULT - 1
    elif isinstance(scan_range, int):
        start, end = 0, scan_range
    else:
        start, end = int(scan_range[0]), int(scan_range[1])
    if start < 0 or end < start or end - start >= SCAN_RANGE_MAX:
        raise NodeRejectedError(f"Invalid range {scan_range!r}", code=RPC_INVALID_PARAMETER)
    return text, {_derived_script(text, index) for index in range(start, end + 1)}


class FakeChain:
    """An in-memory chain with a mempool, answering Bitcoin Core's RPC calls (see the module)."""

    def __init__(
        self,
        chain: Chain = CHAINS["regtest"],
        *,
        fee_rate_sat_vb: Decimal | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.chain = chain
        self.down = False  # while True, every node call raises NodeUnavailableError
        self._fee_rate_sat_vb = fee_rate_sat_vb
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._counter = 0  # makes hashes, coinbases and funding outpoints unique
        self._blocks: dict[str, _Block] = {}  # every block ever mined, orphans included
        self._active: list[str] = []  # the active chain's block hashes by height
        self._txs: dict[str, _Tx] = {}  # every transaction ever seen
        self._tx_block: dict[str, str] = {}  # txid → its block on the active chain
        self._utxos: dict[Outpoint, _Coin] = {}  # the chain's unspent outputs
        self._utxos_by_script: dict[str, set[Outpoint]] = {}
        self._mempool: dict[str, _Tx] = {}
        self._spenders: dict[Outpoint, str] = {}  # outpoint → the mempool tx spending it
        self._connect(self._new_block([]))

    # Controls for tests and the demo ------------------------------------------------------------

    @property
    def tip_height(self) -> int:
        with self._lock:
            return len(self._active) - 1

    @property
    def mempool_txids(self) -> list[str]:
        with self._lock:
            return list(self._mempool)

    def set_fee_rate(self, rate_sat_vb: Decimal | None) -> None:
        """What ``estimatesmartfee`` answers from now on; ``None``: no estimate, a young chain."""
        with self._lock:
            self._fee_rate_sat_vb = rate_sat_vb

    def mine(self, count: int = 1, *, include_mempool: bool = True) -> list[str]:
        """Mine ``count`` blocks; the first holds the whole mempool (unless told not to)."""
        with self._lock:
            hashes = []
            for number in range(count):
                txs = self._mempool_in_order() if number == 0 and include_mempool else []
                block = self._new_block(txs)
                self._connect(block)
                hashes.append(block.hash)
            return hashes

    def fund(self, script_hex: str, sats: int, *, mine: bool = False) -> tuple[str, int]:
        """Pay ``sats`` to ``script_hex`` from an outside source, into the mempool (and a block
        when ``mine``); answers the new output's ``(txid, vout)``."""
        txid = self.fund_many([(script_hex, sats)])
        if mine:
            self.mine()
        return txid, 0

    def fund_many(self, outputs: list[tuple[str, int]]) -> str:
        """One funding transaction paying each ``(script_hex, sats)``, into the mempool."""
        if not outputs or any(sats <= 0 for _, sats in outputs):
            raise ValueError("funding needs at least one output, each of a positive amount")
        with self._lock:
            self._counter += 1
            source = hashlib.sha256(b"fakechain funding %d" % self._counter).digest()
            parsed = _build([(source, 0, b"\x51", 0xFFFFFFFE)], outputs)
            tx = _from_embit(parsed, parsed.serialize())
            tx.external = True
            tx.fee_sats = tx.vsize * RELAY_FEE_SAT_VB
            self._add_to_mempool(tx)
            return tx.txid

    def evict(self, txid: str) -> list[str]:
        """Drop ``txid`` and its descendants from the mempool, as a node under pressure does."""
        with self._lock:
            if txid not in self._mempool:
                raise ValueError(f"{txid} is not in the mempool")
            return self._remove_with_descendants(txid)

    def reorg(
        self,
        depth: int,
        *,
        drop_txids: Iterable[str] = (),
        blocks: int | None = None,
        include_mempool: bool = True,
    ) -> list[str]:
        """Disconnect the top ``depth`` blocks and mine a longer branch (``blocks``, by default
        ``depth + 1``) in their place. Their transactions go back to the mempool, and so into the
        new branch's first block unless ``include_mempool`` is False, except those in
        ``drop_txids`` (and whatever spends them), which are gone. Answers the new hashes."""
        dropped = set(drop_txids)
        with self._lock:
            if not 1 <= depth <= self.tip_height:
                raise ValueError(f"cannot reorg {depth} blocks of a chain at {self.tip_height}")
            top = [self._blocks[block_hash] for block_hash in self._active[-depth:]]
            returned = [self._txs[t] for b in top for t in b.txids if not self._txs[t].coinbase]
            candidates = {tx.txid: tx for tx in [*returned, *self._mempool.values()]}
            unknown = dropped - candidates.keys()
            if unknown:
                raise ValueError(f"not in the disconnected blocks nor the mempool: {unknown}")
            for _ in range(depth):
                self._disconnect_tip()
            self._mempool.clear()
            self._spenders.clear()
            for tx in self._in_order(candidates):
                # Whatever spent a dropped transaction finds its inputs missing and goes with it.
                if tx.txid not in dropped and self._inputs_available(tx):
                    self._add_to_mempool(tx)
            count = depth + 1 if blocks is None else blocks
            return self.mine(count, include_mempool=include_mempool)

    # BitcoinNode ---------------------------------------------------------------------------------

    def getblockchaininfo(self) -> JsonObject:
        with self._answer():
            tip = self._blocks[self._active[-1]]
            return {
                "chain": self.chain.node_chain,
                "blocks": tip.height,
                "headers": tip.height,
                "bestblockhash": tip.hash,
                "difficulty": Decimal("4.656542373906925E-10"),
                "mediantime": tip.time,
                "verificationprogress": 1,
                "initialblockdownload": False,
                "chainwork": f"{2 * (tip.height + 1):064x}",
                "size_on_disk": 0,
                "pruned": False,
                "warnings": "",
            }

    def getblockhash(self, height: int) -> str:
        with self._answer():
            if not 0 <= height < len(self._active):
                raise NotFoundError("Block height out of range", code=RPC_INVALID_PARAMETER)
            return self._active[height]

    def getblock(self, block_hash: str) -> JsonObject:
        with self._answer():
            block = self._block(block_hash, "Block not found")
            answer: JsonObject = {
                "hash": block.hash,
                "confirmations": self._confirmations(block),
                "height": block.height,
                "version": 0x20000000,
                "merkleroot": _sha256d("".join(block.txids).encode())[::-1].hex(),
                "time": block.time,
                "mediantime": block.time,
                "nTx": len(block.txids),
                "tx": [self._tx_json(self._txs[txid], with_hex=True) for txid in block.txids],
            }
            if block.previous_hash is not None:
                answer["previousblockhash"] = block.previous_hash
            if self._on_active_chain(block) and block.height + 1 < len(self._active):
                answer["nextblockhash"] = self._active[block.height + 1]
            return answer

    def getrawtransaction(self, txid: str, block_hash: str | None = None) -> JsonObject:
        with self._answer():
            if block_hash is not None:
                block = self._block(block_hash, "Block hash not found")
                if txid not in block.txids:
                    message = "No such transaction found in the provided block"
                    raise NotFoundError(message, code=RPC_INVALID_ADDRESS_OR_KEY)
                answer = self._tx_json(self._txs[txid], with_hex=True)
                answer["in_active_chain"] = self._on_active_chain(block)
                return self._with_block(answer, block)
            if txid in self._mempool:
                return self._tx_json(self._mempool[txid], with_hex=True)
            if txid in self._tx_block:
                answer = self._tx_json(self._txs[txid], with_hex=True)
                return self._with_block(answer, self._blocks[self._tx_block[txid]])
            message = "No such mempool or blockchain transaction"
            raise NotFoundError(message, code=RPC_INVALID_ADDRESS_OR_KEY)

    def sendrawtransaction(self, raw_hex: str) -> str:
        with self._answer():
            tx = _decode(raw_hex)
            if tx.txid in self._mempool:
                return tx.txid  # Core 0.21 answers the txid again, and relays it
            if any((tx.txid, n) in self._utxos for n in range(len(tx.outputs))):
                message = "Transaction already in block chain"
                raise NodeRejectedError(message, code=RPC_TRANSACTION_ALREADY_IN_CHAIN)
            try:
                evicted = self._check(tx)
            except _PolicyError as exc:
                raise NodeRejectedError(str(exc), code=exc.code) from exc
            for txid in evicted:
                if txid in self._mempool:
                    self._remove_with_descendants(txid)
            self._add_to_mempool(tx)
            return tx.txid

    def testmempoolaccept(self, raw_hexes: list[str]) -> list[JsonObject]:
        with self._answer():
            if len(raw_hexes) != 1:
                # Bitcoin Core 0.21 takes exactly one; callers must not count on more.
                message = "Array must contain exactly one transaction"
                raise NodeRejectedError(message, code=RPC_INVALID_PARAMETER)
            answers: list[JsonObject] = []
            for raw_hex in raw_hexes:
                tx = _decode(raw_hex)
                answer: JsonObject = {"txid": tx.txid, "wtxid": tx.wtxid}
                try:
                    self._check(tx)
                except _PolicyError as exc:
                    missing = exc.reason == "bad-txns-inputs-missingorspent"
                    answer["allowed"] = False
                    answer["reject-reason"] = "missing-inputs" if missing else exc.reason
                else:
                    answer["allowed"] = True
                    answer["vsize"] = tx.vsize
                    answer["fees"] = {"base": _coins(tx.fee_sats)}
                answers.append(answer)
            return answers

    def estimatesmartfee(self, conf_target: int) -> JsonObject:
        with self._answer():
            if not 1 <= conf_target <= 1008:
                message = "Invalid conf_target, must be between 1 and 1008"
                raise NodeRejectedError(message, code=RPC_INVALID_PARAMETER)
            if self._fee_rate_sat_vb is None:
                return {"errors": ["Insufficient data or no feerate found"], "blocks": 0}
            feerate = (self._fee_rate_sat_vb * 1000).scaleb(-8).quantize(Decimal("1E-8"))
            return {"feerate": feerate, "blocks": max(conf_target, 2)}

    def scantxoutset(self, descriptors: list[str | JsonObject]) -> JsonObject:
        with self._answer():
            unspents: list[JsonObject] = []
            total = 0
            for item in descriptors:
                _, scripts = _descriptor_scripts(item)
                for script_hex in sorted(scripts):
                    for outpoint in sorted(self._utxos_by_script.get(script_hex, ())):
                        coin = self._utxos[outpoint]
                        unspents.append(
                            {
                                "txid": outpoint[0],
                                "vout": outpoint[1],
                                "scriptPubKey": script_hex,
                                "desc": f"raw({script_hex})#{checksum(f'raw({script_hex})')}",
                                "amount": _coins(coin.sats),
                                "height": coin.height,
                            }
                        )
                        total += coin.sats
            return {
                "success": True,
                "txouts": len(self._utxos),
                "height": len(self._active) - 1,
                "bestblock": self._active[-1],
                "unspents": unspents,
                "total_amount": _coins(total),
            }

    def getmempoolentry(self, txid: str) -> JsonObject:
        with self._answer():
            tx = self._mempool.get(txid)
            if tx is None:
                raise NotFoundError("Transaction not in mempool", code=RPC_INVALID_ADDRESS_OR_KEY)
            depends = sorted({i.txid for i in tx.inputs if i.txid in self._mempool})
            spent_by = sorted(
                {s for n in range(len(tx.outputs)) if (s := self._spenders.get((txid, n)))}
            )
            return {
                "vsize": tx.vsize,
                "weight": tx.weight,
                "fee": _coins(tx.fee_sats),
                "fees": {"base": _coins(tx.fee_sats), "modified": _coins(tx.fee_sats)},
                "time": tx.time,
                "height": tx.entry_height,
                "wtxid": tx.wtxid,
                "depends": depends,
                "spentby": spent_by,
                "bip125-replaceable": any(t.signals_rbf for t in self._with_ancestors(tx)),
            }

    # The mempool's rules -------------------------------------------------------------------------

    def _check(self, tx: _Tx) -> set[str]:
        """The txids taking ``tx`` in would replace; :class:`_PolicyError` when refused."""
        if not tx.inputs:
            raise _PolicyError("bad-txns-vin-empty")
        if not tx.outputs:
            raise _PolicyError("bad-txns-vout-empty")
        if len({i.outpoint for i in tx.inputs}) != len(tx.inputs):
            raise _PolicyError("bad-txns-inputs-duplicate")
        if any(i.txid == "00" * 32 for i in tx.inputs):
            raise _PolicyError("coinbase")
        if any(sats > 21_000_000 * 100_000_000 for _, sats in tx.outputs):
            raise _PolicyError("bad-txns-vout-toolarge")
        for script_hex, sats in tx.outputs:
            if sats < _dust_limit_sats(script_hex, self.chain.dust_relay_fee_sat_per_kvb):
                raise _PolicyError("dust")
        if tx.txid in self._mempool:
            raise _PolicyError("txn-already-in-mempool")
        conflicts = {s for i in tx.inputs if (s := self._spenders.get(i.outpoint))}
        for txid in conflicts:
            if not self._mempool[txid].signals_rbf:
                raise _PolicyError("txn-mempool-conflict", detail=f"spent by {txid}")
        fee_sats = self._input_sats(tx, conflicts) - sum(sats for _, sats in tx.outputs)
        if fee_sats < 0:
            raise _PolicyError("bad-txns-in-belowout")
        if fee_sats < tx.vsize * RELAY_FEE_SAT_VB:
            raise _PolicyError("min relay fee not met", detail=f"{fee_sats} < {tx.vsize}")
        if fee_sats > tx.vsize * MAX_FEE_RATE_SAT_VB:
            raise _PolicyError("max-fee-exceeded", code=RPC_TRANSACTION_ERROR)
        evicted = self._check_replacement(tx, fee_sats, conflicts) if conflicts else set()
        for inp in tx.inputs:
            if not inp.witness and not inp.script_sig_hex:
                reason = "mandatory-script-verify-flag-failed"
                detail = "Operation not valid with the current stack size"
                raise _PolicyError(f"{reason} ({detail})")
        tx.fee_sats = fee_sats
        return evicted

    def _input_sats(self, tx: _Tx, conflicts: set[str]) -> int:
        total = 0
        height = len(self._active)  # of the block that would include it
        for inp in tx.inputs:
            if inp.txid in conflicts:
                raise _PolicyError("bad-txns-spends-conflicting-tx")
            coin = self._coin(inp.outpoint, conflicts)
            if coin is None:
                if any((tx.txid, n) in self._utxos for n in range(len(tx.outputs))):
                    raise _PolicyError("txn-already-known", code=RPC_TRANSACTION_ALREADY_IN_CHAIN)
                raise _PolicyError("bad-txns-inputs-missingorspent", code=RPC_TRANSACTION_ERROR)
            if coin.coinbase and height - coin.height < COINBASE_MATURITY:
                raise _PolicyError("bad-txns-premature-spend-of-coinbase")
            total += coin.sats
        return total

    def _check_replacement(self, tx: _Tx, fee_sats: int, conflicts: set[str]) -> set[str]:
        """BIP 125 as Bitcoin Core 0.21 applies it; the txids the replacement evicts."""
        for txid in conflicts:
            old = self._mempool[txid]
            if fee_sats * old.vsize <= old.fee_sats * tx.vsize:
                detail = f"rejecting replacement {tx.txid}; new feerate <= old feerate"
                raise _PolicyError("insufficient fee", detail=detail)
        evicted: set[str] = set()
        for txid in conflicts:
            evicted.update(self._descendants(txid))
        if len(evicted) > REPLACEMENT_EVICTIONS_MAX:
            raise _PolicyError("too many potential replacements")
        parents = {i.txid for txid in conflicts for i in self._mempool[txid].inputs}
        for inp in tx.inputs:
            if inp.txid in self._mempool and inp.txid not in parents:
                raise _PolicyError("replacement-adds-unconfirmed")
        evicted_fee_sats = sum(self._mempool[txid].fee_sats for txid in evicted)
        if fee_sats < evicted_fee_sats:
            detail = f"rejecting replacement {tx.txid}, less fees than conflicting txs"
            raise _PolicyError("insufficient fee", detail=detail)
        if fee_sats - evicted_fee_sats < tx.vsize * RELAY_FEE_SAT_VB:
            detail = f"rejecting replacement {tx.txid}, not enough additional fees to relay"
            raise _PolicyError("insufficient fee", detail=detail)
        return evicted

    def _coin(self, outpoint: Outpoint, replacing: set[str]) -> _Coin | None:
        """The unspent output at ``outpoint``, in the chain or the mempool, unless a mempool
        transaction other than those being ``replacing``-ed spends it already."""
        spender = self._spenders.get(outpoint)
        if spender is not None and spender not in replacing:
            return None
        coin = self._utxos.get(outpoint)
        parent = self._mempool.get(outpoint[0])
        if coin is None and parent is not None and outpoint[1] < len(parent.outputs):
            script_hex, sats = parent.outputs[outpoint[1]]
            coin = _Coin(script_hex, sats, len(self._active), coinbase=False)
        return coin

    def _inputs_available(self, tx: _Tx) -> bool:
        if tx.external:
            return True
        try:
            self._input_sats(tx, set())
        except _PolicyError:
            return False
        return True

    # The mempool and the chain -------------------------------------------------------------------

    def _add_to_mempool(self, tx: _Tx) -> None:
        tx.time = int(self._clock().timestamp())
        tx.entry_height = len(self._active) - 1
        self._txs[tx.txid] = tx
        self._mempool[tx.txid] = tx
        if not tx.external:
            for inp in tx.inputs:
                self._spenders[inp.outpoint] = tx.txid

    def _descendants(self, txid: str) -> list[str]:
        found, stack = [txid], [txid]
        while stack:
            tx = self._mempool[stack.pop()]
            for n in range(len(tx.outputs)):
                child = self._spenders.get((tx.txid, n))
                if child is not None and child not in found:
                    found.append(child)
                    stack.append(child)
        return found

    def _remove_with_descendants(self, txid: str) -> list[str]:
        removed = self._descendants(txid)
        for gone in removed:
            tx = self._mempool.pop(gone)
            for inp in tx.inputs:
                if self._spenders.get(inp.outpoint) == gone:
                    del self._spenders[inp.outpoint]
        return removed

    def _with_ancestors(self, tx: _Tx) -> Iterator[_Tx]:
        seen: set[str] = set()
        stack = [tx]
        while stack:
            current = stack.pop()
            if current.txid in seen:
                continue
            seen.add(current.txid)
            yield current
            stack.extend(self._mempool[i.txid] for i in current.inputs if i.txid in self._mempool)

    def _mempool_in_order(self) -> list[_Tx]:
        return self._in_order(self._mempool)

    @staticmethod
    def _in_order(txs: dict[str, _Tx]) -> list[_Tx]:
        """``txs`` with every parent before its children (a block's order)."""
        ordered: list[_Tx] = []
        placed: set[str] = set()
        for tx in txs.values():
            stack: list[tuple[_Tx, bool]] = [(tx, False)]
            while stack:
                current, parents_placed = stack.pop()
                if current.txid in placed:
                    continue
                if parents_placed:
                    placed.add(current.txid)
                    ordered.append(current)
                    continue
                stack.append((current, True))
                for inp in current.inputs:
                    parent = txs.get(inp.txid)
                    if parent is not None and parent.txid not in placed:
                        stack.append((parent, False))
        return ordered

    def _new_block(self, txs: list[_Tx]) -> _Block:
        self._counter += 1
        height = len(self._active)
        previous = self._active[-1] if self._active else None
        # The coinbase's scriptSig holds the height (BIP 34) and the counter, so that every
        # coinbase, on any branch, has its own txid.
        tag = height.to_bytes(4, "little") + self._counter.to_bytes(8, "little")
        fees = sum(tx.fee_sats for tx in txs)
        coinbase_input = (b"\x00" * 32, 0xFFFFFFFF, tag, 0xFFFFFFFF)
        parsed = _build([coinbase_input], [(MINER_SCRIPT_HEX, SUBSIDY_SATS + fees)])
        coinbase = _from_embit(parsed, parsed.serialize())
        coinbase.coinbase = True
        self._txs[coinbase.txid] = coinbase
        txids = (coinbase.txid, *(tx.txid for tx in txs))
        header = b"%d|%s|%d|" % (height, (previous or "").encode(), self._counter)
        block_hash = _sha256d(header + "".join(txids).encode())[::-1].hex()
        time = int(self._clock().timestamp())
        if previous is not None:
            time = max(time, self._blocks[previous].time)
        return _Block(block_hash, height, previous, time, txids)

    def _connect(self, block: _Block) -> None:
        self._blocks[block.hash] = block
        self._active.append(block.hash)
        for txid in block.txids:
            tx = self._txs[txid]
            if not (tx.coinbase or tx.external):
                for inp in tx.inputs:
                    block.undo[inp.outpoint] = self._spend(inp.outpoint)
            for n, (script_hex, sats) in enumerate(tx.outputs):
                self._add_coin((txid, n), _Coin(script_hex, sats, block.height, tx.coinbase))
            self._tx_block[txid] = block.hash
            if self._mempool.pop(txid, None) is not None:
                for inp in tx.inputs:
                    self._spenders.pop(inp.outpoint, None)

    def _disconnect_tip(self) -> _Block:
        block = self._blocks[self._active.pop()]
        # Last transaction first: a child in the block gives its parent's output back before the
        # parent's outputs are taken away.
        for txid in reversed(block.txids):
            tx = self._txs[txid]
            for n in range(len(tx.outputs)):
                self._spend((txid, n))
            if not (tx.coinbase or tx.external):
                for inp in tx.inputs:
                    self._add_coin(inp.outpoint, block.undo.pop(inp.outpoint))
            del self._tx_block[txid]
        return block

    def _add_coin(self, outpoint: Outpoint, coin: _Coin) -> None:
        self._utxos[outpoint] = coin
        self._utxos_by_script.setdefault(coin.script_hex, set()).add(outpoint)

    def _spend(self, outpoint: Outpoint) -> _Coin:
        coin = self._utxos.pop(outpoint)
        scripts = self._utxos_by_script[coin.script_hex]
        scripts.discard(outpoint)
        if not scripts:
            del self._utxos_by_script[coin.script_hex]
        return coin

    # Answers -------------------------------------------------------------------------------------

    @contextmanager
    def _answer(self) -> Iterator[None]:
        """A node call's scope: the chain's lock, and :class:`NodeUnavailableError` while down."""
        with self._lock:
            if self.down:
                raise NodeUnavailableError("the in-memory node is down")
            yield

    def _block(self, block_hash: str, missing: str) -> _Block:
        block = self._blocks.get(block_hash)
        if block is None:
            raise NotFoundError(missing, code=RPC_INVALID_ADDRESS_OR_KEY)
        return block

    def _on_active_chain(self, block: _Block) -> bool:
        return block.height < len(self._active) and self._active[block.height] == block.hash

    def _confirmations(self, block: _Block) -> int:
        # Core answers -1 for a block off the active chain.
        return len(self._active) - block.height if self._on_active_chain(block) else -1

    def _with_block(self, answer: JsonObject, block: _Block) -> JsonObject:
        answer["blockhash"] = block.hash
        if self._on_active_chain(block):
            answer["confirmations"] = len(self._active) - block.height
            answer["time"] = block.time
            answer["blocktime"] = block.time
        else:
            answer["confirmations"] = 0
        return answer

    def _tx_json(self, tx: _Tx, *, with_hex: bool = False) -> JsonObject:
        vin: list[JsonObject] = []
        for inp in tx.inputs:
            entry: JsonObject
            if tx.coinbase:
                entry = {"coinbase": inp.script_sig_hex}
            else:
                entry = {
                    "txid": inp.txid,
                    "vout": inp.vout,
                    "scriptSig": {"asm": "", "hex": inp.script_sig_hex},
                }
            if inp.witness:
                entry["txinwitness"] = list(inp.witness)
            entry["sequence"] = inp.sequence
            vin.append(entry)
        answer: JsonObject = {
            "txid": tx.txid,
            "hash": tx.wtxid,
            "version": tx.version,
            "size": tx.size,
            "vsize": tx.vsize,
            "weight": tx.weight,
            "locktime": tx.locktime,
            "vin": vin,
            "vout": [
                {
                    "value": _coins(sats),
                    "n": n,
                    "scriptPubKey": dict(_script_pub_key(script_hex, self.chain)),
                }
                for n, (script_hex, sats) in enumerate(tx.outputs)
            ],
        }
        if with_hex:
            answer["hex"] = tx.raw_hex
        return answer
