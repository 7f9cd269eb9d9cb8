"""The errors of the Canton adapter: what a participant node or a registry answered, in words an
operator can act on.

Every :class:`CantonError` names the HTTP method and URL path, the HTTP status, the node's error
code and its cause, e.g. ``POST /v2/commands/submit-and-wait: HTTP 404 CONTRACT_NOT_FOUND: ...``.
``definite`` says whether a command certainly did not commit (see
:func:`sluice.ledger.wire.is_definite_rejection`); ``retryable`` whether asking again may succeed.

The node's error code is ``node_code``: ``code`` stays the stable numeric code every
:class:`sluice.domain.errors.SluiceError` carries (11, component call failed).
"""

from __future__ import annotations

from sluice.domain.errors import ComponentCallFailedError
from sluice.ports import LedgerReadError


class CantonError(ComponentCallFailedError):
    """A call to a participant node (or a registry) failed."""

    def __init__(
        self,
        method: str,
        path: str,
        problem: str | None = None,
        *,
        status: int | None = None,
        node_code: str | None = None,
        cause: str | None = None,
        category: str | None = None,
        definite: bool = False,
        retryable: bool = False,
        attempts: int = 1,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.node_code = node_code
        self.cause = cause
        self.category = category
        self.definite = definite
        self.retryable = retryable
        self.attempts = attempts
        head = " ".join(
            part
            for part in (
                f"HTTP {status}" if status is not None else None,
                node_code,
            )
            if part
        )
        text = ": ".join(part for part in (f"{method} {path}", head, problem, cause) if part)
        if attempts > 1:
            text += f" (after {attempts} attempts)"
        super().__init__(text)


class CantonAuthError(CantonError):
    """The node refused the credentials (HTTP 401) or the permission (HTTP 403), or no token
    could be obtained."""


class ListTooLargeError(CantonError):
    """HTTP 413: the list form's answer would exceed the node's list limit
    (``http-list-max-elements-limit``); ask with a smaller ``limit`` or use the WebSocket form."""


class MalformedResponseError(CantonError):
    """The answer is not the JSON the API specifies."""


class CantonUnavailableError(CantonError):
    """The node could not be reached or did not answer in time: connection failures, timeouts,
    HTTP 429 / 502 / 503 / 504 (after the retries, for reads), a WebSocket closed abnormally."""


class NoWebSocketError(CantonError):
    """The node has no WebSocket endpoint here (HTTP 404, 405 or 501 at the upgrade): use the
    HTTP list form instead."""


class CantonReadError(LedgerReadError):
    """Reading from a participant node failed; carries the node's error code and cause when the
    node said why, and how many items were yielded before the failure (they stand)."""

    def __init__(
        self,
        message: str,
        *,
        node_code: str | None = None,
        cause: str | None = None,
        items: int = 0,
        retryable: bool = True,
    ) -> None:
        super().__init__(message, retryable=retryable)
        self.node_code = node_code
        self.cause = cause
        self.items = items
