"""What a request to the embedded ledger's server is answered with when it fails: a
:class:`Problem` (a status and a ``JsCantonError`` body, or plain text for what Canton's HTTP
layer refuses), and the mapping of the ledger's errors to Canton's error codes and categories.
"""

from __future__ import annotations

from collections.abc import Mapping

import orjson
from starlette.responses import Response

from sluice.domain.errors import InvalidInputError, NotFoundError, SluiceError
from sluice.ledger import wire
from sluice.ledger.wire import Json

from .engine import (
    CommandRejectedError,
    CommandTimeoutError,
    Completion,
    DuplicateCommandError,
    EmbeddedLedger,
    LedgerError,
    ResponseLostError,
)


class Problem(Exception):  # noqa: N818 - an answer, not an error of the server
    """An answer other than success: a status and a body (JSON, or text for 400s)."""

    def __init__(self, status: int, body: Json | str) -> None:
        super().__init__(body if isinstance(body, str) else body.get("cause", ""))
        self.status = status
        self.body = body

    def response(self) -> Response:
        if isinstance(self.body, str):
            return Response(self.body, self.status, media_type="text/plain; charset=utf-8")
        return json_response(self.body, self.status)

    def canton_body(self) -> Json:
        """The body as a JsCantonError (text problems become INVALID_ARGUMENT)."""
        if isinstance(self.body, str):
            return wire.canton_error("INVALID_ARGUMENT", self.body, CATEGORY_INVALID)[1]
        return self.body


CATEGORY_INVALID = "InvalidIndependentOfSystemState"
CATEGORY_MISSING = "InvalidGivenCurrentSystemStateResourceMissing"
CATEGORY_STATE = "InvalidGivenCurrentSystemStateOther"


def canton_problem(
    code: str,
    cause: str,
    category: str,
    *,
    definite: bool | None = None,
    status: int | None = None,
    context: Mapping[str, str] | None = None,
) -> Problem:
    found, body = wire.canton_error(code, cause, category, definite=definite, context=context)
    return Problem(status or found, body)


def bad_body(message: str) -> Problem:
    """Canton's HTTP layer answers a body it cannot decode with 400 and plain text."""
    return Problem(400, f"Invalid value for: body ({message})")


def invalid_argument(message: str) -> Problem:
    return canton_problem("INVALID_ARGUMENT", message, CATEGORY_INVALID, definite=True)


def registry_problem(status: int, message: str) -> Problem:
    return Problem(status, {"error": message})


def json_response(body: object, status: int = 200) -> Response:
    return Response(orjson.dumps(body), status, media_type="application/json")


# A ledger rejection's ``error`` → the Canton error code and category it is answered with.
_REJECTIONS: Mapping[str, tuple[str, str]] = {
    "inactive_contract": ("CONTRACT_NOT_FOUND", CATEGORY_MISSING),
    "max_record_time_exceeded": ("MAX_RECORD_TIME_EXCEEDED", CATEGORY_STATE),
    "insufficient_permissions": ("DAML_AUTHORIZATION_ERROR", CATEGORY_INVALID),
    "duplicate_operation": ("DUPLICATE_COMMAND", "InvalidGivenCurrentSystemStateResourceExists"),
}
_DEFAULT_REJECTION = ("DAML_INTERPRETATION_ERROR", CATEGORY_STATE)


def command_problem(exc: Exception, ledger: EmbeddedLedger, party: str) -> Problem:
    """A command's failure as Canton answers it: rejections are definite; a duplicate, a lost
    response or a timeout is not (the command may have committed, or may still)."""
    if isinstance(exc, ResponseLostError | CommandTimeoutError):
        return canton_problem(
            "REQUEST_TIME_OUT",
            f"{exc.error}: {exc}",
            "DeadlineExceededRequestStateUnknown",
            definite=False,
        )
    if isinstance(exc, DuplicateCommandError):
        offset = ledger.update_offset(exc.first.update_id, party)
        context = {"existing_update_id": exc.first.update_id}
        if offset is not None:
            context["completion_offset"] = str(offset)
        code, category = _REJECTIONS[exc.error]
        return canton_problem(
            code, f"{exc.error}: {exc.message}", category, definite=False, context=context
        )
    if isinstance(exc, CommandRejectedError):
        code, category = _REJECTIONS.get(exc.error, _DEFAULT_REJECTION)
        return canton_problem(code, f"{exc.error}: {exc.message}", category, definite=True)
    if isinstance(exc, NotFoundError):
        return canton_problem(
            "NOT_FOUND", f"{_error_name(exc)}: {exc}", CATEGORY_MISSING, definite=True
        )
    if isinstance(exc, InvalidInputError | ValueError):
        return invalid_argument(f"{_error_name(exc)}: {exc}")
    if isinstance(exc, LedgerError):
        return canton_problem("LEDGER_ERROR", f"{exc.error}: {exc}", CATEGORY_STATE, definite=True)
    raise exc


def _error_name(exc: Exception) -> str:
    return exc.error if isinstance(exc, SluiceError) else "invalid_input"


def completion_status(completion: Completion) -> Json:
    """A completion's ``JsStatus``: code 0 for success, else the gRPC code of its category."""
    if completion.status == "ok":
        return {"code": 0, "message": "", "details": []}
    code, category = _REJECTIONS.get(completion.error, _DEFAULT_REJECTION)
    found = wire.CATEGORIES[category]
    message = f"{code}({found.number},0): {completion.error}: {completion.message}"
    return {"code": found.grpc_code, "message": message, "details": []}


def offset_after_end(offset: int, end: int, node: str) -> Problem:
    return canton_problem(
        "OFFSET_AFTER_LEDGER_END",
        f"offset {offset} is after the ledger end {end} of node {node}",
        "InvalidGivenCurrentSystemStateSeekAfterEnd",
    )


def read_failed(exc: Exception) -> Problem:
    return canton_problem(
        "UNAVAILABLE", f"reading the ledger failed: {exc}", "TransientServerFailure"
    )


def too_many_elements(list_limit: int) -> Problem:
    return canton_problem(
        "MAXIMUM_LIST_ELEMENTS_NUMBER_REACHED",
        f"the answer would hold more than {list_limit} elements (the server's "
        "http-list-max-elements-limit); ask with a smaller limit or use the WebSocket",
        CATEGORY_INVALID,
        status=413,
    )
