"""What every page shares: the templates, the session a page is asked with, the CSRF check of
a form, and the answers for a page asked without a session (303 to ``/login``) or by someone who
may not see it (403). Pages are plain HTML rendered on the server; the only scripts are the
vendored ones under ``/static/vendor`` (live refresh), and every page works without them."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

from fastapi import Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape

from sluice.api.context import ApiContext
from sluice.api.web import sessions
from sluice.api.web.settings import WebSettings
from sluice.domain.access import Capability, Principal
from sluice.ports.web import WebSession

TEMPLATES = Environment(
    loader=PackageLoader("sluice.api.web", "templates"),
    autoescape=select_autoescape(default=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
# Scripts and styles from this server only; no inline script; forms post to this server only.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class SignInRequiredError(Exception):
    """A page asked for without a live session: answered 303 to ``/login?next=…``."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path


class PageForbiddenError(Exception):
    """A page or action the session's role may not use: answered 403 with a page."""


@dataclass(frozen=True, slots=True)
class Page:
    """A page's request as its handler sees it: the context, the session and its principal."""

    request: Request
    context: ApiContext
    session: WebSession

    @property
    def principal(self) -> Principal:
        return sessions.principal_of(self.session)

    @property
    def now(self) -> datetime:
        return self.context.clock()

    def check_csrf(self, given: str | None) -> None:
        if not sessions.same(given, self.session.csrf):
            raise PageForbiddenError("the form's CSRF token is missing or wrong: reload the page")

    def require(self, capability: Capability) -> None:
        principal = self.principal
        if principal.is_user or not principal.may(capability):
            raise PageForbiddenError(f"role {principal.role} may not do this")

    def render(self, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        return render(
            self.request,
            name,
            status,
            principal=self.principal,
            csrf=self.session.csrf,
            **values,
        )


def web_settings(request: Request) -> WebSettings:
    context: ApiContext = request.app.state.context
    return context.web


def render(request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
    body = TEMPLATES.get_template(name).render(path=request.url.path, **values)
    return HTMLResponse(body, status, headers=SECURITY_HEADERS)


def _session(request: Request) -> WebSession:
    context: ApiContext = request.app.state.context
    found = sessions.current(
        context,
        context.web,
        request.cookies.get(sessions.COOKIE),
        context.clock(),
        extend=request.headers.get("hx-request") != "true",  # a live refresh is not a visit
    )
    if found is None:
        raise SignInRequiredError(request.url.path)
    return found


def staff_page(request: Request) -> Page:
    """A staff page: a live session of any role but ``user``."""
    page = Page(request, request.app.state.context, _session(request))
    if page.principal.is_user:
        raise PageForbiddenError("this page is for the exchange's staff")
    return page


def customer_page(request: Request) -> Page:
    """The customer's page: a live session of a ``user`` (staff go to the dashboard)."""
    page = Page(request, request.app.state.context, _session(request))
    if not page.principal.is_user:
        raise PageForbiddenError("this page is a customer's: staff use /dashboard")
    return page


def any_page(request: Request) -> Page:
    return Page(request, request.app.state.context, _session(request))


def handlers() -> Mapping[type[Exception], Callable[[Request, Exception], Response]]:
    def sign_in(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, SignInRequiredError)
        target = f"/login?next={quote(exc.path, safe='/')}"
        if request.headers.get("hx-request") == "true":
            # A live refresh whose session ended: the whole page goes to /login (htmx would
            # otherwise swap the sign-in form's page into the refreshed part).
            return Response(status_code=204, headers={"HX-Redirect": target})
        return RedirectResponse(target, 303)

    def forbidden(request: Request, exc: Exception) -> Response:
        # Signed in as someone who may not see this: the page still offers to sign out.
        context: ApiContext = request.app.state.context
        session = sessions.current(
            context,
            context.web,
            request.cookies.get(sessions.COOKIE),
            context.clock(),
            extend=False,
        )
        if session is None:
            return render(request, "forbidden.html", 403, reason=str(exc), principal=None)
        principal = sessions.principal_of(session)
        return render(
            request, "forbidden.html", 403, reason=str(exc), principal=principal, csrf=session.csrf
        )

    return {SignInRequiredError: sign_in, PageForbiddenError: forbidden}
