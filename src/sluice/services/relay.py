"""The events relay: publishes the outbox's committed events, at least once and in order per
subject.

Each round, for every ordering key with unpublished rows (an event's aggregate type), while
holding that key's relay lock (one relay per ordering key; another relay's keys are skipped):

1. claim up to ``batch`` unpublished rows of the key in ``seq`` order. Rows are always found by
   ``published_at IS NULL``, never by "seq greater than the last one seen": seqs are taken before
   commit, so a lower one may commit later, and it is published when it does;
2. publish them (bounded acks in flight, ``Nats-Msg-Id`` = ``event_id``), inside the ``nats``
   circuit breaker;
3. after the acks, mark the rows published with their stream sequence, in order up to the first
   row that was not acked; that row and every later one of the batch stay unpublished, the
   failed ones with their attempt counted, and are published again (same event ids) at the next
   round. Later rows the bus did take are then acked as duplicates (JetStream's dedup on the
   event id within the stream's duplicate window) and marked with their first sequence.

With ``hold_rows`` (PostgreSQL) the rows are claimed ``FOR UPDATE SKIP LOCKED`` and marked in
the same transaction, which ends right after the acks; a round's first batch must start at the
key's lowest pending row (else another relay holds the head: the key waits for the next round).
The key's lock is asked again before each claim, after it and before marking: a relay that lost
it claims and marks nothing more. Without it (SQLite, where a transaction
held open would block every writer) the rows are read, the read ends, they are published, and a
short transaction marks them.

A relay killed between publish and mark publishes those rows again: delivery is at least once,
and consumers dedupe on ``event_id`` (JetStream already drops copies within its window).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import dataclasses
import threading
from collections.abc import Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog

from sluice.ports import UnitOfWork, UnitOfWorkFactory, WriterLock
from sluice.ports.events import EventPublisher, OutboxRow, PublishAck, PublishError
from sluice.services.breakers import BreakerOpenError, Breakers, guard

log = structlog.get_logger("sluice.events")

T = TypeVar("T")
BREAKER_FLOW = "nats"
# Batches of one ordering key a round publishes back to back (a publisher that overlaps them).
PIPELINE_BATCHES = 50
# Batches of one ordering key on their way at once: one being settled (acks, marking), one
# publishing, one claimed and sent behind it. On PostgreSQL each holds its rows in a
# transaction of its own.
PIPELINE_DEPTH = 3

LockFactory = Callable[[str], WriterLock]
# Called after the acks and before the rows are marked (tests inject a crash there).
AfterPublish = Callable[[Sequence[OutboxRow], Sequence[PublishAck | PublishError]], None]


def _wall_clock() -> datetime:
    return datetime.now(UTC)


# --- running the publisher's coroutines -------------------------------------------------------


class AsyncRunner:
    """An asyncio loop on a thread of its own, for the publisher: its connection (pings,
    reconnects) lives on while the relay's thread waits or works on the database."""

    def __init__(self, name: str = "sluice-relay-io") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Start ``coro`` on the loop; its result comes later (coroutines submitted one after
        the other start in that order)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        if not self._thread.is_alive():
            self.loop.close()


# --- what a round did -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RelayRound:
    """One round: rows ``published`` (marked now; ``duplicates`` of them the bus already had),
    ``failed`` publishes (left for the next round), ``pending`` rows after it, ordering keys
    ``skipped`` (another relay holds them), ``more`` when a key had a full batch (run again at
    once), ``breaker_open`` when the ``nats`` breaker refused, the first ``error``."""

    published: int = 0
    duplicates: int = 0
    failed: int = 0
    pending: int = 0
    keys: int = 0
    skipped: int = 0
    more: bool = False
    breaker_open: bool = False
    error: str | None = None

    def as_json(self) -> dict[str, object]:
        return {
            "published": self.published,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "pending": self.pending,
            "keys": self.keys,
            "skipped": self.skipped,
            "more": self.more,
            "breaker_open": self.breaker_open,
            "error": self.error,
        }


@dataclass
class RelayStats:
    """Totals since the relay started, and its last round (for logs and metrics)."""

    rounds: int = 0
    published: int = 0
    duplicates: int = 0
    failed: int = 0
    last_round: RelayRound | None = None
    last_round_at: datetime | None = None
    last_error: str | None = None

    def add(self, done: RelayRound, at: datetime) -> None:
        self.rounds += 1
        self.published += done.published
        self.duplicates += done.duplicates
        self.failed += done.failed
        self.last_round = done
        self.last_round_at = at
        if done.error:
            self.last_error = done.error


@dataclass
class _KeyOutcome:
    published: int = 0
    duplicates: int = 0
    failed: int = 0
    full: bool = False
    breaker_open: bool = False
    errors: list[str] = field(default_factory=list)


@dataclass(eq=False)
class _Batch:
    """A claimed batch on its way: its rows, its unit of work (open while the rows are held,
    on PostgreSQL), its publish under way, its call of the breaker."""

    rows: list[OutboxRow]
    stack: contextlib.ExitStack
    uow: UnitOfWork | None = None
    future: concurrent.futures.Future[list[PublishAck | PublishError]] | None = None
    guarded: contextlib.AbstractContextManager[object] | None = None

    def results(self) -> list[PublishAck | PublishError] | None:
        """Its publish's results, waited for (None when nothing was sent or it raised)."""
        if self.future is None:
            return None
        try:
            return self.future.result()
        except Exception:
            return None


class _PublishFailedError(Exception):
    """Inside the breaker's guard: a round with failed publishes counts as a failed call."""


_current: Relay | None = None


def current_relay() -> Relay | None:
    """The relay this process started last (``sluice serve``'s, ``sluice events relay``'s), for
    metrics: its :attr:`Relay.stats` (totals and the last round) and :meth:`Relay.last_round`."""
    return _current


class Relay:
    """Publishes the outbox through ``publisher`` (see the module's doc)."""

    def __init__(
        self,
        uow: UnitOfWorkFactory,
        publisher: EventPublisher,
        *,
        batch: int = 1000,
        hold_rows: bool = False,
        lock_for: LockFactory | None = None,
        clock: Callable[[], datetime] = _wall_clock,
        after_publish: AfterPublish | None = None,
        runner: AsyncRunner | None = None,
        breakers: Breakers | None = None,
    ) -> None:
        self._uow = uow
        self.publisher = publisher
        self.batch = batch
        self.hold_rows = hold_rows
        self._lock_for = lock_for
        self._locks: dict[str, WriterLock] = {}
        self._clock = clock
        self.after_publish = after_publish
        self._runner = runner
        self._own_runner = runner is None
        self._started = False
        self._wake = threading.Event()
        self._breakers = breakers  # the process's registry when None
        self.stats = RelayStats()
        self._stats_lock = threading.Lock()
        self._settler: concurrent.futures.ThreadPoolExecutor | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def runner(self) -> AsyncRunner:
        if self._runner is None:
            self._runner = AsyncRunner()
        return self._runner

    def start(self) -> None:
        """Connect the publisher and create or check its stream (raises when it cannot)."""
        global _current
        if not self._started:
            self.runner.run(self.publisher.start())
            self._started = True
            _current = self

    def close(self) -> None:
        """Let go of the relay locks and close the publisher."""
        for lock in self._locks.values():
            with contextlib.suppress(Exception):
                lock.release()
        self._locks.clear()
        if self._runner is not None:
            try:
                self._runner.run(self.publisher.close())
            except Exception as exc:
                log.warning("events relay: closing the publisher failed", error=str(exc))
            if self._own_runner:
                self._runner.close()
                self._runner = None
        if self._settler is not None:
            self._settler.shutdown(wait=True)
            self._settler = None
        self._started = False

    def wake(self, *_args: object) -> None:
        """Start the next round now (a commit listener: new events committed)."""
        self._wake.set()

    # -- rounds -------------------------------------------------------------------------------

    def stats_snapshot(self) -> RelayStats:
        """A copy of :attr:`stats`, safe to read from another thread (metrics)."""
        with self._stats_lock:
            return dataclasses.replace(self.stats)

    def last_round(self) -> RelayRound | None:
        with self._stats_lock:
            return self.stats.last_round

    def run_round(self) -> RelayRound:
        """Publish what is pending now (up to ``batch`` rows per ordering key)."""
        self.start()
        with self._uow() as uow:
            keys = uow.events.ordering_keys()
        total = _KeyOutcome()
        skipped = 0
        for key in keys:
            if not self._take(key):
                skipped += 1
                continue
            done = self._relay_key(key)
            total.published += done.published
            total.duplicates += done.duplicates
            total.failed += done.failed
            total.full = total.full or done.full
            total.breaker_open = total.breaker_open or done.breaker_open
            total.errors.extend(done.errors)
            if done.breaker_open:
                break
        with self._uow() as uow:
            pending = uow.events.pending_count()
        result = RelayRound(
            published=total.published,
            duplicates=total.duplicates,
            failed=total.failed,
            pending=pending,
            keys=len(keys),
            skipped=skipped,
            more=total.full and not total.failed and not total.breaker_open,
            breaker_open=total.breaker_open,
            error=total.errors[0] if total.errors else None,
        )
        with self._stats_lock:
            self.stats.add(result, self._clock())
        return result

    def run(
        self,
        *,
        stop: Callable[[], bool],
        interval_s: float,
        on_round: Callable[[RelayRound], None] | None = None,
    ) -> None:
        """Round after round until ``stop()``: at once again while a batch was full, else after
        ``interval_s`` or a :meth:`wake`. A round that raises is logged and tried again."""
        failures = 0
        while not stop():
            try:
                done = self.run_round()
            except Exception as exc:
                failures += 1
                if failures & (failures - 1) == 0:  # 1, 2, 4, 8, … in a row
                    log.warning(
                        "events relay round failed",
                        error=f"{type(exc).__name__}: {exc}",
                        failures_in_a_row=failures,
                    )
                with self._stats_lock:
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                self._wake.wait(interval_s)
                self._wake.clear()
                continue
            failures = 0
            if on_round is not None:
                on_round(done)
            if done.more:
                continue
            self._wake.wait(interval_s)
            self._wake.clear()

    # -- one ordering key ---------------------------------------------------------------------

    def _take(self, key: str) -> bool:
        if self._lock_for is None:
            return True
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = self._lock_for(key)
        if lock.try_acquire():
            return True
        log.debug("events relay: another relay holds the key", ordering_key=key)
        return False

    def _holds(self, key: str) -> bool:
        """Whether this relay still holds ``key``'s lock (asked again: a PostgreSQL lock's
        session may have died since it was taken, and another relay may hold it now)."""
        if self._lock_for is None:
            return True
        lock = self._locks.get(key)
        if lock is not None and lock.held():
            return True
        log.warning("events relay: lost the key's relay lock; leaving the key", ordering_key=key)
        return False

    def _at_head(self, uow: UnitOfWork, key: str, rows: Sequence[OutboxRow]) -> bool:
        """The first batch of a round (PostgreSQL, rows held): it must start at the key's
        lowest pending row. When it does not, ``SKIP LOCKED`` jumped over rows another
        transaction holds (a relay that lost the key's lock and still publishes them): publishing
        later rows now could put them ahead of those, so the key waits for the next round."""
        head = uow.events.claim(ordering_key=key, limit=1, lock=False)
        if not head or head[0].seq == rows[0].seq:
            return True
        log.warning(
            "events relay: the key's first pending rows are held by another relay; waiting",
            ordering_key=key,
            head_seq=head[0].seq,
            claimed_seq=rows[0].seq,
        )
        return False

    def _relay_key(self, key: str) -> _KeyOutcome:
        if getattr(self.publisher, "pipelined", False):
            return self._relay_key_pipelined(key)
        if not self._holds(key):
            return _KeyOutcome(errors=["lost the relay lock"])
        if self.hold_rows:
            with self._uow() as uow:
                rows = uow.events.claim(ordering_key=key, limit=self.batch, lock=True)
                if not rows or not self._at_head(uow, key, rows) or not self._holds(key):
                    return _KeyOutcome()
                with self._settling(uow, rows) as outcome:
                    results = self._publish(rows, outcome)
                    if results is not None:
                        self._settle(uow, rows, results, outcome)
                uow.commit()
                return outcome
        with self._uow() as uow:
            rows = uow.events.claim(ordering_key=key, limit=self.batch, lock=False)
        if not rows or not self._holds(key):
            return _KeyOutcome()
        outcome = _KeyOutcome()
        with self._settling(None, rows) as outcome:
            results = self._publish(rows, outcome)
        if results is not None:
            with self._uow() as uow:
                self._settle(uow, rows, results, outcome)
                uow.commit()
        return outcome

    @contextlib.contextmanager
    def _settling(self, uow: UnitOfWork | None, rows: Sequence[OutboxRow]) -> Iterator[_KeyOutcome]:
        """A publish that raised (the publisher broke, an injected fault) counts an attempt on
        every row of the batch, then the exception goes on."""
        outcome = _KeyOutcome(full=len(rows) >= self.batch)
        try:
            yield outcome
        except Exception as exc:
            text = f"{type(exc).__name__}: {exc}"
            try:
                if uow is not None:
                    uow.events.record_failure([row.event.event_id for row in rows], text)
                    uow.commit()
                else:
                    with self._uow() as fresh:
                        fresh.events.record_failure([row.event.event_id for row in rows], text)
                        fresh.commit()
            except Exception as inner:
                log.warning("events relay: cannot record the failure", error=str(inner))
            raise

    def _publish(
        self, rows: Sequence[OutboxRow], outcome: _KeyOutcome
    ) -> list[PublishAck | PublishError] | None:
        """The bus's answer for each row, or None when the breaker refused (nothing was sent)."""
        results: list[PublishAck | PublishError] = []
        try:
            with guard(BREAKER_FLOW, registry=self._breakers):
                results = self.runner.run(self.publisher.publish_many([r.event for r in rows]))
                if len(results) != len(rows):
                    raise RuntimeError(
                        f"the publisher answered {len(results)} results for {len(rows)} events"
                    )
                if self.after_publish is not None:
                    self.after_publish(rows, results)
                errors = [r for r in results if isinstance(r, PublishError)]
                if errors:
                    raise _PublishFailedError(str(errors[0]))
        except _PublishFailedError:
            pass
        except BreakerOpenError as exc:
            outcome.breaker_open = True
            outcome.errors.append(f"{type(exc).__name__}: {exc}")
            return None
        return results

    def _settle(
        self,
        uow: UnitOfWork,
        rows: Sequence[OutboxRow],
        results: Sequence[PublishAck | PublishError],
        outcome: _KeyOutcome,
    ) -> None:
        if rows and not self._holds(rows[0].ordering_key):
            # Another relay may have the key now: it publishes these rows again (the bus
            # acks them as duplicates) and marks them; marking here could race it.
            outcome.errors.append("lost the relay lock before marking")
            return
        marked: list[tuple[str, int]] = []
        duplicates = 0
        first_error: PublishError | None = None
        failed: list[str] = []
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, PublishError):
                first_error = first_error or result
                failed.append(row.event.event_id)
            elif first_error is None:
                marked.append((row.event.event_id, result.seq))
                duplicates += result.duplicate
        outcome.published += uow.events.mark_published(marked, self._clock())
        outcome.duplicates += duplicates
        if first_error is not None:
            unknown = " (outcome unknown)" if first_error.outcome_unknown else ""
            text = f"{first_error}{unknown}"
            uow.events.record_failure(failed, text)
            outcome.failed += len(failed)
            outcome.errors.append(text)
            log.warning(
                "events relay: publish failed; published again from the first failed row",
                failed=len(failed),
                error=text,
                first_event_id=failed[0],
            )

    # -- one ordering key, batches overlapped -------------------------------------------------

    def _relay_key_pipelined(self, key: str) -> _KeyOutcome:
        """Batch after batch of the key (up to :data:`PIPELINE_BATCHES` in a round), each sent as
        soon as it is claimed and then settled (its acks waited for, its rows marked, its
        transaction ended) on the relay's settling thread, while this thread claims and sends
        the next ones: up to :data:`PIPELINE_DEPTH` batches are on their way at once. The
        publisher's window of acks stays full across batches, and the database's work (the
        claim of one batch, the marking of another) overlaps the bus's and itself.

        Why it keeps the guarantees:

        * a row is marked only after its ack, in order, up to the first row of its batch that
          was not acked; batches are settled one after the other in the order they were sent,
          and once one was not fully acked (or settling raised), every later batch of the round
          is discarded: none of its rows is marked, they are all published again from the
          failed row on, at the next round (what the bus had is acked as a duplicate and
          marked with its first sequence). A batch sent while earlier ones are on their way is
          sent as their continuation (``follows``): nothing more of it goes out once a publish
          of an earlier one failed, and the publisher never has two unacked publishes of one
          subject, across calls too, so no later event of the failed one's subject can be
          stored before its retry;
        * each batch is found like every batch, by ``published_at IS NULL`` in ``seq`` order,
          leaving out the rows of the batches on their way (on PostgreSQL each one's
          transaction holds them ``FOR UPDATE``, so ``SKIP LOCKED`` leaves them out; every batch
          is claimed in a transaction of its own, one batch only: every row the query returns
          is locked): never by "seq greater than the last one seen";
        * the key's lock is asked again before each claim, after it and before marking (a
          relay that lost it stops, marking nothing), and the round's first batch must start
          at the key's lowest pending row (:meth:`_at_head`), so rows another relay still
          holds are never jumped over;
        * the batches of a key are sent one after the other on one connection (the
          publisher's calls send in the order they were made), so a subject's events reach the
          stream in ``seq`` order; one relay per ordering key still holds (the key's lock is
          held for the whole round).
        """
        outcome = _KeyOutcome()
        stop = threading.Event()  # a batch was not fully acked, or settling raised
        on_way: collections.deque[tuple[_Batch, concurrent.futures.Future[_KeyOutcome]]] = (
            collections.deque()
        )
        batch: _Batch | None = None
        failure: BaseException | None = None
        try:
            for _ in range(PIPELINE_BATCHES):
                while len(on_way) >= PIPELINE_DEPTH and not stop.is_set():
                    self._settled(on_way.popleft()[1], outcome)
                if stop.is_set():
                    break
                exclude = {row.seq for sent, _ in on_way for row in sent.rows}
                batch = self._claim(key, exclude)
                if batch is None:
                    break
                if not self._send(batch, follows=bool(on_way), outcome=outcome):
                    batch.stack.close()
                    batch = None
                    break
                sent, batch = batch, None
                on_way.append((sent, self.settler.submit(self._settle_in_turn, sent, stop)))
                if len(sent.rows) < self.batch:
                    break
                outcome.full = True  # there may be more: the caller runs again at once
        except BaseException as exc:
            failure = exc
            stop.set()
            if batch is not None:
                self._discard(batch)
        # Every batch on its way is settled (or discarded, after a failure) before the round
        # goes on: none is left holding its rows.
        while on_way:
            try:
                self._settled(on_way.popleft()[1], outcome)
            except BaseException as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return outcome

    @property
    def settler(self) -> concurrent.futures.ThreadPoolExecutor:
        """The thread that settles the batches sent (one: they are settled in turn)."""
        if self._settler is None:
            self._settler = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="sluice-relay-settle"
            )
        return self._settler

    def _settle_in_turn(self, batch: _Batch, stop: threading.Event) -> _KeyOutcome:
        """On the settling thread: ``batch`` settled (:meth:`_finish`), or discarded when an
        earlier batch of the round was not fully acked; ``stop`` set when this one was not."""
        done = _KeyOutcome()
        if stop.is_set():
            self._discard(batch)
            return done
        try:
            if not self._finish(batch, done):
                stop.set()
        except BaseException:
            stop.set()
            raise
        return done

    @staticmethod
    def _settled(future: concurrent.futures.Future[_KeyOutcome], outcome: _KeyOutcome) -> None:
        """Wait for a batch's settling and add what it did to ``outcome``."""
        done = future.result()
        outcome.published += done.published
        outcome.duplicates += done.duplicates
        outcome.failed += done.failed
        outcome.errors.extend(done.errors)

    def _claim(self, key: str, exclude: set[int]) -> _Batch | None:
        if not self._holds(key):
            return None
        stack = contextlib.ExitStack()
        try:
            uow = stack.enter_context(self._uow())
            # On PostgreSQL the batch in flight is held by its own transaction, so SKIP LOCKED
            # already leaves it out: fetch just one batch (every row the query returns is
            # locked; fetching more would hold rows past this batch, and the next claim would
            # skip them: a later row of a subject published before an earlier one). SQLite
            # holds nothing: the query leaves out the rows in flight by their ``seq``.
            rows = uow.events.claim(
                ordering_key=key,
                limit=self.batch,
                lock=self.hold_rows,
                exclude=() if self.hold_rows else exclude,
            )
            if (
                not rows
                or (self.hold_rows and not exclude and not self._at_head(uow, key, rows))
                or not self._holds(key)
            ):
                stack.close()
                return None
            if not self.hold_rows:
                stack.close()  # SQLite: the read ends here; a short transaction marks
                return _Batch(rows, contextlib.ExitStack())
            return _Batch(rows, stack, uow)
        except BaseException:
            stack.close()
            raise

    def _send(self, batch: _Batch, *, follows: bool, outcome: _KeyOutcome) -> bool:
        """Start publishing ``batch``; False when the breaker refused (nothing sent)."""
        guarded = guard(BREAKER_FLOW, registry=self._breakers)
        try:
            guarded.__enter__()
        except BreakerOpenError as exc:
            outcome.breaker_open = True
            outcome.errors.append(f"{type(exc).__name__}: {exc}")
            return False
        batch.guarded = guarded
        events = [row.event for row in batch.rows]
        data = [row.data for row in batch.rows]
        batch.future = self.runner.submit(
            self.publisher.publish_many(events, data=data, follows=follows)  # type: ignore[call-arg]
        )
        return True

    def _finish(self, batch: _Batch, outcome: _KeyOutcome) -> bool:
        """Wait for ``batch``'s acks, mark its rows (as :meth:`_relay_key` does); True when
        every row was acked."""
        assert batch.future is not None
        assert batch.guarded is not None
        guarded, batch.guarded = batch.guarded, None
        try:
            with self._settling(batch.uow, batch.rows) as done:
                results: list[PublishAck | PublishError] = []
                try:
                    results = batch.future.result()
                    if len(results) != len(batch.rows):
                        raise RuntimeError(
                            f"the publisher answered {len(results)} results for "
                            f"{len(batch.rows)} events"
                        )
                    if self.after_publish is not None:
                        self.after_publish(batch.rows, results)
                    errors = [r for r in results if isinstance(r, PublishError)]
                    if errors:
                        raise _PublishFailedError(str(errors[0]))
                except _PublishFailedError as exc:
                    guarded.__exit__(type(exc), exc, exc.__traceback__)
                except BaseException as exc:
                    if not guarded.__exit__(type(exc), exc, exc.__traceback__):
                        raise
                else:
                    guarded.__exit__(None, None, None)
                if batch.uow is not None:
                    self._settle(batch.uow, batch.rows, results, done)
                    batch.uow.commit()
                else:
                    with self._uow() as uow:
                        self._settle(uow, batch.rows, results, done)
                        uow.commit()
        finally:
            batch.stack.close()
        outcome.published += done.published
        outcome.duplicates += done.duplicates
        outcome.failed += done.failed
        outcome.errors.extend(done.errors)
        return done.failed == 0

    def _discard(self, batch: _Batch) -> None:
        """A batch not marked at all (it followed a failure, or the relay is giving up): its
        publish is waited for, its rows stay unpublished (published again, the bus's copies
        acked as duplicates), its transaction ends."""
        try:
            batch.results()
            if batch.guarded is not None:
                guarded, batch.guarded = batch.guarded, None
                guarded.__exit__(None, None, None)
        finally:
            batch.stack.close()
