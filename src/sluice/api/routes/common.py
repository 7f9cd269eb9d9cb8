"""What every endpoint module uses: the context, paging, permissions as annotated parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Query, Request

from sluice.api.context import ApiContext
from sluice.api.schemas import ApprovalOut, ErrorOut
from sluice.api.security import Caller, guard
from sluice.domain.access import AUTHENTICATED, Permission, requires

PAGE_LIMIT_MAX = 500


# Dependencies are ``async`` even when they do not await: FastAPI runs a plain function on a
# worker thread, a hand-over that costs more than these functions do.


async def context_of(request: Request) -> ApiContext:
    context: ApiContext = request.app.state.context
    return context


Context = Annotated[ApiContext, Depends(context_of)]


@dataclass(frozen=True, slots=True)
class Paging:
    offset: int
    limit: int


async def paging(
    offset: Annotated[int, Query(ge=0, le=10_000_000, description="items to skip")] = 0,
    limit: Annotated[int, Query(ge=1, le=PAGE_LIMIT_MAX, description="items per page")] = 50,
) -> Paging:
    return Paging(offset, limit)


PageParams = Annotated[Paging, Depends(paging)]


def allowed(permission: Permission) -> Any:
    """A parameter type that admits the caller under ``permission``."""
    return Annotated[Caller, Depends(guard(permission))]


AnyPrincipal = allowed(AUTHENTICATED)
UserOps = allowed(requires("user_operations"))
OwnOrCompliance = allowed(requires("user_operations", "compliance_override", own=True))
OwnOnly = allowed(requires("user_operations", own=True))
StaffReads = allowed(requires("user_operations", "compliance_override"))
ComplianceOverride = allowed(requires("compliance_override"))
ComponentUpdates = allowed(requires("component_updates"))
RouterAdmin = allowed(requires("router_admin"))
EmergencyPause = allowed(requires("emergency_pause"))
AuditReaders = allowed(requires("compliance_override", "router_admin"))
Staff = allowed(
    requires(
        "router_admin",
        "component_updates",
        "emergency_pause",
        "user_operations",
        "compliance_override",
    )
)

ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorOut}
    for status in (400, 401, 403, 404, 409, 422, 429, 500, 502, 503, 504)
}
PROPOSED: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    202: {"model": ApprovalOut, "description": "recorded as a proposal awaiting approvals"},
}
