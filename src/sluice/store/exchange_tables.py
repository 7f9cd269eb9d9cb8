"""The exchange's tables: every quote given (``exchange_quotes``) and every swap executed
(``exchange_swaps``, keyed by its quote's id: the idempotency key, so a quote is executed at
most once whatever the retries). Amounts are ``Money``; rates and impacts exact decimal text."""

from __future__ import annotations

from sqlalchemy import Column, Index, String, Table, Text

from sluice.store.tables import PARTY, TIMESTAMP, Money, metadata

QUOTE_ID = String(64)
CUSTOMER_ID = String(100)
INSTRUMENT_ID = String(200)
PAIR = String(65)
RATE = String(100)  # decimal text, exact
ROUND_ID = String(40)  # integer text

exchange_quotes = Table(
    "exchange_quotes",
    metadata,
    Column("id", QUOTE_ID, primary_key=True),
    Column("customer_id", CUSTOMER_ID, nullable=False),
    Column("sell_admin", PARTY, nullable=False),
    Column("sell_id", INSTRUMENT_ID, nullable=False),
    Column("buy_admin", PARTY, nullable=False),
    Column("buy_id", INSTRUMENT_ID, nullable=False),
    Column("sell_amount", Money, nullable=False),
    Column("rate", RATE, nullable=False),
    Column("price_impact", RATE, nullable=False),
    Column("fee_rate", RATE, nullable=False),
    Column("fee_kind", String(10), nullable=False),  # oracle | fallback
    Column("fee_amount", Money, nullable=False),
    Column("gross", Money, nullable=False),
    Column("received", Money, nullable=False),
    Column("minimum_received", Money, nullable=False),
    Column("oracle_pair", PAIR, nullable=False),
    Column("oracle_source", String(10), nullable=False),
    Column("oracle_health", String(10), nullable=False),
    Column("oracle_round", ROUND_ID, nullable=True),
    Column("observed_at", TIMESTAMP, nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("expires_at", TIMESTAMP, nullable=False),
    Index("ix_exchange_quotes_customer", "customer_id", "created_at"),
)

exchange_swaps = Table(
    "exchange_swaps",
    metadata,
    Column("quote_id", QUOTE_ID, primary_key=True),
    Column("customer_id", CUSTOMER_ID, nullable=False),
    Column("sell_admin", PARTY, nullable=False),
    Column("sell_id", INSTRUMENT_ID, nullable=False),
    Column("buy_admin", PARTY, nullable=False),
    Column("buy_id", INSTRUMENT_ID, nullable=False),
    Column("sell_amount", Money, nullable=False),
    Column("rate", RATE, nullable=False),
    Column("price_impact", RATE, nullable=False),
    Column("fee_rate", RATE, nullable=False),
    Column("fee_kind", String(10), nullable=False),
    Column("fee_amount", Money, nullable=False),
    Column("gross", Money, nullable=False),
    Column("received", Money, nullable=False),
    Column("minimum_received", Money, nullable=False),
    Column("journal_transaction_id", String(100), nullable=False),
    Column("oracle_source", String(10), nullable=False),
    Column("oracle_health", String(10), nullable=False),
    Column("oracle_round", ROUND_ID, nullable=True),
    Column("warnings", Text, nullable=False),  # JSON list of text
    Column("actor", String(200), nullable=False),
    Column("executed_at", TIMESTAMP, nullable=False),
    Index("ix_exchange_swaps_customer", "customer_id", "executed_at"),
)
