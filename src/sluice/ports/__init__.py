"""What the services need from the outside world, as small protocols.

Updates cross the ledger port in the JSON Ledger API v2 shape (``JsGetUpdatesResponse`` objects as
decoded JSON), so one parser serves a real participant node and the embedded ledger alike.

The ports live in the modules of this package, one concern each; every name is importable from
``sluice.ports``.
"""

from sluice.ports.access import (
    AccessRepository,
    AccountsRepository,
    ApiKeyRecord,
    CustomerRecord,
    SettingRecord,
    SuspenseItem,
)
from sluice.ports.bitcoin_payouts import BitcoinPayoutRepository
from sluice.ports.bitcoin_watch import BitcoinWatchRepository
from sluice.ports.compliance import (
    AddressMatch,
    ComplianceGate,
    NameMatch,
    SanctionsScreen,
)
from sluice.ports.ledger import (
    ActiveContractsReader,
    ChoiceContextData,
    CommandError,
    FactoryChoice,
    InstructionChoice,
    JsonObject,
    LedgerClient,
    LedgerCommands,
    LedgerReadError,
    RegistryClient,
    RegistryError,
    RegistryLookup,
)
from sluice.ports.repositories import (
    AuditLog,
    BooksRepository,
    ComplianceRepository,
    DepositOfferRepository,
    EntryRecord,
    HistoryRecord,
    IncomingOffer,
    IngestBatch,
    IngestedUpdate,
    IngestionRepository,
    InstrumentRecord,
    ReferenceRepository,
    WithdrawalRepository,
)
from sluice.ports.unit_of_work import (
    AsyncReads,
    UnitOfWork,
    UnitOfWorkFactory,
)
from sluice.ports.writer_lock import (
    WriterLock,
    WriterLockError,
)

__all__ = [
    "AccessRepository",
    "AccountsRepository",
    "ActiveContractsReader",
    "AddressMatch",
    "ApiKeyRecord",
    "AsyncReads",
    "AuditLog",
    "BitcoinPayoutRepository",
    "BitcoinWatchRepository",
    "BooksRepository",
    "ChoiceContextData",
    "CommandError",
    "ComplianceGate",
    "ComplianceRepository",
    "CustomerRecord",
    "DepositOfferRepository",
    "EntryRecord",
    "FactoryChoice",
    "HistoryRecord",
    "IncomingOffer",
    "IngestBatch",
    "IngestedUpdate",
    "IngestionRepository",
    "InstructionChoice",
    "InstrumentRecord",
    "JsonObject",
    "LedgerClient",
    "LedgerCommands",
    "LedgerReadError",
    "NameMatch",
    "ReferenceRepository",
    "RegistryClient",
    "RegistryError",
    "RegistryLookup",
    "SanctionsScreen",
    "SettingRecord",
    "SuspenseItem",
    "UnitOfWork",
    "UnitOfWorkFactory",
    "WithdrawalRepository",
    "WriterLock",
    "WriterLockError",
]
