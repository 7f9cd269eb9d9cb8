"""The embedded ledger's errors: one root (:class:`LedgerError`), the rejections of a command
(nothing of it committed), and the faults a caller must tell apart from them (a lost response,
an unknown party, a read past the ledger end).
"""

from __future__ import annotations

from sluice.domain.errors import (
    DuplicateOperationError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
    SluiceError,
)
from sluice.domain.ledger import format_timestamp

from .results import CommandResult


class LedgerError(SluiceError):
    """Root of the embedded ledger's errors."""

    code = 11
    error = "ledger_error"


class CommandRejectedError(LedgerError):
    """The ledger rejected a command; nothing of it was committed."""

    code = 11
    error = "command_rejected"

    def __init__(self, message: str, *, command_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.command_id = command_id


class InsufficientFundsError(CommandRejectedError, InvalidInputError):
    code = 70
    error = "insufficient_funds"


class LockedInputError(CommandRejectedError, InvalidInputError):
    code = 71
    error = "locked_input"


class InputNotOwnedError(CommandRejectedError, InvalidInputError):
    code = 72
    error = "input_not_owned"


class InactiveContractError(CommandRejectedError):
    """A contract the command uses is archived (or never existed): Canton's CONTRACT_NOT_FOUND."""

    code = 73
    error = "inactive_contract"


class ExpiredError(CommandRejectedError):
    code = 74
    error = "expired"


class TooManyInputsError(CommandRejectedError, InvalidInputError):
    code = 75
    error = "too_many_inputs"


class MaxRecordTimeExceededError(CommandRejectedError):
    code = 76
    error = "max_record_time_exceeded"


class PreapprovalMissingError(CommandRejectedError):
    code = 77
    error = "preapproval_missing"


class PreapprovalNotAllowedError(CommandRejectedError, InvalidInputError):
    code = 78
    error = "preapproval_not_allowed"


class InvalidTransferError(CommandRejectedError, InvalidInputError):
    """Time bounds, amounts, instruments or factory of a transfer do not fit."""

    code = 60
    error = "invalid_input"


class InvalidStateError(CommandRejectedError, InvalidOperationStateError):
    """The contract is not in a state that allows the choice (e.g. accept while on KYC hold)."""

    code = 41
    error = "invalid_operation_state"


class NotAuthorizedError(CommandRejectedError):
    """The submitting parties may not exercise the choice."""

    code = 2
    error = "insufficient_permissions"


class InjectedFailureError(CommandRejectedError):
    """A failure injected with ``ledger.faults``; retrying may succeed."""

    code = 11
    error = "component_call_failed"


class DuplicateCommandError(CommandRejectedError, DuplicateOperationError):
    """A command with the same (act_as, command_id) committed within the deduplication window;
    ``first`` is its outcome."""

    code = 42
    error = "duplicate_operation"

    def __init__(self, first: CommandResult) -> None:
        super().__init__(
            f"command {first.command_id!r} already committed as update {first.update_id} "
            f"at {format_timestamp(first.record_time)}",
            command_id=first.command_id,
        )
        self.first = first


class ResponseLostError(LedgerError):
    """The command committed but its response was lost (an injected fault). Look for the update,
    or resubmit with the same command id to get ``DuplicateCommandError`` with the outcome."""

    code = 40
    error = "operation_timeout"

    def __init__(self, command_id: str, result: CommandResult) -> None:
        super().__init__(f"the response to command {command_id!r} was lost")
        self.command_id = command_id
        self.result = result


class CommandTimeoutError(LedgerError):
    """The node accepted the command but did not answer in time (the late-commit fault): it may
    still commit, even after its ``max_record_time``."""

    code = 40
    error = "operation_timeout"

    def __init__(self, command_id: str) -> None:
        super().__init__(f"command {command_id!r} was accepted but not answered in time")
        self.command_id = command_id


class UnknownPartyError(LedgerError, NotFoundError):
    code = 10
    error = "not_found"


class UnknownInstrumentError(LedgerError, NotFoundError):
    code = 10
    error = "not_found"


class OffsetAfterLedgerEndError(LedgerError, InvalidInputError):
    """A read started after the node's ledger end: the node was restored or upgraded, or the
    reader's cursor belongs to another node."""

    code = 60
    error = "invalid_input"


class ReadOnlyLedgerError(LedgerError):
    code = 41
    error = "invalid_operation_state"
