"""Verifying the audit chain: which records were modified, deleted, reordered or inserted.

:class:`ChainVerifier` reads the records once, in seq order, with bounded memory, and explains
each break it finds (see :mod:`sluice.domain.audit`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from sluice.domain.errors import InvalidInputError

from .records import GENESIS_HASH, AuditEntry, AuditRecord, chain_hash

# Bound on the records kept in memory to explain breaks, and on the findings reported.
DETAIL_MAX = 20_000
FINDINGS_MAX = 1_000
# How far from its place a renumbered record is looked for when no neighbour gives its seq away.
_SHIFT_TRIES = (1, -1, 2, -2, 3, -3)

FindingKind = Literal["modified", "deleted", "truncated", "reordered", "inserted", "head"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One break in the chain, naming the record by its seq (the seq it was written at)."""

    seq: int
    operation_id: str | None  # None when the record is gone
    kind: FindingKind
    message: str


@dataclass(frozen=True, slots=True)
class ChainVerification:
    """The outcome of verifying (part of) the chain.

    ``last_seq`` / ``last_hash`` are the last record read, usable as the ``start`` of a later
    verification that only reads what was appended since (a checkpoint).
    """

    ok: bool
    records_checked: int
    findings: list[Finding]
    findings_omitted: int = 0
    last_seq: int = 0
    last_hash: str = GENESIS_HASH


@dataclass(slots=True)
class _Kept:
    """What verification keeps of a record near a break."""

    seq: int  # where it is now
    operation_id: str
    operation: str
    previous_hash: str
    hash: str
    entry: AuditEntry
    damage: str | None
    content_ok: bool
    origin: int | None = None  # the seq it was written at, once proven

    def describe(self, seq: int | None = None) -> str:
        return (
            f"record {self.seq if seq is None else seq} ({self.operation}, "
            f"operation id {self.operation_id})"
        )


def _keep(record: AuditRecord, content_ok: bool) -> _Kept:
    return _Kept(
        seq=record.seq,
        operation_id=record.entry.operation_id,
        operation=record.entry.operation,
        previous_hash=record.previous_hash,
        hash=record.hash,
        entry=record.entry,
        damage=record.damage,
        content_ok=content_ok,
        origin=record.seq if content_ok else None,
    )


def _content_matches(record: AuditRecord, seq: int) -> bool:
    if record.damage is not None:
        return False
    try:
        return chain_hash(record.previous_hash, seq, record.entry) == record.hash
    except InvalidInputError:
        return False  # a stored value no appender could have written


def _proves(kept: _Kept, seq: int) -> bool:
    if kept.damage is not None or seq < 1:
        return False
    try:
        return chain_hash(kept.previous_hash, seq, kept.entry) == kept.hash
    except InvalidInputError:
        return False


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first}–{last}"


class ChainVerifier:
    """Verifies the chain as its records stream past, in seq order, with bounded memory.

    ``start`` is where the records begin: ``(0, GENESIS_HASH)`` for the whole chain, or a
    checkpoint ``(seq, hash)`` trusted from an earlier verification. Feed records with
    :meth:`add`, then call :meth:`finish` with the head as stored.
    """

    def __init__(
        self, start: tuple[int, str] = (0, GENESIS_HASH), *, detail_max: int = DETAIL_MAX
    ) -> None:
        self._start_seq, self._start_hash = start
        self._detail_max = detail_max
        self._seq = self._start_seq
        self._hash = self._start_hash
        self._previous: AuditRecord | None = None
        self._previous_ok = True
        self._kept: dict[int, _Kept] = {}
        self._gaps: list[tuple[int, int]] = []
        self._count = 0
        self._unexplained = 0  # broken records beyond what is kept
        self._unexplained_first: int | None = None

    def add(self, record: AuditRecord) -> None:
        if record.seq <= self._seq:
            raise InvalidInputError(
                f"audit records must come in ascending seq order: {record.seq} after {self._seq}"
            )
        self._count += 1
        content_ok = _content_matches(record, record.seq)
        gap = record.seq > self._seq + 1
        if gap:
            self._gaps.append((self._seq + 1, record.seq - 1))
        if not content_ok or gap or record.previous_hash != self._hash:
            if len(self._kept) + 2 > self._detail_max:
                self._unexplained += 1
                if self._unexplained_first is None:
                    self._unexplained_first = record.seq
            else:
                previous = self._previous
                if previous is not None and previous.seq not in self._kept:
                    self._kept[previous.seq] = _keep(previous, self._previous_ok)
                self._kept[record.seq] = _keep(record, content_ok)
        self._previous = record
        self._previous_ok = content_ok
        self._seq = record.seq
        self._hash = record.hash

    def finish(self, head: tuple[int, str] | None) -> ChainVerification:
        """The verdict, given the chain's head as stored (None: there is no head row)."""
        return _Analysis(self, head).verdict()


class _Analysis:
    """Explains the breaks :class:`ChainVerifier` kept (see the module docstring)."""

    def __init__(self, verifier: ChainVerifier, head: tuple[int, str] | None) -> None:
        self.v = verifier
        self.head = head
        self.kept = verifier._kept
        self.findings: list[Finding] = []
        self.modified: set[int] = set()  # positions
        self.inserted: set[int] = set()  # positions

    def add(self, seq: int, operation_id: str | None, kind: FindingKind, message: str) -> None:
        self.findings.append(Finding(seq, operation_id, kind, message))

    def verdict(self) -> ChainVerification:
        v = self.v
        self._resolve_origins()
        moved = sorted((k for k in self.kept.values() if k.origin not in (None, k.seq)), key=_at)
        last_origin = self._last_origin(moved)
        self._report_modified()
        self._report_inserted(moved)
        self._report_moved(moved)
        self._report_missing(moved, last_origin)
        self._report_links()
        self._report_head(last_origin)
        if v._unexplained:
            first = v._unexplained_first or 0
            self.add(
                first,
                None,
                "modified",
                f"{v._unexplained} more records from record {first} on do not verify "
                "(too many breaks to explain each)",
            )
        order = {"deleted": 0, "truncated": 0, "inserted": 1, "reordered": 2, "modified": 3}
        findings = sorted(self.findings, key=lambda f: (f.seq, order.get(f.kind, 4)))
        unique: list[Finding] = []
        for finding in findings:
            if finding not in unique[-4:]:
                unique.append(finding)
        omitted = max(0, len(unique) - FINDINGS_MAX)
        return ChainVerification(
            ok=not unique,
            records_checked=v._count,
            findings=unique[:FINDINGS_MAX],
            findings_omitted=omitted,
            last_seq=v._seq,
            last_hash=v._hash,
        )

    # -- where each record was written ------------------------------------------------------------

    def _predecessor_origin(self, previous_hash: str, *, assume_in_place: bool) -> int | None:
        if previous_hash == self.v._start_hash:
            return self.v._start_seq
        for kept in self._by_hash.get(previous_hash, ()):
            if kept.origin is not None:
                return kept.origin
            if assume_in_place:
                return kept.seq  # modified in place: its hash is still the one it was written with
        return None

    def _resolve_origins(self) -> None:
        self._by_hash: dict[str, list[_Kept]] = {}
        for kept in self.kept.values():
            self._by_hash.setdefault(kept.hash, []).append(kept)
        unresolved = [k for k in self.kept.values() if k.origin is None and k.damage is None]
        if not unresolved:
            return
        # A record's true seq is one more than that of the record it links to; follow links
        # until nothing changes, then try small renumberings, then records modified in place.
        self._follow_links(unresolved, assume_in_place=False)
        for kept in unresolved:
            if kept.origin is None:
                for shift in _SHIFT_TRIES:
                    if _proves(kept, kept.seq + shift):
                        kept.origin = kept.seq + shift
                        break
        self._follow_links(unresolved, assume_in_place=False)
        self._follow_links(unresolved, assume_in_place=True)

    def _follow_links(self, unresolved: list[_Kept], *, assume_in_place: bool) -> None:
        changed = True
        while changed:
            changed = False
            for kept in unresolved:
                if kept.origin is not None:
                    continue
                before = self._predecessor_origin(
                    kept.previous_hash, assume_in_place=assume_in_place
                )
                if before is not None and _proves(kept, before + 1):
                    kept.origin = before + 1
                    changed = True

    def _last_origin(self, moved: list[_Kept]) -> int:
        v = self.v
        last = v._seq
        kept_last = self.kept.get(last)
        if kept_last is not None and kept_last.origin is not None:
            last = kept_last.origin
        return max([last, *(k.origin for k in moved if k.origin is not None)])

    # -- findings ---------------------------------------------------------------------------------

    def _report_modified(self) -> None:
        for kept in sorted(self.kept.values(), key=_at):
            if kept.origin is not None:
                continue
            self.modified.add(kept.seq)
            why = kept.damage or "its content does not match its hash"
            self.add(
                kept.seq, kept.operation_id, "modified", f"{kept.describe()} was modified: {why}"
            )

    def _report_inserted(self, moved: list[_Kept]) -> None:
        """Two records that prove the same seq: the one no later record links to is a forgery
        (or a copy) put into the chain."""
        claims: dict[int, list[_Kept]] = {}
        for kept in self.kept.values():
            claims.setdefault(kept.seq if kept.origin is None else kept.origin, []).append(kept)
        for seq, claimants in sorted(claims.items()):
            if len(claimants) < 2:
                continue
            successor = self._record_with_origin(seq + 1)
            genuine = [k for k in claimants if successor and successor.previous_hash == k.hash]
            forged = [k for k in claimants if k not in genuine] if genuine else claimants
            for kept in forged:
                if len(forged) == len(claimants) and kept.origin not in (None, kept.seq):
                    continue  # cannot tell which one is real: report those in place
                self.inserted.add(kept.seq)
                self.modified.discard(kept.seq)
                self.findings = [
                    f for f in self.findings if not (f.kind == "modified" and f.seq == kept.seq)
                ]
                self.add(
                    kept.seq,
                    kept.operation_id,
                    "inserted",
                    f"{kept.describe()} was inserted: it takes the place of record {seq} "
                    "but the chain does not continue from it",
                )

    def _record_with_origin(self, seq: int) -> _Kept | None:
        for kept in self.kept.values():
            if kept.origin == seq and kept.seq not in self.inserted:
                return kept
        kept_here = self.kept.get(seq)
        if kept_here is not None and kept_here.origin is None:
            return kept_here  # modified in place; its hash is still the original
        return None

    def _report_moved(self, moved: list[_Kept]) -> None:
        at = {k.seq: k for k in moved}
        done: set[int] = set()
        index = 0
        while index < len(moved):
            kept = moved[index]
            assert kept.origin is not None
            if kept.seq in done:
                index += 1
                continue
            partner = at.get(kept.origin)
            if partner is not None and partner.origin == kept.seq:
                for one, other in ((kept, partner), (partner, kept)):
                    self.add(
                        other.seq,
                        one.operation_id,
                        "reordered",
                        f"{one.describe(other.seq)} was swapped with {other.describe(one.seq)}: "
                        f"it now sits at seq {one.seq}",
                    )
                done.update((kept.seq, partner.seq))
                index += 1
                continue
            # A run of records all displaced by the same amount: one renumbering.
            shift = kept.origin - kept.seq
            end = index
            while (
                end + 1 < len(moved)
                and moved[end + 1].seq == moved[end].seq + 1
                and moved[end + 1].origin == moved[end + 1].seq + shift
            ):
                end += 1
            if end > index:
                last = moved[end]
                assert last.origin is not None
                self.add(
                    kept.origin,
                    kept.operation_id,
                    "reordered",
                    f"{_span(kept.origin, last.origin)} ({kept.operation}, operation id "
                    f"{kept.operation_id}, …) were renumbered: they now sit at seqs "
                    f"{kept.seq}–{last.seq}",
                )
            else:
                self.add(
                    kept.origin,
                    kept.operation_id,
                    "reordered",
                    f"{kept.describe(kept.origin)} was moved: it now sits at seq {kept.seq}",
                )
            done.update(k.seq for k in moved[index : end + 1])
            index = end + 1

    def _report_missing(self, moved: list[_Kept], last_origin: int) -> None:
        """Seqs no record proves: a gap in the seqs, or a place a renumbered record left."""
        taken = sorted({k.origin for k in moved if k.origin is not None})
        places = [*self.v._gaps, *((k.seq, k.seq) for k in moved)]
        missing: list[tuple[int, int]] = []
        for first, last in places:
            last = min(last, last_origin)
            cursor = first
            for origin in taken:
                if cursor <= origin <= last:
                    if cursor < origin:
                        missing.append((cursor, origin - 1))
                    cursor = origin + 1
            if cursor <= last:
                missing.append((cursor, last))
        merged: list[tuple[int, int]] = []
        for first, last in sorted(missing):
            if merged and merged[-1][1] >= first - 1:
                merged[-1] = (merged[-1][0], max(merged[-1][1], last))
            else:
                merged.append((first, last))
        for first, last in merged:
            self._missing_range(first, last, "deleted")
        if self.head is not None and self.head[0] > last_origin:
            self._missing_range(last_origin + 1, self.head[0], "truncated")

    def _missing_range(self, first: int, last: int, kind: FindingKind) -> None:
        if kind == "truncated":
            message = (
                f"{_span(first, last)} {'is' if first == last else 'are'} missing from the end "
                f"(deleted): the head says the chain ends at record {last}"
            )
        else:
            message = f"{_span(first, last)} {'is' if first == last else 'are'} missing (deleted)"
        self.add(first, None, kind, message)

    def _report_links(self) -> None:
        """Links between records that each match their hash: a record whose hash was recomputed
        after a change is named by the link its successor no longer makes."""
        by_origin: dict[int, _Kept] = {}
        for kept in self.kept.values():
            if kept.origin is not None and kept.seq not in self.inserted:
                by_origin.setdefault(kept.origin, kept)
        for origin in sorted(by_origin):
            kept = by_origin[origin]
            if not kept.content_ok or kept.previous_hash == self._hash_of(origin - 1, by_origin):
                continue
            if origin - 1 == self.v._start_seq:
                self.add(
                    origin,
                    kept.operation_id,
                    "modified",
                    f"{kept.describe(origin)} was modified and its hash recomputed: it does not "
                    f"link to the start of the chain",
                )
                continue
            before = by_origin.get(origin - 1)
            if before is None or not before.content_ok:
                continue  # nothing to compare with, or already reported as modified
            claimed = self._predecessor_origin(kept.previous_hash, assume_in_place=True)
            if claimed is not None and claimed != origin - 1:
                self.add(
                    origin,
                    kept.operation_id,
                    "reordered",
                    f"{kept.describe(origin)} was moved here from after record {claimed} and "
                    "its hash recomputed",
                )
            else:
                self.add(
                    origin - 1,
                    before.operation_id,
                    "modified",
                    f"{before.describe(origin - 1)} was modified and its hash recomputed: "
                    f"record {origin} no longer links to it",
                )

    def _hash_of(self, origin: int, by_origin: Mapping[int, _Kept]) -> str | None:
        if origin == self.v._start_seq:
            return self.v._start_hash
        kept = by_origin.get(origin)
        return kept.hash if kept is not None else None

    def _report_head(self, last_origin: int) -> None:
        v, head = self.v, self.head
        if head is None:
            if v._count:
                self.add(
                    v._seq,
                    None,
                    "head",
                    f"the chain's head is missing although {v._count} records exist",
                )
            return
        head_seq, head_hash = head
        if head_seq < v._start_seq:
            self.add(
                head_seq, None, "head", f"the head (record {head_seq}) is before the checkpoint"
            )
        elif head_seq < last_origin:
            first = head_seq + 1
            self.add(
                first,
                self._operation_id_at(first),
                "inserted",
                f"{_span(first, last_origin)} {'was' if first == last_origin else 'were'} "
                f"appended outside the log: the head says the chain ends at record {head_seq}",
            )
        elif head_seq == last_origin and head_seq > v._start_seq:
            last = self._record_with_origin(head_seq)
            last_hash = last.hash if last is not None else v._hash
            if last_hash != head_hash:
                operation_id = last.operation_id if last else self._operation_id_at(head_seq)
                self.add(
                    head_seq,
                    operation_id,
                    "head",
                    f"the head does not match record {head_seq} (operation id {operation_id}): "
                    f"the head or record {head_seq} was altered",
                )
        elif head_seq == last_origin and head_hash != v._start_hash:
            self.add(head_seq, None, "head", "the head does not match the start of the chain")

    def _operation_id_at(self, seq: int) -> str | None:
        kept = self.kept.get(seq)
        if kept is not None:
            return kept.operation_id
        last = self.v._previous
        return last.entry.operation_id if last is not None and last.seq == seq else None


def _at(kept: _Kept) -> int:
    return kept.seq


def verify_chain(
    records: Iterable[AuditRecord],
    head: tuple[int, str] | None,
    *,
    start: tuple[int, str] = (0, GENESIS_HASH),
) -> ChainVerification:
    """Verify ``records`` (in seq order) against ``head``; see :class:`ChainVerifier`."""
    verifier = ChainVerifier(start)
    for record in records:
        verifier.add(record)
    return verifier.finish(head)
