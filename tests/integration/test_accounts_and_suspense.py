"""Customer reads and suspense assignment (``services/accounts``, ``services/suspense``).

How: each test builds a :class:`~sluice.sandbox.Sandbox` (the embedded ledger and the Integration
DB, on SQLite and on PostgreSQL) and produces real data through the real entry points — the
customers' transfers on the ledger, ingestion, the deposit and withdrawal workers — then reads it
back through the services the HTTP API calls.

Covers: customers with their KYC profile and deposit accounts, in pages that neither repeat nor
skip; balances per instrument; a customer's history (deposits, an accepted offer, the transfer of
a withdrawal; nobody else's) newest first and paged; withdrawals newest first, filtered by status;
bounds on every page; deposit instructions (only enabled onboarded instruments, a deposit account
created once for a customer without one, and a deposit to it credited); suspense — deposits with
no or an unknown reason listed, assigned to a customer (balances, books, audit), assigning again
to the same customer changes nothing, to another is refused, unknown and malformed ids and
customers are refused and change nothing, and on PostgreSQL two officers assigning one deposit to
two customers at once credit exactly one.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sluice.domain.errors import (
    InstrumentNotOnboardedError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
)
from sluice.domain.journal import SUSPENSE
from sluice.domain.ledger import REASON_KEY, InstrumentId
from sluice.ports import SuspenseItem
from sluice.sandbox import Sandbox
from sluice.services import accounts
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.services.reference import register_customer, set_instrument_enabled
from sluice.services.suspense import (
    assign_suspense,
    get_suspense_item,
    list_suspense,
    parse_item_id,
)
from sluice.store import tables
from tests.integration.test_withdrawals import (
    account,
    assert_books_balance,
    balance,
    fund,
    record,
)

D = Decimal
OPERATOR = "operator:olga"


@pytest.fixture
def sb(database_url: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(database_url, customers=5)
    yield sandbox
    sandbox.close()


def everything(sb: Sandbox) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, to show that a refused command wrote nothing."""
    with sb.database.engine.connect() as connection:
        return {
            table.name: sorted(
                (tuple(row) for row in connection.execute(sa.select(table))), key=repr
            )
            for table in tables.metadata.sorted_tables
        }


def anonymous_deposit(sb: Sandbox, customer: str, amount: str, reason: str | None) -> None:
    """``customer`` sends Amulet to the treasury with ``reason`` (None: no reason at all)."""
    sb.ledger.transfer(sb.customers[customer], sb.treasury, sb.coin, D(amount), reason=reason)


def assert_books_and_trail(sb: Sandbox) -> None:
    assert_books_balance(sb)
    verification = verify_audit_log(sb.database.uow)
    assert verification.ok, verification.findings


# --- customers -----------------------------------------------------------------------------------


def test_customers_are_listed_by_id_in_pages_with_profile_and_deposit_accounts(
    sb: Sandbox,
) -> None:
    register_customer(sb.database.uow, "cust-0", "cust-0", ["acct-0-second"])
    pages = [
        accounts.list_customers(sb.database.uow, offset=offset, limit=2) for offset in (0, 2, 4)
    ]
    assert [[c.id for c in page] for page in pages] == [
        ["cust-0", "cust-1"],
        ["cust-2", "cust-3"],
        ["cust-4"],
    ]
    assert accounts.list_customers(sb.database.uow, offset=5, limit=2) == []

    first = accounts.get_customer(sb.database.uow, "cust-0")
    assert first == pages[0][0]
    assert first.name == "cust-0"
    assert (first.profile.tier, first.profile.status) == (1, "active")
    assert first.deposit_accounts == ("acct-0", "acct-0-second")
    assert accounts.get_customer(sb.database.uow, "cust-3").deposit_accounts == ("acct-3",)

    with pytest.raises(NotFoundError) as unknown:
        accounts.get_customer(sb.database.uow, "cust-99")
    assert unknown.value.code == 10


@pytest.mark.parametrize(("offset", "limit"), [(0, 0), (0, 1001), (-1, 10), (0, -5)])
def test_every_list_refuses_an_unbounded_page(sb: Sandbox, offset: int, limit: int) -> None:
    uow = sb.database.uow
    listings: list[Callable[[], object]] = [
        lambda: accounts.list_customers(uow, offset=offset, limit=limit),
        lambda: accounts.customer_history(uow, "cust-0", offset=offset, limit=limit),
        lambda: accounts.customer_withdrawals(uow, "cust-0", offset=offset, limit=limit),
        lambda: accounts.customer_withdrawals(uow, None, offset=offset, limit=limit),
        lambda: list_suspense(uow, offset=offset, limit=limit),
    ]
    for listing in listings:
        with pytest.raises(InvalidInputError) as refused:
            listing()
        assert refused.value.code == 60
    assert len(accounts.list_customers(uow, offset=0, limit=1000)) == 5


# --- balances, history, withdrawals --------------------------------------------------------------


def test_balances_and_history_after_deposits_an_offer_and_a_withdrawal(sb: Sandbox) -> None:
    fund(sb, "cust-0", "100", "50")
    fund(sb, "cust-0", "30", instrument=sb.token)  # an offer, accepted by the deposit worker
    fund(sb, "cust-1", "70")  # someone else's: never in cust-0's history
    sb.ledger.advance(5)
    withdrawal = sb.withdraw("cust-0", "40", key="w1")
    assert sb.withdrawal_worker().run_once().submitted == 1
    sb.ingest()
    assert record(sb, withdrawal.id).status == "completed"

    assert accounts.customer_balances(sb.database.uow, "cust-0") == {
        sb.coin: D(110),
        sb.token: D(30),
    }
    assert accounts.customer_balances(sb.database.uow, "cust-1") == {sb.coin: D(70)}
    assert accounts.customer_balances(sb.database.uow, "cust-2") == {}

    history = accounts.customer_history(sb.database.uow, "cust-0", limit=1000)
    # Newest first: the withdrawal's transfer, then the token offer (accepted, then created),
    # then the two coin deposits.
    assert [r.record_time for r in history] == sorted(
        (r.record_time for r in history), reverse=True
    )
    coin_deposits = [r for r in history if r.kind == "transfer_in" and r.instrument == sb.coin]
    assert sorted(r.amount for r in coin_deposits if r.amount is not None) == [D(50), D(100)]
    assert all(r.disposition == "credited" and r.reason == "acct-0" for r in coin_deposits)
    token_credits = [r for r in history if r.instrument == sb.token and r.disposition == "credited"]
    assert [r.amount for r in token_credits] == [D(30)]
    (paid,) = [r for r in history if r.reason == withdrawal.id]
    assert (paid.kind, paid.status, paid.amount, paid.receiver) == (
        "transfer_out",
        "completed",
        D(40),
        sb.customers["cust-0"],
    )
    assert history[0] == paid
    assert all(r.sender != sb.customers["cust-1"] for r in history)
    assert all(r.customer_id in ("cust-0", None) for r in history)

    # Pages in a row are the whole list, in the same order.
    paged = [
        r
        for offset in range(0, len(history), 2)
        for r in accounts.customer_history(sb.database.uow, "cust-0", offset=offset, limit=2)
    ]
    assert paged == history
    assert accounts.customer_history(sb.database.uow, "cust-2") == []

    for read in (accounts.customer_balances, accounts.customer_history):
        with pytest.raises(NotFoundError):
            read(sb.database.uow, "cust-99")
    assert_books_and_trail(sb)


def test_withdrawals_are_listed_newest_first_and_filtered_by_status(sb: Sandbox) -> None:
    fund(sb, "cust-0", "100", "100")
    fund(sb, "cust-1", "100")
    first = sb.withdraw("cust-0", "10", key="a")
    sb.withdrawal_worker().run_once()
    sb.ingest()
    sb.ledger.advance(1)
    second = sb.withdraw("cust-0", "20", key="b")
    sb.ledger.advance(1)
    other = sb.withdraw("cust-1", "30", key="a")
    uow = sb.database.uow

    listed = accounts.customer_withdrawals(uow, "cust-0")
    assert [w.id for w in listed] == [second.id, first.id]
    assert [w.status for w in listed] == ["reserved", "completed"]
    assert [w.id for w in accounts.customer_withdrawals(uow, "cust-0", statuses=["completed"])] == [
        first.id
    ]
    assert accounts.customer_withdrawals(uow, "cust-0", statuses=["offered"]) == []
    assert [w.id for w in accounts.customer_withdrawals(uow, "cust-0", offset=1, limit=1)] == [
        first.id
    ]
    assert [w.id for w in accounts.customer_withdrawals(uow, None)] == [
        other.id,
        second.id,
        first.id,
    ]
    assert accounts.get_withdrawal(uow, first.id) == record(sb, first.id)

    with pytest.raises(InvalidInputError):
        accounts.customer_withdrawals(uow, "cust-0", statuses=["lost"])
    with pytest.raises(NotFoundError):
        accounts.customer_withdrawals(uow, "cust-99")
    with pytest.raises(NotFoundError):
        accounts.get_withdrawal(uow, "wd-nothing")


# --- deposit instructions ------------------------------------------------------------------------


def test_deposit_instructions_name_the_treasury_each_enabled_instrument_and_the_account(
    sb: Sandbox,
) -> None:
    uow = sb.database.uow
    found = accounts.deposit_instructions(uow, "cust-0", treasury=sb.treasury)
    by_instrument = {i.instrument: i for i in found}
    assert set(by_instrument) == {sb.coin, sb.token}
    coin = by_instrument[sb.coin]
    assert (coin.treasury, coin.deposit_account, coin.reason_key, coin.transfer_kinds) == (
        sb.treasury,
        "acct-0",
        REASON_KEY,
        ("direct",),
    )
    assert by_instrument[sb.token].transfer_kinds == ("offer",)
    assert "acct-0" in coin.description and sb.treasury in coin.description
    assert "\n" not in coin.description

    (only,) = accounts.deposit_instructions(
        uow, "cust-0", treasury=sb.treasury, instrument=sb.token
    )
    assert only.instrument == sb.token

    set_instrument_enabled(uow, sb.token, False)
    assert [i.instrument for i in accounts.deposit_instructions(uow, "cust-0", treasury="t")] == [
        sb.coin
    ]
    before = everything(sb)
    for refused in (sb.token, InstrumentId(sb.coin.admin, "Gold")):
        with pytest.raises(InstrumentNotOnboardedError) as raised:
            accounts.deposit_instructions(uow, "cust-0", treasury="t", instrument=refused)
        assert raised.value.code == 63
    with pytest.raises(NotFoundError):
        accounts.deposit_instructions(uow, "cust-99", treasury="t")
    assert everything(sb) == before


def test_a_customer_without_a_deposit_account_gets_one_once_and_deposits_to_it_are_credited(
    sb: Sandbox,
) -> None:
    uow = sb.database.uow
    register_customer(uow, "walk-in", "Walk In", [])
    assert accounts.get_customer(uow, "walk-in").deposit_accounts == ()

    first = accounts.deposit_instructions(uow, "walk-in", treasury=sb.treasury, actor="api")
    again = accounts.deposit_instructions(uow, "walk-in", treasury=sb.treasury)
    assert first == again
    account_id = first[0].deposit_account
    assert account_id == "acct-walk-in"
    assert {i.deposit_account for i in first} == {account_id}
    assert accounts.get_customer(uow, "walk-in").deposit_accounts == (account_id,)
    created = [
        r
        for r in list_audit_records(uow, customer_id="walk-in")
        if r.entry.operation == "deposit_account_created"
    ]
    assert len(created) == 1 and created[0].entry.actor == "api"

    # Someone (here cust-1's wallet) pays in with that reason: credited to the walk-in customer.
    anonymous_deposit(sb, "cust-1", "12.5", account_id)
    sb.ingest()
    assert accounts.customer_balances(uow, "walk-in") == {sb.coin: D("12.5")}
    assert_books_and_trail(sb)


# --- suspense ------------------------------------------------------------------------------------


def suspense_deposits(sb: Sandbox) -> tuple[SuspenseItem, SuspenseItem]:
    """One deposit with no reason, one with an unknown deposit account (and one credited)."""
    fund(sb, "cust-0", "5")
    anonymous_deposit(sb, "cust-1", "25", None)
    sb.ledger.advance(1)
    anonymous_deposit(sb, "cust-2", "40", "acct-nobody")
    sb.ingest()
    items = list_suspense(sb.database.uow)
    assert len(items) == 2, items
    return items[0], items[1]


def test_deposits_without_a_known_reason_are_listed_in_suspense_oldest_first(
    sb: Sandbox,
) -> None:
    no_reason, unknown = suspense_deposits(sb)
    assert (no_reason.amount, no_reason.reason, no_reason.sender, no_reason.instrument) == (
        D(25),
        None,
        sb.customers["cust-1"],
        sb.coin,
    )
    assert (unknown.amount, unknown.reason, unknown.sender) == (
        D(40),
        "acct-nobody",
        sb.customers["cust-2"],
    )
    assert no_reason.record_time < unknown.record_time
    assert no_reason.assigned_to is None and unknown.assigned_to is None
    assert account(sb, SUSPENSE) == D(65)
    assert get_suspense_item(sb.database.uow, unknown.id) == unknown
    assert parse_item_id(unknown.id) == (unknown.update_id, unknown.node_id)
    assert list_suspense(sb.database.uow, offset=1, limit=1) == [unknown]
    assert list_suspense(sb.database.uow, offset=2, limit=1) == []


def test_assigning_a_suspense_deposit_credits_the_customer_once_and_keeps_the_books(
    sb: Sandbox,
) -> None:
    no_reason, unknown = suspense_deposits(sb)
    at = sb.clock() + timedelta(seconds=3)
    assigned = assign_suspense(
        sb.database.uow,
        unknown.id,
        "cust-3",
        actor=OPERATOR,
        at=at,
        approval_id="ap-1",
        reason="customer sent proof of payment",
    )
    assert (assigned.id, assigned.assigned_to, assigned.assigned_by, assigned.assigned_at) == (
        unknown.id,
        "cust-3",
        OPERATOR,
        at,
    )
    assert balance(sb, "cust-3") == D(40)
    assert account(sb, SUSPENSE) == D(25)
    assert_books_and_trail(sb)
    assert list_suspense(sb.database.uow) == [no_reason]
    assert list_suspense(sb.database.uow, open_only=False) == [no_reason, assigned]
    (audit,) = [
        r
        for r in list_audit_records(sb.database.uow, customer_id="cust-3")
        if r.entry.operation == "suspense_assigned"
    ]
    assert audit.entry.actor == OPERATOR
    assert audit.entry.parameters["approval_id"] == "ap-1"
    assert audit.entry.state_changes[0] == {
        "debited": SUSPENSE,
        "credited": "customer:cust-3",
        "amount": "40.0000000000",
    }

    # The approval executed a second time: the same item, nothing written.
    before = everything(sb)
    again = assign_suspense(sb.database.uow, unknown.id, "cust-3", actor=OPERATOR, at=sb.clock())
    assert again == assigned
    assert everything(sb) == before

    # To another customer: refused, nothing written.
    with pytest.raises(InvalidOperationStateError) as refused:
        assign_suspense(sb.database.uow, unknown.id, "cust-4", actor=OPERATOR, at=sb.clock())
    assert refused.value.code == 41
    assert "cust-3" in str(refused.value)
    assert everything(sb) == before

    # The customer can withdraw what was assigned.
    withdrawal = sb.withdraw("cust-3", "40", key="all")
    sb.withdrawal_worker().run_once()
    sb.ingest()
    assert record(sb, withdrawal.id).status == "completed"
    assert_books_and_trail(sb)


def test_unknown_or_malformed_suspense_ids_and_unknown_customers_are_refused(
    sb: Sandbox,
) -> None:
    no_reason, _unknown = suspense_deposits(sb)
    credited = next(
        r
        for r in accounts.customer_history(sb.database.uow, "cust-0")
        if r.disposition == "credited"
    )
    before = everything(sb)
    uow = sb.database.uow
    for malformed in ("", "no-colon", ":4", "update:", "update:-1", "update:x", "update:1.5"):
        with pytest.raises(InvalidInputError):
            get_suspense_item(uow, malformed)
        with pytest.raises(InvalidInputError):
            assign_suspense(uow, malformed, "cust-3", actor=OPERATOR, at=sb.clock())
    for unknown in ("nothing:0", f"{no_reason.update_id}:{no_reason.node_id + 50}"):
        with pytest.raises(NotFoundError):
            get_suspense_item(uow, unknown)
    # A credited deposit is not in suspense.
    with pytest.raises(NotFoundError):
        assign_suspense(
            uow, f"{credited.update_id}:{credited.node_id}", "cust-3", actor=OPERATOR, at=sb.clock()
        )
    with pytest.raises(NotFoundError) as no_customer:
        assign_suspense(uow, no_reason.id, "cust-99", actor=OPERATOR, at=sb.clock())
    assert no_customer.value.code == 10
    assert everything(sb) == before
    assert_books_and_trail(sb)


@pytest.mark.postgres
def test_one_deposit_assigned_to_two_customers_at_once_is_credited_once(
    postgres_url: str,
) -> None:
    sb = Sandbox.create(postgres_url, customers=5)
    try:
        _no_reason, unknown = suspense_deposits(sb)
        targets = ["cust-3", "cust-4", "cust-3", "cust-4"]
        barrier = threading.Barrier(len(targets))
        outcomes: list[object] = [None] * len(targets)

        def assign(n: int) -> None:
            barrier.wait()
            try:
                outcomes[n] = assign_suspense(
                    sb.database.uow, unknown.id, targets[n], actor=f"op-{n}", at=sb.clock()
                )
            except BaseException as exc:  # judged by the main thread
                outcomes[n] = exc

        threads = [threading.Thread(target=assign, args=(n,)) for n in range(len(targets))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        winner = get_suspense_item(sb.database.uow, unknown.id).assigned_to
        assert winner in ("cust-3", "cust-4")
        loser = "cust-4" if winner == "cust-3" else "cust-3"
        for target, outcome in zip(targets, outcomes, strict=True):
            if target == winner:
                assert isinstance(outcome, SuspenseItem) and outcome.assigned_to == winner
            else:
                assert isinstance(outcome, InvalidOperationStateError), outcome
        assert (balance(sb, winner), balance(sb, loser)) == (D(40), D(0))
        assert account(sb, SUSPENSE) == D(25)
        assert_books_and_trail(sb)
    finally:
        sb.close()
