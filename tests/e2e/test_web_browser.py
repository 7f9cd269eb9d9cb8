"""The web pages in a real browser: headless Chromium (Debian's) driven by Playwright.

How: a sandbox exchange with the real application (``tests.api_support``: an API key per role)
served by uvicorn on a free port, opened as ``http://localhost:<port>`` (a ``Secure`` cookie is
kept on localhost); each person is a browser context of their own (``tests.e2e.browser.Tab``),
signing in through ``/login``'s form with their key. Every page shown is screenshotted into
``test-artifacts/screenshots/<test>/``, checked by axe-core for serious or critical violations,
must be no wider than the screen, and its console must stay free of errors (the pages' own
Content-Security-Policy in force). What the pages cannot do (deposits on the ledger, the workers,
a flagged sender) the test does to the sandbox or over the API, as the API's tests do.

Covered:

* staff: a super admin reads every dashboard page, approves a large withdrawal that runs only
  when an operator, in a browser of their own, signs second, and releases a held deposit;
* a customer sees the treasury party, their deposit account and their balance, withdraws through
  the form and sees it completed once the withdrawal worker and ingestion have run; a large one
  awaits approval;
* who reaches what: a page asked without a session goes to ``/login``; a key not accepted signs
  nobody in; a customer reaches no staff page (403) and sees no other customer's data, their
  session cookie is no API key, and a staff action posted with their valid CSRF token is refused;
  staff do not reach ``/me``;
* CSRF: the sign-out, sign-in, approve and withdrawal forms without their token, and a forged
  post, are refused and change nothing;
* scripts: the overview refreshes itself in place (htmx, under the pages' policy; the test
  jumps the page's clock 31 s ahead); with scripts off, a customer withdraws and a super admin
  approves and releases, all through plain forms;
* a phone's screen (390 px) for the customer page and the dashboard;
* the harness itself: its checks do fail a console error, a breach of the page's policy, a
  serious accessibility fault and a page wider than the screen.

The browser starts once per test process; a test takes a few seconds, on SQLite.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, expect

from sluice.services.compliance_officer import flag_address, review_queue
from tests.api_support import ApiWorld, api_world, live_server
from tests.e2e.browser import Screens, Tab, TabFactory, artefacts_for

SETTINGS = {"approvals.required": 2, "withdrawals.approval_above": "500"}
# Every staff page, as the overview's navigation links them.
STAFF_PAGES = (
    "/dashboard",
    "/dashboard/health",
    "/dashboard/reserves",
    "/dashboard/ingestion",
    "/dashboard/pending",
    "/dashboard/holds",
    "/dashboard/reviews",
    "/dashboard/alerts",
    "/dashboard/approvals",
    "/dashboard/controls",
    "/dashboard/audit",
)
WORKER_ROUNDS_MAX = 20


@dataclass
class Site:
    world: ApiWorld
    base_url: str

    def key(self, who: str) -> str:
        return self.world.keys[who]


@pytest.fixture
def site(sqlite_url: str) -> Iterator[Site]:
    world = api_world(sqlite_url, settings=SETTINGS)
    try:
        with live_server(world.app) as base:
            # The first page a process renders compiles its templates: not on a test's clock.
            assert httpx.get(f"{base}/login", timeout=60).status_code == 200
            # localhost, not 127.0.0.1: the address a person would type, where Secure cookies live.
            yield Site(world, base.replace("//127.0.0.1:", "//localhost:"))
    finally:
        world.sandbox.close()


@pytest.fixture
def tabs(browser: Browser, site: Site, request: pytest.FixtureRequest) -> Iterator[TabFactory]:
    """Opens a tab (a person's browser) on the site; each is checked for late errors at the end."""
    screens = Screens(artefacts_for(request.node.name))
    opened: list[Tab] = []

    def open_tab(who: str, *, phone: bool = False, scripts: bool = True) -> Tab:
        tab = Tab(browser, site.base_url, screens, who, phone=phone, scripts=scripts)
        opened.append(tab)
        return tab

    yield open_tab
    for tab in opened:
        tab.close()


# --- the world behind the pages, driven as the API's tests drive it ----------------------------


def instrument(world: ApiWorld) -> dict[str, str]:
    return {"admin": world.sandbox.coin.admin, "id": world.sandbox.coin.id}


def fund(world: ApiWorld, customer: str, amount: str) -> None:
    """The customer deposits ``amount`` of the sandbox's coin; ingestion credits it."""
    world.sandbox.deposit(customer, Decimal(amount))
    world.sandbox.ingest()


def balance(world: ApiWorld, customer: str) -> Decimal:
    answer = world.client().get(
        f"/v1/customers/{customer}/balances", headers=world.headers("operator")
    )
    assert answer.status_code == 200, answer.text
    for row in answer.json()["balances"]:
        if row["instrument"] == instrument(world):
            return Decimal(row["amount"])
    return Decimal(0)


def request_withdrawal_by_api(world: ApiWorld, customer: str, amount: str, key: str) -> str:
    """A withdrawal the customer asks for over the API; answers its id, or its proposal's id
    when it awaits approval."""
    answer = world.client().post(
        f"/v1/customers/{customer}/withdrawals",
        json={
            "receiver": world.sandbox.customers[customer],
            "instrument": instrument(world),
            "amount": amount,
        },
        headers={
            **world.headers("user" if customer == "cust-0" else f"user:{customer}"),
            "Idempotency-Key": key,
        },
    )
    assert answer.status_code in (200, 201, 202), answer.text
    return str(answer.json()["id"])


def hold_a_deposit(world: ApiWorld, customer: str, amount: str) -> str:
    """A deposit held by compliance (its sender's address flagged); answers the hold's id."""
    sandbox = world.sandbox
    assert flag_address(
        sandbox.database.uow,
        sandbox.customers[customer],
        actor="officer-1",
        at=sandbox.clock(),
        reason="fraud report",
    )
    fund(world, customer, amount)
    (hold,) = review_queue(sandbox.database.uow).holds
    return hold.id


def settle_withdrawals(world: ApiWorld, withdrawal_id: str) -> None:
    """The withdrawal worker and ingestion run until the withdrawal is over (bounded)."""
    worker = world.sandbox.withdrawal_worker()
    for _ in range(WORKER_ROUNDS_MAX):
        worker.run_once()
        world.sandbox.ingest()
        with world.sandbox.database.uow() as uow:
            found = uow.withdrawals.get(withdrawal_id)
        assert found is not None
        if found.status in ("completed", "failed"):
            assert found.status == "completed", found
            return
    raise AssertionError(f"withdrawal {withdrawal_id} did not finish")


# --- the harness ---------------------------------------------------------------------------------


def test_the_checks_fail_a_console_error_a_policy_breach_an_accessibility_fault_or_a_wide_page(
    browser: Browser, site: Site, tmp_path: Path
) -> None:
    tab = Tab(browser, site.base_url, Screens(tmp_path), "visitor")
    page = tab.page
    try:
        tab.open("/login", "sign-in")
        page.evaluate("() => document.querySelector('label[for=credential]').remove()")
        with pytest.raises(AssertionError, match="'id': 'label', 'impact': 'critical'"):
            tab.check_accessibility("unlabelled")
        page.evaluate(
            """() => {
                const wide = document.createElement('div');
                wide.style.width = '3000px';
                wide.textContent = 'wide';
                document.querySelector('main').append(wide);
            }"""
        )
        with pytest.raises(AssertionError, match="px wide on a screen of 1280"):
            tab.check_width("too-wide")
        # The pages' Content-Security-Policy is in force in the tests: an inline script is refused.
        with page.expect_console_message():
            page.evaluate(
                """() => {
                    const inline = document.createElement('script');
                    inline.textContent = 'window.ran = true';
                    document.body.append(inline);
                }"""
            )
        assert page.evaluate("() => window.ran") is None
        with pytest.raises(AssertionError, match="Content Security Policy"):
            tab.check_console()
        with page.expect_event("pageerror"):
            page.evaluate("() => setTimeout(() => { throw new Error('a fault in a script') })")
        with pytest.raises(AssertionError, match=r"uncaught: .*a fault in a script"):
            tab.check_console()
    finally:
        tab.context.close()


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


# --- the staff's work ---------------------------------------------------------------------------


def test_staff_read_the_dashboard_approve_a_large_withdrawal_in_two_and_release_a_held_deposit(
    site: Site, tabs: TabFactory
) -> None:
    world = site.world
    fund(world, "cust-0", "2000")
    proposal = request_withdrawal_by_api(world, "cust-0", "800", "big-one")  # over 500: proposed
    hold_id = hold_a_deposit(world, "cust-1", "250")
    assert (balance(world, "cust-0"), balance(world, "cust-1")) == (Decimal(2000), Decimal(0))

    admin = tabs("super-admin")
    admin.sign_in(site.key("super_admin"), lands_on="/dashboard")
    # The overview links a page per concern; the staff member reads each of them.
    nav = admin.page.get_by_role("navigation", name="main").get_by_role("link")
    linked = nav.evaluate_all("links => links.map(a => a.pathname)")
    assert linked == list(STAFF_PAGES), linked
    for path in STAFF_PAGES[1:]:
        admin.open(path, path.removeprefix("/dashboard/"))
        expect(admin.page.get_by_role("heading", level=1)).to_be_visible()

    # The first signature: the withdrawal stays a proposal and nothing moves.
    admin.open("/dashboard/approvals", "approvals-awaiting")
    row = admin.page.locator(f"#approval-{proposal}")
    expect(row).to_contain_text("0 of 2")
    row.get_by_label("Comment (optional)").fill("called the customer")
    admin.submit(row.get_by_role("button", name="Approve"), "approved-once")
    expect(admin.page.locator("#flash")).to_contain_text("now pending, 1 of 2 approvals")
    expect(admin.page.locator(f"#approval-{proposal}")).to_contain_text("you voted")
    assert balance(world, "cust-0") == Decimal(2000)

    # A second staff member, in a browser of their own, gives the second: it runs.
    operator = tabs("operator")
    operator.sign_in(site.key("operator"), lands_on="/dashboard")
    operator.open("/dashboard/approvals", "approvals-awaiting")
    row = operator.page.locator(f"#approval-{proposal}")
    expect(row).to_contain_text("1 of 2")
    operator.submit(row.get_by_role("button", name="Approve"), "approved-twice")
    expect(operator.page.locator("#flash")).to_contain_text("now executed, 2 of 2 approvals")
    expect(operator.page.locator(f"#approval-{proposal}")).to_have_count(0)  # none pending
    assert balance(world, "cust-0") == Decimal(1200)
    operator.open("/dashboard/approvals?status=executed", "approvals-executed")
    expect(operator.page.locator(f"#approval-{proposal}")).to_contain_text("executed")

    # The held deposit, released to its customer.
    admin.open("/dashboard/holds", "holds")
    held = admin.page.locator("#holds tbody tr", has_text=hold_id)
    expect(held).to_contain_text("fraud report")
    held.get_by_label("Reason to release").fill("sender verified")
    admin.submit(held.get_by_role("button", name="Release"), "released")
    expect(admin.page.locator("#flash")).to_contain_text(f"Released {hold_id} to cust-1")
    expect(admin.page.locator("#holds")).to_contain_text("No deposit on hold")
    assert balance(world, "cust-1") == Decimal(250)
    admin.open("/dashboard/audit", "audit")


# --- the customer's page -------------------------------------------------------------------------


def test_a_customer_sees_how_to_deposit_and_their_balance_withdraws_and_sees_it_complete(
    site: Site, tabs: TabFactory
) -> None:
    world = site.world
    fund(world, "cust-0", "1000")
    customer = tabs("cust-0")
    customer.sign_in(site.key("user"), lands_on="/me")
    page = customer.page
    deposit = page.locator("#deposit-instructions .card.deposit").first
    expect(deposit.locator(".treasury")).to_have_text(world.sandbox.treasury)
    expect(deposit.locator(".deposit-account")).to_have_text("acct-0")
    available = page.locator("#balances tbody tr").first.locator("td").first
    expect(available).to_have_text("1000")

    page.get_by_label("Amount").fill("120")
    page.get_by_label("Receiver").fill(world.sandbox.customers["cust-0"])
    customer.submit(page.get_by_role("button", name="Request withdrawal"), "withdrawal-requested")
    assert customer.path == "/me"
    (requested,) = page.locator("#withdrawals tbody tr").all()
    withdrawal_id = requested.get_attribute("data-id")
    assert withdrawal_id is not None
    expect(requested).not_to_have_attribute("data-status", "completed")
    expect(available).to_have_text("880")

    settle_withdrawals(world, withdrawal_id)
    customer.open("/me", "withdrawal-completed")
    done = page.locator(f"#withdrawals tbody tr[data-id='{withdrawal_id}']")
    expect(done).to_have_attribute("data-status", "completed")
    expect(done.locator(".status")).to_have_text("completed")
    expect(page.locator("#balances tbody tr").first.locator("td").first).to_have_text("880")
    expect(page.locator("#history")).to_contain_text("120")

    # Over the approval threshold (500), a withdrawal waits for the exchange's approvals.
    page.get_by_label("Amount").fill("600")
    page.get_by_label("Receiver").fill(world.sandbox.customers["cust-0"])
    customer.submit(page.get_by_role("button", name="Request withdrawal"), "large-withdrawal")
    waiting = page.locator("#withdrawals tbody tr[data-status='pending']")
    expect(waiting).to_contain_text("600")
    expect(waiting.locator(".status")).to_have_text("awaiting approval")
    expect(page.locator("#balances tbody tr").first.locator("td").first).to_have_text("880")


def test_the_overview_refreshes_itself_while_scripts_are_on(site: Site, tabs: TabFactory) -> None:
    world = site.world
    fund(world, "cust-0", "2000")
    admin = tabs("super-admin")
    admin.page.clock.install()  # time flows, and the test may jump it forward
    admin.sign_in(site.key("super_admin"), lands_on="/dashboard")
    approvals = admin.page.locator("#figure-approvals .figure")
    holds = admin.page.locator("#figure-holds .figure")
    expect(approvals).to_have_text("0")
    expect(holds).to_have_text("0")
    request_withdrawal_by_api(world, "cust-0", "800", "big-one")
    hold_a_deposit(world, "cust-1", "250")
    with admin.page.expect_response(
        lambda answer: answer.request.headers.get("hx-request") == "true"
    ) as refreshed:
        admin.page.clock.fast_forward("00:31")
    assert refreshed.value.status == 200
    expect(approvals).to_have_text("1")
    expect(holds).to_have_text("1")
    assert admin.path == "/dashboard"  # the content changed in place, no navigation
    admin.check("dashboard-refreshed")


def test_the_pages_work_with_scripts_off(site: Site, tabs: TabFactory) -> None:
    world = site.world
    fund(world, "cust-0", "1000")
    customer = tabs("cust-0-no-scripts", scripts=False)
    customer.sign_in(site.key("user"), lands_on="/me")
    customer.page.get_by_label("Amount").fill("700")
    customer.page.get_by_label("Receiver").fill(world.sandbox.customers["cust-0"])
    customer.submit(
        customer.page.get_by_role("button", name="Request withdrawal"), "withdrawal-requested"
    )
    waiting = customer.page.locator("#withdrawals tbody tr[data-status='pending']")
    expect(waiting.locator(".status")).to_have_text("awaiting approval")
    proposal = waiting.get_attribute("data-id")
    hold_id = hold_a_deposit(world, "cust-1", "250")

    admin = tabs("super-admin-no-scripts", scripts=False)
    admin.sign_in(site.key("super_admin"), lands_on="/dashboard")
    admin.open("/dashboard/approvals", "approvals")
    admin.submit(
        admin.page.locator(f"#approval-{proposal}").get_by_role("button", name="Approve"),
        "approved-once",
    )
    expect(admin.page.locator("#flash")).to_contain_text("1 of 2 approvals")
    admin.open("/dashboard/holds", "holds")
    held = admin.page.locator("#holds tbody tr", has_text=hold_id)
    held.get_by_label("Reason to release").fill("sender verified")
    admin.submit(held.get_by_role("button", name="Release"), "released")
    assert balance(world, "cust-1") == Decimal(250)
    admin.sign_out()


def _phone_world(world: ApiWorld) -> None:
    """A withdrawal done, one awaiting approval and a held deposit: every list has a row."""
    fund(world, "cust-0", "1000")
    settle_withdrawals(world, request_withdrawal_by_api(world, "cust-0", "100", "small"))
    request_withdrawal_by_api(world, "cust-0", "700", "large")
    hold_a_deposit(world, "cust-1", "250")


def test_the_customer_page_fits_a_phone_screen(site: Site, tabs: TabFactory) -> None:
    _phone_world(site.world)
    customer = tabs("cust-0-phone", phone=True)
    customer.sign_in(site.key("user"), lands_on="/me")
    expect(customer.page.locator("#withdrawals tbody tr")).to_have_count(2)


def test_the_dashboard_fits_a_phone_screen(site: Site, tabs: TabFactory) -> None:
    _phone_world(site.world)
    admin = tabs("super-admin-phone", phone=True)
    admin.sign_in(site.key("super_admin"), lands_on="/dashboard")
    for path in STAFF_PAGES[1:]:
        admin.open(path, path.removeprefix("/dashboard/"))


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


def test_a_customer_sees_only_their_own_account_and_acts_for_nobody_else(
    site: Site, tabs: TabFactory
) -> None:
    world = site.world
    fund(world, "cust-0", "300")
    theirs = request_withdrawal_by_api(world, "cust-0", "50", "cust-0-small")
    hold_id = hold_a_deposit(world, "cust-2", "40")
    fund(world, "cust-1", "70")
    customer = tabs("cust-1")
    customer.sign_in(site.key("user:cust-1"), lands_on="/me")
    main = customer.page.locator("main")
    expect(main).to_contain_text("cust-1")
    expect(customer.page.locator("#balances tbody tr").first.locator("td").first).to_have_text("70")
    expect(customer.page.locator(".deposit-account").first).to_have_text("acct-1")
    for someone_elses in ("cust-0", "acct-0", theirs, world.sandbox.customers["cust-0"], hold_id):
        expect(main).not_to_contain_text(someone_elses)
    # The session is for the pages only: the API does not take its cookie for a key, for another
    # customer's data or for their own.
    for path in ("/v1/customers/cust-0/balances", "/v1/customers/cust-1/balances"):
        answer = customer.context.request.get(path)
        assert answer.status == 401, (path, answer.status)
    # A staff action posted with the customer's own, valid, CSRF token is still refused.
    token = customer.page.locator("form[action='/logout'] input[name=csrf_token]").input_value()
    for action, form in (
        ("/dashboard/holds/release", {"hold_id": hold_id, "reason": "mine now"}),
        ("/dashboard/approvals/approve", {"approval_id": theirs}),
        ("/dashboard/controls/pause", {"reason": "why not"}),
    ):
        answer = customer.context.request.post(
            action, form={**form, "csrf_token": token}, max_redirects=0
        )
        assert answer.status == 403, (action, answer.status)
    assert [h.id for h in review_queue(world.sandbox.database.uow).holds] == [hold_id]
    assert balance(world, "cust-2") == Decimal(0)
    customer.open("/me", "me-unchanged")
    expect(customer.page.locator("#balances tbody tr").first.locator("td").first).to_have_text("70")


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


def test_action_forms_without_their_csrf_token_are_refused_and_change_nothing(
    site: Site, tabs: TabFactory
) -> None:
    world = site.world
    fund(world, "cust-0", "1000")
    proposal = request_withdrawal_by_api(world, "cust-0", "700", "big-one")
    operator = tabs("operator")
    operator.sign_in(site.key("operator"), lands_on="/dashboard")
    operator.open("/dashboard/approvals", "approvals")
    row = operator.page.locator(f"#approval-{proposal}")
    operator.remove_csrf_tokens(row.locator("form"))
    operator.submit(row.get_by_role("button", name="Approve"), "approve-without-csrf", status=403)
    expect(operator.page.get_by_role("alert")).to_contain_text("CSRF")
    operator.open("/dashboard/approvals", "approvals-unchanged")
    expect(operator.page.locator(f"#approval-{proposal}")).to_contain_text("0 of 2")

    customer = tabs("cust-0")
    customer.sign_in(site.key("user"), lands_on="/me")
    form = customer.page.locator("form#withdraw")
    customer.remove_csrf_tokens(form)
    form.get_by_label("Amount").fill("100")
    form.get_by_label("Receiver").fill(world.sandbox.customers["cust-0"])
    customer.submit(
        form.get_by_role("button", name="Request withdrawal"), "withdraw-without-csrf", status=403
    )
    expect(customer.page.get_by_role("alert")).to_contain_text("CSRF")
    assert balance(world, "cust-0") == Decimal(1000)
    customer.open("/me", "me-unchanged")
    # Only the proposal asked over the API is listed; the refused form made no withdrawal.
    expect(customer.page.locator("#withdrawals tbody tr")).to_have_count(1)
