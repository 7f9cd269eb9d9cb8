"""embit's view of sluice's chain parameters, and the strict address codec of each chain.

:mod:`sluice.domain.chains` holds the facts of each network; embit wants them as its own network
dictionary (``wif``, ``p2pkh``, ``p2sh``, ``bech32``, ``xprv``, ``xpub``, ``bip32``).
:func:`embit_network` builds that dictionary for any :class:`~sluice.domain.chains.Chain`, including
``litecoin-regtest``, which embit does not know.

:func:`networks_of_hrp` and :func:`networks_of_base58_version` name the networks an address's
prefix belongs to, so an address of another network is refused with a message that says whose it
is ("a bitcoin address, this custody is on litecoin-regtest") rather than "invalid".

:class:`AddressCodec` reads and writes one chain's addresses strictly, because embit does not:
embit decodes any network's address and answers ``None`` for a base58 version it does not know.
Here only the chain's HRP and base58 versions are accepted, bech32 for witness version 0 and
bech32m for versions 1 to 16 (BIP 350), with the witness program's length checked (BIP 141).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embit import base58, bech32  # type: ignore[import-untyped]

from sluice.domain.chains import CHAINS, Chain, to_coins, to_sats
from sluice.domain.errors import InvalidAddressError

__all__ = [
    "AddressCodec",
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


def _names(networks: Sequence[str]) -> str:
    if len(networks) == 1:
        return networks[0]
    return ", ".join(networks[:-1]) + " or " + networks[-1]


def _article(networks: Sequence[str]) -> str:
    return "an" if _names(networks)[0] in "aeiou" else "a"


class AddressCodec:
    """Addresses of one chain, strictly: the chain's HRP and base58 versions only.

    :meth:`script_of` raises :class:`InvalidAddressError` saying what is wrong (another network's
    address names that network); :meth:`address_of` answers ``None`` for a script without an
    address."""

    def __init__(self, chain: Chain) -> None:
        self.chain = chain

    def _refuse(self, address: str, reason: str) -> InvalidAddressError:
        return InvalidAddressError(f"address {address!r} refused: {reason}")

    def _foreign(self, address: str, networks: Sequence[str]) -> InvalidAddressError:
        return self._refuse(
            address,
            f"{_article(networks)} {_names(networks)} address, this custody is on "
            f"{self.chain.name}",
        )

    def script_of(self, address: str) -> bytes:
        if not isinstance(address, str) or not address:
            raise InvalidAddressError("address refused: empty")
        if len(address) > 120 or any(not 33 <= ord(c) <= 126 for c in address):
            raise self._refuse(address[:120], "not an address (length or characters)")
        separator = address.rfind("1")
        hrp = address[:separator].lower() if separator > 0 else ""
        if hrp and (hrp == self.chain.bech32_hrp or networks_of_hrp(hrp)):
            return self._segwit_script(address, hrp)
        base58_script = self._base58_script(address)
        if base58_script is not None:
            return base58_script
        if hrp and bech32.bech32_decode(address)[0] is not None:
            raise self._refuse(address, f"a segwit address of an unknown network (HRP {hrp!r})")
        raise self._refuse(address, "neither a valid bech32/bech32m nor a base58check address")

    def _segwit_script(self, address: str, hrp: str) -> bytes:
        encoding, decoded_hrp, data = bech32.bech32_decode(address)
        if encoding is None:
            raise self._refuse(
                address, "invalid bech32 string (checksum, mixed case, length or characters)"
            )
        if decoded_hrp != self.chain.bech32_hrp:
            raise self._foreign(address, networks_of_hrp(decoded_hrp))
        if not data:
            raise self._refuse(address, "empty data section")
        version = data[0]
        if version > 16:
            raise self._refuse(address, f"invalid witness version {version}")
        program = bech32.convertbits(data[1:], 5, 8, False)
        if program is None:
            raise self._refuse(address, "invalid padding in the witness program")
        if not 2 <= len(program) <= 40:
            raise self._refuse(address, f"invalid witness program length ({len(program)} bytes)")
        if version == 0 and len(program) not in (20, 32):
            raise self._refuse(
                address, f"witness version 0 needs a 20 or 32-byte program, not {len(program)}"
            )
        if version == 0 and encoding != bech32.Encoding.BECH32:
            raise self._refuse(address, "witness version 0 must be bech32, not bech32m (BIP 350)")
        if version > 0 and encoding != bech32.Encoding.BECH32M:
            raise self._refuse(
                address, f"witness version {version} must be bech32m, not bech32 (BIP 350)"
            )
        opcode = 0 if version == 0 else 0x50 + version
        return bytes([opcode, len(program)]) + bytes(program)

    def _base58_script(self, address: str) -> bytes | None:
        if any(c not in base58.B58_DIGITS for c in address):
            return None
        try:
            payload = base58.decode_check(address)
        except Exception:
            return None
        if len(payload) != 21:
            raise self._refuse(address, f"a base58 payload of {len(payload)} bytes, not 21")
        version, digest = payload[0], bytes(payload[1:])
        if version == self.chain.p2pkh_version:
            return b"\x76\xa9\x14" + digest + b"\x88\xac"
        if version in self.chain.p2sh_versions:
            return b"\xa9\x14" + digest + b"\x87"
        networks = networks_of_base58_version(version)
        if networks:
            raise self._foreign(address, networks)
        raise self._refuse(address, f"unknown base58 version {version}")

    def address_of(self, script_bytes: bytes) -> str | None:
        size = len(script_bytes)
        if size == 25 and script_bytes[:3] == b"\x76\xa9\x14" and script_bytes[23:] == b"\x88\xac":
            return str(base58.encode_check(bytes([self.chain.p2pkh_version]) + script_bytes[3:23]))
        if size == 23 and script_bytes[:2] == b"\xa9\x14" and script_bytes[22] == 0x87:
            version = self.chain.p2sh_versions[0]
            return str(base58.encode_check(bytes([version]) + script_bytes[2:22]))
        if 4 <= size <= 42 and script_bytes[1] == size - 2:
            opcode = script_bytes[0]
            if opcode == 0:
                version = 0
            elif 0x51 <= opcode <= 0x60:
                version = opcode - 0x50
            else:
                return None
            if version == 0 and size - 2 not in (20, 32):
                return None
            encoded = bech32.encode(self.chain.bech32_hrp, version, script_bytes[2:])
            return None if encoded is None else str(encoded)
        return None
