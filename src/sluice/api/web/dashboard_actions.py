"""What the dashboard's pages share: who may see a section or use an action, the flash message an
action leaves for the page it redirects to, and how an action runs.

Permissions are the API's own: each is read from the declaration of the route that does the same
thing (``sluice.api.routes.common``), so a page admits exactly the roles the endpoint admits.

An action is a POST form. It is checked in this order — the form's CSRF token, then the
permission — and only then calls the same service function as the API's route, with the same
actor, so it is audited the same way. It answers 303 back to its page, with the outcome in the
query string (``?flash=…`` or ``?error=…``); a :class:`SluiceError` from the service is shown as
an error there, never as a 500.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, get_args
from urllib.parse import urlencode

from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import ValidationError

from sluice.api.routes import common
from sluice.api.security import Caller
from sluice.api.web.pages import Page, PageForbiddenError
from sluice.domain.access import Permission
from sluice.domain.errors import SluiceError

FLASH_CHARS_MAX = 300
# How often a live page refreshes its content (each refresh is a request of the session).
LIVE_EVERY_S = 30


def permission_of(annotation: Any) -> Permission:
    """The permission a route parameter type of ``sluice.api.routes.common`` declares."""
    for meta in get_args(annotation)[1:]:
        permission = getattr(getattr(meta, "dependency", None), "permission", None)
        if isinstance(permission, Permission):
            return permission
    raise TypeError(f"{annotation!r} declares no permission")


ANY_PRINCIPAL = permission_of(common.AnyPrincipal)
STAFF = permission_of(common.Staff)
STAFF_READS = permission_of(common.StaffReads)
USER_OPERATIONS = permission_of(common.UserOps)
COMPLIANCE_OVERRIDE = permission_of(common.ComplianceOverride)
ROUTER_ADMIN = permission_of(common.RouterAdmin)
EMERGENCY_PAUSE = permission_of(common.EmergencyPause)
AUDIT_READERS = permission_of(common.AuditReaders)


# The dashboard's pages: (path, name in the navigation, what it shows, the permissions any one
# of which lets a role read it — as the API's endpoints for the same reads).
PAGES: tuple[tuple[str, str, str, tuple[Permission, ...]], ...] = (
    ("/dashboard", "Overview", "the key figures", (STAFF,)),
    ("/dashboard/health", "Health", "components, circuit breakers and readiness", (STAFF,)),
    (
        "/dashboard/reserves",
        "Reserves",
        "the reserve ratio over time, supply against reserves, reconciliation",
        (STAFF_READS,),
    ),
    ("/dashboard/ingestion", "Ingestion", "the cursor against the ledger's end, queues", (STAFF,)),
    ("/dashboard/pending", "Pending", "withdrawals, offers, redemptions, payouts", (STAFF_READS,)),
    (
        "/dashboard/holds",
        "Suspense & holds",
        "assign, release and return",
        (USER_OPERATIONS, COMPLIANCE_OVERRIDE),
    ),
    ("/dashboard/reviews", "Reviews", "the compliance review queue", (COMPLIANCE_OVERRIDE,)),
    ("/dashboard/alerts", "Alerts", "with acknowledge", (STAFF,)),
    ("/dashboard/approvals", "Approvals", "awaiting a signature: approve or reject", (STAFF,)),
    ("/dashboard/controls", "Pause", "pause and resume", (ANY_PRINCIPAL,)),
    ("/dashboard/audit", "Audit", "searchable, with its chain's status", (AUDIT_READERS,)),
)


def visible_pages(page: Page) -> list[tuple[str, str, str]]:
    """The dashboard's pages the role may read: (path, name, what it shows)."""
    return [
        (path, name, what)
        for path, name, what, permissions in PAGES
        if any(admitted(page, permission) for permission in permissions)
    ]


def admitted(page: Page, permission: Permission) -> bool:
    """Whether the page's principal may do what ``permission`` guards (staff only)."""
    principal = page.principal
    return not principal.is_user and permission.admits(principal)


def allow(page: Page, permission: Permission) -> Caller:
    """The caller as the API's route would see it, or 403 when the role may not."""
    if not admitted(page, permission):
        raise PageForbiddenError(
            f"role {page.principal.role} may not do this (needs {permission.describe()})"
        )
    return Caller(page.principal, permission)


def show(page: Page, template: str, *, live: bool = False, **values: Any) -> HTMLResponse:
    """Render a dashboard page with the outcome of the action that led to it, if any.

    ``live``: the page (read-only) refreshes its content every ``LIVE_EVERY_S`` seconds through
    the vendored htmx, from its own URL less the outcome; with scripts off it is a plain page."""
    query = page.request.query_params
    kept = [(k, v) for k, v in query.multi_items() if k not in ("flash", "error")]
    url = page.request.url.path + (f"?{urlencode(kept)}" if kept else "")
    return page.render(
        template,
        flash=(query.get("flash") or "")[:FLASH_CHARS_MAX] or None,
        error=(query.get("error") or "")[:FLASH_CHARS_MAX] or None,
        live=url if live else None,
        nav=visible_pages(page),
        live_every_s=LIVE_EVERY_S,
        **values,
    )


def back(path: str, **outcome: str) -> RedirectResponse:
    """303 to ``path`` (one of the dashboard's own) with the outcome in the query string."""
    if not path.startswith("/dashboard"):
        path = "/dashboard"
    query = urlencode({k: v[:FLASH_CHARS_MAX] for k, v in outcome.items()})
    return RedirectResponse(f"{path}?{query}" if query else path, 303)


def act(
    page: Page,
    csrf_token: str | None,
    permission: Permission,
    path: str,
    run: Callable[[Caller], str],
) -> RedirectResponse:
    """Run an action: CSRF, then the permission, then ``run`` (the service call, answering the
    message to show); back to ``path`` with that message or the service's error."""
    page.check_csrf(csrf_token)
    caller = allow(page, permission)
    try:
        message = run(caller)
    except SluiceError as exc:
        return back(path, error=f"Refused (code {exc.code}): {exc}")
    except ValidationError as exc:
        # The API's own body models check a form's fields as they check a JSON body.
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'form'}: {e['msg']}" for e in exc.errors()
        )
        return back(path, error=f"Refused: {problems}")
    return back(path, flash=message)
