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
from sluice.domain.errors import InvalidInputError, InvalidOperationStateError, NotFoundError
from sluice.domain.ledger import InstrumentId, format_timestamp
from sluice.ports.issuance import IssuanceOperation
from sluice.services.approvals import Executor, approved_at, propose_operation
from sluice.services.compliance_officer import set_limits
from sluice.services.issuance_contracts import (
    apply_contract_addresses,
    check_contract_addresses,
)
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_overrides import (
    compensate_operation,
    resolve_operation,
    retry_operation,
)
from sluice.services.issuance_router import operation_json
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.mint_guard import resume_minting
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
        "config.change": change,
        **issuance_executors(context),
    }


# --- iSTSi issuance ------------------------------------------------------------------------------
#
# Parameters: ``issuance.retry`` / ``compensate`` / ``resolve``: {"operation_id"} (the reason is
# the approval's, or a "reason" parameter); ``issuance.resume_minting``: {} (reason as above);
# ``issuance.update_contract_addresses``: the address fields (services/issuance_contracts.FIELDS),
# at the top level or under "addresses", in force from the approval's ``effective_at``.
#
# Idempotent, as every executor must be (``sluice serve`` runs one again after a crash between
# its effect and the approval's record): an override's step record names its actor
# ``approval:<id>``, so an override this approval already made is answered from the operation
# as it stands instead of being tried again (a second retry would be refused, a second
# compensation could act on a later state); resuming minting is audited under an id derived from
# the approval, so a run again after minting was halted anew does not resume it a second time;
# the contract addresses are written once per approval id by the service itself.


def _issuance_context(context: ApiContext) -> IssuanceContext:
    if context.issuance is None:
        raise InvalidOperationStateError(
            "iSTSi issuance does not run in this process (it needs a [bitcoin] section and an "
            "issuer ledger): execute this approval where it runs"
        )
    return context.issuance.router.ctx


def _reason_of(approval: Approval) -> str:
    reason = approval.reason or approval.parameters.get("reason")
    if not isinstance(reason, str) or not reason.strip():
        raise InvalidInputError(f"{approval.operation}: the approval gives no reason")
    return reason


def _operation_id(approval: Approval) -> str:
    operation_id = approval.parameters.get("operation_id")
    if not isinstance(operation_id, str) or not operation_id:
        raise InvalidInputError(f"{approval.operation}: parameter operation_id is required")
    return operation_id


def _overridden_by(
    ctx: IssuanceContext, operation_id: str, action: str, actor: str
) -> IssuanceOperation | None:
    """The operation, when ``actor`` already made this override (its record is there)."""
    with ctx.uow() as uow:
        op = uow.issuance.get_operation(operation_id)
        if op is None:
            raise NotFoundError(f"no issuance operation {operation_id}")
        steps = uow.issuance.steps(operation_id)
    for step in steps:
        if step.detail.get("actor") == actor and step.detail.get("action") == action:
            return op
    return None


def issuance_executors(context: ApiContext) -> dict[str, Executor]:
    """The executors of the ``issuance.*`` approvals, bound to ``context``."""

    def override(action: str) -> Executor:
        def run(approval: Approval, _at: datetime) -> Mapping[str, object]:
            ctx = _issuance_context(context)
            operation_id = _operation_id(approval)
            actor = f"approval:{approval.id}"
            done = _overridden_by(ctx, operation_id, action, actor)
            if done is not None:
                return {"operation": operation_json(done), "already_done": True}
            reason = _reason_of(approval)
            if action == "retry":
                op = retry_operation(ctx, operation_id, reason=reason, actor=actor)
            elif action == "resolve":
                op = resolve_operation(ctx, operation_id, reason=reason, actor=actor)
            else:
                op = compensate_operation(
                    ctx, DEFINITIONS, operation_id, reason=reason, actor=actor
                )
            return {"operation": operation_json(op)}

        return run

    def resume(approval: Approval, _at: datetime) -> Mapping[str, object]:
        # Timed at the last approval: the audit id (resume_minting:<time>) is then the same in a
        # run again, which finds it and leaves a later halt alone.
        at = approved_at(approval)
        audit_id = f"resume_minting:{format_timestamp(at)}"
        with context.uow() as uow:
            if uow.audit.find(operation_id=audit_id, limit=1):
                return {"minting_halted": False, "already_done": True}
        resume_minting(
            context.uow, reason=_reason_of(approval), actor=f"approval:{approval.id}", at=at
        )
        with context.uow() as uow:
            halted = uow.issuance.minting_state().minting_halted
        return {"minting_halted": halted}

    def addresses(approval: Approval, at: datetime) -> Mapping[str, object]:
        p = approval.parameters
        nested = p.get("addresses")
        fields = nested if isinstance(nested, Mapping) else p
        checked = check_contract_addresses({k: v for k, v in fields.items() if k != "reason"})
        effective_at = approval.effective_at or at
        written = apply_contract_addresses(
            context.uow,
            checked,
            approval_id=approval.id,
            effective_at=effective_at,
            actor=f"approval:{approval.id}",
            at=at,
        )
        return {
            "effective_at": format_timestamp(effective_at),
            "written": written,
            **{k: v for k, v in checked.as_json().items() if v is not None},
        }

    return {
        "issuance.retry": override("retry"),
        "issuance.compensate": override("compensate"),
        "issuance.resolve": override("resolve"),
        "issuance.resume_minting": resume,
        "issuance.update_contract_addresses": addresses,
    }


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
