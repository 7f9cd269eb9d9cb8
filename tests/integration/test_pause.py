"""Emergency pause (``services.controls``) stopping every value-moving command and worker.

How: each test builds a :class:`~sluice.sandbox.Sandbox` (the embedded ledger and the Integration
DB, on SQLite and on PostgreSQL), prepares work of every kind — a funded customer, a reserved
withdrawal, a deposit in suspense, a deposit held for compliance, an incoming offer — then pauses
sluice in each mode and drives the real commands and workers. Every table is compared before and
after a refused command, and what was paid is read from the ledger itself.

Covers: in each mode (``paused`` 50, ``emergency`` 51, ``maintenance`` 52) a withdrawal request,
a cancel, a suspense assignment and a release or return of a held deposit are refused with that
code and write nothing; the withdrawal and deposit workers do nothing (no claim, no submission)
and say they are paused, while ingestion and reads keep working; after resuming, every one of
those flows completes; pausing and resuming are audited, and resuming what is not paused or
pausing with an unknown mode is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa

from sluice.domain.errors import (
    InvalidInputError,
    InvalidOperationStateError,
    SystemPausedError,
)
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import SuspenseItem
from sluice.sandbox import Sandbox
from sluice.services import accounts
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.services.compliance_officer import (
    freeze_customer,
    release_hold,
    return_hold,
    review_queue,
    unfreeze_customer,
)
from sluice.services.controls import current_pause, pause, resume
from sluice.services.suspense import assign_suspense, list_suspense
from sluice.services.withdrawals import cancel_withdrawal
from sluice.store import tables
from tests.integration.test_withdrawals import (
    assert_books_balance,
    balance,
    fund,
    ledger_view,
    record,
)

D = Decimal
OFFICER = "officer:alice"
ADMIN = "admin:ada"
MODES = {"paused": 50, "emergency": 51, "maintenance": 52}


@pytest.fixture
def sb(database_url: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(database_url, customers=4)
    yield sandbox
    sandbox.close()


def everything(sb: Sandbox) -> dict[str, list[tuple[Any, ...]]]:
    with sb.database.engine.connect() as connection:
        return {
            table.name: sorted(
                (tuple(row) for row in connection.execute(sa.select(table))), key=repr
            )
            for table in tables.metadata.sorted_tables
        }


def held_deposits(sb: Sandbox, count: int) -> list[str]:
    """``count`` deposits of cust-3, held because cust-3 was frozen meanwhile; their hold ids."""
    freeze_customer(sb.database.uow, "cust-3", actor=OFFICER, at=sb.clock(), reason="check")
    for n in range(count):
        sb.deposit("cust-3", str(10 + n))
    sb.ingest()
    unfreeze_customer(sb.database.uow, "cust-3", actor=OFFICER, at=sb.clock(), reason="cleared")
    holds = review_queue(sb.database.uow).holds
    assert len(holds) == count
    return [hold.id for hold in holds]


def suspense_deposit(sb: Sandbox) -> SuspenseItem:
    sb.ledger.transfer(sb.customers["cust-2"], sb.treasury, sb.coin, D(25), reason=None)
    sb.ingest()
    (item,) = list_suspense(sb.database.uow)
    return item


def test_every_value_moving_command_is_refused_with_the_modes_code_and_writes_nothing(
    sb: Sandbox,
) -> None:
    fund(sb, "cust-0", "100")
    reserved = sb.withdraw("cust-0", "40", key="before")
    item = suspense_deposit(sb)
    release_id, return_id = held_deposits(sb, 2)

    def commands() -> dict[str, Any]:
        uow, at = sb.database.uow, sb.clock()
        return {
            "request withdrawal": lambda: sb.withdraw("cust-0", "10", key="during"),
            "repeat a withdrawal request": lambda: sb.withdraw("cust-0", "40", key="before"),
            "cancel withdrawal": lambda: cancel_withdrawal(
                uow, reserved.id, customer_id="cust-0", actor="customer:cust-0", at=at
            ),
            "assign suspense": lambda: assign_suspense(uow, item.id, "cust-1", actor=ADMIN, at=at),
            "release held deposit": lambda: release_hold(
                uow, release_id, actor=OFFICER, at=at, reason="cleared"
            ),
            "return held deposit": lambda: return_hold(
                uow, return_id, treasury=sb.treasury, actor=OFFICER, at=at, reason="send back"
            ),
        }

    for mode, code in MODES.items():
        state = pause(
            sb.database.uow, mode=mode, reason=f"drill: {mode}", actor=ADMIN, at=sb.clock()
        )
        assert current_pause(sb.database.uow) == state
        before = everything(sb)
        for name, command in commands().items():
            with pytest.raises(SystemPausedError) as refused:
                command()
            assert refused.value.code == code, (name, refused.value)
            assert mode in str(refused.value)
            assert everything(sb) == before, name
        # Reads keep working.
        assert accounts.customer_balances(sb.database.uow, "cust-0") == {sb.coin: D(60)}
        assert list_suspense(sb.database.uow) == [item]
        resume(sb.database.uow, reason="drill over", actor=ADMIN, at=sb.clock())
        assert current_pause(sb.database.uow) is None

    # Resumed: every one of them goes through.
    assert sb.withdraw("cust-0", "10", key="after").status in ("reserved", "queued")
    cancelled = cancel_withdrawal(
        sb.database.uow, reserved.id, customer_id="cust-0", actor="customer:cust-0", at=sb.clock()
    )
    assert cancelled.failure == "cancelled"
    assert (
        assign_suspense(sb.database.uow, item.id, "cust-1", actor=ADMIN, at=sb.clock()).assigned_to
        == "cust-1"
    )
    assert (
        release_hold(
            sb.database.uow, release_id, actor=OFFICER, at=sb.clock(), reason="cleared"
        ).status
        == "released"
    )
    returning = return_hold(
        sb.database.uow, return_id, treasury=sb.treasury, actor=OFFICER, at=sb.clock(), reason="r"
    )
    assert returning.status == "queued"
    assert balance(sb, "cust-0") == D(90)
    assert balance(sb, "cust-1") == D(25)
    assert balance(sb, "cust-3") == D(10)
    assert_books_balance(sb)
    assert verify_audit_log(sb.database.uow).ok


def test_workers_do_nothing_while_paused_and_resume_afterwards(sb: Sandbox) -> None:
    fund(sb, "cust-0", "100")
    reserved = sb.withdraw("cust-0", "40", key="k1")
    offer_cid = sb.deposit("cust-1", "30", instrument=sb.token)
    assert offer_cid is not None
    sb.ingest()
    pause(sb.database.uow, mode="emergency", reason="incident", actor=ADMIN, at=sb.clock())
    before = everything(sb)

    for _ in range(3):
        paid = sb.withdrawal_worker().run_once()
        answered = sb.deposit_worker().run_once()
        assert paid.paused == "emergency" and answered.paused == "emergency"
        assert (paid.submitted, paid.reserved, paid.settled, paid.upkeep_created) == (0, 0, 0, 0)
        assert (answered.accepted, answered.rejected) == (0, 0)
        assert not paid.busy and not answered.busy
    assert everything(sb) == before
    assert record(sb, reserved.id).status == "reserved"
    assert ledger_view(sb).with_reason(reserved.id) == []
    assert [i.contract_id for i in sb.ledger.active_instructions(sb.treasury)] == [offer_cid]

    # Ingestion keeps recording what the ledger did: a 1-step deposit is credited meanwhile.
    sb.deposit("cust-2", "15")
    sb.ingest()
    assert balance(sb, "cust-2") == D(15)

    resume(sb.database.uow, reason="incident closed", actor=ADMIN, at=sb.clock())
    paid = sb.withdrawal_worker().run_once()
    answered = sb.deposit_worker().run_once()
    assert (paid.paused, paid.submitted) == (None, 1)
    assert (answered.paused, answered.accepted) == (None, 1)
    sb.ingest()
    assert record(sb, reserved.id).status == "completed"
    assert ledger_view(sb).paid(reserved.id) == 1
    assert balance(sb, "cust-1", sb.token) == D(30)
    assert_books_balance(sb)


def test_a_pause_that_comes_during_a_round_stops_the_submission(sb: Sandbox) -> None:
    """The worker asks again right before it claims what to submit."""
    fund(sb, "cust-0", "100")
    reserved = sb.withdraw("cust-0", "40", key="k1")
    worker = sb.withdrawal_worker()

    original = worker.reserve_queued

    def reserve_then_pause(tick: Any) -> None:
        original(tick)
        pause(sb.database.uow, mode="maintenance", reason="upgrade", actor=ADMIN, at=sb.clock())

    worker.reserve_queued = reserve_then_pause  # type: ignore[method-assign]
    tick = worker.run_once()
    assert (tick.paused, tick.submitted) == ("maintenance", 0)
    assert record(sb, reserved.id).status == "reserved"
    assert ledger_view(sb).with_reason(reserved.id) == []


def test_pausing_and_resuming_are_audited_and_checked(sb: Sandbox) -> None:
    with pytest.raises(InvalidOperationStateError) as not_paused:
        resume(sb.database.uow, reason="nothing to resume", actor=ADMIN, at=sb.clock())
    assert not_paused.value.code == 41
    with pytest.raises(InvalidInputError):
        pause(sb.database.uow, mode="sleep", reason="x", actor=ADMIN, at=sb.clock())
    with pytest.raises(InvalidInputError):
        pause(sb.database.uow, mode="paused", reason="  ", actor=ADMIN, at=sb.clock())
    assert current_pause(sb.database.uow) is None

    pause(sb.database.uow, mode="paused", reason="drill", actor=ADMIN, at=sb.clock())
    sb.ledger.advance(1)
    pause(sb.database.uow, mode="emergency", reason="worse", actor="admin:bob", at=sb.clock())
    sb.ledger.advance(1)
    resume(sb.database.uow, reason="over", actor=ADMIN, at=sb.clock())
    records = [
        r.entry
        for r in list_audit_records(sb.database.uow, limit=1000)
        if r.entry.operation in ("system_paused", "system_resumed")
    ]
    assert [(e.operation, e.actor) for e in records] == [
        ("system_paused", ADMIN),
        ("system_paused", "admin:bob"),
        ("system_resumed", ADMIN),
    ]
    assert [dict(e.state_changes[0]) for e in records] == [
        {"pause": "paused", "was": "running"},
        {"pause": "emergency", "was": "paused"},
        {"pause": "running", "was": "emergency"},
    ]
    assert records[1].parameters == {"mode": "emergency", "reason": "worse"}
    assert verify_audit_log(sb.database.uow).ok
    # Running again.
    fund(sb, "cust-0", "10")
    assert isinstance(sb.withdraw("cust-0", "10", key="k"), Withdrawal)
