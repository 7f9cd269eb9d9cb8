"""Proof-of-liabilities snapshots: customers' balances read from the journal at one moment, one
Merkle-sum tree per instrument (``sluice.por``), the published roots, and each customer's
inclusion proof afterwards (``docs/proof-of-reserves.md``).

What goes in a tree: every ``customer:<id>`` account of the instrument with a positive balance,
in the instrument's smallest unit (8 decimals for iSTSi, 10 for token-standard amounts). A zero
balance owes nothing and is left out (its customer gets no proof: nothing of theirs is owed); a
negative balance refuses the whole snapshot, since a tree cannot hold it and it means the books
are wrong. Suspense, in-flight amounts, holds and fees are not customers' balances: the reserves
side reports them.

The balances are read in ONE read transaction, so every tree of a snapshot is taken at the same
point of the journal; the trees are built outside it, and the snapshot, its roots and the
balances each tree was built from are written in one write transaction afterwards. A proof is
made later by rebuilding the tree from those stored balances and the operator's secret (the
construction is deterministic), never from the live journal. The secret keys every nonce and so
the order of the leaves: it is made once (32 random bytes, mode 0600) and must be backed up —
without it no proof of a past snapshot can be given again (:mod:`sluice.services.por_secret`
keeps it).
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import structlog

from sluice.domain.errors import (
    DuplicateOperationError,
    InvalidInputError,
    NotFoundError,
    SluiceError,
)
from sluice.domain.ledger import InstrumentId, format_timestamp
from sluice.domain.reserves import decimals_for, units_of
from sluice.por.documents import Root, decimals_of
from sluice.por.tree import IMPLEMENTATION, LiabilityTree, build_tree
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.reserves import PorSnapshot, PublishedRoot
from sluice.services.por_secret import PorSecretError, load_or_create_secret, load_secret
from sluice.services.reserves import find_istsi as find_booked_istsi
from sluice.services.reserves_settings import ReservesContext

log = structlog.get_logger("sluice.por")

# A snapshot id is hashed into every leaf as ``snapshot_id ‖ "/" ‖ instrument``: no "/" in it
# (and nothing but plain characters), so no two (snapshot, instrument) pairs hash alike.
SNAPSHOT_ID = re.compile(r"[A-Za-z0-9._:-]{1,100}")
# Trees with at least this many leaves are logged as they are built (each one takes seconds).
LARGE_TREE = 100_000
# Trees rebuilt for proofs kept in memory.
TREES_KEPT = 2


# --- taking a snapshot ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Liabilities:
    """One instrument's customer balances at the snapshot: (customer id, units), by customer id,
    positive balances only; ``zero`` counts the customers left out with a zero balance."""

    instrument: InstrumentId
    decimals: int
    balances: tuple[tuple[str, int], ...]
    zero: int

    @property
    def key(self) -> str:
        return self.instrument.key()

    @property
    def total_units(self) -> int:
        return sum(units for _, units in self.balances)


def take_snapshot(
    ctx: ReservesContext,
    *,
    instruments: Sequence[str] | None = None,
    snapshot_id: str | None = None,
) -> list[PublishedRoot]:
    """Snapshot customers' liabilities and publish one root per instrument (by key).

    ``instruments``: keys (or bare ids naming exactly one known instrument); None: every
    instrument onboarded or held by a customer. ``snapshot_id``: default ``por-<UTC time>``;
    an id used before is refused (DuplicateOperationError). A negative balance refuses the
    whole snapshot (InvalidInputError naming the customer and the instrument)."""
    secret = load_or_create_secret(ctx.secret_path)
    taken_at = ctx.clock().astimezone(UTC)
    snapshot_id = check_snapshot_id(snapshot_id or default_snapshot_id(taken_at))
    started = time.monotonic()
    from sluice.services.por_reserves import read_journal_offset, read_obligations

    with ctx.uow() as uow:
        if uow.reserves.snapshot(snapshot_id) is not None:  # refused before any tree is built
            raise DuplicateOperationError(f"a snapshot {snapshot_id} exists already")
        # The journal's offset (ingestion's cursor), read before and after the figures: the
        # treasury's holdings are read at it, so reserves and what is owed are of one moment.
        before = read_journal_offset(uow, ctx.connection)
        liabilities = read_liabilities(uow, ctx.istsi, instruments)
        # What else is owed, in the liabilities' own transaction (the reserves report's other
        # obligations: pending redemptions and payouts, suspense, holds, in flight, fees).
        obligations = read_obligations(uow, ctx.istsi)
        journal_offset = before if read_journal_offset(uow, ctx.connection) == before else None
    log.info(
        "por: liabilities read",
        snapshot_id=snapshot_id,
        instruments=len(liabilities),
        customers=sum(len(item.balances) for item in liabilities),
        seconds=round(time.monotonic() - started, 3),
    )
    trees = [_build(secret, snapshot_id, item) for item in liabilities]
    roots = [_published(tree.root(taken_at), taken_at) for tree in trees]
    _store(ctx.uow, snapshot_id, taken_at, liabilities, roots)
    _attach_reserves(ctx, snapshot_id, taken_at, liabilities, obligations, journal_offset)
    log.info(
        "por: snapshot published",
        snapshot_id=snapshot_id,
        roots=len(roots),
        seconds=round(time.monotonic() - started, 3),
    )
    return roots


def default_snapshot_id(taken_at: datetime) -> str:
    """``por-<UTC time to the microsecond>``, e.g. ``por-20261205T113013.123456Z``."""
    return "por-" + taken_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S.%fZ")


def check_snapshot_id(snapshot_id: str) -> str:
    if SNAPSHOT_ID.fullmatch(snapshot_id) is None:
        raise InvalidInputError(
            f"snapshot id {snapshot_id!r}: 1 to 100 of the characters A-Z a-z 0-9 . _ : -"
        )
    return snapshot_id


def find_istsi(
    uow_factory: UnitOfWorkFactory,
    at: datetime,
    instrument_id: str,
    issuer_party: str | None = None,
) -> InstrumentId | None:
    """Which instrument is iSTSi (its units are satoshis, 8 decimals) for a process without
    issuance wired: :func:`sluice.services.reserves.find_istsi` (the issuer of the contract
    addresses in force, the configured one, the one onboarded), else the one customers hold
    with that id; None when there is none. Several candidates are refused: counting iSTSi at
    10 decimals would publish totals a hundred times too large."""
    with uow_factory() as uow:
        found = find_booked_istsi(uow, at, instrument_id=instrument_id, issuer_party=issuer_party)
        if found is not None:
            return found
        candidates = sorted(
            {r.instrument for r in uow.reference.instruments() if r.instrument.id == instrument_id}
        )
        if not candidates:
            held = {account.instrument for account in uow.books.balances()}
            candidates = sorted(i for i in held if i.id == instrument_id)
    if len(candidates) > 1:
        raise InvalidInputError(
            f"several instruments are {instrument_id} ({', '.join(i.key() for i in candidates)}):"
            " set [issuance] issuer_party to say which one is iSTSi"
        )
    return candidates[0] if candidates else None


def read_liabilities(
    uow: UnitOfWork, istsi: InstrumentId | None, instruments: Sequence[str] | None
) -> list[Liabilities]:
    """Customers' balances per instrument, from one read of the journal's balances (call it
    inside one unit of work). Refuses the whole read when any balance is negative."""
    balances = uow.books.balances()
    known: dict[str, InstrumentId] = {
        record.instrument.key(): record.instrument for record in uow.reference.instruments()
    }
    if istsi is not None:
        known[istsi.key()] = istsi
    per_instrument: dict[str, list[tuple[str, Decimal]]] = {}
    for account, balance in balances.items():
        customer_id = account.customer_id
        if customer_id is None:
            continue
        known.setdefault(account.instrument.key(), account.instrument)
        per_instrument.setdefault(account.instrument.key(), []).append((customer_id, balance))
    keys = (
        sorted(known)
        if instruments is None
        else sorted({resolve_instrument(name, known) for name in instruments})
    )
    _check_non_negative({key: per_instrument.get(key, []) for key in keys})
    found = []
    for key in keys:
        instrument = known[key]
        decimals = decimals_for(instrument, istsi)
        rows = sorted(per_instrument.get(key, []))
        positive = tuple(
            (customer_id, _units(balance, decimals, customer_id, key))
            for customer_id, balance in rows
            if balance > 0
        )
        found.append(Liabilities(instrument, decimals, positive, len(rows) - len(positive)))
    return found


def _check_non_negative(balances: Mapping[str, Sequence[tuple[str, Decimal]]]) -> None:
    negative = sorted(
        (key, customer_id, balance)
        for key, rows in balances.items()
        for customer_id, balance in rows
        if balance < 0
    )
    if negative:
        key, customer_id, balance = negative[0]
        more = f" (and {len(negative) - 1} more)" if len(negative) > 1 else ""
        raise InvalidInputError(
            f"customer {customer_id} has a negative balance of {balance.normalize():f} {key}"
            f"{more}: a liabilities snapshot cannot hold it; fix the books first"
        )


def _units(balance: Decimal, decimals: int, customer_id: str, key: str) -> int:
    try:
        return units_of(balance, decimals)
    except InvalidInputError as exc:
        raise InvalidInputError(f"customer {customer_id}'s balance of {key}: {exc}") from exc


def resolve_instrument(name: str, known: Iterable[str]) -> str:
    """The instrument key ``name`` stands for among ``known``: the key itself, or a bare id
    naming exactly one of them."""
    keys = sorted(known)
    if name in keys:
        return name
    matching = [key for key in keys if key.startswith(f"{name}@")]
    if len(matching) == 1:
        return matching[0]
    if matching:
        raise InvalidInputError(
            f"instrument {name!r} names several instruments ({', '.join(matching)}): pass its key"
        )
    raise NotFoundError(
        f"no instrument {name!r} here (known: {', '.join(keys) or 'none'}); an instrument is "
        "named by its key <id>@<admin>"
    )


def _build(secret: bytes, snapshot_id: str, item: Liabilities) -> LiabilityTree:
    count = len(item.balances)
    if count >= LARGE_TREE:
        log.info(
            "por: building a tree",
            instrument=item.key,
            leaves=count,
            implementation=IMPLEMENTATION,
        )
    started = time.monotonic()
    customer_ids = [customer_id for customer_id, _ in item.balances]
    units = [amount for _, amount in item.balances]
    tree = build_tree(secret, snapshot_id, item.key, customer_ids, units, decimals=item.decimals)
    log.info(
        "por: tree built",
        instrument=item.key,
        leaves=count,
        depth=tree.built.depth,
        seconds=round(time.monotonic() - started, 3),
    )
    return tree


def _published(root: Root, taken_at: datetime) -> PublishedRoot:
    return PublishedRoot(
        snapshot_id=root.snapshot_id,
        instrument=root.instrument,
        root_hash=root.root_hash.hex(),
        total_units=root.total_units,
        total=root.total,
        leaf_count=root.leaf_count,
        depth=root.depth,
        taken_at=taken_at,
    )


def _liabilities_report(liabilities: Sequence[Liabilities]) -> dict[str, Any]:
    return {
        "liabilities": {
            item.key: {
                "decimals": item.decimals,
                "customers": len(item.balances),
                "zero_balances_left_out": item.zero,
                "total_units": str(item.total_units),
            }
            for item in liabilities
        }
    }


def _store(
    uow_factory: UnitOfWorkFactory,
    snapshot_id: str,
    taken_at: datetime,
    liabilities: Sequence[Liabilities],
    roots: Sequence[PublishedRoot],
) -> None:
    started = time.monotonic()
    with uow_factory() as uow:
        snapshot = PorSnapshot(
            id=snapshot_id,
            taken_at=taken_at,
            instruments=tuple(item.key for item in liabilities),
            report=_liabilities_report(liabilities),
        )
        if not uow.reserves.add_snapshot(snapshot):
            raise DuplicateOperationError(f"a snapshot {snapshot_id} exists already")
        for root, item in zip(roots, liabilities, strict=True):
            uow.reserves.add_root(root)
            uow.reserves.add_leaves(snapshot_id, item.key, item.balances)
        uow.commit()
    log.info(
        "por: snapshot stored",
        snapshot_id=snapshot_id,
        leaves=sum(len(item.balances) for item in liabilities),
        seconds=round(time.monotonic() - started, 3),
    )


def _attach_reserves(
    ctx: ReservesContext,
    snapshot_id: str,
    taken_at: datetime,
    liabilities: Sequence[Liabilities],
    obligations: Mapping[str, Mapping[str, int]],
    journal_offset: int | None,
) -> None:
    """The reserves side of the snapshot (what backs each instrument, read from the sources
    this process has, signed, against these liabilities and obligations, read at the journal's
    ``journal_offset``), stored with it. The liabilities are
    published whatever happens here: a reserves document that cannot be made is logged."""
    from sluice.services.por_reserves import reserves_document, store_reserves

    owed = {item.key: item.total_units for item in liabilities}
    try:
        document = reserves_document(
            ctx, snapshot_id, taken_at, owed, obligations, journal_offset=journal_offset
        )
        store_reserves(ctx, snapshot_id, document)
    except SluiceError as exc:
        log.warning(
            "por: the snapshot is published without its reserves document",
            snapshot_id=snapshot_id,
            error=f"{exc.code} {exc.error}: {exc}",
        )
        return
    log.info("por: reserves document stored", snapshot_id=snapshot_id)


# --- reading a snapshot back ----------------------------------------------------------------------


def root_json(root: PublishedRoot) -> dict[str, Any]:
    """The issue's root JSON, field for field, exactly as ``sluice por verify`` reads it."""
    return Root(
        snapshot_id=root.snapshot_id,
        instrument=root.instrument,
        root_hash=bytes.fromhex(root.root_hash),
        total_units=root.total_units,
        total=root.total,
        leaf_count=root.leaf_count,
        depth=root.depth,
        taken_at=format_timestamp(root.taken_at),
    ).as_json()


def snapshot_json(snapshot: PorSnapshot) -> dict[str, Any]:
    """A snapshot in the history: its id, time, instruments, report and whether its reserves
    document is stored."""
    return {
        "id": snapshot.id,
        "taken_at": format_timestamp(snapshot.taken_at),
        "instruments": list(snapshot.instruments),
        "report": dict(snapshot.report),
        "has_reserves": snapshot.reserves is not None,
    }


def _snapshot(uow: UnitOfWork, snapshot_id: str | None) -> PorSnapshot:
    if snapshot_id is None:
        found = uow.reserves.latest_snapshot()
        if found is None:
            raise NotFoundError("no proof-of-liabilities snapshot has been taken yet")
        return found
    found = uow.reserves.snapshot(snapshot_id)
    if found is None:
        raise NotFoundError(f"no proof-of-liabilities snapshot {snapshot_id}")
    return found


def published_roots(
    uow_factory: UnitOfWorkFactory, snapshot_id: str | None = None
) -> list[dict[str, Any]]:
    """The published roots of a snapshot (the latest by default), by instrument."""
    with uow_factory() as uow:
        snapshot = _snapshot(uow, snapshot_id)
        roots = uow.reserves.roots(snapshot.id)
    return [root_json(root) for root in roots]


def snapshot_history(uow_factory: UnitOfWorkFactory, *, limit: int = 100) -> list[dict[str, Any]]:
    """The snapshots taken, newest first."""
    with uow_factory() as uow:
        return [snapshot_json(snapshot) for snapshot in uow.reserves.snapshots(limit=limit)]


def reserves_of(uow_factory: UnitOfWorkFactory, snapshot_id: str) -> dict[str, Any]:
    """The reserves document stored with a snapshot (NotFound when none was stored)."""
    with uow_factory() as uow:
        snapshot = _snapshot(uow, snapshot_id)
    if snapshot.reserves is None:
        raise NotFoundError(f"snapshot {snapshot.id} has no reserves document")
    return dict(snapshot.reserves)


# --- a customer's proof ------------------------------------------------------------------------


# The last few trees rebuilt for proofs, by (snapshot, instrument, secret digest): a snapshot
# never changes, so they stay right.
TreeKey = tuple[str, str, str, bytes]  # snapshot, instrument, root hash, secret digest
_trees: OrderedDict[TreeKey, LiabilityTree] = OrderedDict()
_trees_lock = threading.Lock()
_rebuilding = threading.Lock()


def _cached(key: TreeKey) -> LiabilityTree | None:
    with _trees_lock:
        tree = _trees.get(key)
        if tree is not None:
            _trees.move_to_end(key)
        return tree


def _keep(key: TreeKey, tree: LiabilityTree) -> None:
    with _trees_lock:
        _trees[key] = tree
        while len(_trees) > TREES_KEPT:
            _trees.popitem(last=False)


def customer_proof(
    ctx: ReservesContext, customer_id: str, instrument: str, snapshot_id: str | None = None
) -> dict[str, Any]:
    """The customer's inclusion proof in a snapshot (the latest by default), as the issue's
    proof JSON. NotFound when the snapshot, the instrument or the customer's leaf is not there
    (a customer whose balance was zero has no leaf)."""
    return inclusion_proof(
        ctx.uow, lambda: load_secret(ctx.secret_path), customer_id, instrument, snapshot_id
    )


def inclusion_proof(
    uow_factory: UnitOfWorkFactory,
    secret_of: Callable[[], bytes],
    customer_id: str,
    instrument: str,
    snapshot_id: str | None = None,
) -> dict[str, Any]:
    """:func:`customer_proof` with the secret asked for only once the leaf is known to exist
    (``secret_of`` may refuse: a process without the secret still answers NotFound first)."""
    with uow_factory() as uow:
        snapshot = _snapshot(uow, snapshot_id)
        key = resolve_instrument(instrument, snapshot.instruments)
        if uow.reserves.leaf(snapshot.id, key, customer_id) is None:
            raise NotFoundError(
                f"customer {customer_id} has no balance of {key} in snapshot {snapshot.id}"
            )
        root = next((r for r in uow.reserves.roots(snapshot.id) if r.instrument == key), None)
        if root is None:
            raise NotFoundError(f"snapshot {snapshot.id} has no root for {key}")
        secret = secret_of()
        # Keyed by the published root as well: a snapshot id seen again in another database
        # (a restore, another simulation in this process) must not get the old tree.
        cache_key = (snapshot.id, key, root.root_hash, hashlib.sha256(secret).digest())
        tree = _cached(cache_key)
        if tree is None:
            leaves = uow.reserves.leaves(snapshot.id, key)
    if tree is None:
        # One rebuild at a time: concurrent requests for a cold tree wait for the first one
        # instead of each holding a tree of millions of leaves.
        with _rebuilding:
            tree = _cached(cache_key)
            if tree is None:
                tree = _rebuild(secret, root, leaves)
                _keep(cache_key, tree)
    return tree.proof(customer_id).as_json()


def _rebuild(
    secret: bytes, root: PublishedRoot, leaves: Sequence[tuple[str, int]]
) -> LiabilityTree:
    """The tree of a published root, rebuilt from its stored balances; refused unless it gives
    the published root exactly (another secret, or altered balances, would not)."""
    decimals = decimals_of(root.total, root.total_units)
    tree = build_tree(
        secret,
        root.snapshot_id,
        root.instrument,
        [customer_id for customer_id, _ in leaves],
        [units for _, units in leaves],
        decimals=max(decimals if decimals is not None else 0, 0),
    )
    built = tree.built
    if (built.root_hash.hex(), built.total_units, built.leaf_count) != (
        root.root_hash,
        root.total_units,
        root.leaf_count,
    ):
        raise PorSecretError(
            f"the stored balances of {root.instrument} in snapshot {root.snapshot_id} and this "
            "proof-of-liabilities secret do not rebuild the published root: the secret is not "
            "the one the snapshot was taken with (restore it from the backup)"
        )
    return tree
