"""What the web pages need from the Integration DB: their sessions, in the caller's
transaction (``docs/web.md``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol


@dataclass(frozen=True, slots=True)
class WebSession:
    """A signed-in browser: ``id`` is the SHA-256 (hex) of its cookie's token."""

    id: str
    principal_id: str
    role: str
    customer_id: str | None
    csrf: str
    client: str | None
    created_at: datetime
    last_seen_at: datetime
    expires_at: datetime
    revoked_at: datetime | None = None

    def live(self, now: datetime) -> bool:
        return self.revoked_at is None and now < self.expires_at


class WebSessionRepository(Protocol):
    def add(self, session: WebSession) -> None: ...
    def get(self, session_id: str) -> WebSession | None: ...
    def touch(self, session_id: str, *, last_seen_at: datetime, expires_at: datetime) -> None: ...
    def revoke(self, session_id: str, at: datetime) -> bool: ...
    def revoke_principal(self, principal_id: str, at: datetime) -> int: ...
    def purge(self, before: datetime) -> int: ...
