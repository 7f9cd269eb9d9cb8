"""Circuit breakers' forced states and the alerts they raise, in the caller's transaction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from sluice.domain.breaker import ForcedState
from sluice.domain.deposits import Alert


@dataclass(frozen=True, slots=True)
class ForcedBreaker:
    """An operator's forced state of one flow's breaker (a row of ``circuit_breakers``);
    ``forced`` None: given back to the automatic state."""

    name: str
    forced: ForcedState | None
    actor: str
    reason: str | None
    updated_at: datetime


class BreakersRepository(Protocol):
    """The ``circuit_breakers`` table, and the alert a breaker raises when it opens."""

    def forced(self) -> list[ForcedBreaker]:
        """Every stored row, by name."""
        ...

    def set_forced(self, row: ForcedBreaker) -> None:
        """Insert or replace the flow's row."""
        ...

    def add_alert(self, alert: Alert, at: datetime) -> bool:
        """Raise ``alert`` once: False when one with its id was raised before."""
        ...
