"""Chain parameters (``sluice.domain.chains``) and embit's view of them (``sluice.bitcoin.params``).

Checks the facts each network is defined by against embit's own tables for the networks embit
knows (so a typo in a version byte shows up), the litecoin-regtest values the real test node uses,
the P2WSH dust limits Bitcoin Core computes (330 sats at 3,000 sat/kvB), name lookup, exact
coin ↔ satoshi conversion, and which networks a foreign address prefix is attributed to.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from embit.networks import NETWORKS  # type: ignore[import-untyped]

from sluice.bitcoin.params import embit_network, networks_of_base58_version, networks_of_hrp
from sluice.domain.chains import CHAINS, chain_named, to_coins, to_sats
from sluice.domain.errors import InvalidAmountError, InvalidInputError

EMBIT_NAME = {"bitcoin": "main", "testnet": "test", "signet": "signet", "regtest": "regtest"}


def test_every_network_custody_runs_on_is_defined() -> None:
    assert set(CHAINS) == {"bitcoin", "testnet", "signet", "regtest", "litecoin-regtest"}
    for name, chain in CHAINS.items():
        assert chain.name == name
        assert chain_named(name) is chain


@pytest.mark.parametrize("name", sorted(EMBIT_NAME))
def test_embit_network_agrees_with_embits_own_table(name: str) -> None:
    ours = embit_network(CHAINS[name])
    theirs = NETWORKS[EMBIT_NAME[name]]
    for field in ("wif", "p2pkh", "p2sh", "bech32", "xprv", "xpub", "bip32"):
        assert ours[field] == theirs[field], field


def test_litecoin_regtest_parameters() -> None:
    chain = CHAINS["litecoin-regtest"]
    network = embit_network(chain)
    assert chain.node_chain == "regtest"
    assert network["bech32"] == "rltc"
    assert network["p2pkh"] == bytes([111])
    assert network["p2sh"] == bytes([58])  # written with 58; 196 is still read
    assert chain.p2sh_versions == (58, 196)
    assert network["xpub"] == bytes.fromhex("043587cf")  # tpub
    assert network["xprv"] == bytes.fromhex("04358394")  # tprv
    assert network["bip32"] == 1


def test_p2wsh_dust_limits_follow_each_chains_dust_relay_fee() -> None:
    # Bitcoin Core's dust threshold for a P2WSH output at the default 3,000 sat/kvB is 330 sats.
    assert CHAINS["bitcoin"].p2wsh_dust_limit_sats == 330
    assert CHAINS["regtest"].p2wsh_dust_limit_sats == 330
    # Litecoin relays at ten times that fee.
    assert CHAINS["litecoin-regtest"].p2wsh_dust_limit_sats == 3300


def test_unknown_network_name_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInputError, match=r"unknown Bitcoin network 'mainnet'.*litecoin"):
        chain_named("mainnet")


def test_coin_amounts_convert_exactly() -> None:
    assert to_sats(Decimal("0.00000001")) == 1
    assert to_sats("21000000") == 2_100_000_000_000_000
    assert to_sats(3) == 300_000_000
    assert to_coins(1) == Decimal("0.00000001")
    assert to_coins(to_sats(Decimal("1.23456789"))) == Decimal("1.23456789")


def test_fractions_of_a_satoshi_and_floats_are_refused() -> None:
    with pytest.raises(InvalidAmountError, match="whole number of satoshis"):
        to_sats(Decimal("0.000000001"))
    with pytest.raises(InvalidAmountError, match="not a float"):
        to_sats(0.1)  # type: ignore[arg-type]


def test_foreign_prefixes_are_attributed_to_their_networks() -> None:
    assert networks_of_hrp("bc") == ("bitcoin",)
    assert networks_of_hrp("TB") == ("testnet", "signet")
    assert networks_of_hrp("ltc") == ("litecoin",)
    assert networks_of_hrp("xyz") == ()
    assert networks_of_base58_version(0) == ("bitcoin",)
    assert networks_of_base58_version(58) == ("litecoin-regtest", "litecoin-testnet")
    assert networks_of_base58_version(48) == ("litecoin",)
    assert networks_of_base58_version(30) == ()
