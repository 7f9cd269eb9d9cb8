"""Checking a reserves document's Canton part and its per-instrument reports (the rest of the
verification is :mod:`sluice.services.por_reserves_verify`), and the small shape checks both use.

Which instrument Bitcoin backs is never taken from the document when the caller pins it
(``istsi``, published with the custody descriptor): a document whose Bitcoin part names another
instrument, or that reports the pinned instrument's reserves as anything but the custody's
Bitcoin (for example the treasury's own holdings of that very token, which are customers' tokens
in custody and would "cover" any liabilities), is refused. A report's other obligations are the
operator's own statement; the cover flag and the ratio are recomputed against the liabilities
plus them, with the same function the document was made with.

A token report whose Canton holdings were read at another ledger offset than the journal's (the
embedded ledger answers at its end only, and ingestion may trail it) states its cover and ratio
as ``null`` with the reason: the verifier recomputes that too and shows the cover as
``undetermined`` — neither covered nor a false document.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sluice.domain.reserves import ISTSI_DECIMALS, UNITS_LIMIT, format_units
from sluice.por.documents import Root
from sluice.services.por_reserves import DocumentError, canton_undetermined, owed_fields

_HEX64 = re.compile(r"[0-9a-f]{64}")
_UNITS = re.compile(r"0|[1-9][0-9]{0,38}")  # below 2^127, which has 39 digits
_MAX_ITEMS = 1_000_000  # a bound on the work one document can ask for
COVERAGE_FIELDS = (
    "instrument",
    "reserves_source",
    "reserves_units",
    "liabilities_units",
    "other_obligations_units",
    "owed_units",
    "reserves_cover_liabilities",
    "ratio_bps",
    "reason",
)
# What the verifier shows of each report's cover (the ``cover`` coverage field).
COVERED, NOT_COVERED, UNDETERMINED, NOT_READ = "covered", "not_covered", "undetermined", "not_read"
READ_MODES = ("at_journal_offset", "at_ledger_end")
# A report's fields that only a read source fills.
_READ_ONLY_FIELDS = (
    "reserves_units",
    "reserves",
    "reserves_cover_liabilities",
    "ratio_bps",
)
# A report's fields that follow from its liabilities and other obligations.
_OWED_FIELDS = (
    "liabilities",
    "other_obligations_units",
    "owed_units",
    "owed",
)
OBLIGATIONS_NOTE = (
    "other obligations are the operator's own statement (read from its database): nothing here "
    "checks them; they are added to the liabilities, so they can only lower a ratio"
)


@dataclass
class Findings:
    """What a verification found: ``reasons`` make it invalid, ``notes`` do not."""

    reasons: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def integer(value: Any, where: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DocumentError(f"{where} is not an integer ≥ {minimum}")
    return value


def hex64(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise DocumentError(f"{where} is not 64 lower-case hex digits")
    return value


def units(value: Any, where: str) -> int:
    if not isinstance(value, str) or not _UNITS.fullmatch(value) or int(value) >= UNITS_LIMIT:
        raise DocumentError(f"{where} is not a decimal string of units below 2^127")
    return int(value)


def items(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list) or len(value) > _MAX_ITEMS:
        raise DocumentError(f"{where} is not a list (of at most {_MAX_ITEMS})")
    return value


def coverage(reports: Any) -> tuple[Mapping[str, Any], ...]:
    """What the document reports per instrument (:data:`COVERAGE_FIELDS`), with ``cover``:
    ``covered``, ``not_covered``, ``undetermined`` (reserves read, but at another moment than
    what is owed) or ``not_read``."""
    if not isinstance(reports, list):
        return ()
    return tuple(
        {name: report.get(name) for name in COVERAGE_FIELDS} | {"cover": cover_state(report)}
        for report in reports
        if isinstance(report, Mapping)
    )


def cover_state(report: Mapping[str, Any]) -> str:
    """A report's cover in one word (see :func:`coverage`)."""
    if report.get("reserves_read") is not True:
        return NOT_READ
    covered = report.get("reserves_cover_liabilities")
    if covered is None:
        return UNDETERMINED
    return COVERED if covered is True else NOT_COVERED


def check_canton(canton: Mapping[str, Any], found: Findings) -> dict[str, int] | None:
    """Each instrument's total units after checking them against the contracts; None when the
    ledger was not read."""
    if canton.get("read") is not True:
        found.notes.append(f"the ledger was not read: {canton.get('reason') or 'not stated'}")
        return None
    offset = integer(canton.get("offset"), "canton.offset")
    journal = canton.get("journal_offset")
    if journal is not None:
        integer(journal, "canton.journal_offset")
    mode = canton.get("read_mode")
    if mode not in READ_MODES:
        raise DocumentError(f"canton.read_mode {mode!r} is not one of {', '.join(READ_MODES)}")
    if mode == "at_journal_offset" and offset != journal:
        found.reasons.append(
            f"canton.read_mode says the ledger was read at the journal's offset, but offset "
            f"{offset} is not journal_offset {journal!r}"
        )
    why = canton_undetermined(canton)
    if why is not None:
        found.notes.append(f"the Canton reports' cover is undetermined: {why}")
    totals: dict[str, int] = {}
    contract_ids: set[str] = set()
    for number, item in enumerate(items(canton.get("instruments"), "canton.instruments")):
        where = f"canton.instruments[{number}]"
        if not isinstance(item, Mapping) or not isinstance(item.get("instrument"), str):
            raise DocumentError(f"{where} is not an object naming its instrument")
        instrument = str(item["instrument"])
        decimals = integer(item.get("decimals"), f"{where}.decimals")
        total = 0
        for position, contract in enumerate(items(item.get("contracts"), f"{where}.contracts")):
            at = f"{where}.contracts[{position}]"
            if not isinstance(contract, Mapping) or not isinstance(
                contract.get("contract_id"), str
            ):
                raise DocumentError(f"{at} is not an object with a contract_id")
            if contract["contract_id"] in contract_ids:
                found.reasons.append(f"{at}: contract {contract['contract_id']} listed twice")
            contract_ids.add(contract["contract_id"])
            amount = units(contract.get("units"), f"{at}.units")
            if contract.get("amount") != format_units(amount, decimals):
                found.reasons.append(f"{at}: amount {contract.get('amount')!r} is not its units")
            total += amount
        if units(item.get("total_units"), f"{where}.total_units") != total:
            found.reasons.append(f"{where}: total_units is not the sum of its contracts ({total})")
        if item.get("total") != format_units(total, decimals):
            found.reasons.append(f"{where}: total {item.get('total')!r} is not its total_units")
        if instrument in totals:
            found.reasons.append(f"{where}: {instrument} is listed twice")
        totals[instrument] = total
    return totals


def custody_instrument(bitcoin: Mapping[str, Any], istsi: str | None, found: Findings) -> Any:
    """The instrument the custody's Bitcoin backs: the pinned ``istsi`` (the document's Bitcoin
    part must name it), else what the document says (noted as not pinned)."""
    named = bitcoin.get("instrument")
    if istsi is None:
        found.notes.append(
            "the Bitcoin-backed instrument was not pinned (--istsi): which instrument the "
            f"custody backs ({named!r}) is the document's own word"
        )
        return named
    if named != istsi:
        found.reasons.append(
            f"bitcoin.instrument is {named!r}, not the pinned Bitcoin-backed instrument {istsi}"
        )
    return istsi


def check_reports(
    reports: Any,
    bitcoin: Mapping[str, Any],
    bitcoin_total: int | None,
    canton_totals: Mapping[str, int] | None,
    found: Findings,
    *,
    istsi: str | None = None,
    canton: Mapping[str, Any] | None = None,
) -> None:
    """Every report's reserves follow from the parts, its owed figures from its liabilities and
    other obligations, its cover flag and ratio from both (``null`` for a Canton report when
    ``canton``, the document's Canton part, was read at another offset than the journal's);
    every instrument with reserves (and the Bitcoin-backed one) has a report."""
    backed = custody_instrument(bitcoin, istsi, found)
    undetermined = canton_undetermined(canton) if isinstance(canton, Mapping) else None
    seen: set[str] = set()
    expected = set(canton_totals or ()) | ({backed} if isinstance(backed, str) else set())
    any_obligations = False
    for number, report in enumerate(items(reports, "reports")):
        where = f"reports[{number}]"
        if not isinstance(report, Mapping) or not isinstance(report.get("instrument"), str):
            raise DocumentError(f"{where} is not an object naming its instrument")
        instrument = str(report["instrument"])
        if instrument in seen:
            found.reasons.append(f"{where}: {instrument} is reported twice")
        seen.add(instrument)
        if instrument == backed:
            source, reserves = "bitcoin", bitcoin_total
        else:
            source = "canton"
            reserves = canton_totals.get(instrument, 0) if canton_totals is not None else None
        if report.get("reserves_source") != source:
            found.reasons.append(
                f"{where}: {instrument}'s reserves are on {source}, not "
                f"{report.get('reserves_source')!r}"
            )
        decimals = integer(report.get("decimals"), f"{where}.decimals")
        if source == "bitcoin" and decimals != ISTSI_DECIMALS:
            found.reasons.append(
                f"{where}: {instrument} is counted in satoshis: decimals must be "
                f"{ISTSI_DECIMALS}, not {decimals}"
            )
        determined = source != "canton" or undetermined is None
        any_obligations |= _check_owed(report, where, decimals, reserves, found, determined)
        if reserves is not None and not determined and not report.get("reason"):
            found.reasons.append(f"{where}: states no reason its cover is undetermined")
        if report.get("reserves_read") is not (reserves is not None):
            found.reasons.append(f"{where}: reserves_read does not say whether {source} was read")
        if reserves is None:
            if any(report.get(k) is not None for k in _READ_ONLY_FIELDS):
                found.reasons.append(f"{where}: states reserves its source does not give")
            continue
        if report.get("reserves") != format_units(reserves, decimals):
            found.reasons.append(f"{where}: reserves is not its reserves_units")
        stated = report.get("reserves_units")
        if stated is None or units(stated, f"{where}.reserves_units") != reserves:
            found.reasons.append(
                f"{where}: reserves_units {stated!r} is not the {source} total ({reserves})"
            )
    for instrument in sorted(expected - seen):
        found.reasons.append(f"{instrument} has reserves in the document but no report")
    if any_obligations:
        found.notes.append(OBLIGATIONS_NOTE)


def _check_owed(
    report: Mapping[str, Any],
    where: str,
    decimals: int,
    reserves: int | None,
    found: Findings,
    determined: bool,
) -> bool:
    """The report's owed figures, cover flag and ratio recomputed from its liabilities and other
    obligations (cover and ratio null when not ``determined``); answers whether it states any
    obligation above 0."""
    liabilities = units(report.get("liabilities_units"), f"{where}.liabilities_units")
    stated = report.get("other_obligations")
    if not isinstance(stated, Mapping):
        raise DocumentError(f"{where}.other_obligations is not an object")
    obligations = {
        str(kind): units(value, f"{where}.other_obligations.{kind}")
        for kind, value in stated.items()
    }
    expected = owed_fields(liabilities, obligations, decimals, reserves, determined=determined)
    for name in _OWED_FIELDS:
        if report.get(name) != expected[name]:
            found.reasons.append(
                f"{where}: {name} {report.get(name)!r} is not {expected[name]!r} (its "
                "liabilities plus other obligations)"
            )
    if reserves is not None:
        if report.get("reserves_cover_liabilities") is not expected["reserves_cover_liabilities"]:
            found.reasons.append(
                f"{where}: reserves_cover_liabilities is wrong (reserves against liabilities "
                "plus other obligations, null when read at another moment than the journal)"
            )
        if report.get("ratio_bps") != expected["ratio_bps"]:
            found.reasons.append(
                f"{where}: ratio_bps {report.get('ratio_bps')!r} is not {expected['ratio_bps']}"
            )
    return any(obligations.values())


def check_roots(document: Mapping[str, Any], roots: Sequence[Root], found: Findings) -> None:
    """Each report's liabilities are its instrument's published root total in this snapshot,
    and each root of this snapshot has its report."""
    snapshot_id = document.get("snapshot_id")
    published = {r.instrument: r for r in roots if r.snapshot_id == snapshot_id}
    if not published:
        found.reasons.append(f"no root given is of snapshot {snapshot_id!r}")
        return
    reported = {str(r["instrument"]): r for r in document["reports"]}
    for instrument, root in sorted(published.items()):
        report = reported.get(instrument)
        if report is None:
            found.reasons.append(f"{instrument} has a published root but no report")
        elif report.get("liabilities_units") != str(root.total_units):
            found.reasons.append(
                f"{instrument}: liabilities_units {report.get('liabilities_units')!r} is not the "
                f"published root's total_units {root.total_units}"
            )
    for instrument, report in sorted(reported.items()):
        if instrument not in published and report.get("liabilities_units") != "0":
            found.reasons.append(f"{instrument}: liabilities reported without a published root")
