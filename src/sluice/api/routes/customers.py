"""Customers, their KYC status, balances, deposit instructions, history and withdrawals.

A user (role ``user``) reaches only their own customer: any other customer id answers 404.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated

from fastapi import APIRouter, Header, Path, Query
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from sluice import bootstrap
from sluice.api.context import ApiContext
from sluice.api.errors import JsonResponse
from sluice.api.operations import propose
from sluice.api.routes.common import (
    ERRORS,
    PROPOSED,
    ComplianceOverride,
    Context,
    OwnOnly,
    OwnOrCompliance,
    PageParams,
    StaffReads,
    UserOps,
)
from sluice.api.schemas import (
    BalanceOut,
    BalancesOut,
    CustomerIn,
    CustomerOut,
    CustomerRegisteredOut,
    DepositInstructionOut,
    HistoryOut,
    KycChangeIn,
    KycOut,
    Page,
    ScreeningOut,
    WithdrawalIn,
    WithdrawalOut,
    approval_out,
    customer_out,
    history_out,
    instrument_ref,
    kyc_out,
    page,
    withdrawal_out,
)
from sluice.domain.amounts import format_amount
from sluice.domain.compliance import STATUSES, Profile
from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.ledger import InstrumentId
from sluice.domain.withdrawals import Withdrawal, WithdrawalStatus, withdrawal_id
from sluice.services import accounts
from sluice.services.compliance_officer import change_tier, set_customer_status
from sluice.services.reference import register_customer
from sluice.services.withdrawals import request_withdrawal

router = APIRouter(prefix="/v1/customers", tags=["customers"], responses=ERRORS)

CustomerId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:@-]+$")]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="chosen by the caller; the same key again returns the first result",
    ),
]


@router.post(
    "",
    response_model=CustomerRegisteredOut,
    status_code=201,
    summary="Register a customer (every name is screened against the sanctions list)",
)
def create_customer(body: CustomerIn, context: Context, caller: UserOps) -> CustomerRegisteredOut:
    """Registers the customer (or, for one already registered, adds the deposit accounts and
    names new to them). Every new name is screened against the sanctions list in force: a match
    puts the customer under review (``kyc.status``), and ``screening`` says which name matched
    which listed name, through which transliteration. Without a configured list, ``screening``
    says the names were not screened."""
    outcome = register_customer(
        context.uow,
        body.id,
        body.name,
        list(body.deposit_accounts),
        other_names=list(body.names),
        tier=body.tier,
        actor=caller.actor,
        at=context.clock(),
        screening=bootstrap.name_screening(context.compliance.screen),
    )
    customer = customer_out(accounts.get_customer(context.uow, body.id))
    return CustomerRegisteredOut(
        **customer.model_dump(), screening=ScreeningOut.model_validate(outcome.as_dict())
    )


@router.get("", response_model=Page[CustomerOut], summary="Customers, paged")
def list_customers(context: Context, paging: PageParams, _caller: StaffReads) -> dict[str, object]:
    records = accounts.list_customers(context.uow, offset=paging.offset, limit=paging.limit)
    return page([customer_out(r) for r in records], paging.offset, paging.limit)


@router.get("/{customer_id}", response_model=CustomerOut, summary="A customer and their KYC")
def get_customer(customer_id: CustomerId, context: Context, caller: OwnOrCompliance) -> CustomerOut:
    caller.check_customer(customer_id)
    return customer_out(accounts.get_customer(context.uow, customer_id))


@router.post(
    "/{customer_id}/kyc",
    response_model=KycOut,
    summary="Change a customer's KYC status and/or tier (compliance override)",
)
def change_kyc(
    customer_id: CustomerId, body: KycChangeIn, context: Context, caller: ComplianceOverride
) -> KycOut:
    if body.status is None and body.tier is None:
        raise InvalidInputError("give a status, a tier or both")
    profile: Profile | None = None
    now = context.clock()
    if body.status is not None:
        if body.status not in STATUSES:
            raise InvalidInputError(f"status must be one of {', '.join(STATUSES)}")
        profile = set_customer_status(
            context.uow, customer_id, body.status, actor=caller.actor, at=now, reason=body.reason
        )
    if body.tier is not None:
        profile = change_tier(
            context.uow, customer_id, body.tier, actor=caller.actor, at=now, reason=body.reason
        )
    assert profile is not None
    return kyc_out(profile)


async def _balances(context: ApiContext, customer_id: str) -> dict[InstrumentId, Decimal]:
    """On the event loop when the asyncio reads serve it (PostgreSQL), else on a worker thread.
    No balances at all may mean no such customer: the service tells (404) on a worker thread."""
    reads = context.reads
    if reads is not None and reads.serving:
        values = await reads.customer_balances(customer_id)
        if values:
            return values
    return await run_in_threadpool(accounts.customer_balances, context.uow, customer_id)


@router.get("/{customer_id}/balances", response_model=BalancesOut, summary="Balances")
async def balances(
    customer_id: CustomerId, context: Context, caller: OwnOrCompliance
) -> BalancesOut:
    caller.check_customer(customer_id)
    values = await _balances(context, customer_id)
    return BalancesOut(
        customer_id=customer_id,
        balances=[
            BalanceOut(instrument=instrument_ref(instrument), amount=format_amount(amount))
            for instrument, amount in sorted(values.items(), key=lambda kv: kv[0].key())
        ],
    )


@router.get(
    "/{customer_id}/deposit-instructions",
    response_model=list[DepositInstructionOut],
    summary="Where and how to deposit: treasury party, instrument, the reason to put",
)
def deposit_instructions(
    customer_id: CustomerId,
    context: Context,
    caller: OwnOnly,
    instrument_admin: Annotated[str | None, Query(max_length=512)] = None,
    instrument_id: Annotated[str | None, Query(max_length=200)] = None,
) -> list[DepositInstructionOut]:
    caller.check_customer(customer_id)
    if (instrument_admin is None) != (instrument_id is None):
        raise InvalidInputError("give both instrument_admin and instrument_id, or neither")
    instrument = (
        InstrumentId(instrument_admin, instrument_id)
        if instrument_admin is not None and instrument_id is not None
        else None
    )
    found = accounts.deposit_instructions(
        context.uow, customer_id, treasury=context.treasury, instrument=instrument
    )
    return [
        DepositInstructionOut(
            treasury=item.treasury,
            instrument=instrument_ref(item.instrument),
            transfer_kinds=list(item.transfer_kinds),
            deposit_account=item.deposit_account,
            reason_key=item.reason_key,
            description=item.description,
        )
        for item in found
    ]


@router.get(
    "/{customer_id}/history",
    response_model=Page[HistoryOut],
    summary="Ledger history, newest first",
)
def history(
    customer_id: CustomerId, context: Context, paging: PageParams, caller: OwnOrCompliance
) -> dict[str, object]:
    caller.check_customer(customer_id)
    records = accounts.customer_history(
        context.uow, customer_id, offset=paging.offset, limit=paging.limit
    )
    return page([history_out(r) for r in records], paging.offset, paging.limit)


@router.get(
    "/{customer_id}/withdrawals",
    response_model=Page[WithdrawalOut],
    summary="A customer's withdrawals, newest first",
)
def customer_withdrawals(
    customer_id: CustomerId,
    context: Context,
    paging: PageParams,
    caller: OwnOrCompliance,
    status: Annotated[list[WithdrawalStatus] | None, Query(max_length=10)] = None,
) -> dict[str, object]:
    caller.check_customer(customer_id)
    records = accounts.customer_withdrawals(
        context.uow, customer_id, statuses=status or (), offset=paging.offset, limit=paging.limit
    )
    return page([withdrawal_out(r) for r in records], paging.offset, paging.limit)


@router.post(
    "/{customer_id}/withdrawals",
    response_model=WithdrawalOut,
    status_code=201,
    responses={
        **PROPOSED,
        200: {"model": WithdrawalOut, "description": "the same Idempotency-Key again"},
    },
    summary="Request a withdrawal (Idempotency-Key required); large ones need approvals",
)
def create_withdrawal(
    customer_id: CustomerId,
    body: WithdrawalIn,
    idempotency_key: IdempotencyKey,
    context: Context,
    caller: OwnOnly,
) -> Response:
    caller.check_customer(customer_id)
    instrument = InstrumentId(body.instrument.admin, body.instrument.id)
    wid = withdrawal_id(customer_id, idempotency_key)
    try:
        existing = accounts.get_withdrawal(context.uow, wid)
    except NotFoundError:
        existing = None
    if existing is None:
        threshold = context.settings.withdrawal_approval_above()
        value = context.compliance.settings.value(instrument, body.amount)
        if threshold is not None and value > threshold:
            accounts.get_customer(context.uow, customer_id)
            approval = propose(
                context,
                caller,
                "withdrawal.large",
                {
                    "customer_id": customer_id,
                    "receiver": body.receiver,
                    "instrument_admin": instrument.admin,
                    "instrument_id": instrument.id,
                    "amount": format_amount(body.amount),
                    "idempotency_key": idempotency_key,
                    "reference_amount": format_amount(value),
                },
                customer_id=customer_id,
                approval_id=f"ap-{wid}",
                reason=f"withdrawal above {format_amount(threshold)} reference units",
            )
            return JsonResponse(approval_out(approval).model_dump(mode="json"), 202)
    # A request that lost the race to the first one with its key passed the look-up above but
    # gets the first one's withdrawal from the service: it answers as a replay too.
    replays: list[Withdrawal] = []
    record = request_withdrawal(
        context.uow,
        treasury=context.treasury,
        customer_id=customer_id,
        receiver=body.receiver,
        instrument=instrument,
        amount=body.amount,
        idempotency_key=idempotency_key,
        clock=context.clock,
        settings=context.withdrawal_settings,
        compliance=context.compliance,
        actor=caller.actor,
        on_replay=replays.append,
    )
    replayed = existing is not None or bool(replays)
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return JsonResponse(
        withdrawal_out(record).model_dump(mode="json"), 200 if replayed else 201, headers=headers
    )
