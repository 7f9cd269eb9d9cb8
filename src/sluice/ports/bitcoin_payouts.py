"""What the payouts worker needs from the database: payouts, the batches that pay them, and the
custody outputs it reserves and sees spent (``btc_*`` tables)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sluice.domain.deposits import Alert

# Payouts not yet in a batch: the worker picks them up (oldest first).
PAYOUT_WAITING_STATUSES = ("queued", "waiting_fee")
# Batches the worker still follows: not yet confirmed, and not handed to an operator.
BATCH_OPEN_STATUSES = ("signed", "broadcast", "mined")
# Batches the worker looks at each round: the open ones, and the orphaned ones (an input was
# reorged away; never sent again, but watched in case a version is mined after all, or the
# missing input comes back).
BATCH_FOLLOWED_STATUSES = (*BATCH_OPEN_STATUSES, "orphaned")
# Custody outputs a batch may spend: confirmed deposits or change, or deposits already credited.
SPENDABLE_OUTPUT_STATUSES = ("confirmed", "credited")


@dataclass(frozen=True, slots=True)
class PayoutRecord:
    id: str
    kind: str  # operator | redemption | return
    address: str
    script_hex: str
    amount_sats: int  # requested; the fee is deducted from it
    # queued | waiting_fee | batched | broadcast | mined | completed | failed | cancelled
    status: str
    requested_by: str
    requested_at: datetime
    fee_sats: int | None = None
    # The batch paying it; while it waits (queued or waiting_fee), the *released* batch whose
    # successor must pay it (None for a payout never batched).
    batch_id: str | None = None
    vout: int | None = None
    completed_at: datetime | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """A payout transaction, identified by the custody outpoints it spends. ``versions`` are
    every signed version (the first and each fee bump) as JSON objects: ``txid``, ``fee_sats``,
    ``fee_rate``, ``vsize``, ``change_sats``, ``change_vout`` and ``payouts`` (payout id →
    ``[vout, fee_sats]``)."""

    id: str
    outpoints: tuple[str, ...]
    status: str  # signed | broadcast | mined | confirmed | stuck | orphaned | released
    txid: str
    raw_hex: str
    versions: tuple[Mapping[str, Any], ...]
    fee_sats: int
    fee_rate_sat_vb: str
    vsize: int
    change_sats: int
    created_at: datetime
    updated_at: datetime
    change_vout: int | None = None
    change_address: str | None = None
    broadcast_height: int | None = None
    bumps: int = 0
    mined_height: int | None = None
    mined_block_hash: str | None = None
    last_error: str | None = None


@dataclass(frozen=True, slots=True)
class CustodyOutput:
    """A custody output as the watcher recorded it, with the derivation that signs for it."""

    txid: str
    vout: int
    amount_sats: int
    status: str
    branch: int
    index: int
    reserved_by: str | None = None

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True, slots=True)
class OutputSpend:
    """Where the watcher saw a custody output spent."""

    txid: str
    height: int
    block_hash: str


@dataclass(frozen=True, slots=True)
class PayoutAssignment:
    """A payout's place in a batch's version: its output and its share of the fee."""

    payout_id: str
    vout: int
    fee_sats: int
    status: str = "batched"
    last_error: str | None = field(default=None)


class BitcoinPayoutRepository(Protocol):
    """Payouts and batches, and the custody UTXO set they are paid from."""

    # -- payouts -----------------------------------------------------------------------------
    def get_payout(self, payout_id: str, *, lock: bool = False) -> PayoutRecord | None: ...

    def insert_payout(self, payout: PayoutRecord) -> bool:
        """False (and nothing written) when a payout with that id exists."""
        ...

    def payouts(
        self,
        statuses: Collection[str] = (),
        *,
        limit: int = 1000,
        in_batch: bool | None = None,
    ) -> list[PayoutRecord]:
        """Oldest first (requested time, then id); every status when ``statuses`` is empty.
        ``in_batch`` True: only those with a batch (waiting ones: a released batch's, for its
        successor); False: only those without; None: both."""
        ...

    def payouts_of_batch(self, batch_id: str) -> list[PayoutRecord]: ...

    def cancel_payout(self, payout_id: str, note: str) -> bool:
        """The payout becomes ``cancelled`` (with ``note``) only while it waits unbatched
        (queued or waiting_fee, and no batch: not a released batch's); False otherwise, and
        nothing changes."""
        ...

    def set_payouts_error(self, payout_ids: Collection[str], error: str | None) -> int:
        """Note ``error`` on payouts whatever their status (their status stays)."""
        ...

    def set_payouts_waiting(
        self, payout_ids: Collection[str], status: str | None, error: str | None
    ) -> int:
        """Payouts still waiting (queued or waiting_fee) take ``status`` (None: they keep
        theirs) and ``error``."""
        ...

    def assign_payouts(
        self,
        batch_id: str,
        assignments: Sequence[PayoutAssignment],
        *,
        expected_statuses: Collection[str],
        predecessor: str | None = None,
    ) -> int:
        """Each payout takes the batch, its vout, fee, status and error, only while its status
        is one of ``expected_statuses`` and it is on that batch, or, when waiting, on no batch
        (or on the released batch ``predecessor``, for its successor). Returns how many rows
        changed: fewer than asked means someone else moved one."""
        ...

    def requeue_payouts(self, batch_id: str, note: str) -> list[str]:
        """The (released) batch's payouts not yet mined or completed (batched or broadcast) go
        back to ``queued`` with ``note``, without vout or fee but *keeping the batch*: they wait
        for its successor, which spends the batch's surviving inputs. Returns their ids."""
        ...

    def reopen_payouts(self, batch_id: str, note: str) -> list[str]:
        """The batch's completed payouts go back to ``broadcast`` (no completion time), with
        ``note``: its block was reorged away after they completed. Returns their ids."""
        ...

    def complete_payouts(self, batch_id: str, at: datetime) -> list[str]:
        """The batch's payouts not yet completed become completed; returns their ids."""
        ...

    # -- batches -----------------------------------------------------------------------------
    def insert_batch(self, batch: BatchRecord) -> bool:
        """False (and nothing written) when a batch with that id exists."""
        ...

    def get_batch(self, batch_id: str, *, lock: bool = False) -> BatchRecord | None:
        """With ``lock``, the row is locked until the unit of work ends (PostgreSQL), so what is
        decided from it is written before another worker reads it."""
        ...

    def batches(self, statuses: Collection[str] = (), *, limit: int = 1000) -> list[BatchRecord]:
        """Oldest first."""
        ...

    def confirmed_batches_unspent(self, since_height: int, *, limit: int = 100) -> list[str]:
        """Confirmed batches mined at ``since_height`` or above with an input the watcher no
        longer sees spent (a reorg deeper than confirmations_min cleared it): their ids."""
        ...

    def update_batch(
        self,
        batch: BatchRecord,
        *,
        expected_txid: str | None = None,
        expected_status: str | None = None,
        expected_bumps: int | None = None,
    ) -> bool:
        """Write the batch's changing columns; with ``expected_txid``, ``expected_status`` and
        ``expected_bumps`` (the version the caller read), only if it still has them (another
        worker may have moved it meanwhile)."""
        ...

    # -- the custody UTXO set ----------------------------------------------------------------
    def spendable_outputs(self, dust_limit: int, *, limit: int = 10_000) -> list[CustodyOutput]:
        """Confirmed (or credited) custody outputs not dust, unspent and unreserved."""
        ...

    def outputs(self, outpoints: Collection[str]) -> dict[str, CustodyOutput]: ...

    def reserve_outputs(self, outpoints: Collection[str], batch_id: str) -> bool:
        """Reserve all of them for the batch, or none: False when one is reserved, spent or no
        longer spendable (not confirmed or credited, e.g. reorged)."""
        ...

    def reserved_spendable(self, batch_id: str) -> list[CustodyOutput]:
        """The outputs reserved by the batch that are still spendable (confirmed or credited,
        unspent): a released batch's surviving inputs, which its successor spends."""
        ...

    def take_over_outputs(self, outpoints: Collection[str], from_batch: str, to_batch: str) -> bool:
        """The released batch ``from_batch``'s surviving inputs become reserved by its successor
        ``to_batch``: all of them, or none. False (nothing changed) when ``outpoints`` is empty,
        one of them is not a spendable, unspent output reserved by ``from_batch``, or
        ``from_batch`` has a surviving input not among them."""
        ...

    def spends(self, outpoints: Collection[str]) -> dict[str, OutputSpend]:
        """The outpoints the watcher saw spent in a block, with where."""
        ...

    def cursor_height(self) -> int | None:
        """The watcher's cursor: the highest block it processed (None before its first)."""
        ...

    # -- change addresses and alerts ---------------------------------------------------------
    def next_change_index(self) -> int:
        """One above the highest change index issued (0 for the first)."""
        ...

    def add_change_address(self, address: str, script_hex: str, index: int, at: datetime) -> bool:
        """Record a change address (branch 1, no customer); False when that index or script is
        taken."""
        ...

    def add_alert(self, alert: Alert, at: datetime) -> bool:
        """False when an alert with that id was raised already."""
        ...
