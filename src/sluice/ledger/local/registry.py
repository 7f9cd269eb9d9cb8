"""The registry side of the embedded ledger: instrument policies and the Registry API semantics.

A token admin runs a registry: an off-ledger service that tells wallets and exchanges which
transfer factory to use and how a transfer will go (``transfer_kind``: ``self``, ``direct`` or
``offer``), hands out the choice contexts (the contract ids a choice needs, with the contracts to
disclose) for accept / reject / withdraw, and serves instrument metadata. :class:`Registry` is that
service for one admin of an :class:`~sluice.ledger.local.engine.EmbeddedLedger`; its JSON forms are
those of ``splice-0.6.1-transfer-instruction-v1.yaml`` and ``splice-0.6.1-token-metadata-v1.yaml``.

:class:`RegistryPolicy` is what the admin decides per instrument: preapprovals allowed or not, a
KYC hold (every transfer to someone else waits in ``pending_internal_workflow`` until the admin
updates it), the longest allowed ``execute_before - requested_at``, the input limit, a flat fee.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from sluice.domain.amounts import ZERO, format_amount, parse_amount
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId, Transfer, TransferKind, format_timestamp
from sluice.ledger.wire import Json

from .transactions import PREAPPROVAL_TEMPLATE_ID, RULES_TEMPLATE_ID

if TYPE_CHECKING:
    from .instruments import Instruments

# Choice-context keys. The values are ``AnyValue`` JSON: {"tag": "AV_ContractId", "value": cid}.
RULES_CONTEXT_KEY = "registry-rules"
PREAPPROVAL_CONTEXT_KEY = "transfer-preapproval"
EXPIRE_LOCK_CONTEXT_KEY = "expire-lock"

SUPPORTED_APIS: Mapping[str, int] = {
    "splice-api-token-metadata-v1": 1,
    "splice-api-token-holding-v1": 1,
    "splice-api-token-transfer-instruction-v1": 1,
}
INPUTS_MAX = 100


@dataclass(frozen=True, slots=True)
class RegistryPolicy:
    """How the admin runs one instrument."""

    preapprovals_allowed: bool = True
    # Transfers to another party become offers that wait for the admin's update.
    kyc_hold: bool = False
    # The longest ``execute_before - requested_at`` a transfer may ask for; None = no cap.
    execute_before_span_max_s: int | None = 30 * 24 * 3600
    inputs_max: int = INPUTS_MAX
    # Burned from the sender on every transfer to another party (reported as ``/burned``).
    transfer_fee: Decimal = ZERO
    # The faucet (``tap``) is for demos; a regulated issuer switches it off.
    tap_allowed: bool = True

    def __post_init__(self) -> None:
        if not 1 <= self.inputs_max <= INPUTS_MAX:
            raise InvalidInputError(f"inputs_max must be between 1 and {INPUTS_MAX}")
        if self.execute_before_span_max_s is not None and self.execute_before_span_max_s <= 0:
            raise InvalidInputError("execute_before_span_max_s must be positive")
        fee = parse_amount(self.transfer_fee, field="transfer_fee")
        if fee < 0:
            raise InvalidInputError("transfer_fee must not be negative")
        object.__setattr__(self, "transfer_fee", fee)

    def as_json(self) -> Json:
        return {
            "preapprovals_allowed": self.preapprovals_allowed,
            "kyc_hold": self.kyc_hold,
            "execute_before_span_max_s": self.execute_before_span_max_s,
            "inputs_max": self.inputs_max,
            "transfer_fee": format_amount(self.transfer_fee),
            "tap_allowed": self.tap_allowed,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RegistryPolicy:
        return cls(
            preapprovals_allowed=bool(data["preapprovals_allowed"]),
            kyc_hold=bool(data["kyc_hold"]),
            execute_before_span_max_s=data["execute_before_span_max_s"],
            inputs_max=int(data["inputs_max"]),
            transfer_fee=Decimal(data["transfer_fee"]),
            tap_allowed=bool(data["tap_allowed"]),
        )


@dataclass(frozen=True, slots=True)
class InstrumentConfig:
    instrument: InstrumentId
    name: str
    symbol: str
    decimals: int
    policy: RegistryPolicy

    def as_json(self) -> Json:
        return {
            "admin": self.instrument.admin,
            "id": self.instrument.id,
            "name": self.name,
            "symbol": self.symbol,
            "decimals": self.decimals,
            "policy": self.policy.as_json(),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InstrumentConfig:
        return cls(
            instrument=InstrumentId(data["admin"], data["id"]),
            name=data["name"],
            symbol=data["symbol"],
            decimals=int(data["decimals"]),
            policy=RegistryPolicy.from_json(data["policy"]),
        )


@dataclass(frozen=True, slots=True)
class ChoiceContext:
    """``choiceContextData.values`` plus the contracts to disclose with the command."""

    values: Mapping[str, Any]
    disclosed_contracts: tuple[Mapping[str, Any], ...] = ()

    def as_json(self) -> Json:
        return {
            "choiceContextData": {"values": json.loads(json.dumps(self.values))},
            "disclosedContracts": [dict(c) for c in self.disclosed_contracts],
        }


@dataclass(frozen=True, slots=True)
class TransferFactory:
    factory_id: str
    transfer_kind: TransferKind
    choice_context: ChoiceContext

    def as_json(self) -> Json:
        return {
            "factoryId": self.factory_id,
            "transferKind": self.transfer_kind,
            "choiceContext": self.choice_context.as_json(),
        }


@dataclass(frozen=True, slots=True)
class InstrumentMetadata:
    id: str
    name: str
    symbol: str
    total_supply: Decimal
    total_supply_as_of: datetime
    decimals: int
    supported_apis: Mapping[str, int] = field(default_factory=lambda: dict(SUPPORTED_APIS))

    def as_json(self) -> Json:
        return {
            "id": self.id,
            "name": self.name,
            "symbol": self.symbol,
            "totalSupply": format_amount(self.total_supply),
            "totalSupplyAsOf": format_timestamp(self.total_supply_as_of),
            "decimals": self.decimals,
            "supportedApis": dict(self.supported_apis),
        }


def contract_id_value(contract_id: str) -> Json:
    return {"tag": "AV_ContractId", "value": contract_id}


def context_contract_id(values: Mapping[str, Any], key: str) -> str | None:
    """The contract id under ``key`` of a choice context, or None; refuses other shapes."""
    value = values.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping) or value.get("tag") != "AV_ContractId":
        raise InvalidInputError(f"choice context {key!r}: expected an AV_ContractId value")
    contract_id = value.get("value")
    if not isinstance(contract_id, str) or not contract_id:
        raise InvalidInputError(f"choice context {key!r}: missing contract id")
    return contract_id


class Registry:
    """The Registry API of one instrument admin, answered from the embedded ledger's state."""

    def __init__(self, ledger: Instruments, admin: str) -> None:
        self._ledger = ledger
        self.admin = admin

    def info(self) -> Json:
        return {"adminId": self.admin, "supportedApis": dict(SUPPORTED_APIS)}

    def instruments(self) -> list[InstrumentMetadata]:
        return [
            self._metadata(config)
            for config in self._ledger.instrument_configs()
            if config.instrument.admin == self.admin
        ]

    def instrument(self, instrument_id: str) -> InstrumentMetadata:
        config = self._ledger.instrument_config(InstrumentId(self.admin, instrument_id))
        return self._metadata(config)

    def _metadata(self, config: InstrumentConfig) -> InstrumentMetadata:
        return InstrumentMetadata(
            id=config.instrument.id,
            name=config.name,
            symbol=config.symbol,
            total_supply=self._ledger.supply(config.instrument),
            total_supply_as_of=self._ledger.time(),
            decimals=config.decimals,
        )

    def transfer_kind(self, transfer: Transfer) -> TransferKind:
        """What the factory will do with ``transfer`` if it is submitted now."""
        config = self._check_instrument(transfer.instrument)
        if transfer.sender == transfer.receiver:
            return "self"
        if config.policy.kyc_hold or not config.policy.preapprovals_allowed:
            return "offer"
        if self._ledger.preapproval_id(transfer.receiver, transfer.instrument) is not None:
            return "direct"
        return "offer"

    def transfer_factory(self, transfer: Transfer) -> TransferFactory:
        """``POST /registry/transfer-instruction/v1/transfer-factory``."""
        kind = self.transfer_kind(transfer)
        rules_id = self._ledger.rules_id(self.admin)
        values: dict[str, Any] = {RULES_CONTEXT_KEY: contract_id_value(rules_id)}
        disclosed = [self._disclosed(rules_id)]
        if kind == "direct":
            preapproval_id = self._ledger.preapproval_id(transfer.receiver, transfer.instrument)
            assert preapproval_id is not None
            values[PREAPPROVAL_CONTEXT_KEY] = contract_id_value(preapproval_id)
            disclosed.append(self._disclosed(preapproval_id))
        return TransferFactory(rules_id, kind, ChoiceContext(values, tuple(disclosed)))

    def accept_context(self, instruction_id: str) -> ChoiceContext:
        return self._instruction_context(instruction_id)

    def reject_context(self, instruction_id: str) -> ChoiceContext:
        return self._instruction_context(instruction_id)

    def withdraw_context(self, instruction_id: str) -> ChoiceContext:
        return self._instruction_context(instruction_id)

    def update_context(self, instruction_id: str) -> ChoiceContext:
        return self._instruction_context(instruction_id)

    def _instruction_context(self, instruction_id: str) -> ChoiceContext:
        instruction = self._ledger.instruction_contract(instruction_id)
        if instruction.admin != self.admin:
            raise InvalidInputError(
                f"transfer instruction {instruction_id} is not one of {self.admin}'s instruments"
            )
        rules_id = self._ledger.rules_id(self.admin)
        values = {
            RULES_CONTEXT_KEY: contract_id_value(rules_id),
            EXPIRE_LOCK_CONTEXT_KEY: {"tag": "AV_Bool", "value": True},
        }
        return ChoiceContext(values, (self._disclosed(rules_id),))

    def _check_instrument(self, instrument: InstrumentId) -> InstrumentConfig:
        if instrument.admin != self.admin:
            raise InvalidInputError(
                f"instrument {instrument.key()} is not administered by {self.admin}"
            )
        return self._ledger.instrument_config(instrument)

    def _disclosed(self, contract_id: str) -> Json:
        return self._ledger.disclosed_contract(contract_id)


__all__ = [
    "PREAPPROVAL_TEMPLATE_ID",
    "RULES_TEMPLATE_ID",
    "ChoiceContext",
    "InstrumentConfig",
    "InstrumentMetadata",
    "Registry",
    "RegistryPolicy",
    "TransferFactory",
]
