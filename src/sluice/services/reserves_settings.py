"""What the reserves side works with: its settings (from ``[reserves]``) and its context — the
Integration DB, and the independent sources it reads (the ledger's active contracts, the Bitcoin
node over the custody descriptor, the issuer ledger's iSTSi supply) where this process has them.

A source that is absent is reported as not read, never as agreeing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sluice.domain.ledger import InstrumentId
from sluice.domain.reserves import Tolerances
from sluice.ports import ActiveContractsReader, UnitOfWorkFactory
from sluice.ports.bitcoin import BitcoinNode, CustodyWallet
from sluice.ports.issuance import IssuerLedger

Clock = Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class ReservesSettings:
    reading_interval_s: float = 60.0
    reconcile_interval_s: float = 300.0  # 0: on demand only
    tolerances: Tolerances = field(default_factory=Tolerances)
    ratio_warning_bps: int = 10_100
    ratio_critical_bps: int = 10_000
    scan_gap: int = 20
    scan_timeout_s: float = 600.0  # one custody scan, waiting for another scan included


@dataclass(frozen=True, slots=True)
class ReservesContext:
    uow: UnitOfWorkFactory
    clock: Clock
    treasury: str  # the exchange's treasury party, whose holdings back token liabilities
    secret_path: Path  # the proof-of-liabilities secret (made on first use, mode 0600)
    settings: ReservesSettings = field(default_factory=ReservesSettings)
    # The ledger's active contracts (the treasury's node); None: not read by this process.
    ledger: ActiveContractsReader | None = None
    # Bitcoin custody: the node and the wallet (descriptor); None without custody.
    node: BitcoinNode | None = None
    wallet: CustodyWallet | None = None
    # iSTSi: the issuer ledger (supply read from the ledger) and the instrument; None without
    # issuance.
    issuer: IssuerLedger | None = None
    istsi: InstrumentId | None = None
    # The ingestion connection (connection_name(treasury, node)) whose cursor the journal is
    # at: the journal's read point, and the offset the ledger check compares at. None: unknown.
    connection: str | None = None
    # Custody's confirmations_min: the reserves that count are outputs with at least these
    # confirmations. None: no custody here.
    confirmations_min: int | None = None
