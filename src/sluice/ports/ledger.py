"""The ledger port: reading updates from a participant node, submitting commands, and the
instrument admins' Registry API.

Updates cross the ledger port in the JSON Ledger API v2 shape (``JsGetUpdatesResponse`` objects as
decoded JSON), so one parser serves a real participant node and the embedded ledger alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, Protocol

from sluice.domain.ledger import InstrumentId, Transfer, TransferKind

JsonObject = Mapping[str, Any]


class LedgerReadError(Exception):
    """Reading from the ledger failed in a way that may succeed when tried again — unless
    ``retryable`` is False: the node refused the reader's credentials or rights, which no retry
    fixes."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class LedgerClient(Protocol):
    """The reading side of one ledger connection (one participant node)."""

    def ledger_end(self) -> int:
        """The node's current ledger end offset."""
        ...

    def updates(
        self, party: str, after_offset: int | None, *, limit: int | None = None
    ) -> Iterator[JsonObject]:
        """``JsGetUpdatesResponse`` objects (transactions and offset checkpoints) visible to
        ``party`` with an offset greater than ``after_offset`` (None: from the beginning), in
        offset order.

        Ends at the current ledger end (or after ``limit`` items). Raises
        :class:`LedgerReadError` when the read fails part-way; items already yielded stand.
        """
        ...

    def offset_at_record_time(self, party: str, time: datetime) -> int:
        """The largest offset of ``party``'s node whose record time is at or before ``time`` (0
        if none). Offsets are node-local; record times are not, so after a node was restored
        from a backup this is how a reader finds where it was on the node's new offsets."""
        ...


class ActiveContractsReader(Protocol):
    """A node's active contracts, read from the ledger itself (reconciliation and the reserves
    side of a proof of reserves read holdings this way, apart from what ingestion stored)."""

    def ledger_end(self) -> int: ...

    def active_contracts(self, party: str, at_offset: int | None = None) -> list[JsonObject]:
        """``JsGetActiveContractsResponse`` items of the contracts ``party`` is a stakeholder
        of, as of ``at_offset`` (None: the ledger end at the time of the call). Raises
        :class:`LedgerReadError` when they cannot be read."""
        ...


# --- Commands and the registry -----------------------------------------------------------------

InstructionChoice = Literal["accept", "reject", "withdraw"]


class CommandError(Exception):
    """A command was not confirmed. ``definite`` says it certainly did not commit (the node
    rejected it); otherwise (a lost response, a timeout) it may or may not have. Either way the
    outcome is learned from ingestion, never from this."""

    def __init__(self, message: str, *, definite: bool, code: str | None = None) -> None:
        super().__init__(message)
        self.definite = definite
        self.code = code


class RegistryError(Exception):
    """The registry could not answer (unreachable, or it refused the request).

    ``answered`` says the registry (or the client's own checks) answered about the request —
    an HTTP 4xx other than 408/429, an unknown or archived instruction, an instrument of
    another admin, a bad choice — so the registry itself works (a circuit breaker does not
    count it); otherwise it failed or could not be reached. ``status`` is the HTTP status when
    there was one."""

    def __init__(self, message: str, *, answered: bool = False, status: int | None = None) -> None:
        super().__init__(message)
        self.answered = answered
        self.status = status


@dataclass(frozen=True, slots=True)
class ChoiceContextData:
    """A registry's choice context, passed through untouched, and the contracts to disclose."""

    values: JsonObject
    disclosed_contracts: tuple[JsonObject, ...] = ()


@dataclass(frozen=True, slots=True)
class FactoryChoice:
    """``POST /registry/transfer-instruction/v1/transfer-factory``: what the registry answers."""

    factory_id: str
    transfer_kind: TransferKind
    context: ChoiceContextData


class RegistryClient(Protocol):
    """The Registry API of one instrument admin."""

    def transfer_factory(self, transfer: Transfer) -> FactoryChoice: ...
    def choice_context(
        self, choice: InstructionChoice, instruction_cid: str
    ) -> ChoiceContextData: ...


class LedgerCommands(Protocol):
    """The submitting side of a ledger connection. Returning means the node confirmed the
    command; :class:`CommandError` means it did not (see there)."""

    def submit_transfer(
        self,
        transfer: Transfer,
        factory: FactoryChoice,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None,
    ) -> None: ...

    def exercise_instruction(
        self,
        choice: InstructionChoice,
        instruction_cid: str,
        context: ChoiceContextData,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None = None,
    ) -> None: ...


RegistryLookup = Callable[[InstrumentId], RegistryClient]
"""The registry of an instrument's admin (the URL comes from onboarding, in the DB)."""
