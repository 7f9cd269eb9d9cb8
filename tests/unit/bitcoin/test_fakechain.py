"""The in-memory Bitcoin chain (``sluice.bitcoin.fakechain``) answers as Bitcoin Core does.

Drives a ``FakeChain`` through its controls (fund, mine, reorg, evict, fee rate, down) and its
node calls, with real transactions built and signed here with embit (single-key P2WPKH spends;
the chain does not check signatures, the integration tests against litecoind do). Covers: funding
and mining, confirmations, reorgs of depth 1-3 that move a transaction to another block or drop it
with what spends it, BIP 125 replacement (accepted when signalled and paying more, refused
otherwise), double spends against the chain, the mempool's other refusals, fee estimates with and
without a rate, a node that is down, unknown blocks and transactions, scantxoutset over raw and
ranged multisig descriptors, the size and weight of a transaction, and deterministic hashes. A
hypothesis property runs random histories (funding, spends, fee bumps, mining, reorgs with drops,
evictions) and after each step rebuilds the UTXO set from the active blocks, through the public
calls only, to compare it with what scantxoutset answers and what the mempool spends.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from embit import ec, script  # type: ignore[import-untyped]
from embit.bip32 import HDKey  # type: ignore[import-untyped]
from embit.descriptor import Descriptor  # type: ignore[import-untyped]
from embit.descriptor.checksum import add_checksum  # type: ignore[import-untyped]
from embit.networks import NETWORKS  # type: ignore[import-untyped]
from embit.transaction import (  # type: ignore[import-untyped]
    SIGHASH,
    Transaction,
    TransactionInput,
    TransactionOutput,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.bitcoin.fakechain import MINER_SCRIPT_HEX, FakeChain
from sluice.domain.chains import CHAINS
from sluice.ports.bitcoin import NodeRejectedError, NodeUnavailableError, NotFoundError

NOW = datetime(2026, 1, 1, tzinfo=UTC)
KEY = ec.PrivateKey(hashlib.sha256(b"fakechain test key").digest())
PUBLIC_KEY = KEY.get_public_key()
OURS = script.p2wpkh(PUBLIC_KEY).data.hex()
ELSEWHERE = "0014" + "ab" * 20
RBF = 0xFFFFFFFD
FINAL = 0xFFFFFFFE


def spend(
    coins: list[tuple[str, int, int]],
    outputs: list[tuple[str, int]],
    *,
    sequence: int = RBF,
    sign: bool = True,
) -> str:
    """A transaction spending our P2WPKH ``coins`` (txid, vout, sats) to ``outputs``, signed."""
    tx = Transaction(
        version=2,
        vin=[
            TransactionInput(bytes.fromhex(txid), vout, sequence=sequence)
            for txid, vout, _ in coins
        ],
        vout=[TransactionOutput(sats, script.Script(bytes.fromhex(s))) for s, sats in outputs],
        locktime=0,
    )
    if sign:
        for index, (_, _, sats) in enumerate(coins):
            digest = tx.sighash_segwit(index, script.p2pkh(PUBLIC_KEY), sats)
            signature = KEY.sign(digest).serialize() + bytes([SIGHASH.ALL])
            tx.vin[index].witness = script.Witness([signature, PUBLIC_KEY.sec()])
    return str(tx.serialize().hex())


def txid_of(raw_hex: str) -> str:
    return str(Transaction.parse(bytes.fromhex(raw_hex)).txid().hex())


@pytest.fixture
def chain() -> FakeChain:
    return FakeChain(clock=lambda: NOW)


def funded(chain: FakeChain, sats: int = 100_000) -> tuple[str, int, int]:
    txid, vout = chain.fund(OURS, sats, mine=True)
    return txid, vout, sats


def block_of(chain: FakeChain, txid: str) -> str:
    return str(chain.getrawtransaction(txid)["blockhash"])


def test_a_new_chain_is_its_genesis_block(chain: FakeChain) -> None:
    info = chain.getblockchaininfo()
    assert info["chain"] == "regtest"
    assert info["blocks"] == 0 == chain.tip_height
    assert info["initialblockdownload"] is False
    genesis = chain.getblock(chain.getblockhash(0))
    assert genesis["hash"] == info["bestblockhash"]
    assert genesis["height"] == 0
    assert "previousblockhash" not in genesis
    assert list(genesis["tx"][0]["vin"][0]) == ["coinbase", "sequence"]


def test_litecoin_regtest_answers_the_nodes_chain_name_and_its_addresses() -> None:
    chain = FakeChain(CHAINS["litecoin-regtest"])
    txid, _ = chain.fund(OURS, 50_000)
    assert chain.getblockchaininfo()["chain"] == "regtest"
    output = chain.getrawtransaction(txid)["vout"][0]
    assert output["scriptPubKey"]["address"].startswith("rltc1q")


def test_funding_waits_in_the_mempool_and_goes_into_the_first_mined_block(
    chain: FakeChain,
) -> None:
    txid, vout = chain.fund(OURS, 123_456)
    assert vout == 0
    assert chain.mempool_txids == [txid]
    assert chain.getmempoolentry(txid)["height"] == 0
    unconfirmed = chain.getrawtransaction(txid)
    assert "blockhash" not in unconfirmed
    assert "confirmations" not in unconfirmed

    hashes = chain.mine(3)

    assert chain.tip_height == 3
    assert chain.mempool_txids == []
    blocks = [chain.getblock(h) for h in hashes]
    assert [len(b["tx"]) for b in blocks] == [2, 1, 1]
    assert [b["height"] for b in blocks] == [1, 2, 3]
    assert [b["previousblockhash"] for b in blocks[1:]] == hashes[:2]
    assert all("coinbase" in b["tx"][0]["vin"][0] for b in blocks)
    paid = blocks[0]["tx"][1]
    assert paid["txid"] == txid
    assert paid["vout"][0]["value"] == Decimal("0.00123456")
    assert paid["vout"][0]["scriptPubKey"]["hex"] == OURS
    assert len(txid) == 64
    assert chain.fund(OURS, 123_456)[0] != txid  # the same payment again is another transaction


def test_confirmations_count_from_the_block_that_holds_the_transaction(chain: FakeChain) -> None:
    txid, _ = chain.fund(OURS, 10_000, mine=True)
    block_hash = block_of(chain, txid)
    assert chain.getrawtransaction(txid)["confirmations"] == 1
    chain.mine(5)
    answer = chain.getrawtransaction(txid, block_hash)
    assert answer["confirmations"] == 6
    assert answer["in_active_chain"] is True
    assert chain.getblock(block_hash)["confirmations"] == 6
    assert chain.getblock(chain.getblockhash(chain.tip_height))["confirmations"] == 1


def test_unknown_blocks_and_transactions_are_not_found(chain: FakeChain) -> None:
    with pytest.raises(NotFoundError) as unknown_block:
        chain.getblock("00" * 32)
    assert unknown_block.value.code == -5
    with pytest.raises(NotFoundError):
        chain.getblockhash(1)
    with pytest.raises(NotFoundError):
        chain.getrawtransaction("11" * 32)
    txid, _ = chain.fund(OURS, 10_000, mine=True)
    with pytest.raises(NotFoundError):
        chain.getrawtransaction(txid, chain.getblockhash(0))
    with pytest.raises(NotFoundError):
        chain.getmempoolentry(txid)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_reorg_returns_transactions_to_the_mempool_and_mines_them_into_another_block(
    chain: FakeChain, depth: int
) -> None:
    chain.mine(2)
    txid, _ = chain.fund(OURS, 40_000, mine=True)
    chain.mine(depth - 1)
    old_block = block_of(chain, txid)
    old_tip = chain.tip_height
    old_hashes = [chain.getblockhash(h) for h in range(old_tip - depth + 1, old_tip + 1)]

    new_hashes = chain.reorg(depth)

    assert len(new_hashes) == depth + 1
    assert chain.tip_height == old_tip + 1
    assert not set(new_hashes) & set(old_hashes)
    new_block = block_of(chain, txid)
    assert new_block == new_hashes[0] != old_block
    assert chain.getblock(new_block)["height"] == chain.getblock(old_block)["height"]
    assert chain.getrawtransaction(txid)["confirmations"] == depth + 1
    assert chain.getblock(old_block)["confirmations"] == -1
    orphaned = chain.getrawtransaction(txid, old_block)
    assert orphaned["in_active_chain"] is False
    assert orphaned["confirmations"] == 0
    assert chain.getblock(new_hashes[0])["previousblockhash"] == chain.getblockhash(2)


def test_a_reorg_can_leave_the_returned_transactions_unconfirmed(chain: FakeChain) -> None:
    txid, _ = chain.fund(OURS, 40_000, mine=True)
    chain.reorg(1, include_mempool=False)
    assert chain.mempool_txids == [txid]
    assert "blockhash" not in chain.getrawtransaction(txid)


def test_a_reorg_that_drops_a_transaction_drops_what_spends_it(chain: FakeChain) -> None:
    coin = funded(chain)
    child = spend([coin], [(OURS, 99_000)])
    child_txid = chain.sendrawtransaction(child)
    chain.mine()
    grandchild_txid = chain.sendrawtransaction(spend([(child_txid, 0, 99_000)], [(OURS, 98_000)]))
    assert chain.tip_height == 2

    chain.reorg(2, drop_txids=[coin[0]], blocks=3)

    assert chain.tip_height == 3
    assert chain.mempool_txids == []
    for gone in (coin[0], child_txid, grandchild_txid):
        with pytest.raises(NotFoundError):
            chain.getrawtransaction(gone)
    assert chain.scantxoutset([f"raw({OURS})"])["unspents"] == []


def test_a_reorg_puts_parents_before_their_children_in_the_new_block(chain: FakeChain) -> None:
    coin = funded(chain)
    child_txid = chain.sendrawtransaction(spend([coin], [(OURS, 99_000)]))
    chain.reorg(1)
    block = chain.getblock(block_of(chain, child_txid))
    assert [tx["txid"] for tx in block["tx"][1:]] == [coin[0], child_txid]


def test_reorgs_in_a_row_keep_a_parent_and_its_child_mined_together(chain: FakeChain) -> None:
    coin = funded(chain)
    child_txid = chain.sendrawtransaction(spend([coin], [(OURS, 99_000)]))
    blocks = set()
    for _ in range(3):
        chain.reorg(1, blocks=1)  # the top block, which holds both, each time
        blocks.add(block_of(chain, child_txid))
        assert block_of(chain, child_txid) == block_of(chain, coin[0])
    assert chain.tip_height == 1
    assert len(blocks) == 3
    unspents = chain.scantxoutset([f"raw({OURS})"])["unspents"]
    assert [(u["txid"], u["vout"]) for u in unspents] == [(child_txid, 0)]
    chain.reorg(1, drop_txids=[child_txid], include_mempool=False)
    assert chain.mempool_txids == [coin[0]]
    assert chain.scantxoutset([f"raw({OURS})"])["unspents"] == []


def test_a_reorg_refuses_an_unknown_drop_or_too_deep_a_fork(chain: FakeChain) -> None:
    chain.mine(2)
    tip = chain.getblockhash(2)
    with pytest.raises(ValueError, match="not in the disconnected"):
        chain.reorg(1, drop_txids=["22" * 32])
    assert chain.getblockhash(2) == tip  # refused before anything changed
    with pytest.raises(ValueError, match="cannot reorg"):
        chain.reorg(3)


def test_a_signalled_transaction_is_replaced_by_one_paying_more(chain: FakeChain) -> None:
    coin = funded(chain)
    first = chain.sendrawtransaction(spend([coin], [(ELSEWHERE, 90_000), (OURS, 9_000)]))
    child = chain.sendrawtransaction(spend([(first, 1, 9_000)], [(OURS, 8_000)]))
    assert chain.getmempoolentry(first)["bip125-replaceable"] is True
    assert chain.getmempoolentry(first)["fees"]["base"] == Decimal("0.00001000")

    bumped = chain.sendrawtransaction(spend([coin], [(ELSEWHERE, 90_000), (OURS, 6_000)]))

    assert bumped != first
    assert chain.mempool_txids == [bumped]  # the replaced one and its child are gone
    for gone in (first, child):
        with pytest.raises(NotFoundError):
            chain.getmempoolentry(gone)
    chain.mine()
    assert chain.getrawtransaction(bumped)["confirmations"] == 1


def test_a_replacement_is_refused_when_the_original_did_not_signal(chain: FakeChain) -> None:
    coin = funded(chain)
    first = chain.sendrawtransaction(spend([coin], [(ELSEWHERE, 99_000)], sequence=FINAL))
    assert chain.getmempoolentry(first)["bip125-replaceable"] is False
    with pytest.raises(NodeRejectedError, match="txn-mempool-conflict") as refused:
        chain.sendrawtransaction(spend([coin], [(ELSEWHERE, 90_000)]))
    assert refused.value.code == -26
    assert chain.mempool_txids == [first]


@pytest.mark.parametrize(
    "replacement_fee_sats",
    [500, 1_000, 1_050],  # lower, equal, and higher by less than 1 sat/vB of its 110 vB
)
def test_a_replacement_must_pay_more_by_at_least_the_relay_fee(
    chain: FakeChain, replacement_fee_sats: int
) -> None:
    coin = funded(chain)
    first = chain.sendrawtransaction(spend([coin], [(ELSEWHERE, 99_000)]))
    replacement = spend([coin], [(OURS, 100_000 - replacement_fee_sats)])
    with pytest.raises(NodeRejectedError, match="insufficient fee") as refused:
        chain.sendrawtransaction(replacement)
    assert refused.value.code == -26
    assert chain.mempool_txids == [first]
    verdict = chain.testmempoolaccept([replacement])[0]
    assert verdict["allowed"] is False
    assert verdict["reject-reason"] == "insufficient fee"


def test_a_double_spend_of_a_mined_output_is_refused(chain: FakeChain) -> None:
    coin = funded(chain)
    paid = spend([coin], [(ELSEWHERE, 99_000)])
    chain.sendrawtransaction(paid)
    chain.mine()
    double = spend([coin], [(OURS, 98_000)])
    with pytest.raises(NodeRejectedError, match="bad-txns-inputs-missingorspent") as refused:
        chain.sendrawtransaction(double)
    assert refused.value.code == -25
    verdict = chain.testmempoolaccept([double])[0]
    assert verdict == {
        "txid": txid_of(double),
        "wtxid": verdict["wtxid"],
        "allowed": False,
        "reject-reason": "missing-inputs",
    }
    with pytest.raises(NodeRejectedError, match="already in block chain") as again:
        chain.sendrawtransaction(paid)
    assert again.value.code == -27


def test_sending_a_transaction_already_in_the_mempool_answers_its_txid(chain: FakeChain) -> None:
    coin = funded(chain)
    raw = spend([coin], [(ELSEWHERE, 99_000)])
    assert chain.sendrawtransaction(raw) == chain.sendrawtransaction(raw) == txid_of(raw)
    assert chain.mempool_txids == [txid_of(raw)]
    assert chain.testmempoolaccept([raw])[0]["reject-reason"] == "txn-already-in-mempool"


def test_testmempoolaccept_judges_without_adding(chain: FakeChain) -> None:
    coin = funded(chain)
    raw = spend([coin], [(ELSEWHERE, 99_000)])
    verdict = chain.testmempoolaccept([raw])[0]
    assert verdict["allowed"] is True
    assert verdict["txid"] == txid_of(raw)
    assert verdict["fees"]["base"] == Decimal("0.00001000")
    assert chain.mempool_txids == []
    with pytest.raises(NodeRejectedError, match="exactly one"):
        chain.testmempoolaccept([raw, raw])


@pytest.mark.parametrize(
    ("outputs", "sign", "reason"),
    [
        ([(ELSEWHERE, 100_001)], True, "bad-txns-in-belowout"),
        ([(ELSEWHERE, 99_950)], True, "min relay fee not met"),
        ([(ELSEWHERE, 98_000), (OURS, 293)], True, "dust"),
        ([(ELSEWHERE, 99_000)], False, "mandatory-script-verify-flag-failed"),
    ],
)
def test_the_mempool_refuses_what_a_node_refuses(
    chain: FakeChain, outputs: list[tuple[str, int]], sign: bool, reason: str
) -> None:
    coin = funded(chain)
    raw = spend([coin], outputs, sign=sign)
    with pytest.raises(NodeRejectedError, match=reason) as refused:
        chain.sendrawtransaction(raw)
    assert refused.value.code == -26
    assert chain.mempool_txids == []


def test_an_undecodable_transaction_is_refused(chain: FakeChain) -> None:
    coin = funded(chain)
    raw = spend([coin], [(ELSEWHERE, 99_000)])
    for garbage in ("zz", raw[:-2], raw + "00"):
        with pytest.raises(NodeRejectedError, match="TX decode failed") as refused:
            chain.sendrawtransaction(garbage)
        assert refused.value.code == -22


def test_an_unspent_output_of_the_mempool_can_be_spent(chain: FakeChain) -> None:
    txid, _ = chain.fund(OURS, 50_000)
    child = chain.sendrawtransaction(spend([(txid, 0, 50_000)], [(ELSEWHERE, 49_000)]))
    assert chain.getmempoolentry(child)["depends"] == [txid]
    assert chain.getmempoolentry(txid)["spentby"] == [child]


def test_a_coinbase_output_matures_after_100_blocks(chain: FakeChain) -> None:
    coinbase = chain.getblock(chain.mine()[0])["tx"][0]
    value_sats = int(coinbase["vout"][0]["value"] * 100_000_000)
    tx = Transaction(
        version=2,
        vin=[TransactionInput(bytes.fromhex(coinbase["txid"]), 0, sequence=FINAL)],
        vout=[TransactionOutput(value_sats - 1_000, script.Script(bytes.fromhex(OURS)))],
        locktime=0,
    )
    anyone = script.Script(b"\x51")  # the miner's output is P2WSH(OP_TRUE)
    assert script.p2wsh(anyone).data.hex() == MINER_SCRIPT_HEX
    tx.vin[0].witness = script.Witness([anyone.data])
    raw = tx.serialize().hex()
    with pytest.raises(NodeRejectedError, match="premature-spend-of-coinbase"):
        chain.sendrawtransaction(raw)
    chain.mine(98)
    assert chain.testmempoolaccept([raw])[0]["allowed"] is False
    chain.mine()
    assert chain.sendrawtransaction(raw) == txid_of(raw)


def test_evicting_drops_a_transaction_and_its_descendants(chain: FakeChain) -> None:
    coin = funded(chain)
    parent = chain.sendrawtransaction(spend([coin], [(OURS, 99_000)]))
    child = chain.sendrawtransaction(spend([(parent, 0, 99_000)], [(OURS, 98_000)]))
    assert sorted(chain.evict(parent)) == sorted([parent, child])
    assert chain.mempool_txids == []
    chain.mine()
    with pytest.raises(NotFoundError):
        chain.getrawtransaction(parent)
    # The coin is unspent again, so the payment can be sent anew.
    assert chain.sendrawtransaction(spend([coin], [(OURS, 99_000)])) == parent


def test_the_fee_estimate_is_absent_on_a_young_chain_and_set_otherwise(chain: FakeChain) -> None:
    young = chain.estimatesmartfee(6)
    assert "feerate" not in young
    assert young["errors"]
    chain.set_fee_rate(Decimal("2.5"))
    assert chain.estimatesmartfee(6) == {"feerate": Decimal("0.00002500"), "blocks": 6}
    assert chain.estimatesmartfee(1)["blocks"] == 2
    chain.set_fee_rate(None)
    assert "feerate" not in chain.estimatesmartfee(6)
    assert FakeChain(fee_rate_sat_vb=Decimal(12)).estimatesmartfee(2)["feerate"] == Decimal(
        "0.00012"
    )
    with pytest.raises(NodeRejectedError):
        chain.estimatesmartfee(0)


def test_a_node_that_is_down_answers_nothing_until_it_is_back(chain: FakeChain) -> None:
    coin = funded(chain)
    raw = spend([coin], [(ELSEWHERE, 99_000)])
    chain.down = True
    calls: list[Callable[[], object]] = [
        chain.getblockchaininfo,
        lambda: chain.getblockhash(0),
        lambda: chain.getblock("00" * 32),
        lambda: chain.getrawtransaction(coin[0]),
        lambda: chain.sendrawtransaction(raw),
        lambda: chain.testmempoolaccept([raw]),
        lambda: chain.estimatesmartfee(2),
        lambda: chain.scantxoutset([f"raw({OURS})"]),
        lambda: chain.getmempoolentry(coin[0]),
    ]
    for call in calls:
        with pytest.raises(NodeUnavailableError):
            call()
    assert chain.mempool_txids == []
    chain.down = False
    assert chain.sendrawtransaction(raw) == txid_of(raw)


def test_scantxoutset_finds_the_unspent_outputs_to_a_script(chain: FakeChain) -> None:
    first = funded(chain, 30_000)
    second = funded(chain, 20_000)
    chain.fund(ELSEWHERE, 70_000, mine=True)
    pending, _ = chain.fund(OURS, 5_000)  # unconfirmed: the UTXO set is the chain's only

    answer = chain.scantxoutset([add_checksum(f"raw({OURS})")])

    assert answer["success"] is True
    assert answer["height"] == chain.tip_height
    assert answer["bestblock"] == chain.getblockhash(chain.tip_height)
    found = {(u["txid"], u["vout"]): (u["amount"], u["scriptPubKey"]) for u in answer["unspents"]}
    assert found == {
        first[:2]: (Decimal("0.0003"), OURS),
        second[:2]: (Decimal("0.0002"), OURS),
    }
    assert answer["total_amount"] == Decimal("0.0005")

    chain.sendrawtransaction(spend([first], [(ELSEWHERE, 29_000)]))
    chain.mine()
    unspents = chain.scantxoutset([f"raw({OURS})"])["unspents"]
    assert {u["txid"] for u in unspents} == {second[0], pending}
    with pytest.raises(NodeRejectedError, match="checksum"):
        chain.scantxoutset([f"raw({OURS})#aaaaaaaa"])


def test_scantxoutset_derives_a_ranged_multisig_descriptor(chain: FakeChain) -> None:
    tpubs = [
        HDKey.from_seed(bytes([n]) * 32, version=NETWORKS["test"]["xprv"]).to_public()
        for n in (1, 2, 3)
    ]
    text = "wsh(sortedmulti(2,{}/0/*,{}/0/*,{}/0/*))".format(*tpubs)
    script_at_7 = Descriptor.from_string(text).derive(7).script_pubkey().data.hex()
    txid, vout = chain.fund(script_at_7, 60_000, mine=True)

    found = chain.scantxoutset([{"desc": add_checksum(text), "range": [5, 9]}])["unspents"]
    assert [(u["txid"], u["vout"], u["scriptPubKey"]) for u in found] == [(txid, vout, script_at_7)]
    assert chain.scantxoutset([{"desc": text, "range": [0, 6]}])["unspents"] == []
    assert len(chain.scantxoutset([text])["unspents"]) == 1  # Core's default range: 0-999


def test_size_weight_and_vsize_follow_the_segwit_serialization(chain: FakeChain) -> None:
    coin = funded(chain)
    raw = spend([coin], [(ELSEWHERE, 99_000)])
    parsed = Transaction.parse(bytes.fromhex(raw))
    for tx_input in parsed.vin:
        tx_input.witness = script.Witness([])
    stripped = len(parsed.serialize())
    txid = chain.sendrawtransaction(raw)
    entry = chain.getmempoolentry(txid)
    assert entry["weight"] == stripped * 3 + len(raw) // 2
    assert entry["vsize"] == (entry["weight"] + 3) // 4 == 110
    answer = chain.getrawtransaction(txid)
    assert answer["hex"] == raw
    assert answer["hash"] != txid  # the witness changes the wtxid
    assert answer["vin"][0]["txinwitness"][1] == PUBLIC_KEY.sec().hex()


def test_one_funding_transaction_can_pay_many_outputs(chain: FakeChain) -> None:
    outputs = [("0014" + f"{n:040x}", 1_000 + n) for n in range(500)]
    txid = chain.fund_many(outputs)
    chain.mine()
    vout = chain.getrawtransaction(txid)["vout"]
    assert [(o["scriptPubKey"]["hex"], o["value"]) for o in vout] == [
        (s, Decimal(sats).scaleb(-8)) for s, sats in outputs
    ]
    assert chain.scantxoutset([f"raw({outputs[42][0]})"])["unspents"][0]["vout"] == 42


def test_the_same_history_gives_the_same_hashes() -> None:
    def history() -> list[str]:
        chain = FakeChain(clock=lambda: NOW)
        chain.fund(OURS, 10_000)
        hashes = chain.mine(2)
        return hashes + chain.reorg(1)

    assert history() == history()


def check_consistent(chain: FakeChain) -> None:
    """The UTXO set the chain answers is the one its active blocks make, and its mempool spends
    only outputs that exist, each once."""
    utxos: dict[tuple[str, int], str] = {}
    previous = None
    for height in range(chain.tip_height + 1):
        block = chain.getblock(chain.getblockhash(height))
        assert block.get("previousblockhash") == previous
        previous = block["hash"]
        for tx in block["tx"]:
            assert tx["txid"] not in chain.mempool_txids
            for vin in tx["vin"]:
                if "coinbase" not in vin:
                    # A funding transaction's inputs are outside the chain: absent here.
                    utxos.pop((vin["txid"], vin["vout"]), None)
            for out in tx["vout"]:
                utxos[(tx["txid"], out["n"])] = out["scriptPubKey"]["hex"]
    scripts = sorted(set(utxos.values()))
    scanned = chain.scantxoutset([f"raw({s})" for s in scripts])["unspents"]
    assert {(u["txid"], u["vout"]) for u in scanned} == set(utxos)
    mempool = {txid: chain.getrawtransaction(txid) for txid in chain.mempool_txids}
    known = {txid for txid, _ in utxos} | set(mempool)
    spent: set[tuple[str, int]] = set()
    for tx in mempool.values():
        assert "blockhash" not in tx
        for vin in tx["vin"]:
            outpoint = (vin["txid"], vin["vout"])
            assert outpoint not in spent
            spent.add(outpoint)
            if vin["txid"] in known:
                assert outpoint in utxos or vin["txid"] in mempool


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_any_history_keeps_the_utxo_set_and_the_mempool_consistent(data: st.DataObject) -> None:
    chain = FakeChain(clock=lambda: NOW)
    for _ in range(data.draw(st.integers(1, 25), label="steps")):
        step = data.draw(st.sampled_from(["fund", "spend", "bump", "mine", "reorg", "evict"]))
        ours = chain.scantxoutset([f"raw({OURS})"])["unspents"]
        pending = [
            (txid, out["n"], int(out["value"] * 100_000_000))
            for txid in chain.mempool_txids
            for out in chain.getrawtransaction(txid)["vout"]
            if out["scriptPubKey"]["hex"] == OURS
        ]
        coins = [(u["txid"], u["vout"], int(u["amount"] * 100_000_000)) for u in ours] + pending
        coins = [coin for coin in coins if coin[2] > 6_000]  # leaves no dust after the fee
        if step == "fund":
            chain.fund(
                OURS, data.draw(st.integers(10_000, 1_000_000)), mine=data.draw(st.booleans())
            )
        elif step in ("spend", "bump") and coins:
            coin = data.draw(st.sampled_from(coins))
            fee = 1_000 if step == "spend" else data.draw(st.integers(1_000, 5_000))
            with contextlib.suppress(NodeRejectedError):
                # Already spent in the mempool, or a replacement that pays too little.
                chain.sendrawtransaction(spend([coin], [(OURS, coin[2] - fee)]))
        elif step == "mine":
            chain.mine(data.draw(st.integers(1, 3)))
        elif step == "reorg" and chain.tip_height >= 1:
            depth = data.draw(st.integers(1, min(3, chain.tip_height)))
            top = [
                chain.getblock(chain.getblockhash(h))
                for h in range(chain.tip_height - depth + 1, chain.tip_height + 1)
            ]
            movable = [tx["txid"] for b in top for tx in b["tx"][1:]] + chain.mempool_txids
            drop = data.draw(st.lists(st.sampled_from(movable), max_size=2)) if movable else []
            chain.reorg(
                depth,
                drop_txids=drop,
                blocks=data.draw(st.integers(0, depth + 1)),
                include_mempool=data.draw(st.booleans()),
            )
        elif step == "evict" and chain.mempool_txids:
            chain.evict(data.draw(st.sampled_from(chain.mempool_txids)))
        check_consistent(chain)
