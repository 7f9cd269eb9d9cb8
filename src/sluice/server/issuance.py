"""iSTSi issuance inside ``sluice serve`` and ``sluice workers run``: the router (deposits to
mint, redemptions to pay) and the KYC hold worker (held iSTSi transfers), on a loop of their own.

Issuance runs where both halves it joins are available: Bitcoin custody (a ``[bitcoin]``
section; the sandbox custody of ``sluice btc …`` is never run by a server) and an issuer
ledger (the embedded ledger this process has open, or ``[issuance] control_url``); otherwise
:func:`issuance_off_reason` says why, and the process logs it and runs without issuance.

Its own thread, as the Bitcoin loop: the deposit steps ask the Bitcoin node (an input's previous
transaction) and the issuer's ledger, each with its timeouts, and ingestion must not wait for
them. Both parts move value, so the emergency pause skips them (the router also reads the pause
before each step). What makes them safe to run round after round, after crashes and beside
other workers, is in the services: every step is idempotent, each operation is claimed under a
lease before a step (services/issuance_router.py), and each held transfer's decision row is
written before its command is sent, with a command id derived from the instruction
(services/issuance_transfers.py). A failing round (the node down, a rebuild refused) is logged
by the loop, once and then at 2, 4, 8, … rounds, and tried again at the next round. The
router part waits while the ``ledger`` circuit breaker is open.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from sluice import bootstrap
from sluice.config import DeploymentConfig
from sluice.server.loop import Outcome, Part, ServiceLoop, pause_reason
from sluice.services.issuance_router import IssuanceRouter, RouterTick
from sluice.services.issuance_transfers import decide_held_transfers

if TYPE_CHECKING:
    from sluice.ledger.local.engine import EmbeddedLedger

log = structlog.get_logger("sluice.server")

ROUTER_PART = "issuance_router"
TRANSFERS_PART = "istsi_transfers"
# The issuance loop runs at most this often, however short the service's interval.
ISSUANCE_INTERVAL_MIN_S = 1.0


class IssuanceRoundError(RuntimeError):
    """The router refused to run its round (its context could not be rebuilt for the contract
    addresses in force): raised so that the loop counts the part as failing."""


def router_outcome(tick: RouterTick) -> Outcome:
    if tick.error:
        raise IssuanceRoundError(tick.error)
    counts: dict[str, object] = {
        "looked_at": tick.looked_at,
        "steps": tick.steps,
        "completed": len(tick.completed),
        "stuck": len(tick.stuck),
        "held": len(tick.held),
        "lost": len(tick.lost),
    }
    if tick.rebuilt:
        counts["rebuilt"] = True
    problems = tuple(f"operation {op} is stuck" for op in tick.stuck)
    return Outcome(busy=tick.steps > 0 or tick.rebuilt, counts=counts, problems=problems)


def router_part(router: IssuanceRouter) -> Part:
    def run() -> Outcome:
        return router_outcome(router.tick())

    # The router's mints and burns are commands to the ledger (under its breaker, see
    # services/issuer_breaker.py): the part waits while the ledger's breaker is open. A refusal
    # inside a round (the breaker opened meanwhile, or half-open probes used up) is a step that
    # waits: nothing was sent, the record and its command id stay as they were.
    return Part(ROUTER_PART, run, moves_value=True, flow="ledger")


def transfers_part(router: IssuanceRouter) -> Part:
    """The KYC hold worker, on the router's context (the one in force after a rebuild)."""

    def run() -> Outcome:
        tick = decide_held_transfers(router.ctx)
        counts = {
            "approved": tick.approved,
            "rejected": tick.rejected,
            "resent": tick.resent,
            "failed": tick.failed,
        }
        busy = bool(tick.approved or tick.rejected or tick.resent or tick.failed)
        return Outcome(busy=busy, counts=counts)

    return Part(TRANSFERS_PART, run, moves_value=True)


def issuance_loop(
    issuance: bootstrap.Issuance, database: bootstrap.Database, *, interval_s: float
) -> ServiceLoop:
    """The router and the KYC hold worker on their own loop; stopping it closes what
    :func:`bootstrap.issuance` opened (nothing a caller lent it)."""
    log.info("iSTSi issuance", issuance=issuance.description)
    return ServiceLoop(
        [router_part(issuance.router), transfers_part(issuance.router)],
        interval_s=max(interval_s, ISSUANCE_INTERVAL_MIN_S),
        paused=pause_reason(database.uow),
        close=issuance.close,
        name="issuance",
    )


def issuance_off_reason(
    config: DeploymentConfig,
    custody: bootstrap.BitcoinCustody | None,
    ledger: EmbeddedLedger | None,
) -> str | None:
    """Why this process runs no issuance, or None when it can."""
    if custody is None:
        return "no [bitcoin] section: issuance needs Bitcoin custody"
    if config.issuance.control_url is None and ledger is None:
        return (
            "no issuer ledger: the ledger is a Canton participant, where no token implementation "
            "is plugged in (set [issuance] control_url for a served embedded ledger)"
        )
    return None


def serve_issuance(
    config: DeploymentConfig,
    database: bootstrap.Database,
    *,
    custody: bootstrap.BitcoinCustody | None,
    ledger: EmbeddedLedger | None,
    treasury: str | None,
    interval_s: float,
    clock: Callable[[], datetime] | None = None,
    ledger_path: Path | None = None,
) -> tuple[bootstrap.Issuance, ServiceLoop] | None:
    """Issuance for a server or worker process: built on the custody and embedded ledger the
    process already has (neither closed by it), or None (the reason logged) when it is off.
    A configuration that asks for issuance and is wrong raises, as any other start-up error."""
    reason = issuance_off_reason(config, custody, ledger)
    if reason is not None:
        log.info("iSTSi issuance is off", reason=reason)
        return None
    assert custody is not None
    issuance = bootstrap.issuance(
        config,
        database,
        ledger_path=ledger_path,
        custody=custody,
        clock=clock,
        ledger=ledger,
        treasury=treasury,
    )
    try:
        loop = issuance_loop(issuance, database, interval_s=interval_s)
    except BaseException:
        issuance.close()
        raise
    return issuance, loop
