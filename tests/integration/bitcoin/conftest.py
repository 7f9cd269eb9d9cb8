"""The real node of the Bitcoin integration tests: one ``litecoind -regtest`` per test module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.bitcoin_regtest import RegtestNode

MATURITY = 100  # a coinbase output can be spent after 100 more blocks


@pytest.fixture(scope="module")
def litecoind() -> Iterator[RegtestNode]:
    """A started node whose wallet holds spendable coins (101 blocks mined to it)."""
    node = RegtestNode()
    try:
        node.start()
        node.mine(MATURITY + 1)
        yield node
    finally:
        node.close()
