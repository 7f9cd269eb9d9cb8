"""What custody needs from a Bitcoin node: the JSON-RPC calls of Bitcoin Core, as decoded JSON.

Answers cross this port in Bitcoin Core's own JSON shapes (``getblock`` at verbosity 2, and so
on), so the real client (:mod:`sluice.bitcoin.rpc`) and the in-memory chain
(:mod:`sluice.bitcoin.fakechain`) are interchangeable and one parser serves both. Amounts in those
answers are what the node prints: coins as JSON numbers, which the client decodes as
:class:`~decimal.Decimal` (never float); :func:`sluice.bitcoin.params.to_sats` turns them into
satoshis.

Callers match outputs on ``scriptPubKey["hex"]``, never on address fields: old nodes answer
``addresses: [...]`` and new ones ``address``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

JsonObject = dict[str, Any]


class BitcoinNodeError(Exception):
    """The node could not be asked, or refused. ``code`` is the node's RPC error code when it
    answered one (``None`` for transport failures)."""

    def __init__(self, message: str, *, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class NodeUnavailableError(BitcoinNodeError):
    """The node did not answer (connection refused, timeout, warming up): try again later."""


class NodeRejectedError(BitcoinNodeError):
    """The node answered with an error: a transaction it refuses, an unknown block, bad input."""


class NotFoundError(NodeRejectedError):
    """What was asked for does not exist on the node (block, transaction, mempool entry)."""


class BitcoinNode(Protocol):
    """The calls custody makes, named and shaped as Bitcoin Core's JSON-RPC methods."""

    def getblockchaininfo(self) -> JsonObject:
        """``{"chain", "blocks", "bestblockhash", "initialblockdownload", ...}``."""
        ...

    def getblockhash(self, height: int) -> str:
        """The hash of the block at ``height`` on the active chain; :class:`NotFoundError` above
        the tip."""
        ...

    def getblock(self, block_hash: str) -> JsonObject:
        """The block at verbosity 2: ``{"hash", "height", "previousblockhash", "time",
        "tx": [{"txid", "hash", "vin": [{"txid", "vout"} | {"coinbase"}], "vout": [{"value",
        "n", "scriptPubKey": {"hex", ...}}]}]}``; :class:`NotFoundError` for an unknown hash."""
        ...

    def getrawtransaction(self, txid: str, block_hash: str | None = None) -> JsonObject:
        """The decoded transaction (verbose), looked up in ``block_hash`` when given, else in the
        mempool or the transaction index; :class:`NotFoundError` when the node has none."""
        ...

    def sendrawtransaction(self, raw_hex: str) -> str:
        """Broadcast; answers the txid. Never retried blindly by callers: see the client."""
        ...

    def testmempoolaccept(self, raw_hexes: list[str]) -> list[JsonObject]:
        """``[{"txid", "allowed", "reject-reason"?}]``, one per transaction."""
        ...

    def estimatesmartfee(self, conf_target: int) -> JsonObject:
        """``{"feerate": coins per kvB, "blocks"}``; a young chain answers no ``feerate``."""
        ...

    def scantxoutset(self, descriptors: list[str | JsonObject]) -> JsonObject:
        """``{"success", "height", "bestblock", "unspents": [{"txid", "vout", "scriptPubKey",
        "amount", "height"}], "total_amount"}`` for the descriptors, each a string or
        ``{"desc", "range"}``."""
        ...

    def getmempoolentry(self, txid: str) -> JsonObject:
        """The mempool entry of ``txid``; :class:`NotFoundError` when it is not in the mempool."""
        ...


@dataclass(frozen=True, slots=True)
class DerivedAddress:
    """A custody address: ``branch`` 0 for deposits (``K/0/*``), 1 for change (``K/1/*``)."""

    address: str
    script_hex: str  # the output script (scriptPubKey) outputs are matched on
    branch: int
    index: int


@dataclass(frozen=True, slots=True)
class SpendInput:
    """A custody output to spend, with what signing it needs: its amount and derivation."""

    txid: str
    vout: int
    amount_sats: int
    branch: int
    index: int

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True, slots=True)
class TxOutput:
    script_hex: str
    amount_sats: int


@dataclass(frozen=True, slots=True)
class SignedTransaction:
    """A final, fully signed transaction, ready for ``testmempoolaccept`` and broadcast."""

    raw_hex: str
    txid: str
    vsize: int
    fee_sats: int


class CustodyWallet(Protocol):
    """The custody's 2-of-3 multisig wallet: addresses from the descriptor, and signing with the
    keys this process holds. Implemented over embit by :mod:`sluice.bitcoin.wallet`."""

    @property
    def descriptor(self) -> str:
        """The deposit branch's descriptor, with its checksum."""
        ...

    def derive(self, branch: int, index: int) -> DerivedAddress: ...

    def validate_address(self, address: str) -> str:
        """The output script of ``address``; :class:`~sluice.domain.errors.InvalidAddressError`
        with a clear message when it is malformed or of another network."""
        ...

    def address_of(self, script_hex: str) -> str | None:
        """The address of an output script on this network, ``None`` for a non-standard one."""
        ...

    def estimate_vsize(self, inputs: int, output_scripts: list[str]) -> int:
        """The virtual size of a transaction spending ``inputs`` custody outputs to these
        outputs, fully signed (an upper bound: signatures are counted at their largest)."""
        ...

    def sign(
        self, inputs: list[SpendInput], outputs: list[TxOutput], *, rbf: bool = True
    ) -> SignedTransaction:
        """Build the PSBT, sign it with two of the three keys, finalise it and extract it.
        :class:`~sluice.domain.errors.BitcoinTransactionError` when that cannot be done."""
        ...


class DigestSigner(Protocol):
    """A custody wallet that signs a proof of reserves: a 32-byte digest, with each custody key
    this process holds, at the account level (the key exactly as the descriptor names it, never
    a derived child, so a verifier needs only the descriptor)."""

    def sign_digest(self, digest: bytes) -> list[tuple[str, str]]:
        """``(xpub as written in the descriptor, DER signature hex)`` per key held, in the
        descriptor's key order: ECDSA over secp256k1 with ``digest`` as the message hash (it is
        not hashed again), low S."""
        ...
