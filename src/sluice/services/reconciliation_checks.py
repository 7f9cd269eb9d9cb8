"""What a reconciliation source's check answers (:class:`SourceCheck`), and the **ledger**
check: the journal's treasury asset balance per instrument (what ingestion booked) against the
treasury's holdings in the ledger's active contracts, at the same offset. The custody and supply
checks are in :mod:`sluice.services.reconciliation_chain`.

Each check answers a :class:`SourceCheck`: what was read and where, the figures, and the
discrepancies (classed with :func:`sluice.domain.reserves.classify`); or why it was not read, not
compared, or failed. Nothing here writes: :mod:`sluice.services.reconciliation` stores and reacts.
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
from sluice.ports import ActiveContractsReader
from sluice.ports.reserves import Discrepancy, ReadPoint, ReconcileSource, ReconciliationRun
from sluice.services.reserve_sources import (
    LedgerHoldings,
    read_ledger_holdings,
    read_ledger_holdings_at,
    reads_at_offset,
)
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


def _consistent_view(ctx: ReservesContext, connection: str) -> _JournalView:
    """The journal at one ingestion cursor, read again (at most :data:`LEDGER_READS_MAX` times)
    while a batch committed in the middle of the read moved the cursor."""
    view = _journal_view(ctx, connection)
    for _ in range(LEDGER_READS_MAX - 1):
        if view.consistent:
            break
        view = _journal_view(ctx, connection)
    return view


def _read_at_cursor(
    ctx: ReservesContext, reader: ActiveContractsReader, connection: str
) -> tuple[_JournalView, LedgerHoldings | None, int]:
    """A reader that answers earlier offsets: the DB first (the journal at ingestion's cursor),
    then the ledger's active contracts at exactly the cursor's offset, so the two are always of
    the same moment however busy the ledger is; then the ledger's end (for the lag rule). No
    holdings (None) when there is nothing to compare: ingestion has not started or its cursor
    moved under every read."""
    view = _consistent_view(ctx, connection)
    holdings = None
    if view.consistent and view.cursor is not None:
        holdings = read_ledger_holdings_at(reader, ctx.treasury, view.cursor.offset)
    return view, holdings, reader.ledger_end()


def _read_at_end(
    ctx: ReservesContext, reader: ActiveContractsReader, connection: str
) -> tuple[_JournalView, LedgerHoldings]:
    """The embedded ledger answers at its end only: read it there, then the journal; compared
    only when ingestion's cursor is at that offset (read again while ingestion moved past it)."""
    for _ in range(LEDGER_READS_MAX):
        holdings = read_ledger_holdings(reader, ctx.treasury)
        view = _journal_view(ctx, connection)
        ahead = view.cursor is not None and view.cursor.offset > holdings.offset
        if view.consistent and not ahead:
            break
    return view, holdings


def check_ledger(ctx: ReservesContext, connection: str | None, now: datetime) -> SourceCheck:
    """The journal's treasury balances against the ledger's active contracts at the same offset:
    read at ingestion's cursor when the reader answers earlier offsets (a participant), else at
    the ledger's end and compared only when ingestion's cursor is there."""
    if ctx.ledger is None:
        return SourceCheck("ledger", "not_read", "this process has no reader of the ledger")
    if connection is None:
        return SourceCheck(
            "ledger", "not_read", "the ingestion connection of this ledger is not known here"
        )
    at_cursor = reads_at_offset(ctx.ledger)
    holdings: LedgerHoldings | None
    try:
        if at_cursor:
            view, holdings, ledger_end = _read_at_cursor(ctx, ctx.ledger, connection)
        else:
            view, holdings = _read_at_end(ctx, ctx.ledger, connection)
            ledger_end = holdings.offset
    except Exception as exc:  # a ledger or DB failure is reported, never raised into the loop
        return failed("ledger", exc)
    offset = view.cursor.offset if view.cursor is not None else None
    read_offset = holdings.offset if holdings is not None else None
    report: dict[str, Any] = {
        "connection": connection,
        "read_mode": "at_ingestion_offset" if at_cursor else "at_ledger_end",
        "ledger_offset": read_offset,
        "ledger_end": ledger_end,
        "ingestion_offset": offset,
        "read_at": {
            "ledger": ReadPoint("ledger", offset=read_offset).as_json(),
            "db": {**ReadPoint("db").as_json(), "connection": connection, "offset": offset},
        },
    }
    lag = _ingestion_lag(view.earlier, offset, ledger_end, now)
    if holdings is None or offset != holdings.offset or not view.consistent:
        at = "not started" if offset is None else f"at offset {offset}"
        if holdings is None:
            reason = f"ingestion {at}" + ("" if view.consistent else " and moving")
        else:
            reason = f"ingestion {at}, ledger read at {holdings.offset}"
        check = SourceCheck("ledger", "not_compared", reason, report)
        if lag is not None:
            check.discrepancies.append(lag)
        return check
    report["instruments"] = {}
    check = SourceCheck("ledger", "compared", None, report)
    try:
        _compare_holdings(ctx, holdings, view, ctx.settings.tolerances, check)
    except Exception as exc:  # an amount finer than the instrument's units, say
        return failed("ledger", exc)
    if lag is not None:  # compared at ingestion's cursor, but that cursor is far behind
        check.discrepancies.append(lag)
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
    """A warning when ingestion has not reached, within :data:`INGESTION_LAG_BOUND_S`, the
    ledger's end an earlier run saw.

    Offsets compare only within one numbering and one pass of ingestion. Ingestion's cursor and
    the ledger's end only ever grow, except when a node is restored from a backup (its offsets
    are renumbered from the backup's end) or the runbook rewinds the cursor (``sluice ingest
    --from-record-time``). So the earlier runs are walked newest first and the walk ends at the
    first run that saw a larger cursor, or a larger ledger end, than a later run (or now) saw:
    that run, and every one before it, is from before the newest restore or rewind and says
    nothing of today's lag. A restore or rewind that no run saw in between is still caught when
    the ledger's end now is below the offset the earlier run read."""
    if offset is not None and offset >= ledger_offset:
        return None
    bound = now - timedelta(seconds=INGESTION_LAG_BOUND_S)
    lowest_cursor, lowest_end = offset, ledger_offset  # the least seen since, newest first
    for run in earlier:
        ledger = dict(run.report.get("sources", {})).get("ledger") or {}
        # The ledger's end then (runs before "ledger_end" was reported read at their end).
        read = ledger.get("ledger_end", ledger.get("ledger_offset"))
        cursor = ledger.get("ingestion_offset")
        if isinstance(cursor, int) and (lowest_cursor is None or cursor > lowest_cursor):
            return None  # the cursor went back since this run: a rewind or a restore
        if isinstance(read, int) and read > lowest_end:
            return None  # the ledger's end went back since: the node was restored
        if isinstance(cursor, int):
            lowest_cursor = cursor
        if isinstance(read, int):
            lowest_end = read
        if run.finished_at > bound or not isinstance(read, int):
            continue
        if offset is None or offset < read:
            return _lag_warning(run, read, offset, ledger_offset, now)
    return None


def _lag_warning(
    run: ReconciliationRun, read: int, offset: int | None, ledger_offset: int, now: datetime
) -> Discrepancy:
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


def details_text(details: Mapping[str, Any]) -> dict[str, str]:
    """An alert's details are text: lists are joined, the rest formatted."""
    return {
        key: ",".join(map(str, value)) if isinstance(value, list) else str(value)
        for key, value in details.items()
    }
