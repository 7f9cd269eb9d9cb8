"""Bitcoin custody inside ``sluice serve`` and ``sluice workers run``: the deposit watcher and the
payouts worker, on a loop of their own.

They run only when the configuration has a ``[bitcoin]`` section (the sandbox custody of
``sluice btc …`` is never run by a server). Their own thread, not the service loop's, because a
Bitcoin node that does not answer costs each call its timeout and retries, and ingestion and the
ledger workers must not wait for it; they share nothing with the ledger side but the Integration
DB. Each round is bounded (the watcher reads at most ``watch_blocks_max`` blocks, each node call
has a timeout), and a failing round — the node down, restarting or behind — is logged by the
loop, once and then at 2, 4, 8, … rounds, and tried again at the next round. The payouts worker
moves value, so the emergency pause skips it; it runs only where two signing keys are loaded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import datetime

import structlog

from sluice import bootstrap
from sluice.ports.bitcoin import BitcoinNodeError
from sluice.server.loop import Outcome, Part, ServiceLoop, _wall_clock, pause_reason

log = structlog.get_logger("sluice.server")

# The Bitcoin loop polls the node at most this often, however short the service's interval.
BITCOIN_INTERVAL_MIN_S = 1.0


class BitcoinRoundError(RuntimeError):
    """The watcher's round ended early (the node down, restarting or behind): raised so that the
    loop counts the part as failing — logged with back-off, shown by the readiness probe."""


def tick_outcome(tick: object) -> Outcome:
    """A watcher's or payouts worker's tick as the loop logs it: its counts (busy as the tick
    says), and its problems with single items."""
    counts: dict[str, object] = {}
    problems: tuple[str, ...] = ()
    if dataclasses.is_dataclass(tick) and not isinstance(tick, type):
        for item in dataclasses.fields(tick):
            value = getattr(tick, item.name)
            if item.name == "errors":
                problems = tuple(str(p) for p in value)
            elif isinstance(value, int | str) or value is None:
                counts[item.name] = value
    busy = bool(getattr(tick, "busy", False))
    return Outcome(busy=busy, counts=counts, problems=problems)


def watcher_part(
    run_once: Callable[[], object], network_problem: Callable[[], str | None] | None = None
) -> Part:
    """The watcher's part; ``network_problem`` is asked until the node once answered that it
    follows custody's chain (a node of another network is never watched)."""
    checked = network_problem is None

    def run() -> Outcome:
        nonlocal checked
        if not checked and network_problem is not None:
            try:
                problem = network_problem()
            except BitcoinNodeError as exc:
                raise BitcoinRoundError(f"the bitcoin node did not answer: {exc}") from None
            if problem is not None:
                raise BitcoinRoundError(problem)
            checked = True
        tick = run_once()
        error = getattr(tick, "error", None)
        if error:
            raise BitcoinRoundError(str(error))
        return tick_outcome(tick)

    return Part("bitcoin_watcher", run, flow="bitcoin")


def payouts_part(run_once: Callable[[], object]) -> Part:
    def run() -> Outcome:
        return tick_outcome(run_once())

    return Part("bitcoin_payouts", run, moves_value=True, flow="payouts")


def bitcoin_loop(
    custody: bootstrap.BitcoinCustody,
    database: bootstrap.Database,
    *,
    interval_s: float,
    clock: Callable[[], datetime] = _wall_clock,
) -> ServiceLoop:
    """The watcher (every round) and the payouts worker (when this process can sign, and not
    while paused) on their own loop; stopping it closes the node client."""
    from sluice.services.btc_payouts import PayoutWorker
    from sluice.services.btc_watcher import DepositWatcher

    watcher = DepositWatcher(
        database.uow, custody.node, custody.wallet, custody.settings, clock=clock
    )
    parts = [watcher_part(watcher.run_once, custody.network_problem)]
    problem = custody.signing_problem()
    if problem is None:
        worker = PayoutWorker(
            database.uow, custody.node, custody.wallet, custody.settings, clock=clock
        )
        parts.append(payouts_part(worker.run_once))
    else:
        log.warning("bitcoin payouts are not sent by this process", reason=problem)
    log.info("bitcoin custody", custody=custody.description, payouts=problem is None)
    return ServiceLoop(
        parts,
        interval_s=max(interval_s, BITCOIN_INTERVAL_MIN_S),
        paused=pause_reason(database.uow),
        close=custody.close,
        name="bitcoin",
    )
