"""Wiring a whole service from the configuration: the database, the ledger connection, the API's
context and the loop's parts.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sluice import bootstrap
from sluice.api.context import ApiContext
from sluice.api.oidc import JwtVerifier, OidcSettings
from sluice.api.operations import executors
from sluice.api.web.oidc_client import OidcClient, OidcClientSettings
from sluice.api.web.settings import WebSettings
from sluice.config import DeploymentConfig
from sluice.domain.errors import InvalidInputError
from sluice.ledger.local.adapters import EmbeddedCommands, embedded_registries
from sluice.monitoring.collectors import forget_state
from sluice.server.alerts import alerts_loop
from sluice.server.bitcoin import bitcoin_loop
from sluice.server.events import events_loop
from sluice.server.issuance import serve_issuance
from sluice.server.loop import (
    IngestionStandby,
    Outcome,
    Part,
    ServiceLoop,
    _wall_clock,
    deposit_part,
    ingestion_part,
    pause_reason,
    withdrawal_part,
)
from sluice.server.monitoring import install_monitoring, time_parts
from sluice.server.oracle import oracle_loop
from sluice.server.reserves import reserves_loop
from sluice.server.world import EmbeddedWorld, FollowedClock, prepare_embedded_world
from sluice.services.access import ApiKeyVerifier, list_api_keys
from sluice.services.approvals import run_approved
from sluice.services.compliance import KycRegistry, RegistryGate
from sluice.services.deposit_worker import DepositWorker
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name
from sluice.services.settings import RuntimeSettings
from sluice.services.standby import fenced
from sluice.services.withdrawals import WithdrawalSettings, WithdrawalWorker


@dataclass
class Service:
    """A configured sluice: the API's context and the loop that runs beside it."""

    config: DeploymentConfig
    database: bootstrap.Database
    link: bootstrap.LedgerConnection
    treasury: str
    context: ApiContext
    loop: ServiceLoop
    world: EmbeddedWorld | None = None
    # Bitcoin custody's watcher and payouts worker, when ``[bitcoin]`` is configured.
    bitcoin: bootstrap.BitcoinCustody | None = None
    bitcoin_loop: ServiceLoop | None = None
    # iSTSi issuance's router and KYC hold worker, when custody and an issuer ledger are there.
    issuance: bootstrap.Issuance | None = None
    issuance_loop: ServiceLoop | None = None
    # Reserve readings and scheduled reconciliation, unless both intervals are 0.
    reserves_loop: ServiceLoop | None = None
    # The events relay and the alert rules' evaluation, each on a loop of its own when on.
    extra_loops: list[ServiceLoop] = field(default_factory=list)

    @property
    def database_description(self) -> str:
        return self.database.engine.url.render_as_string(hide_password=True)

    def has_api_keys(self) -> bool:
        return bool(list_api_keys(self.database.uow, limit=1))

    def start(self) -> None:
        """Start the loop, and the Bitcoin loop beside it when there is one."""
        self.loop.start()
        if self.bitcoin_loop is not None:
            self.bitcoin_loop.start()
        if self.issuance_loop is not None:
            self.issuance_loop.start()
        if self.reserves_loop is not None:
            self.reserves_loop.start()
        for loop in self.extra_loops:
            loop.start()

    @property
    def alive(self) -> bool:
        return (
            self.loop.alive
            and (self.bitcoin_loop is None or self.bitcoin_loop.alive)
            and (self.issuance_loop is None or self.issuance_loop.alive)
            and (self.reserves_loop is None or self.reserves_loop.alive)
            and all(loop.alive for loop in self.extra_loops)
        )

    def close(self, timeout_s: float = 30.0) -> bool:
        # The reserves loop first (it reads through custody, the issuer and the ledger), then
        # issuance (it uses custody and the ledger), then the Bitcoin loop: all use the database
        # the main loop disposes of when it stops.
        extras_stopped = True
        for loop in self.extra_loops:  # every one asked to stop, whatever the others answer
            extras_stopped = loop.stop(timeout_s) and extras_stopped
        reserves_stopped = self.reserves_loop is None or self.reserves_loop.stop(timeout_s)
        reserves_stopped = reserves_stopped and extras_stopped
        issuance_stopped = self.issuance_loop is None or self.issuance_loop.stop(timeout_s)
        bitcoin_stopped = self.bitcoin_loop is None or self.bitcoin_loop.stop(timeout_s)
        bitcoin_stopped = bitcoin_stopped and issuance_stopped and reserves_stopped
        stopped = self.loop.stop(timeout_s) and bitcoin_stopped
        forget_state(self.database.engine)  # its monitoring reads a database now disposed of
        return stopped


def build_service(
    config: DeploymentConfig,
    *,
    database_url: str | None = None,
    ledger_path: Path | None = None,
    ledger_url: str | None = None,
    interval_s: float = 1.0,
    withdrawal_settings: WithdrawalSettings | None = None,
    wall_clock: Callable[[], datetime] = _wall_clock,
) -> Service:
    """Wire a service from the configuration (``database_url``, ``ledger_path`` and
    ``ledger_url`` override it, as the command line's ``--db``, ``--ledger``, ``--ledger-url``).

    A participant URL (given, or configured with no ledger file given) means the Canton adapter;
    otherwise the embedded ledger file, created with the sandbox's world when no configuration
    names one and it does not exist yet. Nothing runs until ``service.loop.start()``."""
    registry = bootstrap.kyc_registry(config)
    settings = withdrawal_settings or WithdrawalSettings()
    # Custody's keys and wallet are checked before anything opens (a [bitcoin] section only).
    custody = bootstrap.bitcoin_custody(config) if config.bitcoin is not None else None
    try:
        database = bootstrap.database(database_url or config.database_url)
        bootstrap.install_breakers(config, database)
    except BaseException:
        if custody is not None:
            custody.close()
        raise
    try:
        link, treasury, world = _ledger(config, database, ledger_path, ledger_url, settings)
    except BaseException:
        if custody is not None:
            custody.close()
        database.dispose()
        raise
    try:
        service = _wire(
            config, database, link, treasury, world, registry, settings, interval_s, wall_clock
        )
    except BaseException:
        if custody is not None:
            custody.close()
        link.close()
        database.dispose()
        raise
    if custody is not None:
        service.bitcoin = custody
        service.bitcoin_loop = bitcoin_loop(custody, database, interval_s=interval_s)
        service.context.readiness = {
            **service.context.readiness,
            "bitcoin_loop": service.bitcoin_loop.readiness,
        }
    try:
        issuance = serve_issuance(
            config,
            database,
            custody=custody,
            ledger=world.ledger if world is not None else None,
            treasury=treasury,
            interval_s=interval_s,
        )
    except BaseException:
        service.close()
        raise
    if issuance is not None:
        service.issuance, service.issuance_loop = issuance
        service.context.issuance = service.issuance
        service.context.readiness = {
            **service.context.readiness,
            "issuance_loop": service.issuance_loop.readiness,
        }
    try:
        _wire_reserves(service, custody)
        _wire_monitoring(service)
    except BaseException:
        service.close()
        raise
    return service


def _wire_monitoring(service: Service) -> None:
    """Metrics, readiness probes and circuit breakers (:mod:`sluice.server.monitoring`), then
    the events relay's and the alert rules' loops, each where it is on."""
    install_monitoring(service)
    for loop in (events_loop(service), alerts_loop(service), oracle_loop(service)):
        if loop is not None:
            time_parts(loop)
            service.extra_loops.append(loop)
            service.context.readiness = {
                **service.context.readiness,
                f"{loop.name}_loop": loop.readiness,
            }


def _wire_reserves(service: Service, custody: bootstrap.BitcoinCustody | None) -> None:
    """The reserves context on the sources the service has open (the ledger connection's reader
    of active contracts, custody, issuance's issuer ledger), in the API's context, and its loop
    (readings and scheduled reconciliation) beside the others."""
    connection = connection_name(service.treasury, service.link.node)
    context = bootstrap.reserves_context(
        service.config,
        service.database,
        treasury=service.treasury,
        clock=service.context.clock,
        ledger=bootstrap.active_contracts_reader(service.link),
        custody=custody,
        issuance=service.issuance,
        connection=connection,
    )
    service.context.reserves = context
    service.reserves_loop = reserves_loop(context)
    if service.reserves_loop is not None:
        service.context.readiness = {
            **service.context.readiness,
            "reserves_loop": service.reserves_loop.readiness,
        }


def _ledger(
    config: DeploymentConfig,
    database: bootstrap.Database,
    ledger_path: Path | None,
    ledger_url: str | None,
    settings: WithdrawalSettings,
) -> tuple[bootstrap.LedgerConnection, str, EmbeddedWorld | None]:
    if ledger_url is not None or (ledger_path is None and config.ledger.kind == "canton"):
        treasury = config.treasury.party
        if treasury is None:
            raise InvalidInputError(
                "no treasury party: set treasury.party (or SLUICE_TREASURY_PARTY)"
            )
        margin = config.ledger.local_margin_s
        if settings.trec_span_s <= margin:
            raise InvalidInputError(
                f"SLUICE_WITHDRAWAL_TREC_SPAN_S ({settings.trec_span_s:g} s) must exceed "
                f"ledger.local_margin_s ({margin:g} s), or no local-party withdrawal could be "
                "submitted"
            )
        link = bootstrap.canton_connection(config, database, participant_url=ledger_url)
        return link, treasury, None
    named = ledger_path is not None or config.ledger.path is not None
    world = prepare_embedded_world(
        ledger_path or config.ledger_path,
        database,
        node=config.ledger.node,
        treasury=config.treasury.party,
        create=not named,
    )
    return _embedded_link(world, config.ledger.node), world.treasury, world


def _wire(
    config: DeploymentConfig,
    database: bootstrap.Database,
    link: bootstrap.LedgerConnection,
    treasury: str,
    world: EmbeddedWorld | None,
    registry: KycRegistry,
    settings: WithdrawalSettings,
    interval_s: float,
    wall_clock: Callable[[], datetime],
) -> Service:
    follow = FollowedClock(world.ledger, wall_clock) if world is not None else None
    api_clock: Callable[[], datetime] = follow if follow is not None else wall_clock
    connection = connection_name(treasury, link.node)
    stopping = threading.Event()

    def nap(seconds: float) -> None:  # ingestion's retry back-off, cut short by a stop
        stopping.wait(seconds)

    # One ingestion writer per (treasury, node): a second `sluice serve` waits as a standby.
    writer_lock = database.writer_lock(connection)
    standby = IngestionStandby(writer_lock, treasury, link.node)
    ingestion = Ingestion(
        fenced(database.uow, writer_lock),
        link.client,
        treasury,
        connection=connection,
        settings=IngestionSettings(),
        sleep=nap,
        compliance=registry,
    )
    withdrawals = WithdrawalWorker(
        database.uow,
        link.commands,
        link.registries,
        treasury=treasury,
        connection=connection,
        clock=link.clock,
        settings=settings,
        compliance=registry,
    )
    deposits = DepositWorker(
        database.uow,
        link.commands,
        link.registries,
        RegistryGate(database.uow, registry, link.clock),
        treasury=treasury,
    )
    oidc = config.api.oidc
    context = ApiContext(
        uow=database.uow,
        treasury=treasury,
        clock=api_clock,
        compliance=registry,
        settings=RuntimeSettings(database.uow, dict(config.api.settings), clock=api_clock),
        keys=ApiKeyVerifier(database.uow),
        jwt=JwtVerifier(OidcSettings(**oidc.model_dump())) if oidc is not None else None,
        registries=link.registries,
        withdrawal_settings=settings,
        deployment=config.redacted(),
        reads=database.async_reads(),
        web=WebSettings(**config.web.model_dump(exclude={"oidc"})),
        web_oidc=web_oidc_client(config),
        max_body_bytes=config.api.max_body_bytes,
    )
    context.executors = executors(context)
    parts: list[Part] = []
    if follow is not None:
        parts.append(Part("clock", _followed(follow)))
    parts += [
        ingestion_part(ingestion, stopping, standby),
        withdrawal_part(withdrawals),
        deposit_part(deposits),
        Part("flush", _flushed(link)),
        approvals_part(context),
    ]

    def close() -> None:
        try:
            link.flush()
        finally:
            writer_lock.release()
            link.close()
            database.dispose()

    loop = ServiceLoop(
        parts,
        interval_s=interval_s,
        paused=pause_reason(database.uow),
        close=close,
        stopping=stopping,
    )
    context.readiness = {**context.readiness, "service_loop": loop.readiness}
    return Service(
        config=config,
        database=database,
        link=link,
        treasury=treasury,
        context=context,
        loop=loop,
        world=world,
    )


def _embedded_link(world: EmbeddedWorld, node: str) -> bootstrap.LedgerConnection:
    ledger = world.ledger
    return bootstrap.LedgerConnection(
        client=ledger.node_client(node),
        commands=EmbeddedCommands(ledger),
        registries=embedded_registries(ledger),
        clock=ledger.time,
        node=node,
        description=f"embedded ledger {world.path} (node {node})",
        flush=ledger.flush,
        close=ledger.close,
        record_time_at=ledger.record_time_at,
    )


def _followed(clock: FollowedClock) -> Callable[[], Outcome | None]:
    def run() -> None:
        clock.follow()

    return run


def _flushed(link: bootstrap.LedgerConnection) -> Callable[[], Outcome | None]:
    def run() -> None:
        link.flush()  # what the workers submitted reaches the file

    return run


def approvals_part(context: ApiContext) -> Part:
    """Operations whose approvals are complete but were not executed (the process stopped in
    between) are executed here; the API executes them itself when the last approval arrives."""

    def run() -> Outcome:
        executed = run_approved(context.uow, context.executors, context.clock())
        return Outcome(busy=bool(executed), counts={"executed": executed})

    return Part("approvals", run, moves_value=True)


def web_oidc_client(config: DeploymentConfig) -> OidcClient | None:
    """The pages' sign-in through the OIDC provider (``[web.oidc]``), if configured."""
    web, api = config.web.oidc, config.api.oidc
    if web is None or api is None:
        return None
    settings = OidcClientSettings(
        client_id=web.client_id,
        redirect_uri=web.redirect_uri,
        client_secret=web.secret_value(),
        token_auth=web.token_auth,
        authorization_endpoint=web.authorization_endpoint,
        token_endpoint=web.token_endpoint,
        scopes=web.scopes,
        provider_name=web.provider_name,
    )
    return OidcClient(settings, OidcSettings(**api.model_dump()))
