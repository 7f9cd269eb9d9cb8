"""Payouts, their batches and the custody UTXO set they spend, over SQLAlchemy Core."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    and_,
    bindparam,
    func,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.sql import Executable

from sluice.domain.deposits import Alert
from sluice.ports.bitcoin_payouts import (
    PAYOUT_WAITING_STATUSES,
    SPENDABLE_OUTPUT_STATUSES,
    BatchRecord,
    CustodyOutput,
    OutputSpend,
    PayoutAssignment,
    PayoutRecord,
)
from sluice.store.bitcoin_rows import insert_address, insert_alert, next_derivation_index
from sluice.store.bitcoin_tables import btc_addresses, btc_batches, btc_blocks, btc_outputs
from sluice.store.bitcoin_tables import btc_payouts as payouts_table
from sluice.store.rows import insert_for, is_postgresql, optional_time, time_of, to_json, ts

CHANGE_BRANCH = 1
# Outputs a batch may spend are confirmed deposits or change, or deposits already credited.
SPENDABLE_STATUSES = SPENDABLE_OUTPUT_STATUSES


def _payout_from_row(row: Row[Any]) -> PayoutRecord:
    return PayoutRecord(
        id=row.id,
        kind=row.kind,
        address=row.address,
        script_hex=row.script_hex,
        amount_sats=int(row.amount_sats),
        status=row.status,
        requested_by=row.requested_by,
        requested_at=time_of(row.requested_at),
        fee_sats=None if row.fee_sats is None else int(row.fee_sats),
        batch_id=row.batch_id,
        vout=row.vout,
        completed_at=optional_time(row.completed_at),
        last_error=row.last_error,
    )


def _batch_from_row(row: Row[Any]) -> BatchRecord:
    return BatchRecord(
        id=row.id,
        outpoints=tuple(json.loads(row.outpoints)),
        status=row.status,
        txid=row.txid,
        raw_hex=row.raw_hex,
        versions=tuple(json.loads(row.versions)),
        fee_sats=int(row.fee_sats),
        fee_rate_sat_vb=row.fee_rate_sat_vb,
        vsize=int(row.vsize),
        change_sats=int(row.change_sats),
        created_at=time_of(row.created_at),
        updated_at=time_of(row.updated_at),
        change_vout=row.change_vout,
        change_address=row.change_address,
        broadcast_height=row.broadcast_height,
        bumps=int(row.bumps),
        mined_height=row.mined_height,
        mined_block_hash=row.mined_block_hash,
        last_error=row.last_error,
    )


def _batch_row(batch: BatchRecord) -> dict[str, Any]:
    return {
        "id": batch.id,
        "outpoints": to_json(list(batch.outpoints)),
        "status": batch.status,
        "txid": batch.txid,
        "raw_hex": batch.raw_hex,
        "versions": to_json([dict(version) for version in batch.versions]),
        "fee_sats": batch.fee_sats,
        "fee_rate_sat_vb": batch.fee_rate_sat_vb,
        "vsize": batch.vsize,
        "change_vout": batch.change_vout,
        "change_address": batch.change_address,
        "change_sats": batch.change_sats,
        "broadcast_height": batch.broadcast_height,
        "bumps": batch.bumps,
        "mined_height": batch.mined_height,
        "mined_block_hash": batch.mined_block_hash,
        "created_at": ts(batch.created_at),
        "updated_at": ts(batch.updated_at),
        "last_error": batch.last_error,
    }


def _split(outpoint: str) -> tuple[str, int]:
    txid, _, vout = outpoint.rpartition(":")
    return txid, int(vout)


def _outpoint_condition(outpoints: Collection[str]) -> Any:
    """Rows whose (txid, vout) is one of ``outpoints`` (an OR of pairs: both engines plan it on
    the primary key)."""
    return or_(
        *(
            and_(btc_outputs.c.txid == txid, btc_outputs.c.vout == vout)
            for txid, vout in map(_split, outpoints)
        )
    )


class SqlBitcoinPayoutRepository:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    # -- payouts -----------------------------------------------------------------------------

    def get_payout(self, payout_id: str, *, lock: bool = False) -> PayoutRecord | None:
        query = select(payouts_table).where(payouts_table.c.id == payout_id)
        if lock:
            query = query.with_for_update()
        row = self._connection.execute(query).first()
        return _payout_from_row(row) if row else None

    def insert_payout(self, payout: PayoutRecord) -> bool:
        statement: Executable = (
            insert_for(self._connection, payouts_table)
            .values(
                id=payout.id,
                kind=payout.kind,
                address=payout.address,
                script_hex=payout.script_hex,
                amount_sats=payout.amount_sats,
                fee_sats=payout.fee_sats,
                status=payout.status,
                batch_id=payout.batch_id,
                vout=payout.vout,
                requested_by=payout.requested_by,
                requested_at=ts(payout.requested_at),
                completed_at=ts(payout.completed_at),
                last_error=payout.last_error,
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(literal_column("1"))
        )
        return self._connection.execute(statement).first() is not None

    def payouts(
        self,
        statuses: Collection[str] = (),
        *,
        limit: int = 1000,
        in_batch: bool | None = None,
    ) -> list[PayoutRecord]:
        query = select(payouts_table)
        if statuses:
            query = query.where(payouts_table.c.status.in_(list(statuses)))
        if in_batch is not None:
            batch = payouts_table.c.batch_id
            query = query.where(batch.is_not(None) if in_batch else batch.is_(None))
        # Canonical timestamps: text order is time order.
        query = query.order_by(payouts_table.c.requested_at, payouts_table.c.id).limit(limit)
        return [_payout_from_row(row) for row in self._connection.execute(query)]

    def payouts_of_batch(self, batch_id: str) -> list[PayoutRecord]:
        query = (
            select(payouts_table)
            .where(payouts_table.c.batch_id == batch_id)
            .order_by(payouts_table.c.vout, payouts_table.c.id)
        )
        return [_payout_from_row(row) for row in self._connection.execute(query)]

    def set_payouts_waiting(
        self, payout_ids: Collection[str], status: str | None, error: str | None
    ) -> int:
        if not payout_ids:
            return 0
        values: dict[str, Any] = {"last_error": error}
        if status is not None:
            values["status"] = status
        statement = (
            update(payouts_table)
            .where(
                and_(
                    payouts_table.c.id.in_(list(payout_ids)),
                    payouts_table.c.status.in_(PAYOUT_WAITING_STATUSES),
                )
            )
            .values(**values)
        )
        return int(self._connection.execute(statement).rowcount)

    def cancel_payout(self, payout_id: str, note: str) -> bool:
        statement = (
            update(payouts_table)
            .where(
                and_(
                    payouts_table.c.id == payout_id,
                    payouts_table.c.status.in_(PAYOUT_WAITING_STATUSES),
                    payouts_table.c.batch_id.is_(None),
                )
            )
            .values(status="cancelled", last_error=note)
        )
        return bool(self._connection.execute(statement).rowcount)

    def set_payouts_error(self, payout_ids: Collection[str], error: str | None) -> int:
        if not payout_ids:
            return 0
        statement = (
            update(payouts_table)
            .where(payouts_table.c.id.in_(list(payout_ids)))
            .values(last_error=error)
        )
        return int(self._connection.execute(statement).rowcount)

    def assign_payouts(
        self,
        batch_id: str,
        assignments: Sequence[PayoutAssignment],
        *,
        expected_statuses: Collection[str],
        predecessor: str | None = None,
    ) -> int:
        if not assignments:
            return 0
        table = payouts_table
        waiting = set(expected_statuses) <= set(PAYOUT_WAITING_STATUSES)
        # Statuses as plain comparisons: an expanding IN cannot go through executemany.
        condition = and_(
            table.c.id == bindparam("p_id"),
            or_(*(table.c.status == status for status in expected_statuses)),
        )
        if not waiting:
            condition = and_(condition, table.c.batch_id == batch_id)
        elif predecessor is None:
            # A released batch's payout waits for that batch's successor only: taking it into
            # any other batch (say from an old read, made before the release) changes nothing.
            condition = and_(condition, table.c.batch_id.is_(None))
        else:
            condition = and_(condition, table.c.batch_id == predecessor)
        statement = (
            update(table)
            .where(condition)
            .values(
                batch_id=batch_id,
                vout=bindparam("p_vout"),
                fee_sats=bindparam("p_fee"),
                status=bindparam("p_status"),
                last_error=bindparam("p_error"),
            )
        )
        rows = [
            {
                "p_id": a.payout_id,
                "p_vout": a.vout,
                "p_fee": a.fee_sats,
                "p_status": a.status,
                "p_error": a.last_error,
            }
            for a in assignments
        ]
        return int(self._connection.execute(statement, rows).rowcount)

    def requeue_payouts(self, batch_id: str, note: str) -> list[str]:
        table = payouts_table
        pending = and_(table.c.batch_id == batch_id, table.c.status.in_(("batched", "broadcast")))
        ids = list(
            self._connection.execute(select(table.c.id).where(pending).order_by(table.c.id))
            .scalars()
            .all()
        )
        if ids:
            self._connection.execute(
                update(table)
                .where(and_(pending, table.c.id.in_(ids)))
                # The batch stays: they wait for its successor (see the port).
                .values(status="queued", vout=None, fee_sats=None, last_error=note)
            )
        return ids

    def reopen_payouts(self, batch_id: str, note: str) -> list[str]:
        table = payouts_table
        done = and_(table.c.batch_id == batch_id, table.c.status == "completed")
        ids = list(
            self._connection.execute(select(table.c.id).where(done).order_by(table.c.id))
            .scalars()
            .all()
        )
        if ids:
            self._connection.execute(
                update(table)
                .where(and_(done, table.c.id.in_(ids)))
                .values(status="broadcast", completed_at=None, last_error=note)
            )
        return ids

    def complete_payouts(self, batch_id: str, at: datetime) -> list[str]:
        table = payouts_table
        pending = and_(table.c.batch_id == batch_id, table.c.status != "completed")
        ids = list(
            self._connection.execute(select(table.c.id).where(pending).order_by(table.c.id))
            .scalars()
            .all()
        )
        if ids:
            self._connection.execute(
                update(table)
                .where(and_(pending, table.c.id.in_(ids)))
                .values(status="completed", completed_at=ts(at), last_error=None)
            )
        return ids

    # -- batches -----------------------------------------------------------------------------

    def insert_batch(self, batch: BatchRecord) -> bool:
        statement: Executable = (
            insert_for(self._connection, btc_batches)
            .values(**_batch_row(batch))
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(literal_column("1"))
        )
        return self._connection.execute(statement).first() is not None

    def get_batch(self, batch_id: str, *, lock: bool = False) -> BatchRecord | None:
        query = select(btc_batches).where(btc_batches.c.id == batch_id)
        if lock and is_postgresql(self._connection):
            # SQLite's transactions begin IMMEDIATE and are serialised already.
            query = query.with_for_update()
        row = self._connection.execute(query).first()
        return _batch_from_row(row) if row else None

    def batches(self, statuses: Collection[str] = (), *, limit: int = 1000) -> list[BatchRecord]:
        query = select(btc_batches)
        if statuses:
            query = query.where(btc_batches.c.status.in_(list(statuses)))
        query = query.order_by(btc_batches.c.created_at, btc_batches.c.id).limit(limit)
        return [_batch_from_row(row) for row in self._connection.execute(query)]

    def confirmed_batches_unspent(self, since_height: int, *, limit: int = 100) -> list[str]:
        query = (
            select(btc_batches.c.id)
            .join(btc_outputs, btc_outputs.c.reserved_by == btc_batches.c.id)
            .where(
                and_(
                    btc_batches.c.status == "confirmed",
                    btc_batches.c.mined_height >= since_height,
                    btc_outputs.c.spent_txid.is_(None),
                )
            )
            .group_by(btc_batches.c.id)
            .order_by(btc_batches.c.id)
            .limit(limit)
        )
        return list(self._connection.execute(query).scalars().all())

    def update_batch(
        self,
        batch: BatchRecord,
        *,
        expected_txid: str | None = None,
        expected_status: str | None = None,
        expected_bumps: int | None = None,
    ) -> bool:
        values = _batch_row(batch)
        for fixed in ("id", "outpoints", "created_at"):
            del values[fixed]
        condition = btc_batches.c.id == batch.id
        if expected_txid is not None:
            condition = and_(condition, btc_batches.c.txid == expected_txid)
        if expected_status is not None:
            condition = and_(condition, btc_batches.c.status == expected_status)
        if expected_bumps is not None:
            condition = and_(condition, btc_batches.c.bumps == expected_bumps)
        changed = self._connection.execute(update(btc_batches).where(condition).values(**values))
        return bool(changed.rowcount)

    # -- the custody UTXO set ----------------------------------------------------------------

    def _output_query(self) -> Any:
        return select(
            btc_outputs.c.txid,
            btc_outputs.c.vout,
            btc_outputs.c.amount_sats,
            btc_outputs.c.status,
            btc_outputs.c.reserved_by,
            btc_addresses.c.branch,
            btc_addresses.c.derivation_index,
        ).join(btc_addresses, btc_addresses.c.address == btc_outputs.c.address)

    @staticmethod
    def _output(row: Row[Any]) -> CustodyOutput:
        return CustodyOutput(
            txid=row.txid,
            vout=row.vout,
            amount_sats=int(row.amount_sats),
            status=row.status,
            branch=row.branch,
            index=row.derivation_index,
            reserved_by=row.reserved_by,
        )

    def spendable_outputs(self, dust_limit: int, *, limit: int = 10_000) -> list[CustodyOutput]:
        query = (
            self._output_query()
            .where(
                and_(
                    btc_outputs.c.status.in_(SPENDABLE_STATUSES),
                    btc_outputs.c.amount_sats >= dust_limit,
                    btc_outputs.c.spent_txid.is_(None),
                    btc_outputs.c.reserved_by.is_(None),
                )
            )
            .order_by(btc_outputs.c.amount_sats.desc(), btc_outputs.c.txid, btc_outputs.c.vout)
            .limit(limit)
        )
        return [self._output(row) for row in self._connection.execute(query)]

    def outputs(self, outpoints: Collection[str]) -> dict[str, CustodyOutput]:
        if not outpoints:
            return {}
        rows = self._connection.execute(self._output_query().where(_outpoint_condition(outpoints)))
        found = [self._output(row) for row in rows]
        return {output.outpoint: output for output in found}

    def reserve_outputs(self, outpoints: Collection[str], batch_id: str) -> bool:
        wanted = list(dict.fromkeys(outpoints))
        if not wanted:
            return False
        if is_postgresql(self._connection):
            # Rows are locked in one order (by outpoint) before the update, so two workers
            # reaching for overlapping outputs wait for each other instead of deadlocking.
            self._connection.execute(
                select(btc_outputs.c.txid)
                .where(_outpoint_condition(wanted))
                .order_by(btc_outputs.c.txid, btc_outputs.c.vout)
                .with_for_update()
            ).all()
        # One conditional statement: of two batches reaching for the same output, the second
        # one's update waits for the first to commit (PostgreSQL) or for the write lock
        # (SQLite), then finds it reserved and changes fewer rows than it asked for.
        changed = self._connection.execute(
            update(btc_outputs)
            .where(
                and_(
                    _outpoint_condition(wanted),
                    # Only outputs still spendable: one the watcher marked reorged meanwhile
                    # (after spendable_outputs() read it) makes the reservation fail whole.
                    btc_outputs.c.status.in_(SPENDABLE_STATUSES),
                    btc_outputs.c.reserved_by.is_(None),
                    btc_outputs.c.spent_txid.is_(None),
                )
            )
            .values(reserved_by=batch_id)
        ).rowcount
        if changed != len(wanted):
            self._connection.execute(
                update(btc_outputs)
                .where(and_(_outpoint_condition(wanted), btc_outputs.c.reserved_by == batch_id))
                .values(reserved_by=None)
            )
            return False
        return True

    def _surviving(self, batch_id: str) -> Any:
        return and_(
            btc_outputs.c.reserved_by == batch_id,
            btc_outputs.c.status.in_(SPENDABLE_STATUSES),
            btc_outputs.c.spent_txid.is_(None),
        )

    def reserved_spendable(self, batch_id: str) -> list[CustodyOutput]:
        query = (
            self._output_query()
            .where(self._surviving(batch_id))
            .order_by(btc_outputs.c.txid, btc_outputs.c.vout)
        )
        return [self._output(row) for row in self._connection.execute(query)]

    def take_over_outputs(self, outpoints: Collection[str], from_batch: str, to_batch: str) -> bool:
        wanted = list(dict.fromkeys(outpoints))
        if not wanted:
            return False
        surviving = self._surviving(from_batch)
        if is_postgresql(self._connection):
            self._connection.execute(
                select(btc_outputs.c.txid)
                .where(btc_outputs.c.reserved_by == from_batch)
                .order_by(btc_outputs.c.txid, btc_outputs.c.vout)
                .with_for_update()
            ).all()
        changed = self._connection.execute(
            update(btc_outputs)
            .where(and_(_outpoint_condition(wanted), surviving))
            .values(reserved_by=to_batch)
        ).rowcount
        # Every surviving input is taken, or none: one left behind (say, an input that came
        # back on the chain meanwhile) would let an old version of the released batch be mined
        # next to the successor if they shared nothing else.
        left = self._connection.execute(select(btc_outputs.c.txid).where(surviving)).first()
        if changed != len(wanted) or left is not None:
            self._connection.execute(
                update(btc_outputs)
                .where(and_(_outpoint_condition(wanted), btc_outputs.c.reserved_by == to_batch))
                .values(reserved_by=from_batch)
            )
            return False
        return True

    def spends(self, outpoints: Collection[str]) -> dict[str, OutputSpend]:
        if not outpoints:
            return {}
        query = select(
            btc_outputs.c.txid,
            btc_outputs.c.vout,
            btc_outputs.c.spent_txid,
            btc_outputs.c.spent_height,
            btc_outputs.c.spent_block_hash,
        ).where(and_(_outpoint_condition(outpoints), btc_outputs.c.spent_txid.is_not(None)))
        return {
            f"{row.txid}:{row.vout}": OutputSpend(
                row.spent_txid, int(row.spent_height), row.spent_block_hash
            )
            for row in self._connection.execute(query)
        }

    def cursor_height(self) -> int | None:
        value = self._connection.execute(select(func.max(btc_blocks.c.height))).scalar()
        return None if value is None else int(value)

    # -- change addresses and alerts ---------------------------------------------------------

    def next_change_index(self) -> int:
        return next_derivation_index(self._connection, CHANGE_BRANCH)

    def add_change_address(self, address: str, script_hex: str, index: int, at: datetime) -> bool:
        return insert_address(
            self._connection,
            address=address,
            script_hex=script_hex,
            branch=CHANGE_BRANCH,
            index=index,
            customer_id=None,
            created_at=at,
        )

    def add_alert(self, alert: Alert, at: datetime) -> bool:
        return insert_alert(self._connection, alert, at)
