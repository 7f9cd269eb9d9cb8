"""The FastAPI application: routes, error handlers, correlation ids, rate limits."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from sluice.api.body_limit import BodyLimitMiddleware
from sluice.api.context import ApiContext
from sluice.api.errors import install_error_handlers
from sluice.api.metrics_middleware import MetricsMiddleware
from sluice.api.operations import executors
from sluice.api.routes import (
    admin,
    alerts,
    breakers,
    compliance,
    customers,
    exchange,
    exchange_inventory,
    instruments,
    issuance,
    metrics,
    oracle,
    por,
    reconciliation,
    reserves,
    system,
    withdrawals,
)
from sluice.api.security import CorrelationMiddleware, RateLimiter
from sluice.api.web.install import install_pages

# Every router of the API, in the order they are mounted.
ROUTERS = (
    *(module.router for module in (system, customers, withdrawals, instruments, compliance, admin)),
    *issuance.ROUTERS,
    reserves.router,
    reconciliation.router,
    por.router,
    metrics.router,
    alerts.router,
    breakers.router,
    oracle.router,
    exchange.router,
    exchange_inventory.router,
)

DESCRIPTION = """\
sluice moves value in and out of the exchange under compliance control.

**Credentials.** An API key in `X-API-Key` (or `Authorization: Bearer sk_…`), or a bearer JWT from
the configured OIDC provider. Each endpoint says which capability it needs; the roles that hold
each capability are in DESIGN §10's matrix. A user (role `user`) reaches only their own
customer's resources; anything else answers 404.

**Errors** carry `{code, error, message, details, correlation_id}` with sluice's stable codes
(1 unauthorized, 2 insufficient permissions, 10 not found, 20–22 compliance, 30–31 mint guard,
41 invalid state, 42 duplicate, 50–52 paused, 53 rate limited, 60–64 invalid input). Every
answer has an `X-Correlation-ID` header; the same id is in the logs and the audit records of the
request.

**Critical operations** (instrument changes, large withdrawals, limit changes, suspense
assignment, configuration changes) answer 202 with a proposal that runs once enough distinct
principals have approved it; configuration changes then wait out a time lock.
"""


def create_app(context: ApiContext, *, access_log: bool = True) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # The asyncio reads live on the loop that serves the requests: opened here, closed here.
        reads = context.reads
        if reads is not None:
            await reads.open()
        try:
            yield
        finally:
            if reads is not None:
                await reads.close()

    app = FastAPI(
        lifespan=lifespan,
        title="sluice",
        version="1",
        description=DESCRIPTION,
        docs_url="/docs",
        redoc_url=None,
    )
    if not context.executors:
        context.executors = executors(context)
    app.state.context = context
    app.state.rate_limiter = RateLimiter()
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    install_pages(app)
    app.add_middleware(MetricsMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=context.max_body_bytes)
    app.add_middleware(CorrelationMiddleware, access_log=access_log)
    return app
