"""The Integration DB's web sessions: one row per signed-in browser (``docs/web.md``).

A session is found by the SHA-256 of its cookie's token (the token itself is never stored). It
names its principal as the API does (``key:<id>``, ``jwt:<subject>``), with the role and, for a
customer, the customer; its CSRF token; when it was made, last used, when it expires and when
(if ever) it was revoked."""

from __future__ import annotations

from sqlalchemy import Column, Index, String, Table

from sluice.store.tables import TIMESTAMP, metadata

web_sessions = Table(
    "web_sessions",
    metadata,
    Column("id", String(64), primary_key=True),  # sha256 hex of the cookie's token
    Column("principal_id", String(200), nullable=False),
    Column("role", String(40), nullable=False),
    Column("customer_id", String(100), nullable=True),
    Column("csrf", String(64), nullable=False),
    Column("client", String(100), nullable=True),
    Column("created_at", TIMESTAMP, nullable=False),
    Column("last_seen_at", TIMESTAMP, nullable=False),
    Column("expires_at", TIMESTAMP, nullable=False),
    Column("revoked_at", TIMESTAMP, nullable=True),
    Index("ix_web_sessions_principal_id", "principal_id"),
)
