"""Signing in to the web pages, their sessions and the bound on request bodies, on SQLite and
PostgreSQL (``sluice.api.web``, ``sluice.api.body_limit``).

How: the API's application on a sandbox world (``tests/api_support.py``), driven by FastAPI's
TestClient over ``https://testserver`` (the session cookie is ``Secure``), with the world's clock
moved by the test to age sessions.

Covers: a page asked without a session redirects to ``/login`` naming it; signing in with an API
key sets a ``HttpOnly``, ``Secure``, ``SameSite=Strict`` cookie and lands staff on ``/dashboard``
and customers on ``/me`` (or the page they asked for, if it is theirs, never another site);
wrong credentials answer 401 and are audited; past five failures a minute from one address the
form answers 429 even to good credentials; a sign-in form without its CSRF token is refused; a
staff session ends after 15 idle minutes; signing out, or revoking the API key, ends the session;
a customer gets 403 on the dashboard and staff on ``/me``; sign-in and sign-out are audited; and
bodies over ``max_body_bytes`` are answered 413 (code 60) whether their length is declared or
not, on the API and on the pages, while bodies under it pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from sluice.api.context import ApiContext
from sluice.config import DeploymentConfig
from sluice.services.access import revoke_api_key
from sluice.services.audit import list_audit_records
from tests.api_support import ApiWorld, api_world


class Clock:
    """The sandbox's clock, moved on by ``offset``."""

    def __init__(self) -> None:
        self.base: Callable[[], datetime] = lambda: datetime.now(UTC)
        self.offset = timedelta(0)

    def __call__(self) -> datetime:
        return self.base() + self.offset


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    clock = Clock()
    found = api_world(database_url, customers=2, clock=clock)
    clock.base = found.sandbox.clock
    found.context.web_clock = clock  # type: ignore[attr-defined]
    yield found
    found.sandbox.close()


def browser(world: ApiWorld) -> TestClient:
    return TestClient(world.app, base_url="https://testserver", raise_server_exceptions=False)


def login_form(client: TestClient, path: str = "/login") -> str:
    answer = client.get(path)
    assert answer.status_code == 200
    found = re.search(r'name="csrf_token" value="([^"]+)"', answer.text)
    assert found is not None
    return found.group(1)


def sign_in(client: TestClient, credential: str, next_path: str = "") -> object:
    token = login_form(client)
    return client.post(
        "/login",
        data={"credential": credential, "csrf_token": token, "next": next_path},
        follow_redirects=False,
    )


def operations(world: ApiWorld) -> list[str]:
    return [
        record.entry.operation
        for record in list_audit_records(world.sandbox.database.uow, limit=1000)
    ]


def test_a_page_without_a_session_redirects_to_login(world: ApiWorld) -> None:
    client = browser(world)
    for path in ("/dashboard", "/me"):
        answer = client.get(path, follow_redirects=False)
        assert answer.status_code == 303
        assert answer.headers["location"] == f"/login?next={path}"


def test_signing_in_sets_a_strict_cookie_and_lands_each_role_at_home(world: ApiWorld) -> None:
    staff = browser(world)
    answer = sign_in(staff, world.keys["operator"])
    assert answer.status_code == 303 and answer.headers["location"] == "/dashboard"  # type: ignore[attr-defined]
    cookie = answer.headers["set-cookie"]  # type: ignore[attr-defined]
    assert cookie.startswith("sluice_session=")
    for attribute in ("HttpOnly", "Secure", "SameSite=strict", "Path=/"):
        assert attribute.lower() in cookie.lower(), cookie
    page = staff.get("/dashboard")
    assert page.status_code == 200 and "Dashboard" in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    refused = staff.get("/me")
    assert refused.status_code == 403
    # signed in as someone who may not see it: the page offers to sign out and the way home
    assert 'action="/logout"' in refused.text and 'href="/dashboard"' in refused.text

    customer = browser(world)
    answer = sign_in(customer, world.keys["user"], next_path="https://evil.example/")
    assert answer.headers["location"] == "/me"  # type: ignore[attr-defined]
    assert customer.get("/me").status_code == 200
    refused = customer.get("/dashboard")
    assert refused.status_code == 403
    assert 'action="/logout"' in refused.text and 'href="/me">your own pages' in refused.text

    asked = browser(world)
    answer = sign_in(asked, world.keys["user"], next_path="/me?page=2")
    assert answer.headers["location"] == "/me?page=2"  # type: ignore[attr-defined]
    assert operations(world).count("web_signed_in") == 3


def test_wrong_credentials_are_refused_audited_and_limited(world: ApiWorld) -> None:
    client = browser(world)
    for _ in range(5):
        answer = sign_in(client, "sk_0123456789abcdef_wrong")
        assert answer.status_code == 401  # type: ignore[attr-defined]
        assert "not accepted" in answer.text  # type: ignore[attr-defined]
    assert client.get("/dashboard", follow_redirects=False).status_code == 303
    # A sixth attempt within the minute, even with a good key: refused unchecked.
    limited = sign_in(client, world.keys["operator"])
    assert limited.status_code == 429  # type: ignore[attr-defined]
    assert "sluice_session" not in limited.headers.get("set-cookie", "")  # type: ignore[attr-defined]
    assert operations(world).count("web_sign_in_failed") == 6


def test_a_sign_in_without_its_csrf_token_is_refused(world: ApiWorld) -> None:
    client = browser(world)
    login_form(client)
    answer = client.post(
        "/login", data={"credential": world.keys["operator"]}, follow_redirects=False
    )
    assert answer.status_code == 403
    other = browser(world)  # a token from another browser's form
    stolen = login_form(other)
    answer = client.post(
        "/login",
        data={"credential": world.keys["operator"], "csrf_token": stolen + "x"},
        follow_redirects=False,
    )
    assert answer.status_code == 403
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_a_staff_session_ends_after_fifteen_idle_minutes(world: ApiWorld) -> None:
    clock: Clock = world.context.web_clock  # type: ignore[attr-defined]
    client = browser(world)
    sign_in(client, world.keys["operator"])
    clock.offset += timedelta(minutes=10)
    assert client.get("/dashboard").status_code == 200  # used: extended
    clock.offset += timedelta(minutes=14)
    assert client.get("/dashboard").status_code == 200
    clock.offset += timedelta(minutes=16)
    answer = client.get("/dashboard", follow_redirects=False)
    assert answer.status_code == 303


def test_a_live_refresh_does_not_keep_an_idle_session_alive(world: ApiWorld) -> None:
    clock: Clock = world.context.web_clock  # type: ignore[attr-defined]
    client = browser(world)
    sign_in(client, world.keys["operator"])
    refresh = {"HX-Request": "true"}
    for _ in range(3):  # an open tab refreshing itself for 21 minutes
        clock.offset += timedelta(minutes=7)
        answer = client.get("/dashboard", headers=refresh, follow_redirects=False)
        assert answer.status_code in (200, 204)
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_signing_out_or_revoking_the_key_ends_the_session(world: ApiWorld) -> None:
    client = browser(world)
    sign_in(client, world.keys["operator"])
    page = client.get("/dashboard")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    kept = dict(client.cookies)
    refused = client.post("/logout", data={"csrf_token": "wrong"}, follow_redirects=False)
    assert refused.status_code == 403
    done = client.post("/logout", data={"csrf_token": csrf.group(1)}, follow_redirects=False)
    assert done.status_code == 303 and done.headers["location"] == "/login"
    replay = browser(world)
    replay.cookies.update(kept)
    assert replay.get("/dashboard", follow_redirects=False).status_code == 303
    assert "web_signed_out" in operations(world)

    admin = browser(world)
    sign_in(admin, world.keys["system_admin"])
    assert admin.get("/dashboard").status_code == 200
    key_id = world.keys["system_admin"].split("_")[1]
    context: ApiContext = world.context
    revoke_api_key(world.sandbox.database.uow, key_id, actor="test", at=context.clock())
    assert admin.get("/dashboard", follow_redirects=False).status_code == 303


def test_bodies_over_the_limit_are_refused_unread(world: ApiWorld) -> None:
    client = browser(world)
    limit = world.context.max_body_bytes
    assert limit == 1024 * 1024
    declared = client.post(
        "/v1/customers/cust-0/withdrawals",
        content=b"{" + b" " * limit + b"}",
        headers={**world.headers("user"), "content-type": "application/json"},
    )
    assert declared.status_code == 413
    body = declared.json()
    assert (body["code"], body["error"]) == (60, "payload_too_large")
    assert body["correlation_id"] == declared.headers["x-correlation-id"]

    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    streamed = client.post(
        "/v1/customers/cust-0/withdrawals",
        content=chunks(),
        headers={**world.headers("user"), "content-type": "application/json"},
    )
    assert streamed.status_code == 413
    page = client.post(
        "/login",
        content=chunks(),
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert page.status_code == 413
    small = client.post(
        "/v1/customers/cust-0/withdrawals",
        content=b"{}",
        headers={**world.headers("user"), "content-type": "application/json"},
    )
    assert small.status_code == 422  # read and validated as usual


def test_the_web_and_body_settings_are_configuration() -> None:
    config = DeploymentConfig.model_validate(
        {"api": {"max_body_bytes": 4096}, "web": {"staff_idle_s": 300, "secure_cookies": False}}
    )
    assert config.api.max_body_bytes == 4096
    assert (config.web.staff_idle_s, config.web.secure_cookies) == (300, False)
    with pytest.raises(ValueError, match="staff_idle_s must not exceed staff_max_s"):
        DeploymentConfig.model_validate({"web": {"staff_idle_s": 7200, "staff_max_s": 3600}})
