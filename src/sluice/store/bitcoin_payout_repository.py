"""Payouts, their batches and the custody UTXO set they spend, over SQLAlchemy Core."""

from __future__ import annotations

from sqlalchemy import Connection


class SqlBitcoinPayoutRepository:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
