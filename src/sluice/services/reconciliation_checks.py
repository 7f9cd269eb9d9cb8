"""The three comparisons of a reconciliation run, each between our records and a read that does
not go through them:

* **ledger**: the journal's treasury asset balance per instrument (what ingestion booked) against
  the treasury's holdings in the ledger's active contracts, at the same offset;
* **custody**: the custody outputs the watcher recorded against the node's ``scantxoutset`` over
  the custody descriptor, at the same block;
* **supply**: the iSTSi supply on the issuer's ledger against the confirmed custody outputs on the
  node, less the pending outflows.

Each answers a :class:`SourceCheck`: what was read and where, the figures, and the discrepancies
(classed with :func:`sluice.domain.reserves.classify`); or why it was not read, not compared, or
failed. Nothing here writes: :mod:`sluice.services.reconciliation` stores and reacts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

from sluice.domain.journal import treasury_account_name
from sluice.domain.ledger import Cursor, InstrumentId
from sluice.domain.reserves import Tolerances, classify, decimals_for, format_units, units_of
from sluice.ports import UnitOfWork
from sluice.ports.bitcoin_watch import CHANGE_BRANCH, DEPOSIT_BRANCH, WatchedBlock
from sluice.ports.reserves import Discrepancy, ReadPoint, ReconcileSource, ReconciliationRun
from sluice.services.reserve_sources import CustodyScan, LedgerHoldings, read_ledger_holdings
from sluice.services.reserves_settings import ReservesContext

CheckState = Literal["compared", "not_compared", "not_read", "failed"]

# Ingestion may trail the ledger for a while (a burst of updates, a restart): a comparison at
# different offsets is simply not made. When ingestion still has not reached, this many seconds
# later, an offset an earlier run read the ledger at, the lag itself is a warning.
INGESTION_LAG_BOUND_S = 300.0
# Earlier runs looked at for that (newest first).
LAG_RUNS_LOOKED_AT = 50
# Reading the ledger again when ingestion moved past the offset read (at most this many reads).
LEDGER_READS_MAX = 3
# Outpoints and contract ids listed in a discrepancy's details, per side, at most.
LISTED_MAX = 100


@dataclass
class SourceCheck:
    """One source's part of a run: its state, why when not compared, its report (JSON-ready)
    and the discrepancies found."""

    source: ReconcileSource
    state: CheckState
    reason: str | None = None
    report: dict[str, Any] = field(default_factory=dict)
    discrepancies: list[Discrepancy] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state, "reason": self.reason, **self.report}


def failed(source: ReconcileSource, exc: BaseException) -> SourceCheck:
    return SourceCheck(source, "failed", f"could not be read: {type(exc).__name__}: {exc}")


def listed(items: Sequence[str]) -> list[str]:
    return sorted(items)[:LISTED_MAX]


def figures(expected: int, actual: int, decimals: int) -> dict[str, Any]:
    """Expected and actual, as units (decimal strings) and as amounts."""
    return {
        "expected_units": str(expected),
        "actual_units": str(actual),
        "difference_units": str(actual - expected),
        "expected": format_units(expected, decimals),
        "actual": format_units(actual, decimals),
    }


# --- ledger --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _JournalView:
    """What the DB says at one ingestion cursor: the treasury's asset balances and holdings."""

    cursor: Cursor | None
    balances: dict[InstrumentId, Decimal]
    contracts: dict[InstrumentId, set[str]]
    consistent: bool  # the cursor did not move while these were read
    earlier: list[ReconciliationRun]


def _journal_view(ctx: ReservesContext, connection: str) -> _JournalView:
    account = treasury_account_name(ctx.treasury)
    with ctx.uow() as uow:
        before = uow.ingestion.load_cursor(connection)
        balances = {
            ref.instrument: amount
            for ref, amount in uow.books.balances().items()
            if ref.name == account
        }
        contracts: dict[InstrumentId, set[str]] = {}
        for holding in uow.books.active_holdings(owner=ctx.treasury):
            contracts.setdefault(holding.instrument, set()).add(holding.contract_id)
        # PostgreSQL reads each statement at its own snapshot: a batch committed in between moves
        # the cursor, which is how it is noticed.
        after = uow.ingestion.load_cursor(connection)
        earlier = uow.reserves.runs(limit=LAG_RUNS_LOOKED_AT)
    return _JournalView(before, balances, contracts, before == after, earlier)


def check_ledger(ctx: ReservesContext, connection: str | None, now: datetime) -> SourceCheck:
    """The journal's treasury balances against the ledger's active contracts, compared only when
    ingestion's cursor is at the offset the ledger was read at."""
    if ctx.ledger is None:
        return SourceCheck("ledger", "not_read", "this process has no reader of the ledger")
    if connection is None:
        return SourceCheck(
            "ledger", "not_read", "the ingestion connection of this ledger is not known here"
        )
    try:
        for _ in range(LEDGER_READS_MAX):
            holdings = read_ledger_holdings(ctx.ledger, ctx.treasury)
            view = _journal_view(ctx, connection)
            ahead = view.cursor is not None and view.cursor.offset > holdings.offset
            if view.consistent and not ahead:
                break
    except Exception as exc:  # a ledger or DB failure is reported, never raised into the loop
        return failed("ledger", exc)
    offset = view.cursor.offset if view.cursor is not None else None
    report: dict[str, Any] = {
        "connection": connection,
        "ledger_offset": holdings.offset,
        "ingestion_offset": offset,
        "read_at": {
            "ledger": ReadPoint("ledger", offset=holdings.offset).as_json(),
            "db": {**ReadPoint("db").as_json(), "connection": connection, "offset": offset},
        },
    }
    if offset != holdings.offset or not view.consistent:
        at = "not started" if offset is None else f"at offset {offset}"
        check = SourceCheck(
            "ledger",
            "not_compared",
            f"ingestion {at}, ledger read at {holdings.offset}",
            report,
        )
        lag = _ingestion_lag(view.earlier, offset, holdings.offset, now)
        if lag is not None:
            check.discrepancies.append(lag)
        return check
    report["instruments"] = {}
    check = SourceCheck("ledger", "compared", None, report)
    _compare_holdings(ctx, holdings, view, ctx.settings.tolerances, check)
    return check


def _compare_holdings(
    ctx: ReservesContext,
    holdings: LedgerHoldings,
    view: _JournalView,
    tolerances: Tolerances,
    check: SourceCheck,
) -> None:
    totals = holdings.totals()
    instruments = sorted(set(totals) | set(view.balances), key=lambda i: i.key())
    for instrument in instruments:
        decimals = decimals_for(instrument, ctx.istsi)
        expected = units_of(view.balances.get(instrument, Decimal(0)), decimals)
        actual = units_of(totals.get(instrument, Decimal(0)), decimals)
        on_ledger = {h.contract_id for h in holdings.of(instrument)}
        in_db = view.contracts.get(instrument, set())
        only_ledger, only_db = on_ledger - in_db, in_db - on_ledger
        severity = classify(expected, actual, tolerances)
        message = (
            f"journal {format_units(expected, decimals)}, ledger {format_units(actual, decimals)}"
        )
        if severity is None and (only_ledger or only_db):
            # Equal sums over different contracts: the records are wrong all the same.
            severity = "minor"
            message += " (equal totals over different contracts)"
        entry = figures(expected, actual, decimals) | {
            "severity": severity,
            "contracts_ledger": len(on_ledger),
            "contracts_db": len(in_db),
        }
        check.report["instruments"][instrument.key()] = entry
        if severity is None:
            continue
        check.discrepancies.append(
            Discrepancy(
                source="ledger",
                instrument=instrument.key(),
                severity=severity,
                expected_units=expected,
                actual_units=actual,
                message=f"treasury holdings of {instrument.key()}: {message}",
                details={
                    "ledger_offset": holdings.offset,
                    "only_on_ledger": listed(list(only_ledger)),
                    "only_in_db": listed(list(only_db)),
                },
            )
        )


def _ingestion_lag(
    earlier: Sequence[ReconciliationRun], offset: int | None, ledger_offset: int, now: datetime
) -> Discrepancy | None:
    """A warning when ingestion has not reached, within :data:`INGESTION_LAG_BOUND_S`, an offset
    the ledger was read at by an earlier run."""
    if offset is not None and offset >= ledger_offset:
        return None
    bound = now - timedelta(seconds=INGESTION_LAG_BOUND_S)
    for run in earlier:
        if run.finished_at > bound:
            continue
        ledger = dict(run.report.get("sources", {})).get("ledger") or {}
        read = ledger.get("ledger_offset")
        if isinstance(read, int) and (offset is None or offset < read):
            seconds = int((now - run.finished_at).total_seconds())
            at = "has not started" if offset is None else f"is at offset {offset}"
            return Discrepancy(
                source="ledger",
                instrument="*",
                severity="warning",
                expected_units=read,
                actual_units=offset or 0,
                message=(
                    f"ingestion {at} and has not reached offset {read}, which the ledger was "
                    f"read at {seconds} s ago (run {run.id})"
                ),
                details={
                    "kind": "ingestion_lag",
                    "earlier_run": run.id,
                    "earlier_ledger_offset": read,
                    "ingestion_offset": offset,
                    "ledger_offset": ledger_offset,
                    "bound_s": INGESTION_LAG_BOUND_S,
                },
            )
    return None


# --- custody -------------------------------------------------------------------------------------


def scan_ranges(uow: UnitOfWork, scan_gap: int) -> dict[int, int]:
    """Per branch, the highest index to scan: the highest issued plus the gap."""
    return {
        branch: uow.btc_watch.next_index(branch) - 1 + scan_gap
        for branch in (DEPOSIT_BRANCH, CHANGE_BRANCH)
    }


def block_json(block: WatchedBlock | None) -> dict[str, Any] | None:
    if block is None:
        return None
    return ReadPoint("chain", height=block.height, block_hash=block.hash).as_json()


def check_custody(ctx: ReservesContext, scan: CustodyScan | BaseException | None) -> SourceCheck:
    """The watcher's unspent custody outputs against the node's scan, compared only when the
    watcher's cursor is the block the scan was taken at."""
    if scan is None:
        return SourceCheck("custody", "not_read", "this process has no Bitcoin custody")
    if isinstance(scan, BaseException):
        return failed("custody", scan)
    try:
        with ctx.uow() as uow:
            before = uow.btc_watch.cursor()
            # Recorded outputs in a block (not reorged) that no mined transaction spent: spends
            # are recorded only from blocks, so this is what the UTXO set should hold.
            recorded = [o for o in uow.btc_watch.unspent_outputs() if o.block_height is not None]
            after = uow.btc_watch.cursor()
    except Exception as exc:
        return failed("custody", exc)
    report: dict[str, Any] = {
        "read_at": {
            "chain": ReadPoint("chain", height=scan.height, block_hash=scan.block_hash).as_json(),
            "watcher": block_json(before),
        },
        "ranges": {str(branch): top for branch, top in sorted(scan.ranges.items())},
    }
    if (
        before != after
        or before is None
        or (before.height, before.hash)
        != (
            scan.height,
            scan.block_hash,
        )
    ):
        at = "has no block yet" if before is None else f"at block {before.height} {before.hash}"
        reason = f"watcher {at}, node scanned at block {scan.height} {scan.block_hash}"
        if before != after:
            reason = "the watcher applied a block while its outputs were read"
        return SourceCheck("custody", "not_compared", reason, report)
    ours = {o.outpoint: o.amount_sats for o in recorded}
    theirs = {o.outpoint: o.amount_sats for o in scan.outputs}
    expected, actual = sum(ours.values()), sum(theirs.values())
    missing_on_node = [p for p in ours if p not in theirs]
    missing_in_db = [p for p in theirs if p not in ours]
    amounts_differ = [p for p in ours if p in theirs and ours[p] != theirs[p]]
    severity = classify(expected, actual, ctx.settings.tolerances)
    message = f"DB {expected} sats in {len(ours)} outputs, node {actual} sats in {len(theirs)}"
    if severity is None and (missing_on_node or missing_in_db or amounts_differ):
        severity = "minor"
        message += " (equal totals over different outputs)"
    report |= figures(expected, actual, 0) | {
        "severity": severity,
        "outputs_db": len(ours),
        "outputs_node": len(theirs),
    }
    check = SourceCheck("custody", "compared", None, report)
    if severity is not None:
        check.discrepancies.append(
            Discrepancy(
                source="custody",
                instrument="BTC",
                severity=severity,
                expected_units=expected,
                actual_units=actual,
                message=f"custody outputs: {message}",
                details={
                    "height": scan.height,
                    "block_hash": scan.block_hash,
                    "missing_on_node": listed(missing_on_node),
                    "missing_in_db": listed(missing_in_db),
                    "amounts_differ": listed(amounts_differ),
                },
            )
        )
    return check


# --- supply --------------------------------------------------------------------------------------


def check_supply(
    ctx: ReservesContext,
    scan: CustodyScan | BaseException | None,
    confirmations_min: int,
) -> SourceCheck:
    """iSTSi supply on the issuer's ledger against the node's confirmed custody outputs less the
    pending redemptions and payouts (the only figures taken from the DB). Only a shortfall is a
    discrepancy: reserves above supply are normal (deposits not minted yet, fees)."""
    if ctx.issuer is None or ctx.istsi is None:
        return SourceCheck("supply", "not_read", "this process has no issuer ledger (issuance)")
    if scan is None:
        return SourceCheck("supply", "not_read", "this process has no Bitcoin custody")
    if isinstance(scan, BaseException):
        return failed("supply", scan)
    try:
        supply = ctx.issuer.supply()
        with ctx.uow() as uow:
            guard = uow.issuance.guard_figures()
    except Exception as exc:
        return failed("supply", exc)
    confirmed = [o for o in scan.outputs if scan.height - o.height + 1 >= confirmations_min]
    reserves = sum(o.amount_sats for o in confirmed)
    pending = guard.pending_redemptions + guard.pending_payouts
    backing = reserves - pending
    severity = classify(supply, backing, ctx.settings.tolerances) if backing < supply else None
    instrument = ctx.istsi.key()
    report: dict[str, Any] = {
        "instrument": instrument,
        "read_at": {
            "supply": {"source": "issuer_ledger"},
            "reserves": ReadPoint(
                "chain", height=scan.height, block_hash=scan.block_hash
            ).as_json(),
            "pending": ReadPoint("db").as_json(),
        },
        "supply_units": str(supply),
        "reserves_units": str(reserves),
        "confirmations_min": confirmations_min,
        "outputs_confirmed": len(confirmed),
        "pending_redemptions_units": str(guard.pending_redemptions),
        "pending_payouts_units": str(guard.pending_payouts),
        "backing_units": str(backing),
        "severity": severity,
    } | figures(supply, backing, 0)
    check = SourceCheck("supply", "compared", None, report)
    if severity is not None:
        check.discrepancies.append(
            Discrepancy(
                source="supply",
                instrument=instrument,
                severity=severity,
                expected_units=supply,
                actual_units=backing,
                message=(
                    f"iSTSi supply {supply} sats exceeds confirmed reserves {reserves} sats less "
                    f"{pending} sats pending outflows ({backing} sats)"
                ),
                details={
                    "height": scan.height,
                    "block_hash": scan.block_hash,
                    "reserves_units": str(reserves),
                    "pending_redemptions_units": str(guard.pending_redemptions),
                    "pending_payouts_units": str(guard.pending_payouts),
                },
            )
        )
    return check


def details_text(details: Mapping[str, Any]) -> dict[str, str]:
    """An alert's details are text: lists are joined, the rest formatted."""
    return {
        key: ",".join(map(str, value)) if isinstance(value, list) else str(value)
        for key, value in details.items()
    }
