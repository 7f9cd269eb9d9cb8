"""The ``issuance.*`` critical operations as approval executors, shared by the HTTP API and the
command line (one implementation, so a proposal runs the same wherever it is executed).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime

from sluice.domain.approvals import Approval
from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.ledger import format_timestamp
from sluice.ports import UnitOfWorkFactory
from sluice.ports.issuance import IssuanceOperation
from sluice.services.approvals import Executor, approved_at
from sluice.services.issuance_contracts import apply_contract_addresses, check_contract_addresses
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_overrides import (
    compensate_operation,
    resolve_operation,
    retry_operation,
)
from sluice.services.issuance_router import operation_json
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.mint_guard import resume_minting

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


def issuance_executors(
    uow_factory: UnitOfWorkFactory, issuance_context: Callable[[], IssuanceContext]
) -> dict[str, Executor]:
    """The executors of the ``issuance.*`` approvals. ``issuance_context`` gives the router's
    context when it runs in this process (else raises, naming why)."""

    def override(action: str) -> Executor:
        def run(approval: Approval, _at: datetime) -> Mapping[str, object]:
            ctx = issuance_context()
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
        with uow_factory() as uow:
            if uow.audit.find(operation_id=audit_id, limit=1):
                return {"minting_halted": False, "already_done": True}
        resume_minting(
            uow_factory, reason=_reason_of(approval), actor=f"approval:{approval.id}", at=at
        )
        with uow_factory() as uow:
            halted = uow.issuance.minting_state().minting_halted
        return {"minting_halted": halted}

    def addresses(approval: Approval, at: datetime) -> Mapping[str, object]:
        p = approval.parameters
        nested = p.get("addresses")
        fields = nested if isinstance(nested, Mapping) else p
        checked = check_contract_addresses({k: v for k, v in fields.items() if k != "reason"})
        effective_at = approval.effective_at or at
        written = apply_contract_addresses(
            uow_factory,
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
