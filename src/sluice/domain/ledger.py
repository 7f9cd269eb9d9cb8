"""The token ledger as the exchange sees it: instruments, holdings, locks, transfers, transfer
instructions, checkpoints and the ingestion cursor.

These are plain values; parsing them out of the JSON Ledger API v2 shape is the job of
:mod:`sluice.domain.history`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Literal

from sluice.domain.errors import InvalidInputError
from sluice.domain.values import value_class

REASON_KEY = "splice.lfdecentralizedtrust.org/reason"
TX_KIND_KEY = "splice.lfdecentralizedtrust.org/tx-kind"
SENDER_KEY = "splice.lfdecentralizedtrust.org/sender"
BURNED_KEY = "splice.lfdecentralizedtrust.org/burned"

TransferKind = Literal["self", "direct", "offer"]
InstructionStatus = Literal[
    "pending_receiver_acceptance",
    "pending_internal_workflow",
    "completed",
    "rejected",
    "withdrawn",
    "failed",
]
PENDING_INSTRUCTION_STATUSES: frozenset[str] = frozenset(
    {"pending_receiver_acceptance", "pending_internal_workflow"}
)


@dataclass(frozen=True, slots=True, order=True)
class InstrumentId:
    """A token: its admin party and the admin's id for it, e.g. (DSO party, "Amulet")."""

    admin: str
    id: str

    def as_json(self) -> dict[str, str]:
        return {"admin": self.admin, "id": self.id}

    def key(self) -> str:
        """One string naming the instrument, for indexes and journal account names."""
        return f"{self.id}@{self.admin}"


@value_class
class Lock:
    holders: tuple[str, ...]
    expires_at: datetime | None = None
    context: str | None = None

    def is_expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


@value_class
class Holding:
    """One UTXO of an instrument owned by a party."""

    contract_id: str
    owner: str
    instrument: InstrumentId
    amount: Decimal
    lock: Lock | None = None

    def is_spendable(self, now: datetime) -> bool:
        return self.lock is None or self.lock.is_expired(now)


@value_class
class Transfer:
    sender: str
    receiver: str
    amount: Decimal
    instrument: InstrumentId
    requested_at: datetime
    execute_before: datetime
    input_holding_cids: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def reason(self) -> str | None:
        return self.meta.get(REASON_KEY)


@value_class
class TransferInstruction:
    """A pending multi-step transfer (an offer the receiver must accept)."""

    contract_id: str
    transfer: Transfer
    status: InstructionStatus
    original_instruction_cid: str | None = None
    meta: Mapping[str, str] = field(default_factory=dict)

    @property
    def correlation_id(self) -> str:
        """Ties the steps of one multi-step transfer together across updates."""
        return self.original_instruction_cid or self.contract_id


@value_class
class Cursor:
    """The last ingested position of one ledger connection."""

    offset: int
    # The last transaction ingested (None while only checkpoints have been seen).
    update_id: str | None
    # The last ingested record time, from transactions and checkpoints alike.
    record_time: datetime | None
    synchronizer_id: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "offset": self.offset,
            "update_id": self.update_id,
            "record_time": format_timestamp(self.record_time) if self.record_time else None,
            "synchronizer_id": self.synchronizer_id,
        }


@value_class
class Checkpoint:
    """The node saying: up to ``offset``, synchronizer record time has reached ``record_time``."""

    offset: int
    synchronizer_id: str
    record_time: datetime


def parse_timestamp(text: object, *, field: str = "timestamp") -> datetime:
    """Read an RFC 3339 timestamp as the Ledger API writes it (``...Z``, 0-9 fraction digits)."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{field}: expected an RFC 3339 string, got {type(text).__name__}")
    if (
        len(text) == 27
        and text[26] == "Z"
        and text[19] == "."
        and text.isascii()
        and text[20:26].isdigit()
    ):
        # The ledger's usual spelling (YYYY-MM-DDTHH:MM:SS.ffffffZ): read as is, it is already
        # UTC (``fromisoformat`` gives ``UTC`` itself for "Z", and ``astimezone`` keeps it).
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            pass  # the general path says what is wrong with it
        else:
            if parsed.tzinfo is UTC:
                return parsed
    value = text
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    # Python reads at most 6 fraction digits; the ledger's precision is microseconds anyway.
    dot = value.find(".")
    if dot != -1:
        end = dot + 1
        while end < len(value) and value[end].isdigit():
            end += 1
        digits = value[dot + 1 : end]
        if len(digits) > 6:
            if digits[6:].strip("0"):
                raise InvalidInputError(f"{field}: {text!r} is more precise than a microsecond")
            value = value[: dot + 7] + value[end:]
    try:
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            raise InvalidInputError(f"{field}: {text!r} has no time zone")
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        if isinstance(exc, InvalidInputError):
            raise
        raise InvalidInputError(f"{field}: {text!r} is not an RFC 3339 timestamp") from exc


def format_timestamp(value: datetime) -> str:
    """Canonical text: UTC, always six fraction digits, so text order is time order."""
    if value.tzinfo is UTC and value.year >= 1000:
        # The same text from isoformat (several times cheaper than strftime): a UTC time's
        # isoformat ends in "+00:00", and strftime pads the year only to its own width.
        return value.isoformat(timespec="microseconds")[:-6] + "Z"
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def check_party_id(text: str) -> str:
    """A party id is ``hint::namespace``; refuse anything else early and clearly."""
    hint, sep, namespace = text.partition("::")
    if not sep or not hint or not namespace or any(c.isspace() for c in text):
        raise InvalidInputError(f"{text!r} is not a party id (expected 'hint::namespace')")
    return text
