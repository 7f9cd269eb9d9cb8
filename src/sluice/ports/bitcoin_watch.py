"""What the deposit watcher and the address book need from the database: custody addresses, the
watcher's blocks (its cursor) and the custody outputs it records (``btc_*`` tables).

The watcher's cursor is the highest row of ``btc_blocks``; what a block produced (its outputs to
custody scripts, the spends of custody outputs in it, confirmations reached at it) is written in
the same transaction as its row, so a crash loses a whole block or nothing. Confirmations are
counted from that cursor (``cursor_height - block_height + 1``), never from the node's tip, so
every count is consistent with what was processed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from sluice.domain.deposits import Alert

OutputKind = Literal["deposit", "change"]
# seen: in a block, fewer than confirmations_min; confirmed: at confirmations_min; credited: the
# mint booked it (from confirmed only); dust: under the chain's dust limit, never credited;
# reorged: its block left the active chain (it is the same row if it comes back).
OutputStatus = Literal["seen", "confirmed", "reorged", "dust", "credited"]
DEPOSIT_BRANCH = 0
CHANGE_BRANCH = 1


@dataclass(frozen=True, slots=True)
class CustodyAddress:
    """An issued custody address: branch 0 belongs to a customer (deposits), branch 1 is change."""

    address: str
    script_hex: str
    branch: int
    index: int
    customer_id: str | None
    created_at: datetime
    funded_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class WatchedBlock:
    """A block as the watcher applied it (a ``btc_blocks`` row)."""

    height: int
    hash: str
    previous_hash: str | None
    outputs: int = 0


@dataclass(frozen=True, slots=True)
class FoundOutput:
    """An output to a custody script, found in a block (``status`` is ``seen`` or ``dust``)."""

    txid: str
    vout: int
    kind: OutputKind
    address: str
    script_hex: str
    customer_id: str | None
    amount_sats: int
    status: OutputStatus
    input_outpoints: tuple[str, ...] = ()

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True, slots=True)
class FoundSpend:
    """An input of a block's transaction that spends the custody output ``txid:vout``."""

    txid: str
    vout: int
    spent_txid: str


@dataclass(frozen=True, slots=True)
class CustodyOutput:
    """A recorded custody output (a ``btc_outputs`` row)."""

    txid: str
    vout: int
    kind: OutputKind
    address: str
    script_hex: str
    customer_id: str | None
    amount_sats: int
    status: OutputStatus
    block_height: int | None
    block_hash: str | None
    input_outpoints: tuple[str, ...]
    first_seen_at: datetime
    confirmed_at: datetime | None = None
    credited_at: datetime | None = None
    reserved_by: str | None = None
    spent_txid: str | None = None
    spent_height: int | None = None
    spent_block_hash: str | None = None

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True, slots=True)
class ConfirmedOutput:
    """An output that just reached ``confirmations_min`` (``status``: ``confirmed``, or
    ``credited`` for one credited before a reorg took it away and brought it back)."""

    txid: str
    vout: int
    kind: OutputKind
    customer_id: str | None
    amount_sats: int
    status: OutputStatus
    block_height: int
    block_hash: str

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True, slots=True)
class RolledBack:
    """What rolling back to a fork point undid."""

    fork_height: int
    blocks: list[WatchedBlock]  # the rows deleted, highest first
    reorged: list[CustodyOutput]  # the outputs now reorged, as they were before
    spends_cleared: int = 0


# --- reads for the CLI and the API ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DepositView:
    txid: str
    vout: int
    customer: str | None
    address: str
    amount_sats: int
    confirmations: int  # from the watcher's cursor; 0 when not in a block (reorged)
    status: OutputStatus
    block_height: int | None
    block_hash: str | None


@dataclass(frozen=True, slots=True)
class UtxoView:
    txid: str
    vout: int
    kind: OutputKind
    customer: str | None
    address: str
    amount_sats: int
    confirmations: int
    status: OutputStatus
    block_height: int | None
    reserved_by: str | None


@dataclass(frozen=True, slots=True)
class CustodyBalance:
    """Custody's unspent outputs as the watcher's cursor (``height``, ``block_hash``) sees them.
    ``confirmed_sats`` counts confirmed and credited outputs; ``reserved_sats`` those a payout
    batch holds."""

    height: int | None
    block_hash: str | None
    utxos: list[UtxoView] = field(default_factory=list)
    total_sats: int = 0
    confirmed_sats: int = 0
    reserved_sats: int = 0


class BitcoinWatchRepository(Protocol):
    """Custody addresses, the watcher's block chain and the outputs it found."""

    # -- addresses ---------------------------------------------------------------------------

    def customer_exists(self, customer_id: str, *, lock: bool = False) -> bool:
        """Whether the customer exists; ``lock`` holds their row until the transaction ends
        (PostgreSQL), so that one customer's address requests take turns."""
        ...

    def next_index(self, branch: int) -> int:
        """One past the highest derivation index issued on ``branch`` (0 when none)."""
        ...

    def add_address(self, address: CustodyAddress) -> bool:
        """Insert it; False (and nothing written) when its index, address or script is taken —
        under a race on PostgreSQL, once the other transaction committed."""
        ...

    def latest_address(self, customer_id: str) -> CustodyAddress | None:
        """The customer's current deposit address (the highest index issued to them)."""
        ...

    def addresses(
        self, *, customer_id: str | None = None, branch: int | None = None
    ) -> list[CustodyAddress]:
        """By branch and index."""
        ...

    def address_count(self) -> int: ...

    def mark_funded(self, addresses: Sequence[str], at: datetime) -> None:
        """Set ``funded_at`` on those not funded yet."""
        ...

    # -- the watcher's chain ------------------------------------------------------------------

    def cursor(self) -> WatchedBlock | None:
        """The highest block applied, or None before the first."""
        ...

    def block_hashes(self, low: int, high: int) -> dict[int, str]:
        """The stored hashes of heights ``low`` … ``high`` (inclusive) that have a row."""
        ...

    def lowest_height(self) -> int | None: ...

    def claim_block(self, block: WatchedBlock, at: datetime) -> bool:
        """Insert the block's row when it extends the stored chain: the row at ``height − 1``
        has the block's ``previous_hash`` (or nothing is stored yet). False, and nothing
        written, when its height or hash already has a row (another watcher applied it) or its
        parent is not the stored block there (it was fetched from a branch the stored chain has
        left since)."""
        ...

    def holds_tip(self, tip: WatchedBlock) -> bool:
        """Whether the stored chain still ends at ``tip`` (its highest row, same height and
        hash). The tip's row stays locked until the transaction ends (PostgreSQL): no block can
        be added on top, nor the chain rolled back, by another transaction meanwhile."""
        ...

    def record_outputs(
        self, outputs: Sequence[FoundOutput], height: int, block_hash: str, at: datetime
    ) -> None:
        """Insert the outputs found in the block; one already recorded and now ``reorged`` is
        the same row, back to its new status in this block (its confirmations start again)."""
        ...

    def record_spends(self, spends: Sequence[FoundSpend], height: int, block_hash: str) -> int:
        """Record which transaction spent each output, in which block; returns how many."""
        ...

    def confirm(self, up_to_height: int, at: datetime) -> list[ConfirmedOutput]:
        """Outputs ``seen`` in a block at or below ``up_to_height`` become ``confirmed`` (or
        ``credited`` again when they were credited before a reorg); returns them as updated."""
        ...

    def roll_back(self, fork_height: int, *, tip: WatchedBlock) -> RolledBack | None:
        """Delete the blocks above ``fork_height``, mark the outputs in them ``reorged`` (block
        fields and confirmation cleared) and clear the spends recorded in them. ``tip`` is the
        stored tip the fork point was found under: when the stored chain no longer ends there
        (:meth:`holds_tip`; another watcher moved it), nothing is done and None is returned."""
        ...

    def seen_heights(self) -> dict[int, int]:
        """How many outputs still ``seen`` each block height holds."""
        ...

    def unspent_outputs(self) -> list[CustodyOutput]:
        """Outputs in the active chain (not reorged) that no recorded transaction spent."""
        ...

    def add_alerts(self, alerts: Sequence[Alert], at: datetime) -> int:
        """Insert alerts whose id is new; returns how many went in."""
        ...

    # -- outputs -------------------------------------------------------------------------------

    def output(self, txid: str, vout: int) -> CustodyOutput | None: ...

    def outputs(
        self,
        *,
        customer_id: str | None = None,
        kinds: Sequence[OutputKind] = (),
        statuses: Sequence[OutputStatus] = (),
        unspent: bool = False,
        limit: int = 1000,
    ) -> list[CustodyOutput]:
        """Newest first (highest block first, unmined ones before)."""
        ...

    def mark_credited(self, txid: str, vout: int, *, at: datetime | None = None) -> CustodyOutput:
        """A ``confirmed`` deposit becomes ``credited`` (the mint booked it, in this same
        transaction; ``at`` defaults to now). Refused with
        :class:`~sluice.domain.errors.InvalidOperationStateError` in any other status (so a
        deposit is credited once), :class:`~sluice.domain.errors.NotFoundError` when unknown."""
        ...
