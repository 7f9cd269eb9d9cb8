"""The choices on a pending transfer instruction: the receiver accepts or rejects, the sender
withdraws, the admin updates (passes on or fails a held transfer) and expires what is past its
``execute_before``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sluice.domain.ledger import parse_timestamp

from .errors import ExpiredError, InactiveContractError, InvalidStateError, NotAuthorizedError
from .instruments import Instruments
from .results import CommandResult
from .state import json_object


class Instructions(Instruments):
    """Accept, reject, withdraw, update and expire transfer instructions."""

    def accept(
        self,
        instruction_cid: str,
        actor: str,
        *,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        extra_meta: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """The receiver accepts an offer (``TransferInstruction_Accept``)."""
        return self._instruction_choice(
            "accept", instruction_cid, actor, command_id, max_record_time, context, extra_meta
        )

    def reject(
        self,
        instruction_cid: str,
        actor: str,
        *,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        extra_meta: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """The receiver rejects an offer; the sender's funds come back unlocked."""
        return self._instruction_choice(
            "reject", instruction_cid, actor, command_id, max_record_time, context, extra_meta
        )

    def withdraw(
        self,
        instruction_cid: str,
        actor: str,
        *,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        context: Mapping[str, Any] | None = None,
        extra_meta: Mapping[str, str] | None = None,
    ) -> CommandResult:
        """The sender withdraws its offer; its funds come back unlocked."""
        return self._instruction_choice(
            "withdraw", instruction_cid, actor, command_id, max_record_time, context, extra_meta
        )

    def admin_update(
        self,
        instruction_cid: str,
        *,
        approve: bool,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        admin: str | None = None,
    ) -> CommandResult:
        """The admin ends the internal workflow of a held transfer (``TransferInstruction_Update``):
        ``approve`` passes it on to the receiver as a new instruction (``_Pending``); otherwise it
        fails and the sender's funds come back (``_Failed``). Naming the ``admin`` submits as it
        without looking the instruction up first, so a resend of a committed update is answered
        as a duplicate rather than as an inactive contract."""
        with self._lock:
            if admin is None:
                admin = self.instruction_contract(instruction_cid).admin
            decision = "approved" if approve else (reason or "rejected")
            context = {"registry-decision": {"tag": "AV_Text", "value": decision}}
            return self._instruction_choice(
                "update",
                instruction_cid,
                admin,
                command_id,
                max_record_time,
                context,
                None,
                approve=approve,
            )

    def expire_instructions(self, admin: str | None = None) -> list[CommandResult]:
        """The admin fails every instruction whose ``execute_before`` has passed (each in its own
        update: ``TransferInstruction_Update`` → ``_Failed``, funds back to the sender)."""
        with self._lock:
            now = self._next_record_time()
            due = [
                c.contract_id
                for c in self._instructions.values()
                if (admin is None or c.admin == admin) and parse_timestamp(c.execute_before) <= now
            ]
            return [self.admin_update(cid, approve=False, reason="expired") for cid in due]

    def _instruction_choice(
        self,
        kind: str,
        instruction_cid: str,
        actor: str,
        command_id: str | None,
        max_record_time: datetime | None,
        context: Mapping[str, Any] | None,
        extra_meta: Mapping[str, str] | None,
        *,
        approve: bool = False,
    ) -> CommandResult:
        with self._lock:
            if context is None:
                instruction = self._instructions.get(instruction_cid)
                if instruction is not None:
                    context = (
                        self.registry(instruction.admin).accept_context(instruction_cid).values
                    )
            context_values = json_object(context or {})
            meta_values = dict(extra_meta or {})

            def prepare(record_time: datetime) -> dict[str, Any]:
                return self._prepare_instruction_choice(
                    record_time, kind, instruction_cid, actor, approve, context_values, meta_values
                )

            return self._run(
                act_as=(actor,),
                command_id=command_id,
                max_record_time=max_record_time,
                prepare=prepare,
            )

    def _prepare_instruction_choice(
        self,
        record_time: datetime,
        kind: str,
        instruction_cid: str,
        actor: str,
        approve: bool,
        context: dict[str, Any],
        extra_meta: dict[str, str],
    ) -> dict[str, Any]:
        instruction = self._instructions.get(instruction_cid)
        if instruction is None:
            raise InactiveContractError(f"transfer instruction {instruction_cid} is not active")
        controller = {
            "accept": instruction.receiver,
            "reject": instruction.receiver,
            "withdraw": instruction.sender,
            "update": instruction.admin,
        }[kind]
        if actor != controller:
            raise NotAuthorizedError(
                f"only {controller} may {kind} transfer instruction {instruction_cid}"
            )
        expired = record_time >= parse_timestamp(instruction.execute_before)
        if kind == "accept" or (kind == "update" and approve):
            if kind == "accept" and instruction.pending_internal_workflow:
                raise InvalidStateError(
                    f"transfer instruction {instruction_cid} waits for the admin's update"
                )
            if kind == "update" and not instruction.pending_internal_workflow:
                raise InvalidStateError(
                    f"transfer instruction {instruction_cid} is not in an internal workflow"
                )
            if expired:
                raise ExpiredError(
                    f"transfer instruction {instruction_cid} expired at "
                    f"{instruction.execute_before}"
                )
        locked_active = instruction.locked_holding_cid in self._holdings
        assert locked_active or expired, "an unexpired lock cannot have been spent"
        return {
            "kind": kind,
            "instruction": instruction.snapshot(),
            "locked_holding_active": locked_active,
            "approve": approve,
            "context": context,
            "extra_meta": extra_meta,
        }
