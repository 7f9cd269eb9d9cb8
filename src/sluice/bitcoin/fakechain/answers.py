"""The embedded chain's answers to :class:`~sluice.ports.bitcoin.BitcoinNode`'s calls, in Bitcoin
Core's JSON shapes and with its error codes; built fresh on every call, so callers may keep or
change them. ``scantxoutset``'s descriptors are parsed by embit (cached) and their checksums
verified as Core does.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from functools import lru_cache
from typing import Any

from embit.base import EmbitError  # type: ignore[import-untyped]
from embit.descriptor import Descriptor  # type: ignore[import-untyped]
from embit.descriptor.checksum import checksum  # type: ignore[import-untyped]
from embit.script import Script  # type: ignore[import-untyped]

from sluice.bitcoin.fakechain.policy import MempoolPolicy
from sluice.bitcoin.fakechain.records import (
    RPC_INVALID_ADDRESS_OR_KEY,
    RPC_INVALID_PARAMETER,
    RPC_TRANSACTION_ALREADY_IN_CHAIN,
    SCAN_RANGE_DEFAULT,
    SCAN_RANGE_MAX,
    Block,
    PolicyError,
    Tx,
    coins,
    decode,
    sha256d,
)
from sluice.domain.chains import Chain
from sluice.ports.bitcoin import JsonObject, NodeRejectedError, NodeUnavailableError, NotFoundError

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


class NodeAnswers(MempoolPolicy):
    """The node's calls, each under the chain's lock and refused while ``down``."""

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
                "merkleroot": sha256d("".join(block.txids).encode())[::-1].hex(),
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
            if txid in self._sources:  # an outside transaction a funding spends
                return self._tx_json(self._sources[txid], with_hex=True)
            message = "No such mempool or blockchain transaction"
            raise NotFoundError(message, code=RPC_INVALID_ADDRESS_OR_KEY)

    def sendrawtransaction(self, raw_hex: str) -> str:
        with self._answer():
            tx = decode(raw_hex)
            if tx.txid in self._mempool:
                return tx.txid  # Core 0.21 answers the txid again, and relays it
            if any((tx.txid, n) in self._utxos for n in range(len(tx.outputs))):
                message = "Transaction already in block chain"
                raise NodeRejectedError(message, code=RPC_TRANSACTION_ALREADY_IN_CHAIN)
            try:
                evicted = self._check(tx)
            except PolicyError as exc:
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
                tx = decode(raw_hex)
                answer: JsonObject = {"txid": tx.txid, "wtxid": tx.wtxid}
                try:
                    self._check(tx)
                except PolicyError as exc:
                    missing = exc.reason == "bad-txns-inputs-missingorspent"
                    answer["allowed"] = False
                    answer["reject-reason"] = "missing-inputs" if missing else exc.reason
                else:
                    answer["allowed"] = True
                    answer["vsize"] = tx.vsize
                    answer["fees"] = {"base": coins(tx.fee_sats)}
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
                                "amount": coins(coin.sats),
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
                "total_amount": coins(total),
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
                "fee": coins(tx.fee_sats),
                "fees": {"base": coins(tx.fee_sats), "modified": coins(tx.fee_sats)},
                "time": tx.time,
                "height": tx.entry_height,
                "wtxid": tx.wtxid,
                "depends": depends,
                "spentby": spent_by,
                "bip125-replaceable": any(t.signals_rbf for t in self._with_ancestors(tx)),
            }

    # Answers -------------------------------------------------------------------------------------

    @contextmanager
    def _answer(self) -> Iterator[None]:
        """A node call's scope: the chain's lock, and :class:`NodeUnavailableError` while down."""
        with self._lock:
            if self.down:
                raise NodeUnavailableError("the in-memory node is down")
            yield

    def _block(self, block_hash: str, missing: str) -> Block:
        block = self._blocks.get(block_hash)
        if block is None:
            raise NotFoundError(missing, code=RPC_INVALID_ADDRESS_OR_KEY)
        return block

    def _on_active_chain(self, block: Block) -> bool:
        return block.height < len(self._active) and self._active[block.height] == block.hash

    def _confirmations(self, block: Block) -> int:
        # Core answers -1 for a block off the active chain.
        return len(self._active) - block.height if self._on_active_chain(block) else -1

    def _with_block(self, answer: JsonObject, block: Block) -> JsonObject:
        answer["blockhash"] = block.hash
        if self._on_active_chain(block):
            answer["confirmations"] = len(self._active) - block.height
            answer["time"] = block.time
            answer["blocktime"] = block.time
        else:
            answer["confirmations"] = 0
        return answer

    def _tx_json(self, tx: Tx, *, with_hex: bool = False) -> JsonObject:
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
                    "value": coins(sats),
                    "n": n,
                    "scriptPubKey": dict(_script_pub_key(script_hex, self.chain)),
                }
                for n, (script_hex, sats) in enumerate(tx.outputs)
            ],
        }
        if with_hex:
            answer["hex"] = tx.raw_hex
        return answer
