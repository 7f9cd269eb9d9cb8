"""The price oracle and the cross-token exchange (issue 19), as customers and the exchange's
operator use them, over feeds whose sources the run's random source drives (no network).

* **The feeds move** (:func:`tick`): each pair (Canton Coin/USDX, iSTSi/Canton Coin) has a
  primary and a secondary source; a tick moves the price a little (within a band around the
  feed's base) and stamps both sources with the ledger's time. Now and then the primary serves a
  bad reading instead — a jump beyond the 50 % rule, a stale, future, zero-time, non-positive or
  pinned price, a round going backwards, or nothing at all (unreachable, malformed) — and the
  secondary diverges by more than 5 % (the oracle falls back to it: degraded, at the fallback
  fee), goes stale or cannot be reached; with both failing the oracle is offline. Between ticks
  the readings age with the clock, and go stale.
* **Customers quote and swap** (:func:`quote_and_swap`, :func:`swap_later`): a quote is executed
  at once, or from an earlier step (often expired by then), or again under the same quote id
  (the first swap must come back, nothing moves twice); some with a minimum received as tight as
  the quote's own (refused when the price moved down in between), some for more than the
  customer's balance or beyond their KYC exchange limits (tier 1 by the day, the last customer
  on tier 2 by the 30 days). The exchange's commits may crash before they happen (a crash
  mid-swap) and the actor may die after a swap committed, before it learns of it; the quote is
  then executed again later.
* **The inventory is funded** (:func:`house_deposit`, :func:`fund`): the exchange's own wallet on
  the ledger (the *house*) sends Canton Coin to the treasury with no reason; once ingestion booked
  it to suspense, the operator funds the inventory from it
  (:func:`sluice.services.exchange_inventory.fund_inventory`, now and then twice). USDX
  inventory comes only from what customers sell: buying it is refused for inventory until
  someone sold some. iSTSi is sold for Canton Coin, never bought (see :func:`_directions`).

Every refused swap is checked on the spot to have moved nothing (no balance, no KYC usage, no
swap row, no journal transaction); the other checks (:mod:`sluice.sim.exchange_invariants`) run
after every step.
"""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from sluice.domain.errors import (
    ComplianceError,
    InsufficientBalanceError,
    InsufficientInventoryError,
    OracleOfflineError,
    QuoteExpiredError,
    SlippageExceededError,
    SluiceError,
)
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.journal import SUSPENSE, AccountRef, customer_account_name
from sluice.domain.ledger import InstrumentId
from sluice.domain.oracle import FeedSpec, Observation, Reading, Rejection
from sluice.services.compliance_officer import change_tier, set_limits
from sluice.services.exchange import ExchangeContext, execute_swap, request_quote
from sluice.services.exchange_inventory import INVENTORY_ASSIGNEE, fund_inventory
from sluice.services.oracle import OracleService
from sluice.services.suspense import list_suspense
from sluice.sim.actors.actor import Action, Actor
from sluice.sim.actors.bitcoin import quiet, quietly
from sluice.sim.actors.customers import _send
from sluice.sim.actors.ingestion import ingest_everything
from sluice.sim.actors.issuance import world as issuance_world
from sluice.sim.actors.workers import run_deposit_worker
from sluice.sim.exchange_invariants import Footprint, check_moved_nothing, footprint
from sluice.sim.exchange_state import (
    ACTOR_NAME,
    BAND,
    EPOCH,
    HEARTBEAT_S,
    LIMITS,
    MONTHLY_TIER,
    ROUND_FLOOR,
    TIER_LIMITS,
    ExchangeWorld,
    FeedModel,
    FeedReadings,
    OpenQuote,
    SimPriceReader,
    keep,
    settings,
    source_spec,
    world_of,
)
from sluice.sim.faults import crash_point
from sluice.sim.state import DepositOffer, SimulationState
from sluice.store.unit_of_work import SqlUnitOfWork

HOUSE_TAP = Decimal(1_000_000)
HOUSE_DEPOSIT = (200, 2_000)  # Canton Coin per deposit
HOUSE_ATTEMPTS_MAX = 3  # of the house's commands, under the ledger's injected failures
PRIMARY_FAULT_SHARE = 0.35  # of ticks, those whose primary serves a bad reading
SECONDARY_FAULT_SHARE = 0.3
PRIMARY_FAULTS = (
    "jump",
    "jump",
    "stale",
    "future",
    "zero_time",
    "not_positive",
    "round_backwards",
    "at_bound",
    "unreachable",
    "malformed",
)
SECONDARY_FAULTS = ("divergent", "divergent", "unreachable", "stale")
# Of quotes and swaps: more than the balance, beyond the KYC limits, a minimum as tight as the
# quote's received, executed twice in a row.
OVER_BALANCE_SHARE = 0.1
OVER_LIMIT_SHARE = 0.07
TIGHT_SHARE = 0.12
OUTAGE_SHARE = 0.05  # the quote's feed fails before it is executed
TWICE_SHARE = 0.12
HOLDER_SHARE = 0.8  # of sales, those of an instrument the customer holds
FUND_AGAIN_SHARE = 0.1  # of fundings, those from a deposit already funded
DEPOSIT_FIRST_SHARE = 0.8
DEPOSIT_OFFER_SPAN_S = 900  # of those customers holding nothing to sell, who deposit first
PRICE_PLACES = Decimal("1e-8")
ITEMS_MAX = 1000  # suspense items read at once (a run makes far fewer)
REFUSALS: tuple[tuple[type[SluiceError], str], ...] = (
    (QuoteExpiredError, "expired"),
    (SlippageExceededError, "slippage"),
    (InsufficientInventoryError, "inventory"),
    (InsufficientBalanceError, "balance"),
    (OracleOfflineError, "oracle_offline"),
    (ComplianceError, "kyc"),
)


class CrashingUnitOfWork(SqlUnitOfWork):
    """The Integration DB as the exchange's commands use it: a commit may crash just before it
    happens (the transaction then rolls back: a crash mid-swap leaves nothing)."""

    def __init__(self, sim: SimulationState) -> None:
        super().__init__(sim.engine)
        self._sim = sim

    def commit(self) -> None:
        crash_point(self._sim, "exchange_before_commit")
        super().commit()


def world(sim: SimulationState) -> ExchangeWorld:
    """The run's exchange, made the first time one of its actions is drawn: the feeds at their
    base price (evaluated once, so every source has an accepted round), the pairs, the officer's
    exchange limits, the last customer on tier 2, and the house's wallet with its first
    deposit."""
    found = world_of(sim)
    if found is not None:
        return found
    sandbox = sim.sandbox
    istsi = issuance_world(sim).issuer.instrument
    coin, token = sandbox.coin, sandbox.token
    feeds = {
        "AMULET/USDX": FeedModel("AMULET/USDX", Decimal("0.5")),
        "ISTSI/AMULET": FeedModel("ISTSI/AMULET", Decimal(200_000)),
    }
    now = sandbox.clock()
    readings = {
        pair: FeedReadings(
            feed.base,
            Observation(feed.base, now, ROUND_FLOOR),
            Observation(feed.base, now),
        )
        for pair, feed in feeds.items()
    }
    exchange = keep(sim, ExchangeWorld(None, feeds, readings))
    sim.dirty = True  # the setup writes to the Integration DB, whichever action was drawn
    specs = {
        pair: FeedSpec(
            pair,
            "file",
            18,
            source_spec(pair, "primary", feed.bounds),
            source_spec(pair, "secondary", None),
        )
        for pair, feed in feeds.items()
    }
    uow = sandbox.database.uow
    oracle = OracleService(
        uow, SimPriceReader(exchange, sandbox.clock), specs, limits=LIMITS, clock=sandbox.clock
    )
    pairs = ((coin.id, token.id, "AMULET/USDX"), (istsi.id, coin.id, "ISTSI/AMULET"))
    exchange.ctx = ExchangeContext(
        lambda: CrashingUnitOfWork(sim), sandbox.clock, oracle, sandbox.compliance, settings(pairs)
    )
    with quiet():
        for pair in specs:
            oracle.current_price(pair)
    for tier, limits in TIER_LIMITS.items():
        set_limits(uow, tier, "exchange", limits, actor=ACTOR_NAME, at=now, reason="simulation")
    change_tier(uow, sim.customer_ids[-1], MONTHLY_TIER, actor=ACTOR_NAME, at=now, reason="sim")
    exchange.house = sim.ledger.allocate_party("house", "wallets")
    for _ in range(HOUSE_ATTEMPTS_MAX):
        if _send(sim, "house", lambda: sim.ledger.tap(exchange.house, coin, HOUSE_TAP)):
            break
    house_deposit(sim, exchange)  # the first float, for the first funding
    return exchange


def _context(exchange: ExchangeWorld) -> ExchangeContext:
    assert exchange.ctx is not None
    return exchange.ctx


# --- the feeds --------------------------------------------------------------------------------


def tick(sim: SimulationState) -> None:
    """One feed moves (see the module docstring)."""
    exchange = world(sim)
    move_feed(sim, exchange, sim.rng.choice(sorted(exchange.feeds)))


def move_feed(
    sim: SimulationState, exchange: ExchangeWorld, pair: str, *, outage: bool = False
) -> None:
    """``pair``'s price moves; ``outage``: both its sources fail (the oracle is offline)."""
    feed, readings = exchange.feeds[pair], exchange.readings[pair]
    rng, now = sim.rng, sim.ledger.time()
    low, high = feed.base * BAND[0], feed.base * BAND[1]
    move = Decimal(rng.randint(-300, 300)).scaleb(-4)
    price = min(max(readings.price * (1 + move), low), high).quantize(PRICE_PLACES)
    readings.price = price
    readings.round_id += 1
    nudge = Decimal(rng.randint(-100, 100)).scaleb(-4)
    second = min(max(price * (1 + nudge), low), high).quantize(PRICE_PLACES)
    primary: Reading = Observation(price, now, readings.round_id)
    secondary: Reading = Observation(second, now)
    outcomes = sim.result.outcomes
    if outage:
        primary = _bad_primary(sim, feed, readings, rng.choice(("unreachable", "stale")))
        secondary = _bad_secondary(sim, feed, price, rng.choice(("unreachable", "stale")))
        outcomes["oracle_outage"] += 1
    elif rng.random() < PRIMARY_FAULT_SHARE:
        fault = rng.choice(PRIMARY_FAULTS)
        primary = _bad_primary(sim, feed, readings, fault)
        outcomes[f"oracle_primary_{fault}"] += 1
    if not outage and rng.random() < SECONDARY_FAULT_SHARE:
        fault = rng.choice(SECONDARY_FAULTS)
        secondary = _bad_secondary(sim, feed, price, fault)
        outcomes[f"oracle_secondary_{fault}"] += 1
    readings.primary, readings.secondary = primary, secondary
    outcomes["oracle_ticks"] += 1


def _bad_primary(
    sim: SimulationState, feed: FeedModel, readings: FeedReadings, fault: str
) -> Reading:
    rng, now, price, round_id = sim.rng, sim.ledger.time(), readings.price, readings.round_id
    allowed_s = HEARTBEAT_S + LIMITS.heartbeat_margin_s
    if fault == "jump":
        # Beyond the band by enough to be over 50 % from any price in it.
        jumped = feed.base * (
            BAND[1] * Decimal("1.6") if rng.random() < 0.5 else BAND[0] * Decimal("0.45")
        )
        return Observation(jumped.quantize(PRICE_PLACES), now, round_id)
    if fault == "stale":
        return Observation(
            price, now - timedelta(seconds=allowed_s + rng.randint(1, 600)), round_id
        )
    if fault == "future":
        return Observation(price, now + timedelta(seconds=rng.randint(5, 600)), round_id)
    if fault == "zero_time":
        return Observation(price, EPOCH, round_id)
    if fault == "not_positive":
        return Observation(-price if rng.random() < 0.5 else Decimal(0), now, round_id)
    if fault == "round_backwards":
        return Observation(price, now, rng.randint(1, ROUND_FLOOR - 1))
    if fault == "at_bound":
        bounds = feed.bounds
        return Observation(bounds.high if rng.random() < 0.5 else bounds.low, now, round_id)
    if fault == "unreachable":
        return Rejection("unreachable", "the source did not answer in time")
    return Rejection("malformed", "the source's document has no price", "{}")


def _bad_secondary(sim: SimulationState, feed: FeedModel, price: Decimal, fault: str) -> Reading:
    now = sim.ledger.time()
    if fault == "divergent":
        # 8 % away (more than the 5 % allowed), on the side that stays in the band.
        up = price * Decimal("1.08")
        away = up if feed.in_band(up) else price * Decimal("0.92")
        return Observation(away.quantize(PRICE_PLACES), now)
    if fault == "unreachable":
        return Rejection("unreachable", "the secondary did not answer in time")
    stale_s = HEARTBEAT_S + LIMITS.heartbeat_margin_s + sim.rng.randint(1, 600)
    return Observation(price, now - timedelta(seconds=stale_s))


# --- quotes and swaps -------------------------------------------------------------------------


def _directions(sim: SimulationState) -> list[tuple[InstrumentId, InstrumentId]]:
    """What customers sell for what. Not Canton Coin for iSTSi: a swap books what it buys to
    the ledger's 10 places, finer than iSTSi's 8, and the reserves' readings and snapshots then
    refuse the books (seed 4, 200 steps, found it); until swaps round to the instrument's
    decimals, iSTSi is only sold here."""
    coin, token = sim.sandbox.coin, sim.sandbox.token
    istsi = issuance_world(sim).issuer.instrument
    return [(coin, token), (token, coin), (istsi, coin)]


def _balance(
    sim: SimulationState, holder: str, instrument: InstrumentId, *, own: bool = False
) -> Decimal:
    """A customer's balance of ``instrument`` (``own``: the account ``holder`` itself)."""
    name = holder if own else customer_account_name(holder)
    with sim.sandbox.database.uow() as uow:
        return uow.withdrawals.balance(AccountRef(name, instrument))


def _sale(sim: SimulationState, customer: str) -> tuple[InstrumentId, InstrumentId, Decimal]:
    """What the customer sells and buys, and how much: mostly something they hold (at most
    what they hold) for something the exchange has in stock, sometimes more than their balance
    or beyond their KYC limits."""
    rng = sim.rng
    directions = _directions(sim)
    if rng.random() < HOLDER_SHARE:
        stocked = [d for d in directions if _balance(sim, EXCHANGE_INVENTORY, d[1], own=True) > 0]
        held = [d for d in stocked if _balance(sim, customer, d[0]) > 0]
        if not held and stocked and rng.random() < DEPOSIT_FIRST_SHARE:
            held = _deposit_first(sim, customer, stocked)
        directions = held or stocked or directions
    sell, buy = rng.choice(directions)
    istsi = sell == issuance_world(sim).issuer.instrument
    amount = (
        Decimal(rng.randint(10_000, 300_000)).scaleb(-8)
        if istsi
        else Decimal(rng.randint(10_000, 600_000)).scaleb(-4)
    )
    roll = rng.random()
    balance = _balance(sim, customer, sell)
    outcomes = sim.result.outcomes
    if roll < OVER_BALANCE_SHARE:
        outcomes["swap_asked_over_balance"] += 1
        return sell, buy, balance + amount
    if roll < OVER_BALANCE_SHARE + OVER_LIMIT_SHARE and not istsi:
        outcomes["swap_asked_over_limits"] += 1
        limits = TIER_LIMITS[MONTHLY_TIER if customer == sim.customer_ids[-1] else 1]
        ceiling = limits.daily if limits.daily is not None else limits.monthly
        assert ceiling is not None
        return sell, buy, ceiling + amount
    return sell, buy, min(amount, balance) if balance > 0 else amount


def _deposit_first(
    sim: SimulationState, customer: str, stocked: list[tuple[InstrumentId, InstrumentId]]
) -> list[tuple[InstrumentId, InstrumentId]]:
    """The customer, holding nothing the exchange could buy, deposits something it does buy
    (their own account as reason: Canton Coin 1-step, USDX as an offer the deposit worker then
    answers) and ingestion takes it in: the directions they can now sell in."""
    sandbox = sim.sandbox
    sells = sorted({sell for sell, _ in stocked} & {sandbox.coin, sandbox.token})
    if not sells:
        return []
    instrument = sim.rng.choice(sells)
    amount = Decimal(sim.rng.randint(100_000, 2_000_000)).scaleb(-4)
    account = "acct-" + customer.removeprefix("cust-")
    party = sandbox.customers[customer]
    offer = instrument == sandbox.token
    expiry = sim.ledger.time() + timedelta(seconds=DEPOSIT_OFFER_SPAN_S) if offer else None
    committed = _send(
        sim,
        "customer",
        lambda: sim.ledger.transfer(
            party, sandbox.treasury, instrument, amount, reason=account, execute_before=expiry
        ),
    )
    if committed is None:
        return []
    sim.result.deposits += 1
    sim.result.outcomes["swap_deposit_first"] += 1
    credited = customer_account_name(customer)
    if offer and committed.instruction_cid is not None:
        cid = committed.instruction_cid
        sim.watch(committed)
        sim.deposit_offers[cid[-24:]] = DepositOffer(cid, customer, credited, instrument, amount)
        run_deposit_worker(sim)
        sim.absorb_completions()
    else:
        sim.add_sent(customer, instrument, amount)
        sim.watch(committed, credited, instrument, amount)
    ingest_everything(sim)
    return [d for d in stocked if _balance(sim, customer, d[0]) > 0]


def quote_and_swap(sim: SimulationState) -> None:
    """A customer asks for a quote and executes it at once (sometimes with a minimum as tight as
    the quote's received, the feed moving in between; sometimes after both the feed's sources
    failed; sometimes twice)."""
    exchange = world(sim)
    ctx = _context(exchange)
    customer = sim.rng.choice(sim.customer_ids)
    sell, buy, amount = _sale(sim, customer)
    try:
        quote = quietly(
            lambda: request_quote(ctx, customer_id=customer, sell=sell, buy=buy, sell_amount=amount)
        )
    except OracleOfflineError:
        sim.result.outcomes["quote_refused_oracle_offline"] += 1
        return
    sim.result.outcomes["quotes"] += 1
    if quote.fee_kind == "fallback":
        sim.result.outcomes["quote_fallback"] += 1
    exchange.open_quotes.append(OpenQuote(quote.id, customer))
    minimum = None
    pair = quote.oracle_pair
    roll = sim.rng.random()
    if roll < TIGHT_SHARE:
        sim.result.outcomes["swap_asked_tight"] += 1
        minimum = quote.received
        if sim.rng.random() < 0.5:
            move_feed(sim, exchange, pair)  # the price moves while the customer decides
    elif roll < TIGHT_SHARE + OUTAGE_SHARE:
        move_feed(sim, exchange, pair, outage=True)
    _execute(sim, exchange, OpenQuote(quote.id, customer), minimum)
    if sim.rng.random() < TWICE_SHARE:
        sim.result.outcomes["swap_asked_twice"] += 1
        _execute(sim, exchange, OpenQuote(quote.id, customer), None)


def swap_later(sim: SimulationState) -> None:
    """A customer executes a quote from an earlier step (often expired by now), or again one
    that was executed (the same swap must come back)."""
    exchange = world(sim)
    again = sim.rng.random() < 0.3 and exchange.executed
    pool = exchange.executed if again else exchange.open_quotes
    if not pool:
        return
    quote = sim.rng.choice(pool)
    sim.result.outcomes["swap_asked_again" if again else "swap_asked_later"] += 1
    _execute(sim, exchange, quote, None)


def _execute(
    sim: SimulationState, exchange: ExchangeWorld, quote: OpenQuote, minimum: Decimal | None
) -> None:
    ctx = _context(exchange)
    before = footprint(sim, quote.customer_id, quote.quote_id)
    exchange.running = quote.quote_id
    try:
        swap = quietly(
            lambda: execute_swap(
                ctx,
                quote.quote_id,
                customer_id=quote.customer_id,
                actor=ACTOR_NAME,
                min_received=minimum,
            )
        )
    except tuple(error for error, _ in REFUSALS) as exc:
        kind = next(name for error, name in REFUSALS if isinstance(exc, error))
        sim.result.outcomes[f"swap_refused_{kind}"] += 1
        _refused(sim, before, quote.quote_id, kind)
        if kind == "expired" and quote in exchange.open_quotes:
            exchange.open_quotes.remove(quote)  # the customer asks for a new one
        return
    finally:
        exchange.running = None
    crash_point(sim, "exchange_after_swap")
    outcomes = sim.result.outcomes
    if before.swapped:
        outcomes["swap_repeated"] += 1
    else:
        outcomes["swap_executed"] += 1
        if swap.fee_kind == "fallback":
            outcomes["swap_fallback"] += 1
        if swap.warnings:
            outcomes["swap_limit_warning"] += 1
    if quote in exchange.open_quotes:
        exchange.open_quotes.remove(quote)
    if quote not in exchange.executed:
        exchange.executed.append(quote)


def _refused(sim: SimulationState, before: Footprint, quote_id: str, kind: str) -> None:
    check_moved_nothing(sim, before, f"a swap of {quote_id} refused ({kind}) moved something")
    if before.swapped:
        sim.violation("exchange_once", f"{quote_id} was executed, yet executing it again: {kind}")


# --- the inventory ----------------------------------------------------------------------------


def house_deposit(sim: SimulationState, exchange: ExchangeWorld) -> None:
    """The house sends Canton Coin to the treasury with no reason: suspense, once ingested."""
    coin = sim.sandbox.coin
    amount = Decimal(sim.rng.randint(*HOUSE_DEPOSIT))
    for _ in range(HOUSE_ATTEMPTS_MAX):  # the operator tries again after a rejection
        committed = _send(
            sim,
            "house",
            lambda: sim.ledger.transfer(exchange.house, sim.sandbox.treasury, coin, amount),
        )
        if committed is not None:
            break
    else:
        return
    exchange.house_deposits[committed.update_id] = (coin.id, amount)
    sim.watch(committed, SUSPENSE, coin, amount)
    sim.result.outcomes["house_deposit"] += 1


def fund(sim: SimulationState) -> None:
    """The operator funds the inventory from a house deposit in suspense (ingesting first when
    one is on its way); with none, the house deposits; now and then the operator funds from a
    deposit already funded (nothing must move)."""
    exchange = world(sim)
    rng, outcomes = sim.rng, sim.result.outcomes
    uow = _context(exchange).uow
    if exchange.funded and rng.random() < FUND_AGAIN_SHARE:
        item = rng.choice(sorted(exchange.funded))
        before = footprint(sim, None, None)
        again = quietly(lambda: fund_inventory(uow, item, actor=ACTOR_NAME, at=sim.sandbox.clock()))
        if again.assigned_to != INVENTORY_ASSIGNEE:
            sim.violation("exchange_inventory", f"{item} funded again reads as {again.assigned_to}")
        check_moved_nothing(sim, before, f"funding the inventory again from {item} moved something")
        outcomes["inventory_fund_repeated"] += 1
        return
    items = _house_items(sim, exchange)
    if not items and len(exchange.funded) < len(exchange.house_deposits):
        ingest_everything(sim)
        items = _house_items(sim, exchange)
    if not items:
        house_deposit(sim, exchange)
        return
    item = rng.choice(items)
    funded = quietly(
        lambda: fund_inventory(
            uow, item, actor=ACTOR_NAME, at=sim.sandbox.clock(), reason="house float"
        )
    )
    exchange.funded.add(funded.id)
    outcomes["inventory_funded"] += 1


def _house_items(sim: SimulationState, exchange: ExchangeWorld) -> list[str]:
    """The ids of the house's deposits in suspense not funded yet."""
    items = list_suspense(sim.sandbox.database.uow, open_only=True, limit=ITEMS_MAX)
    return sorted(item.id for item in items if item.update_id in exchange.house_deposits)


ACTOR = Actor(
    "exchange",
    (
        Action("oracle_tick", 5, tick, ledger_only=True),
        Action("exchange_quote_swap", 8, quote_and_swap),
        Action("exchange_swap_later", 3, swap_later),
        Action("exchange_fund", 3, fund),
    ),
)
