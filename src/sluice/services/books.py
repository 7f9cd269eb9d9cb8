"""Reading the books: the treasury view, balances, and the invariant that they are fully backed."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.journal import check_books
from sluice.domain.ledger import InstrumentId, format_timestamp
from sluice.ports import UnitOfWorkFactory


@dataclass(frozen=True, slots=True)
class BooksCheck:
    problems: list[str]

    @property
    def holds(self) -> bool:
        return not self.problems


def check_invariant(uow_factory: UnitOfWorkFactory) -> BooksCheck:
    """Σ customers + suspense + in-flight + fees = treasury holdings, per instrument; and every
    cached balance equals the sum of its postings."""
    with uow_factory() as uow:
        cached = uow.books.balances()
        posted = uow.books.balances_from_postings()
        held: dict[InstrumentId, Decimal] = {}
        for holding in uow.books.active_holdings():
            held[holding.instrument] = held.get(holding.instrument, ZERO) + holding.amount
    problems = check_books(cached, held)
    for account in sorted(set(cached) | set(posted)):
        if cached.get(account, ZERO) != posted.get(account, ZERO):
            problems.append(
                f"{account.id}: cached balance {cached.get(account, ZERO)} ≠ postings "
                f"{posted.get(account, ZERO)}"
            )
    return BooksCheck(problems)


def treasury_view(uow_factory: UnitOfWorkFactory, party: str, connection: str) -> dict[str, Any]:
    """The treasury as ingested: cursor, active holdings, pending instructions, history."""
    with uow_factory() as uow:
        cursor = uow.ingestion.load_cursor(connection)
        holdings = uow.books.active_holdings(owner=party)
        pending = uow.books.pending_instructions()
        history = uow.books.history(connection)
    return {
        "party": party,
        "cursor": cursor.as_json() if cursor else None,
        "holdings": [
            {
                "contract_id": h.contract_id,
                "owner": h.owner,
                "instrument": h.instrument.as_json(),
                "amount": format_amount(h.amount),
                "lock": (
                    {
                        "holders": list(h.lock.holders),
                        "expires_at": (
                            format_timestamp(h.lock.expires_at) if h.lock.expires_at else None
                        ),
                        "context": h.lock.context,
                    }
                    if h.lock
                    else None
                ),
            }
            for h in holdings
        ],
        "pending_instructions": [
            {
                "contract_id": i.contract_id,
                "correlation_id": i.correlation_id,
                "direction": direction,
                "sender": i.transfer.sender,
                "receiver": i.transfer.receiver,
                "instrument": i.transfer.instrument.as_json(),
                "amount": format_amount(i.transfer.amount),
                "reason": i.transfer.reason,
                "status": status,
            }
            for i, direction, status in pending
        ],
        "history": [
            {
                "update_id": r.update_id,
                "offset": r.offset,
                "record_time": format_timestamp(r.record_time),
                "node_id": r.node_id,
                "kind": r.kind,
                "status": r.status,
                "sender": r.sender,
                "receiver": r.receiver,
                "instrument": r.instrument.as_json() if r.instrument else None,
                "amount": format_amount(r.amount) if r.amount is not None else None,
                "reason": r.reason,
                "correlation_id": r.correlation_id,
                "holdings_created": list(r.holdings_created),
                "holdings_archived": list(r.holdings_archived),
            }
            for r in history
        ],
    }


def customer_balances(uow_factory: UnitOfWorkFactory) -> dict[str, dict[str, Decimal]]:
    """Per account name (customer:…, suspense, fees, treasury:…) and instrument key: balance."""
    with uow_factory() as uow:
        balances = uow.books.balances()
    result: dict[str, dict[str, Decimal]] = {}
    for account, balance in sorted(balances.items()):
        result.setdefault(account.name, {})[account.instrument.key()] = balance
    return result
