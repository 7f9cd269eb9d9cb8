"""The harness of the web pages' browser tests: Debian's Chromium driven by Playwright, and a
:class:`Tab` per person that checks every page it shows.

Playwright downloads nothing: it launches ``/usr/bin/chromium`` (``make tools`` installs it);
without it a test skips, or fails under ``CI=true``. Each :class:`Tab` is one browser context
(its own cookies, so two staff members or a customer and staff are signed in side by side) with
one page. Every page a tab shows is checked by :meth:`Tab.check`:

* its console: an error logged by the page or a script's uncaught exception fails the test (the
  browser's "Failed to load resource" for an answer the test asked for, a 403 it expects, is not
  one);
* a full-page screenshot, kept under ``test-artifacts/screenshots/<test>/<nn>-<page>.png`` at
  the repository's root (numbered in the order the test saw them);
* accessibility: axe-core (vendored in ``tests/e2e/vendor``, refused unless its SHA-256 matches
  ``SHA256SUMS``) finds no violation of impact "serious" or "critical" (not in a tab opened with
  ``scripts=False``: axe itself needs the page's timers);
* its width: the page is no wider than the screen (a laptop's, or a phone's for a tab opened
  with ``phone=True``), so nobody scrolls it sideways; a wide table scrolls inside its own box.

The pages' Content-Security-Policy (``script-src 'self'``) stays in force: axe is evaluated
through the DevTools protocol (``page.evaluate``), which that policy does not govern, rather than
added as an inline script tag (which it forbids, and ``bypass_csp`` would allow by switching the
policy off for the page itself). So a page that broke its own policy, an inline script or a
script from elsewhere, would show the browser's refusal in its console and fail.
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from playwright.sync_api import (
    Browser,
    ConsoleMessage,
    Locator,
    Page,
    Response,
    expect,
    sync_playwright,
)

from tests.conftest import missing

REPO = Path(__file__).resolve().parents[2]
VENDOR = Path(__file__).resolve().parent / "vendor"
SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM = Path("/usr/bin/chromium")
# Bounds: a page of this local server loads in well under a second on an idle machine; the
# bound leaves room for a loaded one (make test runs four workers beside the browser).
TIMEOUT_MS = 30_000
expect.set_options(timeout=TIMEOUT_MS)
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
IMPACTS_REFUSED = ("serious", "critical")
AXE_BOUND_MS = 30_000  # axe takes well under a second a page; a hang fails rather than waits
FAILED_LOAD = "Failed to load resource"


@cache
def axe_source() -> str:
    """The vendored axe-core, once its SHA-256 is checked against ``SHA256SUMS``."""
    sums = {}
    for line in (VENDOR / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split()
        sums[name.lstrip("*")] = digest
    body = (VENDOR / "axe.min.js").read_bytes()
    found = hashlib.sha256(body).hexdigest()
    assert found == sums["axe.min.js"], f"tests/e2e/vendor/axe.min.js has SHA-256 {found}"
    return body.decode()


@contextmanager
def chromium() -> Iterator[Browser]:
    """Debian's Chromium, headless, for as long as the block lasts."""
    if not CHROMIUM.exists():
        missing(f"Debian's chromium at {CHROMIUM} (make tools installs it)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, timeout=30_000
        )
        try:
            yield browser
        finally:
            browser.close()


def artefacts_for(test_name: str) -> Path:
    """The screenshots' folder of one test, emptied of a previous run's."""
    folder = SCREENSHOTS / re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


@dataclass
class Screens:
    """The numbered screenshots of one test, shared by all its tabs."""

    folder: Path
    taken: list[str] = field(default_factory=list)

    def path(self, name: str) -> Path:
        self.taken.append(name)
        return self.folder / f"{len(self.taken):02d}-{name}.png"


class Tab:
    """One person's browser (a context of its own: cookies apart) showing one page at a time."""

    def __init__(
        self,
        browser: Browser,
        base_url: str,
        screens: Screens,
        who: str,
        *,
        phone: bool = False,
        scripts: bool = True,
    ) -> None:
        self.base_url = base_url
        self.who = who
        self.screens = screens
        self.width = (PHONE if phone else LAPTOP)["width"]
        self.scripts = scripts
        self.context = browser.new_context(
            base_url=base_url,
            viewport=PHONE if phone else LAPTOP,  # type: ignore[arg-type]
            is_mobile=phone,
            has_touch=phone,
            # Scripts off stops the pages' own; the harness's checks still run (DevTools).
            java_script_enabled=scripts,
        )
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.set_default_navigation_timeout(TIMEOUT_MS)
        self.page: Page = self.context.new_page()
        self._console: list[tuple[str, str]] = []  # (text, url) of each error
        self._answers_expected: set[str] = set()  # URLs whose 4xx the test asked for
        self.page.on("console", self._on_console)
        self.page.on("pageerror", lambda error: self._console.append((f"uncaught: {error}", "")))

    def _on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self._console.append((message.text, message.location.get("url", "")))

    # --- what the test does ----------------------------------------------------------------

    def open(self, path: str, name: str, *, status: int = 200) -> Response:
        """Go to ``path`` and check the page it ends on (after redirects), whose answer must be
        ``status``."""
        response = self.page.goto(path)
        assert response is not None, path
        self._expect(response, status)
        self.check(name)
        return response

    def submit(self, button: Locator, name: str, *, status: int = 200) -> Response:
        """Press a form's button and check the page the browser ends on; the answer of that last
        page must be ``status`` (a form that redirects: the page it redirects to)."""
        with self.page.expect_navigation() as navigation:
            button.click()
        response = navigation.value
        assert response is not None, name
        self._expect(response, status)
        self.check(name)
        return response

    def sign_in(self, key: str, *, lands_on: str) -> None:
        """Sign in through ``/login``'s form with an API key; the browser lands on ``lands_on``."""
        self.open("/login", "sign-in")
        self.page.get_by_label("API key").fill(key)
        self.submit(self.page.get_by_role("button", name="Sign in"), self._name(lands_on))
        assert self.path == lands_on, self.page.url

    def sign_out(self) -> None:
        self.submit(self.page.get_by_role("button", name="Sign out"), "signed-out")
        assert self.path == "/login", self.page.url

    def remove_csrf_tokens(self, form: Locator) -> None:
        """Take a form's hidden CSRF field out of the page, as a forged post would lack it."""
        form.locator("input[name=csrf_token]").evaluate_all(
            "inputs => inputs.forEach(input => input.remove())"
        )
        assert form.locator("input[name=csrf_token]").count() == 0

    @property
    def path(self) -> str:
        return urlsplit(self.page.url).path

    # --- the checks of every page -------------------------------------------------------------

    def check(self, name: str) -> None:
        """Screenshot the page shown, run axe on it and fail on any console error so far."""
        self.page.wait_for_load_state("load")
        self.page.screenshot(path=self.screens.path(f"{self.who}-{name}"), full_page=True)
        self.check_console()
        if self.scripts:
            # axe needs the page's timers, which do not run with scripts off; the same pages are
            # checked with scripts on.
            self.check_accessibility(name)
        self.check_width(name)

    def check_console(self) -> None:
        errors = [
            f"{text} ({url})" if url else text
            for text, url in self._console
            if not (text.startswith(FAILED_LOAD) and url in self._answers_expected)
        ]
        assert not errors, f"console errors on {self.who}'s pages: {errors}"

    def check_accessibility(self, name: str) -> None:
        if not self.page.evaluate("() => typeof window.axe === 'object'"):
            self.page.evaluate(axe_source())
        violations: list[dict[str, Any]] = self.page.evaluate(
            """async (bound_ms) => {
                const late = new Promise((_, reject) => setTimeout(
                    () => reject(new Error(`axe took more than ${bound_ms} ms`)), bound_ms));
                const result = await Promise.race(
                    [window.axe.run(document, {resultTypes: ['violations']}), late]);
                return result.violations.map(v => ({
                    id: v.id, impact: v.impact, help: v.help,
                    targets: v.nodes.slice(0, 5).map(n => n.target.join(' ')),
                }));
            }""",
            AXE_BOUND_MS,
        )
        refused = [v for v in violations if v["impact"] in IMPACTS_REFUSED]
        assert not refused, f"axe on {self.who}'s {name} page ({self.page.url}): {refused}"

    def check_width(self, name: str) -> None:
        wide: dict[str, Any] = self.page.evaluate(
            """(width) => ({
                page: document.documentElement.scrollWidth,
                past: [...document.body.querySelectorAll('*')]
                    .filter(e => !e.closest('.table-wrap') && (
                        e.getBoundingClientRect().right > width + 1
                        || e.scrollWidth > e.clientWidth + 1))
                    .slice(-3).map(e => e.outerHTML.slice(0, 120)),
            })""",
            self.width,
        )
        assert wide["page"] <= self.width, (
            f"{self.who}'s {name} page ({self.page.url}) is {wide['page']} px wide on a screen of "
            f"{self.width}: {wide['past']}"
        )

    def close(self) -> None:
        """Close the tab, failing on an error its last page logged after its last check."""
        try:
            self.check_console()
        finally:
            self.context.close()

    def _expect(self, response: Response, status: int) -> None:
        if status >= 400:
            self._answers_expected.add(response.url)
        assert response.status == status, (
            f"{response.request.method} {response.url}: {response.status}, not {status}"
        )

    @staticmethod
    def _name(path: str) -> str:
        return path.strip("/").replace("/", "-") or "root"


class TabFactory(Protocol):
    """Opens a tab for a person (``who`` names their screenshots)."""

    def __call__(self, who: str, *, phone: bool = False, scripts: bool = True) -> Tab: ...
