"""iSTSi issuance, on the Bitcoin custody's in-memory chain and the run's embedded ledger: the
customers deposit Bitcoin from wallets of their own (so the ``kyc`` step can read who sent it),
the issuance router runs (dying now and then after claiming a step, or after a step ran and
before its outcome is recorded; the connection to the node dropping mid-round), customers redeem
iSTSi they hold on the exchange's books (now and then again under the same idempotency key),
a compliance officer freezes and unfreezes customers, lists a sender's address and releases held
deposits, a customer who receives minted iSTSi in their own party sends some to another
customer's party, and the KYC hold worker decides those held transfers (the receiver accepts
what was approved).

Everything is made before the first step, before any ledger fault is armed (:func:`world`, called
by the scenario): the issuer party and iSTSi on the run's ledger (onboarded in the books), the
router's context over the custody the Bitcoin actor runs, each customer's party registered (the
last customer's mints go to their party), and the exchange's float. This is the deployment's own
setup, done once before the exchange runs (as the sandbox allocates the treasury and the
customers), so the faults the run injects into the exchange's work never strike it. The
customers' payout addresses are scripts of their own, one per redemption, so the Bitcoin checks
see each redemption paid at most once.

The float — :data:`FLOAT_OUTPUTS` × :data:`FLOAT_SATS` of the exchange's own Bitcoin in custody,
paid to a custody *change* address (``K/1/*``: no deposit, no customer, nothing to mint or
return) — exists for one reason: the Bitcoin actor's *operator payouts* (kind ``operator``,
:func:`sluice.sim.actors.bitcoin.request`). Every custody deposit of the run is owed: minted one
for one, or (held by KYC) minted once released or paid back, and the guard holds a payout other
than a redemption to the supply plus the deposits not minted yet
(:func:`sluice.services.btc_payouts.request_payout`). Without the float every operator payout
would be refused; a float of held deposits would not do either, since those are owed to their
senders (the reserves document counts them as owed, and an operator payout that spent one would
leave its mint refused by the guard once released).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import TypeVar

from sluice.bitcoin.fakechain.records import build
from sluice.domain.errors import (
    ComplianceError,
    DuplicateOperationError,
    InsufficientBalanceError,
    InvalidOperationStateError,
)
from sluice.ledger.local.issuer import EmbeddedIssuerLedger, create_istsi
from sluice.ports.issuance import IssuanceOperation, amount_to_sats, sats_to_amount
from sluice.services.btc_addresses import change_address, deposit_address
from sluice.services.compliance_officer import flag_address, freeze_customer, unfreeze_customer
from sluice.services.issuance_held import release_held_deposit
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_redeem import payout_id_of, request_redemption
from sluice.services.issuance_router import IssuanceRouter, OperationDefinition, StepOutcome
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.issuance_transfers import decide_held_transfers
from sluice.services.reference import onboard_instrument
from sluice.sim.actors.actor import Action, Actor
from sluice.sim.actors.bitcoin import (
    REORG_DEPTH_MAX,
    custody,
    drop_link_now_and_then,
    pay,
    quietly,
    watch,
)
from sluice.sim.actors.customers import _send
from sluice.sim.faults import crash_point
from sluice.sim.invariants import check_request_unchanged
from sluice.sim.issuance_state import ROUTER_SETTINGS, IssuanceWorld, Redemption
from sluice.sim.state import PayoutRequest, SimulationState
from sluice.store import bitcoin_tables

ROUTER = "istsi_router"
ACTOR_NAME = "sim-officer"
DEPOSIT_SATS = (100_000, 3_000_000)
REDEEM_SATS = (100_000, 1_500_000)  # at least the payout fee cap and the dust limit
HOLDER_SHARE = 0.8  # of new redemptions, asked by a customer holding enough iSTSi
SENDERS_PER_CUSTOMER = 2
# The exchange's own Bitcoin in custody (paid to a change address: no deposit, nothing owed for
# it): the Bitcoin actor's operator payouts come out of it, not out of the Bitcoin that backs the
# iSTSi minted or is owed for a deposit (see the module's docstring).
FLOAT_OUTPUTS, FLOAT_SATS = 20, 50_000_000
_R = TypeVar("_R")


class CrashingRouter(IssuanceRouter):
    """The router, dying now and then after it claimed a step (nothing ran) or after the step
    function ran and before its outcome is recorded: the step runs again after the lease."""

    def __init__(
        self,
        sim: SimulationState,
        ctx: IssuanceContext,
        definitions: Mapping[str, OperationDefinition],
    ) -> None:
        super().__init__(ctx, definitions)
        self._sim = sim

    def _call(self, op: IssuanceOperation) -> StepOutcome:
        crash_point(self._sim, "istsi_before_step")
        outcome = super()._call(op)
        crash_point(self._sim, f"istsi_after_{op.step}")
        return outcome


def hushed(call: Callable[[], _R]) -> _R:
    """The router logs a step that raised (with its traceback) and retries it; the simulation's
    outcomes count what happened instead."""
    disabled = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    try:
        return quietly(call)
    finally:
        logging.disable(disabled)


def _script(label: str) -> str:
    """A P2WPKH script outside custody, fixed by ``label``."""
    return "0014" + hashlib.sha256(f"sluice simulation {label}".encode()).hexdigest()[:40]


def world(sim: SimulationState) -> IssuanceWorld:
    """The run's issuance, made on first use."""
    if sim.issuance is not None:
        return sim.issuance
    bitcoin = custody(sim)
    sandbox = sim.sandbox
    issuer_party = sim.ledger.allocate_party("issuer", "registry")
    create_istsi(sim.ledger, issuer_party)
    issuer = EmbeddedIssuerLedger(sim.ledger, issuer_party)
    now = sandbox.clock()
    onboard_instrument(
        sandbox.database.uow,
        issuer.instrument,
        transfer_kinds=("direct", "offer"),
        actor=ACTOR_NAME,
        at=now,
    )
    with sandbox.database.uow() as uow:
        for customer in sim.customer_ids:
            uow.issuance.set_customer_party(
                customer,
                sandbox.customers[customer],
                now,
                mint_to_party=customer == sim.customer_ids[-1],
            )
        uow.commit()
    ctx = IssuanceContext(
        uow=sandbox.database.uow,
        clock=sandbox.clock,
        issuer=issuer,
        registry=sandbox.compliance,
        wallet=bitcoin.wallet,
        node=bitcoin.link,
        treasury=sandbox.treasury,
        bitcoin=bitcoin.settings,
        settings=ROUTER_SETTINGS,
    )
    if FLOAT_OUTPUTS:
        with sandbox.database.uow() as uow:
            float_to = change_address(uow, bitcoin.wallet, sandbox.clock)
            uow.commit()
        bitcoin.node.fund_many([(float_to.script_hex, FLOAT_SATS)] * FLOAT_OUTPUTS)
        # Mined under more blocks than a reorg reaches, so neither an eviction nor a reorg's
        # dropped transaction can take it away.
        bitcoin.node.mine(REORG_DEPTH_MAX + 1)
    sim.issuance = IssuanceWorld(ctx, issuer, issuer_party)
    sim.dirty = True
    return sim.issuance


def router(sim: SimulationState) -> IssuanceRouter:
    issuance = world(sim)
    return sim.process(ROUTER, lambda: CrashingRouter(sim, issuance.ctx, DEFINITIONS))


def absorb(sim: SimulationState) -> None:
    """Learn what the router made happen: the issuer's committed commands on the ledger, and the
    redemptions' payouts now recorded (the Bitcoin checks then follow them like any payout)."""
    issuance = sim.issuance
    if issuance is None:
        return
    for completion in sim.ledger.completions(issuance.issuer_party, issuance.completion_sequence):
        issuance.completion_sequence = completion.sequence
        if completion.status == "ok":
            issuance.committed[completion.command_id] += 1
    bitcoin = custody(sim)
    wanted = {payout_id_of(op): r for op, r in issuance.redemptions.items()}
    missing = [pid for pid in wanted if pid not in bitcoin.payouts]
    if not missing:
        return
    payouts = bitcoin_tables.btc_payouts
    with sim.engine.connect() as connection:
        recorded = connection.execute(
            payouts.select().with_only_columns(payouts.c.id).where(payouts.c.id.in_(missing))
        ).scalars()
        for payout_id in sorted(recorded):
            r = wanted[payout_id]
            bitcoin.payouts[payout_id] = PayoutRequest(
                payout_id, r.address, r.script_hex, r.amount_sats
            )


# --- the outside world: customers' deposits and transfers ----------------------------------------


def deposit(sim: SimulationState) -> None:
    """A customer pays their custody address from a wallet of their own (readable inputs)."""
    issuance = world(sim)
    bitcoin = custody(sim)
    customer = sim.rng.choice(sim.customer_ids)
    sender = _script(f"sender {customer} {sim.rng.randrange(SENDERS_PER_CUSTOMER)}")
    address = deposit_address(
        sim.sandbox.database.uow, bitcoin.wallet, customer, clock=sim.sandbox.clock
    )
    sats = sim.rng.randint(*DEPOSIT_SATS)
    source, _ = bitcoin.node.fund(sender, sats + 2_000, mine=True)
    tx = build([(bytes.fromhex(source), 0, b"\x51", 0xFFFFFFFE)], [(address.script_hex, sats)])
    txid = bitcoin.node.sendrawtransaction(tx.serialize().hex())
    bitcoin.funded[txid] = (customer, sats)
    issuance.senders[txid] = sender
    sim.result.outcomes["istsi_deposit"] += 1


def transfer(sim: SimulationState) -> None:
    """The customer who receives iSTSi in their own party sends some to another customer's party
    (held for KYC), or a customer accepts an approved transfer waiting for them."""
    issuance = world(sim)
    parties = sim.sandbox.customers
    instrument = issuance.issuer.instrument
    if sim.rng.random() < 0.5:
        for customer in sim.customer_ids:
            for instruction in sim.ledger.active_instructions(parties[customer]):
                transfer = instruction.transfer
                if (
                    transfer.instrument == instrument
                    and transfer.receiver == parties[customer]
                    and instruction.status == "pending_receiver_acceptance"
                ):
                    cid, party = instruction.contract_id, parties[customer]
                    if _send(sim, "istsi", functools.partial(sim.ledger.accept, cid, party)):
                        sim.result.outcomes["istsi_transfer_accepted"] += 1
                    return
        return
    sender = sim.customer_ids[-1]
    held = sum(h.amount for h in sim.ledger.active_holdings(parties[sender], instrument))
    if not held:
        return
    receiver = sim.rng.choice(sim.customer_ids[:-1])
    amount = sats_to_amount(sim.rng.randint(1, amount_to_sats(held)))
    if _send(
        sim,
        "istsi",
        lambda: sim.ledger.transfer(parties[sender], parties[receiver], instrument, amount),
    ):
        sim.result.outcomes["istsi_transfer_sent"] += 1


# --- the exchange: the router, redemptions, the officer, the hold worker -------------------------


def route(sim: SimulationState) -> None:
    router_ = router(sim)
    link = drop_link_now_and_then(sim)
    try:
        tick = hushed(router_.tick)
    finally:
        link.disarm()
        absorb(sim)
    outcomes = sim.result.outcomes
    outcomes["istsi_steps"] += tick.steps
    outcomes["istsi_completed"] += len(tick.completed)
    outcomes["istsi_held"] += len(tick.held)
    outcomes["istsi_stuck"] += len(tick.stuck)
    if link.dropped:
        outcomes[f"istsi_link_dropped_at_{link.dropped}"] += 1


def decide(sim: SimulationState) -> None:
    issuance = world(sim)
    try:
        tick = hushed(lambda: decide_held_transfers(issuance.ctx))
    finally:
        absorb(sim)
    sim.result.outcomes["istsi_transfer_approved"] += tick.approved
    sim.result.outcomes["istsi_transfer_rejected"] += tick.rejected


def redeem(sim: SimulationState, customer: str | None = None) -> None:
    """A customer redeems iSTSi to an address of their own; a fifth of the time a redemption
    already asked for is asked again under its key (it must change nothing)."""
    issuance = world(sim)
    outcomes = sim.result.outcomes
    if issuance.redemptions and sim.rng.random() < 0.2:
        first = sim.rng.choice(sorted(issuance.redemptions.values(), key=lambda r: r.key))
        sim.dirty = True
        before = sim.read_database()
        try:
            request_redemption(
                issuance.ctx,
                customer_id=first.customer_id,
                amount_sats=first.amount_sats,
                address=first.address,
                idempotency_key=first.key,
                actor=first.customer_id,
            )
        except DuplicateOperationError as exc:
            seen = getattr(exc, "first_operation", None)
            seen_id = seen.get("id") if isinstance(seen, dict) else getattr(seen, "id", None)
            if seen_id != first.operation_id:
                sim.violation("istsi_redeemed_once", f"{first.key} answered another operation")
            outcomes["istsi_redeem_repeated"] += 1
        else:
            sim.violation("istsi_redeemed_once", f"{first.key} was taken twice")
        check_request_unchanged(sim, before, f"repeating redemption {first.key} changed the books")
        return
    holders = _holders(sim, issuance) if customer is None else []
    if holders and sim.rng.random() < HOLDER_SHARE:
        # Most redemptions are asked by a customer who holds enough (else a run reaches few).
        customer, held = sim.rng.choice(holders)
        sats = sim.rng.randint(REDEEM_SATS[0], min(REDEEM_SATS[1], held))
    else:
        customer = customer or sim.rng.choice(sim.customer_ids)
        sats = sim.rng.randint(*REDEEM_SATS)
    key = f"redeem-{outcomes['istsi_redeem_asked']}"
    outcomes["istsi_redeem_asked"] += 1
    script = _script(f"redemption {key}")
    address = issuance.ctx.wallet.address_of(script)
    assert address is not None
    try:
        op = request_redemption(
            issuance.ctx,
            customer_id=customer,
            amount_sats=sats,
            address=address,
            idempotency_key=key,
            actor=customer,
        )
    except InsufficientBalanceError:
        outcomes["istsi_redeem_insufficient"] += 1
        return
    except ComplianceError:
        outcomes["istsi_redeem_refused_kyc"] += 1
        return
    issuance.redemptions[op.id] = Redemption(op.id, customer, key, sats, address, script)
    outcomes["istsi_redeemed"] += 1


def _holders(sim: SimulationState, issuance: IssuanceWorld) -> list[tuple[str, int]]:
    """The customers whose available iSTSi on the books covers the smallest redemption, each
    with those sats."""
    instrument = issuance.issuer.instrument
    holders: list[tuple[str, int]] = []
    with sim.sandbox.database.uow() as uow:
        for customer in sim.customer_ids:
            available = uow.accounts.customer_balances(customer).get(instrument)
            sats = amount_to_sats(available) if available else 0
            if sats >= REDEEM_SATS[0]:
                holders.append((customer, sats))
    return holders


def officer(sim: SimulationState) -> None:
    """Freeze or unfreeze a customer, list a sender's address, or release a held deposit."""
    issuance = world(sim)
    uow = sim.sandbox.database.uow
    now = sim.sandbox.clock()
    roll = sim.rng.random()
    outcomes = sim.result.outcomes
    if roll < 0.4:
        # Frozen for a moment: the router runs and the customer asks for a redemption meanwhile
        # (the other flows of the simulation, which do not expect it, do not run).
        customer = sim.rng.choice(sim.customer_ids)
        freeze_customer(uow, customer, actor=ACTOR_NAME, at=now, reason="under review")
        outcomes["istsi_frozen"] += 1
        try:
            route(sim)
            if sim.rng.random() < 0.5:
                redeem(sim, customer)
        finally:
            unfreeze_customer(uow, customer, actor=ACTOR_NAME, at=now, reason="reviewed")
    elif roll < 0.55:
        customer = sim.rng.choice(sim.customer_ids)
        address = issuance.ctx.wallet.address_of(_script(f"sender {customer} 1"))
        assert address is not None
        if address not in issuance.listed:
            flag_address(uow, address, actor=ACTOR_NAME, at=now, reason="sanctioned")
            issuance.listed.add(address)
            outcomes["istsi_sender_listed"] += 1
    else:
        with uow() as u:
            held = u.issuance.operations(status="held")
        if not held:
            return
        # Only customers' deposits from their own wallets.
        mine = [o for o in held if o.params.get("txid") in issuance.senders]
        if not mine:
            return
        op = sim.rng.choice(sorted(mine, key=lambda o: o.id))
        try:
            release_held_deposit(issuance.ctx, op.id, reason="cleared", actor=ACTOR_NAME)
            outcomes["istsi_released"] += 1
        except (InvalidOperationStateError, ComplianceError):
            outcomes["istsi_release_refused"] += 1


ACTOR = Actor(
    "issuance",
    (
        Action("istsi_deposit", 3, deposit),
        Action("istsi_route", 5, route),
        Action("istsi_redeem", 3, redeem),
        Action("istsi_officer", 1, officer),
        Action("istsi_transfer", 2, transfer),
        Action("istsi_decide", 2, decide),
    ),
)


# --- the drain ----------------------------------------------------------------------------------

SETTLE_ROUNDS = 4


def settle(sim: SimulationState) -> None:
    """One round of the drain for issuance (nothing when the run has none): the router, the hold
    worker, the payouts worker, a block, the watcher — a few times over, the clock moving past
    leases, backoffs, polls and the payouts' batch window each time."""
    if sim.issuance is None:
        return
    bitcoin = custody(sim)
    for _ in range(SETTLE_ROUNDS):
        route(sim)
        decide(sim)
        pay(sim)
        bitcoin.node.mine(1)
        watch(sim)
        sim.ledger.advance(max(ROUTER_SETTINGS.lease_s, bitcoin.settings.payout_batch_window_s) + 1)


def open_operations(sim: SimulationState) -> int:
    """Issuance operations still to run (pending or waiting); 0 without issuance."""
    if sim.issuance is None:
        return 0
    with sim.sandbox.database.uow() as uow:
        return sum(len(uow.issuance.operations(status=s)) for s in ("pending", "waiting"))
