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
  step's failure, a compensation that failed).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sluice.domain.amounts import format_amount
from sluice.domain.events import Event, new_event
from sluice.ports.issuance import BurnRecord, IssuanceOperation, MintRecord, sats_to_amount

REDEMPTION = "token_withdrawal"


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


def _result(op: IssuanceOperation, *names: str) -> dict[str, Any]:
    result: Mapping[str, Any] = op.result
    return {name: result.get(name) for name in names}


def _compensation(op: IssuanceOperation) -> str | None:
    if op.result.get("remint_id"):
        return "remint"
    if op.result.get("refunded"):
        return "refund"
    return None


def operation_events(
    before: IssuanceOperation, after: IssuanceOperation, at: datetime
) -> list[Event]:
    """The events of an operation's move from ``before`` to ``after`` (none for most moves)."""
    if after.status == before.status:
        return []
    events: list[Event] = []
    if after.type == REDEMPTION and after.status == "completed":
        events.append(
            new_event(
                "redemption_completed",
                after.id,
                _operation_payload(
                    after,
                    **_result(
                        after,
                        "payout_id",
                        "txid",
                        "vout",
                        "fee_sats",
                        "received_sats",
                        "confirmations",
                    ),
                ),
                at=at,
                correlation_id=after.correlation_id,
            )
        )
    elif after.type == REDEMPTION and after.status == "compensated":
        events.append(
            new_event(
                "redemption_failed",
                after.id,
                _operation_payload(
                    after,
                    compensation=_compensation(after),
                    **_result(after, "payout_id", "payout_status", "payout_error"),
                ),
                at=at,
                correlation_id=after.correlation_id,
            )
        )
    elif after.status == "stuck":
        events.append(
            new_event(
                "issuance_operation_stuck",
                after.id,
                _operation_payload(
                    after, was=before.status, attempts=after.attempts, error=after.last_error
                ),
                at=at,
                correlation_id=after.correlation_id,
            )
        )
    return events
