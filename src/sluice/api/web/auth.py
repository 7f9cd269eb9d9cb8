"""``/login`` and ``/logout`` (``docs/web.md``).

The sign-in form takes an API key (staff in a sandbox, and customers) or a bearer token of the
configured OIDC provider (staff), verified as the API verifies them. It carries a CSRF token of
its own, set in a short-lived cookie with the form (there is no session yet). Failed sign-ins are
audited and limited per client address; past the limit the form answers 429 without checking
the credentials. Staff land on ``/dashboard``, customers on ``/me`` (or on the page they asked
for, when it is one of this site's)."""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sluice.api.context import ApiContext
from sluice.api.web import sessions
from sluice.api.web.pages import Page, any_page, render
from sluice.domain.access import Principal
from sluice.domain.errors import SluiceError

router = APIRouter(include_in_schema=False)
WINDOW_S = 60.0
CLIENTS_MAX = 10_000


class FailedSignIns:
    """Failed sign-ins per client address in the last minute (thread-safe; bounded: the least
    recently failing addresses are forgotten past ``CLIENTS_MAX``)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        found = self._seen.get(client)
        if found is None:
            found = deque()
            self._seen[client] = found
            if len(self._seen) > CLIENTS_MAX:
                self._seen.popitem(last=False)
        while found and now - found[0] > WINDOW_S:
            found.popleft()
        return found

    def count(self, client: str) -> int:
        with self._lock:
            return len(self._recent(client, self._clock()))

    def add(self, client: str) -> None:
        with self._lock:
            now = self._clock()
            self._recent(client, now).append(now)
            self._seen.move_to_end(client)


LOGIN_COOKIE_S = 15 * 60
PAGES = ("/dashboard", "/me")


def client_address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def landing(next_path: str | None, is_user: bool) -> str:
    home = "/me" if is_user else "/dashboard"
    if next_path and next_path.startswith(home) and "//" not in next_path:
        return next_path
    return home


def form(request: Request, status: int = 200, error: str | None = None) -> HTMLResponse:
    context: ApiContext = request.app.state.context
    token = sessions.new_token()
    answer = render(
        request,
        "login.html",
        status,
        principal=None,
        login_csrf=token,
        next=request.query_params.get("next", ""),
        error=error,
        oidc=context.jwt is not None,
        oidc_provider=context.web_oidc.provider_name if context.web_oidc is not None else None,
    )
    answer.set_cookie(
        sessions.LOGIN_COOKIE,
        token,
        max_age=LOGIN_COOKIE_S,
        httponly=True,
        secure=context.web.secure_cookies,
        samesite="strict",
        path="/login",
    )
    return answer


@router.get("/login")
def login_form(request: Request) -> HTMLResponse:
    return form(request)


@router.post("/login")
def login(
    request: Request,
    credential: Annotated[str, Form(max_length=4096)] = "",
    csrf_token: Annotated[str, Form(max_length=200)] = "",
    next: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    context: ApiContext = request.app.state.context
    client = client_address(request)
    now = context.clock()
    if not sessions.same(csrf_token, request.cookies.get(sessions.LOGIN_COOKIE, "\0")):
        return form(request, 403, "The form expired or was not this site's: try again.")
    failures: FailedSignIns = request.app.state.failed_sign_ins
    if too_many_failures(request, client, now):
        return form(request, 429, TOO_MANY)
    try:
        principal = sessions.verify_credentials(context, credential)
    except SluiceError as exc:
        failures.add(client)
        sessions.audit_failed_sign_in(context, client, str(exc), now)
        return form(request, 401, "Those credentials were not accepted.")
    answer = signed_in(context, principal, client, next, now)
    answer.delete_cookie(sessions.LOGIN_COOKIE, path="/login")
    return answer


TOO_MANY = "Too many failed sign-ins from here: wait a minute."


def too_many_failures(request: Request, client: str, now: datetime) -> bool:
    """Whether ``client`` is past the sign-in limit (then the attempt is audited, unchecked)."""
    context: ApiContext = request.app.state.context
    failures: FailedSignIns = request.app.state.failed_sign_ins
    if failures.count(client) < context.web.login_failures_per_minute:
        return False
    sessions.audit_failed_sign_in(context, client, "too many failed sign-ins", now)
    return True


def signed_in(
    context: ApiContext, principal: Principal, client: str, next: str, now: datetime
) -> Response:
    """A new session for ``principal``: its cookie, and the way to the page it lands on."""
    return start_session(
        RedirectResponse(landing(next, principal.is_user), 303), context, principal, client, now
    )


def start_session(
    answer: Response, context: ApiContext, principal: Principal, client: str, now: datetime
) -> Response:
    """``answer`` with the cookie of a new session for ``principal``."""
    signed = sessions.sign_in(context, context.web, principal, client, now)
    answer.set_cookie(
        sessions.COOKIE,
        signed.token,
        httponly=True,
        secure=context.web.secure_cookies,
        samesite="strict",
        path="/",
    )
    return answer


@router.post("/logout")
def logout(
    page: Annotated[Page, Depends(any_page)],
    csrf_token: Annotated[str, Form(max_length=200)] = "",
) -> Response:
    page.check_csrf(csrf_token)
    sessions.sign_out(page.context, page.session, page.now)
    answer = RedirectResponse("/login", 303)
    answer.delete_cookie(sessions.COOKIE, path="/")
    return answer
