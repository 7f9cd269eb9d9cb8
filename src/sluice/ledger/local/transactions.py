"""The embedded ledger's contracts and the event trees of its transactions.

A committed update is stored as a small *record* (a JSON object naming what happened: a transfer
with its inputs and amounts, an accept, a mint, ...). :func:`build_tree` turns a record into the
full event tree in the JSON Ledger API v2 shape (``CreatedEvent`` / ``ExercisedEvent`` bodies with
node ids, informees, arguments, results and interface views) together with its effects on the set
of active contracts. The tree is a pure function of the record, so the engine uses the same
function when it commits, when it serves a read and when it replays a persisted ledger: what a
reader sees and what the ledger's state became can never disagree.

Contract ids are derived from the update id and the node id, as Canton derives them from the
transaction seed; update ids from the ledger's seed. Nothing here reads a clock or a random source.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import format_amount
from sluice.domain.ledger import (
    BURNED_KEY,
    REASON_KEY,
    SENDER_KEY,
    TX_KIND_KEY,
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
    extra_args_json,
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


@dataclass(slots=True)
class Node:
    node_id: int
    # Parties that see this node: its informees and the informees of every ancestor.
    visible: frozenset[str]
    kind: str  # "CreatedEvent" or "ExercisedEvent"
    # The event without ``offset`` and ``witnessParties``; for a create it is rendered from
    # ``contract`` only when someone reads it (commits and replays never need it).
    body: Json | None
    contract: Contract | None = None

    def event(self) -> Json:
        if self.body is None:
            assert self.contract is not None
            self.body = created_event_body(self.contract, self.node_id)
        return self.body


@dataclass(slots=True)
class Tree:
    nodes: list[Node]
    # (True, contract, node id) for a create, (False, contract id, node id) for an archive, in
    # execution order (a contract created and consumed in one transaction is created first).
    effects: list[tuple[bool, Any, int]]
    # What the command produced, for its caller: new holding ids, the instruction id, ...
    outcome: Json = field(default_factory=dict)

    @property
    def visible(self) -> frozenset[str]:
        parties: set[str] = set()
        for node in self.nodes:
            parties.update(node.visible)
        return frozenset(parties)


class _Builder:
    """Collects the nodes of one transaction in pre-order, as the Daml engine would emit them."""

    def __init__(self, update_id: str, created_at: str) -> None:
        self.update_id = update_id
        self.created_at = created_at
        self.nodes: list[Node] = []
        self.effects: list[tuple[bool, Any, int]] = []
        self._next_id = 0
        self._open: list[Node] = []

    def _take_id(self) -> int:
        node_id = self._next_id
        self._next_id += 1
        return node_id

    def skip(self) -> None:
        """A node the Ledger API does not show (a fetch): it only leaves a gap in the node ids."""
        self._next_id += 1

    def _visible(self, informees: Iterable[str]) -> frozenset[str]:
        inherited = self._open[-1].visible if self._open else frozenset()
        return inherited.union(informees)

    def create(self, make: Any) -> Any:
        """Create the contract ``make(contract_id)`` at the next node id."""
        node_id = self._take_id()
        contract = make(contract_id_for(self.update_id, node_id))
        visible = self._visible((*contract.signatories, *contract.observers))
        self.nodes.append(Node(node_id, visible, "CreatedEvent", None, contract))
        self.effects.append((True, contract, node_id))
        return contract

    def holding(
        self,
        admin: str,
        owner: str,
        instrument_id: str,
        amount: Decimal,
        origin: str,
        lock: Lock | None = None,
    ) -> HoldingContract:
        created_at = self.created_at
        result: HoldingContract = self.create(
            lambda cid: HoldingContract(
                cid, admin, owner, instrument_id, amount, lock, created_at, origin
            )
        )
        return result

    def begin(
        self,
        *,
        contract_id: str,
        template_id: str,
        package_name: str,
        choice: str,
        argument: Json,
        actors: Sequence[str],
        consuming: bool,
        signatories: Sequence[str],
        observers: Sequence[str] = (),
        choice_observers: Sequence[str] = (),
        interface_id: str | None = None,
        implemented: Sequence[str] = (),
    ) -> Node:
        node_id = self._take_id()
        informees = [*signatories, *actors, *choice_observers]
        if consuming:
            informees.extend(observers)
            # A consuming exercise archives its contract before its children run.
            self.effects.append((False, contract_id, node_id))
        node = Node(
            node_id,
            self._visible(informees),
            "ExercisedEvent",
            {
                "nodeId": node_id,
                "contractId": contract_id,
                "templateId": template_id,
                "interfaceId": interface_id,
                "choice": choice,
                "choiceArgument": argument,
                "actingParties": list(_unique(actors)),
                "consuming": consuming,
                "lastDescendantNodeId": node_id,
                "exerciseResult": None,
                "packageName": package_name,
                # Canton lists the implemented interfaces of consumed contracts only.
                "implementedInterfaces": list(implemented) if consuming else [],
            },
        )
        self.nodes.append(node)
        self._open.append(node)
        return node

    def end(self, node: Node, result: Any) -> None:
        assert self._open, "no exercise is open"
        assert self._open[-1] is node, "exercises must end in reverse order"
        assert node.body is not None
        self._open.pop()
        node.body["lastDescendantNodeId"] = self._next_id - 1
        node.body["exerciseResult"] = result

    def archive_holding(self, contract_id: str, admin: str, owner: str) -> None:
        signatories = _unique((admin, owner))
        node = self.begin(
            contract_id=contract_id,
            template_id=HOLDING_TEMPLATE_ID,
            package_name=REGISTRY_PACKAGE_NAME,
            choice="Archive",
            argument={},
            actors=signatories,
            consuming=True,
            signatories=signatories,
            implemented=(HOLDING_INTERFACE_ID,),
        )
        self.end(node, {})

    def tree(self, outcome: Json) -> Tree:
        assert not self._open, "an exercise was left open"
        return Tree(self.nodes, self.effects, outcome)


# --- one builder per record kind ---------------------------------------------------------------


def build_tree(record: Mapping[str, Any]) -> Tree:
    """The full event tree of a committed update (see the module docstring)."""
    kind = record["kind"]
    builder = _BUILDERS.get(kind)
    if builder is None:
        raise ValueError(f"unknown update record kind {kind!r}")
    return builder(record)


def _spend_inputs(
    b: _Builder, inputs: Sequence[Sequence[Any]], admin: str, owner: str, instrument_id: str
) -> None:
    """Consume the inputs: an expired lock is first released by the owner, like Amulet's
    ``LockedAmulet_OwnerExpireLock``; every input then ends in an ``Archive``."""
    for contract_id, amount, lock_expired in inputs:
        if lock_expired:
            signatories = _unique((admin, owner))
            node = b.begin(
                contract_id=contract_id,
                template_id=HOLDING_TEMPLATE_ID,
                package_name=REGISTRY_PACKAGE_NAME,
                choice="Holding_OwnerExpireLock",
                argument={},
                actors=(owner,),
                consuming=True,
                signatories=signatories,
                implemented=(HOLDING_INTERFACE_ID,),
            )
            unlocked = b.holding(admin, owner, instrument_id, Decimal(amount), "unlock")
            b.end(
                node,
                {
                    "holdingCid": unlocked.contract_id,
                    "meta": {"values": {REASON_KEY: "lock expired", TX_KIND_KEY: "unlock"}},
                },
            )
            b.archive_holding(unlocked.contract_id, admin, owner)
        else:
            b.archive_holding(contract_id, admin, owner)


def _build_transfer(r: Mapping[str, Any]) -> Tree:
    b = _Builder(r["update_id"], r["record_time"])
    admin: str = r["admin"]
    sender: str = r["sender"]
    receiver: str = r["receiver"]
    instrument_id: str = r["instrument_id"]
    amount = Decimal(r["amount"])
    change = Decimal(r["change"])
    fee = Decimal(r["fee"])
    kind: str = r["transfer_kind"]
    meta: dict[str, str] = r["meta"]
    inputs: list[list[Any]] = r["inputs"]
    input_cids = [i[0] for i in inputs]
    amount_text = format_amount(amount)
    root = b.begin(
        contract_id=r["rules_cid"],
        template_id=RULES_TEMPLATE_ID,
        package_name=REGISTRY_PACKAGE_NAME,
        choice="TransferFactory_Transfer",
        argument={
            "expectedAdmin": admin,
            "transfer": transfer_json(
                sender=sender,
                receiver=receiver,
                amount=amount_text,
                admin=admin,
                instrument_id=instrument_id,
                requested_at=r["requested_at"],
                execute_before=r["execute_before"],
                input_cids=input_cids,
                meta=meta,
            ),
            "extraArgs": extra_args_json(r["context"], r["extra_meta"]),
        },
        actors=(sender,),
        consuming=False,
        signatories=(admin,),
        interface_id=TRANSFER_FACTORY_INTERFACE_ID,
    )
    send: Node | None = None
    if kind == "direct":
        b.skip()  # the fetch of the preapproval
        send = b.begin(
            contract_id=r["preapproval_cid"],
            template_id=PREAPPROVAL_TEMPLATE_ID,
            package_name=PREAPPROVAL_PACKAGE_NAME,
            choice="TransferPreapproval_Send",
            argument={
                "context": {
                    "registryRules": r["rules_cid"],
                    "context": {"instrumentId": instrument_json(admin, instrument_id)},
                },
                "inputs": [{"tag": "InputHolding", "value": cid} for cid in input_cids],
                "amount": amount_text,
                "sender": sender,
                "description": meta.get(REASON_KEY),
            },
            actors=(sender,),
            consuming=False,
            signatories=_unique((admin, receiver)),
        )
    _spend_inputs(b, inputs, admin, sender, instrument_id)
    outcome: Json = {"transfer_kind": kind}
    change_cids: list[str] = []
    if kind == "offer":
        if change > 0:
            change_cids.append(
                b.holding(admin, sender, instrument_id, change, "transfer").contract_id
            )
        lock = Lock(
            holders=(admin,),
            expires_at=parse_timestamp(r["execute_before"]),
            context=f"transfer to '{receiver}'",
        )
        locked = b.holding(admin, sender, instrument_id, amount, "transfer", lock)
        created_at = b.created_at
        instruction: InstructionContract = b.create(
            lambda cid: InstructionContract(
                contract_id=cid,
                admin=admin,
                sender=sender,
                receiver=receiver,
                instrument_id=instrument_id,
                amount=amount,
                requested_at=r["requested_at"],
                execute_before=r["execute_before"],
                meta=dict(meta),
                locked_holding_cid=locked.contract_id,
                original_instruction_cid=None,
                pending_internal_workflow=bool(r["pending_internal_workflow"]),
                created_at=created_at,
            )
        )
        output: Json = {
            "tag": "TransferInstructionResult_Pending",
            "value": {"transferInstructionCid": instruction.contract_id},
        }
        outcome.update(
            status="pending",
            instruction_cid=instruction.contract_id,
            locked_holding_cid=locked.contract_id,
            receiver_holding_cids=[],
        )
    else:
        received = b.holding(admin, receiver, instrument_id, amount, "transfer")
        if change > 0:
            change_cids.append(
                b.holding(admin, sender, instrument_id, change, "transfer").contract_id
            )
        output = {
            "tag": "TransferInstructionResult_Completed",
            "value": {"receiverHoldingCids": [received.contract_id]},
        }
        outcome.update(status="completed", receiver_holding_cids=[received.contract_id])
    outcome["sender_change_cids"] = change_cids
    if send is not None:
        send_meta = {SENDER_KEY: sender, TX_KIND_KEY: "transfer", BURNED_KEY: burned_text(fee)}
        if REASON_KEY in meta:
            send_meta[REASON_KEY] = meta[REASON_KEY]
        b.end(
            send,
            {
                "result": {
                    "summary": {
                        "inputAmount": format_amount(Decimal(r["input_amount"])),
                        "outputAmount": amount_text,
                        "senderChangeAmount": format_amount(change),
                        "fee": format_amount(fee),
                    },
                    "createdHoldings": [
                        {"tag": "TransferResultHolding", "value": cid}
                        for cid in outcome["receiver_holding_cids"]
                    ],
                    "senderChangeHolding": change_cids[0] if change_cids else None,
                    "meta": None,
                },
                "meta": {"values": send_meta},
            },
        )
    result_meta = {BURNED_KEY: burned_text(fee)}
    if kind == "self":
        result_meta[TX_KIND_KEY] = "merge-split"
    b.end(
        root,
        {
            "output": output,
            "senderChangeCids": list(change_cids),
            "meta": {"values": result_meta},
        },
    )
    return b.tree(outcome)


_INSTRUCTION_CHOICES = {
    "accept": "TransferInstruction_Accept",
    "reject": "TransferInstruction_Reject",
    "withdraw": "TransferInstruction_Withdraw",
    "update": "TransferInstruction_Update",
}


def _unlock(b: _Builder, instruction: InstructionContract) -> HoldingContract:
    """Release the instruction's locked holding back to the sender (nested, tx-kind unlock)."""
    signatories = _unique((instruction.admin, instruction.sender))
    node = b.begin(
        contract_id=instruction.locked_holding_cid,
        template_id=HOLDING_TEMPLATE_ID,
        package_name=REGISTRY_PACKAGE_NAME,
        choice="Holding_Unlock",
        argument={"holders": [instruction.admin]},
        actors=signatories,
        consuming=True,
        signatories=signatories,
        implemented=(HOLDING_INTERFACE_ID,),
    )
    unlocked = b.holding(
        instruction.admin,
        instruction.sender,
        instruction.instrument_id,
        instruction.amount,
        "unlock",
    )
    b.end(
        node,
        {
            "holdingCid": unlocked.contract_id,
            "meta": {"values": {REASON_KEY: "holders released lock", TX_KIND_KEY: "unlock"}},
        },
    )
    return unlocked


def _build_instruction_choice(r: Mapping[str, Any]) -> Tree:
    b = _Builder(r["update_id"], r["record_time"])
    kind: str = r["kind"]
    instruction = InstructionContract.from_snapshot(r["instruction"])
    actor = {
        "accept": instruction.receiver,
        "reject": instruction.receiver,
        "withdraw": instruction.sender,
        "update": instruction.admin,
    }[kind]
    argument: Json = {"extraArgs": extra_args_json(r["context"], r["extra_meta"])}
    if kind == "update":
        argument = {"extraActors": [], **argument}
    root = b.begin(
        contract_id=instruction.contract_id,
        template_id=INSTRUCTION_TEMPLATE_ID,
        package_name=REGISTRY_PACKAGE_NAME,
        choice=_INSTRUCTION_CHOICES[kind],
        argument=argument,
        actors=(actor,),
        consuming=True,
        signatories=instruction.signatories,
        observers=instruction.observers,
        interface_id=TRANSFER_INSTRUCTION_INTERFACE_ID,
        implemented=(TRANSFER_INSTRUCTION_INTERFACE_ID,),
    )
    change_cids: list[str] = []
    outcome: Json = {"instruction_cid": instruction.contract_id, "receiver_holding_cids": []}
    if kind == "accept":
        unlocked = _unlock(b, instruction)
        b.archive_holding(unlocked.contract_id, instruction.admin, instruction.sender)
        received = b.holding(
            instruction.admin,
            instruction.receiver,
            instruction.instrument_id,
            instruction.amount,
            "transfer",
        )
        output: Json = {
            "tag": "TransferInstructionResult_Completed",
            "value": {"receiverHoldingCids": [received.contract_id]},
        }
        outcome.update(status="completed", receiver_holding_cids=[received.contract_id])
    elif kind == "update" and r["approve"]:
        created_at = b.created_at
        passed_on: InstructionContract = b.create(
            lambda cid: InstructionContract(
                contract_id=cid,
                admin=instruction.admin,
                sender=instruction.sender,
                receiver=instruction.receiver,
                instrument_id=instruction.instrument_id,
                amount=instruction.amount,
                requested_at=instruction.requested_at,
                execute_before=instruction.execute_before,
                meta=dict(instruction.meta),
                locked_holding_cid=instruction.locked_holding_cid,
                original_instruction_cid=instruction.correlation_id,
                pending_internal_workflow=False,
                created_at=created_at,
            )
        )
        output = {
            "tag": "TransferInstructionResult_Pending",
            "value": {"transferInstructionCid": passed_on.contract_id},
        }
        outcome.update(status="pending", instruction_cid=passed_on.contract_id)
    else:
        # Reject, withdraw, or an update that fails the transfer: the sender gets its funds
        # back, unless it already spent the locked holding after the lock expired.
        if r["locked_holding_active"]:
            change_cids.append(_unlock(b, instruction).contract_id)
        output = {"tag": "TransferInstructionResult_Failed", "value": {}}
        outcome["status"] = {"reject": "rejected", "withdraw": "withdrawn"}.get(kind, "failed")
    outcome["sender_change_cids"] = change_cids
    b.end(
        root,
        {"output": output, "senderChangeCids": list(change_cids), "meta": {"values": {}}},
    )
    return b.tree(outcome)


def _build_mint(r: Mapping[str, Any]) -> Tree:
    b = _Builder(r["update_id"], r["record_time"])
    admin: str = r["admin"]
    owner: str = r["owner"]
    tap = r["kind"] == "tap"
    amount = Decimal(r["amount"])
    reason = "tapped faucet" if tap else r["reason"]
    root = b.begin(
        contract_id=r["rules_cid"],
        template_id=RULES_TEMPLATE_ID,
        package_name=REGISTRY_PACKAGE_NAME,
        choice="RegistryRules_Tap" if tap else "RegistryRules_Mint",
        argument={
            "receiver": owner,
            "instrumentId": instrument_json(admin, r["instrument_id"]),
            "amount": format_amount(amount),
            "meta": {"values": {REASON_KEY: reason} if reason else {}},
        },
        actors=(owner,) if tap else (admin,),
        consuming=False,
        signatories=(admin,),
        choice_observers=() if tap else (owner,),
    )
    holding = b.holding(admin, owner, r["instrument_id"], amount, "mint")
    meta = {TX_KIND_KEY: "mint"}
    if reason:
        meta[REASON_KEY] = reason
    b.end(root, {"holdingCid": holding.contract_id, "meta": {"values": meta}})
    return b.tree({"status": "completed", "receiver_holding_cids": [holding.contract_id]})


def _build_burn(r: Mapping[str, Any]) -> Tree:
    b = _Builder(r["update_id"], r["record_time"])
    admin: str = r["admin"]
    owner: str = r["owner"]
    instrument_id: str = r["instrument_id"]
    amount = Decimal(r["amount"])
    change = Decimal(r["change"])
    inputs: list[list[Any]] = r["inputs"]
    reason: str | None = r["reason"]
    root = b.begin(
        contract_id=r["rules_cid"],
        template_id=RULES_TEMPLATE_ID,
        package_name=REGISTRY_PACKAGE_NAME,
        choice="RegistryRules_Burn",
        argument={
            "owner": owner,
            "instrumentId": instrument_json(admin, instrument_id),
            "amount": format_amount(amount),
            "inputHoldingCids": [i[0] for i in inputs],
            "meta": {"values": {REASON_KEY: reason} if reason else {}},
        },
        actors=(admin,),
        consuming=False,
        signatories=(admin,),
        choice_observers=(owner,),
    )
    _spend_inputs(b, inputs, admin, owner, instrument_id)
    change_cids: list[str] = []
    if change > 0:
        change_cids.append(b.holding(admin, owner, instrument_id, change, "burn").contract_id)
    meta = {TX_KIND_KEY: "burn", BURNED_KEY: burned_text(amount)}
    if reason:
        meta[REASON_KEY] = reason
    b.end(
        root,
        {
            "burnedAmount": format_amount(amount),
            "senderChangeCids": list(change_cids),
            "meta": {"values": meta},
        },
    )
    return b.tree({"status": "completed", "sender_change_cids": change_cids})


def _build_preapproval_create(r: Mapping[str, Any]) -> Tree:
    b = _Builder(r["update_id"], r["record_time"])
    created_at = b.created_at
    preapproval: PreapprovalContract = b.create(
        lambda cid: PreapprovalContract(
            cid, r["admin"], r["receiver"], r["instrument_id"], created_at
        )
    )
    return b.tree({"status": "completed", "preapproval_cid": preapproval.contract_id})


def _build_preapproval_cancel(r: Mapping[str, Any]) -> Tree:
    b = _Builder(r["update_id"], r["record_time"])
    receiver: str = r["receiver"]
    node = b.begin(
        contract_id=r["preapproval_cid"],
        template_id=PREAPPROVAL_TEMPLATE_ID,
        package_name=PREAPPROVAL_PACKAGE_NAME,
        choice="TransferPreapproval_Cancel",
        argument={"p": receiver},
        actors=(receiver,),
        consuming=True,
        signatories=_unique((r["admin"], receiver)),
    )
    b.end(node, {})
    return b.tree({"status": "completed", "preapproval_cid": r["preapproval_cid"]})


def _build_rules_create(r: Mapping[str, Any]) -> Tree:
    b = _Builder(r["update_id"], r["record_time"])
    created_at = b.created_at
    rules: RulesContract = b.create(lambda cid: RulesContract(cid, r["admin"], created_at))
    return b.tree({"status": "completed", "rules_cid": rules.contract_id})


_BUILDERS = {
    "transfer": _build_transfer,
    "accept": _build_instruction_choice,
    "reject": _build_instruction_choice,
    "withdraw": _build_instruction_choice,
    "update": _build_instruction_choice,
    "mint": _build_mint,
    "tap": _build_mint,
    "burn": _build_burn,
    "preapproval_create": _build_preapproval_create,
    "preapproval_cancel": _build_preapproval_cancel,
    "rules_create": _build_rules_create,
}


def project(tree: Tree, party: str, offset: int) -> list[Json]:
    """The events of ``tree`` that ``party`` sees, as its node would serve them: original node ids
    (gaps where it sees nothing), ``witnessParties`` = the requesting party."""
    events: list[Json] = []
    for node in tree.nodes:
        if party in node.visible:
            body = node.event()
            events.append({node.kind: {"offset": offset, **body, "witnessParties": [party]}})
    return events


def record_time_of(record: Mapping[str, Any]) -> datetime:
    return parse_timestamp(record["record_time"])
