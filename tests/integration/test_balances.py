"""A customer's balances per instrument (``customer_balances``), on SQLite and PostgreSQL: the
available balance of their account, their deposits held for review (ledger deposits in the
compliance hold, Bitcoin deposits whose mint is held) and what is in flight (open withdrawals
and open redemptions), written the way the flows write them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from sluice import bootstrap
from sluice.domain.compliance import HeldDeposit
from sluice.domain.errors import NotFoundError
from sluice.domain.journal import (
    COMPLIANCE_HOLD,
    IN_FLIGHT,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import InstrumentId
from sluice.domain.withdrawals import Withdrawal
from sluice.services.balances import customer_balances
from sluice.services.issuance_router import create_operation

AT = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
AMULET = InstrumentId("dso::1220aa", "Amulet")
ISTSI = InstrumentId("issuer::1220bb", "iSTSi")
TREASURY = "treasury::1220cc"


@pytest.fixture
def db(database_url: str) -> Iterator[bootstrap.Database]:
    database = bootstrap.database(database_url)
    with database.uow() as uow:
        uow.reference.add_customer("alice", "Alice")
        uow.reference.add_customer("bob", "Bob")
        uow.commit()
    yield database
    database.dispose()


def _post(
    db: bootstrap.Database, txid: str, instrument: InstrumentId, *moves: tuple[str, str]
) -> None:
    with db.uow() as uow:
        uow.withdrawals.post(
            [
                JournalTransaction(
                    id=txid,
                    kind="test",
                    postings=tuple(
                        Posting(AccountRef(name, instrument), Decimal(amount))
                        for name, amount in moves
                    ),
                )
            ]
        )
        uow.commit()


def test_each_instrument_shows_available_held_and_in_flight(db: bootstrap.Database) -> None:
    treasury = treasury_account_name(TREASURY)
    _post(db, "d1", AMULET, (treasury, "100"), (customer_account_name("alice"), "-100"))
    _post(db, "d2", ISTSI, (treasury, "0.05"), (customer_account_name("alice"), "-0.05"))
    _post(db, "d3", AMULET, (treasury, "7"), (customer_account_name("bob"), "-7"))
    # An open withdrawal of 30 Amulet (debited at its request), a finished one (not in flight).
    _post(db, "w1", AMULET, (customer_account_name("alice"), "30"), (IN_FLIGHT, "-30"))
    # A held ledger deposit of 5 Amulet; bob's held deposit is not alice's.
    _post(db, "h1", AMULET, (treasury, "9"), (COMPLIANCE_HOLD, "-9"))
    # An open redemption of 0.01 iSTSi and a Bitcoin deposit of 20 000 sats held by KYC.
    _post(db, "r1", ISTSI, (customer_account_name("alice"), "0.01"), (IN_FLIGHT, "-0.01"))
    with db.uow() as uow:
        base = Withdrawal(
            id="wd-1",
            kind="withdrawal",
            customer_id="alice",
            sender=TREASURY,
            receiver="bank::1220dd",
            instrument=AMULET,
            amount=Decimal("30"),
            status="submitted",
            requested_at=AT,
        )
        uow.withdrawals.insert(base)
        uow.withdrawals.insert(replace(base, id="wd-2", amount=Decimal("3"), status="completed"))
        for hold_id, customer, amount in (("hold-1", "alice", "5"), ("hold-2", "bob", "4")):
            uow.compliance.add_hold(
                HeldDeposit(
                    id=hold_id,
                    sender="someone::1220ee",
                    instrument_admin=AMULET.admin,
                    instrument_id=AMULET.id,
                    amount=Decimal(amount),
                    update_id=f"u-{hold_id}",
                    why="test",
                    held_at=AT,
                    customer_id=customer,
                )
            )
        create_operation(
            uow,
            operation_id="redeem:alice:k1",
            type="token_withdrawal",
            customer_id="alice",
            amount_sats=1_000_000,
            params={},
            first_step="burn",
            at=AT,
        )
        deposit = create_operation(
            uow,
            operation_id="btc-deposit:ab:0",
            type="bitcoin_deposit",
            customer_id="alice",
            amount_sats=20_000,
            params={},
            first_step="kyc",
            at=AT,
        )
        uow.issuance.update_operation(
            replace(deposit, status="held", version=deposit.version + 1),
            expected_version=deposit.version,
        )
        uow.commit()

    lines = {line.instrument: line for line in customer_balances(db.uow, "alice")}
    assert set(lines) == {AMULET, ISTSI}
    amulet, istsi = lines[AMULET], lines[ISTSI]
    assert (amulet.available, amulet.held, amulet.in_flight) == (
        Decimal("70"),
        Decimal("5"),
        Decimal("30"),
    )
    assert (istsi.available, istsi.held, istsi.in_flight) == (
        Decimal("0.04"),
        Decimal("0.0002"),
        Decimal("0.01"),
    )
    assert Decimal(str(istsi.to_json()["in_flight"])) == Decimal("0.01")
    # Bob has only his account and his held deposit.
    (bob,) = customer_balances(db.uow, "bob")
    assert (bob.instrument, bob.available, bob.held, bob.in_flight) == (
        AMULET,
        Decimal("7"),
        Decimal("4"),
        Decimal(0),
    )


def test_a_customer_without_anything_has_no_lines_and_an_unknown_one_is_refused(
    db: bootstrap.Database,
) -> None:
    assert customer_balances(db.uow, "alice") == []
    with pytest.raises(NotFoundError):
        customer_balances(db.uow, "carol")
