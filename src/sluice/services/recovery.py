"""Recovery procedures: moving ingestion's cursor after a node restore, and the withdrawal hold
after an Integration DB restore (see the Runbooks in README.md).

Moving the cursor back is safe because ingestion skips every update whose id it has already
ingested: rewinding re-reads, books nothing twice and deletes nothing. (Moving it past updates not
yet ingested would skip them: pick a position at or before the last one you trust.)

What needs care is the cursor's *record time*: the withdrawal worker declares an attempt
definitely failed once that record time has passed the attempt's ``trec_tgt`` without ingestion
having seen its transfer. A cursor that claimed a later record time than its position guarantees
could fail (and retry or refund) a withdrawal whose transfer is still to be read. So a rewind only
ever lowers the record time, to what the new position guarantees; ingestion raises it again as it
reads.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import Cursor
from sluice.ports import LedgerClient, UnitOfWorkFactory
from sluice.services.withdrawals import hold_in_force, recorded_hold

ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class CursorMove:
    """What :func:`rewind_cursor` did."""

    previous: Cursor | None
    current: Cursor


def rewind_cursor(
    uow_factory: UnitOfWorkFactory,
    connection: str,
    party: str,
    *,
    offset: int,
    record_time: datetime | None,
) -> CursorMove:
    """Move ``connection``'s cursor to ``offset``, so ingestion next reads the updates after it.

    Nothing ingested is deleted: updates read again are skipped by update id. ``record_time`` is
    what the new position guarantees the ledger has reached (the record time of the item at
    ``offset``, or None when unknown); the cursor keeps the earlier of it and its current record
    time, never a later one. The last-ingested update id is cleared (the position no longer
    corresponds to it); ingestion sets it again with the next transaction it ingests.
    """
    if offset < 0:
        raise InvalidInputError(f"offset must not be negative, got {offset}")
    if record_time is not None and record_time.tzinfo is None:
        raise InvalidInputError("record_time must carry a time zone")
    with uow_factory() as uow:
        previous = uow.ingestion.load_cursor(connection)
        kept = record_time
        if kept is not None and previous is not None and previous.record_time is not None:
            # Never claim more than ingestion has actually read (a move to a larger offset skips
            # updates; after a node restore the numbers say nothing anyway).
            kept = min(kept, previous.record_time)
        current = Cursor(
            offset=offset,
            update_id=None,
            record_time=kept,
            synchronizer_id=previous.synchronizer_id if previous is not None else None,
        )
        uow.ingestion.set_cursor(connection, party, current)
        uow.commit()
    return CursorMove(previous, current)


def offset_for_record_time(ledger: LedgerClient, party: str, time: datetime) -> int:
    """The offset on ``party``'s node to resume after so that every update with a record time at
    or after ``time`` is read again: the last offset whose record time is before ``time``.

    Record times are assigned by the synchronizer, so unlike offsets they survive a node restore.
    Record times have microsecond precision, hence the largest offset at or before one
    microsecond earlier.
    """
    if time.tzinfo is None:
        raise InvalidInputError("the record time must carry a time zone")
    return ledger.offset_at_record_time(party, time - ONE_MICROSECOND)


@dataclass(frozen=True, slots=True)
class HoldState:
    """The withdrawal hold as recorded, and whether it still stops submissions."""

    until: datetime | None  # None: no hold recorded
    in_force: bool
    ingested_record_time: datetime | None


def hold_state(uow_factory: UnitOfWorkFactory, connection: str) -> HoldState:
    """The hold ``hold_until_safe`` set: it stops submissions until ingestion on ``connection``
    has passed it (the next worker run then clears it)."""
    with uow_factory() as uow:
        until = recorded_hold(uow)
        cursor = uow.withdrawals.cursor(connection)
    return HoldState(
        until=until,
        in_force=hold_in_force(until, cursor),
        ingested_record_time=cursor.record_time if cursor is not None else None,
    )


def largest_live_trec_tgt(uow_factory: UnitOfWorkFactory) -> datetime | None:
    """The latest ``trec_tgt`` of any withdrawal the DB still considers in flight."""
    with uow_factory() as uow:
        return uow.withdrawals.largest_live_trec_tgt()
