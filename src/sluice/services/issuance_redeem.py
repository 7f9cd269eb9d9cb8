"""Redemption of iSTSi for Bitcoin (operation type ``token_withdrawal``): a customer gives back
iSTSi from their exchange account and is paid the same number of satoshis, less the network fee,
from custody.

:func:`request_redemption` takes the customer's iSTSi (journal ``redemption_requested``:
``customer:<C>`` → ``in_flight``) and creates the operation; the router then runs
:data:`DEFINITION`'s steps: ``burn`` (the treasury's iSTSi is burned on the token ledger) →
``payout`` (a custody payout of kind ``redemption``, id ``redeem:<operation id>``) → ``confirm``
(the payout completed at ``confirmations_min``: what the customer received is recorded). A payout
that can no longer be paid leads to ``remint`` (the burned iSTSi minted again and credited back);
an operator's compensation before any burn committed is a ``refund`` (``in_flight`` → customer).
Ingestion books the burn (``issuance_burn``: treasury −X, ``in_flight`` debited) and the re-mint
(like a mint: treasury +X, the customer credited) from the ledger, by the commands' reasons.

How a redemption could lose or double-pay money, and why it cannot here
-----------------------------------------------------------------------
1. *Taking the iSTSi twice, or paying for iSTSi not taken.* The request is one transaction: the
   customer's row and balance row are locked (the lock order of withdrawals and ingestion), the
   KYC decision records its usage, the journal moves the amount to ``in_flight`` and the
   operation is inserted under its id ``redeem:<customer>:<idempotency key>``. A second request
   with the same key finds the operation (or loses the insert race and rolls back everything,
   usage included) and is answered with :class:`DuplicateOperationError` carrying the first
   operation. A refusal (KYC, balance, pause) takes nothing.
2. *Burning twice.* The burn is recorded (``issuance_burns``, id = the ledger command id
   ``issuance:<op>:burn``) before it is sent, and every send uses that id: a retry after a lost
   answer (:class:`IssuerOutcomeUnknownError`) is answered by the ledger's command deduplication
   with the first result, so it commits at most once. The ledger remembers a command id for its
   deduplication window only, so a burn whose outcome is unknown is sent again only while its
   record is younger than ``IssuanceSettings.resend_window_s`` (12 h, below the ledger's 24 h);
   older, the step fails (stuck, critical alert) for an operator to reconcile with the ledger.
   Ingestion marks a booked burn ``committed``, so a burn the books have is never sent again.
3. *Paying twice.* The payout's id is ``redeem:<operation id>``: :func:`request_payout` answers
   the first request for the same id, so a step run again after a crash queues nothing new; from
   then on :mod:`sluice.services.btc_payouts` guarantees a payout is paid at most once.
4. *Paid and re-minted.* The re-mint gives the customer back what the payout would have paid, so
   it happens only when the payout can never be paid: ``cancelled`` (an operator cancelled it, or
   the compensation did, which :func:`cancel_payout` allows only while no batch holds it: a batch
   means a signed transaction that may be mined), or ``failed`` with no batch. The ``remint``
   step reads the payout again before minting, and refuses otherwise. A compensation while a
   batch holds the payout is refused (41). When the burn committed but no payout exists yet, the
   compensation requests it and cancels it at once: a ``payout`` step running late is answered
   with the cancelled payout and never queues a new one.
5. *Refunded and burned.* The refund (``in_flight`` → customer) happens only when no burn can
   commit: no burn record (the refund inserts one marked failed and refunded, in its own
   transaction, so a late ``burn`` step's insert loses and it never sends), or a burn the ledger
   rejected. A burn whose outcome is unknown (``submitted``) is never refunded: retrying the
   operation sends it again with the same command id, which tells. The marker
   (``update_id = "refunded"`` on the burn record) makes the refund happen once; the journal
   transaction's unique id backs it. A rejected burn is sent again (operator retry) only after
   it is moved back to ``submitted`` under the customer's lock, which the refund takes too.
6. *Re-minting twice.* The re-mint is a mint record (``issuance:<op>:remint``) written with the
   mint guard's check before it is sent (:func:`record_mint`), sent with its id as the command id
   (:func:`send_mint`); the record's id is unique, so the decision is made once. A re-mint
   ingestion booked (``credited``) counts as committed, and one whose outcome is unknown is not
   sent again past the resend window (as for the burn, point 2).

Steps and compensation run under the router's claim of the operation (lease and version check),
so one of them at a time works on a redemption.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from sluice.domain.amounts import format_amount
from sluice.domain.audit import AuditEntry, current_correlation_id
from sluice.domain.compliance import ComplianceRequest
from sluice.domain.custody_fees import dust_limit_sats
from sluice.domain.errors import (
    DuplicateOperationError,
    InsufficientBalanceError,
    InvalidAmountError,
    InvalidInputError,
    InvalidOperationStateError,
    MintingHaltedError,
    NotFoundError,
    SystemPausedError,
)
from sluice.domain.journal import (
    IN_FLIGHT,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
)
from sluice.ports.bitcoin_payouts import PAYOUT_WAITING_STATUSES
from sluice.ports.issuance import (
    TERMINAL_STATUSES,
    BurnRecord,
    IssuanceOperation,
    IssuerOutcomeUnknownError,
    IssuerRejectedError,
    MintRecord,
    OperationType,
    sats_to_amount,
)
from sluice.services.breakers import BreakerOpenError
from sluice.services.btc_payouts import (
    PAYOUT_ID_MAX,
    PayoutView,
    cancel_payout,
    get_payout,
    request_payout,
)
from sluice.services.compliance import check_operation_allowed
from sluice.services.controls import check_not_paused
from sluice.services.events import emit_all
from sluice.services.issuance_burn_inputs import burn_inputs, release_burn_inputs
from sluice.services.issuance_events import burned_event, redemption_requested_event
from sluice.services.issuance_router import (
    OperationDefinition,
    StepOutcome,
    create_operation,
    operation_json,
)
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.mint_guard import (
    ResendWindowPassedError,
    check_resend_window,
    is_committed,
    record_mint,
    send_mint,
)

OPERATION_TYPE: OperationType = "token_withdrawal"
ROUTER_ACTOR = "issuance-router"
IDEMPOTENCY_KEY_MAX = 100
# On a burn record: the refund of the redemption was booked (the burn never committed and never
# will: it is never sent once marked).
REFUNDED = "refunded"


def redemption_id(customer_id: str, idempotency_key: str) -> str:
    return f"redeem:{customer_id}:{idempotency_key}"


def payout_id_of(operation_id: str) -> str:
    return f"redeem:{operation_id}"


def burn_id_of(operation_id: str) -> str:
    """The burn's record id, ledger command id and reason."""
    return f"issuance:{operation_id}:burn"


def remint_id_of(operation_id: str) -> str:
    """The re-mint's record id, ledger command id and reason."""
    return f"issuance:{operation_id}:remint"


# --- the request -------------------------------------------------------------------------------


def request_redemption(
    ctx: IssuanceContext,
    *,
    customer_id: str,
    amount_sats: int,
    address: str,
    idempotency_key: str,
    actor: str,
) -> IssuanceOperation:
    """Take ``amount_sats`` of the customer's iSTSi and open a redemption paying them to
    ``address``. Bad input changes nothing (the address of another network: 64; an amount under
    what a payout needs: 61); a KYC refusal (``burn`` limits, a listed address, a frozen
    customer) leaves only its audit record; too little iSTSi: 62. The same idempotency key
    again: :class:`DuplicateOperationError` (42) carrying the first operation."""
    if not isinstance(customer_id, str) or not customer_id.strip():
        raise InvalidInputError("a redemption names its customer")
    if not isinstance(idempotency_key, str) or not idempotency_key.strip():
        raise InvalidInputError("idempotency key must not be empty")
    if len(idempotency_key) > IDEMPOTENCY_KEY_MAX:
        raise InvalidInputError(f"idempotency key is at most {IDEMPOTENCY_KEY_MAX} characters")
    if not actor.strip():
        raise InvalidInputError("a redemption names who requested it")
    if isinstance(amount_sats, bool) or not isinstance(amount_sats, int):
        raise InvalidAmountError(f"amount_sats must be a whole number of satoshis: {amount_sats!r}")
    script_hex = ctx.wallet.validate_address(address)
    dust = dust_limit_sats(script_hex, ctx.bitcoin.chain.dust_relay_fee_sat_per_kvb)
    least = ctx.bitcoin.payout_fee_max_sats + dust + 1
    if amount_sats < least:
        raise InvalidAmountError(
            f"a redemption of {amount_sats} sats to {address} could be left under the dust limit "
            f"({dust} sats) by the payout's network fee (up to "
            f"{ctx.bitcoin.payout_fee_max_sats} sats): it must be at least {least} sats"
        )
    operation_id = redemption_id(customer_id, idempotency_key)
    if len(payout_id_of(operation_id)) > PAYOUT_ID_MAX:
        raise InvalidInputError(
            f"customer id and idempotency key are too long together (the payout id "
            f"{payout_id_of(operation_id)!r} is over {PAYOUT_ID_MAX} characters)"
        )
    instrument = ctx.issuer.instrument
    value = sats_to_amount(amount_sats)
    account = AccountRef(customer_account_name(customer_id), instrument)
    with ctx.uow() as uow:
        check_not_paused(uow)
        # The customer's row first, then their balance row: the order withdrawals, ingestion
        # and the officer's commands lock in. A second request of the same key waits here.
        uow.compliance.profiles([customer_id], lock=True)
        balance = uow.withdrawals.balance(account, lock=True)
        existing = uow.issuance.get_operation(operation_id, lock=True)
        if existing is not None:
            raise DuplicateOperationError(
                f"idempotency key {idempotency_key!r} was already used for redemption "
                f"{operation_id}",
                first=operation_json(existing),
            )
        if not uow.withdrawals.customer_exists(customer_id):
            raise NotFoundError(f"unknown customer {customer_id!r}")
        now = ctx.clock()
        # The destination address is the counterparty: listed or flagged, it is refused. A
        # refusal commits its audit record alone and raises the compliance error.
        check_operation_allowed(
            uow,
            ctx.registry,
            ComplianceRequest(
                customer_id, "burn", ctx.registry.settings.value(instrument, value), address
            ),
            operation_id=operation_id,
            at=now,
            actor=actor,
            parameters={"instrument": instrument.key(), "instrument_amount": format_amount(value)},
        )
        if balance < value:
            raise InsufficientBalanceError(
                f"customer {customer_id} has {format_amount(balance)} {instrument.id}, "
                f"cannot redeem {format_amount(value)}"
            )
        uow.withdrawals.post(
            [
                JournalTransaction(
                    id=f"{operation_id}:requested",
                    kind="redemption_requested",
                    postings=(
                        Posting(account, value),
                        Posting(AccountRef(IN_FLIGHT, instrument), -value),
                    ),
                    description=f"redemption {operation_id} of {amount_sats} sats to {address}",
                )
            ]
        )
        operation = create_operation(
            uow,
            operation_id=operation_id,
            type=OPERATION_TYPE,
            customer_id=customer_id,
            amount_sats=amount_sats,
            params={"address": address, "idempotency_key": idempotency_key, "requested_by": actor},
            first_step="burn",
            at=now,
            correlation_id=current_correlation_id.get(),
        )
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=operation_id,
                    operation="redemption_requested",
                    actor=actor,
                    recorded_at=now,
                    customer_id=customer_id,
                    parameters={
                        "amount_sats": amount_sats,
                        "address": address,
                        "idempotency_key": idempotency_key,
                    },
                    state_changes=[
                        {
                            "account": account.name,
                            "to": IN_FLIGHT,
                            "instrument": instrument.key(),
                            "amount": format_amount(value),
                        },
                        {"operation": operation_id, "status": operation.status, "step": "burn"},
                    ],
                )
            ]
        )
        emit_all(uow, [redemption_requested_event(operation, now)])
        uow.commit()
        return operation


# --- the steps ---------------------------------------------------------------------------------


def _done(next_step: str, **fields: Any) -> StepOutcome:
    return StepOutcome(kind="done", next_step=next_step, **fields)


def _burn_of(ctx: IssuanceContext, operation_id: str) -> BurnRecord | None:
    with ctx.uow() as uow:
        return uow.issuance.get_burn(burn_id_of(operation_id))


def _refunded(burn: BurnRecord | None) -> bool:
    return burn is not None and burn.status == "failed" and burn.update_id == REFUNDED


def _unpaid_for_good(view: PayoutView) -> bool:
    """The payout can never be paid: cancelled (only possible before any batch held it), or
    failed without a batch."""
    return view.status == "cancelled" or (view.status == "failed" and view.batch_id is None)


def burn_step(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    """Burn the redeemed iSTSi from the treasury's holdings: recorded first, then sent with the
    record's id as the command id (a retry sends the same command, while the record is younger
    than the resend window; a rejected burn moved back to ``submitted`` is sent at once, and
    counts as a resend once that run is over)."""
    burn_id = burn_id_of(operation.id)
    first_send = False
    with ctx.uow() as uow:
        burn = uow.issuance.get_burn(burn_id)
        if burn is None:
            decided = BurnRecord(
                id=burn_id,
                operation_id=operation.id,
                customer_id=operation.customer_id,
                owner=ctx.treasury,
                amount_sats=operation.amount_sats,
                reason=burn_id,
                status="submitted",
                created_at=ctx.clock(),
            )
            if uow.issuance.insert_burn(decided):
                uow.commit()
                burn = decided
                first_send = True
            else:
                burn = uow.issuance.get_burn(burn_id)
    if burn is None:
        return StepOutcome(kind="retry", error=f"burn {burn_id} could not be recorded")
    if burn.status == "committed":
        return _done("payout", result={"burn_id": burn_id, "burn_update_id": burn.update_id})
    if _refunded(burn):
        return StepOutcome(
            kind="fail",
            error=f"redemption {operation.id} was refunded: its burn is never sent",
        )
    if burn.status == "failed":
        burn = _resubmit_rejected_burn(ctx, operation, burn)
        first_send = True
    if not first_send:
        try:
            check_resend_window(ctx, kind="burn", record_id=burn_id, created_at=burn.created_at)
        except ResendWindowPassedError as exc:
            return StepOutcome(kind="fail", error=str(exc), detail={"burn_id": burn_id})
    inputs = burn_inputs(ctx, burn, ctx.issuer.instrument)
    if not inputs:
        return StepOutcome(
            kind="wait",
            error=f"burn {burn_id}: the treasury's free iSTSi holdings do not cover "
            f"{burn.amount_sats} sat yet (withdrawals in flight hold the rest); nothing was sent",
            detail={"burn_id": burn_id},
        )
    try:
        result = ctx.issuer.burn(
            burn.owner, burn.amount_sats, reason=burn.reason, command_id=burn.id, inputs=inputs
        )
    except BreakerOpenError as exc:
        return _breaker_wait(exc, {"burn_id": burn_id})
    except IssuerOutcomeUnknownError as exc:
        return StepOutcome(
            kind="retry",
            error=f"burn {burn_id}: no answer from the ledger ({exc}); sent again with the "
            "same command id",
            detail={"burn_id": burn_id},
        )
    except IssuerRejectedError as exc:
        with ctx.uow() as uow:
            uow.issuance.set_burn_status(burn_id, "failed")
            release_burn_inputs(uow, burn_id)
            uow.commit()
        return StepOutcome(
            kind="fail",
            error=f"the ledger rejected burn {burn_id}: {exc}. Retry the operation to send it "
            "again, or compensate it (the customer's iSTSi is refunded: nothing was burned)",
            detail={"burn_id": burn_id},
        )
    with ctx.uow() as uow:
        # Conditional: ingestion may book this burn from the ledger's update at the same time;
        # only the one that moves the record writes ``istsi_burned``.
        if uow.issuance.commit_burn(burn_id, result.update_id):
            emit_all(
                uow,
                [burned_event(burn, result.update_id, ctx.clock(), operation.correlation_id)],
            )
            uow.commit()
    return _done(
        "payout",
        detail={"burn_id": burn_id, "update_id": result.update_id},
        result={"burn_id": burn_id, "burn_update_id": result.update_id},
    )


def _breaker_wait(exc: BreakerOpenError, detail: dict[str, Any]) -> StepOutcome:
    """The ``ledger`` breaker refused the command before it was sent: the step waits (no
    attempt used up, nothing failed) and sends the same record, with the same command id, once
    the breaker lets calls through."""
    return StepOutcome(
        kind="wait",
        detail={**detail, "breaker": exc.flow},
        error=str(exc),
        wait_s=exc.retry_after_s,
    )


def _resubmit_rejected_burn(
    ctx: IssuanceContext, operation: IssuanceOperation, burn: BurnRecord
) -> BurnRecord:
    """A burn the ledger rejected is sent again (an operator retried the operation) only once it
    is ``submitted`` again, under the customer's lock the refund takes too: of a refund and a
    second send, whichever comes second sees the other."""
    with ctx.uow() as uow:
        uow.compliance.profiles([operation.customer_id], lock=True)
        current = uow.issuance.get_burn(burn.id)
        if current is None or current.status != "failed" or current.update_id is not None:
            raise InvalidOperationStateError(
                f"burn {burn.id} changed meanwhile"
                + (" (the redemption was refunded)" if _refunded(current) else "")
            )
        uow.issuance.set_burn_status(burn.id, "submitted")
        uow.commit()
    return replace(burn, status="submitted")


def payout_step(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    """Queue the custody payout of the redeemed satoshis (the network fee is deducted from
    them). Its id makes a second request answer the first."""
    burn = _burn_of(ctx, operation.id)
    if burn is None or burn.status != "committed":
        return StepOutcome(
            kind="fail",
            error=f"redemption {operation.id}: no committed burn, so nothing is paid out",
        )
    payout_id = payout_id_of(operation.id)
    try:
        view = request_payout(
            ctx.uow,
            ctx.wallet,
            ctx.bitcoin,
            payout_id=payout_id,
            address=str(operation.params["address"]),
            amount_sats=operation.amount_sats,
            kind="redemption",
            requested_by=str(operation.params.get("requested_by") or ROUTER_ACTOR),
            clock=ctx.clock,
        )
    except SystemPausedError as exc:
        return StepOutcome(kind="wait", detail={"paused": exc.error}, error=str(exc))
    return _done(
        "confirm",
        detail={"payout_id": payout_id, "payout_status": view.status},
        result={"payout_id": payout_id},
    )


def confirm_step(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    """Wait until the payout is completed (``confirmations_min`` confirmations, as the payouts
    worker counts them) and record what the customer received; a payout that can never be paid
    leads to the re-mint."""
    payout_id = payout_id_of(operation.id)
    view = get_payout(ctx.uow, payout_id)
    if view is None:
        return StepOutcome(kind="fail", error=f"redemption {operation.id}: no payout {payout_id}")
    if view.status == "completed":
        fee = view.fee_sats or 0
        paid = {
            "payout_id": payout_id,
            "txid": view.txid,
            "vout": view.vout,
            "fee_sats": fee,
            "received_sats": view.amount_sats - fee,
            "confirmations": view.confirmations,
        }
        return _done("done", status="completed", detail=paid, result=paid)
    if _unpaid_for_good(view):
        return _done(
            "remint",
            detail={"payout_id": payout_id, "payout_status": view.status},
            result={"payout_status": view.status, "payout_error": view.last_error},
        )
    return StepOutcome(
        kind="wait",
        detail={
            "payout_id": payout_id,
            "payout_status": view.status,
            "batch_id": view.batch_id,
            "txid": view.txid,
            "confirmations": view.confirmations,
        },
    )


def remint_step(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    """Mint the burned iSTSi again to the treasury (reason ``issuance:<op>:remint``, which
    ingestion books as a credit to the customer), once the payout can never be paid; done when
    ingestion credited it: the redemption is compensated."""
    remint_id = remint_id_of(operation.id)
    burn = _burn_of(ctx, operation.id)
    if burn is None or burn.status != "committed":
        return StepOutcome(
            kind="fail",
            error=f"redemption {operation.id}: its burn did not commit, so nothing is re-minted "
            "(compensate it: the customer's iSTSi is refunded)",
        )
    view = get_payout(ctx.uow, payout_id_of(operation.id))
    if view is None or not _unpaid_for_good(view):
        return StepOutcome(
            kind="fail",
            error=f"redemption {operation.id}: its payout is "
            + ("missing" if view is None else view.status)
            + ": it may still be paid, so nothing is re-minted",
        )
    decided = MintRecord(
        id=remint_id,
        operation_id=operation.id,
        customer_id=operation.customer_id,
        owner=ctx.treasury,
        amount_sats=operation.amount_sats,
        reason=remint_id,
        status="submitted",
        created_at=ctx.clock(),
    )
    try:
        mint = record_mint(ctx, decided, actor=ROUTER_ACTOR)
    except MintingHaltedError as exc:
        return StepOutcome(kind="wait", detail={"minting_halted": True}, error=str(exc))
    if mint.status == "failed":
        return StepOutcome(
            kind="fail", error=f"the ledger rejected the re-mint {remint_id}: see the mint record"
        )
    if not is_committed(mint):
        try:
            send_mint(ctx, mint)
        except BreakerOpenError as exc:
            return _breaker_wait(exc, {"remint_id": remint_id})
        except ResendWindowPassedError as exc:
            return StepOutcome(kind="fail", error=str(exc), detail={"remint_id": remint_id})
        except IssuerOutcomeUnknownError as exc:
            return StepOutcome(
                kind="retry",
                error=f"re-mint {remint_id}: no answer from the ledger ({exc}); sent again with "
                "the same command id",
            )
        except IssuerRejectedError as exc:
            return StepOutcome(kind="fail", error=f"the ledger rejected re-mint {remint_id}: {exc}")
    with ctx.uow() as uow:
        current = uow.issuance.get_mint(remint_id)
    if current is None:
        return StepOutcome(kind="retry", error=f"re-mint {remint_id} is not recorded")
    if current.owner == ctx.treasury and not current.credited:
        return StepOutcome(
            kind="wait",
            detail={"remint_id": remint_id, "waiting_for": "ingestion to credit the re-mint"},
        )
    return _done(
        "done",
        status="compensated",
        detail={"remint_id": remint_id, "update_id": current.update_id},
        result={"remint_id": remint_id, "remint_update_id": current.update_id},
    )


def refund_step(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    """Give the customer their iSTSi back (``in_flight`` → customer) when no burn committed."""
    journal_id = _refund(ctx, operation, actor=ROUTER_ACTOR)
    return _done(
        "done",
        status="compensated",
        detail={"journal": journal_id},
        result={"refunded": True, "refund_journal": journal_id},
    )


def _refund(ctx: IssuanceContext, operation: IssuanceOperation, *, actor: str) -> str:
    """Book the refund once, only while no burn can commit (see the header, point 5)."""
    burn_id = burn_id_of(operation.id)
    journal_id = f"{operation.id}:refunded"
    instrument = ctx.issuer.instrument
    value = sats_to_amount(operation.amount_sats)
    with ctx.uow() as uow:
        uow.compliance.profiles([operation.customer_id], lock=True)
        burn = uow.issuance.get_burn(burn_id)
        if _refunded(burn):
            return journal_id
        if burn is not None and burn.status != "failed":
            raise InvalidOperationStateError(
                f"redemption {operation.id}: its burn is {burn.status}"
                + (
                    " (its outcome is unknown: retry the operation, which sends it again with "
                    "the same command id, before compensating)"
                    if burn.status == "submitted"
                    else ": the customer is compensated by a re-mint, not a refund"
                )
            )
        if burn is None:
            fence = BurnRecord(
                id=burn_id,
                operation_id=operation.id,
                customer_id=operation.customer_id,
                owner=ctx.treasury,
                amount_sats=operation.amount_sats,
                reason=burn_id,
                status="failed",
                created_at=ctx.clock(),
                update_id=REFUNDED,
            )
            if not uow.issuance.insert_burn(fence):
                raise InvalidOperationStateError(
                    f"redemption {operation.id}: a burn was recorded meanwhile; look again"
                )
        else:
            uow.issuance.set_burn_status(burn_id, "failed", update_id=REFUNDED)
        account = AccountRef(customer_account_name(operation.customer_id), instrument)
        uow.withdrawals.post(
            [
                JournalTransaction(
                    id=journal_id,
                    kind="redemption_refunded",
                    postings=(
                        Posting(AccountRef(IN_FLIGHT, instrument), value),
                        Posting(account, -value),
                    ),
                    description=f"redemption {operation.id} refunded: nothing was burned",
                )
            ]
        )
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=operation.id,
                    operation="redemption_refunded",
                    actor=actor,
                    recorded_at=ctx.clock(),
                    customer_id=operation.customer_id,
                    parameters={"amount_sats": operation.amount_sats},
                    state_changes=[
                        {
                            "account": IN_FLIGHT,
                            "to": account.name,
                            "instrument": instrument.key(),
                            "amount": format_amount(value),
                        },
                        {"burn": burn_id, "status": "failed", "update_id": REFUNDED},
                    ],
                )
            ]
        )
        uow.commit()
    return journal_id


# --- the operator's compensation -----------------------------------------------------------------


def compensate(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    """Make the customer whole without paying them: a refund when no burn committed; a re-mint
    when the burn committed and the payout can no longer be paid (a payout not yet batched is
    cancelled here). Refused (41) for a finished redemption, a burn whose outcome is unknown,
    and a payout a batch holds or that was paid."""
    if operation.status in TERMINAL_STATUSES:
        raise InvalidOperationStateError(
            f"redemption {operation.id} is {operation.status}: nothing to compensate"
        )
    burn = _burn_of(ctx, operation.id)
    if burn is None or burn.status == "failed":
        return refund_step(ctx, operation)
    if burn.status == "submitted":
        raise InvalidOperationStateError(
            f"redemption {operation.id}: the outcome of its burn is unknown; retry the operation "
            "(the burn is sent again with the same command id) before compensating"
        )
    payout_id = payout_id_of(operation.id)
    view = get_payout(ctx.uow, payout_id)
    if view is None:
        # Requested here to be cancelled at once: a payout step running late is then answered
        # with the cancelled payout and never queues one.
        view = request_payout(
            ctx.uow,
            ctx.wallet,
            ctx.bitcoin,
            payout_id=payout_id,
            address=str(operation.params["address"]),
            amount_sats=operation.amount_sats,
            kind="redemption",
            requested_by=ROUTER_ACTOR,
            clock=ctx.clock,
        )
    if view.status == "completed":
        raise InvalidOperationStateError(
            f"redemption {operation.id}: its payout {payout_id} was paid (txid {view.txid})"
        )
    if view.status in PAYOUT_WAITING_STATUSES:
        # Refused (41) when a batch took it meanwhile, or a released batch's old versions pay it.
        view = cancel_payout(
            ctx.uow,
            payout_id=payout_id,
            cancelled_by=ROUTER_ACTOR,
            clock=ctx.clock,
            reason=f"redemption {operation.id} compensated",
        )
    if not _unpaid_for_good(view):
        raise InvalidOperationStateError(
            f"redemption {operation.id}: its payout {payout_id} is {view.status}"
            + (f" in batch {view.batch_id}" if view.batch_id else "")
            + ": a signed transaction paying it may be mined, so it is not compensated"
        )
    return _done(
        "remint",
        detail={"payout_id": payout_id, "payout_status": view.status},
        result={"payout_status": view.status},
    )


DEFINITION = OperationDefinition(
    type=OPERATION_TYPE,
    steps=(("burn", burn_step), ("payout", payout_step), ("confirm", confirm_step)),
    compensate=compensate,
    extra_steps={"remint": remint_step, "refund": refund_step},
)
