"""The one place that wires adapters to services from configuration.

Nothing here runs at import time; entry points call these functions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from sluice.ports import UnitOfWork
from sluice.store.database import open_database
from sluice.store.unit_of_work import SqlUnitOfWork


@dataclass(frozen=True, slots=True)
class Database:
    engine: Engine

    def uow(self) -> UnitOfWork:
        return SqlUnitOfWork(self.engine)

    @property
    def uow_factory(self) -> Callable[[], UnitOfWork]:
        return self.uow

    def dispose(self) -> None:
        self.engine.dispose()


def database(url: str) -> Database:
    """Open (and migrate) the Integration DB at ``url``."""
    return Database(open_database(url))
