"""The embedded chain's mempool policy: what a node refuses (missing or spent inputs, immature
coinbase, dust, fees below the relay floor or above ``maxfeerate``, inputs without a witness or a
scriptSig) and BIP 125 replacement as Bitcoin Core 0.21 applies it.
"""

from __future__ import annotations

from sluice.bitcoin.fakechain.records import (
    COINBASE_MATURITY,
    MAX_FEE_RATE_SAT_VB,
    RELAY_FEE_SAT_VB,
    REPLACEMENT_EVICTIONS_MAX,
    RPC_TRANSACTION_ALREADY_IN_CHAIN,
    RPC_TRANSACTION_ERROR,
    Coin,
    Outpoint,
    PolicyError,
    Tx,
    dust_limit_sats,
)
from sluice.bitcoin.fakechain.state import ChainState


class MempoolPolicy(ChainState):
    """The checks a transaction passes before it enters the mempool."""

    # The mempool's rules -------------------------------------------------------------------------

    def _check(self, tx: Tx) -> set[str]:
        """The txids taking ``tx`` in would replace; :class:`PolicyError` when refused."""
        if not tx.inputs:
            raise PolicyError("bad-txns-vin-empty")
        if not tx.outputs:
            raise PolicyError("bad-txns-vout-empty")
        if len({i.outpoint for i in tx.inputs}) != len(tx.inputs):
            raise PolicyError("bad-txns-inputs-duplicate")
        if any(i.txid == "00" * 32 for i in tx.inputs):
            raise PolicyError("coinbase")
        if any(sats > 21_000_000 * 100_000_000 for _, sats in tx.outputs):
            raise PolicyError("bad-txns-vout-toolarge")
        for script_hex, sats in tx.outputs:
            if sats < dust_limit_sats(script_hex, self.chain.dust_relay_fee_sat_per_kvb):
                raise PolicyError("dust")
        if tx.txid in self._mempool:
            raise PolicyError("txn-already-in-mempool")
        conflicts = {s for i in tx.inputs if (s := self._spenders.get(i.outpoint))}
        for txid in conflicts:
            if not self._mempool[txid].signals_rbf:
                raise PolicyError("txn-mempool-conflict", detail=f"spent by {txid}")
        fee_sats = self._input_sats(tx, conflicts) - sum(sats for _, sats in tx.outputs)
        if fee_sats < 0:
            raise PolicyError("bad-txns-in-belowout")
        if fee_sats < tx.vsize * RELAY_FEE_SAT_VB:
            raise PolicyError("min relay fee not met", detail=f"{fee_sats} < {tx.vsize}")
        if fee_sats > tx.vsize * MAX_FEE_RATE_SAT_VB:
            raise PolicyError("max-fee-exceeded", code=RPC_TRANSACTION_ERROR)
        evicted = self._check_replacement(tx, fee_sats, conflicts) if conflicts else set()
        for inp in tx.inputs:
            if not inp.witness and not inp.script_sig_hex:
                reason = "mandatory-script-verify-flag-failed"
                detail = "Operation not valid with the current stack size"
                raise PolicyError(f"{reason} ({detail})")
        tx.fee_sats = fee_sats
        return evicted

    def _input_sats(self, tx: Tx, conflicts: set[str]) -> int:
        total = 0
        height = len(self._active)  # of the block that would include it
        for inp in tx.inputs:
            if inp.txid in conflicts:
                raise PolicyError("bad-txns-spends-conflicting-tx")
            coin = self._coin(inp.outpoint, conflicts)
            if coin is None:
                if any((tx.txid, n) in self._utxos for n in range(len(tx.outputs))):
                    raise PolicyError("txn-already-known", code=RPC_TRANSACTION_ALREADY_IN_CHAIN)
                raise PolicyError("bad-txns-inputs-missingorspent", code=RPC_TRANSACTION_ERROR)
            if coin.coinbase and height - coin.height < COINBASE_MATURITY:
                raise PolicyError("bad-txns-premature-spend-of-coinbase")
            total += coin.sats
        return total

    def _check_replacement(self, tx: Tx, fee_sats: int, conflicts: set[str]) -> set[str]:
        """BIP 125 as Bitcoin Core 0.21 applies it; the txids the replacement evicts."""
        for txid in conflicts:
            old = self._mempool[txid]
            if fee_sats * old.vsize <= old.fee_sats * tx.vsize:
                detail = f"rejecting replacement {tx.txid}; new feerate <= old feerate"
                raise PolicyError("insufficient fee", detail=detail)
        evicted: set[str] = set()
        for txid in conflicts:
            evicted.update(self._descendants(txid))
        if len(evicted) > REPLACEMENT_EVICTIONS_MAX:
            raise PolicyError("too many potential replacements")
        parents = {i.txid for txid in conflicts for i in self._mempool[txid].inputs}
        for inp in tx.inputs:
            if inp.txid in self._mempool and inp.txid not in parents:
                raise PolicyError("replacement-adds-unconfirmed")
        evicted_fee_sats = sum(self._mempool[txid].fee_sats for txid in evicted)
        if fee_sats < evicted_fee_sats:
            detail = f"rejecting replacement {tx.txid}, less fees than conflicting txs"
            raise PolicyError("insufficient fee", detail=detail)
        if fee_sats - evicted_fee_sats < tx.vsize * RELAY_FEE_SAT_VB:
            detail = f"rejecting replacement {tx.txid}, not enough additional fees to relay"
            raise PolicyError("insufficient fee", detail=detail)
        return evicted

    def _coin(self, outpoint: Outpoint, replacing: set[str]) -> Coin | None:
        """The unspent output at ``outpoint``, in the chain or the mempool, unless a mempool
        transaction other than those being ``replacing``-ed spends it already."""
        spender = self._spenders.get(outpoint)
        if spender is not None and spender not in replacing:
            return None
        coin = self._utxos.get(outpoint)
        parent = self._mempool.get(outpoint[0])
        if coin is None and parent is not None and outpoint[1] < len(parent.outputs):
            script_hex, sats = parent.outputs[outpoint[1]]
            coin = Coin(script_hex, sats, len(self._active), coinbase=False)
        return coin

    def _inputs_available(self, tx: Tx) -> bool:
        if tx.external:
            return True
        try:
            self._input_sats(tx, set())
        except PolicyError:
            return False
        return True
