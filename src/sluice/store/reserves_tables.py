"""The Integration DB's reserves tables: reserve readings (the ratio's history), reconciliation
runs and their discrepancies, and proof-of-reserves snapshots with their published roots and the
balances each tree was built from. Units are integers in the instrument's smallest unit, kept as
decimal text (they may exceed 64 bits); JSON columns hold text.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from sluice.store.tables import TIMESTAMP, metadata

INSTRUMENT_KEY = String(700)  # InstrumentId.key(): "<id>@<admin party>"
UNITS = String(40)  # decimal text of an integer below 2^127

reserve_readings = Table(
    "reserve_readings",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("instrument", INSTRUMENT_KEY, nullable=False),
    Column("kind", String(8), nullable=False),  # istsi | token
    Column("supply_units", UNITS, nullable=False),
    Column("reserves_units", UNITS, nullable=False),
    Column("ratio_bps", BigInteger, nullable=True),
    Column("read_at", Text, nullable=False),  # JSON: {side: ReadPoint}
    Column("figures", Text, nullable=False),  # JSON: {name: decimal string}
    Column("taken_at", TIMESTAMP, nullable=False),
    Index("ix_reserve_readings_instrument", "instrument", "taken_at"),
)

reconciliation_runs = Table(
    "reconciliation_runs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("trigger", String(10), nullable=False),  # schedule | manual
    Column("status", String(14), nullable=False),  # ok | discrepancies | failed
    Column("worst", String(10), nullable=True),  # the worst severity found
    Column("report", Text, nullable=False),  # JSON
    Column("actions", Text, nullable=False),  # JSON list
    Column("started_at", TIMESTAMP, nullable=False),
    Column("finished_at", TIMESTAMP, nullable=False, index=True),
)

reconciliation_discrepancies = Table(
    "reconciliation_discrepancies",
    metadata,
    Column("run_id", String(64), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("source", String(10), nullable=False),  # ledger | custody | supply
    Column("instrument", INSTRUMENT_KEY, nullable=False),
    Column("severity", String(10), nullable=False),
    Column("expected_units", UNITS, nullable=False),
    Column("actual_units", UNITS, nullable=False),
    Column("message", Text, nullable=False),
    Column("details", Text, nullable=False),  # JSON
    Column("at", TIMESTAMP, nullable=False),
    PrimaryKeyConstraint("run_id", "seq"),
    Index("ix_reconciliation_discrepancies_at", "severity", "at"),
)

por_snapshots = Table(
    "por_snapshots",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("instruments", Text, nullable=False),  # JSON list of instrument keys
    Column("report", Text, nullable=False),  # JSON: per instrument, reserves against liabilities
    Column("reserves", Text, nullable=True),  # JSON: the reserves document, once taken
    Column("taken_at", TIMESTAMP, nullable=False, index=True),
)

por_roots = Table(
    "por_roots",
    metadata,
    Column("snapshot_id", String(64), nullable=False),
    Column("instrument", INSTRUMENT_KEY, nullable=False),
    Column("root_hash", String(64), nullable=False),
    Column("total_units", UNITS, nullable=False),
    Column("total", String(60), nullable=False),
    Column("leaf_count", BigInteger, nullable=False),
    Column("depth", Integer, nullable=False),
    Column("taken_at", TIMESTAMP, nullable=False),
    PrimaryKeyConstraint("snapshot_id", "instrument"),
)

por_leaves = Table(
    "por_leaves",
    metadata,
    Column("snapshot_id", String(64), nullable=False),
    Column("instrument", INSTRUMENT_KEY, nullable=False),
    Column("customer_id", String(100), nullable=False),
    Column("units", UNITS, nullable=False),
    PrimaryKeyConstraint("snapshot_id", "instrument", "customer_id"),
)
