"""The independent reads the reserves side is built on: the treasury's holdings from the ledger's
own active contracts, and the custody's unspent outputs from the node's UTXO set.

Neither reads what ingestion or the deposit watcher stored: reconciliation compares these reads
with the Integration DB, and a proof of reserves publishes them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import ZERO
from sluice.domain.chains import to_sats
from sluice.domain.errors import InvalidInputError
from sluice.domain.history.choices import HOLDING_INTERFACE, qualified_name
from sluice.domain.history.fields import _holding, _view_value
from sluice.domain.ledger import Holding, InstrumentId
from sluice.domain.reserves import exact_sum
from sluice.ports import ActiveContractsReader, LedgerReadError
from sluice.ports.bitcoin import (
    BitcoinNode,
    BitcoinNodeError,
    CustodyWallet,
    JsonObject,
    NodeRejectedError,
    NodeUnavailableError,
)

# --- the ledger ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LedgerHoldings:
    """A party's holdings as the ledger lists its active contracts at ``offset``."""

    party: str
    offset: int
    holdings: tuple[Holding, ...]

    def totals(self) -> dict[InstrumentId, Decimal]:
        """Per instrument, the sum of the party's holdings (locked ones included: they are
        still the party's until a transfer archives them). Exact at any size: a sum that would
        need rounding raises :class:`InvalidInputError` rather than lose digits."""
        amounts: dict[InstrumentId, list[Decimal]] = {}
        for holding in self.holdings:
            amounts.setdefault(holding.instrument, []).append(holding.amount)
        return {instrument: exact_sum(found, ZERO) for instrument, found in amounts.items()}

    def of(self, instrument: InstrumentId) -> list[Holding]:
        return sorted(
            (h for h in self.holdings if h.instrument == instrument), key=lambda h: h.contract_id
        )


def holdings_in(items: Iterable[Mapping[str, Any]], owner: str) -> list[Holding]:
    """The token-standard holdings ``owner`` owns among ``JsGetActiveContractsResponse`` items
    (contracts whose Holding interface view names another owner, and other contracts, are left
    out). Raises :class:`LedgerReadError` (not retryable) on an item of the wrong shape."""
    found: list[Holding] = []
    for position, item in enumerate(items):
        entry = item.get("contractEntry")
        if not isinstance(entry, Mapping):
            continue
        active = entry.get("JsActiveContract")
        if not isinstance(active, Mapping):
            continue  # incomplete reassignments and the like: not an active contract here
        event = active.get("createdEvent")
        if not isinstance(event, Mapping):
            raise LedgerReadError(
                f"active contract {position}: no createdEvent object", retryable=False
            )
        for view in event.get("interfaceViews") or ():
            try:
                if qualified_name(str(view.get("interfaceId", ""))) != HOLDING_INTERFACE:
                    continue
                value = _view_value(view, "")
                if value is None:
                    continue
                holding = _holding(str(event.get("contractId", "")), value, "viewValue.")
            except (ValueError, TypeError, AttributeError) as exc:
                raise LedgerReadError(
                    f"active contract {position}: its Holding view cannot be read: {exc}",
                    retryable=False,
                ) from exc
            if holding.owner == owner:
                found.append(holding)
    return found


def read_ledger_holdings(reader: ActiveContractsReader, party: str) -> LedgerHoldings:
    """``party``'s holdings read from the ledger's active contracts, with the offset they are
    as of. The embedded ledger answers its end and the contracts together; a participant is
    asked for its end first and then for the active contracts at exactly that offset."""
    at_end = getattr(reader, "active_contracts_at_end", None)
    if at_end is not None:
        offset, items = at_end(party)
    else:
        offset = reader.ledger_end()
        items = reader.active_contracts(party, offset) if offset > 0 else []
    return LedgerHoldings(party, offset, tuple(holdings_in(items, party)))


def reads_at_offset(reader: ActiveContractsReader) -> bool:
    """Whether ``reader`` answers the active contracts at an earlier offset: a participant does
    (within its pruning window); the embedded ledger's node client answers at its end only (it
    keeps no archived contracts) and says so by offering ``active_contracts_at_end``."""
    return getattr(reader, "active_contracts_at_end", None) is None


def read_ledger_holdings_at(
    reader: ActiveContractsReader, party: str, offset: int
) -> LedgerHoldings:
    """``party``'s holdings as the ledger's active contracts were at ``offset`` (0: none yet),
    for a reader that answers earlier offsets (:func:`reads_at_offset`)."""
    items = reader.active_contracts(party, offset) if offset > 0 else []
    return LedgerHoldings(party, offset, tuple(holdings_in(items, party)))


# --- the Bitcoin node ----------------------------------------------------------------------------

# How long a custody scan may take when the caller names no time and the node names none
# (``[reserves] scan_timeout_s``): ``scantxoutset`` walks the whole UTXO set, minutes on mainnet.
SCAN_TIMEOUT_S = 600.0
# How often a node busy with another scan is asked again.
SCAN_POLL_S = 2.0
# Bitcoin Core answers a scan started while another runs with -8 "Scan already in progress".
_SCAN_IN_PROGRESS_CODE = -8
# One scan at a time in this process: the node runs one at a time anyway, and a second would
# only be refused (the serve loop, `POST /v1/reserves/reconcile` and a snapshot can meet).
_SCAN_LOCK = threading.Lock()


@dataclass(frozen=True, slots=True)
class ScannedOutput:
    txid: str
    vout: int
    script_hex: str
    amount_sats: int
    height: int

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True, slots=True)
class CustodyScan:
    """The custody's unspent outputs in the node's UTXO set at one block (height and hash), over
    the descriptor's branches up to the given index on each."""

    height: int
    block_hash: str
    outputs: tuple[ScannedOutput, ...]
    ranges: Mapping[int, int]  # branch → the highest index scanned

    @property
    def total_sats(self) -> int:
        return sum(o.amount_sats for o in self.outputs)


def scan_custody(
    node: BitcoinNode,
    wallet: CustodyWallet,
    ranges: Mapping[int, int],
    *,
    timeout_s: float | None = None,
) -> CustodyScan:
    """``scantxoutset`` over the custody descriptor: each branch from index 0 to ``ranges[b]``
    (a gap past the highest index issued is the caller's choice). The node scans its UTXO set at
    its tip, which it reports with the result.

    The whole call takes at most ``timeout_s`` (None: the node's own ``scan_timeout_s`` when it
    has one, else :data:`SCAN_TIMEOUT_S`), after which :class:`NodeUnavailableError` is raised:
    waiting for another scan of this process to end (one at a time), waiting while the node is
    busy with a scan of another process (asked again every :data:`SCAN_POLL_S`), and the scan
    itself, which a node that takes a timeout per scan (``scan_utxo_set``) is given as what is
    left of that time, and which is never retried."""
    if not ranges:
        raise InvalidInputError("nothing to scan: no branch given")
    descriptor_of = getattr(wallet, "descriptor_of_branch", None)
    if descriptor_of is None:
        raise InvalidInputError("this custody wallet cannot name its branch descriptors")
    request: list[str | dict[str, Any]] = [
        {"desc": descriptor_of(branch), "range": [0, max(top, 0)]}
        for branch, top in sorted(ranges.items())
    ]
    budget = _scan_budget(node, timeout_s)
    deadline = time.monotonic() + budget
    if not _SCAN_LOCK.acquire(timeout=budget):
        raise NodeUnavailableError(
            f"another custody scan of this process did not end within {budget:g} s"
        )
    try:
        answer = _scan_when_free(node, request, deadline, budget)
    finally:
        _SCAN_LOCK.release()
    if answer.get("success") is False:
        raise BitcoinNodeError("the node's scantxoutset did not succeed")
    outputs = tuple(
        sorted(
            (
                ScannedOutput(
                    txid=str(u["txid"]),
                    vout=int(u["vout"]),
                    script_hex=str(u["scriptPubKey"]),
                    amount_sats=to_sats(Decimal(str(u["amount"]))),
                    height=int(u.get("height", 0)),
                )
                for u in _unspents(answer)
            ),
            key=lambda o: (o.txid, o.vout),
        )
    )
    return CustodyScan(
        height=int(answer["height"]),
        block_hash=str(answer["bestblock"]),
        outputs=outputs,
        ranges=dict(ranges),
    )


def _scan_budget(node: BitcoinNode, timeout_s: float | None) -> float:
    if timeout_s is None:
        timeout_s = getattr(node, "scan_timeout_s", None) or SCAN_TIMEOUT_S
    if not timeout_s > 0:
        raise InvalidInputError(f"a scan timeout must be positive, not {timeout_s}")
    return float(timeout_s)


def _scan_when_free(
    node: BitcoinNode, request: list[str | JsonObject], deadline: float, budget: float
) -> JsonObject:
    """The node's scan, asked again while the node answers that another one is in progress."""
    scan_within = getattr(node, "scan_utxo_set", None)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise NodeUnavailableError(
                f"the node was busy with another UTXO scan for the whole {budget:g} s allowed"
            )
        try:
            if scan_within is not None:
                answer: JsonObject = scan_within(request, timeout_s=left)
                return answer
            return node.scantxoutset(request)
        except NodeRejectedError as error:
            if not scan_in_progress(error):
                raise
        time.sleep(min(SCAN_POLL_S, max(deadline - time.monotonic(), 0)))


def scan_in_progress(error: BitcoinNodeError) -> bool:
    """Whether the node refused a scan because another one is running on it."""
    return error.code == _SCAN_IN_PROGRESS_CODE and "in progress" in str(error).lower()


def _unspents(answer: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    unspents = answer.get("unspents")
    if not isinstance(unspents, list):
        raise BitcoinNodeError("scantxoutset answered no unspents list")
    return unspents
