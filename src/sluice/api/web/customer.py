"""``/me``: the customer's page (``docs/web.md``).

One page with the customer's balances, how to deposit (the treasury party and the deposit account
to put as the reason; the Bitcoin deposit address when this process runs iSTSi issuance), a
withdrawal form and the withdrawals' status, redemptions of iSTSi, the ledger history (paged with
``?page=``) and the customer's own proof of reserves, downloadable as the files ``sluice por
verify`` reads. Only a ``user`` session reaches it (:func:`customer_page`), and every read and
request is of the session's customer: no customer id is ever taken from the URL or a form.

Forms post to ``/me/withdrawals`` and ``/me/redemptions``; the CSRF token is checked before
anything else. A request that went through is answered 303 back to ``/me`` with a notice (so a
reload does not post again); one that was refused shows the page again with the reason.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Form, Query
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from sluice.api.errors import status_of
from sluice.api.routes.por import ReservesNotConfiguredError
from sluice.api.web import customer_forms, customer_reads
from sluice.api.web.customer_forms import NOTICES, FormError
from sluice.api.web.pages import SECURITY_HEADERS, Page, PageForbiddenError, customer_page
from sluice.domain.errors import SluiceError
from sluice.domain.ledger import InstrumentId
from sluice.services.por_secret import load_secret
from sluice.services.por_snapshots import inclusion_proof, published_roots

router = APIRouter(include_in_schema=False)

CustomerPage = Annotated[Page, Depends(customer_page)]
# Anything that is not a page number reads as page 1 (a page never answers 422 for a bad link).
PageQuery = Annotated[str | None, Query()]
# The list pages a link may change; the others stay as they are.
PAGE_PARAMETERS = ("page", "withdrawals_page", "redemptions_page")
SnapshotQuery = Annotated[str | None, Query(max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")]
# How often an open page refreshes its balances and statuses (while scripts are on).
LIVE_EVERY_S = 15


def own_customer(page: Page) -> str:
    """The session's customer (a ``user`` session always has one)."""
    customer_id = page.principal.customer_id
    if customer_id is None:
        raise PageForbiddenError("this session has no customer")
    return customer_id


def _live(page: Page, numbers: dict[str, int]) -> dict[str, Any]:
    """What a live refresh reads and how it asks again: the page's own lists, at their pages."""
    customer_id = own_customer(page)
    context = page.context
    redemptions = customer_reads.redemptions(context, customer_id, numbers["redemptions_page"])
    query = {key: value for key, value in numbers.items() if value > 1}
    return {
        "balances": customer_reads.balances(context, customer_id),
        "approvals": customer_reads.proposed_withdrawals(context, customer_id)
        if numbers["withdrawals_page"] == 1
        else [],
        "withdrawals": customer_reads.withdrawals(
            context, customer_id, numbers["withdrawals_page"]
        ),
        "redemptions": redemptions,
        "page_link": _page_links(numbers),
        "live_url": f"/me?{urlencode(query)}" if query else "/me",
        "live_every_s": LIVE_EVERY_S,
        "live_parts": "#withdrawals-live"
        + (",#redemptions-live" if redemptions is not None else ""),
    }


def _page_links(numbers: dict[str, int]) -> Callable[[str, int, str], str]:
    def link(name: str, number: int, anchor: str) -> str:
        query = {key: value for key, value in numbers.items() if value > 1 and key != name}
        if number > 1:
            query[name] = number
        return f"/me?{urlencode(query)}#{anchor}" if query else f"/me#{anchor}"

    return link


def _instruments(context: Any) -> dict[str, InstrumentId]:
    with context.uow() as uow:
        return {r.instrument.key(): r.instrument for r in uow.reference.instruments() if r.enabled}


def _me(
    page: Page,
    *,
    status: int = 200,
    numbers: dict[str, int] | None = None,
    notice: str | None = None,
    withdraw_error: str | None = None,
    withdraw_form: dict[str, str] | None = None,
    redeem_error: str | None = None,
    redeem_form: dict[str, str] | None = None,
) -> HTMLResponse:
    customer_id = own_customer(page)
    context = page.context
    numbers = numbers or dict.fromkeys(PAGE_PARAMETERS, 1)
    try:
        instructions = customer_reads.deposit_instructions(context, customer_id)
        values: dict[str, Any] = {
            **_live(page, numbers),
            "customer_id": customer_id,
            "instructions": instructions,
            "bitcoin": customer_reads.bitcoin_deposit(context, customer_id, page.principal.actor),
            "withdraw_instruments": customer_reads.withdrawable(instructions),
            "history": customer_reads.history(context, customer_id, numbers["page"]),
            "proof": customer_reads.proofs(context, customer_id),
        }
    except SluiceError as exc:
        return page.render("customer/error.html", status_of(exc), reason=str(exc))
    return page.render(
        "me.html",
        status,
        **values,
        notice=NOTICES.get(notice or ""),
        withdraw_key=customer_forms.new_idempotency_key(),
        withdraw_error=withdraw_error,
        withdraw_form=withdraw_form or {},
        redeem_key=customer_forms.new_idempotency_key(),
        redeem_error=redeem_error,
        redeem_form=redeem_form or {},
    )


@router.get("/me")
def me(
    page: CustomerPage,
    notice: Annotated[str | None, Query()] = None,
    history_page: Annotated[str | None, Query(alias="page")] = None,
    withdrawals_page: PageQuery = None,
    redemptions_page: PageQuery = None,
) -> Response:
    numbers = {
        "page": customer_reads.page_number(history_page),
        "withdrawals_page": customer_reads.page_number(withdrawals_page),
        "redemptions_page": customer_reads.page_number(redemptions_page),
    }
    if page.request.headers.get("hx-request") == "true":
        try:
            return page.render("customer/live.html", **_live(page, numbers))
        except SluiceError:
            # Nothing to swap: the page keeps what it shows until the next refresh or a reload.
            return Response(status_code=204, headers=SECURITY_HEADERS)
    return _me(page, numbers=numbers, notice=notice)


@router.post("/me/withdrawals")
def withdraw(
    page: CustomerPage,
    csrf_token: Annotated[str, Form()] = "",
    idempotency_key: Annotated[str, Form()] = "",
    instrument: Annotated[str, Form()] = "",
    amount: Annotated[str, Form()] = "",
    receiver: Annotated[str, Form()] = "",
) -> Response:
    page.check_csrf(csrf_token)
    customer_id = own_customer(page)
    try:
        notice = customer_forms.request_withdrawal(
            page.context,
            page.principal,
            customer_id,
            instruments=_instruments(page.context),
            instrument=instrument,
            amount=amount,
            receiver=receiver,
            idempotency_key=idempotency_key,
        )
    except (FormError, SluiceError) as exc:
        status = 422 if isinstance(exc, FormError) else status_of(exc)
        form = {"instrument": instrument, "amount": amount, "receiver": receiver}
        return _me(page, status=status, withdraw_error=str(exc), withdraw_form=form)
    return RedirectResponse(f"/me?notice={notice}#withdrawals", 303)


@router.post("/me/redemptions")
def redeem(
    page: CustomerPage,
    csrf_token: Annotated[str, Form()] = "",
    idempotency_key: Annotated[str, Form()] = "",
    amount_sats: Annotated[str, Form()] = "",
    address: Annotated[str, Form()] = "",
) -> Response:
    page.check_csrf(csrf_token)
    customer_id = own_customer(page)
    try:
        notice = customer_forms.request_redemption(
            page.context,
            page.principal,
            customer_id,
            amount_sats=amount_sats,
            address=address,
            idempotency_key=idempotency_key,
        )
    except (FormError, SluiceError) as exc:
        status = 422 if isinstance(exc, FormError) else status_of(exc)
        form = {"amount_sats": amount_sats, "address": address}
        return _me(page, status=status, redeem_error=str(exc), redeem_form=form)
    return RedirectResponse(f"/me?notice={notice}#redemptions", 303)


def _download(document: object, file_name: str) -> Response:
    headers = {
        **SECURITY_HEADERS,
        "Content-Disposition": f'attachment; filename="{file_name}"',
    }
    body = json.dumps(document, indent=2) + "\n"
    return Response(body, 200, headers=headers, media_type="application/json")


@router.get("/me/por-proof.json")
def proof_download(
    page: CustomerPage,
    instrument: Annotated[str, Query(min_length=1, max_length=300)],
    snapshot: SnapshotQuery = None,
) -> Response:
    """The customer's inclusion proof in a snapshot (the latest by default), as ``GET
    /v1/customers/{id}/por/proof`` answers it: the file ``sluice por verify`` reads."""
    customer_id = own_customer(page)
    context = page.context

    def secret() -> bytes:
        if context.reserves is None:
            raise ReservesNotConfiguredError(
                "the proof of reserves is not configured in this process: no proofs can be made"
            )
        return load_secret(context.reserves.secret_path)

    try:
        document = inclusion_proof(context.uow, secret, customer_id, instrument, snapshot)
    except SluiceError as exc:
        return page.render("customer/error.html", status_of(exc), reason=str(exc))
    name = customer_reads.proof_file_name(document["snapshot_id"], document["instrument"])
    return _download(document, name)


@router.get("/me/por-roots.json")
def roots_download(page: CustomerPage, snapshot: SnapshotQuery = None) -> Response:
    """A snapshot's published roots (public, as ``GET /v1/por/roots``), as a file for
    ``sluice por verify --root``."""
    try:
        roots = published_roots(page.context.uow, snapshot)
    except SluiceError as exc:
        return page.render("customer/error.html", status_of(exc), reason=str(exc))
    snapshot_id = roots[0]["snapshot_id"] if roots else (snapshot or "latest")
    return _download(roots, customer_reads.roots_file_name(snapshot_id))
