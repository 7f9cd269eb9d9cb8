"""Address validation against the BIP 173 and BIP 350 test vectors, and across networks.

The vectors are copied from the two BIPs. Each valid segwit address is validated by a wallet on
the network its HRP belongs to (``bc`` → bitcoin, ``tb`` → testnet) and must give the BIP's
scriptPubKey; ``address_of`` must give the address back (lower case). BIP 173's v1+ addresses,
which BIP 350 made invalid (bech32 where bech32m is required), and every invalid vector are refused
on both networks. Beyond the BIPs: another network's address (bitcoin on litecoin-regtest, testnet
on regtest, litecoin mainnet) is refused with a message naming whose it is; litecoin-regtest's own
forms (``rltc1…``, P2PKH 111, P2SH 58 and 196) are accepted; unknown base58 versions, bad base58
checksums and wrong payload lengths are refused; embit's lenient decoder is shown to accept what we
refuse, which is why the checks are ours.
"""

from __future__ import annotations

import pytest
from embit import base58, bech32  # type: ignore[import-untyped]
from embit.script import address_to_scriptpubkey  # type: ignore[import-untyped]

from sluice.bitcoin.keys import create_sandbox_custody
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS, Chain
from sluice.domain.errors import InvalidAddressError

# BIP 350, "Test vectors for v0-v16 native segregated witness addresses": valid ones.
BIP350_VALID = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kt5nd6y",
        "5128751e76e8199196d454941c45d1b3a323f1433bd6751e76e8199196d454941c45d1b3a323f1433bd6",
    ),
    ("BC1SW50QGDZ25J", "6002751e"),
    ("bc1zw508d6qejxtdg4y5r3zarvaryvaxxpcs", "5210751e76e8199196d454941c45d1b3a323"),
    (
        "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
        "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "tb1pqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesf3hn0c",
        "5120000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqzk5jj0",
        "512079be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798",
    ),
]

# BIP 350's invalid segwit addresses, with the words of our refusal (the BIP's reason in the
# comment).
BIP350_INVALID = [
    (
        "tc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq5zuyut",
        "unknown network",
    ),  # invalid HRP
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqh2y7hd",
        "version 1 must be bech32m",
    ),  # bech32 for v1
    (
        "tb1z0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vqglt7rf",
        "version 2 must be bech32m",
    ),  # bech32 for v2
    (
        "BC1S0XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ54WELL",
        "version 16 must be bech32m",
    ),  # bech32 for v16
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh", "version 0 must be bech32,"),  # bech32m for v0
    (
        "tb1q0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq24jc47",
        "version 0 must be bech32,",
    ),  # bech32m for v0
    (
        "bc1p38j9r5y49hruaue7wxjce0updqjuyyx0kh56v8s25huc6995vvpql3jow4",
        "invalid bech32 string",
    ),  # bad checksum character
    (
        "BC130XLXVLHEMJA6C4DQV22UAPCTQUPFHLXM9H8Z3K2E72Q4K9HCZ7VQ7ZWS8R",
        "invalid witness version 17",
    ),  # witness version 17
    ("bc1pw5dgrnzv", "program length \\(1 bytes\\)"),  # 1-byte program
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v8n0nx0muaewav253zgeav",
        "program length \\(41 bytes\\)",
    ),  # 41 bytes
    (
        "BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P",
        "needs a 20 or 32-byte program",
    ),  # v0 program of 16 bytes
    (
        "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vq47Zagq",
        "invalid bech32 string",
    ),  # mixed case
    (
        "bc1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7v07qwwzcrf",
        "invalid padding",
    ),  # zero padding > 4 bits
    (
        "tb1p0xlxvlhemja6c4dqv22uapctqupfhlxm9h8z3k2e72q4k9hcz7vpggkg4j",
        "invalid padding",
    ),  # non-zero padding
    ("bc1gmk9yu", "empty data section"),  # empty data section
]

# BIP 173's valid segwit addresses: the v0 ones stay valid under BIP 350.
BIP173_VALID_V0 = [
    ("BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4", "0014751e76e8199196d454941c45d1b3a323f1433bd6"),
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
        "00201863143c14c5166804bd19203356da136c985678cd4d27a1b8c6329604903262",
    ),
    (
        "tb1qqqqqp399et2xygdj5xreqhjjvcmzhxw4aywxecjdzew6hylgvsesrxh6hy",
        "0020000000c4a5cad46221b2a187905e5266362b99d5e91c6ce24d165dab93e86433",
    ),
]

# BIP 173's valid v1+ addresses are bech32; BIP 350 requires bech32m for them, so they are invalid.
BIP173_V1_PLUS_NOW_INVALID = [
    "bc1pw508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7k7grplx",
    "BC1SW50QA3JX3S",
    "bc1zw508d6qejxtdg4y5r3zarvaryvg6kdaj",
]

# BIP 173's invalid segwit addresses, the same way.
BIP173_INVALID = [
    ("tc1qw508d6qejxtdg4y5r3zarvary0c5xw7kg3g4ty", "unknown network"),  # invalid HRP
    ("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t5", "invalid bech32 string"),  # invalid checksum
    (
        "BC13W508D6QEJXTDG4Y5R3ZARVARY0C5XW7KN40WF2",
        "invalid witness version 17",
    ),  # invalid witness version
    ("bc1rw5uspcuh", "program length \\(1 bytes\\)"),  # invalid program length
    (
        "bc10w508d6qejxtdg4y5r3zarvary0c5xw7kw508d6qejxtdg4y5r3zarvary0c5xw7kw5rljs90",
        "program length \\(41 bytes\\)",
    ),  # length
    ("BC1QR508D6QEJXTDG4Y5R3ZARVARYV98GJ9P", "needs a 20 or 32-byte program"),  # v0 program length
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sL5k7",
        "invalid bech32 string",
    ),  # mixed case
    (
        "bc1zw508d6qejxtdg4y5r3zarvaryvqyzf3du",
        "invalid padding",
    ),  # zero padding of more than 4 bits
    (
        "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3pjxtptv",
        "invalid padding",
    ),  # non-zero padding
    ("bc1gmk9yu", "empty data section"),  # empty data section
]

# The bech32 / bech32m strings of the BIPs that are invalid as strings, so as addresses too.
INVALID_STRINGS = [
    "\x201nwldj5",
    "\x7f1axkwrx",
    "\x801eym55h",
    "an84characterslonghumanreadablepartthatcontainsthenumber1andtheexcludedcharactersbio1569pvx",
    "pzry9x0s0muk",
    "1pzry9x0s0muk",
    "x1b4n0q5v",
    "li1dgmt3",
    "de1lg7wt\xff",
    "A1G7SGD8",
    "10a06t8",
    "1qzzfhee",
    "\x201xj0phk",
    "\x7f1g6xzxy",
    "\x801vctc34",
    "qyrz8wqd2c9m",
    "1qyrz8wqd2c9m",
    "y1b0jsk6g",
    "lt1igcx5c0",
    "in1muywd",
    "mm1crxm3i",
    "au1s5cgom",
    "M1VUXWEZ",
    "16plkw9",
    "1p2gdwpf",
    # Valid bech32 / bech32m strings, but not addresses of any network custody runs on.
    "A12UEL5L",
    "abcdef1qpzry9x8gf2tvdw0s3jn54khce6mua7lmqqqxw",
    "A1LQFN3A",
    "?1v759aa",
]


@pytest.fixture(scope="module")
def wallets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, EmbitCustodyWallet]:
    made = {}
    for name in ("bitcoin", "testnet", "regtest", "litecoin-regtest"):
        chain = CHAINS[name]
        custody = create_sandbox_custody(tmp_path_factory.mktemp(name) / "keys", chain)
        made[name] = EmbitCustodyWallet(custody.descriptor, chain, [])
    return made


def _network_of(address: str) -> str:
    return "bitcoin" if address.lower().startswith("bc1") else "testnet"


@pytest.mark.parametrize(("address", "script_hex"), BIP350_VALID + BIP173_VALID_V0)
def test_valid_segwit_vectors_give_the_bips_script(
    wallets: dict[str, EmbitCustodyWallet], address: str, script_hex: str
) -> None:
    wallet = wallets[_network_of(address)]
    assert wallet.validate_address(address) == script_hex
    assert wallet.address_of(script_hex) == address.lower()


@pytest.mark.parametrize(
    "address",
    [address for address, _ in BIP350_INVALID + BIP173_INVALID]
    + BIP173_V1_PLUS_NOW_INVALID
    + INVALID_STRINGS,
)
@pytest.mark.parametrize("network", ["bitcoin", "testnet"])
def test_invalid_vectors_are_refused(
    wallets: dict[str, EmbitCustodyWallet], network: str, address: str
) -> None:
    with pytest.raises(InvalidAddressError, match="refused"):
        wallets[network].validate_address(address)


@pytest.mark.parametrize(("address", "reason"), BIP350_INVALID + BIP173_INVALID)
def test_invalid_segwit_vectors_are_refused_for_the_bips_reason(
    wallets: dict[str, EmbitCustodyWallet], address: str, reason: str
) -> None:
    with pytest.raises(InvalidAddressError, match=reason):
        wallets[_network_of(address)].validate_address(address)


def test_bech32_where_bech32m_is_required_is_named_in_the_error(
    wallets: dict[str, EmbitCustodyWallet],
) -> None:
    with pytest.raises(InvalidAddressError, match=r"must be bech32m, not bech32 \(BIP 350\)"):
        wallets["bitcoin"].validate_address(BIP173_V1_PLUS_NOW_INVALID[0])
    with pytest.raises(InvalidAddressError, match=r"must be bech32, not bech32m"):
        wallets["bitcoin"].validate_address("bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kemeawh")


@pytest.mark.parametrize(
    ("network", "address", "message"),
    [
        (
            "litecoin-regtest",
            "BC1QW508D6QEJXTDG4Y5R3ZARVARY0C5XW7KV8F3T4",
            "a bitcoin address, this custody is on litecoin-regtest",
        ),
        (
            "regtest",
            "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
            "a testnet or signet address, this custody is on regtest",
        ),
        (
            "litecoin-regtest",
            "1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2",
            "a bitcoin address, this custody is on litecoin-regtest",
        ),
        (
            "regtest",
            "3J98t1WpEZ73CNmQviecrnyiWrnqRhWNLy",
            "a bitcoin address, this custody is on regtest",
        ),
        (
            "bitcoin",
            "tb1qrp33g0q5c5txsp9arysrx4k6zdkfs4nce4xj0gdcccefvpysxf3q0sl5k7",
            "a testnet or signet address, this custody is on bitcoin",
        ),
    ],
)
def test_another_networks_address_is_refused_naming_its_network(
    wallets: dict[str, EmbitCustodyWallet], network: str, address: str, message: str
) -> None:
    with pytest.raises(InvalidAddressError, match=message):
        wallets[network].validate_address(address)


def test_embit_alone_would_accept_another_networks_address() -> None:
    # Why the checks are ours: embit decodes a mainnet address whatever network custody is on.
    assert address_to_scriptpubkey("1BvBMSEYstWetqTFn5Au4m4GFg7xJaNVN2").data.hex() == (
        "76a91477bff20c60e522dfaa3350c39b030a5d004e839a88ac"
    )


def _base58(version: int, digest: bytes) -> str:
    return str(base58.encode_check(bytes([version]) + digest))


DIGEST = bytes(range(20))


def test_litecoin_regtest_addresses_are_accepted(
    wallets: dict[str, EmbitCustodyWallet],
) -> None:
    wallet = wallets["litecoin-regtest"]
    p2pkh = "76a914" + DIGEST.hex() + "88ac"
    p2sh = "a914" + DIGEST.hex() + "87"
    assert wallet.validate_address(_base58(111, DIGEST)) == p2pkh
    assert wallet.validate_address(_base58(58, DIGEST)) == p2sh
    assert wallet.validate_address(_base58(196, DIGEST)) == p2sh  # the old P2SH version
    assert _base58(58, DIGEST).startswith("Q")
    assert wallet.address_of(p2sh) == _base58(58, DIGEST)  # written with 58
    assert wallet.address_of(p2pkh) == _base58(111, DIGEST)
    witness_v0 = "0020" + bytes(range(32)).hex()
    address = bech32.encode("rltc", 0, bytes(range(32)))
    assert address.startswith("rltc1q")
    assert wallet.validate_address(address) == witness_v0
    assert wallet.address_of(witness_v0) == address
    taproot = bech32.encode("rltc", 1, bytes(range(32)))
    assert wallet.validate_address(taproot) == "5120" + bytes(range(32)).hex()
    deposit = wallet.derive(0, 7)
    assert deposit.address.startswith("rltc1q")
    assert wallet.validate_address(deposit.address) == deposit.script_hex


@pytest.mark.parametrize(
    ("address", "message"),
    [
        (bech32.encode("ltc", 0, bytes(20)), "a litecoin address"),
        (bech32.encode("tltc", 0, bytes(20)), "a litecoin-testnet address"),
        (_base58(48, DIGEST), "a litecoin address"),
        (_base58(0, DIGEST), "a bitcoin address"),
        (_base58(5, DIGEST), "a bitcoin address"),
        (_base58(30, DIGEST), "unknown base58 version 30"),
        (bech32.encode("xyz", 0, bytes(20)), "unknown network \\(HRP 'xyz'\\)"),
        (str(base58.encode_check(bytes([111]) + bytes(19))), "payload of 20 bytes"),
        (_base58(111, DIGEST)[:-1] + "x", "neither a valid"),
        ("", "empty"),
        ("rltc1 q", "not an address"),
    ],
)
def test_litecoin_regtest_refuses_other_forms_with_a_reason(
    wallets: dict[str, EmbitCustodyWallet], address: str, message: str
) -> None:
    with pytest.raises(InvalidAddressError, match=message):
        wallets["litecoin-regtest"].validate_address(address)


def test_address_of_answers_none_for_scripts_without_an_address(
    wallets: dict[str, EmbitCustodyWallet],
) -> None:
    wallet = wallets["regtest"]
    assert wallet.address_of("6a0568656c6c6f") is None  # OP_RETURN
    assert wallet.address_of("0010" + bytes(16).hex()) is None  # v0 program of 16 bytes
    assert wallet.address_of("51") is None
    assert wallet.address_of("not hex") is None
    assert wallet.address_of("") is None


@pytest.mark.parametrize("chain", [CHAINS["signet"]], ids=["signet"])
def test_signet_shares_testnets_prefixes(
    chain: Chain, tmp_path_factory: pytest.TempPathFactory
) -> None:
    custody = create_sandbox_custody(tmp_path_factory.mktemp("signet") / "keys", chain)
    wallet = EmbitCustodyWallet(custody.descriptor, chain, [])
    address, script_hex = BIP350_VALID[1]
    assert wallet.validate_address(address) == script_hex
