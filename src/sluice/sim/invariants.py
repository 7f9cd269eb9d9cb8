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
from sluice.sim.state import HOLDING_STATUSES, TAP, DatabaseState, SimulationState


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
            total = balance + live.get(key, ZERO) + paid.get(key, ZERO)
            if total != owed.get(key, ZERO):
                sim.violation(
                    "credits",
                    f"{customer} {instrument.id}: balance {_show(balance)} + in flight "
                    f"{_show(live.get(key))} + paid out {_show(paid.get(key))} = "
                    f"{_show(total)}, but the ingested deposits credit {_show(owed.get(key))}",
                )
        suspense = balances.get(AccountRef(SUSPENSE, instrument), ZERO)
        if suspense != owed.get((SUSPENSE, instrument), ZERO):
            sim.violation(
                "suspense",
                f"{instrument.id}: suspense holds {_show(suspense)}, the ingested deposits "
                f"with unknown reasons {_show(owed.get((SUSPENSE, instrument)))}",
            )
        in_flight = balances.get(AccountRef(IN_FLIGHT, instrument), ZERO)
        if in_flight != live.get((IN_FLIGHT, instrument), ZERO):
            sim.violation(
                "in_flight",
                f"{instrument.id}: in flight {_show(in_flight)}, live withdrawals "
                f"{_show(live.get((IN_FLIGHT, instrument)))}",
            )
        fees = balances.get(AccountRef(FEES, instrument), ZERO)
        if fees != 0:
            sim.violation("fees", f"{instrument.id}: fees {_show(fees)}, none charged")


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


INVARIANTS: tuple[Invariant, ...] = (
    Invariant("books", check_books),
    Invariant("holdings", check_holdings),
    Invariant("cursor", check_cursor),
    Invariant("credits", check_credits),
    Invariant("payments", check_payments),
    Invariant("reservations", check_reservations),
    Invariant("alerts", check_alerts),
    Invariant("wallets", check_wallets, final_only=True),
)


def _show(amount: Decimal | None) -> str:
    return format_amount(amount if amount is not None else ZERO)
