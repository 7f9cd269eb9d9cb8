"""Staff sign in to the pages on the OIDC provider's own page (``[web.oidc]``:
``sluice.api.web.oidc_login``, ``oidc_client``), on SQLite and PostgreSQL.

How: the API's application on a sandbox world, driven by FastAPI's TestClient over
``https://testserver`` as the browser, and a small provider (``tests/oidc_provider.py``) as a
real HTTP server on a local port, which the "browser" visits with httpx between the two; its
signing keys are fetched from its JWKS URL and its endpoints from its discovery document.

Covers: the sign-in page offers the provider; starting sends the browser to the provider with
the client, redirect URI, scope, state, nonce and an S256 challenge, and leaves a ``HttpOnly``,
``Secure``, ``SameSite=Lax`` cookie for ``/login/oidc`` only; the provider's answer signs the
staff member in (a ``Strict`` session cookie) and lands them on the page they asked for, the
code traded with the client's secret and the PKCE verifier; the sign-in is audited. Refused,
audited and signing nobody in: an answer meant for another browser (state), an answer used
twice, an ID token with another nonce, a code traded with another verifier, the provider saying
no, a token without a sluice role; past the limit of failures a minute, 429. A customer's token
lands on ``/me``; an unreachable provider is told as such (502); without ``[web.oidc]`` there is
no button and the routes answer 404. The configuration refuses ``[web.oidc]`` without
``[api.oidc]``, a redirect URI that is not the callback, a confidential client without a secret
and a public one with one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fastapi.testclient import TestClient

from sluice.api.oidc import JwtVerifier, OidcSettings
from sluice.api.web.oidc_client import OidcClient, OidcClientSettings, challenge
from sluice.config import ConfigError, load_config
from sluice.server.wiring import web_oidc_client
from sluice.services.audit import list_audit_records
from tests.api_support import ApiWorld, api_world
from tests.oidc_provider import CLIENT_ID, CLIENT_SECRET, FakeProvider, running_provider

CALLBACK = "https://testserver/login/oidc/callback"


@pytest.fixture
def provider() -> Iterator[FakeProvider]:
    with running_provider() as found:
        yield found


def oidc_client(provider: FakeProvider) -> OidcClient:
    api = OidcSettings(
        issuer=provider.issuer, audience="sluice-api", jwks_url=provider.issuer + "/jwks"
    )
    settings = OidcClientSettings(
        client_id=CLIENT_ID,
        redirect_uri=CALLBACK,
        client_secret=CLIENT_SECRET,
        provider_name="Test IdP",
    )
    return OidcClient(settings, api)


@pytest.fixture
def world(database_url: str, provider: FakeProvider) -> Iterator[ApiWorld]:
    found = api_world(database_url, customers=2)
    found.context.jwt = JwtVerifier(
        OidcSettings(
            issuer=provider.issuer, audience="sluice-api", jwks_url=provider.issuer + "/jwks"
        )
    )
    found.context.web_oidc = oidc_client(provider)
    yield found
    found.context.web_oidc.close()
    found.sandbox.close()


def browser(world: ApiWorld) -> TestClient:
    return TestClient(world.app, base_url="https://testserver", raise_server_exceptions=False)


def start(client: TestClient, next_path: str = "") -> str:
    """Press "Sign in with …": the provider's URL the browser is sent to."""
    answer = client.get("/login/oidc", params={"next": next_path}, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    return answer.headers["location"]


def at_provider(url: str) -> str:
    """The browser at the provider, which sends it back: the callback's path and query."""
    answer = httpx.get(url, follow_redirects=False)
    assert answer.status_code == 303, answer.text
    back = urlsplit(answer.headers["location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == CALLBACK
    return f"{back.path}?{back.query}"


def operations(world: ApiWorld) -> list[tuple[str, str]]:
    return [
        (record.entry.operation, str(record.entry.parameters.get("reason", record.entry.actor)))
        for record in list_audit_records(world.sandbox.database.uow, limit=1000)
        if record.entry.operation.startswith("web_")
    ]


def test_staff_sign_in_on_the_providers_page_and_land_where_they_asked(
    world: ApiWorld, provider: FakeProvider
) -> None:
    client = browser(world)
    page = client.get("/login")
    assert 'href="/login/oidc"' in page.text
    assert "Sign in with Test IdP" in page.text
    asked = client.get("/dashboard/approvals", follow_redirects=False)
    assert asked.status_code == 303
    with_next = client.get(asked.headers["location"])
    assert 'href="/login/oidc?next=/dashboard/approvals"' in with_next.text

    started = client.get(
        "/login/oidc", params={"next": "/dashboard/approvals"}, follow_redirects=False
    )
    assert started.status_code == 303
    cookie = started.headers["set-cookie"]
    assert cookie.startswith("sluice_oidc=")
    for attribute in ("HttpOnly", "Secure", "SameSite=lax", "Path=/login/oidc", "Max-Age=600"):
        assert attribute.lower() in cookie.lower(), cookie
    url = urlsplit(started.headers["location"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == provider.issuer + "/authorize"
    query = {k: v[0] for k, v in parse_qs(url.query).items()}
    assert query["client_id"] == CLIENT_ID
    assert query["redirect_uri"] == CALLBACK
    assert query["response_type"] == "code"
    assert query["scope"] == "openid"
    assert query["code_challenge_method"] == "S256"
    assert len(query["state"]) >= 43 and len(query["nonce"]) >= 43

    landed = client.get(at_provider(started.headers["location"]), follow_redirects=False)
    assert landed.status_code == 200, landed.text
    # a page of this site takes the browser on (a redirect straight from the provider's
    # cross-site one would carry no SameSite=Strict cookie)
    assert '<meta http-equiv="refresh" content="0;url=/dashboard/approvals">' in landed.text
    cookies = landed.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("sluice_session="))
    assert "samesite=strict" in session.lower() and "httponly" in session.lower()
    assert any(c.startswith("sluice_oidc=") and "Max-Age=0" in c for c in cookies)
    assert client.get("/dashboard").status_code == 200

    # The code was traded with the client's secret (the provider checks HTTP Basic) and the
    # verifier whose S256 challenge the browser carried to the provider.
    (trade,) = provider.token_requests
    assert challenge(trade["code_verifier"]) == query["code_challenge"]
    assert trade["redirect_uri"] == CALLBACK
    assert ("web_signed_in", "operator:jwt:ops-1") in operations(world)


def test_an_answer_meant_for_another_browser_signs_nobody_in(
    world: ApiWorld, provider: FakeProvider
) -> None:
    victim, attacker = browser(world), browser(world)
    start(victim)
    back = at_provider(start(attacker))  # the attacker's own sign-in, fed to the victim
    refused = victim.get(back, follow_redirects=False)
    assert refused.status_code == 403
    assert "not started here" in refused.text
    assert victim.get("/dashboard", follow_redirects=False).status_code == 303
    no_cookie = browser(world).get(back, follow_redirects=False)
    assert no_cookie.status_code == 403
    assert provider.token_requests == []  # no code is traded for a foreign answer
    reasons = [reason for operation, reason in operations(world) if operation.endswith("failed")]
    assert len(reasons) == 2 and all("state" in reason for reason in reasons)


def test_an_answer_is_used_once(world: ApiWorld) -> None:
    client = browser(world)
    back = at_provider(start(client))
    assert client.get(back, follow_redirects=False).status_code == 200
    again = client.get(back, follow_redirects=False)
    assert again.status_code == 403


def test_an_id_token_with_another_nonce_is_refused(world: ApiWorld, provider: FakeProvider) -> None:
    provider.nonce_override = "a-nonce-of-another-sign-in"
    client = browser(world)
    refused = client.get(at_provider(start(client)), follow_redirects=False)
    assert refused.status_code == 401
    assert "sluice_session" not in refused.headers.get("set-cookie", "")
    assert any("nonce" in reason for _, reason in operations(world))


def test_a_code_traded_with_another_verifier_is_refused(
    world: ApiWorld, provider: FakeProvider
) -> None:
    client = browser(world)
    url = start(client)
    state, nonce, _verifier, next_path = client.cookies["sluice_oidc"].split(".")
    client.cookies.set("sluice_oidc", f"{state}.{nonce}.{'x' * 64}.{next_path}", path="/login/oidc")
    refused = client.get(at_provider(url), follow_redirects=False)
    assert refused.status_code == 401
    assert any("invalid_grant" in reason for _, reason in operations(world))
    assert client.get("/dashboard", follow_redirects=False).status_code == 303


def test_the_provider_saying_no_is_shown(world: ApiWorld, provider: FakeProvider) -> None:
    provider.deny = True
    client = browser(world)
    refused = client.get(at_provider(start(client)), follow_redirects=False)
    assert refused.status_code == 401
    assert "access_denied" in refused.text
    assert provider.token_requests == []


def test_a_token_without_a_sluice_role_is_refused(world: ApiWorld, provider: FakeProvider) -> None:
    provider.user = {"sub": "someone"}
    client = browser(world)
    refused = client.get(at_provider(start(client)), follow_redirects=False)
    assert refused.status_code == 401
    assert any("sluice_role" in reason for _, reason in operations(world))


def test_a_customers_token_lands_on_their_page(world: ApiWorld, provider: FakeProvider) -> None:
    provider.user = {"sub": "cust-1-login", "sluice_role": "user", "sluice_customer": "cust-1"}
    client = browser(world)
    landed = client.get(at_provider(start(client, "/dashboard")), follow_redirects=False)
    assert landed.status_code == 200
    assert 'content="0;url=/me"' in landed.text
    assert client.get("/me").status_code == 200


def test_failed_answers_count_against_the_sign_in_limit(world: ApiWorld) -> None:
    client = browser(world)
    for _ in range(5):
        assert client.get("/login/oidc/callback?code=x&state=y").status_code == 403
    blocked = client.get(at_provider(start(client)), follow_redirects=False)
    assert blocked.status_code == 429


def test_an_unreachable_provider_is_told_as_such(database_url: str) -> None:
    with running_provider() as gone:
        issuer = gone.issuer
    world = api_world(database_url, customers=1)
    world.context.web_oidc = OidcClient(
        OidcClientSettings(CLIENT_ID, CALLBACK, CLIENT_SECRET),
        OidcSettings(issuer=issuer, audience="sluice-api", jwks_url=issuer + "/jwks"),
    )
    try:
        answer = browser(world).get("/login/oidc", follow_redirects=False)
        assert answer.status_code == 502
        assert "unavailable" in answer.text
    finally:
        world.sandbox.close()


def test_without_web_oidc_there_is_no_button_and_no_route(database_url: str) -> None:
    world = api_world(database_url, customers=1)
    try:
        client = browser(world)
        assert "/login/oidc" not in client.get("/login").text
        assert client.get("/login/oidc", follow_redirects=False).status_code == 404
        assert client.get("/login/oidc/callback?code=x&state=y").status_code == 404
    finally:
        world.sandbox.close()


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sluice.toml"
    path.write_text(text)
    return path


API_OIDC = """
[api.oidc]
issuer = "https://idp.example"
audience = "sluice-api"
jwks_url = "https://idp.example/jwks"
"""


def test_the_configuration_builds_the_client(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        API_OIDC
        + """
[web.oidc]
client_id = "sluice-pages"
client_secret_env = "PAGES_SECRET"
redirect_uri = "https://exchange.example/login/oidc/callback"
provider_name = "Example SSO"
""",
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PAGES_SECRET", "s3cret")
        config = load_config(path, environ={})
        client = web_oidc_client(config)
    assert client is not None
    assert client.settings.client_secret == "s3cret"
    assert client.provider_name == "Example SSO"
    client.close()
    assert web_oidc_client(load_config(write(tmp_path, API_OIDC), environ={})) is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[web.oidc]\nclient_id = "c"\nclient_secret = "s"\n'
            'redirect_uri = "https://x.example/login/oidc/callback"\n',
            r"configure \[api.oidc\]",
        ),
        (
            API_OIDC + '[web.oidc]\nclient_id = "c"\nclient_secret = "s"\n'
            'redirect_uri = "https://x.example/elsewhere"\n',
            "redirect_uri must be this site's /login/oidc/callback",
        ),
        (
            API_OIDC + '[web.oidc]\nclient_id = "c"\n'
            'redirect_uri = "https://x.example/login/oidc/callback"\n',
            "client_secret is required",
        ),
        (
            API_OIDC + '[web.oidc]\nclient_id = "c"\nclient_secret = "s"\ntoken_auth = "none"\n'
            'redirect_uri = "https://x.example/login/oidc/callback"\n',
            "sends no secret",
        ),
        (
            API_OIDC + '[web.oidc]\nclient_id = "c"\nclient_secret = "s"\nscopes = "profile"\n'
            'redirect_uri = "https://x.example/login/oidc/callback"\n',
            "must include 'openid'",
        ),
    ],
)
def test_the_configuration_refuses_what_cannot_work(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, text), environ={})
