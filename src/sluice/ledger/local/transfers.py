"""``TransferFactory_Transfer``: picking inputs as a wallet does, the checks (time bounds, inputs
active, owned, of the instrument and unlocked, amount + fee covered) and the path (``self``,
``direct`` with a preapproval, ``offer``); and the receivers' preapprovals that make a
transfer direct.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.ledger import (
    REASON_KEY,
    Holding,
    InstrumentId,
    Transfer,
    TransferKind,
    format_timestamp,
)

from .errors import (
    ExpiredError,
    InactiveContractError,
    InputNotOwnedError,
    InsufficientFundsError,
    InvalidStateError,
    InvalidTransferError,
    LockedInputError,
    NotAuthorizedError,
    PreapprovalMissingError,
    PreapprovalNotAllowedError,
    TooManyInputsError,
)
from .instruments import Instruments
from .registry import PREAPPROVAL_CONTEXT_KEY, RULES_CONTEXT_KEY, context_contract_id
from .results import CommandResult
from .state import json_object, positive_amount
from .transactions import HoldingContract

DEFAULT_EXECUTE_BEFORE_SPAN = timedelta(hours=24)


class Transfers(Instruments):
    """Transfers through the admin's transfer factory, input selection, preapprovals."""

    def transfer(
        self,
        sender: str,
        receiver: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        reason: str | None = None,
        meta: Mapping[str, str] | None = None,
        inputs: Sequence[str] | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        requested_at: datetime | None = None,
        execute_before: datetime | None = None,
        expect_kind: TransferKind | None = None,
    ) -> CommandResult:
        """Transfer ``amount`` the way a wallet does: pick inputs (oldest spendable first) unless
        given, ask the admin's registry for the factory and choice context, submit
        ``TransferFactory_Transfer``. ``reason`` goes into the transfer's metadata.
        ``expect_kind`` refuses (without submitting) if the registry would do something else."""
        with self._lock:
            config = self.instrument_config(instrument)
            value = positive_amount(amount)
            requested_at = requested_at or self.time()
            if execute_before is None:
                span = DEFAULT_EXECUTE_BEFORE_SPAN
                cap = config.policy.execute_before_span_max_s
                if cap is not None:
                    span = min(span, timedelta(seconds=cap))
                execute_before = requested_at + span
            transfer_meta = dict(meta or {})
            if reason is not None:
                transfer_meta[REASON_KEY] = reason
            if inputs is None:
                self._check_party(sender)
                fee = ZERO if sender == receiver else config.policy.transfer_fee
                chosen = self.select_inputs(sender, instrument, value + fee)
                inputs = [h.contract_id for h in chosen]
            transfer = Transfer(
                sender=sender,
                receiver=receiver,
                amount=value,
                instrument=instrument,
                requested_at=requested_at,
                execute_before=execute_before,
                input_holding_cids=tuple(inputs),
                meta=transfer_meta,
            )
            self._check_party(sender)
            self._check_party(receiver)
            factory = self.registry(instrument.admin).transfer_factory(transfer)
            if expect_kind is not None and factory.transfer_kind != expect_kind:
                message = (
                    f"the registry would make this transfer {factory.transfer_kind!r}, "
                    f"not {expect_kind!r}"
                )
                if expect_kind == "direct":
                    raise PreapprovalMissingError(message, command_id=command_id)
                raise InvalidTransferError(message, command_id=command_id)
            return self.submit_transfer(
                transfer,
                factory_id=factory.factory_id,
                context=factory.choice_context.values,
                command_id=command_id,
                max_record_time=max_record_time,
            )

    def submit_transfer(
        self,
        transfer: Transfer,
        *,
        factory_id: str | None = None,
        context: Mapping[str, Any] | None = None,
        extra_meta: Mapping[str, str] | None = None,
        command_id: str | None = None,
        act_as: Sequence[str] | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult:
        """Exercise ``TransferFactory_Transfer`` as the raw command would: the choice context
        decides the path (a ``transfer-preapproval`` entry means direct)."""
        with self._lock:
            submitters = tuple(act_as) if act_as is not None else (transfer.sender,)
            if context is None:
                self._check_party(transfer.instrument.admin)
                factory = self.registry(transfer.instrument.admin).transfer_factory(transfer)
                context = factory.choice_context.values
                factory_id = factory_id or factory.factory_id
            context_values = json_object(context)
            meta_values = dict(extra_meta or {})
            return self._run(
                act_as=submitters,
                command_id=command_id,
                max_record_time=max_record_time,
                prepare=lambda t: self._prepare_transfer(
                    t, transfer, submitters, factory_id, context_values, meta_values
                ),
            )

    def _prepare_transfer(
        self,
        record_time: datetime,
        transfer: Transfer,
        act_as: tuple[str, ...],
        factory_id: str | None,
        context: dict[str, Any],
        extra_meta: dict[str, str],
    ) -> dict[str, Any]:
        instrument = transfer.instrument
        config = self._instruments.get(instrument)
        if config is None:
            raise InvalidTransferError(f"unknown instrument {instrument.key()}")
        policy = config.policy
        admin = instrument.admin
        sender, receiver = transfer.sender, transfer.receiver
        if sender not in act_as:
            raise NotAuthorizedError(f"the transfer must be submitted by its sender {sender}")
        for party in (sender, receiver):
            if party not in self._party_node:
                raise InvalidTransferError(f"unknown party {party!r}")
        rules_id = self._rules_by_admin[admin]
        if factory_id is not None and factory_id != rules_id:
            raise InactiveContractError(f"transfer factory {factory_id} is not active")
        context_rules = context_contract_id(context, RULES_CONTEXT_KEY)
        if context_rules is not None and context_rules != rules_id:
            raise InactiveContractError(f"registry rules {context_rules} are not active")
        amount = positive_amount(transfer.amount)
        for key, value in transfer.meta.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise InvalidTransferError("transfer metadata keys and values must be text")
        # Time bounds, against ledger time (the record time this commit will get).
        if transfer.requested_at > record_time:
            raise InvalidTransferError(
                f"requested_at {format_timestamp(transfer.requested_at)} is in the future "
                f"(ledger time {format_timestamp(record_time)})"
            )
        if record_time >= transfer.execute_before:
            raise ExpiredError(
                f"the transfer expired at {format_timestamp(transfer.execute_before)} "
                f"(ledger time {format_timestamp(record_time)})"
            )
        span_max = policy.execute_before_span_max_s
        if span_max is not None and (
            transfer.execute_before - transfer.requested_at > timedelta(seconds=span_max)
        ):
            raise InvalidTransferError(
                f"execute_before - requested_at may be at most {span_max} s for {instrument.key()}"
            )
        inputs = self._check_inputs(
            transfer.input_holding_cids, sender, instrument, record_time, policy.inputs_max
        )
        # The path: self, direct (a valid preapproval in the context), or offer.
        preapproval_id: str | None = None
        if sender == receiver:
            kind: TransferKind = "self"
        else:
            preapproval_id = context_contract_id(context, PREAPPROVAL_CONTEXT_KEY)
            if preapproval_id is None:
                kind = "offer"
            else:
                if not policy.preapprovals_allowed or policy.kyc_hold:
                    raise PreapprovalNotAllowedError(
                        f"{instrument.key()} does not allow direct transfers to preapproved "
                        "receivers"
                    )
                preapproval = self._preapprovals.get(preapproval_id)
                if (
                    preapproval is None
                    or preapproval.receiver != receiver
                    or preapproval.instrument != instrument
                ):
                    raise PreapprovalMissingError(
                        f"{receiver} has no active preapproval {preapproval_id} for "
                        f"{instrument.key()}"
                    )
                kind = "direct"
        fee = ZERO if kind == "self" else policy.transfer_fee
        total = sum((h.amount for h, _ in inputs), ZERO)
        if total < amount + fee:
            raise InsufficientFundsError(
                f"the inputs hold {format_amount(total)}; the transfer needs "
                f"{format_amount(amount)} + fee {format_amount(fee)}"
            )
        return {
            "kind": "transfer",
            "transfer_kind": kind,
            "admin": admin,
            "rules_cid": rules_id,
            "preapproval_cid": preapproval_id,
            "sender": sender,
            "receiver": receiver,
            "instrument_id": instrument.id,
            "amount": format_amount(amount),
            "fee": format_amount(fee),
            "change": format_amount(total - amount - fee),
            "input_amount": format_amount(total),
            "requested_at": format_timestamp(transfer.requested_at),
            "execute_before": format_timestamp(transfer.execute_before),
            "inputs": [[h.contract_id, format_amount(h.amount), expired] for h, expired in inputs],
            "meta": dict(transfer.meta),
            "context": context,
            "extra_meta": extra_meta,
            "pending_internal_workflow": kind == "offer" and policy.kyc_hold,
        }

    def _check_inputs(
        self,
        input_cids: Sequence[str],
        owner: str,
        instrument: InstrumentId,
        record_time: datetime,
        inputs_max: int,
    ) -> list[tuple[HoldingContract, bool]]:
        """The input holdings, each with whether its (expired) lock must be released first."""
        if not input_cids:
            raise InvalidTransferError("a transfer needs at least one input holding")
        if len(input_cids) > inputs_max:
            raise TooManyInputsError(
                f"{len(input_cids)} inputs; {instrument.key()} allows at most {inputs_max}"
            )
        if len(set(input_cids)) != len(input_cids):
            raise InvalidTransferError("an input holding is listed twice")
        checked: list[tuple[HoldingContract, bool]] = []
        for cid in input_cids:
            holding = self._holdings.get(cid)
            if holding is None:
                raise InactiveContractError(f"input holding {cid} is not active")
            if holding.owner != owner:
                raise InputNotOwnedError(f"input holding {cid} is owned by {holding.owner}")
            if holding.instrument != instrument:
                raise InvalidTransferError(
                    f"input holding {cid} is {holding.instrument.key()}, not {instrument.key()}"
                )
            lock_expired = False
            if holding.lock is not None:
                if not holding.lock.is_expired(record_time):
                    raise LockedInputError(f"input holding {cid} is locked")
                lock_expired = True
            checked.append((holding, lock_expired))
        return checked

    def select_inputs(self, owner: str, instrument: InstrumentId, needed: Decimal) -> list[Holding]:
        """Spendable holdings covering ``needed``: oldest first, else the largest; at most the
        instrument's input limit. Raises :class:`InsufficientFundsError`."""
        with self._lock:
            inputs_max = self.instrument_config(instrument).policy.inputs_max
            account = self._accounts.get(owner, {}).get(instrument, {})
            now = self._next_record_time()
            chosen: list[HoldingContract] = []
            total = ZERO
            for holding in account.values():
                if holding.lock is not None and not holding.lock.is_expired(now):
                    continue
                chosen.append(holding)
                total += holding.amount
                if total >= needed:
                    return [h.to_domain() for h in chosen]
                if len(chosen) == inputs_max:
                    break
            spendable = (h for h in account.values() if h.lock is None or h.lock.is_expired(now))
            largest = heapq.nlargest(inputs_max, spendable, key=lambda h: h.amount)
            chosen, total = [], ZERO
            for holding in largest:
                chosen.append(holding)
                total += holding.amount
                if total >= needed:
                    return [h.to_domain() for h in chosen]
            raise InsufficientFundsError(
                f"{owner} has {format_amount(total)} spendable {instrument.key()} in at most "
                f"{inputs_max} holdings; {format_amount(needed)} needed"
            )

    def create_preapproval(
        self, receiver: str, instrument: InstrumentId, *, command_id: str | None = None
    ) -> CommandResult:
        """The receiver's standing consent to direct transfers of ``instrument``."""
        with self._lock:
            config = self.instrument_config(instrument)
            self._check_party(receiver)

            def prepare(_t: datetime) -> dict[str, Any]:
                if not config.policy.preapprovals_allowed:
                    raise PreapprovalNotAllowedError(
                        f"{instrument.key()} does not allow transfer preapprovals"
                    )
                if (receiver, instrument) in self._preapproval_by_key:
                    raise InvalidStateError(
                        f"{receiver} already has a preapproval for {instrument.key()}"
                    )
                return {
                    "kind": "preapproval_create",
                    "admin": instrument.admin,
                    "receiver": receiver,
                    "instrument_id": instrument.id,
                }

            return self._run(
                act_as=(receiver,), command_id=command_id, max_record_time=None, prepare=prepare
            )

    def cancel_preapproval(
        self, receiver: str, instrument: InstrumentId, *, command_id: str | None = None
    ) -> CommandResult:
        with self._lock:
            self.instrument_config(instrument)
            self._check_party(receiver)

            def prepare(_t: datetime) -> dict[str, Any]:
                preapproval_id = self._preapproval_by_key.get((receiver, instrument))
                if preapproval_id is None:
                    raise PreapprovalMissingError(
                        f"{receiver} has no preapproval for {instrument.key()}"
                    )
                return {
                    "kind": "preapproval_cancel",
                    "admin": instrument.admin,
                    "receiver": receiver,
                    "instrument_id": instrument.id,
                    "preapproval_cid": preapproval_id,
                }

            return self._run(
                act_as=(receiver,), command_id=command_id, max_record_time=None, prepare=prepare
            )
