"""The KYC hold worker: the issuer's decision on iSTSi transfers between parties.

iSTSi's registry holds every transfer to another party in ``pending_internal_workflow`` until
its admin (sluice's issuer party) updates it. :func:`decide_held_transfers` takes the held
transfers oldest first, at most ``limit`` per call, maps the sender and receiver parties to
customers (``uow.issuance.customer_of_party``; the treasury party is the exchange itself and
always allowed) and asks the KYC registry:

* the receiver must be a known customer whose status is ``active`` and whose party is not on a
  list (flagged by an officer or on the sanctions list);
* the sender must be a known customer whose party is not on a list (screened like the
  receiver's) and whom the registry allows a ``transfer`` of that value to the receiver's party
  (tier limits, status, risk; the usage counts against their limits).

Approved, the instruction goes on to the receiver (who accepts it as any offer); rejected, it
fails and the sender's holding is unlocked.

Why a transfer is decided once and its command commits at most once
------------------------------------------------------------------
1. *The decision is durable before anything is sent.* One transaction inserts the decision row
   (keyed by the instruction's contract id), the KYC usage of the sender and the audit records
   (``istsi_transfer_approved`` / ``istsi_transfer_rejected``). A second worker, or this one
   after a crash, finds the row and keeps it: the first decision stands, even if the customer's
   status changed since (the insert is refused for an id that exists, and the loser rolls back
   its usage and audit).
2. *One command id per instruction.* The command is ``TransferInstruction_Update`` with
   ``command_id = "kyc-hold:<instruction cid>"``. A crash between the decision row and the
   command, a lost response or a timeout leaves the row without an update id; the next call
   sends the same command again (``resent``): the ledger's deduplication commits it at most once
   and answers the first result, whose update id is then recorded. A decision whose instruction
   is no longer held (its command did commit) is resent from the rows still without an update
   id, so its update id is recorded too.
3. *A refusal changes nothing, and is closed.* If the ledger refuses the command
   (:class:`IssuerRejectedError`: the instruction expired or was withdrawn; sending it again
   would be refused again), nothing moved. The decision is then closed: its update id becomes
   ``"refused:<the ledger's reason>"`` (:data:`REFUSED_PREFIX`; the table has no status column,
   and a real update id never starts so), with an audit record (``istsi_transfer_refused``) and
   a warning alert (``istsi_transfer_refused``) in the same transaction. A closed decision is
   never resent, so refusals cannot pile up among the unsent decisions and crowd out newer ones
   whose update id is still to be recorded. Only an answer that is no answer
   (:class:`IssuerOutcomeUnknownError`) leaves the row without an update id, to be resent.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from sluice.domain.amounts import format_amount
from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import ComplianceRequest
from sluice.domain.deposits import Alert
from sluice.ports import UnitOfWork
from sluice.ports.issuance import (
    HeldTransfer,
    IssuerOutcomeUnknownError,
    IssuerRejectedError,
    TransferDecision,
    amount_to_sats,
)
from sluice.services.issuance_settings import IssuanceContext

log = structlog.get_logger("sluice.issuance")

ACTOR = "kyc-hold-worker"
REFUSED_PREFIX = "refused:"
UPDATE_ID_MAX = 200  # issuance_transfer_decisions.update_id


def refused(decision: TransferDecision) -> bool:
    """Whether the ledger refused the decision's command for good (it is closed, never resent)."""
    return decision.update_id is not None and decision.update_id.startswith(REFUSED_PREFIX)


def command_id_of(instruction_cid: str) -> str:
    """The ledger command id of the decision on ``instruction_cid``."""
    return f"kyc-hold:{instruction_cid}"


@dataclass(frozen=True, slots=True)
class HoldTick:
    """What one call did: decisions made and sent (``approved``, ``rejected``), earlier decisions
    whose command was sent again (``resent``), commands that did not go through this time
    (``failed``: refused, or the outcome is unknown and the next call resends)."""

    approved: int = 0
    rejected: int = 0
    resent: int = 0
    failed: int = 0


def decide_held_transfers(ctx: IssuanceContext, *, limit: int | None = None) -> HoldTick:
    """Decide and send at most ``limit`` held transfers (default
    ``settings.held_transfers_per_round``), then resend earlier decisions still without an update
    id (see the module docstring)."""
    bound = ctx.settings.held_transfers_per_round if limit is None else limit
    counts = {"approved": 0, "rejected": 0, "resent": 0, "failed": 0}
    held = ctx.issuer.held_transfers(bound) if bound > 0 else []
    seen: set[str] = set()
    for transfer in held:
        seen.add(transfer.instruction_cid)
        decision, new = _decide(ctx, transfer)
        if refused(decision):
            continue  # closed: the ledger refused its command for good
        if _send(ctx, decision):
            key = ("approved" if decision.approve else "rejected") if new else "resent"
            counts[key] += 1
        else:
            counts["failed"] += 1
    # Decisions whose command may have committed although its answer was lost.
    with ctx.uow() as uow:
        unsent = [
            d
            for d in uow.issuance.decisions(limit=max(bound, 1) * 10)
            if d.update_id is None and d.instruction_cid not in seen
        ]
    for decision in unsent[:bound]:
        if _send(ctx, decision):
            counts["resent"] += 1
        else:
            counts["failed"] += 1
    return HoldTick(**counts)


# --- deciding ------------------------------------------------------------------------------------


def _decide(ctx: IssuanceContext, transfer: HeldTransfer) -> tuple[TransferDecision, bool]:
    """The decision on ``transfer``: the one recorded before, or a new one written with its
    audit and the sender's usage in one transaction. True when new."""
    cid = transfer.instruction_cid
    with ctx.uow() as uow:
        existing = uow.issuance.get_decision(cid)
        if existing is not None:
            return existing, False
        at = ctx.clock()
        approve, reason, customers = _kyc(ctx, uow, transfer, at)
        decision = TransferDecision(
            instruction_cid=cid,
            sender=transfer.sender,
            receiver=transfer.receiver,
            amount_sats=amount_to_sats(transfer.amount),
            approve=approve,
            reason=reason,
            decided_at=at,
        )
        if not uow.issuance.insert_decision(decision):
            uow.rollback()
            first = uow.issuance.get_decision(cid)
            assert first is not None, "a refused insert means the decision exists"
            return first, False
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=command_id_of(cid),
                    operation="istsi_transfer_approved" if approve else "istsi_transfer_rejected",
                    actor=ACTOR,
                    recorded_at=at,
                    customer_id=customers[0] or customers[1],
                    parameters={
                        "instruction_cid": cid,
                        "instrument": ctx.issuer.instrument.key(),
                        "sender": transfer.sender,
                        "receiver": transfer.receiver,
                        "sender_customer": customers[0],
                        "receiver_customer": customers[1],
                        "amount": format_amount(transfer.amount),
                        "amount_sats": decision.amount_sats,
                        "transfer_reason": transfer.reason,
                    },
                    state_changes=[
                        {"decision": "approve" if approve else "reject", "reason": reason}
                    ],
                    error=None if approve else reason,
                )
            ]
        )
        uow.commit()
        log.info(
            "istsi_transfer_decided",
            instruction_cid=cid,
            approve=approve,
            reason=reason,
        )
        return decision, True


def _kyc(
    ctx: IssuanceContext, uow: UnitOfWork, transfer: HeldTransfer, at: datetime
) -> tuple[bool, str, tuple[str | None, str | None]]:
    """(approve, reason, (sender's customer, receiver's customer)); a customer is None for the
    treasury or an unknown party. Writes the sender's KYC usage and checks into ``uow``."""
    sender, receiver = transfer.sender, transfer.receiver
    known = uow.issuance.customer_of_party([sender, receiver])
    sender_customer, receiver_customer = known.get(sender), known.get(receiver)
    customers = (sender_customer, receiver_customer)
    for role, party, customer in (
        ("sender", sender, sender_customer),
        ("receiver", receiver, receiver_customer),
    ):
        if customer is None and party != ctx.treasury:
            return False, f"{role} {party} is not a known customer's party", customers
    ids = [c for c in customers if c is not None]
    session = ctx.registry.session(
        uow, ids, [sender, receiver], since=at, operations=("transfer",), lock=True
    )
    if receiver_customer is not None:
        profile = session.profiles.get(receiver_customer)
        if profile is None:
            return False, f"receiver {receiver_customer} has no KYC profile", customers
        if profile.status != "active":
            why = f": {profile.status_reason}" if profile.status_reason else ""
            return False, f"receiver {receiver_customer} is {profile.status}{why}", customers
        listed = session.listed(receiver)
        if listed is not None:
            return False, f"receiver party {receiver} is {listed}", customers
    if sender_customer is not None:
        listed = session.listed(sender)
        if listed is not None:
            return False, f"sender party {sender} is {listed}", customers
        value = ctx.registry.settings.value(ctx.issuer.instrument, transfer.amount)
        decision = session.decide(
            ComplianceRequest(sender_customer, "transfer", value, receiver),
            operation_id=command_id_of(transfer.instruction_cid),
            at=at,
            actor=ACTOR,
            record=True,
            parameters={"instruction_cid": transfer.instruction_cid},
        )
        session.flush()
        if not decision.allowed:
            return False, f"sender {sender_customer}: {decision.summary()}", customers
    return True, "approved", customers


# --- sending -------------------------------------------------------------------------------------


def _send(ctx: IssuanceContext, decision: TransferDecision) -> bool:
    """Send the decision's command and record its update id; False when it did not go through
    (the row stays without an update id)."""
    cid = decision.instruction_cid
    try:
        result = ctx.issuer.decide_transfer(
            cid, approve=decision.approve, reason=decision.reason, command_id=command_id_of(cid)
        )
    except IssuerOutcomeUnknownError as exc:
        log.warning("istsi_transfer_decision_unknown", instruction_cid=cid, error=str(exc))
        return False
    except IssuerRejectedError as exc:
        log.warning("istsi_transfer_decision_refused", instruction_cid=cid, error=str(exc))
        _close_refused(ctx, decision, str(exc))
        return False
    with ctx.uow() as uow:
        uow.issuance.set_decision_update(cid, result.update_id)
        uow.commit()
    return True


def _close_refused(ctx: IssuanceContext, decision: TransferDecision, error: str) -> None:
    """Close a decision the ledger refused for good: the refused marker as its update id, an
    audit record and a warning alert, in one transaction (a marker set already is kept)."""
    cid = decision.instruction_cid
    marker = (REFUSED_PREFIX + (error or "refused"))[:UPDATE_ID_MAX]
    at = ctx.clock()
    with ctx.uow() as uow:
        current = uow.issuance.get_decision(cid)
        if current is None or current.update_id is not None:
            return  # recorded meanwhile (committed by another worker, or closed already)
        uow.issuance.set_decision_update(cid, marker)
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=command_id_of(cid),
                    operation="istsi_transfer_refused",
                    actor=ACTOR,
                    recorded_at=at,
                    parameters={
                        "instruction_cid": cid,
                        "decision": "approve" if decision.approve else "reject",
                        "sender": decision.sender,
                        "receiver": decision.receiver,
                        "amount_sats": decision.amount_sats,
                    },
                    state_changes=[{"update_id": marker}],
                    error=error,
                )
            ]
        )
        uow.issuance.add_alerts(
            [
                Alert(
                    id=f"istsi-transfer-refused:{cid}",
                    severity="warning",
                    kind="istsi_transfer_refused",
                    message=(
                        f"the ledger refused the decision on held iSTSi transfer {cid} "
                        f"({'approve' if decision.approve else 'reject'}): {error}"
                    ),
                    details={"instruction_cid": cid, "error": error},
                )
            ],
            at,
        )
        uow.commit()


__all__ = [
    "ACTOR",
    "REFUSED_PREFIX",
    "HoldTick",
    "command_id_of",
    "decide_held_transfers",
    "refused",
]
