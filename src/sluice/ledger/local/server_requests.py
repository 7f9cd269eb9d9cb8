"""Reading a request of the embedded ledger's server: its body (bounded), the JSON object in it,
typed fields, offsets, the ``limit`` query parameter and the party of an event format. What
cannot be read is a :class:`~.server_problems.Problem` as Canton's HTTP layer answers it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

import orjson
from starlette.requests import ClientDisconnect, Request

from sluice.domain.errors import InvalidInputError
from sluice.ledger import wire
from sluice.ledger.wire import Json

from .server_problems import Problem, bad_body, invalid_argument

REQUEST_BODY_MAX_BYTES = 16 * 1024 * 1024

T = TypeVar("T")


async def read_body(request: Request) -> bytes:
    """The request body, refused (413, plain text) beyond :data:`REQUEST_BODY_MAX_BYTES`."""
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > REQUEST_BODY_MAX_BYTES:
                raise Problem(
                    413, f"Invalid value for: body (more than {REQUEST_BODY_MAX_BYTES} bytes)"
                )
            chunks.append(chunk)
    except ClientDisconnect:
        # The client gave up (its timeout); nobody reads an answer, nothing was done.
        raise Problem(400, "the client disconnected before sending its body") from None
    return b"".join(chunks)


def body_object(raw: bytes | str) -> Json:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise bad_body(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise bad_body(f"expected a JSON object, got {type(value).__name__}")
    return value


def body_field(
    body: Mapping[str, Any], name: str, kind: type[T], *, required: bool = False
) -> T | None:
    value = body.get(name)
    if value is None:
        if required:
            raise bad_body(f"missing required field {name!r}")
        return None
    if kind is int and isinstance(value, bool):
        raise bad_body(f"{name}: expected an integer")
    if not isinstance(value, kind):
        raise bad_body(f"{name}: expected {kind.__name__}, got {type(value).__name__}")
    return value


def body_offset(body: Mapping[str, Any], name: str) -> int | None:
    value = body_field(body, name, int)
    if value is not None and value < 0:
        raise bad_body(f"{name} must not be negative")
    return value


def query_limit(request: Request) -> int | None:
    text = request.query_params.get("limit")
    if text is None:
        return None
    try:
        value = int(text)
    except ValueError:
        raise Problem(400, f"Invalid value for: query parameter limit ({text!r})") from None
    if value < 0:
        raise Problem(400, "Invalid value for: query parameter limit (negative)")
    return value


def event_format_party(body: Mapping[str, Any]) -> str:
    """The party of an ``updateFormat`` (or the legacy ``filter``) of an updates request."""
    update_format = body.get("updateFormat")
    if isinstance(update_format, Mapping):
        transactions = update_format.get("includeTransactions")
        if not isinstance(transactions, Mapping):
            raise invalid_argument("updateFormat.includeTransactions is required here")
        return party_of(transactions.get("eventFormat"))
    if isinstance(body.get("filter"), Mapping):
        return party_of(body["filter"])
    raise bad_body("missing required field 'updateFormat'")


def party_of(event_format: object) -> str:
    try:
        return wire.requested_party(event_format)
    except InvalidInputError as exc:
        raise invalid_argument(str(exc)) from None
