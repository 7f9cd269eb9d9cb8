"""The deterministic simulation: customers, the exchange's workers and ingestion, ledger faults and
crashes, driven by one seed, with the exchange's guarantees checked after every step.

``sluice sim --seed S --steps N`` (and :func:`run_simulation`) builds a :class:`Sandbox` — an
embedded ledger whose seed is ``S``, an Integration DB, customers ``cust-N`` — and takes ``N``
steps. Each step draws, from ``random.Random(S)`` only, one action:

* a customer deposits Amulet 1-step with their deposit account as reason (sometimes another
  customer's, an unknown one or none: suspense), or sends a USDX offer to the treasury (which the
  deposit worker accepts, rejects by the compliance gate, or leaves alone when the reason is
  unknown); a customer withdraws an offer of theirs the exchange has not answered;
* a customer requests a withdrawal of part of their credited balance, Amulet or USDX (sometimes
  more than they have, or again under an idempotency key already used: a refused or repeated
  request must change nothing), or accepts, rejects or ignores a USDX withdrawal offer (ignored
  ones are withdrawn by the worker after ``offer_timeout_s`` or expired by the admin);
* the clock advances (usually with a checkpoint); the admin expires due instructions;
* ingestion runs (sometimes only for a few transactions, always in small batches), the withdrawal
  worker runs (reserve, submit, settle, retry, refund, withdraw stale offers, merge and split the
  pool), the deposit worker runs.

Before the action, with probability ``fault_rate`` the ledger is given a fault: the next command
commits but its response is lost; the next commands fail; the next read is cut after a few items;
the next read re-delivers from an older offset; or the exchange's node is restored from a backup
and re-learns what came after at new offsets — the simulation then follows the runbook (``sluice
ingest --from-record-time``): the cursor moves to the node's offset for the last ingested record
time, or a little earlier, and what is read again is skipped by update id. With probability
``crash_rate`` the workers and ingestion are dropped and rebuilt from the DB; crashes also strike
inside them — before a submission, between a submission and its recording, around an accept or an
offer withdrawal, after an ingestion batch — as an exception the worker does not catch.

The simulation keeps its own model of what the ledger committed (from the customers' command
results and the treasury's command completions) and, after **every** step, checks:

* ``books``: the journal balances against its postings; per instrument, customers + suspense +
  in-flight + fees = the treasury account = the ingested holdings; no customer is negative;
* ``credits``: per customer and instrument, balance + live withdrawals + completed withdrawals =
  the deposits (1-step, and offers once accepted) with that customer's account as reason whose
  update ingestion has taken in — each deposit is credited exactly once, and not before;
  ``suspense`` likewise for unknown reasons; ``in_flight`` = the live withdrawals; ``fees`` stay
  zero (the sandbox charges none);
* ``cursor``: every transaction the treasury's stream carries with a record time up to the
  cursor's has been ingested (what the worker relies on to declare an attempt failed);
* ``payments``: at most one transfer committed per withdrawal, merge or split; a completed record
  has exactly one; a refunded Amulet withdrawal (or a failed merge or split) has none; a USDX
  withdrawal is completed only if its receiver accepted the offer, and never refunded after that;
* ``reservations``: every reserved holding belongs to a live record awaiting its outcome that
  lists it, no holding is an input of two such records, and their inputs are reserved by them;
* ``alerts``: none but unattributed deposits (no ``withdrawal_paid_twice``, no
  ``withdrawal_amount_mismatch``, no rebuilt withdrawal, nothing unexplained);
* ``holdings``: once ingestion has caught up, the ingested holdings of the treasury are exactly
  the ledger's;
* ``request``: a refused or repeated withdrawal request changed nothing;
* ``error``: nothing raised an exception that its faults do not explain.

At the end, faults stop, the clock moves past every deadline and the workers and ingestion run
until nothing is left to do (a bounded number of rounds). Then (``settled``) every withdrawal is
completed or refunded and no reservation is left, the checks above hold, a USDX withdrawal is
completed exactly when its offer was accepted, and (``wallets``) every customer's wallet on the
ledger holds what they were given, minus what they sent, plus what was paid out to them.

The result is one JSON line ``{"seed", "steps", "deposits", "withdrawals", "crashes", "faults",
"violations"}`` (each violation names the step and the check; a check is reported at the first
step it fails). The same seed gives the same line — on SQLite and PostgreSQL alike: nothing
depends on wall-clock time or hash order. ``python -m sluice.sim --seeds 1-500`` runs many seeds
(``make soak``).
"""

from __future__ import annotations

import argparse
import atexit
import functools
import json
import random
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import ROUND_DOWN, Decimal
from pathlib import Path
from typing import Any

from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, event, func, select

from sluice import bootstrap
from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.errors import SluiceError
from sluice.domain.journal import (
    FEES,
    IN_FLIGHT,
    SUSPENSE,
    AccountRef,
    customer_account_name,
)
from sluice.domain.ledger import InstrumentId, Transfer, format_timestamp, parse_timestamp
from sluice.domain.withdrawals import AWAITING_OUTCOME_STATUSES, LIVE_STATUSES, Withdrawal
from sluice.ledger.local import (
    CommandRejectedError,
    CommandResult,
    ResponseLostError,
)
from sluice.ports import (
    ChoiceContextData,
    FactoryChoice,
    InstructionChoice,
    LedgerCommands,
    LedgerReadError,
)
from sluice.sandbox import Sandbox
from sluice.services.books import check_invariant
from sluice.services.deposit_worker import DepositWorker
from sluice.services.ingestion import (
    Ingestion,
    IngestionProgress,
    IngestionSettings,
    IngestionStoppedError,
)
from sluice.services.recovery import offset_for_record_time, rewind_cursor
from sluice.services.withdrawals import WithdrawalSettings, WithdrawalWorker, request_withdrawal
from sluice.store import tables
from sluice.store.database import MIGRATIONS, empty_tables
from sluice.store.repositories import SqlBooksRepository

CUSTOMERS = 3
TAP = Decimal(10_000)
# Short spans relative to the clock moves below, so that retries, stale offers and expiries all
# happen within a few hundred steps; a small pool threshold, so that merges and splits do too.
SETTINGS = WithdrawalSettings(
    trec_span_s=60.0,
    attempts_max=2,
    offer_expiry_s=400.0,
    offer_timeout_s=340.0,
    merge_threshold=8,
    merge_small_below=Decimal(25),
    split_parallel=2,
    split_large_at_least=Decimal(50),
)
CLOCK_MOVES_S = (1, 5, 15, 30, 60, 90, 180)
DEPOSIT_OFFER_SPANS_S = (120, 300, 900)
ACTIONS: tuple[tuple[str, int], ...] = (
    ("deposit_direct", 14),
    ("deposit_offer", 8),
    ("cancel_deposit_offer", 2),
    ("request_withdrawal", 12),
    ("answer_offer", 8),
    ("advance_clock", 10),
    ("expire_instructions", 3),
    ("ingest", 14),
    ("run_withdrawal_worker", 11),
    ("run_deposit_worker", 7),
)
FAULTS: tuple[tuple[str, int], ...] = (
    ("lose_response", 3),
    ("fail_command", 3),
    ("cut_stream", 2),
    ("redeliver", 2),
    ("restore_node", 1),
)
# Actions that touch only the ledger, never the Integration DB.
LEDGER_ONLY = frozenset(
    {
        "deposit_direct",
        "deposit_offer",
        "cancel_deposit_offer",
        "answer_offer",
        "advance_clock",
        "expire_instructions",
    }
)
DRAIN_ROUNDS_MAX = 20
# Past every deadline at once: attempts, stale offers, offer expiries, customers' offers.
DRAIN_CLOCK_MOVE_S = (
    max(
        SETTINGS.trec_span_s,
        SETTINGS.offer_timeout_s,
        SETTINGS.offer_expiry_s,
        *DEPOSIT_OFFER_SPANS_S,
    )
    + 1.0
)
# Alerts the simulation expects: deposits with an unknown or missing reason go to suspense.
EXPECTED_ALERTS = ("deposit_unattributed",)
# The command id of a withdrawal's, merge's or split's transfer: ``{record id}-{attempt}``.
_TRANSFER_COMMAND = re.compile(r"^((?:wd|merge|split)-[0-9a-f]{32})-(\d+)$")
_ACCEPT_COMMAND = re.compile(r"^deposit-accept-(.{24})-\d+$")

Tamper = Callable[[int, Sandbox], None]


class _Crash(Exception):  # noqa: N818 - it is not an error: the simulated process dies
    """A simulated crash: the worker or ingestion that raises it is gone mid-work."""


@dataclass(slots=True)
class SimulationResult:
    """What one simulation did and every check that failed (``violations``, each naming the step
    and the check). ``outcomes`` counts what happened (not part of the JSON line)."""

    seed: int
    steps: int
    deposits: int = 0
    withdrawals: int = 0
    crashes: int = 0
    faults: int = 0
    violations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_json_line(self) -> str:
        """The deterministic one-line summary: the same seed gives the same line."""
        return json.dumps(
            {
                "seed": self.seed,
                "steps": self.steps,
                "deposits": self.deposits,
                "withdrawals": self.withdrawals,
                "crashes": self.crashes,
                "faults": self.faults,
                "violations": self.violations,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )


@dataclass(frozen=True, slots=True)
class _Commit:
    """A transaction the treasury's stream carries, and what ingesting it must credit."""

    update_id: str
    record_time: datetime
    account: str | None = None  # customer:… or suspense
    instrument: InstrumentId | None = None
    amount: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class _DepositOffer:
    contract_id: str
    customer_id: str
    account: str
    instrument: InstrumentId
    amount: Decimal


@dataclass(frozen=True, slots=True)
class _DatabaseState:
    """What the checks read from the Integration DB."""

    books_problems: list[str]
    cursor_offset: int | None
    cursor_time: datetime | None
    balances: dict[AccountRef, Decimal]
    records: list[Any]  # rows of _RECORDS
    reserved: dict[str, str]  # active holding → the record that reserved it
    spent: dict[str, bool]  # archived inputs of records awaiting an outcome → whether locked
    alerts: list[tuple[str, str]]  # (kind, message) of the first unexpected alert
    treasury_holdings: frozenset[str]  # the treasury's active holdings, ingested


@dataclass(frozen=True, slots=True)
class _Request:
    customer_id: str
    key: str
    instrument: InstrumentId
    amount: Decimal


class _DenyMultiplesOfEleven:
    """A compliance gate that refuses offers whose amount in cents is a multiple of 11 (about
    one in eleven), so the deposit worker's reject path is taken too."""

    def allows_deposit(
        self, customer_id: str, sender: str, instrument: InstrumentId, amount: Decimal
    ) -> tuple[bool, str]:
        if int(amount * 100) % 11 == 0:
            return False, "simulated compliance refusal"
        return True, "allowed"


class _CrashingCommands:
    """The ledger commands, with crashes of the calling worker before a submission and around
    the exercise of an instruction choice (a crash after a submission is the worker's own
    ``after_submit`` hook)."""

    def __init__(self, inner: LedgerCommands, crash: Callable[[str], None]) -> None:
        self._inner = inner
        self._crash = crash

    def submit_transfer(
        self,
        transfer: Transfer,
        factory: FactoryChoice,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None,
    ) -> None:
        self._crash("before_submit")
        self._inner.submit_transfer(
            transfer,
            factory,
            act_as=act_as,
            command_id=command_id,
            max_record_time=max_record_time,
        )

    def exercise_instruction(
        self,
        choice: InstructionChoice,
        instruction_cid: str,
        context: ChoiceContextData,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None = None,
    ) -> None:
        self._crash(f"before_{choice}")
        self._inner.exercise_instruction(
            choice,
            instruction_cid,
            context,
            act_as=act_as,
            command_id=command_id,
            max_record_time=max_record_time,
        )
        self._crash(f"after_{choice}")


# --- the Integration DB for one run --------------------------------------------------------------

_templates: dict[str, Path] = {}


@functools.cache
def _migration_head() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(config).get_current_head()
    return str(head)


def _template() -> Path:
    """A migrated, empty SQLite Integration DB, made once per process and migration head:
    copying it is several times faster than migrating a new file for every run."""
    head = _migration_head()
    path = _templates.get(head)
    if path is None:
        directory = Path(tempfile.mkdtemp(prefix="sluice-sim-template-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        path = directory / f"{head}.db"
        bootstrap.database(f"sqlite:///{path}").dispose()
        _templates[head] = path
    return path


def _fast_sqlite(connection: Any, _record: object) -> None:
    # The run's file is thrown away afterwards: durability buys nothing here.
    cursor = connection.cursor()
    cursor.execute("PRAGMA synchronous=OFF")
    cursor.close()


def empty_database(url: str) -> None:
    """Migrate the DB at ``url`` and empty every table (TRUNCATE on PostgreSQL)."""
    database = bootstrap.database(url)
    try:
        empty_tables(database.engine)
    finally:
        database.dispose()


@contextmanager
def _database_url(db_url: str | None) -> Iterator[str]:
    if db_url is not None:
        empty_database(db_url)
        yield db_url
        return
    directory = Path(tempfile.mkdtemp(prefix="sluice-sim-"))
    try:
        path = directory / "sluice.db"
        shutil.copyfile(_template(), path)
        yield f"sqlite:///{path}"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


# --- the simulation ------------------------------------------------------------------------------


def run_simulation(
    seed: int,
    steps: int,
    *,
    crash_rate: float = 0.05,
    fault_rate: float = 0.05,
    db_url: str | None = None,
    tamper: Tamper | None = None,
    via_http: bool = False,
) -> SimulationResult:
    """Run ``steps`` steps of the simulation for ``seed`` and return what happened.

    ``db_url`` None: a fresh SQLite file in a temporary directory (deleted afterwards); otherwise
    that database is emptied first. ``tamper`` (for tests of the checks themselves) is called
    after each step's action, before the checks, with the step number and the sandbox.
    ``via_http``: the exchange side talks to the ledger through the Canton client over a local
    HTTP/WebSocket server (the ledger's faults then reach it as a node's errors would).
    """
    if steps < 0:
        raise ValueError("steps must not be negative")
    for name, rate in (("crash_rate", crash_rate), ("fault_rate", fault_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{name} must be between 0 and 1")
    with _database_url(db_url) as url:
        sandbox = Sandbox.create(
            url,
            customers=CUSTOMERS,
            seed=seed,
            tap=TAP,
            withdrawal_settings=SETTINGS,
            ingestion_settings=IngestionSettings(retry_delay_s=0.0, retry_delay_max_s=0.0),
            via_http=via_http,
        )
        try:
            if db_url is None:
                event.listen(sandbox.database.engine, "connect", _fast_sqlite)
                sandbox.database.engine.dispose()
            simulation = _Simulation(seed, steps, sandbox, crash_rate, fault_rate, tamper)
            return simulation.run()
        finally:
            sandbox.close()


class _Simulation:
    def __init__(
        self,
        seed: int,
        steps: int,
        sandbox: Sandbox,
        crash_rate: float,
        fault_rate: float,
        tamper: Tamper | None,
    ) -> None:
        self.rng = random.Random(seed)
        self.sb = sandbox
        self.ledger = sandbox.ledger
        self.engine: Engine = sandbox.database.engine
        self.crash_rate = crash_rate
        self.fault_rate = fault_rate
        self.tamper = tamper
        self.result = SimulationResult(seed=seed, steps=steps)
        self.label = "setup"
        self._failed_checks: set[str] = set()
        self._reclaimed: set[tuple[str, str]] = set()
        self._cursor_floor: datetime | None = None  # the cursor's record time at the last check
        self._newest_ingested: datetime | None = None  # of the commits ingested since a rewind
        self.instruments = (sandbox.coin, sandbox.token)
        self.customer_ids = sorted(sandbox.customers)
        self.accounts = {"acct-" + c.removeprefix("cust-"): c for c in self.customer_ids}
        # The model: what the ledger committed, as the customers and the treasury's completions
        # tell it.
        self.unconfirmed: list[_Commit] = []  # not (yet) seen in ingested_updates
        self.ingested: set[str] = set()  # update ids seen there
        self.owed: dict[tuple[str, InstrumentId], Decimal] = {}  # by the ingested commits
        self.sent: dict[tuple[str, InstrumentId], Decimal] = {}
        self.deposit_offers: dict[str, _DepositOffer] = {}  # by the last 24 chars of the cid
        self.payments: dict[str, int] = {}  # record id → transfers committed
        self.accepted: set[str] = set()  # USDX withdrawals whose offer the receiver accepted
        self.requests: list[_Request] = []
        self.completion_sequence = 0
        self._ingestion: Ingestion | None = None
        self._withdrawal_worker: WithdrawalWorker | None = None
        self._deposit_worker: DepositWorker | None = None
        self._database_state: _DatabaseState | None = None
        self._dirty = True

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> SimulationResult:
        names = [name for name, _ in ACTIONS]
        weights = [weight for _, weight in ACTIONS]
        for step in range(1, self.result.steps + 1):
            self.label = f"step {step}"
            if self.rng.random() < self.fault_rate:
                self._inject_fault()
            if self.rng.random() < self.crash_rate:
                self._restart("restart")
            action = self.rng.choices(names, weights)[0]
            self.result.outcomes[f"action_{action}"] += 1
            self._perform(getattr(self, f"_{action}"), ledger_only=action in LEDGER_ONLY)
            self._absorb_completions()
            if self.tamper is not None:
                self.tamper(step, self.sb)
                self._dirty = True
            self._check()
        self.label = "end"
        self._drain()
        return self.result

    def _perform(self, action: Callable[[], None], *, ledger_only: bool = False) -> None:
        try:
            action()
        except _Crash as crash:
            self._restart(str(crash))
        except IngestionStoppedError as exc:
            if isinstance(exc.__cause__, LedgerReadError):
                # Too many cut reads in a row: ingestion gives up; a restart resumes.
                self.result.outcomes["ingestion_stopped"] += 1
                self._ingestion = None
            else:
                self._violation("error", f"ingestion stopped: {exc}")
        except Exception as exc:  # anything else the exchange raised is a finding
            self._violation("error", f"{type(exc).__name__}: {exc}")
        finally:
            if not ledger_only:
                self._dirty = True

    def _restart(self, where: str) -> None:
        """A crash: the workers and ingestion are gone; new ones start from the DB."""
        self.result.crashes += 1
        self.result.outcomes[f"crash_{where}"] += 1
        self._ingestion = None
        self._withdrawal_worker = None
        self._deposit_worker = None

    def _maybe_crash(self, where: str) -> None:
        if self.crash_rate and self.rng.random() < self.crash_rate:
            raise _Crash(where)

    def _violation(self, check: str, detail: str) -> None:
        """Record a failed check; each check is reported once, at the first step it fails."""
        if check in self._failed_checks:
            return
        self._failed_checks.add(check)
        self.result.violations.append(f"{self.label}: {check}: {detail}")

    # -- the parts of the exchange, rebuilt after a crash ------------------------------------------

    @property
    def commands(self) -> LedgerCommands:
        return _CrashingCommands(self.sb.commands, self._maybe_crash)

    def ingestion(self) -> Ingestion:
        if self._ingestion is None:
            settings = IngestionSettings(
                batch_size_max=self.rng.randint(1, 20),
                read_attempts_max=5,
                retry_delay_s=0.0,
                retry_delay_max_s=0.0,
            )
            self._ingestion = Ingestion(
                self.sb.database.uow,
                self.sb.ledger_client(),
                self.sb.treasury,
                connection=self.sb.connection,
                settings=settings,
                sleep=lambda _s: None,
                on_batch=self._after_batch,
            )
        return self._ingestion

    def _after_batch(self, _progress: IngestionProgress) -> None:
        self._maybe_crash("after_batch")

    def _after_submit(self, _record: Withdrawal) -> None:
        self._maybe_crash("after_submit")

    def withdrawal_worker(self) -> WithdrawalWorker:
        if self._withdrawal_worker is None:
            self._withdrawal_worker = self.sb.withdrawal_worker(
                commands=self.commands, after_submit=self._after_submit
            )
        return self._withdrawal_worker

    def deposit_worker(self) -> DepositWorker:
        if self._deposit_worker is None:
            self._deposit_worker = DepositWorker(
                self.sb.database.uow,
                self.commands,
                self.sb.registries,
                _DenyMultiplesOfEleven(),
                treasury=self.sb.treasury,
            )
        return self._deposit_worker

    # -- customers ----------------------------------------------------------------------------

    def _customer(self) -> str:
        return self.rng.choice(self.customer_ids)

    def _amount(self, top: int = 400_000) -> Decimal:
        return Decimal(self.rng.randint(1, top)).scaleb(-4)

    def _reason(self, customer_id: str) -> str | None:
        roll = self.rng.random()
        if roll < 0.78:
            return "acct-" + customer_id.removeprefix("cust-")
        if roll < 0.84:
            return "acct-" + self._customer().removeprefix("cust-")
        if roll < 0.94:
            return f"acct-unknown-{self.rng.randint(1, 99)}"
        return None

    def _account_for(self, reason: str | None) -> str:
        customer = self.accounts.get(reason) if reason else None
        return customer_account_name(customer) if customer is not None else SUSPENSE

    def _send(self, sender: str, send: Callable[[], CommandResult]) -> CommandResult | None:
        """A customer's or the admin's command: the result if it committed (a lost response
        still committed), None if it was rejected."""
        try:
            return send()
        except ResponseLostError as lost:
            self.result.outcomes[f"{sender}_response_lost"] += 1
            return lost.result
        except CommandRejectedError:
            self.result.outcomes[f"{sender}_command_rejected"] += 1
            return None

    def _deposit_direct(self) -> None:
        customer = self._customer()
        reason = self._reason(customer)
        amount = self._amount()
        committed = self._send(
            "customer",
            lambda: self.ledger.transfer(
                self.sb.customers[customer], self.sb.treasury, self.sb.coin, amount, reason=reason
            ),
        )
        if committed is None:
            return
        self.result.deposits += 1
        account = self._account_for(reason)
        self.result.outcomes["deposit_suspense" if account == SUSPENSE else "deposit_direct"] += 1
        self._add_sent(customer, self.sb.coin, amount)
        self._watch(committed, account, self.sb.coin, amount)

    def _deposit_offer(self) -> None:
        customer = self._customer()
        reason = self._reason(customer)
        amount = self._amount()
        span = timedelta(seconds=self.rng.choice(DEPOSIT_OFFER_SPANS_S))
        committed = self._send(
            "customer",
            lambda: self.ledger.transfer(
                self.sb.customers[customer],
                self.sb.treasury,
                self.sb.token,
                amount,
                reason=reason,
                execute_before=self.ledger.time() + span,
            ),
        )
        if committed is None or committed.instruction_cid is None:
            return
        self.result.deposits += 1
        self.result.outcomes["deposit_offer"] += 1
        self._watch(committed)
        cid = committed.instruction_cid
        self.deposit_offers[cid[-24:]] = _DepositOffer(
            cid, customer, self._account_for(reason), self.sb.token, amount
        )

    def _cancel_deposit_offer(self) -> None:
        pending = self.ledger.active_instructions(self.sb.treasury)
        offers = sorted(
            (i for i in pending if i.transfer.receiver == self.sb.treasury),
            key=lambda i: i.contract_id,
        )
        if not offers:
            return
        offer = self.rng.choice(offers)
        sender = offer.transfer.sender
        if self._send("customer", lambda: self.ledger.withdraw(offer.contract_id, sender)):
            self.result.outcomes["deposit_offer_withdrawn"] += 1

    def _watch(
        self,
        committed: CommandResult,
        account: str | None = None,
        instrument: InstrumentId | None = None,
        amount: Decimal = ZERO,
    ) -> None:
        """A commit the treasury's stream carries (crediting ``account``, if given)."""
        self.unconfirmed.append(
            _Commit(committed.update_id, committed.record_time, account, instrument, amount)
        )

    def _add_sent(self, customer: str, instrument: InstrumentId, amount: Decimal) -> None:
        key = (customer, instrument)
        self.sent[key] = self.sent.get(key, ZERO) + amount

    def _request_withdrawal(self) -> None:
        before = self._read_database()  # as the previous step left it
        roll = self.rng.random()
        if roll < 0.06 and self.requests:
            earlier = self.rng.choice(self.requests)
            same = self.rng.random() < 0.5
            amount = earlier.amount if same else earlier.amount + Decimal("0.0001")
            request = replace(earlier, amount=amount)
        else:
            # Mostly someone with something to withdraw; sometimes anyone.
            funded = [
                (customer, instrument)
                for instrument in self.instruments
                for customer in self.customer_ids
                if before.balances.get(AccountRef(customer_account_name(customer), instrument))
            ]
            if funded and self.rng.random() < 0.9:
                customer, instrument = self.rng.choice(funded)
            else:
                customer, instrument = self._customer(), self.rng.choice(self.instruments)
            account = AccountRef(customer_account_name(customer), instrument)
            balance = before.balances.get(account, ZERO)
            if roll < 0.14:
                amount = balance + self._amount(10_000)  # more than they have
            elif roll < 0.2:
                amount = balance
            else:
                share = Decimal(self.rng.randint(1, 100)) / 100
                amount = (balance * share).quantize(Decimal("0.0001"), rounding=ROUND_DOWN)
            request = _Request(customer, f"sim-{self.label.split()[-1]}", instrument, amount)
        try:
            withdrawal = request_withdrawal(
                self.sb.database.uow,
                treasury=self.sb.treasury,
                customer_id=request.customer_id,
                receiver=self.sb.customers[request.customer_id],
                instrument=request.instrument,
                amount=request.amount,
                idempotency_key=request.key,
                clock=self.sb.clock,
                settings=SETTINGS,
            )
        except (SluiceError, ValueError) as exc:
            self.result.outcomes[f"request_refused_{type(exc).__name__}"] += 1
            self._check_unchanged(before, f"a refused request changed the books: {exc}")
            return
        if any((r.customer_id, r.key) == (request.customer_id, request.key) for r in self.requests):
            self.result.outcomes["request_repeated"] += 1
            self._check_unchanged(before, f"repeating request {withdrawal.id} changed the books")
            return
        self.requests.append(request)
        self.result.withdrawals += 1
        self.result.outcomes[f"request_{withdrawal.instrument.id}"] += 1

    def _check_unchanged(self, before: _DatabaseState, problem: str) -> None:
        self._dirty = True
        after = self._read_database()
        if (after.balances, after.records) != (before.balances, before.records):
            self._violation("request", problem)

    def _answer_offer(self) -> None:
        offers = sorted(
            (
                i
                for i in self.ledger.active_instructions(self.sb.treasury)
                if i.transfer.sender == self.sb.treasury and i.transfer.receiver != self.sb.treasury
            ),
            key=lambda i: i.contract_id,
        )
        if not offers:
            return
        offer = self.rng.choice(offers)
        receiver = offer.transfer.receiver
        roll = self.rng.random()
        if roll < 0.5:
            accepted = self._send(
                "customer", lambda: self.ledger.accept(offer.contract_id, receiver)
            )
            if accepted is not None:
                self._watch(accepted)
                self.result.outcomes["offer_accepted"] += 1
                if offer.transfer.reason:
                    self.accepted.add(offer.transfer.reason)
        elif roll < 0.8:
            rejected = self._send(
                "customer", lambda: self.ledger.reject(offer.contract_id, receiver)
            )
            if rejected is not None:
                self._watch(rejected)
                self.result.outcomes["offer_rejected"] += 1
        else:
            self.result.outcomes["offer_ignored"] += 1

    # -- the clock and the admin --------------------------------------------------------------

    def _advance_clock(self) -> None:
        self.ledger.advance(self.rng.choice(CLOCK_MOVES_S))
        if self.rng.random() < 0.7:
            self.ledger.checkpoint()

    def _expire_instructions(self) -> None:
        try:
            expired = self.ledger.expire_instructions()
        except ResponseLostError:
            expired = []
        except CommandRejectedError:
            self.result.outcomes["admin_command_rejected"] += 1
            return
        self.result.outcomes["instructions_expired"] += len(expired)

    # -- the exchange ---------------------------------------------------------------------------

    def _ingest(self) -> None:
        if self.rng.random() < 0.3:
            self.ingestion().run(max_transactions=self.rng.randint(1, 6))
        else:
            self.ingestion().run()

    def _run_withdrawal_worker(self) -> None:
        tick = self.withdrawal_worker().run_once()
        outcomes = self.result.outcomes
        outcomes["worker_retried"] += tick.retried
        outcomes["worker_refunded"] += tick.refunded
        outcomes["worker_submit_errors"] += tick.submit_errors
        outcomes["worker_offers_withdrawn"] += tick.offers_withdrawn
        outcomes["worker_upkeep"] += tick.upkeep_created

    def _run_deposit_worker(self) -> None:
        tick = self.deposit_worker().run_once()
        self.result.outcomes["deposit_worker_rejected"] += tick.rejected

    def _absorb_completions(self) -> None:
        """Learn from the treasury's command completions what the exchange made the ledger do:
        transfers for withdrawal-like records, and accepted deposit offers."""
        completions = self.ledger.completions(self.sb.treasury, self.completion_sequence)
        for completion in completions:
            self.completion_sequence = completion.sequence
            if completion.status != "ok":
                continue
            transfer = _TRANSFER_COMMAND.match(completion.command_id)
            if transfer is not None:
                record = transfer.group(1)
                self.payments[record] = self.payments.get(record, 0) + 1
                self.unconfirmed.append(_Commit(completion.update_id or "", completion.record_time))
                continue
            accept = _ACCEPT_COMMAND.match(completion.command_id)
            if accept is not None:
                offer = self.deposit_offers.pop(accept.group(1), None)
                if offer is None:
                    self._violation("credits", f"an unknown offer was accepted: {completion}")
                    continue
                self.result.outcomes["deposit_offer_accepted"] += 1
                self._add_sent(offer.customer_id, offer.instrument, offer.amount)
                self.unconfirmed.append(
                    _Commit(
                        completion.update_id or "",
                        completion.record_time,
                        offer.account,
                        offer.instrument,
                        offer.amount,
                    )
                )

    # -- faults ---------------------------------------------------------------------------------

    def _inject_fault(self) -> None:
        faults = self.ledger.faults
        kind = self.rng.choices([n for n, _ in FAULTS], [w for _, w in FAULTS])[0]
        node = self.sb.node
        if kind == "lose_response":
            faults.drop_next_responses(1)
        elif kind == "fail_command":
            faults.fail_next_commands(self.rng.randint(1, 3))
        elif kind == "cut_stream":
            faults.cut_stream_after(self.rng.randint(0, 5), node=node)
        elif kind == "redeliver":
            faults.redeliver_from(self.rng.randint(0, self.ledger.ledger_end(node)), node=node)
        else:
            end = self.ledger.ledger_end(node)
            backup = max(0, end - self.rng.randint(0, 40))
            faults.restore_node_from_backup(
                node, backup, offset_shift=self.rng.choice((0, 0, 3, 100))
            )
            self._rewind_cursor()
            self._dirty = True
        self.result.faults += 1
        self.result.outcomes[f"fault_{kind}"] += 1

    def _rewind_cursor(self) -> None:
        """The runbook after a node restore: its offsets changed, record times did not, so move
        the cursor to the node's offset for the last ingested record time (sometimes a little
        earlier); what is read again is skipped by update id."""
        with self.sb.database.uow() as uow:
            cursor = uow.ingestion.load_cursor(self.sb.connection)
        if cursor is None or cursor.record_time is None:
            return
        since = cursor.record_time - timedelta(seconds=self.rng.choice((0, 0, 30, 300)))
        treasury = self.sb.treasury
        offset = offset_for_record_time(self.sb.ledger_client(), treasury, since)
        self._cursor_floor = self._newest_ingested = None  # moving it back is the point
        rewind_cursor(
            self.sb.database.uow,
            self.sb.connection,
            treasury,
            offset=offset,
            record_time=self.ledger.record_time_at(treasury, offset) if offset else None,
        )

    # -- the checks -----------------------------------------------------------------------------

    def _check(self, *, final: bool = False) -> None:
        state = self._read_database()
        for problem in state.books_problems:
            self._violation("books", problem)
        if state.cursor_offset == self.ledger.ledger_end(self.sb.node):
            on_ledger = {h.contract_id for h in self.ledger.active_holdings(self.sb.treasury)}
            if state.treasury_holdings != on_ledger:
                ingested = state.treasury_holdings
                self._violation(
                    "holdings",
                    f"ingestion caught up but holds {len(ingested - on_ledger)} holdings the "
                    f"ledger does not and misses {len(on_ledger - ingested)} (e.g. "
                    f"{sorted(ingested ^ on_ledger)[0]})",
                )
        elif final:
            self._violation("holdings", "ingestion did not catch up with the ledger")
        self._check_cursor(state.cursor_time)
        self._check_credits(state.balances, state.records)
        self._check_payments(state.records, final=final)
        self._check_reservations(state.records, state.reserved, state.spent)
        for kind, message in state.alerts:
            self._violation("alerts", f"{kind}: {message}")

    def _read_database(self) -> _DatabaseState:
        """Everything the checks need from the Integration DB. Read again only after a step that
        could have written to it: a step that only moved the ledger (a customer's transfer, the
        clock, the admin) leaves it as it was, so the previous reading is still exact."""
        if self._database_state is not None and not self._dirty:
            return self._database_state
        problems = check_invariant(self.sb.database.uow).problems
        holdings = tables.holdings
        with self.engine.connect() as connection:
            cursor = connection.execute(
                select(tables.ledger_cursors.c.offset, tables.ledger_cursors.c.record_time).where(
                    tables.ledger_cursors.c.connection == self.sb.connection
                )
            ).first()
            balances = SqlBooksRepository(connection).balances()
            records = list(connection.execute(_RECORDS))
            reserved = {
                row.contract_id: row.reserved_by
                for row in connection.execute(
                    select(holdings.c.contract_id, holdings.c.reserved_by).where(
                        holdings.c.reserved_by.is_not(None),
                        holdings.c.archived_update_id.is_(None),
                    )
                )
            }
            awaited = [
                contract_id
                for row in records
                if row.status in AWAITING_OUTCOME_STATUSES
                for contract_id in json.loads(row.inputs)
                if contract_id not in reserved
            ]
            spent = {
                row.contract_id: row.lock_holders is not None
                for row in connection.execute(
                    select(holdings.c.contract_id, holdings.c.lock_holders).where(
                        holdings.c.contract_id.in_(awaited),
                        holdings.c.archived_update_id.is_not(None),
                    )
                )
            }
            alerts = [
                (row.kind, row.message)
                for row in connection.execute(
                    select(tables.alerts.c.kind, tables.alerts.c.message)
                    .where(tables.alerts.c.kind.not_in(EXPECTED_ALERTS))
                    .order_by(tables.alerts.c.id)
                    .limit(1)
                )
            ]
            self._confirm_ingested(connection)
            treasury_holdings = frozenset(
                connection.execute(
                    select(holdings.c.contract_id).where(
                        holdings.c.owner == self.sb.treasury,
                        holdings.c.archived_update_id.is_(None),
                    )
                ).scalars()
            )
        self._database_state = _DatabaseState(
            books_problems=problems,
            cursor_offset=cursor.offset if cursor is not None else None,
            cursor_time=parse_timestamp(cursor.record_time)
            if cursor is not None and cursor.record_time
            else None,
            balances=balances,
            records=records,
            reserved=reserved,
            spent=spent,
            alerts=alerts,
            treasury_holdings=treasury_holdings,
        )
        self._dirty = False
        return self._database_state

    def _confirm_ingested(self, connection: Connection) -> None:
        """Move the commits ingestion has taken in (by update id) out of ``unconfirmed``, adding
        what they credit to ``owed``."""
        if not self.unconfirmed:
            return
        ids = [commit.update_id for commit in self.unconfirmed]
        column = tables.ingested_updates.c.update_id
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self.ingested.update(
                connection.execute(select(column).where(column.in_(chunk))).scalars()
            )
        waiting: list[_Commit] = []
        for commit in self.unconfirmed:
            if commit.update_id not in self.ingested:
                waiting.append(commit)
                continue
            newest = self._newest_ingested
            self._newest_ingested = (
                max(newest, commit.record_time) if newest else commit.record_time
            )
            if commit.account is not None and commit.instrument is not None:
                key = (commit.account, commit.instrument)
                self.owed[key] = self.owed.get(key, ZERO) + commit.amount
        self.unconfirmed = waiting

    def _check_cursor(self, cursor_time: datetime | None) -> None:
        """What the withdrawal worker relies on to declare an attempt failed: everything up to
        the cursor's record time has been ingested. And the record time is that of the newest
        update ingested (or later); it only moves back when the runbook moves the cursor."""
        newest = self._newest_ingested
        if newest is not None and (cursor_time is None or cursor_time < newest):
            self._violation(
                "cursor",
                f"an update of {format_timestamp(newest)} was ingested, but the cursor's record "
                f"time is {format_timestamp(cursor_time) if cursor_time else 'none'}",
            )
        if cursor_time is None:
            return
        floor, self._cursor_floor = self._cursor_floor, cursor_time
        if floor is not None and cursor_time < floor:
            self._violation(
                "cursor",
                f"the cursor's record time moved back from {format_timestamp(floor)} to "
                f"{format_timestamp(cursor_time)}",
            )
        for commit in self.unconfirmed:
            if commit.record_time <= cursor_time:
                self._violation(
                    "cursor",
                    f"update {commit.update_id} ({format_timestamp(commit.record_time)}) is not "
                    f"ingested, but the cursor says {format_timestamp(cursor_time)} was reached",
                )
                return

    def _check_credits(self, balances: dict[AccountRef, Decimal], records: list[Any]) -> None:
        owed = self.owed
        live: dict[tuple[str, InstrumentId], Decimal] = {}
        paid: dict[tuple[str, InstrumentId], Decimal] = {}
        for row in records:
            if row.kind != "withdrawal" or row.customer_id is None:
                continue
            instrument = InstrumentId(row.instrument_admin, row.instrument_id)
            key = (customer_account_name(row.customer_id), instrument)
            if row.status in LIVE_STATUSES:
                live[key] = live.get(key, ZERO) + row.amount
                live[(IN_FLIGHT, instrument)] = live.get((IN_FLIGHT, instrument), ZERO) + row.amount
            elif row.status == "completed":
                paid[key] = paid.get(key, ZERO) + row.amount
        for instrument in self.instruments:
            for customer in self.customer_ids:
                key = (customer_account_name(customer), instrument)
                balance = balances.get(AccountRef(*key), ZERO)
                total = balance + live.get(key, ZERO) + paid.get(key, ZERO)
                if total != owed.get(key, ZERO):
                    self._violation(
                        "credits",
                        f"{customer} {instrument.id}: balance {_show(balance)} + in flight "
                        f"{_show(live.get(key))} + paid out {_show(paid.get(key))} = "
                        f"{_show(total)}, but the ingested deposits credit {_show(owed.get(key))}",
                    )
            suspense = balances.get(AccountRef(SUSPENSE, instrument), ZERO)
            if suspense != owed.get((SUSPENSE, instrument), ZERO):
                self._violation(
                    "suspense",
                    f"{instrument.id}: suspense holds {_show(suspense)}, the ingested deposits "
                    f"with unknown reasons {_show(owed.get((SUSPENSE, instrument)))}",
                )
            in_flight = balances.get(AccountRef(IN_FLIGHT, instrument), ZERO)
            if in_flight != live.get((IN_FLIGHT, instrument), ZERO):
                self._violation(
                    "in_flight",
                    f"{instrument.id}: in flight {_show(in_flight)}, live withdrawals "
                    f"{_show(live.get((IN_FLIGHT, instrument)))}",
                )
            fees = balances.get(AccountRef(FEES, instrument), ZERO)
            if fees != 0:
                self._violation("fees", f"{instrument.id}: fees {_show(fees)}, none charged")

    def _check_payments(self, records: list[Any], *, final: bool) -> None:
        for record_id, count in self.payments.items():
            if count > 1:
                self._violation("payments", f"{count} transfers committed for {record_id}")
        for row in records:
            count = self.payments.get(row.id, 0)
            instrument = InstrumentId(row.instrument_admin, row.instrument_id)
            is_offer = row.kind == "withdrawal" and instrument == self.sb.token
            if row.rebuilt:
                self._violation("payments", f"{row.id} was rebuilt from the chain")
            if row.status == "completed":
                if count != 1:
                    self._violation("payments", f"{row.id} completed with {count} transfers")
                if is_offer and row.id not in self.accepted:
                    self._violation("payments", f"{row.id} completed but its offer not accepted")
            elif row.status == "failed":
                if is_offer and row.id in self.accepted:
                    self._violation("payments", f"{row.id} refunded after its offer was accepted")
                if not is_offer and count:
                    self._violation("payments", f"{row.id} refunded but its transfer committed")
            elif final:
                self._violation("settled", f"{row.kind} {row.id} is still {row.status}")
            if final and is_offer and (row.status == "completed") != (row.id in self.accepted):
                accepted = "accepted" if row.id in self.accepted else "not accepted"
                self._violation("payments", f"{row.id} is {row.status}, its offer {accepted}")

    def _check_reservations(
        self, records: list[Any], reserved: dict[str, str], spent: dict[str, bool]
    ) -> None:
        inputs_of: dict[str, list[str]] = {}
        owner: dict[str, str] = {}
        for row in records:
            if row.status not in AWAITING_OUTCOME_STATUSES:
                continue
            inputs = json.loads(row.inputs)
            inputs_of[row.id] = inputs
            for contract_id in inputs:
                other = owner.setdefault(contract_id, row.id)
                if other != row.id:
                    self._violation(
                        "reservations", f"{contract_id} is an input of {other} and {row.id}"
                    )
                if spent.get(contract_id):
                    # A holding whose lock had expired when it was reserved (the treasury's own
                    # offer that nobody answered): the offer's withdrawal or expiry returned it
                    # first. The attempt cannot commit; it is settled and retried.
                    if (row.id, contract_id) not in self._reclaimed:
                        self._reclaimed.add((row.id, contract_id))
                        self.result.outcomes["input_lock_reclaimed"] += 1
                elif reserved.get(contract_id) != row.id:
                    self._violation(
                        "reservations",
                        f"input {contract_id} of {row.status} {row.id} is reserved by "
                        f"{reserved.get(contract_id)}",
                    )
        for contract_id, record_id in sorted(reserved.items()):
            if contract_id not in inputs_of.get(record_id, ()):
                self._violation(
                    "reservations",
                    f"{contract_id} is reserved by {record_id}, which is not awaiting it",
                )

    # -- the end --------------------------------------------------------------------------------

    def _drain(self) -> None:
        """Stop the faults, move the clock past every deadline and run everything until nothing
        is left to do; then check that every withdrawal is finished and every wallet adds up."""
        self.ledger.faults.clear()
        self.crash_rate = 0.0
        self._ingestion = None
        self._withdrawal_worker = None
        self._deposit_worker = None
        for round_ in range(DRAIN_ROUNDS_MAX):
            # The worker twice: what one run reserves or plans, the next submits (before the
            # clock moves past its trec_tgt).
            for action in (
                self._full_ingest,
                self._run_deposit_worker,
                self._run_withdrawal_worker,
                self._run_withdrawal_worker,
                self._full_ingest,
            ):
                self._perform(action)
                self._absorb_completions()
            if self._quiet():
                break
            if round_ % 2 == 0:
                self.ledger.advance(DRAIN_CLOCK_MOVE_S)
                self.ledger.checkpoint()
            # After the clock moved, the admin expires what is due either at once or a round
            # later (the worker has withdrawn its stale offers by then).
            if round_ % 2 == 1 or self.rng.random() < 0.5:
                self._perform(self._expire_instructions, ledger_only=True)
                self._absorb_completions()
        self._check(final=True)
        self._check_wallets()
        for row in self._read_database().records:
            self.result.outcomes[f"end_{row.kind}_{_ending(row.status, row.failure)}"] += 1

    def _full_ingest(self) -> None:
        self.ingestion().run()

    def _quiet(self) -> bool:
        if self.ledger.active_instructions(self.sb.treasury):
            return False
        with self.engine.connect() as connection:
            live = connection.execute(
                select(func.count())
                .select_from(tables.withdrawals)
                .where(tables.withdrawals.c.status.in_(sorted(LIVE_STATUSES)))
            ).scalar_one()
            cursor = connection.execute(
                select(tables.ledger_cursors.c.offset).where(
                    tables.ledger_cursors.c.connection == self.sb.connection
                )
            ).scalar_one_or_none()
        return live == 0 and cursor == self.ledger.ledger_end(self.sb.node)

    def _check_wallets(self) -> None:
        received: dict[tuple[str, InstrumentId], Decimal] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(_RECORDS):
                if row.kind == "withdrawal" and row.status == "completed":
                    key = (row.receiver, InstrumentId(row.instrument_admin, row.instrument_id))
                    received[key] = received.get(key, ZERO) + row.amount
        for customer in self.customer_ids:
            party = self.sb.customers[customer]
            for instrument in self.instruments:
                held = sum((h.amount for h in self.ledger.active_holdings(party, instrument)), ZERO)
                expected = (
                    TAP
                    - self.sent.get((customer, instrument), ZERO)
                    + received.get((party, instrument), ZERO)
                )
                if held != expected:
                    self._violation(
                        "wallets",
                        f"{customer} holds {_show(held)} {instrument.id} on the ledger; given "
                        f"{_show(TAP)}, sent {_show(self.sent.get((customer, instrument)))}, "
                        f"paid out {_show(received.get((party, instrument)))}",
                    )


_RECORDS = select(
    tables.withdrawals.c.id,
    tables.withdrawals.c.kind,
    tables.withdrawals.c.customer_id,
    tables.withdrawals.c.receiver,
    tables.withdrawals.c.instrument_admin,
    tables.withdrawals.c.instrument_id,
    tables.withdrawals.c.amount,
    tables.withdrawals.c.status,
    tables.withdrawals.c.inputs,
    tables.withdrawals.c.rebuilt,
    tables.withdrawals.c.failure,
).order_by(tables.withdrawals.c.id)


def _show(amount: Decimal | None) -> str:
    return format_amount(amount if amount is not None else ZERO)


def _ending(status: str, failure: str | None) -> str:
    """How a record ended, for the outcome counts: completed, offer_rejected / _withdrawn /
    _failed (expired), attempts_expired, or failed."""
    if status != "failed" or not failure:
        return status
    if failure.startswith("offer "):
        return failure.replace(" ", "_")
    if "expired" in failure:
        return "attempts_expired"
    return "failed"


# --- entry points ------------------------------------------------------------------------------


def simulate_command(
    seed: int,
    steps: int,
    crash_rate: float = 0.05,
    fault_rate: float = 0.05,
    db_url: str | None = None,
    via_http: bool = False,
) -> int:
    """``sluice sim``: run one simulation, print its JSON line; the exit code (1 on any
    violation)."""
    result = run_simulation(
        seed,
        steps,
        crash_rate=crash_rate,
        fault_rate=fault_rate,
        db_url=db_url,
        via_http=via_http,
    )
    print(result.as_json_line())
    return 0 if result.ok else 1


def _parse_seeds(text: str) -> list[int]:
    seeds: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        if last:
            seeds.extend(range(int(first), int(last) + 1))
        else:
            seeds.append(int(first))
    return seeds


def _run_one(
    arguments: tuple[int, int, float, float, str | None, bool],
) -> SimulationResult:
    seed, steps, crash_rate, fault_rate, db_url, via_http = arguments
    return run_simulation(
        seed,
        steps,
        crash_rate=crash_rate,
        fault_rate=fault_rate,
        db_url=db_url,
        via_http=via_http,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m sluice.sim --seeds 1-500 --steps 400``: many seeds; prints the line of every
    seed with violations, then a summary line; exit code 1 if any seed had one."""
    parser = argparse.ArgumentParser(prog="python -m sluice.sim", description=main.__doc__)
    parser.add_argument("--seeds", default="1", help="e.g. 7, 1-500 or 1-10,42")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--crash-rate", type=float, default=0.05)
    parser.add_argument("--fault-rate", type=float, default=0.05)
    parser.add_argument("--db", default=None, help="a database URL (emptied first); one job only")
    parser.add_argument("--jobs", type=int, default=1, help="processes running seeds")
    parser.add_argument(
        "--via-http",
        action="store_true",
        help="the exchange talks to the ledger through the Canton client over a local server",
    )
    options = parser.parse_args(argv)
    seeds = _parse_seeds(options.seeds)
    jobs = 1 if options.db else max(1, options.jobs)
    work = [
        (seed, options.steps, options.crash_rate, options.fault_rate, options.db, options.via_http)
        for seed in seeds
    ]
    started = time.perf_counter()
    failed: list[int] = []
    totals: Counter[str] = Counter()

    def absorb(result: SimulationResult) -> None:
        totals.update(
            deposits=result.deposits,
            withdrawals=result.withdrawals,
            crashes=result.crashes,
            faults=result.faults,
        )
        if not result.ok:
            failed.append(result.seed)
            print(result.as_json_line(), flush=True)

    if jobs == 1:
        for item in work:
            absorb(_run_one(item))
    else:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            for result in pool.map(_run_one, work, chunksize=8):
                absorb(result)
    summary = {
        "seeds": len(seeds),
        "steps": options.steps,
        **{name: totals[name] for name in ("deposits", "withdrawals", "crashes", "faults")},
        "failed": failed,
        "elapsed_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(summary, separators=(",", ":")), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
