"""Chapter: the HTTP API. The application ``sluice serve`` runs (``create_app``) in uvicorn on a
free local port, on the demo's Integration DB, driven with httpx as an exchange's systems and
staff would: API keys per role (made by the ``create_api_key`` service; only their ids are
shown), a customer's balance and deposit instructions, a withdrawal sent twice with one
``Idempotency-Key`` (one withdrawal), a large one (above a threshold set low for the demo)
proposed and approved by two distinct staff members, an emergency pause (a withdrawal request
answers 503 with code 50, a balance read still works) and resume, a request without credentials
(401) and one for another customer's balance (404), and the pause in the audit trail with its
request's correlation id. The demo's withdrawal worker then pays both withdrawals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from rich.console import Console
from rich.table import Table

from sluice.api.app import create_app
from sluice.api.context import ApiContext
from sluice.demo.report import Chapter, Sections, Status, mark, money, short, shorten
from sluice.demo.world import (
    CUSTOMERS,
    POLL_S,
    Customer,
    Exchange,
    PlannedWithdrawal,
    log_to_file,
)
from sluice.domain.access import Role
from sluice.domain.amounts import ZERO
from sluice.domain.journal import customer_account_name
from sluice.domain.ledger import InstrumentId
from sluice.server import bind, url_of
from sluice.services.access import ApiKeyVerifier, create_api_key
from sluice.services.books import customer_balances
from sluice.services.settings import RuntimeSettings

API_CUSTOMER = CUSTOMERS[0]  # the customer whose front end calls the API
API_OTHER = CUSTOMERS[1]  # whose balance API_CUSTOMER's key must not see
APPROVAL_ABOVE = Decimal(1000)  # withdrawals.approval_above for the demo (reference units)
# What the customer withdraws over HTTP: a small withdrawal (sent twice with one Idempotency-Key)
# and a large one that needs two staff approvals. The demo's withdrawal worker pays both.
API_WITHDRAWALS = (
    PlannedWithdrawal("api-order-1", API_CUSTOMER, Decimal("25.00"), "CC", None),
    PlannedWithdrawal("api-order-2", API_CUSTOMER, Decimal("1200.00"), "CC", None),
)
API_REFUSED_KEY = "api-order-3"  # asked for during the pause: refused, so never created
PAUSE_REASON = "incident drill"
API_ACTOR = "demo-admin"  # who creates the keys (with the service, as `sluice admin` does)
# The keys: who holds them (as the report names them), their role, the customer of a user key.
API_KEYS: tuple[tuple[str, Role, Customer | None], ...] = (
    ("super admin", "super_admin", None),
    ("system admin", "system_admin", None),
    ("operator", "operator", None),
    ("compliance officer", "compliance_officer", None),
    (f"{API_CUSTOMER.name} (user)", "user", API_CUSTOMER),
)
ANONYMOUS = "anonymous"
API_TIMEOUT_S = 10.0  # per HTTP request, and for the server to start and to stop


@dataclass(frozen=True, slots=True)
class ApiCall:
    """One request of the chapter and what came of it."""

    who: str
    method: str
    path: str  # as shown: record ids shortened
    status: int
    code: int | None  # sluice's error code, for an error answer
    what: str
    ok: bool


@dataclass(slots=True)
class ApiStory:
    url: str = ""
    key_ids: list[tuple[str, str]] = field(default_factory=list)  # who → key id (never the key)
    calls: list[ApiCall] = field(default_factory=list)
    rounds: int = 0  # the withdrawal worker's rounds paying the API's withdrawals
    paid_after: int = 0  # how many calls came before the worker paid
    ok: bool = False  # every request answered as planned and both withdrawals were paid


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """``app`` in uvicorn on a free local port, in a thread; yields its base URL."""
    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(
        uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False)
    )
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="sluice-demo-api", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + API_TIMEOUT_S
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API server did not start within {API_TIMEOUT_S:.0f}s")
            thread.join(POLL_S)
        yield url_of(sock)
    finally:
        server.should_exit = True
        thread.join(API_TIMEOUT_S)
        sock.close()


def api_context(exchange: Exchange) -> ApiContext:
    """What ``sluice serve`` builds for its API (:func:`sluice.server.build_service`), on the
    demo's Integration DB, treasury, KYC registry and clock; large withdrawals need approvals
    above :data:`APPROVAL_ABOVE` instead of the default."""
    uow = exchange.database.uow
    return ApiContext(
        uow=uow,
        treasury=exchange.world.treasury,
        clock=exchange.clock,
        compliance=exchange.registry,
        settings=RuntimeSettings(
            uow, {"withdrawals.approval_above": str(APPROVAL_ABOVE)}, clock=exchange.clock
        ),
        keys=ApiKeyVerifier(uow),
        withdrawal_settings=exchange.settings,
    )


def error_code(response: httpx.Response) -> int | None:
    """sluice's code from an error answer's body ``{code, error, message, …}``."""
    if response.is_success:
        return None
    try:
        body = response.json()
    except ValueError:
        return None
    code = body.get("code") if isinstance(body, dict) else None
    return code if isinstance(code, int) else None


def refusal(response: httpx.Response) -> str:
    """``code 50 system_paused`` for an error answer."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return f"HTTP {response.status_code}"
    return f"code {body.get('code')} {body.get('error')}"


@dataclass(slots=True)
class ApiClient:
    """The exchange's side of the chapter: one HTTP client, a key per caller, every request
    recorded as a row of the report."""

    http: httpx.Client
    keys: dict[str, str]
    story: ApiStory
    last: tuple[str, str, str, httpx.Response] | None = field(default=None, init=False)

    def send(
        self,
        who: str,
        method: str,
        path: str,
        *,
        shown: str | None = None,
        body: dict[str, Any] | None = None,
        idempotency_key: str | None = None,
    ) -> httpx.Response:
        headers: dict[str, str] = {}
        if who in self.keys:
            headers["X-API-Key"] = self.keys[who]
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        response = self.http.request(method, path, json=body, headers=headers)
        self.last = (who, method, shown or path, response)
        return response

    def note(self, what: str, ok: bool) -> bool:
        """Record the last request with what happened and whether that is what was meant to."""
        assert self.last is not None, "note() follows a send()"
        who, method, shown, response = self.last
        self.story.calls.append(
            ApiCall(who, method, shown, response.status_code, error_code(response), what, ok)
        )
        return ok


def create_demo_keys(exchange: Exchange, story: ApiStory) -> dict[str, str]:
    """A key per caller, made by the service ``sluice admin create-api-key`` uses; only each key's
    id goes into the report."""
    keys: dict[str, str] = {}
    for who, role, customer in API_KEYS:
        record, key = create_api_key(
            exchange.database.uow,
            role=role,
            customer_id=customer.id if customer else None,
            label=f"demo: {who}",
            actor=API_ACTOR,
            at=exchange.clock(),
        )
        keys[who] = key
        story.key_ids.append((who, record.id))
    return keys


def cc_balance(body: Any, coin: InstrumentId) -> Decimal | None:
    """The CC amount in a ``GET …/balances`` answer."""
    for row in body.get("balances", []) if isinstance(body, dict) else []:
        if row.get("instrument") == {"admin": coin.admin, "id": coin.id}:
            return Decimal(row["amount"])
    return None


def drive_the_api(exchange: Exchange, client: ApiClient) -> bool:
    """The requests of the chapter, in order; True when each answered as planned."""
    world = exchange.world
    coin, customer = world.coin, API_CUSTOMER
    user = API_KEYS[-1][0]
    small, large = API_WITHDRAWALS
    own = f"/v1/customers/{customer.id}"
    instrument = {"admin": coin.admin, "id": coin.id}

    def on_the_books() -> Decimal:
        balances = customer_balances(exchange.database.uow)
        return balances.get(customer_account_name(customer.id), {}).get(coin.key(), ZERO)

    def withdraw(planned_key: str, amount: Decimal) -> httpx.Response:
        return client.send(
            user,
            "POST",
            f"{own}/withdrawals",
            body={
                "receiver": world.party_of[customer.id],
                "instrument": instrument,
                "amount": str(amount),
            },
            idempotency_key=planned_key,
        )

    # The customer's front end: balance and where to deposit.
    before = on_the_books()
    answer = client.send(user, "GET", f"{own}/balances")
    shown = cc_balance(answer.json(), coin) if answer.status_code == 200 else None
    ok = client.note(
        f"CC {money(shown) if shown is not None else '?'} (the books: {money(before)})",
        shown == before,
    )
    answer = client.send(user, "GET", f"{own}/deposit-instructions")
    found = [
        item
        for item in (answer.json() if answer.status_code == 200 else [])
        if item["instrument"] == instrument
    ]
    ok &= client.note(
        f"send CC to {short(found[0]['treasury'])}, reason {found[0]['deposit_account']}"
        if found
        else "no instructions for CC",
        bool(found)
        and found[0]["treasury"] == world.treasury
        and found[0]["deposit_account"] == customer.account,
    )

    # A withdrawal, and the same request again (a retry after a timeout): one withdrawal.
    first = withdraw(small.key, small.amount)
    created = first.json() if first.status_code == 201 else {}
    ok &= client.note(
        f"{shorten(created.get('id', '?'))}: {money(small.amount)} CC, {created.get('status')}",
        first.status_code == 201 and created.get("id") == small.id,
    )
    again = withdraw(small.key, small.amount)
    replayed = again.headers.get("idempotent-replayed") == "true"
    ok &= client.note(
        f"the same {shorten(again.json().get('id', '?'))}"
        + (" (Idempotent-Replayed)" if replayed else ""),
        again.status_code == 200 and replayed and again.json().get("id") == small.id,
    )

    # A large withdrawal: a proposal two distinct staff members approve.
    proposed = withdraw(large.key, large.amount)
    approval = proposed.json() if proposed.status_code == 202 else {}
    approval_id = str(approval.get("id", "?"))
    ok &= client.note(
        f"{money(large.amount)} CC: proposal {shorten(approval_id)}, "
        f"{approval.get('approvals')} of {approval.get('required')} approvals",
        proposed.status_code == 202
        and approval.get("status") == "pending"
        and approval.get("approvals") == 0
        and approval.get("required") == 2,
    )
    for who, count, status in (("operator", 1, "pending"), ("system admin", 2, "executed")):
        vote = client.send(
            who,
            "POST",
            f"/v1/approvals/{approval_id}/approve",
            shown=f"/v1/approvals/{shorten(approval_id)}/approve",
            body={"comment": f"{who}: called the customer back"},
        )
        done = vote.json() if vote.status_code == 200 else {}
        result = done.get("result") or {}
        executed = f", {shorten(str(result.get('withdrawal_id')))} created"
        ok &= client.note(
            f"{done.get('approvals')} of {done.get('required')} approvals: {done.get('status')}"
            + (executed if done.get("status") == "executed" else ""),
            vote.status_code == 200
            and done.get("approvals") == count
            and done.get("status") == status
            and (status == "pending" or result.get("withdrawal_id") == large.id),
        )

    # The emergency pause: value stops moving, reads go on.
    paused = client.send(
        "compliance officer",
        "POST",
        "/v1/system/pause",
        body={"mode": "paused", "reason": PAUSE_REASON},
    )
    pause_correlation = paused.headers.get("x-correlation-id", "")
    ok &= client.note(
        f"paused ({paused.json().get('reason')}); X-Correlation-ID {pause_correlation[:8]}…",
        paused.status_code == 200 and paused.json().get("mode") == "paused",
    )
    refused = withdraw(API_REFUSED_KEY, small.amount)
    ok &= client.note(
        f"{refusal(refused)}: nothing created",
        refused.status_code == 503 and error_code(refused) == 50,
    )
    reserved = small.amount + large.amount
    answer = client.send(user, "GET", f"{own}/balances")
    shown = cc_balance(answer.json(), coin) if answer.status_code == 200 else None
    ok &= client.note(
        f"reads go on: CC {money(shown) if shown is not None else '?'} "
        f"({money(reserved)} reserved)",
        shown == before - reserved,
    )
    resumed = client.send(
        "system admin", "POST", "/v1/system/resume", body={"reason": "drill over"}
    )
    ok &= client.note(
        "running again",
        resumed.status_code == 200 and resumed.json().get("running") is True,
    )

    # Access control: no credentials, and another customer's data.
    anonymous = client.send(ANONYMOUS, "GET", f"{own}/balances")
    ok &= client.note(
        f"{refusal(anonymous)}: no credentials",
        anonymous.status_code == 401 and error_code(anonymous) == 1,
    )
    other = client.send(user, "GET", f"/v1/customers/{API_OTHER.id}/balances")
    ok &= client.note(
        f"{refusal(other)}: not this key's customer",
        other.status_code == 404 and error_code(other) == 10,
    )

    # The audit trail: the pause, with the correlation id of the request that made it.
    audit = client.send("super admin", "GET", "/v1/audit?limit=50")
    records = audit.json() if audit.status_code == 200 else []
    pause_record = next(
        (r for r in reversed(records) if r.get("operation") == "system_paused"), None
    )
    ok &= client.note(
        f"system_paused by {pause_record['actor'].split(':', 1)[0]}, correlation id "
        f"{str(pause_record['correlation_id'])[:8]}…"
        if pause_record
        else "no system_paused record",
        pause_record is not None
        and bool(pause_correlation)
        and pause_record["correlation_id"] == pause_correlation,
    )
    return ok


def settle_over_the_api(exchange: Exchange, client: ApiClient) -> bool:
    """The demo's withdrawal worker pays what was asked for over HTTP (1-step CC, the customer's
    wallet pre-approves it); the operator sees both completed and the books still balance."""
    client.story.paid_after = len(client.story.calls)
    client.story.rounds = exchange.drive(exchange.withdrawal_worker())
    exchange.ledger.checkpoint()  # so the cursor ends at the ledger end
    exchange.ingest()
    ok = True
    for planned in API_WITHDRAWALS:
        answer = client.send(
            "operator",
            "GET",
            f"/v1/withdrawals/{planned.id}",
            shown=f"/v1/withdrawals/{shorten(planned.id)}",
        )
        status = answer.json().get("status") if answer.status_code == 200 else None
        ok &= client.note(
            f"{status}: {money(planned.amount)} CC paid by the worker",
            status == "completed",
        )
    books = client.send("super admin", "GET", "/v1/books/check")
    holds = books.status_code == 200 and books.json().get("holds") is True
    ok &= client.note("the books balance" if holds else "the books do NOT balance", holds)
    return ok


def use_the_api(exchange: Exchange) -> ApiStory:
    """Serve the real application on the demo's Integration DB and drive it like an exchange's
    systems and staff would; then pay the withdrawals it took."""
    story = ApiStory()
    keys = create_demo_keys(exchange, story)
    app = create_app(api_context(exchange))
    with (
        log_to_file(exchange.world.data_dir / "api.log"),
        serving(app) as url,
        httpx.Client(base_url=url, timeout=API_TIMEOUT_S) as http,
    ):
        story.url = url
        client = ApiClient(http, keys, story)
        driven = drive_the_api(exchange, client)
        settled = settle_over_the_api(exchange, client)
    story.ok = driven and settled
    return story


def run(exchange: Exchange, status: Status) -> ApiStory:
    with status("the HTTP API: keys, balances, withdrawals, approvals, a pause…"):
        return use_the_api(exchange)


API_CALLS = 17  # the rows of the chapter's table


def show(console: Console, story: ApiStory, sections: Sections) -> bool:
    console.print()
    console.print(
        f"[bold]{sections.next()}. The HTTP API[/]: the application `sluice serve` runs, in "
        f"uvicorn at {story.url}, on the demo's Integration DB; withdrawals above "
        f"{money(APPROVAL_ABOVE)} reference units need 2 approvals"
    )
    console.print(
        "  API keys made with create_api_key (only a hash is stored; the keys are shown nowhere):"
    )
    console.print(
        "    " + ", ".join(f"{who} {key_id}" for who, key_id in story.key_ids), highlight=False
    )
    table = Table(title_justify="left")
    for name in ("who", "method", "path", "status", "what happened", ""):
        table.add_column(name, overflow="fold")
    for index, call in enumerate(story.calls, start=1):
        table.add_row(
            call.who,
            call.method,
            call.path,
            str(call.status),
            call.what,
            mark(call.ok),
            end_section=index == story.paid_after,
        )
    table.caption = (
        f"between the sections: the demo's withdrawal worker paid both withdrawals "
        f"({story.rounds} rounds of run_once + ingestion); the API's log: api.log"
    )
    console.print(table, highlight=False)
    return story.ok and len(story.calls) == API_CALLS and all(call.ok for call in story.calls)


CHAPTER = Chapter("the HTTP API", run, show)
