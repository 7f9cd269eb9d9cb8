"""Withdrawals end to end on the embedded ledger: requests, the worker, retries, refunds, offers,
pool upkeep, crashes and restores — each scenario of the Canton exchange integration guide.

How: every test builds a :class:`~sluice.sandbox.Sandbox` (an in-memory embedded ledger and the
Integration DB, on SQLite and on PostgreSQL) and drives it only through the real entry points:
``request_withdrawal`` (``sb.withdraw``), ``WithdrawalWorker.run_once``, ``DepositWorker.run_once``,
ingestion, the ledger's own API for what customers and the token admin do, and its ``faults`` for
failures. After each scenario it checks the books (``check_invariant``), the exact balances and
statuses, and — independently of the DB — what the ledger itself says was paid: every transfer
whose reason is a withdrawal id is read back from the treasury's update stream
(:class:`LedgerView`), so "paid exactly once" is a fact about the ledger, not about sluice's
bookkeeping. The customers' wallet holdings on the ledger are compared too.

Time moves only when a test moves the ledger clock; "past ``trec_tgt``" always means a ledger
checkpoint after it, ingested.
"""

from __future__ import annotations

import json
import random
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.errors import (
    DuplicateOperationError,
    InstrumentNotOnboardedError,
    InsufficientBalanceError,
    InvalidAmountError,
    InvalidInputError,
    NotFoundError,
)
from sluice.domain.history import item_offset, unwrap_update
from sluice.domain.journal import FEES, IN_FLIGHT, AccountRef, customer_account_name
from sluice.domain.ledger import REASON_KEY, InstrumentId, Transfer
from sluice.domain.withdrawals import (
    FENCE_KIND,
    KIND_KEY,
    LIVE_STATUSES,
    TERMINAL_STATUSES,
    Withdrawal,
)
from sluice.ledger.local.adapters import EmbeddedCommands
from sluice.ports import CommandError
from sluice.sandbox import Sandbox
from sluice.services.books import check_invariant
from sluice.services.ingestion import Ingestion, IngestionSettings
from sluice.services.withdrawals import (
    WithdrawalSettings,
    WorkerTick,
    hold_until_safe,
    list_withdrawals,
    request_withdrawal,
)
from sluice.store import tables
from tests.conftest import PG_ADMIN_URL

D = Decimal
ZERO = Decimal(0)

# --- what the ledger says -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerTransfer:
    """One committed ``TransferFactory_Transfer`` seen in the treasury's stream."""

    update_id: str
    reason: str | None
    sender: str
    receiver: str
    amount: Decimal
    instrument: InstrumentId
    outcome: str  # the result tag: Completed | Pending | Failed
    instruction_cid: str | None
    # A fence: the treasury's self-transfer of a record's anchor, which pays nobody.
    fence: bool = False


@dataclass
class LedgerView:
    """The treasury's transfers and the fate of their instructions, read from the ledger's own
    update stream (deduplicated by update id, so a node restored from backup reads the same)."""

    sb: Sandbox
    transfers: list[LedgerTransfer] = field(default_factory=list)
    # Instruction contract id → (choice that closed it, its result tag).
    closings: dict[str, tuple[str, str]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    after: int = 0

    def refresh(self, *, from_start: bool = False) -> LedgerView:
        if from_start:
            self.after = 0
        for raw in self.sb.ledger.updates(self.sb.treasury, self.after):
            kind, body = unwrap_update(raw)
            offset = item_offset(body)
            if offset is not None:
                self.after = max(self.after, offset)
            if kind != "transaction" or body["updateId"] in self.seen:
                continue
            self.seen.add(body["updateId"])
            self._read(body)
        return self

    def _read(self, body: dict[str, Any]) -> None:
        for event in body["events"]:
            exercised = event.get("ExercisedEvent")
            if exercised is None:
                continue
            choice = exercised["choice"]
            output = (exercised.get("exerciseResult") or {}).get("output") or {}
            tag = str(output.get("tag", "")).removeprefix("TransferInstructionResult_")
            if choice == "TransferFactory_Transfer":
                transfer = exercised["choiceArgument"]["transfer"]
                instrument = transfer["instrumentId"]
                self.transfers.append(
                    LedgerTransfer(
                        update_id=body["updateId"],
                        reason=transfer["meta"]["values"].get(REASON_KEY),
                        sender=transfer["sender"],
                        receiver=transfer["receiver"],
                        amount=D(transfer["amount"]),
                        instrument=InstrumentId(instrument["admin"], instrument["id"]),
                        outcome=tag,
                        instruction_cid=(output.get("value") or {}).get("transferInstructionCid"),
                        fence=transfer["meta"]["values"].get(KIND_KEY) == FENCE_KIND,
                    )
                )
            elif choice.startswith("TransferInstruction_"):
                self.closings[exercised["contractId"]] = (choice, tag)

    def with_reason(self, reason: str) -> list[LedgerTransfer]:
        return [t for t in self.transfers if t.reason == reason]

    def paid(self, reason: str) -> int:
        """How many transfers carrying ``reason`` delivered the funds to the receiver: completed
        at once, or offers the receiver accepted."""
        count = 0
        for transfer in self.with_reason(reason):
            if transfer.fence:
                continue
            if transfer.outcome == "Completed":
                count += 1
            elif transfer.outcome == "Pending" and transfer.instruction_cid is not None:
                closing = self.closings.get(transfer.instruction_cid)
                count += closing is not None and closing[1] == "Completed"
        return count


def ledger_view(sb: Sandbox) -> LedgerView:
    return LedgerView(sb).refresh()


# --- reading the DB -------------------------------------------------------------------------------


def balance(sb: Sandbox, customer: str, instrument: InstrumentId | None = None) -> Decimal:
    with sb.database.uow() as uow:
        account = AccountRef(customer_account_name(customer), instrument or sb.coin)
        return uow.withdrawals.balance(account)


def account(sb: Sandbox, name: str, instrument: InstrumentId | None = None) -> Decimal:
    with sb.database.uow() as uow:
        return uow.withdrawals.balance(AccountRef(name, instrument or sb.coin))


def wallet(sb: Sandbox, customer: str, instrument: InstrumentId | None = None) -> Decimal:
    """The customer's holdings on the ledger itself (locked ones included)."""
    holdings = sb.ledger.active_holdings(sb.customers[customer], instrument or sb.coin)
    return sum((h.amount for h in holdings), ZERO)


def treasury_on_ledger(sb: Sandbox, instrument: InstrumentId | None = None) -> Decimal:
    holdings = sb.ledger.active_holdings(sb.treasury, instrument or sb.coin)
    return sum((h.amount for h in holdings), ZERO)


def record(sb: Sandbox, withdrawal_id: str) -> Withdrawal:
    with sb.database.uow() as uow:
        found = uow.withdrawals.get(withdrawal_id)
    assert found is not None, f"no record of {withdrawal_id}"
    return found


def maybe_record(sb: Sandbox, withdrawal_id: str) -> Withdrawal | None:
    with sb.database.uow() as uow:
        return uow.withdrawals.get(withdrawal_id)


def reservations(sb: Sandbox) -> dict[str, str]:
    """Active holdings that are reserved: contract id → the record that reserved it."""
    holdings = tables.holdings
    with sb.database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(holdings.c.contract_id, holdings.c.reserved_by).where(
                holdings.c.reserved_by.is_not(None), holdings.c.archived_update_id.is_(None)
            )
        )
        return {row.contract_id: row.reserved_by for row in rows}


def attempts(sb: Sandbox, withdrawal_id: str) -> list[tuple[int, tuple[str, ...], str, str | None]]:
    """(attempt, inputs, trec_tgt, outcome) of each attempt, in order."""
    table = tables.withdrawal_attempts
    with sb.database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(table).where(table.c.withdrawal_id == withdrawal_id).order_by(table.c.attempt)
        )
        return [
            (row.attempt, tuple(json.loads(row.inputs)), str(row.trec_tgt), row.outcome)
            for row in rows
        ]


def alert_kinds(sb: Sandbox) -> list[str]:
    with sb.database.uow() as uow:
        return sorted(alert.kind for alert in uow.books.alerts())


def snapshot(sb: Sandbox) -> dict[str, list[tuple[Any, ...]]]:
    """Everything a withdrawal request could change: balances, journal, withdrawals, attempts,
    reservations, alerts."""
    watched = (
        tables.accounts,
        tables.journal_transactions,
        tables.journal_postings,
        tables.withdrawals,
        tables.withdrawal_attempts,
        tables.holdings,
        tables.alerts,
    )
    with sb.database.engine.connect() as connection:
        return {
            table.name: sorted(
                (tuple(row) for row in connection.execute(sa.select(table))), key=repr
            )
            for table in watched
        }


def assert_books_balance(sb: Sandbox) -> None:
    assert check_invariant(sb.database.uow).problems == []


def assert_live_inputs_disjoint(sb: Sandbox) -> None:
    """No holding is in the inputs of two live records, and each live record's inputs are
    reserved by it (or already spent). Read in one transaction."""
    holdings = tables.holdings
    connection = sb.database.engine.connect()
    if connection.dialect.name == "postgresql":
        connection = connection.execution_options(isolation_level="REPEATABLE READ")
    with connection, connection.begin():
        rows = connection.execute(
            sa.select(tables.withdrawals.c.id, tables.withdrawals.c.inputs).where(
                tables.withdrawals.c.status.in_(sorted(LIVE_STATUSES))
            )
        ).all()
        owners = {
            row.contract_id: (row.reserved_by, row.archived_update_id)
            for row in connection.execute(
                sa.select(
                    holdings.c.contract_id, holdings.c.reserved_by, holdings.c.archived_update_id
                )
            )
        }
    used: dict[str, str] = {}
    for row in rows:
        for cid in json.loads(row.inputs):
            assert cid not in used, f"{cid} is an input of {used[cid]} and {row.id}"
            used[cid] = row.id
            reserved_by, archived = owners[cid]
            assert archived is not None or reserved_by == row.id, (cid, reserved_by, row.id)


# --- driving the world ----------------------------------------------------------------------------


SandboxFactory = Callable[..., Sandbox]


@pytest.fixture
def world(database_url: str) -> Iterator[SandboxFactory]:
    """Builds sandboxes on the test's database; closes them afterwards."""
    made: list[Sandbox] = []

    def make(**kwargs: Any) -> Sandbox:
        sb = Sandbox.create(database_url, **kwargs)
        made.append(sb)
        return sb

    yield make
    for sb in made:
        sb.close()


def fund(sb: Sandbox, customer: str, *amounts: str, instrument: InstrumentId | None = None) -> None:
    """The customer deposits each amount (one holding each) and the exchange credits it."""
    instrument = instrument or sb.coin
    for amount in amounts:
        sb.deposit(customer, amount, instrument=instrument)
    sb.ingest()
    if instrument == sb.token:
        assert sb.deposit_worker().run_once().accepted == len(amounts)
        sb.ingest()
    assert_books_balance(sb)


def pass_beyond(sb: Sandbox, moment: datetime) -> None:
    """Move ledger time past ``moment``, let a checkpoint say so and ingest it."""
    gap = (moment - sb.clock()).total_seconds()
    sb.ledger.advance(max(gap, 0.0) + 1.0)
    sb.ledger.checkpoint()
    sb.ingest()


def offer_to(sb: Sandbox, customer: str, withdrawal_id: str) -> str:
    """The contract id of the pending offer the customer sees on the ledger for a withdrawal."""
    offers = [
        i.contract_id
        for i in sb.ledger.active_instructions(sb.customers[customer])
        if i.transfer.reason == withdrawal_id
    ]
    assert len(offers) == 1, offers
    return offers[0]


class CrashError(Exception):
    """A process dying at an inconvenient moment."""


def crash(_record: Withdrawal) -> None:
    raise CrashError("the worker died after submitting, before recording it")


# --- 1. request validation ------------------------------------------------------------------------


def test_invalid_requests_are_refused_with_their_error_and_change_nothing(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "100")
    party = sb.customers["cust-0"]
    not_onboarded = sb.ledger.create_instrument(sb.coin.admin, "Gold")
    before = snapshot(sb)

    def refused(expected: type[Exception], **overrides: Any) -> None:
        request: dict[str, Any] = {
            "treasury": sb.treasury,
            "customer_id": "cust-0",
            "receiver": party,
            "instrument": sb.coin,
            "amount": "10",
            "idempotency_key": "bad",
            "clock": sb.clock,
        }
        request.update(overrides)
        with pytest.raises(expected) as raised:
            request_withdrawal(sb.database.uow, **request)
        assert type(raised.value) is expected, raised.value  # not merely a subclass
        assert snapshot(sb) == before

    refused(InsufficientBalanceError, amount="100.0000000001")
    refused(InstrumentNotOnboardedError, instrument=not_onboarded)
    refused(InstrumentNotOnboardedError, instrument=InstrumentId(sb.coin.admin, "Nothing"))
    refused(InvalidInputError, receiver="not-a-party")
    refused(InvalidInputError, receiver="hint::")
    refused(InvalidInputError, receiver=sb.treasury)
    refused(InvalidAmountError, amount="1.00000000001")
    refused(InvalidAmountError, amount="0")
    refused(InvalidAmountError, amount="-5")
    refused(InvalidAmountError, amount="ten")
    refused(NotFoundError, customer_id="cust-99")
    refused(InvalidInputError, idempotency_key="  ")

    with sb.database.uow() as uow:
        assert uow.reference.set_instrument_enabled(sb.coin, False)
        uow.commit()
    before = snapshot(sb)
    refused(InstrumentNotOnboardedError)
    with sb.database.uow() as uow:
        uow.reference.set_instrument_enabled(sb.coin, True)
        uow.commit()

    # A valid request afterwards is unaffected: exactly the whole balance can go.
    assert sb.withdraw("cust-0", "100", key="all").status == "reserved"
    assert balance(sb, "cust-0") == ZERO
    assert_books_balance(sb)


def test_same_idempotency_key_twice_is_the_same_withdrawal_debited_once(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "100")
    first = sb.withdraw("cust-0", "30", key="k1")
    again = sb.withdraw("cust-0", D("30.000"), key="k1")
    assert again == first
    assert balance(sb, "cust-0") == D(70)
    assert account(sb, IN_FLIGHT) == D(30)
    assert len(list_withdrawals(sb.database.uow)) == 1

    sb.withdrawal_worker().run_once()
    sb.ingest()
    done = sb.withdraw("cust-0", "30", key="k1")
    assert (done.id, done.status) == (first.id, "completed")
    assert balance(sb, "cust-0") == D(70)
    assert ledger_view(sb).paid(first.id) == 1
    # The key is the customer's own: another customer's "k1" is another withdrawal.
    fund(sb, "cust-1", "10")
    other = sb.withdraw("cust-1", "5", key="k1")
    assert other.id != first.id
    assert balance(sb, "cust-1") == D(5)
    assert_books_balance(sb)


def test_same_idempotency_key_with_other_parameters_is_a_duplicate_operation(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "100")
    fund(sb, "cust-0", "100", instrument=sb.token)
    sb.withdraw("cust-0", "30", key="k1")
    before = snapshot(sb)
    for overrides in (
        {"amount": "31"},
        {"receiver": sb.customers["cust-1"]},
        {"instrument": sb.token},
    ):
        arguments: dict[str, Any] = {"amount": "30", "key": "k1", **overrides}
        with pytest.raises(DuplicateOperationError):
            sb.withdraw("cust-0", **arguments)
        assert snapshot(sb) == before
    assert balance(sb, "cust-0") == D(70)
    assert_books_balance(sb)


# --- 2. the 1-step happy path ---------------------------------------------------------------------


def test_one_step_withdrawal_debits_at_request_and_completes_when_ingested(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "500")
    paid_before = wallet(sb, "cust-0")

    requested = sb.withdraw("cust-0", "120", key="k1")
    assert requested.status == "reserved"
    assert requested.trec_tgt == sb.clock() + timedelta(seconds=sb.withdrawal_settings.trec_span_s)
    assert balance(sb, "cust-0") == D(380)
    assert account(sb, IN_FLIGHT) == D(120)
    assert set(reservations(sb)) == set(requested.inputs)

    tick = sb.withdrawal_worker().run_once()
    assert (tick.submitted, tick.submit_errors) == (1, 0)
    # The ledger has paid; the DB learns it only from ingestion.
    assert record(sb, requested.id).status == "submitted"
    assert wallet(sb, "cust-0") == paid_before + D(120)
    assert account(sb, IN_FLIGHT) == D(120)

    sb.ingest()
    done = record(sb, requested.id)
    assert done.status == "completed"
    assert done.outcome_update_id is not None
    assert balance(sb, "cust-0") == D(380)
    assert account(sb, IN_FLIGHT) == ZERO
    assert reservations(sb) == {}
    assert treasury_on_ledger(sb) == D(380)
    view = ledger_view(sb)
    assert view.paid(requested.id) == 1
    (transfer,) = view.with_reason(requested.id)
    assert (transfer.receiver, transfer.amount, transfer.outcome) == (
        sb.customers["cust-0"],
        D(120),
        "Completed",
    )
    assert wallet(sb, "cust-0") == paid_before + D(120)
    assert alert_kinds(sb) == []
    assert_books_balance(sb)


def test_withdrawal_network_fee_is_paid_by_the_treasury_and_booked_to_fees(
    world: SandboxFactory,
) -> None:
    sb = world(coin_fee=D("0.5"))
    # A holding of exactly the amount cannot pay the fee too: the worker must not pick it alone.
    fund(sb, "cust-0", "100", "400")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "100", key="k1")
    sb.withdrawal_worker().run_once()
    sb.ingest()
    assert record(sb, requested.id).status == "completed"
    assert wallet(sb, "cust-0") == paid_before + D(100)
    assert balance(sb, "cust-0") == D(400)
    assert account(sb, FEES) == D("-0.5")
    assert treasury_on_ledger(sb) == D("399.5")
    assert_books_balance(sb)


# --- 3. crash and continue ------------------------------------------------------------------------


def test_withdrawal_worker_crash_between_submit_and_recording_pays_once(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "500")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "120", key="k1")

    with pytest.raises(CrashError):
        sb.withdrawal_worker(after_submit=crash).run_once()
    assert record(sb, requested.id).status == "submitting"

    # A fresh worker does not submit again what may be in flight.
    tick = sb.withdrawal_worker().run_once()
    assert (tick.submitted, tick.submit_errors, tick.settled) == (0, 0, 0)
    sb.ingest()
    assert record(sb, requested.id).status == "completed"
    # Even once trec_tgt has passed there is nothing to settle or retry.
    pass_beyond(sb, requested.trec_tgt or sb.clock())
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.submitted) == (0, 0)

    assert ledger_view(sb).paid(requested.id) == 1
    assert wallet(sb, "cust-0") == paid_before + D(120)
    assert balance(sb, "cust-0") == D(380)
    assert account(sb, IN_FLIGHT) == ZERO
    assert_books_balance(sb)


def test_withdrawal_worker_crash_after_a_rejected_submit_is_retried_after_trec_tgt(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "500")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "120", key="k1")
    sb.ledger.faults.fail_next_commands(1)
    with pytest.raises(CrashError):
        sb.withdrawal_worker(after_submit=crash).run_once()
    assert record(sb, requested.id).status == "submitting"

    sb.ingest()
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.submitted) == (0, 0)  # trec_tgt has not passed: it may commit
    assert trec_passed_and_retried(sb, requested.id) == 2
    sb.ingest()
    assert record(sb, requested.id).status == "completed"
    assert ledger_view(sb).paid(requested.id) == 1
    assert wallet(sb, "cust-0") == paid_before + D(120)
    assert_books_balance(sb)


def trec_passed_and_retried(sb: Sandbox, withdrawal_id: str) -> int:
    """Let the current attempt's trec_tgt pass, run a worker; returns the new attempt number."""
    current = record(sb, withdrawal_id)
    assert current.trec_tgt is not None
    pass_beyond(sb, current.trec_tgt)
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.retried, tick.reserved, tick.submitted) == (1, 1, 1, 1), tick
    retried = record(sb, withdrawal_id)
    assert retried.trec_tgt is not None and retried.trec_tgt > current.trec_tgt
    return retried.attempt


class CrashingUnitOfWork:
    """A unit-of-work factory that dies at its ``crash_on``-th commit: that batch is lost and,
    as in a killed process, nothing is committed after it."""

    def __init__(self, database: bootstrap.Database, crash_on: int) -> None:
        self._database = database
        self._crash_on = crash_on
        self.commits = 0

    def __call__(self) -> Any:
        uow = self._database.uow()
        commit = uow.commit

        def commit_or_crash() -> None:
            self.commits += 1
            if self.commits >= self._crash_on:
                raise CrashError("ingestion died inside a batch")
            commit()

        uow.commit = commit_or_crash  # type: ignore[method-assign]
        return uow


def test_ingestion_crash_midway_resumes_and_completes_each_withdrawal_once(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", *["100"] * 6)
    paid_before = wallet(sb, "cust-0")
    requested = [sb.withdraw("cust-0", str(10 + n), key=f"k{n}") for n in range(6)]
    assert sb.withdrawal_worker().run_once().submitted == 6

    # Stopped after two transactions (a deliberate stop part-way).
    progress = sb.ingestion().run(max_transactions=2)
    assert progress.transactions == 2
    statuses = [record(sb, w.id).status for w in requested]
    assert statuses.count("completed") == 2

    # Then a crash inside a batch: nothing of that batch is written, the cursor stays.
    cursor_before = progress.cursor
    crashing = CrashingUnitOfWork(sb.database, crash_on=1)
    dying = Ingestion(
        crashing,
        sb.ledger.client(sb.treasury),
        sb.treasury,
        connection=sb.connection,
        settings=IngestionSettings(batch_size_max=2),
        sleep=lambda _s: None,
    )
    with pytest.raises(CrashError):
        dying.run()
    with sb.database.uow() as uow:
        assert uow.ingestion.load_cursor(sb.connection) == cursor_before
    assert [record(sb, w.id).status for w in requested] == statuses

    # And a cut stream on the way: bounded retries carry on.
    sb.ledger.faults.cut_stream_after(1)
    progress = sb.ingest()
    assert progress.reached_end and progress.read_retries == 1
    assert {record(sb, w.id).status for w in requested} == {"completed"}
    view = ledger_view(sb)
    assert [view.paid(w.id) for w in requested] == [1] * 6
    assert wallet(sb, "cust-0") == paid_before + sum(w.amount for w in requested)
    assert account(sb, IN_FLIGHT) == ZERO
    assert balance(sb, "cust-0") == D(600) - sum(w.amount for w in requested)
    assert_books_balance(sb)


# --- 4. two transfers for one withdrawal ----------------------------------------------------------


def test_two_submissions_of_one_attempt_commit_only_once(world: SandboxFactory) -> None:
    sb = world()
    fund(sb, "cust-0", "500", "300")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "120", key="k1")
    with pytest.raises(CrashError):
        sb.withdrawal_worker(after_submit=crash).run_once()

    # A stale worker that still believes the record is reserved submits the same attempt again
    # (same command id, same inputs): the ledger refuses it.
    with sb.database.uow() as uow:
        stuck = uow.withdrawals.get(requested.id, lock=True)
        assert stuck is not None and stuck.status == "submitting"
        uow.withdrawals.update(replace(stuck, status="reserved"))
        uow.commit()
    tick = sb.withdrawal_worker().run_once()
    assert (tick.submitted, tick.submit_errors) == (0, 1)

    # Even under another command id, the same reserved inputs cannot be spent twice.
    again = record(sb, requested.id)
    transfer = Transfer(
        sender=again.sender,
        receiver=again.receiver,
        amount=again.amount,
        instrument=again.instrument,
        requested_at=sb.clock(),
        execute_before=sb.clock() + timedelta(hours=1),
        input_holding_cids=again.inputs,
        meta={REASON_KEY: again.id, **again.transfer_meta()},
    )
    factory = sb.registries(sb.coin).transfer_factory(transfer)
    with pytest.raises(CommandError) as refused:
        EmbeddedCommands(sb.ledger).submit_transfer(
            transfer,
            factory,
            act_as=sb.treasury,
            command_id="another-command-id",
            max_record_time=again.trec_tgt,
        )
    assert refused.value.definite

    sb.ingest()
    assert record(sb, requested.id).status == "completed"
    assert ledger_view(sb).paid(requested.id) == 1
    assert wallet(sb, "cust-0") == paid_before + D(120)
    assert balance(sb, "cust-0") == D(680)
    assert "withdrawal_paid_twice" not in alert_kinds(sb)
    assert_books_balance(sb)


# --- 5. an offer accepted while the worker was down -----------------------------------------------


def test_offer_accepted_while_the_worker_was_down_completes_by_ingestion_alone(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-1", "500", instrument=sb.token)
    paid_before = wallet(sb, "cust-1", sb.token)
    requested = sb.withdraw("cust-1", "100", instrument=sb.token, key="k1")
    assert sb.withdrawal_worker().run_once().submitted == 1
    # No worker runs from here on, and ingestion has not seen the offer yet.
    sb.ledger.accept(offer_to(sb, "cust-1", requested.id), sb.customers["cust-1"])
    sb.ingest()
    assert record(sb, requested.id).status == "completed"
    assert wallet(sb, "cust-1", sb.token) == paid_before + D(100)
    assert balance(sb, "cust-1", sb.token) == D(400)
    assert account(sb, IN_FLIGHT, sb.token) == ZERO
    assert ledger_view(sb).paid(requested.id) == 1
    # A worker that comes back later has nothing to do for it.
    tick = sb.withdrawal_worker().run_once()
    assert (tick.offers_withdrawn, tick.settled, tick.submitted) == (0, 0, 0)
    assert_books_balance(sb)


# --- 6. retries that succeed ----------------------------------------------------------------------


def test_rejected_submission_is_retried_around_its_anchor_after_trec_tgt(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "150", "60")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "100", key="k1")
    (first_input,) = requested.inputs

    sb.ledger.faults.fail_next_commands(1)
    tick = sb.withdrawal_worker().run_once()
    assert (tick.submitted, tick.submit_errors) == (0, 1)
    failed = record(sb, requested.id)
    assert failed.status == "submitted" and (failed.last_error or "").startswith("rejected")
    sb.ingest()
    # Not retried from the command's error: only once trec_tgt has passed unseen.
    assert sb.withdrawal_worker().run_once().settled == 0
    assert record(sb, requested.id).status == "submitted"

    # Meanwhile a holding of exactly the amount arrives. The retry still spends the first
    # attempt's input (its anchor, which covers the amount alone): the two attempts share it, so
    # the ledger could never commit both.
    fund(sb, "cust-1", "100")
    assert trec_passed_and_retried(sb, requested.id) == 2
    retried = record(sb, requested.id)
    assert retried.inputs == (first_input,)
    assert reservations(sb) == {first_input: requested.id}
    sb.ingest()
    assert record(sb, requested.id).status == "completed"

    rows = attempts(sb, requested.id)
    assert [(n, outcome) for n, _inputs, _trec, outcome in rows] == [(1, "expired"), (2, None)]
    assert rows[0][1] == (first_input,) and rows[1][1] == retried.inputs
    assert rows[1][2] > rows[0][2]
    assert ledger_view(sb).paid(requested.id) == 1
    assert wallet(sb, "cust-0") == paid_before + D(100)
    assert balance(sb, "cust-0") == D(110)
    assert reservations(sb) == {}
    assert_books_balance(sb)


def test_lost_response_is_completed_by_ingestion_and_never_retried(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "500")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "120", key="k1")
    sb.ledger.faults.drop_next_responses(1)
    tick = sb.withdrawal_worker().run_once()
    assert tick.submit_errors == 1 and "unconfirmed" in tick.errors[0]
    # trec_tgt passes before ingestion has even seen the transfer.
    assert requested.trec_tgt is not None
    pass_beyond(sb, requested.trec_tgt)
    assert record(sb, requested.id).status == "completed"
    for _ in range(2):
        tick = sb.withdrawal_worker().run_once()
        assert (tick.settled, tick.retried, tick.submitted) == (0, 0, 0)
        pass_beyond(sb, sb.clock() + timedelta(seconds=sb.withdrawal_settings.trec_span_s))
    assert len(attempts(sb, requested.id)) == 1
    assert ledger_view(sb).paid(requested.id) == 1
    assert wallet(sb, "cust-0") == paid_before + D(120)
    assert balance(sb, "cust-0") == D(380)
    assert account(sb, IN_FLIGHT) == ZERO
    assert_books_balance(sb)


# --- 7. retries exhausted -------------------------------------------------------------------------


def test_retries_exhausted_fail_the_withdrawal_and_refund_the_customer(
    world: SandboxFactory,
) -> None:
    sb = world(withdrawal_settings=WithdrawalSettings(attempts_max=3))
    fund(sb, "cust-0", "500")
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "200", key="k1")
    assert balance(sb, "cust-0") == D(300)

    for attempt in (1, 2, 3):
        sb.ledger.faults.fail_next_commands(1)
        tick = sb.withdrawal_worker().run_once()
        assert tick.submit_errors == 1
        assert tick.settled == (0 if attempt == 1 else 1)
        current = record(sb, requested.id)
        assert (current.attempt, current.status) == (attempt, "submitted")
        assert current.trec_tgt is not None
        pass_beyond(sb, current.trec_tgt)

    # The attempts were sent and one might still commit late: before the customer is credited
    # back, the anchor is fenced (a self-transfer of it alone; the same round submits it).
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.retried, tick.fenced, tick.refunded, tick.submitted) == (
        1,
        0,
        1,
        0,
        1,
    )
    fencing = record(sb, requested.id)
    assert (fencing.status, fencing.attempt) == ("submitted", 4)
    assert "3 attempt(s)" in (fencing.failure or "")
    assert balance(sb, "cust-0") == D(300)
    sb.ingest()
    failed = record(sb, requested.id)
    assert failed.status == "failed" and failed.outcome_update_id is not None
    assert "3 attempt(s)" in (failed.failure or "")
    assert balance(sb, "cust-0") == D(500)
    assert account(sb, IN_FLIGHT) == ZERO
    assert reservations(sb) == {}
    rows = attempts(sb, requested.id)
    assert [(n, outcome) for n, _inputs, _trec, outcome in rows] == [
        (1, "expired"),
        (2, "expired"),
        (3, "expired"),
        (4, None),
    ]
    assert rows[0][2] < rows[1][2] < rows[2][2] < rows[3][2]
    # Every attempt spent the same anchor; the fence spent it alone, to the treasury itself.
    assert {inputs[0] for _n, inputs, _trec, _outcome in rows} == {rows[0][1][0]}
    (fence,) = ledger_view(sb).with_reason(requested.id)
    assert (fence.sender, fence.receiver, fence.outcome) == (sb.treasury, sb.treasury, "Completed")
    assert fence.fence and fence.amount == D(500)
    assert ledger_view(sb).paid(requested.id) == 0
    assert wallet(sb, "cust-0") == paid_before
    # Nothing more happens to it.
    pass_beyond(sb, sb.clock() + timedelta(hours=1))
    assert sb.withdrawal_worker().run_once().settled == 0
    assert balance(sb, "cust-0") == D(500)
    assert_books_balance(sb)


# --- 8. pool upkeep: merges and splits ------------------------------------------------------------


def test_withdrawal_too_large_for_the_small_holdings_waits_for_a_merge(
    world: SandboxFactory,
) -> None:
    settings = WithdrawalSettings(merge_threshold=20, merge_small_below=D(10))
    sb = world(withdrawal_settings=settings)
    fund(sb, "cust-0", *["1"] * 150)
    paid_before = wallet(sb, "cust-0")
    requested = sb.withdraw("cust-0", "120", key="k1")
    # 120 cannot be covered with at most 100 inputs of 1: accepted, debited, queued.
    assert requested.status == "queued"
    assert balance(sb, "cust-0") == D(30)

    tick = sb.withdrawal_worker().run_once()
    assert (tick.reserved, tick.upkeep_created) == (0, 1)
    (merge,) = [w for w in list_withdrawals(sb.database.uow) if w.kind == "merge"]
    assert (merge.customer_id, merge.amount, len(merge.inputs)) == (None, D(100), 100)
    assert sb.withdrawal_worker().run_once().submitted == 1
    assert record(sb, requested.id).status == "queued"
    sb.ingest()
    assert record(sb, merge.id).status == "completed"

    tick = sb.withdrawal_worker().run_once()
    assert (tick.reserved, tick.submitted) == (1, 1)
    sb.ingest()
    assert record(sb, requested.id).status == "completed"
    # Let any further upkeep the worker planned finish too.
    for _ in range(3):
        sb.withdrawal_worker().run_once()
        sb.ingest()
    records = list_withdrawals(sb.database.uow)
    assert {w.status for w in records} == {"completed"}
    assert all(w.kind == "merge" for w in records if w.id != requested.id)
    assert ledger_view(sb).paid(requested.id) == 1
    assert wallet(sb, "cust-0") == paid_before + D(120)
    assert balance(sb, "cust-0") == D(30)
    assert treasury_on_ledger(sb) == D(30)
    assert account(sb, FEES) == ZERO
    assert_books_balance(sb)


def test_a_large_holding_is_split_when_too_few_could_run_in_parallel(
    world: SandboxFactory,
) -> None:
    settings = WithdrawalSettings(merge_threshold=0, split_parallel=2, split_large_at_least=D(100))
    sb = world(withdrawal_settings=settings)
    fund(sb, "cust-0", "1000")
    tick = sb.withdrawal_worker().run_once()
    assert tick.upkeep_created == 1
    (split,) = list_withdrawals(sb.database.uow)
    assert (split.kind, split.amount, split.status) == ("split", D(500), "reserved")
    assert sb.withdrawal_worker().run_once().submitted == 1
    sb.ingest()
    assert record(sb, split.id).status == "completed"
    amounts = sorted(h.amount for h in sb.ledger.active_holdings(sb.treasury, sb.coin))
    assert amounts == [D(500), D(500)]
    # Two large holdings now: no further split.
    assert sb.withdrawal_worker().run_once().upkeep_created == 0
    assert balance(sb, "cust-0") == D(1000)
    assert account(sb, FEES) == ZERO
    assert_books_balance(sb)


# --- 9. no holding available ----------------------------------------------------------------------


def test_request_while_every_holding_is_reserved_is_queued_until_change_comes_back(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "300")
    fund(sb, "cust-1", "300")
    first = sb.withdraw("cust-0", "50", key="k1")
    second = sb.withdraw("cust-1", "50", key="k1")
    assert (first.status, second.status) == ("reserved", "reserved")
    assert len(reservations(sb)) == 2

    waiting = sb.withdraw("cust-0", "100", key="k2")
    assert waiting.status == "queued" and waiting.inputs == ()
    assert balance(sb, "cust-0") == D(150)

    tick = sb.withdrawal_worker().run_once()
    assert (tick.submitted, tick.reserved) == (2, 0)
    assert sb.withdrawal_worker().run_once().reserved == 0
    assert record(sb, waiting.id).status == "queued"

    sb.ingest()  # the first two complete; their change comes back free
    tick = sb.withdrawal_worker().run_once()
    assert (tick.reserved, tick.submitted) == (1, 1)
    sb.ingest()
    assert [record(sb, w.id).status for w in (first, second, waiting)] == ["completed"] * 3
    view = ledger_view(sb)
    assert [view.paid(w.id) for w in (first, second, waiting)] == [1, 1, 1]
    assert balance(sb, "cust-0") == D(150) and balance(sb, "cust-1") == D(250)
    assert treasury_on_ledger(sb) == D(400)
    assert reservations(sb) == {}
    assert_books_balance(sb)


# --- 10. a burst of withdrawals -------------------------------------------------------------------


def burst(sb: Sandbox, seed: int) -> tuple[list[Withdrawal], dict[str, Decimal]]:
    """Three customers fund a pool of twelve holdings, then request 30 withdrawals: most of them
    queue, and the workers compete to reserve the change of the others as it comes back."""
    rng = random.Random(seed)
    for n in range(3):
        fund(sb, f"cust-{n}", *[str(rng.randrange(150, 300)) for _ in range(4)])
    wallets = {f"cust-{n}": wallet(sb, f"cust-{n}") for n in range(3)}
    requested = [
        sb.withdraw(f"cust-{n % 3}", str(D(rng.randrange(100, 4000)) / 100), key=f"burst-{n}")
        for n in range(30)
    ]
    return requested, wallets


def check_burst_done(sb: Sandbox, requested: list[Withdrawal], wallets: dict[str, Decimal]) -> None:
    assert {record(sb, w.id).status for w in requested} == {"completed"}
    view = ledger_view(sb)
    assert [view.paid(w.id) for w in requested] == [1] * 30
    assert len(view.transfers) == len({t.update_id for t in view.transfers})
    for customer, before in wallets.items():
        owed = sum((w.amount for w in requested if w.customer_id == customer), ZERO)
        assert wallet(sb, customer) == before + owed
    assert account(sb, IN_FLIGHT) == ZERO
    assert reservations(sb) == {}
    assert "withdrawal_paid_twice" not in alert_kinds(sb)
    assert_books_balance(sb)


def test_burst_of_withdrawals_with_interleaved_workers_completes_each_once(
    world: SandboxFactory,
) -> None:
    sb = world()
    requested, wallets = burst(sb, seed=7)
    workers = [sb.withdrawal_worker() for _ in range(3)]
    ticks: list[WorkerTick] = []
    for round_number in range(40):
        for n in range(3):
            ticks.append(workers[(round_number + n) % 3].run_once())
            assert_live_inputs_disjoint(sb)
        sb.ingest()
        assert_live_inputs_disjoint(sb)
        if all(record(sb, w.id).status in TERMINAL_STATUSES for w in requested):
            break
    # Each withdrawal was submitted exactly once, by one of the workers, and never failed.
    assert sum(t.submitted for t in ticks) == 30
    assert sum(t.submit_errors + t.settled for t in ticks) == 0
    check_burst_done(sb, requested, wallets)


def test_burst_of_withdrawals_with_workers_running_at_the_same_time(
    world: SandboxFactory,
) -> None:
    """Three worker threads and ingestion at once (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, one
    writer at a time on SQLite)."""
    sb = world()
    requested, wallets = burst(sb, seed=11)
    done = threading.Event()
    errors: list[BaseException] = []
    ticks: list[list[WorkerTick]] = [[], [], []]

    def work(n: int) -> None:
        worker = sb.withdrawal_worker()
        try:
            while not done.is_set() and len(ticks[n]) < 2_000:
                tick = worker.run_once()
                ticks[n].append(tick)
                if not tick.busy:
                    done.wait(0.002)  # idle: let ingestion have the database
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(3)]
    for thread in threads:
        thread.start()
    try:
        for _ in range(2_000):
            sb.ingest()
            assert_live_inputs_disjoint(sb)
            if errors or all(record(sb, w.id).status in TERMINAL_STATUSES for w in requested):
                break
            done.wait(0.005)
    finally:
        done.set()
        for thread in threads:
            thread.join(timeout=60)
    assert errors == []
    assert all(not thread.is_alive() for thread in threads)
    everything = [tick for worker_ticks in ticks for tick in worker_ticks]
    assert sum(t.submitted for t in everything) == 30
    assert sum(t.submit_errors + t.settled for t in everything) == 0
    sb.ingest()
    check_burst_done(sb, requested, wallets)


# --- 11. multi-step withdrawals -------------------------------------------------------------------


def offered(sb: Sandbox, customer: str, amount: str) -> tuple[Withdrawal, Decimal]:
    """A USDX withdrawal turned into an offer the customer can see; returns it with the
    customer's wallet before."""
    fund(sb, customer, "500", instrument=sb.token)
    before = wallet(sb, customer, sb.token)
    requested = sb.withdraw(customer, amount, instrument=sb.token, key="k1")
    assert sb.withdrawal_worker().run_once().submitted == 1
    sb.ingest()
    current = record(sb, requested.id)
    assert current.status == "offered" and current.instruction_cid is not None
    assert balance(sb, customer, sb.token) == D(500) - D(amount)
    assert account(sb, IN_FLIGHT, sb.token) == D(amount)
    assert_books_balance(sb)
    return current, before


def assert_refunded(sb: Sandbox, withdrawal: Withdrawal, wallet_before: Decimal) -> None:
    failed = record(sb, withdrawal.id)
    assert failed.status == "failed", failed
    assert balance(sb, "cust-1", sb.token) == D(500)
    assert account(sb, IN_FLIGHT, sb.token) == ZERO
    assert wallet(sb, "cust-1", sb.token) == wallet_before
    assert treasury_on_ledger(sb, sb.token) == D(500)
    assert sb.ledger.active_instructions(sb.customers["cust-1"]) == []
    assert ledger_view(sb).paid(withdrawal.id) == 0
    assert reservations(sb) == {}
    assert_books_balance(sb)


def test_multi_step_withdrawal_accepted_completes(world: SandboxFactory) -> None:
    sb = world()
    withdrawal, before = offered(sb, "cust-1", "100")
    sb.ledger.accept(offer_to(sb, "cust-1", withdrawal.id), sb.customers["cust-1"])
    sb.ingest()
    assert record(sb, withdrawal.id).status == "completed"
    assert wallet(sb, "cust-1", sb.token) == before + D(100)
    assert balance(sb, "cust-1", sb.token) == D(400)
    assert account(sb, IN_FLIGHT, sb.token) == ZERO
    assert treasury_on_ledger(sb, sb.token) == D(400)
    assert ledger_view(sb).paid(withdrawal.id) == 1
    assert_books_balance(sb)


def test_multi_step_withdrawal_rejected_fails_and_refunds(world: SandboxFactory) -> None:
    sb = world()
    withdrawal, before = offered(sb, "cust-1", "100")
    sb.ledger.reject(offer_to(sb, "cust-1", withdrawal.id), sb.customers["cust-1"])
    sb.ingest()
    assert_refunded(sb, withdrawal, before)
    assert record(sb, withdrawal.id).failure == "offer rejected"


def test_multi_step_withdrawal_left_unanswered_is_withdrawn_by_the_worker(
    world: SandboxFactory,
) -> None:
    sb = world(withdrawal_settings=WithdrawalSettings(offer_timeout_s=3600))
    withdrawal, before = offered(sb, "cust-1", "100")
    pass_beyond(sb, sb.clock() + timedelta(seconds=1800))
    assert sb.withdrawal_worker().run_once().offers_withdrawn == 0
    pass_beyond(sb, sb.clock() + timedelta(seconds=1800))
    assert sb.withdrawal_worker().run_once().offers_withdrawn == 1
    assert record(sb, withdrawal.id).status == "offered"  # until ingestion sees it
    sb.ingest()
    assert_refunded(sb, withdrawal, before)
    assert record(sb, withdrawal.id).failure == "offer withdrawn"
    assert sb.withdrawal_worker().run_once().offers_withdrawn == 0


def test_multi_step_withdrawal_expired_by_the_admin_fails_and_refunds(
    world: SandboxFactory,
) -> None:
    settings = WithdrawalSettings(offer_expiry_s=7200, offer_timeout_s=30 * 24 * 3600)
    sb = world(withdrawal_settings=settings)
    withdrawal, before = offered(sb, "cust-1", "100")
    assert sb.ledger.expire_instructions() == []  # not yet
    pass_beyond(sb, sb.clock() + timedelta(seconds=7200))
    assert sb.withdrawal_worker().run_once().offers_withdrawn == 0
    assert len(sb.ledger.expire_instructions()) == 1
    sb.ingest()
    assert_refunded(sb, withdrawal, before)
    assert record(sb, withdrawal.id).failure == "offer failed"


def test_direct_only_instrument_the_registry_would_offer_fails_and_refunds_unsubmitted(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", "500")
    # A receiver without a preapproval: the registry would make the transfer an offer, and the
    # coin is onboarded for direct transfers only.
    stranger = sb.ledger.allocate_party("stranger", "wallets")
    requested = sb.withdraw("cust-0", "100", key="k1", receiver=stranger)
    tick = sb.withdrawal_worker().run_once()
    assert (tick.submitted, tick.submit_errors) == (0, 1)
    assert "'offer'" in tick.errors[0]
    refused = record(sb, requested.id)
    assert refused.status == "submitted" and refused.failure is not None
    # Refunded only once trec_tgt has passed (an earlier submission could still commit).
    sb.ingest()
    assert sb.withdrawal_worker().run_once().refunded == 0
    assert balance(sb, "cust-0") == D(400)
    assert requested.trec_tgt is not None
    pass_beyond(sb, requested.trec_tgt)
    tick = sb.withdrawal_worker().run_once()
    assert (tick.settled, tick.retried, tick.refunded) == (1, 0, 1)
    assert record(sb, requested.id).status == "failed"
    assert balance(sb, "cust-0") == D(500)
    assert account(sb, IN_FLIGHT) == ZERO
    assert reservations(sb) == {}
    assert ledger_view(sb).with_reason(requested.id) == []
    assert sb.ledger.active_holdings(stranger) == []
    assert sb.ledger.active_instructions(stranger) == []
    assert_books_balance(sb)


# --- 12. the exchange's ledger node restored from a backup ----------------------------------------


def test_ledger_node_restored_from_backup_with_withdrawals_in_flight(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", *["200"] * 5)
    paid_before = wallet(sb, "cust-0")
    early = sb.withdraw("cust-0", "10", key="early")
    sb.withdrawal_worker().run_once()
    sb.ingest()
    backup_offset = sb.ledger.ledger_end(sb.treasury)
    backup_time = sb.ledger.record_time_at(sb.treasury, backup_offset)
    assert backup_time is not None
    sb.ledger.advance(5)

    # After the backup: two withdrawals paid and ingested, one paid but not ingested yet, one
    # reserved but not submitted.
    seen = [sb.withdraw("cust-0", str(20 + n), key=f"seen-{n}") for n in range(2)]
    sb.withdrawal_worker().run_once()
    sb.ingest()
    unseen = sb.withdraw("cust-0", "30", key="unseen")
    sb.withdrawal_worker().run_once()
    pending = sb.withdraw("cust-0", "40", key="pending")
    assert [record(sb, w.id).status for w in (*seen, unseen, pending)] == [
        "completed",
        "completed",
        "submitted",
        "reserved",
    ]

    sb.ledger.faults.restore_node_from_backup("exchange", backup_offset, offset_shift=7)
    # The runbook: resume ingestion from the restored node's offset for a record time the DB
    # has certainly ingested (here the backup's); what is read twice is skipped by update id.
    # The cursor's record time goes back with it: only what the new position guarantees.
    resume = sb.ledger.offset_at_record_time(sb.treasury, backup_time)
    assert resume == backup_offset
    with sb.database.uow() as uow:
        old = uow.ingestion.load_cursor(sb.connection)
        assert old is not None
        rewound = replace(old, offset=resume, record_time=backup_time)
        uow.ingestion.set_cursor(sb.connection, sb.treasury, rewound)
        uow.commit()

    progress = sb.ingest()
    assert progress.skipped == 2
    sb.withdrawal_worker().run_once()
    sb.ingest()
    everything = (early, *seen, unseen, pending)
    assert {record(sb, w.id).status for w in everything} == {"completed"}
    view = ledger_view(sb)
    assert [view.paid(w.id) for w in everything] == [1] * 5
    total = sum((w.amount for w in everything), ZERO)
    assert wallet(sb, "cust-0") == paid_before + total
    assert balance(sb, "cust-0") == D(1000) - total
    assert account(sb, IN_FLIGHT) == ZERO
    assert "withdrawal_paid_twice" not in alert_kinds(sb)
    with sb.database.uow() as uow:
        cursor = uow.ingestion.load_cursor(sb.connection)
    assert cursor is not None and cursor.offset == sb.ledger.ledger_end(sb.treasury)
    assert_books_balance(sb)


# --- 13. the Integration DB restored from a backup ------------------------------------------------


class DatabaseBackup:
    """A copy of the Integration DB taken at one point; restoring it means running on the copy
    from then on. SQLite: the online backup API into a second file; PostgreSQL: ``CREATE
    DATABASE … TEMPLATE`` (no session may be connected to the template, so the sandbox's pool
    is disposed first)."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        self.url = sa.make_url(sb.database.engine.url)
        name = self.url.database or ""
        self.is_postgres = self.url.get_backend_name() == "postgresql"
        self.copy = f"{name}_backup" if self.is_postgres else f"{name}.backup"

    def take(self) -> None:
        self.sb.database.dispose()
        if self.is_postgres:
            self._admin(f'CREATE DATABASE "{self.copy}" TEMPLATE "{self.url.database}"')
        else:
            with sqlite3.connect(self.url.database or "") as source:
                with sqlite3.connect(self.copy) as target:
                    source.backup(target)
                target.close()
            source.close()

    def restore(self) -> None:
        self.sb.database.dispose()
        restored = self.url.set(database=self.copy)
        self.sb.database = bootstrap.database(restored.render_as_string(hide_password=False))

    def drop(self) -> None:
        if self.is_postgres:
            self.sb.database.dispose()
            self._admin(f'DROP DATABASE IF EXISTS "{self.copy}" WITH (FORCE)')

    def _admin(self, statement: str) -> None:
        admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.exec_driver_sql(statement)
        finally:
            admin.dispose()


def test_integration_db_restored_from_backup_rebuilds_withdrawals_and_pays_once(
    world: SandboxFactory,
) -> None:
    sb = world()
    fund(sb, "cust-0", *["200"] * 6)
    paid_before = wallet(sb, "cust-0")
    early = sb.withdraw("cust-0", "100", key="early")
    sb.withdrawal_worker().run_once()
    sb.ingest()

    backup = DatabaseBackup(sb)
    backup.take()
    try:
        restored_and_recovered(sb, backup, early, paid_before)
    finally:
        backup.drop()


def restored_and_recovered(
    sb: Sandbox, backup: DatabaseBackup, early: Withdrawal, paid_before: Decimal
) -> None:
    # After the backup: one paid and ingested, one paid and not ingested, one requested and
    # never submitted.
    ingested = sb.withdraw("cust-0", "200", key="ingested")
    sb.withdrawal_worker().run_once()
    sb.ingest()
    unseen = sb.withdraw("cust-0", "150", key="unseen")
    sb.withdrawal_worker().run_once()
    forgotten = sb.withdraw("cust-0", "50", key="forgotten")
    assert [record(sb, w.id).status for w in (ingested, unseen, forgotten)] == [
        "completed",
        "submitted",
        "reserved",
    ]
    backup.restore()

    assert [maybe_record(sb, w.id) for w in (ingested, unseen, forgotten)] == [None] * 3
    assert balance(sb, "cust-0") == D(1100)
    until = hold_until_safe(sb.database.uow, clock=sb.clock, settings=sb.withdrawal_settings)
    assert until >= sb.clock() + timedelta(seconds=sb.withdrawal_settings.trec_span_s)

    # During the hold: new requests, and the customer retrying the forgotten "unseen" request
    # with the same key. The restored DB believes holdings the ledger has spent are free, so
    # these reserve such holdings, or others than the ones the forgotten attempt spent.
    fresh = sb.withdraw("cust-0", "60", key="fresh")
    other = sb.withdraw("cust-0", "70", key="other")
    retry = sb.withdraw("cust-0", "150", key="unseen")
    assert retry.id == unseen.id and retry.status == "reserved"
    tick = sb.withdrawal_worker().run_once()
    assert tick.held and tick.submitted == 0

    # Ingestion rebuilds what the ledger did after the backup.
    sb.ingest()
    rebuilt = record(sb, ingested.id)
    assert (rebuilt.status, rebuilt.rebuilt, rebuilt.customer_id) == ("completed", True, "cust-0")
    assert record(sb, unseen.id).status == "completed"
    assert maybe_record(sb, forgotten.id) is None
    assert alert_kinds(sb).count("withdrawal_rebuilt") == 1
    assert sb.withdrawal_worker().run_once().held  # ingestion has not passed the hold yet

    pass_beyond(sb, until)
    for _ in range(6):
        tick = sb.withdrawal_worker().run_once()
        assert not tick.held
        sb.ingest()
        current = [record(sb, w.id) for w in (fresh, other)]
        if all(w.status in TERMINAL_STATUSES for w in current):
            break
        pass_beyond(sb, max(w.trec_tgt or sb.clock() for w in current))
    assert [record(sb, w.id).status for w in (fresh, other)] == ["completed"] * 2

    view = ledger_view(sb)
    paid = (early, ingested, unseen, fresh, other)
    assert [view.paid(w.id) for w in paid] == [1] * 5
    assert view.with_reason(forgotten.id) == []
    total = sum((w.amount for w in paid), ZERO)
    assert wallet(sb, "cust-0") == paid_before + total
    assert balance(sb, "cust-0") == D(1200) - total
    assert account(sb, IN_FLIGHT) == ZERO
    assert "withdrawal_paid_twice" not in alert_kinds(sb)
    # No finished record keeps holdings reserved.
    assert reservations(sb) == {}
    assert_books_balance(sb)
