"""What the reserves side keeps: readings of the reserve figures (their history), reconciliation
runs with their discrepancies, and proof-of-reserves snapshots (published roots, the leaves they
were built from, the reserves document).

Amounts cross this port as integers in the instrument's smallest unit (``units``: satoshis for
iSTSi, 10⁻¹⁰ for token-standard amounts), so sums are exact and may exceed 64 bits (they are
stored as decimal text).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Protocol

from sluice.domain.deposits import Alert
from sluice.domain.reserves import SEVERITIES as SEVERITIES
from sluice.domain.reserves import Severity as Severity

# Where a discrepancy was found: the journal against the ledger's active contracts, custody
# outputs in the DB against the node's UTXO set, or iSTSi supply against reserves.
ReconcileSource = Literal["ledger", "custody", "supply"]
RECONCILE_SOURCES: tuple[ReconcileSource, ...] = ("ledger", "custody", "supply")

RunTrigger = Literal["schedule", "manual"]
# ok: every source read and agreed (or differed by nothing); discrepancies: at least one found;
# failed: a source could not be read (the report says which; nothing is classed for it).
RunStatus = Literal["ok", "discrepancies", "failed"]

# A reading's kind: iSTSi against Bitcoin in custody, or a Canton token against the treasury.
ReadingKind = Literal["istsi", "token"]


def severity_rank(severity: Severity | None) -> int:
    """0 for none, then 1 (minor) … 4 (emergency): the worse, the higher."""
    return 0 if severity is None else SEVERITIES.index(severity) + 1


def worst(severities: Iterable[Severity | None]) -> Severity | None:
    found: Severity | None = None
    for severity in severities:
        if severity_rank(severity) > severity_rank(found):
            found = severity
    return found


@dataclass(frozen=True, slots=True)
class ReadPoint:
    """Where a figure was read: a block (height and hash) or a ledger offset, or the DB."""

    source: Literal["chain", "ledger", "db"]
    height: int | None = None
    block_hash: str | None = None
    offset: int | None = None

    def as_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"source": self.source}
        if self.source == "chain":
            body |= {"height": self.height, "block_hash": self.block_hash}
        elif self.source == "ledger":
            body["offset"] = self.offset
        return body


@dataclass(frozen=True, slots=True)
class ReserveReading:
    """One instrument's reserve figures at one moment, as kept in the history.

    ``supply_units``: what is owed (iSTSi: the supply; a token: customer liabilities, suspense,
    holds, in-flight and fees); ``reserves_units``: what backs it (iSTSi: confirmed custody
    outputs; a token: the treasury's holdings). ``ratio_bps`` = reserves × 10000 ÷ supply,
    rounded down (None when nothing is owed). ``figures`` holds the breakdown (decimal strings)
    and ``read_at`` where each side was read."""

    instrument: str  # InstrumentId.key()
    kind: ReadingKind
    supply_units: int
    reserves_units: int
    ratio_bps: int | None
    taken_at: datetime
    read_at: Mapping[str, ReadPoint] = field(default_factory=dict)
    figures: Mapping[str, str] = field(default_factory=dict)
    id: int | None = None  # assigned when stored


@dataclass(frozen=True, slots=True)
class Discrepancy:
    """What one source disagreed on. ``expected`` is what our records say, ``actual`` what the
    independent read found (units); ``difference`` = actual − expected."""

    source: ReconcileSource
    instrument: str
    severity: Severity
    expected_units: int
    actual_units: int
    message: str
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def difference_units(self) -> int:
        return self.actual_units - self.expected_units


@dataclass(frozen=True, slots=True)
class ReconciliationRun:
    id: str
    trigger: RunTrigger
    status: RunStatus
    started_at: datetime
    finished_at: datetime
    worst: Severity | None
    # Per source: what was read and where (block, offset), or why it could not be read.
    report: Mapping[str, Any]
    # What the run did: "minting_halted", "system_paused", alert ids.
    actions: Sequence[str] = ()
    discrepancies: Sequence[Discrepancy] = ()


@dataclass(frozen=True, slots=True)
class PublishedRoot:
    """A Merkle-sum root as published (the issue's root JSON, field for field)."""

    snapshot_id: str
    instrument: str
    root_hash: str  # hex
    total_units: int
    total: str  # the decimal amount
    leaf_count: int
    depth: int
    taken_at: datetime


@dataclass(frozen=True, slots=True)
class PorSnapshot:
    """A proof-of-reserves snapshot: its roots, and (once taken) the reserves document with the
    per-instrument report (reserves ≥ liabilities and the ratio)."""

    id: str
    taken_at: datetime
    instruments: Sequence[str]
    report: Mapping[str, Any] = field(default_factory=dict)
    reserves: Mapping[str, Any] | None = None


class ReservesRepository(Protocol):
    """Reserve readings, reconciliation runs and proof-of-reserves snapshots (``uow.reserves``)."""

    # -- readings ---------------------------------------------------------------------------

    def add_reading(self, reading: ReserveReading) -> int:
        """Store a reading; answers its id."""
        ...

    def readings(
        self, instrument: str | None = None, *, since: datetime | None = None, limit: int = 1000
    ) -> list[ReserveReading]:
        """Newest first."""
        ...

    def latest_readings(self) -> list[ReserveReading]:
        """The newest reading of each instrument."""
        ...

    def add_alerts(self, alerts: Sequence[Alert], at: datetime) -> int:
        """Raise each alert once (an id raised before is left alone); answers how many went in."""
        ...

    # -- reconciliation ---------------------------------------------------------------------

    def add_run(self, run: ReconciliationRun) -> None:
        """Store a run with its discrepancies (its id is new)."""
        ...

    def run(self, run_id: str) -> ReconciliationRun | None: ...

    def runs(self, *, limit: int = 100) -> list[ReconciliationRun]:
        """Newest first, each with its discrepancies."""
        ...

    def discrepancies(
        self,
        *,
        severity: Severity | None = None,
        source: ReconcileSource | None = None,
        since: datetime | None = None,
        limit: int = 1000,
    ) -> list[tuple[str, datetime, Discrepancy]]:
        """(run id, the run's finished_at, discrepancy), newest first."""
        ...

    # -- proof-of-reserves snapshots --------------------------------------------------------

    def add_snapshot(self, snapshot: PorSnapshot) -> bool:
        """Store a new snapshot; False when its id exists (nothing written)."""
        ...

    def set_snapshot_report(
        self, snapshot_id: str, report: Mapping[str, Any], reserves: Mapping[str, Any] | None
    ) -> None: ...

    def snapshot(self, snapshot_id: str) -> PorSnapshot | None: ...

    def latest_snapshot(self) -> PorSnapshot | None: ...

    def snapshots(self, *, limit: int = 100) -> list[PorSnapshot]:
        """Newest first."""
        ...

    def add_root(self, root: PublishedRoot) -> None: ...

    def roots(self, snapshot_id: str) -> list[PublishedRoot]:
        """By instrument."""
        ...

    def add_leaves(
        self, snapshot_id: str, instrument: str, leaves: Iterable[tuple[str, int]]
    ) -> int:
        """Store a snapshot's (customer id, units) balances of one instrument; answers how many."""
        ...

    def leaves(self, snapshot_id: str, instrument: str) -> list[tuple[str, int]]:
        """The (customer id, units) a tree was built from, by customer id."""
        ...

    def leaf(self, snapshot_id: str, instrument: str, customer_id: str) -> int | None:
        """One customer's units in a snapshot, or None when not in it."""
        ...
