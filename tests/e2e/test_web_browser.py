"""The web pages in a real browser: headless Chromium (Debian's) driven by Playwright.

How: a sandbox exchange with the real application (``tests.api_support``: an API key per role)
served by uvicorn on a free port, opened as ``http://localhost:<port>`` (a ``Secure`` cookie is
kept on localhost); each person is a browser context of their own (``tests.e2e.browser.Tab``),
signing in through ``/login``'s form with their key. Every page shown is screenshotted into
``test-artifacts/screenshots/<test>/``, checked by axe-core for serious or critical violations,
and its console must stay free of errors.

Covered: a page asked without a session goes to ``/login``; staff and customers sign in and out;
a key that is not accepted is told so; a customer reaches neither the staff's pages nor another
customer's data, and staff not the customer's page; forms posted without their CSRF token (the
sign-out form, the sign-in form, a forged post sharing the session's cookie) are refused and
change nothing.

The browser starts once per test process; a test runs in a few seconds, on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Browser, expect

from tests.api_support import ApiWorld, api_world, live_server
from tests.e2e.browser import Screens, Tab, TabFactory, artefacts_for, chromium

SETTINGS = {"approvals.required": 2, "withdrawals.approval_above": "500"}
STAFF_PAGES = ("/dashboard",)


@dataclass
class Site:
    world: ApiWorld
    base_url: str

    def key(self, who: str) -> str:
        return self.world.keys[who]


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def site(sqlite_url: str) -> Iterator[Site]:
    world = api_world(sqlite_url, settings=SETTINGS)
    try:
        with live_server(world.app) as base:
            # localhost, not 127.0.0.1: the address a person would type, where Secure cookies live.
            yield Site(world, base.replace("//127.0.0.1:", "//localhost:"))
    finally:
        world.sandbox.close()


@pytest.fixture
def tabs(browser: Browser, site: Site, request: pytest.FixtureRequest) -> Iterator[TabFactory]:
    """Opens a tab (a person's browser) on the site; each is checked for late errors at the end."""
    screens = Screens(artefacts_for(request.node.name))
    opened: list[Tab] = []

    def open_tab(who: str) -> Tab:
        tab = Tab(browser, site.base_url, screens, who)
        opened.append(tab)
        return tab

    yield open_tab
    for tab in opened:
        tab.close()


# --- sessions ------------------------------------------------------------------------------------


def test_a_page_asked_without_a_session_goes_to_sign_in_and_back_after(
    site: Site, tabs: TabFactory
) -> None:
    visitor = tabs("visitor")
    visitor.open("/me", "me-without-session")
    assert visitor.page.url == f"{site.base_url}/login?next=/me"
    visitor.open("/dashboard", "dashboard-without-session")
    assert visitor.page.url == f"{site.base_url}/login?next=/dashboard"
    expect(visitor.page.get_by_role("heading", name="Sign in")).to_be_visible()
    visitor.page.get_by_label("API key").fill(site.key("operator"))
    visitor.submit(visitor.page.get_by_role("button", name="Sign in"), "dashboard")
    assert visitor.path == "/dashboard"


def test_a_key_that_is_not_accepted_is_told_so_and_signs_nobody_in(
    site: Site, tabs: TabFactory
) -> None:
    visitor = tabs("visitor")
    visitor.open("/login", "sign-in")
    visitor.page.get_by_label("API key").fill("sk_not-a-key-of-this-exchange")
    visitor.submit(
        visitor.page.get_by_role("button", name="Sign in"), "sign-in-refused", status=401
    )
    expect(visitor.page.get_by_role("alert")).to_contain_text("not accepted")
    assert visitor.context.cookies() == [] or all(
        cookie["name"] != "sluice_session" for cookie in visitor.context.cookies()
    )
    visitor.open("/dashboard", "still-signed-out")
    assert visitor.path == "/login"


def test_staff_sign_in_to_the_dashboard_with_a_secure_strict_cookie_and_sign_out(
    site: Site, tabs: TabFactory
) -> None:
    operator = tabs("operator")
    operator.sign_in(site.key("operator"), lands_on="/dashboard")
    expect(operator.page.get_by_role("heading", level=1)).to_have_text("Dashboard")
    expect(operator.page.locator("header")).to_contain_text("operator")
    (cookie,) = [c for c in operator.context.cookies() if c["name"] == "sluice_session"]
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Strict")
    assert operator.page.evaluate("() => document.cookie") == ""  # no script can read it
    operator.sign_out()
    operator.open("/dashboard", "dashboard-after-sign-out")
    assert operator.path == "/login"


# --- who reaches what ----------------------------------------------------------------------------


def test_a_customer_reaches_their_own_page_and_no_staff_page(site: Site, tabs: TabFactory) -> None:
    customer = tabs("cust-0")
    customer.sign_in(site.key("user"), lands_on="/me")
    expect(customer.page.locator("main")).to_contain_text("cust-0")
    for path in STAFF_PAGES:
        customer.open(path, "forbidden-" + path.strip("/").replace("/", "-"), status=403)
        expect(customer.page.get_by_role("alert")).to_contain_text("staff")
    # Nor is a staff page reached by asking for it at sign-in.
    customer.open("/me", "me")
    customer.sign_out()
    customer.open("/login?next=/dashboard", "sign-in-asking-for-dashboard")
    customer.page.get_by_label("API key").fill(site.key("user"))
    customer.submit(customer.page.get_by_role("button", name="Sign in"), "me")
    assert customer.path == "/me"


def test_a_customer_sees_only_their_own_account(site: Site, tabs: TabFactory) -> None:
    first, second = tabs("cust-0"), tabs("cust-1")
    first.sign_in(site.key("user"), lands_on="/me")
    second.sign_in(site.key("user:cust-1"), lands_on="/me")
    expect(first.page.locator("main")).to_contain_text("cust-0")
    expect(first.page.locator("main")).not_to_contain_text("cust-1")
    expect(second.page.locator("main")).to_contain_text("cust-1")
    expect(second.page.locator("main")).not_to_contain_text("cust-0")


def test_staff_do_not_reach_the_customer_page(site: Site, tabs: TabFactory) -> None:
    officer = tabs("compliance-officer")
    officer.sign_in(site.key("compliance_officer"), lands_on="/dashboard")
    officer.open("/me", "me-forbidden", status=403)
    expect(officer.page.get_by_role("alert")).to_contain_text("/dashboard")


# --- CSRF --------------------------------------------------------------------------------------


def test_a_form_posted_without_its_csrf_token_is_refused_and_changes_nothing(
    site: Site, tabs: TabFactory
) -> None:
    admin = tabs("system-admin")
    admin.sign_in(site.key("system_admin"), lands_on="/dashboard")
    sign_out = admin.page.locator("form[action='/logout']")
    admin.remove_csrf_tokens(sign_out)
    admin.submit(
        sign_out.get_by_role("button", name="Sign out"), "sign-out-without-csrf", status=403
    )
    expect(admin.page.get_by_role("alert")).to_contain_text("CSRF")
    admin.open("/dashboard", "dashboard-still-signed-in")  # the session was not ended
    assert admin.path == "/dashboard"
    # A post forged elsewhere, sharing the session's cookie but without the token, fares no better.
    forged = admin.context.request.post("/logout", form={"csrf_token": "forged"})
    assert forged.status == 403, forged.status
    admin.open("/dashboard", "dashboard-after-forged-post")
    assert admin.path == "/dashboard"


def test_the_sign_in_form_without_its_csrf_token_is_refused(site: Site, tabs: TabFactory) -> None:
    visitor = tabs("visitor")
    visitor.open("/login", "sign-in")
    form = visitor.page.locator("form[action='/login']")
    visitor.remove_csrf_tokens(form)
    visitor.page.get_by_label("API key").fill(site.key("operator"))
    visitor.submit(form.get_by_role("button", name="Sign in"), "sign-in-without-csrf", status=403)
    expect(visitor.page.get_by_role("alert")).to_contain_text("expired")
    visitor.open("/dashboard", "still-signed-out")
    assert visitor.path == "/login"
