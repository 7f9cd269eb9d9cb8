"""The issuer's mints and burns in an ingestion batch: the router's records they name, read once
per batch, and the mint records ingestion credits, marked in the batch's own transaction.

Ingestion (services/ingestion.py, services/ingestion_batch.py) calls three things:

* :func:`issuance_books_for` after parsing a batch: the mint records (``mints_by_reason``) and
  burn records (``burns_by_reason``) for the reasons of the batch's ``mint`` and ``burn`` entries
  in the ``issuance:`` namespace — one query per kind for the whole batch, none at all for a
  batch without such entries (the common case, so the hot path costs nothing);
* :meth:`IssuanceBatchBooks.dispose` for each ``mint``/``burn`` entry, after the default rule:
  the booking of :func:`sluice.domain.issuance_books.book_issuance_entry` replaces the default
  (suspense) when the entry's reason names a record;
* :meth:`IssuanceBatchBooks.flush` before the batch commits: each mint booked to its customer
  is marked ``credited`` and ``committed`` with the update that minted it (as each booked burn is
  marked ``committed``), so the router never sends a booked mint again — not even after the
  ledger's deduplication window, when a resend would mint a second time.

Why it is safe: the journal the booking adds and the ``credited`` mark are written in the same
transaction as the ingested update and the cursor, so a crash leaves both or neither; a replayed
update is skipped by its id before it gets here, so nothing is booked twice; a record credited
already (or booked by an earlier entry of the same batch) is never credited again — a second
command with the same reason goes to suspense with a critical alert (see the domain module).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sluice.domain.deposits import Disposition
from sluice.domain.events import Event
from sluice.domain.history import HistoryEntry, ParsedTransaction
from sluice.domain.issuance_books import (
    IssuanceRecord,
    book_issuance_entry,
    is_issuance_entry,
)
from sluice.ports.issuance import BurnRecord, MintRecord, sats_to_amount
from sluice.ports.unit_of_work import UnitOfWork
from sluice.services.events import emit_all
from sluice.services.issuance_events import burned_event, minted_event


@dataclass(slots=True)
class IssuanceBatchBooks:
    """The router's records named by one batch's mints and burns, and what the batch booked."""

    party: str = ""
    records: dict[str, IssuanceRecord] = field(default_factory=dict)
    booked: set[str] = field(default_factory=set)
    # Mints booked here, with the update that minted: credited, and committed with that id.
    credited: list[tuple[str, str]] = field(default_factory=list)
    # Burns booked here, with the update that burned: their records keep that update id, so a
    # second ledger burn with the same reason in a later batch (a command resent after the
    # ledger's deduplication window) goes to suspense instead of being booked again.
    burned: list[tuple[str, str]] = field(default_factory=list)
    # The records as read (by id), for the events of those this batch commits.
    mints: dict[str, MintRecord] = field(default_factory=dict)
    burns: dict[str, BurnRecord] = field(default_factory=dict)
    # The record time of each update of the batch naming a record (the events' time), and the
    # correlation ids of the records' operations (the events carry them).
    record_times: dict[str, datetime] = field(default_factory=dict)
    correlation_ids: dict[str, str | None] = field(default_factory=dict)

    def dispose(self, entry: HistoryEntry, update_id: str, default: Disposition) -> Disposition:
        """The disposition of a ``mint``/``burn`` entry: its booking when its reason names one of
        the router's records, else ``default`` (what :func:`dispose_entry` decided)."""
        if not self.records:
            return default
        booking = book_issuance_entry(
            entry,
            update_id=update_id,
            party=self.party,
            records=self.records,
            booked_here=self.booked,
        )
        if booking is None:
            return default
        if booking.record is not None and booking.disposition.kind in ("credited", "burned"):
            if booking.record.kind == "mint":
                self.credited.append((booking.record.id, update_id))
            else:
                self.burned.append((booking.record.id, update_id))
        return booking.disposition

    def flush(self, uow: UnitOfWork, at: datetime | None = None) -> None:
        """Mark the mints booked to their customers ``credited`` and ``committed``, and the burns
        booked ``committed``, each with the update that made it, in the batch's transaction.
        The status moves by a conditional update (``commit_mint``/``commit_burn``: only a record
        not committed yet changes), and only a record this batch moved writes its
        ``istsi_minted`` or ``istsi_burned`` event: the router booking the same mint or burn
        with the ledger's answer at the same time (another thread, another connection) finds
        it committed, or this update finds the router's, so exactly one of them writes the event
        — whatever the batch read at its start. An event is at the record time of its update
        (``at``, else now, for an update the batch did not name) with the correlation id of
        the record's operation."""
        events: list[Event] = []
        for mint_id, update_id in self.credited:
            uow.issuance.mark_mint_credited(mint_id)
            mint = self.mints.get(mint_id)
            if not uow.issuance.commit_mint(mint_id, update_id):
                # Committed already (by the router): it keeps the update that minted it.
                uow.issuance.set_mint_status(mint_id, "committed", update_id=update_id)
            elif mint is not None:
                # The router had no answer yet: the ledger's own record commits it.
                events.append(
                    minted_event(
                        mint,
                        update_id,
                        self._time_of(update_id, at),
                        self.correlation_ids.get(mint.operation_id),
                    )
                )
        for burn_id, update_id in self.burned:
            burn = self.burns.get(burn_id)
            if not uow.issuance.commit_burn(burn_id, update_id):
                uow.issuance.set_burn_status(burn_id, "committed", update_id=update_id)
            elif burn is not None:
                events.append(
                    burned_event(
                        burn,
                        update_id,
                        self._time_of(update_id, at),
                        self.correlation_ids.get(burn.operation_id),
                    )
                )
        emit_all(uow, events)

    def _time_of(self, update_id: str, at: datetime | None) -> datetime:
        return self.record_times.get(update_id) or at or datetime.now(UTC)


def issuance_books_for(uow: UnitOfWork, steps: Iterable[object], party: str) -> IssuanceBatchBooks:
    """The records for the batch's issuance mints and burns (``steps``: the parsed updates of the
    batch, other steps ignored), one query per kind; an empty lookup when there are none."""
    mint_reasons: set[str] = set()
    burn_reasons: set[str] = set()
    record_times: dict[str, datetime] = {}
    for step in steps:
        if not isinstance(step, ParsedTransaction):
            continue
        for entry in step.entries:
            if entry.reason is not None and is_issuance_entry(entry):
                (mint_reasons if entry.kind == "mint" else burn_reasons).add(entry.reason)
                record_times[step.update_id] = step.record_time
    books = IssuanceBatchBooks(party=party, record_times=record_times)
    if mint_reasons:
        for reason, mint in uow.issuance.mints_by_reason(sorted(mint_reasons)).items():
            books.records[reason] = _mint(mint)
            books.mints[mint.id] = mint
    if burn_reasons:
        for reason, burn in uow.issuance.burns_by_reason(sorted(burn_reasons)).items():
            books.records[reason] = _burn(burn)
            books.burns[burn.id] = burn
    operation_ids = [m.operation_id for m in books.mints.values()]
    operation_ids += [b.operation_id for b in books.burns.values()]
    if operation_ids:
        books.correlation_ids = uow.issuance.correlation_ids(operation_ids)
    return books


def _mint(record: MintRecord) -> IssuanceRecord:
    return IssuanceRecord(
        id=record.id,
        kind="mint",
        reason=record.reason,
        customer_id=record.customer_id,
        owner=record.owner,
        amount=sats_to_amount(record.amount_sats),
        status=record.status,
        update_id=record.update_id,
        credited=record.credited,
    )


def _burn(record: BurnRecord) -> IssuanceRecord:
    return IssuanceRecord(
        id=record.id,
        kind="burn",
        reason=record.reason,
        customer_id=record.customer_id,
        owner=record.owner,
        amount=sats_to_amount(record.amount_sats),
        status=record.status,
        update_id=record.update_id,
    )
