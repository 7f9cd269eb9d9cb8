"""Multi-step deposits: the worker that answers incoming offers.

An incoming offer (a transfer instruction to the treasury) is recorded by ingestion as pending and
credits nothing. This worker decides what to do with each one:

* the reason is a known deposit account and the compliance gate allows the sender → accept it;
* the compliance gate denies the sender → reject it (the sender gets the funds back);
* the reason is unknown, or the instrument is not onboarded → leave it alone: the sender may
  withdraw it or let it expire; support sees it in ``sluice deposits offers``.

Offers held by the admin (``pending_internal_workflow``) wait for the admin. The customer is
credited only when ingestion sees the accept commit, so a lost answer, a retry or a second worker
can never credit twice: the instruction can be accepted once. Each try asks the registry for a
fresh choice context, and the number of tries per offer is bounded. While sluice is paused the
worker answers nothing (see ``services/controls``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sluice.domain.amounts import format_amount
from sluice.domain.ledger import InstrumentId
from sluice.ports import (
    CommandError,
    ComplianceGate,
    IncomingOffer,
    InstructionChoice,
    LedgerCommands,
    RegistryError,
    RegistryLookup,
    UnitOfWorkFactory,
)
from sluice.services.controls import pause_state
from sluice.services.events import emit
from sluice.services.withdrawal_attempts import instrument_payload


@dataclass(frozen=True, slots=True)
class DepositWorkerSettings:
    attempts_max: int = 5
    batch: int = 200


@dataclass(slots=True)
class DepositTick:
    accepted: int = 0
    rejected: int = 0
    left_alone: int = 0
    waiting: int = 0
    # The pause mode in force (paused, emergency, maintenance): the worker did nothing at all.
    paused: str | None = None
    errors: list[str] = field(default_factory=list)

    @property
    def busy(self) -> bool:
        return bool(self.accepted or self.rejected or self.errors)


class DepositWorker:
    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        commands: LedgerCommands,
        registries: RegistryLookup,
        gate: ComplianceGate,
        *,
        treasury: str,
        settings: DepositWorkerSettings | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._uow = uow_factory
        self._clock = clock or (lambda: datetime.now(UTC))
        self._commands = commands
        self._registries = registries
        self._gate = gate
        self.treasury = treasury
        self.settings = settings or DepositWorkerSettings()

    def run_once(self) -> DepositTick:
        tick = DepositTick()
        with self._uow() as uow:
            state = pause_state(uow)
            if state is not None:
                tick.paused = state.mode
                return tick
            offers = uow.offers.pending_incoming(self.treasury, self.settings.batch)
            onboarded = {r.instrument for r in uow.reference.instruments() if r.enabled}
        for offer in offers:
            self._handle(offer, onboarded, tick)
        return tick

    def _handle(
        self, offer: IncomingOffer, onboarded: set[InstrumentId], tick: DepositTick
    ) -> None:
        instruction = offer.instruction
        transfer = instruction.transfer
        if offer.status != "pending_receiver_acceptance":
            tick.waiting += 1  # held by the admin's workflow
            return
        if offer.customer_id is None or transfer.instrument not in onboarded:
            tick.left_alone += 1
            return
        if offer.attempts >= self.settings.attempts_max:
            tick.left_alone += 1
            return
        if offer.action is not None and offer.last_error is None:
            tick.waiting += 1  # answered; ingestion has not seen it yet
            return
        allowed, why = self._gate.allows_deposit(
            offer.customer_id, transfer.sender, transfer.instrument, transfer.amount
        )
        action: InstructionChoice = "accept" if allowed else "reject"
        error: str | None = None
        try:
            context = self._registries(transfer.instrument).choice_context(
                action, instruction.contract_id
            )
            self._commands.exercise_instruction(
                action,
                instruction.contract_id,
                context,
                act_as=self.treasury,
                command_id=f"deposit-{action}-{instruction.contract_id[-24:]}-{offer.attempts + 1}",
            )
        except (CommandError, RegistryError) as exc:
            error = str(exc) or type(exc).__name__
            tick.errors.append(f"{instruction.contract_id}: {action}: {error}")
        else:
            if allowed:
                tick.accepted += 1
            else:
                tick.rejected += 1
        with self._uow() as uow:
            uow.offers.record_action(instruction.contract_id, action, error, why)
            if error is None:
                emit(
                    uow,
                    "offer_accepted" if allowed else "offer_rejected",
                    instruction.contract_id,
                    {
                        "offer_id": instruction.contract_id,
                        "customer_id": offer.customer_id,
                        "sender": transfer.sender,
                        "deposit_account": transfer.reason,
                        "instrument": instrument_payload(transfer.instrument),
                        "amount": format_amount(transfer.amount),
                        "status": "accepted" if allowed else "rejected",
                        "reason": why,
                        "attempt": offer.attempts + 1,
                        "actor": "deposit-worker",
                    },
                    at=self._clock(),
                )
            uow.commit()


def list_incoming_offers(uow_factory: UnitOfWorkFactory, treasury: str) -> list[IncomingOffer]:
    with uow_factory() as uow:
        return uow.offers.pending_incoming(treasury)
