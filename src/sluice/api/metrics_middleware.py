"""Counts and times every HTTP request for Prometheus, by the route's path template.

The label is the matched route's template (``/v1/withdrawals/{withdrawal_id}``), never the path
itself, so ids never become label values; a path no route knows is ``unmatched``, a method
other than the standard ones ``other``. Plain ASGI
(no per-request task switch), like the correlation middleware."""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice.monitoring.metrics import HTTP_DURATION, HTTP_REQUESTS, listen, status_class

UNMATCHED = "unmatched"


def route_template(scope: Scope) -> str:
    """The path template of the route the router matched in ``scope`` (it sets ``route``)."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


# The methods a label may name; any other token a client sends is ``other`` (a label value per
# arbitrary token would be a new series each).
KNOWN_METHODS: frozenset[str] = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"}
)
OTHER_METHOD = "other"


def method_label(scope: Scope) -> str:
    """The request's HTTP method as a label: a known method, else ``other``."""
    method = str(scope.get("method", "")).upper()
    return method if method in KNOWN_METHODS else OTHER_METHOD


class MetricsMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        listen()  # committed events are counted wherever the API runs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 0

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        except BaseException:
            status = status or 500
            raise
        finally:
            route = route_template(scope)
            method = method_label(scope)
            HTTP_REQUESTS.labels(route, method, status_class(status)).inc()
            HTTP_DURATION.labels(route, method).observe(time.perf_counter() - started)
