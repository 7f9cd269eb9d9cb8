"""The Integration DB's tables (SQLAlchemy Core), the same on PostgreSQL and SQLite.

Every table ingestion writes is keyed so that replaying an update is a no-op: updates by update id,
history entries by (update id, node id), holdings and instructions by contract id, journal
transactions by a key derived from the update. Money is ``NUMERIC(38, 10)`` on PostgreSQL and the
canonical decimal string on SQLite (never REAL).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    TypeDecorator,
    text,
)

from sluice.domain.amounts import format_amount

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
metadata = MetaData(naming_convention=NAMING)


class Money(TypeDecorator[Decimal]):
    """An exact amount: NUMERIC(38, 10) where the database has it, else the canonical string."""

    impl = Numeric(38, 10)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(48))
        return dialect.type_descriptor(Numeric(38, 10, asdecimal=True))

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None:
            return None
        if dialect.name == "sqlite":
            return format_amount(value)
        return value

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        if value is None:
            return None
        return Decimal(value) if not isinstance(value, Decimal) else value


PARTY = String(512)
CONTRACT_ID = String(512)
UPDATE_ID = String(256)
TIMESTAMP = String(32)  # canonical RFC 3339 text, fixed width, so text order is time order

ledger_cursors = Table(
    "ledger_cursors",
    metadata,
    Column("connection", String(600), primary_key=True),
    Column("party", PARTY, nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("update_id", UPDATE_ID, nullable=True),
    Column("record_time", TIMESTAMP, nullable=True),
    Column("synchronizer_id", String(512), nullable=True),
    Column("updated_at", TIMESTAMP, nullable=False),
)

ingested_updates = Table(
    "ingested_updates",
    metadata,
    Column("update_id", UPDATE_ID, primary_key=True),
    Column("connection", String(600), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("record_time", TIMESTAMP, nullable=False),
    # "ingested", or "quarantined" when an operator set a malformed update aside.
    Column("status", String(16), nullable=False),
)

quarantined_updates = Table(
    "quarantined_updates",
    metadata,
    Column("update_id", UPDATE_ID, primary_key=True),
    Column("connection", String(600), nullable=True),
    Column("offset", BigInteger, nullable=True),
    Column("problem", Text, nullable=True),
    Column("raw", Text, nullable=True),
    Column("requested_by", String(200), nullable=False),
    Column("requested_at", TIMESTAMP, nullable=False),
    # Set once ingestion has skipped past it.
    Column("skipped_at", TIMESTAMP, nullable=True),
)

ingestion_failures = Table(
    "ingestion_failures",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("connection", String(600), nullable=False),
    Column("update_id", UPDATE_ID, nullable=True),
    Column("offset", BigInteger, nullable=True),
    Column("problem", Text, nullable=False),
    Column("raw", Text, nullable=True),
    Column("failed_at", TIMESTAMP, nullable=False),
)

instruments = Table(
    "instruments",
    metadata,
    Column("admin", PARTY, nullable=False),
    Column("id", String(200), nullable=False),
    Column("registry_url", String(1000), nullable=True),
    Column("trusted", Boolean, nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("transfer_kinds", String(100), nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("limits", Text, nullable=True),  # JSON object of amounts
    PrimaryKeyConstraint("admin", "id"),
)

customers = Table(
    "customers",
    metadata,
    Column("id", String(100), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
    # The script(s) the name is written in ("latin", "arabic", "han+kana"…); NULL for a
    # customer registered before scripts were recorded.
    Column("name_script", String(40), nullable=True),
    # The KYC registry (DESIGN §6): tier 0 (none) … 4, and a status that gates every operation.
    Column("kyc_tier", Integer, nullable=False, server_default="1"),
    Column("kyc_status", String(20), nullable=False, server_default="active"),
    Column("status_reason", Text, nullable=True),
    Column("risk_score", Integer, nullable=False, server_default="0"),
    Column("risk_flags", Text, nullable=True),  # JSON list
    Column("sanctions_match", Text, nullable=True),  # JSON object of the last screening hit
    Column("kyc_updated_at", TIMESTAMP, nullable=True),
)

# A customer's other names (other scripts, maiden names, aliases), screened like the primary one
# (``customers.name``), in the order they were given.
customer_names = Table(
    "customer_names",
    metadata,
    Column("customer_id", String(100), ForeignKey("customers.id"), primary_key=True),
    Column("name", String(200), primary_key=True),
    Column("script", String(40), nullable=False),
    Column("position", Integer, nullable=False),
    Column("added_by", String(200), nullable=False),
    Column("added_at", TIMESTAMP, nullable=False),
)

deposit_accounts = Table(
    "deposit_accounts",
    metadata,
    # The id the customer puts in the reason of a deposit.
    Column("id", String(200), primary_key=True),
    Column("customer_id", String(100), ForeignKey("customers.id"), nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
)

holdings = Table(
    "holdings",
    metadata,
    Column("contract_id", CONTRACT_ID, primary_key=True),
    Column("owner", PARTY, nullable=False),
    Column("instrument_admin", PARTY, nullable=False),
    Column("instrument_id", String(200), nullable=False),
    Column("amount", Money, nullable=False),
    Column("lock_holders", Text, nullable=True),  # JSON list, null when unlocked
    Column("lock_expires_at", TIMESTAMP, nullable=True),
    Column("lock_context", Text, nullable=True),
    Column("created_update_id", UPDATE_ID, nullable=False),
    Column("created_offset", BigInteger, nullable=False),
    Column("archived_update_id", UPDATE_ID, nullable=True),
    Column("archived_offset", BigInteger, nullable=True),
    # The withdrawal, merge or split whose current attempt may spend it (at most one).
    Column("reserved_by", String(100), nullable=True, index=True),
    Index("ix_holdings_active", "owner", "instrument_admin", "instrument_id", "archived_update_id"),
)

transfer_instructions = Table(
    "transfer_instructions",
    metadata,
    Column("contract_id", CONTRACT_ID, primary_key=True),
    Column("correlation_id", CONTRACT_ID, nullable=False, index=True),
    Column("original_instruction_cid", CONTRACT_ID, nullable=True),
    Column("direction", String(8), nullable=False),  # "in" | "out" (self → "out")
    Column("sender", PARTY, nullable=False),
    Column("receiver", PARTY, nullable=False),
    Column("instrument_admin", PARTY, nullable=False),
    Column("instrument_id", String(200), nullable=False),
    Column("amount", Money, nullable=False),
    Column("reason", Text, nullable=True),
    Column("requested_at", TIMESTAMP, nullable=False),
    Column("execute_before", TIMESTAMP, nullable=False),
    Column("input_holding_cids", Text, nullable=False),  # JSON list
    Column("transfer_meta", Text, nullable=False),  # JSON object
    Column("status", String(40), nullable=False, index=True),
    Column("created_update_id", UPDATE_ID, nullable=False),
    Column("closed_update_id", UPDATE_ID, nullable=True),
)

history_entries = Table(
    "history_entries",
    metadata,
    Column("update_id", UPDATE_ID, nullable=False),
    Column("node_id", Integer, nullable=False),
    Column("connection", String(600), nullable=False),
    Column("offset", BigInteger, nullable=False),
    Column("record_time", TIMESTAMP, nullable=False),
    Column("kind", String(20), nullable=False),
    Column("status", String(20), nullable=True),
    Column("sender", PARTY, nullable=True),
    Column("receiver", PARTY, nullable=True),
    Column("instrument_admin", PARTY, nullable=True),
    Column("instrument_id", String(200), nullable=True),
    Column("amount", Money, nullable=True),
    Column("reason", Text, nullable=True),
    Column("correlation_id", CONTRACT_ID, nullable=True),
    Column("holdings_created", Text, nullable=False),  # JSON list of contract ids
    Column("holdings_archived", Text, nullable=False),
    # What the exchange did with it: credited, suspense, fee, pending, none, review.
    Column("disposition", String(20), nullable=False),
    Column("customer_id", String(100), nullable=True),
    PrimaryKeyConstraint("update_id", "node_id"),
    Index("ix_history_entries_offset", "connection", "offset"),
    # A customer's history (credited deposits, and the transfers of their withdrawals by reason).
    Index("ix_history_entries_customer", "customer_id", "record_time"),
    # Hash on PostgreSQL: a reason is whatever a sender wrote, and a long one must never fail
    # ingestion on a B-tree's row-size limit.
    Index("ix_history_entries_reason", "reason", postgresql_using="hash"),
)

accounts = Table(
    "accounts",
    metadata,
    # "<name>|<instrument admin>|<instrument id>", e.g. "customer:c1|DSO::1220..|Amulet".
    Column("id", String(1200), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("instrument_admin", PARTY, nullable=False),
    Column("instrument_id", String(200), nullable=False),
    Column("side", String(10), nullable=False),  # "asset" | "liability"
    # The cached balance in the account's natural sign (assets: debits − credits).
    Column("balance", Money, nullable=False),
)

journal_transactions = Table(
    "journal_transactions",
    metadata,
    # Chosen by the writer and unique: a replayed effect writes the same key and is refused.
    Column("id", String(700), primary_key=True),
    Column("kind", String(40), nullable=False),
    Column("update_id", UPDATE_ID, nullable=True, index=True),
    Column("description", Text, nullable=True),
    Column("created_at", TIMESTAMP, nullable=False),
)

journal_postings = Table(
    "journal_postings",
    metadata,
    Column("transaction_id", String(700), ForeignKey("journal_transactions.id"), nullable=False),
    Column("seq", Integer, nullable=False),
    Column("account_id", String(1200), ForeignKey("accounts.id"), nullable=False, index=True),
    # Signed: debits positive, credits negative; a transaction's postings sum to zero.
    Column("amount", Money, nullable=False),
    PrimaryKeyConstraint("transaction_id", "seq"),
)

alerts = Table(
    "alerts",
    metadata,
    # Derived from what raised it, so a replay raises nothing new.
    Column("id", String(700), primary_key=True),
    Column("severity", String(10), nullable=False),  # critical | warning | info
    Column("kind", String(60), nullable=False, index=True),
    Column("message", Text, nullable=False),
    Column("update_id", UPDATE_ID, nullable=True),
    Column("details", Text, nullable=True),  # JSON
    Column("created_at", TIMESTAMP, nullable=False),
    Column("acknowledged_at", TIMESTAMP, nullable=True),
    # Alert rules and notification (migration 0011).
    Column("rule", String(100), nullable=True),  # the rule that raised it, if any
    Column("acknowledged_by", String(200), nullable=True),
    Column("resolved_at", TIMESTAMP, nullable=True),
    Column("last_seen_at", TIMESTAMP, nullable=True),  # deduplicated: raised again while open
    Column("occurrences", Integer, nullable=False, server_default=text("1")),
    Column("notified_at", TIMESTAMP, nullable=True),
    Column("notify_attempts", Integer, nullable=False, server_default=text("0")),
    # Read every evaluation / notification round without the resolved history (0011).
    Index(
        "ix_alerts_unresolved",
        "rule",
        "severity",
        postgresql_where=text("resolved_at IS NULL"),
        sqlite_where=text("resolved_at IS NULL"),
    ),
    Index(
        "ix_alerts_to_notify",
        "severity",
        "created_at",
        postgresql_where=text("notified_at IS NULL"),
        sqlite_where=text("notified_at IS NULL"),
    ),
)

withdrawals = Table(
    "withdrawals",
    metadata,
    # Derived from (customer, idempotency key) for withdrawals; the reason of its transfers.
    Column("id", String(100), primary_key=True),
    Column("kind", String(16), nullable=False),  # withdrawal | merge | split | return
    Column("customer_id", String(100), nullable=True),
    Column("idempotency_key", String(200), nullable=True),
    Column("sender", PARTY, nullable=False),
    Column("receiver", PARTY, nullable=False),
    Column("instrument_admin", PARTY, nullable=False),
    Column("instrument_id", String(200), nullable=False),
    Column("amount", Money, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column("attempt", Integer, nullable=False),
    Column("attempts_max", Integer, nullable=False),
    Column("trec_tgt", TIMESTAMP, nullable=True),
    Column("inputs", Text, nullable=False),  # JSON list: the current attempt's reserved inputs
    Column("requested_at", TIMESTAMP, nullable=True),
    Column("instruction_cid", CONTRACT_ID, nullable=True),  # the offer's correlation id
    Column("offered_at", TIMESTAMP, nullable=True),
    Column("outcome_update_id", UPDATE_ID, nullable=True),
    Column("failure", Text, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("rebuilt", Boolean, nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("updated_at", TIMESTAMP, nullable=False),
    Index("ix_withdrawals_customer", "customer_id", "idempotency_key", unique=True),
)

withdrawal_attempts = Table(
    "withdrawal_attempts",
    metadata,
    Column("withdrawal_id", String(100), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("inputs", Text, nullable=False),  # JSON list
    Column("trec_tgt", TIMESTAMP, nullable=False),
    Column("outcome", String(40), nullable=True),
    Column("error", Text, nullable=True),
    Column("created_at", TIMESTAMP, nullable=False),
    PrimaryKeyConstraint("withdrawal_id", "attempt"),
)

deposit_offer_actions = Table(
    "deposit_offer_actions",
    metadata,
    # What the deposit worker did about an incoming offer (by the instruction's contract id).
    Column("instruction_cid", CONTRACT_ID, primary_key=True),
    Column("action", String(16), nullable=False),  # accept | reject
    Column("decided", Text, nullable=False),  # why
    Column("attempts", Integer, nullable=False),
    Column("last_error", Text, nullable=True),
    Column("updated_at", TIMESTAMP, nullable=False),
)

control = Table(
    "control",
    metadata,
    # Operator switches, e.g. "withdrawals_hold_until".
    Column("key", String(100), primary_key=True),
    Column("value", Text, nullable=True),
    Column("updated_at", TIMESTAMP, nullable=False),
)


# --- compliance (DESIGN §6) -----------------------------------------------------------------------

compliance_limits = Table(
    "compliance_limits",
    metadata,
    # An officer's override of the configured ladder for one (tier, operation); null = no limit.
    Column("tier", Integer, nullable=False),
    Column("operation", String(20), nullable=False),
    Column("per_operation", Money, nullable=True),
    Column("daily", Money, nullable=True),
    Column("monthly", Money, nullable=True),
    Column("updated_by", String(200), nullable=False),
    Column("updated_at", TIMESTAMP, nullable=False),
    PrimaryKeyConstraint("tier", "operation"),
)

compliance_usage = Table(
    "compliance_usage",
    metadata,
    # What each allowed operation used of its customer's limits, written in the operation's own
    # transaction; keyed by the operation so a replay records nothing twice. The key is a 16-byte
    # digest of the operation id (``store.compliance_usage.operation_key``) and the counterparty
    # index holds a 64-bit digest of the party (``counterparty_key``; a look-up also compares the
    # party itself): the ids are ~160 characters, and indexes of them were most of the pages
    # every batch of usage rows rewrote.
    Column("operation_key", LargeBinary(16), primary_key=True),
    Column("operation_id", String(300), nullable=False),
    Column("customer_id", String(100), nullable=False),
    Column("operation", String(20), nullable=False),
    Column("amount", Money, nullable=False),  # in reference units
    Column("counterparty", PARTY, nullable=True),
    Column("counterparty_key", BigInteger, nullable=True),
    Column("occurred_at", TIMESTAMP, nullable=False),
    Index("ix_compliance_usage_customer", "customer_id", "occurred_at"),
    Index("ix_compliance_usage_counterparty", "customer_id", "counterparty_key", "occurred_at"),
)

compliance_usage_totals = Table(
    "compliance_usage_totals",
    metadata,
    # The usage rows summed per customer, operation and hour or day (``length_s`` 3600 / 86400),
    # kept in the same transactions as the rows; decisions read these instead of every row.
    Column("customer_id", String(100), nullable=False),
    Column("length_s", Integer, nullable=False),
    Column("starts_at", TIMESTAMP, nullable=False),
    Column("operation", String(20), nullable=False),
    Column("amount", Money, nullable=False),  # in reference units
    Column("count", Integer, nullable=False),
    PrimaryKeyConstraint("customer_id", "length_s", "starts_at", "operation"),
)

compliance_usage_versions = Table(
    "compliance_usage_versions",
    metadata,
    # Moves by one in every transaction that changes a customer's usage rows (and their totals),
    # in that transaction. A reader that kept a customer's usage in memory (ingestion, across its
    # batches) trusts what it kept only while the version is the one it saw or wrote itself.
    # No row: version 0.
    Column("customer_id", String(100), primary_key=True),
    Column("version", BigInteger, nullable=False),
)

flagged_addresses = Table(
    "flagged_addresses",
    metadata,
    # A party (or any address) whose every operation is refused until an officer unflags it.
    Column("address", String(600), primary_key=True),
    Column("reason", Text, nullable=False),
    Column("flagged_by", String(200), nullable=False),
    Column("flagged_at", TIMESTAMP, nullable=False),
)

compliance_holds = Table(
    "compliance_holds",
    metadata,
    # A deposit that arrived but was not credited: booked to the compliance-hold account.
    Column("id", String(700), primary_key=True),
    Column("customer_id", String(100), nullable=True),
    Column("deposit_account", String(200), nullable=True),
    Column("sender", PARTY, nullable=False),
    Column("instrument_admin", PARTY, nullable=False),
    Column("instrument_id", String(200), nullable=False),
    Column("amount", Money, nullable=False),
    Column("update_id", UPDATE_ID, nullable=False),
    Column("why", Text, nullable=False),
    Column("status", String(20), nullable=False, index=True),  # held | released | returned
    Column("held_at", TIMESTAMP, nullable=False),
    Column("decided_by", String(200), nullable=True),
    Column("decided_at", TIMESTAMP, nullable=True),
    Column("withdrawal_id", String(100), nullable=True),  # the return's withdrawal
)

compliance_reviews = Table(
    "compliance_reviews",
    metadata,
    # The compliance officer's queue.
    Column("id", String(700), primary_key=True),
    Column("kind", String(40), nullable=False),
    Column("customer_id", String(100), nullable=True, index=True),
    Column("subject", String(700), nullable=True),
    Column("reason", Text, nullable=False),
    Column("opened_at", TIMESTAMP, nullable=False),
    Column("closed_at", TIMESTAMP, nullable=True, index=True),
    Column("closed_by", String(200), nullable=True),
    Column("resolution", Text, nullable=True),
)

audit_records = Table(
    "audit_records",
    metadata,
    # Append-only and hash-chained: hash = sha256(previous_hash + canonical record). Triggers
    # refuse UPDATE and DELETE; `sluice audit verify` finds what was changed anyway.
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("operation_id", String(300), nullable=False, index=True),
    Column("recorded_at", TIMESTAMP, nullable=False),
    Column("actor", String(200), nullable=False),
    Column("customer_id", String(100), nullable=True, index=True),
    Column("kyc", Text, nullable=True),  # JSON: tier and status at the time
    Column("operation", String(60), nullable=False),
    Column("parameters", Text, nullable=False),  # JSON
    Column("checks", Text, nullable=False),  # JSON list
    Column("state_changes", Text, nullable=False),  # JSON list
    Column("error", Text, nullable=True),
    Column("previous_hash", String(64), nullable=False),
    # The request that caused it (the API's correlation id); hashed only when present.
    Column("correlation_id", String(100), nullable=True, index=True),
    Column("hash", String(64), nullable=False),
)

audit_head = Table(
    "audit_head",
    metadata,
    # One row: the last record's seq and hash. Appenders lock it, so the chain stays a line, and
    # a record cut off the end is caught.
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("seq", BigInteger, nullable=False),
    Column("hash", String(64), nullable=False),
)


# --- access control and controls (DESIGN §10) ---------------------------------------------------

api_keys = Table(
    "api_keys",
    metadata,
    # The key is shown once at creation; only the sha256 of its secret part is kept.
    Column("id", String(40), primary_key=True),
    Column("secret_hash", String(64), nullable=False),
    Column("role", String(20), nullable=False),
    Column("customer_id", String(100), nullable=True),
    Column("label", String(200), nullable=True),
    Column("created_by", String(300), nullable=False),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("revoked_by", String(300), nullable=True),
    Column("revoked_at", TIMESTAMP, nullable=True),
)

approvals = Table(
    "approvals",
    metadata,
    # A critical operation waiting for (or done with) its M-of-N approvals.
    Column("id", String(120), primary_key=True),
    Column("operation", String(40), nullable=False),
    Column("parameters", Text, nullable=False),  # JSON
    Column("proposed_by", String(300), nullable=False),
    Column("proposed_at", TIMESTAMP, nullable=False),
    Column("required", Integer, nullable=False),
    Column("status", String(16), nullable=False, index=True),
    Column(
        "votes", Text, nullable=False
    ),  # JSON list of {principal_id, role, decision, at, comment}
    Column("customer_id", String(100), nullable=True, index=True),
    Column("timelock_s", Float, nullable=False),
    Column("effective_at", TIMESTAMP, nullable=True),
    Column("executed_at", TIMESTAMP, nullable=True),
    Column("result", Text, nullable=True),  # JSON
    Column("error", Text, nullable=True),
    Column("correlation_id", String(100), nullable=True),
    Column("reason", Text, nullable=True),
)

runtime_settings = Table(
    "runtime_settings",
    metadata,
    # Configuration changed at run time: each value with the time it takes effect (after the
    # time lock). The value in force is the latest row whose effective_at has passed.
    Column("key", String(100), nullable=False),
    Column("effective_at", TIMESTAMP, nullable=False),
    Column("value", Text, nullable=False),  # JSON
    Column("set_by", String(300), nullable=False),
    Column("approval_id", String(120), nullable=True),
    PrimaryKeyConstraint("key", "effective_at"),
)

suspense_assignments = Table(
    "suspense_assignments",
    metadata,
    # A deposit credited to suspense (no or unknown reason) that was later given to a customer;
    # keyed like the history entry it came from, so it can be assigned only once.
    Column("update_id", UPDATE_ID, nullable=False),
    Column("node_id", Integer, nullable=False),
    Column("customer_id", String(100), nullable=False),
    Column("instrument_admin", PARTY, nullable=False),
    Column("instrument_id", String(200), nullable=False),
    Column("amount", Money, nullable=False),
    Column("assigned_by", String(300), nullable=False),
    Column("assigned_at", TIMESTAMP, nullable=False),
    Column("approval_id", String(120), nullable=True),
    Column("reason", Text, nullable=True),
    PrimaryKeyConstraint("update_id", "node_id"),
)
