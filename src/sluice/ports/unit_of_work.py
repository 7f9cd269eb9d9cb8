"""One database transaction over every repository, and the API's hot reads on the event loop."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Protocol

from sluice.domain.ledger import InstrumentId
from sluice.ports.access import AccessRepository, AccountsRepository
from sluice.ports.alerts import AlertRepository
from sluice.ports.bitcoin_payouts import BitcoinPayoutRepository
from sluice.ports.bitcoin_watch import BitcoinWatchRepository
from sluice.ports.breakers import BreakersRepository
from sluice.ports.events import EventOutbox
from sluice.ports.exchange import ExchangeRepository
from sluice.ports.issuance import IssuanceRepository
from sluice.ports.oracle import OracleRepository
from sluice.ports.repositories import (
    AuditLog,
    BooksRepository,
    ComplianceRepository,
    DepositOfferRepository,
    IngestionRepository,
    ReferenceRepository,
    WithdrawalRepository,
)
from sluice.ports.reserves import ReservesRepository
from sluice.ports.web import WebSessionRepository


class UnitOfWork(Protocol):
    """One database transaction; nothing is written unless ``commit`` is called."""

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

    def __enter__(self) -> UnitOfWork: ...
    def __exit__(self, *exc_info: object) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...


UnitOfWorkFactory = Callable[[], UnitOfWork]


class AsyncReads(Protocol):
    """The API's hot reads, answered without a worker thread: one statement on a connection of
    an asyncio pool, opened and closed on the event loop that serves them (the application's
    lifespan). Each read is one statement in autocommit, so it sees one consistent snapshot."""

    @property
    def serving(self) -> bool:
        """True when open on the running event loop (the only loop it may be used on)."""
        ...

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def customer_balances(self, customer_id: str) -> dict[InstrumentId, Decimal]:
        """The customer's balances, as :meth:`AccountsRepository.customer_balances` reads
        them (empty for an unknown customer: telling those apart is the caller's business)."""
        ...
