"""`sluice issuance retry|compensate|resolve|resume-minting` (an operator's overrides, each a
critical operation that takes approvals) and `release|return` (a compliance officer's actions
on a held deposit).

An override is proposed as the person at the command line: a local principal
``cli:<actor>`` with the system admin's role, which holds ``router_admin``, so the proposal
counts as its first approval. With ``approvals.required`` 1 it runs at once and the command
prints the operation as it now stands; otherwise it prints the proposal, which other staff
approve through the HTTP API (``POST /v1/approvals/<id>/approve``), and `sluice serve`'s
executors run it then. The parameters are ``{"operation_id", "reason"}`` (``{"reason"}`` for
resume-minting) and the proposal's reason is the operator's. The executors are the ones `sluice
serve` runs (services/issuance_approvals.py): here they run a proposal complete at once, in this
process; `sluice serve` also runs again one a crash left approved but not executed.

Nothing is paid or minted twice through these commands: the overrides themselves refuse (41)
whatever would (see :mod:`sluice.services.issuance_overrides`), and a proposal is executed once
(:mod:`sluice.services.approvals` records its outcome under a lock)."""

from __future__ import annotations

from typing import Annotated

import typer

from sluice import bootstrap
from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    deployment,
    note,
    print_json,
    utc_now,
)
from sluice.cli.issuance.wiring import (
    approval_json,
    issuance_app,
    issuance_session,
    operation_lines,
    refuse,
    write,
)
from sluice.domain.access import Principal, Role
from sluice.domain.approvals import Approval
from sluice.domain.errors import InvalidInputError, InvalidOperationStateError, SluiceError
from sluice.services.approvals import Executor, propose_operation
from sluice.services.issuance_router import operation_json
from sluice.services.settings import RuntimeSettings

ReasonOption = Annotated[str, typer.Option("--reason", help="Why, for the audit trail.")]
OperationArgument = Annotated[str, typer.Argument(help="The operation's id.")]

# The role of the person at the command line when they propose an override: they reach the
# Integration DB directly, and the overrides need the router_admin capability.
LOCAL_ROLE: Role = "system_admin"


def local_principal(actor: str) -> Principal:
    return Principal(id=f"cli:{actor}", role=LOCAL_ROLE)


def executors(issuance: bootstrap.Issuance) -> dict[str, Executor]:
    """The issuance overrides as approval executors, bound to this command's context: the same
    executors `sluice serve` runs (services/issuance_approvals.py)."""
    from sluice.services.issuance_approvals import issuance_executors

    ctx = issuance.context
    return issuance_executors(ctx.uow, lambda: ctx)


def _propose(
    issuance: bootstrap.Issuance, operation: str, parameters: dict[str, object], who: str
) -> Approval:
    reason = str(parameters["reason"])
    if not reason.strip():
        raise InvalidInputError("--reason must not be empty")
    now = utc_now()
    settings = RuntimeSettings(issuance.context.uow, dict(deployment().api.settings), clock=utc_now)
    return propose_operation(
        issuance.context.uow,
        operation=operation,
        parameters=parameters,
        proposer=local_principal(who),
        at=now,
        required=settings.approvals_required(),
        executors=executors(issuance),
        reason=reason,
    )


class RecordedRefusalError(SluiceError):
    """An executor's refusal as the proposal recorded it (its code, name and message)."""

    def __init__(self, code: int, error: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.error = error


def _outcome(approval: Approval) -> SluiceError | None:
    """The refusal an executed proposal recorded, as an error with its code."""
    if approval.status != "failed":
        return None
    result = dict(approval.result or {})
    code = result.get("code")
    return RecordedRefusalError(
        code if isinstance(code, int) else InvalidOperationStateError.code,
        str(result.get("error") or InvalidOperationStateError.error),
        f"{approval.operation} (approval {approval.id}) refused: {approval.error}",
    )


def _pending(approval: Approval, as_json: bool) -> None:
    if as_json:
        print_json({"approval": approval_json(approval)})
        return
    write(
        [
            f"proposed {approval.operation}: approval {approval.id} "
            f"({len(approval.approvers)} of {approval.required} approvals)",
            f"  other staff approve it through the API: POST /v1/approvals/{approval.id}/approve",
            "  (it runs when the last approval needed is given)",
        ]
    )


def _override(
    operation: str, operation_id: str, reason: str, actor: str | None, db: str | None, as_json: bool
) -> None:
    who = actor_name(actor)
    with issuance_session(db, as_json=as_json) as issuance:
        approval = _propose(
            issuance, operation, {"operation_id": operation_id, "reason": reason}, who
        )
        refused = _outcome(approval)
        if refused is not None:
            refuse(refused, as_json=as_json)
        if approval.status != "executed":
            _pending(approval, as_json)
            return
        with issuance.context.uow() as uow:
            op = uow.issuance.get_operation(operation_id)
            steps = uow.issuance.steps(operation_id)
    assert op is not None
    record = operation_json(op, steps)
    if as_json:
        print_json({"approval": approval_json(approval), "operation": record})
        return
    write([f"{operation} done (approval {approval.id})", *operation_lines(record)])


@issuance_app.command("retry")
def issuance_retry(
    operation_id: OperationArgument,
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run a stuck (or waiting) operation's step again now, its attempts at zero. Approval-gated
    (issuance.retry)."""
    _override("issuance.retry", operation_id, reason, actor, db, as_json)


@issuance_app.command("compensate")
def issuance_compensate(
    operation_id: OperationArgument,
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Undo what the operation did (a redemption: refund, or re-mint once burned while its payout
    can no longer be paid); refused (41) for a completed one. Approval-gated
    (issuance.compensate)."""
    _override("issuance.compensate", operation_id, reason, actor, db, as_json)


@issuance_app.command("resolve")
def issuance_resolve(
    operation_id: OperationArgument,
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Close a stuck, held or waiting operation with a reason (moves no value).
    Approval-gated (issuance.resolve)."""
    _override("issuance.resolve", operation_id, reason, actor, db, as_json)


@issuance_app.command("resume-minting")
def issuance_resume_minting(
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Resume minting after the mint guard halted it (check `sluice issuance guard` first).
    Approval-gated (issuance.resume_minting)."""
    from sluice.services.mint_guard import guard_status

    who = actor_name(actor)
    with issuance_session(db, as_json=as_json) as issuance:
        approval = _propose(issuance, "issuance.resume_minting", {"reason": reason}, who)
        refused = _outcome(approval)
        if refused is not None:
            refuse(refused, as_json=as_json)
        if approval.status != "executed":
            _pending(approval, as_json)
            return
        status = guard_status(issuance.context)
    if as_json:
        print_json({"approval": approval_json(approval), "guard": status})
        return
    write([f"minting resumed (approval {approval.id}); headroom {status['headroom_sats']} sats"])


@issuance_app.command("release")
def issuance_release(
    operation_id: OperationArgument,
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A compliance officer overrides the KYC hold of a deposit: it goes on to be minted.
    Refused (41) unless held, and for a deposit from a listed sender."""
    from sluice.services.issuance_held import release_held_deposit

    who = actor_name(actor)
    with issuance_session(db, as_json=as_json) as issuance:
        op = release_held_deposit(issuance.context, operation_id, reason=reason, actor=who)
    record = operation_json(op)
    if as_json:
        print_json(record)
        return
    write([f"released {op.id}: it is minted on the router's next round", *operation_lines(record)])


@issuance_app.command("return")
def issuance_return(
    operation_id: OperationArgument,
    to: Annotated[str, typer.Option("--to", help="The Bitcoin address to pay it back to.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A compliance officer pays a held deposit back (a custody payout of kind "return", its
    network fee deducted) and closes the operation as returned. Refused (41) unless held, and
    for a deposit from a listed sender."""
    from sluice.services.issuance_held import return_held_deposit

    who = actor_name(actor)
    with issuance_session(db, as_json=as_json) as issuance:
        op = return_held_deposit(
            issuance.context, operation_id, address=to, reason=reason, actor=who
        )
    record = operation_json(op)
    if as_json:
        print_json(record)
        return
    write([f"returning {op.id} to {to}", *operation_lines(record)])
    note("the payouts worker (`sluice serve`, `sluice workers run`) sends it")
