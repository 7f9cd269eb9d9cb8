"""The relay's publisher on NATS JetStream (nats-py).

* **Connection**: reconnects are retried without limit (``max_reconnect_attempts=-1``); every
  disconnect, reconnect, error and close is logged. A connection that cannot be made at all at
  :meth:`JetStreamPublisher.start` raises :class:`~sluice.domain.errors.ComponentCallFailedError`
  (the relay tries again at its next round).
* **Stream**: created at start (subjects ``<prefix>sluice.>``, the configured duplicate window),
  or checked: an existing stream whose subjects or duplicate window differ is updated, and one
  that cannot be (another stream holds the subjects, the server refuses) fails start with the
  reason.
* **Publishing**: each event to its subject with ``Nats-Msg-Id`` = its ``event_id`` (JetStream
  drops a second copy within the duplicate window and acks it as a duplicate with the first
  copy's sequence), at most ``max_in_flight`` acks outstanding at once. No ack within
  ``ack_timeout_s`` is :class:`PublishError` with ``outcome_unknown`` (it may be stored: publish
  again with the same id); a JetStream refusal is a :class:`PublishError`. **Order per
  subject is strict**: publishes of different subjects are pipelined, but a subject never has
  two unacked publishes outstanding: a later event of a subject is sent only once the earlier
  one is acked (meanwhile the other subjects' events keep flowing). A failed publish (refused,
  no ack in time, the send itself failed) stops its batch: nothing more of it is sent (each is
  a :class:`PublishError` "not sent"), and a later event of the failed one's subject, already
  waiting for it, is never sent either. So no later event of a subject can be stored (from the
  wire or from the reconnect buffer) before an earlier one that has not been acked, and the
  failed one's retry can never land after a later event of its own subject. Results come back
  in the input order, one per event; nothing is swallowed.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

import nats.errors
import nats.js.errors
import orjson
import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import Header, StreamConfig

from sluice.domain.errors import ComponentCallFailedError
from sluice.domain.events import SUBJECT_PREFIX, Event
from sluice.ports.events import PublishAck, PublishError

log = structlog.get_logger("sluice.events")

RECONNECT_WAIT_S = 1
CONNECT_TIMEOUT_S = 5
# How long the first connection may take, over every attempt.
FIRST_CONNECT_TIMEOUT_S = 15.0
# Outgoing bytes kept while disconnected (then published on reconnect).
RECONNECT_BUFFER_BYTES = 64 * 1024 * 1024


def stream_subjects(subject_prefix: str = "") -> list[str]:
    """The stream's subjects: every sluice subject (behind the prefix, when one is set)."""
    return [f"{subject_prefix}{SUBJECT_PREFIX}.>"]


def safe_url(url: str) -> str:
    """``url`` without its credentials, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


async def connect(
    url: str, *, name: str = "sluice", first_timeout_s: float = FIRST_CONNECT_TIMEOUT_S
) -> Client:
    """A NATS connection that reconnects without limit and logs what happens to it; the first
    connection must be made within ``first_timeout_s``."""
    where = safe_url(url)
    nc = Client()

    async def disconnected() -> None:
        if nc.is_closed or nc.is_draining:
            return  # our own close
        log.warning("nats disconnected", url=where)

    async def reconnected() -> None:
        log.info("nats reconnected", url=where)

    async def error(exc: Exception) -> None:
        log.warning("nats error", url=where, error=f"{type(exc).__name__}: {exc}")

    async def closed() -> None:
        log.info("nats connection closed", url=where)

    try:
        # The first connection is bounded (with reconnects unlimited, nats-py would try forever).
        await asyncio.wait_for(
            nc.connect(
                url,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=RECONNECT_WAIT_S,
                connect_timeout=CONNECT_TIMEOUT_S,
                allow_reconnect=True,
                pending_size=RECONNECT_BUFFER_BYTES,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                closed_cb=closed,
            ),
            timeout=first_timeout_s,
        )
    except Exception as exc:
        with contextlib.suppress(Exception):
            await nc.close()  # nats-py raises plain OSErrors and its own NoServersError
        raise ComponentCallFailedError(
            f"cannot connect to NATS at {where}: {type(exc).__name__}: {exc}"
        ) from exc
    return nc


async def ensure_stream(
    js: JetStreamContext, name: str, *, duplicate_window_s: float, subject_prefix: str = ""
) -> str:
    """Create the stream ``name`` or bring an existing one to the subjects and duplicate window
    wanted; returns what was done (``created``, ``updated`` or ``checked``)."""
    subjects = stream_subjects(subject_prefix)
    try:
        info = await js.stream_info(name)
    except nats.js.errors.NotFoundError:
        info = None
    except Exception as exc:
        raise ComponentCallFailedError(f"cannot read JetStream stream {name}: {exc}") from exc
    if info is None:
        try:
            await js.add_stream(
                StreamConfig(name=name, subjects=subjects, duplicate_window=duplicate_window_s)
            )
        except Exception as exc:
            raise ComponentCallFailedError(
                f"cannot create JetStream stream {name} on {subjects}: {exc}"
            ) from exc
        log.info(
            "events stream created", stream=name, subjects=subjects, dup_window_s=duplicate_window_s
        )
        return "created"
    config = info.config
    have_subjects = sorted(config.subjects or [])
    have_window = float(config.duplicate_window or 0)
    if set(subjects) <= set(have_subjects) and abs(have_window - duplicate_window_s) < 1e-6:
        return "checked"
    wanted = dataclasses.replace(
        config,
        subjects=sorted(set(have_subjects) | set(subjects)),
        duplicate_window=duplicate_window_s,
    )
    try:
        await js.update_stream(wanted)
    except Exception as exc:
        raise ComponentCallFailedError(
            f"JetStream stream {name} has subjects {have_subjects} and a duplicate window of "
            f"{have_window:g} s; it cannot be updated to {subjects} and {duplicate_window_s:g} s: "
            f"{exc}"
        ) from exc
    log.info(
        "events stream updated",
        stream=name,
        subjects=wanted.subjects,
        dup_window_s=duplicate_window_s,
        was_subjects=have_subjects,
        was_dup_window_s=have_window,
    )
    return "updated"


NO_RESPONDERS = "503"
NOT_SENT = "not sent: an earlier publish of the batch failed"


class AckTimeoutError(Exception):
    """No ack came within the ack timeout."""


class RefusedError(Exception):
    """JetStream answered the publish with an error (its description)."""


class NoStreamError(Exception):
    """No stream answered (no responders on the subject)."""


class _Acks:
    """The acks of pipelined publishes, on one wildcard inbox subscription of the publisher's
    (nats-py's own ``publish_async`` never completes a publish JetStream refuses), and their
    timeouts: one timer for them all, set for the oldest publish awaiting its ack (every
    publish gets the same ``timeout_s``, so the oldest is the first one due; a timer per
    publish cost the publishing loop more than the publish itself)."""

    def __init__(self, timeout_s: float) -> None:
        self.prefix: str | None = None
        self.timeout_s = timeout_s
        # token -> (future, when it is due on the loop's clock), oldest first.
        self._futures: dict[str, tuple[asyncio.Future[dict[str, Any]], float]] = {}
        self._next = 0
        self._timer: asyncio.TimerHandle | None = None

    async def start(self, nc: Client) -> None:
        if self.prefix is None:
            prefix = nc.new_inbox() + "."
            await nc.subscribe(prefix + "*", cb=self._reply)
            self.prefix = prefix

    def inbox(self, token: str) -> str:
        assert self.prefix is not None
        return self.prefix + token

    def register(self, future: asyncio.Future[dict[str, Any]]) -> str:
        """A token for ``future``: the answer on its inbox completes it, else an
        :class:`AckTimeoutError` once ``timeout_s`` have passed."""
        loop = future.get_loop()
        self._next += 1
        token = str(self._next)
        due = loop.time() + self.timeout_s
        self._futures[token] = (future, due)
        if self._timer is None:
            self._timer = loop.call_at(due, self._expire_due, loop)
        return token

    def forget(self, token: str) -> None:
        self._futures.pop(token, None)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail every publish whose ack is due, then set the timer for the oldest left."""
        self._timer = None
        now = loop.time()
        futures = self._futures
        while futures:
            token = next(iter(futures))
            future, due = futures[token]
            if due > now:
                self._timer = loop.call_at(due, self._expire_due, loop)
                return
            del futures[token]
            if not future.done():
                future.set_exception(AckTimeoutError())

    async def _reply(self, msg: Msg) -> None:
        assert self.prefix is not None
        entry = self._futures.pop(msg.subject[len(self.prefix) :], None)
        if entry is None or entry[0].done():
            return
        future = entry[0]
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS:
            future.set_exception(NoStreamError("no JetStream stream answers on the subject"))
            return
        try:
            answer = orjson.loads(msg.data)
        except ValueError:
            future.set_exception(RefusedError(f"not a JetStream answer: {msg.data[:200]!r}"))
            return
        error = answer.get("error") if isinstance(answer, dict) else None
        if error is not None or not isinstance(answer, dict) or "seq" not in answer:
            description = error.get("description") if isinstance(error, dict) else error
            code = error.get("err_code") if isinstance(error, dict) else None
            future.set_exception(RefusedError(f"{description or answer} (err_code {code})"))
            return
        future.set_result(answer)


class NotSentError(Exception):
    """The publish was not sent: an earlier one of its subject or of its batch failed."""


_Outcome = asyncio.Future[dict[str, Any]]


def _settled(
    future: _Outcome,
    subject: str,
    tails: dict[str, _Outcome],
    window: asyncio.Semaphore,
    call: _Call,
) -> None:
    """A publish is answered (or given up): its place in the window is free, its subject has
    no unacked publish left if it was the last one, and its batch stops once it failed."""
    if future.cancelled() or future.exception() is not None:
        call.failed = True
    if tails.get(subject) is future:
        del tails[subject]
    window.release()


class _Call:
    """One ``publish_many`` call, or a run of calls each continuing the one before
    (``follows``), which share one: ``failed`` once one of their publishes failed."""

    __slots__ = ("failed",)

    def __init__(self) -> None:
        self.failed = False


class JetStreamPublisher:
    """:class:`~sluice.ports.events.EventPublisher` on NATS JetStream."""

    def __init__(
        self,
        url: str,
        stream: str,
        *,
        duplicate_window_s: float = 120.0,
        max_in_flight: int = 1024,
        ack_timeout_s: float = 5.0,
        subject_prefix: str = "",
        name: str = "sluice-relay",
        first_connect_timeout_s: float = FIRST_CONNECT_TIMEOUT_S,
    ) -> None:
        self.url = url
        self.stream = stream
        self.duplicate_window_s = duplicate_window_s
        self.max_in_flight = max_in_flight
        self.ack_timeout_s = ack_timeout_s
        self.subject_prefix = subject_prefix
        self.name = name
        self.first_connect_timeout_s = first_connect_timeout_s
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self.stream_state: str | None = None
        self._acks = _Acks(self.ack_timeout_s)
        # Shared by every call on the publisher's loop: the window of acks in flight, the turn
        # to send, and the last call made (what a ``follows`` call continues).
        self._window: asyncio.Semaphore | None = None
        self._send: asyncio.Lock | None = None
        self._last_call: _Call | None = None
        # Per subject, its last publish not answered yet: the next one of the subject waits
        # for it (never two unacked publishes of one subject).
        self._tails: dict[str, _Outcome] = {}
        self._waiting: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        if self._nc is None or self._nc.is_closed:
            self._acks = _Acks(self.ack_timeout_s)
            self._window = self._send = self._last_call = None
            self._tails = {}
            self._nc = await connect(
                self.url, name=self.name, first_timeout_s=self.first_connect_timeout_s
            )
            self._js = self._nc.jetstream(
                timeout=self.ack_timeout_s,
            )
        assert self._js is not None
        self.stream_state = await ensure_stream(
            self._js,
            self.stream,
            duplicate_window_s=self.duplicate_window_s,
            subject_prefix=self.subject_prefix,
        )

    @property
    def connected(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    def subject_of(self, event: Event) -> str:
        return f"{self.subject_prefix}{event.subject}"

    # The relay may hand over the envelopes already encoded (``data``) and overlap batches
    # (``follows``): see :meth:`publish_many`.
    pipelined = True

    async def publish_many(
        self,
        events: Sequence[Event],
        *,
        data: Sequence[bytes | None] | None = None,
        follows: bool = False,
    ) -> list[PublishAck | PublishError]:
        """Publish ``events`` in order (``data[i]``, when given, is ``events[i].encode()``
        already made). Calls send one after the other in the order they were made, sharing
        one window of ``max_in_flight`` acks, so a call made while the previous one's acks are
        outstanding keeps the window full. With ``follows`` the call continues the previous
        one: once any publish of the previous call (or of a call it continues in turn) failed,
        nothing more of this call is sent (each is a :class:`PublishError` "not sent"), as
        within one call, and the same goes the other way. Across all calls, a
        subject has at most one unacked publish: a later event of it waits for the earlier
        one's ack (then is sent, while other subjects' events went on meanwhile) and is not
        sent at all when the earlier one failed."""
        nc = self._nc
        if nc is None:
            raise RuntimeError("JetStreamPublisher.publish_many before start")
        acks = self._acks
        await acks.start(nc)
        loop = asyncio.get_running_loop()
        if self._window is None or self._send is None:
            self._window = asyncio.Semaphore(self.max_in_flight)
            self._send = asyncio.Lock()
        window = self._window
        tails = self._tails
        pending: list[asyncio.Future[dict[str, Any]] | PublishError] = []

        async def send(subject: str, event: Event, body: bytes | None, future: _Outcome) -> None:
            """Put one publish on the wire (or in the reconnect buffer); ``future`` gets its
            ack, its refusal, an ack timeout, or the error of the send itself."""
            token = acks.register(future)
            try:
                await nc.publish(
                    subject,
                    body if body is not None else event.encode(),
                    reply=acks.inbox(token),
                    headers={"Nats-Msg-Id": event.event_id, "Nats-Expected-Stream": self.stream},
                )
            except Exception as exc:
                acks.forget(token)
                if not future.done():
                    future.set_exception(exc)

        async def after(
            earlier: _Outcome, subject: str, event: Event, body: bytes | None, future: _Outcome
        ) -> None:
            """Send ``event`` once the earlier publish of its subject is acked; not at all when
            that one failed (or the batch stopped): a retry of the earlier one can then never
            land after it."""
            await asyncio.wait([earlier])
            if future.done():
                return
            if earlier.cancelled() or earlier.exception() is not None or call.failed:
                future.set_exception(NotSentError(NOT_SENT))
                return
            await send(subject, event, body, future)

        async with self._send:
            # A call that continues the one before shares its flag: a failure in either stops
            # both (nothing more of them is sent).
            call = self._last_call if follows and self._last_call is not None else _Call()
            self._last_call = call
            for index, event in enumerate(events):
                # Sent in input order, pipelined: at most max_in_flight acks awaited at once
                # (a publish waiting for its subject's earlier one holds its place in the window).
                await window.acquire()
                if call.failed:
                    window.release()
                    pending.append(PublishError(NOT_SENT))
                    continue
                subject = self.subject_of(event)
                body = data[index] if data is not None else None
                future: _Outcome = loop.create_future()
                earlier = tails.get(subject)
                tails[subject] = future
                future.add_done_callback(
                    functools.partial(
                        _settled, subject=subject, tails=tails, window=window, call=call
                    )
                )
                if earlier is None:
                    await send(subject, event, body, future)
                else:
                    # One unacked publish per subject: this one waits for the earlier one's
                    # ack; the other subjects' publishes keep flowing meanwhile.
                    task = loop.create_task(after(earlier, subject, event, body, future))
                    self._waiting.add(task)
                    task.add_done_callback(self._waiting.discard)
                pending.append(future)
        results: list[PublishAck | PublishError] = []
        for item in pending:
            if isinstance(item, PublishError):
                results.append(item)
                continue
            try:
                ack = await item
            except Exception as exc:
                results.append(self._error(exc))
                continue
            results.append(
                PublishAck(
                    str(ack["stream"]), int(ack["seq"]), duplicate=bool(ack.get("duplicate"))
                )
            )
        return results

    def _error(self, exc: Exception) -> PublishError:
        if isinstance(exc, NotSentError):
            return PublishError(NOT_SENT)
        if isinstance(exc, RefusedError):
            return PublishError(f"JetStream refused the publish: {exc}")
        if isinstance(exc, AckTimeoutError | TimeoutError | nats.errors.TimeoutError):
            return PublishError(f"no ack within {self.ack_timeout_s:g} s", outcome_unknown=True)
        if isinstance(exc, NoStreamError | nats.errors.NoRespondersError):
            return PublishError(f"not stored: {exc}")
        # The connection closed, the buffer for a reconnect is full, …: it may have gone out.
        return PublishError(f"{type(exc).__name__}: {exc}", outcome_unknown=True)

    async def close(self) -> None:
        nc, self._nc, self._js = self._nc, None, None
        if nc is not None and not nc.is_closed:
            try:
                await nc.drain()
            except Exception as exc:
                log.warning("nats drain failed; closing", error=f"{type(exc).__name__}: {exc}")
                await nc.close()
