"""The embedded world ``sluice serve`` runs on without a configured ledger: the ledger file,
created with the sandbox's world on the first start, its treasury party, and its clock, which
follows the wall clock.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import structlog

from sluice import bootstrap
from sluice.domain.audit import AuditEntry
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import check_party_id
from sluice.ledger.local import EmbeddedLedger
from sluice.ports import UnitOfWorkFactory
from sluice.sandbox import EXCHANGE_NODE, create_world, onboard_world
from sluice.server.loop import _wall_clock

log = structlog.get_logger("sluice.server")

# Where the treasury party of an embedded world is remembered (the DB's control table).
TREASURY_KEY = "treasury_party"
# The seed of the embedded world: party ids follow from it, so a world rebuilt after a crash in
# the middle of its creation has the same ids as the one the DB may already name.
WORLD_SEED = 1
WORLD_CHECKPOINT_INTERVAL_S = 30.0
# How far an embedded ledger's clock may fall behind the wall clock before it is moved.
CLOCK_STEP_S = 2.0


@dataclass
class EmbeddedWorld:
    """An embedded ledger opened for writing, and the treasury party sluice acts for on it."""

    ledger: EmbeddedLedger
    path: Path
    treasury: str
    created: bool


def prepare_embedded_world(
    ledger_path: Path,
    database: bootstrap.Database,
    *,
    node: str = EXCHANGE_NODE,
    treasury: str | None = None,
    create: bool = True,
    actor: str = "sluice serve",
) -> EmbeddedWorld:
    """Open the embedded ledger at ``ledger_path`` for writing, creating it with the sandbox's
    world when there is none and ``create`` allows it, and settle which party is the treasury.

    A new world is built in ``<file>.new``, onboarded in the DB (Amulet: direct, USDX: offers)
    with its treasury recorded under ``treasury_party`` in the control table (audited), and only
    then renamed into place: a crash half-way leaves no ledger file, and the next start builds the
    same world again (its party ids follow from a fixed seed; onboarding is idempotent).

    The treasury of an existing file is, in this order: ``treasury`` (the configuration's), the one
    recorded in the DB, or the only ``treasury::…`` party on ``node`` (then recorded)."""
    created = False
    if not ledger_path.exists():
        if not create:
            raise InvalidInputError(
                f"no embedded ledger at {ledger_path} (check ledger.path / --ledger, or leave "
                "them out to have one created under the data directory)"
            )
        _create_world_file(ledger_path, database, actor=actor)
        created = True
    ledger = EmbeddedLedger.open(str(ledger_path))
    try:
        party = _settle_treasury(ledger, database.uow, node, treasury, actor=actor)
    except BaseException:
        ledger.close()
        raise
    return EmbeddedWorld(ledger=ledger, path=ledger_path, treasury=party, created=created)


def _create_world_file(path: Path, database: bootstrap.Database, *, actor: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    building = path.with_name(path.name + ".new")
    for leftover in (building, *(building.with_name(building.name + s) for s in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    ledger = EmbeddedLedger.open(
        str(building),
        seed=WORLD_SEED,
        start_time=_wall_clock(),
        checkpoint_interval_s=WORLD_CHECKPOINT_INTERVAL_S,
    )
    try:
        world = create_world(ledger)
    finally:
        ledger.close()
    onboard_world(database.uow, world)
    _record_treasury(database.uow, world.treasury, actor=actor, how="created")
    os.replace(building, path)
    log.info("embedded world created", ledger=str(path), treasury=world.treasury)


def _settle_treasury(
    ledger: EmbeddedLedger,
    uow: UnitOfWorkFactory,
    node: str,
    configured: str | None,
    *,
    actor: str,
) -> str:
    if node not in ledger.nodes():
        raise InvalidInputError(f"the embedded ledger has no node {node!r} (ledger.node)")
    with uow() as work:
        recorded = work.withdrawals.control(TREASURY_KEY)
    if configured is not None:
        party = check_party_id(configured)
    elif recorded:
        party = recorded
    else:
        candidates = [p for p in ledger.parties(node) if p.split("::", 1)[0] == "treasury"]
        if len(candidates) != 1:
            raise InvalidInputError(
                f"cannot tell the treasury party on node {node!r} ({len(candidates)} parties "
                "named treasury): set treasury.party (or SLUICE_TREASURY_PARTY)"
            )
        party = candidates[0]
    if party not in ledger.parties(node):
        raise InvalidInputError(f"the treasury {party} is not a party on node {node!r}")
    if recorded != party and configured is None:
        _record_treasury(uow, party, actor=actor, how="found on the ledger")
    return party


def _record_treasury(uow: UnitOfWorkFactory, party: str, *, actor: str, how: str) -> None:
    """Remember the embedded world's treasury (audited); nothing happens if it is recorded."""
    at = _wall_clock()
    with uow() as work:
        previous = work.withdrawals.control(TREASURY_KEY)
        if previous == party:
            return
        work.withdrawals.set_control(TREASURY_KEY, party)
        work.audit.append(
            [
                AuditEntry(
                    operation_id=f"treasury:{party}",
                    operation="treasury_recorded",
                    actor=actor,
                    recorded_at=at,
                    parameters={"treasury": party, "how": how},
                    state_changes=[{"treasury_party": party, "was": previous}],
                )
            ]
        )
        work.commit()


class FollowedClock:
    """The clock of an embedded ledger that follows the wall clock: each round the loop moves the
    ledger's time up to now (:meth:`follow`), so record times, deadlines and time locks mean what
    they say. The ledger journals every move, so it is moved only once it is ``step_s`` behind.
    Reading it (:meth:`__call__`, from any thread) never touches the ledger: it is the later of
    the wall clock and the ledger time seen last, for a ledger that was ahead."""

    def __init__(
        self,
        ledger: EmbeddedLedger,
        wall: Callable[[], datetime] = _wall_clock,
        *,
        step_s: float = CLOCK_STEP_S,
    ) -> None:
        self._ledger = ledger
        self._wall = wall
        self._step = timedelta(seconds=step_s)
        self._ledger_time = ledger.time()

    def follow(self) -> None:
        now = self._wall()
        if now - self._ledger.time() >= self._step:
            self._ledger.set_time(now)
        self._ledger_time = self._ledger.time()

    def __call__(self) -> datetime:
        return max(self._wall(), self._ledger_time)
