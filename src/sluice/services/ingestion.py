"""Ledger history ingestion: the treasury's updates, exactly once, into the Integration DB.

Guarantees:

* **Exactly once.** Whatever a batch of updates does to the DB — holdings, instructions, history,
  journal, alerts — and the cursor that says how far ingestion got are committed in one
  transaction. A crash loses at most a batch that was never committed, and a restart resumes from
  the committed cursor.
* **Replays are no-ops.** An update whose id was ingested before is skipped, so re-delivery, a
  node restored from backup or a replay of the same file change nothing.
* **Nothing is lost.** Every change of the treasury's holdings is booked to some account (see
  :mod:`sluice.domain.deposits`); an update the parser cannot read stops ingestion with an error
  naming it, and stays in the way until an operator quarantines it.
* **Bounded.** Batches have a maximum size; read errors are retried a bounded number of times
  with exponential backoff, then ingestion stops with a clear error and the cursor where it was.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from sluice.domain.errors import InvalidInputError, MalformedUpdateError, SluiceError
from sluice.domain.history import HistoryEntry, ParsedTransaction, item_offset, unwrap_update
from sluice.domain.ledger import Cursor, InstrumentId
from sluice.ports import IngestBatch, LedgerClient, LedgerReadError, UnitOfWorkFactory
from sluice.services.compliance import KycRegistry, UsageCache, undo_failed_payouts
from sluice.services.events import emit_all
from sluice.services.ingestion_batch import (
    CLOSED_STATUS_BY_ENTRY,
    BatchDecisions,
    IngestionProgress,
    _BatchState,
    _collect_consumed,
    _CustomerLookup,
    _Skip,
    _Step,
)
from sluice.services.issuance_ingestion import issuance_books_for

# How one batch is decided lives in ingestion_batch; the names this module has offered are
# re-exported so that they stay importable from it.
__all__ = [
    "CLOSED_STATUS_BY_ENTRY",
    "Ingestion",
    "IngestionProgress",
    "IngestionSettings",
    "IngestionStoppedError",
    "connection_name",
    "quarantine_update",
]


# The entries whose reason may name a withdrawal.
_OUTGOING_KINDS = frozenset({"transfer_out", "self_transfer", "merge_split"})


class IngestionStoppedError(SluiceError):
    """Ingestion stopped and will not go on by itself; the message says why and what to do."""

    code = 40
    error = "ingestion_stopped"


@dataclass(frozen=True, slots=True)
class IngestionSettings:
    batch_size_max: int = 500
    read_attempts_max: int = 5
    retry_delay_s: float = 0.2
    retry_delay_max_s: float = 5.0
    poll_interval_s: float = 1.0


def connection_name(party: str, node: str = "default") -> str:
    """Ingestion runs once per (treasury party, node); this names that pair."""
    return f"{party}@{node}"


class Ingestion(BatchDecisions):
    """The ingestion loop of one treasury party on one ledger connection."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        ledger: LedgerClient,
        party: str,
        *,
        connection: str | None = None,
        settings: IngestionSettings | None = None,
        sleep: Callable[[float], None] = time.sleep,
        on_batch: Callable[[IngestionProgress], None] | None = None,
        compliance: KycRegistry | None = None,
    ) -> None:
        self._uow = uow
        self._registry = compliance or KycRegistry()
        self._ledger = ledger
        self.party = party
        self.connection = connection or connection_name(party)
        self.settings = settings or IngestionSettings()
        self._sleep = sleep
        self.on_batch = on_batch
        self._onboarded: set[InstrumentId] | None = None
        self._statistics_due = 1_000
        # The batch's customers' usage, kept from batch to batch (trusted only after a commit).
        self._usage = UsageCache()

    # -- the loop -------------------------------------------------------------------------------

    def run(
        self,
        *,
        stop: Callable[[], bool] = lambda: False,
        follow: bool = False,
        max_transactions: int | None = None,
    ) -> IngestionProgress:
        """Ingest up to the ledger end (``follow``: keep polling until ``stop()`` says so)."""
        with _relaxed_garbage_collection():
            return self._run(stop, follow, max_transactions)

    def _run(
        self, stop: Callable[[], bool], follow: bool, max_transactions: int | None
    ) -> IngestionProgress:
        progress = IngestionProgress()
        failures = 0
        while not stop():
            with self._uow() as uow:
                cursor = uow.ingestion.load_cursor(self.connection)
                self._onboarded = uow.ingestion.onboarded_instruments()
            progress.cursor = cursor
            try:
                consumed = self._ingest_from(cursor, progress, stop, max_transactions)
            except LedgerReadError as exc:
                failures += 1
                progress.read_retries += 1
                if not exc.retryable:
                    raise IngestionStoppedError(
                        f"reading updates for {self.party} was refused: {exc}; the cursor stays "
                        f"at offset {progress.cursor.offset if progress.cursor else 'none'}; "
                        "check the credentials and the reader's rights (CanReadAs on the party)"
                    ) from exc
                if failures >= self.settings.read_attempts_max:
                    raise IngestionStoppedError(
                        f"reading updates for {self.party} failed {failures} times in a row "
                        f"(last: {exc}); the cursor stays at offset "
                        f"{progress.cursor.offset if progress.cursor else 'none'}; "
                        f"restart ingestion once the ledger is reachable"
                    ) from exc
                delay = min(
                    self.settings.retry_delay_s * 2 ** (failures - 1),
                    self.settings.retry_delay_max_s,
                )
                self._sleep(delay)
                continue
            if consumed:
                failures = 0
            if max_transactions is not None and progress.transactions >= max_transactions:
                break
            if not follow:
                progress.reached_end = True
                break
            if not consumed:
                self._sleep(self.settings.poll_interval_s)
        return progress

    def _ingest_from(
        self,
        cursor: Cursor | None,
        progress: IngestionProgress,
        stop: Callable[[], bool],
        max_transactions: int | None,
    ) -> int:
        """Read from the cursor to the ledger end in batches; returns the items consumed."""
        after = cursor.offset if cursor is not None else None
        stream: Iterator[Mapping[str, Any]] = iter(self._ledger.updates(self.party, after))
        consumed = 0
        pending: list[Mapping[str, Any]] = []
        size = self.settings.batch_size_max
        try:
            for raw in stream:
                pending.append(raw)
                if len(pending) >= size or (
                    max_transactions is not None
                    and progress.transactions + len(pending) >= max_transactions
                ):
                    batch, pending = pending, []
                    cursor = self._commit_batch(batch, cursor, progress)
                    consumed += len(batch)
                    if stop() or (
                        max_transactions is not None and progress.transactions >= max_transactions
                    ):
                        return consumed
        except LedgerReadError:
            # Whole updates read before a read failure are kept: they are complete and in order.
            # (On any other error nothing more is written: a crash must not commit anything.)
            if pending:
                self._commit_batch(pending, cursor, progress)
            raise
        if pending:
            self._commit_batch(pending, cursor, progress)
            consumed += len(pending)
        return consumed

    # -- one batch ------------------------------------------------------------------------------

    def _commit_batch(
        self,
        raws: list[Mapping[str, Any]],
        cursor: Cursor | None,
        progress: IngestionProgress,
    ) -> Cursor | None:
        """Apply ``raws`` in one transaction; on a malformed update, commit the ones before it,
        record the failure and stop."""
        try:
            outcome = self._write_batch(raws, cursor, progress)
        except BaseException:
            # What the batch added to the kept usage never reached the database.
            self._usage.clear()
            raise
        self._usage.commit()
        state, failure, failed_raw = outcome
        progress.batches += 1
        progress.cursor = state.cursor
        if progress.transactions >= self._statistics_due:
            # Refresh at 1k, 2k, 4k, … updates: a catch-up of a long history is a bulk load.
            self._statistics_due = max(2 * self._statistics_due, progress.transactions)
            with self._uow() as uow:
                uow.ingestion.refresh_statistics()
                uow.commit()
        if self.on_batch is not None:
            self.on_batch(progress)
        if failure is not None:
            self._stop_on(failure, failed_raw or {}, state.cursor)
        return state.cursor

    def _write_batch(
        self,
        raws: list[Mapping[str, Any]],
        cursor: Cursor | None,
        progress: IngestionProgress,
    ) -> tuple[_BatchState, MalformedUpdateError | None, Mapping[str, Any] | None]:
        """Decide ``raws`` up to the first malformed one and commit that; the batch's state, and
        the failure with its update, if any."""
        with self._uow() as uow:
            repo = uow.ingestion
            unwrapped: list[tuple[str, Mapping[str, Any]]] = []
            update_ids: list[str] = []
            consumed_cids: set[str] = set()
            for raw in raws:
                kind: str
                try:
                    kind, body = unwrap_update(raw)
                except MalformedUpdateError:
                    kind, body = "malformed", raw
                unwrapped.append((kind, body))
                if kind == "transaction":
                    update_id = body.get("updateId")
                    if isinstance(update_id, str):
                        update_ids.append(update_id)
                    _collect_consumed(body, consumed_cids)
            known = repo.known_update_ids(update_ids)
            quarantined = repo.quarantined_keys(update_ids)
            state = _BatchState(
                batch=IngestBatch(connection=self.connection, party=self.party), cursor=cursor
            )
            state.holdings = repo.holdings_by_ids(consumed_cids)
            state.instructions = repo.instructions_by_ids(consumed_cids)

            # Pass 1: parse, in order (later updates refer to holdings made by earlier ones).
            steps: list[_Step] = []
            failure: MalformedUpdateError | None = None
            failed_raw: Mapping[str, Any] | None = None
            for (kind, body), raw in zip(unwrapped, raws, strict=True):
                try:
                    step = self._parse(kind, body, state, known, quarantined)
                except MalformedUpdateError as exc:
                    # Whatever is wrong with it, an update with a readable offset can be set
                    # aside by that offset (a well-formed update never is).
                    offset = exc.offset if exc.offset is not None else item_offset(raw)
                    key = f"offset:{offset}"
                    if offset is None or not repo.quarantined_keys([key]):
                        failure, failed_raw = exc, raw
                        break
                    step = _Skip(offset, key)
                if step is not None:
                    steps.append(step)

            # Pass 2: who the deposit accounts in this batch belong to, in one query.
            reasons: set[str] = set()
            outgoing: set[str] = set()
            deposits: list[tuple[datetime, HistoryEntry]] = []
            for step in steps:
                if isinstance(step, ParsedTransaction):
                    for entry in step.entries:
                        if entry.reason:
                            reasons.add(entry.reason)
                            if entry.kind in _OUTGOING_KINDS:
                                outgoing.add(entry.reason)
                        if entry.kind == "transfer_in":
                            deposits.append((step.record_time, entry))
            state.customers = _CustomerLookup(repo, repo.customers_for_reasons(reasons), reasons)
            state.withdrawals = repo.withdrawals_by_ids(outgoing) if outgoing else {}
            state.issuance = issuance_books_for(uow, steps, self.party)
            if deposits:
                # Every deposit passes the KYC registry before it is credited: its customers'
                # rows are locked and their recent usage read once for the whole batch.
                state.compliance = self._registry.session(
                    uow,
                    {
                        customer
                        for _, entry in deposits
                        if entry.reason and (customer := state.customers.get(entry.reason))
                    },
                    {entry.sender for _, entry in deposits if entry.sender},
                    since=min(time for time, _ in deposits),
                    until=max(time for time, _ in deposits),
                    operations=["deposit"],
                    lock=True,
                    cache=self._usage,
                )

            # Pass 3: decide and collect the writes.
            for step in steps:
                self._apply(step, state, progress)
            state.batch.cursor = state.cursor
            repo.write_batch(state.batch)
            emit_all(uow, state.events)
            state.issuance.flush(uow)
            if state.compliance is not None:
                state.compliance.flush()
            if state.audit:
                uow.audit.append(state.audit)
            for failed, at in state.failed_payouts:
                undo_failed_payouts(uow, [failed], at=at, actor=f"ingestion:{self.connection}")
            uow.commit()
        return state, failure, failed_raw

    def _stop_on(
        self, failure: MalformedUpdateError, raw: Mapping[str, Any], cursor: Cursor | None
    ) -> None:
        try:
            text = orjson.dumps(raw).decode()
        except TypeError:
            text = repr(raw)
        with self._uow() as uow:
            uow.ingestion.record_failure(
                self.connection, failure.update_id, failure.offset, failure.problem, text
            )
            uow.commit()
        stopped = f"ingestion stopped at {failure}. Nothing after it was ingested. Fix the source"
        if failure.update_id is None and failure.offset is None:
            # Nothing names it, so it cannot be quarantined: the cursor has to move past it.
            after = "the start" if cursor is None else f"offset {cursor.offset}"
            raise IngestionStoppedError(
                f"{stopped}, or move past it: it is the first update after {after}; find its "
                "offset N on the ledger node and resume after it with "
                "`sluice ingest --once --from-offset N`"
            ) from failure
        key = failure.update_id or f"offset:{failure.offset}"
        raise IngestionStoppedError(
            f"{stopped}, or set it aside with `sluice ingest --quarantine {key}` and start "
            "ingestion again"
        ) from failure


@contextmanager
def _relaxed_garbage_collection() -> Iterator[None]:
    """Collect the youngest generation less often while ingesting.

    A batch holds thousands of freshly decoded JSON objects (acyclic trees); with the default
    threshold the cyclic collector walks them over and over, which costs about a quarter of the
    ingestion time. They are still collected, just in fewer, larger sweeps.
    """
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, thresholds[1], thresholds[2])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def quarantine_update(
    uow_factory: UnitOfWorkFactory, connection: str, key: str, *, requested_by: str
) -> bool:
    """Set an update aside so ingestion skips it (recorded, with the problem and the raw update
    when ingestion stopped on it). Returns False when it was already quarantined."""
    at_offset: int | None = None
    if key.startswith("offset:"):
        tail = key.removeprefix("offset:")
        if not tail.isdigit():
            raise InvalidInputError(f"{key!r}: an offset key is offset:N, N the update's offset")
        at_offset = int(tail)
    with uow_factory() as uow:
        if at_offset is None:
            failure = uow.ingestion.last_failure(connection, key)
        else:
            failure = uow.ingestion.last_failure_at_offset(connection, at_offset)
        offset, problem, raw = failure if failure else (at_offset, None, None)
        added = uow.ingestion.quarantine(key, connection, offset, problem, raw, requested_by)
        uow.commit()
        return added
