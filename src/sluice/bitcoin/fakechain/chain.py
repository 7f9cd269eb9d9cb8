"""The embedded chain itself: :class:`FakeChain`, the node's answers plus the controls tests and the
demo drive it with (mine, fund, evict, reorg, the fee estimate)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from decimal import Decimal

from sluice.bitcoin.fakechain.answers import NodeAnswers
from sluice.bitcoin.fakechain.records import RELAY_FEE_SAT_VB, build, from_embit


class FakeChain(NodeAnswers):
    """An in-memory chain with a mempool, answering Bitcoin Core's RPC calls (see the package)."""

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

    def fund(
        self, script_hex: str, sats: int, *, mine: bool = False, sender_script: str | None = None
    ) -> tuple[str, int]:
        """Pay ``sats`` to ``script_hex`` from an outside source, into the mempool (and a block
        when ``mine``); answers the new output's ``(txid, vout)``. ``sender_script``: the
        output script the payment spends from (default: a P2WPKH script of its own)."""
        txid = self.fund_many([(script_hex, sats)], sender_script=sender_script)
        if mine:
            self.mine()
        return txid, 0

    def fund_many(self, outputs: list[tuple[str, int]], *, sender_script: str | None = None) -> str:
        """One funding transaction paying each ``(script_hex, sats)``, into the mempool. It
        spends an output of ``sender_script`` (default: a P2WPKH script made for it) of an outside
        transaction that ``getrawtransaction`` answers, as a node with a transaction index
        does, so the sender's address can be read (and screened) like a real deposit's."""
        if not outputs or any(sats <= 0 for _, sats in outputs):
            raise ValueError("funding needs at least one output, each of a positive amount")
        with self._lock:
            self._counter += 1
            seed = hashlib.sha256(b"fakechain funding %d" % self._counter).digest()
            sender = sender_script or "0014" + seed[:20].hex()
            total = sum(sats for _, sats in outputs)
            origin = build([(seed, 0, b"\x51", 0xFFFFFFFE)], [(sender, total + 100_000)])
            source = from_embit(origin, origin.serialize())
            source.external = True
            self._sources[source.txid] = source
            parsed = build([(bytes.fromhex(source.txid), 0, b"\x51", 0xFFFFFFFE)], outputs)
            tx = from_embit(parsed, parsed.serialize())
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
