"""The embedded ledger behind the services' command and registry ports.

Errors are translated to the ports' own: a rejection to a definite :class:`CommandError`, a lost
response (the command may have committed) to an indefinite one.
"""

from __future__ import annotations

from datetime import datetime

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId, Transfer
from sluice.ledger.local.engine import (
    CommandRejectedError,
    DuplicateCommandError,
    EmbeddedLedger,
    LedgerError,
)
from sluice.ports import (
    ChoiceContextData,
    CommandError,
    FactoryChoice,
    InstructionChoice,
    RegistryClient,
    RegistryError,
    RegistryLookup,
)


def _command_error(exc: LedgerError) -> CommandError:
    definite = isinstance(exc, CommandRejectedError) and not isinstance(exc, DuplicateCommandError)
    return CommandError(str(exc), definite=definite, code=exc.error)


class EmbeddedCommands:
    """:class:`sluice.ports.LedgerCommands` on the embedded ledger."""

    def __init__(self, ledger: EmbeddedLedger) -> None:
        self._ledger = ledger

    def submit_transfer(
        self,
        transfer: Transfer,
        factory: FactoryChoice,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None,
    ) -> None:
        try:
            self._ledger.submit_transfer(
                transfer,
                factory_id=factory.factory_id,
                context=factory.context.values,
                command_id=command_id,
                act_as=[act_as],
                max_record_time=max_record_time,
            )
        except LedgerError as exc:
            raise _command_error(exc) from exc

    def exercise_instruction(
        self,
        choice: InstructionChoice,
        instruction_cid: str,
        context: ChoiceContextData,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None = None,
    ) -> None:
        run = {
            "accept": self._ledger.accept,
            "reject": self._ledger.reject,
            "withdraw": self._ledger.withdraw,
        }[choice]
        try:
            run(
                instruction_cid,
                act_as,
                command_id=command_id,
                max_record_time=max_record_time,
                context=context.values,
            )
        except LedgerError as exc:
            raise _command_error(exc) from exc


class EmbeddedRegistry:
    """:class:`sluice.ports.RegistryClient` for one admin of the embedded ledger."""

    def __init__(self, ledger: EmbeddedLedger, admin: str) -> None:
        self._ledger = ledger
        self.admin = admin

    def transfer_factory(self, transfer: Transfer) -> FactoryChoice:
        try:
            factory = self._ledger.registry(self.admin).transfer_factory(transfer)
        except (LedgerError, InvalidInputError) as exc:
            # The embedded registry's answer about the request (it cannot be unreachable).
            raise RegistryError(str(exc), answered=True) from exc
        context = factory.choice_context
        return FactoryChoice(
            factory_id=factory.factory_id,
            transfer_kind=factory.transfer_kind,
            context=ChoiceContextData(context.values, tuple(context.disclosed_contracts)),
        )

    def choice_context(self, choice: InstructionChoice, instruction_cid: str) -> ChoiceContextData:
        registry = self._ledger.registry(self.admin)
        ask = {
            "accept": registry.accept_context,
            "reject": registry.reject_context,
            "withdraw": registry.withdraw_context,
        }[choice]
        try:
            context = ask(instruction_cid)
        except (LedgerError, ValueError) as exc:
            raise RegistryError(str(exc), answered=True) from exc
        return ChoiceContextData(context.values, tuple(context.disclosed_contracts))


def embedded_registries(ledger: EmbeddedLedger) -> RegistryLookup:
    def lookup(instrument: InstrumentId) -> RegistryClient:
        return EmbeddedRegistry(ledger, instrument.admin)

    return lookup
