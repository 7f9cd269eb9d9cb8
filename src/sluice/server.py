"""``sluice serve``: the HTTP API, the workers and ingestion in one process.

With no configuration at all it runs on the embedded defaults: an SQLite Integration DB and an
embedded ledger file under the data directory. On the first start the ledger file is created with
the sandbox's small world (:func:`prepare_embedded_world`); later starts reuse it. With a
configuration file it runs against the deployment's database and ledger (a Canton participant or
a named embedded ledger file).

Threads and what they touch
---------------------------
The API (uvicorn's event loop and its worker threads) only uses the Integration DB. Everything that
touches the ledger runs on one background thread, the :class:`ServiceLoop`: each round it moves the
embedded ledger's clock to the wall clock (embedded only), ingests up to the ledger end, runs one
tick of the withdrawal worker and one of the deposit worker, flushes the embedded ledger, and
executes operations left approved by a crash. One thread because an embedded ledger file has
exactly one writer; against a participant node the same loop is simply the process's worker.

Ingestion has one writer per (treasury party, node) across processes: the ingestion part holds
the pair's writer lock (an advisory lock on PostgreSQL, a lock file next to an SQLite file). In
a second ``sluice serve`` for the same pair the API and the workers run as usual, while its
ingestion part tries the lock without waiting each round (:class:`IngestionStandby`) and ingests
only once the writer is gone. The lock is taken in the first round and kept until shutdown.

Shutting down
-------------
SIGTERM or Ctrl-C stops the HTTP server first (requests in progress finish, for a bounded time),
then asks the loop to stop: the round in progress finishes — a worker finishes or records what it
claimed, and every record a withdrawal worker claimed is either submitted and recorded, or left in
its previous state for the next worker — then the embedded ledger is flushed and closed and the DB
disposed. A second signal cuts the HTTP server's graceful wait short.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import Any

import structlog
import uvicorn

from sluice import bootstrap
from sluice.api.app import create_app
from sluice.api.context import ApiContext
from sluice.api.oidc import JwtVerifier, OidcSettings
from sluice.api.operations import executors
from sluice.config import DeploymentConfig
from sluice.domain.audit import AuditEntry
from sluice.domain.errors import InvalidInputError, SystemPausedError
from sluice.domain.ledger import check_party_id, format_timestamp
from sluice.ledger.local import EmbeddedLedger
from sluice.ledger.local.adapters import EmbeddedCommands, embedded_registries
from sluice.ports import UnitOfWorkFactory, WriterLock
from sluice.sandbox import EXCHANGE_NODE, create_world, onboard_world
from sluice.services.access import ApiKeyVerifier, list_api_keys
from sluice.services.approvals import run_approved
from sluice.services.compliance import KycRegistry, RegistryGate
from sluice.services.controls import current_pause
from sluice.services.deposit_worker import DepositWorker
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name
from sluice.services.settings import RuntimeSettings
from sluice.services.standby import (
    IngestionLockLostError,
    fenced,
    standby_message,
    took_over_message,
)
from sluice.services.withdrawals import WithdrawalSettings, WithdrawalWorker

log = structlog.get_logger("sluice.server")

# Where the treasury party of an embedded world is remembered (the DB's control table).
TREASURY_KEY = "treasury_party"
# The seed of the embedded world: party ids follow from it, so a world rebuilt after a crash in
# the middle of its creation has the same ids as the one the DB may already name.
WORLD_SEED = 1
WORLD_CHECKPOINT_INTERVAL_S = 30.0
# How far an embedded ledger's clock may fall behind the wall clock before it is moved.
CLOCK_STEP_S = 2.0
# Transactions one round ingests at most, so that a long backlog does not starve the workers.
ROUND_TRANSACTIONS_MAX = 10_000
FIRST_KEY_HINT = (
    "no API keys yet: create the first one with `sluice admin create-api-key --role super_admin`"
)


def _wall_clock() -> datetime:
    return datetime.now(UTC)


# --- the embedded world ------------------------------------------------------------------------


@dataclass
class EmbeddedWorld:
    """An embedded ledger opened for writing, and the treasury party sluice acts for on it."""

    ledger: EmbeddedLedger
    path: Path
    treasury: str
    created: bool


def prepare_embedded_world(
    ledger_path: Path,
    database: bootstrap.Database,
    *,
    node: str = EXCHANGE_NODE,
    treasury: str | None = None,
    create: bool = True,
    actor: str = "sluice serve",
) -> EmbeddedWorld:
    """Open the embedded ledger at ``ledger_path`` for writing, creating it with the sandbox's
    world when there is none and ``create`` allows it, and settle which party is the treasury.

    A new world is built in ``<file>.new``, onboarded in the DB (Amulet: direct, USDX: offers)
    with its treasury recorded under ``treasury_party`` in the control table (audited), and only
    then renamed into place: a crash half-way leaves no ledger file, and the next start builds the
    same world again (its party ids follow from a fixed seed; onboarding is idempotent).

    The treasury of an existing file is, in this order: ``treasury`` (the configuration's), the one
    recorded in the DB, or the only ``treasury::…`` party on ``node`` (then recorded)."""
    created = False
    if not ledger_path.exists():
        if not create:
            raise InvalidInputError(
                f"no embedded ledger at {ledger_path} (check ledger.path / --ledger, or leave "
                "them out to have one created under the data directory)"
            )
        _create_world_file(ledger_path, database, actor=actor)
        created = True
    ledger = EmbeddedLedger.open(str(ledger_path))
    try:
        party = _settle_treasury(ledger, database.uow, node, treasury, actor=actor)
    except BaseException:
        ledger.close()
        raise
    return EmbeddedWorld(ledger=ledger, path=ledger_path, treasury=party, created=created)


def _create_world_file(path: Path, database: bootstrap.Database, *, actor: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".new")
    for leftover in (building, *(building.with_name(building.name + s) for s in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    ledger = EmbeddedLedger.open(
        str(building),
        seed=WORLD_SEED,
        start_time=_wall_clock(),
        checkpoint_interval_s=WORLD_CHECKPOINT_INTERVAL_S,
    )
    try:
        world = create_world(ledger)
    finally:
        ledger.close()
    onboard_world(database.uow, world)
    _record_treasury(database.uow, world.treasury, actor=actor, how="created")
    os.replace(building, path)
    log.info("embedded world created", ledger=str(path), treasury=world.treasury)


def _settle_treasury(
    ledger: EmbeddedLedger,
    uow: UnitOfWorkFactory,
    node: str,
    configured: str | None,
    *,
    actor: str,
) -> str:
    if node not in ledger.nodes():
        raise InvalidInputError(f"the embedded ledger has no node {node!r} (ledger.node)")
    with uow() as work:
        recorded = work.withdrawals.control(TREASURY_KEY)
    if configured is not None:
        party = check_party_id(configured)
    elif recorded:
        party = recorded
    else:
        candidates = [p for p in ledger.parties(node) if p.split("::", 1)[0] == "treasury"]
        if len(candidates) != 1:
            raise InvalidInputError(
                f"cannot tell the treasury party on node {node!r} ({len(candidates)} parties "
                "named treasury): set treasury.party (or SLUICE_TREASURY_PARTY)"
            )
        party = candidates[0]
    if party not in ledger.parties(node):
        raise InvalidInputError(f"the treasury {party} is not a party on node {node!r}")
    if recorded != party and configured is None:
        _record_treasury(uow, party, actor=actor, how="found on the ledger")
    return party


def _record_treasury(uow: UnitOfWorkFactory, party: str, *, actor: str, how: str) -> None:
    """Remember the embedded world's treasury (audited); nothing happens if it is recorded."""
    at = _wall_clock()
    with uow() as work:
        previous = work.withdrawals.control(TREASURY_KEY)
        if previous == party:
            return
        work.withdrawals.set_control(TREASURY_KEY, party)
        work.audit.append(
            [
                AuditEntry(
                    operation_id=f"treasury:{party}",
                    operation="treasury_recorded",
                    actor=actor,
                    recorded_at=at,
                    parameters={"treasury": party, "how": how},
                    state_changes=[{"treasury_party": party, "was": previous}],
                )
            ]
        )
        work.commit()


def _embedded_link(world: EmbeddedWorld, node: str) -> bootstrap.LedgerConnection:
    ledger = world.ledger
    return bootstrap.LedgerConnection(
        client=ledger.node_client(node),
        commands=EmbeddedCommands(ledger),
        registries=embedded_registries(ledger),
        clock=ledger.time,
        node=node,
        description=f"embedded ledger {world.path} (node {node})",
        flush=ledger.flush,
        close=ledger.close,
        record_time_at=ledger.record_time_at,
    )


class FollowedClock:
    """The clock of an embedded ledger that follows the wall clock: each round the loop moves the
    ledger's time up to now (:meth:`follow`), so record times, deadlines and time locks mean what
    they say. The ledger journals every move, so it is moved only once it is ``step_s`` behind.
    Reading it (:meth:`__call__`, from any thread) never touches the ledger: it is the later of
    the wall clock and the ledger time seen last, for a ledger that was ahead."""

    def __init__(
        self,
        ledger: EmbeddedLedger,
        wall: Callable[[], datetime] = _wall_clock,
        *,
        step_s: float = CLOCK_STEP_S,
    ) -> None:
        self._ledger = ledger
        self._wall = wall
        self._step = timedelta(seconds=step_s)
        self._ledger_time = ledger.time()

    def follow(self) -> None:
        now = self._wall()
        if now - self._ledger.time() >= self._step:
            self._ledger.set_time(now)
        self._ledger_time = self._ledger.time()

    def __call__(self) -> datetime:
        return max(self._wall(), self._ledger_time)


# --- the service loop --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one part did in one round: whether it moved anything (then it is logged), counts for
    the log line, and problems with single items (logged as warnings; the part still ran)."""

    busy: bool = False
    counts: Mapping[str, object] = field(default_factory=dict)
    problems: Sequence[str] = ()


@dataclass(frozen=True, slots=True)
class Part:
    """One step of a round. A part that moves value is skipped while sluice is paused."""

    name: str
    run: Callable[[], Outcome | None]
    moves_value: bool = False


@dataclass
class PartStatus:
    runs: int = 0
    failures_in_a_row: int = 0
    last_success_at: datetime | None = None
    last_error: str | None = None
    last_error_at: datetime | None = None
    skipped: str | None = None  # why the last round skipped it (a pause)


class ServiceLoop:
    """Runs ``parts`` in order, round after round, on one background thread.

    An exception in one part is logged and recorded (:meth:`status`) and the round goes on with
    the next part. Between rounds the loop sleeps ``interval_s`` unless :meth:`wake` or
    :meth:`stop` is called. :meth:`readiness` is true while the thread runs and its last round
    finished less than ``stale_after_s`` ago."""

    def __init__(
        self,
        parts: Sequence[Part],
        *,
        interval_s: float = 1.0,
        paused: Callable[[], str | None] | None = None,
        close: Callable[[], None] | None = None,
        stopping: threading.Event | None = None,
        stale_after_s: float | None = None,
        clock: Callable[[], datetime] = _wall_clock,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if interval_s <= 0:
            raise InvalidInputError("the service loop's interval must be positive")
        names = [part.name for part in parts]
        if len(set(names)) != len(names):
            raise InvalidInputError(f"part names must differ: {names}")
        self.parts = tuple(parts)
        self.interval_s = interval_s
        self.stale_after_s = stale_after_s or max(10 * interval_s, 30.0)
        self._paused = paused
        self._close = close
        self._stopping = stopping or threading.Event()
        self._wake = threading.Event()
        self._clock = clock
        self._monotonic = monotonic
        self._status = {part.name: PartStatus() for part in parts}
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.rounds = 0
        self._last_round_end: float | None = None
        self._started_at: float | None = None

    # -- running --------------------------------------------------------------------------------

    @property
    def stopping(self) -> threading.Event:
        """Set when the loop is asked to stop: long parts (ingestion) poll it between batches."""
        return self._stopping

    def start(self) -> ServiceLoop:
        if self._thread is not None:
            raise InvalidInputError("the service loop is already started")
        if self._closed:
            raise InvalidInputError("the service loop was stopped; build a new one")
        self._started_at = self._monotonic()
        self._thread = threading.Thread(target=self._run, name="sluice-service-loop", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        log.info("service loop started", interval_s=self.interval_s)
        while not self._stopping.is_set():
            self.run_round()
            self._wake.wait(self.interval_s)
            self._wake.clear()
        log.info("service loop stopped", rounds=self.rounds)

    def run_round(self) -> None:
        """One round: every part once, in order (callable directly, without the thread)."""
        pause = self._pause_reason()
        for part in self.parts:
            if part.moves_value and pause is not None:
                with self._lock:
                    self._status[part.name].skipped = pause
                continue
            self._run_part(part)
        with self._lock:
            self.rounds += 1
            self._last_round_end = self._monotonic()

    def _pause_reason(self) -> str | None:
        if self._paused is None:
            return None
        try:
            return self._paused()
        except Exception as exc:  # an unreadable switch counts as on: nothing moves blindly
            log.warning("service loop cannot read the pause switch", error=str(exc))
            return f"pause switch unreadable: {exc}"

    def _run_part(self, part: Part) -> None:
        status = self._status[part.name]
        try:
            outcome = part.run()
        except SystemPausedError as exc:
            with self._lock:
                status.skipped = str(exc)
            return
        except Exception as exc:
            # One failing part must not stop the others: record it, log it, go on.
            message = f"{type(exc).__name__}: {exc}"
            with self._lock:
                repeated = status.failures_in_a_row > 0 and status.last_error == message
                status.runs += 1
                status.failures_in_a_row += 1
                status.last_error = message
                status.last_error_at = self._clock()
                count = status.failures_in_a_row
            if not repeated:
                log.exception("service loop part failed", part=part.name, failures_in_a_row=count)
            elif count & (count - 1) == 0:
                # The same failure again: a line at 2, 4, 8, … rounds, not a traceback a second.
                log.warning(
                    "service loop part still failing",
                    part=part.name,
                    failures_in_a_row=count,
                    error=message,
                )
            return
        with self._lock:
            if status.failures_in_a_row:
                log.info("service loop part recovered", part=part.name)
            status.runs += 1
            status.failures_in_a_row = 0
            status.last_success_at = self._clock()
            status.skipped = None
        if outcome is None:
            return
        if outcome.busy:
            log.info("service loop part", part=part.name, **dict(outcome.counts))
        for problem in outcome.problems:
            log.warning("service loop problem", part=part.name, problem=problem)

    def wake(self) -> None:
        """Start the next round now instead of after the interval."""
        self._wake.set()

    def stop(self, timeout_s: float = 30.0) -> bool:
        """Let the round in progress finish, end the thread, then close (flush and close the
        ledger, dispose the DB). False when the thread was still busy after ``timeout_s``: then
        nothing is closed under its feet (the process is about to end anyway)."""
        self._stopping.set()
        self._wake.set()
        thread = self._thread
        if thread is not None:
            thread.join(timeout_s)
            if thread.is_alive():
                log.warning("service loop still busy; not closing the ledger", timeout_s=timeout_s)
                return False
        if not self._closed:
            self._closed = True
            if self._close is not None:
                self._close()
        return True

    # -- what it reports ------------------------------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self) -> dict[str, PartStatus]:
        with self._lock:
            return {name: PartStatus(**vars(s)) for name, s in self._status.items()}

    def readiness(self) -> tuple[bool, str]:
        """(ready, detail) for the readiness endpoint."""
        if self._thread is None:
            return False, "not started"
        if not self._thread.is_alive():
            return False, "stopped"
        with self._lock:
            end, rounds = self._last_round_end, self.rounds
            failing = [
                f"{name}: {s.last_error}" for name, s in self._status.items() if s.failures_in_a_row
            ]
            skipped = sorted({s.skipped for s in self._status.values() if s.skipped})
        now = self._monotonic()
        if end is None:
            running = now - (self._started_at or now)
            return False, f"first round running for {running:.1f} s"
        age = now - end
        if age > self.stale_after_s:
            return False, f"last round finished {age:.1f} s ago (limit {self.stale_after_s:g} s)"
        detail = f"{rounds} rounds, last finished {age:.1f} s ago"
        if skipped:
            detail += f"; value-moving parts skipped ({'; '.join(skipped)})"
        if failing:
            detail += f"; failing: {'; '.join(failing)}"
        return True, detail


class IngestionStandby:
    """The ingestion part's side of the writer lock: each round it tries the lock without
    waiting (the API and the workers keep running meanwhile), logs once that it waits as a
    standby and for whom, and when it took over. A lock lost while writing is let go of; the
    next round tries again."""

    def __init__(self, lock: WriterLock, party: str, node: str) -> None:
        self.lock = lock
        self.party = party
        self.node = node
        self.holding = False
        self._announced: str | None = None

    def try_take(self) -> bool:
        if self.lock.try_acquire():
            if not self.holding:
                if self._announced is not None:
                    log.info(took_over_message(self.party, self.node))
                else:
                    log.info("ingestion lock taken", party=self.party, node=self.node)
            self.holding = True
            self._announced = None
            return True
        self.holding = False
        message = standby_message(self.party, self.node, self.lock.holder())
        if message != self._announced:
            log.info(message)
            self._announced = message
        return False

    def lost(self, error: IngestionLockLostError) -> str:
        self.lock.release()
        self.holding = False
        message = f"{error}; waiting as standby again"
        self._announced = message
        return message


def ingestion_part(
    ingestion: Ingestion, stopping: threading.Event, standby: IngestionStandby | None = None
) -> Part:
    """Ingest up to the ledger end (at most ``ROUND_TRANSACTIONS_MAX``). With ``standby``, only
    while this process holds the writer lock; ``ingestion`` must then commit through units of
    work fenced by that lock (:func:`sluice.services.standby.fenced`)."""

    def run() -> Outcome:
        if standby is not None and not standby.try_take():
            return Outcome()
        try:
            progress = ingestion.run(
                follow=False, stop=stopping.is_set, max_transactions=ROUND_TRANSACTIONS_MAX
            )
        except IngestionLockLostError as exc:
            if standby is None:
                raise
            return Outcome(problems=(standby.lost(exc),))
        return Outcome(
            busy=bool(progress.transactions or progress.quarantined),
            counts={
                "transactions": progress.transactions,
                "checkpoints": progress.checkpoints,
                "skipped": progress.skipped,
                "offset": progress.cursor.offset if progress.cursor else None,
            },
        )

    return Part("ingestion", run)


def withdrawal_part(worker: WithdrawalWorker) -> Part:
    def run() -> Outcome:
        tick = worker.run_once()
        return Outcome(
            busy=tick.busy,
            counts={
                "settled": tick.settled,
                "retried": tick.retried,
                "refunded": tick.refunded,
                "reserved": tick.reserved,
                "submitted": tick.submitted,
                "offers_withdrawn": tick.offers_withdrawn,
                "upkeep": tick.upkeep_created,
                "held": tick.held,
            },
            problems=tuple(tick.errors),
        )

    return Part("withdrawals", run, moves_value=True)


def deposit_part(worker: DepositWorker) -> Part:
    def run() -> Outcome:
        tick = worker.run_once()
        return Outcome(
            busy=tick.busy,
            counts={
                "accepted": tick.accepted,
                "rejected": tick.rejected,
                "left_alone": tick.left_alone,
            },
            problems=tuple(tick.errors),
        )

    return Part("deposits", run, moves_value=True)


def pause_reason(uow: UnitOfWorkFactory) -> Callable[[], str | None]:
    """Why value-moving parts must not run now (the emergency pause), or None."""

    def reason() -> str | None:
        state = current_pause(uow)
        return None if state is None else f"{state.mode} since {format_timestamp(state.since)}"

    return reason


# --- wiring a whole service --------------------------------------------------------------------


@dataclass
class Service:
    """A configured sluice: the API's context and the loop that runs beside it."""

    config: DeploymentConfig
    database: bootstrap.Database
    link: bootstrap.LedgerConnection
    treasury: str
    context: ApiContext
    loop: ServiceLoop
    world: EmbeddedWorld | None = None

    @property
    def database_description(self) -> str:
        return self.database.engine.url.render_as_string(hide_password=True)

    def has_api_keys(self) -> bool:
        return bool(list_api_keys(self.database.uow, limit=1))

    def close(self, timeout_s: float = 30.0) -> bool:
        return self.loop.stop(timeout_s)


def build_service(
    config: DeploymentConfig,
    *,
    database_url: str | None = None,
    ledger_path: Path | None = None,
    ledger_url: str | None = None,
    interval_s: float = 1.0,
    withdrawal_settings: WithdrawalSettings | None = None,
    wall_clock: Callable[[], datetime] = _wall_clock,
) -> Service:
    """Wire a service from the configuration (``database_url``, ``ledger_path`` and
    ``ledger_url`` override it, as the command line's ``--db``, ``--ledger``, ``--ledger-url``).

    A participant URL (given, or configured with no ledger file given) means the Canton adapter;
    otherwise the embedded ledger file, created with the sandbox's world when no configuration
    names one and it does not exist yet. Nothing runs until ``service.loop.start()``."""
    registry = bootstrap.kyc_registry(config)
    settings = withdrawal_settings or WithdrawalSettings()
    database = bootstrap.database(database_url or config.database_url)
    try:
        link, treasury, world = _ledger(config, database, ledger_path, ledger_url, settings)
    except BaseException:
        database.dispose()
        raise
    try:
        return _wire(
            config, database, link, treasury, world, registry, settings, interval_s, wall_clock
        )
    except BaseException:
        link.close()
        database.dispose()
        raise


def _ledger(
    config: DeploymentConfig,
    database: bootstrap.Database,
    ledger_path: Path | None,
    ledger_url: str | None,
    settings: WithdrawalSettings,
) -> tuple[bootstrap.LedgerConnection, str, EmbeddedWorld | None]:
    if ledger_url is not None or (ledger_path is None and config.ledger.kind == "canton"):
        treasury = config.treasury.party
        if treasury is None:
            raise InvalidInputError(
                "no treasury party: set treasury.party (or SLUICE_TREASURY_PARTY)"
            )
        margin = config.ledger.local_margin_s
        if settings.trec_span_s <= margin:
            raise InvalidInputError(
                f"SLUICE_WITHDRAWAL_TREC_SPAN_S ({settings.trec_span_s:g} s) must exceed "
                f"ledger.local_margin_s ({margin:g} s), or no local-party withdrawal could be "
                "submitted"
            )
        link = bootstrap.canton_connection(config, database, participant_url=ledger_url)
        return link, treasury, None
    named = ledger_path is not None or config.ledger.path is not None
    world = prepare_embedded_world(
        ledger_path or config.ledger_path,
        database,
        node=config.ledger.node,
        treasury=config.treasury.party,
        create=not named,
    )
    return _embedded_link(world, config.ledger.node), world.treasury, world


def _wire(
    config: DeploymentConfig,
    database: bootstrap.Database,
    link: bootstrap.LedgerConnection,
    treasury: str,
    world: EmbeddedWorld | None,
    registry: KycRegistry,
    settings: WithdrawalSettings,
    interval_s: float,
    wall_clock: Callable[[], datetime],
) -> Service:
    follow = FollowedClock(world.ledger, wall_clock) if world is not None else None
    api_clock: Callable[[], datetime] = follow if follow is not None else wall_clock
    connection = connection_name(treasury, link.node)
    stopping = threading.Event()

    def nap(seconds: float) -> None:  # ingestion's retry back-off, cut short by a stop
        stopping.wait(seconds)

    # One ingestion writer per (treasury, node): a second `sluice serve` waits as a standby.
    writer_lock = database.writer_lock(connection)
    standby = IngestionStandby(writer_lock, treasury, link.node)
    ingestion = Ingestion(
        fenced(database.uow, writer_lock),
        link.client,
        treasury,
        connection=connection,
        settings=IngestionSettings(),
        sleep=nap,
        compliance=registry,
    )
    withdrawals = WithdrawalWorker(
        database.uow,
        link.commands,
        link.registries,
        treasury=treasury,
        connection=connection,
        clock=link.clock,
        settings=settings,
        compliance=registry,
    )
    deposits = DepositWorker(
        database.uow,
        link.commands,
        link.registries,
        RegistryGate(database.uow, registry, link.clock),
        treasury=treasury,
    )
    oidc = config.api.oidc
    context = ApiContext(
        uow=database.uow,
        treasury=treasury,
        clock=api_clock,
        compliance=registry,
        settings=RuntimeSettings(database.uow, dict(config.api.settings), clock=api_clock),
        keys=ApiKeyVerifier(database.uow),
        jwt=JwtVerifier(OidcSettings(**oidc.model_dump())) if oidc is not None else None,
        registries=link.registries,
        withdrawal_settings=settings,
        deployment=config.redacted(),
        reads=database.async_reads(),
    )
    context.executors = executors(context)
    parts: list[Part] = []
    if follow is not None:
        parts.append(Part("clock", _followed(follow)))
    parts += [
        ingestion_part(ingestion, stopping, standby),
        withdrawal_part(withdrawals),
        deposit_part(deposits),
        Part("flush", _flushed(link)),
        approvals_part(context),
    ]

    def close() -> None:
        try:
            link.flush()
        finally:
            writer_lock.release()
            link.close()
            database.dispose()

    loop = ServiceLoop(
        parts,
        interval_s=interval_s,
        paused=pause_reason(database.uow),
        close=close,
        stopping=stopping,
    )
    context.readiness = {**context.readiness, "service_loop": loop.readiness}
    return Service(
        config=config,
        database=database,
        link=link,
        treasury=treasury,
        context=context,
        loop=loop,
        world=world,
    )


def _followed(clock: FollowedClock) -> Callable[[], Outcome | None]:
    def run() -> None:
        clock.follow()

    return run


def _flushed(link: bootstrap.LedgerConnection) -> Callable[[], Outcome | None]:
    def run() -> None:
        link.flush()  # what the workers submitted reaches the file

    return run


def approvals_part(context: ApiContext) -> Part:
    """Operations whose approvals are complete but were not executed (the process stopped in
    between) are executed here; the API executes them itself when the last approval arrives."""

    def run() -> Outcome:
        executed = run_approved(context.uow, context.executors, context.clock())
        return Outcome(busy=bool(executed), counts={"executed": executed})

    return Part("approvals", run, moves_value=True)


# --- serving -----------------------------------------------------------------------------------


def configure_logging() -> None:
    """Log lines (structlog) to stderr, unless the application configured logging already."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def bind(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free one), so that a taken port fails before anything
    starts and the real port is known."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise InvalidInputError(f"cannot resolve --host {host!r}: {exc}") from exc
    family = infos[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise InvalidInputError(f"cannot listen on {host}:{port}: {exc.strerror}") from exc
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


@contextmanager
def _signals(stopping: threading.Event, forcing: threading.Event) -> Iterator[None]:
    """SIGINT / SIGTERM: the first asks for a graceful stop, the second cuts the wait short."""

    def handle(_signum: int, _frame: FrameType | None) -> None:
        # Only flags here: the main thread logs and acts once it wakes up.
        if stopping.is_set():
            forcing.set()
        stopping.set()

    previous: dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for handled in (signal.SIGINT, signal.SIGTERM):
            previous[handled] = signal.signal(handled, handle)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler if handler is not None else signal.SIG_DFL)


def serve(
    config: DeploymentConfig,
    *,
    host: str | None = None,
    port: int | None = None,
    interval_s: float = 1.0,
    database_url: str | None = None,
    ledger_path: Path | None = None,
    ledger_url: str | None = None,
    withdrawal_settings: WithdrawalSettings | None = None,
    graceful_s: float = 10.0,
    stop: threading.Event | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> bool:
    """Run the API, the workers and ingestion until SIGINT / SIGTERM (or ``stop`` is set).

    Returns True when everything stopped cleanly: the HTTP server finished its requests and the
    service loop its round, and the ledger and DB were closed."""
    configure_logging()
    sock = bind(host or config.api.host, config.api.port if port is None else port)
    try:
        service = build_service(
            config,
            database_url=database_url,
            ledger_path=ledger_path,
            ledger_url=ledger_url,
            interval_s=interval_s,
            withdrawal_settings=withdrawal_settings,
        )
    except BaseException:
        sock.close()
        raise
    stopping = stop or threading.Event()
    forcing = threading.Event()
    try:
        app = create_app(service.context)
        server = uvicorn.Server(
            uvicorn.Config(
                app,
                lifespan="auto",
                log_level="warning",
                access_log=False,
                timeout_graceful_shutdown=max(1, int(graceful_s)),
            )
        )
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="sluice-http", daemon=True
        )
        with _signals(stopping, forcing):
            service.loop.start()
            thread.start()
            url = url_of(sock)
            while not server.started and thread.is_alive() and not stopping.is_set():
                stopping.wait(0.01)
            if server.started:
                _announce(service, url)
                if on_ready is not None:
                    on_ready(url)
            while not stopping.is_set():
                if not thread.is_alive():
                    log.error("the HTTP server stopped on its own; shutting down")
                    break
                if not service.loop.alive:
                    log.error("the service loop stopped on its own; shutting down")
                    break
                stopping.wait(0.5)
            clean = thread.is_alive() and service.loop.alive
            log.info("stopping: HTTP requests in progress finish, then the service loop's round")
            server.should_exit = True
            deadline = time.monotonic() + graceful_s + 5
            while thread.is_alive() and time.monotonic() < deadline:
                if forcing.is_set():
                    server.force_exit = True
                thread.join(0.1)
            if thread.is_alive():
                server.force_exit = True
                thread.join(5)
                clean = False
            log.info("HTTP server stopped")
    finally:
        loop_stopped = service.close(timeout_s=graceful_s + 20)
        sock.close()
    clean = clean and loop_stopped
    log.info("sluice stopped", clean=clean)
    return clean


def _announce(service: Service, url: str) -> None:
    log.info(
        "sluice serving",
        url=url,
        openapi=f"{url}/openapi.json",
        database=service.database_description,
        ledger=service.link.description,
        treasury=service.treasury,
        interval_s=service.loop.interval_s,
    )
    if service.world is not None and service.world.created:
        log.info("embedded ledger created with Amulet and USDX", ledger=str(service.world.path))
    if not service.has_api_keys():
        log.info(FIRST_KEY_HINT)
