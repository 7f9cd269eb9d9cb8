"""The Integration DB's Bitcoin custody tables: addresses, the watcher's blocks, custody outputs,
payouts and the batches that pay them. Amounts are whole satoshis (``BIGINT``).

The watcher writes ``btc_blocks``, ``btc_outputs`` (outputs to custody addresses, and which
transaction spent them) in one transaction per block, with its cursor, which is the highest row of
``btc_blocks``. The payouts worker writes ``btc_payouts`` and ``btc_batches`` and reserves
outputs for a batch (``btc_outputs.reserved_by``); it learns that a batch was mined from the
spends the watcher recorded, by outpoint, so a replaced transaction is still the same batch.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Column, Index, Integer, PrimaryKeyConstraint, String, Table, Text

from sluice.store.tables import TIMESTAMP, metadata

TXID = String(64)
BLOCK_HASH = String(64)
ADDRESS = String(120)

btc_addresses = Table(
    "btc_addresses",
    metadata,
    Column("address", ADDRESS, primary_key=True),
    Column("script_hex", String(140), nullable=False, unique=True),
    Column("branch", Integer, nullable=False),  # 0 deposit (K/0/*), 1 change (K/1/*)
    Column("derivation_index", Integer, nullable=False),
    Column("customer_id", String(100), nullable=True, index=True),  # None for change
    Column("created_at", TIMESTAMP, nullable=False),
    # When an output to it was first seen: the customer is then given a new address.
    Column("funded_at", TIMESTAMP, nullable=True),
    Index("ix_btc_addresses_derivation", "branch", "derivation_index", unique=True),
)

btc_blocks = Table(
    "btc_blocks",
    metadata,
    # The watcher's view of the active chain; the highest row is its cursor. A reorg deletes the
    # rows above the fork point in the same transaction that rolls back what they produced.
    Column("height", Integer, primary_key=True),
    Column("hash", BLOCK_HASH, nullable=False, unique=True),
    Column("previous_hash", BLOCK_HASH, nullable=True),
    Column("outputs", Integer, nullable=False),  # custody outputs found in it
    Column("processed_at", TIMESTAMP, nullable=False),
)

btc_outputs = Table(
    "btc_outputs",
    metadata,
    Column("txid", TXID, nullable=False),
    Column("vout", Integer, nullable=False),
    Column("kind", String(10), nullable=False),  # deposit | change
    Column("address", ADDRESS, nullable=False),
    Column("script_hex", String(140), nullable=False),
    Column("customer_id", String(100), nullable=True, index=True),
    Column("amount_sats", BigInteger, nullable=False),
    # seen | confirmed | reorged | dust | credited
    Column("status", String(10), nullable=False, index=True),
    Column("block_height", Integer, nullable=True),
    Column("block_hash", BLOCK_HASH, nullable=True),
    Column("input_outpoints", Text, nullable=False),  # JSON list of "txid:vout" it spent
    Column("first_seen_at", TIMESTAMP, nullable=False),
    Column("confirmed_at", TIMESTAMP, nullable=True),
    Column("credited_at", TIMESTAMP, nullable=True),
    # The payout batch that has it as an input (never released once that batch was signed).
    Column("reserved_by", String(100), nullable=True, index=True),
    # The transaction that spent it, as seen in a block by the watcher.
    Column("spent_txid", TXID, nullable=True),
    Column("spent_height", Integer, nullable=True),
    Column("spent_block_hash", BLOCK_HASH, nullable=True),
    PrimaryKeyConstraint("txid", "vout"),
    Index("ix_btc_outputs_block", "block_height"),
    Index("ix_btc_outputs_spent_height", "spent_height"),
)

btc_payouts = Table(
    "btc_payouts",
    metadata,
    Column("id", String(200), primary_key=True),  # the requester's id: idempotent
    Column("kind", String(16), nullable=False),  # operator | redemption | return
    Column("address", ADDRESS, nullable=False),
    Column("script_hex", String(140), nullable=False),
    Column("amount_sats", BigInteger, nullable=False),  # requested; the fee is deducted from it
    Column("fee_sats", BigInteger, nullable=True),  # this payout's share of the network fee
    # queued | waiting_fee | batched | broadcast | mined | completed | cancelled
    Column("status", String(12), nullable=False, index=True),
    # The batch that pays it; on a queued payout, the released batch whose successor must pay it
    # (spending that batch's surviving inputs, so the two can never both be mined).
    Column("batch_id", String(100), nullable=True, index=True),
    Column("vout", Integer, nullable=True),  # its output in the batch's current version
    Column("requested_by", String(200), nullable=False),
    Column("requested_at", TIMESTAMP, nullable=False),
    Column("completed_at", TIMESTAMP, nullable=True),
    Column("last_error", Text, nullable=True),
)

btc_batches = Table(
    "btc_batches",
    metadata,
    Column("id", String(100), primary_key=True),
    # The custody outpoints it spends ("txid:vout", JSON list): its identity across fee bumps.
    Column("outpoints", Text, nullable=False),
    # signed | broadcast | mined | confirmed | stuck | orphaned (an input was reorged away) |
    # released (orphaned, and its payouts left to a successor by an operator)
    Column("status", String(10), nullable=False, index=True),
    Column("txid", TXID, nullable=False),  # the current version's (or the mined one's) txid
    Column("raw_hex", Text, nullable=False),  # the current version, signed and final
    Column("versions", Text, nullable=False),  # JSON list of {"txid", "fee_sats", "fee_rate"}
    Column("fee_sats", BigInteger, nullable=False),
    Column("fee_rate_sat_vb", String(24), nullable=False),
    Column("vsize", Integer, nullable=False),
    Column("change_vout", Integer, nullable=True),
    Column("change_address", ADDRESS, nullable=True),
    Column("change_sats", BigInteger, nullable=False),
    Column("broadcast_height", Integer, nullable=True),  # tip when the current version went out
    Column("bumps", Integer, nullable=False),
    Column("mined_height", Integer, nullable=True),
    Column("mined_block_hash", BLOCK_HASH, nullable=True),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("updated_at", TIMESTAMP, nullable=False),
    Column("last_error", Text, nullable=True),
)
