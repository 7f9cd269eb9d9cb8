"""A Bitcoin deposit becomes iSTSi: the router's ``bitcoin_deposit`` operation.

The operation (``btc-deposit:<txid>:<vout>``) is created by the watcher in the transaction that
confirms the deposit (:mod:`sluice.services.issuance_intake`), so each deposit has exactly one.
Its steps:

``kyc``
    The customer's tier and limits for ``mint`` (``check_operation_allowed``: the usage is
    recorded when allowed) and the deposit's *input* addresses: each input's previous output is
    read from the node, its script turned into an address and screened (flagged by an officer,
    or on the sanctions list). Refused, or an input whose address cannot be read (fail closed):
    ``hold`` — a review item for the compliance officer, the Bitcoin stays in custody, nothing
    is minted (:mod:`sluice.services.issuance_held` releases or returns it).
``reserve``
    The custody output becomes ``credited`` (``btc_watch.mark_credited``: from ``confirmed``
    only, once): the deposit is taken as the reserve of this mint. Not confirmed (a reorg took
    it away, it is being counted again): ``wait``.
``mint``
    :func:`~sluice.services.mint_guard.record_mint` (guard checked and record written in one
    transaction) then :func:`~sluice.services.mint_guard.send_mint`, to the treasury or to the
    customer's own party. In record_mint's guarded transaction the deposit's custody output is
    read again: only while it is ``credited`` is the mint recorded or sent (a reorg took it
    away: ``wait``, whatever the switch says). Minting halted: ``wait``. Guard breach, the
    ledger refusing, a mint record marked failed (the deposit was compensated) or an unknown
    outcome older than the resend window: ``fail`` (stuck, an operator decides). A record
    ingestion booked (``credited``) counts as committed: never sent again.
``credit``
    Minted to the treasury: waits until ingestion booked it to the customer's account (the mint
    record ``credited``). Minted to the customer's party: done at once (no books).

What makes it safe: every step can run again. ``kyc`` records usage under the operation's id
(a replay is skipped by the database) and its review item has a fixed id; ``reserve`` accepts
an output already ``credited``; ``mint`` uses the fixed record id ``issuance:<op id>:mint`` both
as the record's key (a second ``record_mint`` answers the first record, no second check) and as
the ledger's command id (a second ``send_mint`` answers the first result), so a crash anywhere
between recording and sending mints once, and nothing older than the resend window is sent
again (the ledger's deduplication would no longer answer for it); ``credit`` only reads. The
operator's compensation first writes the mint record as ``failed`` (a fence, refused when a
mint record that is not failed exists): a ``mint`` step still running late then finds that
record and fails without sending, so a compensated deposit is never minted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import ComplianceRequest, ReviewItem
from sluice.domain.errors import (
    InvalidOperationStateError,
    MintGuardError,
    MintingHaltedError,
    SluiceError,
)
from sluice.ports import UnitOfWork
from sluice.ports.bitcoin import NotFoundError
from sluice.ports.issuance import (
    IssuanceOperation,
    IssuerOutcomeUnknownError,
    IssuerRejectedError,
    MintRecord,
    sats_to_amount,
)
from sluice.services.compliance import check_operation_allowed
from sluice.services.issuance_router import OperationDefinition, StepOutcome
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.mint_guard import (
    MintCheck,
    MintNotReadyError,
    ResendWindowPassedError,
    is_committed,
    record_mint,
    send_mint,
)

ACTOR = "issuance-router"


def mint_id(operation_id: str) -> str:
    return f"issuance:{operation_id}:mint"


def review_id(operation_id: str) -> str:
    return f"issuance-held:{operation_id}"


# --- the deposit's senders ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Senders:
    """The addresses a deposit's inputs spent from, and the inputs whose address could not be
    read (missing previous transaction, non-standard script, a coinbase)."""

    addresses: tuple[str, ...]
    unreadable: tuple[str, ...]


def deposit_senders(ctx: IssuanceContext, txid: str) -> Senders:
    """Read from the node. Node errors other than "not found" are raised (the step retries)."""
    tx = ctx.node.getrawtransaction(txid)
    addresses: list[str] = []
    unreadable: list[str] = []
    for index, vin in enumerate(tx.get("vin") or []):
        prev_txid, prev_vout = vin.get("txid"), vin.get("vout")
        if not isinstance(prev_txid, str) or not isinstance(prev_vout, int):
            unreadable.append(f"input {index} (coinbase)")
            continue
        outpoint = f"{prev_txid}:{prev_vout}"
        try:
            prev = ctx.node.getrawtransaction(prev_txid)
        except NotFoundError:
            unreadable.append(outpoint)
            continue
        outputs = prev.get("vout") or []
        script = None
        if 0 <= prev_vout < len(outputs):
            script = (outputs[prev_vout].get("scriptPubKey") or {}).get("hex")
        address = ctx.wallet.address_of(script) if isinstance(script, str) else None
        if address is None:
            unreadable.append(outpoint)
        elif address not in addresses:
            addresses.append(address)
    if not addresses and not unreadable:
        unreadable.append("no inputs")
    return Senders(tuple(addresses), tuple(unreadable))


def listed_senders(
    ctx: IssuanceContext, uow: UnitOfWork, customer_id: str, addresses: Sequence[str]
) -> dict[str, str]:
    """address → why it may not be dealt with (flagged, or on the sanctions list)."""
    session = ctx.registry.session(
        uow, [customer_id], addresses, since=ctx.clock(), operations=["mint"], lock=False
    )
    found: dict[str, str] = {}
    for address in addresses:
        why = session.listed(address)
        if why is not None:
            found[address] = why
    return found


def screen_senders(ctx: IssuanceContext, operation: IssuanceOperation) -> dict[str, str]:
    """The deposit's listed senders now (read from the node and screened again)."""
    senders = deposit_senders(ctx, str(operation.params["txid"]))
    with ctx.uow() as uow:
        return listed_senders(ctx, uow, operation.customer_id, senders.addresses)


# --- steps -------------------------------------------------------------------------------------


def _hold(
    ctx: IssuanceContext, operation: IssuanceOperation, reason: str, result: dict[str, object]
) -> StepOutcome:
    at = ctx.clock()
    with ctx.uow() as uow:
        uow.compliance.open_review(
            ReviewItem(
                id=review_id(operation.id),
                kind="deposit_held",
                reason=f"bitcoin deposit {operation.id} of {operation.amount_sats} sats: {reason}",
                opened_at=at,
                customer_id=operation.customer_id,
                subject=operation.id,
            )
        )
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=operation.id,
                    operation="issuance_deposit_held",
                    actor=ACTOR,
                    recorded_at=at,
                    customer_id=operation.customer_id,
                    parameters={"amount_sats": operation.amount_sats, **result},
                    state_changes=[{"operation": operation.id, "status": "held"}],
                    error=reason,
                )
            ]
        )
        uow.commit()
    return StepOutcome(kind="hold", detail=result, result={"kyc": result}, error=reason)


def kyc(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    senders = deposit_senders(ctx, str(operation.params["txid"]))
    at = ctx.clock()
    with ctx.uow() as uow:
        listed = listed_senders(ctx, uow, operation.customer_id, senders.addresses)
    if listed:
        reason = "; ".join(f"sender {a} is {why}" for a, why in sorted(listed.items()))
        return _hold(
            ctx,
            operation,
            reason,
            {"refused": "listed_sender", "listed_senders": sorted(listed), "reason": reason},
        )
    if senders.unreadable:
        reason = "the address of input(s) " + ", ".join(senders.unreadable) + " cannot be read"
        return _hold(
            ctx,
            operation,
            reason,
            {"refused": "unreadable_inputs", "unreadable_inputs": list(senders.unreadable)},
        )
    request = ComplianceRequest(
        operation.customer_id, "mint", sats_to_amount(operation.amount_sats), None
    )
    try:
        with ctx.uow() as uow:
            check_operation_allowed(
                uow,
                ctx.registry,
                request,
                operation_id=operation.id,
                at=at,
                actor=ACTOR,
                parameters={"txid": operation.params["txid"], "vout": operation.params["vout"]},
            )
            uow.commit()
    except SluiceError as exc:
        return _hold(ctx, operation, str(exc), {"refused": exc.error, "reason": str(exc)})
    detail = {"senders": list(senders.addresses)}
    return StepOutcome(kind="done", detail=detail, result={"kyc": "allowed"}, next_step="reserve")


def reserve(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    txid, vout = str(operation.params["txid"]), int(operation.params["vout"])
    at = ctx.clock()
    with ctx.uow() as uow:
        output = uow.btc_watch.output(txid, vout)
        if output is None:
            return StepOutcome(kind="fail", error=f"custody output {txid}:{vout} is not recorded")
        if output.status == "confirmed":
            uow.btc_watch.mark_credited(txid, vout, at=at)
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=operation.id,
                        operation="issuance_deposit_reserved",
                        actor=ACTOR,
                        recorded_at=at,
                        customer_id=operation.customer_id,
                        parameters={"output": f"{txid}:{vout}", "amount_sats": output.amount_sats},
                        state_changes=[{"output": f"{txid}:{vout}", "status": "credited"}],
                    )
                ]
            )
            uow.commit()
        elif output.status != "credited":
            return StepOutcome(kind="wait", detail={"output_status": output.status})
    return StepOutcome(kind="done", detail={"output": f"{txid}:{vout}"}, next_step="mint")


def _mint_record(ctx: IssuanceContext, operation: IssuanceOperation, owner: str) -> MintRecord:
    return MintRecord(
        id=mint_id(operation.id),
        operation_id=operation.id,
        customer_id=operation.customer_id,
        owner=owner,
        amount_sats=operation.amount_sats,
        reason=f"issuance:{operation.id}",
        status="submitted",
        created_at=ctx.clock(),
    )


def _reserve_still_credited(operation: IssuanceOperation) -> MintCheck:
    """record_mint's check: the deposit's custody output is still ``credited`` (a reorg may
    have taken it away since ``reserve``)."""
    txid, vout = str(operation.params["txid"]), int(operation.params["vout"])

    def check(uow: UnitOfWork) -> str | None:
        output = uow.btc_watch.output(txid, vout)
        status = "not recorded" if output is None else output.status
        if status == "credited":
            return None
        return f"its custody output {txid}:{vout} is {status}, not credited"

    return check


def mint(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    with ctx.uow() as uow:
        owner = uow.issuance.mint_to_party(operation.customer_id) or ctx.treasury
    record = _mint_record(ctx, operation, owner)
    try:
        recorded = record_mint(ctx, record, actor=ACTOR, check=_reserve_still_credited(operation))
    except MintingHaltedError as exc:
        return StepOutcome(kind="wait", detail={"minting": "halted"}, error=str(exc))
    except MintNotReadyError as exc:
        return StepOutcome(kind="wait", detail={"reserve": "not credited"}, error=str(exc))
    except MintGuardError as exc:
        return StepOutcome(kind="fail", detail={"mint": record.id}, error=str(exc))
    update_id = recorded.update_id
    if recorded.status == "failed":
        return StepOutcome(
            kind="fail",
            detail={"mint": recorded.id},
            error=f"the mint {recorded.id} is recorded as failed (the ledger refused it, or the "
            "deposit was compensated): nothing is sent",
        )
    if not is_committed(recorded):
        try:
            update_id = send_mint(ctx, recorded).update_id
        except IssuerRejectedError as exc:
            return StepOutcome(kind="fail", detail={"mint": recorded.id}, error=str(exc))
        except IssuerOutcomeUnknownError as exc:
            return StepOutcome(kind="retry", detail={"mint": recorded.id}, error=str(exc))
        except ResendWindowPassedError as exc:
            return StepOutcome(kind="fail", detail={"mint": recorded.id}, error=str(exc))
    minted = {"mint_id": recorded.id, "minted_to": recorded.owner, "mint_update_id": update_id}
    return StepOutcome(kind="done", detail=minted, result=minted, next_step="credit")


def credit(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    with ctx.uow() as uow:
        record = uow.issuance.get_mint(mint_id(operation.id))
    if record is None or not is_committed(record):
        return StepOutcome(kind="fail", error=f"no committed mint {mint_id(operation.id)}")
    if record.owner != ctx.treasury:
        return StepOutcome(kind="done", detail={"to_party": record.owner}, next_step="done")
    if not record.credited:
        return StepOutcome(kind="wait", detail={"waiting_for": "ingestion"})
    return StepOutcome(
        kind="done", detail={"credited": True}, result={"credited": True}, next_step="done"
    )


def compensate(ctx: IssuanceContext, operation: IssuanceOperation) -> StepOutcome:
    """Close a deposit nothing was minted for (the Bitcoin stays in custody, for an officer to
    return or handle). The mint record is first written ``failed`` (a fence): a ``mint`` step
    running late finds it and fails without sending. Refused (41) once a mint was recorded and
    not refused by the ledger: the iSTSi may exist, and only a redemption takes it back."""
    fence = replace(_mint_record(ctx, operation, ctx.treasury), status="failed")
    record: MintRecord | None = fence
    with ctx.uow() as uow:
        if uow.issuance.insert_mint(fence):
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=operation.id,
                        operation="issuance_mint_fenced",
                        actor=ACTOR,
                        recorded_at=fence.created_at,
                        customer_id=operation.customer_id,
                        parameters={"mint_id": fence.id, "amount_sats": fence.amount_sats},
                        state_changes=[{"mint": fence.id, "status": "failed"}],
                    )
                ]
            )
            uow.commit()
        else:
            record = uow.issuance.get_mint(fence.id)
    if record is None or record.status != "failed" or record.credited:
        raise InvalidOperationStateError(
            f"{operation.id}: the mint {fence.id} is "
            f"{'missing' if record is None else record.status}; a minted deposit is not "
            "compensated (the customer redeems it)"
        )
    return StepOutcome(
        kind="done",
        detail={"minted": False, "mint_fence": fence.id},
        result={"compensated": "nothing minted"},
        next_step="done",
        status="compensated",
    )


DEFINITION = OperationDefinition(
    type="bitcoin_deposit",
    steps=(("kyc", kyc), ("reserve", reserve), ("mint", mint), ("credit", credit)),
    compensate=compensate,
)

__all__ = [
    "DEFINITION",
    "Senders",
    "deposit_senders",
    "listed_senders",
    "mint_id",
    "review_id",
    "screen_senders",
]
