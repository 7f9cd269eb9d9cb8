"""The events of iSTSi issuance (aggregate ``issuance``, id the issuance operation's id; amounts
in sats as integers, iSTSi amounts as decimal strings), written in the transaction of the change
they describe, with the operation's correlation id:

* ``istsi_minted`` when a mint's record becomes ``committed`` (the ledger's answer to the
  router, or ingestion booking it, whichever comes first);
* ``istsi_burned`` when a redemption's burn becomes ``committed`` (likewise);
* ``redemption_requested`` when a customer's redemption is opened;
* ``redemption_completed`` when a redemption ends ``completed`` (its payout confirmed);
* ``redemption_failed`` when a redemption ends ``compensated`` (refunded or re-minted);
* ``issuance_operation_stuck`` when an operation becomes ``stuck`` (retries exhausted, a
  step's failure, a compensation that failed);
* ``issuance_operation_compensated`` when an operation other than a redemption (a Bitcoin
  deposit) ends ``compensated`` (a redemption's is ``redemption_failed``);
* ``issuance_operation_resolved`` when an operator closes an operation as ``resolved``.

And of a Bitcoin deposit's compliance hold (aggregate ``btc_deposit``, id the outpoint
``txid:vout``, so a consumer following the deposit gets them after its ``btc_deposit_seen`` and
``btc_deposit_confirmed`` on the same subject):

* ``btc_deposit_held`` when its ``bitcoin_deposit`` operation becomes ``held`` (the ``kyc`` step:
  a listed sender, unreadable inputs, or the KYC registry's refusal);
* ``btc_deposit_released`` when an officer releases it (``held`` → ``pending``);
* ``btc_deposit_returned`` when an officer returns it (→ ``returned``; the payout's own
  ``btc_payout_requested`` follows).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sluice.domain.amounts import format_amount
from sluice.domain.events import Event, new_event
from sluice.ports.issuance import BurnRecord, IssuanceOperation, MintRecord, sats_to_amount

REDEMPTION = "token_withdrawal"
BITCOIN_DEPOSIT = "bitcoin_deposit"


def minted_event(
    mint: MintRecord, update_id: str | None, at: datetime, correlation_id: str | None = None
) -> Event:
    return new_event(
        "istsi_minted",
        mint.operation_id,
        {
            "operation_id": mint.operation_id,
            "mint_id": mint.id,
            "customer_id": mint.customer_id,
            "owner": mint.owner,
            "amount_sats": mint.amount_sats,
            "amount": format_amount(sats_to_amount(mint.amount_sats)),
            "update_id": update_id,
            "remint": mint.reason.endswith(":remint"),
        },
        at=at,
        correlation_id=correlation_id,
    )


def burned_event(
    burn: BurnRecord, update_id: str | None, at: datetime, correlation_id: str | None = None
) -> Event:
    return new_event(
        "istsi_burned",
        burn.operation_id,
        {
            "operation_id": burn.operation_id,
            "burn_id": burn.id,
            "customer_id": burn.customer_id,
            "owner": burn.owner,
            "amount_sats": burn.amount_sats,
            "amount": format_amount(sats_to_amount(burn.amount_sats)),
            "update_id": update_id,
        },
        at=at,
        correlation_id=correlation_id,
    )


def redemption_requested_event(op: IssuanceOperation, at: datetime) -> Event:
    return new_event(
        "redemption_requested",
        op.id,
        {
            "operation_id": op.id,
            "customer_id": op.customer_id,
            "amount_sats": op.amount_sats,
            "amount": format_amount(sats_to_amount(op.amount_sats)),
            "address": str(op.params.get("address", "")),
            "status": op.status,
        },
        at=at,
        correlation_id=op.correlation_id,
    )


def _operation_payload(op: IssuanceOperation, **extra: Any) -> dict[str, Any]:
    return {
        "operation_id": op.id,
        "operation_type": op.type,
        "customer_id": op.customer_id,
        "amount_sats": op.amount_sats,
        "status": op.status,
        "step": op.step,
        **extra,
    }


def _operation_event(type: str, op: IssuanceOperation, at: datetime, **extra: Any) -> Event:
    """An event of the operation ``op`` (its id the aggregate), with its payload and ``extra``."""
    return new_event(
        type, op.id, _operation_payload(op, **extra), at=at, correlation_id=op.correlation_id
    )


def _result(op: IssuanceOperation, *names: str) -> dict[str, Any]:
    result: Mapping[str, Any] = op.result
    return {name: result.get(name) for name in names}


def _compensation(op: IssuanceOperation) -> str | None:
    if op.result.get("remint_id"):
        return "remint"
    if op.result.get("refunded"):
        return "refund"
    return None


def _deposit_event(type: str, op: IssuanceOperation, at: datetime, **extra: Any) -> Event:
    txid, vout = str(op.params.get("txid", "")), op.params.get("vout")
    return new_event(
        type,
        f"{txid}:{vout}",
        {
            "operation_id": op.id,
            "txid": txid,
            "vout": vout,
            "customer_id": op.customer_id,
            "amount_sats": op.amount_sats,
            **extra,
        },
        at=at,
        correlation_id=op.correlation_id,
    )


def _held_event(after: IssuanceOperation, at: datetime) -> Event:
    kyc = after.result.get("kyc")
    facts: Mapping[str, Any] = kyc if isinstance(kyc, Mapping) else {}
    return _deposit_event(
        "btc_deposit_held",
        after,
        at,
        refused=facts.get("refused"),
        reason=after.last_error,
        listed_senders=list(facts.get("listed_senders") or []),
        unreadable_inputs=list(facts.get("unreadable_inputs") or []),
    )


def _deposit_events(
    before: IssuanceOperation,
    after: IssuanceOperation,
    at: datetime,
    actor: str | None,
    reason: str | None,
) -> list[Event]:
    """A Bitcoin deposit's hold, its officer's release and its return."""
    if after.status == "held":
        return [_held_event(after, at)]
    if before.status == "held" and after.status == "pending":
        return [
            _deposit_event(
                "btc_deposit_released", after, at, step=after.step, actor=actor, reason=reason
            )
        ]
    if after.status == "returned":
        return [
            _deposit_event(
                "btc_deposit_returned",
                after,
                at,
                returned_from=before.status,
                payout_id=after.result.get("return_payout"),
                address=after.result.get("return_address"),
                actor=actor,
                reason=reason,
            )
        ]
    return []


def operation_events(
    before: IssuanceOperation,
    after: IssuanceOperation,
    at: datetime,
    *,
    actor: str | None = None,
    reason: str | None = None,
) -> list[Event]:
    """The events of an operation's move from ``before`` to ``after`` (none for most moves);
    ``actor`` and ``reason``: the operator's or officer's, for a move they made."""
    if after.status == before.status:
        return []
    events: list[Event] = []
    if after.type == BITCOIN_DEPOSIT:
        events.extend(_deposit_events(before, after, at, actor, reason))
    if after.type == REDEMPTION and after.status == "completed":
        events.append(
            _operation_event(
                "redemption_completed",
                after,
                at,
                **_result(
                    after, "payout_id", "txid", "vout", "fee_sats", "received_sats", "confirmations"
                ),
            )
        )
    elif after.type == REDEMPTION and after.status == "compensated":
        events.append(
            _operation_event(
                "redemption_failed",
                after,
                at,
                compensation=_compensation(after),
                **_result(after, "payout_id", "payout_status", "payout_error"),
            )
        )
    elif after.status == "compensated":
        events.append(
            _operation_event(
                "issuance_operation_compensated",
                after,
                at,
                was=before.status,
                compensation=after.result.get("compensated"),
                actor=actor,
                reason=reason,
            )
        )
    elif after.status == "resolved":
        events.append(
            _operation_event(
                "issuance_operation_resolved",
                after,
                at,
                was=before.status,
                actor=actor,
                reason=reason,
            )
        )
    elif after.status == "stuck":
        events.append(
            _operation_event(
                "issuance_operation_stuck",
                after,
                at,
                was=before.status,
                attempts=after.attempts,
                error=after.last_error,
            )
        )
    return events
