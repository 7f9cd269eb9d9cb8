"""The guarantees of iSTSi issuance, checked after every step once the issuance actor has acted
(registered in :data:`sluice.sim.invariants.INVARIANTS`):

* ``istsi_minted_once``: every deposit is minted at most once — at most one mint record that did
  not fail per ``bitcoin_deposit`` operation and at most one remint per redemption, and on the
  ledger at most one committed command per mint, remint and burn id (each id is its record's and
  carries its reason, ``issuance:<operation id>[:remint|:burn]``), none for an operation we do not
  know; a mint record ``committed`` is committed on the ledger;
* ``istsi_reserves``: the supply — by our records and on the ledger — never exceeds the confirmed
  reserves less the redemptions pending (the issue's invariant; the mint guard keeps other
  pending payouts clear of the backing too, which only makes it stricter);
* ``istsi_redeemed_once``: a redemption's payout is recorded once, for its amount; a completed
  redemption was paid (its payout completed) and not reminted, a compensated one was never paid
  (the payout's paying once and staying in its first batch is ``btc_paid_twice``, as every
  redemption pays a script of its own); at the end every redemption is completed or
  compensated, and no operation is left open or stuck (``istsi_settled``);
* ``istsi_books``: once ingestion has caught up with the ledger, the iSTSi the books owe (the
  customers, in flight, suspense, fees) is the treasury's iSTSi on the ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import select

from sluice.domain.amounts import ZERO
from sluice.domain.journal import LIABILITY_NAMES
from sluice.ports.issuance import GuardFigures, amount_to_sats
from sluice.sim.issuance_state import IssuanceWorld
from sluice.sim.state import DatabaseState, SimulationState
from sluice.store import bitcoin_tables, issuance_tables

_OPERATION_ID_OF = (":remint", ":burn", ":mint")


@dataclass(frozen=True, slots=True)
class IssuanceRows:
    operations: dict[str, Any]  # id → issuance_operations row
    mints: list[Any]
    burns: list[Any]
    payouts: dict[str, Any]  # id → btc_payouts row (redemptions')
    figures: GuardFigures


def read_issuance(sim: SimulationState, state: DatabaseState) -> IssuanceRows:
    """The issuance tables as they are; read again only when the DB was (``state`` is new)."""
    issuance = sim.issuance
    assert issuance is not None
    if issuance.reading is not None and issuance.reading_of is state:
        assert isinstance(issuance.reading, IssuanceRows)
        return issuance.reading
    ops, mints = issuance_tables.issuance_operations, issuance_tables.issuance_mints
    burns, payouts = issuance_tables.issuance_burns, bitcoin_tables.btc_payouts
    figures = _figures(sim)
    with sim.engine.connect() as connection:
        rows = IssuanceRows(
            operations={r.id: r for r in connection.execute(select(ops).order_by(ops.c.id))},
            mints=list(connection.execute(select(mints).order_by(mints.c.id))),
            burns=list(connection.execute(select(burns).order_by(burns.c.id))),
            payouts={
                r.id: r
                for r in connection.execute(
                    select(payouts).where(payouts.c.kind == "redemption").order_by(payouts.c.id)
                )
            },
            figures=figures,
        )
    issuance.reading, issuance.reading_of = rows, state
    return rows


def _figures(sim: SimulationState) -> GuardFigures:
    with sim.sandbox.database.uow() as uow:
        return uow.issuance.guard_figures()


def _world(sim: SimulationState) -> IssuanceWorld | None:
    return sim.issuance


def operation_of(command_id: str) -> str | None:
    """The operation a command id of the issuer names (``issuance:<op>:mint`` …), else None."""
    if not command_id.startswith("issuance:"):
        return None
    for suffix in _OPERATION_ID_OF:
        if command_id.endswith(suffix):
            return command_id.removeprefix("issuance:").removesuffix(suffix)
    return None


def check_minted_once(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    issuance = _world(sim)
    if issuance is None:
        return
    rows = read_issuance(sim, state)
    name = "istsi_minted_once"
    per_operation: dict[tuple[str, str], int] = {}
    for mint in rows.mints:
        if mint.status == "failed":
            continue
        kind = "remint" if mint.reason.endswith(":remint") else "mint"
        key = (mint.operation_id, kind)
        per_operation[key] = per_operation.get(key, 0) + 1
        op = rows.operations.get(mint.operation_id)
        expected = "bitcoin_deposit" if kind == "mint" else "token_withdrawal"
        if op is None or op.type != expected:
            sim.violation(name, f"mint {mint.id} for {mint.operation_id}, not a {expected}")
        if mint.status == "committed" and not issuance.committed.get(mint.id):
            sim.violation(name, f"mint {mint.id} is committed by our records, not on the ledger")
    for (operation_id, kind), count in sorted(per_operation.items()):
        if count > 1:
            sim.violation(name, f"{operation_id}: {count} {kind} records")
    for command_id, count in sorted(issuance.committed.items()):
        if count > 1:
            sim.violation(name, f"the ledger committed {command_id} {count} times")
        named = operation_of(command_id)
        if named is not None and named not in rows.operations:
            sim.violation(name, f"the ledger committed {command_id} for an unknown operation")


def check_reserves(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    issuance = _world(sim)
    if issuance is None:
        return
    figures = read_issuance(sim, state).figures
    cover = figures.reserves - figures.pending_redemptions
    ledger_supply = issuance.issuer.supply()
    for what, supply in (("our records", figures.supply), ("the ledger", ledger_supply)):
        if supply > cover:
            sim.violation(
                "istsi_reserves",
                f"supply by {what} {supply} sats > confirmed reserves {figures.reserves} − "
                f"pending redemptions {figures.pending_redemptions}",
            )


def check_redeemed_once(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    issuance = _world(sim)
    if issuance is None:
        return
    rows = read_issuance(sim, state)
    name = "istsi_redeemed_once"
    reminted = {m.operation_id for m in rows.mints if m.reason.endswith(":remint")}
    known = {f"redeem:{op_id}": op_id for op_id in rows.operations}
    for payout_id, payout in rows.payouts.items():
        op_id = known.get(payout_id)
        if op_id is None:
            sim.violation(name, f"redemption payout {payout_id} for no operation")
        elif payout.amount_sats != rows.operations[op_id].amount_sats:
            sim.violation(name, f"{payout_id} pays {payout.amount_sats} sats, not the redeemed")
    for op in rows.operations.values():
        if op.type == "token_withdrawal":
            payout = rows.payouts.get(f"redeem:{op.id}")
            paid = payout is not None and payout.status == "completed"
            if op.status == "completed" and (not paid or op.id in reminted):
                sim.violation(name, f"{op.id} completed, paid {paid}, reminted {op.id in reminted}")
            if paid and op.status == "compensated":
                sim.violation(name, f"{op.id} was paid and compensated")
            if final and op.status not in ("completed", "compensated"):
                sim.violation("istsi_settled", f"redemption {op.id} is {op.status} at {op.step}")
        elif final and op.status in ("pending", "waiting", "stuck"):
            sim.violation("istsi_settled", f"deposit {op.id} is {op.status} at {op.step}")


def check_books(sim: SimulationState, state: DatabaseState, final: bool) -> None:
    issuance = _world(sim)
    if issuance is None:
        return
    if state.cursor_offset != sim.ledger.ledger_end(sim.sandbox.node):
        return  # ingestion has yet to take in what the ledger did
    instrument = issuance.issuer.instrument
    owed = sum(
        (
            amount
            for account, amount in state.balances.items()
            if account.instrument == instrument
            and (account.name.startswith("customer:") or account.name in LIABILITY_NAMES)
        ),
        ZERO,
    )
    held: Decimal = sum(
        (h.amount for h in sim.ledger.active_holdings(sim.sandbox.treasury, instrument)), ZERO
    )
    if owed != held:
        sim.violation(
            "istsi_books",
            f"the books owe {amount_to_sats(owed)} sats of iSTSi, the treasury holds "
            f"{amount_to_sats(held)} on the ledger",
        )
