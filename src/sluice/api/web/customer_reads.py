"""What ``/me`` shows, read for the signed-in customer only: balances, deposit instructions (and the
Bitcoin deposit address when this process runs iSTSi issuance), withdrawals and the large ones
awaiting approval, redemptions, the ledger history, and the proof of reserves of the latest
snapshot. Every read takes the customer id from the session (never from the request) and goes
through the services the API's customer endpoints call, so a page shows what the API answers.
Lists are paged (``PAGE_SIZE`` rows; one row more is read to know whether a next page exists).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.api.context import ApiContext
from sluice.domain.approvals import Approval
from sluice.domain.errors import SluiceError
from sluice.domain.ledger import InstrumentId
from sluice.domain.withdrawals import Withdrawal
from sluice.por.documents import decimals_of
from sluice.ports.issuance import IssuanceOperation, sats_to_amount
from sluice.services import accounts
from sluice.services.balances import customer_balances
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_deposits import list_deposits
from sluice.services.issuance_intake import deposit_operation_id

PAGE_SIZE = 20
PAGE_MAX = 10_000
# Large withdrawals proposed for approval shown above the withdrawals (the newest ones).
APPROVALS_SHOWN = 20
LARGE_WITHDRAWAL = "withdrawal.large"
REDEMPTION = "token_withdrawal"
BTC_DEPOSITS_SHOWN = 10
# What a customer reads for a withdrawal's status; anything else is shown as it is.
WITHDRAWAL_STATUS_LABELS = {
    "queued": "queued",
    "reserved": "sending",
    "submitting": "sending",
    "submitted": "sending",
    "offered": "offered: accept it in your wallet",
    "completed": "completed",
    "failed": "failed",
}
APPROVAL_STATUS_LABELS = {
    "pending": "awaiting approval",
    "approved": "approved",
    "failed": "refused",
    "rejected": "rejected",
    "cancelled": "cancelled",
}
STATUS_CLASSES = {"completed": "ok", "failed": "bad", "rejected": "bad", "refused": "bad"}


def page_number(value: str | None) -> int:
    """A page number from the query (1 for anything that is not a number in range)."""
    if value is None or not value.isdigit() or len(value) > 6:
        return 1
    return min(max(int(value), 1), PAGE_MAX)


@dataclass(frozen=True, slots=True)
class Paged:
    """One page of a list: its rows, its number, and whether there are pages around it."""

    rows: list[dict[str, Any]]
    number: int
    has_next: bool

    @property
    def has_previous(self) -> bool:
        return self.number > 1


def _cut(rows: list[dict[str, Any]], number: int) -> Paged:
    return Paged(rows[:PAGE_SIZE], number, len(rows) > PAGE_SIZE)


def _offset(number: int) -> int:
    return (number - 1) * PAGE_SIZE


def shown(value: Decimal) -> str:
    """An amount as a person reads it: no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return "0" if text in ("-0", "") else text


def when(value: datetime | None) -> str:
    return "" if value is None else value.strftime("%Y-%m-%d %H:%M:%S UTC")


def instrument_json(instrument: InstrumentId) -> dict[str, str]:
    return {"id": instrument.id, "admin": instrument.admin, "key": instrument.key()}


def status_class(label: str) -> str:
    return STATUS_CLASSES.get(label, "")


# --- balances and deposits -------------------------------------------------------------------


def balances(context: ApiContext, customer_id: str) -> list[dict[str, Any]]:
    """Per instrument: available, held and in flight (as ``GET …/balances/detail``)."""
    istsi = context.issuance.context.issuer.instrument if context.issuance is not None else None
    return [
        {
            "instrument": instrument_json(line.instrument),
            "available": shown(line.available),
            "held": shown(line.held),
            "in_flight": shown(line.in_flight),
        }
        for line in customer_balances(context.uow, customer_id, istsi=istsi)
    ]


def deposit_instructions(context: ApiContext, customer_id: str) -> list[dict[str, Any]]:
    """As ``GET …/deposit-instructions``: the treasury party, the instrument, the deposit
    account to put as the reason (under its metadata key) and how each transfer kind lands."""
    return [
        {
            "treasury": item.treasury,
            "instrument": instrument_json(item.instrument),
            "transfer_kinds": list(item.transfer_kinds),
            "deposit_account": item.deposit_account,
            "reason_key": item.reason_key,
            "description": item.description,
        }
        for item in accounts.deposit_instructions(
            context.uow, customer_id, treasury=context.treasury
        )
    ]


def bitcoin_deposit(context: ApiContext, customer_id: str, actor: str) -> dict[str, Any]:
    """The Bitcoin deposit address for iSTSi (as ``GET …/istsi/deposit-address``), or why there
    is none: this process runs no custody, or the custody could not derive one just now."""
    issuance = context.issuance
    if issuance is None:
        return {"configured": False}
    ctx = issuance.context
    try:
        derived = deposit_address(ctx.uow, ctx.wallet, customer_id, clock=ctx.clock, actor=actor)
    except SluiceError as exc:
        return {"configured": True, "address": None, "error": str(exc), "deposits": []}
    return {
        "configured": True,
        "address": derived.address,
        "index": derived.index,
        "deposits": bitcoin_deposits(context, customer_id),
    }


def bitcoin_deposits(context: ApiContext, customer_id: str) -> list[dict[str, Any]]:
    """The customer's latest Bitcoin deposits and the minting of each (as ``GET
    …/istsi/deposits``): the watcher's confirmations, then the operation's status."""
    issuance = context.issuance
    assert issuance is not None
    views = list_deposits(issuance.context.uow, customer_id=customer_id, limit=BTC_DEPOSITS_SHOWN)
    ids = [deposit_operation_id(v.txid, v.vout) for v in views]
    with context.uow() as uow:
        operations = {i: uow.issuance.get_operation(i) for i in ids}
    rows = []
    for view, operation_id in zip(views, ids, strict=True):
        operation = operations[operation_id]
        rows.append(
            {
                "txid": view.txid,
                "vout": view.vout,
                "amount": shown(sats_to_amount(view.amount_sats)),
                "confirmations": view.confirmations,
                "status": operation.status if operation is not None else "confirming",
            }
        )
    return rows


# --- withdrawals -------------------------------------------------------------------------------


def _withdrawal_row(record: Withdrawal) -> dict[str, Any]:
    label = WITHDRAWAL_STATUS_LABELS.get(record.status, record.status)
    return {
        "id": record.id,
        "requested_at": when(record.requested_at),
        "instrument": instrument_json(record.instrument),
        "amount": shown(record.amount),
        "receiver": record.receiver,
        "status": record.status,
        "label": label,
        "class": status_class(label),
        "failure": record.failure,
    }


def _parameter_amount(value: object) -> str:
    try:
        return shown(Decimal(str(value)))
    except ArithmeticError:
        return str(value)


def _approval_row(approval: Approval) -> dict[str, Any]:
    parameters = approval.parameters
    label = APPROVAL_STATUS_LABELS.get(approval.status, approval.status)
    instrument = InstrumentId(
        str(parameters.get("instrument_admin", "")), str(parameters.get("instrument_id", ""))
    )
    return {
        "id": approval.id,
        "requested_at": when(approval.proposed_at),
        "instrument": instrument_json(instrument),
        "amount": _parameter_amount(parameters.get("amount")),
        "receiver": str(parameters.get("receiver", "")),
        "status": approval.status,
        "label": label,
        "class": status_class(label),
        "failure": approval.error,
    }


def withdrawals(context: ApiContext, customer_id: str, number: int) -> Paged:
    """The customer's withdrawals, newest first, as ``GET …/withdrawals`` lists them."""
    records = accounts.customer_withdrawals(
        context.uow, customer_id, offset=_offset(number), limit=PAGE_SIZE + 1
    )
    return _cut([_withdrawal_row(r) for r in records], number)


def proposed_withdrawals(context: ApiContext, customer_id: str) -> list[dict[str, Any]]:
    """Large withdrawals proposed for approval and not (yet) run: once approved and executed
    the withdrawal itself is listed, under the same id the request named."""
    with context.uow() as uow:
        found = uow.access.approvals(customer_id=customer_id, limit=APPROVALS_SHOWN * 5)
    waiting = [
        a
        for a in found
        if a.operation == LARGE_WITHDRAWAL
        and a.customer_id == customer_id
        and a.status != "executed"
    ]
    return [_approval_row(a) for a in waiting[:APPROVALS_SHOWN]]


def withdrawable(instructions: list[dict[str, Any]]) -> list[dict[str, str]]:
    """The instruments a withdrawal may name: the enabled ones deposits are taken in."""
    seen: dict[str, dict[str, str]] = {}
    for item in instructions:
        seen.setdefault(item["instrument"]["key"], item["instrument"])
    return list(seen.values())


# --- redemptions and history -------------------------------------------------------------------


def _redemption_row(op: IssuanceOperation) -> dict[str, Any]:
    label = "pending" if op.status in ("pending", "waiting") else op.status
    return {
        "id": op.id,
        "created_at": when(op.created_at),
        "amount_sats": op.amount_sats,
        "amount": shown(sats_to_amount(op.amount_sats)),
        "address": str(op.params.get("address", "")),
        "status": op.status,
        "label": label,
        "class": "ok" if op.status == "completed" else status_class(label),
        "step": op.step,
        "last_error": op.last_error,
    }


def redemptions(context: ApiContext, customer_id: str, number: int) -> Paged | None:
    """The customer's redemptions of iSTSi, newest first (None: no issuance here)."""
    if context.issuance is None:
        return None
    offset = _offset(number)
    with context.uow() as uow:
        found = uow.issuance.operations(
            type=REDEMPTION, customer_id=customer_id, limit=offset + PAGE_SIZE + 1
        )
    return _cut([_redemption_row(op) for op in found[offset:]], number)


def history(context: ApiContext, customer_id: str, number: int) -> Paged:
    """Deposits and the ledger transfers of withdrawals, newest first (``GET …/history``)."""
    records = accounts.customer_history(
        context.uow, customer_id, offset=_offset(number), limit=PAGE_SIZE + 1
    )
    rows = [
        {
            "record_time": when(r.record_time),
            "kind": r.kind,
            "status": r.status,
            "disposition": r.disposition,
            "instrument": instrument_json(r.instrument) if r.instrument is not None else None,
            "amount": shown(r.amount) if r.amount is not None else "",
            "sender": r.sender,
            "receiver": r.receiver,
            "update_id": r.update_id,
        }
        for r in records
    ]
    return _cut(rows, number)


# --- proof of reserves -------------------------------------------------------------------------


def _amount_of(units: int, total: str, total_units: int) -> str:
    decimals = decimals_of(total, total_units)
    if decimals is None or decimals < 0:
        return str(units)
    return shown(Decimal(units).scaleb(-decimals))


def proofs(context: ApiContext, customer_id: str) -> dict[str, Any] | None:
    """The latest snapshot and, per instrument the customer has a leaf in, their balance in it
    and the root it is included in (None: no snapshot taken yet). The proofs themselves are made
    when downloaded (``/me/por-proof.json``)."""
    with context.uow() as uow:
        snapshot = uow.reserves.latest_snapshot()
        if snapshot is None:
            return None
        roots = {root.instrument: root for root in uow.reserves.roots(snapshot.id)}
        items = []
        for key in snapshot.instruments:
            units = uow.reserves.leaf(snapshot.id, key, customer_id)
            root = roots.get(key)
            if units is None or root is None:
                continue
            items.append(
                {
                    "instrument": key,
                    "name": key.partition("@")[0],
                    "balance": _amount_of(units, root.total, root.total_units),
                    "root_hash": root.root_hash,
                    "file": proof_file_name(snapshot.id, key),
                }
            )
    return {
        "snapshot_id": snapshot.id,
        "taken_at": when(snapshot.taken_at),
        "items": items,
        "roots_file": roots_file_name(snapshot.id),
        "can_prove": context.reserves is not None,
    }


def _file_part(text: str) -> str:
    kept = "".join(c if c.isalnum() or c in "-_." else "-" for c in text)
    return kept[:80] or "x"


def proof_file_name(snapshot_id: str, instrument: str) -> str:
    return f"por-proof-{_file_part(snapshot_id)}-{_file_part(instrument.partition('@')[0])}.json"


def roots_file_name(snapshot_id: str) -> str:
    return f"por-roots-{_file_part(snapshot_id)}.json"
