"""A compliance officer's decision on a held Bitcoin deposit (a ``bitcoin_deposit`` operation the
``kyc`` step held): release it to be minted, or return the Bitcoin.

* :func:`release_held_deposit` overrides the KYC refusal: the operation resumes at ``reserve``
  (the mint guard still applies), the override is audited and the review item closed.
* :func:`return_held_deposit` queues a custody payout of kind ``return`` (id
  ``return:<operation id>``) for the deposit's amount (its network fee deducted) and closes the
  operation as ``returned``.

Both are refused (:class:`InvalidOperationStateError`, 41) for a deposit whose sender is listed
(flagged, or on the sanctions list — as the ``kyc`` step found it, or as it is screened now):
such funds stay frozen in custody.

What makes it safe: only a ``held`` operation is moved, with a version check (two officers
acting at once: one wins, the other is refused). A return requests its payout under a fixed id
before the operation is closed: after a crash the same call answers the same payout (a second
request of that id with another address is a duplicate, refused), so the deposit is paid back
at most once, and a returned operation can never be released (nor a released one returned).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sluice.domain.audit import AuditEntry
from sluice.domain.errors import InvalidInputError, InvalidOperationStateError, NotFoundError
from sluice.ports.issuance import IssuanceOperation
from sluice.services.btc_payouts import request_payout
from sluice.services.issuance_deposit import review_id, screen_senders
from sluice.services.issuance_router import record_override
from sluice.services.issuance_settings import IssuanceContext


def _held(ctx: IssuanceContext, operation_id: str, reason: str) -> IssuanceOperation:
    if not reason.strip():
        raise InvalidInputError("an officer's decision on a held deposit needs a reason")
    with ctx.uow() as uow:
        op = uow.issuance.get_operation(operation_id)
    if op is None:
        raise NotFoundError(f"no issuance operation {operation_id}")
    if op.type != "bitcoin_deposit":
        raise InvalidOperationStateError(f"{operation_id} is a {op.type}, not a bitcoin deposit")
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


def _close(
    ctx: IssuanceContext,
    op: IssuanceOperation,
    moved: IssuanceOperation,
    *,
    audit_name: str,
    actor: str,
    reason: str,
    detail: dict[str, Any],
) -> IssuanceOperation:
    at = moved.updated_at
    with ctx.uow() as uow:
        current = uow.issuance.get_operation(op.id, lock=True)
        if current is None or current.status != "held" or current.version != op.version:
            raise InvalidOperationStateError(
                f"{op.id} moved meanwhile ({current.status if current else 'gone'})"
            )
        if not uow.issuance.update_operation(moved, expected_version=op.version):
            raise InvalidOperationStateError(f"{op.id} moved meanwhile")
        record_override(
            uow, op, kind="override", outcome="done", at=at, detail={**detail, "reason": reason}
        )
        uow.compliance.close_review(review_id(op.id), actor, f"{audit_name}: {reason}", at)
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=op.id,
                    operation=audit_name,
                    actor=actor,
                    recorded_at=at,
                    customer_id=op.customer_id,
                    kyc={"override": True, "was": op.result.get("kyc")},
                    parameters={"reason": reason, "amount_sats": op.amount_sats, **detail},
                    state_changes=[
                        {"operation": op.id, "status": moved.status, "step": moved.step}
                    ],
                )
            ]
        )
        uow.commit()
    return moved


def release_held_deposit(
    ctx: IssuanceContext, operation_id: str, *, reason: str, actor: str
) -> IssuanceOperation:
    """Override the KYC refusal: the operation goes on at ``reserve``."""
    op = _held(ctx, operation_id, reason)
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


def return_held_deposit(
    ctx: IssuanceContext, operation_id: str, *, address: str, reason: str, actor: str
) -> IssuanceOperation:
    """Pay the deposit back to ``address`` (a custody payout of kind ``return``, its network fee
    deducted) and close the operation as ``returned``."""
    op = _held(ctx, operation_id, reason)
    _refuse_listed(ctx, op, "returned")
    payout_id = f"return:{op.id}"
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
    at = ctx.clock()
    returned = {"return_payout": payout.id, "return_address": address}
    moved = replace(
        op,
        status="returned",
        step="done",
        attempts=0,
        next_attempt_at=None,
        last_error=None,
        updated_at=at,
        completed_at=at,
        version=op.version + 1,
        result={**op.result, **returned},
    )
    return _close(
        ctx,
        op,
        moved,
        audit_name="issuance_deposit_returned",
        actor=actor,
        reason=reason,
        detail={"action": "return", **returned},
    )
