"""The one place that wires adapters to services from configuration.

Nothing here runs at import time; entry points call these functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast
from urllib.parse import urlsplit

from sqlalchemy import Engine

from sluice.config import BitcoinConfig, DeploymentConfig, LedgerConfig
from sluice.domain.breaker import BreakerSettings
from sluice.domain.chains import CHAINS, Chain, chain_named
from sluice.domain.compliance import LimitLadder, TierLimits
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import InstrumentId
from sluice.domain.risk import RiskRules
from sluice.ports import (
    ActiveContractsReader,
    AsyncReads,
    LedgerClient,
    LedgerCommands,
    NameMatch,
    RegistryLookup,
    SanctionsScreen,
    UnitOfWork,
    WriterLock,
)
from sluice.ports.bitcoin import BitcoinNode, CustodyWallet
from sluice.ports.issuance import ContractAddresses, IssuerLedger
from sluice.screening import ListedSanctions, screen_to_json_lines
from sluice.screening.scripts import ANYASCII, scripts_of
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.breaker_proxies import (
    GuardedBitcoinNode,
    GuardedLedgerCommands,
    guarded_registries,
)
from sluice.services.breakers import Breakers, configure_breakers
from sluice.services.compliance import ComplianceSettings, KycRegistry
from sluice.services.customer_screening import NameScreening
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.issuer_breaker import GuardedIssuer
from sluice.services.oracle import OracleService
from sluice.services.reserves_settings import ReservesContext, ReservesSettings
from sluice.store.database import open_database
from sluice.store.unit_of_work import SqlUnitOfWork
from sluice.store.writer_lock import writer_lock as ingestion_writer_lock

if TYPE_CHECKING:
    from sluice.bitcoin.chainfile import ChainFile
    from sluice.ledger.canton import TokenSource
    from sluice.ledger.local.engine import EmbeddedLedger


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
        from sluice.store.async_reads import PgAsyncReads  # the API's async driver: only there

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


def breaker_settings(config: DeploymentConfig) -> dict[str, BreakerSettings]:
    """``[breakers]`` as each flow's settings (``flows.<name>`` over ``defaults``)."""
    from sluice.services.breakers import FLOWS, check_flow

    section = config.breakers
    for name in section.flows:
        check_flow(name)
    return {
        flow: BreakerSettings(
            window=chosen.window,
            min_calls=chosen.min_calls,
            failure_rate=chosen.failure_rate,
            open_s=chosen.open_s,
            probes=chosen.probes,
        )
        for flow in FLOWS
        for chosen in [section.flows.get(flow, section.defaults)]
    }


def install_breakers(config: DeploymentConfig, database: Database) -> Breakers:
    """This process's circuit breakers from ``[breakers]``, attached to ``database`` (each
    opening raises an alert and writes its event there; operators' forced states are read from
    it)."""
    return configure_breakers(breaker_settings(config), uow_factory=database.uow)


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
    # The embedded ledger itself, when that is what this connection is (iSTSi's issuer
    # commands share it: an embedded ledger file has one writer).
    embedded: EmbeddedLedger | None = None


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
    # The Canton client (httpx, websockets, JWT) is loaded by what talks to a participant only.
    from sluice.ledger.canton import NoAuth, OAuth2ClientCredentials, SelfSignedToken, StaticToken

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
    from sluice.ledger.canton import (
        CantonCommands,
        CantonLedgerClient,
        Ed25519Signer,
        LedgerHttp,
        registry_lookup,
    )

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
        commands=GuardedLedgerCommands(commands),
        registries=guarded_registries(registries),
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
        commands=GuardedLedgerCommands(EmbeddedCommands(ledger)),
        registries=guarded_registries(embedded_registries(ledger)),
        clock=ledger.time,
        node=node,
        description=f"embedded ledger {path} (node {node})",
        flush=ledger.flush if writable else _nothing,
        close=ledger.close,
        record_time_at=ledger.record_time_at,
        embedded=ledger if writable else None,
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


def name_screening(screen: SanctionsScreen | None) -> NameScreening:
    """How customers' names are screened: their scripts told by the screening package and,
    with a sanctions list in force, each name screened against it, saying through which
    transliteration it matched. ``None``: names are recorded but not screened."""
    if screen is None:
        return NameScreening(scripts_of)
    listed = screen if isinstance(screen, ListedSanctions) else None

    def explain(name: str) -> tuple[NameMatch, str | None]:
        if listed is None:
            return screen.screen_name(name), None
        result, rendering = listed.explain_name(name)
        # anyascii's rendering is what every name gets: only another one is worth naming.
        return result, None if rendering == ANYASCII else rendering

    return NameScreening(scripts_of, explain, listed.source if listed is not None else None)


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
            node=GuardedBitcoinNode(rpc),
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
        node=GuardedBitcoinNode(FileNode(file)),
        wallet=wallet,
        settings=settings,
        description=f"{kind} on the embedded {chain.name} chain {file.path} (no real node)",
        configured=section is not None,
        signers=wallet.signing_keys_held,
        sandbox=file,
    )


# --- iSTSi issuance ----------------------------------------------------------------------------

# Where the treasury party of an embedded world is remembered (server/world.py's TREASURY_KEY).
_TREASURY_CONTROL_KEY = "treasury_party"
# The hint of the issuer party the sandbox allocates when ``[issuance] issuer_party`` is absent.
SANDBOX_ISSUER_HINT = "issuer"
ISSUANCE_ACTOR = "issuance"


@dataclass(frozen=True, slots=True)
class Issuance:
    """iSTSi issuance as configured: the router's context, the router (with the operation types
    of :mod:`sluice.services.issuance_operations` and the contract-address rebuild hook), what
    it runs against, and how to let go of it (the issuer ledger it opened, the custody it made)."""

    context: IssuanceContext
    router: IssuanceRouter
    description: str
    close: Callable[[], None]


def issuance(
    config: DeploymentConfig,
    database: Database,
    *,
    ledger_path: Path | None = None,
    custody: BitcoinCustody | None = None,
    clock: Callable[[], datetime] | None = None,
    ledger: EmbeddedLedger | None = None,
    treasury: str | None = None,
) -> Issuance:
    """Wire iSTSi issuance from ``[issuance]``.

    ``custody`` defaults to :func:`bitcoin_custody` (closed by ``close`` then). The issuer's
    commands go, in this order, to ``[issuance] control_url`` (a served embedded ledger's sandbox
    control: :class:`RemoteIssuerLedger`), to ``ledger`` (an embedded ledger this process has
    open already, e.g. ``sluice serve``'s world: never closed here), or to the embedded ledger
    file (``ledger_path`` or the configured/default one) opened in process for writing
    (:class:`EmbeddedIssuerLedger`; flushed and closed by ``close``). Against a Canton
    participant with none of these, :class:`InvalidInputError`: a real token implementation has
    to be plugged in first.

    Ensures iSTSi exists on that ledger (:func:`create_istsi`; with no ``issuer_party`` the
    sandbox's ``issuer::…`` party, allocated once) and is onboarded in the books (transfer kinds
    direct and offer) — both idempotent. The treasury: ``treasury``, else ``[treasury] party``,
    else the embedded world's recorded one, else the only ``treasury::…`` party on the ledger's
    node. ``clock`` (the router's: leases, backoff, waits) defaults to the system's, which the
    Bitcoin watcher that opens deposit operations uses too.

    Contract addresses (``issuance.update_contract_addresses``) in force override the
    configuration: read now, and by the router at each tick (:func:`issuance_rebuild`)."""
    from sluice.services.issuance_contracts import contract_addresses_in_force
    from sluice.services.issuance_operations import DEFINITIONS

    section = config.issuance
    closers: list[Callable[[], None]] = []
    if custody is None:
        custody = bitcoin_custody(config)
        closers.append(custody.close)
    try:
        admin, described = _issuer_ledger(config, ledger_path, ledger, closers)
        party = section.issuer_party or _sandbox_issuer(admin, config.ledger.node)
        the_treasury = _issuance_treasury(config, database, admin, treasury)
        registry = kyc_registry(config)
        now = clock or _system_clock
        base = IssuanceContext(
            uow=database.uow,
            clock=now,
            issuer=GuardedIssuer(
                _ensure_istsi(admin, party, section.instrument_id, database, now())
            ),
            registry=registry,
            wallet=custody.wallet,
            node=custody.node,
            treasury=the_treasury,
            bitcoin=custody.settings,
            settings=section.settings(),
        )
        rebuild = issuance_rebuild(base, admin, custody, config, database)
        in_force = contract_addresses_in_force(database.uow, now())
        context = rebuild(in_force) if in_force is not None else base
        router = IssuanceRouter(context, DEFINITIONS, rebuild=rebuild, addresses=in_force)
    except BaseException:
        _close_all(closers)
        raise
    description = (
        f"iSTSi issuance (issuer {context.issuer.instrument.admin} on {described}; "
        f"{custody.description})"
    )
    return Issuance(
        context=context,
        router=router,
        description=description,
        close=lambda: _close_all(closers),
    )


def _close_all(closers: list[Callable[[], None]]) -> None:
    """Run every closer (the last opened first), each even when an earlier one failed."""
    problem: BaseException | None = None
    for close in reversed(closers):
        try:
            close()
        except Exception as exc:  # the others must still be closed
            problem = problem or exc
    closers.clear()
    if problem is not None:
        raise problem


class _IssuerAdmin(Protocol):
    """What the issuer's wiring needs of a ledger: the embedded one or its remote control."""

    def nodes(self) -> list[str]: ...

    def parties(self, node: str | None = None) -> list[str]: ...

    def allocate_party(self, hint: str, node: str) -> str: ...

    def instrument_config(self, instrument: InstrumentId) -> Any: ...

    def create_instrument(
        self,
        admin: str,
        instrument_id: str,
        policy: Any = None,
        *,
        name: str | None = None,
        symbol: str | None = None,
        decimals: int = 10,
    ) -> InstrumentId: ...


def _issuer_ledger(
    config: DeploymentConfig,
    ledger_path: Path | None,
    ledger: EmbeddedLedger | None,
    closers: list[Callable[[], None]],
) -> tuple[Any, str]:
    """The ledger the issuer's commands go to, and its description; what was opened here is
    added to ``closers``."""
    from sluice.ledger.local.engine import EmbeddedLedger
    from sluice.ledger.local.remote import RemoteLedger

    control_url = config.issuance.control_url
    if control_url is not None:
        remote = RemoteLedger(control_url, timeout_s=config.ledger.timeout_s)
        closers.append(remote.close)
        return remote, f"the served ledger {control_url}"
    if ledger is not None:
        return ledger, "the embedded ledger"
    if ledger_path is None and config.ledger.kind == "canton":
        raise InvalidInputError(
            "iSTSi issuance: the ledger is a Canton participant and no issuer is available "
            "there (a real token implementation has to be plugged in); for the sandbox, set "
            "[issuance] control_url to a served embedded ledger, or use an embedded ledger file"
        )
    path = ledger_path or config.ledger_path
    if not path.exists():
        raise InvalidInputError(
            f"iSTSi issuance: no embedded ledger at {path} (run `sluice demo` first, pass "
            "--ledger, or set [issuance] control_url)"
        )
    opened = EmbeddedLedger.open(str(path), read_only=False)

    def close() -> None:
        try:
            opened.flush()
        finally:
            opened.close()

    closers.append(close)
    return opened, f"the embedded ledger {path}"


def _sandbox_issuer(admin: _IssuerAdmin, node: str) -> str:
    """The sandbox's issuer party: the one ``issuer::…`` party on the ledger, allocated (on the
    ``dso`` node when there is one, else ``node``) the first time."""
    found = [p for p in admin.parties() if p.split("::", 1)[0] == SANDBOX_ISSUER_HINT]
    if len(found) == 1:
        return found[0]
    if found:
        raise InvalidInputError(
            f"iSTSi issuance: {len(found)} parties named {SANDBOX_ISSUER_HINT!r} on the ledger: "
            "set [issuance] issuer_party"
        )
    nodes = admin.nodes()
    home = "dso" if "dso" in nodes else node
    if home not in nodes:
        raise InvalidInputError(
            f"iSTSi issuance: the ledger has no node {home!r} to allocate the issuer party on "
            "(ledger.node): set [issuance] issuer_party"
        )
    return admin.allocate_party(SANDBOX_ISSUER_HINT, home)


def _issuance_treasury(
    config: DeploymentConfig, database: Database, admin: _IssuerAdmin, given: str | None
) -> str:
    from sluice.domain.ledger import check_party_id

    if given or config.treasury.party:
        return check_party_id(given or config.treasury.party or "")
    with database.uow() as work:
        recorded = work.withdrawals.control(_TREASURY_CONTROL_KEY)
    if recorded:
        return recorded
    node = config.ledger.node
    found = [p for p in admin.parties(node) if p.split("::", 1)[0] == "treasury"]
    if len(found) != 1:
        raise InvalidInputError(
            f"iSTSi issuance: cannot tell the treasury party on node {node!r} ({len(found)} "
            "parties named treasury): set treasury.party (or SLUICE_TREASURY_PARTY)"
        )
    return found[0]


def _ensure_istsi(
    admin: _IssuerAdmin, party: str, instrument_id: str, database: Database, at: datetime
) -> IssuerLedger:
    """The issuer's commands on ``party``'s instrument, which exists on the ledger (created for
    iSTSi) and is onboarded in the books afterwards (idempotent, both)."""
    from sluice.ledger.local.errors import UnknownInstrumentError
    from sluice.ledger.local.issuer import (
        ISTSI_ID,
        EmbeddedIssuerLedger,
        RemoteIssuerLedger,
        create_istsi,
    )
    from sluice.ledger.local.remote import RemoteLedger
    from sluice.services.reference import onboard_instrument

    if instrument_id == ISTSI_ID:
        instrument = create_istsi(admin, party)
    else:
        instrument = InstrumentId(party, instrument_id)
        try:
            admin.instrument_config(instrument)
        except UnknownInstrumentError:
            raise InvalidInputError(
                f"[issuance] instrument_id: no instrument {instrument_id!r} of {party} on the "
                f"ledger (only {ISTSI_ID!r} is created by sluice)"
            ) from None
    onboard_instrument(
        database.uow,
        instrument,
        transfer_kinds=("direct", "offer"),
        actor=ISSUANCE_ACTOR,
        at=at,
    )
    if isinstance(admin, RemoteLedger):
        return RemoteIssuerLedger(admin, party, instrument_id)
    return EmbeddedIssuerLedger(admin, party, instrument_id)  # type: ignore[arg-type]


def issuance_rebuild(
    base: IssuanceContext,
    admin: Any,
    custody: BitcoinCustody,
    config: DeploymentConfig,
    database: Database,
) -> Callable[[ContractAddresses], IssuanceContext]:
    """The router's rebuild hook: the context for the contract addresses in force.

    * ``issuer_party``: the issuer's commands move to that party's iSTSi (created on the ledger
      and onboarded in the books when new); absent, the configured issuer stays.
    * ``bitcoin_node_url`` and ``custody_descriptor``: custody is not switched inside a running
      process (its keys, wallet and watcher are built at start-up). A value that differs from
      the running custody's makes the hook raise, so the router runs no step on stale wiring (its
      tick reports the error, logged by the loop) until the process is restarted with a
      ``[bitcoin]`` section that matches; the same value (or none) changes nothing.
    * ``registry_url``: the KYC registry is this process's own (``[compliance]``), so it is
      recorded but changes nothing here.
    """

    def rebuild(addresses: ContractAddresses) -> IssuanceContext:
        running_url = config.bitcoin.rpc_url if config.bitcoin is not None else None
        url = addresses.bitcoin_node_url
        if url is not None and url.rstrip("/") != (running_url or "").rstrip("/"):
            raise InvalidInputError(
                f"the contract addresses in force name the Bitcoin node {url} and this process "
                f"runs custody on {custody.description}: restart with [bitcoin] rpc_url = {url!r}"
            )
        wanted = addresses.custody_descriptor
        if wanted is not None and wanted not in _custody_descriptors(custody, config):
            raise InvalidInputError(
                "the contract addresses in force name another custody descriptor than this "
                "process runs with: restart with that [bitcoin] descriptor"
            )
        party = addresses.issuer_party
        if party is None or party == base.issuer.instrument.admin:
            return base
        issuer = _ensure_istsi(admin, party, base.settings.instrument_id, database, base.clock())
        return replace(base, issuer=GuardedIssuer(issuer))

    return rebuild


def _custody_descriptors(custody: BitcoinCustody, config: DeploymentConfig) -> set[str]:
    known = {custody.wallet.descriptor}
    if config.bitcoin is not None:
        known.add(config.bitcoin.descriptor)
    return {d for d in known if d}


# --- reserves ------------------------------------------------------------------------------------


def reserves_settings(config: DeploymentConfig) -> ReservesSettings:
    section = config.reserves
    return ReservesSettings(
        reading_interval_s=section.reading_interval_s,
        reconcile_interval_s=section.reconcile_interval_s,
        tolerances=section.tolerances.tolerances(),
        ratio_warning_bps=section.ratio_warning_bps,
        ratio_critical_bps=section.ratio_critical_bps,
        scan_gap=section.scan_gap,
        scan_timeout_s=section.scan_timeout_s,
    )


def reserves_context(
    config: DeploymentConfig,
    database: Database,
    *,
    treasury: str,
    clock: Callable[[], datetime] | None = None,
    ledger: ActiveContractsReader | None = None,
    custody: BitcoinCustody | None = None,
    issuance: Issuance | None = None,
    connection: str | None = None,
) -> ReservesContext:
    """The reserves side of a process, on the sources it already has open (none is closed by
    it): the ledger connection's reader of active contracts, custody's node and wallet, and
    issuance's issuer ledger. What is missing is reported as not read."""
    issuer = issuance.context.issuer if issuance is not None else None
    return ReservesContext(
        uow=database.uow,
        clock=clock or _system_clock,
        treasury=treasury,
        secret_path=config.por_secret_path,
        settings=reserves_settings(config),
        ledger=ledger,
        node=custody.node if custody is not None else None,
        wallet=custody.wallet if custody is not None else None,
        issuer=issuer,
        istsi=issuer.instrument if issuer is not None else None,
        connection=connection,
        confirmations_min=custody.settings.confirmations_min if custody is not None else None,
    )


def active_contracts_reader(connection: LedgerConnection) -> ActiveContractsReader | None:
    """The connection's reader of active contracts, when its client has one (the Canton client
    and the embedded ledger's node client do)."""
    client = connection.client
    if hasattr(client, "active_contracts"):
        return cast("ActiveContractsReader", client)
    return None


# --- the price oracle ----------------------------------------------------------------------------


def oracle_service(
    config: DeploymentConfig,
    uow: Callable[[], UnitOfWork],
    *,
    clock: Callable[[], datetime] | None = None,
) -> OracleService:
    """The ``[oracle]`` feeds read over HTTP and from files, checked under its limits (see
    ``docs/oracle.md``); an oracle with no feeds answers NotFound for every pair."""
    from sluice.oracle.feeds import FeedReader  # httpx: loaded where prices are read

    return OracleService(
        uow,
        FeedReader(timeout_s=config.oracle.timeout_s),
        config.oracle.specs(),
        limits=config.oracle.limits(),
        clock=clock or _system_clock,
    )
