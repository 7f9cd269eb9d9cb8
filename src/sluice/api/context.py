"""Everything the HTTP API needs from the rest of sluice, built once by ``sluice.server``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

from sluice.api.body_limit import DEFAULT_MAX_BODY_BYTES
from sluice.api.oidc import JwtVerifier
from sluice.api.web.oidc_client import OidcClient
from sluice.api.web.settings import WebSettings
from sluice.ports import AsyncReads, RegistryLookup, UnitOfWorkFactory
from sluice.services.access import ApiKeyVerifier
from sluice.services.approvals import Executor
from sluice.services.compliance import KycRegistry
from sluice.services.exchange import ExchangeContext
from sluice.services.oracle import OracleService
from sluice.services.reserves_settings import ReservesContext
from sluice.services.settings import RuntimeSettings
from sluice.services.withdrawals import WithdrawalSettings

if TYPE_CHECKING:
    from sluice import bootstrap


@dataclass
class ApiContext:
    uow: UnitOfWorkFactory
    treasury: str
    clock: Callable[[], datetime]
    compliance: KycRegistry
    settings: RuntimeSettings
    keys: ApiKeyVerifier
    jwt: JwtVerifier | None = None
    registries: RegistryLookup | None = None
    withdrawal_settings: WithdrawalSettings = field(default_factory=WithdrawalSettings)
    # The hot reads answered on the event loop (PostgreSQL); opened and closed by the
    # application's lifespan. None, or not open on the serving loop: the synchronous store on a
    # worker thread answers instead.
    reads: AsyncReads | None = None
    # Readiness beyond the database: name → (ready, detail), e.g. the service loop's heartbeat.
    readiness: Mapping[str, Callable[[], tuple[bool, str]]] = field(default_factory=dict)
    # The configuration as JSON with secrets redacted, shown to router admins.
    deployment: Mapping[str, object] = field(default_factory=dict)
    # The approval executors; filled by ``create_app`` from ``sluice.api.operations``.
    executors: Mapping[str, Executor] = field(default_factory=dict)
    # iSTSi issuance (its router and context), when this process runs it (Bitcoin custody and an
    # issuer ledger); None: the issuance endpoints answer 503 saying so.
    issuance: bootstrap.Issuance | None = None
    # The price oracle (``[oracle]`` feeds), when any feed is configured; None: 503.
    oracle: OracleService | None = None
    # The cross-token exchange (``[exchange]`` pairs over the oracle); None: 503.
    exchange: ExchangeContext | None = None
    # The reserves side (figures, reconciliation, proof of reserves) with the sources this
    # process reads; None: the reserves endpoints that need a source answer 503 saying so.
    reserves: ReservesContext | None = None
    # The web pages' sessions and sign-in limits (``[web]``).
    web: WebSettings = field(default_factory=WebSettings)
    # Staff sign-in to the pages on the OIDC provider's own page (``[web.oidc]``); None: off.
    web_oidc: OidcClient | None = None
    # The bound on a request's body, for the API and the pages (``[api] max_body_bytes``).
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
