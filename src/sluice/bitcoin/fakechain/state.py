"""The embedded chain's state and its bookkeeping: blocks connected and disconnected (with the
coins each spent, to give them back on a reorg), the UTXO set by outpoint and by script, and the
mempool with who spends what. No checks here: what may enter the mempool is
:mod:`~sluice.bitcoin.fakechain.policy`'s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import Decimal

from sluice.bitcoin.fakechain.records import (
    MINER_SCRIPT_HEX,
    SUBSIDY_SATS,
    Block,
    Coin,
    Outpoint,
    Tx,
    build,
    from_embit,
    sha256d,
)
from sluice.domain.chains import CHAINS, Chain


class ChainState:
    """The chain, the mempool and the UTXO set of a :class:`~sluice.bitcoin.fakechain.FakeChain`,
    and the moves between them; every caller holds ``_lock``."""

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
        self._blocks: dict[str, Block] = {}  # every block ever mined, orphans included
        self._active: list[str] = []  # the active chain's block hashes by height
        self._txs: dict[str, Tx] = {}  # every transaction ever seen
        self._tx_block: dict[str, str] = {}  # txid → its block on the active chain
        self._utxos: dict[Outpoint, Coin] = {}  # the chain's unspent outputs
        self._utxos_by_script: dict[str, set[Outpoint]] = {}
        self._mempool: dict[str, Tx] = {}
        self._spenders: dict[Outpoint, str] = {}  # outpoint → the mempool tx spending it
        # The outside transactions funding transactions spend: confirmed long before this chain
        # began, answered by getrawtransaction so that a funding's sender can be read.
        self._sources: dict[str, Tx] = {}
        self._connect(self._new_block([]))

    # The mempool and the chain -------------------------------------------------------------------

    def _add_to_mempool(self, tx: Tx) -> None:
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

    def _with_ancestors(self, tx: Tx) -> Iterator[Tx]:
        seen: set[str] = set()
        stack = [tx]
        while stack:
            current = stack.pop()
            if current.txid in seen:
                continue
            seen.add(current.txid)
            yield current
            stack.extend(self._mempool[i.txid] for i in current.inputs if i.txid in self._mempool)

    def _mempool_in_order(self) -> list[Tx]:
        return self._in_order(self._mempool)

    @staticmethod
    def _in_order(txs: dict[str, Tx]) -> list[Tx]:
        """``txs`` with every parent before its children (a block's order)."""
        ordered: list[Tx] = []
        placed: set[str] = set()
        for tx in txs.values():
            stack: list[tuple[Tx, bool]] = [(tx, False)]
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

    def _new_block(self, txs: list[Tx]) -> Block:
        self._counter += 1
        height = len(self._active)
        previous = self._active[-1] if self._active else None
        # The coinbase's scriptSig holds the height (BIP 34) and the counter, so that every
        # coinbase, on any branch, has its own txid.
        tag = height.to_bytes(4, "little") + self._counter.to_bytes(8, "little")
        fees = sum(tx.fee_sats for tx in txs)
        coinbase_input = (b"\x00" * 32, 0xFFFFFFFF, tag, 0xFFFFFFFF)
        parsed = build([coinbase_input], [(MINER_SCRIPT_HEX, SUBSIDY_SATS + fees)])
        coinbase = from_embit(parsed, parsed.serialize())
        coinbase.coinbase = True
        self._txs[coinbase.txid] = coinbase
        txids = (coinbase.txid, *(tx.txid for tx in txs))
        header = b"%d|%s|%d|" % (height, (previous or "").encode(), self._counter)
        block_hash = sha256d(header + "".join(txids).encode())[::-1].hex()
        time = int(self._clock().timestamp())
        if previous is not None:
            time = max(time, self._blocks[previous].time)
        return Block(block_hash, height, previous, time, txids)

    def _connect(self, block: Block) -> None:
        self._blocks[block.hash] = block
        self._active.append(block.hash)
        for txid in block.txids:
            tx = self._txs[txid]
            if not (tx.coinbase or tx.external):
                for inp in tx.inputs:
                    block.undo[inp.outpoint] = self._spend(inp.outpoint)
            for n, (script_hex, sats) in enumerate(tx.outputs):
                self._add_coin((txid, n), Coin(script_hex, sats, block.height, tx.coinbase))
            self._tx_block[txid] = block.hash
            if self._mempool.pop(txid, None) is not None:
                for inp in tx.inputs:
                    self._spenders.pop(inp.outpoint, None)

    def _disconnect_tip(self) -> Block:
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

    def _add_coin(self, outpoint: Outpoint, coin: Coin) -> None:
        self._utxos[outpoint] = coin
        self._utxos_by_script.setdefault(coin.script_hex, set()).add(outpoint)

    def _spend(self, outpoint: Outpoint) -> Coin:
        coin = self._utxos.pop(outpoint)
        scripts = self._utxos_by_script[coin.script_hex]
        scripts.discard(outpoint)
        if not scripts:
            del self._utxos_by_script[coin.script_hex]
        return coin
