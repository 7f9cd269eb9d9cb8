"""The reserves side of a proof-of-reserves snapshot: what backs each instrument, read from the
sources themselves, signed by the custody keys, and set against the snapshot's liabilities.

* **Bitcoin** (backing iSTSi): the custody's unspent outputs in the node's UTXO set at one block
  (``scantxoutset`` over the custody descriptor, each branch from index 0 to the highest index
  issued plus ``scan_gap``), grouped by address with each address's branch and index, so a
  verifier derives every address from the published descriptor and counts no one else's coins.
* **Canton tokens**: the treasury's holdings per instrument from the ledger's active contracts at
  one offset, contract by contract: the journal's offset (ingestion's cursor when the liabilities
  and the other obligations were read) when the reader answers earlier offsets (a participant);
  else the ledger's end (the embedded ledger), and when that end is not the journal's offset
  the holdings and what is owed are of different moments — a withdrawal paid on the ledger and
  not yet ingested is gone from the holdings but still in flight in the journal — so each token
  report's cover is stated as undetermined (``null``, with the reason), never as false or true.
* **Reports**: per instrument, reserves against what is owed: the snapshot's liabilities (the
  customers' balances in the tree) plus the other obligations the reserves also answer for, read
  from the Integration DB (:func:`read_obligations`): for iSTSi, redemptions burned and not yet
  paid, other custody payouts not yet paid and deposits confirmed but not yet minted; for every
  instrument, its journal's suspense, in-flight withdrawals, compliance holds, fees and any other
  non-customer liability. ``reserves_cover_liabilities`` and the ratio in basis points are against
  that sum, so coins already owed to someone outside the tree never read as covering it.

The whole document (everything but ``digest`` and ``signatures``) is hashed in canonical JSON and
the digest signed by every custody key this process holds (:func:`reserves_document`). A source
this process does not have, or could not read, is stated as not read with the reason, never left
out. :mod:`sluice.services.por_reserves_verify` checks a document with nothing else; the
canonical JSON and the digest both sides compute are here.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, cast

from sluice.domain.amounts import ZERO
from sluice.domain.chains import Chain
from sluice.domain.errors import InvalidInputError, SluiceError
from sluice.domain.journal import COMPLIANCE_HOLD, FEES, IN_FLIGHT, SUSPENSE
from sluice.domain.ledger import InstrumentId
from sluice.domain.reserves import (
    ISTSI_DECIMALS,
    TOKEN_DECIMALS,
    decimals_for,
    format_units,
    ratio_bps,
    units_of,
)
from sluice.ports import LedgerReadError, UnitOfWork
from sluice.ports.bitcoin import BitcoinNodeError, CustodyWallet, DigestSigner
from sluice.services.reserve_sources import (
    CustodyScan,
    LedgerHoldings,
    ScannedOutput,
    read_ledger_holdings,
    read_ledger_holdings_at,
    reads_at_offset,
    scan_custody,
)
from sluice.services.reserves import OTHER, journal_books
from sluice.services.reserves_settings import ReservesContext

__all__ = [
    "FORMAT",
    "DocumentError",
    "canonical_json",
    "custody_ranges",
    "document_digest",
    "read_journal_offset",
    "read_obligations",
    "reserves_document",
    "store_reserves",
]

BRANCHES = (0, 1)  # 0: deposits (K/0/*), 1: change (K/1/*)
FORMAT = "sluice-reserves/3"
UNSIGNED_FIELDS = ("digest", "signatures")  # what the digest does not cover
# iSTSi's obligations besides its journal's: outflows and inflows of Bitcoin not in the tree.
PENDING_REDEMPTIONS = "pending_redemptions"
PENDING_PAYOUTS = "pending_payouts"
DEPOSITS_UNMINTED = "deposits_unminted"
# Every instrument's journal classes owed to someone other than a customer's balance.
JOURNAL_OBLIGATIONS = (SUSPENSE, IN_FLIGHT, COMPLIANCE_HOLD, FEES, OTHER)

Obligations = Mapping[str, Mapping[str, int]]  # instrument key → {what: units}


class DocumentError(ValueError):
    """The document is not of the published shape (the message says where)."""


# --- canonical JSON and the digest ----------------------------------------------------------------


def canonical_json(value: Any) -> bytes:
    """UTF-8 JSON, object keys sorted, no whitespace between tokens, non-ASCII characters written
    as themselves, integers in plain decimal; floats are refused (the document has none). For a
    document of strings, integers, booleans, null, arrays and objects with ASCII keys this is
    RFC 8785 (JCS)."""
    _check_no_floats(value, "$")
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode(
        "utf-8"
    )


def _check_no_floats(value: Any, where: str) -> None:
    if isinstance(value, float | Decimal):
        raise DocumentError(f"{where}: a fractional number; the document has integers only")
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str):
                raise DocumentError(f"{where}: a non-text key")
            _check_no_floats(item, f"{where}.{key}")
    elif isinstance(value, list | tuple):
        for position, item in enumerate(value):
            _check_no_floats(item, f"{where}[{position}]")


def document_digest(document: Mapping[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of ``document`` without ``digest`` and ``signatures``."""
    content = {k: v for k, v in document.items() if k not in UNSIGNED_FIELDS}
    return hashlib.sha256(canonical_json(content)).digest()


def timestamp(value: datetime) -> str:
    """``taken_at`` as the published roots write it: UTC, ISO 8601, ``Z``."""
    if value.tzinfo is None:
        raise InvalidInputError("taken_at must be timezone-aware")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def reserves_document(
    ctx: ReservesContext,
    snapshot_id: str,
    taken_at: datetime,
    liabilities: Mapping[str, int],
    obligations: Obligations | None = None,
    *,
    journal_offset: int | None = None,
) -> dict[str, Any]:
    """The reserves document of snapshot ``snapshot_id``: the Bitcoin part, the Canton part and
    a report per instrument against ``liabilities`` (units owed to customers, by instrument key)
    plus ``obligations`` (the other units owed, by instrument key and kind), with its digest and
    the custody keys' signatures. Reads the node and the ledger now.

    ``journal_offset`` is ingestion's cursor when the liabilities and obligations were read (in
    one transaction: :func:`read_journal_offset`); None: not known, and the token reports' cover
    is then undetermined. When ``obligations`` is not given, they and the journal's offset are
    read now, together (the given ``journal_offset`` is then not used)."""
    for instrument, units in liabilities.items():
        _check_units(units, f"liabilities of {instrument}")
    if obligations is None:
        with ctx.uow() as uow:
            before = read_journal_offset(uow, ctx.connection)
            obligations = read_obligations(uow, ctx.istsi)
            after = read_journal_offset(uow, ctx.connection)
        journal_offset = before if before == after else None
    for instrument, kinds in obligations.items():
        for kind, units in kinds.items():
            _check_units(units, f"obligations of {instrument} ({kind})")
    istsi = ctx.istsi.key() if ctx.istsi is not None else None
    bitcoin = _bitcoin_part(ctx, istsi)
    canton = _canton_part(ctx, journal_offset)
    content: dict[str, Any] = {
        "format": FORMAT,
        "snapshot_id": snapshot_id,
        "taken_at": timestamp(taken_at),
        "bitcoin": bitcoin,
        "canton": canton,
        "reports": _reports(bitcoin, canton, istsi, liabilities, obligations),
    }
    digest = document_digest(content)
    return content | {"digest": digest.hex(), "signatures": _signatures(ctx.wallet, digest)}


def _check_units(units: Any, where: str) -> None:
    if isinstance(units, bool) or not isinstance(units, int) or units < 0:
        raise InvalidInputError(f"{where}: {units!r} is not units ≥ 0")


def read_journal_offset(uow: UnitOfWork, connection: str | None) -> int | None:
    """The offset the journal is at: ingestion's cursor on ``connection`` (the treasury's node),
    read in ``uow``'s transaction; None when the connection is not known or nothing is ingested
    yet. On PostgreSQL each statement reads its own snapshot: read it before and after the
    figures, and take it only when both agree (no batch was ingested in between)."""
    if connection is None:
        return None
    cursor = uow.ingestion.load_cursor(connection)
    return cursor.offset if cursor is not None else None


def read_obligations(uow: UnitOfWork, istsi: InstrumentId | None) -> dict[str, dict[str, int]]:
    """What each instrument's reserves answer for besides the customers' balances in the tree,
    in units, read in ``uow``'s transaction (with the liabilities, when the caller reads them in
    the same one). From the journal (:func:`sluice.services.reserves.journal_books`), for every
    instrument: its suspense, in-flight withdrawals (customers already debited), compliance
    holds, fees and any other non-customer liability. For iSTSi, from the mint guard's figures:
    redemptions burned and not yet paid and other custody payouts not yet paid (Bitcoin the
    custody still holds and owes to the payee), and the deposits confirmed and not yet minted
    (Bitcoin in custody owed as iSTSi not issued yet, or to be returned: the guard's
    ``unminted_deposits``, the figure an operator's payout is held to). A negative journal
    balance is no asset: it counts as 0. Every instrument the journal or iSTSi names is listed,
    kinds with 0 too."""
    books = journal_books(uow.books.balances())
    found: dict[str, dict[str, int]] = {}
    for instrument, book in books.items():
        decimals = decimals_for(instrument, istsi)
        found[instrument.key()] = {
            kind: max(units_of(book.get(kind, ZERO), decimals), 0) for kind in JOURNAL_OBLIGATIONS
        }
    if istsi is not None:
        # The guard's own figures, so that the document owes exactly what a custody payout is
        # held to (sluice.services.btc_payouts): a deposit not minted is owed until it is minted
        # (then in the supply) or its return payout requested (then a pending payout).
        guard = uow.issuance.guard_figures()
        kinds = found.setdefault(istsi.key(), dict.fromkeys(JOURNAL_OBLIGATIONS, 0))
        kinds |= {
            PENDING_REDEMPTIONS: guard.pending_redemptions,
            PENDING_PAYOUTS: guard.pending_payouts,
            DEPOSITS_UNMINTED: guard.unminted_deposits,
        }
    return found


def store_reserves(ctx: ReservesContext, snapshot_id: str, document: Mapping[str, Any]) -> None:
    """Keep ``document`` with its snapshot, and its per-instrument reports (by instrument key)
    under ``reserves`` in the snapshot's report, beside what the report already holds."""
    reports = {str(r["instrument"]): dict(r) for r in document.get("reports", ())}
    with ctx.uow() as uow:
        snapshot = uow.reserves.snapshot(snapshot_id)
        if snapshot is None:
            raise InvalidInputError(f"no snapshot {snapshot_id!r}")
        report = dict(snapshot.report) | {"reserves": reports}
        uow.reserves.set_snapshot_report(snapshot_id, report, dict(document))
        uow.commit()


# --- Bitcoin ------------------------------------------------------------------------------------


def custody_ranges(ctx: ReservesContext) -> dict[int, int]:
    """Per branch, the last index to scan: the highest index issued plus ``scan_gap``."""
    with ctx.uow() as uow:
        issued = {branch: uow.btc_watch.next_index(branch) - 1 for branch in BRANCHES}
    return {branch: max(top + ctx.settings.scan_gap, 0) for branch, top in issued.items()}


def _bitcoin_part(ctx: ReservesContext, istsi: str | None) -> dict[str, Any]:
    wallet = ctx.wallet
    if wallet is None:
        return _no_custody(istsi, "no custody in this process")
    chain = getattr(wallet, "chain", None)
    if not isinstance(chain, Chain):
        return _no_custody(istsi, "the custody wallet names no chain")
    part: dict[str, Any] = {
        "instrument": istsi,
        "chain": chain.name,
        "descriptor": wallet.descriptor,
        "threshold": _threshold_of(wallet.descriptor),
    }
    if ctx.node is None:
        return part | {"read": False, "reason": "no Bitcoin node in this process"}
    try:
        scan = scan_custody(
            ctx.node, wallet, custody_ranges(ctx), timeout_s=ctx.settings.scan_timeout_s
        )
        addresses = _addresses(wallet, scan)
    except (BitcoinNodeError, InvalidInputError) as exc:
        return part | {"read": False, "reason": f"the custody could not be scanned: {exc}"}
    return part | {
        "read": True,
        "height": scan.height,
        "block_hash": scan.block_hash,
        "ranges": [
            {"branch": branch, "last_index": top} for branch, top in sorted(scan.ranges.items())
        ],
        "addresses": addresses,
        "total_sats": scan.total_sats,
    }


def _no_custody(istsi: str | None, reason: str) -> dict[str, Any]:
    return {"read": False, "reason": reason, "instrument": istsi, "descriptor": None}


def _threshold_of(descriptor: str) -> int:
    """``m`` of the descriptor's ``sortedmulti(m,…)``."""
    head = descriptor.partition("sortedmulti(")[2].partition(",")[0]
    if not head.isdigit():
        raise InvalidInputError("the custody descriptor is not a sortedmulti descriptor")
    return int(head)


def _addresses(wallet: CustodyWallet, scan: CustodyScan) -> list[dict[str, Any]]:
    """The scanned outputs grouped by address, each with its branch and index (found by deriving
    the scanned ranges until every output's script is placed), by branch and index."""
    by_script: dict[str, list[ScannedOutput]] = {}
    for output in scan.outputs:
        by_script.setdefault(output.script_hex, []).append(output)
    placed: dict[str, tuple[int, int, str]] = {}
    for branch, top in sorted(scan.ranges.items()):
        for index in range(top + 1):
            if len(placed) == len(by_script):
                break
            derived = wallet.derive(branch, index)
            if derived.script_hex in by_script:
                placed[derived.script_hex] = (branch, index, derived.address)
    missing = sorted(set(by_script) - set(placed))
    if missing:
        raise InvalidInputError(f"outputs to scripts outside the scanned ranges: {missing[:3]}")
    addresses = []
    for script_hex, (branch, index, address) in sorted(placed.items(), key=lambda i: i[1][:2]):
        outputs = by_script[script_hex]
        if wallet.address_of(script_hex) != address:
            raise InvalidInputError(f"the wallet names two addresses for script {script_hex}")
        addresses.append(
            {
                "address": address,
                "script_hex": script_hex,
                "branch": branch,
                "index": index,
                "balance_sats": sum(o.amount_sats for o in outputs),
                "outputs": [
                    {
                        "txid": o.txid,
                        "vout": o.vout,
                        "amount_sats": o.amount_sats,
                        "height": o.height,
                    }
                    for o in outputs
                ],
            }
        )
    return addresses


def _signatures(wallet: CustodyWallet | None, digest: bytes) -> list[dict[str, str]]:
    """One signature per custody key held, by xpub; none from a process that holds no key."""
    if wallet is None or not hasattr(wallet, "sign_digest"):
        return []
    pairs = cast("DigestSigner", wallet).sign_digest(digest)
    return [{"xpub": xpub, "signature": signature} for xpub, signature in sorted(pairs)]


# --- Canton --------------------------------------------------------------------------------------


def _canton_part(ctx: ReservesContext, journal_offset: int | None) -> dict[str, Any]:
    """The treasury's holdings at the journal's offset when the reader answers earlier offsets
    and the offset is known, else at the ledger's end; ``offset`` is where they were read,
    ``journal_offset`` where the journal (the liabilities and obligations) is."""
    if ctx.ledger is None:
        return {"read": False, "reason": "no ledger reader in this process", "party": ctx.treasury}
    at_journal = journal_offset is not None and reads_at_offset(ctx.ledger)
    try:
        read: LedgerHoldings
        if at_journal and journal_offset is not None:
            try:
                read = read_ledger_holdings_at(ctx.ledger, ctx.treasury, journal_offset)
            except (LedgerReadError, SluiceError):
                # The offset is not served (pruned, or a served embedded ledger, which answers
                # at its end and at offsets the party saw a transaction at): read at the end;
                # the covers are undetermined unless that end is the journal's offset.
                at_journal = False
                read = read_ledger_holdings(ctx.ledger, ctx.treasury)
        else:
            read = read_ledger_holdings(ctx.ledger, ctx.treasury)
    except (LedgerReadError, SluiceError) as exc:
        return {
            "read": False,
            "reason": f"the ledger could not be read: {exc}",
            "party": ctx.treasury,
        }
    return {
        "read": True,
        "party": read.party,
        "read_mode": "at_journal_offset" if at_journal else "at_ledger_end",
        "offset": read.offset,
        "journal_offset": journal_offset,
        "instruments": _holdings_json(ctx, read),
    }


def _holdings_json(ctx: ReservesContext, read: LedgerHoldings) -> list[dict[str, Any]]:
    instruments = []
    for instrument in sorted(read.totals(), key=InstrumentId.key):
        decimals = decimals_for(instrument, ctx.istsi)
        contracts: list[dict[str, Any]] = []
        total = 0
        for holding in read.of(instrument):
            units = units_of(holding.amount, decimals)
            total += units
            contracts.append(
                {
                    "contract_id": holding.contract_id,
                    "units": str(units),
                    "amount": format_units(units, decimals),
                    "locked": holding.lock is not None,
                }
            )
        instruments.append(
            {
                "instrument": instrument.key(),
                "decimals": decimals,
                "contracts": contracts,
                "total_units": str(total),
                "total": format_units(total, decimals),
            }
        )
    return instruments


def canton_undetermined(canton: Mapping[str, Any]) -> str | None:
    """Why the Canton part's holdings cannot be set against the journal's figures (read at
    another offset than the journal's, or the journal's offset not known), or None when they
    can (or the ledger was not read: then there are no reserves to set against anything). The
    verifier asks the same of the document."""
    if canton.get("read") is not True:
        return None
    offset, journal = canton.get("offset"), canton.get("journal_offset")
    if journal is None:
        return (
            f"the ledger was read at offset {offset}, the journal's offset (where the "
            "liabilities and other obligations were read) is not known: cover undetermined"
        )
    if offset != journal:
        return (
            f"the ledger was read at offset {offset}, the liabilities and other obligations at "
            f"the journal's offset {journal}: of different moments, cover undetermined"
        )
    return None


# --- reports -------------------------------------------------------------------------------------


def _reports(
    bitcoin: Mapping[str, Any],
    canton: Mapping[str, Any],
    istsi: str | None,
    liabilities: Mapping[str, int],
    obligations: Obligations,
) -> list[dict[str, Any]]:
    held = {i["instrument"]: i for i in canton.get("instruments", ())}
    undetermined = canton_undetermined(canton)
    keys = set(liabilities) | set(held) | ({istsi} if istsi is not None else set())
    reports = []
    for key in sorted(keys):
        decimals = ISTSI_DECIMALS if key == istsi else TOKEN_DECIMALS
        why_undetermined = None
        if key == istsi:
            source, part = "bitcoin", bitcoin
            reserves = int(bitcoin["total_sats"]) if bitcoin.get("read") else None
        else:
            source, part = "canton", canton
            reserves = int(held[key]["total_units"]) if key in held else 0
            if not canton.get("read"):
                reserves = None
            if key in held:
                decimals = int(held[key]["decimals"])
            why_undetermined = undetermined
        owed = owed_fields(
            liabilities.get(key, 0),
            obligations.get(key, {}),
            decimals,
            reserves,
            determined=why_undetermined is None,
        )
        reports.append(
            {
                "instrument": key,
                "reserves_source": source,
                "decimals": decimals,
                "reserves_read": reserves is not None,
                "reason": why_undetermined if reserves is not None else part.get("reason"),
                "reserves_units": str(reserves) if reserves is not None else None,
                "reserves": format_units(reserves, decimals) if reserves is not None else None,
            }
            | owed
        )
    return reports


def owed_fields(
    liabilities: int,
    obligations: Mapping[str, int],
    decimals: int,
    reserves: int | None,
    *,
    determined: bool = True,
) -> dict[str, Any]:
    """A report's figures of what is owed, and the cover flag and ratio of ``reserves`` against
    their sum (both None when the reserves were not read, or were read at another moment than
    what is owed: not ``determined``): the verifier recomputes them with this same function from
    the document's numbers."""
    other = sum(obligations.values())
    owed = liabilities + other
    if not determined:
        reserves = None
    ratio = ratio_bps(reserves, owed) if reserves is not None else None
    return {
        "liabilities_units": str(liabilities),
        "liabilities": format_units(liabilities, decimals),
        "other_obligations": {kind: str(units) for kind, units in sorted(obligations.items())},
        "other_obligations_units": str(other),
        "owed_units": str(owed),
        "owed": format_units(owed, decimals),
        "reserves_cover_liabilities": reserves >= owed if reserves is not None else None,
        "ratio_bps": str(ratio) if ratio is not None else None,
    }
