"""Which components the iSTSi router talks to (the Bitcoin node, the custody descriptor, the
issuer party, the KYC registry): changed only through the approval-gated, time-locked
operation ``issuance.update_contract_addresses``.

* :func:`check_contract_addresses` validates a proposal's parameters before anyone votes on it
  (URL forms, a descriptor with a valid BIP-380 checksum, a party id ``hint::1220<64 hex>``).
* :func:`apply_contract_addresses` is the approval's executor: it writes the addresses with the
  ``effective_at`` the approval's time lock gives. It is idempotent by approval id (an executor
  run again after a crash writes nothing and audits nothing a second time).
* :func:`contract_addresses_in_force` reads the latest row whose time has come: no scheduler has
  to fire for a change to take effect. The router (``IssuanceRouter(rebuild=...)``) reads it at
  each tick and rebuilds its context before any step when it changed.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from urllib.parse import urlsplit

from sluice.domain.audit import AuditEntry
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import check_party_id, format_timestamp
from sluice.ports import UnitOfWorkFactory
from sluice.ports.issuance import ContractAddresses

FIELDS = ("bitcoin_node_url", "custody_descriptor", "issuer_party", "registry_url")
URL_FIELDS = ("bitcoin_node_url", "registry_url")
TEXT_LENGTH_MAX = 2000

# BIP-380 descriptor checksums.
_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}"
    "IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    'ijklmnopqrstuvwxyzABCDEFGH`#"\\ '
)
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


def _polymod(symbols: list[int]) -> int:
    checksum = 1
    for value in symbols:
        top = checksum >> 35
        checksum = ((checksum & 0x7FFFFFFFF) << 5) ^ value
        for i in range(5):
            if (top >> i) & 1:
                checksum ^= _GENERATOR[i]
    return checksum


def _expand(text: str) -> list[int] | None:
    symbols: list[int] = []
    groups: list[int] = []
    for character in text:
        value = _INPUT_CHARSET.find(character)
        if value < 0:
            return None
        symbols.append(value & 31)
        groups.append(value >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    return symbols


def descriptor_checksum(descriptor: str) -> str:
    """The BIP-380 checksum of ``descriptor`` (without ``#``)."""
    symbols = _expand(descriptor)
    if symbols is None:
        raise InvalidInputError("the descriptor has characters a descriptor cannot have")
    value = _polymod([*symbols, 0, 0, 0, 0, 0, 0, 0, 0]) ^ 1
    return "".join(_CHECKSUM_CHARSET[(value >> (5 * (7 - i))) & 31] for i in range(8))


def check_descriptor(text: str) -> str:
    """A descriptor ``...#checksum`` whose checksum is right."""
    body, sep, checksum = text.rpartition("#")
    if not sep or not body or len(checksum) != 8:
        raise InvalidInputError("custody_descriptor: expected 'descriptor#checksum' (8 characters)")
    if "(" not in body or not body.endswith(")"):
        raise InvalidInputError("custody_descriptor: not a descriptor (expected 'name(...)')")
    if descriptor_checksum(body) != checksum:
        raise InvalidInputError("custody_descriptor: the checksum does not match the descriptor")
    return text


def check_url(name: str, text: str) -> str:
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidInputError(f"{name}: expected an http(s) URL with a host, got {text!r}")
    try:
        parts.port  # noqa: B018 - reading it validates it
    except ValueError as exc:
        raise InvalidInputError(f"{name}: {exc}") from exc
    if any(c.isspace() for c in text):
        raise InvalidInputError(f"{name}: a URL has no spaces")
    return text


def check_issuer_party(text: str) -> str:
    """A Canton party id ``hint::1220<64 hex digits>`` (the namespace is a key fingerprint)."""
    check_party_id(text)
    namespace = text.partition("::")[2]
    digits = namespace[4:]
    if (
        not namespace.startswith("1220")
        or len(digits) != 64
        or any(c not in "0123456789abcdef" for c in digits)
    ):
        raise InvalidInputError(
            f"issuer_party: expected 'hint::1220' followed by 64 hex digits, got {text!r}"
        )
    return text


def check_contract_addresses(mapping: Mapping[str, object]) -> ContractAddresses:
    """The addresses a proposal names, validated; unknown keys and an empty proposal refused."""
    unknown = sorted(set(mapping) - set(FIELDS))
    if unknown:
        raise InvalidInputError(
            f"unknown contract address field(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}"
        )
    values: dict[str, str | None] = {}
    for name in FIELDS:
        value = mapping.get(name)
        if value is None:
            values[name] = None
            continue
        if not isinstance(value, str) or not value.strip():
            raise InvalidInputError(f"{name}: expected a non-empty string")
        if len(value) > TEXT_LENGTH_MAX:
            raise InvalidInputError(f"{name}: longer than {TEXT_LENGTH_MAX} characters")
        if name in URL_FIELDS:
            check_url(name, value)
        elif name == "custody_descriptor":
            check_descriptor(value)
        else:
            check_issuer_party(value)
        values[name] = value
    if all(value is None for value in values.values()):
        raise InvalidInputError("a contract address update names at least one address")
    return ContractAddresses(**values)


def apply_contract_addresses(
    uow_factory: UnitOfWorkFactory,
    addresses: ContractAddresses,
    *,
    approval_id: str,
    effective_at: datetime,
    actor: str,
    at: datetime,
) -> bool:
    """Write the addresses an approval decided, in force from ``effective_at``; False (nothing
    written, nothing audited) when this approval wrote them before."""
    check_contract_addresses(addresses.as_json())
    with uow_factory() as uow:
        if not uow.issuance.add_contract_addresses(
            addresses, approval_id=approval_id, effective_at=effective_at
        ):
            return False
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=f"contract-addresses:{approval_id}",
                    operation="issuance_contract_addresses_updated",
                    actor=actor,
                    recorded_at=at,
                    parameters={
                        "approval_id": approval_id,
                        "effective_at": format_timestamp(effective_at),
                        **{k: v for k, v in addresses.as_json().items() if v is not None},
                    },
                    state_changes=[{"contract_addresses": "scheduled"}],
                )
            ]
        )
        uow.commit()
    return True


def contract_addresses_in_force(
    uow_factory: UnitOfWorkFactory, now: datetime
) -> ContractAddresses | None:
    """The latest addresses whose ``effective_at`` has passed; None when none were ever set."""
    with uow_factory() as uow:
        return uow.issuance.contract_addresses(now)
