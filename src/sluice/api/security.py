"""Who is calling, may they, and not too often: correlation ids, authentication, the permission
each endpoint declares, ownership of customer resources, and rate limits.

* Every request gets a correlation id (the caller's ``X-Correlation-ID`` when it is a sane
  token, else a new one). It is answered in the same header, bound to the request's log lines
  and written into every audit record the request appends.
* Credentials: an API key in ``X-API-Key`` (or ``Authorization: Bearer sk_…``), or a bearer JWT
  from the configured OIDC provider. A request with credentials that do not verify is refused
  with 401 even on endpoints that need none, so a broken client finds out at once.
* Each endpoint declares its :class:`~sluice.domain.access.Permission` through :func:`guard`;
  the declaration is kept on the dependency, so the RBAC test and the OpenAPI description read
  the same object the check uses.
* Rate limits: a token bucket per principal (per client address without credentials) and one
  for the whole process; over either → 429 with ``Retry-After``. The first refusal of a
  principal in each minute is audited (not every one: a flood must not flood the audit trail).
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice.api.context import ApiContext
from sluice.domain.access import Permission, Principal
from sluice.domain.audit import AuditEntry, current_correlation_id
from sluice.domain.errors import (
    NotFoundError,
    PermissionDeniedError,
    RateLimitedError,
    UnauthorizedError,
)
from sluice.monitoring.metrics import auth_failed

CORRELATION_HEADER = "X-Correlation-ID"
_CORRELATION_RE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")
log = structlog.get_logger("sluice.api")


class CorrelationMiddleware:
    """Plain ASGI middleware (no per-request task switch): sets the correlation id for the
    request, adds it to the answer's headers, and writes one access log line per request
    (method, path, status, milliseconds, principal, correlation id)."""

    def __init__(self, app: ASGIApp, *, access_log: bool = True) -> None:
        self.app = app
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = None
        for name, value in scope.get("headers", ()):
            if name == b"x-correlation-id":
                text = value.decode("latin-1")
                if _CORRELATION_RE.match(text):
                    given = text
                break
        correlation_id = given or uuid.uuid4().hex
        token = current_correlation_id.set(correlation_id)
        structlog.contextvars.bind_contextvars(correlation_id=correlation_id)
        header = (CORRELATION_HEADER.lower().encode(), correlation_id.encode())
        started = time.perf_counter()
        status = 0

        async def send_with_header(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_header)
        finally:
            if self.access_log:
                log.info(
                    "request",
                    method=scope.get("method"),
                    path=scope.get("path"),
                    status=status,
                    ms=round((time.perf_counter() - started) * 1000, 2),
                )
            structlog.contextvars.unbind_contextvars("correlation_id", "principal")
            current_correlation_id.reset(token)


# --- rate limits ---------------------------------------------------------------------------------


class TokenBucket:
    __slots__ = ("level", "stamp")

    def __init__(self, level: float, stamp: float) -> None:
        self.level = level
        self.stamp = stamp


class RateLimiter:
    """Token buckets per key and one global; thread-safe; bounded in memory (least recently used
    keys are forgotten past ``keys_max``, which only ever makes a forgotten key's bucket full)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, keys_max: int = 50_000):
        self._clock = clock
        self._keys_max = keys_max
        self._lock = threading.Lock()
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self._global: TokenBucket | None = None
        self._last_audit: dict[str, float] = {}

    @staticmethod
    def _take(bucket: TokenBucket, now: float, rate: float, burst: float) -> float:
        """Take one token; 0 when admitted, else the seconds until one is available."""
        bucket.level = min(burst, bucket.level + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.level >= 1.0:
            bucket.level -= 1.0
            return 0.0
        return (1.0 - bucket.level) / rate

    def admit(
        self,
        key: str,
        *,
        key_rate: float,
        key_burst: float,
        global_rate: float,
        global_burst: float,
    ) -> tuple[str, float] | None:
        """None when admitted, else (which limit, seconds to wait)."""
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is None:
                bucket = TokenBucket(key_burst, now)
                self._buckets[key] = bucket
                if len(self._buckets) > self._keys_max:
                    self._buckets.popitem(last=False)
            else:
                self._buckets.move_to_end(key)
            if self._global is None:
                self._global = TokenBucket(global_burst, now)
            wait = self._take(bucket, now, key_rate, key_burst)
            if wait:
                return ("per-principal", wait)
            wait = self._take(self._global, now, global_rate, global_burst)
            if wait:
                bucket.level = min(key_burst, bucket.level + 1.0)  # not spent after all
                return ("global", wait)
            return None

    def should_audit(self, key: str) -> bool:
        now = self._clock()
        with self._lock:
            last = self._last_audit.get(key)
            if last is not None and now - last < 60.0:
                return False
            if len(self._last_audit) > 10_000:
                self._last_audit.clear()
            self._last_audit[key] = now
            return True


# --- authentication and authorisation ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """What a guarded endpoint receives: the principal (None on public endpoints without
    credentials) and the permission it was admitted under."""

    principal: Principal | None
    permission: Permission

    @property
    def actor(self) -> str:
        return self.principal.actor if self.principal is not None else "anonymous"

    def require(self) -> Principal:
        if self.principal is None:
            raise UnauthorizedError("credentials required")
        return self.principal

    def check_customer(self, customer_id: str | None) -> None:
        """A user may touch only their own customer's resources; anything else is answered as
        if it did not exist (404), so a user cannot probe for other customers."""
        principal = self.principal
        if principal is not None and principal.is_user and principal.customer_id != customer_id:
            raise NotFoundError("not found")

    @property
    def customer_scope(self) -> str | None:
        """The customer a user is confined to (None for staff)."""
        principal = self.principal
        return principal.customer_id if principal is not None and principal.is_user else None


def credentials_of(request: Request) -> tuple[str, str] | None:
    """("key", value) or ("jwt", value) from the request's headers, or None."""
    key = request.headers.get("x-api-key")
    if key:
        return ("key", key.strip())
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, value = authorization.strip().partition(" ")
        value = value.strip()
        if scheme.lower() != "bearer" or not value:
            raise UnauthorizedError("the Authorization header must be 'Bearer <token>'")
        return ("key", value) if value.startswith("sk_") else ("jwt", value)
    return None


def authenticate(context: ApiContext, request: Request) -> Principal | None:
    credentials = credentials_of(request)
    if credentials is None:
        return None
    kind, value = credentials
    if kind == "key":
        return context.keys.authenticate(value)
    if context.jwt is None:
        raise UnauthorizedError("bearer tokens are not accepted: no OIDC provider is configured")
    return context.jwt.authenticate(value)


class RateLimitRefusedError(RateLimitedError):
    """A refusal by the rate limiter; ``audit`` when it is the principal's first this minute
    (the guard then writes the audit record, on a worker thread)."""

    def __init__(self, message: str, *, retry_after_s: float, key: str, which: str, audit: bool):
        super().__init__(message, retry_after_s=retry_after_s)
        self.key = key
        self.which = which
        self.audit = audit


def _audit_rate_limit(context: ApiContext, key: str, which: str, now: datetime) -> None:
    try:
        with context.uow() as uow:
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=f"rate-limit:{key}:{now.isoformat()}",
                        operation="rate_limited",
                        actor=key[:200],
                        recorded_at=now,
                        parameters={"limit": which},
                    )
                ]
            )
            uow.commit()
    except Exception:
        log.exception("could not audit a rate-limit refusal", key=key)


def _limit(context: ApiContext, request: Request, key: str) -> None:
    limits = context.settings.rate_limits()
    limiter: RateLimiter = request.app.state.rate_limiter
    refused = limiter.admit(
        key,
        key_rate=limits.key_per_s,
        key_burst=limits.key_burst,
        global_rate=limits.global_per_s,
        global_burst=limits.global_burst,
    )
    if refused is not None:
        which, wait = refused
        raise RateLimitRefusedError(
            f"{which} rate limit reached; retry in {wait:.2f} s",
            retry_after_s=wait,
            key=key,
            which=which,
            audit=limiter.should_audit(key),
        )


def _admit(context: ApiContext, request: Request, permission: Permission) -> Caller:
    """Authenticate, rate-limit and authorise (may read the database: keys and settings)."""
    try:
        principal = authenticate(context, request)
    except UnauthorizedError:
        auth_failed("invalid")
        # Bad credentials count against the client's address, so guessing keys is slowed
        # down like any other flood.
        _limit(context, request, f"ip:{_client(request)}")
        raise
    _limit(context, request, principal.id if principal is not None else f"ip:{_client(request)}")
    if not permission.admits(principal):
        if principal is None:
            auth_failed("missing")
            raise UnauthorizedError("credentials required: an API key or a bearer token")
        raise PermissionDeniedError(
            f"role {principal.role} may not do this (needs {permission.describe()})"
        )
    return Caller(principal, permission)


def _needs_no_io(context: ApiContext, request: Request) -> bool:
    """True when :func:`_admit` can run without touching the database or the network: the
    settings are cached and the credentials are none or a cached API key (a bearer JWT may need
    the provider's keys fetched)."""
    if not context.settings.cached:
        return False
    try:
        credentials = credentials_of(request)
    except UnauthorizedError:
        return True
    if credentials is None:
        return True
    kind, value = credentials
    return kind == "key" and context.keys.is_cached(value)


def guard(permission: Permission) -> Callable[[Request], Any]:
    """The dependency an endpoint declares its permission with.

    It runs on the event loop, and hands the check to a worker thread whenever the check needs
    the database (a key or the settings not cached) or the network (a JWT), so that a slow
    database never stalls the loop that every request shares."""

    async def dependency(request: Request) -> Caller:
        context: ApiContext = request.app.state.context
        try:
            if _needs_no_io(context, request):
                caller = _admit(context, request, permission)
            else:
                caller = await run_in_threadpool(_admit, context, request, permission)
        except RateLimitRefusedError as refusal:
            if refusal.audit:
                await run_in_threadpool(
                    _audit_rate_limit, context, refusal.key, refusal.which, context.clock()
                )
            raise
        if caller.principal is not None:
            # Bound here, on the loop: a worker thread's context changes stay in that thread.
            structlog.contextvars.bind_contextvars(principal=caller.principal.id)
        return caller

    dependency.permission = permission  # type: ignore[attr-defined]
    return dependency


def _client(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"
