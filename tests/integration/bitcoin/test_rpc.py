"""The node client (:class:`sluice.bitcoin.rpc.BitcoinRpc`) against a real node.

A ``litecoind -regtest`` (Litecoin Core 0.21, Bitcoin Core's RPC) is started once for the module
(:mod:`tests.bitcoin_regtest`); transactions come from its legacy wallet. Covered: the JSON shape
of every port method (amounts as ``Decimal``; 0.21 answers ``addresses`` arrays, so callers match
on ``scriptPubKey.hex``), the typed errors (not found, rejected, unavailable after bounded retries,
authentication), cookie authentication across a node restart, and broadcasting settled by txid:
twice the same transaction, a lost answer, a failed connection, a real rejection. Also the
harness's own promises other tests build on: a killed node comes back at its tip, and a reorg made
with ``invalidateblock`` / ``reconsiderblock``.

The last few tests run the client over ``httpx.MockTransport`` for answers a healthy node cannot
be made to give on demand (warming up, a proxy's 503, an answer to another request, a cookie
that changed between reading it and asking).
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from sluice.bitcoin.rpc import BitcoinRpc, encode_params, txid_of
from sluice.domain.chains import to_coins, to_sats
from sluice.ports.bitcoin import (
    BitcoinNode,
    BitcoinNodeError,
    NodeRejectedError,
    NodeUnavailableError,
    NotFoundError,
)
from tests.bitcoin_regtest import RegtestNode

UNKNOWN = "00" * 32


def wallet_transaction(node: RegtestNode, address: str, sats: int) -> str:
    """A signed transaction paying ``sats`` to ``address`` from the node's wallet, not sent."""
    raw = node.rpc.call("createrawtransaction", [], {address: to_coins(sats)})
    funded = node.rpc.call("fundrawtransaction", raw)
    signed = node.rpc.call("signrawtransactionwithwallet", funded["hex"])
    assert signed["complete"] is True
    return str(signed["hex"])


def output_to(transaction: dict[str, Any], address: str) -> dict[str, Any]:
    outputs: list[dict[str, Any]] = [
        vout for vout in transaction["vout"] if address in vout["scriptPubKey"].get("addresses", [])
    ]
    assert len(outputs) == 1
    return outputs[0]


# -- the port's shapes ----------------------------------------------------------------------


def test_client_is_the_port(litecoind: RegtestNode) -> None:
    node: BitcoinNode = litecoind.rpc
    assert node.getblockchaininfo()["chain"] == "regtest"


def test_blockchaininfo_and_blockhash(litecoind: RegtestNode) -> None:
    info = litecoind.rpc.getblockchaininfo()
    assert info["chain"] == "regtest"
    assert info["blocks"] >= 101
    assert litecoind.rpc.getblockhash(info["blocks"]) == info["bestblockhash"]
    assert litecoind.rpc.getblockhash(0) != info["bestblockhash"]
    assert isinstance(info["difficulty"], Decimal)  # no float anywhere in an answer


def test_getblock_is_verbosity_2_with_decimal_amounts(litecoind: RegtestNode) -> None:
    address = litecoind.new_address()
    txid = litecoind.fund(address, 123_456_789)
    (block_hash,) = litecoind.mine(1)
    block = litecoind.rpc.getblock(block_hash)
    assert block["hash"] == block_hash
    assert block["height"] == litecoind.height
    assert block["previousblockhash"] == litecoind.rpc.getblockhash(block["height"] - 1)
    coinbase, *others = block["tx"]
    assert "coinbase" in coinbase["vin"][0]
    (funding,) = [tx for tx in others if tx["txid"] == txid]
    assert all({"txid", "vout"} <= set(vin) for vin in funding["vin"])
    output = output_to(funding, address)
    assert output["value"] == Decimal("1.23456789")
    assert isinstance(output["value"], Decimal)
    assert to_sats(output["value"]) == 123_456_789
    assert isinstance(output["n"], int)
    script = output["scriptPubKey"]
    assert script["hex"].startswith("0014") and len(script["hex"]) == 44  # P2WPKH
    # Node 0.21 answers an `addresses` array and no `address` field (newer nodes do the
    # opposite): this is why callers match outputs on scriptPubKey.hex.
    assert script["addresses"] == [address]
    assert "address" not in script
    assert address.startswith("rltc1")


def test_getrawtransaction_in_mempool_in_block_and_by_index(litecoind: RegtestNode) -> None:
    address = litecoind.new_address()
    txid = litecoind.fund(address, 50_000)
    pending = litecoind.rpc.getrawtransaction(txid)
    assert pending["txid"] == txid
    assert "blockhash" not in pending
    (block_hash,) = litecoind.mine(1)
    in_block = litecoind.rpc.getrawtransaction(txid, block_hash)
    by_index = litecoind.rpc.getrawtransaction(txid)  # -txindex=1
    for found in (in_block, by_index):
        assert found["txid"] == txid
        assert found["blockhash"] == block_hash
        assert found["confirmations"] == 1
        assert to_sats(output_to(found, address)["value"]) == 50_000
    other_block = litecoind.rpc.getblockhash(1)
    with pytest.raises(NotFoundError) as missing:
        litecoind.rpc.getrawtransaction(txid, other_block)
    assert missing.value.code == -5


def test_getmempoolentry(litecoind: RegtestNode) -> None:
    txid = litecoind.fund(litecoind.new_address(), 70_000)
    entry = litecoind.rpc.getmempoolentry(txid)
    assert entry["vsize"] > 0
    assert isinstance(entry["fees"]["base"], Decimal) and entry["fees"]["base"] > 0
    litecoind.mine(1)
    with pytest.raises(NotFoundError, match="not in mempool"):
        litecoind.rpc.getmempoolentry(txid)


def test_estimatesmartfee_on_a_young_chain_has_no_feerate(litecoind: RegtestNode) -> None:
    estimate = litecoind.rpc.estimatesmartfee(6)
    assert "feerate" not in estimate
    assert estimate["errors"]


def test_scantxoutset(litecoind: RegtestNode) -> None:
    address = litecoind.new_address()
    txid = litecoind.fund(address, 2_500_000)
    litecoind.mine(1)
    found = litecoind.rpc.scantxoutset([f"addr({address})"])
    assert found["success"] is True
    assert found["height"] == litecoind.height
    (unspent,) = found["unspents"]
    assert unspent["txid"] == txid
    assert unspent["amount"] == Decimal("0.025")
    assert isinstance(unspent["amount"], Decimal)
    assert found["total_amount"] == unspent["amount"]
    by_script = litecoind.rpc.scantxoutset([f"raw({unspent['scriptPubKey']})"])
    assert [u["txid"] for u in by_script["unspents"]] == [txid]
    with pytest.raises(NodeRejectedError) as bad:
        litecoind.rpc.scantxoutset(["not-a-descriptor"])
    assert not isinstance(bad.value, NotFoundError)


def test_testmempoolaccept(litecoind: RegtestNode) -> None:
    raw = wallet_transaction(litecoind, litecoind.new_address(), 80_000)
    (verdict,) = litecoind.rpc.testmempoolaccept([raw])
    assert verdict["allowed"] is True
    assert verdict["txid"] == txid_of(raw)
    # Bytes that are no transaction are refused as a whole, not answered "allowed": false.
    with pytest.raises(NodeRejectedError, match="TX decode failed") as garbage:
        litecoind.rpc.testmempoolaccept(["00" * 60])
    assert garbage.value.code == -22


def test_call_passes_decimal_params_exactly(litecoind: RegtestNode) -> None:
    address = litecoind.new_address()
    txid = litecoind.rpc.call("sendtoaddress", address, Decimal("0.00012345"))
    assert to_sats(output_to(litecoind.rpc.getrawtransaction(txid), address)["value"]) == 12_345
    assert encode_params([Decimal("1E-8"), {"a": [Decimal("21000000")]}]) == (
        '[0.00000001,{"a":[21000000]}]'
    )


# -- errors --------------------------------------------------------------------------------------


def test_not_found(litecoind: RegtestNode) -> None:
    with pytest.raises(NotFoundError) as above_tip:
        litecoind.rpc.getblockhash(litecoind.height + 1)
    assert above_tip.value.code == -8
    with pytest.raises(NotFoundError):
        litecoind.rpc.getblock(UNKNOWN)
    with pytest.raises(NotFoundError):
        litecoind.rpc.getrawtransaction(UNKNOWN)
    with pytest.raises(NotFoundError):
        litecoind.rpc.getmempoolentry(UNKNOWN)


def test_other_rpc_errors_are_rejections_with_code(litecoind: RegtestNode) -> None:
    with pytest.raises(NodeRejectedError) as unknown_method:
        litecoind.rpc.call("nosuchmethod")
    assert unknown_method.value.code == -32601
    assert not isinstance(unknown_method.value, NotFoundError)


def test_wrong_password_names_authentication(litecoind: RegtestNode) -> None:
    with BitcoinRpc(litecoind.url, user=litecoind.user, password="wrong") as client:
        started = time.monotonic()
        with pytest.raises(BitcoinNodeError, match="authentication failed") as refused:
            client.getblockchaininfo()
        assert time.monotonic() - started < 5  # not retried as if the node were down
    assert not isinstance(refused.value, NodeUnavailableError | NodeRejectedError)
    assert "wrong" not in str(refused.value)
    assert "HTTP 401" in str(refused.value)


def test_cookie_auth_survives_a_restart(litecoind: RegtestNode) -> None:
    with BitcoinRpc(litecoind.url, cookie_file=litecoind.cookie_file, timeout_s=5) as client:
        assert client.getblockchaininfo()["chain"] == "regtest"
        cookie_before = litecoind.cookie_file.read_text()
        height = litecoind.height
        litecoind.restart()
        assert litecoind.cookie_file.read_text() != cookie_before
        assert client.getblockchaininfo()["blocks"] == height  # the same client, a new cookie
        assert cookie_before.split(":")[1] not in repr(client)


def test_stopped_node_is_unavailable_after_bounded_retries(litecoind: RegtestNode) -> None:
    sleeps: list[float] = []
    client = BitcoinRpc(
        litecoind.url,
        user=litecoind.user,
        password=litecoind.password,
        timeout_s=1.0,
        read_retries=2,
        backoff_s=0.05,
        sleep=sleeps.append,
    )
    try:
        assert client.getblockchaininfo()["chain"] == "regtest"
        litecoind.stop()
        started = time.monotonic()
        with pytest.raises(NodeUnavailableError) as down:
            client.getblockchaininfo()
        assert time.monotonic() - started < 5
        assert sleeps == [0.05, 0.1]  # three attempts in all
        assert down.value.code is None
        assert litecoind.password not in str(down.value)
        # A write is not retried at all.
        sleeps.clear()
        with pytest.raises(NodeUnavailableError):
            client.call("getblockcount")
        assert sleeps == []
    finally:
        litecoind.start()
        client.close()
    missing_cookie = litecoind.datadir / "missing"
    with (
        BitcoinRpc(litecoind.url, cookie_file=missing_cookie, read_retries=0) as client,
        pytest.raises(NodeUnavailableError, match="cookie file"),
    ):
        client.getblockchaininfo()


# -- broadcasting --------------------------------------------------------------------------------


def test_broadcast_twice_answers_the_same_txid(litecoind: RegtestNode) -> None:
    raw = wallet_transaction(litecoind, litecoind.new_address(), 90_000)
    txid = txid_of(raw)
    assert litecoind.rpc.broadcast(raw) == txid
    assert litecoind.rpc.sendrawtransaction(raw) == txid  # already in the mempool
    assert litecoind.rpc.getmempoolentry(txid)
    litecoind.mine(1)
    # Mined: the node answers -27 "already in block chain"; settled by txid.
    with pytest.raises(NodeRejectedError) as raw_answer:
        litecoind.rpc.call("sendrawtransaction", raw)
    assert raw_answer.value.code == -27
    assert litecoind.rpc.broadcast(raw) == txid
    # Buried: its outputs may be spent, so the node can only say its inputs are missing (-25).
    litecoind.mine(1)
    assert litecoind.rpc.broadcast(raw) == txid


def test_broadcast_rejection_is_raised(litecoind: RegtestNode) -> None:
    address = litecoind.new_address()
    first = wallet_transaction(litecoind, address, 100_000)
    spent_inputs = {
        (i["txid"], i["vout"]) for i in litecoind.rpc.call("decoderawtransaction", first)["vin"]
    }
    litecoind.rpc.broadcast(first)
    litecoind.mine(1)
    # Another transaction spending the same (now spent) inputs: a real rejection, not "known".
    unspent = litecoind.rpc.call("listunspent")
    other_inputs = [{"txid": t, "vout": v} for t, v in spent_inputs]
    assert not any((u["txid"], u["vout"]) in spent_inputs for u in unspent)
    raw = litecoind.rpc.call(
        "createrawtransaction", other_inputs, {litecoind.new_address(): Decimal("0.0001")}
    )
    prevtxs = []
    for t, v in spent_inputs:
        previous = litecoind.rpc.getrawtransaction(t)["vout"][v]
        prevtxs.append(
            {
                "txid": t,
                "vout": v,
                "scriptPubKey": previous["scriptPubKey"]["hex"],
                "amount": previous["value"],
            }
        )
    signed = litecoind.rpc.call("signrawtransactionwithwallet", raw, prevtxs)
    with pytest.raises(NodeRejectedError) as rejected:
        litecoind.rpc.broadcast(signed["hex"])
    assert rejected.value.code == -25
    with pytest.raises(NodeRejectedError) as garbage:
        litecoind.rpc.broadcast("00" * 60)
    assert garbage.value.code == -22


class _Faulty(httpx.BaseTransport):
    """The real transport, with one sendrawtransaction failing before it reaches the node
    (``before``) or after the node has taken it (``after``: the answer is lost)."""

    def __init__(self, fault: str) -> None:
        self.inner = httpx.HTTPTransport()
        self.fault: str | None = fault
        self.sends = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        is_send = b'"sendrawtransaction"' in request.content
        if is_send:
            self.sends += 1
        if is_send and self.fault == "before":
            self.fault = None
            raise httpx.ConnectError("connection refused", request=request)
        response = self.inner.handle_request(request)
        if is_send and self.fault == "after":
            self.fault = None
            response.read()
            raise httpx.ReadTimeout("timed out", request=request)
        return response

    def close(self) -> None:
        self.inner.close()


@pytest.mark.parametrize(("fault", "sends"), [("after", 1), ("before", 2)])
def test_broadcast_with_a_failed_exchange_is_settled_by_txid(
    litecoind: RegtestNode, fault: str, sends: int
) -> None:
    raw = wallet_transaction(litecoind, litecoind.new_address(), 110_000)
    transport = _Faulty(fault)
    with BitcoinRpc(
        litecoind.url,
        user=litecoind.user,
        password=litecoind.password,
        transport=transport,
        sleep=lambda _: None,
    ) as client:
        assert client.broadcast(raw) == txid_of(raw)
    # A lost answer is found in the mempool and not sent again; a send that never reached the
    # node is not found, so the same bytes are sent once more.
    assert transport.sends == sends
    assert litecoind.rpc.getmempoolentry(txid_of(raw) or "")


# -- answers a healthy node does not give on demand -----------------------------------------


def _mock_client(handler: Any, **options: Any) -> tuple[BitcoinRpc, list[float]]:
    sleeps: list[float] = []
    client = BitcoinRpc(
        "http://u:secret@127.0.0.1:1/",
        transport=httpx.MockTransport(handler),
        sleep=sleeps.append,
        **options,
    )
    return client, sleeps


def test_warming_up_is_unavailable_and_retried() -> None:
    answers = iter([-28, -28, None])

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["authorization"].startswith("Basic ")
        code = next(answers)
        body = request.read().decode()
        request_id = int(body.split('"id":')[1].split(",")[0])
        if code is None:
            return httpx.Response(
                200, content=b'{"result":{"blocks":7},"error":null,"id":%d}' % request_id
            )
        return httpx.Response(
            500,
            json={
                "result": None,
                "error": {"code": code, "message": "Loading block index"},
                "id": request_id,
            },
        )

    client, sleeps = _mock_client(handler)
    assert client.getblockchaininfo() == {"blocks": 7}
    assert sleeps == [0.1, 0.2]
    assert "secret" not in repr(client) and "secret" not in client.url


def test_http_errors_without_json() -> None:
    client, _ = _mock_client(
        lambda _: httpx.Response(503, text="Work queue depth exceeded"), read_retries=1
    )
    with pytest.raises(NodeUnavailableError, match="Work queue depth exceeded"):
        client.getblockchaininfo()
    client, _ = _mock_client(lambda _: httpx.Response(404, text="not here"))
    with pytest.raises(BitcoinNodeError, match="HTTP 404") as not_rpc:
        client.getblockchaininfo()
    assert not isinstance(not_rpc.value, NodeUnavailableError | NodeRejectedError)
    client, _ = _mock_client(
        lambda _: httpx.Response(200, json={"result": 1, "error": None, "id": 999})
    )
    with pytest.raises(BitcoinNodeError, match="another request"):
        client.call("getblockcount")


def test_harness_killed_node_comes_back_at_its_tip(litecoind: RegtestNode) -> None:
    """The harness's crash (SIGKILL after a flush) keeps the chain and the wallet: other tests
    kill the node mid-flow and expect it back where it was."""
    litecoind.mine(1)
    tip = litecoind.rpc.getblockchaininfo()["bestblockhash"]
    balance = litecoind.rpc.call("getbalance")
    litecoind.kill()
    assert not litecoind.running
    with pytest.raises(NodeUnavailableError):
        litecoind.rpc.call("getblockcount")
    litecoind.start()
    assert litecoind.rpc.getblockchaininfo()["bestblockhash"] == tip
    assert litecoind.rpc.call("getbalance") == balance


def test_harness_reorg_with_invalidate_and_reconsider(litecoind: RegtestNode) -> None:
    base = litecoind.height
    old_branch = litecoind.mine(2)
    litecoind.invalidate(old_branch[0])
    assert litecoind.height == base
    new_branch = litecoind.mine(3)  # to a fresh address: not the same blocks again
    assert not set(new_branch) & set(old_branch)
    assert litecoind.rpc.getblockhash(base + 1) == new_branch[0]
    litecoind.reconsider(old_branch[0])  # the longer branch stays active
    assert litecoind.rpc.getblockchaininfo()["bestblockhash"] == new_branch[-1]
    assert litecoind.rpc.getblock(old_branch[1])["confirmations"] == -1


def test_cookie_read_again_after_a_401(tmp_path: Path) -> None:
    """A node restarted between reading the cookie and asking refuses the old one: the client
    reads the file again and asks once more; a 401 with an unchanged cookie is final."""
    cookie = tmp_path / ".cookie"
    cookie.write_text("__cookie__:old")
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        if len(seen) == 1:
            cookie.write_text("__cookie__:new")  # the node restarted meanwhile
            return httpx.Response(401)
        if seen[-1] != seen[1] or len(seen) > 2:
            return httpx.Response(401)
        body = json.loads(request.content)
        return httpx.Response(200, json={"result": 5, "error": None, "id": body["id"]})

    with BitcoinRpc(
        "http://127.0.0.1:1/", cookie_file=cookie, transport=httpx.MockTransport(handler)
    ) as client:
        assert client.call("getblockcount") == 5
        assert seen[0] != seen[1]
        with pytest.raises(BitcoinNodeError, match=r"authentication failed.*cookie file"):
            client.call("getblockcount")
    with pytest.raises(ValueError, match="cookie file or a password"):
        BitcoinRpc("http://127.0.0.1:1/", cookie_file=cookie, password="x")
