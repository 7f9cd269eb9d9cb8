"""The event trees of the embedded ledger's transactions, built from their records.

A committed update is stored as a small *record* (a JSON object naming what happened: a transfer
with its inputs and amounts, an accept, a mint, ...). :func:`build_tree` turns a record into the
full event tree in the JSON Ledger API v2 shape (``CreatedEvent`` / ``ExercisedEvent`` bodies with
node ids, informees, arguments, results and interface views) together with its effects on the set
of active contracts. The tree is a pure function of the record, so the engine uses the same
function when it commits, when it serves a read and when it replays a persisted ledger: what a
reader sees and what the ledger's state became can never disagree.

Contract ids are derived from the update id and the node id, as Canton derives them from the
transaction seed; update ids from the ledger's seed. Nothing here reads a clock or a random source.

This module builds the tree of each record kind (:func:`build_tree`). The contracts and their
created events are in :mod:`.contracts`, the tree and its builder in :mod:`.trees`; their public
names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import format_amount
from sluice.domain.ledger import (
    BURNED_KEY,
    REASON_KEY,
    SENDER_KEY,
    TX_KIND_KEY,
    Lock,
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

from .contracts import (
    HOLDING_ORIGIN_KEY,
    HOLDING_TEMPLATE_ID,
    INSTRUCTION_TEMPLATE_ID,
    KYC_ACTION,
    PREAPPROVAL_PACKAGE_NAME,
    PREAPPROVAL_TEMPLATE_ID,
    REGISTRY_PACKAGE_NAME,
    RULES_TEMPLATE_ID,
    Contract,
    HoldingContract,
    InstructionContract,
    PreapprovalContract,
    RulesContract,
    _unique,
    burned_text,
    contract_id_for,
    created_event_body,
    fake_package_id,
    lock_json,
    template_of,
    trace_context_for,
)
from .trees import Node, Tree, _Builder, project

__all__ = [
    "HOLDING_ORIGIN_KEY",
    "HOLDING_TEMPLATE_ID",
    "INSTRUCTION_TEMPLATE_ID",
    "KYC_ACTION",
    "PREAPPROVAL_PACKAGE_NAME",
    "PREAPPROVAL_TEMPLATE_ID",
    "REGISTRY_PACKAGE_NAME",
    "RULES_TEMPLATE_ID",
    "Contract",
    "HoldingContract",
    "InstructionContract",
    "Node",
    "PreapprovalContract",
    "RulesContract",
    "Tree",
    "build_tree",
    "burned_text",
    "contract_id_for",
    "created_event_body",
    "fake_package_id",
    "lock_json",
    "project",
    "record_time_of",
    "template_of",
    "trace_context_for",
]


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


def record_time_of(record: Mapping[str, Any]) -> datetime:
    return parse_timestamp(record["record_time"])
