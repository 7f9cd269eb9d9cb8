"""The Integration DB's price-oracle tables: each pair's health, each source's last accepted
price (the reference of the jump and round rules), and every rejected price with its rule.
Prices are exact decimal text (they may have more places than ``Money``); round ids are integer
text (Chainlink's are 80 bits)."""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Index,
    Integer,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
)

from sluice.store.tables import TIMESTAMP, metadata

PAIR = String(65)
PRICE = String(100)  # decimal text, exact
ROUND_ID = String(40)  # integer text
ID = BigInteger().with_variant(Integer, "sqlite")

oracle_feeds = Table(
    "oracle_feeds",
    metadata,
    Column("pair", PAIR, primary_key=True),
    Column("health", String(10), nullable=False),  # healthy | degraded | offline
    Column("source", String(10), nullable=True),  # primary | secondary | NULL (offline)
    Column("on_fallback", Boolean, nullable=False),
    Column("price", PRICE, nullable=True),
    Column("observed_at", TIMESTAMP, nullable=True),
    Column("updated_at", TIMESTAMP, nullable=False),
)

oracle_sources = Table(
    "oracle_sources",
    metadata,
    Column("pair", PAIR, nullable=False),
    Column("source", String(10), nullable=False),  # primary | secondary
    Column("price", PRICE, nullable=False),
    Column("round_id", ROUND_ID, nullable=True),
    Column("observed_at", TIMESTAMP, nullable=False),
    Column("accepted_at", TIMESTAMP, nullable=False),
    PrimaryKeyConstraint("pair", "source"),
)

oracle_rejections = Table(
    "oracle_rejections",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("pair", PAIR, nullable=False),
    Column("source", String(10), nullable=True),  # NULL: the pair as a whole (a composed feed)
    Column("rule", String(20), nullable=False),
    Column("detail", Text, nullable=False),
    Column("observed", String(200), nullable=True),
    Column("at", TIMESTAMP, nullable=False),
    Index("ix_oracle_rejections_pair", "pair", "id"),
)
