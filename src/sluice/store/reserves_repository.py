"""Reserve readings, reconciliation runs and proof-of-reserves snapshots over SQLAlchemy Core.

Units are written as decimal text (they may exceed 64 bits) and read back as ``int``; JSON
columns are text with sorted keys; timestamps are canonical RFC 3339 text. A snapshot id is
written once (``ON CONFLICT DO NOTHING``, and the insert says whether it went in), so two
processes taking a snapshot under the same id cannot both publish it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Connection, Row, func, insert, literal_column, select, update
from sqlalchemy.sql import Executable

from sluice.domain.deposits import Alert
from sluice.ports.reserves import (
    Discrepancy,
    PorSnapshot,
    PublishedRoot,
    ReadingKind,
    ReadPoint,
    ReconcileSource,
    ReconciliationRun,
    ReserveReading,
    RunStatus,
    RunTrigger,
    Severity,
)
from sluice.store.bitcoin_rows import insert_alert
from sluice.store.reserves_tables import (
    por_leaves,
    por_roots,
    por_snapshots,
    reconciliation_discrepancies,
    reconciliation_runs,
    reserve_readings,
)
from sluice.store.rows import insert_for, time_of, to_json, ts

LEAF_BATCH = 5000


def _point(body: Mapping[str, Any]) -> ReadPoint:
    return ReadPoint(
        source=body["source"],
        height=body.get("height"),
        block_hash=body.get("block_hash"),
        offset=body.get("offset"),
    )


def _reading(row: Row[Any]) -> ReserveReading:
    read_at = json.loads(row.read_at)
    return ReserveReading(
        id=row.id,
        instrument=row.instrument,
        kind=cast(ReadingKind, row.kind),
        supply_units=int(row.supply_units),
        reserves_units=int(row.reserves_units),
        ratio_bps=row.ratio_bps,
        taken_at=time_of(row.taken_at),
        read_at={side: _point(point) for side, point in read_at.items()},
        figures=json.loads(row.figures),
    )


def _discrepancy(row: Row[Any]) -> Discrepancy:
    return Discrepancy(
        source=cast(ReconcileSource, row.source),
        instrument=row.instrument,
        severity=cast(Severity, row.severity),
        expected_units=int(row.expected_units),
        actual_units=int(row.actual_units),
        message=row.message,
        details=json.loads(row.details),
    )


def _snapshot(row: Row[Any]) -> PorSnapshot:
    return PorSnapshot(
        id=row.id,
        taken_at=time_of(row.taken_at),
        instruments=tuple(json.loads(row.instruments)),
        report=json.loads(row.report),
        reserves=json.loads(row.reserves) if row.reserves is not None else None,
    )


def _root(row: Row[Any]) -> PublishedRoot:
    return PublishedRoot(
        snapshot_id=row.snapshot_id,
        instrument=row.instrument,
        root_hash=row.root_hash,
        total_units=int(row.total_units),
        total=row.total,
        leaf_count=row.leaf_count,
        depth=row.depth,
        taken_at=time_of(row.taken_at),
    )


class SqlReservesRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    # -- readings ---------------------------------------------------------------------------

    def add_reading(self, reading: ReserveReading) -> int:
        result = self._c.execute(
            insert(reserve_readings)
            .values(
                instrument=reading.instrument,
                kind=reading.kind,
                supply_units=str(reading.supply_units),
                reserves_units=str(reading.reserves_units),
                ratio_bps=reading.ratio_bps,
                read_at=to_json({side: p.as_json() for side, p in reading.read_at.items()}),
                figures=to_json(dict(reading.figures)),
                taken_at=ts(reading.taken_at),
            )
            .returning(reserve_readings.c.id)
        )
        return int(result.scalar_one())

    def readings(
        self, instrument: str | None = None, *, since: datetime | None = None, limit: int = 1000
    ) -> list[ReserveReading]:
        query = select(reserve_readings)
        if instrument is not None:
            query = query.where(reserve_readings.c.instrument == instrument)
        if since is not None:
            query = query.where(reserve_readings.c.taken_at >= ts(since))
        query = query.order_by(reserve_readings.c.id.desc()).limit(limit)
        return [_reading(row) for row in self._c.execute(query)]

    def latest_readings(self) -> list[ReserveReading]:
        newest = select(func.max(reserve_readings.c.id)).group_by(reserve_readings.c.instrument)
        ids = [row[0] for row in self._c.execute(newest)]
        if not ids:
            return []
        rows = self._c.execute(
            select(reserve_readings)
            .where(reserve_readings.c.id.in_(ids))
            .order_by(reserve_readings.c.instrument)
        )
        return [_reading(row) for row in rows]

    def add_alerts(self, alerts: Sequence[Alert], at: datetime) -> int:
        return sum(1 for alert in alerts if insert_alert(self._c, alert, at))

    # -- reconciliation ---------------------------------------------------------------------

    def add_run(self, run: ReconciliationRun) -> None:
        self._c.execute(
            insert(reconciliation_runs).values(
                id=run.id,
                trigger=run.trigger,
                status=run.status,
                worst=run.worst,
                report=to_json(dict(run.report)),
                actions=to_json(list(run.actions)),
                started_at=ts(run.started_at),
                finished_at=ts(run.finished_at),
            )
        )
        if run.discrepancies:
            self._c.execute(
                insert(reconciliation_discrepancies),
                [
                    {
                        "run_id": run.id,
                        "seq": seq,
                        "source": d.source,
                        "instrument": d.instrument,
                        "severity": d.severity,
                        "expected_units": str(d.expected_units),
                        "actual_units": str(d.actual_units),
                        "message": d.message,
                        "details": to_json(dict(d.details)),
                        "at": ts(run.finished_at),
                    }
                    for seq, d in enumerate(run.discrepancies, start=1)
                ],
            )

    def _with_discrepancies(self, rows: list[Row[Any]]) -> list[ReconciliationRun]:
        if not rows:
            return []
        found: dict[str, list[Discrepancy]] = {row.id: [] for row in rows}
        table = reconciliation_discrepancies
        query = (
            select(table)
            .where(table.c.run_id.in_(list(found)))
            .order_by(table.c.run_id, table.c.seq)
        )
        for row in self._c.execute(query):
            found[row.run_id].append(_discrepancy(row))
        return [
            ReconciliationRun(
                id=row.id,
                trigger=cast(RunTrigger, row.trigger),
                status=cast(RunStatus, row.status),
                started_at=time_of(row.started_at),
                finished_at=time_of(row.finished_at),
                worst=cast("Severity | None", row.worst),
                report=json.loads(row.report),
                actions=tuple(json.loads(row.actions)),
                discrepancies=tuple(found[row.id]),
            )
            for row in rows
        ]

    def run(self, run_id: str) -> ReconciliationRun | None:
        rows = list(
            self._c.execute(select(reconciliation_runs).where(reconciliation_runs.c.id == run_id))
        )
        runs = self._with_discrepancies(rows)
        return runs[0] if runs else None

    def runs(self, *, limit: int = 100) -> list[ReconciliationRun]:
        table = reconciliation_runs
        query = select(table).order_by(table.c.finished_at.desc(), table.c.id.desc()).limit(limit)
        return self._with_discrepancies(list(self._c.execute(query)))

    def discrepancies(
        self,
        *,
        severity: Severity | None = None,
        source: ReconcileSource | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[tuple[str, datetime, Discrepancy]]:
        table = reconciliation_discrepancies
        query = select(table)
        if severity is not None:
            query = query.where(table.c.severity == severity)
        if source is not None:
            query = query.where(table.c.source == source)
        if since is not None:
            query = query.where(table.c.at >= ts(since))
        query = query.order_by(table.c.at.desc(), table.c.run_id, table.c.seq).limit(limit)
        return [(row.run_id, time_of(row.at), _discrepancy(row)) for row in self._c.execute(query)]

    # -- proof-of-reserves snapshots --------------------------------------------------------

    def add_snapshot(self, snapshot: PorSnapshot) -> bool:
        statement: Executable = (
            insert_for(self._c, por_snapshots)
            .values(
                id=snapshot.id,
                instruments=to_json(list(snapshot.instruments)),
                report=to_json(dict(snapshot.report)),
                reserves=to_json(dict(snapshot.reserves))
                if snapshot.reserves is not None
                else None,
                taken_at=ts(snapshot.taken_at),
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(literal_column("1"))
        )
        return self._c.execute(statement).first() is not None

    def set_snapshot_report(
        self, snapshot_id: str, report: Mapping[str, Any], reserves: Mapping[str, Any] | None
    ) -> None:
        self._c.execute(
            update(por_snapshots)
            .where(por_snapshots.c.id == snapshot_id)
            .values(
                report=to_json(dict(report)),
                reserves=to_json(dict(reserves)) if reserves is not None else None,
            )
        )

    def snapshot(self, snapshot_id: str) -> PorSnapshot | None:
        row = self._c.execute(
            select(por_snapshots).where(por_snapshots.c.id == snapshot_id)
        ).first()
        return _snapshot(row) if row is not None else None

    def latest_snapshot(self) -> PorSnapshot | None:
        found = self.snapshots(limit=1)
        return found[0] if found else None

    def snapshots(self, *, limit: int = 100) -> list[PorSnapshot]:
        query = (
            select(por_snapshots)
            .order_by(por_snapshots.c.taken_at.desc(), por_snapshots.c.id.desc())
            .limit(limit)
        )
        return [_snapshot(row) for row in self._c.execute(query)]

    def add_root(self, root: PublishedRoot) -> None:
        self._c.execute(
            insert(por_roots).values(
                snapshot_id=root.snapshot_id,
                instrument=root.instrument,
                root_hash=root.root_hash,
                total_units=str(root.total_units),
                total=root.total,
                leaf_count=root.leaf_count,
                depth=root.depth,
                taken_at=ts(root.taken_at),
            )
        )

    def roots(self, snapshot_id: str) -> list[PublishedRoot]:
        query = (
            select(por_roots)
            .where(por_roots.c.snapshot_id == snapshot_id)
            .order_by(por_roots.c.instrument)
        )
        return [_root(row) for row in self._c.execute(query)]

    def add_leaves(
        self, snapshot_id: str, instrument: str, leaves: Iterable[tuple[str, int]]
    ) -> int:
        count = 0
        batch: list[dict[str, str]] = []
        for customer_id, units in leaves:
            batch.append(
                {
                    "snapshot_id": snapshot_id,
                    "instrument": instrument,
                    "customer_id": customer_id,
                    "units": str(units),
                }
            )
            if len(batch) >= LEAF_BATCH:
                self._c.execute(insert(por_leaves), batch)
                count += len(batch)
                batch = []
        if batch:
            self._c.execute(insert(por_leaves), batch)
            count += len(batch)
        return count

    def leaves(self, snapshot_id: str, instrument: str) -> list[tuple[str, int]]:
        query = select(por_leaves.c.customer_id, por_leaves.c.units).where(
            por_leaves.c.snapshot_id == snapshot_id, por_leaves.c.instrument == instrument
        )
        # Sorted here, not by the database: collations differ between engines.
        return sorted((row.customer_id, int(row.units)) for row in self._c.execute(query))

    def leaf(self, snapshot_id: str, instrument: str, customer_id: str) -> int | None:
        units = self._c.execute(
            select(por_leaves.c.units).where(
                por_leaves.c.snapshot_id == snapshot_id,
                por_leaves.c.instrument == instrument,
                por_leaves.c.customer_id == customer_id,
            )
        ).scalar_one_or_none()
        return int(units) if units is not None else None
