"""The rules of M-of-N approvals (sluice.domain.approvals), on plain values.

Covers: approvals must come from distinct principals; the proposer counts when eligible (and not
when they are a customer or lack the capability); users and roles without the operation's
capability cannot vote; a rejection ends a proposal; only the proposer cancels, only while
pending; M-of-N completes exactly at M for M = 1, 2, 3, with the time lock setting
``effective_at``. A property test drives random vote sequences and checks that no proposal is
ever approved with fewer than ``required`` distinct eligible approvers.
"""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.domain.access import ROLES, Principal, Role
from sluice.domain.approvals import (
    CRITICAL_OPERATIONS,
    Approval,
    cancel,
    check_eligible,
    due,
    propose,
    vote,
)
from sluice.domain.errors import (
    InvalidInputError,
    InvalidOperationStateError,
    PermissionDeniedError,
    SluiceError,
)

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ALICE = Principal("key:alice", "super_admin")
BOB = Principal("key:bob", "system_admin")
CAROL = Principal("jwt:carol", "system_admin")
DAVE = Principal("key:dave", "super_admin")
OPERATOR = Principal("key:olga", "operator")
OFFICER = Principal("key:oscar", "compliance_officer")
CUSTOMER = Principal("key:cust", "user", "c-1")


def proposal(
    proposer: Principal = ALICE,
    *,
    operation: str = "config.change",
    required: int = 2,
    timelock_s: float = 0.0,
) -> Approval:
    return propose(
        approval_id="ap-1",
        operation=operation,
        parameters={"key": "approvals.required", "value": 3},
        proposer=proposer,
        required=required,
        at=T0,
        timelock_s=timelock_s,
    )


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_an_eligible_proposer_counts_as_the_first_approval() -> None:
    approval = proposal(ALICE)
    assert approval.approvers == ("key:alice",)
    assert approval.status == "pending"


def test_a_proposer_without_the_capability_does_not_count() -> None:
    approval = proposal(OPERATOR)  # config.change needs router_admin
    assert approval.approvers == ()
    assert approval.proposed_by == "key:olga"


def test_a_customer_proposing_a_large_withdrawal_does_not_count() -> None:
    approval = proposal(CUSTOMER, operation="withdrawal.large")
    assert approval.approvers == ()
    with pytest.raises(PermissionDeniedError):
        vote(approval, CUSTOMER, "approve", at(1))


def test_approvals_must_come_from_distinct_principals() -> None:
    approval = proposal(ALICE, required=3)
    with pytest.raises(InvalidOperationStateError, match="distinct"):
        vote(approval, ALICE, "approve", at(1))
    once = vote(approval, BOB, "approve", at(1))
    with pytest.raises(InvalidOperationStateError, match="distinct"):
        vote(once, BOB, "approve", at(2))
    with pytest.raises(InvalidOperationStateError, match="distinct"):
        vote(once, BOB, "reject", at(2))


@pytest.mark.parametrize(
    ("operation", "refused"),
    [
        ("config.change", [OPERATOR, OFFICER, CUSTOMER]),
        ("instrument.onboard", [BOB, OPERATOR, OFFICER, CUSTOMER]),
        ("compliance.limits", [BOB, OPERATOR, CUSTOMER]),
        ("withdrawal.large", [OFFICER, CUSTOMER]),
        ("suspense.assign", [OFFICER, CUSTOMER]),
    ],
)
def test_principals_without_the_operations_capability_cannot_vote(
    operation: str, refused: list[Principal]
) -> None:
    approval = proposal(DAVE, operation=operation, required=2)
    for principal in refused:
        for decision in ("approve", "reject"):
            with pytest.raises(PermissionDeniedError):
                vote(approval, principal, decision, at(1))
    # Nothing was recorded by the refusals: an eligible principal still completes it.
    assert vote(approval, ALICE, "approve", at(2)).status == "approved"


def test_users_are_never_eligible_even_for_user_operations() -> None:
    approval = proposal(BOB, operation="withdrawal.large")
    with pytest.raises(PermissionDeniedError):
        check_eligible(approval, Principal("key:other", "user", "c-2"))


def test_a_rejection_ends_the_proposal() -> None:
    approval = proposal(ALICE, required=3)
    rejected = vote(approval, BOB, "reject", at(1), comment="no")
    assert rejected.status == "rejected"
    assert rejected.votes[-1].comment == "no"
    assert rejected.effective_at is None
    with pytest.raises(InvalidOperationStateError, match="rejected"):
        vote(rejected, CAROL, "approve", at(2))
    with pytest.raises(InvalidOperationStateError):
        cancel(rejected, ALICE)


def test_only_the_proposer_cancels_and_only_while_pending() -> None:
    approval = proposal(OPERATOR)
    with pytest.raises(PermissionDeniedError):
        cancel(approval, ALICE)
    cancelled = cancel(approval, OPERATOR)
    assert cancelled.status == "cancelled"
    with pytest.raises(InvalidOperationStateError):
        cancel(cancelled, OPERATOR)
    with pytest.raises(InvalidOperationStateError):
        vote(cancelled, ALICE, "approve", at(1))
    approved = vote(proposal(ALICE), BOB, "approve", at(1))
    with pytest.raises(InvalidOperationStateError):
        cancel(approved, ALICE)


@pytest.mark.parametrize("required", [1, 2, 3])
def test_m_of_n_completes_exactly_at_m_approvals(required: int) -> None:
    approval = proposal(OPERATOR, required=required, timelock_s=3600)
    others = [ALICE, BOB, CAROL, DAVE]
    for i, principal in enumerate(others[:required], start=1):
        assert approval.status == "pending"
        approval = vote(approval, principal, "approve", at(i))
    assert approval.status == "approved"
    assert len(approval.approvers) == required
    assert approval.effective_at == at(required) + timedelta(hours=1)
    assert not due(approval, at(required))
    assert due(approval, at(required) + timedelta(hours=1))


def test_one_of_n_with_an_eligible_proposer_is_approved_at_once() -> None:
    approval = proposal(ALICE, required=1)
    assert approval.status == "approved"
    assert approval.effective_at == T0


def test_malformed_proposals_and_votes_are_input_errors() -> None:
    with pytest.raises(InvalidInputError):
        proposal(operation="coffee.make")
    with pytest.raises(InvalidInputError):
        proposal(required=0)
    with pytest.raises(InvalidInputError):
        proposal(timelock_s=-1)
    with pytest.raises(InvalidInputError):
        vote(proposal(), BOB, "abstain", at(1))  # type: ignore[arg-type]


# --- property: approval needs `required` distinct eligible approvers ---------------------------

POOL = [
    Principal(f"p{i}", role, "c-1" if role == "user" else None) for i, role in enumerate(ROLES * 2)
]


@settings(max_examples=300, deadline=None)
@given(
    operation=st.sampled_from(sorted(CRITICAL_OPERATIONS)),
    required=st.integers(min_value=1, max_value=4),
    proposer=st.sampled_from(POOL),
    votes=st.lists(
        st.tuples(st.sampled_from(POOL), st.sampled_from(["approve", "reject"])), max_size=15
    ),
)
def test_no_vote_sequence_approves_with_fewer_than_required_distinct_eligible_approvers(
    operation: str,
    required: int,
    proposer: Principal,
    votes: list[tuple[Principal, Literal["approve", "reject"]]],
) -> None:
    approval = propose(
        approval_id="ap-p",
        operation=operation,
        parameters={},
        proposer=proposer,
        required=required,
        at=T0,
    )
    # An independent model of the rules: who has voted, and whether it is still open.
    capability = CRITICAL_OPERATIONS[operation]
    eligible = {p.id for p in POOL if not p.is_user and p.may(capability)}
    voted = [proposer.id] if proposer.id in eligible else []
    status = "approved" if len(voted) >= required else "pending"
    for i, (principal, decision) in enumerate(votes, start=1):
        with contextlib.suppress(SluiceError):  # a refused vote changes nothing
            approval = vote(approval, principal, decision, at(i))
        if status == "pending" and principal.id in eligible and principal.id not in voted:
            voted.append(principal.id)
            if decision == "reject":
                status = "rejected"
            elif len(voted) >= required:
                status = "approved"
    approvers = approval.approvers
    assert approval.status == status
    assert len(set(approvers)) == len(approvers)
    assert set(approvers) <= eligible
    if approval.status == "approved":
        assert len(approvers) >= required
    else:
        assert len(approvers) < required


def _roles_with(capability: str) -> list[Role]:
    return [r for r in ROLES if r != "user" and capability in Principal("x", r).capabilities]


def test_every_critical_operation_has_eligible_staff() -> None:
    for operation, capability in CRITICAL_OPERATIONS.items():
        assert _roles_with(capability), operation
