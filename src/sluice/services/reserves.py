"""The reserve manager: what backs what is owed, per instrument, read from the Integration DB.

Two kinds of figures, one row (a :class:`~sluice.ports.reserves.ReserveReading`) per instrument:

* **iSTSi against Bitcoin in custody.** ``supply``: iSTSi issued by our records (mints not
  failed, minus burns committed: the mint guard's figure). ``reserves``: custody outputs
  confirmed (or credited) and unspent, and our own payouts' change, *less* what is already owed
  out of them — redemptions burned and not yet paid, and other custody payouts not yet paid. Those
  outflows belong to the people being paid, not to iSTSi holders; counting them would overstate
  the backing while a payout is under way. So ``ratio_bps ≥ 10000`` holds exactly when the mint
  guard's rule (supply ≤ confirmed reserves − pending outflows) does. The gross custody figure
  and both pending figures are kept beside it (``figures``). The reserves side is read at the
  deposit watcher's cursor block (height and hash), the supply from the DB's records.
* **Every other token in the journal** against the treasury's holdings. ``supply`` (owed):
  Σ customer balances + suspense + compliance holds + in-flight withdrawals + fees (and any other
  liability account); ``reserves``: the treasury's asset accounts — its holdings as ingestion
  booked them. Both sides are read at ingestion's cursor offset. The journal balances by
  construction, so anything but 100 % means the books are broken; whether they match the ledger
  itself is reconciliation's question (its independent read of the active contracts).

Every figure is an integer in the instrument's smallest unit (iSTSi: satoshis, 8 decimals; token
standard amounts: 10 decimals); the ratio is rounded down, None when nothing is owed.

Consistency: the figures come from one read transaction. On PostgreSQL each statement sees its
own snapshot (READ COMMITTED), so the watcher's and ingestion's cursors are read before and after
the figures, and the figures read again (a bounded number of times) when either moved: the read
points named are the ones the figures were read at. (Each figure is one statement, so a journal
transaction or a watcher block is either wholly in it or not.)

**Readings and alerts.** :func:`record_readings` stores one reading per instrument (the history)
and raises an alert when a ratio *crosses* a threshold: below ``ratio_critical_bps`` critical,
below ``ratio_warning_bps`` a warning (iSTSi only: a token's holdings equal its liabilities by
construction, so a buffer above 100 % is not expected of it; below 100 % is critical for both).
The alert's id names the instrument, the level and the reading *before* the crossing, so it is
raised once per crossing, also when two processes record at once; a ratio that stays low raises
nothing more, and one that recovers and falls again raises anew.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal

from sluice.domain.amounts import ZERO
from sluice.domain.deposits import Alert
from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.events import Event, new_event
from sluice.domain.journal import COMPLIANCE_HOLD, FEES, IN_FLIGHT, SUSPENSE, AccountRef
from sluice.domain.ledger import Cursor, InstrumentId, format_timestamp
from sluice.domain.reserves import (
    FULL_BPS,
    ISTSI_DECIMALS,
    TOKEN_DECIMALS,
    format_units,
    ratio_bps,
    units_of,
)
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.bitcoin_watch import WatchedBlock
from sluice.ports.issuance import GuardFigures
from sluice.ports.reserves import ReadPoint, ReserveReading
from sluice.services.events import emit_all
from sluice.services.ingestion import connection_name
from sluice.services.issuance_settings import ISTSI_ID
from sluice.services.reserves_settings import ReservesContext, ReservesSettings

Clock = Callable[[], datetime]
RatioLevel = Literal["ok", "warning", "critical"]
LEVELS: tuple[RatioLevel, ...] = ("ok", "warning", "critical")

# The ledger node ``[ledger] node`` names when unset: ingestion's connection is
# "<treasury>@<node>", and its cursor is the token figures' read point.
LEDGER_NODE_DEFAULT = "exchange"
# How often the figures are read again when a cursor moved while they were read.
READ_ATTEMPTS = 3
ALERT_KIND = "reserve_ratio"
ALERT_ID_MAX = 700  # the alerts table's id column
HISTORY_LIMIT_MAX = 10_000

# The journal's breakdown of an instrument, in this order.
CUSTOMERS = "customers"
OTHER = "other"
TREASURY = "treasury"
BOOK_NAMES = (CUSTOMERS, SUSPENSE, COMPLIANCE_HOLD, IN_FLIGHT, FEES, OTHER)


@dataclass(frozen=True, slots=True)
class ReserveReport:
    """Every instrument's reading at one moment (iSTSi first, then tokens by key)."""

    taken_at: datetime
    readings: tuple[ReserveReading, ...]

    def of(self, instrument: str) -> ReserveReading | None:
        return next((r for r in self.readings if r.instrument == instrument), None)

    @property
    def istsi(self) -> ReserveReading | None:
        return next((r for r in self.readings if r.kind == "istsi"), None)


@dataclass(frozen=True, slots=True)
class Recorded:
    """What :func:`record` stored: the readings (with their ids) and the alerts it raised."""

    readings: list[ReserveReading]
    alerts: list[Alert] = field(default_factory=list)


# --- reading the figures -------------------------------------------------------------------------


def default_connection(treasury: str, node: str | None = None) -> str:
    """Ingestion's connection for the treasury on ``node`` (``[ledger] node``)."""
    return connection_name(treasury, node or LEDGER_NODE_DEFAULT)


def reserve_report(ctx: ReservesContext, *, connection: str | None = None) -> ReserveReport:
    """Every instrument's figures, read from the Integration DB in one read transaction.
    ``connection``: ingestion's connection whose cursor the journal is read at (default: the
    treasury's on the default ledger node)."""
    return read_report(
        ctx.uow,
        ctx.clock,
        istsi=ctx.istsi,
        connection=connection or default_connection(ctx.treasury),
    )


def read_report(
    uow_factory: UnitOfWorkFactory,
    clock: Clock,
    *,
    istsi: InstrumentId | None,
    connection: str,
) -> ReserveReport:
    """:func:`reserve_report` on its parts (for a process without a reserves context)."""
    with uow_factory() as uow:
        return report_in(uow, clock(), istsi=istsi, connection=connection)


def get_reserve_ratio(ctx: ReservesContext, *, connection: str | None = None) -> int | None:
    """iSTSi's reserve ratio in basis points (10000 = 100 %), rounded down; None when no iSTSi
    is issued (or this deployment has none)."""
    found = reserve_report(ctx, connection=connection).istsi
    return found.ratio_bps if found is not None else None


def report_in(
    uow: UnitOfWork, taken_at: datetime, *, istsi: InstrumentId | None, connection: str
) -> ReserveReport:
    """The report, read in ``uow``'s transaction (see the module's note on consistency)."""
    for _attempt in range(READ_ATTEMPTS):
        watched, ingested = _cursors(uow, connection)
        guard = uow.issuance.guard_figures()
        balances = uow.books.balances()
        after = _cursors(uow, connection)
        if after == (watched, ingested):
            break
        watched, ingested = after
    books = journal_books(balances)
    found = istsi or find_istsi(uow, taken_at)
    readings: list[ReserveReading] = []
    if found is not None or _any(guard):
        readings.append(
            istsi_reading(
                found.key() if found is not None else ISTSI_ID,
                guard,
                books.get(found, {}) if found is not None else {},
                watched,
                taken_at,
            )
        )
    for instrument in sorted(books, key=InstrumentId.key):
        if instrument != found:
            readings.append(token_reading(instrument.key(), books[instrument], ingested, taken_at))
    return ReserveReport(taken_at, tuple(readings))


def _cursors(uow: UnitOfWork, connection: str) -> tuple[WatchedBlock | None, Cursor | None]:
    return uow.btc_watch.cursor(), uow.ingestion.load_cursor(connection)


def _any(guard: GuardFigures) -> bool:
    return any((guard.supply, guard.reserves, guard.pending_redemptions, guard.pending_payouts))


def find_istsi(
    uow: UnitOfWork,
    at: datetime,
    *,
    instrument_id: str = ISTSI_ID,
    issuer_party: str | None = None,
) -> InstrumentId | None:
    """iSTSi when the caller does not know it: ``instrument_id`` of the issuer party of the
    contract addresses in force, else of ``issuer_party`` (``[issuance] issuer_party``), else the
    one onboarded instrument with that id (None when there is none or several)."""
    addresses = uow.issuance.contract_addresses(at)
    issuer = addresses.issuer_party if addresses is not None else None
    if issuer or issuer_party:
        return InstrumentId(issuer or issuer_party or "", instrument_id)
    named = [r.instrument for r in uow.reference.instruments() if r.instrument.id == instrument_id]
    return named[0] if len(named) == 1 else None


def journal_books(balances: Mapping[AccountRef, Decimal]) -> dict[InstrumentId, dict[str, Decimal]]:
    """Per instrument: the liability classes of :data:`BOOK_NAMES` and the treasury's assets."""
    books: dict[InstrumentId, dict[str, Decimal]] = {}
    for account, balance in balances.items():
        name = account.name
        if account.side == "asset":
            kind = TREASURY
        elif account.customer_id is not None:
            kind = CUSTOMERS
        elif name in (SUSPENSE, COMPLIANCE_HOLD, IN_FLIGHT, FEES):
            kind = name
        else:
            kind = OTHER
        book = books.setdefault(account.instrument, {})
        book[kind] = book.get(kind, ZERO) + balance
    return books


def istsi_reading(
    instrument: str,
    guard: GuardFigures,
    book: Mapping[str, Decimal],
    watched: WatchedBlock | None,
    taken_at: datetime,
) -> ReserveReading:
    backing = guard.reserves - guard.pending_redemptions - guard.pending_payouts
    figures = {
        "supply": guard.supply,
        "custody": guard.reserves,
        "pending_redemptions": guard.pending_redemptions,
        "pending_payouts": guard.pending_payouts,
        "backing": backing,
    }
    figures |= _book_units(book, ISTSI_DECIMALS)
    chain = (
        ReadPoint("chain", height=watched.height, block_hash=watched.hash)
        if watched is not None
        else ReadPoint("chain")
    )
    return ReserveReading(
        instrument=instrument,
        kind="istsi",
        supply_units=guard.supply,
        reserves_units=backing,
        ratio_bps=ratio_bps(backing, guard.supply),
        taken_at=taken_at,
        read_at={"supply": ReadPoint("db"), "reserves": chain},
        figures={name: format_units(units, ISTSI_DECIMALS) for name, units in figures.items()},
    )


def token_reading(
    instrument: str, book: Mapping[str, Decimal], cursor: Cursor | None, taken_at: datetime
) -> ReserveReading:
    units = _book_units(book, TOKEN_DECIMALS)
    owed = sum(units[name] for name in BOOK_NAMES)
    held = units[TREASURY]
    point = ReadPoint("ledger", offset=cursor.offset if cursor is not None else None)
    return ReserveReading(
        instrument=instrument,
        kind="token",
        supply_units=owed,
        reserves_units=held,
        ratio_bps=ratio_bps(held, owed),
        taken_at=taken_at,
        read_at={"supply": point, "reserves": point},
        figures={name: format_units(value, TOKEN_DECIMALS) for name, value in units.items()},
    )


def _book_units(book: Mapping[str, Decimal], decimals: int) -> dict[str, int]:
    return {name: units_of(book.get(name, ZERO), decimals) for name in (*BOOK_NAMES, TREASURY)}


# --- levels, readings and alerts -----------------------------------------------------------------


def decimals_of(reading: ReserveReading) -> int:
    return ISTSI_DECIMALS if reading.kind == "istsi" else TOKEN_DECIMALS


def ratio_level(reading: ReserveReading, settings: ReservesSettings) -> RatioLevel:
    """Where the ratio stands against the thresholds (nothing owed: ok)."""
    ratio = reading.ratio_bps
    if ratio is None:
        return "ok"
    if ratio < settings.ratio_critical_bps:
        return "critical"
    if reading.kind == "istsi" and ratio < settings.ratio_warning_bps:
        return "warning"
    return "ok"


def record_readings(ctx: ReservesContext, *, connection: str | None = None) -> list[ReserveReading]:
    """Read and store one reading per instrument, raising the threshold alerts (see the module);
    answers the readings with their ids."""
    return record(ctx, connection=connection).readings


def record(ctx: ReservesContext, *, connection: str | None = None) -> Recorded:
    """:func:`record_readings`, also answering the alerts raised."""
    taken_at = ctx.clock()
    with ctx.uow() as uow:
        report = report_in(
            uow,
            taken_at,
            istsi=ctx.istsi,
            connection=connection or default_connection(ctx.treasury),
        )
        latest = {r.instrument: r for r in uow.reserves.latest_readings()}
        stored: list[ReserveReading] = []
        alerts: list[Alert] = []
        for reading in report.readings:
            reading_id = uow.reserves.add_reading(reading)
            kept = replace(reading, id=reading_id)
            stored.append(kept)
            alert = crossing_alert(latest.get(reading.instrument), kept, ctx.settings)
            if alert is not None:
                alerts.append(alert)
        raised = [a for a in alerts if uow.reserves.add_alerts([a], taken_at)]
        emit_all(uow, [reading_event(r, ctx.settings) for r in stored])
        uow.commit()
    return Recorded(stored, raised)


def reading_event(reading: ReserveReading, settings: ReservesSettings) -> Event:
    """``reserve_updated`` for a stored reading (aggregate id the instrument's key): the
    figures as decimal strings, ``ratio_bps`` and the level it is at."""
    decimals = decimals_of(reading)
    return new_event(
        "reserve_updated",
        reading.instrument,
        {
            "reading_id": reading.id,
            "instrument": reading.instrument,
            "kind": reading.kind,
            "decimals": decimals,
            "supply_units": str(reading.supply_units),
            "supply": format_units(reading.supply_units, decimals),
            "reserves_units": str(reading.reserves_units),
            "reserves": format_units(reading.reserves_units, decimals),
            "ratio_bps": reading.ratio_bps,
            "level": ratio_level(reading, settings),
        },
        at=reading.taken_at,
    )


def crossing_alert(
    previous: ReserveReading | None, reading: ReserveReading, settings: ReservesSettings
) -> Alert | None:
    """The alert for ``reading`` when its level is worse than ``previous``'s (the instrument's
    reading before it; none: ok), else None."""
    level = ratio_level(reading, settings)
    before = ratio_level(previous, settings) if previous is not None else "ok"
    if level == "ok" or LEVELS.index(level) <= LEVELS.index(before):
        return None
    threshold = settings.ratio_critical_bps if level == "critical" else settings.ratio_warning_bps
    after = previous.id if previous is not None and previous.id is not None else 0
    ratio = reading.ratio_bps
    decimals = decimals_of(reading)
    return Alert(
        id=alert_id(reading.instrument, level, after),
        severity=level,
        kind=ALERT_KIND,
        message=(
            f"{reading.instrument}: reserve ratio {percent(ratio)} is below "
            f"{percent(threshold)} (reserves {format_units(reading.reserves_units, decimals)}, "
            f"owed {format_units(reading.supply_units, decimals)})"
        ),
        details={
            "instrument": reading.instrument,
            "level": level,
            "ratio_bps": str(ratio),
            "threshold_bps": str(threshold),
            "reading_id": str(reading.id),
            "previous_reading_id": str(after),
            "supply_units": str(reading.supply_units),
            "reserves_units": str(reading.reserves_units),
        },
    )


def alert_id(instrument: str, level: RatioLevel, after_reading: int) -> str:
    """``reserve-ratio:<level>:<reading before the crossing>:<instrument>`` (the instrument's
    SHA-256 when the key is too long for the alerts table)."""
    head = f"reserve-ratio:{level}:{after_reading}:"
    if len(head) + len(instrument) > ALERT_ID_MAX:
        instrument = "sha256-" + hashlib.sha256(instrument.encode()).hexdigest()
    return head + instrument


def percent(ratio: int | None) -> str:
    """A ratio in basis points as a percentage with two decimals ("100.00 %"); "n/a" for None."""
    if ratio is None:
        return "n/a"
    return f"{ratio // 100}.{ratio % 100:02d} %"


# --- history and instruments ---------------------------------------------------------------------


def reading_history(
    uow_factory: UnitOfWorkFactory,
    instrument: str | None = None,
    *,
    since: datetime | None = None,
    limit: int = 100,
) -> list[ReserveReading]:
    """Stored readings, newest first."""
    if not 1 <= limit <= HISTORY_LIMIT_MAX:
        raise InvalidInputError(f"limit must be between 1 and {HISTORY_LIMIT_MAX}")
    with uow_factory() as uow:
        return uow.reserves.readings(instrument, since=since, limit=limit)


def resolve_instrument(uow_factory: UnitOfWorkFactory, text: str) -> str:
    """An instrument's key from its key or a bare id that exactly one known instrument (read or
    onboarded) has."""
    if "@" in text:
        return text
    with uow_factory() as uow:
        known = {r.instrument for r in uow.reserves.latest_readings()}
        known |= {r.instrument.key() for r in uow.reference.instruments()}
    found = sorted(key for key in known if key == text or key.split("@", 1)[0] == text)
    if not found:
        raise NotFoundError(f"no instrument {text!r} (give its key, <id>@<admin>)")
    if len(found) > 1:
        raise InvalidInputError(f"{text!r} names {len(found)} instruments: {', '.join(found)}")
    return found[0]


# --- JSON ----------------------------------------------------------------------------------------


def reading_json(reading: ReserveReading, settings: ReservesSettings) -> dict[str, Any]:
    """A reading as the CLI's ``--json`` and the API answer it (keys: see the CLI module)."""
    decimals = decimals_of(reading)
    return {
        "id": reading.id,
        "instrument": reading.instrument,
        "kind": reading.kind,
        "decimals": decimals,
        "supply_units": str(reading.supply_units),
        "supply": format_units(reading.supply_units, decimals),
        "reserves_units": str(reading.reserves_units),
        "reserves": format_units(reading.reserves_units, decimals),
        "ratio_bps": reading.ratio_bps,
        "level": ratio_level(reading, settings),
        "read_at": {side: point.as_json() for side, point in sorted(reading.read_at.items())},
        "figures": dict(reading.figures),
        "taken_at": format_timestamp(reading.taken_at),
    }


def report_json(report: ReserveReport, settings: ReservesSettings) -> dict[str, Any]:
    return {
        "taken_at": format_timestamp(report.taken_at),
        "thresholds": {
            "warning_bps": settings.ratio_warning_bps,
            "critical_bps": settings.ratio_critical_bps,
            "full_bps": FULL_BPS,
        },
        "instruments": [reading_json(r, settings) for r in report.readings],
    }
