"""Chapter: the cross-token exchange — iSTSi swapped for Canton Coin at oracle prices, and a
price feed going stale mid-chapter.

It goes on from the issuance chapter, where Alice and Bob were credited iSTSi. The oracle reads
price files in the data folder (``prices/``), configured in ``exchange.toml`` as a real
deployment would be: ``ISTSI/USD`` and ``CC/USD``, each with a secondary source, and ``ISTSI/CC``
crossed from them; the exchange prices iSTSi → Amulet by ``ISTSI/CC``. The ledger's clock is the
oracle's, so prices age as the ledger's time moves.

* **Inventory.** The exchange's desk sends 20,000 CC of its own to the treasury with no reason:
  ingestion books it to suspense. An operator proposes funding the exchange's inventory from it
  (``exchange.inventory.fund``) and a second member of staff approves: the inventory holds it.
* **A quote and a swap.** Alice asks to sell 0.02 iSTSi: the rate, the fee (0.3 % on a healthy
  oracle), the price impact of the depth curve, what she receives, the minimum and the expiry.
  She executes it: one journal transaction, audited, with its event; executing the same quote
  again answers the same swap and moves nothing.
* **The CC/USD feed goes stale.** The ledger's clock moves 100 s and the primary CC/USD file is
  not updated (its secondary is): ``stale`` is recorded, ISTSI/CC is ``degraded`` and Bob's quote
  carries the fallback fee (0.5 %). Then the secondary stops too: ``offline``, and Bob's quote and
  his swap of the earlier quote are refused (80), nothing moved. Both sources update and agree:
  back on the primary, ``healthy``.
* **Refusals.** Bob's earlier quote has expired (81). A new quote, then CC rises 3 % before he
  executes it with the quoted amount as his minimum: refused (82). A fresh quote executes.
* The books balance with the inventory counted, and every swap has its audit record and event.

Deterministic: the prices, amounts and clock steps are fixed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from pathlib import Path

from rich.console import Console
from rich.table import Table

from sluice.config import load_config
from sluice.demo.bitcoin import Step
from sluice.demo.issuance import ALICE, BOB
from sluice.demo.report import Chapter, Sections, Status, mark
from sluice.demo.world import Exchange
from sluice.domain.access import Principal
from sluice.domain.errors import SluiceError
from sluice.domain.exchange import EXCHANGE_INVENTORY, Quote
from sluice.domain.journal import FEES, AccountRef, customer_account_name
from sluice.domain.ledger import InstrumentId
from sluice.oracle.feeds import FeedReader
from sluice.ports import SuspenseItem
from sluice.services.approvals import propose_operation, vote_on_approval
from sluice.services.books import check_invariant
from sluice.services.exchange import ExchangeContext, execute_swap, request_quote
from sluice.services.exchange_inventory import OPERATION, fund_inventory
from sluice.services.oracle import OracleService
from sluice.services.reserves import find_istsi
from sluice.services.suspense import list_suspense

DESK = "exchange-desk"  # the exchange's own wallet, which funds the inventory
DESK_TAP = Decimal(50_000)
FUNDING = Decimal(20_000)
OPERATOR = Principal(id="demo-operator", role="operator")
TREASURER = Principal(id="demo-treasurer", role="system_admin")
SALE = Decimal("0.02")  # iSTSi Alice sells
BOB_SALE = Decimal("0.01")
ISTSI_USD = Decimal("97000")
CC_USD = Decimal("0.25")
STALE_STEP_S = 100.0  # past the feeds' heartbeat (60 s) plus margin (30 s)
LIFETIME_S = 120  # a quote made as a feed goes stale outlives the next step
PRICES = "prices"
FEEDS = ("istsi-usd", "istsi-usd-secondary", "cc-usd", "cc-usd-secondary")
CONFIG = """\
[oracle]
heartbeat_margin_s = 30
{feeds}
[[oracle.feeds]]
pair = "ISTSI/CC"
kind = "crossed"
legs = ["ISTSI/USD", "CC/USD"]
decimals = 8

[exchange]
fee_rate = "0.003"
fallback_fee_rate = "0.005"
quote_lifetime_s = {lifetime}
slippage = "0.005"

[[exchange.pairs]]
sell = "iSTSi"
buy = "Amulet"
oracle_pair = "ISTSI/CC"

[[exchange.depth_curve]]
amount = "0.01"
impact = "0.001"

[[exchange.depth_curve]]
amount = "0.1"
impact = "0.01"
"""
FEED = """
[[oracle.feeds]]
pair = "{pair}"
kind = "file"
path = "{folder}/{name}.json"
price_pointer = "/price"
time_pointer = "/time"
round_pointer = "/round"
decimals = 8
heartbeat_s = 60
secondary = {{ kind = "file", path = "{folder}/{name}-secondary.json", price_pointer = "/price", \
time_pointer = "/time" }}
"""


@dataclass(slots=True)
class ExchangeStory:
    """What the chapter did and saw."""

    steps: list[Step] = field(default_factory=list)
    quote: Quote | None = None
    health: list[tuple[str, str, str]] = field(default_factory=list)  # when, ISTSI/CC, source
    inventory: dict[str, Decimal] = field(default_factory=dict)
    balances: dict[str, tuple[Decimal, Decimal]] = field(default_factory=dict)  # iSTSi, CC
    rejections: dict[str, int] = field(default_factory=dict)  # rule → count

    def check(self, what: str, result: str, ok: bool) -> None:
        self.steps.append(Step(what, result, ok))


@dataclass(slots=True)
class _Feeds:
    """The price files, written at the ledger's time."""

    folder: Path
    rounds: int = 0

    def write(self, name: str, price: Decimal, at: datetime) -> None:
        self.rounds += 1
        body = {"price": str(price), "time": at.isoformat(), "round": self.rounds}
        (self.folder / f"{name}.json").write_text(json.dumps(body))

    def publish(self, at: datetime, *names: str, cc: Decimal = CC_USD) -> None:
        for name in names:
            self.write(name, ISTSI_USD if name.startswith("istsi") else cc, at)


def _configure(exchange: Exchange) -> tuple[ExchangeContext, _Feeds]:
    folder = exchange.world.data_dir / PRICES
    folder.mkdir(parents=True, exist_ok=True)
    feeds = "".join(
        FEED.format(pair=pair, folder=folder, name=name)
        for pair, name in (("ISTSI/USD", "istsi-usd"), ("CC/USD", "cc-usd"))
    )
    path = exchange.world.data_dir / "exchange.toml"
    path.write_text(CONFIG.format(feeds=feeds, lifetime=LIFETIME_S))
    config = load_config(path, environ={})
    oracle = OracleService(
        exchange.database.uow,
        FeedReader(timeout_s=config.oracle.timeout_s),
        config.oracle.specs(),
        limits=config.oracle.limits(),
        clock=exchange.clock,
    )
    ctx = ExchangeContext(
        uow=exchange.database.uow,
        clock=exchange.clock,
        oracle=oracle,
        registry=exchange.registry,
        settings=config.exchange.settings(),
    )
    return ctx, _Feeds(folder)


def _fund(exchange: Exchange, story: ExchangeStory) -> None:
    """The desk's deposit lands in suspense; funding it takes an operator and a treasurer."""
    ledger, world = exchange.ledger, exchange.world
    desk = ledger.allocate_party(DESK, "wallets")
    ledger.tap(desk, world.coin, DESK_TAP)
    ledger.transfer(desk, world.treasury, world.coin, FUNDING, reason=None, expect_kind="direct")
    exchange.ingest()
    items = [i for i in list_suspense(exchange.database.uow, limit=1000) if i.sender == desk]
    story.check(
        "the desk sends 20,000 CC with no reason",
        f"in suspense: {len(items)} deposit of {items[0].amount:,.0f} CC" if items else "missing",
        len(items) == 1 and items[0].amount == FUNDING,
    )
    if not items:
        return
    item: SuspenseItem = items[0]

    def run(approval, at):  # type: ignore[no-untyped-def]
        funded = fund_inventory(
            exchange.database.uow,
            str(approval.parameters["item_id"]),
            actor=f"approval:{approval.id}",
            at=at,
            approval_id=approval.id,
            reason=approval.reason,
        )
        return {"item_id": funded.id, "assigned_to": funded.assigned_to}

    executors = {OPERATION: run}
    proposal = propose_operation(
        exchange.database.uow,
        operation=OPERATION,
        parameters={"item_id": item.id, "amount": str(item.amount)},
        proposer=OPERATOR,
        at=exchange.clock(),
        required=2,
        executors=executors,
        reason="the exchange's market-making float",
    )
    before = _account(exchange, EXCHANGE_INVENTORY, world.coin)
    done = vote_on_approval(
        exchange.database.uow,
        proposal.id,
        principal=TREASURER,
        decision="approve",
        at=exchange.clock(),
        executors=executors,
    )
    after = _account(exchange, EXCHANGE_INVENTORY, world.coin)
    story.check(
        f"{OPERATION}: proposed by the operator, approved by the treasurer",
        f"{proposal.status} → {done.status}; inventory {before:,.0f} → {after:,.0f} CC",
        (proposal.status, done.status) == ("pending", "executed") and after - before == FUNDING,
    )


def _account(exchange: Exchange, name: str, instrument: InstrumentId) -> Decimal:
    with exchange.database.uow() as uow:
        return uow.withdrawals.balance(AccountRef(name, instrument))


def _health(ctx: ExchangeContext, story: ExchangeStory, when: str) -> str:
    ctx.oracle.refresh()
    status = {feed.pair: feed for feed in ctx.oracle.oracle_status().feeds}
    crossed = status["ISTSI/CC"]
    cc = status["CC/USD"]
    story.health.append((when, str(crossed.health), f"CC/USD on {cc.source or '—'}"))
    return str(crossed.health)


def _refused(what: str, story: ExchangeStory, code: int, call: object) -> None:
    try:
        call()  # type: ignore[operator]
    except SluiceError as exc:
        story.check(what, f"refused: {exc.code} {exc.error}", exc.code == code)
        return
    story.check(what, "not refused", False)


def run(exchange: Exchange, status: Status) -> ExchangeStory:
    story = ExchangeStory()
    uow = exchange.database.uow
    with uow() as session:
        istsi = find_istsi(session, exchange.clock())
    if istsi is None:
        story.check("iSTSi onboarded", "not found: the issuance chapter did not run", False)
        return story
    coin = exchange.world.coin
    with status("the exchange: inventory, quotes, swaps, a stale feed…"):
        _fund(exchange, story)
        ctx, feeds = _configure(exchange)
        try:
            _swaps(exchange, ctx, feeds, story, istsi)
        finally:
            ctx.oracle.close()
        exchange.ingest()  # the checkpoints the clock's moves made: the cursor at the ledger end
    for customer in (ALICE, BOB):
        name = customer_account_name(customer.id)
        story.balances[customer.name] = (
            _account(exchange, name, istsi),
            _account(exchange, name, coin),
        )
    story.inventory = {
        "iSTSi": _account(exchange, EXCHANGE_INVENTORY, istsi),
        "CC": _account(exchange, EXCHANGE_INVENTORY, coin),
        "fees (CC)": _account(exchange, FEES, coin),
    }
    for rejection in ctx.oracle.rejections(limit=1000):
        story.rejections[rejection.rule] = story.rejections.get(rejection.rule, 0) + 1
    books = check_invariant(uow)
    story.check(
        "the books, the inventory counted",
        "balance" if books.holds else "; ".join(books.problems),
        books.holds,
    )
    return story


def _swaps(
    exchange: Exchange,
    ctx: ExchangeContext,
    feeds: _Feeds,
    story: ExchangeStory,
    istsi: InstrumentId,
) -> None:
    coin = exchange.world.coin
    feeds.publish(exchange.clock(), *FEEDS)
    _health(ctx, story, "prices published")
    quote = request_quote(ctx, customer_id=ALICE.id, sell=istsi, buy=coin, sell_amount=SALE)
    story.quote = quote
    story.check(
        f"Alice quotes {SALE} iSTSi → CC",
        f"{quote.received:,.2f} CC at {quote.rate:,.2f} (fee {quote.fee_rate:%} "
        f"{quote.fee_kind}), at least {quote.minimum_received:,.2f}",
        quote.fee_kind == "oracle" and quote.received > quote.minimum_received > 0,
    )
    swap = execute_swap(ctx, quote.id, customer_id=ALICE.id, actor=f"customer:{ALICE.id}")
    story.check(
        "Alice executes it",
        f"received {swap.received:,.2f} CC, journal {swap.journal_transaction_id}",
        swap.received >= swap.minimum_received and swap.sell_amount == SALE,
    )
    alice_cc = _account(exchange, customer_account_name(ALICE.id), coin)
    again = execute_swap(ctx, quote.id, customer_id=ALICE.id, actor=f"customer:{ALICE.id}")
    story.check(
        "the same quote again",
        "the same swap; nothing moved",
        again == swap and _account(exchange, customer_account_name(ALICE.id), coin) == alice_cc,
    )

    # The primary CC/USD source stops publishing; its secondary goes on.
    exchange.ledger.advance(STALE_STEP_S)
    feeds.publish(exchange.clock(), "istsi-usd", "istsi-usd-secondary", "cc-usd-secondary")
    health = _health(ctx, story, "CC/USD primary stale")
    degraded = request_quote(ctx, customer_id=BOB.id, sell=istsi, buy=coin, sell_amount=BOB_SALE)
    story.check(
        "the CC/USD primary goes stale: Bob quotes",
        f"ISTSI/CC {health}; fee {degraded.fee_rate:%} ({degraded.fee_kind})",
        health == "degraded" and degraded.fee_kind == "fallback",
    )
    # Its secondary stops too: no usable CC/USD price.
    exchange.ledger.advance(STALE_STEP_S)
    feeds.publish(exchange.clock(), "istsi-usd", "istsi-usd-secondary")
    health = _health(ctx, story, "both CC/USD sources stale")
    story.check("the secondary stops too", f"ISTSI/CC {health}", health == "offline")
    bob_cc = _account(exchange, customer_account_name(BOB.id), coin)

    def quote_offline() -> object:
        return request_quote(ctx, customer_id=BOB.id, sell=istsi, buy=coin, sell_amount=BOB_SALE)

    def swap_offline() -> object:
        return execute_swap(ctx, degraded.id, customer_id=BOB.id, actor=f"customer:{BOB.id}")

    _refused("Bob quotes while offline", story, 80, quote_offline)
    _refused("Bob swaps his earlier quote while offline", story, 80, swap_offline)
    # Both sources publish again and agree: back on the primary.
    feeds.publish(exchange.clock(), *FEEDS)
    health = _health(ctx, story, "both CC/USD sources publish again")
    story.check("CC/USD publishes again", f"ISTSI/CC {health}", health == "healthy")

    exchange.ledger.advance(LIFETIME_S - STALE_STEP_S + 10)
    _refused("Bob's earlier quote, after its lifetime", story, 81, swap_offline)
    moved = request_quote(ctx, customer_id=BOB.id, sell=istsi, buy=coin, sell_amount=BOB_SALE)
    exchange.ledger.advance(5)
    feeds.publish(exchange.clock(), *FEEDS, cc=CC_USD * Decimal("1.03"))

    def swap_moved() -> object:
        return execute_swap(
            ctx,
            moved.id,
            customer_id=BOB.id,
            actor=f"customer:{BOB.id}",
            min_received=moved.received,
        )

    _refused("CC rises 3 %; Bob insists on the quoted amount", story, 82, swap_moved)
    story.check(
        "nothing moved for Bob",
        f"{_account(exchange, customer_account_name(BOB.id), coin):,.2f} CC",
        _account(exchange, customer_account_name(BOB.id), coin) == bob_cc,
    )
    fresh = request_quote(ctx, customer_id=BOB.id, sell=istsi, buy=coin, sell_amount=BOB_SALE)
    done = execute_swap(ctx, fresh.id, customer_id=BOB.id, actor=f"customer:{BOB.id}")
    story.check(
        "a fresh quote executes",
        f"received {done.received:,.2f} CC at {done.rate:,.2f}",
        done.received >= done.minimum_received,
    )


def show(console: Console, story: ExchangeStory, sections: Sections) -> bool:
    steps = Table(
        title=f"{sections.next()}. The exchange: iSTSi for Canton Coin at oracle prices",
        title_justify="left",
    )
    for column in ("step", "result", ""):
        steps.add_column(column)
    for step in story.steps:
        steps.add_row(step.what, step.result, mark(step.ok))
    console.print()
    console.print(steps)
    health = Table(title="oracle health (ISTSI/CC = ISTSI/USD ÷ CC/USD)", title_justify="left")
    for column in ("when", "ISTSI/CC", "CC/USD"):
        health.add_column(column)
    for row in story.health:
        health.add_row(*row)
    console.print(health)
    rejected = ", ".join(f"{rule} ×{count}" for rule, count in sorted(story.rejections.items()))
    console.print(f"  rejections recorded: {rejected or 'none'}", markup=False, highlight=False)
    books = Table(title="after the swaps", title_justify="left")
    for column in ("account", "iSTSi", "CC"):
        books.add_column(column, justify="right" if column != "account" else "left")
    for name, (istsi, cc) in story.balances.items():
        books.add_row(name, f"{istsi:.8f}", f"{cc:,.2f}")
    books.add_row(
        "exchange inventory",
        f"{story.inventory.get('iSTSi', Decimal(0)):.8f}",
        f"{story.inventory.get('CC', Decimal(0)):,.2f}",
    )
    books.add_row("fees", "", f"{story.inventory.get('fees (CC)', Decimal(0)):,.2f}")
    console.print(books)
    return bool(story.steps) and all(step.ok for step in story.steps)


CHAPTER: Chapter[ExchangeStory] = Chapter("the cross-token exchange", run, show)
