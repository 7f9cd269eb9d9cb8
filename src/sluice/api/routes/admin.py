"""Approvals, configuration changes (approvals + time lock), API keys and the audit trail."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from starlette.responses import Response

from sluice.api.errors import JsonResponse
from sluice.api.operations import propose
from sluice.api.routes.common import (
    ERRORS,
    PROPOSED,
    AnyPrincipal,
    AuditReaders,
    Context,
    PageParams,
    RouterAdmin,
    Staff,
)
from sluice.api.schemas import (
    ApiKeyIn,
    ApiKeyOut,
    ApprovalOut,
    AuditOut,
    AuditVerifyOut,
    ConfigChangeIn,
    ConfigOut,
    NewApiKeyOut,
    Page,
    SettingOut,
    VoteIn,
    api_key_out,
    approval_out,
    page,
)
from sluice.domain.approvals import APPROVAL_STATUSES, Approval
from sluice.domain.errors import NotFoundError, PermissionDeniedError
from sluice.services.access import create_api_key, list_api_keys, revoke_api_key
from sluice.services.approvals import (
    cancel_approval,
    get_approval,
    list_approvals,
    vote_on_approval,
)
from sluice.services.audit import list_audit_records, verify_audit_log

router = APIRouter(tags=["administration"], responses=ERRORS)

ApprovalId = Annotated[str, Path(min_length=1, max_length=120, pattern=r"^[A-Za-z0-9._:-]+$")]
KeyId = Annotated[str, Path(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9_-]+$")]


# --- approvals -----------------------------------------------------------------------------------


@router.get("/v1/approvals", response_model=Page[ApprovalOut], summary="Proposals, newest first")
def approvals(
    context: Context,
    paging: PageParams,
    caller: AnyPrincipal,
    status: Annotated[Literal[APPROVAL_STATUSES] | None, Query()] = None,  # type: ignore[valid-type]
) -> dict[str, object]:
    found = list_approvals(
        context.uow,
        status=status,
        customer_id=caller.customer_scope,
        offset=paging.offset,
        limit=paging.limit,
    )
    return page([approval_out(a) for a in found], paging.offset, paging.limit)


def _visible_approval(context: Context, caller: AnyPrincipal, approval_id: str) -> Approval:
    """The proposal, if the caller may see it: a user only those about their own customer."""
    found = get_approval(context.uow, approval_id)
    if caller.customer_scope is not None and found.customer_id != caller.customer_scope:
        raise NotFoundError(f"no approval {approval_id}")
    return found


@router.get("/v1/approvals/{approval_id}", response_model=ApprovalOut, summary="A proposal")
def approval(approval_id: ApprovalId, context: Context, caller: AnyPrincipal) -> ApprovalOut:
    return approval_out(_visible_approval(context, caller, approval_id))


def _vote(
    approval_id: str,
    decision: Literal["approve", "reject"],
    body: VoteIn,
    context: Context,
    caller: Staff,
) -> ApprovalOut:
    principal = caller.require()
    result = vote_on_approval(
        context.uow,
        approval_id,
        principal=principal,
        decision=decision,
        at=context.clock(),
        executors=context.executors,
        comment=body.comment,
    )
    return approval_out(result)


@router.post(
    "/v1/approvals/{approval_id}/approve",
    response_model=ApprovalOut,
    summary="Approve (a distinct principal holding the operation's capability)",
)
def approve(approval_id: ApprovalId, body: VoteIn, context: Context, caller: Staff) -> ApprovalOut:
    return _vote(approval_id, "approve", body, context, caller)


@router.post(
    "/v1/approvals/{approval_id}/reject", response_model=ApprovalOut, summary="Reject (ends it)"
)
def reject(approval_id: ApprovalId, body: VoteIn, context: Context, caller: Staff) -> ApprovalOut:
    return _vote(approval_id, "reject", body, context, caller)


@router.post(
    "/v1/approvals/{approval_id}/cancel",
    response_model=ApprovalOut,
    summary="Withdraw one's own proposal",
)
def cancel(approval_id: ApprovalId, context: Context, caller: AnyPrincipal) -> ApprovalOut:
    _visible_approval(context, caller, approval_id)
    return approval_out(
        cancel_approval(context.uow, approval_id, principal=caller.require(), at=context.clock())
    )


# --- configuration -------------------------------------------------------------------------------


@router.get("/v1/config", response_model=ConfigOut, summary="Settings in force and scheduled")
def config(context: Context, _caller: RouterAdmin) -> ConfigOut:
    return ConfigOut(
        settings=[SettingOut(**entry) for entry in context.settings.describe()],
        deployment=dict(context.deployment),
    )


@router.post(
    "/v1/config/changes",
    status_code=202,
    responses=PROPOSED,
    summary="Change a setting: takes effect after approvals and the time lock",
)
def change_config(body: ConfigChangeIn, context: Context, caller: RouterAdmin) -> Response:
    value = context.settings.check_change(body.key, body.value)
    approval = propose(
        context,
        caller,
        "config.change",
        {"key": body.key, "value": value},
        reason=body.reason,
        timelock_s=context.settings.config_timelock_s(),
    )
    return JsonResponse(approval_out(approval).model_dump(mode="json"), 202)


# --- API keys ------------------------------------------------------------------------------------


@router.get("/v1/api-keys", response_model=Page[ApiKeyOut], summary="API keys (never secrets)")
def api_keys(context: Context, paging: PageParams, _caller: RouterAdmin) -> dict[str, object]:
    found = list_api_keys(context.uow, offset=paging.offset, limit=paging.limit)
    return page([api_key_out(k) for k in found], paging.offset, paging.limit)


@router.post(
    "/v1/api-keys",
    response_model=NewApiKeyOut,
    status_code=201,
    summary="Create an API key; the key is in this answer only",
)
def new_api_key(body: ApiKeyIn, context: Context, caller: RouterAdmin) -> NewApiKeyOut:
    principal = caller.require()
    if body.role == "super_admin" and not principal.may("component_updates"):
        raise PermissionDeniedError("only a super admin can create super admin keys")
    record, key = create_api_key(
        context.uow,
        role=body.role,
        customer_id=body.customer_id,
        label=body.label,
        actor=caller.actor,
        at=context.clock(),
    )
    return NewApiKeyOut(**api_key_out(record).model_dump(), key=key)


@router.post("/v1/api-keys/{key_id}/revoke", response_model=ApiKeyOut, summary="Revoke a key")
def revoke(key_id: KeyId, context: Context, caller: RouterAdmin) -> ApiKeyOut:
    record = revoke_api_key(context.uow, key_id, actor=caller.actor, at=context.clock())
    context.keys.forget(key_id)
    return api_key_out(record)


# --- audit ---------------------------------------------------------------------------------------


@router.get("/v1/audit", response_model=list[AuditOut], summary="Audit records (hash-chained)")
def audit(
    context: Context,
    _caller: AuditReaders,
    customer_id: Annotated[str | None, Query(max_length=100)] = None,
    operation_id: Annotated[str | None, Query(max_length=300)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[AuditOut]:
    records = list_audit_records(
        context.uow, customer_id=customer_id, operation_id=operation_id, limit=limit
    )
    return [
        AuditOut(
            seq=r.seq,
            operation_id=r.entry.operation_id,
            operation=r.entry.operation,
            actor=r.entry.actor,
            recorded_at=r.entry.recorded_at,
            customer_id=r.entry.customer_id,
            parameters=r.entry.parameters,
            checks=list(r.entry.checks),
            state_changes=list(r.entry.state_changes),
            error=r.entry.error,
            correlation_id=r.entry.correlation_id,
            hash=r.hash,
        )
        for r in records
    ]


@router.get("/v1/audit/verify", response_model=AuditVerifyOut, summary="Verify the hash chain")
def audit_verify(context: Context, _caller: AuditReaders) -> AuditVerifyOut:
    result = verify_audit_log(context.uow)
    return AuditVerifyOut(
        ok=result.ok,
        records=result.records_checked,
        findings=[
            {"seq": f.seq, "operation_id": f.operation_id, "kind": f.kind, "message": f.message}
            for f in result.findings
        ],
    )
