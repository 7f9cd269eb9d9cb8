"""Every fault the embedded ledger can inject (``ledger.faults``), and how a reader recovers.

Lost responses of committed commands, commands committed late (after their ``max_record_time``,
or not at all when an input was spent meanwhile), failed commands, stalled and cut streams,
re-delivery from an older offset, random failures (reproducible from the seed), a node restored
from a backup (offsets change, update ids do not) and a node whose offsets restart after a major
upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from sluice.domain.ledger import InstrumentId
from sluice.ledger.local import (
    CommandTimeoutError,
    DuplicateCommandError,
    EmbeddedLedger,
    InjectedFailureError,
    OffsetAfterLedgerEndError,
    ResponseLostError,
)
from sluice.ports import LedgerReadError


@dataclass
class World:
    ledger: EmbeddedLedger
    dso: str
    treasury: str
    alice: str
    cc: InstrumentId


def make_world(seed: int = 9) -> World:
    ledger = EmbeddedLedger.open(None, seed=seed, checkpoint_interval_s=None)
    ledger.add_node("registry")
    ledger.add_node("exchange")
    ledger.add_node("customers")
    dso = ledger.allocate_party("dso", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    alice = ledger.allocate_party("alice", "customers")
    cc = ledger.create_instrument(dso, "Amulet")
    ledger.create_preapproval(treasury, cc)
    ledger.tap(alice, cc, "1000")
    return World(ledger, dso, treasury, alice, cc)


@pytest.fixture
def world() -> World:
    return make_world()


def deposit(w: World, reason: str = "acct", **kwargs: Any) -> Any:
    return w.ledger.transfer(w.alice, w.treasury, w.cc, "1", reason=reason, **kwargs)


def items(ledger: EmbeddedLedger, party: str, after: int = 0) -> list[tuple[str, int, str]]:
    """(kind, offset, update id or record time) of each item read."""
    result = []
    for item in ledger.updates(party, after):
        update = item["update"]
        if "Transaction" in update:
            value = update["Transaction"]["value"]
            result.append(("tx", value["offset"], value["updateId"]))
        else:
            value = update["OffsetCheckpoint"]["value"]
            result.append(("cp", value["offset"], value["synchronizerTimes"][0]["recordTime"]))
    return result


def update_ids(found: list[tuple[str, int, str]]) -> list[str]:
    return [key for kind, _, key in found if kind == "tx"]


# --- commands -------------------------------------------------------------------------------------


def test_a_dropped_response_hides_a_command_that_did_commit(world: World) -> None:
    world.ledger.faults.drop_next_responses()
    before = world.ledger.update_count()
    with pytest.raises(ResponseLostError) as raised:
        deposit(world, command_id="w-1")
    assert world.ledger.update_count() == before + 1
    committed = raised.value.result
    assert committed.update_id in update_ids(items(world.ledger, world.treasury))
    # Only the next response is lost.
    assert deposit(world).status == "completed"


def test_resubmitting_after_a_lost_response_returns_the_first_outcome(world: World) -> None:
    world.ledger.faults.drop_next_responses()
    with pytest.raises(ResponseLostError) as lost:
        deposit(world, command_id="w-2")
    with pytest.raises(DuplicateCommandError) as duplicate:
        deposit(world, command_id="w-2")
    assert duplicate.value.first == lost.value.result


def test_a_late_commit_lands_when_delivered_whatever_its_max_record_time(world: World) -> None:
    ledger = world.ledger
    ledger.tap(world.alice, world.cc, "1000")
    first, second = [h.contract_id for h in ledger.active_holdings(world.alice, world.cc)]
    deadline = ledger.time() + timedelta(seconds=30)
    ledger.faults.late_commit_next()
    before = ledger.update_count()
    with pytest.raises(CommandTimeoutError):
        deposit(world, command_id="late-1", max_record_time=deadline, inputs=[first])
    assert ledger.update_count() == before
    assert ledger.faults.late_commits_pending() == ["late-1"]
    # Only the next command is late; the clock passes the deadline before the late one lands.
    assert deposit(world, command_id="on-time", inputs=[second]).status == "completed"
    ledger.advance(60)
    (delivered,) = ledger.faults.deliver_late_commits()
    assert delivered.committed and delivered.command_id == "late-1"
    assert ledger.update_count() == before + 2
    assert delivered.update_id in update_ids(items(ledger, world.treasury))
    assert ledger.faults.late_commits_pending() == []
    assert ledger.faults.deliver_late_commits() == []
    # It is a committed command like any other: the same command id again is a duplicate.
    with pytest.raises(DuplicateCommandError):
        deposit(world, command_id="late-1")


def test_a_late_commit_for_one_party_lets_the_others_commands_through(world: World) -> None:
    ledger = world.ledger
    ledger.faults.late_commit_next(party=world.treasury)
    assert deposit(world, command_id="alice-1").status == "completed"
    with pytest.raises(CommandTimeoutError):
        ledger.transfer(world.treasury, world.alice, world.cc, "1", command_id="treasury-1")
    assert ledger.faults.late_commits_pending() == ["treasury-1"]
    (delivered,) = ledger.faults.deliver_late_commits()
    assert delivered.committed and delivered.act_as == (world.treasury,)


def test_a_late_commit_whose_input_was_spent_meanwhile_never_commits(world: World) -> None:
    ledger = world.ledger
    (coin,) = [h.contract_id for h in ledger.active_holdings(world.alice, world.cc)]
    ledger.faults.late_commit_next(2)
    for command_id in ("late-a", "late-b"):
        with pytest.raises(CommandTimeoutError):
            deposit(world, command_id=command_id, inputs=[coin])
    # A later command spends the same holding first.
    assert deposit(world, command_id="first", inputs=[coin]).status == "completed"
    before = ledger.update_count()
    delivered = ledger.faults.deliver_late_commits(1)
    assert [(d.command_id, d.committed) for d in delivered] == [("late-a", False)]
    assert "inactive" in (delivered[0].error or "")
    assert ledger.update_count() == before
    assert ledger.faults.drop_late_commits() == 1
    assert ledger.faults.deliver_late_commits() == []
    errors = [c for c in ledger.completions(world.alice) if c.command_id.startswith("late-")]
    assert [(c.command_id, c.status) for c in errors] == [("late-a", "error")]


def test_failed_commands_are_rejected_without_committing(world: World) -> None:
    world.ledger.faults.fail_next_commands(2, message="node busy")
    before = world.ledger.update_count()
    for _ in range(2):
        with pytest.raises(InjectedFailureError, match="node busy"):
            deposit(world, command_id="w-3")
    assert world.ledger.update_count() == before
    assert deposit(world, command_id="w-3").status == "completed"
    errors = [c for c in world.ledger.completions(world.alice) if c.command_id == "w-3"]
    assert [c.status for c in errors] == ["error", "error", "ok"]


def test_random_command_failures_repeat_exactly_for_the_same_seed() -> None:
    def outcomes() -> list[bool]:
        w = make_world(seed=21)
        w.ledger.faults.fail_commands_randomly(0.5)
        result = []
        for _ in range(20):
            try:
                deposit(w)
                result.append(True)
            except InjectedFailureError:
                result.append(False)
        return result

    first = outcomes()
    assert first == outcomes()
    assert True in first
    assert False in first


# --- streams --------------------------------------------------------------------------------------


def test_a_stalled_stream_stops_at_the_stall_until_resumed(world: World) -> None:
    deposit(world)
    world.ledger.faults.stall_stream("exchange")
    stalled_at = world.ledger.ledger_end(world.treasury)
    deposit(world)
    deposit(world)
    assert [o for _, o, _ in items(world.ledger, world.treasury)][-1] == stalled_at
    assert items(world.ledger, world.treasury, stalled_at) == []
    assert len(items(world.ledger, world.alice)) == 4  # other nodes keep flowing
    world.ledger.faults.resume_stream("exchange")
    assert len(items(world.ledger, world.treasury, stalled_at)) == 2


def test_a_cut_stream_raises_a_read_error_part_way(world: World) -> None:
    for _ in range(5):
        deposit(world)
    world.ledger.faults.cut_stream_after(2, node="exchange")
    stream = world.ledger.updates(world.treasury, 0)
    seen = [next(stream), next(stream)]
    with pytest.raises(LedgerReadError):
        next(stream)
    # The cut was for one read; reading again from the last item resumes cleanly.
    last = seen[-1]["update"]["Transaction"]["value"]["offset"]
    rest = list(world.ledger.updates(world.treasury, last))
    assert len(seen) + len(rest) == len(list(world.ledger.updates(world.treasury, 0)))


def test_a_cut_can_hit_several_reads_and_any_node(world: World) -> None:
    deposit(world)
    world.ledger.faults.cut_stream_after(0, times=2)
    for party in (world.treasury, world.alice):
        with pytest.raises(LedgerReadError):
            list(world.ledger.updates(party, 0))
    assert list(world.ledger.updates(world.treasury, 0))


def test_random_read_failures_repeat_exactly_for_the_same_seed() -> None:
    def reads() -> list[int]:
        w = make_world(seed=4)
        for _ in range(10):
            deposit(w)
        w.ledger.faults.fail_reads_randomly(0.3)
        counts = []
        for _ in range(10):
            count = 0
            try:
                for _item in w.ledger.updates(w.treasury, 0):
                    count += 1
            except LedgerReadError:
                pass
            counts.append(count)
        return counts

    first = reads()
    assert first == reads()
    assert min(first) < 10


def test_redelivery_starts_the_next_read_at_an_older_offset(world: World) -> None:
    for _ in range(4):
        deposit(world)
    everything = items(world.ledger, world.treasury)
    end = everything[-1][1]
    world.ledger.faults.redeliver_from(everything[1][1], node="exchange")
    again = items(world.ledger, world.treasury, end)
    assert again == everything[2:]
    assert items(world.ledger, world.treasury, end) == []  # only the next read


# --- nodes ----------------------------------------------------------------------------------------


def test_a_node_restored_from_a_backup_moves_offsets_but_keeps_update_ids(world: World) -> None:
    ledger = world.ledger
    deposit(world, reason="a")
    backup = ledger.ledger_end("exchange")
    ledger.advance(5)
    ledger.checkpoint()
    deposit(world, reason="b")
    ledger.advance(5)
    ledger.checkpoint()
    deposit(world, reason="c")
    before = items(ledger, world.treasury)
    cursor_offset = before[-2][1]  # ingested up to the checkpoint before the last deposit
    ingested_time = ledger.record_time_at(world.treasury, cursor_offset)
    assert ingested_time is not None

    ledger.faults.restore_node_from_backup("exchange", backup)
    after = items(ledger, world.treasury)
    assert update_ids(after) == update_ids(before)
    assert [o for _, o, _ in after] != [o for _, o, _ in before]
    assert [o for _, o, _ in after] == sorted(o for _, o, _ in after)
    # Resuming naively from the old cursor offset now skips an update it never ingested...
    naive = update_ids(items(ledger, world.treasury, cursor_offset))
    missed = update_ids(before)[-1]
    assert missed not in naive
    # ... resuming from the offset of the last ingested record time loses nothing.
    resume = ledger.offset_at_record_time("exchange", ingested_time)
    recovered = update_ids(items(ledger, world.treasury, resume))
    assert missed in recovered


def test_a_restore_with_an_offset_shift_leaves_a_gap(world: World) -> None:
    deposit(world)
    backup = world.ledger.ledger_end("exchange")
    deposit(world)
    world.ledger.faults.restore_node_from_backup("exchange", backup, offset_shift=100)
    offsets = [o for _, o, _ in items(world.ledger, world.treasury)]
    assert offsets[-2] == backup + 101  # the re-learned transaction; a checkpoint follows
    assert offsets[-1] == backup + 102


def test_a_major_upgrade_restarts_a_nodes_offsets(world: World) -> None:
    for _ in range(3):
        deposit(world)
    old_end = world.ledger.ledger_end("exchange")
    world.ledger.faults.major_upgrade("exchange")
    assert world.ledger.ledger_end("exchange") == 0
    assert items(world.ledger, world.treasury) == []
    with pytest.raises(OffsetAfterLedgerEndError):
        world.ledger.updates(world.treasury, old_end)
    result = deposit(world)
    [(kind, offset, update_id)] = items(world.ledger, world.treasury)
    assert (kind, offset, update_id) == ("tx", 1, result.update_id)
    # Holdings survive the upgrade.
    assert len(world.ledger.active_holdings(world.treasury)) == 4


def test_clearing_faults_switches_every_transient_fault_off(world: World) -> None:
    faults = world.ledger.faults
    faults.drop_next_responses()
    faults.fail_next_commands()
    faults.stall_stream()
    faults.cut_stream_after(0)
    faults.fail_reads_randomly(1.0)
    faults.late_commit_next()
    faults.clear()
    deposit(world)
    assert len(items(world.ledger, world.treasury)) == 2
    assert faults.late_commits_pending() == []


def test_fault_parameters_are_checked(world: World) -> None:
    with pytest.raises(ValueError, match="rate"):
        world.ledger.faults.fail_reads_randomly(1.5)
    with pytest.raises(ValueError, match="count"):
        world.ledger.faults.fail_next_commands(0)
    with pytest.raises(ValueError, match="count"):
        world.ledger.faults.late_commit_next(0)
    with pytest.raises(ValueError, match="count"):
        world.ledger.faults.deliver_late_commits(-1)
    with pytest.raises(ValueError, match="backup offset"):
        world.ledger.faults.restore_node_from_backup("exchange", 99)
