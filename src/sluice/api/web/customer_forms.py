"""The customer's forms on ``/me``: a withdrawal request and a redemption of iSTSi for Bitcoin.

Why a form posted twice pays once: each rendering of a form carries a fresh random idempotency
key in a hidden field, and the request goes through the very endpoint functions the API serves
(``POST /v1/customers/{id}/withdrawals`` and ``…/redemptions``) with that key. A withdrawal's id
is derived from the customer and the key, so the same form again is answered with the first
withdrawal (or, for a large one, with the same proposal awaiting approval); a redemption's id is
too, and the same key again is refused with the first redemption, which the page reads as "already
sent". The customer is always the session's, never one named by the form. The body is checked by
the API's own request models, so a form takes exactly what the API takes.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Mapping

from pydantic import ValidationError

from sluice.api.context import ApiContext
from sluice.api.issuance_schemas import RedemptionIn
from sluice.api.routes.customers import create_withdrawal
from sluice.api.routes.issuance import create_redemption
from sluice.api.schemas import WithdrawalIn
from sluice.api.security import Caller
from sluice.domain.access import Principal, requires
from sluice.domain.errors import DuplicateOperationError
from sluice.domain.ledger import InstrumentId

# The permission the API's customer endpoints admit a user under (their own customer only).
OWN_ONLY = requires("user_operations", own=True)
KEY_RE = re.compile(r"^[A-Za-z0-9._:-]{1,200}$")
# The form fields' names as the page labels them, for error messages.
LABELS = {
    "amount": "Amount",
    "receiver": "Receiver",
    "instrument": "Instrument",
    "amount_sats": "Satoshis to redeem",
    "address": "Bitcoin address",
}
# What the page says after a request (``/me?notice=…``); nothing else is ever shown from a query.
NOTICES = {
    "withdrawal-requested": "Withdrawal requested: it is sent once the exchange's workers run.",
    "withdrawal-replayed": "That form was already sent: the withdrawal was requested once.",
    "withdrawal-awaiting-approval": (
        "This withdrawal is above the amount that needs the exchange's approval: it is awaiting "
        "approval and is sent once approved."
    ),
    "redemption-requested": "Redemption requested: the Bitcoin is paid once the iSTSi is burnt.",
    "redemption-replayed": "That form was already sent: the redemption was requested once.",
}
WITHDRAWAL_NOTICES = {
    201: "withdrawal-requested",
    200: "withdrawal-replayed",
    202: "withdrawal-awaiting-approval",
}


class FormError(Exception):
    """What a form could not take, said for the person who filled it in (answered 422)."""


def new_idempotency_key() -> str:
    """A fresh key for one rendering of a form (URL-safe: it matches the API's pattern)."""
    return "web-" + secrets.token_urlsafe(18)


def check_key(key: str) -> str:
    if not KEY_RE.match(key):
        raise FormError("The form is incomplete: reload the page and fill it in again.")
    return key


def _form_error(exc: ValidationError) -> FormError:
    first = exc.errors()[0]
    field = next((str(part) for part in first["loc"] if str(part) in LABELS), None)
    label = LABELS.get(field or "", "The form")
    return FormError(f"{label}: {first['msg']}")


def _caller(principal: Principal) -> Caller:
    return Caller(principal=principal, permission=OWN_ONLY)


def request_withdrawal(
    context: ApiContext,
    principal: Principal,
    customer_id: str,
    *,
    instruments: Mapping[str, InstrumentId],
    instrument: str,
    amount: str,
    receiver: str,
    idempotency_key: str,
) -> str:
    """Request a withdrawal as ``POST /v1/customers/{id}/withdrawals`` does; the notice to show
    (requested, the same form again, or a large one awaiting approval)."""
    chosen = instruments.get(instrument)
    if chosen is None:
        raise FormError("Instrument: choose one of the list.")
    try:
        body = WithdrawalIn.model_validate(
            {
                "receiver": receiver.strip(),
                "instrument": {"admin": chosen.admin, "id": chosen.id},
                "amount": amount.strip(),
            }
        )
    except ValidationError as exc:
        raise _form_error(exc) from exc
    answer = create_withdrawal(
        customer_id=customer_id,
        body=body,
        idempotency_key=check_key(idempotency_key),
        context=context,
        caller=_caller(principal),
    )
    return WITHDRAWAL_NOTICES[answer.status_code]


def request_redemption(
    context: ApiContext,
    principal: Principal,
    customer_id: str,
    *,
    amount_sats: str,
    address: str,
    idempotency_key: str,
) -> str:
    """Redeem iSTSi as ``POST /v1/customers/{id}/redemptions`` does; the notice to show."""
    sats = amount_sats.strip()
    # The API's model takes a JSON number only; a form's digits are that number.
    whole: int | str = int(sats) if sats.isascii() and sats.isdigit() and len(sats) < 20 else sats
    try:
        body = RedemptionIn.model_validate({"amount_sats": whole, "address": address.strip()})
    except ValidationError as exc:
        raise _form_error(exc) from exc
    try:
        create_redemption(
            customer_id=customer_id,
            body=body,
            idempotency_key=check_key(idempotency_key),
            context=context,
            caller=_caller(principal),
        )
    except DuplicateOperationError as exc:
        if exc.first_operation is None:
            raise
        return "redemption-replayed"
    return "redemption-requested"
