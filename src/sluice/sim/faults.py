"""The simulation's faults and crashes: what goes wrong around the exchange, and where its
processes die.

Before a step's action, with probability ``fault_rate``, the ledger is given one of
:data:`FAULTS`, drawn by weight: the next command commits but its response is lost; the next
commands fail; the next read is cut after a few items; the next read re-delivers from an older
offset; or the exchange's node is restored from a backup and re-learns what came after at new
offsets — the simulation then follows the runbook (``sluice ingest --from-record-time``): the
cursor moves to the node's offset for the last ingested record time, or a little earlier, and what
is read again is skipped by update id.

With ``late_commit_rate`` above zero, an injected fault is first, with that probability, a *late
commit* instead (drawn before the others, and only then, so runs without it keep their draws): the
treasury's next command is accepted, answered with a timeout and committed later — at the start
of a step, with probability :data:`LATE_DELIVERY_RATE` while one waits (the oldest first), and in
any case during the drain, after the workers have settled what they could — past its
``max_record_time`` if need be, or rejected then if one of its inputs was spent meanwhile.

With probability ``crash_rate`` the workers and ingestion are dropped and rebuilt from the DB;
crashes also strike inside them (:func:`crash_point`) — before a submission, between a submission
and its recording, around an accept or an offer withdrawal, after an ingestion batch — as a
:class:`Crash` the worker does not catch.

A new fault is one function taking the :class:`~sluice.sim.state.SimulationState` and one entry in
:data:`FAULTS`. The order of the entries is the draw's: a new one goes at the end (every seed then
draws differently from where a fault is injected, as with any new fault).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sluice.domain.ledger import Transfer
from sluice.ports import ChoiceContextData, FactoryChoice, InstructionChoice, LedgerCommands
from sluice.services.recovery import offset_for_record_time, rewind_cursor
from sluice.sim.state import SimulationState

# --- crashes ---------------------------------------------------------------------------------


class Crash(Exception):  # noqa: N818 - it is not an error: the simulated process dies
    """A simulated crash: the worker or ingestion that raises it is gone mid-work."""


def crash_point(sim: SimulationState, where: str) -> None:
    """Where a process may die: with probability ``crash_rate``, raise :class:`Crash`."""
    if sim.crash_rate and sim.rng.random() < sim.crash_rate:
        raise Crash(where)


class CrashingCommands:
    """The ledger commands, with crashes of the calling worker before a submission and around
    the exercise of an instruction choice (a crash after a submission is the worker's own
    ``after_submit`` hook)."""

    def __init__(self, inner: LedgerCommands, crash: Callable[[str], None]) -> None:
        self._inner = inner
        self._crash = crash

    def submit_transfer(
        self,
        transfer: Transfer,
        factory: FactoryChoice,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None,
    ) -> None:
        self._crash("before_submit")
        self._inner.submit_transfer(
            transfer,
            factory,
            act_as=act_as,
            command_id=command_id,
            max_record_time=max_record_time,
        )

    def exercise_instruction(
        self,
        choice: InstructionChoice,
        instruction_cid: str,
        context: ChoiceContextData,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None = None,
    ) -> None:
        self._crash(f"before_{choice}")
        self._inner.exercise_instruction(
            choice,
            instruction_cid,
            context,
            act_as=act_as,
            command_id=command_id,
            max_record_time=max_record_time,
        )
        self._crash(f"after_{choice}")


def crashing_commands(sim: SimulationState) -> LedgerCommands:
    """The exchange's ledger commands, with crash points around them."""
    return CrashingCommands(sim.sandbox.commands, lambda where: crash_point(sim, where))


# --- the ledger's faults ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fault:
    """A fault the ledger can be given: drawn with ``weight``; ``inject`` arms it (drawing its
    details from the simulation's random source)."""

    name: str
    weight: int
    inject: Callable[[SimulationState], None]


def lose_response(sim: SimulationState) -> None:
    sim.ledger.faults.drop_next_responses(1)


def fail_command(sim: SimulationState) -> None:
    sim.ledger.faults.fail_next_commands(sim.rng.randint(1, 3))


def cut_stream(sim: SimulationState) -> None:
    sim.ledger.faults.cut_stream_after(sim.rng.randint(0, 5), node=sim.sandbox.node)


def redeliver(sim: SimulationState) -> None:
    node = sim.sandbox.node
    sim.ledger.faults.redeliver_from(sim.rng.randint(0, sim.ledger.ledger_end(node)), node=node)


def restore_node(sim: SimulationState) -> None:
    """The exchange's node is restored from a backup a few offsets back (its offsets sometimes
    shifted); the operator then follows the runbook."""
    node = sim.sandbox.node
    end = sim.ledger.ledger_end(node)
    backup = max(0, end - sim.rng.randint(0, 40))
    sim.ledger.faults.restore_node_from_backup(
        node, backup, offset_shift=sim.rng.choice((0, 0, 3, 100))
    )
    follow_restore_runbook(sim)
    sim.dirty = True


def follow_restore_runbook(sim: SimulationState) -> None:
    """The runbook after a node restore: its offsets changed, record times did not, so move
    the cursor to the node's offset for the last ingested record time (sometimes a little
    earlier); what is read again is skipped by update id."""
    sandbox = sim.sandbox
    with sandbox.database.uow() as uow:
        cursor = uow.ingestion.load_cursor(sandbox.connection)
    if cursor is None or cursor.record_time is None:
        return
    since = cursor.record_time - timedelta(seconds=sim.rng.choice((0, 0, 30, 300)))
    treasury = sandbox.treasury
    offset = offset_for_record_time(sandbox.ledger_client(), treasury, since)
    sim.cursor_floor = sim.newest_ingested = None  # moving it back is the point
    rewind_cursor(
        sandbox.database.uow,
        sandbox.connection,
        treasury,
        offset=offset,
        record_time=sim.ledger.record_time_at(treasury, offset) if offset else None,
    )


FAULTS: tuple[Fault, ...] = (
    Fault("lose_response", 3, lose_response),
    Fault("fail_command", 3, fail_command),
    Fault("cut_stream", 2, cut_stream),
    Fault("redeliver", 2, redeliver),
    Fault("restore_node", 1, restore_node),
)


# The chance, at the start of a step, that the oldest command accepted late is delivered.
LATE_DELIVERY_RATE = 0.1


def late_commit(sim: SimulationState) -> None:
    """The treasury's next command commits late (see the module's docstring)."""
    sim.ledger.faults.late_commit_next(1, party=sim.sandbox.treasury)


LATE_COMMIT = Fault("late_commit", 0, late_commit)


def inject_fault(sim: SimulationState) -> None:
    """Give the ledger one fault: a late commit with probability ``late_commit_rate`` (drawn only
    when that is not zero), otherwise one drawn by weight from :data:`FAULTS`."""
    if sim.late_commit_rate and sim.rng.random() < sim.late_commit_rate:
        fault = LATE_COMMIT
    else:
        fault = sim.rng.choices(FAULTS, [fault.weight for fault in FAULTS])[0]
    fault.inject(sim)
    sim.result.faults += 1
    sim.result.outcomes[f"fault_{fault.name}"] += 1


def deliver_late_commits(sim: SimulationState, *, every: bool = False) -> None:
    """Commit (or reject) the oldest command accepted late, with probability
    :data:`LATE_DELIVERY_RATE` (drawn only while one waits), or all of them if ``every``."""
    faults = sim.ledger.faults
    if not faults.late_commits_pending():
        return
    if not every and sim.rng.random() >= LATE_DELIVERY_RATE:
        return
    for delivery in faults.deliver_late_commits(None if every else 1):
        outcome = "committed" if delivery.committed else "rejected"
        sim.result.outcomes[f"late_commit_{outcome}"] += 1
