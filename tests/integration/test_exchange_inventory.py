"""The exchange's inventory funded from suspense (``services/exchange_inventory``), on SQLite and
PostgreSQL, through the service, the ``exchange.inventory.fund`` approval and ``sluice exchange``.

How: a :class:`~sluice.sandbox.Sandbox` (the embedded ledger and the Integration DB); the exchange's
own tokens arrive as real transfers to the treasury with no reason (and one with an unknown
deposit account), ingestion books them to suspense, and the tests fund the inventory from them.

Covers: funding moves the amount from suspense to ``exchange_inventory`` in one journal
transaction, keeps the books and the audit chain, records who funded it and under which
approval, writes one audit record and one ``inventory_funded`` event; funding again from the
same deposit changes nothing; a deposit given to a customer cannot fund the inventory, one that
funded it cannot be given to a customer, and the inventory's name is refused as a customer id;
nothing is funded while paused; the approval runs the funding only once enough staff approved;
``sluice exchange fund`` and ``sluice exchange inventory``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from sluice.domain.access import Principal
from sluice.domain.errors import (
    InvalidInputError,
    InvalidOperationStateError,
    SystemPausedError,
)
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.journal import SUSPENSE
from sluice.sandbox import Sandbox
from sluice.services.approvals import propose_operation, vote_on_approval
from sluice.services.audit import list_audit_records
from sluice.services.controls import pause, resume
from sluice.services.exchange_inventory import (
    INVENTORY_ASSIGNEE,
    OPERATION,
    fund_inventory,
    inventory_balances,
)
from sluice.services.reference import register_customer
from sluice.services.suspense import assign_suspense, get_suspense_item, list_suspense
from sluice.store.events_tables import event_outbox
from tests.e2e.test_cli_over_the_wire import environment, sluice
from tests.integration.test_accounts_and_suspense import (
    assert_books_and_trail,
    suspense_deposits,
)
from tests.integration.test_withdrawals import account

D = Decimal
OPERATOR = "operator:olga"


@pytest.fixture
def sb(database_url: str) -> Iterator[Sandbox]:
    sandbox = Sandbox.create(database_url, customers=3)
    yield sandbox
    sandbox.close()


def events(sb: Sandbox, type_: str) -> list[dict[str, object]]:
    with sb.database.engine.connect() as connection:
        rows = connection.execute(
            sa.select(event_outbox.c.payload).where(event_outbox.c.type == type_)
        ).all()
    return [json.loads(row.payload) for row in rows]


def test_funding_moves_a_suspense_deposit_to_the_inventory_once(sb: Sandbox) -> None:
    no_reason, unknown = suspense_deposits(sb)
    at = sb.clock() + timedelta(seconds=2)
    funded = fund_inventory(
        sb.database.uow, no_reason.id, actor=OPERATOR, at=at, approval_id="ap-9", reason="seed"
    )
    assert (funded.assigned_to, funded.assigned_by, funded.assigned_at) == (
        INVENTORY_ASSIGNEE,
        OPERATOR,
        at,
    )
    assert account(sb, EXCHANGE_INVENTORY) == D(25)
    assert account(sb, SUSPENSE) == D(40)
    assert inventory_balances(sb.database.uow) == {sb.coin: D(25)}
    assert list_suspense(sb.database.uow) == [unknown]
    assert_books_and_trail(sb)
    (record,) = [
        r.entry
        for r in list_audit_records(sb.database.uow, limit=1000)
        if r.entry.operation == "exchange_inventory_funded"
    ]
    assert record.actor == OPERATOR
    assert record.parameters["approval_id"] == "ap-9"
    assert record.parameters["amount"] == "25.0000000000"
    (event,) = events(sb, "inventory_funded")
    assert event["deposit_id"] == no_reason.id
    assert event["status"] == "inventory"

    # Again (an approval executed twice): nothing moves, nothing is written.
    again = fund_inventory(sb.database.uow, no_reason.id, actor="someone-else", at=at)
    assert again == funded
    assert account(sb, EXCHANGE_INVENTORY) == D(25)
    assert len(events(sb, "inventory_funded")) == 1
    assert_books_and_trail(sb)


def test_a_deposit_goes_to_a_customer_or_the_inventory_never_both(sb: Sandbox) -> None:
    no_reason, unknown = suspense_deposits(sb)
    at = sb.clock()
    assign_suspense(sb.database.uow, unknown.id, "cust-2", actor=OPERATOR, at=at)
    with pytest.raises(InvalidOperationStateError) as taken:
        fund_inventory(sb.database.uow, unknown.id, actor=OPERATOR, at=at)
    assert taken.value.code == 41 and "cust-2" in str(taken.value)

    fund_inventory(sb.database.uow, no_reason.id, actor=OPERATOR, at=at)
    with pytest.raises(InvalidOperationStateError):
        assign_suspense(sb.database.uow, no_reason.id, "cust-1", actor=OPERATOR, at=at)
    with pytest.raises(InvalidInputError):
        assign_suspense(sb.database.uow, no_reason.id, EXCHANGE_INVENTORY, actor=OPERATOR, at=at)
    with pytest.raises(InvalidInputError):
        register_customer(sb.database.uow, EXCHANGE_INVENTORY, "not a customer", [])
    assert account(sb, EXCHANGE_INVENTORY) == D(25)
    assert account(sb, SUSPENSE) == D(0)
    assert_books_and_trail(sb)


def test_nothing_is_funded_while_paused(sb: Sandbox) -> None:
    no_reason, _unknown = suspense_deposits(sb)
    pause(sb.database.uow, mode="paused", actor=OPERATOR, reason="incident", at=sb.clock())
    with pytest.raises(SystemPausedError):
        fund_inventory(sb.database.uow, no_reason.id, actor=OPERATOR, at=sb.clock())
    assert account(sb, EXCHANGE_INVENTORY) == D(0)
    resume(sb.database.uow, actor=OPERATOR, reason="over", at=sb.clock())
    fund_inventory(sb.database.uow, no_reason.id, actor=OPERATOR, at=sb.clock())
    assert account(sb, EXCHANGE_INVENTORY) == D(25)


def test_the_approval_funds_only_once_two_staff_approved(sb: Sandbox) -> None:
    no_reason, _unknown = suspense_deposits(sb)

    def execute(approval, at):  # type: ignore[no-untyped-def]
        item = fund_inventory(
            sb.database.uow,
            str(approval.parameters["item_id"]),
            actor=f"approval:{approval.id}",
            at=at,
            approval_id=approval.id,
            reason=approval.reason,
        )
        return {"item_id": item.id}

    proposal = propose_operation(
        sb.database.uow,
        operation=OPERATION,
        parameters={"item_id": no_reason.id},
        proposer=Principal(id="olga", role="operator"),
        at=sb.clock(),
        required=2,
        executors={OPERATION: execute},
        reason="the exchange's market-making float",
    )
    assert proposal.status == "pending"
    assert account(sb, EXCHANGE_INVENTORY) == D(0)
    done = vote_on_approval(
        sb.database.uow,
        proposal.id,
        principal=Principal(id="sam", role="system_admin"),
        decision="approve",
        at=sb.clock(),
        executors={OPERATION: execute},
    )
    assert done.status == "executed"
    assert account(sb, EXCHANGE_INVENTORY) == D(25)
    item = get_suspense_item(sb.database.uow, no_reason.id)
    assert item.assigned_to == INVENTORY_ASSIGNEE
    assert_books_and_trail(sb)


def test_sluice_exchange_fund_and_inventory(sb: Sandbox, tmp_path: Path) -> None:
    no_reason, unknown = suspense_deposits(sb)
    env = environment(tmp_path / "data")
    db = sb.database.engine.url.render_as_string(hide_password=False)

    empty = sluice("exchange", "inventory", "--db", db, "--json", env=env)
    assert json.loads(empty.stdout) == []

    # Two approvals required (the default): only proposed, nothing moves.
    proposed = sluice("exchange", "fund", no_reason.id, "--reason", "float", "--db", db, env=env)
    assert "proposed exchange.inventory.fund" in proposed.stdout
    assert "1 of 2 approvals" in proposed.stdout
    assert account(sb, EXCHANGE_INVENTORY) == D(0)

    # One approval suffices: funded at once.
    config = tmp_path / "one-approval.toml"
    config.write_text('[api.settings]\n"approvals.required" = 1\n')
    env = {**env, "SLUICE_CONFIG": str(config)}
    done = sluice(
        "exchange", "fund", no_reason.id, "--reason", "float", "--db", db, "--json", env=env
    )
    shown = json.loads(done.stdout)
    assert shown["approval"]["status"] == "executed"
    assert shown["amount"] == "25.0000000000"
    listed = json.loads(sluice("exchange", "inventory", "--db", db, "--json", env=env).stdout)
    assert listed == [
        {
            "instrument": {"id": sb.coin.id, "admin": sb.coin.admin},
            "balance": "25.0000000000",
        }
    ]
    text = sluice("exchange", "inventory", "--db", db, env=env).stdout
    assert sb.coin.id in text and "25.0000000000" in text

    # Given to a customer first: refused with its code, nothing moves.
    assign_suspense(sb.database.uow, unknown.id, "cust-1", actor=OPERATOR, at=sb.clock())
    refused = sluice("exchange", "fund", unknown.id, "--reason", "x", "--db", db, env=env, code=2)
    assert "41" in refused.stderr and "cust-1" in refused.stderr
    malformed = sluice("exchange", "fund", "nonsense", "--reason", "x", "--db", db, env=env, code=2)
    assert "item id" in malformed.stderr
    assert account(sb, EXCHANGE_INVENTORY) == D(25)
    assert_books_and_trail(sb)
