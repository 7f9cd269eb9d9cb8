"""The audit trail's records and their hash chain (DESIGN §6).

Every compliance decision and every state-changing operation appends one record. Each record's
hash covers its canonical content and the previous record's hash, so changing, removing or
reordering a record breaks the chain from that point on, and verification names the record.

Guarantees:

* **Canonical content.** A record's content (its seq and every field of its entry) has exactly one
  serialisation: compact JSON with sorted keys, UTF-8. Timestamps are canonical UTC text, decimals
  are their plain text, integers beyond 64 bits are decimal text, tuples are lists, enums are their
  values. What the log stores is this same normalised form, so a record read back hashes exactly as
  it did when it was appended. A value that has no canonical form (a naive datetime, a float that
  is not finite, an arbitrary object) is refused with :class:`InvalidInputError` naming the field.
* **The chain.** ``hash = sha256(previous_hash ‖ canonical content)``; the first record links to
  :data:`GENESIS_HASH`. The head (last seq and hash) is kept apart, so a record cut off the end is
  caught too.
* **Verification names the record.** :class:`ChainVerifier` reads the records once, in seq order,
  keeping only the records around a break (at most :data:`DETAIL_MAX`), and explains each break:
  a record whose content no longer matches its hash was *modified*; a record gone from the middle
  or the start was *deleted*, from the end *truncated*; a record found at another seq than it was
  written at was *reordered* (it proves its true seq: its hash matches its content at that seq);
  a record no later record links to while another holds its place was *inserted*; a record whose
  hash was recomputed after a change is named through the link its successor no longer makes.
  A chain rewritten wholesale from some record on (every later hash recomputed) is caught only by
  the head, or by a checkpoint kept elsewhere (``start`` of :class:`ChainVerifier`).

The parts: :mod:`.records` (entries, records, canonical content and the chain's hashes) and
:mod:`.verification` (:class:`ChainVerifier` and what it finds).
"""

from __future__ import annotations

from .records import (
    FIELD_LENGTH_MAX,
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    FloatFreeArray,
    FloatFreeContent,
    FloatFreeObject,
    bytes_hash,
    canonical_bytes,
    canonical_content,
    chain_entries,
    chain_hash,
    check_entry,
    content_hash,
    current_correlation_id,
    json_value,
    timestamp_text,
)
from .verification import (
    DETAIL_MAX,
    FINDINGS_MAX,
    ChainVerification,
    ChainVerifier,
    Finding,
    FindingKind,
    verify_chain,
)

__all__ = [
    "DETAIL_MAX",
    "FIELD_LENGTH_MAX",
    "FINDINGS_MAX",
    "GENESIS_HASH",
    "AuditEntry",
    "AuditRecord",
    "ChainVerification",
    "ChainVerifier",
    "Finding",
    "FindingKind",
    "FloatFreeArray",
    "FloatFreeContent",
    "FloatFreeObject",
    "bytes_hash",
    "canonical_bytes",
    "canonical_content",
    "chain_entries",
    "chain_hash",
    "check_entry",
    "content_hash",
    "current_correlation_id",
    "json_value",
    "timestamp_text",
    "verify_chain",
]
