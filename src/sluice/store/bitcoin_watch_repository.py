"""Custody addresses, the watcher's blocks and custody outputs, over SQLAlchemy Core.

Guarantees:

* **An address is never given twice.** ``(branch, derivation_index)``, the address and its script
  are unique in the database. :meth:`add_address` inserts with ``ON CONFLICT DO NOTHING`` and says
  whether the row went in; a caller racing another transaction for the same index (PostgreSQL
  waits for that one to commit first) gets False and tries the next index — nothing is checked
  first and then written, so two transactions cannot both take an index.
* **A block is applied once, on top of its parent.** :meth:`claim_block` first reads its parent's
  row (locked on PostgreSQL) and refuses a block whose ``previousblockhash`` is not the stored
  hash at ``height − 1`` (a block fetched before another watcher moved the chain); then it
  inserts the row with ``ON CONFLICT DO NOTHING``: a second watcher applying the same height
  learns it lost and writes nothing.
* **A rollback undoes only what it was computed from.** :meth:`roll_back` locks the tip its
  caller found the fork point under and does nothing when the stored chain no longer ends there
  (another watcher rolled back or applied blocks meanwhile). The stored chain's top changes only
  under the lock of one row (a block's parent, a rollback's tip), so on PostgreSQL a block and a
  rollback cannot interleave; SQLite transactions begin with ``BEGIN IMMEDIATE`` and are
  serialised already.
* **The same outpoint is the same row.** An output seen again after a reorg updates its reorged
  row (``ON CONFLICT (txid, vout) DO UPDATE … WHERE status = 'reorged'``); a row in the active
  chain is never overwritten, and ``credited_at`` survives a reorg, so a deposit credited before
  it comes back as ``credited``, never as ``confirmed`` (the mint credits ``confirmed`` only).
* Writes of a block are batched: one statement per kind of write (outputs, spends, funded
  addresses), each an ``executemany``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Executable,
    Row,
    and_,
    bindparam,
    case,
    delete,
    func,
    literal,
    literal_column,
    null,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from sluice.domain.deposits import Alert
from sluice.domain.errors import InvalidInputError, InvalidOperationStateError, NotFoundError
from sluice.ports.bitcoin_watch import (
    DEPOSIT_BRANCH,
    ConfirmedOutput,
    CustodyAddress,
    CustodyOutput,
    FoundOutput,
    FoundSpend,
    OutputKind,
    OutputStatus,
    RolledBack,
    WatchedBlock,
)
from sluice.store import tables as t
from sluice.store.bitcoin_rows import insert_address, insert_alert, next_derivation_index
from sluice.store.bitcoin_tables import btc_addresses, btc_blocks, btc_outputs
from sluice.store.bulk import execute_many, select_rows
from sluice.store.records import _now
from sluice.store.rows import insert_for, is_postgresql, optional_time, time_of, to_json, ts

_OUTPUT_LIMIT_MAX = 100_000


def address_from_row(row: Row[Any]) -> CustodyAddress:
    return CustodyAddress(
        address=row.address,
        script_hex=row.script_hex,
        branch=row.branch,
        index=row.derivation_index,
        customer_id=row.customer_id,
        created_at=time_of(row.created_at),
        funded_at=optional_time(row.funded_at),
    )


def output_from_row(row: Row[Any]) -> CustodyOutput:
    return CustodyOutput(
        txid=row.txid,
        vout=row.vout,
        kind=row.kind,
        address=row.address,
        script_hex=row.script_hex,
        customer_id=row.customer_id,
        amount_sats=int(row.amount_sats),
        status=row.status,
        block_height=row.block_height,
        block_hash=row.block_hash,
        input_outpoints=tuple(json.loads(row.input_outpoints)),
        first_seen_at=time_of(row.first_seen_at),
        confirmed_at=optional_time(row.confirmed_at),
        credited_at=optional_time(row.credited_at),
        reserved_by=row.reserved_by,
        spent_txid=row.spent_txid,
        spent_height=row.spent_height,
        spent_block_hash=row.spent_block_hash,
    )


def block_from_row(row: Row[Any]) -> WatchedBlock:
    return WatchedBlock(
        height=row.height, hash=row.hash, previous_hash=row.previous_hash, outputs=row.outputs
    )


@cache
def _outputs_upsert(dialect: str) -> Executable:
    """Outputs found in a block: new ones inserted; one recorded before and now ``reorged`` is
    the same row, back in this block (and its confirmations start again); any other existing
    row is left as it is. Every value is bound by name (``execute_many`` binds nothing else)."""
    table = btc_outputs
    insert = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    columns = (
        "txid",
        "vout",
        "kind",
        "address",
        "script_hex",
        "customer_id",
        "amount_sats",
        "status",
        "block_height",
        "block_hash",
        "input_outpoints",
        "first_seen_at",
    )
    insert = insert.values({name: bindparam(name) for name in columns})
    return insert.on_conflict_do_update(
        index_elements=[table.c.txid, table.c.vout],
        set_={
            "status": insert.excluded.status,
            "block_height": insert.excluded.block_height,
            "block_hash": insert.excluded.block_hash,
            "confirmed_at": null(),
        },
        where=table.c.status == literal_column("'reorged'"),
    )


@cache
def _confirm_statement() -> Executable:
    """Outputs ``seen`` in a block at or below ``:up_to`` become ``confirmed`` — or ``credited``
    again when they were credited before a reorg took them away (``confirmed`` is what the mint
    credits, so such a deposit can never be credited twice)."""
    table = btc_outputs
    return (
        update(table)
        .where(table.c.status == "seen", table.c.block_height <= bindparam("up_to"))
        .values(
            status=case(
                (table.c.credited_at.is_(None), literal("confirmed")),
                else_=literal("credited"),
            ),
            confirmed_at=bindparam("at"),
        )
        .returning(
            table.c.txid,
            table.c.vout,
            table.c.kind,
            table.c.customer_id,
            table.c.amount_sats,
            table.c.status,
            table.c.block_height,
            table.c.block_hash,
        )
    )


class SqlBitcoinWatchRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    # -- addresses ---------------------------------------------------------------------------

    def customer_exists(self, customer_id: str, *, lock: bool = False) -> bool:
        query = select(t.customers.c.id).where(t.customers.c.id == customer_id)
        if lock and is_postgresql(self._c):
            query = query.with_for_update()
        return self._c.execute(query).first() is not None

    def next_index(self, branch: int) -> int:
        return next_derivation_index(self._c, branch)

    def add_address(self, address: CustodyAddress) -> bool:
        return insert_address(
            self._c,
            address=address.address,
            script_hex=address.script_hex,
            branch=address.branch,
            index=address.index,
            customer_id=address.customer_id,
            created_at=address.created_at,
            funded_at=address.funded_at,
        )

    def latest_address(self, customer_id: str) -> CustodyAddress | None:
        table = btc_addresses
        row = self._c.execute(
            select(table)
            .where(table.c.customer_id == customer_id, table.c.branch == DEPOSIT_BRANCH)
            .order_by(table.c.derivation_index.desc())
            .limit(1)
        ).first()
        return address_from_row(row) if row is not None else None

    def addresses(
        self, *, customer_id: str | None = None, branch: int | None = None
    ) -> list[CustodyAddress]:
        table = btc_addresses
        query = select(table)
        if customer_id is not None:
            query = query.where(table.c.customer_id == customer_id)
        if branch is not None:
            query = query.where(table.c.branch == branch)
        query = query.order_by(table.c.branch, table.c.derivation_index)
        return [address_from_row(row) for row in self._c.execute(query)]

    def address_count(self) -> int:
        return int(self._c.execute(select(func.count()).select_from(btc_addresses)).scalar_one())

    def mark_funded(self, addresses: Sequence[str], at: datetime) -> None:
        if not addresses:
            return
        table = btc_addresses
        self._c.execute(
            update(table)
            .where(table.c.address == bindparam("b_address"), table.c.funded_at.is_(None))
            .values(funded_at=ts(at)),
            [{"b_address": address} for address in sorted(set(addresses))],
        )

    # -- the watcher's chain ------------------------------------------------------------------

    def cursor(self) -> WatchedBlock | None:
        row = self._c.execute(select(btc_blocks).order_by(btc_blocks.c.height.desc()).limit(1))
        first = row.first()
        return block_from_row(first) if first is not None else None

    def block_hashes(self, low: int, high: int) -> dict[int, str]:
        table = btc_blocks
        rows = self._c.execute(
            select(table.c.height, table.c.hash).where(table.c.height.between(low, high))
        )
        return {row.height: row.hash for row in rows}

    def lowest_height(self) -> int | None:
        value = self._c.execute(select(func.min(btc_blocks.c.height))).scalar_one_or_none()
        return None if value is None else int(value)

    def _row_hash(self, height: int) -> str | None:
        """The stored hash at ``height``; on PostgreSQL its row stays locked until the
        transaction ends. Every change of the stored chain's top goes through this lock (a block
        locks its parent's row, a rollback the tip's), so two watchers' changes take turns and
        each sees what the other committed."""
        query = select(btc_blocks.c.hash).where(btc_blocks.c.height == height)
        if is_postgresql(self._c):
            query = query.with_for_update()
        value = self._c.execute(query).scalar_one_or_none()
        return None if value is None else str(value)

    def claim_block(self, block: WatchedBlock, at: datetime) -> bool:
        parent = self._row_hash(block.height - 1)
        if parent is None:
            # Only the first block has no parent row, and then nothing is stored at all.
            if self._c.execute(select(btc_blocks.c.height).limit(1)).first() is not None:
                return False
        elif parent != block.previous_hash:
            return False  # fetched from a branch the stored chain has left: stale
        statement = (
            insert_for(self._c, btc_blocks)
            .values(
                height=block.height,
                hash=block.hash,
                previous_hash=block.previous_hash,
                outputs=block.outputs,
                processed_at=ts(at),
            )
            .on_conflict_do_nothing()
            .returning(btc_blocks.c.height)
        )
        return self._c.execute(statement).first() is not None

    def holds_tip(self, tip: WatchedBlock) -> bool:
        if self._row_hash(tip.height) != tip.hash:
            return False
        # Read after the lock: a block on top committed before it was taken is seen here, and
        # none can be added while it is held.
        highest = self._c.execute(select(func.max(btc_blocks.c.height))).scalar_one_or_none()
        return highest is not None and int(highest) == tip.height

    def record_outputs(
        self, outputs: Sequence[FoundOutput], height: int, block_hash: str, at: datetime
    ) -> None:
        if not outputs:
            return
        now = ts(at)
        # A transaction's outputs share its inputs: their JSON is made once.
        inputs_json: dict[tuple[str, ...], str] = {}
        for output in outputs:
            if output.input_outpoints not in inputs_json:
                inputs_json[output.input_outpoints] = to_json(list(output.input_outpoints))
        # Through the driver's executemany with a statement built once: a block may hold
        # thousands of custody outputs, and SQLAlchemy's per-row work would cost more than the
        # database's.
        execute_many(
            self._c,
            _outputs_upsert(self._c.dialect.name),
            [
                {
                    "txid": output.txid,
                    "vout": output.vout,
                    "kind": output.kind,
                    "address": output.address,
                    "script_hex": output.script_hex,
                    "customer_id": output.customer_id,
                    "amount_sats": output.amount_sats,
                    "status": output.status,
                    "block_height": height,
                    "block_hash": block_hash,
                    "input_outpoints": inputs_json[output.input_outpoints],
                    "first_seen_at": now,
                }
                for output in outputs
            ],
        )

    def record_spends(self, spends: Sequence[FoundSpend], height: int, block_hash: str) -> int:
        if not spends:
            return 0
        table = btc_outputs
        self._c.execute(
            update(table)
            .where(table.c.txid == bindparam("b_txid"), table.c.vout == bindparam("b_vout"))
            .values(
                spent_txid=bindparam("b_spent_txid"),
                spent_height=height,
                spent_block_hash=block_hash,
            ),
            [
                {"b_txid": spend.txid, "b_vout": spend.vout, "b_spent_txid": spend.spent_txid}
                for spend in spends
            ],
        )
        return len(spends)

    def confirm(self, up_to_height: int, at: datetime) -> list[ConfirmedOutput]:
        rows = select_rows(self._c, _confirm_statement(), {"up_to": up_to_height, "at": ts(at)})
        confirmed = [
            ConfirmedOutput(
                txid=txid,
                vout=vout,
                kind=kind,
                customer_id=customer_id,
                amount_sats=int(amount),
                status=status,
                block_height=block_height,
                block_hash=block_hash,
            )
            for txid, vout, kind, customer_id, amount, status, block_height, block_hash in rows
        ]
        confirmed.sort(key=lambda output: (output.block_height, output.txid, output.vout))
        return confirmed

    def roll_back(self, fork_height: int, *, tip: WatchedBlock) -> RolledBack | None:
        if not self.holds_tip(tip):
            return None
        table = btc_outputs
        blocks = [
            block_from_row(row)
            for row in self._c.execute(
                select(btc_blocks)
                .where(btc_blocks.c.height > fork_height)
                .order_by(btc_blocks.c.height.desc())
            )
        ]
        reorged = [
            output_from_row(row)
            for row in self._c.execute(
                select(table)
                .where(table.c.block_height > fork_height)
                .order_by(table.c.block_height, table.c.txid, table.c.vout)
            )
        ]
        if reorged:
            self._c.execute(
                update(table)
                .where(table.c.block_height > fork_height)
                .values(status="reorged", block_height=None, block_hash=None, confirmed_at=None)
            )
        cleared = self._c.execute(
            update(table)
            .where(table.c.spent_height > fork_height)
            .values(spent_txid=None, spent_height=None, spent_block_hash=None)
        ).rowcount
        self._c.execute(delete(btc_blocks).where(btc_blocks.c.height > fork_height))
        return RolledBack(
            fork_height=fork_height, blocks=blocks, reorged=reorged, spends_cleared=int(cleared)
        )

    def seen_heights(self) -> dict[int, int]:
        table = btc_outputs
        rows = self._c.execute(
            select(table.c.block_height, func.count())
            .where(table.c.status == "seen", table.c.block_height.is_not(None))
            .group_by(table.c.block_height)
        )
        return {int(height): int(count) for height, count in rows}

    def unspent_outputs(self) -> list[CustodyOutput]:
        table = btc_outputs
        rows = self._c.execute(
            select(table).where(table.c.status != "reorged", table.c.spent_txid.is_(None))
        )
        return [output_from_row(row) for row in rows]

    def add_alerts(self, alerts: Sequence[Alert], at: datetime) -> int:
        return sum(insert_alert(self._c, alert, at) for alert in alerts)

    # -- outputs -------------------------------------------------------------------------------

    def output(self, txid: str, vout: int) -> CustodyOutput | None:
        table = btc_outputs
        row = self._c.execute(
            select(table).where(table.c.txid == txid, table.c.vout == vout)
        ).first()
        return output_from_row(row) if row is not None else None

    def outputs(
        self,
        *,
        customer_id: str | None = None,
        kinds: Sequence[OutputKind] = (),
        statuses: Sequence[OutputStatus] = (),
        unspent: bool = False,
        limit: int = 1000,
    ) -> list[CustodyOutput]:
        if not 1 <= limit <= _OUTPUT_LIMIT_MAX:
            raise InvalidInputError(f"limit must be 1–{_OUTPUT_LIMIT_MAX}, got {limit}")
        table = btc_outputs
        query = select(table)
        if customer_id is not None:
            query = query.where(table.c.customer_id == customer_id)
        if kinds:
            query = query.where(table.c.kind.in_(list(kinds)))
        if statuses:
            query = query.where(table.c.status.in_(list(statuses)))
        if unspent:
            query = query.where(table.c.status != "reorged", table.c.spent_txid.is_(None))
        # Newest first; outputs out of the chain (reorged, no block) lead.
        query = query.order_by(
            case((table.c.block_height.is_(None), 0), else_=1),
            table.c.block_height.desc(),
            table.c.first_seen_at.desc(),
            table.c.txid,
            table.c.vout,
        ).limit(limit)
        return [output_from_row(row) for row in self._c.execute(query)]

    def mark_credited(self, txid: str, vout: int, *, at: datetime | None = None) -> CustodyOutput:
        table = btc_outputs
        condition = and_(
            table.c.txid == txid,
            table.c.vout == vout,
            table.c.status == "confirmed",
            table.c.kind == "deposit",
            table.c.credited_at.is_(None),
        )
        row = self._c.execute(
            update(table)
            .where(condition)
            .values(status="credited", credited_at=ts(at) if at is not None else _now())
            .returning(*table.c)
        ).first()
        if row is not None:
            return output_from_row(row)
        current = self.output(txid, vout)
        if current is None:
            raise NotFoundError(f"no custody output {txid}:{vout}")
        if current.kind != "deposit":
            raise InvalidOperationStateError(
                f"custody output {txid}:{vout} is {current.kind}, not a deposit: never credited"
            )
        raise InvalidOperationStateError(
            f"deposit {txid}:{vout} is {current.status}, not confirmed: not credited"
            + (" (it was credited before)" if current.credited_at is not None else "")
        )
