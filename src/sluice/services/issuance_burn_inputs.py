"""The holdings an iSTSi burn spends, reserved for it first.

The treasury's iSTSi holdings are one pool with two spenders: the withdrawal worker (customers'
iSTSi withdrawals, and the pool's merges and splits) reserves the holdings each of its records
spends, and the redemption's ``burn`` step burns iSTSi from the same holdings. A burn that let
the ledger pick its inputs could spend a holding a withdrawal had reserved and was about to
submit: that attempt would be rejected and retried, a merge failed, for no reason of their own.
So the burn reserves its inputs the same way (``reserved_by`` = :func:`burn_holder` of the
burn's record id, which is also its command id), before it is first sent, and every send of it
names them.

* A burn sent again (no answer, a crash after the send) names the same holdings: the ledger's
  command deduplication answers a second send of one that committed, and one that did not commit
  can still spend them (nobody else could take them).
* A burn the ledger rejected gives its holdings back (:func:`release_burn_inputs`, in the
  transaction that records the rejection); an operator's retry reserves afresh.
* While the free holdings do not cover the burn, the step waits (withdrawals in flight hold the
  rest); nothing is sent.
"""

from __future__ import annotations

import hashlib

from sluice.domain.coin_selection import select_inputs
from sluice.domain.ledger import InstrumentId
from sluice.ports.issuance import BurnRecord, sats_to_amount
from sluice.ports.unit_of_work import UnitOfWork
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.withdrawal_attempts import holding_candidates


def burn_holder(burn_id: str) -> str:
    """What a burn's reserved holdings name as their holder: ``burn-`` and 32 hex digits of the
    burn's id (a record id may be longer than the holdings' ``reserved_by`` column; a withdrawal
    record's id has the same shape, ``wd-`` and 32 hex digits)."""
    return "burn-" + hashlib.sha256(burn_id.encode()).hexdigest()[:32]


def burn_inputs(ctx: IssuanceContext, burn: BurnRecord, instrument: InstrumentId) -> list[str]:
    """The holdings this burn spends: those it reserved already, or free ones of its owner
    covering its amount, reserved now (committed before the burn is sent). Empty when the free
    holdings do not cover it yet."""
    with ctx.uow() as uow:
        holder = burn_holder(burn.id)
        held = uow.withdrawals.reserved_by(holder)
        if held:
            return held
        candidates = holding_candidates(uow.withdrawals.spendable_holdings(burn.owner, instrument))
        selection = select_inputs(candidates, sats_to_amount(burn.amount_sats), now=ctx.clock())
        if selection is None:
            return []
        chosen = [candidate.contract_id for candidate in selection.inputs]
        if not uow.withdrawals.reserve(chosen, holder):
            return []  # taken meanwhile: the next round selects again
        uow.commit()
    return chosen


def release_burn_inputs(uow: UnitOfWork, burn_id: str) -> None:
    """Give back what a burn reserved (it was rejected: none of it was spent by it)."""
    uow.withdrawals.release(burn_holder(burn_id))
