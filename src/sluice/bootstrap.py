"""The one place that wires adapters to services from configuration.

Nothing here runs at import time; entry points call these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from sqlalchemy import Engine

from sluice.config import BitcoinConfig, DeploymentConfig, LedgerConfig
from sluice.domain.chains import CHAINS, Chain, chain_named
from sluice.domain.compliance import LimitLadder, TierLimits
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId
from sluice.domain.risk import RiskRules
from sluice.ledger.canton import (
    CantonCommands,
    CantonLedgerClient,
    Ed25519Signer,
    LedgerHttp,
    NoAuth,
    OAuth2ClientCredentials,
    SelfSignedToken,
    StaticToken,
    TokenSource,
    registry_lookup,
)
from sluice.ports import (
    AsyncReads,
    LedgerClient,
    LedgerCommands,
    RegistryLookup,
    UnitOfWork,
    WriterLock,
)
from sluice.ports.bitcoin import BitcoinNode, CustodyWallet
from sluice.screening import ListedSanctions, screen_to_json_lines
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.compliance import ComplianceSettings, KycRegistry
from sluice.store.async_reads import PgAsyncReads
from sluice.store.database import open_database
from sluice.store.unit_of_work import SqlUnitOfWork
from sluice.store.writer_lock import writer_lock as ingestion_writer_lock

if TYPE_CHECKING:
    from sluice.bitcoin.chainfile import ChainFile


def _nothing() -> None:
    return None


def _unknown_record_time(_party: str, _offset: int) -> datetime | None:
    return None


@dataclass(frozen=True, slots=True)
class Database:
    engine: Engine

    def uow(self) -> UnitOfWork:
        return SqlUnitOfWork(self.engine)

    @property
    def uow_factory(self) -> Callable[[], UnitOfWork]:
        return self.uow

    def async_reads(self) -> AsyncReads | None:
        """The API's asyncio reads on this database (PostgreSQL), or None where the synchronous
        store on worker threads answers them (SQLite, whose driver has no asyncio)."""
        if self.engine.url.get_backend_name() != "postgresql":
            return None
        return PgAsyncReads(self.engine.url)

    def writer_lock(self, connection: str) -> WriterLock:
        """The lock that makes one process the ingestion writer of ``connection`` (party@node):
        an advisory lock on PostgreSQL, a lock file next to an SQLite file."""
        return ingestion_writer_lock(self.engine, connection)

    def dispose(self) -> None:
        self.engine.dispose()


def database(url: str) -> Database:
    """Open (and migrate) the Integration DB at ``url``."""
    return Database(open_database(url))


# --- ledger connections ------------------------------------------------------------------------


@dataclass
class LedgerConnection:
    """Everything the exchange side needs from one ledger: reads for ingestion, commands and
    registries for the workers, and the clock their deadlines are computed with (the ledger's
    own for the embedded ledger, the system's for a real synchronizer)."""

    client: LedgerClient
    commands: LedgerCommands
    registries: RegistryLookup
    clock: Callable[[], datetime]
    node: str
    description: str
    flush: Callable[[], None] = _nothing
    close: Callable[[], None] = _nothing
    # The record time of the node's item at an offset, where the ledger can tell cheaply.
    record_time_at: Callable[[str, int], datetime | None] = _unknown_record_time


def registry_urls(
    uow: Callable[[], UnitOfWork], configured: Mapping[str, str]
) -> Callable[[InstrumentId], str | None]:
    """Where an instrument's registry is: onboarding's URL (in the DB), else the configuration's
    URL for its admin. The admin itself always comes from the DB record, never from a registry."""

    def url_of(instrument: InstrumentId) -> str | None:
        with uow() as work:
            record = work.withdrawals.instrument(instrument)
        if record is not None and record.registry_url:
            return record.registry_url
        return configured.get(instrument.admin)

    return url_of


def token_source(ledger: LedgerConfig) -> TokenSource:
    """How requests to the participant are authenticated, per ``[ledger.auth]``."""
    auth = ledger.auth
    if auth.kind == "static":
        return StaticToken(auth.secret_value())
    if auth.kind == "hs256":
        assert ledger.token_subject is not None
        return SelfSignedToken(auth.secret_value(), ledger.token_subject, audience=auth.audience)
    if auth.kind == "oauth2":
        assert auth.token_url is not None
        assert auth.client_id is not None
        return OAuth2ClientCredentials(
            auth.token_url,
            auth.client_id,
            auth.secret_value(),
            audience=auth.audience,
            scope=auth.scope,
        )
    return NoAuth()


def canton_connection(
    config: DeploymentConfig,
    database: Database,
    *,
    participant_url: str | None = None,
    clock: Callable[[], datetime] | None = None,
) -> LedgerConnection:
    """The Canton adapter: a participant's JSON Ledger API and the registries' Registry API."""
    url = participant_url or config.ledger.participant_url
    if not url:
        raise InvalidInputError("no participant URL: set ledger.participant_url or --ledger-url")
    auth = token_source(config.ledger)
    http = LedgerHttp(
        url, auth, timeout_s=config.ledger.timeout_s, retries_max=config.ledger.retries_max
    )
    signers: dict[str, Ed25519Signer] = {}
    party = config.treasury.party
    if party is not None and config.treasury.signing_key is not None:
        signers[party] = Ed25519Signer.from_file(config.treasury.signing_key)
    client = CantonLedgerClient(
        http, page_size=config.ledger.page_size, use_websocket=config.ledger.websocket
    )
    commands = CantonCommands(
        http,
        user_id=config.ledger.user_id,
        signers=signers,
        clock=clock or _system_clock,
        local_margin_s=config.ledger.local_margin_s,
    )
    registries = registry_lookup(
        registry_urls(database.uow, config.registries.urls),
        timeout_s=config.registries.timeout_s,
    )
    return LedgerConnection(
        client=client,
        commands=commands,
        registries=registries,
        clock=clock or _system_clock,
        node=participant_node(url),
        description=f"Canton participant {url}",
        close=http.close,
    )


def embedded_connection(path: Path, node: str, *, writable: bool) -> LedgerConnection:
    """The embedded ledger file, read by ingestion (read-only: any number of readers) or also
    written by the workers (writable: exactly one writer per file)."""
    from sluice.ledger.local.adapters import EmbeddedCommands, embedded_registries
    from sluice.ledger.local.engine import EmbeddedLedger

    if not path.exists():
        raise InvalidInputError(
            f"no embedded ledger at {path} (run `sluice demo` first, or pass --ledger)"
        )
    ledger = EmbeddedLedger.open(str(path), read_only=not writable)
    return LedgerConnection(
        client=ledger.node_client(node),
        commands=EmbeddedCommands(ledger),
        registries=embedded_registries(ledger),
        clock=ledger.time,
        node=node,
        description=f"embedded ledger {path} (node {node})",
        flush=ledger.flush if writable else _nothing,
        close=ledger.close,
        record_time_at=ledger.record_time_at,
    )


def participant_node(url: str) -> str:
    """The name ingestion's cursor is kept under for a participant: host, port and path, so the
    same node reached by the same URL always continues the same cursor."""
    parts = urlsplit(url)
    return parts.netloc + parts.path.rstrip("/")


def _system_clock() -> datetime:
    return datetime.now(UTC)


# --- the KYC registry --------------------------------------------------------------------------


def sanctions_screen(directory: Path, prefix: str | None = None) -> ListedSanctions:
    """The sanctions list in ``directory`` (OFAC CSV set and/or OpenSanctions JSON lines), loaded
    and indexed in memory; a damaged file raises ``SanctionsListError`` naming file and line."""
    return ListedSanctions.load(directory, prefix)


def screening_json_lines(screen: ListedSanctions, names: Iterable[str]) -> Iterator[str]:
    return screen_to_json_lines(screen, names)


def kyc_registry(config: DeploymentConfig) -> KycRegistry:
    """The KYC registry the configuration describes: DESIGN §6's ladder with the configured
    steps over it, the risk rules, the reference rates and, when one is configured, the
    sanctions list (loaded now, so a damaged list stops the start-up with a clear error)."""
    section = config.compliance
    ladder = LimitLadder.default()
    for step in section.limits:
        ladder = ladder.with_override(
            step.tier, step.operation, TierLimits(step.per_operation, step.daily, step.monthly)
        )
    risk = RiskRules.from_mapping(section.risk) if section.risk else RiskRules()
    screen = (
        sanctions_screen(section.sanctions_list, section.sanctions_prefix)
        if section.sanctions_list is not None
        else None
    )
    settings = ComplianceSettings(
        ladder=ladder, risk=risk, reference_rates=dict(section.reference_rates)
    )
    return KycRegistry(settings, screen)


# --- Bitcoin custody ---------------------------------------------------------------------------

# Signatures a payout needs (the custody is 2-of-3).
SIGNERS_NEEDED = 2


@dataclass
class BitcoinCustody:
    """Custody as configured: the node (a real one over JSON-RPC, or the embedded chain in a
    file), the wallet with the keys this process signs with, and the services' settings.

    ``configured`` is false for the sandbox custody (no ``[bitcoin]`` section): three keys made
    in the data directory on first use, on the embedded regtest chain. ``sandbox`` is the
    embedded chain's file (for ``sluice btc sandbox …``), None against a real node."""

    node: BitcoinNode
    wallet: CustodyWallet
    settings: BitcoinSettings
    description: str
    configured: bool
    signers: int
    sandbox: ChainFile | None = None
    close: Callable[[], None] = _nothing

    @property
    def chain(self) -> Chain:
        return self.settings.chain

    @property
    def can_sign(self) -> bool:
        return self.signers >= SIGNERS_NEEDED

    def signing_problem(self) -> str | None:
        """Why payouts cannot be signed by this process, or None."""
        if self.can_sign:
            return None
        return (
            f"payouts need {SIGNERS_NEEDED} of the custody's 3 keys and this process holds "
            f"{self.signers}: list two key files in [bitcoin] key_files (watching works without)"
        )

    def network_problem(self) -> str | None:
        """Asks the node which chain it follows: a message when it is not this custody's
        network, else None (``BitcoinNodeError`` when it cannot be asked)."""
        answered = self.node.getblockchaininfo().get("chain")
        if answered == self.chain.node_chain:
            return None
        return (
            f"the node ({self.description}) follows the chain {answered!r}, and this custody is "
            f"on {self.chain.name} (chain {self.chain.node_chain!r}): check [bitcoin] network "
            "and rpc_url"
        )


def bitcoin_settings(section: BitcoinConfig | None) -> BitcoinSettings:
    """``[bitcoin]`` as the services take it. The sandbox's (no section) sends a queued payout
    at the next round instead of waiting for others to batch with it."""
    if section is None:
        return BitcoinSettings(chain=CHAINS["regtest"], payout_batch_window_s=0.0)
    return BitcoinSettings(
        chain=chain_named(section.network),
        confirmations_min=section.confirmations_min,
        fee_target_blocks=section.fee_target_blocks,
        fee_rate_min_sat_vb=section.fee_rate_min_sat_vb,
        fee_rate_max_sat_vb=section.fee_rate_max_sat_vb,
        payout_fee_max_sats=section.payout_fee_max_sats,
        payout_batch_max=section.payout_batch_max,
        payout_batch_window_s=section.payout_batch_window_s,
        payout_bump_after_blocks=section.payout_bump_after_blocks,
        watch_start_height=section.watch_start_height,
    )


def bitcoin_directory(config: DeploymentConfig) -> Path:
    """Where the embedded chain and the sandbox custody are kept."""
    return config.data_dir / "bitcoin"


def embedded_chain(config: DeploymentConfig, chain: Chain) -> ChainFile:
    from sluice.bitcoin.chainfile import ChainFile

    return ChainFile(bitcoin_directory(config) / f"chain-{chain.name}.pickle", chain)


def bitcoin_custody(config: DeploymentConfig) -> BitcoinCustody:
    """Custody from ``[bitcoin]``, or the sandbox custody on the embedded chain without one.

    Checks first that the wallet signs with libsecp256k1 (embit's pure-Python fallback is about
    80 times slower). Nothing is asked of the node here: it may be down, and the watcher waits
    for it."""
    # Imported here: embit and httpx are loaded only by the commands that use custody.
    from sluice.bitcoin.chainfile import FileNode, sandbox_custody
    from sluice.bitcoin.keys import load_signing_keys
    from sluice.bitcoin.wallet import EmbitCustodyWallet, check_secp256k1

    check_secp256k1()
    section = config.bitcoin
    settings = bitcoin_settings(section)
    chain = settings.chain
    if section is None:
        custody = sandbox_custody(bitcoin_directory(config) / "sandbox", chain)
        descriptor = custody.descriptor
        key_files: list[str | Path] = list(custody.key_files)
    else:
        descriptor = section.descriptor
        key_files = list(section.key_files)
    keys = load_signing_keys(list(key_files), chain=chain)
    wallet = EmbitCustodyWallet(descriptor, chain, keys)
    if section is not None and section.rpc_url is not None:
        from sluice.bitcoin.rpc import BitcoinRpc

        rpc = BitcoinRpc(
            section.rpc_url,
            user=section.rpc_user,
            password=section.rpc_password_value(),
            cookie_file=section.rpc_cookie_file,
            timeout_s=section.rpc_timeout_s,
        )
        return BitcoinCustody(
            node=rpc,
            wallet=wallet,
            settings=settings,
            description=f"{chain.name} node {section.rpc_url}",
            configured=True,
            signers=wallet.signing_keys_held,
            close=rpc.close,
        )
    file = embedded_chain(config, chain)
    kind = "sandbox custody" if section is None else "custody"
    return BitcoinCustody(
        node=FileNode(file),
        wallet=wallet,
        settings=settings,
        description=f"{kind} on the embedded {chain.name} chain {file.path} (no real node)",
        configured=section is not None,
        signers=wallet.signing_keys_held,
        sandbox=file,
    )
