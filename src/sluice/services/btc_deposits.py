"""Reads of the custody for the CLI and the API: deposits to customer addresses and the custody's
unspent outputs, each with its confirmations at the deposit watcher's cursor; and the events the
watcher writes of deposits (``btc_deposit_seen``, ``btc_deposit_confirmed``,
``btc_deposit_reorged``; aggregate id the outpoint ``txid:vout``, amounts in sats as integers).

:mod:`sluice.services.btc_watcher` keeps these names importable from where they were first
written.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sluice.domain.errors import NotFoundError as SluiceNotFoundError
from sluice.domain.events import Event, new_event
from sluice.ports import UnitOfWorkFactory
from sluice.ports.bitcoin_watch import (
    ConfirmedOutput,
    CustodyBalance,
    CustodyOutput,
    DepositView,
    FoundOutput,
    UtxoView,
    WatchedBlock,
)


def seen_events(found: Iterable[FoundOutput], block: WatchedBlock, at: datetime) -> list[Event]:
    """``btc_deposit_seen`` for each deposit (an output to a customer's address) of ``block``;
    change outputs of our own payouts are not deposits. A dust deposit is seen too (``dust``
    true): it is recorded and never credited."""
    return [
        new_event(
            "btc_deposit_seen",
            o.outpoint,
            {
                "txid": o.txid,
                "vout": o.vout,
                "customer_id": o.customer_id,
                "address": o.address,
                "amount_sats": o.amount_sats,
                "block_height": block.height,
                "block_hash": block.hash,
                "confirmations": 1,
                "dust": o.status == "dust",
            },
            at=at,
        )
        for o in found
        if o.kind == "deposit"
    ]


def confirmed_events(
    confirmed: Iterable[ConfirmedOutput], tip: WatchedBlock, at: datetime
) -> list[Event]:
    """``btc_deposit_confirmed`` for each deposit that just reached ``confirmations_min`` at
    ``tip`` (``recredit`` true for one credited before a reorg took it away and brought it back:
    it is not credited again)."""
    return [
        new_event(
            "btc_deposit_confirmed",
            o.outpoint,
            {
                "txid": o.txid,
                "vout": o.vout,
                "customer_id": o.customer_id,
                "amount_sats": o.amount_sats,
                "block_height": o.block_height,
                "block_hash": o.block_hash,
                "confirmations": _confirmations(tip, o.block_height),
                "recredit": o.status == "credited",
            },
            at=at,
        )
        for o in confirmed
        if o.kind == "deposit"
    ]


def reorged_events(reorged: Iterable[CustodyOutput], fork_height: int, at: datetime) -> list[Event]:
    """``btc_deposit_reorged`` for each deposit whose block a reorg rolled back (``was``: its
    status before; ``credited`` means the customer was credited for it already)."""
    return [
        new_event(
            "btc_deposit_reorged",
            o.outpoint,
            {
                "txid": o.txid,
                "vout": o.vout,
                "customer_id": o.customer_id,
                "amount_sats": o.amount_sats,
                "block_height": o.block_height,
                "block_hash": o.block_hash,
                "fork_height": fork_height,
                "was": o.status,
            },
            at=at,
        )
        for o in reorged
        if o.kind == "deposit"
    ]


def _confirmations(cursor: WatchedBlock | None, block_height: int | None) -> int:
    if cursor is None or block_height is None:
        return 0
    return max(0, cursor.height - block_height + 1)


def list_deposits(
    uow_factory: UnitOfWorkFactory, *, customer_id: str | None = None, limit: int = 1000
) -> list[DepositView]:
    """Deposits to customer addresses, newest first, with confirmations at the watcher's
    cursor."""
    with uow_factory() as uow:
        repo = uow.btc_watch
        if customer_id is not None and not repo.customer_exists(customer_id):
            raise SluiceNotFoundError(f"unknown customer {customer_id!r}")
        cursor = repo.cursor()
        outputs = repo.outputs(customer_id=customer_id, kinds=("deposit",), limit=limit)
    return [
        DepositView(
            txid=o.txid,
            vout=o.vout,
            customer=o.customer_id,
            address=o.address,
            amount_sats=o.amount_sats,
            confirmations=_confirmations(cursor, o.block_height),
            status=o.status,
            block_height=o.block_height,
            block_hash=o.block_hash,
        )
        for o in outputs
    ]


def custody_balance(uow_factory: UnitOfWorkFactory) -> CustodyBalance:
    """Custody's unspent outputs and totals at the watcher's cursor (one transaction)."""
    with uow_factory() as uow:
        repo = uow.btc_watch
        cursor = repo.cursor()
        outputs = repo.outputs(unspent=True, limit=100_000)
    utxos = [
        UtxoView(
            txid=o.txid,
            vout=o.vout,
            kind=o.kind,
            customer=o.customer_id,
            address=o.address,
            amount_sats=o.amount_sats,
            confirmations=_confirmations(cursor, o.block_height),
            status=o.status,
            block_height=o.block_height,
            reserved_by=o.reserved_by,
        )
        for o in outputs
    ]
    return CustodyBalance(
        height=cursor.height if cursor else None,
        block_hash=cursor.hash if cursor else None,
        utxos=utxos,
        total_sats=sum(u.amount_sats for u in utxos),
        confirmed_sats=sum(u.amount_sats for u in utxos if u.status in ("confirmed", "credited")),
        reserved_sats=sum(u.amount_sats for u in utxos if u.reserved_by is not None),
    )
