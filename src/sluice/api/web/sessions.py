"""Server-side sessions of the web pages (``docs/web.md``).

Signing in presents the same credentials as the API — an API key, or a bearer token of the
configured OIDC provider — verified by the same code. A session is a row of ``web_sessions``
found by the SHA-256 of a random token that only the browser holds, in a cookie that is
``HttpOnly``, ``SameSite=Strict`` and ``Secure``. It lives ``idle`` seconds past its last request
and never more than ``max`` seconds from sign-in (short for staff). Each session has its own CSRF
token, which every form carries and every POST is checked against. Signing out revokes the row;
revoking an API key revokes every session signed in with it. Every sign-in, failed sign-in and
sign-out is audited.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sluice.api.context import ApiContext
from sluice.api.web.settings import WebSettings
from sluice.domain.access import Principal, check_role
from sluice.domain.audit import AuditEntry
from sluice.domain.errors import UnauthorizedError
from sluice.ports.web import WebSession

COOKIE = "sluice_session"
LOGIN_COOKIE = "sluice_login"  # the sign-in form's CSRF token, before any session exists
TOKEN_BYTES = 32


def new_token() -> str:
    return secrets.token_urlsafe(TOKEN_BYTES)


def session_id(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def same(given: str | None, expected: str) -> bool:
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


def lifetimes(settings: WebSettings, principal: Principal) -> tuple[int, int]:
    """(idle, max) seconds of a session of ``principal``."""
    if principal.is_user:
        return settings.customer_idle_s, settings.customer_max_s
    return settings.staff_idle_s, settings.staff_max_s


def verify_credentials(context: ApiContext, presented: str) -> Principal:
    """The principal an API key or an OIDC bearer token names (:class:`UnauthorizedError`
    otherwise), as the API verifies them."""
    value = presented.strip()
    if not value:
        raise UnauthorizedError("enter an API key or a token")
    if value.startswith("sk_"):
        return context.keys.authenticate(value)
    if context.jwt is None:
        raise UnauthorizedError("not an API key, and no OIDC provider is configured for tokens")
    return context.jwt.authenticate(value)


@dataclass(frozen=True, slots=True)
class SignedIn:
    token: str  # the cookie's value
    session: WebSession

    @property
    def principal(self) -> Principal:
        return principal_of(self.session)


def principal_of(session: WebSession) -> Principal:
    return Principal(session.principal_id, check_role(session.role), session.customer_id)


def sign_in(
    context: ApiContext, settings: WebSettings, principal: Principal, client: str, now: datetime
) -> SignedIn:
    """A new session for ``principal`` (audited ``web_signed_in``)."""
    token = new_token()
    idle, longest = lifetimes(settings, principal)
    session = WebSession(
        id=session_id(token),
        principal_id=principal.id,
        role=principal.role,
        customer_id=principal.customer_id,
        csrf=secrets.token_urlsafe(TOKEN_BYTES),
        client=client[:100],
        created_at=now,
        last_seen_at=now,
        expires_at=now + timedelta(seconds=min(idle, longest)),
    )
    with context.uow() as uow:
        uow.web_sessions.purge(now - timedelta(days=1))
        uow.web_sessions.add(session)
        uow.audit.append([_entry("web_signed_in", principal, session, now)])
        uow.commit()
    return SignedIn(token, session)


def current(
    context: ApiContext,
    settings: WebSettings,
    token: str | None,
    now: datetime,
    *,
    extend: bool = True,
) -> WebSession | None:
    """The live session of a cookie's token, its lifetime extended unless ``extend`` is False
    (None: none, expired or revoked). A page's live refresh does not extend it: an open tab
    left alone ends its session after the idle time like any other."""
    if not token or len(token) > 200:
        return None
    with context.uow() as uow:
        session = uow.web_sessions.get(session_id(token))
        if session is None or not session.live(now):
            return None
        idle, longest = lifetimes(settings, principal_of(session))
        expires = min(
            now + timedelta(seconds=idle), session.created_at + timedelta(seconds=longest)
        )
        if extend and expires - session.expires_at > timedelta(seconds=30):  # not every time
            uow.web_sessions.touch(session.id, last_seen_at=now, expires_at=expires)
            uow.commit()
    return session


def sign_out(context: ApiContext, session: WebSession, now: datetime) -> None:
    with context.uow() as uow:
        if uow.web_sessions.revoke(session.id, now):
            uow.audit.append([_entry("web_signed_out", principal_of(session), session, now)])
        uow.commit()


def audit_failed_sign_in(context: ApiContext, client: str, reason: str, now: datetime) -> None:
    with context.uow() as uow:
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=f"web-sign-in:{client}:{now.isoformat()}",
                    operation="web_sign_in_failed",
                    actor=f"web:{client}"[:200],
                    recorded_at=now,
                    parameters={"client": client, "reason": reason[:300]},
                )
            ]
        )
        uow.commit()


def _entry(operation: str, principal: Principal, session: WebSession, now: datetime) -> AuditEntry:
    return AuditEntry(
        operation_id=f"web-session:{session.id[:16]}:{operation}",
        operation=operation,
        actor=principal.actor,
        recorded_at=now,
        customer_id=principal.customer_id,
        parameters={"session": session.id[:16], "client": session.client, "role": principal.role},
    )
