"""Bitcoin chain parameters, in one object per network, and exact coin ↔ satoshi conversion.

Every network fact custody depends on lives here: address encodings (bech32 HRP, base58 versions),
extended-key versions, the node's ``chain`` name, and the dust relay fee from which the P2WSH dust
limit follows. ``litecoin-regtest`` is the network of the tests' real node (Debian's
``litecoind -regtest``, a Bitcoin Core 0.21 fork): its dust relay fee is 10× Bitcoin's.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sluice.domain.errors import InvalidAmountError, InvalidInputError

SATS_PER_COIN = 100_000_000

# Sizes Bitcoin Core's dust rule uses for a P2WSH output: the output itself (8 value + 1 length +
# 34 script) and the input that would spend it, with the witness discounted (32 + 4 + 1 + 107 / 4
# + 4 = 67 vbytes).
_P2WSH_OUTPUT_BYTES = 43
_SEGWIT_SPEND_VBYTES = 67


@dataclass(frozen=True, slots=True)
class Chain:
    name: str
    node_chain: str  # what the node's getblockchaininfo answers as "chain"
    bech32_hrp: str
    p2pkh_version: int
    p2sh_versions: tuple[int, ...]  # accepted; the first is the one written
    wif_prefix: int
    xpub_version: bytes
    xprv_version: bytes
    coin_type: int  # BIP 44 coin type of the custody keys' derivation path
    dust_relay_fee_sat_per_kvb: int

    @property
    def p2wsh_dust_limit_sats(self) -> int:
        """The smallest P2WSH output the network relays: outputs below it are dust."""
        vbytes = _P2WSH_OUTPUT_BYTES + _SEGWIT_SPEND_VBYTES
        return vbytes * self.dust_relay_fee_sat_per_kvb // 1000


_TPUB = bytes.fromhex("043587cf")
_TPRV = bytes.fromhex("04358394")

CHAINS: dict[str, Chain] = {
    chain.name: chain
    for chain in (
        Chain(
            name="bitcoin",
            node_chain="main",
            bech32_hrp="bc",
            p2pkh_version=0,
            p2sh_versions=(5,),
            wif_prefix=0x80,
            xpub_version=bytes.fromhex("0488b21e"),
            xprv_version=bytes.fromhex("0488ade4"),
            coin_type=0,
            dust_relay_fee_sat_per_kvb=3000,
        ),
        Chain("testnet", "test", "tb", 111, (196,), 0xEF, _TPUB, _TPRV, 1, 3000),
        Chain("signet", "signet", "tb", 111, (196,), 0xEF, _TPUB, _TPRV, 1, 3000),
        Chain("regtest", "regtest", "bcrt", 111, (196,), 0xEF, _TPUB, _TPRV, 1, 3000),
        # Litecoin's regtest: P2SH is written with version 58 ("Q…"); Litecoin Core still accepts
        # the old 196. Its dust relay fee is 30,000 litoshi per kvB.
        Chain("litecoin-regtest", "regtest", "rltc", 111, (58, 196), 0xEF, _TPUB, _TPRV, 1, 30000),
    )
}


def chain_named(name: str) -> Chain:
    """The chain of that name; a clear error listing the known ones otherwise."""
    try:
        return CHAINS[name]
    except KeyError:
        known = ", ".join(sorted(CHAINS))
        message = f"unknown Bitcoin network {name!r}: expected one of {known}"
        raise InvalidInputError(message) from None


def to_sats(coins: Decimal | int | str) -> int:
    """Coins as the node prints them (a JSON number decoded as Decimal) to whole satoshis;
    a fraction of a satoshi is an error, never rounded away."""
    if isinstance(coins, float):
        raise InvalidAmountError("a coin amount must be an exact decimal, not a float")
    value = Decimal(coins) * SATS_PER_COIN
    if value != value.to_integral_value():
        raise InvalidAmountError(f"{coins} is not a whole number of satoshis")
    return int(value)


def to_coins(sats: int) -> Decimal:
    """Whole satoshis as coins, exactly (what the node's RPC takes)."""
    return Decimal(sats) / SATS_PER_COIN
