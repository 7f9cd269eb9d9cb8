"""A compliance officer's decision on a held Bitcoin deposit (a ``bitcoin_deposit`` operation the
``kyc`` step held): release it to be minted, or return the Bitcoin.

* :func:`release_held_deposit` overrides the KYC refusal: the operation resumes at ``reserve``
  (the mint guard still applies), the override is audited and the review item closed.
* :func:`return_held_deposit` pays the deposit back: a custody payout of kind ``return`` (id
  ``return:<operation id>``) for the deposit's amount (its network fee deducted), and the
  operation closes as ``returned``. It also returns a ``compensated`` deposit nothing was minted
  for (no mint record, or the ``failed`` record that fences one), whose Bitcoin would otherwise
  stay in custody with no way back.

Both are refused (:class:`InvalidOperationStateError`, 41) for a deposit whose sender is listed
(flagged, or on the sanctions list — as the ``kyc`` step found it, or as it is screened now):
such funds stay frozen in custody. A return is also refused when the officer's address is listed
(:class:`AddressBlacklistedError`, 22, audited), and (41) when the deposit's custody output is
not confirmed in the active chain (a reorg took it away: the Bitcoin never arrived) or was spent
by something other than custody's own payout batches.

What makes a return safe (paid at most once, never both paid back and minted):

1. *Out of ``held`` first.* One version-checked transaction moves the operation to status
   ``returned`` at step ``returning`` (the router never runs it; release, retry, compensate and
   resolve all refuse it) and records the fence: a ``failed`` mint record
   ``issuance:<op>:mint``, so a late mint of it is refused, and a mint already recorded (not
   failed) refuses the return. Two officers acting at once: one moves it, the other is refused
   before any payout exists.
2. *Then the payout*, under its fixed id ``return:<op>``: requesting it again answers the same
   payout (another address is a duplicate, refused), so it is queued at most once.
3. *Then step ``done``.* A crash between 1 and 3 leaves the operation at step ``returning``; the
   same call resumes it (no second move, the payout requested again by its id). Release also
   refuses any deposit for which a payout ``return:<op>`` exists (a return left half-done by an
   older version, say).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime
from typing import Any

from sluice.domain.audit import AuditEntry
from sluice.domain.errors import (
    AddressBlacklistedError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
)
from sluice.ports import UnitOfWork
from sluice.ports.bitcoin_watch import CustodyOutput
from sluice.ports.issuance import IssuanceOperation, MintRecord
from sluice.services.btc_payouts import request_payout
from sluice.services.compliance import compliance_event
from sluice.services.events import emit_all
from sluice.services.issuance_deposit import mint_id, review_id, screen_senders
from sluice.services.issuance_events import operation_events
from sluice.services.issuance_router import record_override
from sluice.services.issuance_settings import IssuanceContext

RETURNING = "returning"  # the step of a return whose payout may not be requested yet
# The custody output of a deposit that may be paid back: in the active chain, confirmed.
RETURNABLE_OUTPUT = ("confirmed", "credited")


def return_payout_id(operation_id: str) -> str:
    return f"return:{operation_id}"


def _operation(ctx: IssuanceContext, operation_id: str, reason: str) -> IssuanceOperation:
    if not reason.strip():
        raise InvalidInputError("an officer's decision on a held deposit needs a reason")
    with ctx.uow() as uow:
        op = uow.issuance.get_operation(operation_id)
    if op is None:
        raise NotFoundError(f"no issuance operation {operation_id}")
    if op.type != "bitcoin_deposit":
        raise InvalidOperationStateError(f"{operation_id} is a {op.type}, not a bitcoin deposit")
    return op


def _held(ctx: IssuanceContext, operation_id: str, reason: str) -> IssuanceOperation:
    op = _operation(ctx, operation_id, reason)
    if op.status != "held":
        raise InvalidOperationStateError(f"{operation_id} is {op.status}, not held")
    return op


def _refuse_listed(ctx: IssuanceContext, op: IssuanceOperation, action: str) -> None:
    kyc = op.result.get("kyc")
    listed: list[str] = []
    if isinstance(kyc, dict):
        listed = [str(a) for a in kyc.get("listed_senders") or []]
    now = screen_senders(ctx, op)
    listed = sorted({*listed, *now})
    if listed:
        raise InvalidOperationStateError(
            f"{op.id}: the deposit's sender {', '.join(listed)} is listed; it cannot be "
            f"{action} (the funds stay frozen)"
        )


def _audit(
    ctx: IssuanceContext,
    op: IssuanceOperation,
    name: str,
    *,
    actor: str,
    parameters: dict[str, Any],
    error: str | None = None,
    state_changes: list[dict[str, Any]] | None = None,
) -> AuditEntry:
    return AuditEntry(
        operation_id=op.id,
        operation=name,
        actor=actor,
        recorded_at=ctx.clock(),
        customer_id=op.customer_id,
        kyc={"override": True, "was": op.result.get("kyc")},
        parameters={"amount_sats": op.amount_sats, **parameters},
        state_changes=state_changes or [],
        error=error,
    )


def _close(
    ctx: IssuanceContext,
    op: IssuanceOperation,
    moved: IssuanceOperation,
    *,
    audit_name: str,
    actor: str,
    reason: str,
    detail: dict[str, Any],
    fence: bool = False,
) -> IssuanceOperation:
    """Move ``op`` to ``moved`` in one transaction, only from the status and version read (else
    41): the override step, the review item closed, the audit record; with ``fence``, the
    ``failed`` mint record that keeps it from ever being minted."""
    at = moved.updated_at
    released = moved.status == "pending"
    action = "issuance_deposit_released" if released else "issuance_deposit_returned"
    with ctx.uow() as uow:
        current = uow.issuance.get_operation(op.id, lock=True)
        if current is None or current.status != op.status or current.version != op.version:
            raise InvalidOperationStateError(
                f"{op.id} moved meanwhile ({current.status if current else 'gone'})"
            )
        if detail.get("action") == "release" and uow.btc_payouts.get_payout(
            return_payout_id(op.id)
        ):
            raise InvalidOperationStateError(
                f"{op.id}: its Bitcoin is being returned (payout {return_payout_id(op.id)}); "
                "it cannot be released"
            )
        if fence:
            _fence_mint(uow, ctx, op, at)
        if not uow.issuance.update_operation(moved, expected_version=op.version):
            raise InvalidOperationStateError(f"{op.id} moved meanwhile")
        # The deposit's event (btc_deposit_released / btc_deposit_returned) and the officer's
        # compliance action, in the transaction of the move.
        emit_all(uow, operation_events(op, moved, at, actor=actor, reason=reason))
        emit_all(
            uow,
            [
                compliance_event(
                    op.customer_id,
                    action,
                    at=at,
                    actor=actor,
                    reason=reason,
                    subject=op.id,
                    details={"amount_sats": op.amount_sats, **detail},
                    changes=[{"operation": op.id, "status": moved.status, "step": moved.step}],
                )
            ],
        )
        record_override(
            uow, op, kind="override", outcome="done", at=at, detail={**detail, "reason": reason}
        )
        uow.compliance.close_review(review_id(op.id), actor, f"{audit_name}: {reason}", at)
        uow.audit.append(
            [
                _audit(
                    ctx,
                    op,
                    audit_name,
                    actor=actor,
                    parameters={"reason": reason, **detail},
                    state_changes=[
                        {"operation": op.id, "status": moved.status, "step": moved.step}
                    ],
                )
            ]
        )
        uow.commit()
    return moved


def _fence_mint(uow: UnitOfWork, ctx: IssuanceContext, op: IssuanceOperation, at: datetime) -> None:
    """A ``failed`` mint record for the deposit (inserted unless one exists): ``record_mint``
    answers an existing record as it is, so no mint of it is ever sent afterwards. A recorded
    mint that did not fail refuses the return: its iSTSi may exist."""
    fence = MintRecord(
        id=mint_id(op.id),
        operation_id=op.id,
        customer_id=op.customer_id,
        owner=ctx.treasury,
        amount_sats=op.amount_sats,
        reason=f"issuance:{op.id}",
        status="failed",
        created_at=at,
    )
    if uow.issuance.insert_mint(fence):
        return
    record = uow.issuance.get_mint(fence.id)
    if record is not None and record.status != "failed":
        raise InvalidOperationStateError(
            f"{op.id}: the mint {record.id} is {record.status}; a minted deposit is not "
            "returned (the customer redeems it)"
        )


def release_held_deposit(
    ctx: IssuanceContext, operation_id: str, *, reason: str, actor: str
) -> IssuanceOperation:
    """Override the KYC refusal: the operation goes on at ``reserve``. Refused (41) when a
    return of it was requested."""
    op = _held(ctx, operation_id, reason)
    with ctx.uow() as uow:
        returning = uow.btc_payouts.get_payout(return_payout_id(op.id)) is not None
    if returning:
        raise InvalidOperationStateError(
            f"{op.id}: its Bitcoin is being returned (payout {return_payout_id(op.id)}); it "
            "cannot be released"
        )
    _refuse_listed(ctx, op, "released")
    at = ctx.clock()
    moved = replace(
        op,
        status="pending",
        step="reserve",
        attempts=0,
        next_attempt_at=None,
        last_error=None,
        updated_at=at,
        version=op.version + 1,
        result={**op.result, "released_by": actor},
    )
    return _close(
        ctx,
        op,
        moved,
        audit_name="issuance_deposit_released",
        actor=actor,
        reason=reason,
        detail={"action": "release"},
    )


# --- return ---------------------------------------------------------------------------------------


def _screen_address(
    ctx: IssuanceContext, op: IssuanceOperation, address: str, *, reason: str, actor: str
) -> None:
    """Refuse a listed return address (22), with an audit record of the refusal."""
    with ctx.uow() as uow:
        session = ctx.registry.session(
            uow, [op.customer_id], [address], since=ctx.clock(), operations=["mint"], lock=False
        )
        listed = session.listed(address)
        if listed is None:
            return
        message = (
            f"{op.id}: the return address {address} is {listed}; the deposit is not paid to it"
        )
        uow.audit.append(
            [
                _audit(
                    ctx,
                    op,
                    "issuance_deposit_return_refused",
                    actor=actor,
                    parameters={"reason": reason, "address": address, "listed": listed},
                    error=message,
                )
            ]
        )
        uow.commit()
    raise AddressBlacklistedError(message)


def _check_output(ctx: IssuanceContext, op: IssuanceOperation) -> CustodyOutput:
    """The deposit's custody output must be confirmed in the active chain and still custody's
    (unspent, or spent or reserved by custody's own payout batch: pooled), else 41."""
    txid, vout = str(op.params["txid"]), int(op.params["vout"])
    with ctx.uow() as uow:
        output = uow.btc_watch.output(txid, vout)
    outpoint = f"{txid}:{vout}"
    if output is None:
        raise InvalidOperationStateError(f"{op.id}: custody has no output {outpoint}")
    if output.status not in RETURNABLE_OUTPUT:
        raise InvalidOperationStateError(
            f"{op.id}: the deposit's output {outpoint} is {output.status}, not confirmed in the "
            "active chain (a reorg may have taken it away): nothing arrived to be returned"
        )
    if output.spent_txid is not None and output.reserved_by is None:
        raise InvalidOperationStateError(
            f"{op.id}: the deposit's output {outpoint} was spent by {output.spent_txid}, not by a "
            "custody payout: it is not returned"
        )
    return output


def _returnable(ctx: IssuanceContext, op: IssuanceOperation) -> None:
    if op.status == "held":
        return
    if op.status == "compensated":
        with ctx.uow() as uow:
            record = uow.issuance.get_mint(mint_id(op.id))
        if record is None or record.status == "failed":
            return
        raise InvalidOperationStateError(
            f"{op.id}: compensated, but its mint {record.id} is {record.status}; a minted "
            "deposit is not returned"
        )
    raise InvalidOperationStateError(f"{op.id} is {op.status}, not held")


def return_held_deposit(
    ctx: IssuanceContext, operation_id: str, *, address: str, reason: str, actor: str
) -> IssuanceOperation:
    """Pay the deposit back to ``address`` (a custody payout of kind ``return``, its network fee
    deducted) and close the operation as ``returned``. Called again for a return a crash left at
    step ``returning``, it finishes it."""
    op = _operation(ctx, operation_id, reason)
    payout_id = return_payout_id(op.id)
    if not (op.status == "returned" and op.step == RETURNING):
        _returnable(ctx, op)
        output = _check_output(ctx, op)  # first: a reorged deposit's senders may be unreadable
        _refuse_listed(ctx, op, "returned")
        _screen_address(ctx, op, address, reason=reason, actor=actor)
        at = ctx.clock()
        returning = {
            "return_payout": payout_id,
            "return_address": address,
            "returned_from": op.status,
        }
        moved = replace(
            op,
            status="returned",
            step=RETURNING,
            attempts=0,
            next_attempt_at=None,
            last_error=None,
            updated_at=at,
            version=op.version + 1,
            result={**op.result, **returning},
        )
        op = _close(
            ctx,
            op,
            moved,
            audit_name="issuance_deposit_returning",
            actor=actor,
            reason=reason,
            detail={"action": "return", "output": output.outpoint, **returning},
            fence=True,
        )
    elif op.result.get("return_address") != address:
        raise InvalidOperationStateError(
            f"{op.id} is being returned to {op.result.get('return_address')}, not {address}"
        )
    payout = request_payout(
        ctx.uow,
        ctx.wallet,
        ctx.bitcoin,
        payout_id=payout_id,
        address=address,
        amount_sats=op.amount_sats,
        kind="return",
        requested_by=actor,
        clock=ctx.clock,
    )
    return _finish_return(ctx, op, payout.id, actor=actor, reason=reason)


def _finish_return(
    ctx: IssuanceContext, op: IssuanceOperation, payout_id: str, *, actor: str, reason: str
) -> IssuanceOperation:
    """Step ``returning`` → ``done`` once the payout is queued (version-checked; a concurrent
    resume that finished first is answered as it left the operation)."""
    at = ctx.clock()
    done = replace(
        op,
        step="done",
        updated_at=at,
        completed_at=at,
        version=op.version + 1,
        result={**op.result, "return_payout": payout_id},
    )
    with ctx.uow() as uow:
        current = uow.issuance.get_operation(op.id, lock=True)
        if current is None or current.status != "returned":
            raise InvalidOperationStateError(f"{op.id} moved meanwhile")
        if current.step != RETURNING:
            return current
        if not uow.issuance.update_operation(
            replace(done, version=current.version + 1), expected_version=current.version
        ):
            raise InvalidOperationStateError(f"{op.id} moved meanwhile")
        record_override(
            uow,
            current,
            kind="override",
            outcome="done",
            at=at,
            detail={"action": "return", "return_payout": payout_id, "reason": reason},
        )
        uow.audit.append(
            [
                _audit(
                    ctx,
                    current,
                    "issuance_deposit_returned",
                    actor=actor,
                    parameters={
                        "reason": reason,
                        "action": "return",
                        "return_payout": payout_id,
                        "return_address": current.result.get("return_address"),
                    },
                    state_changes=[{"operation": op.id, "status": "returned", "step": "done"}],
                )
            ]
        )
        uow.commit()
    return replace(done, version=current.version + 1)
