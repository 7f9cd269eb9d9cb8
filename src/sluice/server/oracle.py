"""The price oracle inside ``sluice serve``: every configured feed read on a loop of its own every
``[oracle] poll_s``, so that the API's ``GET /v1/oracle/health`` answers each pair's health as
it was last read (a request never waits on a feed) and a pair's health changing is logged when
it happens. Without ``[[oracle.feeds]]`` there is no loop and the endpoint answers 503."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice import bootstrap
from sluice.server.loop import Outcome, Part, ServiceLoop
from sluice.services.exchange import ExchangeContext

if TYPE_CHECKING:
    from sluice.server.wiring import Service

REFRESH_PART = "oracle_refresh"


def oracle_loop(service: Service) -> ServiceLoop | None:
    """The oracle's loop (and the API's oracle), or None when no feed is configured."""
    config = service.config.oracle
    if not config.feeds:
        return None
    oracle = bootstrap.oracle_service(
        service.config, service.database.uow, clock=service.context.clock
    )
    service.context.oracle = oracle
    if service.config.exchange.pairs:
        service.context.exchange = ExchangeContext(
            uow=service.database.uow,
            clock=service.context.clock,
            oracle=oracle,
            registry=service.context.compliance,
            settings=service.config.exchange.settings(),
        )

    def refresh() -> Outcome | None:
        healths = oracle.refresh()
        counts = dict.fromkeys(("healthy", "degraded", "offline"), 0)
        for health in healths.values():
            counts[health] += 1
        return Outcome(
            busy=False,
            counts=counts,
            problems=tuple(f"{pair}: {h}" for pair, h in sorted(healths.items()) if h != "healthy"),
        )

    return ServiceLoop(
        [Part(REFRESH_PART, refresh)],
        interval_s=config.poll_s,
        close=oracle.close,
        clock=service.context.clock,
        name="oracle",
    )
