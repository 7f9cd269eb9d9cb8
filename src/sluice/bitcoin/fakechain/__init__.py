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

from sluice.bitcoin.fakechain.chain import FakeChain
from sluice.bitcoin.fakechain.records import MINER_SCRIPT_HEX

__all__ = ["MINER_SCRIPT_HEX", "FakeChain"]
