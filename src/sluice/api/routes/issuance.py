"""iSTSi issuance over HTTP: a customer's deposit address, deposits, balances and redemptions;
staff's view of the router's operations, the mint guard and the KYC-hold decisions; and the
officers' actions (overrides, resume minting, contract addresses: approval-gated, 202; held
deposits: released or returned by a compliance officer).

A user (role ``user``) reaches only their own customer: any other customer id answers 404, as
everywhere in the API. When the deployment has no issuance (``ApiContext.issuance`` is None) the
issuance endpoints answer 503 saying so.

Why no request here can take or pay twice: a redemption's id is
``redeem:<customer>:<Idempotency-Key>`` and :func:`request_redemption` creates it in the same
transaction that takes the iSTSi, so the same key again is refused with 409 (code 42) carrying
the first operation, whatever happened to the first answer. Overrides, resume and contract
changes are only *proposed* here; their executors (:mod:`sluice.api.operations`) run once enough
principals approved, and the services they call refuse what would pay or mint twice (41).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query
from starlette.responses import Response

from sluice import bootstrap
from sluice.api.context import ApiContext
from sluice.api.errors import JsonResponse
from sluice.api.issuance_schemas import (
    BalanceLinesOut,
    ContractAddressesIn,
    DepositAddressOut,
    GuardOut,
    IstsiDepositOut,
    OperationOut,
    OverrideIn,
    RedemptionIn,
    ReturnIn,
    TransferDecisionOut,
    balance_lines_out,
    decision_out,
    deposit_address_out,
    deposit_out,
    operation_out,
)
from sluice.api.operations import propose
from sluice.api.routes.common import (
    ERRORS,
    PROPOSED,
    ComplianceOverride,
    Context,
    OwnOnly,
    OwnOrCompliance,
    PageParams,
    RouterAdmin,
    StaffReads,
)
from sluice.api.routes.customers import CustomerId
from sluice.api.schemas import Page, approval_out, page
from sluice.api.security import Caller
from sluice.domain.errors import InvalidOperationStateError, NotFoundError, SluiceError
from sluice.ports.issuance import IssuanceOperation
from sluice.services.balances import customer_balances
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_deposits import list_deposits
from sluice.services.issuance_contracts import check_contract_addresses
from sluice.services.issuance_held import release_held_deposit, return_held_deposit
from sluice.services.issuance_intake import deposit_operation_id
from sluice.services.issuance_redeem import IDEMPOTENCY_KEY_MAX, request_redemption
from sluice.services.issuance_router import operation_json
from sluice.services.mint_guard import guard_status

# A redemption's Idempotency-Key is at most 100 characters (it becomes part of the operation id).
RedemptionKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=IDEMPOTENCY_KEY_MAX,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="chosen by the caller; the same key again answers 409 with the first",
    ),
]

# How many outputs the Bitcoin watcher lists at once (a page past them is empty).
DEPOSITS_LISTED_MAX = 100_000

customers = APIRouter(prefix="/v1/customers", tags=["issuance"], responses=ERRORS)
staff = APIRouter(prefix="/v1/issuance", tags=["issuance"], responses=ERRORS)

OperationId = Annotated[str, Path(min_length=1, max_length=300, pattern=r"^[A-Za-z0-9._:@-]+$")]
OPERATION_TYPES = ("bitcoin_deposit", "token_withdrawal")
REDEMPTION = "token_withdrawal"
# Deposits and operations a list looks at: a page is cut from the newest ones.
LIST_MAX = 10_000


class IssuanceNotConfiguredError(SluiceError):
    """The deployment has no ``[issuance]`` wiring (answered 503)."""

    code = 11
    error = "issuance_not_configured"
    http_status = 503


NOT_CONFIGURED = "issuance is not configured: this deployment runs without iSTSi issuance"


def issuance_of(context: ApiContext) -> bootstrap.Issuance:
    """The issuance wiring, or 503 saying it is not configured."""
    found = context.issuance
    if found is None:
        raise IssuanceNotConfiguredError(NOT_CONFIGURED)
    return found


def _operation(context: ApiContext, operation_id: str, *, steps: bool = False) -> dict[str, Any]:
    with context.uow() as uow:
        op = uow.issuance.get_operation(operation_id)
        if op is None:
            raise NotFoundError(f"no issuance operation {operation_id}")
        records = uow.issuance.steps(operation_id) if steps else None
    return operation_json(op, records)


def _operations(
    context: ApiContext,
    *,
    type: str | None,
    status: str | None,
    customer_id: str | None,
    offset: int,
    limit: int,
) -> list[IssuanceOperation]:
    with context.uow() as uow:
        found = uow.issuance.operations(
            type=type, status=status, customer_id=customer_id, limit=min(offset + limit, LIST_MAX)
        )
    return found[offset : offset + limit]


def _proposed(
    context: ApiContext,
    caller: Caller,
    operation: str,
    parameters: dict[str, object],
    *,
    reason: str,
    customer_id: str | None = None,
    timelock_s: float = 0.0,
) -> Response:
    approval = propose(
        context,
        caller,
        operation,
        parameters,
        customer_id=customer_id,
        reason=reason,
        timelock_s=timelock_s,
    )
    return JsonResponse(approval_out(approval).model_dump(mode="json"), 202)


# --- customers -----------------------------------------------------------------------------------


@customers.get(
    "/{customer_id}/istsi/deposit-address",
    response_model=DepositAddressOut,
    summary="The customer's Bitcoin deposit address for iSTSi (a fresh one once it was paid)",
)
def istsi_deposit_address(
    customer_id: CustomerId, context: Context, caller: OwnOnly
) -> DepositAddressOut:
    caller.check_customer(customer_id)
    ctx = issuance_of(context).context
    derived = deposit_address(ctx.uow, ctx.wallet, customer_id, clock=ctx.clock, actor=caller.actor)
    return deposit_address_out(customer_id, derived)


@customers.get(
    "/{customer_id}/istsi/deposits",
    response_model=Page[IstsiDepositOut],
    summary="The customer's Bitcoin deposits and the iSTSi minting of each, newest first",
)
def istsi_deposits(
    customer_id: CustomerId, context: Context, paging: PageParams, caller: OwnOrCompliance
) -> dict[str, object]:
    caller.check_customer(customer_id)
    ctx = issuance_of(context).context
    wanted = min(paging.offset + paging.limit, DEPOSITS_LISTED_MAX)
    views = list_deposits(ctx.uow, customer_id=customer_id, limit=wanted)
    views = views[paging.offset : paging.offset + paging.limit]
    ids = [deposit_operation_id(v.txid, v.vout) for v in views]
    with context.uow() as uow:
        ops = {i: uow.issuance.get_operation(i) for i in ids}
    items = [deposit_out(v, i, ops[i]) for v, i in zip(views, ids, strict=True)]
    return page(items, paging.offset, paging.limit)


@customers.get(
    "/{customer_id}/balances/detail",
    response_model=BalanceLinesOut,
    summary="Balances per instrument: available, held and in flight (iSTSi included)",
)
def balance_lines(
    customer_id: CustomerId, context: Context, caller: OwnOrCompliance
) -> BalanceLinesOut:
    caller.check_customer(customer_id)
    configured = context.issuance
    istsi = configured.context.issuer.instrument if configured is not None else None
    lines = customer_balances(context.uow, customer_id, istsi=istsi)
    return balance_lines_out(customer_id, lines)


@customers.post(
    "/{customer_id}/redemptions",
    response_model=OperationOut,
    status_code=201,
    summary=(
        "Redeem iSTSi for Bitcoin (Idempotency-Key required; the same key again answers 409 "
        "with the first redemption in details.first)"
    ),
)
def create_redemption(
    customer_id: CustomerId,
    body: RedemptionIn,
    idempotency_key: RedemptionKey,
    context: Context,
    caller: OwnOnly,
) -> Response:
    caller.check_customer(customer_id)
    ctx = issuance_of(context).context
    op = request_redemption(
        ctx,
        customer_id=customer_id,
        amount_sats=body.amount_sats,
        address=body.address,
        idempotency_key=idempotency_key,
        actor=caller.actor,
    )
    return JsonResponse(operation_out(operation_json(op)).model_dump(mode="json"), 201)


@customers.get(
    "/{customer_id}/redemptions",
    response_model=Page[OperationOut],
    summary="The customer's redemptions, newest first",
)
def customer_redemptions(
    customer_id: CustomerId,
    context: Context,
    paging: PageParams,
    caller: OwnOrCompliance,
    status: Annotated[str | None, Query(max_length=20)] = None,
) -> dict[str, object]:
    caller.check_customer(customer_id)
    issuance_of(context)
    with context.uow() as uow:
        if uow.accounts.customer(customer_id) is None:
            raise NotFoundError(f"unknown customer {customer_id!r}")
    found = _operations(
        context,
        type=REDEMPTION,
        status=status,
        customer_id=customer_id,
        offset=paging.offset,
        limit=paging.limit,
    )
    return page([operation_out(operation_json(op)) for op in found], paging.offset, paging.limit)


@customers.get(
    "/{customer_id}/redemptions/{operation_id}",
    response_model=OperationOut,
    summary="A redemption with its steps",
)
def get_redemption(
    customer_id: CustomerId, operation_id: OperationId, context: Context, caller: OwnOrCompliance
) -> OperationOut:
    caller.check_customer(customer_id)
    issuance_of(context)
    data = _operation(context, operation_id, steps=True)
    if data["type"] != REDEMPTION or data["customer_id"] != customer_id:
        raise NotFoundError(f"customer {customer_id} has no redemption {operation_id}")
    return operation_out(data)


# --- staff: operations ---------------------------------------------------------------------------


@staff.get(
    "/operations",
    response_model=Page[OperationOut],
    summary="The router's operations, newest first (filter by type, status, customer)",
)
def list_operations(
    context: Context,
    paging: PageParams,
    _caller: StaffReads,
    type: Annotated[str | None, Query(max_length=30)] = None,
    status: Annotated[str | None, Query(max_length=20)] = None,
    customer_id: Annotated[str | None, Query(max_length=100)] = None,
) -> dict[str, object]:
    issuance_of(context)
    found = _operations(
        context,
        type=type,
        status=status,
        customer_id=customer_id,
        offset=paging.offset,
        limit=paging.limit,
    )
    return page([operation_out(operation_json(op)) for op in found], paging.offset, paging.limit)


@staff.get(
    "/operations/{operation_id}",
    response_model=OperationOut,
    summary="An operation with its steps, attempts, overrides and compensations",
)
def get_operation(operation_id: OperationId, context: Context, _caller: StaffReads) -> OperationOut:
    issuance_of(context)
    return operation_out(_operation(context, operation_id, steps=True))


def _override(
    action: str, operation_id: str, body: OverrideIn, context: Context, caller: Caller
) -> Response:
    issuance_of(context)
    data = _operation(context, operation_id)
    return _proposed(
        context,
        caller,
        f"issuance.{action}",
        {"operation_id": operation_id, "reason": body.reason},
        reason=body.reason,
        customer_id=str(data["customer_id"]),
    )


@staff.post(
    "/operations/{operation_id}/retry",
    responses=PROPOSED,
    status_code=202,
    summary="Propose running a stuck or waiting operation's step again (router admin, approvals)",
)
def retry(
    operation_id: OperationId, body: OverrideIn, context: Context, caller: RouterAdmin
) -> Response:
    return _override("retry", operation_id, body, context, caller)


@staff.post(
    "/operations/{operation_id}/compensate",
    responses=PROPOSED,
    status_code=202,
    summary="Propose compensating an operation: refund or re-mint (router admin, approvals)",
)
def compensate(
    operation_id: OperationId, body: OverrideIn, context: Context, caller: RouterAdmin
) -> Response:
    return _override("compensate", operation_id, body, context, caller)


@staff.post(
    "/operations/{operation_id}/resolve",
    responses=PROPOSED,
    status_code=202,
    summary="Propose closing an operation as resolved by hand (router admin, approvals)",
)
def resolve(
    operation_id: OperationId, body: OverrideIn, context: Context, caller: RouterAdmin
) -> Response:
    return _override("resolve", operation_id, body, context, caller)


# --- staff: the mint guard, held deposits, contracts, held transfers ------------------------------


@staff.get("/guard", response_model=GuardOut, summary="The mint guard's figures and switch")
def guard(context: Context, _caller: StaffReads) -> GuardOut:
    return GuardOut.model_validate(guard_status(issuance_of(context).context))


@staff.post(
    "/guard/resume",
    responses=PROPOSED,
    status_code=202,
    summary="Propose resuming minting after a halt (router admin, approvals)",
)
def resume_minting(body: OverrideIn, context: Context, caller: RouterAdmin) -> Response:
    ctx = issuance_of(context).context
    with ctx.uow() as uow:
        state = uow.issuance.minting_state()
    if not state.minting_halted:
        raise InvalidOperationStateError("minting is not halted: nothing to resume")
    return _proposed(
        context, caller, "issuance.resume_minting", {"reason": body.reason}, reason=body.reason
    )


@staff.post(
    "/deposits/{operation_id}/release",
    response_model=OperationOut,
    summary="Release a deposit held by KYC: minting goes on (compliance officer)",
)
def release_deposit(
    operation_id: OperationId, body: OverrideIn, context: Context, caller: ComplianceOverride
) -> OperationOut:
    ctx = issuance_of(context).context
    op = release_held_deposit(ctx, operation_id, reason=body.reason, actor=caller.actor)
    return operation_out(operation_json(op))


@staff.post(
    "/deposits/{operation_id}/return",
    response_model=OperationOut,
    summary="Pay a held deposit back to an address, less the network fee (compliance officer)",
)
def return_deposit(
    operation_id: OperationId, body: ReturnIn, context: Context, caller: ComplianceOverride
) -> OperationOut:
    ctx = issuance_of(context).context
    op = return_held_deposit(
        ctx, operation_id, address=body.address, reason=body.reason, actor=caller.actor
    )
    return operation_out(operation_json(op))


@staff.post(
    "/contracts",
    responses=PROPOSED,
    status_code=202,
    summary="Propose new contract addresses for the router (router admin, approvals, time lock)",
)
def update_contracts(body: ContractAddressesIn, context: Context, caller: RouterAdmin) -> Response:
    issuance_of(context)
    addresses = check_contract_addresses(body.model_dump(exclude={"reason"}))
    return _proposed(
        context,
        caller,
        "issuance.update_contract_addresses",
        dict(addresses.as_json()),
        reason=body.reason or "contract addresses change",
        timelock_s=context.settings.config_timelock_s(),
    )


@staff.get(
    "/transfers",
    response_model=Page[TransferDecisionOut],
    summary="Decisions on held iSTSi transfers (KYC hold), newest first",
)
def transfer_decisions(
    context: Context, paging: PageParams, _caller: StaffReads
) -> dict[str, object]:
    issuance_of(context)
    with context.uow() as uow:
        found = uow.issuance.decisions(limit=min(paging.offset + paging.limit, LIST_MAX))
    items = [decision_out(d) for d in found[paging.offset : paging.offset + paging.limit]]
    return page(items, paging.offset, paging.limit)


# Mounted by the application after the other modules' routers (api/app.py ROUTERS).
ROUTERS = (customers, staff)
