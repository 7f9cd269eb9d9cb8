"""Bitcoin custody's settings, as the services use them (``[bitcoin]`` of the configuration file,
validated in :mod:`sluice.config`, becomes one of these in :mod:`sluice.bootstrap`)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from sluice.domain.chains import CHAINS, Chain


@dataclass(frozen=True, slots=True)
class BitcoinSettings:
    chain: Chain = CHAINS["regtest"]
    # A deposit (and a payout) counts from this many confirmations on.
    confirmations_min: int = 6
    # The network fee rate is estimatesmartfee's for this target, clamped to [min, max]; a chain
    # too young to estimate (no "feerate" in the answer) gets the minimum.
    fee_target_blocks: int = 6
    fee_rate_min_sat_vb: Decimal = Decimal(2)
    fee_rate_max_sat_vb: Decimal = Decimal(200)
    # The network fee is deducted from each payout up to this; above it the payout waits.
    payout_fee_max_sats: int = 50_000
    # Queued payouts leave together: at most this many outputs, once the oldest has waited this
    # long (or as soon as the batch is full).
    payout_batch_max: int = 50
    payout_batch_window_s: float = 60.0
    # A broadcast batch still unmined after this many blocks is fee-bumped (RBF, same inputs).
    payout_bump_after_blocks: int = 3
    # Each bump multiplies the fee rate by at least this (and pays BIP 125's increment).
    payout_bump_factor: Decimal = Decimal("1.5")
    # How many blocks the watcher handles per round (bounded work per call).
    watch_blocks_max: int = 500
    # The first height the watcher reads when it has no cursor (a new custody need not read
    # the whole chain).
    watch_start_height: int = 0
