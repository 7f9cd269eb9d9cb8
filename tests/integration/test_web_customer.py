"""The customer's page ``/me`` through the real application, on SQLite and PostgreSQL: balances
and deposit instructions shown; a withdrawal requested with the page's form (the same form twice:
one withdrawal), completed once the workers run and shown so; a large one shown awaiting
approval; forms without or with a wrong CSRF token refused (403) with nothing created; a customer
never shown another customer's data, whatever the URL or the form says; the history paged; the
proof of reserves downloaded from the page and verified with the project's verifier.

How: a sandbox exchange (:func:`tests.api_support.api_world`) with the test client on
``https://testserver`` (the session cookie is Secure), signed in through ``/login`` with the
customer's API key as a browser would: the form's hidden CSRF token, then the cookie."""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.por.documents import Proof, parse_roots, root_for
from sluice.por.verify import verify_proof
from sluice.ports.issuance import IssuanceOperation
from sluice.services import accounts
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.por_snapshots import take_snapshot
from sluice.services.reserves_settings import ReservesContext
from tests.api_support import ApiWorld, api_world
from tests.integration.issuance_api_support import (
    CONFIRMATIONS,
    IssuanceWorld,
    add_issuance,
    custody_wallet,
)

HIDDEN = r'name="{name}" value="([^"]*)"'


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    built = api_world(
        database_url,
        settings={"approvals.required": 2, "withdrawals.approval_above": "500"},
    )
    yield built
    built.sandbox.close()


def _hidden(html: str, name: str, form_id: str | None = None) -> str:
    if form_id is not None:
        start = html.index(f'<form id="{form_id}"')
        html = html[start : html.index("</form>", start)]
    found = re.search(HIDDEN.format(name=name), html)
    assert found is not None, f"no hidden {name}"
    return found.group(1)


def _section(html: str, section_id: str) -> str:
    start = html.index(f'<section id="{section_id}"')
    return html[start : html.index("</section>", start)]


def sign_in(world: ApiWorld, who: str) -> TestClient:
    client = TestClient(world.app, base_url="https://testserver")
    form = client.get("/login")
    token = _hidden(form.text, "csrf_token")
    answer = client.post(
        "/login",
        data={"credential": world.keys[who], "csrf_token": token},
        follow_redirects=False,
    )
    assert answer.status_code == 303, answer.text
    return client


def _fund(world: ApiWorld, customer: str, amount: str) -> None:
    world.sandbox.deposit(customer, Decimal(amount))
    world.sandbox.ingest()


def _withdraw_form(
    world: ApiWorld, client: TestClient, amount: str, **changes: str
) -> dict[str, str]:
    """The withdrawal form as the page rendered it, filled in."""
    page = client.get("/me").text
    return {
        "csrf_token": _hidden(page, "csrf_token", "withdraw"),
        "idempotency_key": _hidden(page, "idempotency_key", "withdraw"),
        "instrument": world.sandbox.coin.key(),
        "amount": amount,
        "receiver": world.sandbox.customers["cust-0"],
        **changes,
    }


def _withdrawals(world: ApiWorld, customer: str) -> list[str]:
    return [w.id for w in accounts.customer_withdrawals(world.context.uow, customer)]


def _balance(world: ApiWorld, customer: str) -> Decimal:
    found = accounts.customer_balances(world.context.uow, customer)
    return found.get(world.sandbox.coin, Decimal(0))


def test_the_page_shows_balances_and_deposit_instructions(world: ApiWorld) -> None:
    _fund(world, "cust-0", "120.5")
    anonymous = TestClient(world.app, base_url="https://testserver")
    redirected = anonymous.get("/me", follow_redirects=False)
    assert redirected.status_code == 303 and redirected.headers["location"] == "/login?next=/me"
    client = sign_in(world, "user")
    page = client.get("/me")
    assert page.status_code == 200, page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    # No inline style nor script: the only script is the vendored one.
    assert ' style="' not in page.text
    assert re.findall(r"<script[^>]*>", page.text) == [
        '<script src="/static/vendor/htmx.min.js" defer>'
    ]
    balances = _section(page.text, "balances")
    coin = world.sandbox.coin
    assert f'data-instrument="{coin.key()}"' in balances and "120.5" in balances
    deposit = _section(page.text, "deposit-instructions")
    assert world.sandbox.treasury in deposit
    assert '<dd class="mono deposit-account">acct-0</dd>' in deposit
    assert "splice.lfdecentralizedtrust.org/reason" in deposit
    assert "no Bitcoin custody" in deposit
    assert "does not run iSTSi issuance" in _section(page.text, "redemptions")
    assert "not taken a proof-of-reserves snapshot" in _section(page.text, "proof")
    # Staff have the dashboard, not this page.
    staff = sign_in(world, "operator")
    assert staff.get("/me").status_code == 403


def test_a_withdrawal_requested_twice_with_one_form_is_one_and_completes(world: ApiWorld) -> None:
    _fund(world, "cust-0", "100")
    client = sign_in(world, "user")
    form = _withdraw_form(world, client, "30")
    first = client.post("/me/withdrawals", data=form, follow_redirects=False)
    assert first.status_code == 303, first.text
    assert first.headers["location"] == "/me?notice=withdrawal-requested#withdrawals"
    again = client.post("/me/withdrawals", data=form, follow_redirects=False)
    assert again.headers["location"] == "/me?notice=withdrawal-replayed#withdrawals"
    ids = _withdrawals(world, "cust-0")
    assert len(ids) == 1
    assert _balance(world, "cust-0") == Decimal(70)
    shown = client.get("/me?notice=withdrawal-replayed").text
    assert "requested once" in shown
    row = re.search(rf'<tr data-id="{ids[0]}" data-status="(\w+)">', shown)
    assert row is not None and row.group(1) in ("queued", "reserved")
    # A new rendering is a new form: a second withdrawal.
    second = client.post("/me/withdrawals", data=_withdraw_form(world, client, "5"))
    assert second.status_code == 200 and "Withdrawal requested" in second.text
    assert len(_withdrawals(world, "cust-0")) == 2

    world.sandbox.withdrawal_worker().run_once()
    world.sandbox.ingest()
    page = client.get("/me").text
    table = page[page.index('<table id="withdrawals"') :]
    assert f'<tr data-id="{ids[0]}" data-status="completed">' in table
    assert "completed" in table
    assert "65" in _section(page, "balances")
    # What a live refresh (htmx) asks for: the balances and the lists, without the forms.
    live = client.get("/me", headers={"HX-Request": "true"})
    assert live.status_code == 200 and "<form" not in live.text and "<html" not in live.text
    assert 'id="balances-live"' in live.text and 'hx-get="/me"' in live.text
    assert f'<tr data-id="{ids[0]}" data-status="completed">' in live.text
    assert (
        'hx-get="/me?withdrawals_page=2"'
        in client.get("/me?withdrawals_page=2", headers={"HX-Request": "true"}).text
    )


def test_refused_forms_show_why_and_take_nothing(world: ApiWorld) -> None:
    _fund(world, "cust-0", "10")
    client = sign_in(world, "user")
    too_much = client.post("/me/withdrawals", data=_withdraw_form(world, client, "11"))
    assert too_much.status_code >= 400 and 'id="withdraw-error"' in too_much.text
    assert 'value="11"' in too_much.text  # the form comes back filled in
    bad = client.post("/me/withdrawals", data=_withdraw_form(world, client, "ten"))
    assert bad.status_code == 422 and "Amount:" in bad.text
    unknown = client.post(
        "/me/withdrawals", data=_withdraw_form(world, client, "1", instrument="Nope@x::1")
    )
    assert unknown.status_code == 422 and "Instrument:" in unknown.text
    assert _withdrawals(world, "cust-0") == []
    assert _balance(world, "cust-0") == Decimal(10)


def test_a_form_without_or_with_a_wrong_csrf_token_is_refused(world: ApiWorld) -> None:
    _fund(world, "cust-0", "100")
    client = sign_in(world, "user")
    form = _withdraw_form(world, client, "30")
    missing = {k: v for k, v in form.items() if k != "csrf_token"}
    assert client.post("/me/withdrawals", data=missing).status_code == 403
    wrong = {**form, "csrf_token": "x" * 43}
    refused = client.post("/me/withdrawals", data=wrong)
    assert refused.status_code == 403 and "CSRF" in refused.text
    # Another customer's session token is not this session's either.
    other = sign_in(world, "user:cust-1")
    theirs = {**form, "csrf_token": _hidden(other.get("/me").text, "csrf_token", "withdraw")}
    assert client.post("/me/withdrawals", data=theirs).status_code == 403
    redeem = client.post("/me/redemptions", data={"amount_sats": "1000", "address": "x"})
    assert redeem.status_code == 403
    assert _withdrawals(world, "cust-0") == []
    assert _balance(world, "cust-0") == Decimal(100)


def test_a_large_withdrawal_is_shown_awaiting_approval_once(world: ApiWorld) -> None:
    _fund(world, "cust-0", "1000")
    client = sign_in(world, "user")
    form = _withdraw_form(world, client, "600")
    for _ in range(2):
        answer = client.post("/me/withdrawals", data=form, follow_redirects=False)
        assert answer.headers["location"] == "/me?notice=withdrawal-awaiting-approval#withdrawals"
    with world.context.uow() as uow:
        proposals = uow.access.approvals(customer_id="cust-0")
    assert [(a.operation, a.status) for a in proposals] == [("withdrawal.large", "pending")]
    page = client.get("/me?notice=withdrawal-awaiting-approval").text
    assert "awaiting approval" in page
    assert f'<tr data-id="{proposals[0].id}" data-status="pending">' in page
    assert _withdrawals(world, "cust-0") == []


def test_a_customer_never_sees_another_customers_data(world: ApiWorld) -> None:
    _fund(world, "cust-0", "100")
    _fund(world, "cust-1", "77.25")
    theirs = sign_in(world, "user:cust-1")
    form = {
        **_withdraw_form(world, theirs, "12.75"),
        "receiver": world.sandbox.customers["cust-1"],
    }
    assert theirs.post("/me/withdrawals", data=form, follow_redirects=False).status_code == 303
    their_withdrawal = _withdrawals(world, "cust-1")[0]

    mine = sign_in(world, "user")
    # A customer id in the URL or the form is not looked at: the session's customer is used.
    for path in ("/me", "/me?customer_id=cust-1", "/me?page=1&customer=cust-1"):
        page = mine.get(path).text
        assert "cust-1" not in page and "acct-1" not in page and "77.25" not in page
        assert their_withdrawal not in page and "64.5" not in page
    posted = mine.post(
        "/me/withdrawals",
        data={**_withdraw_form(world, mine, "1"), "customer_id": "cust-1"},
        follow_redirects=False,
    )
    assert posted.status_code == 303
    assert len(_withdrawals(world, "cust-0")) == 1
    assert _withdrawals(world, "cust-1") == [their_withdrawal]
    assert mine.get("/me/por-proof.json", params={"instrument": "Amulet"}).status_code == 404
    assert mine.get("/dashboard").status_code == 403


def test_the_history_is_paged(world: ApiWorld) -> None:
    for number in range(23):
        world.sandbox.deposit("cust-0", Decimal(number + 1))
    world.sandbox.ingest()
    client = sign_in(world, "user")
    first = _section(client.get("/me").text, "history")
    assert first.count("<tr data-update=") == 20
    assert 'href="/me?page=2#history"' in first and 'rel="prev"' not in first
    second = _section(client.get("/me?page=2").text, "history")
    assert second.count("<tr data-update=") == 3
    assert 'href="/me#history" rel="prev"' in second and 'rel="next"' not in second
    assert "page 2" in second
    # The oldest deposits (1, 2, 3) are on the second page, the newest (23) on the first.
    assert ">23</td>" in first and ">1</td>" in second
    assert _section(client.get("/me?page=abc").text, "history").count("<tr data-update=") == 20
    beyond = _section(client.get("/me?page=9").text, "history")
    assert "No more history" in beyond


def test_the_proof_of_reserves_downloaded_from_the_page_verifies(
    world: ApiWorld, tmp_path: Path
) -> None:
    world.context.reserves = ReservesContext(
        uow=world.context.uow,
        clock=world.sandbox.clock,
        treasury=world.sandbox.treasury,
        secret_path=tmp_path / "por-secret",
    )
    _fund(world, "cust-0", "125.5")
    _fund(world, "cust-1", "7")
    take_snapshot(world.context.reserves, snapshot_id="snap-web")
    client = sign_in(world, "user")
    section = _section(client.get("/me").text, "proof")
    coin = world.sandbox.coin.key()
    assert "snap-web" in section and "125.5" in section
    link = re.search(r'<a class="proof-download" href="([^"]+)"', section)
    assert link is not None
    file_name = "por-proof-snap-web-Amulet.json"
    assert f"sluice por verify {file_name} --root por-roots-snap-web.json" in section
    proof_answer = client.get(link.group(1).replace("&amp;", "&"))
    assert proof_answer.status_code == 200, proof_answer.text
    assert file_name in proof_answer.headers["content-disposition"]
    roots_answer = client.get("/me/por-roots.json", params={"snapshot": "snap-web"})
    assert roots_answer.status_code == 200
    proof = Proof.from_json(proof_answer.json())
    assert (proof.customer_id, proof.balance, proof.instrument) == ("cust-0", "125.5", coin)
    verdict = verify_proof(proof, root_for(parse_roots(roots_answer.text), "snap-web", coin))
    assert verdict.valid, verdict.reason
    # Only the session's own proof: cust-2 holds nothing, and no parameter names a customer.
    nobody = sign_in(world, "user:cust-1")
    their_proof = nobody.get(link.group(1).replace("&amp;", "&"))
    assert Proof.from_json(their_proof.json()).customer_id == "cust-1"


# --- iSTSi issuance: the Bitcoin deposit address and redemptions ---------------------------------


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    return custody_wallet(tmp_path_factory.mktemp("keys") / "custody")


@pytest.fixture
def issuance(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[IssuanceWorld]:
    api = api_world(database_url, settings={"approvals.required": 2})
    built = add_issuance(api, wallet)
    built.give_istsi("cust-0", 1_000_000)
    built.give_istsi("cust-1", 1_000_000)
    yield built
    api.sandbox.close()


def uow_operations(world: ApiWorld) -> list[IssuanceOperation]:
    with world.context.uow() as uow:
        return uow.issuance.operations(type="token_withdrawal", customer_id="cust-0", limit=10)


def test_a_redemption_form_posted_twice_redeems_once(issuance: IssuanceWorld) -> None:
    world = issuance.api
    client = sign_in(world, "user")
    page = client.get("/me").text
    deposit = _section(page, "deposit-instructions")
    address = re.search(r'<p class="mono address">([^<]+)</p>', deposit)
    assert address is not None
    with issuance.ctx.uow() as uow:
        latest = uow.btc_watch.latest_address("cust-0")
    assert latest is not None and latest.address == address.group(1)
    form = {
        "csrf_token": _hidden(page, "csrf_token", "redeem"),
        "idempotency_key": _hidden(page, "idempotency_key", "redeem"),
        "amount_sats": "200000",
        "address": issuance.outside_address("cust-0"),
    }
    first = client.post("/me/redemptions", data=form, follow_redirects=False)
    assert first.headers["location"] == "/me?notice=redemption-requested#redemptions"
    again = client.post(
        "/me/redemptions", data={**form, "amount_sats": "300000"}, follow_redirects=False
    )
    assert again.headers["location"] == "/me?notice=redemption-replayed#redemptions"
    ops = uow_operations(world)
    assert [(op.id, op.amount_sats) for op in ops] == [
        (f"redeem:cust-0:{form['idempotency_key']}", 200_000)
    ]
    shown = client.get("/me").text
    listed = _section(shown, "redemptions")
    assert f'<tr data-id="{ops[0].id}" data-status="pending">' in listed and "0.002" in listed
    istsi = _section(shown, "balances")
    assert f'data-instrument="{issuance.istsi.key()}"' in istsi and "0.008" in istsi
    refused = client.post(
        "/me/redemptions",
        data={**form, "idempotency_key": "web-other", "address": "bc1qnotanaddress"},
    )
    assert refused.status_code >= 400 and 'id="redeem-error"' in refused.text
    typo = client.post(
        "/me/redemptions", data={**form, "idempotency_key": "web-3", "amount_sats": "2k"}
    )
    assert typo.status_code == 422 and "Satoshis to redeem:" in typo.text
    assert len(uow_operations(world)) == 1
    # cust-1 sees neither the redemption nor cust-0's address.
    theirs = sign_in(world, "user:cust-1").get("/me").text
    assert ops[0].id not in theirs and address.group(1) not in theirs


def test_a_bitcoin_deposit_to_the_shown_address_is_listed(issuance: IssuanceWorld) -> None:
    client = sign_in(issuance.api, "user")
    deposit = _section(client.get("/me").text, "deposit-instructions")
    found = re.search(r'<p class="mono address">([^<]+)</p>', deposit)
    assert found is not None and 'id="btc-deposits"' not in deposit
    address = found.group(1)
    assert address in _section(client.get("/me").text, "deposit-instructions")  # the same one
    script = issuance.wallet.validate_address(address)
    txid, vout = issuance.chain.fund(script, 150_000, mine=True)
    issuance.chain.mine(CONFIRMATIONS)
    watcher = DepositWatcher(
        issuance.ctx.uow, issuance.chain, issuance.wallet, issuance.ctx.bitcoin, issuance.ctx.clock
    )
    assert watcher.run_once().error is None
    deposit = _section(client.get("/me").text, "deposit-instructions")
    assert f"{txid}:{vout}" in deposit and "0.0015" in deposit
    assert address not in deposit  # paid: a fresh address is shown
    assert f"{txid}:{vout}" not in sign_in(issuance.api, "user:cust-1").get("/me").text


def test_a_live_refresh_after_the_session_ended_sends_the_page_to_sign_in(world: ApiWorld) -> None:
    client = sign_in(world, "user")
    assert client.get("/me", headers={"HX-Request": "true"}).status_code == 200
    page = client.get("/me").text
    client.post("/logout", data={"csrf_token": _hidden(page, "csrf_token")})
    ended = client.get("/me", headers={"HX-Request": "true"}, follow_redirects=False)
    assert ended.status_code == 204 and ended.headers["hx-redirect"] == "/login?next=/me"
    plain = client.get("/me", follow_redirects=False)
    assert plain.status_code == 303 and plain.headers["location"] == "/login?next=/me"
