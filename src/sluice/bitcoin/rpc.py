"""Bitcoin Core's JSON-RPC over HTTP: the real :class:`~sluice.ports.bitcoin.BitcoinNode`.

What it guarantees:

* One ``httpx.Client`` per node; every call is a JSON-RPC 1.0 ``POST`` to the URL (a
  ``/wallet/<name>`` path in it is kept), on a connection of its own. A kept-alive connection
  costs more than it saves here: Bitcoin Core's HTTP server holds back the tail of a mid-sized
  answer (25–50 kB, a block of 50–100 outputs) until the client's delayed acknowledgement comes,
  about 44 ms later, while a fresh local connection answers the same call in under 2 ms.
  Credentials are ``user``/``password``, the node's cookie file (read again at every attempt,
  because the node writes a new one each time it starts), or ``user:password@`` in the URL.
  Neither the password nor the cookie is ever logged, put in an error message or shown by
  ``repr``.
* Answers are decoded with ``json.loads(parse_float=Decimal)``: amounts are exact ``Decimal``
  coins, never floats. (orjson has no Decimal mode; the standard decoder parses a 1,000-output
  block at verbosity 2 in about 2.5 ms, well below the node's own time to serialise it.)
* Errors are typed. :class:`NodeUnavailableError`: connection refused or reset, timeouts, a
  missing cookie file, HTTP 5xx without a JSON-RPC body (Bitcoin Core's "work queue depth
  exceeded" 503), and ``-28`` (the node is warming up). :class:`NotFoundError`: ``-5`` (no such
  transaction, block not found, transaction not in mempool) and ``-8`` "block height out of
  range". :class:`NodeRejectedError`: every other RPC error, with the node's ``code`` and
  message (``-25``, ``-26``, ``-27``, ``-22`` …). HTTP 401/403 is a plain
  :class:`BitcoinNodeError` naming authentication: asking again would not help.
* Reads are retried at most ``read_retries`` times, with a short doubling backoff, on
  :class:`NodeUnavailableError` only; nothing the node answered is retried.
* ``scantxoutset`` is the exception: it walks the node's whole UTXO set, which takes minutes on
  mainnet (Bitcoin Core's help says to use no client timeout). It is sent once, with its own
  timeout (``scan_timeout_s``, default 600 s; :meth:`BitcoinRpc.scan_utxo_set` takes one per
  call), and never retried: a second ``start`` while the first still runs only gets ``-8`` "Scan
  already in progress". When it times out the node is asked to ``abort`` the scan (nobody will
  read its answer) and :class:`NodeTimeoutError` is raised. Waiting for another process's scan
  and one scan at a time in this process are the caller's part
  (:func:`sluice.services.reserve_sources.scan_custody`).

Broadcasting is never retried blindly. :meth:`BitcoinRpc.broadcast` (which
:meth:`~BitcoinRpc.sendrawtransaction` is) computes the transaction's txid itself first. When the
send fails in a way that leaves its outcome unknown or that may mean "already done" — a transport
failure or timeout (the node may have accepted the transaction before the answer was lost),
``-27`` "already in block chain", ``-26`` "txn-already-in-mempool" or ``-25`` "missing inputs" (the
transaction itself, mined, spent them) — it asks the node about that txid
(``getmempoolentry``, then ``getrawtransaction``, which finds mined transactions only on a node
with ``-txindex=1``). If the node knows the transaction, the broadcast succeeded and the txid is
the answer. If not, a rejection is raised as it came; after a transport failure the identical
bytes are sent again (at most ``read_retries`` times), which cannot pay twice: the same bytes are
the same transaction, and a node takes it at most once. Signing a *new* transaction for the same
payment is the caller's decision, and the payouts worker makes it by the outpoints it spends.
"""

from __future__ import annotations

import importlib
import itertools
import json
import logging
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from sluice.ports.bitcoin import (
    BitcoinNodeError,
    JsonObject,
    NodeRejectedError,
    NodeUnavailableError,
    NotFoundError,
)

log = logging.getLogger(__name__)

# Bitcoin Core's RPC error codes this client gives a meaning to (src/rpc/protocol.h).
RPC_MISC_ERROR = -1
RPC_INVALID_ADDRESS_OR_KEY = -5  # also "no such transaction", "block not found"
RPC_INVALID_PARAMETER = -8  # also "block height out of range"
RPC_DESERIALIZATION_ERROR = -22
RPC_VERIFY_ERROR = -25  # e.g. missing inputs
RPC_VERIFY_REJECTED = -26  # e.g. txn-already-in-mempool, insufficient fee
RPC_VERIFY_ALREADY_IN_CHAIN = -27
RPC_IN_WARMUP = -28

_SNIPPET_SIZE_MAX = 200
# Every call on a fresh connection (see the module docstring: delayed acknowledgements).
_NO_KEEPALIVE = httpx.Limits(max_keepalive_connections=0)


def encode_params(value: Any) -> str:
    """JSON text of RPC parameters, with ``Decimal`` written as an exact JSON number (the standard
    encoder refuses Decimal, and a float would round a coin amount)."""
    if isinstance(value, Decimal):
        if not value.is_finite():
            raise ValueError(f"{value} is not a JSON number")
        return format(value, "f")
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode_params(item) for item in value) + "]"
    if isinstance(value, dict):
        items = (f"{json.dumps(str(k))}:{encode_params(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    return json.dumps(value)


def txid_of(raw_hex: str) -> str | None:
    """The txid of a raw transaction (the hash without witness data), or ``None`` when the bytes
    are not a transaction."""
    # embit is imported when first needed, so a process that never broadcasts does not pay for
    # loading it; through importlib because embit ships no type information.
    transaction = importlib.import_module("embit.transaction").Transaction
    try:
        return str(transaction.parse(bytes.fromhex(raw_hex)).txid().hex())
    except Exception:
        return None


class NodeTimeoutError(NodeUnavailableError):
    """The node did not answer within the timeout (it may still be working on the call)."""


class BitcoinRpc:
    """A Bitcoin Core (or Litecoin Core) node's JSON-RPC, as the :class:`BitcoinNode` port."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        cookie_file: str | Path | None = None,
        timeout_s: float = 10.0,
        scan_timeout_s: float = 600.0,
        read_retries: int = 3,
        backoff_s: float = 0.1,
        sleep: Callable[[float], None] = time.sleep,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"{parsed.copy_with(username=None, password=None)} is not an http URL")
        if read_retries < 0:
            raise ValueError("read_retries must not be negative")
        if not (timeout_s > 0 and scan_timeout_s > 0):
            raise ValueError("timeouts must be positive")
        if cookie_file is not None and password is not None:
            raise ValueError("give either a cookie file or a password, not both")
        if cookie_file is not None:
            user = None  # the cookie file holds the user name too
        if parsed.username and user is None and cookie_file is None:
            user, password = parsed.username, parsed.password
        self.url = str(parsed.copy_with(username=None, password=None))
        self.user = user
        self._password = password
        self.cookie_file = Path(cookie_file) if cookie_file is not None else None
        self.timeout_s = timeout_s
        self.scan_timeout_s = scan_timeout_s
        self.read_retries = read_retries
        self._backoff_s = backoff_s
        self._sleep = sleep
        self._ids = itertools.count(1)
        self._client = httpx.Client(
            timeout=timeout_s,
            transport=transport or httpx.HTTPTransport(limits=_NO_KEEPALIVE),
            headers={"content-type": "application/json"},
        )

    def __repr__(self) -> str:
        auth = "cookie" if self.cookie_file is not None else ("password" if self.user else "none")
        return f"BitcoinRpc({self.url!r}, auth={auth})"

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> BitcoinRpc:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    # -- generic calls ----------------------------------------------------------------------------

    def call(self, method: str, *params: Any, timeout_s: float | None = None) -> Any:
        """Any RPC method, once: nothing is retried (the method may not be a read).
        ``timeout_s``: this call's timeout (None: the client's ``timeout_s``)."""
        return self._attempt(method, list(params), timeout_s)

    def read(self, method: str, *params: Any) -> Any:
        """A read-only RPC method, retried on :class:`NodeUnavailableError` up to
        ``read_retries`` times with a doubling backoff."""
        params_list = list(params)
        delay = self._backoff_s
        for attempt in range(self.read_retries + 1):
            try:
                return self._attempt(method, params_list)
            except NodeUnavailableError as error:
                if attempt == self.read_retries:
                    raise
                log.debug("bitcoin node: %s unavailable (%s), retrying", method, error)
                self._sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    # -- the port ---------------------------------------------------------------------------------

    def getblockchaininfo(self) -> JsonObject:
        result: JsonObject = self.read("getblockchaininfo")
        return result

    def getblockhash(self, height: int) -> str:
        return str(self.read("getblockhash", height))

    def getblock(self, block_hash: str) -> JsonObject:
        result: JsonObject = self.read("getblock", block_hash, 2)
        return result

    def getrawtransaction(self, txid: str, block_hash: str | None = None) -> JsonObject:
        params: list[Any] = [txid, True] if block_hash is None else [txid, True, block_hash]
        result: JsonObject = self.read("getrawtransaction", *params)
        return result

    def sendrawtransaction(self, raw_hex: str) -> str:
        return self.broadcast(raw_hex)

    def testmempoolaccept(self, raw_hexes: list[str]) -> list[JsonObject]:
        result: list[JsonObject] = self.read("testmempoolaccept", raw_hexes)
        return result

    def estimatesmartfee(self, conf_target: int) -> JsonObject:
        result: JsonObject = self.read("estimatesmartfee", conf_target)
        return result

    def scantxoutset(self, descriptors: list[str | JsonObject]) -> JsonObject:
        """A scan of the UTXO set within ``scan_timeout_s`` (see :meth:`scan_utxo_set`)."""
        return self.scan_utxo_set(descriptors, timeout_s=self.scan_timeout_s)

    def scan_utxo_set(self, descriptors: list[str | JsonObject], *, timeout_s: float) -> JsonObject:
        """``scantxoutset start``, sent once with its own timeout. On a timeout the node's scan
        is aborted (it would keep the node busy, and refuse the next scan, for nothing) and
        :class:`NodeTimeoutError` is raised; another scan already running on the node is the
        node's ``-8`` "Scan already in progress", raised as :class:`NodeRejectedError`."""
        try:
            result: JsonObject = self.call(
                "scantxoutset", "start", descriptors, timeout_s=timeout_s
            )
        except NodeTimeoutError:
            self._abort_scan()
            raise
        return result

    def _abort_scan(self) -> None:
        try:
            aborted = self.call("scantxoutset", "abort")
        except BitcoinNodeError as error:
            log.warning("bitcoin node: the timed-out UTXO scan could not be aborted (%s)", error)
            return
        log.warning("bitcoin node: the timed-out UTXO scan %s", "aborted" if aborted else "ended")

    def getmempoolentry(self, txid: str) -> JsonObject:
        result: JsonObject = self.read("getmempoolentry", txid)
        return result

    # -- broadcasting -----------------------------------------------------------------------------

    def broadcast(self, raw_hex: str) -> str:
        """Send a signed transaction; its txid once the node has it (in the mempool or mined).
        See the module docstring for how an unknown outcome is settled by txid."""
        txid = txid_of(raw_hex)
        if txid is None:
            # Not a transaction we can name: the node answers why (-22), and there is nothing
            # to settle by txid.
            return str(self.call("sendrawtransaction", raw_hex))
        for attempt in range(self.read_retries + 1):
            try:
                answered = str(self.call("sendrawtransaction", raw_hex))
            except NodeUnavailableError as error:
                log.warning(
                    "bitcoin node: broadcast of %s unsettled (%s): checking by txid", txid, error
                )
                if self._known(txid, settle=True):
                    return txid
                if attempt == self.read_retries:
                    raise
                self._sleep(self._backoff_s * 2**attempt)
                continue
            except NodeRejectedError as error:
                if _may_be_known(error) and self._known(txid, settle=False):
                    log.info("bitcoin node: %s was already broadcast (%s)", txid, error)
                    return txid
                raise
            if answered != txid:
                log.warning("bitcoin node: broadcast answered txid %s, computed %s", answered, txid)
            return answered
        raise AssertionError("unreachable")  # pragma: no cover

    def _known(self, txid: str, *, settle: bool) -> bool:
        """Whether the node has ``txid`` in its mempool or (with ``-txindex``) its chain. With
        ``settle``, the node being unreachable for the check too is raised: not knowing is not
        "no"."""
        try:
            self.getmempoolentry(txid)
            return True
        except NotFoundError:
            pass
        except NodeUnavailableError:
            if settle:
                raise
            return False
        try:
            self.getrawtransaction(txid)
            return True
        except NotFoundError:
            return False
        except NodeUnavailableError:
            if settle:
                raise
            return False

    # -- one HTTP exchange ------------------------------------------------------------------------

    def _credentials(self) -> tuple[str, str] | None:
        if self.cookie_file is not None:
            try:
                text = self.cookie_file.read_text().strip()
            except OSError as error:
                raise NodeUnavailableError(
                    f"bitcoin node at {self.url}: cannot read its cookie file "
                    f"{self.cookie_file} ({error.strerror}); is the node running?"
                ) from None
            user, sep, password = text.partition(":")
            if not sep:
                raise NodeUnavailableError(
                    f"bitcoin node at {self.url}: the cookie file {self.cookie_file} is not "
                    "'user:password'"
                )
            return user, password
        if self.user is not None:
            return self.user, self._password or ""
        return None

    def _attempt(self, method: str, params: list[Any], timeout_s: float | None = None) -> Any:
        # A node restarted between reading the cookie and asking answers 401 to the old cookie:
        # one more try with the file read again settles it.
        tries = 2 if self.cookie_file is not None else 1
        for attempt in range(tries):
            credentials = self._credentials()
            try:
                return self._exchange(method, params, credentials, timeout_s)
            except _AuthenticationError as error:
                if attempt + 1 < tries and self._credentials() != credentials:
                    continue
                raise BitcoinNodeError(str(error)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(
        self,
        method: str,
        params: list[Any],
        credentials: tuple[str, str] | None,
        timeout_s: float | None = None,
    ) -> Any:
        request_id = next(self._ids)
        body = (
            f'{{"jsonrpc":"1.0","id":{request_id},"method":{json.dumps(method)},'
            f'"params":{encode_params(params)}}}'
        )
        where = f"bitcoin node at {self.url}"
        try:
            response = self._client.post(
                self.url,
                content=body.encode(),
                auth=httpx.USE_CLIENT_DEFAULT if credentials is None else credentials,
                timeout=httpx.USE_CLIENT_DEFAULT if timeout_s is None else timeout_s,
            )
        except httpx.TimeoutException:
            waited = self.timeout_s if timeout_s is None else timeout_s
            raise NodeTimeoutError(f"{where}: {method} timed out after {waited:g} s") from None
        except httpx.TransportError as error:
            raise NodeUnavailableError(
                f"{where}: {method}: {type(error).__name__}: {error}"
            ) from None
        status = response.status_code
        if status in (401, 403):
            how = "the cookie file" if self.cookie_file is not None else "the RPC user and password"
            raise _AuthenticationError(
                f"{where}: authentication failed (HTTP {status}): check {how}"
            )
        try:
            answer = json.loads(response.content, parse_float=Decimal)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or ("result" not in answer and "error" not in answer):
            snippet = response.text[:_SNIPPET_SIZE_MAX].strip()
            message = f"{where}: {method}: HTTP {status} without a JSON-RPC answer: {snippet!r}"
            if status >= 500:
                raise NodeUnavailableError(message)
            raise BitcoinNodeError(message)
        rpc_error = answer.get("error")
        if rpc_error is not None:
            raise _rpc_error(method, rpc_error)
        if answer.get("id") != request_id:
            raise BitcoinNodeError(f"{where}: {method}: answer to another request")
        return answer.get("result")


class _AuthenticationError(Exception):
    pass


def _rpc_error(method: str, error: Any) -> BitcoinNodeError:
    """The typed error of a JSON-RPC ``error`` object."""
    if not isinstance(error, dict):
        return NodeRejectedError(f"{method}: {error}")
    code = error.get("code")
    code = code if isinstance(code, int) else None
    message = f"{method}: {error.get('message', '')} (code {code})"
    if code == RPC_IN_WARMUP:
        return NodeUnavailableError(message, code=code)
    if code == RPC_INVALID_ADDRESS_OR_KEY and "valid" not in message.lower():
        # -5 is also "Invalid address", "… is not a valid descriptor": bad input, not missing.
        return NotFoundError(message, code=code)
    if code == RPC_INVALID_PARAMETER and "out of range" in str(error.get("message", "")):
        return NotFoundError(message, code=code)
    return NodeRejectedError(message, code=code)


def _may_be_known(error: NodeRejectedError) -> bool:
    """Whether a rejected broadcast may mean the node already has the transaction."""
    text = str(error).lower()
    if error.code == RPC_VERIFY_ALREADY_IN_CHAIN:
        return True
    if error.code == RPC_VERIFY_REJECTED:
        return "already" in text
    if error.code == RPC_VERIFY_ERROR:
        return "missing" in text or "spent" in text
    return False
