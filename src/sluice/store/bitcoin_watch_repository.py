"""Custody addresses, the watcher's blocks and custody outputs, over SQLAlchemy Core."""

from __future__ import annotations

from sqlalchemy import Connection


class SqlBitcoinWatchRepository:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection
