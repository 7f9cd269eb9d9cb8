"""The access-control services on an SQLite Integration DB: API keys, approvals, run-time
settings.

Covers: a key is shown once and only its secret's hash is stored (the secret is nowhere in its
row or the audit trail); keys authenticate to their principal, and malformed, unknown, wrong or
revoked keys are refused without echoing the secret; the verifier's cache spares the database,
lets a revocation through after its TTL or at once with ``forget``, and stays bounded. Critical
operations run through proposals: executed when the last approval arrives, recorded as failed when
the executor refuses, run again by ``run_approved`` after a crash between approval and execution,
and proposing twice with one id is idempotent. Settings: defaults, validation naming the key, and
the time lock (a scheduled change is not in force until the clock passes its ``effective_at``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.bootstrap import Database
from sluice.domain.access import Principal
from sluice.domain.approvals import Approval
from sluice.domain.audit import AuditRecord, current_correlation_id
from sluice.domain.errors import (
    DuplicateOperationError,
    InsufficientBalanceError,
    InvalidInputError,
    InvalidOperationStateError,
    NotFoundError,
    PermissionDeniedError,
    UnauthorizedError,
)
from sluice.ports import UnitOfWork
from sluice.services.access import (
    ApiKeyVerifier,
    create_api_key,
    list_api_keys,
    revoke_api_key,
)
from sluice.services.approvals import (
    EXECUTION_GRACE_S,
    Executor,
    cancel_approval,
    get_approval,
    list_approvals,
    propose_operation,
    run_approved,
    vote_on_approval,
)
from sluice.services.settings import RateLimits, RuntimeSettings, apply_setting, check_setting
from sluice.store import tables as t

T0 = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
ALICE = Principal("key:alice", "super_admin")
BOB = Principal("key:bob", "system_admin")
CAROL = Principal("jwt:carol", "super_admin")
OPERATOR = Principal("key:olga", "operator")


@pytest.fixture
def db(sqlite_url: str) -> Iterator[Database]:
    database = bootstrap.database(sqlite_url)
    with database.uow() as uow:
        uow.reference.add_customer("c-1", "Customer One")
        uow.commit()
    try:
        yield database
    finally:
        database.dispose()


def audit(db: Database) -> list[AuditRecord]:
    with db.uow() as uow:
        return uow.audit.records()


def operations(db: Database) -> list[str]:
    return [record.entry.operation for record in audit(db)]


class CountingFactory:
    """A unit-of-work factory that counts how often it is called."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.calls = 0

    def __call__(self) -> UnitOfWork:
        self.calls += 1
        return self.db.uow()


class Ticks:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- API keys ------------------------------------------------------------------------------------


def test_a_created_key_authenticates_as_its_role_and_customer(db: Database) -> None:
    record, key = create_api_key(
        db.uow, role="user", customer_id="c-1", label="web shop", actor="root", at=T0
    )
    assert key.startswith(f"sk_{record.id}_")
    assert len(record.id) == 16
    assert int(record.id, 16) >= 0
    principal = ApiKeyVerifier(db.uow).authenticate(key)
    assert principal == Principal(f"key:{record.id}", "user", "c-1")
    staff_record, staff_key = create_api_key(
        db.uow,
        role="operator",
        customer_id=None,
        label=None,
        actor="root",
        at=T0 + timedelta(seconds=1),
    )
    assert ApiKeyVerifier(db.uow).authenticate(staff_key) == Principal(
        f"key:{staff_record.id}", "operator"
    )
    assert [k.id for k in list_api_keys(db.uow)] == [record.id, staff_record.id]


def test_only_the_hash_of_the_secret_is_stored_and_never_audited(db: Database) -> None:
    record, key = create_api_key(
        db.uow, role="system_admin", customer_id=None, label="ops", actor="root", at=T0
    )
    secret = key.split("_", 2)[2]
    assert len(secret) >= 43
    with db.engine.connect() as connection:
        row = connection.execute(sa.select(t.api_keys)).one()
    assert all(secret not in str(value) for value in row)
    assert row.secret_hash == hashlib.sha256(secret.encode()).hexdigest()
    assert record.secret_hash == row.secret_hash
    records = audit(db)
    assert [r.entry.operation for r in records] == ["api_key_created"]
    assert records[0].entry.parameters["key_id"] == record.id
    assert secret not in repr(records)
    assert row.secret_hash not in repr(records)


@pytest.mark.parametrize(
    ("role", "customer_id", "error"),
    [
        ("root", None, InvalidInputError),
        ("user", None, InvalidInputError),
        ("user", "c-404", NotFoundError),
        ("operator", "c-1", InvalidInputError),
    ],
)
def test_a_key_needs_a_known_role_and_a_customer_exactly_when_it_is_a_user(
    db: Database, role: str, customer_id: str | None, error: type[Exception]
) -> None:
    with pytest.raises(error):
        create_api_key(db.uow, role=role, customer_id=customer_id, label=None, actor="a", at=T0)
    assert list_api_keys(db.uow) == []
    assert audit(db) == []


def test_bad_keys_are_refused_without_echoing_the_secret(db: Database) -> None:
    record, key = create_api_key(
        db.uow, role="operator", customer_id=None, label=None, actor="root", at=T0
    )
    secret = key.split("_", 2)[2]
    verifier = ApiKeyVerifier(db.uow)
    wrong = key[:-4] + ("AAAA" if not key.endswith("AAAA") else "BBBB")
    unknown = f"sk_{'0' * 16}_{secret}"
    for presented, reason in [
        ("", "malformed"),
        (secret, "malformed"),
        (f"sk_{record.id}{secret}", "malformed"),
        (f"sk_{record.id.upper()}_{secret}", "malformed"),
        (f"sk_{record.id}_{secret} ", "malformed"),
        ("sk_" + "a" * 300, "malformed"),
        (unknown, "unknown"),
        (wrong, "does not match"),
    ]:
        with pytest.raises(UnauthorizedError, match=reason) as caught:
            verifier.authenticate(presented)
        assert secret not in str(caught.value)
        assert secret[:-4] not in str(caught.value)


def test_a_revoked_key_is_refused_and_cannot_be_revoked_again(db: Database) -> None:
    record, key = create_api_key(
        db.uow, role="operator", customer_id=None, label=None, actor="root", at=T0
    )
    revoked = revoke_api_key(db.uow, record.id, actor="admin", at=T0 + timedelta(hours=1))
    assert revoked.revoked_by == "admin"
    assert revoked.revoked_at == T0 + timedelta(hours=1)
    with pytest.raises(UnauthorizedError, match="revoked"):
        ApiKeyVerifier(db.uow).authenticate(key)
    with pytest.raises(InvalidOperationStateError):
        revoke_api_key(db.uow, record.id, actor="admin", at=T0)
    with pytest.raises(NotFoundError):
        revoke_api_key(db.uow, "0" * 16, actor="admin", at=T0)
    assert operations(db) == ["api_key_created", "api_key_revoked"]


def test_the_cache_spares_the_database_until_its_ttl_passes(db: Database) -> None:
    _, key = create_api_key(
        db.uow, role="operator", customer_id=None, label=None, actor="root", at=T0
    )
    factory, ticks = CountingFactory(db), Ticks()
    verifier = ApiKeyVerifier(factory, ttl_s=5.0, clock=ticks)
    for _ in range(10):
        verifier.authenticate(key)
    assert factory.calls == 1
    ticks.now += 5.0
    verifier.authenticate(key)
    assert factory.calls == 2


def test_keys_first_used_together_are_looked_up_again_at_different_moments(
    db: Database,
) -> None:
    keys = [
        create_api_key(db.uow, role="operator", customer_id=None, label=None, actor="r", at=T0)[1]
        for _ in range(40)
    ]
    factory, ticks = CountingFactory(db), Ticks()
    verifier = ApiKeyVerifier(factory, ttl_s=5.0, clock=ticks)
    for key in keys:
        verifier.authenticate(key)
    assert factory.calls == 40
    # Within half the TTL nothing is looked up again; by the TTL everything has been, spread
    # over the second half rather than all at one moment.
    reloads: list[int] = []
    for _ in range(10):
        ticks.now += 0.5
        before = factory.calls
        for key in keys:
            verifier.authenticate(key)
        reloads.append(factory.calls - before)
    assert reloads[:4] == [0, 0, 0, 0]
    assert sum(reloads[:10]) >= 40 and max(reloads) < 40
    assert sum(1 for n in reloads[4:10] if n) >= 3


def test_a_revocation_takes_effect_after_the_ttl_or_at_once_when_forgotten(
    db: Database,
) -> None:
    first, first_key = create_api_key(
        db.uow, role="operator", customer_id=None, label=None, actor="root", at=T0
    )
    second, second_key = create_api_key(
        db.uow, role="operator", customer_id=None, label=None, actor="root", at=T0
    )
    ticks = Ticks()
    verifier = ApiKeyVerifier(db.uow, ttl_s=5.0, clock=ticks)
    verifier.authenticate(first_key)
    verifier.authenticate(second_key)
    revoke_api_key(db.uow, first.id, actor="admin", at=T0)
    revoke_api_key(db.uow, second.id, actor="admin", at=T0)
    verifier.forget(second.id)
    with pytest.raises(UnauthorizedError, match="revoked"):
        verifier.authenticate(second_key)
    # Still cached: within the TTL this process has not seen the revocation yet.
    assert verifier.authenticate(first_key).id == f"key:{first.id}"
    ticks.now += 5.0
    with pytest.raises(UnauthorizedError, match="revoked"):
        verifier.authenticate(first_key)


def test_a_cached_key_still_needs_its_secret(db: Database) -> None:
    _, key = create_api_key(
        db.uow, role="operator", customer_id=None, label=None, actor="root", at=T0
    )
    verifier = ApiKeyVerifier(db.uow)
    verifier.authenticate(key)
    with pytest.raises(UnauthorizedError, match="does not match"):
        verifier.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B"))


def test_the_cache_is_bounded_and_drops_the_least_recently_used_key(db: Database) -> None:
    keys = [
        create_api_key(db.uow, role="operator", customer_id=None, label=None, actor="r", at=T0)[1]
        for _ in range(3)
    ]
    factory = CountingFactory(db)
    verifier = ApiKeyVerifier(factory, entries_max=2, clock=Ticks())
    for key in keys:
        verifier.authenticate(key)
    assert factory.calls == 3
    verifier.authenticate(keys[2])
    verifier.authenticate(keys[1])
    assert factory.calls == 3  # the two most recent are cached
    verifier.authenticate(keys[0])
    assert factory.calls == 4  # the first was dropped


# --- approvals -----------------------------------------------------------------------------------


@dataclass
class FakeExecutors:
    """Executors that record their calls; ``fail_with`` makes the next call raise it."""

    calls: list[tuple[str, str]] = field(default_factory=list)
    fail_with: Exception | None = None

    def run(self, approval: Approval, at: datetime) -> Mapping[str, object]:
        self.calls.append((approval.id, approval.operation))
        if self.fail_with is not None:
            error, self.fail_with = self.fail_with, None
            raise error
        return {"done": approval.operation, "amount": Decimal("12000.50"), "at": at}

    def mapping(self) -> dict[str, Executor]:
        return {"withdrawal.large": self.run, "config.change": self.run}


def propose_withdrawal(
    db: Database,
    executors: FakeExecutors,
    *,
    proposer: Principal = OPERATOR,
    required: int = 2,
    approval_id: str | None = None,
    amount: str = "12000.50",
) -> Approval:
    return propose_operation(
        db.uow,
        operation="withdrawal.large",
        parameters={"customer_id": "c-1", "amount": Decimal(amount)},
        proposer=proposer,
        at=T0,
        required=required,
        executors=executors.mapping(),
        customer_id="c-1",
        approval_id=approval_id,
        reason="large payout",
    )


def test_the_last_approval_runs_the_operation_and_records_its_result(db: Database) -> None:
    executors = FakeExecutors()
    proposed = propose_withdrawal(db, executors)
    assert proposed.status == "pending"
    assert proposed.id.startswith("ap-")
    assert proposed.parameters == {"customer_id": "c-1", "amount": "12000.50"}
    assert proposed.approvers == ("key:olga",)  # an operator may approve a large withdrawal
    done = vote_on_approval(
        db.uow,
        proposed.id,
        principal=BOB,
        decision="approve",
        at=T0 + timedelta(minutes=1),
        executors=executors.mapping(),
        comment="checked",
    )
    assert executors.calls == [(proposed.id, "withdrawal.large")]
    assert done.status == "executed"
    assert done.executed_at == T0 + timedelta(minutes=1)
    assert done.result == {
        "done": "withdrawal.large",
        "amount": "12000.50",
        "at": "2026-11-21T12:01:00.000000Z",
    }
    assert get_approval(db.uow, proposed.id) == done
    assert operations(db) == ["approval_proposed", "approval_approved", "approval_executed"]
    assert {r.entry.customer_id for r in audit(db)} == {"c-1"}


def test_an_executor_that_refuses_marks_the_proposal_failed_with_its_code(db: Database) -> None:
    executors = FakeExecutors(fail_with=InsufficientBalanceError("balance 5 < 12000.50"))
    proposed = propose_withdrawal(db, executors)
    failed = vote_on_approval(
        db.uow, proposed.id, principal=BOB, decision="approve", at=T0, executors=executors.mapping()
    )
    assert failed.status == "failed"
    assert failed.error == "balance 5 < 12000.50"
    assert failed.result == {"code": 62, "error": "insufficient_balance"}
    assert get_approval(db.uow, proposed.id) == failed
    records = audit(db)
    assert records[-1].entry.operation == "approval_failed"
    assert records[-1].entry.error == "balance 5 < 12000.50"
    # Nothing runs it again: a refusal is final.
    assert run_approved(db.uow, executors.mapping(), T0 + timedelta(days=1)) == 0
    assert len(executors.calls) == 1


def test_a_rejection_ends_the_proposal_without_running_it(db: Database) -> None:
    executors = FakeExecutors()
    proposed = propose_withdrawal(db, executors, required=3)
    rejected = vote_on_approval(
        db.uow, proposed.id, principal=BOB, decision="reject", at=T0, executors=executors.mapping()
    )
    assert rejected.status == "rejected"
    with pytest.raises(InvalidOperationStateError):
        vote_on_approval(
            db.uow,
            proposed.id,
            principal=ALICE,
            decision="approve",
            at=T0,
            executors=executors.mapping(),
        )
    assert executors.calls == []
    assert operations(db) == ["approval_proposed", "approval_rejected"]


def test_votes_are_refused_for_unknown_proposals_ineligible_and_repeated_voters(
    db: Database,
) -> None:
    executors = FakeExecutors()
    with pytest.raises(NotFoundError):
        vote_on_approval(
            db.uow, "ap-x", principal=BOB, decision="approve", at=T0, executors=executors.mapping()
        )
    proposed = propose_withdrawal(db, executors, required=3)
    customer = Principal("key:cust", "user", "c-1")
    with pytest.raises(PermissionDeniedError):
        vote_on_approval(
            db.uow,
            proposed.id,
            principal=customer,
            decision="approve",
            at=T0,
            executors=executors.mapping(),
        )
    with pytest.raises(InvalidOperationStateError, match="distinct"):
        vote_on_approval(
            db.uow,
            proposed.id,
            principal=OPERATOR,
            decision="approve",
            at=T0,
            executors=executors.mapping(),
        )
    assert get_approval(db.uow, proposed.id) == proposed
    assert operations(db) == ["approval_proposed"]


def test_the_proposer_cancels_a_pending_proposal(db: Database) -> None:
    executors = FakeExecutors()
    proposed = propose_withdrawal(db, executors)
    with pytest.raises(PermissionDeniedError):
        cancel_approval(db.uow, proposed.id, principal=BOB, at=T0)
    cancelled = cancel_approval(db.uow, proposed.id, principal=OPERATOR, at=T0)
    assert cancelled.status == "cancelled"
    with pytest.raises(NotFoundError):
        cancel_approval(db.uow, "ap-x", principal=OPERATOR, at=T0)
    assert operations(db) == ["approval_proposed", "approval_cancelled"]


def test_a_proposal_complete_at_once_is_executed_at_once(db: Database) -> None:
    executors = FakeExecutors()
    done = propose_withdrawal(db, executors, proposer=ALICE, required=1)
    assert done.status == "executed"
    assert executors.calls == [(done.id, "withdrawal.large")]
    assert operations(db) == ["approval_proposed", "approval_executed"]


def test_proposing_again_with_the_same_id_is_idempotent(db: Database) -> None:
    executors = FakeExecutors()
    first = propose_withdrawal(db, executors, approval_id="req-42")
    again = propose_withdrawal(db, executors, approval_id="req-42")
    assert again == first
    with pytest.raises(DuplicateOperationError):
        propose_withdrawal(db, executors, approval_id="req-42", amount="13000")
    # Retrying a proposal that ran at once does not run it again either.
    ran = propose_withdrawal(db, executors, proposer=ALICE, required=1, approval_id="req-43")
    assert (
        propose_withdrawal(db, executors, proposer=ALICE, required=1, approval_id="req-43") == ran
    )
    assert len(executors.calls) == 1
    assert operations(db) == ["approval_proposed", "approval_proposed", "approval_executed"]


def test_malformed_proposals_are_refused(db: Database) -> None:
    executors = FakeExecutors()
    for kwargs in (
        {"operation": "coffee.make"},
        {"operation": "instrument.onboard"},  # no executor for it here
        {"required": 0},
        {"required": 11},
        {"timelock_s": -1.0},
        {"approval_id": "has space"},
        {"approval_id": "x" * 121},
        {"reason": "x" * 2001},
    ):
        arguments: dict[str, object] = {
            "operation": "withdrawal.large",
            "parameters": {},
            "proposer": OPERATOR,
            "at": T0,
            "required": 2,
            "executors": executors.mapping(),
            **kwargs,
        }
        with pytest.raises(InvalidInputError):
            propose_operation(db.uow, **arguments)  # type: ignore[arg-type]
    assert list_approvals(db.uow) == []


def test_proposals_are_listed_newest_first_and_filtered(db: Database) -> None:
    executors = FakeExecutors()
    first = propose_withdrawal(db, executors)
    second = propose_operation(
        db.uow,
        operation="config.change",
        parameters={"key": "approvals.required", "value": 3},
        proposer=ALICE,
        at=T0 + timedelta(seconds=1),
        required=2,
        executors=executors.mapping(),
    )
    assert [a.id for a in list_approvals(db.uow)] == [second.id, first.id]
    assert [a.id for a in list_approvals(db.uow, customer_id="c-1")] == [first.id]
    assert list_approvals(db.uow, status="executed") == []
    with pytest.raises(InvalidInputError):
        list_approvals(db.uow, status="sleeping")
    with pytest.raises(InvalidInputError):
        list_approvals(db.uow, limit=1001)
    with pytest.raises(NotFoundError):
        get_approval(db.uow, "ap-x")


def test_run_approved_finishes_what_a_crash_left_approved(db: Database) -> None:
    executors = FakeExecutors(fail_with=RuntimeError("connection lost"))
    proposed = propose_withdrawal(db, executors)
    approved_at = T0 + timedelta(minutes=1)
    with pytest.raises(RuntimeError):
        vote_on_approval(
            db.uow,
            proposed.id,
            principal=BOB,
            decision="approve",
            at=approved_at,
            executors=executors.mapping(),
        )
    left = get_approval(db.uow, proposed.id)
    assert left.status == "approved"
    assert left.executed_at is None
    # Not while the vote that approved it might still be running it.
    assert run_approved(db.uow, executors.mapping(), approved_at + timedelta(seconds=1)) == 0
    later = approved_at + timedelta(seconds=EXECUTION_GRACE_S)
    assert run_approved(db.uow, executors.mapping(), later) == 1
    done = get_approval(db.uow, proposed.id)
    assert done.status == "executed"
    assert done.executed_at == later
    assert executors.calls == [(proposed.id, "withdrawal.large")] * 2
    assert run_approved(db.uow, executors.mapping(), later + timedelta(hours=1)) == 0
    assert audit(db)[-1].entry.actor == "system:approvals"


def test_run_approved_runs_the_oldest_first_and_survives_a_broken_one(db: Database) -> None:
    order: list[str] = []

    def flaky(approval: Approval, at: datetime) -> Mapping[str, object]:
        order.append(approval.id)
        if approval.id == "ap-b":
            raise RuntimeError("still broken")
        return {}

    crashing = FakeExecutors(fail_with=None)
    ids = ["ap-c", "ap-a", "ap-b"]
    for minute, approval_id in zip((3, 1, 2), ids, strict=True):
        propose_withdrawal(db, crashing, approval_id=approval_id)
        crashing.fail_with = RuntimeError("crash")
        with pytest.raises(RuntimeError):
            vote_on_approval(
                db.uow,
                approval_id,
                principal=BOB,
                decision="approve",
                at=T0 + timedelta(minutes=minute),
                executors=crashing.mapping(),
            )
    executors = {"withdrawal.large": flaky}
    assert run_approved(db.uow, executors, T0 + timedelta(hours=1)) == 2
    assert order == ["ap-a", "ap-b", "ap-c"]
    assert get_approval(db.uow, "ap-b").status == "approved"  # tried again next round


def test_approval_records_carry_the_requests_correlation_id(db: Database) -> None:
    executors = FakeExecutors()
    token = current_correlation_id.set("req-7")
    try:
        proposed = propose_withdrawal(db, executors)
    finally:
        current_correlation_id.reset(token)
    assert proposed.correlation_id == "req-7"
    assert get_approval(db.uow, proposed.id).correlation_id == "req-7"
    assert audit(db)[0].entry.correlation_id == "req-7"


# --- run-time settings ---------------------------------------------------------------------------


class WallClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def test_built_in_defaults_are_overridden_by_the_deployments(db: Database) -> None:
    settings = RuntimeSettings(db.uow, clock=WallClock())
    assert settings.approvals_required() == 2
    assert settings.config_timelock_s() == 86_400.0
    assert settings.withdrawal_approval_above() == Decimal("10000")
    assert settings.rate_limits() == RateLimits(50.0, 100, 2000.0, 4000)
    deployment = RuntimeSettings(
        db.uow,
        {"approvals.required": 3, "withdrawals.approval_above": None, "rate_limits.key_burst": 7},
        clock=WallClock(),
    )
    assert deployment.approvals_required() == 3
    assert deployment.withdrawal_approval_above() is None
    assert deployment.rate_limits().key_burst == 7
    with pytest.raises(InvalidInputError, match="unknown setting"):
        RuntimeSettings(db.uow, {"approvals.requird": 3}, clock=WallClock())
    with pytest.raises(InvalidInputError, match=r"approvals\.required"):
        RuntimeSettings(db.uow, {"approvals.required": 0}, clock=WallClock())


@pytest.mark.parametrize(
    ("key", "value", "problem"),
    [
        ("approvals.required", 0, "out of range"),
        ("approvals.required", 11, "out of range"),
        ("approvals.required", 2.5, "whole number"),
        ("approvals.required", True, "whole number"),
        ("approvals.required", None, "required"),
        ("config.timelock_s", -1, "out of range"),
        ("config.timelock_s", 31 * 86_400, "out of range"),
        ("config.timelock_s", "soon", "number"),
        ("config.timelock_s", float("nan"), "finite"),
        ("withdrawals.approval_above", "-1", "out of range"),
        ("withdrawals.approval_above", "lots", "decimal"),
        ("withdrawals.approval_above", [1], "decimal"),
        ("rate_limits.key_per_s", 0, "out of range"),
        ("rate_limits.global_burst", 0, "out of range"),
        ("nothing.here", 1, "unknown setting"),
    ],
)
def test_a_bad_value_is_refused_naming_the_key_and_the_problem(
    db: Database, key: str, value: object, problem: str
) -> None:
    settings = RuntimeSettings(db.uow, clock=WallClock())
    with pytest.raises(InvalidInputError, match=problem) as caught:
        settings.check_change(key, value)
    assert key in str(caught.value)


def test_values_are_normalised_to_their_type() -> None:
    assert check_setting("approvals.required", "3") == 3
    assert check_setting("approvals.required", 3.0) == 3
    assert check_setting("config.timelock_s", 60) == 60.0
    assert isinstance(check_setting("config.timelock_s", 60), float)
    assert check_setting("withdrawals.approval_above", "2500.50") == Decimal("2500.50")
    assert check_setting("withdrawals.approval_above", 2500) == Decimal(2500)
    assert check_setting("withdrawals.approval_above", 0.1) == Decimal("0.1")
    assert check_setting("withdrawals.approval_above", None) is None


def test_a_scheduled_change_is_in_force_only_once_the_clock_passes_it(db: Database) -> None:
    clock = WallClock()
    ticks = Ticks()
    settings = RuntimeSettings(db.uow, clock=clock, ttl_s=60.0, monotonic=ticks)
    assert settings.value("approvals.required") == 2
    effective_at = T0 + timedelta(days=1)
    record = apply_setting(
        db.uow,
        key="approvals.required",
        value="3",
        effective_at=effective_at,
        set_by="key:alice",
        approval_id="ap-1",
        at=T0,
    )
    assert record.value == 3
    settings.refresh()
    assert settings.approvals_required() == 2
    [described] = [d for d in settings.describe() if d["key"] == "approvals.required"]
    assert described["value"] == 2
    assert described["scheduled"] == [
        {
            "value": 3,
            "effective_at": "2026-11-22T12:00:00.000000Z",
            "set_by": "key:alice",
            "approval_id": "ap-1",
        }
    ]
    clock.now = effective_at - timedelta(microseconds=1)
    assert settings.approvals_required() == 2
    clock.now = effective_at  # the rows are still cached: the time alone brings it into force
    assert settings.approvals_required() == 3
    [described] = [d for d in settings.describe() if d["key"] == "approvals.required"]
    assert described["value"] == 3
    assert described["scheduled"] == []
    assert operations(db) == ["config_change_scheduled"]


def test_applying_a_setting_twice_is_idempotent_but_not_with_another_value(db: Database) -> None:
    kwargs: dict[str, object] = {
        "key": "withdrawals.approval_above",
        "effective_at": T0,
        "set_by": "key:alice",
        "approval_id": "ap-1",
        "at": T0,
    }
    first = apply_setting(db.uow, value="25000.00", **kwargs)  # type: ignore[arg-type]
    again = apply_setting(db.uow, value=Decimal("25000"), **kwargs)  # type: ignore[arg-type]
    assert first.value == "25000.00"
    assert again.value == "25000.00"
    with pytest.raises(DuplicateOperationError):
        apply_setting(db.uow, value="1", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        apply_setting(db.uow, **{**kwargs, "key": "approvals.required"}, value=0)  # type: ignore[arg-type]
    assert operations(db) == ["config_change_scheduled"]
    settings = RuntimeSettings(db.uow, clock=WallClock())
    assert settings.withdrawal_approval_above() == Decimal("25000.00")


def test_the_cache_reads_the_database_at_most_once_per_ttl(db: Database) -> None:
    factory, ticks = CountingFactory(db), Ticks()
    settings = RuntimeSettings(factory, clock=WallClock(), ttl_s=1.0, monotonic=ticks)
    for _ in range(5):
        settings.rate_limits()
        settings.approvals_required()
    assert factory.calls == 1
    ticks.now += 1.0
    settings.approvals_required()
    assert factory.calls == 2
    settings.refresh()
    settings.approvals_required()
    assert factory.calls == 3


def test_a_configuration_change_goes_through_approvals_and_the_time_lock(db: Database) -> None:
    clock = WallClock()
    settings = RuntimeSettings(db.uow, clock=clock)

    def change(approval: Approval, at: datetime) -> Mapping[str, object]:
        assert approval.effective_at is not None
        record = apply_setting(
            db.uow,
            key=str(approval.parameters["key"]),
            value=approval.parameters["value"],
            effective_at=approval.effective_at,
            set_by=approval.proposed_by,
            approval_id=approval.id,
            at=at,
        )
        settings.refresh()
        return {"key": record.key}

    executors: dict[str, Executor] = {"config.change": change}
    value = settings.check_change("withdrawals.approval_above", "50000")
    proposed = propose_operation(
        db.uow,
        operation="config.change",
        parameters={"key": "withdrawals.approval_above", "value": value},
        proposer=ALICE,
        at=T0,
        required=settings.approvals_required(),
        executors=executors,
        timelock_s=settings.config_timelock_s(),
    )
    clock.now = T0 + timedelta(hours=1)
    done = vote_on_approval(
        db.uow, proposed.id, principal=CAROL, decision="approve", at=clock.now, executors=executors
    )
    assert done.status == "executed"
    assert done.effective_at == clock.now + timedelta(days=1)
    assert settings.withdrawal_approval_above() == Decimal("10000")
    clock.now = done.effective_at
    assert settings.withdrawal_approval_above() == Decimal("50000")
