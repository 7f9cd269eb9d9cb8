"""Sandbox control of a served embedded ledger: the JSON protocol and its Python client.

``sluice ledger serve`` exposes a whitelist of :class:`~sluice.ledger.local.engine.EmbeddedLedger`
methods at ``POST <base>/sandbox/v1/<method>`` (not part of Canton): the body is a JSON object of
keyword arguments, the answer the method's result as JSON. A remote demo or test drives the world
with it (allocate parties, tap, transfer, move the clock) while the exchange talks to the same
ledger over the JSON Ledger API.

JSON forms: amounts are decimal strings, times RFC 3339 text, an ``InstrumentId`` is
``{"admin", "id"}``, a ``RegistryPolicy`` an object of its fields, a ``CommandResult`` / ``Holding``
/ ``InstrumentTotals`` an object of their fields, an ``InstrumentConfig`` its registry form
(``{"admin", "id", "name", "symbol", "decimals", "policy"}``), a ``TransferInstruction``
``{"contract_id", "status", "original_instruction_cid", "meta", "transfer": {...}}`` with the
transfer's fields. An error is ``{"code", "error", "message",
"type"}`` (the sluice error's code and name, and its class) with a 4xx status.

:class:`RemoteLedger` is the client: the same method names, arguments and Python types as the
embedded ledger, and the same error classes raised with the server's message.

The protocol (the whitelist, decoding arguments, the JSON forms and errors) is in
:mod:`.control`; its names are importable from here too.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from sluice.domain.ledger import (
    Holding,
    InstrumentId,
    TransferInstruction,
    TransferKind,
    parse_timestamp,
)

from .control import (
    CONTROL_METHODS,
    CONTROL_PATH,
    RemoteLedgerError,
    command_result_from_json,
    decode_arguments,
    error_from_json,
    error_json,
    holding_from_json,
    instruction_from_json,
    to_json,
)
from .engine import CommandResult, InstrumentTotals
from .registry import InstrumentConfig, RegistryPolicy

# --- the client ----------------------------------------------------------------------------------


class RemoteLedger:
    """The sandbox control endpoint of a served ledger as a Python object with the embedded
    ledger's method names and types (only the whitelisted methods)."""

    def __init__(self, base_url: str, *, timeout_s: float = 10.0, token: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RemoteLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def call(self, method: str, **arguments: Any) -> Any:
        """Call a control method with Python arguments; returns the JSON result."""
        payload = {name: _argument_json(value) for name, value in arguments.items()}
        payload = {name: value for name, value in payload.items() if value is not None}
        url = f"{self.base_url}{CONTROL_PATH}/{method}"
        try:
            response = self._http.post(url, json=payload)
        except httpx.HTTPError as exc:
            raise RemoteLedgerError(f"sandbox control {url} failed: {exc}") from exc
        try:
            body = response.json()
        except ValueError:
            body = response.text
        if response.status_code >= 400:
            raise error_from_json(response.status_code, body)
        return body

    # --- nodes, parties, instruments -----------------------------------------------------------

    def add_node(self, name: str) -> str:
        return str(self.call("add_node", name=name))

    def allocate_party(self, hint: str, node: str) -> str:
        return str(self.call("allocate_party", hint=hint, node=node))

    def nodes(self) -> list[str]:
        return list(self.call("nodes"))

    def parties(self, node: str | None = None) -> list[str]:
        return list(self.call("parties", node=node))

    def create_instrument(
        self,
        admin: str,
        instrument_id: str,
        policy: RegistryPolicy | None = None,
        *,
        name: str | None = None,
        symbol: str | None = None,
        decimals: int = 10,
    ) -> InstrumentId:
        found = self.call(
            "create_instrument",
            admin=admin,
            instrument_id=instrument_id,
            policy=policy,
            name=name,
            symbol=symbol,
            decimals=decimals,
        )
        return InstrumentId(found["admin"], found["id"])

    def instrument_config(self, instrument: InstrumentId) -> InstrumentConfig:
        return InstrumentConfig.from_json(self.call("instrument_config", instrument=instrument))

    def preapproval_id(self, receiver: str, instrument: InstrumentId) -> str | None:
        found = self.call("preapproval_id", receiver=receiver, instrument=instrument)
        return None if found is None else str(found)

    # --- commands ------------------------------------------------------------------------------

    def create_preapproval(
        self, receiver: str, instrument: InstrumentId, *, command_id: str | None = None
    ) -> CommandResult:
        return self._result(
            "create_preapproval", receiver=receiver, instrument=instrument, command_id=command_id
        )

    def tap(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        command_id: str | None = None,
    ) -> CommandResult:
        return self._result(
            "tap", owner=owner, instrument=instrument, amount=amount, command_id=command_id
        )

    def mint(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult:
        return self._result(
            "mint",
            owner=owner,
            instrument=instrument,
            amount=amount,
            reason=reason,
            command_id=command_id,
            max_record_time=max_record_time,
        )

    def burn(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        inputs: Sequence[str] | None = None,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult:
        return self._result(
            "burn",
            owner=owner,
            instrument=instrument,
            amount=amount,
            inputs=inputs,
            reason=reason,
            command_id=command_id,
            max_record_time=max_record_time,
        )

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
        return self._result(
            "transfer",
            sender=sender,
            receiver=receiver,
            instrument=instrument,
            amount=amount,
            reason=reason,
            meta=meta,
            inputs=inputs,
            command_id=command_id,
            max_record_time=max_record_time,
            requested_at=requested_at,
            execute_before=execute_before,
            expect_kind=expect_kind,
        )

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
        return self._choice(
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
        return self._choice(
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
        return self._choice(
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
        return self._result(
            "admin_update",
            instruction_cid=instruction_cid,
            approve=approve,
            reason=reason,
            command_id=command_id,
            max_record_time=max_record_time,
            admin=admin,
        )

    def expire_instructions(self, admin: str | None = None) -> list[CommandResult]:
        return [command_result_from_json(r) for r in self.call("expire_instructions", admin=admin)]

    def _choice(
        self,
        method: str,
        instruction_cid: str,
        actor: str,
        command_id: str | None,
        max_record_time: datetime | None,
        context: Mapping[str, Any] | None,
        extra_meta: Mapping[str, str] | None,
    ) -> CommandResult:
        return self._result(
            method,
            instruction_cid=instruction_cid,
            actor=actor,
            command_id=command_id,
            max_record_time=max_record_time,
            context=context,
            extra_meta=extra_meta,
        )

    def _result(self, method: str, **arguments: Any) -> CommandResult:
        return command_result_from_json(self.call(method, **arguments))

    # --- the clock -----------------------------------------------------------------------------

    def time(self) -> datetime:
        return parse_timestamp(self.call("time"))

    def advance(self, seconds: float) -> datetime:
        return parse_timestamp(self.call("advance", seconds=seconds))

    def set_time(self, time: datetime) -> datetime:
        return parse_timestamp(self.call("set_time", time=time))

    def checkpoint(self) -> datetime:
        return parse_timestamp(self.call("checkpoint"))

    def flush(self) -> None:
        self.call("flush")

    # --- reading -------------------------------------------------------------------------------

    def ledger_end(self, node_or_party: str) -> int:
        return int(self.call("ledger_end", node_or_party=node_or_party))

    def update_count(self) -> int:
        return int(self.call("update_count"))

    def active_holdings(self, party: str, instrument: InstrumentId | None = None) -> list[Holding]:
        found = self.call("active_holdings", party=party, instrument=instrument)
        return [holding_from_json(h) for h in found]

    def active_instructions(self, party: str) -> list[TransferInstruction]:
        return [instruction_from_json(i) for i in self.call("active_instructions", party=party)]

    def supply(self, instrument: InstrumentId) -> Decimal:
        return Decimal(self.call("supply", instrument=instrument))

    def totals(self, instrument: InstrumentId) -> InstrumentTotals:
        found = self.call("totals", instrument=instrument)
        return InstrumentTotals(
            minted=Decimal(found["minted"]),
            burned=Decimal(found["burned"]),
            fees=Decimal(found["fees"]),
            supply=Decimal(found["supply"]),
        )


def _argument_json(value: object) -> Any:
    if isinstance(value, RegistryPolicy):
        return value.as_json()
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    return to_json(value)


__all__ = [
    "CONTROL_METHODS",
    "CONTROL_PATH",
    "RemoteLedger",
    "RemoteLedgerError",
    "command_result_from_json",
    "decode_arguments",
    "error_from_json",
    "error_json",
    "holding_from_json",
    "instruction_from_json",
    "to_json",
]
