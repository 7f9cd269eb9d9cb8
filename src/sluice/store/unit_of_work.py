"""The unit of work: one database transaction, with the repositories bound to it.

``with uow: read → decide → write → uow.commit()``. Leaving the block without ``commit`` rolls
back, so a failure half-way through a step writes nothing.
"""

from __future__ import annotations

from sqlalchemy import Connection, Engine

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
    WithdrawalRepository,
)
from sluice.ports.alerts import AlertRepository
from sluice.ports.breakers import BreakersRepository
from sluice.ports.events import EventOutbox
from sluice.ports.exchange import ExchangeRepository
from sluice.ports.issuance import IssuanceRepository
from sluice.ports.oracle import OracleRepository
from sluice.ports.reserves import ReservesRepository
from sluice.ports.web import WebSessionRepository
from sluice.store.access_repository import SqlAccessRepository
from sluice.store.account_repository import SqlAccountsRepository
from sluice.store.alerts_repository import SqlAlertRepository
from sluice.store.audit_repository import SqlAuditLog
from sluice.store.bitcoin_payout_repository import SqlBitcoinPayoutRepository
from sluice.store.bitcoin_watch_repository import SqlBitcoinWatchRepository
from sluice.store.breakers_repository import SqlBreakersRepository
from sluice.store.compliance_repository import SqlComplianceRepository
from sluice.store.events_repository import SqlEventOutbox, notify_committed
from sluice.store.exchange_repository import SqlExchangeRepository
from sluice.store.issuance_repository import SqlIssuanceRepository
from sluice.store.oracle_repository import SqlOracleRepository
from sluice.store.repositories import (
    SqlBooksRepository,
    SqlIngestionRepository,
    SqlReferenceRepository,
)
from sluice.store.reserves_repository import SqlReservesRepository
from sluice.store.web_repository import SqlWebSessionRepository
from sluice.store.withdrawal_repository import SqlDepositOfferRepository, SqlWithdrawalRepository


class SqlUnitOfWork:
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

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._connection: Connection | None = None

    def __enter__(self) -> UnitOfWork:
        connection = self._engine.connect()
        connection.begin()
        self._connection = connection
        self.ingestion = SqlIngestionRepository(connection)
        self.books = SqlBooksRepository(connection)
        self.reference = SqlReferenceRepository(connection)
        self.withdrawals = SqlWithdrawalRepository(connection)
        self.offers = SqlDepositOfferRepository(connection)
        self.compliance = SqlComplianceRepository(connection)
        self.audit = SqlAuditLog(connection)
        self.access = SqlAccessRepository(connection)
        self.accounts = SqlAccountsRepository(connection)
        self.btc_watch = SqlBitcoinWatchRepository(connection)
        self.btc_payouts = SqlBitcoinPayoutRepository(connection)
        self.issuance = SqlIssuanceRepository(connection)
        self.reserves = SqlReservesRepository(connection)
        self._outbox = SqlEventOutbox(connection)
        self.events = self._outbox
        self.alerts = SqlAlertRepository(connection)
        self.breakers = SqlBreakersRepository(connection)
        self.oracle = SqlOracleRepository(connection)
        self.exchange = SqlExchangeRepository(connection)
        self.web_sessions = SqlWebSessionRepository(connection)
        return self

    def __exit__(self, *exc_info: object) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            if connection.in_transaction():
                connection.rollback()
        finally:
            connection.close()
            self._connection = None

    def commit(self) -> None:
        assert self._connection is not None, "commit outside of a unit of work"
        self._connection.commit()
        committed, self._outbox.added = self._outbox.added, []
        if committed:
            notify_committed(committed)

    def rollback(self) -> None:
        assert self._connection is not None, "rollback outside of a unit of work"
        self._connection.rollback()
        self._outbox.added = []
