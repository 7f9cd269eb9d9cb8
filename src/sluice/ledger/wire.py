"""The JSON Ledger API v2 and Registry API vocabulary both ledger adapters speak.

The Canton client (:mod:`sluice.ledger.canton`) builds requests with these functions and the
embedded ledger's HTTP server (:mod:`sluice.ledger.local.server`) decodes them with the inverse
ones, so the two sides cannot drift apart; both are checked against the published OpenAPI files in
``../shared/reference/canton/api/`` by the tests.

What is here:

* the token-standard interface ids and choice names (real MainNet package ids);
* the ``ExerciseCommand`` of ``TransferFactory_Transfer`` and of the transfer instruction choices,
  and their decoding;
* the event format sluice asks for (LEDGER_EFFECTS, interface filters with views for the token
  standard's interfaces, plus a wildcard);
* ``JsCantonError``: the error categories of a Canton node, their gRPC codes and HTTP statuses,
  and whether an answer is definite.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sluice.domain.amounts import format_amount
from sluice.domain.errors import InvalidInputError
from sluice.domain.history import parse_transfer
from sluice.domain.ledger import Transfer, format_timestamp

Json = dict[str, Any]

# --- the token standard's interfaces ------------------------------------------------------------

HOLDING_INTERFACE_ID = (
    "718a0f77e505a8de22f188bd4c87fe74101274e9d4cb1bfac7d09aec7158d35b"
    ":Splice.Api.Token.HoldingV1:Holding"
)
TRANSFER_INSTRUCTION_PACKAGE_ID = "55ba4deb0ad4662c4168b39859738a0e91388d252286480c7331b3f71a517281"
TRANSFER_FACTORY_INTERFACE_ID = (
    f"{TRANSFER_INSTRUCTION_PACKAGE_ID}:Splice.Api.Token.TransferInstructionV1:TransferFactory"
)
TRANSFER_INSTRUCTION_INTERFACE_ID = (
    f"{TRANSFER_INSTRUCTION_PACKAGE_ID}:Splice.Api.Token.TransferInstructionV1:TransferInstruction"
)
TOKEN_STANDARD_INTERFACES = (
    HOLDING_INTERFACE_ID,
    TRANSFER_INSTRUCTION_INTERFACE_ID,
    TRANSFER_FACTORY_INTERFACE_ID,
)

TRANSFER_FACTORY_CHOICE = "TransferFactory_Transfer"
InstructionChoiceName = Literal["accept", "reject", "withdraw"]
INSTRUCTION_CHOICES: Mapping[str, str] = {
    "accept": "TransferInstruction_Accept",
    "reject": "TransferInstruction_Reject",
    "withdraw": "TransferInstruction_Withdraw",
}
_CHOICE_BY_NAME = {name: choice for choice, name in INSTRUCTION_CHOICES.items()}


# --- JSON pieces ----------------------------------------------------------------------------------


def instrument_json(admin: str, instrument_id: str) -> Json:
    return {"admin": admin, "id": instrument_id}


def copy_json(value: Any) -> Any:
    """A deep copy of decoded JSON (dicts, lists, scalars)."""
    if isinstance(value, dict):
        return {k: copy_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [copy_json(v) for v in value]
    return value


def transfer_json(
    *,
    sender: str,
    receiver: str,
    amount: str,
    admin: str,
    instrument_id: str,
    requested_at: str,
    execute_before: str,
    input_cids: Sequence[str],
    meta: Mapping[str, str],
) -> Json:
    return {
        "sender": sender,
        "receiver": receiver,
        "amount": amount,
        "instrumentId": instrument_json(admin, instrument_id),
        "requestedAt": requested_at,
        "executeBefore": execute_before,
        "inputHoldingCids": list(input_cids),
        "meta": {"values": dict(meta)},
    }


def transfer_record_json(transfer: Transfer) -> Json:
    """The token standard's ``Transfer`` record of a domain :class:`Transfer`."""
    return transfer_json(
        sender=transfer.sender,
        receiver=transfer.receiver,
        amount=format_amount(transfer.amount),
        admin=transfer.instrument.admin,
        instrument_id=transfer.instrument.id,
        requested_at=format_timestamp(transfer.requested_at),
        execute_before=format_timestamp(transfer.execute_before),
        input_cids=transfer.input_holding_cids,
        meta=transfer.meta,
    )


def extra_args_json(context: Mapping[str, Any], meta: Mapping[str, str]) -> Json:
    return {"context": {"values": copy_json(context)}, "meta": {"values": dict(meta)}}


def transfer_factory_arguments(
    transfer: Transfer, *, context: Mapping[str, Any] | None = None
) -> Json:
    """``choiceArguments`` of ``TransferFactory_Transfer``: what the registry's transfer-factory
    endpoint is asked with (empty context) and what the command carries (the registry's context).
    ``expectedAdmin`` is the instrument's admin as sluice knows it, never the registry's word."""
    return {
        "expectedAdmin": transfer.instrument.admin,
        "transfer": transfer_record_json(transfer),
        "extraArgs": extra_args_json(context or {}, {}),
    }


# --- commands -------------------------------------------------------------------------------------


def transfer_command(transfer: Transfer, factory_id: str, context: Mapping[str, Any]) -> Json:
    """The ``Command`` that exercises ``TransferFactory_Transfer`` on the registry's factory."""
    return {
        "ExerciseCommand": {
            "templateId": TRANSFER_FACTORY_INTERFACE_ID,
            "contractId": factory_id,
            "choice": TRANSFER_FACTORY_CHOICE,
            "choiceArgument": transfer_factory_arguments(transfer, context=context),
        }
    }


def instruction_command(
    choice: InstructionChoiceName, instruction_cid: str, context: Mapping[str, Any]
) -> Json:
    """The ``Command`` that exercises accept / reject / withdraw on a transfer instruction."""
    return {
        "ExerciseCommand": {
            "templateId": TRANSFER_INSTRUCTION_INTERFACE_ID,
            "contractId": instruction_cid,
            "choice": INSTRUCTION_CHOICES[choice],
            "choiceArgument": {"extraArgs": extra_args_json(context, {})},
        }
    }


def _commands_body(
    commands: Sequence[Json],
    command_id: str,
    act_as: Sequence[str],
    user_id: str | None,
    disclosed_contracts: Sequence[Mapping[str, Any]],
) -> Json:
    """What a submission and a preparation both carry."""
    body: Json = {
        "commands": list(commands),
        "commandId": command_id,
        "actAs": list(act_as),
        "disclosedContracts": [dict(c) for c in disclosed_contracts],
    }
    if user_id:
        body["userId"] = user_id
    return body


def js_commands(
    commands: Sequence[Json],
    *,
    command_id: str,
    act_as: Sequence[str],
    user_id: str | None = None,
    disclosed_contracts: Sequence[Mapping[str, Any]] = (),
    submission_id: str | None = None,
) -> Json:
    """A ``JsCommands`` body for ``/v2/commands/submit-and-wait``."""
    body = _commands_body(commands, command_id, act_as, user_id, disclosed_contracts)
    if submission_id:
        body["submissionId"] = submission_id
    return body


def prepare_request(
    commands: Sequence[Json],
    *,
    command_id: str,
    act_as: Sequence[str],
    user_id: str | None = None,
    disclosed_contracts: Sequence[Mapping[str, Any]] = (),
    synchronizer_id: str | None = None,
    max_record_time: datetime | None = None,
) -> Json:
    """A ``JsPrepareSubmissionRequest`` for ``/v2/interactive-submission/prepare``."""
    body = _commands_body(commands, command_id, act_as, user_id, disclosed_contracts)
    body["verboseHashing"] = False
    body["packageIdSelectionPreference"] = []
    if synchronizer_id:
        body["synchronizerId"] = synchronizer_id
    if max_record_time is not None:
        body["maxRecordTime"] = format_timestamp(max_record_time)
    return body


@dataclass(frozen=True, slots=True)
class TransferCommand:
    transfer: Transfer
    factory_id: str
    context: Mapping[str, Any]
    expected_admin: str


@dataclass(frozen=True, slots=True)
class InstructionCommand:
    choice: InstructionChoiceName
    instruction_cid: str
    context: Mapping[str, Any]
    meta: Mapping[str, str] = field(default_factory=dict)


def decode_command(command: Mapping[str, Any]) -> TransferCommand | InstructionCommand:
    """The inverse of :func:`transfer_command` / :func:`instruction_command`; anything else is
    :class:`InvalidInputError` naming what is wrong."""
    if not isinstance(command, Mapping):
        raise InvalidInputError("a command must be an object")
    exercise = command.get("ExerciseCommand")
    if not isinstance(exercise, Mapping):
        kinds = ", ".join(sorted(str(k) for k in command)) or "nothing"
        raise InvalidInputError(f"only ExerciseCommand is supported here, not {kinds}")
    choice = exercise.get("choice")
    contract_id = exercise.get("contractId")
    argument = exercise.get("choiceArgument")
    if not isinstance(contract_id, str) or not contract_id:
        raise InvalidInputError("ExerciseCommand.contractId is missing")
    if not isinstance(argument, Mapping):
        raise InvalidInputError("ExerciseCommand.choiceArgument must be an object")
    extra = argument.get("extraArgs")
    if not isinstance(extra, Mapping):
        raise InvalidInputError("choiceArgument.extraArgs is missing")
    context = _values(extra.get("context"), "extraArgs.context")
    meta = _values(extra.get("meta"), "extraArgs.meta")
    if choice == TRANSFER_FACTORY_CHOICE:
        transfer_value = argument.get("transfer")
        admin = argument.get("expectedAdmin")
        if not isinstance(transfer_value, Mapping):
            raise InvalidInputError("choiceArgument.transfer is missing")
        if not isinstance(admin, str) or not admin:
            raise InvalidInputError("choiceArgument.expectedAdmin is missing")
        transfer = parse_transfer(transfer_value)
        if transfer.instrument.admin != admin:
            raise InvalidInputError(
                f"expectedAdmin {admin} is not the admin of instrument {transfer.instrument.key()}"
            )
        return TransferCommand(transfer, contract_id, context, admin)
    name = _CHOICE_BY_NAME.get(str(choice))
    if name is None:
        raise InvalidInputError(f"choice {choice!r} is not supported here")
    return InstructionCommand(
        name,  # type: ignore[arg-type]
        contract_id,
        context,
        {str(k): str(v) for k, v in meta.items()},
    )


def _values(value: object, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidInputError(f"{path} must be an object")
    values = value.get("values", {})
    if not isinstance(values, Mapping):
        raise InvalidInputError(f"{path}.values must be an object")
    return values


# --- what to read ---------------------------------------------------------------------------------


def event_format(party: str, *, verbose: bool = True) -> Json:
    """Every event ``party`` witnesses: the token-standard interfaces with their views (so one
    parser reads every registry's holdings and instructions), plus a wildcard for the rest."""
    cumulative: list[Json] = [
        {
            "identifierFilter": {
                "InterfaceFilter": {
                    "value": {
                        "interfaceId": interface_id,
                        "includeInterfaceView": True,
                        "includeCreatedEventBlob": False,
                    }
                }
            }
        }
        for interface_id in TOKEN_STANDARD_INTERFACES
    ]
    cumulative.append(
        {"identifierFilter": {"WildcardFilter": {"value": {"includeCreatedEventBlob": False}}}}
    )
    return {"filtersByParty": {party: {"cumulative": cumulative}}, "verbose": verbose}


def updates_request(party: str, begin_exclusive: int, end_inclusive: int | None) -> Json:
    """A ``GetUpdatesRequest`` for ``party``'s LEDGER_EFFECTS transactions."""
    body: Json = {
        "beginExclusive": begin_exclusive,
        "verbose": True,
        "updateFormat": {
            "includeTransactions": {
                "eventFormat": event_format(party),
                "transactionShape": "TRANSACTION_SHAPE_LEDGER_EFFECTS",
            }
        },
    }
    if end_inclusive is not None:
        body["endInclusive"] = end_inclusive
    return body


def requested_party(event_format_value: object) -> str:
    """The one party an ``EventFormat`` asks for (the embedded server serves one at a time)."""
    if not isinstance(event_format_value, Mapping):
        raise InvalidInputError("eventFormat is missing")
    filters = event_format_value.get("filtersByParty")
    if not isinstance(filters, Mapping) or len(filters) != 1:
        raise InvalidInputError("filtersByParty must name exactly one party")
    (party,) = filters
    return str(party)


# --- errors ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorCategory:
    """A Canton error category: its number, gRPC status code and the HTTP status the JSON API
    answers with."""

    number: int
    grpc_code: int
    http_status: int
    retryable: bool


# Canton's ``ErrorCategory`` values (the ``errorCategory`` field of ``JsCantonError``).
CATEGORIES: Mapping[str, ErrorCategory] = {
    "TransientServerFailure": ErrorCategory(1, 14, 503, True),
    "ContentionOnSharedResources": ErrorCategory(2, 10, 409, True),
    "DeadlineExceededRequestStateUnknown": ErrorCategory(3, 4, 504, True),
    "SystemInternalAssumptionViolated": ErrorCategory(4, 13, 500, False),
    "MaliciousOrFaultyBehaviour": ErrorCategory(5, 2, 500, False),
    "AuthInterceptorInvalidAuthenticationCredentials": ErrorCategory(6, 16, 401, False),
    "InsufficientPermission": ErrorCategory(7, 7, 403, False),
    "InvalidIndependentOfSystemState": ErrorCategory(8, 3, 400, False),
    "InvalidGivenCurrentSystemStateOther": ErrorCategory(9, 9, 400, False),
    "InvalidGivenCurrentSystemStateResourceExists": ErrorCategory(10, 6, 409, False),
    "InvalidGivenCurrentSystemStateResourceMissing": ErrorCategory(11, 5, 404, False),
    "InvalidGivenCurrentSystemStateSeekAfterEnd": ErrorCategory(12, 11, 400, True),
    "BackgroundProcessDegradationWarning": ErrorCategory(13, 13, 500, False),
    "InternalUnsupportedOperation": ErrorCategory(14, 12, 501, False),
}
_CATEGORY_BY_NUMBER = {c.number: name for name, c in CATEGORIES.items()}

# Codes whose command may well have committed although the answer is an error.
UNDECIDED_CODES = frozenset(
    {"DUPLICATE_COMMAND", "SUBMISSION_ALREADY_IN_FLIGHT", "REQUEST_TIME_OUT", "TIMEOUT"}
)


def canton_error(
    code: str,
    cause: str,
    category: str,
    *,
    definite: bool | None = None,
    context: Mapping[str, str] | None = None,
    correlation_id: str | None = None,
) -> tuple[int, Json]:
    """A ``JsCantonError`` body and the HTTP status a node answers it with."""
    found = CATEGORIES[category]
    body: Json = {
        "code": code,
        "cause": cause,
        "context": dict(context or {}),
        "errorCategory": found.number,
        "grpcCodeValue": found.grpc_code,
        "resources": [],
    }
    if correlation_id:
        body["correlationId"] = correlation_id
    if definite is not None:
        body["definiteAnswer"] = definite
    return found.http_status, body


def category_name(number: object) -> str | None:
    return _CATEGORY_BY_NUMBER.get(number) if isinstance(number, int) else None


def is_canton_error(value: object) -> bool:
    return (
        isinstance(value, Mapping)
        and isinstance(value.get("code"), str)
        and "cause" in value
        and "errorCategory" in value
    )


def is_definite_rejection(error: Mapping[str, Any]) -> bool:
    """Whether a ``JsCantonError`` answering a command says the command certainly did not
    commit. Unknown, transient and duplicate answers are not definite: the command may have
    committed, and ingestion will tell."""
    if str(error.get("code")) in UNDECIDED_CODES:
        return False
    if error.get("definiteAnswer") is True:
        return True
    name = category_name(error.get("errorCategory"))
    return name in {
        "InvalidIndependentOfSystemState",
        "InvalidGivenCurrentSystemStateOther",
        "InvalidGivenCurrentSystemStateResourceMissing",
        "AuthInterceptorInvalidAuthenticationCredentials",
        "InsufficientPermission",
    }


# --- external parties -----------------------------------------------------------------------------

SIGNATURE_FORMAT = "SIGNATURE_FORMAT_CONCAT"
SIGNING_ALGORITHM = "SIGNING_ALGORITHM_SPEC_ED25519"
HASHING_SCHEME_VERSION = "HASHING_SCHEME_VERSION_V2"


def key_fingerprint(public_key_raw: bytes) -> str:
    """The id of an Ed25519 public key as ``signedBy`` names it: a SHA-256 multihash (``1220`` +
    hex digest) of the raw 32-byte key."""
    if len(public_key_raw) != 32:
        raise InvalidInputError("an Ed25519 public key has 32 bytes")
    return "1220" + hashlib.sha256(public_key_raw).hexdigest()
