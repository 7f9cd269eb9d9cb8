"""The custody's 2-of-3 multisig wallet over embit, with the strict checks embit leaves to us.

embit does the cryptography (BIP 32 derivation, ECDSA through libsecp256k1, scripts, PSBT); this
module decides what is acceptable, because embit is lenient where custody cannot be:

* a descriptor's ``#checksum`` is required and verified here (embit ignores a wrong one), and only
  ``wsh(sortedmulti(2,K1/0/*,K2/0/*,K3/0/*))`` over three extended public keys of the custody's
  network is accepted (:func:`parse_descriptor`);
* an address is validated against the custody's own network (embit decodes any network's address,
  and answers ``None`` for a base58 version it does not know): the HRP, bech32 for witness version
  0 and bech32m for 1 and above (BIP 350), the witness program's length, and only the network's
  own base58 versions. A foreign address is refused naming whose it is
  (:class:`~sluice.bitcoin.params.AddressCodec`);
* embit falls back silently to pure-Python secp256k1, about 80× slower at signing:
  :func:`check_secp256k1` refuses to run on it;
* every signature is checked against its sighash and public key before a transaction leaves
  :meth:`EmbitCustodyWallet.sign`, and the finalised witness is checked to be
  ``<empty> <sig> <sig> <witnessScript>`` with the signatures in the script's key order.

Deposit addresses are ``K/0/i`` and change ``K/1/i`` (``branch`` 0 and 1); the derivations of the
branch keys are cached, so an address costs one public derivation per key. Reading a raw
transaction back (:func:`decode_transaction`) is in :mod:`sluice.bitcoin.transactions`, re-exported
here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from embit import bip32, ec, script  # type: ignore[import-untyped]
from embit.descriptor import Descriptor  # type: ignore[import-untyped]
from embit.descriptor.checksum import checksum as descriptor_checksum  # type: ignore[import-untyped]
from embit.descriptor.miniscript import Multi, Sortedmulti  # type: ignore[import-untyped]
from embit.finalizer import finalize_psbt  # type: ignore[import-untyped]
from embit.psbt import PSBT, DerivationPath  # type: ignore[import-untyped]
from embit.transaction import (  # type: ignore[import-untyped]
    SIGHASH,
    Transaction,
    TransactionInput,
    TransactionOutput,
)

from sluice.bitcoin.keys import SigningKey
from sluice.bitcoin.params import AddressCodec, embit_network
from sluice.bitcoin.transactions import compact_size, decode_transaction
from sluice.domain.chains import Chain
from sluice.domain.errors import BitcoinTransactionError, InvalidInputError
from sluice.ports.bitcoin import DerivedAddress, SignedTransaction, SpendInput, TxOutput

THRESHOLD = 2
CUSTODY_KEYS = 3
SEQUENCE_RBF = 0xFFFFFFFD  # BIP 125: replaceable, and no relative lock-time
SEQUENCE_FINAL = 0xFFFFFFFF
BRANCHES = (0, 1)  # 0: deposits (K/0/*), 1: change (K/1/*)
MAX_STANDARD_VSIZE = 100_000  # Bitcoin Core relays nothing heavier than 400,000 weight units
MAX_MONEY_SATS = 84_000_000 * 100_000_000  # Litecoin's cap, the larger of the networks'
_HARDENED = 0x80000000
_DERIVED_CACHE_MAX = 100_000
_CTYPES_BACKEND = "embit.util.ctypes_secp256k1"
_TXID = re.compile(r"[0-9a-f]{64}")
_DESCRIPTOR_CHECKSUM = re.compile(r"[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{8}")
# An extended private key (any network's: xprv, tprv, yprv, …) as a key of the descriptor: at the
# start of a key expression only, since "prv" occurs inside about one public key in a hundred.
_PRIVATE_EXTENDED_KEY = re.compile(r"(?:^|[(,\]])[a-zA-Z]prv[1-9A-HJ-NP-Za-km-z]{20,}")
_XKEY_NAMES = {"0488b21e": "xpub (bitcoin)", "043587cf": "tpub (test networks)"}

# Sizes of a P2WSH 2-of-3 spend, for the vsize upper bound. The witness is: the item count, the
# empty item CHECKMULTISIG's off-by-one pops, two signatures counted at their largest (72 bytes of
# DER plus the sighash byte) and the 105-byte witness script (OP_2, three 33-byte keys, OP_3,
# OP_CHECKMULTISIG), each item with its length byte.
_INPUT_BASE_BYTES = 32 + 4 + 1 + 4  # outpoint, empty scriptSig, sequence
_WITNESS_SCRIPT_BYTES = 1 + CUSTODY_KEYS * 34 + 2
_SIGNATURE_MAX_BYTES = 72 + 1
_INPUT_WITNESS_BYTES = 1 + 1 + THRESHOLD * (1 + _SIGNATURE_MAX_BYTES) + 1 + _WITNESS_SCRIPT_BYTES

__all__ = [
    "BRANCHES",
    "CUSTODY_KEYS",
    "MAX_MONEY_SATS",
    "MAX_STANDARD_VSIZE",
    "SEQUENCE_FINAL",
    "SEQUENCE_RBF",
    "THRESHOLD",
    "CustodyDescriptor",
    "CustodyKey",
    "EmbitCustodyWallet",
    "check_secp256k1",
    "decode_transaction",
    "parse_descriptor",
]


def check_secp256k1() -> None:
    """Raise :class:`BitcoinTransactionError` unless embit signs and derives with libsecp256k1.

    embit imports its ctypes binding and, when the library cannot be loaded, falls back without a
    word to a pure-Python implementation; the functions it ends up with tell which one it took."""
    for module in (ec, bip32):
        backend = getattr(module, "secp256k1", None)
        origin = getattr(getattr(backend, "ecdsa_sign", None), "__module__", None)
        if origin != _CTYPES_BACKEND:
            raise BitcoinTransactionError(
                "embit is using its pure-Python secp256k1 (about 80x slower at signing), not "
                f"libsecp256k1 ({module.__name__} signs with {origin}): install libsecp256k1 "
                "or an embit build whose bundled library loads on this platform"
            )


# ---------------------------------------------------------------- descriptors


@dataclass(frozen=True, slots=True)
class CustodyKey:
    """One of the descriptor's three keys: its account xpub and where it comes from."""

    xpub: str
    fingerprint: str  # the origin's master fingerprint, or the xpub's own when no origin is given
    origin_path: tuple[int, ...]  # the path from that master to the xpub (empty without origin)
    hd: Any = field(repr=False, compare=False)  # embit HDKey (public)


@dataclass(frozen=True, slots=True)
class CustodyDescriptor:
    """A verified ``wsh(sortedmulti(2,K1/0/*,K2/0/*,K3/0/*))`` descriptor of one chain."""

    text: str  # as given, with its verified checksum
    chain: Chain
    keys: tuple[CustodyKey, ...]
    threshold: int = THRESHOLD

    def branch_text(self, branch: int) -> str:
        """The descriptor of ``branch`` (0 deposits, 1 change), with its checksum; branch 0 is the
        text as given."""
        if branch == 0:
            return self.text
        if branch not in BRANCHES:
            raise InvalidInputError(f"branch must be 0 (deposits) or 1 (change), not {branch}")
        parts = []
        for key in self.keys:
            origin = ""
            if key.origin_path:
                path = "/".join(
                    f"{i - _HARDENED}h" if i >= _HARDENED else str(i) for i in key.origin_path
                )
                origin = f"[{key.fingerprint}/{path}]"
            parts.append(f"{origin}{key.xpub}/{branch}/*")
        body = f"wsh(sortedmulti({self.threshold},{','.join(parts)}))"
        return f"{body}#{descriptor_checksum(body)}"


def _descriptor_error(message: str) -> InvalidInputError:
    return InvalidInputError(f"custody descriptor: {message}")


def parse_descriptor(text: str, chain: Chain) -> CustodyDescriptor:
    """Verify ``text`` as the custody descriptor of ``chain``; :class:`InvalidInputError` saying
    what is wrong otherwise (missing or wrong checksum, shape, threshold, key kind, network)."""
    text = text.strip()
    if _PRIVATE_EXTENDED_KEY.search(text):
        # Said before anything else, and without quoting the text, which holds the secret.
        raise _descriptor_error(
            "contains a private key; the descriptor holds only the three extended public keys "
            "(keep the private keys in key files)"
        )
    if any(character.isspace() for character in text):
        raise _descriptor_error("contains whitespace")
    body, hash_sign, given = text.partition("#")
    if not hash_sign:
        raise _descriptor_error(
            "the checksum is missing: a descriptor must end with #<8-character checksum> "
            "(`sluice btc custody init` prints one; Bitcoin Core's getdescriptorinfo computes it)"
        )
    if not _DESCRIPTOR_CHECKSUM.fullmatch(given):
        raise _descriptor_error(f"{given!r} is not a descriptor checksum (8 bech32 characters)")
    try:
        expected = descriptor_checksum(body)
    except Exception:
        raise _descriptor_error("contains characters descriptors do not use") from None
    if given != expected:
        raise _descriptor_error(
            f"checksum #{given} does not match the descriptor: it was altered or mistyped"
        )
    try:
        parsed = Descriptor.from_string(body)
    except Exception as exc:
        raise _descriptor_error(
            f"cannot be parsed ({exc}); expected wsh(sortedmulti(2,K1/0/*,K2/0/*,K3/0/*))"
        ) from None
    return CustodyDescriptor(text=text, chain=chain, keys=_check_shape(parsed, chain))


def _check_shape(parsed: Any, chain: Chain) -> tuple[CustodyKey, ...]:
    expected_shape = "expected wsh(sortedmulti(2,K1/0/*,K2/0/*,K3/0/*))"
    if parsed.sh or parsed.taproot or not parsed.wsh or parsed.miniscript is None:
        raise _descriptor_error(f"must be a native P2WSH multisig: {expected_shape}")
    miniscript = parsed.miniscript
    if not isinstance(miniscript, Sortedmulti):
        kind = "multi()" if isinstance(miniscript, Multi) else type(miniscript).__name__
        raise _descriptor_error(f"must use sortedmulti(), not {kind}: {expected_shape}")
    threshold = miniscript.args[0].num
    keys = parsed.keys
    if len(keys) != CUSTODY_KEYS:
        raise _descriptor_error(f"must have exactly 3 keys, not {len(keys)}: {expected_shape}")
    if threshold != THRESHOLD:
        raise _descriptor_error(f"threshold must be 2 of 3, not {threshold} of 3")
    custody_keys: list[CustodyKey] = []
    for number, key in enumerate(keys, start=1):
        if not key.is_extended:
            raise _descriptor_error(f"key {number} is not an extended public key (xpub/tpub)")
        if key.key.is_private:
            raise _descriptor_error(f"key {number} is a private key; use its extended public key")
        version = bytes(key.key.version)
        if version != chain.xpub_version:
            found = _XKEY_NAMES.get(version.hex(), f"version {version.hex()}")
            wanted = _XKEY_NAMES.get(chain.xpub_version.hex(), chain.xpub_version.hex())
            raise _descriptor_error(
                f"key {number} is a {found} key, this custody is on {chain.name} ({wanted})"
            )
        if str(key.allowed_derivation) != "/0/*":
            raise _descriptor_error(
                f"key {number} must end with /0/* (the deposit branch), "
                f"not {key.allowed_derivation or '(nothing)'}"
            )
        if key.origin is not None:
            fingerprint = bytes(key.origin.fingerprint).hex()
            origin_path = tuple(key.origin.derivation)
        else:
            fingerprint, origin_path = bytes(key.key.my_fingerprint).hex(), ()
        xpub = key.key.to_base58(version=chain.xpub_version)
        custody_keys.append(CustodyKey(xpub, fingerprint, origin_path, key.key))
    if len({key.xpub for key in custody_keys}) != CUSTODY_KEYS:
        raise _descriptor_error("the three keys must be distinct")
    return tuple(custody_keys)


# ---------------------------------------------------------------- the wallet


@dataclass(frozen=True, slots=True)
class _Derived:
    address: DerivedAddress
    witness_script: Any  # embit Script
    # (public key, fingerprint, full path) of each descriptor key, in descriptor order
    derivations: tuple[tuple[Any, bytes, tuple[int, ...]], ...]


class _Signer:
    """A held private key matched to one descriptor key, with its branch keys cached."""

    def __init__(self, key: SigningKey, position: int, account: Any) -> None:
        self.source = key.source
        self.position = position  # index of its descriptor key
        self._account = account  # embit HDKey (private) whose public half is the descriptor key
        self._branches: dict[int, Any] = {}

    def sign_digest(self, digest: bytes) -> bytes:
        """DER ECDSA signature of ``digest`` (the message hash) by the account-level key."""
        return bytes(self._account.key.sign(digest).serialize())

    def private_key(self, branch: int, index: int) -> Any:
        branch_key = self._branches.get(branch)
        if branch_key is None:
            branch_key = self._account.derive([branch])
            self._branches[branch] = branch_key
        return branch_key.derive([index]).key


def _same_key(left: Any, right: Any) -> bool:
    return bool(left.sec() == right.sec() and left.chain_code == right.chain_code)


class EmbitCustodyWallet:
    """:class:`~sluice.ports.bitcoin.CustodyWallet` over embit: addresses from the verified
    descriptor, strict address validation, and 2-of-3 signing with the keys this process holds.

    ``keys`` may be empty (a watch-only process derives addresses and validates them); every key
    given must be one of the descriptor's, and signing needs two distinct ones."""

    def __init__(self, descriptor_text: str, chain: Chain, keys: Sequence[SigningKey]) -> None:
        check_secp256k1()
        self._chain = chain
        self._parsed = parse_descriptor(descriptor_text, chain)
        self._network = embit_network(chain)
        self._codec = AddressCodec(chain)
        self._branch_keys: dict[int, list[Any]] = {}
        self._derived: dict[tuple[int, int], _Derived] = {}
        self._signers = self._match_signers(keys)

    def _match_signers(self, keys: Sequence[SigningKey]) -> list[_Signer]:
        signers: dict[int, _Signer] = {}
        for key in keys:
            if key.version != self._chain.xprv_version:
                raise BitcoinTransactionError(
                    f"signing key {key.source} is of another network than {self._chain.name}"
                )
            match = self._match(key)
            if match is None:
                raise BitcoinTransactionError(
                    f"signing key {key.source} (fingerprint {key.fingerprint}) is not one of the "
                    "custody descriptor's three keys"
                )
            position, account = match
            # The same key loaded twice still counts once towards the two signatures.
            signers.setdefault(position, _Signer(key, position, account))
        return [signers[position] for position in sorted(signers)]

    def _match(self, key: SigningKey) -> tuple[int, Any] | None:
        root = key.hd_root
        for position, custody_key in enumerate(self._parsed.keys):
            if custody_key.origin_path and key.fingerprint == custody_key.fingerprint:
                account = root.derive(list(custody_key.origin_path))
                if _same_key(account, custody_key.hd):
                    return position, account
            if _same_key(root, custody_key.hd):
                return position, root
        return None

    # -- addresses

    @property
    def descriptor(self) -> str:
        return self._parsed.text

    @property
    def chain(self) -> Chain:
        return self._chain

    @property
    def signing_keys_held(self) -> int:
        """How many distinct descriptor keys this process can sign with."""
        return len(self._signers)

    def descriptor_of_branch(self, branch: int) -> str:
        """The descriptor of ``branch`` with its checksum (for ``scantxoutset``)."""
        return self._parsed.branch_text(branch)

    def derive(self, branch: int, index: int) -> DerivedAddress:
        return self._derive(branch, index).address

    def _derive(self, branch: int, index: int) -> _Derived:
        if branch not in BRANCHES:
            raise InvalidInputError(f"branch must be 0 (deposits) or 1 (change), not {branch}")
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < _HARDENED:
            raise InvalidInputError(f"derivation index must be in [0, 2^31), not {index!r}")
        cached = self._derived.get((branch, index))
        if cached is not None:
            return cached
        branch_keys = self._branch_keys.get(branch)
        if branch_keys is None:
            branch_keys = [key.hd.derive([branch]) for key in self._parsed.keys]
            self._branch_keys[branch] = branch_keys
        publics = [branch_key.derive([index]).key for branch_key in branch_keys]
        # sortedmulti: the keys in the script in the lexicographic order of their encodings.
        witness_script = script.multisig(THRESHOLD, sorted(publics, key=lambda pub: pub.sec()))
        script_pubkey = script.p2wsh(witness_script)
        derived = _Derived(
            address=DerivedAddress(
                address=str(script_pubkey.address(self._network)),
                script_hex=script_pubkey.data.hex(),
                branch=branch,
                index=index,
            ),
            witness_script=witness_script,
            derivations=tuple(
                (
                    public,
                    bytes.fromhex(custody_key.fingerprint),
                    (*custody_key.origin_path, branch, index),
                )
                for public, custody_key in zip(publics, self._parsed.keys, strict=True)
            ),
        )
        if len(self._derived) >= _DERIVED_CACHE_MAX:
            self._derived.clear()
        self._derived[(branch, index)] = derived
        return derived

    def validate_address(self, address: str) -> str:
        return self._codec.script_of(address).hex()

    def address_of(self, script_hex: str) -> str | None:
        try:
            script_bytes = bytes.fromhex(script_hex)
        except (ValueError, TypeError):
            return None
        return self._codec.address_of(script_bytes)

    # -- proof of reserves

    def sign_digest(self, digest: bytes) -> list[tuple[str, str]]:
        """:class:`~sluice.ports.bitcoin.DigestSigner`: each held key's signature of ``digest``
        under its descriptor xpub, each checked against that xpub before it is returned.

        The account-level key signs: it never locks coins itself (outputs are locked by its
        children ``K/branch/index``), and the digest is SHA-256 of a document, which no
        transaction's sighash can be chosen to equal."""
        if len(digest) != 32:
            raise InvalidInputError(f"a digest is 32 bytes, not {len(digest)}")
        signed: list[tuple[str, str]] = []
        for signer in self._signers:
            custody_key = self._parsed.keys[signer.position]
            signature = signer.sign_digest(digest)
            if not custody_key.hd.key.verify(ec.Signature.parse(signature), digest):
                raise BitcoinTransactionError(
                    f"the signature of key {signer.source} does not verify under its xpub"
                )
            signed.append((custody_key.xpub, signature.hex()))
        return signed

    # -- transactions

    def estimate_vsize(self, inputs: int, output_scripts: list[str]) -> int:
        if inputs < 0:
            raise InvalidInputError("the number of inputs cannot be negative")
        outputs_bytes = 0
        for script_hex in output_scripts:
            length = len(bytes.fromhex(script_hex))
            outputs_bytes += 8 + compact_size(length) + length
        base = (
            4
            + compact_size(inputs)
            + inputs * _INPUT_BASE_BYTES
            + compact_size(len(output_scripts))
            + outputs_bytes
            + 4
        )
        witness = 2 + inputs * _INPUT_WITNESS_BYTES  # marker and flag, then each input's stack
        weight = base * 4 + witness
        return -(-weight // 4)

    def sign(
        self, inputs: list[SpendInput], outputs: list[TxOutput], *, rbf: bool = True
    ) -> SignedTransaction:
        if len(self._signers) < THRESHOLD:
            raise BitcoinTransactionError(
                f"signing needs {THRESHOLD} of the {CUSTODY_KEYS} custody keys; this process "
                f"holds {len(self._signers)}"
            )
        fee_sats = _check_spend(inputs, outputs)
        try:
            return self._sign(inputs, outputs, rbf=rbf, fee_sats=fee_sats)
        except (BitcoinTransactionError, InvalidInputError):
            raise
        except Exception as exc:
            raise BitcoinTransactionError(f"signing failed: {type(exc).__name__}: {exc}") from exc

    def _sign(
        self, inputs: list[SpendInput], outputs: list[TxOutput], *, rbf: bool, fee_sats: int
    ) -> SignedTransaction:
        sequence = SEQUENCE_RBF if rbf else SEQUENCE_FINAL
        derived = [self._derive(spend.branch, spend.index) for spend in inputs]
        unsigned = Transaction(
            version=2,
            vin=[
                TransactionInput(bytes.fromhex(spend.txid), spend.vout, sequence=sequence)
                for spend in inputs
            ],
            vout=[
                TransactionOutput(
                    output.amount_sats, script.Script(bytes.fromhex(output.script_hex))
                )
                for output in outputs
            ],
            locktime=0,
        )
        psbt = PSBT(unsigned)
        for psbt_input, spend, own in zip(psbt.inputs, inputs, derived, strict=True):
            psbt_input.witness_utxo = TransactionOutput(
                spend.amount_sats, script.Script(bytes.fromhex(own.address.script_hex))
            )
            psbt_input.witness_script = own.witness_script
            for public, fingerprint, path in own.derivations:
                psbt_input.bip32_derivations[public] = DerivationPath(fingerprint, list(path))
        # One transaction object for every sighash, so BIP 143's hashPrevouts, hashSequence and
        # hashOutputs are computed once rather than once per input.
        sighashes = [
            unsigned.sighash_segwit(i, own.witness_script, spend.amount_sats, SIGHASH.ALL)
            for i, (spend, own) in enumerate(zip(inputs, derived, strict=True))
        ]
        for signer in self._signers[:THRESHOLD]:
            for psbt_input, spend, own, sighash in zip(
                psbt.inputs, inputs, derived, sighashes, strict=True
            ):
                private = signer.private_key(spend.branch, spend.index)
                # Filed under the key the descriptor derives: a signer that derived another key
                # fails the verification below rather than going out unnoticed.
                public = own.derivations[signer.position][0]
                signature = private.sign(sighash)
                psbt_input.partial_sigs[public] = signature.serialize() + bytes([SIGHASH.ALL])
        for psbt_input, spend, sighash in zip(psbt.inputs, inputs, sighashes, strict=True):
            _check_partial_signatures(psbt_input, spend, sighash)
        final = finalize_psbt(psbt)
        if final is None:
            raise BitcoinTransactionError("the PSBT could not be finalised")
        for txin, psbt_input, spend, own in zip(
            final.vin, psbt.inputs, inputs, derived, strict=True
        ):
            _check_final_witness(txin.witness.items, own.witness_script, spend, psbt_input)
        raw = final.serialize()
        stripped_size = len(unsigned.serialize())  # no witness: P2WSH scriptSigs are empty
        weight = stripped_size * 3 + len(raw)
        return SignedTransaction(
            raw_hex=raw.hex(),
            txid=final.txid().hex(),
            vsize=-(-weight // 4),
            fee_sats=fee_sats,
        )


def _check_spend(inputs: list[SpendInput], outputs: list[TxOutput]) -> int:
    """The fee (inputs − outputs) after checking the spend is well formed; refuses duplicates."""
    if not inputs:
        raise BitcoinTransactionError("a transaction needs at least one input")
    if not outputs:
        raise BitcoinTransactionError("a transaction needs at least one output")
    seen: set[tuple[str, int]] = set()
    for spend in inputs:
        if not _TXID.fullmatch(spend.txid):
            raise BitcoinTransactionError(f"input txid {spend.txid!r} is not 64 lower-case hex")
        if not 0 <= spend.vout <= 0xFFFFFFFF:
            raise BitcoinTransactionError(f"input {spend.outpoint}: vout out of range")
        if not 0 < spend.amount_sats <= MAX_MONEY_SATS:
            raise BitcoinTransactionError(f"input {spend.outpoint}: amount out of range")
        if (spend.txid, spend.vout) in seen:
            raise BitcoinTransactionError(f"input {spend.outpoint} is spent twice")
        seen.add((spend.txid, spend.vout))
    for number, output in enumerate(outputs):
        if not 0 < output.amount_sats <= MAX_MONEY_SATS:
            raise BitcoinTransactionError(f"output {number}: amount must be positive")
        try:
            script_bytes = bytes.fromhex(output.script_hex)
        except ValueError:
            raise BitcoinTransactionError(f"output {number}: script is not hex") from None
        if not script_bytes:
            raise BitcoinTransactionError(f"output {number}: empty script")
    total_in = sum(spend.amount_sats for spend in inputs)
    total_out = sum(output.amount_sats for output in outputs)
    if total_out > total_in:
        raise BitcoinTransactionError(f"outputs ({total_out} sats) exceed inputs ({total_in} sats)")
    return total_in - total_out


def _check_partial_signatures(psbt_input: Any, spend: SpendInput, sighash: bytes) -> None:
    signatures = psbt_input.partial_sigs
    if len(signatures) != THRESHOLD:
        raise BitcoinTransactionError(
            f"input {spend.outpoint} has {len(signatures)} signatures, not {THRESHOLD}"
        )
    for public, signature in signatures.items():
        if signature[-1] != SIGHASH.ALL or not public.verify(
            ec.Signature.parse(signature[:-1]), sighash
        ):
            raise BitcoinTransactionError(f"input {spend.outpoint}: a signature does not verify")


def _check_final_witness(
    items: list[bytes], witness_script: Any, spend: SpendInput, psbt_input: Any
) -> None:
    """``<empty> <sig> <sig> <witnessScript>`` with the two verified partial signatures, in the
    order of their keys in the script (CHECKMULTISIG matches signatures to keys in order)."""
    if len(items) != 2 + THRESHOLD or items[0] != b"" or items[-1] != witness_script.data:
        raise BitcoinTransactionError(f"input {spend.outpoint}: unexpected final witness")
    script_bytes = witness_script.data
    script_keys = [script_bytes[2 + 34 * n : 2 + 34 * n + 33] for n in range(CUSTODY_KEYS)]
    key_of_signature = {
        signature: public.sec() for public, signature in psbt_input.partial_sigs.items()
    }
    positions = []
    for signature in items[1:-1]:
        key = key_of_signature.get(signature)
        if key is None or key not in script_keys:
            raise BitcoinTransactionError(
                f"input {spend.outpoint}: the final witness holds an unverified signature"
            )
        positions.append(script_keys.index(key))
    if positions != sorted(set(positions)):
        raise BitcoinTransactionError(
            f"input {spend.outpoint}: signatures not in the script's key order"
        )
