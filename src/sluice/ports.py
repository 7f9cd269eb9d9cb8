"""What the services need from the outside world, as small protocols.

Updates cross the ledger port in the JSON Ledger API v2 shape (``JsGetUpdatesResponse`` objects as
decoded JSON), so one parser serves a real participant node and the embedded ledger alike.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, Protocol

JsonObject = Mapping[str, Any]


class LedgerReadError(Exception):
    """Reading from the ledger failed in a way that may succeed when tried again."""


class LedgerClient(Protocol):
    """The reading side of one ledger connection (one participant node)."""

    def ledger_end(self) -> int:
        """The node's current ledger end offset."""
        ...

    def updates(
        self, party: str, after_offset: int, *, limit: int | None = None
    ) -> Iterator[JsonObject]:
        """``JsGetUpdatesResponse`` objects (transactions and offset checkpoints) visible to
        ``party`` with an offset greater than ``after_offset``, in offset order.

        Ends at the current ledger end (or after ``limit`` items). Raises
        :class:`LedgerReadError` when the read fails part-way; items already yielded stand.
        """
        ...
