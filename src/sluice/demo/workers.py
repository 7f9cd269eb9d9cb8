"""Chapter: the workers, in the demo process against the same ledger, each step followed by
ingestion (in process from here on).

The deposit worker accepts a customer's USDX offer and rejects Mallory's (the compliance gate
denies her flagged party; the funds go back to her). The customers' wallets pre-approve CC; the
withdrawal worker pays CC withdrawals in one step and USDX ones as offers the receiver answers
(one accepted: paid; one rejected: credited back). Then a withdrawal worker dies right after
submitting a withdrawal, before recording it; a new worker takes over and does not submit it
again, ingestion sees the transfer, and the clock moves past the attempt's ``trec_tgt`` without
anything being refunded: the withdrawal is paid exactly once (one transfer with its id as
reason on the ledger).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from rich.console import Console
from rich.table import Table

from sluice.demo.report import Chapter, Sections, Status, mark, money, shorten, stamp
from sluice.demo.world import (
    BLOCKED,
    CUSTOMERS,
    OFFICER,
    STEP_S,
    Customer,
    Exchange,
    Plan,
    PlannedWithdrawal,
    World,
)
from sluice.domain.ledger import REASON_KEY
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import LedgerClient
from sluice.services.compliance_officer import flag_address
from sluice.services.deposit_worker import list_incoming_offers


class WorkerCrashError(Exception):
    """What the crash hook raises: the worker dies between submitting and recording it."""


@dataclass(frozen=True, slots=True)
class OfferOutcome:
    """An incoming deposit offer: what the deposit worker decided, what the ledger then did."""

    contract_id: str
    customer: Customer | None
    amount: Decimal
    instrument_key: str
    reason: str | None
    action: str | None  # accept | reject | None (left alone)
    why: str
    status: str | None  # the last status ingestion saw: completed, rejected, pending…


@dataclass(frozen=True, slots=True)
class CrashStory:
    """The withdrawal whose worker died right after submitting it, and what followed."""

    withdrawal: PlannedWithdrawal
    crashed: bool  # the hook fired (False: the worker never got to submit it)
    status_after_crash: str | None
    submitted_by_successor: int  # submissions of the worker that took over, first round
    status_after_ingestion: str | None
    trec_tgt: datetime | None
    cursor_time: datetime | None  # ingestion's record time once the clock moved past trec_tgt
    settled_after_trec_tgt: int  # attempts the successor then settled (retried or refunded)
    transfers_on_ledger: int  # committed transfers carrying the withdrawal's id as reason


@dataclass(slots=True)
class WorkersStory:
    world: World
    offers: list[OfferOutcome] = field(default_factory=list)
    preapprovals: int = 0
    requested: int = 0
    rounds: int = 0
    answered: list[tuple[PlannedWithdrawal, str]] = field(default_factory=list)
    crash: CrashStory | None = None


def transfers_with_reason(reader: LedgerClient, party: str, reason: str) -> int:
    """Committed ``TransferFactory_Transfer`` exercises in ``party``'s stream whose reason is
    ``reason``: the ledger's own count of the payments made for a withdrawal."""
    count = 0
    for item in reader.updates(party, 0):
        transaction: dict[str, Any] | None = item["update"].get("Transaction")
        if transaction is None:
            continue
        for event in transaction["value"]["events"]:
            exercised = event.get("ExercisedEvent")
            if exercised is None or exercised["choice"] != "TransferFactory_Transfer":
                continue
            meta = exercised["choiceArgument"]["transfer"]["meta"]["values"]
            count += meta.get(REASON_KEY) == reason
    return count


def answer_deposit_offers(exchange: Exchange) -> list[OfferOutcome]:
    """A compliance officer flags Mallory's party; the deposit worker answers the pending
    incoming offers (the KYC registry refuses Mallory's); ingestion then sees the accept credited
    and the reject returned."""
    world = exchange.world
    flag_address(
        exchange.database.uow,
        world.party_of[BLOCKED.id],
        actor=OFFICER,
        at=exchange.clock(),
        reason="on the exchange's block list",
    )
    exchange.deposit_worker().run_once()
    answered = list_incoming_offers(exchange.database.uow, world.treasury)
    exchange.ledger.advance(STEP_S)
    exchange.ingest()
    with exchange.database.uow() as uow:
        last_status = {
            record.correlation_id: record.status
            for record in uow.books.history(world.connection)
            if record.kind == "transfer_in" and record.correlation_id
        }
    outcomes = []
    for offer in answered:
        transfer = offer.instruction.transfer
        why = (
            "sender flagged: on the exchange's block list"
            if offer.action == "reject"
            else "the KYC registry allows it"
        )
        outcomes.append(
            OfferOutcome(
                contract_id=offer.instruction.contract_id,
                customer=world.parties.get(transfer.sender),
                amount=transfer.amount,
                instrument_key=transfer.instrument.key(),
                reason=transfer.reason,
                action=offer.action,
                why=why,
                status=last_status.get(offer.instruction.correlation_id),
            )
        )
    return outcomes


def pay_withdrawals(exchange: Exchange, the_plan: Plan, story: WorkersStory) -> None:
    """The customers' wallets pre-approve CC; every withdrawal but the crash one is requested and
    driven to its outcome; the receivers answer the USDX offers."""
    world, ledger = exchange.world, exchange.ledger
    for customer in CUSTOMERS:
        ledger.create_preapproval(world.party_of[customer.id], world.coin)
        story.preapprovals += 1
    planned = [w for w in the_plan.withdrawals if not w.crash]
    for item in planned:
        exchange.request(item)
        story.requested += 1
    story.rounds = exchange.drive(exchange.withdrawal_worker())
    for item in planned:
        record = exchange.withdrawal(item.id)
        if item.answer is None or record is None or record.instruction_cid is None:
            continue
        answer = ledger.accept if item.answer == "accept" else ledger.reject
        answer(record.instruction_cid, world.party_of[item.customer.id])
        story.answered.append((item, item.answer))
    ledger.advance(STEP_S)
    exchange.ingest()


def crash_a_worker(exchange: Exchange, planned: PlannedWithdrawal) -> CrashStory:
    """A worker dies right after submitting ``planned`` (before recording the submission); a new
    one takes over. Nothing may submit it again and nothing may refund it: it is paid once."""
    world, ledger = exchange.world, exchange.ledger
    exchange.request(planned)

    def die_after_submitting(record: Withdrawal) -> None:
        if record.id == planned.id:
            raise WorkerCrashError(f"worker died after submitting {record.id}")

    crashed = False
    try:
        exchange.withdrawal_worker(after_submit=die_after_submitting).run_once()
    except WorkerCrashError:
        crashed = True
    after_crash = exchange.withdrawal(planned.id)
    successor = exchange.withdrawal_worker()
    first = successor.run_once()
    ledger.advance(STEP_S)
    exchange.ingest()
    after_ingestion = exchange.withdrawal(planned.id)
    # Past trec_tgt: an attempt ingestion has not seen by now could never commit, so this is when
    # the worker would retry or refund it — it must do neither, the transfer was seen.
    ledger.advance(exchange.settings.trec_span_s + STEP_S)
    ledger.checkpoint()
    exchange.ingest()
    later = successor.run_once()
    exchange.ingest()
    with exchange.database.uow() as uow:
        cursor = uow.ingestion.load_cursor(world.connection)
    return CrashStory(
        withdrawal=planned,
        crashed=crashed,
        status_after_crash=after_crash.status if after_crash else None,
        submitted_by_successor=first.submitted,
        status_after_ingestion=after_ingestion.status if after_ingestion else None,
        trec_tgt=after_crash.trec_tgt if after_crash else None,
        cursor_time=cursor.record_time if cursor else None,
        settled_after_trec_tgt=later.settled,
        transfers_on_ledger=transfers_with_reason(world.reader(ledger), world.treasury, planned.id),
    )


def run_workers(exchange: Exchange, the_plan: Plan) -> WorkersStory:
    story = WorkersStory(exchange.world)
    story.offers = answer_deposit_offers(exchange)
    pay_withdrawals(exchange, the_plan, story)
    crashed = next(w for w in the_plan.withdrawals if w.crash)
    story.crash = crash_a_worker(exchange, crashed)
    exchange.ledger.checkpoint()  # so the cursor ends at the ledger end
    exchange.ingest()
    return story


def run(exchange: Exchange, status: Status) -> WorkersStory:
    with status("the workers: deposit offers, withdrawals, a worker crash…"):
        return run_workers(exchange, exchange.world.plan)


def show_workers(console: Console, story: WorkersStory, sections: Sections) -> bool:
    console.print()
    console.print(
        f"[bold]{sections.next()}. The workers[/], in the demo process (the only writer of the "
        "ledger file), ingestion in process after every step"
    )
    accepted = sum(1 for o in story.offers if o.action == "accept")
    rejected = sum(1 for o in story.offers if o.action == "reject")
    console.print(
        f"  deposit worker (KYC registry; {BLOCKED.name} flagged): accepted {accepted} offer(s), "
        f"rejected {rejected}"
    )
    console.print(f"  the wallets of {story.preapprovals} customers pre-approve CC")
    console.print(
        f"  {story.requested} withdrawals requested, each customer debited into in-flight at "
        f"once; withdrawal worker: {story.rounds} rounds of run_once + ingestion until nothing "
        "was left to do"
    )
    for planned, answer in story.answered:
        console.print(
            f"  {planned.customer.name}'s wallet {answer}s the {money(planned.amount)} USDX offer "
            f"of {shorten(planned.id)}"
        )
    crash = story.crash
    if crash is None:
        return False
    planned = crash.withdrawal
    died = crash.crashed and crash.status_after_crash == "submitting"
    console.print(
        f"  crash: worker 1 submitted {shorten(planned.id)} ({planned.customer.name}, "
        f"{money(planned.amount)} CC) and died before recording it: status "
        f"{crash.status_after_crash} {mark(died)}"
    )
    not_again = crash.submitted_by_successor == 0
    seen = crash.status_after_ingestion == "completed"
    console.print(
        f"         worker 2 took over and submitted it {crash.submitted_by_successor} more "
        f"time(s) {mark(not_again)}; ingestion saw the transfer: {crash.status_after_ingestion} "
        f"{mark(seen)}"
    )
    past = (
        crash.trec_tgt is not None
        and crash.cursor_time is not None
        and crash.cursor_time >= crash.trec_tgt
    )
    untouched = crash.settled_after_trec_tgt == 0
    console.print(
        f"         clock moved past trec_tgt {stamp(crash.trec_tgt)}, ingestion at "
        f"{stamp(crash.cursor_time)} {mark(past)}: worker 2 retried or refunded "
        f"{crash.settled_after_trec_tgt} attempt(s) {mark(untouched)}"
    )
    once = crash.transfers_on_ledger == 1
    console.print(
        f"         transfers on the ledger with reason {shorten(planned.id)}: "
        f"{crash.transfers_on_ledger} {mark(once)} (paid exactly once)"
    )
    return died and not_again and seen and past and untouched and once


def show_offers(console: Console, story: WorkersStory, sections: Sections) -> bool:
    world, the_plan = story.world, story.world.plan
    table = Table(
        title=f"{sections.next()}. Deposit offers and what happened to them", title_justify="left"
    )
    for name in ("from", "amount", "reason", "deposit worker", "on the ledger", "credited", ""):
        table.add_column(name, justify="right" if name == "amount" else "left")
    expected = {
        the_plan.offer.customer.id: ("accept", "completed"),
        the_plan.blocked_offer.customer.id: ("reject", "rejected"),
    }
    ok = len(story.offers) == len(expected)
    for offer in story.offers:
        symbol = world.symbol(offer.instrument_key)
        who = offer.customer.id if offer.customer else None
        matches = expected.get(who or "") == (offer.action, offer.status)
        ok = ok and matches
        credited = (
            f"{money(offer.amount)} {symbol} to {offer.customer.name if offer.customer else '?'}"
            if offer.status == "completed"
            else "nothing: the funds went back to the sender"
        )
        table.add_row(
            offer.customer.name if offer.customer else "?",
            f"{money(offer.amount)} {symbol}",
            offer.reason or "",
            f"{offer.action or 'left alone'} ({offer.why})",
            offer.status or "?",
            credited,
            mark(matches),
        )
    console.print()
    console.print(table)
    return ok


def show(console: Console, story: WorkersStory, sections: Sections) -> bool:
    workers = show_workers(console, story, sections)
    offers = show_offers(console, story, sections)
    return workers and offers


CHAPTER = Chapter("the workers, through a crash", run, show)
