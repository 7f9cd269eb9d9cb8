"""The Integration DB's iSTSi issuance tables: the router's durable operations and their steps,
the mints and burns it decided, its switches (the mint guard's row), the admin's decisions on
held transfers, customers' own parties, and the contract addresses in force. Amounts are whole
satoshis (``BIGINT``); JSON columns hold text.
"""

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

OPERATION_ID = String(200)

issuance_operations = Table(
    "issuance_operations",
    metadata,
    # bitcoin_deposit: "btc-deposit:<txid>:<vout>"; token_withdrawal: "redeem:<customer>:<key>".
    Column("id", OPERATION_ID, primary_key=True),
    Column("type", String(20), nullable=False),
    Column("correlation_id", String(100), nullable=False),
    # pending | waiting | held | stuck | completed | compensated | resolved | returned
    Column("status", String(12), nullable=False),
    Column("customer_id", String(100), nullable=False, index=True),
    Column("amount_sats", BigInteger, nullable=False),
    Column("step", String(40), nullable=False),  # the step to run next; "done" at the end
    Column("attempts", Integer, nullable=False),  # failed attempts of that step
    Column("params", Text, nullable=False),  # JSON: what it was created with
    Column("result", Text, nullable=False),  # JSON: what its steps produced
    Column("last_error", Text, nullable=True),
    Column("next_attempt_at", TIMESTAMP, nullable=True),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("updated_at", TIMESTAMP, nullable=False),
    Column("completed_at", TIMESTAMP, nullable=True),
    Column("version", Integer, nullable=False),  # optimistic concurrency: +1 per update
    Index("ix_issuance_operations_due", "status", "next_attempt_at"),
    Index("ix_issuance_operations_type", "type", "created_at"),
)

issuance_steps = Table(
    "issuance_steps",
    metadata,
    Column("operation_id", OPERATION_ID, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("step", String(40), nullable=False),
    Column("kind", String(12), nullable=False),  # step | compensation | override
    Column("outcome", String(8), nullable=False),  # done | wait | retry | hold | fail
    Column("attempt", Integer, nullable=False),
    Column("detail", Text, nullable=False),  # JSON
    Column("error", Text, nullable=True),
    Column("at", TIMESTAMP, nullable=False),
    PrimaryKeyConstraint("operation_id", "seq"),
)

issuance_mints = Table(
    "issuance_mints",
    metadata,
    Column("id", String(220), primary_key=True),  # the ledger command id
    Column("operation_id", OPERATION_ID, nullable=False, index=True),
    Column("customer_id", String(100), nullable=False),
    Column("owner", String(512), nullable=False),
    Column("amount_sats", BigInteger, nullable=False),
    Column("reason", String(240), nullable=False, unique=True),  # what the ledger's mint carries
    Column("status", String(10), nullable=False),  # submitted | committed | failed
    Column("update_id", String(200), nullable=True),
    Column("credited", Boolean, nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
)

issuance_burns = Table(
    "issuance_burns",
    metadata,
    Column("id", String(220), primary_key=True),  # the ledger command id
    Column("operation_id", OPERATION_ID, nullable=False, index=True),
    Column("customer_id", String(100), nullable=False),
    Column("owner", String(512), nullable=False),
    Column("amount_sats", BigInteger, nullable=False),
    Column("reason", String(240), nullable=False, unique=True),
    Column("status", String(10), nullable=False),  # submitted | committed | failed
    Column("update_id", String(200), nullable=True),
    Column("created_at", TIMESTAMP, nullable=False),
)

issuance_state = Table(
    "issuance_state",
    metadata,
    # One row (id 1). Every mint updates ``guard_seq`` first: that takes the lock that makes two
    # mints check the guard one after the other, on both engines.
    Column("id", Integer, primary_key=True),
    Column("guard_seq", BigInteger, nullable=False),
    Column("minting_halted", Boolean, nullable=False),
    Column("halted_reason", Text, nullable=True),
    Column("halted_at", TIMESTAMP, nullable=True),
)

issuance_transfer_decisions = Table(
    "issuance_transfer_decisions",
    metadata,
    Column("instruction_cid", String(512), primary_key=True),
    Column("sender", String(512), nullable=False),
    Column("receiver", String(512), nullable=False),
    Column("amount_sats", BigInteger, nullable=False),
    Column("approve", Boolean, nullable=False),
    Column("reason", Text, nullable=False),
    Column("decided_at", TIMESTAMP, nullable=False),
    Column("update_id", String(200), nullable=True),
)

customer_parties = Table(
    "customer_parties",
    metadata,
    Column("party", String(512), primary_key=True),
    Column("customer_id", String(100), nullable=False, unique=True),
    # The customer chose to receive minted iSTSi at this party instead of their exchange account.
    Column("mint_to_party", Boolean, nullable=False),
    Column("registered_at", TIMESTAMP, nullable=False),
)

issuance_contracts = Table(
    "issuance_contracts",
    metadata,
    Column("approval_id", String(120), primary_key=True),
    Column("addresses", Text, nullable=False),  # JSON of ContractAddresses
    Column("effective_at", TIMESTAMP, nullable=False, index=True),
    Column("recorded_at", TIMESTAMP, nullable=False),
)
