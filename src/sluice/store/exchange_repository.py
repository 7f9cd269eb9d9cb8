"""The exchange's tables (``exchange_quotes``, ``exchange_swaps``) on SQLAlchemy Core, in the
caller's transaction. Rates and impacts go in and out as exact decimal text."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, insert, select

from sluice.domain.exchange import FEE_KINDS, FeeKind, Quote, Swap
from sluice.domain.ledger import InstrumentId
from sluice.store.exchange_tables import exchange_quotes as quotes_t
from sluice.store.exchange_tables import exchange_swaps as swaps_t
from sluice.store.rows import check_page, time_of, ts


def _fee_kind(text: str) -> FeeKind:
    for kind in FEE_KINDS:
        if kind == text:
            return kind
    raise AssertionError(f"an exchange table holds an unknown fee kind {text!r}")


def _priced(row: Any) -> dict[str, Any]:
    return {
        "customer_id": row.customer_id,
        "sell": InstrumentId(row.sell_admin, row.sell_id),
        "buy": InstrumentId(row.buy_admin, row.buy_id),
        "sell_amount": Decimal(row.sell_amount),
        "rate": Decimal(row.rate),
        "price_impact": Decimal(row.price_impact),
        "fee_rate": Decimal(row.fee_rate),
        "fee_kind": _fee_kind(row.fee_kind),
        "fee_amount": Decimal(row.fee_amount),
        "gross": Decimal(row.gross),
        "received": Decimal(row.received),
        "minimum_received": Decimal(row.minimum_received),
        "oracle_source": row.oracle_source,
        "oracle_health": row.oracle_health,
        "oracle_round": int(row.oracle_round) if row.oracle_round is not None else None,
    }


def _priced_values(item: Quote | Swap) -> dict[str, Any]:
    return {
        "customer_id": item.customer_id,
        "sell_admin": item.sell.admin,
        "sell_id": item.sell.id,
        "buy_admin": item.buy.admin,
        "buy_id": item.buy.id,
        "sell_amount": item.sell_amount,
        "rate": str(item.rate),
        "price_impact": str(item.price_impact),
        "fee_rate": str(item.fee_rate),
        "fee_kind": item.fee_kind,
        "fee_amount": item.fee_amount,
        "gross": item.gross,
        "received": item.received,
        "minimum_received": item.minimum_received,
        "oracle_source": item.oracle_source,
        "oracle_health": item.oracle_health,
        "oracle_round": str(item.oracle_round) if item.oracle_round is not None else None,
    }


def _quote(row: Any) -> Quote:
    return Quote(
        id=row.id,
        oracle_pair=row.oracle_pair,
        observed_at=time_of(row.observed_at),
        created_at=time_of(row.created_at),
        expires_at=time_of(row.expires_at),
        **_priced(row),
    )


def _swap(row: Any) -> Swap:
    return Swap(
        quote_id=row.quote_id,
        journal_transaction_id=row.journal_transaction_id,
        warnings=tuple(json.loads(row.warnings)),
        actor=row.actor,
        executed_at=time_of(row.executed_at),
        **_priced(row),
    )


class SqlExchangeRepository:
    """:class:`~sluice.ports.exchange.ExchangeRepository` on the unit of work's connection."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def add_quote(self, quote: Quote) -> None:
        self._connection.execute(
            insert(quotes_t).values(
                id=quote.id,
                oracle_pair=quote.oracle_pair,
                observed_at=ts(quote.observed_at),
                created_at=ts(quote.created_at),
                expires_at=ts(quote.expires_at),
                **_priced_values(quote),
            )
        )

    def quote(self, quote_id: str, *, lock: bool = False) -> Quote | None:
        statement = select(quotes_t).where(quotes_t.c.id == quote_id)
        if lock:
            statement = statement.with_for_update()
        row = self._connection.execute(statement).first()
        return _quote(row) if row is not None else None

    def swap(self, quote_id: str) -> Swap | None:
        row = self._connection.execute(
            select(swaps_t).where(swaps_t.c.quote_id == quote_id)
        ).first()
        return _swap(row) if row is not None else None

    def add_swap(self, swap: Swap) -> None:
        self._connection.execute(
            insert(swaps_t).values(
                quote_id=swap.quote_id,
                journal_transaction_id=swap.journal_transaction_id,
                warnings=json.dumps(list(swap.warnings)),
                actor=swap.actor,
                executed_at=ts(swap.executed_at),
                **_priced_values(swap),
            )
        )

    def swaps(self, customer_id: str | None = None, *, limit: int = 100) -> list[Swap]:
        check_page(0, limit)
        statement = select(swaps_t)
        if customer_id is not None:
            statement = statement.where(swaps_t.c.customer_id == customer_id)
        statement = statement.order_by(swaps_t.c.executed_at.desc(), swaps_t.c.quote_id.desc())
        return [_swap(row) for row in self._connection.execute(statement.limit(limit)).all()]
