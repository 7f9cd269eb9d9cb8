"""What the deposit watcher and the address book need from the database: custody addresses, the
watcher's blocks (its cursor) and the custody outputs it records (``btc_*`` tables)."""

from __future__ import annotations

from typing import Protocol


class BitcoinWatchRepository(Protocol):
    """Custody addresses, the watcher's block chain and the outputs it found."""
