"""The RPC client's ``scantxoutset``: sent once with its own timeout (minutes on mainnet, not the
client's 10 s), never retried (a retry only meets -8 "Scan already in progress"), the node's
scan aborted when it times out; other reads keep the client's timeout and their retries."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest

from sluice.bitcoin.rpc import BitcoinRpc, NodeTimeoutError
from sluice.ports.bitcoin import NodeRejectedError, NodeUnavailableError

URL = "http://127.0.0.1:18443/"
UNSPENTS = {"success": True, "height": 7, "bestblock": "ab" * 32, "unspents": []}


class Node:
    """A JSON-RPC endpoint that records each request's method, parameters and read timeout,
    and answers per ``answer(method, params)``: a result, an ``error`` object, or an httpx
    exception to raise."""

    def __init__(self, answer: Any) -> None:
        self.answer = answer
        self.seen: list[tuple[str, list[Any], float | None]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        method, params = body["method"], body["params"]
        self.seen.append((method, params, request.extensions["timeout"]["read"]))
        reply = self.answer(method, params)
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply, dict) and "error" in reply:
            return httpx.Response(500, json={"result": None, **reply, "id": body["id"]})
        return httpx.Response(200, json={"result": reply, "error": None, "id": body["id"]})


def _rpc(node: Node, **options: Any) -> BitcoinRpc:
    return BitcoinRpc(
        URL, sleep=lambda _: None, transport=httpx.MockTransport(node), read_retries=3, **options
    )


def test_the_scan_has_its_own_timeout_and_other_reads_keep_the_client_one() -> None:
    node = Node(lambda method, params: UNSPENTS if method == "scantxoutset" else {"blocks": 7})
    rpc = _rpc(node, timeout_s=10.0, scan_timeout_s=900.0)
    assert rpc.scantxoutset(["addr(x)"]) == UNSPENTS
    assert rpc.scan_utxo_set(["addr(x)"], timeout_s=30.0) == UNSPENTS
    rpc.getblockchaininfo()
    assert node.seen == [
        ("scantxoutset", ["start", ["addr(x)"]], 900.0),
        ("scantxoutset", ["start", ["addr(x)"]], 30.0),
        ("getblockchaininfo", [], 10.0),
    ]
    assert _rpc(node).scan_timeout_s == 600.0


def test_a_scan_that_times_out_is_not_retried_and_is_aborted() -> None:
    def answer(method: str, params: list[Any]) -> Any:
        if params[0] == "start":
            return httpx.ReadTimeout("timed out")
        return True

    node = Node(answer)
    rpc = _rpc(node, scan_timeout_s=900.0)
    with pytest.raises(NodeTimeoutError, match="timed out after 900 s"):
        rpc.scantxoutset(["addr(x)"])
    assert [(method, params[0]) for method, params, _ in node.seen] == [
        ("scantxoutset", "start"),
        ("scantxoutset", "abort"),
    ]
    assert node.seen[1][2] == 10.0  # the abort is an ordinary call


def test_a_scan_that_cannot_be_aborted_still_reports_its_timeout() -> None:
    node = Node(lambda method, params: httpx.ReadTimeout("timed out"))
    with pytest.raises(NodeTimeoutError):
        _rpc(node).scan_utxo_set(["addr(x)"], timeout_s=1.0)
    assert len(node.seen) == 2


def test_another_scan_in_progress_is_a_rejection_with_its_code() -> None:
    error = {"code": -8, "message": 'Scan already in progress, use action "abort" or "status"'}
    node = Node(lambda method, params: {"error": error})
    with pytest.raises(NodeRejectedError) as raised:
        _rpc(node).scantxoutset(["addr(x)"])
    assert raised.value.code == -8 and "in progress" in str(raised.value)
    assert len(node.seen) == 1


def test_other_reads_still_retry_a_timeout() -> None:
    node = Node(lambda method, params: httpx.ReadTimeout("timed out"))
    with pytest.raises(NodeUnavailableError, match="timed out after 10 s"):
        _rpc(node).getblockchaininfo()
    assert len(node.seen) == 4


def test_a_call_takes_its_own_timeout() -> None:
    node = Node(lambda method, params: "ok")
    rpc = _rpc(node, timeout_s=10.0)
    assert rpc.call("uptime", timeout_s=2.5) == "ok" and rpc.call("uptime") == "ok"
    assert [timeout for _, _, timeout in node.seen] == [2.5, 10.0]
    with pytest.raises(ValueError, match="positive"):
        BitcoinRpc(URL, scan_timeout_s=0)
