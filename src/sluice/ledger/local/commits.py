"""The common path of every command: injected failures, deduplication on (act_as, command id)
within the window, the record time and ``max_record_time``, validation, then the commit that
applies an update record's effects (contracts, totals, offsets, completions). Live commits and
replay go through the same :meth:`Commits._apply_commit`, so both reach the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import ZERO
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId, format_timestamp, parse_timestamp

from .clock import SynchronizerClock
from .errors import (
    CommandRejectedError,
    CommandTimeoutError,
    DuplicateCommandError,
    InjectedFailureError,
    MaxRecordTimeExceededError,
    ResponseLostError,
)
from .faults import LateCommand, LateDelivery
from .results import CommandResult
from .state import CommittedUpdate, CompletionRow, digest, dumps
from .transactions import (
    Contract,
    HoldingContract,
    InstructionContract,
    PreapprovalContract,
    Tree,
    build_tree,
)


class Commits(SynchronizerClock):
    """Submitting a command and committing (or rejecting) it; replay applies the same way."""

    def _new_command_id(self) -> str:
        text = digest(f"{self._settings.seed}:command:{len(self._completions)}")
        return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:32]}"

    def _run(
        self,
        *,
        act_as: Sequence[str],
        command_id: str | None,
        max_record_time: datetime | None,
        prepare: Callable[[datetime], dict[str, Any]],
    ) -> CommandResult:
        """Submit one command: faults, deduplication, record time, validation (``prepare``
        returns the update record or raises a rejection), commit, checkpoints."""
        self._check_writable()
        act_as = tuple(dict.fromkeys(act_as))
        if not act_as:
            raise InvalidInputError("act_as must name at least one party")
        for party in act_as:
            self._check_party(party)
        command_id = command_id or self._new_command_id()
        try:
            injected = self.faults.take_command_failure()
            if injected is not None:
                raise InjectedFailureError(injected)
            first = self._duplicate_of(act_as, command_id)
            if first is not None:
                raise DuplicateCommandError(first)
            if self.faults.take_late_commit(LateCommand(act_as, command_id, prepare)):
                raise CommandTimeoutError(command_id)
            record_time = self._next_record_time()
            if max_record_time is not None and record_time >= max_record_time:
                raise MaxRecordTimeExceededError(
                    f"the command would commit at {format_timestamp(record_time)}, at or after "
                    f"its max record time {format_timestamp(max_record_time)}"
                )
            record: dict[str, Any] = prepare(record_time)
        except CommandRejectedError as exc:
            exc.command_id = command_id
            self._reject(act_as, command_id, exc)
            raise
        result = self._commit(act_as, command_id, record_time, record)
        if self.faults.take_response_drop():
            raise ResponseLostError(command_id, result)
        return result

    def _deliver_late(self, command: LateCommand) -> LateDelivery:
        """Commit a command accepted under the late-commit fault, now: deduplication and
        validation as for any command (an input archived meanwhile rejects it), but no
        ``max_record_time`` — the node commits it whatever the deadline was."""
        with self._lock:
            self._check_writable()
            act_as, command_id = command.act_as, command.command_id
            try:
                first = self._duplicate_of(act_as, command_id)
                if first is not None:
                    raise DuplicateCommandError(first)
                record_time = self._next_record_time()
                record: dict[str, Any] = command.prepare(record_time)
            except CommandRejectedError as exc:
                exc.command_id = command_id
                self._reject(act_as, command_id, exc)
                return LateDelivery(command_id, act_as, error=f"{exc.error}: {exc.message}")
            result = self._commit(act_as, command_id, record_time, record)
            return LateDelivery(command_id, act_as, update_id=result.update_id)

    def _commit(
        self,
        act_as: tuple[str, ...],
        command_id: str,
        record_time: datetime,
        record: dict[str, Any],
    ) -> CommandResult:
        seq = len(self._updates)
        record.update(
            update_id=f"1220{digest(f'{self._settings.seed}:update:{seq}')}",
            command_id=command_id,
            act_as=list(act_as),
            record_time=format_timestamp(record_time),
        )
        text = dumps(record)
        result = self._apply_commit(text, record)
        self._write("commit", text)
        self._maybe_checkpoint()
        return result

    def _duplicate_of(self, act_as: tuple[str, ...], command_id: str) -> CommandResult | None:
        horizon = self.time() - timedelta(seconds=self._settings.dedup_window_s)
        while self._dedup_order and self._dedup_order[0][0] <= horizon:
            _, key = self._dedup_order.popleft()
            result = self._dedup.get(key)
            if result is not None and result.record_time <= horizon:
                del self._dedup[key]
        return self._dedup.get((tuple(sorted(act_as)), command_id))

    def _reject(self, act_as: tuple[str, ...], command_id: str, exc: CommandRejectedError) -> None:
        data = {
            "command_id": command_id,
            "act_as": list(act_as),
            "record_time": format_timestamp(self.time()),
            "code": exc.code,
            "error": exc.error,
            "message": exc.message,
        }
        self._apply_rejection(data)
        self._write("rejection", dumps(data))

    def _apply_rejection(self, data: Mapping[str, Any]) -> None:
        self._add_completion(
            CompletionRow(
                sequence=len(self._completions) + 1,
                command_id=data["command_id"],
                act_as=tuple(data["act_as"]),
                update_seq=None,
                record_time=parse_timestamp(data["record_time"]),
                code=int(data["code"]),
                error=data["error"],
                message=data["message"],
            )
        )

    def _add_completion(self, row: CompletionRow) -> None:
        self._completions.append(row)
        for party in row.act_as:
            self._completions_by_party.setdefault(party, []).append(row.sequence - 1)

    def _apply_commit(self, text: str, record: Mapping[str, Any]) -> CommandResult:
        """Commit an update record: build its tree, apply its effects, give it offsets. Shared by
        live commits and replay, so both reach the same state."""
        tree = build_tree(record)
        seq = len(self._updates)
        record_time = parse_timestamp(record["record_time"])
        assert record_time > self._last_time, "record times must increase"
        act_as = tuple(record["act_as"])
        visible = tree.visible
        for is_create, value, node_id in tree.effects:
            if is_create:
                self._add_contract(value, seq, node_id)
            else:
                self._remove_contract(value)
        self._count(record)
        update = CommittedUpdate(
            record["update_id"], record["command_id"], act_as, record_time, visible, text
        )
        self._updates.append(update)
        self._update_seq[update.update_id] = seq
        for node in self._nodes.values():
            if not node.parties.isdisjoint(visible):
                node.append(seq, record_time)
        self._last_time = record_time
        result = self._result_of(record, tree, record_time)
        key = (tuple(sorted(act_as)), update.command_id)
        self._dedup[key] = result
        self._dedup_order.append((record_time, key))
        self._add_completion(
            CompletionRow(
                sequence=len(self._completions) + 1,
                command_id=update.command_id,
                act_as=act_as,
                update_seq=seq,
                record_time=record_time,
                code=0,
                error="",
                message="",
            )
        )
        return result

    def _count(self, record: Mapping[str, Any]) -> None:
        kind = record["kind"]
        if kind not in ("transfer", "mint", "tap", "burn"):
            return
        instrument = InstrumentId(record["admin"], record["instrument_id"])
        if kind == "transfer":
            table = self._fees
            amount = Decimal(record["fee"])
        elif kind == "burn":
            table = self._burned
            amount = Decimal(record["amount"])
        else:
            table = self._minted
            amount = Decimal(record["amount"])
        table[instrument] = table.get(instrument, ZERO) + amount
        # The paired assertion of the ledger's conservation law.
        supply = self._supply.get(instrument, ZERO)
        expected = (
            self._minted.get(instrument, ZERO)
            - self._burned.get(instrument, ZERO)
            - self._fees.get(instrument, ZERO)
        )
        assert supply == expected, f"{instrument.key()}: holdings {supply} != {expected}"

    def _result_of(
        self, record: Mapping[str, Any], tree: Tree, record_time: datetime
    ) -> CommandResult:
        outcome = tree.outcome
        kind = record["kind"]
        burned = ZERO
        if kind == "transfer":
            burned = Decimal(record["fee"])
        elif kind == "burn":
            burned = Decimal(record["amount"])
        return CommandResult(
            update_id=record["update_id"],
            command_id=record["command_id"],
            act_as=tuple(record["act_as"]),
            record_time=record_time,
            kind=kind,
            status=outcome.get("status", "completed"),
            transfer_kind=outcome.get("transfer_kind"),
            instruction_cid=outcome.get("instruction_cid"),
            receiver_holding_cids=tuple(outcome.get("receiver_holding_cids", ())),
            sender_change_cids=tuple(outcome.get("sender_change_cids", ())),
            contract_id=outcome.get("preapproval_cid") or outcome.get("rules_cid"),
            burned=burned,
        )

    def _add_contract(self, contract: Contract, seq: int, node_id: int) -> None:
        cid = contract.contract_id
        self._origin[cid] = (seq, node_id)
        if isinstance(contract, HoldingContract):
            self._holdings[cid] = contract
            instrument = contract.instrument
            self._accounts.setdefault(contract.owner, {}).setdefault(instrument, {})[cid] = contract
            self._supply[instrument] = self._supply.get(instrument, ZERO) + contract.amount
        elif isinstance(contract, InstructionContract):
            self._instructions[cid] = contract
            for party in (contract.admin, contract.sender, contract.receiver):
                self._instructions_by_party.setdefault(party, {})[cid] = None
        elif isinstance(contract, PreapprovalContract):
            self._preapprovals[cid] = contract
            self._preapproval_by_key[(contract.receiver, contract.instrument)] = cid
        else:
            self._rules[cid] = contract
            self._rules_by_admin[contract.admin] = cid

    def _remove_contract(self, cid: str) -> None:
        del self._origin[cid]
        holding = self._holdings.pop(cid, None)
        if holding is not None:
            instrument = holding.instrument
            del self._accounts[holding.owner][instrument][cid]
            self._supply[instrument] -= holding.amount
            return
        instruction = self._instructions.pop(cid, None)
        if instruction is not None:
            for party in (instruction.admin, instruction.sender, instruction.receiver):
                self._instructions_by_party[party].pop(cid, None)
            return
        preapproval = self._preapprovals.pop(cid, None)
        if preapproval is not None:
            del self._preapproval_by_key[(preapproval.receiver, preapproval.instrument)]
            return
        rules = self._rules.pop(cid)
        del self._rules_by_admin[rules.admin]
