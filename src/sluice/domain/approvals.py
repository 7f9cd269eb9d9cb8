"""M-of-N approvals of critical operations, and the time lock on configuration changes.

A critical operation (DESIGN §10: component and registry changes, withdrawals above a configured
size, limit changes, suspense assignment, configuration changes) is not run when it is asked
for. It is recorded as a *proposal* naming the operation and its parameters; it runs once
``required`` distinct principals who hold the operation's capability have approved it. The
proposer counts as the first approval when they hold that capability themselves (a customer
asking for a large withdrawal does not). Anyone eligible may reject it instead, which ends it.

A proposal's life::

    pending ──(approvals reach required)──▶ approved ──(run)──▶ executed
       │                                       │  └──(run failed)──▶ failed
       └──(rejected / cancelled by proposer)──▶ rejected / cancelled

Configuration changes also carry a time lock: once approved, the new value is written with an
``effective_at`` of approval time + the time lock, and readers only see it from then on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Literal

from sluice.domain.access import Capability, Principal
from sluice.domain.errors import (
    InvalidInputError,
    InvalidOperationStateError,
    PermissionDeniedError,
)

ApprovalStatus = Literal["pending", "approved", "executed", "failed", "rejected", "cancelled"]
OPEN_STATUSES: frozenset[str] = frozenset({"pending"})
APPROVAL_STATUSES: tuple[ApprovalStatus, ...] = (
    "pending",
    "approved",
    "executed",
    "failed",
    "rejected",
    "cancelled",
)

# The operations that need approvals, with the capability an approver must hold.
CRITICAL_OPERATIONS: Mapping[str, Capability] = {
    "instrument.onboard": "component_updates",
    "instrument.enable": "component_updates",
    "instrument.disable": "component_updates",
    "withdrawal.large": "user_operations",
    "compliance.limits": "compliance_override",
    "suspense.assign": "user_operations",
    "exchange.inventory.fund": "user_operations",
    "config.change": "router_admin",
    "issuance.retry": "router_admin",
    "issuance.compensate": "router_admin",
    "issuance.resolve": "router_admin",
    "issuance.resume_minting": "router_admin",
    "issuance.update_contract_addresses": "router_admin",
}


@dataclass(frozen=True, slots=True)
class Vote:
    principal_id: str
    role: str
    decision: Literal["approve", "reject"]
    at: datetime
    comment: str | None = None


@dataclass(frozen=True, slots=True)
class Approval:
    id: str
    operation: str
    parameters: Mapping[str, object]
    proposed_by: str
    proposed_at: datetime
    required: int
    status: ApprovalStatus = "pending"
    votes: tuple[Vote, ...] = ()
    customer_id: str | None = None  # whose resources the operation touches, if a customer's
    timelock_s: float = 0.0
    effective_at: datetime | None = None
    executed_at: datetime | None = None
    result: Mapping[str, object] | None = None
    error: str | None = None
    correlation_id: str | None = None
    reason: str | None = field(default=None)

    @property
    def capability(self) -> Capability:
        return CRITICAL_OPERATIONS[self.operation]

    @property
    def approvers(self) -> tuple[str, ...]:
        return tuple(v.principal_id for v in self.votes if v.decision == "approve")

    @property
    def complete(self) -> bool:
        return len(self.approvers) >= self.required


def check_eligible(approval: Approval, principal: Principal) -> None:
    """Raise unless ``principal`` may vote on ``approval``: staff (never a user) holding the
    operation's capability."""
    if principal.is_user or not principal.may(approval.capability):
        raise PermissionDeniedError(
            f"approving {approval.operation} needs the {approval.capability} capability "
            f"(role {principal.role} does not have it)"
        )


def propose(
    *,
    approval_id: str,
    operation: str,
    parameters: Mapping[str, object],
    proposer: Principal,
    required: int,
    at: datetime,
    customer_id: str | None = None,
    timelock_s: float = 0.0,
    correlation_id: str | None = None,
    reason: str | None = None,
) -> Approval:
    """A new proposal; the proposer's own approval is counted when they are eligible."""
    if operation not in CRITICAL_OPERATIONS:
        raise InvalidInputError(f"{operation!r} is not an operation that takes approvals")
    if required < 1:
        raise InvalidInputError("an approval needs at least one approver")
    if not timelock_s >= 0:  # also refuses NaN
        raise InvalidInputError(f"a time lock cannot be negative, got {timelock_s!r}")
    approval = Approval(
        id=approval_id,
        operation=operation,
        parameters=dict(parameters),
        proposed_by=proposer.id,
        proposed_at=at,
        required=required,
        customer_id=customer_id,
        timelock_s=timelock_s,
        correlation_id=correlation_id,
        reason=reason,
    )
    if not proposer.is_user and proposer.may(approval.capability):
        approval = replace(approval, votes=(Vote(proposer.id, proposer.role, "approve", at),))
    return _settle(approval, at)


def vote(
    approval: Approval,
    principal: Principal,
    decision: Literal["approve", "reject"],
    at: datetime,
    comment: str | None = None,
) -> Approval:
    """``approval`` after ``principal``'s vote. A second approval by the same principal is
    refused (approvals must come from distinct principals)."""
    if decision not in ("approve", "reject"):
        # Anything else would be recorded as a vote that neither approves nor rejects.
        raise InvalidInputError(f"a vote is 'approve' or 'reject', not {decision!r}")
    if approval.status != "pending":
        raise InvalidOperationStateError(
            f"approval {approval.id} is {approval.status}, not pending"
        )
    check_eligible(approval, principal)
    if any(v.principal_id == principal.id for v in approval.votes):
        raise InvalidOperationStateError(
            f"{principal.id} has already voted on approval {approval.id}; approvals must come "
            "from distinct principals"
        )
    votes = (*approval.votes, Vote(principal.id, principal.role, decision, at, comment))
    if decision == "reject":
        return replace(approval, votes=votes, status="rejected")
    return _settle(replace(approval, votes=votes), at)


def cancel(approval: Approval, principal: Principal) -> Approval:
    """The proposer withdraws a pending proposal."""
    if approval.status != "pending":
        raise InvalidOperationStateError(
            f"approval {approval.id} is {approval.status}, not pending"
        )
    if principal.id != approval.proposed_by:
        raise PermissionDeniedError("only the proposer can cancel a proposal")
    return replace(approval, status="cancelled")


def _settle(approval: Approval, at: datetime) -> Approval:
    if not approval.complete:
        return approval
    return replace(
        approval, status="approved", effective_at=at + timedelta(seconds=approval.timelock_s)
    )


def due(approval: Approval, now: datetime) -> bool:
    """Whether an approved proposal may run now (its time lock has passed)."""
    return (
        approval.status == "approved"
        and approval.effective_at is not None
        and approval.effective_at <= now
    )
