"""Fault injection for the embedded ledger, reachable as ``ledger.faults``.

Each fault imitates something a real participant node does to its clients:

* **lost response** (:meth:`Faults.drop_next_responses`): the command commits, the caller gets
  :class:`~sluice.ledger.local.engine.ResponseLostError` instead of the result — the update exists
  and shows up in the stream; a retry with the same command id is deduplicated.
* **late commit** (:meth:`Faults.late_commit_next`): the command is accepted, its caller gets
  :class:`~sluice.ledger.local.engine.CommandTimeoutError` (the node did not answer in time), and
  it commits only when :meth:`Faults.deliver_late_commits` says so — at the record time of that
  moment, whatever its ``max_record_time``, the way a node commits a local party's command that
  carries none. Its inputs are checked then as for any command: if one was archived meanwhile, it
  is rejected and nothing commits. A resubmission under the same command id that committed first
  makes it a duplicate.
* **failed command** (:meth:`Faults.fail_next_commands`, :meth:`Faults.fail_commands_randomly`):
  the command is rejected before anything commits
  (:class:`~sluice.ledger.local.engine.InjectedFailureError`).
* **stalled stream** (:meth:`Faults.stall_stream`): reads stop at the offset where the stall began
  and end there as if nothing newer existed, until :meth:`Faults.resume_stream`.
* **cut stream** (:meth:`Faults.cut_stream_after`, :meth:`Faults.fail_reads_randomly`): the
  ``updates()`` iterator raises :class:`sluice.ports.LedgerReadError` part-way; what it yielded
  before stands.
* **re-delivery** (:meth:`Faults.redeliver_from`): the next read starts at an older offset, so
  the reader sees updates it has already seen.
* **restore from backup** (:meth:`Faults.restore_node_from_backup`): the node forgets what came
  after the backup and learns it again from the synchronizer at new offsets (update ids and
  record times do not change).
* **major upgrade** (:meth:`Faults.major_upgrade`): the node's offsets restart from 1 and its old
  history is gone from its stream.

The transient faults live only in memory (a command accepted late is lost with the process, as if
the node had dropped it); restores and upgrades change the node for good and are persisted like
any other ledger event. Random faults draw from a generator seeded from the
ledger's seed, so a run is reproducible.
"""

from __future__ import annotations

import random
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .engine import EmbeddedLedger


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """How one ``updates()`` call is disturbed."""

    start_after: int | None = None
    stall_at: int | None = None
    cut_after: int | None = None
    failure_rate: float = 0.0


@dataclass(frozen=True, slots=True)
class LateCommand:
    """A command accepted under the late-commit fault, waiting to be delivered: ``prepare``
    builds its update record at the record time of delivery (or raises its rejection)."""

    act_as: tuple[str, ...]
    command_id: str
    prepare: Callable[[datetime], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class LateDelivery:
    """What delivering one late command did: committed as ``update_id``, or rejected with
    ``error`` (an input archived meanwhile, a duplicate, ...)."""

    command_id: str
    act_as: tuple[str, ...]
    update_id: str | None = None
    error: str | None = None

    @property
    def committed(self) -> bool:
        return self.update_id is not None


_ALL_NODES = ""


class Faults:
    def __init__(self, ledger: EmbeddedLedger, seed: int) -> None:
        # A proxy, not a reference: the ledger owns its faults, not the other way round, so a
        # dropped ledger is collected (and flushed) at once.
        self._ledger = weakref.proxy(ledger)
        self._random = random.Random(f"sluice-faults:{seed}")
        self._responses_to_drop = 0
        self._commands_to_fail: list[str] = []
        self._command_failure_rate = 0.0
        self._late_to_take: list[str | None] = []  # the party each late commit waits for
        self._late: list[LateCommand] = []
        self._stalls: dict[str, int] = {}
        self._cuts: dict[str, list[int]] = {}
        self._redeliveries: dict[str, int] = {}
        self._read_failure_rate = 0.0

    # --- commands ------------------------------------------------------------------------------

    def drop_next_responses(self, count: int = 1) -> None:
        """The next ``count`` commands that commit raise ``ResponseLostError`` to their caller."""
        _check_count(count)
        self._responses_to_drop += count

    def late_commit_next(self, count: int = 1, *, party: str | None = None) -> None:
        """The next ``count`` commands (of ``party`` among their submitters, any if None; not
        those refused at once as failed or duplicates) are accepted, answered with
        ``CommandTimeoutError``, and commit only when delivered."""
        _check_count(count)
        self._late_to_take.extend([party] * count)

    def late_commits_pending(self) -> list[str]:
        """The command ids accepted late and not delivered yet, oldest first."""
        return [command.command_id for command in self._late]

    def deliver_late_commits(self, count: int | None = None) -> list[LateDelivery]:
        """Commit (or reject) the oldest ``count`` commands accepted late (all if None), one
        after the other, now: at the next record time, ignoring their ``max_record_time``."""
        if count is not None and count < 0:
            raise ValueError("count must not be negative")
        taken = self._late if count is None else self._late[:count]
        self._late = self._late[len(taken) :]
        return [self._ledger._deliver_late(command) for command in taken]

    def drop_late_commits(self) -> int:
        """Forget the commands accepted late (the node lost them: they never commit)."""
        dropped = len(self._late)
        self._late.clear()
        return dropped

    def fail_next_commands(self, count: int = 1, *, message: str = "injected failure") -> None:
        """The next ``count`` commands are rejected before they commit."""
        _check_count(count)
        self._commands_to_fail.extend([message] * count)

    def fail_commands_randomly(self, rate: float) -> None:
        """Reject each command with probability ``rate`` (seeded; 0 switches it off)."""
        self._command_failure_rate = _check_rate(rate)

    # --- streams -------------------------------------------------------------------------------

    def stall_stream(self, node: str | None = None) -> None:
        """Reads on ``node`` (every node if None) stop at its current ledger end until resumed."""
        for name in self._nodes(node):
            self._stalls[name] = self._ledger.ledger_end(name)

    def resume_stream(self, node: str | None = None) -> None:
        for name in self._nodes(node):
            self._stalls.pop(name, None)

    def cut_stream_after(self, items: int, *, node: str | None = None, times: int = 1) -> None:
        """The next ``times`` reads on ``node`` (any node if None) raise ``LedgerReadError`` after
        yielding ``items`` items (or at the end, if there are fewer)."""
        if items < 0:
            raise ValueError("items must not be negative")
        _check_count(times)
        self._cuts.setdefault(node or _ALL_NODES, []).extend([items] * times)

    def fail_reads_randomly(self, rate: float) -> None:
        """Each item of every read fails with probability ``rate`` (seeded; 0 switches it off)."""
        self._read_failure_rate = _check_rate(rate)

    def redeliver_from(self, offset: int, *, node: str | None = None) -> None:
        """The next read on ``node`` (any node if None) starts after ``offset`` whatever the
        reader asked for, re-delivering what lies between."""
        if offset < 0:
            raise ValueError("offset must not be negative")
        self._redeliveries[node or _ALL_NODES] = offset

    # --- nodes ---------------------------------------------------------------------------------

    def restore_node_from_backup(
        self, node: str, backup_offset: int, *, offset_shift: int = 0
    ) -> None:
        """Restore ``node`` from a backup taken at ``backup_offset``.

        Everything after the backup is forgotten and re-learned from the synchronizer: the
        transactions come back in the same order with the same update ids and record times, at
        new offsets starting at ``backup_offset + 1 + offset_shift``; the checkpoints in between
        are not re-created, so offsets after the backup generally move (a reader resuming from an
        old offset may skip or repeat updates — resume from ``offset_at_record_time`` instead).
        A fresh checkpoint follows.
        """
        self._ledger._restore_node(node, backup_offset, offset_shift)

    def major_upgrade(self, node: str) -> None:
        """The node moves to a new deployment: its history is gone from its stream and its
        offsets restart at 1. Active contracts are unaffected."""
        self._ledger._upgrade_node(node)

    def clear(self) -> None:
        """Switch off every transient fault. Commands already accepted late stay pending until
        they are delivered or dropped: they are in the node, not in a switch."""
        self._late_to_take.clear()
        self._responses_to_drop = 0
        self._commands_to_fail.clear()
        self._command_failure_rate = 0.0
        self._stalls.clear()
        self._cuts.clear()
        self._redeliveries.clear()
        self._read_failure_rate = 0.0

    # --- hooks used by the engine --------------------------------------------------------------

    def take_command_failure(self) -> str | None:
        if self._commands_to_fail:
            return self._commands_to_fail.pop(0)
        if self._command_failure_rate and self._random.random() < self._command_failure_rate:
            return "injected random failure"
        return None

    def take_late_commit(self, command: LateCommand) -> bool:
        """Whether ``command`` is to commit late; if so it is kept until delivered."""
        if not self._late_to_take:
            return False
        party = self._late_to_take[0]
        if party is not None and party not in command.act_as:
            return False
        self._late_to_take.pop(0)
        self._late.append(command)
        return True

    def take_response_drop(self) -> bool:
        if self._responses_to_drop:
            self._responses_to_drop -= 1
            return True
        return False

    def read_plan(self, node: str) -> ReadPlan:
        cut: int | None = None
        for key in (node, _ALL_NODES):
            queue = self._cuts.get(key)
            if queue:
                cut = queue.pop(0)
                break
        start_after: int | None = None
        for key in (node, _ALL_NODES):
            if key in self._redeliveries:
                start_after = self._redeliveries.pop(key)
                break
        return ReadPlan(
            start_after=start_after,
            stall_at=self._stalls.get(node),
            cut_after=cut,
            failure_rate=self._read_failure_rate,
        )

    def roll(self, rate: float) -> bool:
        return self._random.random() < rate

    def _nodes(self, node: str | None) -> list[str]:
        return [node] if node is not None else self._ledger.nodes()


def _check_count(count: int) -> None:
    if count < 1:
        raise ValueError("count must be at least 1")


def _check_rate(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise ValueError("rate must be between 0 and 1")
    return rate
