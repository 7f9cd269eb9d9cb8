"""What the payouts worker needs from the database: payouts, the batches that pay them, and the
custody outputs it reserves and sees spent (``btc_*`` tables)."""

from __future__ import annotations

from typing import Protocol


class BitcoinPayoutRepository(Protocol):
    """Payouts and batches, and the custody UTXO set they are paid from."""
