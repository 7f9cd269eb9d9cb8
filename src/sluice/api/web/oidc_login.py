"""``/login/oidc`` and its callback: staff sign in on the OIDC provider's own page
(``[web.oidc]``, ``docs/web.md``).

``GET /login/oidc`` starts a sign-in: its state, nonce and PKCE verifier go into a short-lived
cookie (``HttpOnly``, ``Secure``, ``SameSite=Lax`` — the provider's redirect back is a cross-site
navigation, which a ``Strict`` cookie would not follow — and only for ``/login/oidc``), and the
browser goes to the provider. ``GET /login/oidc/callback`` takes the provider's answer: the state
must be the cookie's, the code is traded for an ID token, and the token must carry the cookie's
nonce and a sluice role. Then a session starts as with a key, and a small page takes the
browser on to where it was going: the provider's redirect is a cross-site navigation, on which
the browser withholds the ``SameSite=Strict`` session cookie — a redirect straight on would land
signed out — while the page's own step (a meta refresh, or its link with scripts off) is
same-site. The cookie is spent either way,
so an answer is used once. Failures are audited, count against the client address's sign-in
limit like the form's, and show the sign-in form saying what went wrong.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import RedirectResponse, Response

from sluice.api.context import ApiContext
from sluice.api.web import sessions
from sluice.api.web.auth import (
    TOO_MANY,
    FailedSignIns,
    client_address,
    form,
    landing,
    start_session,
    too_many_failures,
)
from sluice.api.web.pages import render
from sluice.domain.errors import ComponentCallFailedError, SluiceError

router = APIRouter(include_in_schema=False)
COOKIE = "sluice_oidc"
COOKIE_PATH = "/login/oidc"
COOKIE_S = 10 * 60


def _pack(state: str, nonce: str, verifier: str, next_path: str) -> str:
    encoded = base64.urlsafe_b64encode(next_path.encode()).decode("ascii")
    return ".".join((state, nonce, verifier, encoded))


def _unpack(value: str | None) -> tuple[str, str, str, str] | None:
    parts = (value or "").split(".")
    if len(parts) != 4 or not all(parts[:3]) or len(value or "") > 1000:
        return None
    try:
        next_path = base64.urlsafe_b64decode(parts[3].encode("ascii")).decode()
    except (binascii.Error, UnicodeError, ValueError):
        return None
    return parts[0], parts[1], parts[2], next_path


def _refused(request: Request, status: int, message: str) -> Response:
    answer = form(request, status, message)
    answer.delete_cookie(COOKIE, path=COOKIE_PATH)
    return answer


@router.get("/login/oidc")
def oidc_start(request: Request, next: Annotated[str, Query(max_length=500)] = "") -> Response:
    context: ApiContext = request.app.state.context
    if context.web_oidc is None:
        return form(request, 404, "Sign-in through a provider is not configured here.")
    try:
        started = context.web_oidc.start()
    except SluiceError as exc:
        return form(request, 502, f"The sign-in provider is unavailable: {exc}")
    answer = RedirectResponse(started.url, 303)
    answer.set_cookie(
        COOKIE,
        _pack(started.state, started.nonce, started.verifier, next),
        max_age=COOKIE_S,
        httponly=True,
        secure=context.web.secure_cookies,
        samesite="lax",
        path=COOKIE_PATH,
    )
    return answer


@router.get("/login/oidc/callback")
def oidc_callback(
    request: Request,
    code: Annotated[str, Query(max_length=4096)] = "",
    state: Annotated[str, Query(max_length=200)] = "",
    error: Annotated[str, Query(max_length=200)] = "",
) -> Response:
    context: ApiContext = request.app.state.context
    if context.web_oidc is None:
        return form(request, 404, "Sign-in through a provider is not configured here.")
    client = client_address(request)
    now = context.clock()
    failures: FailedSignIns = request.app.state.failed_sign_ins

    def refuse(status: int, reason: str, message: str) -> Response:
        failures.add(client)
        sessions.audit_failed_sign_in(context, client, f"oidc: {reason}", now)
        return _refused(request, status, message)

    if too_many_failures(request, client, now):
        return _refused(request, 429, TOO_MANY)
    started = _unpack(request.cookies.get(COOKIE))
    if started is None or not sessions.same(state, started[0]):
        return refuse(
            403,
            "the answer's state is not this browser's sign-in",
            "That sign-in was not started here, or it expired: try again.",
        )
    _, nonce, verifier, next_path = started
    if error:
        return refuse(
            401, f"the provider answered {error!r}", f"The sign-in provider said: {error}."
        )
    if not code:
        return refuse(401, "the provider's answer has no code", "The sign-in did not finish.")
    try:
        principal = context.web_oidc.finish(code, verifier, nonce)
    except ComponentCallFailedError as exc:
        sessions.audit_failed_sign_in(context, client, f"oidc: {exc}", now)
        return _refused(request, 502, "The sign-in provider could not be reached: try again.")
    except SluiceError as exc:
        return refuse(401, str(exc), "The sign-in provider's answer was not accepted.")
    target = landing(next_path, principal.is_user)
    answer = render(request, "signed_in.html", 200, principal=None, target=target)
    answer.delete_cookie(COOKIE, path=COOKIE_PATH)
    return start_session(answer, context, principal, client, now)
