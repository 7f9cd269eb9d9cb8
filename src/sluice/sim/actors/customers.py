"""The customers: they deposit, offer, withdraw their offers, request withdrawals and answer the
exchange's offers.

* A customer deposits Amulet 1-step with their deposit account as reason (sometimes another
  customer's, an unknown one or none: suspense), or sends a USDX offer to the treasury (which the
  deposit worker accepts, rejects by the compliance gate, or leaves alone when the reason is
  unknown); a customer withdraws an offer of theirs the exchange has not answered.
* A customer requests a withdrawal of part of their credited balance, Amulet or USDX (sometimes
  more than they have, or again under an idempotency key already used: a refused or repeated
  request must change nothing), or accepts, rejects or ignores a USDX withdrawal offer (ignored
  ones are withdrawn by the worker after ``offer_timeout_s`` or expired by the admin).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from decimal import ROUND_DOWN, Decimal

from sluice.domain.amounts import ZERO
from sluice.domain.errors import SluiceError
from sluice.domain.journal import SUSPENSE, AccountRef, customer_account_name
from sluice.ledger.local import CommandRejectedError, CommandResult, ResponseLostError
from sluice.services import withdrawals
from sluice.sim.actors.actor import Action, Actor
from sluice.sim.invariants import check_request_unchanged
from sluice.sim.state import SETTINGS, DepositOffer, Request, SimulationState

DEPOSIT_OFFER_SPANS_S = (120, 300, 900)


def _customer(sim: SimulationState) -> str:
    return sim.rng.choice(sim.customer_ids)


def _amount(sim: SimulationState, top: int = 400_000) -> Decimal:
    return Decimal(sim.rng.randint(1, top)).scaleb(-4)


def _reason(sim: SimulationState, customer_id: str) -> str | None:
    roll = sim.rng.random()
    if roll < 0.78:
        return "acct-" + customer_id.removeprefix("cust-")
    if roll < 0.84:
        return "acct-" + _customer(sim).removeprefix("cust-")
    if roll < 0.94:
        return f"acct-unknown-{sim.rng.randint(1, 99)}"
    return None


def _account_for(sim: SimulationState, reason: str | None) -> str:
    customer = sim.accounts.get(reason) if reason else None
    return customer_account_name(customer) if customer is not None else SUSPENSE


def _send(
    sim: SimulationState, sender: str, send: Callable[[], CommandResult]
) -> CommandResult | None:
    """A customer's command: the result if it committed (a lost response still committed), None
    if it was rejected."""
    try:
        return send()
    except ResponseLostError as lost:
        sim.result.outcomes[f"{sender}_response_lost"] += 1
        return lost.result
    except CommandRejectedError:
        sim.result.outcomes[f"{sender}_command_rejected"] += 1
        return None


def deposit_direct(sim: SimulationState) -> None:
    sandbox = sim.sandbox
    customer = _customer(sim)
    reason = _reason(sim, customer)
    amount = _amount(sim)
    committed = _send(
        sim,
        "customer",
        lambda: sim.ledger.transfer(
            sandbox.customers[customer], sandbox.treasury, sandbox.coin, amount, reason=reason
        ),
    )
    if committed is None:
        return
    sim.result.deposits += 1
    account = _account_for(sim, reason)
    sim.result.outcomes["deposit_suspense" if account == SUSPENSE else "deposit_direct"] += 1
    sim.add_sent(customer, sandbox.coin, amount)
    sim.watch(committed, account, sandbox.coin, amount)


def deposit_offer(sim: SimulationState) -> None:
    sandbox = sim.sandbox
    customer = _customer(sim)
    reason = _reason(sim, customer)
    amount = _amount(sim)
    span = timedelta(seconds=sim.rng.choice(DEPOSIT_OFFER_SPANS_S))
    committed = _send(
        sim,
        "customer",
        lambda: sim.ledger.transfer(
            sandbox.customers[customer],
            sandbox.treasury,
            sandbox.token,
            amount,
            reason=reason,
            execute_before=sim.ledger.time() + span,
        ),
    )
    if committed is None or committed.instruction_cid is None:
        return
    sim.result.deposits += 1
    sim.result.outcomes["deposit_offer"] += 1
    sim.watch(committed)
    cid = committed.instruction_cid
    sim.deposit_offers[cid[-24:]] = DepositOffer(
        cid, customer, _account_for(sim, reason), sandbox.token, amount
    )


def cancel_deposit_offer(sim: SimulationState) -> None:
    treasury = sim.sandbox.treasury
    pending = sim.ledger.active_instructions(treasury)
    offers = sorted(
        (i for i in pending if i.transfer.receiver == treasury),
        key=lambda i: i.contract_id,
    )
    if not offers:
        return
    offer = sim.rng.choice(offers)
    sender = offer.transfer.sender
    if _send(sim, "customer", lambda: sim.ledger.withdraw(offer.contract_id, sender)):
        sim.result.outcomes["deposit_offer_withdrawn"] += 1


def request_withdrawal(sim: SimulationState) -> None:
    before = sim.read_database()  # as the previous step left it
    roll = sim.rng.random()
    if roll < 0.06 and sim.requests:
        earlier = sim.rng.choice(sim.requests)
        same = sim.rng.random() < 0.5
        amount = earlier.amount if same else earlier.amount + Decimal("0.0001")
        request = replace(earlier, amount=amount)
    else:
        # Mostly someone with something to withdraw; sometimes anyone.
        funded = [
            (customer, instrument)
            for instrument in sim.instruments
            for customer in sim.customer_ids
            if before.balances.get(AccountRef(customer_account_name(customer), instrument))
        ]
        if funded and sim.rng.random() < 0.9:
            customer, instrument = sim.rng.choice(funded)
        else:
            customer, instrument = _customer(sim), sim.rng.choice(sim.instruments)
        account = AccountRef(customer_account_name(customer), instrument)
        balance = before.balances.get(account, ZERO)
        if roll < 0.14:
            amount = balance + _amount(sim, 10_000)  # more than they have
        elif roll < 0.2:
            amount = balance
        else:
            share = Decimal(sim.rng.randint(1, 100)) / 100
            amount = (balance * share).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)
        request = Request(customer, f"sim-{sim.label.split()[-1]}", instrument, amount)
    sandbox = sim.sandbox
    try:
        withdrawal = withdrawals.request_withdrawal(
            sandbox.database.uow,
            treasury=sandbox.treasury,
            customer_id=request.customer_id,
            receiver=sandbox.customers[request.customer_id],
            instrument=request.instrument,
            amount=request.amount,
            idempotency_key=request.key,
            clock=sandbox.clock,
            settings=SETTINGS,
            # The sandbox's registry, risk rules off: its customers are scripts that deposit and
            # withdraw at machine speed, the very pattern the velocity and smurfing rules catch.
            compliance=sandbox.compliance,
        )
    except (SluiceError, ValueError) as exc:
        sim.result.outcomes[f"request_refused_{type(exc).__name__}"] += 1
        check_request_unchanged(sim, before, f"a refused request changed the books: {exc}")
        return
    if any((r.customer_id, r.key) == (request.customer_id, request.key) for r in sim.requests):
        sim.result.outcomes["request_repeated"] += 1
        check_request_unchanged(sim, before, f"repeating request {withdrawal.id} changed the books")
        return
    sim.requests.append(request)
    sim.result.withdrawals += 1
    sim.result.outcomes[f"request_{withdrawal.instrument.id}"] += 1


def answer_offer(sim: SimulationState) -> None:
    treasury = sim.sandbox.treasury
    offers = sorted(
        (
            i
            for i in sim.ledger.active_instructions(treasury)
            if i.transfer.sender == treasury and i.transfer.receiver != treasury
        ),
        key=lambda i: i.contract_id,
    )
    if not offers:
        return
    offer = sim.rng.choice(offers)
    receiver = offer.transfer.receiver
    roll = sim.rng.random()
    if roll < 0.5:
        accepted = _send(sim, "customer", lambda: sim.ledger.accept(offer.contract_id, receiver))
        if accepted is not None:
            sim.watch(accepted)
            sim.result.outcomes["offer_accepted"] += 1
            if offer.transfer.reason:
                sim.accepted.add(offer.transfer.reason)
    elif roll < 0.8:
        rejected = _send(sim, "customer", lambda: sim.ledger.reject(offer.contract_id, receiver))
        if rejected is not None:
            sim.watch(rejected)
            sim.result.outcomes["offer_rejected"] += 1
    else:
        sim.result.outcomes["offer_ignored"] += 1


ACTOR = Actor(
    "customers",
    (
        Action("deposit_direct", 14, deposit_direct, ledger_only=True),
        Action("deposit_offer", 8, deposit_offer, ledger_only=True),
        Action("cancel_deposit_offer", 2, cancel_deposit_offer, ledger_only=True),
        Action("request_withdrawal", 12, request_withdrawal),
        Action("answer_offer", 8, answer_offer, ledger_only=True),
    ),
)
