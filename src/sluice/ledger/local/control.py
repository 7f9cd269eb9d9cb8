"""The sandbox control protocol of a served embedded ledger, both sides of it.

The server's side: :data:`CONTROL_METHODS` (the whitelist and each method's arguments) and
:func:`decode_arguments`, :func:`to_json` for results, :func:`error_json` for failures. The
client's side: :func:`command_result_from_json`, :func:`holding_from_json` and
:func:`error_from_json`, which raises the same error class the server raised. The JSON forms are
those listed in :mod:`sluice.ledger.local.remote`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.errors import (
    DuplicateOperationError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
    SluiceError,
)
from sluice.domain.ledger import (
    Holding,
    InstrumentId,
    Lock,
    Transfer,
    TransferInstruction,
    TransferKind,
    format_timestamp,
    parse_timestamp,
)
from sluice.ledger.wire import Json

from . import engine
from .engine import (
    CommandRejectedError,
    CommandResult,
    DuplicateCommandError,
    InstrumentTotals,
    LedgerError,
    ResponseLostError,
)
from .registry import InstrumentConfig, RegistryPolicy

CONTROL_PATH = "/sandbox/v1"

# --- decoding arguments (the server's side) ------------------------------------------------------

Decoder = Callable[[object, str], Any]


def _text(value: object, name: str) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{name}: expected a string, got {type(value).__name__}")
    return value


def _integer(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInputError(f"{name}: expected an integer, got {type(value).__name__}")
    return value


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{name}: expected a number, got {type(value).__name__}")
    return float(value)


def _amount(value: object, name: str) -> Decimal:
    return parse_amount(value, field=name)


def _time(value: object, name: str) -> datetime:
    return parse_timestamp(value, field=name)


def _instrument(value: object, name: str) -> InstrumentId:
    if not isinstance(value, Mapping) or set(value) != {"admin", "id"}:
        raise InvalidInputError(f'{name}: expected {{"admin": ..., "id": ...}}')
    return InstrumentId(_text(value["admin"], f"{name}.admin"), _text(value["id"], f"{name}.id"))


def _texts(value: object, name: str) -> list[str]:
    if not isinstance(value, list):
        raise InvalidInputError(f"{name}: expected a list of strings")
    return [_text(item, f"{name}[{index}]") for index, item in enumerate(value)]


def _text_map(value: object, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{name}: expected an object of strings")
    return {str(k): _text(v, f"{name}.{k}") for k, v in value.items()}


def _json_object(value: object, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{name}: expected an object")
    return dict(value)


_TRANSFER_KINDS: Mapping[object, TransferKind] = {
    "self": "self",
    "direct": "direct",
    "offer": "offer",
}


def _transfer_kind(value: object, name: str) -> TransferKind:
    found = _TRANSFER_KINDS.get(value) if isinstance(value, str) else None
    if found is None:
        raise InvalidInputError(f"{name}: expected self, direct or offer")
    return found


_POLICY_FIELDS: Mapping[str, Decoder] = {
    "preapprovals_allowed": lambda v, n: _flag(v, n),
    "kyc_hold": lambda v, n: _flag(v, n),
    "execute_before_span_max_s": lambda v, n: None if v is None else _integer(v, n),
    "inputs_max": _integer,
    "transfer_fee": _amount,
    "tap_allowed": lambda v, n: _flag(v, n),
}


def _flag(value: object, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name}: expected true or false")
    return value


def _policy(value: object, name: str) -> RegistryPolicy:
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{name}: expected an object of policy fields")
    unknown = sorted(set(value) - set(_POLICY_FIELDS))
    if unknown:
        raise InvalidInputError(f"{name}: unknown policy fields {', '.join(unknown)}")
    return RegistryPolicy(
        **{key: _POLICY_FIELDS[key](item, f"{name}.{key}") for key, item in value.items()}
    )


_INSTRUCTION_CHOICE: Mapping[str, tuple[Decoder, bool]] = {
    "instruction_cid": (_text, True),
    "actor": (_text, True),
    "command_id": (_text, False),
    "max_record_time": (_time, False),
    "context": (_json_object, False),
    "extra_meta": (_text_map, False),
}

# The whitelist: method → parameter → (decoder, required).
CONTROL_METHODS: Mapping[str, Mapping[str, tuple[Decoder, bool]]] = {
    "add_node": {"name": (_text, True)},
    "allocate_party": {"hint": (_text, True), "node": (_text, True)},
    "create_instrument": {
        "admin": (_text, True),
        "instrument_id": (_text, True),
        "policy": (_policy, False),
        "name": (_text, False),
        "symbol": (_text, False),
        "decimals": (_integer, False),
    },
    "create_preapproval": {
        "receiver": (_text, True),
        "instrument": (_instrument, True),
        "command_id": (_text, False),
    },
    "tap": {
        "owner": (_text, True),
        "instrument": (_instrument, True),
        "amount": (_amount, True),
        "command_id": (_text, False),
    },
    "mint": {
        "owner": (_text, True),
        "instrument": (_instrument, True),
        "amount": (_amount, True),
        "reason": (_text, False),
        "command_id": (_text, False),
        "max_record_time": (_time, False),
    },
    "burn": {
        "owner": (_text, True),
        "instrument": (_instrument, True),
        "amount": (_amount, True),
        "inputs": (_texts, False),
        "reason": (_text, False),
        "command_id": (_text, False),
        "max_record_time": (_time, False),
    },
    "transfer": {
        "sender": (_text, True),
        "receiver": (_text, True),
        "instrument": (_instrument, True),
        "amount": (_amount, True),
        "reason": (_text, False),
        "meta": (_text_map, False),
        "inputs": (_texts, False),
        "command_id": (_text, False),
        "max_record_time": (_time, False),
        "requested_at": (_time, False),
        "execute_before": (_time, False),
        "expect_kind": (_transfer_kind, False),
    },
    "accept": _INSTRUCTION_CHOICE,
    "reject": _INSTRUCTION_CHOICE,
    "withdraw": _INSTRUCTION_CHOICE,
    "admin_update": {
        "instruction_cid": (_text, True),
        "approve": (_flag, True),
        "reason": (_text, False),
        "command_id": (_text, False),
        "max_record_time": (_time, False),
        "admin": (_text, False),
    },
    "advance": {"seconds": (_number, True)},
    "set_time": {"time": (_time, True)},
    "time": {},
    "checkpoint": {},
    "ledger_end": {"node_or_party": (_text, True)},
    "update_count": {},
    "active_holdings": {"party": (_text, True), "instrument": (_instrument, False)},
    "active_instructions": {"party": (_text, True)},
    "instrument_config": {"instrument": (_instrument, True)},
    "supply": {"instrument": (_instrument, True)},
    "totals": {"instrument": (_instrument, True)},
    "expire_instructions": {"admin": (_text, False)},
    "flush": {},
    "parties": {"node": (_text, False)},
    "nodes": {},
    "preapproval_id": {"receiver": (_text, True), "instrument": (_instrument, True)},
}


def decode_arguments(method: str, payload: object) -> dict[str, Any]:
    """The keyword arguments of a control call, checked and converted to Python types."""
    parameters = CONTROL_METHODS.get(method)
    if parameters is None:
        raise NotFoundError(f"no sandbox control method {method!r}")
    if not isinstance(payload, Mapping):
        raise InvalidInputError("the body must be a JSON object of keyword arguments")
    unknown = sorted(set(payload) - set(parameters))
    if unknown:
        raise InvalidInputError(f"{method}: unknown arguments {', '.join(unknown)}")
    arguments: dict[str, Any] = {}
    for name, (decode, required) in parameters.items():
        value = payload.get(name)
        if value is None:
            if required:
                raise InvalidInputError(f"{method}: argument {name!r} is required")
            continue
        arguments[name] = decode(value, name)
    return arguments


# --- encoding results ----------------------------------------------------------------------------


def to_json(value: object) -> Any:
    """The JSON form of a control result (see the module docstring)."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, Decimal):
        return format_amount(value)
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, InstrumentId):
        return value.as_json()
    if isinstance(value, CommandResult):
        return {
            "update_id": value.update_id,
            "command_id": value.command_id,
            "act_as": list(value.act_as),
            "record_time": format_timestamp(value.record_time),
            "kind": value.kind,
            "status": value.status,
            "transfer_kind": value.transfer_kind,
            "instruction_cid": value.instruction_cid,
            "receiver_holding_cids": list(value.receiver_holding_cids),
            "sender_change_cids": list(value.sender_change_cids),
            "contract_id": value.contract_id,
            "burned": format_amount(value.burned),
        }
    if isinstance(value, Holding):
        lock = value.lock
        return {
            "contract_id": value.contract_id,
            "owner": value.owner,
            "instrument": value.instrument.as_json(),
            "amount": format_amount(value.amount),
            "lock": None
            if lock is None
            else {
                "holders": list(lock.holders),
                "expires_at": None if lock.expires_at is None else to_json(lock.expires_at),
                "context": lock.context,
            },
        }
    if isinstance(value, InstrumentTotals):
        return {
            "minted": format_amount(value.minted),
            "burned": format_amount(value.burned),
            "fees": format_amount(value.fees),
            "supply": format_amount(value.supply),
        }
    if isinstance(value, TransferInstruction):
        transfer = value.transfer
        return {
            "contract_id": value.contract_id,
            "status": value.status,
            "original_instruction_cid": value.original_instruction_cid,
            "meta": dict(value.meta),
            "transfer": {
                "sender": transfer.sender,
                "receiver": transfer.receiver,
                "amount": format_amount(transfer.amount),
                "instrument": transfer.instrument.as_json(),
                "requested_at": format_timestamp(transfer.requested_at),
                "execute_before": format_timestamp(transfer.execute_before),
                "input_holding_cids": list(transfer.input_holding_cids),
                "meta": dict(transfer.meta),
            },
        }
    if isinstance(value, RegistryPolicy | InstrumentConfig):
        return value.as_json()
    if isinstance(value, Mapping):
        return {str(k): to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    raise TypeError(f"no JSON form for {type(value).__name__}")


def command_result_from_json(data: Mapping[str, Any]) -> CommandResult:
    return CommandResult(
        update_id=data["update_id"],
        command_id=data["command_id"],
        act_as=tuple(data["act_as"]),
        record_time=parse_timestamp(data["record_time"]),
        kind=data["kind"],
        status=data["status"],
        transfer_kind=data.get("transfer_kind"),
        instruction_cid=data.get("instruction_cid"),
        receiver_holding_cids=tuple(data.get("receiver_holding_cids") or ()),
        sender_change_cids=tuple(data.get("sender_change_cids") or ()),
        contract_id=data.get("contract_id"),
        burned=Decimal(data.get("burned") or "0"),
    )


def holding_from_json(data: Mapping[str, Any]) -> Holding:
    lock_data = data.get("lock")
    lock = None
    if lock_data is not None:
        expires = lock_data.get("expires_at")
        lock = Lock(
            holders=tuple(lock_data["holders"]),
            expires_at=None if expires is None else parse_timestamp(expires),
            context=lock_data.get("context"),
        )
    return Holding(
        contract_id=data["contract_id"],
        owner=data["owner"],
        instrument=InstrumentId(data["instrument"]["admin"], data["instrument"]["id"]),
        amount=Decimal(data["amount"]),
        lock=lock,
    )


def instruction_from_json(data: Mapping[str, Any]) -> TransferInstruction:
    transfer = data["transfer"]
    return TransferInstruction(
        contract_id=data["contract_id"],
        transfer=Transfer(
            sender=transfer["sender"],
            receiver=transfer["receiver"],
            amount=Decimal(transfer["amount"]),
            instrument=InstrumentId(transfer["instrument"]["admin"], transfer["instrument"]["id"]),
            requested_at=parse_timestamp(transfer["requested_at"]),
            execute_before=parse_timestamp(transfer["execute_before"]),
            input_holding_cids=tuple(transfer.get("input_holding_cids") or ()),
            meta=dict(transfer.get("meta") or {}),
        ),
        status=data["status"],
        original_instruction_cid=data.get("original_instruction_cid"),
        meta=dict(data.get("meta") or {}),
    )


# --- errors --------------------------------------------------------------------------------------


def error_json(exc: Exception) -> tuple[int, Json]:
    """The status and body a failed control call answers with."""
    if isinstance(exc, SluiceError):
        code, error = exc.code, exc.error
    else:
        code, error = InvalidInputError.code, InvalidInputError.error
    body: Json = {"code": code, "error": error, "message": str(exc), "type": type(exc).__name__}
    if isinstance(exc, CommandRejectedError):
        body["message"] = exc.message
        body["command_id"] = exc.command_id
    if isinstance(exc, DuplicateCommandError):
        body["result"] = to_json(exc.first)
    if isinstance(exc, ResponseLostError):
        body["command_id"] = exc.command_id
        body["result"] = to_json(exc.result)
    if isinstance(exc, NotFoundError):
        status = 404
    elif isinstance(exc, DuplicateOperationError):
        status = 409
    elif isinstance(exc, InvalidInputError | ValueError):
        status = 400
    else:
        status = 409
    return status, body


class RemoteLedgerError(LedgerError):
    """The control endpoint could not be reached or answered something unreadable."""

    code = 11
    error = "component_call_failed"


_ERROR_TYPES: Mapping[str, type[SluiceError]] = {
    cls.__name__: cls
    for cls in (
        *(getattr(engine, name) for name in engine.__all__ if name.endswith("Error")),
        InvalidInputError,
        NotFoundError,
        InvalidOperationStateError,
        DuplicateOperationError,
        SluiceError,
    )
}


def error_from_json(status: int, body: object) -> SluiceError:
    """The sluice error a control error answer stands for (the same class when it is known)."""
    if not isinstance(body, Mapping) or not isinstance(body.get("message"), str):
        return RemoteLedgerError(f"sandbox control answered HTTP {status}: {body!r:.300}")
    message: str = body["message"]
    cls = _ERROR_TYPES.get(str(body.get("type")))
    try:
        if cls is DuplicateCommandError:
            return DuplicateCommandError(command_result_from_json(body["result"]))
        if cls is ResponseLostError:
            return ResponseLostError(
                str(body["command_id"]), command_result_from_json(body["result"])
            )
        if cls is not None and issubclass(cls, CommandRejectedError):
            return cls(message, command_id=body.get("command_id"))
        if cls is not None:
            return cls(message)
    except (KeyError, TypeError, ValueError):
        pass
    if status == 404:
        return NotFoundError(message)
    if status == 400:
        return InvalidInputError(message)
    return LedgerError(message)
