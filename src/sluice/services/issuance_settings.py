"""iSTSi issuance's settings and the context its steps run in (``[issuance]`` of the
configuration file becomes an :class:`IssuanceSettings` in :mod:`sluice.bootstrap`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from sluice.ports import UnitOfWorkFactory
from sluice.ports.bitcoin import BitcoinNode, CustodyWallet
from sluice.ports.issuance import IssuerLedger
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.compliance import KycRegistry

Clock = Callable[[], datetime]

ISTSI_ID = "iSTSi"
ISTSI_DECIMALS = 8
# How long the token ledger remembers a command id (its command deduplication window): a mint or
# burn sent again with the same id within it commits at most once; after it, it commits again.
LEDGER_DEDUP_WINDOW_S = 24 * 3600.0


@dataclass(frozen=True, slots=True)
class IssuanceSettings:
    # The instrument's id on the ledger (its admin is the issuer party).
    instrument_id: str = ISTSI_ID
    # A failed step is tried again after backoff_base_s · 2^(attempt − 1), at most backoff_cap_s;
    # after attempts_max failed attempts the operation is ``stuck`` (with an alert).
    attempts_max: int = 8
    backoff_base_s: float = 2.0
    backoff_cap_s: float = 300.0
    # A step waiting for something outside (ingestion, confirmations) is looked at again after.
    poll_s: float = 5.0
    # A worker running a step holds the operation this long (another worker leaves it alone).
    lease_s: float = 60.0
    # Steps one operation may run in one round of the router (bounded work per call).
    steps_per_round: int = 20
    # Operations one round of the router looks at.
    operations_per_round: int = 100
    # Held transfers the KYC hold worker decides per round.
    held_transfers_per_round: int = 100
    # A mint or burn whose outcome is unknown (recorded ``submitted``) is sent again with the
    # same command id only while its record is younger than this: well inside the ledger's
    # deduplication window, so a resend can never commit a second time. Older, the step fails
    # (stuck, critical alert) and an operator reconciles the record with the ledger.
    resend_window_s: float = 12 * 3600.0

    def __post_init__(self) -> None:
        if not 0 < self.resend_window_s < LEDGER_DEDUP_WINDOW_S:
            raise ValueError(
                f"resend_window_s must be positive and below the ledger's deduplication window "
                f"of {LEDGER_DEDUP_WINDOW_S:.0f} s: {self.resend_window_s}"
            )


@dataclass(frozen=True, slots=True)
class IssuanceContext:
    """What the router's steps work with."""

    uow: UnitOfWorkFactory
    clock: Clock
    issuer: IssuerLedger
    registry: KycRegistry
    wallet: CustodyWallet
    node: BitcoinNode
    treasury: str  # the exchange's treasury party (minted iSTSi goes there by default)
    bitcoin: BitcoinSettings = field(default_factory=BitcoinSettings)
    settings: IssuanceSettings = field(default_factory=IssuanceSettings)
