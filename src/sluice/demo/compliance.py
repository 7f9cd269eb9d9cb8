"""Chapter: compliance. An officer freezes a customer; the customer's next deposit arrives and is
held in the compliance-hold account, not credited; the officer reviews the queue, unfreezes the
customer and releases the deposit, and the audit trail's hash chain is verified."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from rich.console import Console
from rich.table import Table

from sluice.demo.report import Chapter, Sections, Status, mark, money
from sluice.demo.world import CUSTOMERS, OFFICER, STEP_S, Customer, Exchange
from sluice.domain.amounts import ZERO
from sluice.domain.journal import COMPLIANCE_HOLD, customer_account_name
from sluice.services.audit import verify_audit_log
from sluice.services.books import customer_balances
from sluice.services.compliance_officer import (
    freeze_customer,
    release_hold,
    review_queue,
    unfreeze_customer,
)

HELD_CUSTOMER = CUSTOMERS[2]
HELD_AMOUNT = Decimal("75.00")


@dataclass(frozen=True, slots=True)
class ComplianceStory:
    """A deposit the KYC registry refused to credit: held, reviewed, released by an officer."""

    customer: Customer
    amount: Decimal
    balance_before: Decimal
    balance_while_held: Decimal
    held_while_held: Decimal
    hold_id: str | None
    why: str
    queue_holds: int
    balance_after_release: Decimal
    held_after_release: Decimal
    audit_records: int
    audit_intact: bool


def hold_and_release(exchange: Exchange) -> ComplianceStory:
    """An officer freezes a customer; the customer's next deposit arrives and is held, not
    credited; the officer reviews the queue, unfreezes the customer and releases the deposit."""
    world, ledger, uow = exchange.world, exchange.ledger, exchange.database.uow
    customer, coin = HELD_CUSTOMER, world.coin

    def balances() -> tuple[Decimal, Decimal]:
        all_balances = customer_balances(uow)
        own = all_balances.get(customer_account_name(customer.id), {}).get(coin.key(), ZERO)
        return own, all_balances.get(COMPLIANCE_HOLD, {}).get(coin.key(), ZERO)

    before, _ = balances()
    freeze_customer(
        uow, customer.id, actor=OFFICER, at=exchange.clock(), reason="account takeover suspected"
    )
    ledger.transfer(
        world.party_of[customer.id], world.treasury, coin, HELD_AMOUNT, reason=customer.account
    )
    ledger.advance(STEP_S)
    exchange.ingest()
    while_held, held = balances()
    queue = review_queue(uow)
    hold = next((h for h in queue.holds if h.customer_id == customer.id), None)
    if hold is not None:
        unfreeze_customer(
            uow, customer.id, actor=OFFICER, at=exchange.clock(), reason="identity re-verified"
        )
        release_hold(uow, hold.id, actor=OFFICER, at=exchange.clock(), reason="customer cleared")
    after, held_after = balances()
    audit = verify_audit_log(uow)
    return ComplianceStory(
        customer=customer,
        amount=HELD_AMOUNT,
        balance_before=before,
        balance_while_held=while_held,
        held_while_held=held,
        hold_id=hold.id if hold else None,
        why=hold.why if hold else "not held",
        queue_holds=len(queue.holds),
        balance_after_release=after,
        held_after_release=held_after,
        audit_records=audit.records_checked,
        audit_intact=audit.ok,
    )


def run(exchange: Exchange, status: Status) -> ComplianceStory:
    with status("compliance: a customer frozen, a deposit held and released…"):
        return hold_and_release(exchange)


def show(console: Console, story: ComplianceStory, sections: Sections) -> bool:
    name, amount = story.customer.name, f"{money(story.amount)} CC"
    steps = [
        (
            f"officer freezes {name}; {name} deposits {amount}",
            f"held, not credited — {story.why}",
            story.balance_while_held == story.balance_before
            and story.held_while_held == story.amount,
        ),
        (
            "the review queue",
            f"{story.queue_holds} held deposit(s), {money(story.held_while_held)} CC in the "
            "compliance-hold account",
            story.queue_holds == 1 and story.hold_id is not None,
        ),
        (
            f"officer unfreezes {name} and releases the deposit",
            f"{name}: {money(story.balance_before)} → {money(story.balance_after_release)} CC; "
            f"compliance hold {money(story.held_after_release)}",
            story.balance_after_release == story.balance_before + story.amount
            and story.held_after_release == ZERO,
        ),
        (
            "sluice audit verify",
            f"{story.audit_records} records, hash chain "
            + ("intact" if story.audit_intact else "BROKEN"),
            story.audit_intact and story.audit_records > 0,
        ),
    ]
    table = Table(
        title=f"{sections.next()}. Compliance: a deposit the KYC registry refused, held, then "
        "released",
        title_justify="left",
    )
    for column in ("step", "result", ""):
        table.add_column(column)
    for step, result, ok in steps:
        table.add_row(step, result, mark(ok))
    console.print()
    console.print(table)
    return all(ok for _, _, ok in steps)


CHAPTER = Chapter("compliance hold and release", run, show)
