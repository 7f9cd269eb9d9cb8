"""Staff sign in to the dashboard on the OIDC provider's own page, in headless Chromium.

How: the API's application served by uvicorn on a free port (``http://localhost:<port>``) with
``[web.oidc]`` pointing at a small provider (``tests/oidc_provider.py``) on another port, which
shows a page with one button; the harness of ``tests/e2e/browser.py`` checks every page of
sluice the browser shows (console, accessibility, width, screenshot).

Covers what only a browser shows: the provider's answer comes back by a cross-site redirect, so
the sign-in's cookie must be ``SameSite=Lax`` for the browser to send it there (a ``Strict``
one would not be, and the sign-in would be refused); the staff member presses "Sign in with …",
continues at the provider, and lands on the page they first asked for, signed in with a
``Strict`` session cookie; a provider that says no leaves them on the sign-in page, told so.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from playwright.sync_api import Browser, expect

from sluice.api.oidc import OidcSettings
from sluice.api.web.oidc_client import OidcClient, OidcClientSettings
from tests.api_support import ApiWorld, api_world, live_server
from tests.e2e.browser import Screens, Tab, artefacts_for
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, FakeProvider, running_provider


@dataclass
class Site:
    world: ApiWorld
    base_url: str
    provider: FakeProvider


@pytest.fixture
def site(sqlite_url: str) -> Iterator[Site]:
    world = api_world(sqlite_url, customers=1)
    try:
        with running_provider() as provider, live_server(world.app) as served:
            base = served.replace("//127.0.0.1:", "//localhost:")
            provider.auto_approve = False
            world.context.web_oidc = OidcClient(
                OidcClientSettings(
                    client_id=CLIENT_ID,
                    redirect_uri=f"{base}/login/oidc/callback",
                    client_secret=CLIENT_SECRET,
                    provider_name="Test IdP",
                ),
                OidcSettings(
                    issuer=provider.issuer,
                    audience="sluice-api",
                    jwks_url=provider.issuer + "/jwks",
                ),
            )
            assert httpx.get(f"{served}/login", timeout=60).status_code == 200
            yield Site(world, base, provider)
            world.context.web_oidc.close()
    finally:
        world.sandbox.close()


@pytest.fixture
def tab(browser: Browser, site: Site, request: pytest.FixtureRequest) -> Iterator[Tab]:
    opened = Tab(browser, site.base_url, Screens(artefacts_for(request.node.name)), "operator")
    yield opened
    opened.close()


def test_staff_sign_in_on_the_providers_page_and_land_where_they_asked(
    site: Site, tab: Tab
) -> None:
    tab.open("/dashboard/approvals", "sign-in-asked")
    assert tab.path == "/login"
    with tab.page.expect_navigation():
        tab.page.get_by_role("link", name="Sign in with Test IdP").click()
    assert tab.page.url.startswith(site.provider.issuer + "/authorize")
    (cookie,) = [c for c in tab.context.cookies() if c["name"] == "sluice_oidc"]
    assert (cookie["httpOnly"], cookie["secure"], cookie["sameSite"]) == (True, True, "Lax")
    tab.page.get_by_role("button", name="Continue as ops-1").click()
    # the callback's own page takes the browser on, same-site, with the session cookie
    tab.page.wait_for_url(f"{site.base_url}/dashboard/approvals")
    tab.page.wait_for_load_state()
    tab.check("dashboard-approvals")
    expect(tab.page.locator("header")).to_contain_text("operator")
    (session,) = [c for c in tab.context.cookies() if c["name"] == "sluice_session"]
    assert (session["httpOnly"], session["secure"], session["sameSite"]) == (True, True, "Strict")
    assert all(c["name"] != "sluice_oidc" for c in tab.context.cookies())  # spent
    tab.open("/dashboard", "dashboard")


def test_a_provider_that_says_no_leaves_them_signed_out_and_told(site: Site, tab: Tab) -> None:
    site.provider.deny = True
    tab.open("/login", "sign-in")
    link = tab.page.get_by_role("link", name="Sign in with Test IdP")
    tab.submit(link, "provider-said-no", status=401)
    assert tab.path == "/login/oidc/callback"
    expect(tab.page.get_by_role("alert")).to_contain_text("access_denied")
    assert all(c["name"] != "sluice_session" for c in tab.context.cookies())
