"""Where the deposit watcher hands deposits to issuance, inside its own transactions.

* :func:`open_deposit_operations` runs in the transaction that confirms deposits: each confirmed
  deposit of a customer gets its ``bitcoin_deposit`` operation (``btc-deposit:<txid>:<vout>``)
  in that same transaction. Confirmation happens once (a status change in that transaction), and
  an operation whose id exists is left alone, so a replayed or restarted watcher never opens a
  second one: a deposit is minted at most once. Change outputs and deposits to addresses of no
  customer open nothing.
* :func:`on_deposits_reorged` runs in the transaction that rolls a reorg back: a ``credited``
  deposit (taken as a mint's reserve) that left the chain halts minting with a critical alert,
  since the iSTSi minted against it may no longer be backed. Nothing else is undone
  automatically; an officer decides and resumes minting through an approval. A deposit a reorg
  removed before it was minted (its operation held by KYC, still at ``kyc``/``reserve``, or
  returned) raises a warning alert instead: nothing is minted against it (``reserve`` waits for
  it to confirm again, a return refuses an output that is not confirmed), but an officer should
  know before deciding on it, and a queued return payout of it must be looked at.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sluice.domain.deposits import Alert
from sluice.ports import UnitOfWork
from sluice.ports.bitcoin_watch import ConfirmedOutput, CustodyOutput, RolledBack
from sluice.services.issuance_router import create_operation
from sluice.services.mint_guard import halt_minting_in

ACTOR = "btc-watcher"
FIRST_STEP = "kyc"


def deposit_operation_id(txid: str, vout: int) -> str:
    return f"btc-deposit:{txid}:{vout}"


def open_deposit_operations(
    uow: UnitOfWork, confirmed: Sequence[ConfirmedOutput], at: datetime
) -> int:
    """Open the operation of each confirmed customer deposit, in the caller's transaction (the
    caller commits); answers how many were opened."""
    opened = 0
    for output in confirmed:
        if output.kind != "deposit" or output.customer_id is None or output.amount_sats <= 0:
            continue
        operation_id = deposit_operation_id(output.txid, output.vout)
        # Looked up first: a failed insert must not abort the watcher's transaction.
        if uow.issuance.get_operation(operation_id) is not None:
            continue
        row = uow.btc_watch.output(output.txid, output.vout)
        create_operation(
            uow,
            operation_id=operation_id,
            type="bitcoin_deposit",
            customer_id=output.customer_id,
            amount_sats=output.amount_sats,
            params={
                "txid": output.txid,
                "vout": output.vout,
                "address": row.address if row is not None else "",
            },
            first_step=FIRST_STEP,
            at=at,
        )
        opened += 1
    return opened


def on_deposits_reorged(uow: UnitOfWork, rolled: RolledBack, at: datetime) -> bool:
    """Halt minting when a reorg removed a credited deposit, and warn of a removed deposit whose
    operation is held or not minted yet (in the caller's transaction); answers whether minting
    was halted."""
    _warn_unminted(uow, rolled, at)
    gone = [o for o in rolled.reorged if o.kind == "deposit" and o.status == "credited"]
    if not gone:
        return False
    outpoints = [o.outpoint for o in gone]
    halt_minting_in(
        uow,
        reason=(
            f"credited deposit(s) {', '.join(outpoints)} left the chain in a reorg to height "
            f"{rolled.fork_height}: the iSTSi minted against them may no longer be backed"
        ),
        kind="issuance_reserve_reorged",
        details={
            "outputs": ",".join(outpoints),
            "amount_sats": str(sum(o.amount_sats for o in gone)),
            "fork_height": str(rolled.fork_height),
        },
        at=at,
        actor=ACTOR,
        alert_id=f"issuance_reserve_reorged:{rolled.fork_height}:{gone[0].outpoint}:"
        f"{gone[0].block_hash}",
    )
    return True


# Operations of a removed deposit worth a warning: not minted (held, or before/at ``reserve``),
# or returned (its return payout may still be queued).
_UNMINTED_STATUSES = ("held", "pending", "waiting", "stuck", "returned")


def _warn_unminted(uow: UnitOfWork, rolled: RolledBack, at: datetime) -> int:
    """A warning alert per reorged deposit (not credited: those halt minting) whose operation is
    held, not yet minted, or returned; answers how many were raised."""
    alerts: list[Alert] = []
    for output in rolled.reorged:
        if output.kind != "deposit" or output.status == "credited":
            continue
        op = uow.issuance.get_operation(deposit_operation_id(output.txid, output.vout))
        if op is None or op.status not in _UNMINTED_STATUSES:
            continue
        alerts.append(_unminted_alert(output, op.id, op.status, op.step, rolled.fork_height))
    if alerts:
        uow.issuance.add_alerts(alerts, at)
    return len(alerts)


def _unminted_alert(
    output: CustodyOutput, operation_id: str, status: str, step: str, fork_height: int
) -> Alert:
    if status == "returned":
        what = "it was returned: check its return payout before it is paid"
    else:
        what = f"its operation is {status} at {step}; nothing was minted against it"
    return Alert(
        id=f"issuance_deposit_reorged:{fork_height}:{output.outpoint}:{output.block_hash}",
        severity="warning",
        kind="issuance_deposit_reorged",
        message=(
            f"deposit {output.outpoint} ({output.amount_sats} sats, operation {operation_id}) "
            f"left the chain in a reorg to height {fork_height}; {what}"
        ),
        details={
            "operation": operation_id,
            "output": output.outpoint,
            "amount_sats": str(output.amount_sats),
            "status": status,
            "fork_height": str(fork_height),
        },
    )
