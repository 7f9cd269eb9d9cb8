"""The embedded ledger's contracts: their templates, ids and ``CreatedEvent`` bodies.

Holdings, transfer instructions, transfer preapprovals and the registry's rules, as the engine
keeps them in its active contract set, and how each is shown as a ``CreatedEvent`` in the JSON
Ledger API v2 shape (arguments and interface views). Contract ids are derived from the update id
and the node id, as Canton derives them from the transaction seed. Nothing here reads a clock or
a random source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import format_amount
from sluice.domain.ledger import (
    Holding,
    InstrumentId,
    Lock,
    Transfer,
    TransferInstruction,
    format_timestamp,
    parse_timestamp,
)
from sluice.ledger.wire import (
    HOLDING_INTERFACE_ID,
    TRANSFER_FACTORY_INTERFACE_ID,
    TRANSFER_INSTRUCTION_INTERFACE_ID,
    Json,
    instrument_json,
    transfer_json,
)


def fake_package_id(package_name: str) -> str:
    """A fixed 64-hex package id for one of the embedded ledger's own Daml packages."""
    return hashlib.sha256(f"sluice-embedded-package:{package_name}".encode()).hexdigest()


REGISTRY_PACKAGE_NAME = "sluice-token-registry"
PREAPPROVAL_PACKAGE_NAME = "splice-amulet"
_REGISTRY_PACKAGE_ID = fake_package_id(REGISTRY_PACKAGE_NAME)
HOLDING_TEMPLATE_ID = f"{_REGISTRY_PACKAGE_ID}:Sluice.Registry.Holding:Holding"
RULES_TEMPLATE_ID = f"{_REGISTRY_PACKAGE_ID}:Sluice.Registry.Rules:RegistryRules"
INSTRUCTION_TEMPLATE_ID = (
    f"{_REGISTRY_PACKAGE_ID}:Sluice.Registry.TransferInstruction:TransferInstruction"
)
PREAPPROVAL_TEMPLATE_ID = (
    f"{fake_package_id(PREAPPROVAL_PACKAGE_NAME)}:Splice.AmuletRules:TransferPreapproval"
)

# Metadata the registry writes on its own behalf.
HOLDING_ORIGIN_KEY = "registry.sluice.dev/created-by"
KYC_ACTION = "KYC/AML check of the transfer by the instrument admin"

_VIEW_OK: Json = {"code": 0, "message": "", "details": []}


# --- contracts ---------------------------------------------------------------------------------


@dataclass(slots=True)
class HoldingContract:
    contract_id: str
    admin: str
    owner: str
    instrument_id: str
    amount: Decimal
    lock: Lock | None
    created_at: str
    # The tx-kind of the action that created it (transfer, mint, unlock, ...), shown in the view.
    origin: str

    @property
    def instrument(self) -> InstrumentId:
        return InstrumentId(self.admin, self.instrument_id)

    @property
    def signatories(self) -> tuple[str, ...]:
        return (self.admin, self.owner) if self.admin != self.owner else (self.admin,)

    @property
    def observers(self) -> tuple[str, ...]:
        return ()

    def to_domain(self) -> Holding:
        return Holding(self.contract_id, self.owner, self.instrument, self.amount, self.lock)


@dataclass(slots=True)
class InstructionContract:
    contract_id: str
    admin: str
    sender: str
    receiver: str
    instrument_id: str
    amount: Decimal
    requested_at: str
    execute_before: str
    meta: dict[str, str]
    locked_holding_cid: str
    original_instruction_cid: str | None
    pending_internal_workflow: bool
    created_at: str

    @property
    def instrument(self) -> InstrumentId:
        return InstrumentId(self.admin, self.instrument_id)

    @property
    def signatories(self) -> tuple[str, ...]:
        return _unique((self.admin, self.sender))

    @property
    def observers(self) -> tuple[str, ...]:
        return tuple(p for p in (self.receiver,) if p not in self.signatories)

    @property
    def correlation_id(self) -> str:
        return self.original_instruction_cid or self.contract_id

    def to_domain(self) -> TransferInstruction:
        transfer = Transfer(
            sender=self.sender,
            receiver=self.receiver,
            amount=self.amount,
            instrument=self.instrument,
            requested_at=parse_timestamp(self.requested_at),
            execute_before=parse_timestamp(self.execute_before),
            input_holding_cids=(self.locked_holding_cid,),
            meta=dict(self.meta),
        )
        return TransferInstruction(
            contract_id=self.contract_id,
            transfer=transfer,
            status="pending_internal_workflow"
            if self.pending_internal_workflow
            else "pending_receiver_acceptance",
            original_instruction_cid=self.original_instruction_cid,
        )

    def snapshot(self) -> Json:
        """Everything a record needs to rebuild this contract's events after it is archived."""
        return {
            "contract_id": self.contract_id,
            "admin": self.admin,
            "sender": self.sender,
            "receiver": self.receiver,
            "instrument_id": self.instrument_id,
            "amount": format_amount(self.amount),
            "requested_at": self.requested_at,
            "execute_before": self.execute_before,
            "meta": dict(self.meta),
            "locked_holding_cid": self.locked_holding_cid,
            "original_instruction_cid": self.original_instruction_cid,
            "pending_internal_workflow": self.pending_internal_workflow,
            "created_at": self.created_at,
        }

    @classmethod
    def from_snapshot(cls, data: Mapping[str, Any]) -> InstructionContract:
        return cls(
            contract_id=data["contract_id"],
            admin=data["admin"],
            sender=data["sender"],
            receiver=data["receiver"],
            instrument_id=data["instrument_id"],
            amount=Decimal(data["amount"]),
            requested_at=data["requested_at"],
            execute_before=data["execute_before"],
            meta=dict(data["meta"]),
            locked_holding_cid=data["locked_holding_cid"],
            original_instruction_cid=data["original_instruction_cid"],
            pending_internal_workflow=data["pending_internal_workflow"],
            created_at=data["created_at"],
        )


@dataclass(slots=True)
class PreapprovalContract:
    contract_id: str
    admin: str
    receiver: str
    instrument_id: str
    created_at: str

    @property
    def instrument(self) -> InstrumentId:
        return InstrumentId(self.admin, self.instrument_id)

    @property
    def signatories(self) -> tuple[str, ...]:
        return _unique((self.admin, self.receiver))

    @property
    def observers(self) -> tuple[str, ...]:
        return ()


@dataclass(slots=True)
class RulesContract:
    """The admin's registry rules: its transfer factory, and the mint / burn / tap choices."""

    contract_id: str
    admin: str
    created_at: str

    @property
    def signatories(self) -> tuple[str, ...]:
        return (self.admin,)

    @property
    def observers(self) -> tuple[str, ...]:
        return ()


Contract = HoldingContract | InstructionContract | PreapprovalContract | RulesContract


def _unique(parties: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(parties))


# --- ids ---------------------------------------------------------------------------------------


def contract_id_for(update_id: str, node_id: int) -> str:
    """A Canton-looking contract id (``00`` + 32 bytes + ``ca111220`` + 32 bytes), derived from the
    update and the node that created the contract."""
    digest = hashlib.blake2b(f"{update_id}/{node_id}".encode(), digest_size=64).hexdigest()
    return f"00{digest[:64]}ca111220{digest[64:]}"


def trace_context_for(update_id: str) -> Json:
    digest = hashlib.blake2b(update_id.encode(), digest_size=24).hexdigest()
    return {"traceparent": f"00-{digest[:32]}-{digest[32:48]}-01", "tracestate": None}


# --- JSON pieces -------------------------------------------------------------------------------


def burned_text(value: Decimal) -> str:
    """Amounts in metadata values are Daml ``show`` text ("14.0"), not 10-digit ledger decimals."""
    text = format(value.normalize(), "f")
    return text if "." in text else f"{text}.0"


def lock_json(lock: Lock | None) -> Json | None:
    if lock is None:
        return None
    return {
        "holders": list(lock.holders),
        "expiresAt": format_timestamp(lock.expires_at) if lock.expires_at else None,
        "expiresAfter": None,
        "context": lock.context,
    }


def _instruction_transfer_json(c: InstructionContract) -> Json:
    return transfer_json(
        sender=c.sender,
        receiver=c.receiver,
        amount=format_amount(c.amount),
        admin=c.admin,
        instrument_id=c.instrument_id,
        requested_at=c.requested_at,
        execute_before=c.execute_before,
        input_cids=[c.locked_holding_cid],
        meta=c.meta,
    )


def _instruction_status_json(c: InstructionContract) -> Json:
    if c.pending_internal_workflow:
        return {
            "tag": "TransferPendingInternalWorkflow",
            "value": {"pendingActions": [[c.admin, KYC_ACTION]]},
        }
    return {"tag": "TransferPendingReceiverAcceptance", "value": {}}


def created_event_body(contract: Contract, node_id: int) -> Json:
    """A ``CreatedEvent`` without the reader-specific ``offset`` and ``witnessParties``."""
    views: list[Json]
    if isinstance(contract, HoldingContract):
        template_id = HOLDING_TEMPLATE_ID
        package_name = REGISTRY_PACKAGE_NAME
        amount = format_amount(contract.amount)
        argument: Json = {
            "admin": contract.admin,
            "owner": contract.owner,
            "instrument": instrument_json(contract.admin, contract.instrument_id),
            "amount": amount,
            "lock": lock_json(contract.lock),
            "meta": {"values": {}},
        }
        views = [
            {
                "interfaceId": HOLDING_INTERFACE_ID,
                "viewStatus": dict(_VIEW_OK, details=[]),
                "viewValue": {
                    "owner": contract.owner,
                    "instrumentId": instrument_json(contract.admin, contract.instrument_id),
                    "amount": amount,
                    "lock": lock_json(contract.lock),
                    "meta": {"values": {HOLDING_ORIGIN_KEY: contract.origin}},
                },
            }
        ]
    elif isinstance(contract, InstructionContract):
        template_id = INSTRUCTION_TEMPLATE_ID
        package_name = REGISTRY_PACKAGE_NAME
        argument = {
            "admin": contract.admin,
            "lockedHolding": contract.locked_holding_cid,
            "transfer": _instruction_transfer_json(contract),
            "originalInstructionCid": contract.original_instruction_cid,
            "status": _instruction_status_json(contract),
        }
        views = [
            {
                "interfaceId": TRANSFER_INSTRUCTION_INTERFACE_ID,
                "viewStatus": dict(_VIEW_OK, details=[]),
                "viewValue": {
                    "originalInstructionCid": contract.original_instruction_cid,
                    "transfer": _instruction_transfer_json(contract),
                    "status": _instruction_status_json(contract),
                    "meta": {"values": {}},
                },
            }
        ]
    elif isinstance(contract, PreapprovalContract):
        template_id = PREAPPROVAL_TEMPLATE_ID
        package_name = PREAPPROVAL_PACKAGE_NAME
        argument = {
            "dso": contract.admin,
            "receiver": contract.receiver,
            "provider": contract.receiver,
            "instrumentId": instrument_json(contract.admin, contract.instrument_id),
            "validFrom": contract.created_at,
            "lastRenewedAt": contract.created_at,
            "expiresAt": None,
        }
        views = []
    else:
        template_id = RULES_TEMPLATE_ID
        package_name = REGISTRY_PACKAGE_NAME
        argument = {"admin": contract.admin, "meta": {"values": {}}}
        views = [
            {
                "interfaceId": TRANSFER_FACTORY_INTERFACE_ID,
                "viewStatus": dict(_VIEW_OK, details=[]),
                "viewValue": {"admin": contract.admin, "meta": {"values": {}}},
            }
        ]
    return {
        "nodeId": node_id,
        "contractId": contract.contract_id,
        "templateId": template_id,
        "contractKey": None,
        "createArgument": argument,
        "createdEventBlob": "",
        "interfaceViews": views,
        "signatories": list(contract.signatories),
        "observers": list(contract.observers),
        "createdAt": contract.created_at,
        "packageName": package_name,
    }


def template_of(contract: Contract) -> str:
    if isinstance(contract, HoldingContract):
        return HOLDING_TEMPLATE_ID
    if isinstance(contract, InstructionContract):
        return INSTRUCTION_TEMPLATE_ID
    if isinstance(contract, PreapprovalContract):
        return PREAPPROVAL_TEMPLATE_ID
    return RULES_TEMPLATE_ID


# --- trees -------------------------------------------------------------------------------------
