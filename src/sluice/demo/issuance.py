"""Chapter: iSTSi issuance, on the embedded defaults — Bitcoin in, iSTSi out, and back.

It goes on with the Bitcoin chapter's custody (the sandbox 2-of-3 custody on the in-memory
chain, its watcher) and the demo's ledger, where the token admins' node gets the exchange's
issuer party and iSTSi (1 unit = 1 satoshi, 8 decimals, every transfer between parties held for
KYC):

* Alice and Bob deposit BTC from their own wallets. At 6 confirmations the watcher opens a
  ``bitcoin_deposit`` operation per deposit; the router runs it (KYC of the customer and of the
  deposit's input addresses → reserve → the mint guard and the mint to the treasury → credit),
  and ingestion of the treasury's stream credits each customer's iSTSi account.
* A reorg 6 blocks deep takes both minted deposits off the chain and puts them in a new block:
  the watcher halts minting with a critical alert (iSTSi was minted against them), the deposits
  come back as the same outpoints, no second operation is opened, nothing is minted twice; the
  officer resumes minting.
* Dave, who chose to receive iSTSi on his own party, deposits and is minted there (no books);
  Erin's deposit comes from an address on the sanctions list (a one-entry OFAC list written in
  the data folder): held, a review item, nothing minted.
* Alice and Bob redeem: their iSTSi is taken and burned (ingestion books the burns), the two
  payouts leave in one 2-of-3 transaction, and each redemption completes at 6 confirmations
  with what the customer received (the amount less their share of the fee).
* Dave sends iSTSi to Carol's party: held in ``pending_internal_workflow`` until the KYC hold
  worker approves it, then Carol accepts. The officer freezes Erin; Dave's transfer to her is
  rejected and his holding unlocked.
* Last, the mint guard's figures: supply (our records and the ledger's) within confirmed
  reserves less pending redemptions, minting on, and the treasury's iSTSi on the ledger equal to
  what the customers hold on our books.

Deterministic: the amounts, senders and order are fixed; only txids and party fingerprints vary
(new custody keys each run). Fast: a few dozen blocks and a handful of router runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from sluice.bitcoin.fakechain.records import build
from sluice.demo import bitcoin
from sluice.demo.bitcoin import Custody, Step, btc, outside_address, sats_text
from sluice.demo.report import Chapter, Sections, Status, mark
from sluice.demo.world import CUSTOMERS, NODE, OFFICER, STEP_S, Customer, Exchange, held_on_ledger
from sluice.domain.amounts import ZERO
from sluice.domain.chains import to_coins
from sluice.domain.journal import IN_FLIGHT, AccountRef, customer_account_name
from sluice.domain.ledger import REASON_KEY, InstrumentId
from sluice.ledger.local import EmbeddedLedger
from sluice.ledger.local.issuer import EmbeddedIssuerLedger, RemoteIssuerLedger, create_istsi
from sluice.ports.issuance import IssuanceOperation, MintRecord, amount_to_sats, sats_to_amount
from sluice.screening import ListedSanctions
from sluice.services.books import check_invariant
from sluice.services.btc_payouts import PayoutView, get_payout
from sluice.services.btc_watcher import list_deposits
from sluice.services.compliance import KycRegistry
from sluice.services.compliance_officer import freeze_customer
from sluice.services.issuance_deposit import mint_id
from sluice.services.issuance_intake import deposit_operation_id
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_redeem import payout_id_of, request_redemption
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.issuance_transfers import decide_held_transfers
from sluice.services.mint_guard import guard_status, resume_minting
from sluice.services.reference import onboard_instrument

ALICE, BOB, CAROL, DAVE, ERIN = CUSTOMERS
CONFIRMATIONS = bitcoin.SETTINGS.confirmations_min
TREASURY_DEPOSITS = ((ALICE, 40_000_000), (BOB, 20_000_000))  # minted to the treasury
OWN_PARTY_SATS = 5_000_000  # Dave's, minted to his own party
LISTED_SATS = 3_000_000  # Erin's, from a sanctioned address: held
REDEMPTIONS = ((ALICE, 10_000_000), (BOB, 5_000_000))  # paid out in one batch
TO_CAROL_SATS = 1_000_000  # Dave → Carol: approved
TO_ERIN_SATS = 500_000  # Dave → Erin (frozen): rejected
SENDER_FEE_SATS = 2_000  # what each sender's deposit transaction leaves as fee
LISTED_SENDER = 0x66  # the sanctioned wallet's script byte
SANCTIONS_DIR = "sanctions"
# The token admins' node (the setup chapter's ``dso``): the issuer party is the exchange's, but it
# lives with the other instruments' admins, so the exchange's node keeps its one party, the
# treasury.
ISSUER_NODE = "dso"


def sender_script(n: int) -> str:
    """A P2WPKH script outside custody: a customer's own wallet (or the sanctioned one)."""
    return "0014" + f"{n:02x}" * 20


def write_sanctions(directory: Path, address: str) -> ListedSanctions:
    """A one-entry OFAC SDN list whose remarks list ``address`` as a digital currency address."""
    directory.mkdir(parents=True, exist_ok=True)
    empty = ",".join(['"-0-"'] * 7)
    (directory / "sdn.csv").write_text(
        f'90001,"DEMO SANCTIONED WALLET","-0-","CYBER2",{empty},'
        f'"Digital Currency Address - XBT {address}."\n'
    )
    return ListedSanctions.load(directory)


@dataclass(slots=True)
class IssuanceStory:
    """What issuance did, step by step; the operations, the payouts and the guard at the end."""

    names: dict[str, str]  # customer id → name
    steps: list[Step] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)  # the chapter's operations, in their order
    operations: list[IssuanceOperation] = field(default_factory=list)  # all of them at the end
    payouts: list[PayoutView] = field(default_factory=list)
    guard: dict[str, Any] = field(default_factory=dict)
    minted: dict[str, int] = field(default_factory=dict)  # operation id → ledger mints seen
    held_on_parties: dict[str, int] = field(default_factory=dict)  # customer id → iSTSi sats
    decisions: dict[str, str] = field(default_factory=dict)  # receiver's customer id → reason

    def check(self, what: str, result: str, ok: bool) -> None:
        self.steps.append(Step(what, result, ok))


class Issuer:
    """The issuer's side as the chapter drives it: iSTSi on the demo's ledger, the router and
    its context, on the Bitcoin chapter's custody (or a new one when run alone)."""

    def __init__(self, exchange: Exchange) -> None:
        self.exchange = exchange
        self.uow = exchange.database.uow
        shared = exchange.custody
        self.custody = shared if isinstance(shared, Custody) else Custody(exchange)
        ledger, world = exchange.ledger, exchange.world
        self.began = ledger.ledger_end(NODE)  # where the chapter's updates start
        party = ledger.allocate_party("issuer", ISSUER_NODE)
        create_istsi(ledger, party)
        self.issuer = (
            EmbeddedIssuerLedger(ledger, party)
            if isinstance(ledger, EmbeddedLedger)
            else RemoteIssuerLedger(ledger, party)
        )
        self.istsi: InstrumentId = self.issuer.instrument
        onboard_instrument(self.uow, self.istsi, transfer_kinds=("direct", "offer"))
        self.listed_address = self.custody.wallet.address_of(sender_script(LISTED_SENDER))
        assert self.listed_address is not None
        sanctions = write_sanctions(world.data_dir / SANCTIONS_DIR, self.listed_address)
        self.ctx = IssuanceContext(
            uow=self.uow,
            clock=exchange.clock,
            issuer=self.issuer,
            registry=KycRegistry(exchange.registry.settings, sanctions),
            wallet=self.custody.wallet,
            node=self.custody.node,
            treasury=world.treasury,
            bitcoin=bitcoin.SETTINGS,
        )
        self.router = IssuanceRouter(self.ctx, DEFINITIONS)
        now = exchange.clock()
        with self.uow() as uow:
            for customer in (CAROL, DAVE, ERIN):
                chosen = customer == DAVE
                uow.issuance.set_customer_party(
                    customer.id, self.party(customer), now, mint_to_party=chosen
                )
            uow.commit()

    def party(self, customer: Customer) -> str:
        return self.exchange.world.party_of[customer.id]

    def deposit(self, payments: list[tuple[Customer, int, int]]) -> list[str]:
        """Each ``(customer, sats, sender)``: ``sats`` from the sender's wallet (funded in one
        block first, so the deposit's input can be read) to the customer's deposit address, all
        in the next block. Answers the operation ids the deposits will have."""
        node = self.custody.node
        funding = node.fund_many(
            [(sender_script(sender), sats + SENDER_FEE_SATS) for _, sats, sender in payments]
        )
        self.custody.mine_and_watch()
        ids = []
        for vout, (customer, sats, _sender) in enumerate(payments):
            address = self.custody.address(customer)
            spend = [(bytes.fromhex(funding), vout, b"\x51", 0xFFFFFFFE)]
            txid = node.sendrawtransaction(build(spend, [(address, sats)]).serialize().hex())
            ids.append(deposit_operation_id(txid, 0))
        return ids

    def send(self, sender: str, receiver: str, sats: int) -> str:
        """A customer's wallet sends iSTSi to another party; answers the instruction's id."""
        result = self.exchange.ledger.transfer(
            sender, receiver, self.istsi, sats_to_amount(sats), reason="p2p"
        )
        assert result.instruction_cid is not None, "iSTSi transfers wait for the issuer"
        return result.instruction_cid

    def run(self, operation_id: str) -> IssuanceOperation:
        return self.router.run_operation(operation_id)

    def operation(self, operation_id: str) -> IssuanceOperation | None:
        with self.uow() as uow:
            return uow.issuance.get_operation(operation_id)

    def mint(self, operation_id: str) -> MintRecord | None:
        with self.uow() as uow:
            return uow.issuance.get_mint(mint_id(operation_id))

    def books(self, customer: Customer) -> int:
        """The customer's iSTSi on our books, in sats."""
        return self.account(customer_account_name(customer.id))

    def account(self, name: str) -> int:
        """An account's iSTSi on our books, in sats."""
        with self.uow() as uow:
            return amount_to_sats(uow.withdrawals.balance(AccountRef(name, self.istsi)))

    def on_ledger(self, party: str) -> int:
        held = held_on_ledger(self.exchange.ledger, party).get(self.istsi, ZERO)
        return amount_to_sats(held)

    def halted(self) -> bool:
        with self.uow() as uow:
            return uow.issuance.minting_state().minting_halted

    def mints_with_reason(self, operation_id: str) -> int:
        """The mints of iSTSi on the ledger carrying this operation's reason, read from the
        treasury's updates since the chapter began (not from sluice's records)."""
        reason = f"issuance:{operation_id}"
        world = self.exchange.world
        found = 0
        for item in world.reader(self.exchange.ledger).updates(world.treasury, self.began):
            transaction = item["update"].get("Transaction")
            for event in transaction["value"]["events"] if transaction else ():
                exercised = event.get("ExercisedEvent", {})
                if exercised.get("choice") != "RegistryRules_Mint":
                    continue
                meta = exercised["choiceArgument"].get("meta") or {}
                found += meta.get("values", {}).get(REASON_KEY) == reason
        return found


def minted_at_six(issuer: Issuer, story: IssuanceStory) -> list[str]:
    """Alice's and Bob's deposits: confirmed at 6, minted to the treasury, credited by
    ingestion."""
    ids = issuer.deposit([(c, sats, n + 1) for n, (c, sats) in enumerate(TREASURY_DEPOSITS)])
    story.ids += ids
    issuer.custody.mine_and_watch(CONFIRMATIONS - 1)
    before_six = [issuer.operation(op_id) for op_id in ids]
    issuer.custody.mine_and_watch()
    opened = [issuer.operation(op_id) is not None for op_id in ids]
    waiting = [issuer.run(op_id) for op_id in ids]
    issuer.exchange.ledger.advance(STEP_S)
    issuer.exchange.ingest()
    done = [issuer.run(op_id) for op_id in ids]
    mints = [issuer.mint(op_id) for op_id in ids]
    books = [issuer.books(c) for c, _ in TREASURY_DEPOSITS]
    names = ", ".join(f"{c.name} {btc(s)}" for c, s in TREASURY_DEPOSITS)
    credited = ", ".join(
        f"{c.name} {sats_text(b)} iSTSi" for (c, _), b in zip(TREASURY_DEPOSITS, books, strict=True)
    )
    story.check(
        f"deposits from the customers' own wallets: {names}",
        f"no operation at {CONFIRMATIONS - 1} confirmations; at {CONFIRMATIONS} the watcher "
        "opens one each; the router: kyc → reserve → mint guard → mint to the treasury, then "
        f"waits ({', '.join(f'{w.status} at {w.step}' for w in waiting)}) until ingestion "
        f"credits it: {credited}",
        before_six == [None, None]
        and opened == [True, True]
        and [(w.status, w.step) for w in waiting] == [("waiting", "credit")] * 2
        and [d.status for d in done] == ["completed"] * 2
        and all(m is not None and m.credited for m in mints)
        and books == [s for _, s in TREASURY_DEPOSITS],
    )
    return ids


def reorg_mints_once(issuer: Issuer, story: IssuanceStory, ids: list[str]) -> None:
    """A reorg takes both minted deposits off the chain; they come back; nothing twice."""
    node, custody = issuer.custody.node, issuer.custody
    supply = issuer.issuer.supply()
    (height,) = {d.block_height for d in list_deposits(issuer.uow) if d.txid in _txids(ids)}
    assert height is not None
    depth = node.tip_height - height + 1
    node.reorg(depth)
    tick = custody.watcher.run_once()
    halted = issuer.halted()
    with issuer.uow() as uow:
        critical = [a.kind for a in uow.books.alerts() if a.severity == "critical"]
    custody.mine_and_watch()
    again = [issuer.run(op_id) for op_id in ids]
    statuses = {d.txid: d.status for d in list_deposits(issuer.uow) if d.txid in _txids(ids)}
    with issuer.uow() as uow:
        operations = [
            op for op in uow.issuance.operations(type="bitcoin_deposit") if op.id in set(ids)
        ]
    for op_id in ids:
        story.minted[op_id] = issuer.mints_with_reason(op_id)
    resume_minting(
        issuer.uow,
        reason="the deposits are back on the new branch; reserves re-checked",
        actor=OFFICER,
        at=issuer.exchange.clock(),
    )
    story.check(
        f"a reorg {depth} blocks deep takes both minted deposits off the chain; the new branch "
        "has them again",
        f"{tick.reorgs} reorg seen: minting halted ({', '.join(sorted(set(critical)))}); the "
        f"same outpoints back, {', '.join(sorted(set(statuses.values())))}; "
        f"{len(operations)} operations, each minted once on the ledger "
        f"(supply {sats_text(issuer.issuer.supply())}); the officer resumes minting",
        tick.reorgs == 1
        and halted
        and bool(critical)
        and len(operations) == 2
        and [op.status for op in again] == ["completed"] * 2
        and set(statuses.values()) == {"credited"}
        and list(story.minted.values()) == [1, 1]
        and issuer.issuer.supply() == supply
        and not issuer.halted(),
    )


def _txids(ids: list[str]) -> set[str]:
    return {op_id.split(":")[1] for op_id in ids}


def own_party_and_listed(issuer: Issuer, story: IssuanceStory) -> None:
    """Dave's deposit minted to his own party; Erin's, from a sanctioned address, held."""
    dave_id, erin_id = issuer.deposit(
        [(DAVE, OWN_PARTY_SATS, 4), (ERIN, LISTED_SATS, LISTED_SENDER)]
    )
    story.ids += [dave_id, erin_id]
    issuer.custody.mine_and_watch(CONFIRMATIONS)
    dave_op, erin_op = issuer.run(dave_id), issuer.run(erin_id)
    dave_party = issuer.on_ledger(issuer.party(DAVE))
    story.check(
        f"{DAVE.name} (iSTSi to his own party) deposits {btc(OWN_PARTY_SATS)}; {ERIN.name} "
        f"deposits {btc(LISTED_SATS)} sent from {issuer.listed_address}",
        f"{DAVE.name}: {dave_op.status}, {sats_text(dave_party)} iSTSi on his party (no books); "
        f"{ERIN.name}: {erin_op.status} at {erin_op.step} — {erin_op.last_error}; nothing "
        "minted, a review item for the officer",
        dave_op.status == "completed"
        and dave_party == OWN_PARTY_SATS
        and issuer.books(DAVE) == 0
        and erin_op.status == "held"
        and erin_op.step == "kyc"
        and issuer.mint(erin_id) is None,
    )


def redeemed_in_one_batch(issuer: Issuer, story: IssuanceStory) -> None:
    """Alice and Bob redeem; both payouts leave in one 2-of-3 transaction."""
    custody = issuer.custody
    ops = [
        request_redemption(
            issuer.ctx,
            customer_id=customer.id,
            amount_sats=sats,
            address=outside_address(custody.wallet, f"redeem-{customer.id}"),
            idempotency_key="demo-redeem-1",
            actor=f"customer:{customer.id}",
        )
        for customer, sats in REDEMPTIONS
    ]
    story.ids += [op.id for op in ops]
    in_flight = issuer.account(IN_FLIGHT)
    moved = [issuer.run(op.id) for op in ops]
    issuer.exchange.ledger.advance(STEP_S)
    issuer.exchange.ingest()  # the burns
    worker = custody.worker()
    worker.run_once()
    custody.mine_and_watch()
    worker.run_once()
    custody.mine_and_watch(CONFIRMATIONS - 1)
    worker.run_once()
    done = [issuer.run(op.id) for op in ops]
    payouts = [get_payout(issuer.uow, payout_id_of(op.id)) for op in ops]
    story.payouts = [p for p in payouts if p is not None]
    received = [op.result.get("received_sats") for op in done]
    books = [issuer.books(c) for c, _ in REDEMPTIONS]
    expected_books = [
        minted - redeemed
        for (_, minted), (_, redeemed) in zip(TREASURY_DEPOSITS, REDEMPTIONS, strict=True)
    ]
    story.check(
        "redemptions: "
        + ", ".join(f"{c.name} {btc(s)}" for c, s in REDEMPTIONS)
        + " to their own addresses",
        f"iSTSi taken ({sats_text(in_flight)} in flight), burned "
        f"({', '.join(f'{m.status} at {m.step}' for m in moved)}); "
        f"{len(story.payouts)} payouts in {len({p.batch_id for p in story.payouts})} batch, "
        f"completed at {CONFIRMATIONS}; received "
        f"{', '.join(sats_text(r) if isinstance(r, int) else '?' for r in received)} "
        "(fee deducted); balances "
        + ", ".join(
            f"{c.name} {sats_text(b)}" for (c, _), b in zip(REDEMPTIONS, books, strict=True)
        ),
        in_flight == sum(s for _, s in REDEMPTIONS)
        and [(m.status, m.step) for m in moved] == [("waiting", "confirm")] * 2
        and [op.status for op in done] == ["completed"] * 2
        and len(story.payouts) == 2
        and len({p.batch_id for p in story.payouts}) == 1
        and all(p.status == "completed" for p in story.payouts)
        and received == [p.amount_sats - (p.fee_sats or 0) for p in story.payouts]
        and books == expected_books
        and issuer.account(IN_FLIGHT) == 0,
    )


def transfers_held_for_kyc(issuer: Issuer, story: IssuanceStory) -> None:
    """Dave → Carol held and approved; Dave → Erin, frozen, rejected."""
    ledger, clock = issuer.exchange.ledger, issuer.exchange.clock
    dave, carol, erin = (issuer.party(c) for c in (DAVE, CAROL, ERIN))
    to_carol = issuer.send(dave, carol, TO_CAROL_SATS)
    held = {t.instruction_cid for t in issuer.issuer.held_transfers()}
    freeze_customer(
        issuer.uow, ERIN.id, actor=OFFICER, at=clock(), reason="deposit from a sanctioned address"
    )
    to_erin = issuer.send(dave, erin, TO_ERIN_SATS)
    tick = decide_held_transfers(issuer.ctx)
    offers = [i for i in ledger.active_instructions(carol) if i.contract_id != to_carol]
    for offer in offers:
        ledger.accept(offer.contract_id, carol)
    with issuer.uow() as uow:
        decided = {d.instruction_cid: d for d in uow.issuance.decisions()}
    story.decisions = {
        CAROL.id: decided[to_carol].reason if to_carol in decided else "undecided",
        ERIN.id: decided[to_erin].reason if to_erin in decided else "undecided",
    }
    story.held_on_parties = {c.id: issuer.on_ledger(issuer.party(c)) for c in (DAVE, CAROL, ERIN)}
    story.check(
        f"{DAVE.name} sends {sats_text(TO_CAROL_SATS)} iSTSi to {CAROL.name}'s party",
        f"held for KYC ({'pending_internal_workflow' if to_carol in held else 'not held'}); the "
        f"KYC hold worker: {story.decisions[CAROL.id]}; {CAROL.name} accepts, holds "
        f"{sats_text(story.held_on_parties[CAROL.id])}",
        to_carol in held
        and decided.get(to_carol) is not None
        and decided[to_carol].approve
        and len(offers) == 1
        and story.held_on_parties[CAROL.id] == TO_CAROL_SATS,
    )
    story.check(
        f"the officer freezes {ERIN.name}; {DAVE.name} sends her {sats_text(TO_ERIN_SATS)}",
        f"rejected — {story.decisions[ERIN.id]}; {DAVE.name}'s holding unlocked "
        f"({sats_text(story.held_on_parties[DAVE.id])} left), {ERIN.name} holds "
        f"{sats_text(story.held_on_parties[ERIN.id])}",
        tick.approved == 1
        and tick.rejected == 1
        and decided.get(to_erin) is not None
        and not decided[to_erin].approve
        and "frozen" in decided[to_erin].reason
        and story.held_on_parties[DAVE.id] == OWN_PARTY_SATS - TO_CAROL_SATS
        and story.held_on_parties[ERIN.id] == 0,
    )


def guard(issuer: Issuer, story: IssuanceStory) -> None:
    """The mint guard's figures, and the treasury's iSTSi against the customers' on our books."""
    story.guard = figures = guard_status(issuer.ctx)
    treasury = issuer.on_ledger(issuer.exchange.world.treasury)
    on_books = sum(issuer.books(c) for c in CUSTOMERS)
    parties = sum(story.held_on_parties.values())
    with issuer.uow() as uow:
        story.operations = uow.issuance.operations()
    invariant = check_invariant(issuer.uow)
    minted = sum(s for _, s in TREASURY_DEPOSITS) + OWN_PARTY_SATS
    burned = sum(s for _, s in REDEMPTIONS)
    story.check(
        "sluice issuance guard",
        f"supply {sats_text(figures['supply_sats'])} (ledger "
        f"{sats_text(figures['ledger_supply_sats'])}) ≤ reserves "
        f"{sats_text(figures['reserves_sats'])} − pending redemptions "
        f"{sats_text(figures['pending_redemptions_sats'])}; headroom "
        f"{sats_text(figures['headroom_sats'])}; minting "
        + ("halted" if figures["minting_halted"] else "on"),
        figures["supply_sats"] == figures["ledger_supply_sats"] == minted - burned
        and figures["supply_sats"] <= figures["reserves_sats"] - figures["pending_redemptions_sats"]
        and figures["headroom_sats"] >= 0
        and not figures["minting_halted"],
    )
    story.check(
        "the treasury's iSTSi on the ledger against the customers' on our books",
        f"{sats_text(treasury)} = {sats_text(on_books)} (customers' accounts); customers' own "
        f"parties {sats_text(parties)}; books invariant "
        + ("holds" if invariant.holds else "BROKEN"),
        treasury == on_books
        and treasury + parties == figures["ledger_supply_sats"]
        and invariant.holds,
    )


def run(exchange: Exchange, status: Status) -> IssuanceStory:
    story = IssuanceStory({c.id: c.name for c in CUSTOMERS})
    with (
        status("iSTSi: deposits minted, a reorg, a held deposit, redemptions, held transfers…"),
        bitcoin.custody_log(exchange.world.data_dir / bitcoin.LOG_FILE),
    ):
        issuer = Issuer(exchange)
        ids = minted_at_six(issuer, story)
        reorg_mints_once(issuer, story, ids)
        own_party_and_listed(issuer, story)
        redeemed_in_one_batch(issuer, story)
        transfers_held_for_kyc(issuer, story)
        guard(issuer, story)
    return story


def show(console: Console, story: IssuanceStory, sections: Sections) -> bool:
    steps = Table(
        title=f"{sections.next()}. iSTSi issuance: Bitcoin in, iSTSi minted; iSTSi redeemed, "
        "Bitcoin out",
        title_justify="left",
    )
    for column in ("step", "result", ""):
        steps.add_column(column)
    for step in story.steps:
        steps.add_row(step.what, step.result, mark(step.ok))
    console.print()
    console.print(steps)

    operations = Table(title=f"{sections.next()}. iSTSi operations", title_justify="left")
    for column in ("operation", "type", "customer", "amount", "status", "step"):
        operations.add_column(column)
    by_id = {op.id: op for op in story.operations}
    for op in (by_id[op_id] for op_id in story.ids if op_id in by_id):
        shown = op.id if len(op.id) < 40 else f"{op.id[:32]}…:{op.id.rsplit(':', 1)[1]}"
        operations.add_row(
            shown,
            op.type,
            story.names.get(op.customer_id, op.customer_id),
            sats_text(op.amount_sats),
            op.status,
            op.step,
        )
    earlier = len(by_id.keys() - set(story.ids))
    if earlier:
        operations.caption = (
            f"not shown: {earlier} deposit operation(s) the watcher opened in the custody "
            "chapter, not run here"
        )
    console.print()
    console.print(operations)

    figures = story.guard
    guard_table = Table(title=f"{sections.next()}. iSTSi mint guard", title_justify="left")
    for column in ("supply", "reserves", "pending redemptions", "headroom", "minting"):
        guard_table.add_column(column, justify="right")
    if figures:
        guard_table.add_row(
            f"{to_coins(figures['supply_sats']):.8f} iSTSi",
            btc(figures["reserves_sats"]),
            btc(figures["pending_redemptions_sats"]),
            btc(figures["headroom_sats"]),
            "halted" if figures["minting_halted"] else "on",
        )
    guard_table.caption = (
        "a mint is allowed while supply + the mint ≤ confirmed reserves − pending redemptions "
        "(1 iSTSi = 1 BTC)"
    )
    console.print()
    console.print(guard_table)
    return bool(story.steps) and all(step.ok for step in story.steps)


CHAPTER: Chapter[IssuanceStory] = Chapter("iSTSi issuance", run, show)
