"""A bound on request bodies, for the whole HTTP API and the pages (``[api] max_body_bytes``,
default 1 MiB).

Plain ASGI middleware in front of everything else: a request whose ``Content-Length`` says more
than the bound is answered 413 before a byte of its body is read; one without a length (chunked)
is counted as it is read, and answered 413 as soon as it passes the bound — the application then
sees the client gone instead of the rest (its own answer to that is dropped), so nothing past the
bound is ever buffered or parsed. The
answer is sluice's error shape, code 60 ``payload_too_large``."""

from __future__ import annotations

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sluice.domain.audit import current_correlation_id

DEFAULT_MAX_BODY_BYTES = 1024 * 1024


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, *, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    await self._refuse(send, declared)
                    return
                break
        seen = 0
        started = False  # the application began its answer
        refused = False  # this middleware answered 413 instead

        async def counted() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    # Answer now; the application sees the client gone, and whatever it
                    # answers to that is dropped.
                    refused = True
                    await self._refuse(send, -1)
                    return {"type": "http.disconnect"}
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if refused:
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send, size: int) -> None:
        shown = f"{size} bytes" if size >= 0 else "a body of unknown length"
        body = orjson.dumps(
            {
                "code": 60,
                "error": "payload_too_large",
                "message": f"the request body ({shown}) is over the limit of {self.max_bytes} "
                "bytes",
                "details": {"max_bytes": self.max_bytes},
                "correlation_id": current_correlation_id.get(),
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
