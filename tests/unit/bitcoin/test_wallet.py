"""The custody wallet (``sluice.bitcoin.wallet``): descriptors, derivation, signing, decoding.

Three fixed test keys (seeds 1, 2, 3) make the descriptor, so every figure is reproducible.

* Descriptors: the verified one is accepted; a wrong checksum (which embit itself accepts, shown
  here), a missing or malformed one, and every wrong shape (``multi``, ``sh(wsh())``, ``wpkh``,
  threshold 1 or 3, two or four keys, a private key, a key of another network, another derivation
  than ``/0/*``, a repeated key, whitespace) are refused with their own message.
* Derivation: deterministic across wallet instances, distinct across indexes and branches, and
  equal to what embit's own descriptor code derives for ``/0/*`` and ``/1/*``.
* Signing 1, 10 and 100 inputs: the final transaction is checked independently of the wallet's
  code with embit: each witness is ``<empty> <sig> <sig> <witnessScript>``, the witness script is
  the descriptor's at that input's derivation, each signature verifies against the BIP 143 sighash
  for the key CHECKMULTISIG would match it with, the signing keys are the ones held; the decode
  shows the outputs, the RBF sequence, the fee and the vsize under the estimate. The time to sign
  100 inputs is printed (run with ``-s``), not asserted.
* Failure paths: fewer than two keys, a key not in the descriptor, a key of another network,
  outputs above inputs, a repeated outpoint, the pure-Python secp256k1 fallback (monkeypatched).
"""

from __future__ import annotations

import os
import time
from decimal import Decimal
from typing import Any

import embit.ec  # type: ignore[import-untyped]
import pytest
from embit import bip32
from embit.descriptor import Descriptor  # type: ignore[import-untyped]
from embit.descriptor.checksum import checksum  # type: ignore[import-untyped]
from embit.finalizer import finalize_psbt, parse_multisig  # type: ignore[import-untyped]
from embit.script import Script, Witness  # type: ignore[import-untyped]
from embit.transaction import (  # type: ignore[import-untyped]
    SIGHASH,
    Transaction,
    TransactionInput,
    TransactionOutput,
)
from embit.util import py_secp256k1  # type: ignore[import-untyped]

from sluice.bitcoin.keys import SigningKey, account_path, path_text
from sluice.bitcoin.params import embit_network
from sluice.bitcoin.wallet import (
    SEQUENCE_FINAL,
    SEQUENCE_RBF,
    EmbitCustodyWallet,
    check_secp256k1,
    decode_transaction,
    parse_descriptor,
)
from sluice.domain.chains import CHAINS, Chain
from sluice.domain.errors import BitcoinTransactionError, InvalidInputError
from sluice.ports.bitcoin import SpendInput, TxOutput

CHAIN = CHAINS["regtest"]
PAYEE = "0014751e76e8199196d454941c45d1b3a323f1433bd6"  # BIP 173's P2WPKH program


def _root(seed_byte: int, chain: Chain = CHAIN) -> Any:
    return bip32.HDKey.from_seed(bytes([seed_byte]) * 64, version=chain.xprv_version)


ROOTS = [_root(n) for n in (1, 2, 3)]
KEYS = [SigningKey(root, source=f"test key {n}") for n, root in enumerate(ROOTS, start=1)]


def _account_xpub(root: Any, chain: Chain = CHAIN) -> str:
    public = root.derive(account_path(chain)).to_public()
    return str(public.to_base58(version=chain.xpub_version))


def _key_expression(root: Any, branch: str = "0/*", chain: Chain = CHAIN) -> str:
    origin = f"[{root.my_fingerprint.hex()}/{path_text(account_path(chain))}]"
    return f"{origin}{_account_xpub(root, chain)}/{branch}"


def _with_checksum(body: str) -> str:
    return f"{body}#{checksum(body)}"


BODY = f"wsh(sortedmulti(2,{','.join(_key_expression(root) for root in ROOTS)}))"
DESCRIPTOR = _with_checksum(BODY)


@pytest.fixture(scope="module")
def wallet() -> EmbitCustodyWallet:
    return EmbitCustodyWallet(DESCRIPTOR, CHAIN, KEYS[:2])


# ---------------------------------------------------------------- descriptors


def test_the_custody_descriptor_is_accepted_with_its_three_keys() -> None:
    parsed = parse_descriptor(f"  {DESCRIPTOR}\n", CHAIN)
    assert parsed.text == DESCRIPTOR
    assert parsed.threshold == 2
    assert [key.xpub for key in parsed.keys] == [_account_xpub(root) for root in ROOTS]
    assert [key.fingerprint for key in parsed.keys] == [r.my_fingerprint.hex() for r in ROOTS]
    assert all(list(key.origin_path) == account_path(CHAIN) for key in parsed.keys)


def test_a_wrong_checksum_is_refused_although_embit_accepts_it() -> None:
    original = DESCRIPTOR.rsplit("#", 1)[1]
    wrong = ("q" if original[0] != "q" else "p") + original[1:]
    # embit reads past the checksum without looking at it: the reason we verify it ourselves.
    assert Descriptor.from_string(f"{BODY}#{wrong}").to_string() == BODY
    with pytest.raises(InvalidInputError, match=f"checksum #{wrong} does not match"):
        parse_descriptor(f"{BODY}#{wrong}", CHAIN)


def test_a_changed_descriptor_no_longer_matches_its_checksum() -> None:
    altered = DESCRIPTOR.replace("sortedmulti(2,", "sortedmulti(1,")
    with pytest.raises(InvalidInputError, match="does not match"):
        parse_descriptor(altered, CHAIN)


def test_a_missing_or_malformed_checksum_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="checksum is missing"):
        parse_descriptor(BODY, CHAIN)
    with pytest.raises(InvalidInputError, match="is not a descriptor checksum"):
        parse_descriptor(f"{BODY}#ABCDEFGH", CHAIN)
    with pytest.raises(InvalidInputError, match="is not a descriptor checksum"):
        parse_descriptor(f"{BODY}#", CHAIN)


def _keys(*roots: Any, branch: str = "0/*") -> str:
    return ",".join(_key_expression(root, branch) for root in roots)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (f"wsh(multi(2,{_keys(*ROOTS)}))", r"must use sortedmulti\(\), not multi\(\)"),
        (f"sh(wsh(sortedmulti(2,{_keys(*ROOTS)})))", "must be a native P2WSH multisig"),
        (f"sh(sortedmulti(2,{_keys(*ROOTS)}))", "must be a native P2WSH multisig"),
        (f"wpkh({_keys(ROOTS[0])})", "must be a native P2WSH multisig"),
        (f"wsh(sortedmulti(1,{_keys(*ROOTS)}))", "threshold must be 2 of 3, not 1 of 3"),
        (f"wsh(sortedmulti(3,{_keys(*ROOTS)}))", "threshold must be 2 of 3, not 3 of 3"),
        (f"wsh(sortedmulti(2,{_keys(*ROOTS[:2])}))", "exactly 3 keys, not 2"),
        (f"wsh(sortedmulti(2,{_keys(*ROOTS, _root(4))}))", "exactly 3 keys, not 4"),
        (f"wsh(sortedmulti(2,{_keys(*ROOTS, branch='1/*')}))", "must end with /0/\\*"),
        (f"wsh(sortedmulti(2,{_keys(*ROOTS, branch='<0;1>/*')}))", "must end with /0/\\*"),
        (f"wsh(sortedmulti(2,{_keys(*ROOTS, branch='0/5')}))", "must end with /0/\\*"),
        (f"wsh(sortedmulti(2,{_keys(ROOTS[0], ROOTS[0], ROOTS[1])}))", "must be distinct"),
        ("pkh(hello)", "cannot be parsed"),
        ("tr(nothing)", "cannot be parsed"),
    ],
)
def test_descriptors_of_another_shape_are_refused(body: str, message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        parse_descriptor(_with_checksum(body), CHAIN)


def test_a_bare_public_key_is_refused() -> None:
    public = ROOTS[0].derive(account_path(CHAIN)).key.get_public_key().sec().hex()
    body = f"wsh(sortedmulti(2,{public},{_keys(*ROOTS[1:])}))"
    with pytest.raises(InvalidInputError, match="key 1 is not an extended public key"):
        parse_descriptor(_with_checksum(body), CHAIN)


def test_a_private_key_in_the_descriptor_is_refused_without_quoting_it() -> None:
    private = ROOTS[0].derive(account_path(CHAIN)).to_base58()
    body = f"wsh(sortedmulti(2,{private}/0/*,{_keys(*ROOTS[1:])}))"
    with pytest.raises(InvalidInputError, match="contains a private key") as caught:
        parse_descriptor(_with_checksum(body), CHAIN)
    assert private not in str(caught.value)


def test_a_private_key_with_an_origin_is_refused_too() -> None:
    origin = f"[{ROOTS[0].my_fingerprint.hex()}/{path_text(account_path(CHAIN))}]"
    private = ROOTS[0].derive(account_path(CHAIN)).to_base58()
    body = f"wsh(sortedmulti(2,{origin}{private}/0/*,{_keys(*ROOTS[1:])}))"
    with pytest.raises(InvalidInputError, match="contains a private key"):
        parse_descriptor(_with_checksum(body), CHAIN)


def test_a_public_key_with_prv_inside_is_not_taken_for_a_private_one() -> None:
    # About one public key in a hundred has "prv" in its base58 text; this one does.
    root = bip32.HDKey.from_seed((123).to_bytes(64, "big"), version=CHAIN.xprv_version)
    assert "gprvhp" in _account_xpub(root)
    body = f"wsh(sortedmulti(2,{_keys(root, *ROOTS[1:])}))"
    assert parse_descriptor(_with_checksum(body), CHAIN).keys[0].xpub == _account_xpub(root)


def test_keys_of_another_network_are_refused() -> None:
    mainnet = CHAINS["bitcoin"]
    roots = [_root(n, mainnet) for n in (1, 2, 3)]
    body = f"wsh(sortedmulti(2,{','.join(_key_expression(r, chain=mainnet) for r in roots)}))"
    with pytest.raises(InvalidInputError, match=r"key 1 is a xpub \(bitcoin\) key.*on regtest"):
        parse_descriptor(_with_checksum(body), CHAIN)
    # The same descriptor is what a bitcoin custody takes.
    assert len(parse_descriptor(_with_checksum(body), mainnet).keys) == 3


def test_whitespace_inside_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="whitespace"):
        parse_descriptor(DESCRIPTOR.replace(",", ", ", 1), CHAIN)


# ---------------------------------------------------------------- derivation


def test_derivation_is_deterministic_and_distinct(wallet: EmbitCustodyWallet) -> None:
    again = EmbitCustodyWallet(DESCRIPTOR, CHAIN, [])
    addresses = set()
    for branch in (0, 1):
        for index in range(25):
            derived = wallet.derive(branch, index)
            assert derived == again.derive(branch, index)
            assert (derived.branch, derived.index) == (branch, index)
            assert derived.address.startswith("bcrt1q")
            assert wallet.validate_address(derived.address) == derived.script_hex
            assert wallet.address_of(derived.script_hex) == derived.address
            addresses.add(derived.address)
    assert len(addresses) == 50


@pytest.mark.parametrize("branch", [0, 1])
def test_derivation_matches_embits_descriptor(wallet: EmbitCustodyWallet, branch: int) -> None:
    text = wallet.descriptor_of_branch(branch)
    body, _, given = text.partition("#")
    assert given == checksum(body)
    reference = Descriptor.from_string(body)
    network = embit_network(CHAIN)
    for index in (0, 1, 7, 1000, 2**31 - 1):
        expected = reference.derive(index)
        derived = wallet.derive(branch, index)
        assert derived.script_hex == expected.script_pubkey().data.hex()
        assert derived.address == expected.address(network)


@pytest.mark.parametrize(("branch", "index"), [(2, 0), (-1, 0), (0, -1), (0, 2**31), (1, True)])
def test_derivation_outside_the_branches_and_range_is_refused(
    wallet: EmbitCustodyWallet, branch: int, index: int
) -> None:
    with pytest.raises(InvalidInputError):
        wallet.derive(branch, index)


# ---------------------------------------------------------------- signing


def _spends(wallet: EmbitCustodyWallet, count: int, amount_sats: int = 150_000) -> list[SpendInput]:
    return [
        SpendInput(os.urandom(32).hex(), n % 4, amount_sats + n, n % 2, n * 3) for n in range(count)
    ]


def _check_signed_independently(
    signed: Any, spends: list[SpendInput], signer_roots: list[Any], *, sequence: int
) -> None:
    """Verify the final transaction with embit alone: witness shape, witness script, signatures
    against the BIP 143 sighash in CHECKMULTISIG's key order, and which keys signed."""
    tx = Transaction.parse(bytes.fromhex(signed.raw_hex))
    assert tx.txid().hex() == signed.txid
    assert tx.version == 2
    references = {
        branch: Descriptor.from_string(
            EmbitCustodyWallet(DESCRIPTOR, CHAIN, []).descriptor_of_branch(branch).split("#")[0]
        )
        for branch in (0, 1)
    }
    for i, (txin, spend) in enumerate(zip(tx.vin, spends, strict=True)):
        assert (txin.txid.hex(), txin.vout, txin.sequence) == (spend.txid, spend.vout, sequence)
        assert txin.script_sig.data == b""
        items = txin.witness.items
        assert len(items) == 4
        assert items[0] == b""
        witness_script = Script(items[3])
        expected = references[spend.branch].derive(spend.index)
        assert witness_script.data == expected.witness_script().data
        threshold, publics = parse_multisig(witness_script)
        assert threshold == 2
        assert [p.sec() for p in publics] == sorted(p.sec() for p in publics)
        sighash = tx.sighash_segwit(i, witness_script, spend.amount_sats, SIGHASH.ALL)
        signed_by = []
        position = 0
        for item in items[1:3]:
            assert item[-1] == SIGHASH.ALL
            signature = embit.ec.Signature.parse(item[:-1])
            while not publics[position].verify(signature, sighash):
                position += 1  # IndexError here means a signature matched no later key
            signed_by.append(publics[position].sec())
            position += 1
        path = [*account_path(CHAIN), spend.branch, spend.index]
        holders = {root.derive(path).key.get_public_key().sec() for root in signer_roots}
        assert set(signed_by) == holders


@pytest.mark.parametrize("count", [1, 10, 100])
def test_signing_gives_a_valid_final_transaction(wallet: EmbitCustodyWallet, count: int) -> None:
    spends = _spends(wallet, count)
    change = wallet.derive(1, 0)
    total = sum(spend.amount_sats for spend in spends)
    outputs = [TxOutput(PAYEE, 100_000), TxOutput(change.script_hex, total - 100_000 - 20_000)]
    started = time.perf_counter()
    signed = wallet.sign(spends, outputs)
    elapsed_ms = (time.perf_counter() - started) * 1000
    print(
        f"\nsign {count} inputs (build PSBT, sign 2-of-3, finalise, extract): {elapsed_ms:.1f} ms"
    )
    _check_signed_independently(signed, spends, ROOTS[:2], sequence=SEQUENCE_RBF)
    assert signed.fee_sats == 20_000
    decoded = decode_transaction(signed.raw_hex, CHAIN)
    assert decoded["txid"] == signed.txid
    assert decoded["hash"] != decoded["txid"]  # a segwit transaction's wtxid differs
    assert decoded["vsize"] == signed.vsize
    assert [entry["sequence"] for entry in decoded["vin"]] == [SEQUENCE_RBF] * count
    assert [(entry["txid"], entry["vout"]) for entry in decoded["vin"]] == [
        (spend.txid, spend.vout) for spend in spends
    ]
    assert [(out["n"], out["scriptPubKey"]["hex"], out["value"]) for out in decoded["vout"]] == [
        (0, PAYEE, Decimal("0.001")),
        (1, change.script_hex, Decimal(total - 120_000) / 100_000_000),
    ]
    assert decoded["vout"][1]["scriptPubKey"]["address"] == change.address
    estimate = wallet.estimate_vsize(count, [output.script_hex for output in outputs])
    assert signed.vsize <= estimate <= signed.vsize + 2 * count + 2


@pytest.mark.parametrize("held", [(0, 1), (0, 2), (1, 2), (0, 1, 2), (2, 0)])
def test_any_two_of_the_three_keys_sign(held: tuple[int, ...]) -> None:
    wallet = EmbitCustodyWallet(DESCRIPTOR, CHAIN, [KEYS[n] for n in held])
    spends = _spends(wallet, 3)
    signed = wallet.sign(spends, [TxOutput(PAYEE, 400_000)])
    # The first two distinct descriptor keys held sign.
    signers = [ROOTS[n] for n in sorted(set(held))[:2]]
    _check_signed_independently(signed, spends, signers, sequence=SEQUENCE_RBF)


def test_without_rbf_the_inputs_are_final(wallet: EmbitCustodyWallet) -> None:
    spends = _spends(wallet, 2)
    signed = wallet.sign(spends, [TxOutput(PAYEE, 250_000)], rbf=False)
    _check_signed_independently(signed, spends, ROOTS[:2], sequence=SEQUENCE_FINAL)


def test_account_keys_sign_a_descriptor_without_origins() -> None:
    accounts = [root.derive(account_path(CHAIN)) for root in ROOTS]
    body = "wsh(sortedmulti(2,{}))".format(
        ",".join(f"{a.to_public().to_base58(version=CHAIN.xpub_version)}/0/*" for a in accounts)
    )
    keys = [SigningKey(account, source="account") for account in accounts[1:]]
    wallet = EmbitCustodyWallet(_with_checksum(body), CHAIN, keys)
    spends = [SpendInput("ab" * 32, 0, 50_000, 0, 4)]
    signed = wallet.sign(spends, [TxOutput(PAYEE, 40_000)])
    tx = Transaction.parse(bytes.fromhex(signed.raw_hex))
    witness_script = Script(tx.vin[0].witness.items[3])
    sighash = tx.sighash_segwit(0, witness_script, 50_000, SIGHASH.ALL)
    _, publics = parse_multisig(witness_script)
    valid = sum(
        publics[k].verify(embit.ec.Signature.parse(item[:-1]), sighash)
        for item in tx.vin[0].witness.items[1:3]
        for k in range(3)
    )
    assert valid == 2


def _tampering_finaliser(change: Any) -> Any:
    """embit's finaliser, with each input's witness items passed through ``change``."""

    def finalise(psbt: Any) -> Any:
        tx = finalize_psbt(psbt)
        for txin in tx.vin:
            txin.witness = Witness(change(list(txin.witness.items)))
        return tx

    return finalise


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda items: [items[0], items[2], items[1], items[3]], "not in the script's key order"),
        (lambda items: [items[0], items[1], items[1], items[3]], "not in the script's key order"),
        (lambda items: [items[0], b"\x30" * 71, items[2], items[3]], "unverified signature"),
        (lambda items: items[1:], "unexpected final witness"),
    ],
    ids=["swapped", "repeated", "foreign", "no-dummy"],
)
def test_a_final_witness_that_would_not_verify_is_caught(
    wallet: EmbitCustodyWallet, monkeypatch: pytest.MonkeyPatch, change: Any, message: str
) -> None:
    monkeypatch.setattr("sluice.bitcoin.wallet.finalize_psbt", _tampering_finaliser(change))
    with pytest.raises(BitcoinTransactionError, match=message):
        wallet.sign(_spends(wallet, 2), [TxOutput(PAYEE, 250_000)])


@pytest.mark.parametrize("held", [(), (0,), (1, 1)])
def test_fewer_than_two_distinct_keys_cannot_sign(held: tuple[int, ...]) -> None:
    wallet = EmbitCustodyWallet(DESCRIPTOR, CHAIN, [KEYS[n] for n in held])
    with pytest.raises(BitcoinTransactionError, match="needs 2 of the 3 custody keys"):
        wallet.sign(_spends(wallet, 1), [TxOutput(PAYEE, 100_000)])


def test_a_key_not_in_the_descriptor_is_refused() -> None:
    stranger = SigningKey(_root(9), source="stranger")
    with pytest.raises(BitcoinTransactionError, match=r"stranger .* not one of the custody"):
        EmbitCustodyWallet(DESCRIPTOR, CHAIN, [KEYS[0], stranger])


def test_a_key_of_another_network_is_refused() -> None:
    mainnet_version = SigningKey(_root(1, CHAINS["bitcoin"]), source="mainnet key")
    with pytest.raises(BitcoinTransactionError, match="mainnet key is of another network"):
        EmbitCustodyWallet(DESCRIPTOR, CHAIN, [mainnet_version, KEYS[1]])


@pytest.mark.parametrize(
    ("spends", "outputs", "message"),
    [
        ([SpendInput("ab" * 32, 0, 1000, 0, 0)], [TxOutput(PAYEE, 1001)], "exceed inputs"),
        (
            [SpendInput("ab" * 32, 0, 1000, 0, 0), SpendInput("ab" * 32, 0, 1000, 0, 1)],
            [TxOutput(PAYEE, 500)],
            "spent twice",
        ),
        ([], [TxOutput(PAYEE, 500)], "at least one input"),
        ([SpendInput("ab" * 32, 0, 1000, 0, 0)], [], "at least one output"),
        ([SpendInput("ab" * 32, 0, 1000, 0, 0)], [TxOutput(PAYEE, 0)], "must be positive"),
        ([SpendInput("AB" * 32, 0, 1000, 0, 0)], [TxOutput(PAYEE, 500)], "lower-case hex"),
        ([SpendInput("ab" * 32, 0, 0, 0, 0)], [TxOutput(PAYEE, 500)], "amount out of range"),
        ([SpendInput("ab" * 32, 0, 1000, 0, 0)], [TxOutput("zz", 500)], "not hex"),
    ],
)
def test_malformed_spends_are_refused(
    wallet: EmbitCustodyWallet, spends: list[SpendInput], outputs: list[TxOutput], message: str
) -> None:
    with pytest.raises(BitcoinTransactionError, match=message):
        wallet.sign(spends, outputs)


def test_the_estimate_grows_with_inputs_and_outputs(wallet: EmbitCustodyWallet) -> None:
    one = wallet.estimate_vsize(1, [PAYEE])
    assert wallet.estimate_vsize(2, [PAYEE]) > one
    assert wallet.estimate_vsize(1, [PAYEE, PAYEE]) == one + 31  # 8 + 1 + 22 bytes
    assert wallet.estimate_vsize(1, [PAYEE, "00" * 34 + "6a"]) > one  # a longer script costs more


# ---------------------------------------------------------------- libsecp256k1


def test_embit_uses_libsecp256k1_here() -> None:
    check_secp256k1()


def test_the_pure_python_fallback_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embit.ec, "secp256k1", py_secp256k1)
    with pytest.raises(BitcoinTransactionError, match="pure-Python secp256k1"):
        check_secp256k1()
    with pytest.raises(BitcoinTransactionError, match="pure-Python secp256k1"):
        EmbitCustodyWallet(DESCRIPTOR, CHAIN, KEYS[:2])


def test_the_fallback_in_bip32_is_refused_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(bip32, "secp256k1", py_secp256k1)
    with pytest.raises(BitcoinTransactionError, match=r"embit\.bip32"):
        check_secp256k1()


# ---------------------------------------------------------------- decoding


def _legacy_transaction() -> Transaction:
    coinbase = TransactionInput(bytes(32), 0xFFFFFFFF, script_sig=Script(b"\x01\x65"))
    return Transaction(
        version=1,
        vin=[coinbase],
        vout=[TransactionOutput(5_000_000_000, Script(bytes.fromhex(PAYEE)))],
        locktime=0,
    )


def test_decode_reports_a_non_segwit_transaction_like_the_node() -> None:
    tx = _legacy_transaction()
    raw = tx.serialize()
    decoded = decode_transaction(raw.hex())
    assert decoded["txid"] == decoded["hash"] == tx.txid().hex()
    assert decoded["size"] == decoded["vsize"] == len(raw)
    assert decoded["weight"] == 4 * len(raw)
    assert decoded["vin"] == [{"coinbase": "0165", "sequence": 0xFFFFFFFF}]
    assert decoded["vout"] == [
        {
            "value": Decimal(50),
            "n": 0,
            "scriptPubKey": {"hex": PAYEE, "type": "witness_v0_keyhash"},
        }
    ]


def test_decode_of_a_segwit_transaction_separates_txid_and_wtxid() -> None:
    tx = _legacy_transaction()
    tx.vin = [TransactionInput(bytes(range(32)), 1, witness=Witness([b"\x01" * 71, b"\x02" * 33]))]
    raw = tx.serialize()
    decoded = decode_transaction(raw.hex(), CHAIN)
    assert decoded["txid"] == tx.txid().hex()
    assert decoded["hash"] != decoded["txid"]
    assert decoded["vin"][0]["txinwitness"] == ["01" * 71, "02" * 33]
    assert decoded["vin"][0]["txid"] == bytes(range(32)).hex()
    assert decoded["vsize"] < decoded["size"]
    assert decoded["vout"][0]["scriptPubKey"]["address"] == (
        "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
    )


@pytest.mark.parametrize(
    "raw_hex",
    [
        "",
        "zz",
        _legacy_transaction().serialize().hex()[:-2],  # truncated
        _legacy_transaction().serialize().hex() + "00",  # trailing bytes
    ],
)
def test_decode_refuses_what_is_not_exactly_one_transaction(raw_hex: str) -> None:
    with pytest.raises(BitcoinTransactionError, match="TX decode failed"):
        decode_transaction(raw_hex)
