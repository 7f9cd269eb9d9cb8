"""What the exchange service needs of the Integration DB: its quotes and swaps, in the
caller's transaction."""

from __future__ import annotations

from typing import Protocol

from sluice.domain.exchange import Quote, Swap


class ExchangeRepository(Protocol):
    def add_quote(self, quote: Quote) -> None:
        """Insert a new quote (its id is new: a duplicate is a programming error)."""
        ...

    def quote(self, quote_id: str, *, lock: bool = False) -> Quote | None:
        """The quote, locked (PostgreSQL ``FOR UPDATE``) when ``lock``."""
        ...

    def swap(self, quote_id: str) -> Swap | None:
        """The swap that executed the quote, if any."""
        ...

    def add_swap(self, swap: Swap) -> None:
        """Insert the swap; its quote id is the primary key, so a second swap of one quote
        fails on the key and its transaction rolls back."""
        ...

    def swaps(self, customer_id: str | None = None, *, limit: int = 100) -> list[Swap]:
        """The newest swaps first (of one customer, or all), at most ``limit`` (≤ 1000)."""
        ...
