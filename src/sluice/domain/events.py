"""Events: what other systems of the exchange learn of every state change (DESIGN §11).

Every state change writes an :class:`Event` in its own transaction (the outbox); a relay
publishes them, at least once and in order per subject, with ``event_id`` as the dedup id. An
event's ``type`` is past tense and names one of :data:`EVENT_TYPES`; its ``payload`` is JSON
(amounts as decimal strings, times as ISO 8601 text). ``schema_version`` moves when a type's
payload changes incompatibly.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.domain.audit.records import current_correlation_id
from sluice.domain.errors import InvalidInputError
from sluice.domain.values import value_class

SUBJECT_PREFIX = "sluice"


@dataclass(frozen=True, slots=True)
class EventType:
    """One kind of event: its aggregate, its payload's schema version and what it means."""

    name: str
    aggregate_type: str
    schema_version: int
    description: str


def _types(*entries: tuple[str, str, str]) -> dict[str, EventType]:
    return {name: EventType(name, aggregate, 1, text) for name, aggregate, text in entries}


# Every event type sluice emits; docs/events.md documents each payload.
EVENT_TYPES: dict[str, EventType] = _types(
    # deposits (token ledger)
    ("deposit_credited", "deposit", "a deposit was credited to a customer's account"),
    ("deposit_held", "deposit", "a deposit was held: suspense or a compliance hold"),
    ("deposit_released", "deposit", "a held deposit was assigned or released to a customer"),
    (
        "inventory_funded",
        "deposit",
        "a deposit in suspense was booked to the exchange's inventory",
    ),
    ("deposit_returned", "deposit", "a held deposit is being returned to its sender"),
    # withdrawals
    ("withdrawal_requested", "withdrawal", "a customer asked for a withdrawal"),
    ("withdrawal_submitted", "withdrawal", "an attempt of a withdrawal went to the ledger"),
    ("withdrawal_completed", "withdrawal", "a withdrawal's transfer is on the ledger"),
    ("withdrawal_failed", "withdrawal", "a withdrawal failed and was refunded"),
    ("withdrawal_cancelled", "withdrawal", "a withdrawal was cancelled and refunded"),
    # transfer offers
    ("offer_accepted", "offer", "an incoming transfer offer was accepted"),
    ("offer_rejected", "offer", "an incoming transfer offer was rejected"),
    # Bitcoin custody
    ("btc_deposit_seen", "btc_deposit", "a Bitcoin deposit was seen in a block"),
    ("btc_deposit_confirmed", "btc_deposit", "a Bitcoin deposit reached its confirmations"),
    ("btc_deposit_reorged", "btc_deposit", "a Bitcoin deposit left the chain in a reorg"),
    ("btc_deposit_held", "btc_deposit", "an iSTSi Bitcoin deposit was held for compliance"),
    ("btc_deposit_released", "btc_deposit", "an officer released a held Bitcoin deposit"),
    ("btc_deposit_returned", "btc_deposit", "an officer had a Bitcoin deposit paid back"),
    ("btc_payout_requested", "btc_payout", "a Bitcoin payout was requested"),
    ("btc_payout_broadcast", "btc_payout", "a Bitcoin payout's transaction was broadcast"),
    ("btc_payout_confirmed", "btc_payout", "a Bitcoin payout reached its confirmations"),
    ("btc_payout_failed", "btc_payout", "a Bitcoin payout failed"),
    # iSTSi issuance
    ("istsi_minted", "issuance", "iSTSi was minted against a Bitcoin deposit"),
    ("istsi_burned", "issuance", "iSTSi was burned for a redemption"),
    ("redemption_requested", "issuance", "a customer asked to redeem iSTSi for Bitcoin"),
    ("redemption_completed", "issuance", "a redemption's Bitcoin payout confirmed"),
    ("redemption_failed", "issuance", "a redemption failed and was compensated"),
    ("issuance_operation_stuck", "issuance", "an issuance operation exhausted its retries"),
    (
        "issuance_operation_compensated",
        "issuance",
        "a Bitcoin deposit's operation was compensated: nothing minted",
    ),
    ("issuance_operation_resolved", "issuance", "an operator closed an issuance operation"),
    # compliance
    ("compliance_action_taken", "customer", "a compliance decision or an officer's action"),
    ("customer_kyc_changed", "customer", "a customer's KYC tier or state changed"),
    # reserves
    ("reserve_updated", "reserve", "a reserve reading was recorded"),
    ("reconciliation_completed", "reserve", "a reconciliation run finished"),
    # alerts, approvals, pauses, breakers
    ("alert_raised", "alert", "an alert was raised"),
    ("alert_acknowledged", "alert", "an operator acknowledged an alert"),
    ("alert_resolved", "alert", "an alert's condition cleared"),
    ("approval_proposed", "approval", "a critical operation awaits approvals"),
    ("approval_signed", "approval", "a principal approved or rejected a proposal"),
    ("approval_executed", "approval", "an approved operation ran"),
    ("approval_cancelled", "approval", "a proposal was cancelled by its proposer"),
    ("system_paused", "system", "the emergency pause was set"),
    ("system_resumed", "system", "the emergency pause was lifted"),
    ("breaker_opened", "breaker", "a circuit breaker opened and paused its flow"),
    ("breaker_closed", "breaker", "a circuit breaker closed and its flow resumed"),
    # the cross-token exchange
    ("swap_executed", "swap", "a customer swapped one instrument for another at a quote"),
)

_TOKEN = re.compile(r"[^A-Za-z0-9_-]")


def subject_token(value: str) -> str:
    """``value`` as one NATS subject token: anything but letters, digits, ``_`` and ``-``
    becomes ``_`` (party ids hold ``:``, instrument keys ``@``)."""
    token = _TOKEN.sub("_", value)
    return token or "_"


@value_class
class Event:
    """The envelope every consumer sees."""

    event_id: str
    type: str
    schema_version: int
    aggregate_type: str
    aggregate_id: str
    correlation_id: str | None
    occurred_at: datetime
    payload: Mapping[str, Any] = field(default_factory=dict)

    @property
    def subject(self) -> str:
        """``sluice.<aggregate_type>.<aggregate_id>`` (each part one subject token)."""
        return (
            f"{SUBJECT_PREFIX}.{subject_token(self.aggregate_type)}"
            f".{subject_token(self.aggregate_id)}"
        )

    def envelope(self) -> dict[str, Any]:
        """The JSON object published: every field, ``occurred_at`` as ISO 8601."""
        return {
            "event_id": self.event_id,
            "type": self.type,
            "schema_version": self.schema_version,
            "aggregate_type": self.aggregate_type,
            "aggregate_id": self.aggregate_id,
            "correlation_id": self.correlation_id,
            "occurred_at": self.occurred_at.isoformat(),
            "payload": dict(self.payload),
        }

    def encode(self) -> bytes:
        return json.dumps(self.envelope(), separators=(",", ":"), default=json_default).encode()


def json_default(value: object) -> object:
    """What ``json.dumps`` writes for the payload values JSON has no form of."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def payload_json(payload: Mapping[str, Any]) -> str:
    """A payload as stored: compact JSON, decimals as strings."""
    return json.dumps(dict(payload), separators=(",", ":"), default=json_default)


def _event_id() -> str:
    """A random version-4 UUID as text (what ``str(uuid.uuid4())`` gives, at a fraction of the
    cost): the version and variant bits are set in the text, not in a copy of the bytes."""
    h = _random_hex32()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


class _RandomPool(threading.local):
    """The operating system's random bytes (``os.urandom``, as ``uuid4`` uses), fetched 4 KiB at a
    time as hex text and handed out 16 bytes at a time: one system call per 256 ids instead of
    one per id (ingestion makes an event per deposit). Each thread has its own pool, so no two
    threads hand out the same bytes, and a forked child starts with an empty one (below), so it
    cannot repeat its parent's; bytes are never handed out twice."""

    def __init__(self) -> None:
        self.hex = ""
        self.at = 0


_POOL_BYTES = 4096
_pool = _RandomPool()


def _random_hex32() -> str:
    pool = _pool
    at = pool.at
    if at >= len(pool.hex):
        pool.hex = os.urandom(_POOL_BYTES).hex()
        at = 0
    pool.at = at + 32
    return pool.hex[at : at + 32]


def _empty_pool_after_fork() -> None:
    global _pool
    _pool = _RandomPool()


os.register_at_fork(after_in_child=_empty_pool_after_fork)


# A random byte's high hex digit → that digit with the variant bits (10xx) set.
_VARIANT = {digit: "89ab"[int(digit, 16) & 0b11] for digit in "0123456789abcdef"}


def decode_event(data: bytes | str) -> Event:
    """An envelope as published, back into an :class:`Event` (raises InvalidInputError)."""
    try:
        raw = json.loads(data)
        return Event(
            event_id=str(raw["event_id"]),
            type=str(raw["type"]),
            schema_version=int(raw["schema_version"]),
            aggregate_type=str(raw["aggregate_type"]),
            aggregate_id=str(raw["aggregate_id"]),
            correlation_id=raw.get("correlation_id"),
            occurred_at=datetime.fromisoformat(raw["occurred_at"]),
            payload=dict(raw.get("payload") or {}),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"not a sluice event envelope: {exc}") from exc


def new_event(
    type: str,
    aggregate_id: str,
    payload: Mapping[str, Any],
    *,
    at: datetime,
    correlation_id: str | None = None,
    event_id: str | None = None,
) -> Event:
    """An event of a known ``type`` (its aggregate type and schema version from the
    catalogue); the correlation id defaults to the request's (``current_correlation_id``)."""
    kind = EVENT_TYPES.get(type)
    if correlation_id is None:
        correlation_id = current_correlation_id.get()
    if kind is None:
        raise ValueError(f"unknown event type {type!r}: add it to EVENT_TYPES and docs/events.md")
    return Event(
        event_id=event_id or _event_id(),
        type=type,
        schema_version=kind.schema_version,
        aggregate_type=kind.aggregate_type,
        aggregate_id=str(aggregate_id),
        correlation_id=correlation_id,
        occurred_at=at,
        payload=payload,
    )
