"""``sluice workers``: the withdrawal and deposit workers."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer

from sluice import bootstrap
from sluice.cli.common import (
    DbOption,
    LedgerOption,
    LedgerUrlOption,
    SandboxClockOption,
    TreasuryOption,
    deployment,
    fail,
    fail_with,
    kyc_registry,
    note,
    open_database,
    open_ledger,
    sandbox_base,
    stop_signals,
    treasury_party,
    withdrawal_settings,
)
from sluice.config import DeploymentConfig, Settings
from sluice.domain.errors import SluiceError
from sluice.services.compliance import RegistryGate
from sluice.services.deposit_worker import DepositWorker
from sluice.services.ingestion import connection_name
from sluice.services.withdrawals import WithdrawalWorker

if TYPE_CHECKING:
    from sluice.server import ServiceLoop

workers_app = typer.Typer(no_args_is_help=True, help="The withdrawal and deposit workers.")


@workers_app.command("run")
def workers_run(
    once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False,
    interval: Annotated[
        float, typer.Option("--interval", min=0.05, max=3600.0, help="Seconds between rounds.")
    ] = 1.0,
    treasury: TreasuryOption = None,
    node: Annotated[str | None, typer.Option("--node", help="Ledger node the party is on.")] = None,
    db: DbOption = None,
    ledger: LedgerOption = None,
    ledger_url: LedgerUrlOption = None,
    sandbox_clock: SandboxClockOption = False,
) -> None:
    """Run the withdrawal and deposit workers until stopped (and, with a `[bitcoin]` section, the
    Bitcoin deposit watcher and payouts worker beside them, on a thread of their own).

    Against a participant node (`--ledger-url` or the configuration) any number of worker
    processes may run. Against an embedded ledger file, the file is opened for writing and has
    exactly one writer: run one worker process, and `sluice ingest` (a reader) alongside."""
    settings = Settings.from_environment()
    config = deployment()
    party = treasury_party(treasury or config.treasury.party, settings)
    worker_settings = withdrawal_settings()
    clock: Callable[[], datetime] | None = None
    if sandbox_clock:
        from sluice.ledger.local.remote import RemoteLedger

        if ledger_url is None:
            fail("--sandbox-clock needs --ledger-url (a `sluice ledger serve` URL)")
        clock = RemoteLedger(sandbox_base(ledger_url)).time
    database = open_database(db or config.database_url, settings)
    bootstrap.install_breakers(config, database)
    try:
        link = open_ledger(config, database, ledger, ledger_url, node, writable=True, clock=clock)
    except SluiceError as exc:
        database.dispose()
        fail_with(exc)
    clock = link.clock
    margin = config.ledger.local_margin_s
    # The commands may be wrapped in the ledger breaker's proxy: look through it.
    commands = getattr(link.commands, "inner", link.commands)
    from sluice.ledger.canton import CantonCommands  # loaded by what talks to a participant

    if isinstance(commands, CantonCommands) and worker_settings.trec_span_s <= margin:
        link.close()
        database.dispose()
        fail(
            f"SLUICE_WITHDRAWAL_TREC_SPAN_S ({worker_settings.trec_span_s:g} s) must exceed "
            f"ledger.local_margin_s ({margin:g} s), or no local-party withdrawal could be submitted"
        )
    try:
        custody, bitcoin = _bitcoin_loop(config, database, interval)
    except SluiceError as exc:
        link.close()
        database.dispose()
        fail_with(exc)
    try:
        issuance = _issuance_loop(config, database, custody, link, party, interval)
    except SluiceError as exc:
        if bitcoin is not None:
            bitcoin.stop()
        link.close()
        database.dispose()
        fail_with(exc)
    try:
        registry = kyc_registry(reload_on_hangup=not once)
        withdrawals = WithdrawalWorker(
            database.uow,
            link.commands,
            link.registries,
            treasury=party,
            connection=connection_name(party, link.node),
            clock=clock,
            settings=worker_settings,
            compliance=registry,
        )
        deposits = DepositWorker(
            database.uow,
            link.commands,
            link.registries,
            RegistryGate(database.uow, registry, clock),
            treasury=party,
        )
        held = ", submissions HELD (see `sluice withdrawals hold`)"
        with stop_signals() as stopping:
            if bitcoin is not None and not once:
                bitcoin.start()
            if issuance is not None and not once:
                issuance.start()
            while not stopping():
                if bitcoin is not None and once:
                    bitcoin.run_round()
                if issuance is not None and once:
                    issuance.run_round()
                paid = withdrawals.run_once()
                answered = deposits.run_once()
                link.flush()  # what was submitted becomes visible to `sluice ingest`
                paused = paid.paused or answered.paused
                if paused:
                    note(f"PAUSED ({paused}): nothing is submitted until `sluice` is resumed")
                elif once or paid.busy or answered.busy or paid.held:
                    note(
                        f"withdrawals: settled {paid.settled} (retried {paid.retried}, refunded "
                        f"{paid.refunded}), reserved {paid.reserved}, submitted {paid.submitted}, "
                        f"offers withdrawn {paid.offers_withdrawn}, upkeep {paid.upkeep_created}"
                        f"{held if paid.held else ''}; deposits: accepted {answered.accepted}, "
                        f"rejected {answered.rejected}, left alone {answered.left_alone}"
                    )
                for problem in (*paid.errors, *answered.errors):
                    note(f"  ! {problem}")
                if once:
                    break
                _sleep_unless(interval, stopping)
    except SluiceError as exc:
        fail_with(exc)
    finally:
        if issuance is not None:
            issuance.stop()
        if bitcoin is not None:
            bitcoin.stop()
        link.close()
        database.dispose()


def _bitcoin_loop(
    config: DeploymentConfig, database: bootstrap.Database, interval: float
) -> tuple[bootstrap.BitcoinCustody | None, ServiceLoop | None]:
    """Custody, and the Bitcoin watcher and payouts worker, when `[bitcoin]` is configured; they
    log through the service's log lines on stderr."""
    if config.bitcoin is None:
        return None, None
    # Imported here: the server's modules are loaded only by the processes that run custody.
    from sluice.server import configure_logging
    from sluice.server.bitcoin import bitcoin_loop

    configure_logging()
    custody = bootstrap.bitcoin_custody(config)
    note(f"bitcoin: {custody.description}")
    return custody, bitcoin_loop(custody, database, interval_s=interval)


def _issuance_loop(
    config: DeploymentConfig,
    database: bootstrap.Database,
    custody: bootstrap.BitcoinCustody | None,
    link: bootstrap.LedgerConnection,
    treasury: str,
    interval: float,
) -> ServiceLoop | None:
    """iSTSi issuance's router and KYC hold worker, where custody and an issuer ledger (the
    embedded ledger file this process writes, or `[issuance] control_url`) are available;
    otherwise the reason is logged and shown."""
    from sluice.server.issuance import issuance_off_reason, serve_issuance

    reason = issuance_off_reason(config, custody, link.embedded)
    if reason is not None:
        note(f"issuance: off ({reason})")
    served = serve_issuance(
        config,
        database,
        custody=custody,
        ledger=link.embedded,
        treasury=treasury,
        interval_s=interval,
    )
    if served is None:
        return None
    note(f"issuance: {served[0].description}")
    return served[1]


def _sleep_unless(seconds: float, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))


def register(app: typer.Typer) -> None:
    app.add_typer(workers_app, name="workers")
