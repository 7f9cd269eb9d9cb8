"""The guarantees of the price oracle and the cross-token exchange, checked after every step once
the exchange actor has acted (registered in :data:`sluice.sim.invariants.INVARIANTS`), against
the Integration DB and what the actor served and did (:mod:`sluice.sim.exchange_state`):

* ``exchange_swaps``: each quote is executed at most once — one swap row (its quote's customer,
  instruments and amount), one journal transaction ``swap:<quote id>`` whose postings are exactly
  the swap's (the customer's sold and bought claims, both inventory legs, the fee), one
  ``swap_executed`` audit record and one ``swap_executed`` event, and none of these without a
  swap row; a swap received at least its minimum received (and that minimum is at least the
  quote's), gross = received + fee, the fallback fee exactly when the price came from the
  secondary, and it was executed before its quote expired;
* ``exchange_prices``: a swap's rate is the price (or, for the reverse direction, its inverse)
  that the source the swap names served, labelled valid, while that swap's quote was executed —
  so no swap was priced on a rejected reading, nor while the oracle had to be offline;
* ``exchange_inventory``: per instrument, the exchange's inventory is what was funded from
  suspense (every funding a deposit of the house's own wallet, for its amount) plus what
  customers sold less what swaps paid out, and never negative;
* ``exchange_limits``: no customer's executed swaps exceed their tier's exchange limits in any
  rolling 24 hours or 30 days (nor per operation);
* ``exchange_refusals`` (by the actor, :func:`check_moved_nothing`): a refused swap, and a
  funding repeated, moved nothing — no balance, no KYC usage, no swap row, no journal
  transaction;
* and in the books' checks (:mod:`sluice.sim.invariants`): ``credits``, ``suspense`` and ``fees``
  count what swaps and fundings moved (:func:`movements`), and ``books`` counts the inventory
  among the liabilities (as ``istsi_books`` does, by ``LIABILITY_NAMES``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import func, select

from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.compliance import DAY, MONTH
from sluice.domain.exchange import EXCHANGE_INVENTORY, SWAP_KIND, inverse_rate
from sluice.domain.journal import FEES, SUSPENSE, AccountRef, customer_account_name
from sluice.domain.ledger import InstrumentId, parse_timestamp
from sluice.services.compliance_session import effective_ladder
from sluice.services.exchange import OPERATION
from sluice.services.exchange_inventory import INVENTORY_ASSIGNEE
from sluice.sim.exchange_state import ExchangeWorld, world_of
from sluice.sim.state import DatabaseState, SimulationState
from sluice.store import tables
from sluice.store.events_tables import event_outbox
from sluice.store.exchange_tables import exchange_quotes, exchange_swaps
from sluice.store.repositories import SqlBooksRepository

Moves = dict[tuple[str, InstrumentId], Decimal]


@dataclass(frozen=True, slots=True)
class ExchangeRows:
    swaps: list[Any]  # exchange_swaps rows, oldest first
    quotes: dict[str, Any]  # id → exchange_quotes row (of the swaps)
    postings: dict[str, list[tuple[str, Decimal]]]  # swap journal transaction → (account, amount)
    audits: Counter[str]  # swap_executed audit records by operation id
    events: Counter[str]  # swap_executed events by aggregate (quote) id
    fundings: list[Any]  # suspense_assignments rows to the inventory


def _instrument(admin: str, instrument_id: str) -> InstrumentId:
    return InstrumentId(admin, instrument_id)


def read_exchange(sim: SimulationState, state: DatabaseState) -> ExchangeRows | None:
    """The exchange's rows as they are; read again only when the DB was (``state`` is new)."""
    exchange = world_of(sim)
    if exchange is None:
        return None
    if exchange.reading is not None and exchange.reading_of is state:
        assert isinstance(exchange.reading, ExchangeRows)
        return exchange.reading
    journal, postings = tables.journal_transactions, tables.journal_postings
    audit = tables.audit_records
    with sim.engine.connect() as connection:
        swaps = list(
            connection.execute(
                select(exchange_swaps).order_by(
                    exchange_swaps.c.executed_at, exchange_swaps.c.quote_id
                )
            )
        )
        quote_ids = [row.quote_id for row in swaps]
        # The audit trail outlives a run (a database given by URL is emptied, but for the audit
        # trail): only this run's quotes' records count.
        ours = {
            f"swap:{quote_id}"
            for quote_id in connection.execute(select(exchange_quotes.c.id)).scalars()
        }
        quotes: dict[str, Any] = {}
        for start in range(0, len(quote_ids), 500):
            chunk = quote_ids[start : start + 500]
            quotes.update(
                (row.id, row)
                for row in connection.execute(
                    select(exchange_quotes).where(exchange_quotes.c.id.in_(chunk))
                )
            )
        booked: dict[str, list[tuple[str, Decimal]]] = {}
        for row in connection.execute(
            select(journal.c.id).where(journal.c.kind == SWAP_KIND).order_by(journal.c.id)
        ):
            booked[row.id] = []
        for row in connection.execute(
            select(postings.c.transaction_id, postings.c.account_id, postings.c.amount)
            .join(journal, journal.c.id == postings.c.transaction_id)
            .where(journal.c.kind == SWAP_KIND)
            .order_by(postings.c.transaction_id, postings.c.seq)
        ):
            booked[row.transaction_id].append((row.account_id, Decimal(row.amount)))
        audits = Counter(
            row.operation_id
            for row in connection.execute(
                select(audit.c.operation_id).where(audit.c.operation == "swap_executed")
            )
            if row.operation_id in ours
        )
        events = Counter(
            row.aggregate_id
            for row in connection.execute(
                select(event_outbox.c.aggregate_id).where(event_outbox.c.type == "swap_executed")
            )
        )
        fundings = list(
            connection.execute(
                select(tables.suspense_assignments).where(
                    tables.suspense_assignments.c.customer_id == INVENTORY_ASSIGNEE
                )
            )
        )
    rows = ExchangeRows(swaps, quotes, booked, audits, events, fundings)
    exchange.reading, exchange.reading_of = rows, state
    return rows


def movements(sim: SimulationState, state: DatabaseState) -> Moves:
    """What swaps and fundings moved, by liability account (name, instrument), as the swap rows
    and the inventory's suspense assignments say: the customers' sold and bought claims, the
    fees, suspense (less what funded the inventory) and the inventory itself."""
    rows = read_exchange(sim, state)
    moves: Moves = {}
    if rows is None:
        return moves

    def add(name: str, instrument: InstrumentId, amount: Decimal) -> None:
        moves[(name, instrument)] = moves.get((name, instrument), ZERO) + amount

    for swap in rows.swaps:
        sell = _instrument(swap.sell_admin, swap.sell_id)
        buy = _instrument(swap.buy_admin, swap.buy_id)
        customer = customer_account_name(swap.customer_id)
        add(customer, sell, -Decimal(swap.sell_amount))
        add(customer, buy, Decimal(swap.received))
        add(FEES, buy, Decimal(swap.fee_amount))
        add(EXCHANGE_INVENTORY, sell, Decimal(swap.sell_amount))
        add(EXCHANGE_INVENTORY, buy, -Decimal(swap.gross))
    for funding in rows.fundings:
        instrument = _instrument(funding.instrument_admin, funding.instrument_id)
        add(SUSPENSE, instrument, -Decimal(funding.amount))
        add(EXCHANGE_INVENTORY, instrument, Decimal(funding.amount))
    return moves


# --- swaps ------------------------------------------------------------------------------------


def _expected_postings(swap: Any) -> Counter[tuple[str, Decimal]]:
    sell = _instrument(swap.sell_admin, swap.sell_id)
    buy = _instrument(swap.buy_admin, swap.buy_id)
    customer = customer_account_name(swap.customer_id)
    legs = (
        (AccountRef(customer, sell), Decimal(swap.sell_amount)),
        (AccountRef(EXCHANGE_INVENTORY, sell), -Decimal(swap.sell_amount)),
        (AccountRef(EXCHANGE_INVENTORY, buy), Decimal(swap.gross)),
        (AccountRef(customer, buy), -Decimal(swap.received)),
        (AccountRef(FEES, buy), -Decimal(swap.fee_amount)),
    )
    return Counter((account.id, amount) for account, amount in legs if amount != 0)


def check_swaps(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    rows = read_exchange(sim, state)
    if rows is None:
        return
    name = "exchange_swaps"
    ids = {f"swap:{swap.quote_id}" for swap in rows.swaps}
    for swap in rows.swaps:
        qid, txn = swap.quote_id, f"swap:{swap.quote_id}"
        quote = rows.quotes.get(qid)
        if quote is None or (
            quote.customer_id,
            quote.sell_admin,
            quote.sell_id,
            quote.buy_admin,
            quote.buy_id,
            Decimal(quote.sell_amount),
        ) != (
            swap.customer_id,
            swap.sell_admin,
            swap.sell_id,
            swap.buy_admin,
            swap.buy_id,
            Decimal(swap.sell_amount),
        ):
            sim.violation(name, f"swap {qid} is not its quote's sale")
            continue
        if swap.journal_transaction_id != txn:
            sim.violation(
                name, f"swap {qid} names journal transaction {swap.journal_transaction_id}"
            )
        booked = rows.postings.get(txn)
        if booked is None:
            sim.violation(name, f"swap {qid} has no journal transaction {txn}")
        elif Counter(booked) != _expected_postings(swap):
            sim.violation(
                name,
                f"{txn} posts {sorted((a, format_amount(x)) for a, x in booked)}, not the swap's "
                f"{len(_expected_postings(swap))} legs",
            )
        received, minimum = Decimal(swap.received), Decimal(swap.minimum_received)
        quoted = Decimal(quote.minimum_received)
        if received < minimum or minimum < quoted:
            sim.violation(
                name,
                f"swap {qid} received {format_amount(received)} for a minimum of "
                f"{format_amount(minimum)} (the quote's {format_amount(quoted)})",
            )
        if Decimal(swap.gross) != received + Decimal(swap.fee_amount):
            sim.violation(name, f"swap {qid}: gross is not received + fee")
        if (swap.fee_kind == "fallback") != (swap.oracle_source == "secondary"):
            sim.violation(
                name, f"swap {qid}: the {swap.fee_kind} fee on the {swap.oracle_source} source"
            )
        if _time(swap.executed_at) >= _time(quote.expires_at):
            sim.violation(name, f"swap {qid} executed at {swap.executed_at}, its quote expired")
        if rows.audits[txn] != 1 or rows.events[qid] != 1:
            sim.violation(
                name,
                f"swap {qid} has {rows.audits[txn]} swap_executed audit records and "
                f"{rows.events[qid]} swap_executed events",
            )
    for txn in sorted(set(rows.postings) - ids):
        sim.violation(name, f"journal transaction {txn} of kind {SWAP_KIND} has no swap")
    for operation_id in sorted(set(rows.audits) - ids):
        sim.violation(name, f"a swap_executed audit record {operation_id} has no swap")
    quote_ids = {swap.quote_id for swap in rows.swaps}
    for aggregate in sorted(set(rows.events) - quote_ids):
        sim.violation(name, f"a swap_executed event of {aggregate} has no swap")


def _time(value: Any) -> Any:
    return parse_timestamp(value) if isinstance(value, str) else value


def check_prices(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    rows = read_exchange(sim, state)
    exchange = world_of(sim)
    if rows is None or exchange is None:
        return
    ctx = exchange.ctx
    assert ctx is not None
    for swap in rows.swaps:
        if swap.quote_id in exchange.priced:
            continue
        exchange.priced.add(swap.quote_id)
        found = _oracle_pair(exchange, swap)
        if found is None:
            sim.violation("exchange_prices", f"swap {swap.quote_id}: no pair prices it")
            continue
        pair, inverted = found
        rate = Decimal(swap.rate)
        served = [s for s in exchange.served.get(swap.quote_id, ()) if s.pair == pair]
        prices = [s.valid_price(swap.oracle_source) for s in served]
        rates = {inverse_rate(p) if inverted else p for p in prices if p is not None}
        if rate not in rates:
            labels = sorted(
                {
                    s.primary_label if swap.oracle_source == "primary" else s.secondary_label
                    for s in served
                }
            )
            sim.violation(
                "exchange_prices",
                f"swap {swap.quote_id} at rate {rate} from the {swap.oracle_source}: no reading "
                f"served valid at that price while it executed (served: {labels or 'none'})",
            )


def _oracle_pair(exchange: ExchangeWorld, swap: Any) -> tuple[str, bool] | None:
    ctx = exchange.ctx
    assert ctx is not None
    return ctx.settings.oracle_pair(swap.sell_id, swap.buy_id)


# --- inventory and limits ---------------------------------------------------------------------


def check_inventory(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    rows = read_exchange(sim, state)
    exchange = world_of(sim)
    if rows is None or exchange is None:
        return
    name = "exchange_inventory"
    for funding in rows.fundings:
        deposit = exchange.house_deposits.get(funding.update_id)
        if deposit is None or deposit != (funding.instrument_id, Decimal(funding.amount)):
            sim.violation(
                name,
                f"the inventory was funded from {funding.update_id}:{funding.node_id} "
                f"({format_amount(Decimal(funding.amount))} {funding.instrument_id}), which is not "
                "a deposit of the house's",
            )
    moved = movements(sim, state)
    instruments = {instrument for (account, instrument) in moved if account == EXCHANGE_INVENTORY}
    instruments |= {a.instrument for a in state.balances if a.name == EXCHANGE_INVENTORY}
    for instrument in sorted(instruments):
        balance = state.balances.get(AccountRef(EXCHANGE_INVENTORY, instrument), ZERO)
        expected = moved.get((EXCHANGE_INVENTORY, instrument), ZERO)
        if balance != expected or balance < 0:
            sim.violation(
                name,
                f"{instrument.id}: the inventory holds {format_amount(balance)}; funded plus sold "
                f"less paid out is {format_amount(expected)}",
            )


def check_limits(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    rows = read_exchange(sim, state)
    if rows is None or not rows.swaps:
        return
    compliance = sim.sandbox.compliance.settings
    with sim.sandbox.database.uow() as uow:
        profiles = uow.compliance.profiles(sorted({swap.customer_id for swap in rows.swaps}))
        ladder = effective_ladder(compliance.ladder, uow)
    by_customer: dict[str, list[tuple[Any, Decimal]]] = {}
    for swap in rows.swaps:
        value = compliance.value(
            _instrument(swap.sell_admin, swap.sell_id), Decimal(swap.sell_amount)
        )
        by_customer.setdefault(swap.customer_id, []).append((_time(swap.executed_at), value))
    for customer, swaps in sorted(by_customer.items()):
        profile = profiles.get(customer)
        if profile is None:
            sim.violation("exchange_limits", f"{customer} swapped but has no KYC profile")
            continue
        limits = ladder.of(profile.tier, OPERATION)
        for at, value in swaps:
            day = sum((v for t, v in swaps if at - DAY < t <= at), ZERO)
            month = sum((v for t, v in swaps if at - MONTH < t <= at), ZERO)
            for window, used, limit in (
                ("per operation", value, limits.per_operation),
                ("24 hours", day, limits.daily),
                ("30 days", month, limits.monthly),
            ):
                if limit is not None and used > limit:
                    sim.violation(
                        "exchange_limits",
                        f"{customer} (tier {profile.tier}) swapped {format_amount(used)} in the "
                        f"{window} up to {at.isoformat()}, over the limit {format_amount(limit)}",
                    )


# --- what a refusal must leave as it was --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Footprint:
    """What a refused swap (or a repeated funding) must leave unchanged."""

    customer_id: str | None
    quote_id: str | None
    balances: dict[AccountRef, Decimal]
    usage: int  # the customer's KYC usage rows
    assignments: int  # suspense assignments
    swapped: bool  # the quote has a swap row
    booked: bool  # the quote has a journal transaction


def footprint(sim: SimulationState, customer_id: str | None, quote_id: str | None) -> Footprint:
    usage, assignments = tables.compliance_usage, tables.suspense_assignments
    with sim.engine.connect() as connection:
        balances = SqlBooksRepository(connection).balances()
        used = connection.execute(
            select(func.count()).select_from(usage).where(usage.c.customer_id == customer_id)
        ).scalar_one()
        assigned = connection.execute(select(func.count()).select_from(assignments)).scalar_one()
        swapped = booked = False
        if quote_id is not None:
            swapped = (
                connection.execute(
                    select(exchange_swaps.c.quote_id).where(exchange_swaps.c.quote_id == quote_id)
                ).first()
                is not None
            )
            booked = (
                connection.execute(
                    select(tables.journal_transactions.c.id).where(
                        tables.journal_transactions.c.id == f"swap:{quote_id}"
                    )
                ).first()
                is not None
            )
    return Footprint(customer_id, quote_id, balances, int(used), int(assigned), swapped, booked)


def check_moved_nothing(sim: SimulationState, before: Footprint, problem: str) -> None:
    """``exchange_refusals``: the DB's balances, the customer's KYC usage, the suspense
    assignments and the quote's swap and journal transaction are as ``before``."""
    sim.dirty = True
    after = footprint(sim, before.customer_id, before.quote_id)
    if after != before:
        changed = [
            name
            for name in ("balances", "usage", "assignments", "swapped", "booked")
            if getattr(after, name) != getattr(before, name)
        ]
        sim.violation("exchange_refusals", f"{problem}: {', '.join(changed)}")
