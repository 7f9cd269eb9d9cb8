"""The deposit worker answering multi-step deposits (offers to the treasury) on the embedded ledger.

How: a :class:`~sluice.sandbox.Sandbox` on SQLite and on PostgreSQL; customers send USDX (no
preapprovals, so every transfer is an offer) to the treasury with their deposit account as
reason. The worker runs through ``DepositWorker.run_once`` with a compliance gate defined here,
the registry wrapped to count how often a choice context is asked for, and the ledger's faults
for rejected commands, lost responses and a crash between accepting and recording it. Each test
checks what the ledger did (instructions, the sender's and the treasury's holdings), the
customer's exact balance, and that the books balance — a customer is credited only when
ingestion sees the accept, and never twice.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from sluice.domain.journal import SUSPENSE, AccountRef, customer_account_name
from sluice.domain.ledger import InstrumentId
from sluice.ledger.local import RegistryPolicy
from sluice.ports import (
    ChoiceContextData,
    ComplianceGate,
    InstructionChoice,
    LedgerCommands,
    RegistryClient,
)
from sluice.sandbox import Sandbox
from sluice.services.books import check_invariant
from sluice.services.compliance import RegistryGate
from sluice.services.deposit_worker import (
    DepositWorker,
    DepositWorkerSettings,
    list_incoming_offers,
)

D = Decimal
ZERO = Decimal(0)


@pytest.fixture
def sb(database_url: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(database_url)
    yield sandbox
    sandbox.close()


def balance(sb: Sandbox, customer: str, instrument: InstrumentId | None = None) -> Decimal:
    with sb.database.uow() as uow:
        return uow.withdrawals.balance(
            AccountRef(customer_account_name(customer), instrument or sb.token)
        )


def holdings(sb: Sandbox, party: str, instrument: InstrumentId | None = None) -> Decimal:
    return sum((h.amount for h in sb.ledger.active_holdings(party, instrument or sb.token)), ZERO)


def pending_on_ledger(sb: Sandbox) -> set[str]:
    return {i.contract_id for i in sb.ledger.active_instructions(sb.treasury)}


def assert_books_balance(sb: Sandbox) -> None:
    assert check_invariant(sb.database.uow).problems == []


class DenyList:
    """A compliance gate that refuses deposits from the listed senders and records each ask."""

    def __init__(self, *denied: str) -> None:
        self.denied = set(denied)
        self.asked: list[tuple[str, str, InstrumentId, Decimal]] = []

    def allows_deposit(
        self, customer_id: str, sender: str, instrument: InstrumentId, amount: Decimal
    ) -> tuple[bool, str]:
        self.asked.append((customer_id, sender, instrument, amount))
        if sender in self.denied:
            return False, f"{sender} is on the deny list"
        return True, "not on the deny list"


class CountingRegistries:
    """The sandbox's registry lookup, counting the choice contexts it hands out."""

    def __init__(self, sb: Sandbox) -> None:
        self._lookup = sb.registries
        self.contexts: Counter[tuple[str, str]] = Counter()

    def __call__(self, instrument: InstrumentId) -> RegistryClient:
        return _CountingRegistry(self._lookup(instrument), self.contexts)


class _CountingRegistry:
    def __init__(self, inner: RegistryClient, contexts: Counter[tuple[str, str]]) -> None:
        self._inner = inner
        self._contexts = contexts

    def transfer_factory(self, transfer: Any) -> Any:
        return self._inner.transfer_factory(transfer)

    def choice_context(self, choice: InstructionChoice, instruction_cid: str) -> ChoiceContextData:
        self._contexts[(choice, instruction_cid)] += 1
        return self._inner.choice_context(choice, instruction_cid)


class CrashError(Exception):
    """The worker process dying at an inconvenient moment."""


class CrashAfterCommand:
    """Ledger commands that go through, after which the caller dies before it can record them."""

    def __init__(self, inner: LedgerCommands) -> None:
        self._inner = inner

    def submit_transfer(self, *args: Any, **kwargs: Any) -> None:
        self._inner.submit_transfer(*args, **kwargs)
        raise CrashError("died after the transfer was submitted")

    def exercise_instruction(
        self,
        choice: InstructionChoice,
        instruction_cid: str,
        context: ChoiceContextData,
        **kwargs: Any,
    ) -> None:
        self._inner.exercise_instruction(choice, instruction_cid, context, **kwargs)
        raise CrashError(f"died after the {choice} went through, before recording it")


def worker(
    sb: Sandbox,
    *,
    gate: ComplianceGate | None = None,
    registries: CountingRegistries | None = None,
    commands: LedgerCommands | None = None,
    attempts_max: int = 5,
) -> DepositWorker:
    return DepositWorker(
        sb.database.uow,
        commands or sb.commands,
        registries or sb.registries,
        gate or RegistryGate(sb.database.uow, sb.compliance, sb.clock),
        treasury=sb.treasury,
        settings=DepositWorkerSettings(attempts_max=attempts_max),
    )


def offered(sb: Sandbox, customer: str, amount: str) -> str:
    """The customer offers ``amount`` USDX to its deposit account; ingestion records it."""
    cid = sb.deposit(customer, amount, instrument=sb.token)
    assert cid is not None
    sb.ingest()
    return cid


# --- accepted ------------------------------------------------------------------------------------


def test_offer_to_a_known_account_is_accepted_and_credited_once_ingestion_sees_the_accept(
    sb: Sandbox,
) -> None:
    sender = sb.customers["cust-0"]
    before = holdings(sb, sender)
    cid = sb.deposit("cust-0", "50", instrument=sb.token)
    assert cid is not None
    # Not ingested yet: the worker knows nothing of it.
    assert worker(sb).run_once().accepted == 0
    sb.ingest()
    (offer,) = list_incoming_offers(sb.database.uow, sb.treasury)
    assert (offer.instruction.contract_id, offer.customer_id, offer.action) == (cid, "cust-0", None)
    assert balance(sb, "cust-0") == ZERO  # a pending offer credits nothing

    tick = worker(sb).run_once()
    assert (tick.accepted, tick.rejected, tick.errors) == (1, 0, [])
    assert pending_on_ledger(sb) == set()
    assert holdings(sb, sb.treasury) == D(50)
    assert balance(sb, "cust-0") == ZERO  # accepted, but ingestion has not seen it
    # Answered and waiting for ingestion: not answered again.
    tick = worker(sb).run_once()
    assert (tick.accepted, tick.waiting) == (0, 1)

    sb.ingest()
    assert balance(sb, "cust-0") == D(50)
    assert list_incoming_offers(sb.database.uow, sb.treasury) == []
    assert holdings(sb, sender) == before - D(50)
    assert worker(sb).run_once().busy is False
    sb.ingest()
    assert balance(sb, "cust-0") == D(50)
    assert_books_balance(sb)


# --- rejected by compliance ----------------------------------------------------------------------


def test_offer_from_a_sender_the_gate_denies_is_rejected_and_nothing_credited(
    sb: Sandbox,
) -> None:
    denied, allowed = sb.customers["cust-0"], sb.customers["cust-1"]
    denied_before = holdings(sb, denied)
    bad = offered(sb, "cust-0", "70")
    good = offered(sb, "cust-1", "30")
    gate = DenyList(denied)

    tick = worker(sb, gate=gate).run_once()
    assert (tick.accepted, tick.rejected, tick.errors) == (1, 1, [])
    assert sorted(gate.asked, key=repr) == sorted(
        [("cust-0", denied, sb.token, D(70)), ("cust-1", allowed, sb.token, D(30))], key=repr
    )
    assert pending_on_ledger(sb) == set()
    assert holdings(sb, denied) == denied_before  # the sender has its funds back
    assert {bad, good}.isdisjoint(i.contract_id for i in sb.ledger.active_instructions(denied))

    sb.ingest()
    assert balance(sb, "cust-0") == ZERO
    assert balance(sb, "cust-1") == D(30)
    with sb.database.uow() as uow:
        assert uow.withdrawals.balance(AccountRef(SUSPENSE, sb.token)) == ZERO
    assert holdings(sb, sb.treasury) == D(30)
    assert list_incoming_offers(sb.database.uow, sb.treasury) == []
    assert_books_balance(sb)


# --- left alone ----------------------------------------------------------------------------------


def test_offer_with_an_unknown_reason_or_instrument_is_left_alone_and_listed(
    sb: Sandbox,
) -> None:
    sender = sb.customers["cust-2"]
    unknown = sb.ledger.transfer(sender, sb.treasury, sb.token, D(25), reason="acct-404")
    missing = sb.ledger.transfer(sender, sb.treasury, sb.token, D(5))
    foreign = sb.ledger.create_instrument(
        sb.token.admin, "Foreign", RegistryPolicy(preapprovals_allowed=False)
    )
    sb.ledger.tap(sender, foreign, 100)
    not_onboarded = sb.ledger.transfer(sender, sb.treasury, foreign, D(10), reason="acct-2")
    cids = {r.instruction_cid for r in (unknown, missing, not_onboarded)}
    sb.ingest()

    registries = CountingRegistries(sb)
    for _ in range(2):
        tick = worker(sb, registries=registries).run_once()
        assert (tick.accepted, tick.rejected, tick.left_alone) == (0, 0, 3)
    assert registries.contexts == Counter()
    listed = list_incoming_offers(sb.database.uow, sb.treasury)
    assert {o.instruction.contract_id for o in listed} == cids
    by_cid = {o.instruction.contract_id: o for o in listed}
    assert by_cid[unknown.instruction_cid].customer_id is None
    assert by_cid[missing.instruction_cid].customer_id is None
    assert by_cid[not_onboarded.instruction_cid].customer_id == "cust-2"
    assert all((o.action, o.attempts) == (None, 0) for o in listed)
    assert pending_on_ledger(sb) == cids
    assert balance(sb, "cust-2") == ZERO

    # The sender takes one back; it leaves the list.
    assert unknown.instruction_cid is not None
    sb.ledger.withdraw(unknown.instruction_cid, sender)
    sb.ingest()
    remaining = {
        o.instruction.contract_id for o in list_incoming_offers(sb.database.uow, sb.treasury)
    }
    assert remaining == cids - {unknown.instruction_cid}
    assert holdings(sb, sb.treasury) == ZERO
    assert_books_balance(sb)


# --- retries -------------------------------------------------------------------------------------


def test_failed_accepts_are_retried_with_a_fresh_choice_context_a_bounded_number_of_times(
    sb: Sandbox,
) -> None:
    registries = CountingRegistries(sb)
    first = offered(sb, "cust-0", "40")

    # Two failures, then it goes through: three tries, each with its own choice context.
    sb.ledger.faults.fail_next_commands(2)
    for attempt in (1, 2):
        tick = worker(sb, registries=registries, attempts_max=3).run_once()
        assert (tick.accepted, len(tick.errors)) == (0, 1)
        (offer,) = list_incoming_offers(sb.database.uow, sb.treasury)
        assert (offer.action, offer.attempts) == ("accept", attempt)
        assert offer.last_error is not None
    tick = worker(sb, registries=registries, attempts_max=3).run_once()
    assert (tick.accepted, tick.errors) == (1, [])
    assert registries.contexts == Counter({("accept", first): 3})
    sb.ingest()
    assert balance(sb, "cust-0") == D(40)

    # Failing every time: after three tries it is left alone and listed with its last error.
    second = offered(sb, "cust-0", "15")
    sb.ledger.faults.fail_next_commands(3)
    for _ in range(3):
        tick = worker(sb, registries=registries, attempts_max=3).run_once()
        assert (tick.accepted, len(tick.errors)) == (0, 1)
    for _ in range(2):
        tick = worker(sb, registries=registries, attempts_max=3).run_once()
        assert (tick.accepted, tick.left_alone, tick.errors) == (0, 1, [])
    assert registries.contexts[("accept", second)] == 3
    (offer,) = list_incoming_offers(sb.database.uow, sb.treasury)
    assert (offer.instruction.contract_id, offer.attempts) == (second, 3)
    assert "injected failure" in (offer.last_error or "")
    assert pending_on_ledger(sb) == {second}
    sb.ingest()
    assert balance(sb, "cust-0") == D(40)
    assert holdings(sb, sb.treasury) == D(40)
    assert_books_balance(sb)


def test_lost_response_to_an_accept_credits_exactly_once(sb: Sandbox) -> None:
    cid = offered(sb, "cust-0", "60")
    sb.ledger.faults.drop_next_responses(1)
    tick = worker(sb).run_once()
    assert (tick.accepted, len(tick.errors)) == (0, 1)
    assert pending_on_ledger(sb) == set()  # it did go through

    # Tried again before ingestion saw it: the instruction is gone, the ledger refuses.
    tick = worker(sb).run_once()
    assert (tick.accepted, len(tick.errors)) == (0, 1)
    assert cid in tick.errors[0]
    assert balance(sb, "cust-0") == ZERO

    sb.ingest()
    assert balance(sb, "cust-0") == D(60)
    assert list_incoming_offers(sb.database.uow, sb.treasury) == []
    assert worker(sb).run_once().busy is False
    sb.ingest()
    assert balance(sb, "cust-0") == D(60)
    assert holdings(sb, sb.treasury) == D(60)
    assert_books_balance(sb)


# --- crash and continue --------------------------------------------------------------------------


def test_deposit_worker_crash_after_accepting_before_recording_credits_once(
    sb: Sandbox,
) -> None:
    cid = offered(sb, "cust-0", "80")
    with pytest.raises(CrashError):
        worker(sb, commands=CrashAfterCommand(sb.commands)).run_once()
    assert pending_on_ledger(sb) == set()  # the accept committed
    (offer,) = list_incoming_offers(sb.database.uow, sb.treasury)
    assert (offer.instruction.contract_id, offer.action, offer.attempts) == (cid, None, 0)

    # A fresh worker tries again (same command id: deduplicated by the ledger) and records it.
    tick = worker(sb).run_once()
    assert (tick.accepted, len(tick.errors)) == (0, 1)
    sb.ingest()
    assert balance(sb, "cust-0") == D(80)
    assert list_incoming_offers(sb.database.uow, sb.treasury) == []
    assert worker(sb).run_once().busy is False
    sb.ingest()
    assert balance(sb, "cust-0") == D(80)
    assert holdings(sb, sb.treasury) == D(80)
    assert_books_balance(sb)
