"""The Bitcoin custody benchmark (:mod:`sluice.bench.bitcoin`) against a real node.

A tiny run with ``node="litecoind"``: the benchmark starts its own ``litecoind -regtest``, mines
the wallet's coins, makes 2 blocks each paying 30 outputs (3 of them to customers' deposit
addresses) with ``sendmany``, reads them raw and through the deposit watcher, and stops the node.
The JSON line names the node's release, counts the outputs the node's blocks hold, and the
watcher found every custody output; no wall-clock bound is asserted. Without ``litecoind`` the
test skips (fails under ``CI=true``), as the other tests of the real node do.
"""

from __future__ import annotations

import pytest

from sluice.bench.bitcoin import BitcoinBenchSettings, measure
from tests.bitcoin_regtest import litecoind_path


def test_tiny_run_against_litecoind() -> None:
    litecoind_path()
    settings = BitcoinBenchSettings(
        blocks=2,
        outputs_per_block=30,
        custody_per_block=3,
        customers=10,
        rounds=2,
        sign_inputs=(1, 3),
        sign_runs=1,
        node="litecoind",
    )
    line = measure(settings)
    assert line["node"].startswith("litecoind 0.21")
    assert line["blocks"] == 2
    # Each block: the coinbase (reward and witness commitment) and the payment with its change.
    assert 2 * 31 <= line["outputs"] <= 2 * 35
    assert line["transactions"] == 4
    assert line["custody_outputs"] == 6
    assert line["raw_blocks_per_s"] > 0
    assert line["watcher_blocks_per_s"] > 0
    assert line["ratio"] == pytest.approx(
        line["watcher_blocks_per_s"] / line["raw_blocks_per_s"], rel=0.05, abs=0.002
    )
    assert list(line["sign_ms"]) == ["1", "3"]
    assert line["libsecp256k1"] is True
    assert line["ratio_target_met"] == (line["ratio"] >= 0.5)
