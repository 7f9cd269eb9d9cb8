"""The issuer's commands on iSTSi (:class:`~sluice.ports.issuance.IssuerLedger`) for the embedded
ledger, in process (:class:`EmbeddedIssuerLedger`) and over its HTTP server's sandbox control
endpoint (:class:`RemoteIssuerLedger`), and :func:`create_istsi`, which registers the instrument.

On Canton this is where a real token implementation's commands plug in: the admin (the exchange's
issuer party) exercises the implementation's mint and burn choices on its own holdings contracts,
and ``TransferInstruction_Update`` on a transfer waiting in ``pending_internal_workflow`` (its
registry's KYC hold) to pass it on to the receiver or fail it back to the sender. Each command is
submitted with the caller's ``command_id`` so that the participant's command deduplication makes a
resend commit at most once.

The embedded ledger does the same in memory: ``mint`` creates a holding of the owner signed by
the admin; ``burn`` archives the owner's holdings and returns the change; ``admin_update`` with
``approve`` archives the held instruction and creates a new one pending the receiver's acceptance
(the receiver accepts it as any offer), without it fails the instruction and unlocks the sender's
holding. Every command goes through its deduplication on (act_as, command id) within the window:
the same id again raises :class:`~sluice.ledger.local.errors.DuplicateCommandError` carrying the
first result, which is what these adapters answer. Its injected faults stand for what a node does:
a lost response or a late commit (the command may have committed) and an injected failure (the
node was unavailable) all become :class:`~sluice.ports.issuance.IssuerOutcomeUnknownError`, so the
caller resends under the same id; a rejection (insufficient holdings, an inactive or expired
instruction, not authorised, a state that does not allow the choice) becomes
:class:`~sluice.ports.issuance.IssuerRejectedError`. Over HTTP the control protocol raises the same
error classes, and a failed connection or an unreadable answer is an unknown outcome too.

Amounts are whole satoshis at the port; the ledger amount is :func:`sats_to_amount` (8 decimals).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Protocol, TypeVar

from sluice.domain.errors import InvalidInputError, SluiceError
from sluice.domain.ledger import InstrumentId, TransferInstruction
from sluice.ports.issuance import (
    HeldTransfer,
    IssuerOutcomeUnknownError,
    IssuerRejectedError,
    IssuerResult,
    amount_to_sats,
    sats_to_amount,
)

from .control import RemoteLedgerError
from .engine import EmbeddedLedger
from .errors import (
    CommandTimeoutError,
    DuplicateCommandError,
    InjectedFailureError,
    LedgerError,
    ResponseLostError,
    UnknownInstrumentError,
)
from .registry import InstrumentConfig, RegistryPolicy
from .remote import RemoteLedger
from .results import CommandResult

ISTSI_ID = "iSTSi"
ISTSI_DECIMALS = 8
# The issuer's registry policy: every transfer between parties waits for the admin (KYC hold);
# no preapprovals (they would bypass nothing, but say so), no faucet.
ISTSI_POLICY = RegistryPolicy(kyc_hold=True, preapprovals_allowed=False, tap_allowed=False)

T = TypeVar("T")


class _TokenLedger(Protocol):
    """What both the embedded ledger and its remote client offer the issuer."""

    def mint(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult: ...

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
    ) -> CommandResult: ...

    def admin_update(
        self,
        instruction_cid: str,
        *,
        approve: bool,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
        admin: str | None = None,
    ) -> CommandResult: ...

    def active_instructions(self, party: str) -> list[TransferInstruction]: ...

    def supply(self, instrument: InstrumentId) -> Decimal: ...


class _InstrumentAdmin(Protocol):
    def instrument_config(self, instrument: InstrumentId) -> InstrumentConfig: ...

    def create_instrument(
        self,
        admin: str,
        instrument_id: str,
        policy: RegistryPolicy | None = None,
        *,
        name: str | None = None,
        symbol: str | None = None,
        decimals: int = 10,
    ) -> InstrumentId: ...


def create_istsi(ledger: _InstrumentAdmin, issuer_party: str) -> InstrumentId:
    """Register iSTSi (admin ``issuer_party``, 8 decimals, KYC hold) on an embedded ledger or a
    :class:`RemoteLedger`; an instrument that exists already is left as it is."""
    instrument = InstrumentId(issuer_party, ISTSI_ID)
    try:
        ledger.instrument_config(instrument)
        return instrument
    except UnknownInstrumentError:
        pass
    try:
        return ledger.create_instrument(
            issuer_party,
            ISTSI_ID,
            ISTSI_POLICY,
            name=ISTSI_ID,
            symbol=ISTSI_ID,
            decimals=ISTSI_DECIMALS,
        )
    except InvalidInputError:
        # Created meanwhile by someone else: that one stands (raises again if it was not that).
        ledger.instrument_config(instrument)
        return instrument


def _positive_sats(sats: int) -> int:
    if isinstance(sats, bool) or not isinstance(sats, int) or sats <= 0:
        raise InvalidInputError(f"amount: expected a positive whole number of sats, got {sats!r}")
    return sats


def _issuer_result(result: CommandResult) -> IssuerResult:
    return IssuerResult(result.command_id, result.update_id, result.record_time)


class _IssuerCommands:
    """The port over anything with the embedded ledger's method names (see the module
    docstring for how errors map)."""

    def __init__(self, ledger: _TokenLedger, issuer_party: str, instrument_id: str) -> None:
        self._ledger = ledger
        self._instrument = InstrumentId(issuer_party, instrument_id)

    @property
    def instrument(self) -> InstrumentId:
        return self._instrument

    def mint(self, owner: str, sats: int, *, reason: str, command_id: str) -> IssuerResult:
        amount = sats_to_amount(_positive_sats(sats))
        return self._command(
            command_id,
            lambda: self._ledger.mint(
                owner, self._instrument, amount, reason=reason, command_id=command_id
            ),
        )

    def burn(
        self,
        owner: str,
        sats: int,
        *,
        reason: str,
        command_id: str,
        inputs: Sequence[str] = (),
    ) -> IssuerResult:
        amount = sats_to_amount(_positive_sats(sats))
        return self._command(
            command_id,
            lambda: self._ledger.burn(
                owner,
                self._instrument,
                amount,
                inputs=list(inputs) or None,
                reason=reason,
                command_id=command_id,
            ),
        )

    def decide_transfer(
        self, instruction_cid: str, *, approve: bool, reason: str, command_id: str
    ) -> IssuerResult:
        return self._command(
            command_id,
            lambda: self._ledger.admin_update(
                instruction_cid,
                approve=approve,
                reason=reason,
                command_id=command_id,
                admin=self._instrument.admin,
            ),
        )

    def held_transfers(self, limit: int = 100) -> list[HeldTransfer]:
        """The admin's instructions of the instrument in ``pending_internal_workflow``, in the
        order they were created."""
        instructions = self._read(lambda: self._ledger.active_instructions(self._instrument.admin))
        held: list[HeldTransfer] = []
        for instruction in instructions:
            transfer = instruction.transfer
            if (
                instruction.status != "pending_internal_workflow"
                or transfer.instrument != self._instrument
            ):
                continue
            held.append(
                HeldTransfer(
                    instruction_cid=instruction.contract_id,
                    sender=transfer.sender,
                    receiver=transfer.receiver,
                    amount=transfer.amount,
                    reason=transfer.reason,
                    requested_at=transfer.requested_at,
                    execute_before=transfer.execute_before,
                )
            )
            if len(held) >= limit:
                break
        return held

    def supply(self) -> int:
        return amount_to_sats(self._read(lambda: self._ledger.supply(self._instrument)))

    # --- errors ----------------------------------------------------------------------------------

    def _command(self, command_id: str, send: Callable[[], CommandResult]) -> IssuerResult:
        if not command_id:
            raise InvalidInputError("command_id: a command of the issuer needs an id")
        try:
            return _issuer_result(send())
        except DuplicateCommandError as exc:
            first = exc.first  # typed by DuplicateOperationError too; here a CommandResult
            if not isinstance(first, CommandResult):
                raise IssuerOutcomeUnknownError(f"command {command_id!r}: {exc}") from exc
            return _issuer_result(first)
        except SluiceError as exc:
            raise self._translate(exc, command_id) from exc
        except (KeyError, TypeError, ValueError) as exc:
            # An answer that cannot be read (a cut or garbled response): it may have committed.
            raise IssuerOutcomeUnknownError(
                f"command {command_id!r}: unreadable answer ({exc})"
            ) from exc

    def _read(self, read: Callable[[], T]) -> T:
        try:
            return read()
        except SluiceError as exc:
            raise self._translate(exc, None) from exc
        except (KeyError, TypeError) as exc:
            raise IssuerOutcomeUnknownError(f"unreadable answer ({exc})") from exc

    @staticmethod
    def _translate(
        exc: SluiceError, command_id: str | None
    ) -> IssuerOutcomeUnknownError | IssuerRejectedError:
        what = f"command {command_id!r}" if command_id else "read"
        unknown = (ResponseLostError, CommandTimeoutError, InjectedFailureError, RemoteLedgerError)
        # A bare LedgerError is what the remote client makes of a server error it cannot name.
        if isinstance(exc, unknown) or type(exc) is LedgerError:
            return IssuerOutcomeUnknownError(f"{what}: {exc}")
        return IssuerRejectedError(f"{what} refused ({exc.error}, {exc.code}): {exc}")


class EmbeddedIssuerLedger(_IssuerCommands):
    """The issuer's commands on an in-process
    :class:`~sluice.ledger.local.engine.EmbeddedLedger`."""

    def __init__(
        self, ledger: EmbeddedLedger, issuer_party: str, instrument_id: str = ISTSI_ID
    ) -> None:
        super().__init__(ledger, issuer_party, instrument_id)


class RemoteIssuerLedger(_IssuerCommands):
    """The issuer's commands on a served embedded ledger, through its sandbox control endpoint
    (:class:`RemoteLedger`); connection failures are unknown outcomes."""

    def __init__(
        self, remote: RemoteLedger, issuer_party: str, instrument_id: str = ISTSI_ID
    ) -> None:
        super().__init__(remote, issuer_party, instrument_id)


__all__ = [
    "ISTSI_DECIMALS",
    "ISTSI_ID",
    "ISTSI_POLICY",
    "EmbeddedIssuerLedger",
    "RemoteIssuerLedger",
    "create_istsi",
]
