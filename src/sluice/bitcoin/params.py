"""embit's view of sluice's chain parameters, and which network a foreign address belongs to.

:mod:`sluice.domain.chains` holds the facts of each network; embit wants them as its own network
dictionary (``wif``, ``p2pkh``, ``p2sh``, ``bech32``, ``xprv``, ``xpub``, ``bip32``).
:func:`embit_network` builds that dictionary for any :class:`~sluice.domain.chains.Chain`, including
``litecoin-regtest``, which embit does not know.

:func:`networks_of_hrp` and :func:`networks_of_base58_version` name the networks an address's
prefix belongs to, so an address of another network is refused with a message that says whose it
is ("a bitcoin address, this custody is on litecoin-regtest") rather than "invalid".
"""

from __future__ import annotations

from typing import Any

from sluice.domain.chains import CHAINS, Chain, to_coins, to_sats

__all__ = [
    "embit_network",
    "networks_of_base58_version",
    "networks_of_hrp",
    "to_coins",
    "to_sats",
]

# Networks custody does not run on but whose addresses an operator may paste by mistake; naming
# them makes the refusal clear. Litecoin's mainnet and testnet prefixes are the likely ones next to
# litecoin-regtest.
_OTHER_HRPS: dict[str, tuple[str, ...]] = {"ltc": ("litecoin",), "tltc": ("litecoin-testnet",)}
_OTHER_BASE58: dict[int, tuple[str, ...]] = {
    48: ("litecoin",),
    50: ("litecoin",),
    58: ("litecoin-testnet",),
}


def embit_network(chain: Chain) -> dict[str, Any]:
    """embit's network dictionary for ``chain`` (a fresh one: embit never needs to share it).

    P2SH addresses are written with the chain's first P2SH version; the others are only accepted
    when reading (Litecoin's regtest writes 58 and still reads the old 196)."""
    return {
        "name": chain.name,
        "wif": bytes([chain.wif_prefix]),
        "p2pkh": bytes([chain.p2pkh_version]),
        "p2sh": bytes([chain.p2sh_versions[0]]),
        "bech32": chain.bech32_hrp,
        "xprv": chain.xprv_version,
        "xpub": chain.xpub_version,
        "bip32": chain.coin_type,
    }


def networks_of_hrp(hrp: str) -> tuple[str, ...]:
    """The networks whose segwit addresses start with ``hrp`` (lower case), in a stable order."""
    hrp = hrp.lower()
    known = tuple(chain.name for chain in CHAINS.values() if chain.bech32_hrp == hrp)
    return known + _OTHER_HRPS.get(hrp, ())


def networks_of_base58_version(version: int) -> tuple[str, ...]:
    """The networks whose base58 addresses (P2PKH or P2SH) carry ``version``."""
    known = tuple(
        chain.name
        for chain in CHAINS.values()
        if version == chain.p2pkh_version or version in chain.p2sh_versions
    )
    others = tuple(name for name in _OTHER_BASE58.get(version, ()) if name not in known)
    return known + others
