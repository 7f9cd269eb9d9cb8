"""The events of Bitcoin payouts (aggregate ``btc_payout``, id the payout id; amounts and fees
in sats as integers), written by the payout services in the transaction of the change they
describe:

* ``btc_payout_requested`` when a payout is queued;
* ``btc_payout_broadcast`` when the batch paying it first goes out (``fee_bump`` false) and when
  a fee bump's replacement is recorded, just before it is sent (``fee_bump`` true,
  ``replaces_txid``): the payout's transaction is then the new one;
* ``btc_payout_confirmed`` when its batch reaches ``confirmations_min`` (the payout is
  ``completed``);
* ``btc_payout_failed`` when it will not be paid without an operator: its batch's inputs were
  spent by a foreign transaction (``stuck``), an input was reorged away (``orphaned``), or an
  operator cancelled it before it was batched (``cancelled``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from sluice.domain.events import Event, new_event
from sluice.ports.bitcoin_payouts import PayoutRecord


def requested_event(payout: PayoutRecord, at: datetime) -> Event:
    return new_event(
        "btc_payout_requested",
        payout.id,
        {
            "payout_id": payout.id,
            "kind": payout.kind,
            "address": payout.address,
            "amount_sats": payout.amount_sats,
            "requested_by": payout.requested_by,
            "status": payout.status,
        },
        at=at,
    )


def broadcast_events(
    batch_id: str,
    version: Mapping[str, Any],
    at: datetime,
    *,
    bumps: int = 0,
    replaces_txid: str | None = None,
    error: str | None = None,
) -> list[Event]:
    """One ``btc_payout_broadcast`` per payout of ``version`` (a batch's signed version: its
    ``txid``, ``fee_rate`` and ``payouts``: payout id → ``[vout, fee share]``)."""
    placed: Mapping[str, Sequence[int]] = version["payouts"]
    return [
        new_event(
            "btc_payout_broadcast",
            payout_id,
            {
                "payout_id": payout_id,
                "batch_id": batch_id,
                "txid": str(version["txid"]),
                "vout": int(vout),
                "fee_sats": int(fee),
                "fee_rate_sat_vb": str(version["fee_rate"]),
                "fee_bump": replaces_txid is not None,
                "bumps": bumps,
                "replaces_txid": replaces_txid,
                "broadcast_error": error,
            },
            at=at,
        )
        for payout_id, (vout, fee) in sorted(placed.items())
    ]


def confirmed_events(
    payouts: Iterable[PayoutRecord],
    *,
    batch_id: str,
    txid: str,
    block_height: int,
    block_hash: str,
    confirmations: int,
    at: datetime,
) -> list[Event]:
    """``btc_payout_confirmed`` for each payout its batch just completed (``received_sats``:
    what the destination got, the amount less the payout's fee share)."""
    return [
        new_event(
            "btc_payout_confirmed",
            p.id,
            {
                "payout_id": p.id,
                "kind": p.kind,
                "batch_id": batch_id,
                "txid": txid,
                "vout": p.vout,
                "amount_sats": p.amount_sats,
                "fee_sats": p.fee_sats,
                "received_sats": p.amount_sats - (p.fee_sats or 0),
                "block_height": block_height,
                "block_hash": block_hash,
                "confirmations": confirmations,
            },
            at=at,
        )
        for p in payouts
    ]


def failed_events(
    payouts: Iterable[PayoutRecord],
    *,
    status: str,
    reason: str,
    at: datetime,
    batch_id: str | None = None,
) -> list[Event]:
    """``btc_payout_failed`` for each payout (``status``: ``stuck``, ``orphaned`` or
    ``cancelled``; ``reason``: why, as the operator's records say)."""
    return [
        new_event(
            "btc_payout_failed",
            p.id,
            {
                "payout_id": p.id,
                "kind": p.kind,
                "amount_sats": p.amount_sats,
                "batch_id": batch_id,
                "status": status,
                "reason": reason,
            },
            at=at,
        )
        for p in payouts
    ]
