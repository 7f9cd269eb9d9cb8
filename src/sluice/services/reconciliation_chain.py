"""The Bitcoin side of a reconciliation run: the **custody** check (the custody outputs the
watcher recorded against the node's ``scantxoutset`` over the custody descriptor, at the same
block) and the **supply** check (the iSTSi supply on the issuer's ledger against the confirmed
custody outputs on the node, less the pending outflows).

The order of the reads is what keeps a moving system from looking short (:func:`read_chain`):

1. the DB first, in one transaction: the watcher's cursor, its unspent outputs, the change
   scripts and the pending redemptions and payouts (``guard_figures``: the only DB figures the
   supply check uses);
2. then the issuer's supply: a mint counted there was of a deposit the watcher had confirmed,
   so the node's scan, taken after, holds its output; a burn after step 1 lowers the supply
   read here while its pending redemption is not yet counted, which can only look better;
3. then the node's scan, compared only when the node's tip is the block the watcher's cursor
   was at in step 1 (height and hash). Between two different blocks a payout's inputs could be
   gone from the scan while still counted as pending, or a deposit be in one and not the other.

A shortfall is reported only from figures read this way; what cannot be read is a failed source.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sluice.domain.reserves import classify
from sluice.ports import UnitOfWork
from sluice.ports.bitcoin_watch import CHANGE_BRANCH, DEPOSIT_BRANCH, CustodyOutput, WatchedBlock
from sluice.ports.issuance import GuardFigures
from sluice.ports.reserves import Discrepancy, ReadPoint
from sluice.services.reconciliation_checks import SourceCheck, failed, figures, listed
from sluice.services.reserve_sources import CustodyScan, scan_custody
from sluice.services.reserves_settings import ReservesContext

# The watcher statuses the mint guard counts as reserves (store/issuance_repository.py).
RESERVE_STATUSES = frozenset({"confirmed", "credited"})


@dataclass(frozen=True, slots=True)
class CustodyView:
    """The DB's side, read in one transaction at the watcher's cursor."""

    cursor: WatchedBlock | None
    outputs: tuple[CustodyOutput, ...]  # in a block, not spent by a mined transaction
    change_scripts: frozenset[str]
    guard: GuardFigures
    ranges: dict[int, int]
    consistent: bool  # the cursor did not move while these were read


@dataclass(frozen=True, slots=True)
class ChainRead:
    """What a run read for custody and supply, each the value or the error that stopped it."""

    view: CustodyView | Exception
    supply: int | Exception | None  # None: no issuer ledger in this process
    scan: CustodyScan | Exception | None  # None: not scanned (the DB could not be read)


def scan_ranges(uow: UnitOfWork, scan_gap: int) -> dict[int, int]:
    """Per branch, the highest index to scan: the highest issued plus the gap."""
    return {
        branch: uow.btc_watch.next_index(branch) - 1 + scan_gap
        for branch in (DEPOSIT_BRANCH, CHANGE_BRANCH)
    }


def read_custody_view(ctx: ReservesContext) -> CustodyView:
    with ctx.uow() as uow:
        before = uow.btc_watch.cursor()
        # Spends are recorded from blocks only, so these are what the UTXO set should hold.
        outputs = tuple(o for o in uow.btc_watch.unspent_outputs() if o.block_height is not None)
        change = frozenset(a.script_hex for a in uow.btc_watch.addresses(branch=CHANGE_BRANCH))
        guard = uow.issuance.guard_figures()
        ranges = scan_ranges(uow, ctx.settings.scan_gap)
        # PostgreSQL reads each statement at its own snapshot: a block applied in between moves
        # the cursor, which is how it is noticed.
        after = uow.btc_watch.cursor()
    return CustodyView(before, outputs, change, guard, ranges, before == after)


def read_chain(ctx: ReservesContext) -> ChainRead | None:
    """The DB, then the issuer's supply, then the node's scan (see the module); None without
    custody in this process."""
    if ctx.node is None or ctx.wallet is None:
        return None
    try:
        view = read_custody_view(ctx)
    except Exception as exc:
        return ChainRead(exc, None, None)
    supply: int | Exception | None = None
    if ctx.issuer is not None:
        try:
            supply = ctx.issuer.supply()
        except Exception as exc:
            supply = exc
    try:
        scan: CustodyScan | Exception = scan_custody(
            ctx.node, ctx.wallet, view.ranges, timeout_s=ctx.settings.scan_timeout_s
        )
    except Exception as exc:
        scan = exc
    return ChainRead(view, supply, scan)


def _at(scan: CustodyScan) -> dict[str, Any]:
    return ReadPoint("chain", height=scan.height, block_hash=scan.block_hash).as_json()


def _watcher(block: WatchedBlock | None) -> dict[str, Any] | None:
    if block is None:
        return None
    return ReadPoint("chain", height=block.height, block_hash=block.hash).as_json()


def _not_at_scan(view: CustodyView, scan: CustodyScan) -> str | None:
    """Why the DB and the scan are not at the same block, or None when they are."""
    if not view.consistent:
        return "the watcher applied a block while its outputs were read"
    cursor = view.cursor
    if cursor is not None and (cursor.height, cursor.hash) == (scan.height, scan.block_hash):
        return None
    at = "has no block yet" if cursor is None else f"at block {cursor.height} {cursor.hash}"
    return f"watcher {at}, node scanned at block {scan.height} {scan.block_hash}"


def check_custody(ctx: ReservesContext, chain: ChainRead | None) -> SourceCheck:
    """The watcher's unspent custody outputs against the node's scan, at the same block."""
    if chain is None:
        return SourceCheck("custody", "not_read", "this process has no Bitcoin custody")
    view, scan = chain.view, chain.scan
    if isinstance(view, Exception):
        return failed("custody", view)
    if scan is None or isinstance(scan, Exception):
        return failed("custody", scan or RuntimeError("not scanned"))
    report: dict[str, Any] = {
        "read_at": {"chain": _at(scan), "watcher": _watcher(view.cursor)},
        "ranges": {str(branch): top for branch, top in sorted(scan.ranges.items())},
    }
    reason = _not_at_scan(view, scan)
    if reason is not None:
        return SourceCheck("custody", "not_compared", reason, report)
    ours = {o.outpoint: o.amount_sats for o in view.outputs}
    theirs = {o.outpoint: o.amount_sats for o in scan.outputs}
    expected, actual = sum(ours.values()), sum(theirs.values())
    missing_on_node = [p for p in ours if p not in theirs]
    missing_in_db = [p for p in theirs if p not in ours]
    amounts_differ = [p for p in ours if p in theirs and ours[p] != theirs[p]]
    severity = classify(expected, actual, ctx.settings.tolerances)
    message = f"DB {expected} sats in {len(ours)} outputs, node {actual} sats in {len(theirs)}"
    if severity is None and (missing_on_node or missing_in_db or amounts_differ):
        # Equal sums over different outputs: the records are wrong all the same.
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


def check_supply(
    ctx: ReservesContext, chain: ChainRead | None, confirmations_min: int
) -> SourceCheck:
    """iSTSi supply against the node's confirmed custody outputs (and our own change once mined,
    as the mint guard counts it) less the pending redemptions and payouts. Only a shortfall is a
    discrepancy: reserves above supply are normal (deposits not minted yet)."""
    if ctx.issuer is None or ctx.istsi is None:
        return SourceCheck("supply", "not_read", "this process has no issuer ledger (issuance)")
    if chain is None:
        return SourceCheck("supply", "not_read", "this process has no Bitcoin custody")
    view, supply, scan = chain.view, chain.supply, chain.scan
    if isinstance(view, Exception):
        return failed("supply", view)
    if isinstance(supply, Exception):
        return failed("supply", supply)
    if scan is None or isinstance(scan, Exception):
        return failed("supply", scan or RuntimeError("not scanned"))
    if supply is None:
        return SourceCheck("supply", "not_read", "this process has no issuer ledger (issuance)")
    # The watcher confirms an output once and keeps it confirmed (a raised confirmations_min
    # applies to outputs still only seen), and the mint guard counts by that status: an output
    # is a reserve when deep enough now OR the watcher's row says confirmed/credited. The amount
    # is still the node's; the DB only selects which of the node's outputs count.
    by_status = frozenset(o.outpoint for o in view.outputs if o.status in RESERVE_STATUSES)
    confirmed = [
        o
        for o in scan.outputs
        if scan.height - o.height + 1 >= confirmations_min
        or o.script_hex in view.change_scripts
        or o.outpoint in by_status
    ]
    reserves = sum(o.amount_sats for o in confirmed)
    guard = view.guard
    pending = guard.pending_redemptions + guard.pending_payouts
    backing = reserves - pending
    instrument = ctx.istsi.key()
    report: dict[str, Any] = {
        "instrument": instrument,
        "read_at": {
            "supply": {"source": "issuer_ledger"},
            "reserves": _at(scan),
            "pending": {**ReadPoint("db").as_json(), "watcher": _watcher(view.cursor)},
        },
        "supply_units": str(supply),
        "reserves_units": str(reserves),
        "confirmations_min": confirmations_min,
        "outputs_counted": len(confirmed),
        "outputs_counted_by_status": sum(
            1
            for o in confirmed
            if o.outpoint in by_status and scan.height - o.height + 1 < confirmations_min
        ),
        "pending_redemptions_units": str(guard.pending_redemptions),
        "pending_payouts_units": str(guard.pending_payouts),
        "backing_units": str(backing),
        # The only figures of this check taken from our own records.
        "from_db": ["pending_redemptions_units", "pending_payouts_units"],
    }
    reason = _not_at_scan(view, scan)
    if reason is not None:
        return SourceCheck("supply", "not_compared", reason, report)
    severity = classify(supply, backing, ctx.settings.tolerances) if backing < supply else None
    report |= figures(supply, backing, 0) | {"severity": severity}
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
                    f"iSTSi supply {supply} sats exceeds reserves {reserves} sats less "
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
