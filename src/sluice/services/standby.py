"""One ingestion writer per (treasury party, node), and hot standbys that wait for it to go.

Guarantees:

* **One writer.** Ingestion runs only while its process holds the pair's
  :class:`~sluice.ports.WriterLock`. A second ``sluice ingest`` or ``sluice serve`` for the same
  pair waits: it polls the lock every ``poll_interval_s`` and holds nothing else meanwhile (no
  transaction, no ledger stream), so when the writer dies its lock is released by the database
  or the kernel and the standby takes over within about one poll interval.
* **Exactly once across a takeover.** Each batch commits its writes and the cursor in one
  transaction, so the standby resumes at the last committed cursor: a batch the dead writer had
  not committed is read again, one it had committed is not. (Were two writers ever to overlap,
  the update ids' primary key would refuse the second insert of an update.)
* **A writer that lost its lock stops writing.** Every commit of a unit of work made through
  :func:`fenced` first asks the lock's own session whether the lock is still held, and refuses
  to commit (:class:`IngestionLockLostError`) if not — the session broke, the database
  restarted, or the lock file was replaced. The batch rolls back; the process goes back to
  waiting as a standby (``sluice ingest``) or tries the lock again next round (``sluice serve``).
  The check is made right before the commit, not atomically with it: the remaining window is the
  commit itself, and the primary key above covers it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

from sluice.domain.errors import SluiceError
from sluice.ports import (
    AccessRepository,
    AccountsRepository,
    AuditLog,
    BitcoinPayoutRepository,
    BitcoinWatchRepository,
    BooksRepository,
    ComplianceRepository,
    DepositOfferRepository,
    IngestionRepository,
    ReferenceRepository,
    UnitOfWork,
    UnitOfWorkFactory,
    WithdrawalRepository,
    WriterLock,
    WriterLockError,
)
from sluice.ports.alerts import AlertRepository
from sluice.ports.breakers import BreakersRepository
from sluice.ports.events import EventOutbox
from sluice.ports.exchange import ExchangeRepository
from sluice.ports.issuance import IssuanceRepository
from sluice.ports.oracle import OracleRepository
from sluice.ports.reserves import ReservesRepository
from sluice.ports.web import WebSessionRepository

STANDBY_POLL_INTERVAL_S = 0.5

T = TypeVar("T")


class IngestionLockHeldError(SluiceError):
    """Another process ingests for this pair, and the caller chose not to wait."""

    code = 41
    error = "ingestion_lock_held"


class IngestionLockLostError(SluiceError):
    """The ingestion lock was lost while writing; nothing more is committed without it."""

    code = 41
    error = "ingestion_lock_lost"


class IngestionLockUnreachableError(SluiceError):
    """The lock's session could not be opened (the database is unreachable)."""

    code = 11
    error = "ingestion_lock_unreachable"


def pair_name(party: str, node: str) -> str:
    return f"{party} on {node}"


def standby_message(party: str, node: str, holder: str | None) -> str:
    held_by = f"held by {holder}" if holder else "held by another process"
    return f"waiting as standby for the ingestion lock of {pair_name(party, node)} ({held_by})"


def took_over_message(party: str, node: str) -> str:
    return f"took over ingestion of {pair_name(party, node)}"


def take_lock(
    lock: WriterLock,
    *,
    party: str,
    node: str,
    stop: Callable[[], bool] = lambda: False,
    wait: bool = True,
    notify: Callable[[str], None] = lambda _message: None,
    poll_interval_s: float = STANDBY_POLL_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> bool:
    """Hold ``lock``: True once held, False if ``stop()`` said so first. Without ``wait`` a
    held lock raises :class:`IngestionLockHeldError` naming its holder.

    While waiting, ``notify`` hears the standby line (again whenever the holder changes), a line
    when the lock's session cannot be reached (it is tried again), and the takeover."""
    announced: str | None = None
    waited = False
    while not stop():
        try:
            if lock.try_acquire():
                if waited:
                    notify(took_over_message(party, node))
                return True
            holder = lock.holder()
        except WriterLockError as exc:
            if not wait:
                raise IngestionLockUnreachableError(
                    f"cannot take the ingestion lock of {pair_name(party, node)}: {exc}"
                ) from exc
            message = f"cannot reach the ingestion lock of {pair_name(party, node)}: {exc}"
        else:
            if not wait:
                raise IngestionLockHeldError(
                    f"the ingestion lock of {pair_name(party, node)} is held by "
                    f"{holder or 'another process'}; leave out --no-wait to wait as a hot standby"
                )
            message = standby_message(party, node, holder)
        if message != announced:
            notify(message)
            announced = message
        waited = True
        sleep(poll_interval_s)
    return False


def run_as_writer(
    lock: WriterLock,
    uow: UnitOfWorkFactory,
    work: Callable[[UnitOfWorkFactory], T],
    *,
    party: str,
    node: str,
    stop: Callable[[], bool] = lambda: False,
    wait: bool = True,
    notify: Callable[[str], None] = lambda _message: None,
    poll_interval_s: float = STANDBY_POLL_INTERVAL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> T | None:
    """Wait for the lock, then run ``work`` with units of work fenced by it. A lost lock sends
    the process back to waiting (or, without ``wait``, raises). None when stopped while
    waiting. The lock is kept until ``work`` returns, then released."""
    try:
        while take_lock(
            lock,
            party=party,
            node=node,
            stop=stop,
            wait=wait,
            notify=notify,
            poll_interval_s=poll_interval_s,
            sleep=sleep,
        ):
            try:
                return work(fenced(uow, lock))
            except IngestionLockLostError as exc:
                lock.release()
                if not wait:
                    raise
                notify(f"{exc}; waiting as standby again")
        return None
    finally:
        lock.release()


def fenced(uow: UnitOfWorkFactory, lock: WriterLock) -> UnitOfWorkFactory:
    """Units of work that commit only while ``lock`` is held (asked of its session first)."""

    def make() -> UnitOfWork:
        return _FencedUnitOfWork(uow(), lock)

    return make


class _FencedUnitOfWork:
    ingestion: IngestionRepository
    books: BooksRepository
    reference: ReferenceRepository
    withdrawals: WithdrawalRepository
    offers: DepositOfferRepository
    compliance: ComplianceRepository
    audit: AuditLog
    access: AccessRepository
    accounts: AccountsRepository
    btc_watch: BitcoinWatchRepository
    btc_payouts: BitcoinPayoutRepository
    issuance: IssuanceRepository
    reserves: ReservesRepository
    events: EventOutbox
    alerts: AlertRepository
    breakers: BreakersRepository
    oracle: OracleRepository
    exchange: ExchangeRepository
    web_sessions: WebSessionRepository

    def __init__(self, inner: UnitOfWork, lock: WriterLock) -> None:
        self._inner = inner
        self._lock = lock

    def __enter__(self) -> UnitOfWork:
        work = self._inner.__enter__()
        self._work = work
        self.ingestion = work.ingestion
        self.books = work.books
        self.reference = work.reference
        self.withdrawals = work.withdrawals
        self.offers = work.offers
        self.compliance = work.compliance
        self.audit = work.audit
        self.access = work.access
        self.accounts = work.accounts
        self.btc_watch = work.btc_watch
        self.btc_payouts = work.btc_payouts
        self.issuance = work.issuance
        self.reserves = work.reserves
        self.events = work.events
        self.alerts = work.alerts
        self.breakers = work.breakers
        self.oracle = work.oracle
        self.exchange = work.exchange
        self.web_sessions = work.web_sessions
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._inner.__exit__(*exc_info)

    def commit(self) -> None:
        if not self._lock.held():
            raise IngestionLockLostError(
                "the ingestion lock was lost (its database session ended or the lock file was "
                "replaced); this batch was not committed"
            )
        self._work.commit()

    def rollback(self) -> None:
        self._work.rollback()
