"""The exchange's guarantees, checked after every step of the simulation (and once more at the
end, when everything has settled).

The simulation keeps its own model of what the ledger committed (from the customers' command
results and the treasury's command completions) and, after **every** step, checks:

* ``books``: the journal balances against its postings; per instrument, customers + suspense +
  in-flight + fees = the treasury account = the ingested holdings; no customer is negative;
* ``holdings``: once ingestion has caught up, the ingested holdings of the treasury are exactly
  the ledger's;
* ``cursor``: every transaction the treasury's stream carries with a record time up to the
  cursor's has been ingested (what the worker relies on to declare an attempt failed);
* ``credits``: per customer and instrument, balance + live withdrawals + completed withdrawals =
  the deposits (1-step, and offers once accepted) with that customer's account as reason whose
  update ingestion has taken in — each deposit is credited exactly once, and not before;
  ``suspense`` likewise for unknown reasons; ``in_flight`` = the live withdrawals; ``fees`` stay
  zero (the sandbox charges none);
* ``payments``: at most one transfer committed per withdrawal, merge or split; a completed record
  has exactly one; a refunded Amulet withdrawal (or a failed merge or split) has none; a USDX
  withdrawal is completed only if its receiver accepted the offer, and never refunded after that;
* ``reservations``: every reserved holding belongs to a live record awaiting its outcome (or a
  retry queued with its anchor) that lists it, no holding is an input of two such records, and
  their inputs are reserved by them — or already spent, by the offer's expiry that reclaimed an
  expired lock or (only with late commits) by another record's late attempt: the attempt then
  cannot commit; it is settled and retried;
* ``alerts``: none but unattributed deposits (no ``withdrawal_paid_twice``, no
  ``withdrawal_amount_mismatch``, no rebuilt withdrawal, nothing unexplained);
* ``request`` (by the customers' request, :func:`check_request_unchanged`): a refused or repeated
  withdrawal request changed nothing;
* ``error`` (by the driver): nothing raised an exception that its faults do not explain.

At the end (``final``): ``settled``, every withdrawal is completed or refunded and no reservation
is left; the checks above hold, ingestion has caught up, a USDX withdrawal is completed exactly
when its offer was accepted; and ``wallets``, every customer's wallet on the ledger holds what
they were given, minus what they sent, plus what was paid out to them.

With Bitcoin custody (once an action of its actor was drawn), against the in-memory chain's
blocks as its node calls answer them:

* ``btc_deposits``: every deposit is recorded for the customer who sent it, with its amount;
  every output the watcher recorded is in a block of the watcher's chain (or ``reorged``, without
  one), ``dust`` exactly when under the dust limit, otherwise ``confirmed`` exactly when it had
  ``confirmations_min`` at the highest cursor the watcher reached (a reorg above its block moves
  the cursor back for a while, not the deposit); and while that cursor is on the active chain,
  every custody output up to it is recorded once, in its block, and nothing recorded is missing
  from it — so a reorg neither loses a deposit nor counts one twice;
* ``btc_utxos``: when the watcher has caught up with the tip, the DB's unspent custody outputs are
  exactly the chain's UTXO set for custody scripts (those issued and the next few of each branch);
* ``btc_paid_twice``: a payout stays in the first batch it was put in, and its destination (a
  script of its own) is paid by at most one transaction of the active chain;
* ``btc_payouts``: every payout requested is recorded once and none that was not; what pays it on
  the chain spends exactly its batch's outpoints and, once the worker knows the batch mined, pays
  the amount less the payout's fee share at the payout's output; a completed payout is paid on the
  active chain with ``confirmations_min`` at the watcher's cursor.

A new check is one function ``(simulation state, DB state, final)`` and one entry in
:data:`INVARIANTS`; the entries run in their order, which is the order of the violations a step
reports.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.journal import FEES, IN_FLIGHT, SUSPENSE, AccountRef, customer_account_name
from sluice.domain.ledger import InstrumentId, format_timestamp
from sluice.domain.withdrawals import LIVE_STATUSES
from sluice.ports.bitcoin import NotFoundError
from sluice.sim import events_invariants as events
from sluice.sim import exchange_invariants as exchange
from sluice.sim import issuance_invariants as istsi
from sluice.sim import reserves_invariants as reserves
from sluice.sim.state import (
    HOLDING_STATUSES,
    TAP,
    BitcoinCustody,
    BitcoinRows,
    ChainOutput,
    DatabaseState,
    SimulationState,
)


@dataclass(frozen=True, slots=True)
class Invariant:
    """A guarantee the simulation checks: ``check`` reports what breaks it through
    :meth:`SimulationState.violation`. ``final_only``: checked only at the end."""

    name: str
    check: Callable[[SimulationState, DatabaseState, bool], None]
    final_only: bool = False


def check_invariants(sim: SimulationState, *, final: bool = False) -> None:
    """Check every invariant against the Integration DB as it is now."""
    state = sim.read_database()
    for invariant in INVARIANTS:
        if final or not invariant.final_only:
            invariant.check(sim, state, final)


def check_request_unchanged(sim: SimulationState, before: DatabaseState, problem: str) -> None:
    """``request``: a refused or repeated withdrawal request left the books and the records as
    ``before``."""
    sim.dirty = True
    after = sim.read_database()
    if (after.balances, after.records) != (before.balances, before.records):
        sim.violation("request", problem)


def check_books(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    for problem in state.books_problems:
        sim.violation("books", problem)


def check_holdings(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    if state.cursor_offset == sim.ledger.ledger_end(sim.sandbox.node):
        on_ledger = {h.contract_id for h in sim.ledger.active_holdings(sim.sandbox.treasury)}
        if state.treasury_holdings != on_ledger:
            ingested = state.treasury_holdings
            sim.violation(
                "holdings",
                f"ingestion caught up but holds {len(ingested - on_ledger)} holdings the "
                f"ledger does not and misses {len(on_ledger - ingested)} (e.g. "
                f"{sorted(ingested ^ on_ledger)[0]})",
            )
    elif final:
        sim.violation("holdings", "ingestion did not catch up with the ledger")


def check_cursor(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    """What the withdrawal worker relies on to declare an attempt failed: everything up to
    the cursor's record time has been ingested. And the record time is that of the newest
    update ingested (or later); it only moves back when the runbook moves the cursor."""
    cursor_time: datetime | None = state.cursor_time
    newest = sim.newest_ingested
    if newest is not None and (cursor_time is None or cursor_time < newest):
        sim.violation(
            "cursor",
            f"an update of {format_timestamp(newest)} was ingested, but the cursor's record "
            f"time is {format_timestamp(cursor_time) if cursor_time else 'none'}",
        )
    if cursor_time is None:
        return
    floor, sim.cursor_floor = sim.cursor_floor, cursor_time
    if floor is not None and cursor_time < floor:
        sim.violation(
            "cursor",
            f"the cursor's record time moved back from {format_timestamp(floor)} to "
            f"{format_timestamp(cursor_time)}",
        )
    for commit in sim.unconfirmed:
        if commit.record_time <= cursor_time:
            sim.violation(
                "cursor",
                f"update {commit.update_id} ({format_timestamp(commit.record_time)}) is not "
                f"ingested, but the cursor says {format_timestamp(cursor_time)} was reached",
            )
            return


def check_credits(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    balances = state.balances
    owed = sim.owed
    # What swaps and fundings of the exchange's inventory moved between liabilities.
    moved = exchange.movements(sim, state)
    live: dict[tuple[str, InstrumentId], Decimal] = {}
    paid: dict[tuple[str, InstrumentId], Decimal] = {}
    for row in state.records:
        if row.kind != "withdrawal" or row.customer_id is None:
            continue
        instrument = InstrumentId(row.instrument_admin, row.instrument_id)
        key = (customer_account_name(row.customer_id), instrument)
        if row.status in LIVE_STATUSES:
            live[key] = live.get(key, ZERO) + row.amount
            live[(IN_FLIGHT, instrument)] = live.get((IN_FLIGHT, instrument), ZERO) + row.amount
        elif row.status == "completed":
            paid[key] = paid.get(key, ZERO) + row.amount
    for instrument in sim.instruments:
        for customer in sim.customer_ids:
            key = (customer_account_name(customer), instrument)
            balance = balances.get(AccountRef(*key), ZERO)
            swapped = moved.get(key, ZERO)
            total = balance + live.get(key, ZERO) + paid.get(key, ZERO) - swapped
            if total != owed.get(key, ZERO):
                sim.violation(
                    "credits",
                    f"{customer} {instrument.id}: balance {_show(balance)} + in flight "
                    f"{_show(live.get(key))} + paid out {_show(paid.get(key))} - swapped "
                    f"{_show(swapped)} = {_show(total)}, but the ingested deposits credit "
                    f"{_show(owed.get(key))}",
                )
        suspense = balances.get(AccountRef(SUSPENSE, instrument), ZERO)
        funded = -moved.get((SUSPENSE, instrument), ZERO)
        if suspense + funded != owed.get((SUSPENSE, instrument), ZERO):
            sim.violation(
                "suspense",
                f"{instrument.id}: suspense holds {_show(suspense)} after funding the exchange's "
                f"inventory with {_show(funded)}, the ingested deposits with unknown reasons "
                f"{_show(owed.get((SUSPENSE, instrument)))}",
            )
        in_flight = balances.get(AccountRef(IN_FLIGHT, instrument), ZERO)
        if in_flight != live.get((IN_FLIGHT, instrument), ZERO):
            sim.violation(
                "in_flight",
                f"{instrument.id}: in flight {_show(in_flight)}, live withdrawals "
                f"{_show(live.get((IN_FLIGHT, instrument)))}",
            )
        fees = balances.get(AccountRef(FEES, instrument), ZERO)
        charged = moved.get((FEES, instrument), ZERO)
        if fees != charged:
            sim.violation(
                "fees",
                f"{instrument.id}: fees {_show(fees)}, the swaps' fees {_show(charged)} (the "
                "sandbox charges no other)",
            )


def check_payments(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    """``payments``, and at the end ``settled``."""
    for record_id, count in sim.payments.items():
        if count > 1:
            sim.violation("payments", f"{count} transfers committed for {record_id}")
    for row in state.records:
        count = sim.payments.get(row.id, 0)
        instrument = InstrumentId(row.instrument_admin, row.instrument_id)
        is_offer = row.kind == "withdrawal" and instrument == sim.sandbox.token
        if row.rebuilt:
            sim.violation("payments", f"{row.id} was rebuilt from the chain")
        if row.status == "completed":
            if count != 1:
                sim.violation("payments", f"{row.id} completed with {count} transfers")
            if is_offer and row.id not in sim.accepted:
                sim.violation("payments", f"{row.id} completed but its offer not accepted")
        elif row.status == "failed":
            if is_offer and row.id in sim.accepted:
                sim.violation("payments", f"{row.id} refunded after its offer was accepted")
            if not is_offer and count:
                sim.violation("payments", f"{row.id} refunded but its transfer committed")
        elif final:
            sim.violation("settled", f"{row.kind} {row.id} is still {row.status}")
        if final and is_offer and (row.status == "completed") != (row.id in sim.accepted):
            accepted = "accepted" if row.id in sim.accepted else "not accepted"
            sim.violation("payments", f"{row.id} is {row.status}, its offer {accepted}")


def check_reservations(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    reserved, spent = state.reserved, state.spent
    inputs_of: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for row in state.records:
        if row.status not in HOLDING_STATUSES:
            continue
        inputs = json.loads(row.inputs)
        inputs_of[row.id] = inputs
        for contract_id in inputs:
            other = owner.setdefault(contract_id, row.id)
            if other != row.id:
                sim.violation("reservations", f"{contract_id} is an input of {other} and {row.id}")
            if spent.get(contract_id) or (contract_id in spent and sim.late_commit_rate):
                # A holding whose lock had expired when it was reserved (the treasury's own
                # offer that nobody answered): the offer's withdrawal or expiry returned it
                # first. Or an input another record's earlier attempt also spent, committing
                # late after that record had moved on to a retry around its anchor. Either way
                # the attempt cannot commit; it is settled and retried.
                if (row.id, contract_id) not in sim.reclaimed:
                    sim.reclaimed.add((row.id, contract_id))
                    how = "lock_reclaimed" if spent[contract_id] else "spent_by_a_late_attempt"
                    sim.result.outcomes[f"input_{how}"] += 1
            elif reserved.get(contract_id) != row.id:
                sim.violation(
                    "reservations",
                    f"input {contract_id} of {row.status} {row.id} is reserved by "
                    f"{reserved.get(contract_id)}",
                )
    for contract_id, record_id in sorted(reserved.items()):
        if record_id in state.burn_holders:
            continue  # an iSTSi burn's input, reserved until the burn is booked or rejected
        if contract_id not in inputs_of.get(record_id, ()):
            sim.violation(
                "reservations",
                f"{contract_id} is reserved by {record_id}, which is not awaiting it",
            )


def check_alerts(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    for kind, message in state.alerts:
        sim.violation("alerts", f"{kind}: {message}")


def check_wallets(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    received: dict[tuple[str, InstrumentId], Decimal] = {}
    for row in state.records:
        if row.kind == "withdrawal" and row.status == "completed":
            key = (row.receiver, InstrumentId(row.instrument_admin, row.instrument_id))
            received[key] = received.get(key, ZERO) + row.amount
    for customer in sim.customer_ids:
        party = sim.sandbox.customers[customer]
        for instrument in sim.instruments:
            held = sum((h.amount for h in sim.ledger.active_holdings(party, instrument)), ZERO)
            expected = (
                TAP
                - sim.sent.get((customer, instrument), ZERO)
                + received.get((party, instrument), ZERO)
            )
            if held != expected:
                sim.violation(
                    "wallets",
                    f"{customer} holds {_show(held)} {instrument.id} on the ledger; given "
                    f"{_show(TAP)}, sent {_show(sim.sent.get((customer, instrument)))}, "
                    f"paid out {_show(received.get((party, instrument)))}",
                )


# --- Bitcoin custody ----------------------------------------------------------------------------

# Custody scripts past the highest index issued on each branch that the checks also watch: money
# sent to an address the DB never recorded would be custody's and unaccounted.
LOOKAHEAD = 3


def _cursor_on_active_chain(custody: BitcoinCustody, rows: BitcoinRows) -> tuple[int, str] | None:
    """The watcher's cursor, when its block is on the node's active chain."""
    cursor = rows.cursor
    if cursor is None:
        return None
    try:
        on_chain = custody.node.getblockhash(cursor[0]) == cursor[1]
    except NotFoundError:
        on_chain = False
    return cursor if on_chain else None


def check_bitcoin_deposits(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    custody, rows = sim.bitcoin, state.bitcoin
    if custody is None or rows is None:
        return
    name = "btc_deposits"
    minimum = custody.settings.confirmations_min
    dust_limit = custody.settings.chain.p2wsh_dust_limit_sats
    cursor = rows.cursor
    if cursor is not None:
        custody.cursor_high = max(custody.cursor_high, cursor[0])
    for outpoint, row in rows.outputs.items():
        sender = custody.funded.get(row.txid)
        if sender is not None and (row.kind, row.customer_id, row.amount_sats) != (
            "deposit",
            *sender,
        ):
            sim.violation(
                name,
                f"{outpoint} is recorded as a {row.kind} of {row.amount_sats} sats for "
                f"{row.customer_id}; {sender[0]} sent {sender[1]} sats to their address",
            )
        if row.status == "reorged":
            if row.block_height is not None:
                sim.violation(name, f"{outpoint} is reorged but still in block {row.block_height}")
            continue
        if cursor is None or row.block_height is None:
            sim.violation(name, f"{outpoint} is {row.status} but in no block the watcher holds")
            continue
        if rows.blocks.get(row.block_height) != row.block_hash:
            sim.violation(
                name,
                f"{outpoint} is recorded in block {row.block_hash} at {row.block_height}, which "
                "is not on the watcher's chain",
            )
            continue
        confirmations = cursor[0] - row.block_height + 1
        if row.amount_sats < dust_limit:
            expected: tuple[str, ...] = ("dust",)
        elif confirmations >= minimum or custody.cursor_high - row.block_height + 1 >= minimum:
            # Confirmed when the watcher reached confirmations_min over it; a reorg above its
            # block (never as deep as confirmations_min here) moves the cursor back for a while,
            # not the deposit.
            expected = ("confirmed", "credited")
        else:
            expected = ("seen",)
        if row.status not in expected:
            sim.violation(
                name,
                f"{outpoint} ({row.amount_sats} sats, {confirmations} confirmations at the "
                f"watcher's cursor) is {row.status}, expected {' or '.join(expected)}",
            )
    active = _cursor_on_active_chain(custody, rows)
    if active is None:
        return  # the watcher has yet to see a reorg: it is judged on its own chain above
    view = custody.view(active[1])
    scripts = custody.custody_scripts(rows.addresses, LOOKAHEAD)
    for outpoint, output in view.outputs.items():
        if output.script_hex not in scripts:
            continue
        row = rows.outputs.get(outpoint)
        if row is None or row.block_hash != output.block_hash:
            where = "not recorded" if row is None else f"recorded as {row.status}"
            sim.violation(
                name,
                f"{outpoint} pays custody {output.amount_sats} sats in block {output.height} "
                f"({output.block_hash}), up to the watcher's cursor, but is {where}",
            )
        elif row.amount_sats != output.amount_sats or row.script_hex != output.script_hex:
            sim.violation(
                name,
                f"{outpoint} is recorded as {row.amount_sats} sats to {row.script_hex}, the "
                f"chain says {output.amount_sats} sats to {output.script_hex}",
            )
    for outpoint, row in rows.outputs.items():
        if row.status != "reorged" and outpoint not in view.outputs:
            sim.violation(
                name,
                f"{outpoint} is {row.status} in block {row.block_height}, but the active chain "
                "up to the watcher's cursor has no such output",
            )


def check_bitcoin_utxos(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    custody, rows = sim.bitcoin, state.bitcoin
    if custody is None or rows is None or rows.cursor is None:
        return
    if rows.cursor[1] != custody.node.getblockchaininfo()["bestblockhash"]:
        return  # the watcher has blocks to catch up with
    view = custody.view(rows.cursor[1])
    scripts = custody.custody_scripts(rows.addresses, LOOKAHEAD)
    on_chain = {
        outpoint: view.outputs[outpoint].amount_sats
        for outpoint in view.unspent
        if view.outputs[outpoint].script_hex in scripts
    }
    in_db = {
        outpoint: row.amount_sats
        for outpoint, row in rows.outputs.items()
        if row.block_height is not None and row.status != "reorged" and row.spent_txid is None
    }
    if in_db != on_chain:
        differing = sorted(set(in_db.items()) ^ set(on_chain.items()))[0][0]
        sim.violation(
            "btc_utxos",
            f"at the tip {rows.cursor[0]} ({rows.cursor[1]}) the DB holds {len(in_db)} unspent "
            f"custody outputs ({sum(in_db.values())} sats), the chain {len(on_chain)} "
            f"({sum(on_chain.values())} sats); e.g. {differing}: DB "
            f"{in_db.get(differing)}, chain {on_chain.get(differing)}",
        )


def check_bitcoin_payouts(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    custody, rows = sim.bitcoin, state.bitcoin
    if custody is None or rows is None:
        return
    name = "btc_payouts"
    tip = custody.view(custody.node.getblockchaininfo()["bestblockhash"])
    destinations = {payout.script_hex for payout in custody.payouts.values()}
    paid: dict[str, list[ChainOutput]] = {}
    for output in tip.outputs.values():
        if output.script_hex in destinations:
            paid.setdefault(output.script_hex, []).append(output)
    recorded = {row.id: row for row in rows.payouts}
    for row in rows.payouts:
        if row.id not in custody.payouts:
            sim.violation(name, f"payout {row.id} is recorded but nobody requested it")
    if rows.cursor is not None:
        custody.cursor_high = max(custody.cursor_high, rows.cursor[0])
    for payout in custody.payouts.values():
        outputs = paid.get(payout.script_hex, [])
        if len({output.txid for output in outputs}) > 1:
            sim.violation(
                "btc_paid_twice",
                f"{payout.id} paid by {len(outputs)} transactions: "
                f"{', '.join(output.outpoint for output in outputs)}",
            )
        row = recorded.get(payout.id)
        if row is None:
            sim.violation(name, f"payout {payout.id} was requested but is not recorded")
            continue
        if row.batch_id is not None:
            first = custody.batch_of.setdefault(row.id, row.batch_id)
            if first != row.batch_id:
                sim.violation(
                    "btc_paid_twice", f"{row.id} is in two batches: {first} and {row.batch_id}"
                )
        batch = rows.batches.get(row.batch_id) if row.batch_id is not None else None
        for output in outputs:
            spends = set(tip.inputs[output.txid])
            if batch is None or spends != set(json.loads(batch.outpoints)):
                sim.violation(
                    name,
                    f"{row.id} is paid by {output.txid}, which does not spend its batch's "
                    f"outpoints ({row.batch_id})",
                )
            elif (
                batch.txid == output.txid
                and batch.status in ("mined", "confirmed")
                and (
                    output.vout != row.vout or output.amount_sats != row.amount_sats - row.fee_sats
                )
            ):
                sim.violation(
                    name,
                    f"{row.id}: {output.outpoint} pays {output.amount_sats} sats; recorded as "
                    f"output {row.vout}, {row.amount_sats} sats less a fee of {row.fee_sats}",
                )
        if row.status == "completed":
            deep = any(
                custody.cursor_high - output.height + 1 >= custody.settings.confirmations_min
                for output in outputs
            )
            if not deep:
                sim.violation(
                    name,
                    f"{row.id} is completed but not paid on the active chain with "
                    f"{custody.settings.confirmations_min} confirmations at the watcher's cursor",
                )


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("books", check_books),
    Invariant("holdings", check_holdings),
    Invariant("cursor", check_cursor),
    Invariant("credits", check_credits),
    Invariant("payments", check_payments),
    Invariant("reservations", check_reservations),
    Invariant("alerts", check_alerts),
    Invariant("wallets", check_wallets, final_only=True),
    Invariant("btc_deposits", check_bitcoin_deposits),
    Invariant("btc_utxos", check_bitcoin_utxos),
    Invariant("btc_payouts", check_bitcoin_payouts),
    # iSTSi issuance (sim/issuance_invariants.py)
    Invariant("istsi_minted_once", istsi.check_minted_once),
    Invariant("istsi_reserves", istsi.check_reserves),
    Invariant("istsi_redeemed_once", istsi.check_redeemed_once),
    Invariant("istsi_books", istsi.check_books),
    # Reserves, reconciliation, proof of liabilities (sim/reserves_invariants.py)
    Invariant("reserves_readings", reserves.check_readings),
    Invariant("reserves_reconcile", reserves.check_reconciliation),
    Invariant("reserves_proofs", reserves.check_snapshots),
    # Events: the relay's deliveries to a consumer (sim/events_invariants.py)
    Invariant("events_delivered", events.check_delivered, final_only=True),
    Invariant("events_order", events.check_order),
    Invariant("events_aggregates", events.check_aggregates, final_only=True),
    # The oracle and the exchange (sim/exchange_invariants.py)
    Invariant("exchange_swaps", exchange.check_swaps),
    Invariant("exchange_prices", exchange.check_prices),
    Invariant("exchange_inventory", exchange.check_inventory),
    Invariant("exchange_limits", exchange.check_limits),
)


def _show(amount: Decimal | None) -> str:
    return format_amount(amount if amount is not None else ZERO)
