"""The critical operations (DESIGN §10) as approval executors, and how an endpoint proposes one.

An endpoint that asks for a critical operation never runs it: it records a proposal
(:func:`propose`) and answers 202 with it. The executor here runs once enough distinct
principals have approved (:mod:`sluice.services.approvals`). Executors are idempotent — after a
crash between approval and execution `sluice serve` runs them again.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.api.context import ApiContext
from sluice.api.security import Caller
from sluice.domain.approvals import Approval
from sluice.domain.compliance import TierLimits
from sluice.domain.errors import InvalidOperationStateError
from sluice.domain.ledger import InstrumentId
from sluice.services.approvals import Executor, propose_operation
from sluice.services.compliance_officer import set_limits
from sluice.services.exchange_inventory import fund_inventory
from sluice.services.issuance_approvals import issuance_executors as shared_issuance_executors
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.reference import onboard_instrument, set_instrument_enabled
from sluice.services.settings import apply_setting
from sluice.services.suspense import assign_suspense
from sluice.services.withdrawals import request_withdrawal


def _instrument(parameters: Mapping[str, Any]) -> InstrumentId:
    return InstrumentId(str(parameters["admin"]), str(parameters["id"]))


def _decimal(value: object) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def executors(context: ApiContext) -> dict[str, Executor]:
    """The executor of every critical operation, bound to ``context``."""

    def onboard(approval: Approval, at: datetime) -> Mapping[str, object]:
        p = approval.parameters
        added = onboard_instrument(
            context.uow,
            _instrument(p),
            registry_url=p.get("registry_url"),  # type: ignore[arg-type]
            trusted=bool(p.get("trusted", True)),
            transfer_kinds=tuple(p.get("transfer_kinds") or ("direct",)),  # type: ignore[arg-type]
            limits=p.get("limits"),  # type: ignore[arg-type]
            actor=f"approval:{approval.id}",
            at=at,
        )
        return {"onboarded": added}

    def enabler(enabled: bool) -> Executor:
        def run(approval: Approval, at: datetime) -> Mapping[str, object]:
            set_instrument_enabled(
                context.uow,
                _instrument(approval.parameters),
                enabled,
                actor=f"approval:{approval.id}",
                at=at,
            )
            return {"enabled": enabled}

        return run

    def large_withdrawal(approval: Approval, _at: datetime) -> Mapping[str, object]:
        p = approval.parameters
        record = request_withdrawal(
            context.uow,
            treasury=context.treasury,
            customer_id=str(p["customer_id"]),
            receiver=str(p["receiver"]),
            instrument=InstrumentId(str(p["instrument_admin"]), str(p["instrument_id"])),
            amount=str(p["amount"]),
            idempotency_key=str(p["idempotency_key"]),
            clock=context.clock,
            settings=context.withdrawal_settings,
            compliance=context.compliance,
            actor=f"approval:{approval.id}",
        )
        return {"withdrawal_id": record.id, "status": record.status}

    def limits(approval: Approval, at: datetime) -> Mapping[str, object]:
        p = approval.parameters
        set_limits(
            context.uow,
            int(p["tier"]),  # type: ignore[call-overload]
            str(p["operation"]),
            TierLimits(
                _decimal(p.get("per_operation")),
                _decimal(p.get("daily")),
                _decimal(p.get("monthly")),
            ),
            actor=f"approval:{approval.id}",
            at=at,
            reason=str(approval.reason or "approved limit change"),
        )
        return {"tier": p["tier"], "operation": p["operation"]}

    def assign(approval: Approval, at: datetime) -> Mapping[str, object]:
        p = approval.parameters
        item = assign_suspense(
            context.uow,
            str(p["item_id"]),
            str(p["customer_id"]),
            actor=f"approval:{approval.id}",
            at=at,
            approval_id=approval.id,
            reason=approval.reason,
        )
        return {"item_id": item.id, "assigned_to": item.assigned_to}

    def fund(approval: Approval, at: datetime) -> Mapping[str, object]:
        item = fund_inventory(
            context.uow,
            str(approval.parameters["item_id"]),
            actor=f"approval:{approval.id}",
            at=at,
            approval_id=approval.id,
            reason=approval.reason,
        )
        return {"item_id": item.id, "assigned_to": item.assigned_to}

    def change(approval: Approval, at: datetime) -> Mapping[str, object]:
        p = approval.parameters
        assert approval.effective_at is not None
        record = apply_setting(
            context.uow,
            key=str(p["key"]),
            value=p.get("value"),
            effective_at=approval.effective_at,
            set_by=approval.proposed_by,
            approval_id=approval.id,
            at=at,
        )
        context.settings.refresh()
        return {"key": record.key, "effective_at": record.effective_at.isoformat()}

    return {
        "instrument.onboard": onboard,
        "instrument.enable": enabler(True),
        "instrument.disable": enabler(False),
        "withdrawal.large": large_withdrawal,
        "compliance.limits": limits,
        "suspense.assign": assign,
        "exchange.inventory.fund": fund,
        "config.change": change,
        **issuance_executors(context),
    }


# --- iSTSi issuance: services/issuance_approvals.py -----------------------------------------------


def _issuance_context(context: ApiContext) -> IssuanceContext:
    if context.issuance is None:
        raise InvalidOperationStateError(
            "iSTSi issuance does not run in this process (it needs a [bitcoin] section and an "
            "issuer ledger): execute this approval where it runs"
        )
    return context.issuance.router.ctx


def issuance_executors(context: ApiContext) -> dict[str, Executor]:
    """The executors of the ``issuance.*`` approvals, bound to ``context``."""
    return shared_issuance_executors(context.uow, lambda: _issuance_context(context))


def propose(
    context: ApiContext,
    caller: Caller,
    operation: str,
    parameters: Mapping[str, object],
    *,
    customer_id: str | None = None,
    approval_id: str | None = None,
    reason: str | None = None,
    timelock_s: float = 0.0,
) -> Approval:
    """Record a proposal of ``operation`` by the caller (run at once if it needs no more
    approvals than the proposer's own)."""
    return propose_operation(
        context.uow,
        operation=operation,
        parameters=parameters,
        proposer=caller.require(),
        at=context.clock(),
        required=context.settings.approvals_required(),
        executors=context.executors,
        customer_id=customer_id,
        timelock_s=timelock_s,
        approval_id=approval_id,
        reason=reason,
    )
