"""Bitcoin payouts under the hazards a review found: what could leave payouts stuck, marked paid
when they were not, or custody's funds stranded or spent on fees.

Each test drives the real payout worker, wallet and deposit watcher over the in-memory chain and
a SQLite DB (the ``custody`` fixture of ``test_payouts``) into one hazard, then checks the
outcome on the DB and on the chain itself: a payout whose output would be dust is left out of
its batch (and can be cancelled while unbatched); a batch whose input a deep reorg dropped is
orphaned with a critical alert and is released only by an operator once no version of it can be
found on the node and an input of it survived; its payouts are then paid by a successor that
spends every surviving input, so an old version broadcast once the deposit is back is refused by
the chain (conflict) and the destination is paid once, and a successor is released only while it
still shares an input with every batch it succeeds; a confirmed batch whose block a deep reorg
took away is reopened and paid again with its recorded transaction; a worker acting on an old
read of a batch writes nothing; fee bumps stop at ``fee_rate_max_sat_vb``; a batch back from a
shallow reorg is not bumped at once; and a change address's issuance is audited.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

import pytest

from sluice.bitcoin.wallet import decode_transaction
from sluice.domain.errors import InvalidOperationStateError, NotFoundError
from sluice.ports.bitcoin import NodeRejectedError
from sluice.ports.bitcoin import NotFoundError as NodeNotFoundError
from sluice.ports.bitcoin_payouts import BATCH_OPEN_STATUSES, BatchRecord, CustodyOutput
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_payout_sending import _Sent
from sluice.services.btc_payouts import PayoutTick, ReleasedBatch, cancel_payout, release_batch
from tests.unit.bitcoin.test_payouts import SETTINGS, Custody, custody, wallet

__all__ = ["custody", "wallet"]  # the fixtures, used by name


def _alerts(c: Custody) -> list[tuple[str, str]]:
    with c.uow() as uow:
        return sorted((a.severity, a.kind) for a in uow.books.alerts())


# --- two workers -------------------------------------------------------------------------------


def test_a_worker_following_an_old_read_of_a_batch_writes_nothing_stale(custody: Custody) -> None:
    """Worker A read the open batches; B then bumped one to v2 and v2 was mined. A following its
    old read must not take v2 for a double spend (v2 is not in A's copy of the versions): the
    batch is read again where it is written, and the payout completes once."""
    custody.fund(400_000)
    custody.request("p1", 150_000)
    a, b = custody.worker(), custody.worker()
    a.run_once()
    custody.mine(SETTINGS.payout_bump_after_blocks, include_mempool=False)
    with custody.uow() as uow:
        (snapshot,) = uow.btc_payouts.batches(BATCH_OPEN_STATUSES)
        cursor = uow.btc_payouts.cursor_height()
    assert cursor is not None
    assert b.run_once().bumped == 1
    custody.mine()  # v2 mined; the watcher records its spends
    tick = PayoutTick()
    a._follow_one(snapshot, cursor + 1, tick)
    (batch,) = custody.batches()
    assert tick.stuck == 0
    assert (batch.status, batch.bumps, len(batch.versions)) == ("mined", 1, 2)
    assert batch.txid != snapshot.txid
    for _ in range(SETTINGS.confirmations_min + 1):
        custody.mine()
        a.run_once()
        b.run_once()
    custody.assert_paid_once("p1")
    assert ("critical", "btc_batch_stuck") not in _alerts(custody)


def test_a_stale_worker_cannot_overwrite_a_bumped_batch_with_its_old_read(
    custody: Custody,
) -> None:
    """Every write of a batch is conditional on the version read (status, txid, bump count):
    a record of a send made from an older read changes nothing."""
    custody.fund(400_000)
    custody.request("p1", 150_000)
    a, b = custody.worker(), custody.worker()
    a.run_once()
    custody.mine(SETTINGS.payout_bump_after_blocks, include_mempool=False)
    (old,) = custody.batches()
    assert b.run_once().bumped == 1
    (bumped,) = custody.batches()
    a._record_sent(old, _Sent("rejected", "stale"), None, PayoutTick(), counted=None)
    (after,) = custody.batches()
    assert (after.txid, after.bumps, after.versions, after.last_error) == (
        bumped.txid,
        1,
        bumped.versions,
        bumped.last_error,
    )


# --- a shallow reorg ---------------------------------------------------------------------------


def test_a_batch_back_from_a_shallow_reorg_is_not_bumped_at_once(custody: Custody) -> None:
    """A batch mined, then its block reorged away, is back in the mempool with the fee that had
    got it mined: its bump timer restarts at the current height instead of bumping it at once
    because it first went out long ago."""
    custody.fund(400_000)
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    custody.mine(SETTINGS.payout_bump_after_blocks - 1, include_mempool=False)
    custody.mine()  # mined now, payout_bump_after_blocks after it went out
    assert worker.run_once().mined == 1
    custody.chain.reorg(1, include_mempool=False)  # back to the mempool, not yet mined again
    custody.watch()
    tick = worker.run_once()
    (batch,) = custody.batches()
    assert tick.reorged == 1
    assert (tick.bumped, batch.bumps, batch.status) == (0, 0, "broadcast")
    assert batch.broadcast_height == custody.chain.tip_height
    assert custody.chain.mempool_txids == [batch.txid]
    custody.settle(worker)
    custody.assert_paid_once("p1")


# --- fee bumps at the cap ----------------------------------------------------------------------


def test_bumps_stop_at_the_fee_rate_cap_with_one_warning(custody: Custody) -> None:
    """A batch with change left unmined for reasons other than its fee is bumped ×1.5 every
    payout_bump_after_blocks, paid from custody's change: never past fee_rate_max_sat_vb. At the
    cap bumping stops and one warning says so."""
    custody.settings = replace(SETTINGS, fee_rate_max_sat_vb=Decimal(20))
    custody.fund(2_000_000)
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    (first,) = custody.batches()
    for _ in range(14):
        custody.mine(SETTINGS.payout_bump_after_blocks, include_mempool=False)
        worker.run_once()
    (last,) = custody.batches()
    rates = [Decimal(str(v["fee_rate"])) for v in last.versions]
    assert max(rates) <= Decimal(20) < rates[-1] * Decimal("1.5")
    assert all(int(v["fee_sats"]) <= int(v["vsize"]) * 20 for v in last.versions)
    assert 1 <= last.bumps < 14
    assert last.last_error is not None and "fee_rate_max_sat_vb" in last.last_error
    assert custody.chain.mempool_txids == [last.txid]
    assert first.change_sats - last.change_sats == last.fee_sats - first.fee_sats
    assert _alerts(custody) == [("warning", "btc_batch_fee_capped")]
    # The batch is still the same and is paid once when mined.
    custody.settle(worker)
    custody.assert_paid_once("p1")


# --- a payout whose output would be dust -------------------------------------------------------


def test_a_payout_left_under_dust_by_its_fee_waits_alone_and_never_blocks_the_others(
    custody: Custody,
) -> None:
    """``small`` was queued at the least allowed while payout_fee_max_sats was 20,000; fees then
    rose and the operator raised the cap. Its share of the fee would now leave its output under
    dust (here: negative): it is left out of the batch, with the reason and an alert, and
    ``big`` goes. The operator can then cancel ``small``, which is not batched."""
    custody.settings = replace(SETTINGS, payout_fee_max_sats=20_000)
    custody.fund(1_000_000)
    custody.request("small", 20_295)
    custody.request("big", 500_000)
    custody.chain.set_fee_rate(Decimal(250))
    high = replace(SETTINGS, payout_fee_max_sats=20_000, fee_rate_max_sat_vb=Decimal(500))
    assert custody.worker(settings=high).run_once().waiting_fee == 2
    raised = replace(high, payout_fee_max_sats=60_000)
    tick = custody.worker(settings=raised).run_once()
    assert (tick.batches, tick.batched, tick.errors) == (1, 1, [])
    views = custody.payouts()
    assert views["big"].status == "broadcast"
    assert views["small"].status == "waiting_fee"
    assert views["small"].last_error is not None and "dust" in views["small"].last_error
    assert ("warning", "btc_payout_below_dust") in _alerts(custody)
    # Round after round it keeps waiting, alone: nothing is signed for it.
    tick = custody.worker(settings=raised).run_once()
    assert (tick.batches, tick.errors) == (0, [])
    assert len(custody.batches()) == 1

    with pytest.raises(InvalidOperationStateError) as refused:
        cancel_payout(custody.uow, payout_id="big", cancelled_by="ops", clock=custody.clock)
    assert refused.value.code == 41
    cancelled = cancel_payout(
        custody.uow, payout_id="small", cancelled_by="ops", clock=custody.clock, reason="dust"
    )
    assert cancelled.status == "cancelled"
    again = cancel_payout(custody.uow, payout_id="small", cancelled_by="ops", clock=custody.clock)
    assert again == cancelled
    with pytest.raises(NotFoundError):
        cancel_payout(custody.uow, payout_id="nope", cancelled_by="ops", clock=custody.clock)
    with custody.uow() as uow:
        records = uow.audit.find(operation_id="small", limit=10)
    assert [r.entry.operation for r in records] == ["btc_payout_requested", "btc_payout_cancelled"]
    custody.chain.set_fee_rate(Decimal(5))
    custody.settings = raised
    custody.settle(custody.worker(settings=raised))
    custody.assert_paid_once("big")
    assert custody.payouts()["small"].status == "cancelled"
    assert custody.paid("small") == []


def test_a_bump_that_would_leave_a_payout_under_dust_is_not_made(custody: Custody) -> None:
    """Without change the payouts pay a bump's extra fee: never so much that an output falls
    under its dust limit (the batch waits as it is instead)."""
    custody.fund(150_000 + 20_295 + 300)  # the 300 left over is under dust: no change
    custody.request("big", 150_000)
    custody.request("small", 20_295)  # the least allowed at payout_fee_max_sats 20,000
    custody.settings = replace(
        SETTINGS,
        payout_fee_max_sats=60_000,
        payout_bump_factor=Decimal(60),
        fee_rate_max_sat_vb=Decimal(500),
    )
    worker = custody.worker()
    assert worker.run_once().batches == 1
    (first,) = custody.batches()
    assert first.change_sats == 0
    custody.mine(SETTINGS.payout_bump_after_blocks, include_mempool=False)
    tick = worker.run_once()
    (batch,) = custody.batches()
    assert (tick.bumped, batch.bumps) == (0, 0)
    assert batch.last_error is not None and "dust" in batch.last_error
    assert custody.chain.mempool_txids == [first.txid]
    small = custody.payouts()["small"]
    assert small.fee_sats is not None and 20_295 - small.fee_sats > 294


# --- an input reorged away ---------------------------------------------------------------------


def _orphan_a_batch_of_two_deposits(custody: Custody) -> tuple[BatchRecord, str, str]:
    """A batch paying p1 (500,000 sats) from D1 and D2; a reorg deeper than confirmations_min
    then drops D2's transaction from the chain for good, and the batch is orphaned. Answers the
    batch, D1's outpoint and D2's txid."""
    custody.fund(300_000)  # D1
    (d1,) = [o.outpoint for o in _spendable(custody)]
    alice = deposit_address(custody.uow, custody.wallet, "alice", new=True, clock=custody.clock)
    d2, _ = custody.chain.fund(alice.script_hex, 300_000)
    custody.mine(SETTINGS.confirmations_min)
    # A redemption's payout: the customer's deposit it spends is minted iSTSi's backing.
    custody.request("p1", 500_000, kind="redemption")  # needs D1 and D2
    worker = custody.worker()
    assert worker.run_once().batches == 1
    (batch,) = custody.batches()
    assert len(batch.outpoints) == 2
    # The version is still in the node's mempool: not orphaned yet, and not releasable.
    with pytest.raises(InvalidOperationStateError):
        _release(custody, batch.id)
    custody.chain.reorg(SETTINGS.confirmations_min + 1, drop_txids=[d2])
    custody.watch()
    assert worker.run_once().orphaned == 1
    return batch, d1, d2


def _spendable(custody: Custody) -> list[CustodyOutput]:
    with custody.uow() as uow:
        outputs: list[CustodyOutput] = uow.btc_payouts.spendable_outputs(0)
    return outputs


def _release(custody: Custody, batch_id: str) -> ReleasedBatch:
    return release_batch(
        custody.uow, custody.chain, batch_id=batch_id, released_by="ops", clock=custody.clock
    )


def test_a_batch_whose_input_a_deep_reorg_took_is_orphaned_then_released_by_an_operator(
    custody: Custody,
) -> None:
    """A broadcast batch spends D1 and D2. A reorg deeper than confirmations_min drops D2's
    transaction for good: no version of the batch can be mined. It is orphaned with a critical
    alert naming its payout, never sent or bumped again; an operator's release (refused while
    the batch's version is still held by the node) keeps D1 reserved and queues the payout again
    for the batch's successor: a batch of that payout alone that spends D1 (and another coin,
    as D1 is not enough), so that it and any old version share an input. Until that coin
    confirms the payout waits, and a payout queued meanwhile is paid by a batch of its own that
    does not touch D1. The payout is paid once, by the successor."""
    batch, d1, _ = _orphan_a_batch_of_two_deposits(custody)
    worker = custody.worker()
    for _ in range(SETTINGS.payout_bump_after_blocks + 2):
        custody.mine()
        tick = worker.run_once()
        assert (tick.rebroadcast, tick.bumped, tick.orphaned, tick.errors) == (0, 0, 0, [])
    (batch,) = custody.batches()
    assert batch.status == "orphaned"
    view = custody.payouts()["p1"]
    assert view.last_error is not None and "reorged" in view.last_error
    with custody.uow() as uow:
        alerts = [a for a in uow.books.alerts() if a.kind == "btc_batch_orphaned"]
        reserved = uow.btc_payouts.outputs(batch.outpoints)
    assert _spendable(custody) == []
    assert [(a.severity, a.details["payouts"]) for a in alerts] == [("critical", "p1")]
    assert all(o.reserved_by == batch.id for o in reserved.values())

    with pytest.raises(InvalidOperationStateError) as refused:
        cancel_payout(custody.uow, payout_id="p1", cancelled_by="ops", clock=custody.clock)
    assert refused.value.code == 41
    released = _release(custody, batch.id)
    assert released.requeued == ("p1",)
    assert released.kept_outpoints == (d1,)  # D2 is gone: D1 alone survived
    with pytest.raises(InvalidOperationStateError):  # released once only
        _release(custody, batch.id)
    view = custody.payouts()["p1"]
    assert (view.status, view.batch_id, view.txid, view.vout) == ("queued", batch.id, None, None)
    # Waiting for its successor, it cannot be cancelled: an old version paying it may be mined.
    with pytest.raises(InvalidOperationStateError) as refused:
        cancel_payout(custody.uow, payout_id="p1", cancelled_by="ops", clock=custody.clock)
    assert refused.value.code == 41 and "successor" in str(refused.value)
    with custody.uow() as uow:
        records = uow.audit.find(operation_id=batch.id, limit=10)
        assert uow.btc_payouts.outputs([d1])[d1].reserved_by == batch.id  # kept, not freed
    assert "btc_batch_released" in [r.entry.operation for r in records]

    # D1 alone cannot pay p1: the successor waits for funds. A payout queued meanwhile gets a
    # batch of its own from other coins, never D1, and p1 is not mixed into it.
    custody.request("p2", 150_000)
    assert worker.run_once().batches == 0
    custody.fund(160_000)  # enough for p2, not for p1 even with D1
    tick = worker.run_once()
    assert (tick.batches, tick.insufficient, tick.errors) == (1, 1, [])
    waiting = custody.payouts()["p1"]
    assert (waiting.status, waiting.batch_id) == ("queued", batch.id)
    assert waiting.last_error is not None and "waiting for confirmed custody funds" in (
        waiting.last_error
    )
    (other,) = [b for b in custody.batches() if b.id != batch.id]
    assert d1 not in other.outpoints
    assert set(other.versions[-1]["payouts"]) == {"p2"}
    assert custody.payouts()["p1"].batch_id == batch.id
    custody.settle(worker)
    custody.assert_paid_once("p2")

    custody.fund(300_000)
    tick = worker.run_once()
    assert (tick.batches, tick.errors) == (1, [])
    (successor,) = [b for b in custody.batches() if b.id not in (batch.id, other.id)]
    assert set(successor.versions[-1]["payouts"]) == {"p1"}
    # Every version of the released batch spends its recorded outpoints (a bump spends the same
    # ones); the successor spends every one of them that survived.
    old_inputs = {f"{i['txid']}:{i['vout']}" for i in decode_transaction(batch.raw_hex)["vin"]}
    assert old_inputs == set(batch.outpoints)
    assert set(released.kept_outpoints) <= set(successor.outpoints) & old_inputs
    with custody.uow() as uow:
        taken = uow.btc_payouts.outputs(successor.outpoints)
    assert {o.reserved_by for o in taken.values()} == {successor.id}
    custody.settle(worker)
    custody.assert_paid_once("p1")
    assert custody.payouts()["p1"].batch_id == successor.id


def test_an_old_version_of_a_released_batch_is_refused_once_its_deposit_comes_back(
    custody: Custody,
) -> None:
    """The hazard itself: a released batch's missing deposit comes back on the chain after its
    payouts were paid again. Here the reorg puts D2's transaction back in the node's mempool
    (not in a block), so the watcher sees D2 reorged and the batch is orphaned; the node evicts
    the batch's version, the operator releases it, and its successor spends D1 and another
    coin. Then D2 is mined again, and the old version, valid but for D1, is broadcast: the
    chain refuses it, because the successor spent D1. The destination is paid once."""
    custody.fund(300_000)  # D1
    (d1,) = [o.outpoint for o in _spendable(custody)]
    alice = deposit_address(custody.uow, custody.wallet, "alice", new=True, clock=custody.clock)
    d2, _ = custody.chain.fund(alice.script_hex, 300_000)
    custody.mine(SETTINGS.confirmations_min)
    # A redemption's payout: the customer's deposit it spends is minted iSTSi's backing.
    custody.request("p1", 500_000, kind="redemption")
    worker = custody.worker()
    assert worker.run_once().batches == 1
    (batch,) = custody.batches()
    d2_outpoint = next(o for o in batch.outpoints if o != d1)
    custody.chain.reorg(SETTINGS.confirmations_min + 1, include_mempool=False)
    custody.watch()
    assert set(custody.chain.mempool_txids) == {d2, batch.txid}
    assert worker.run_once().orphaned == 1
    custody.chain.evict(batch.txid)  # the node forgets the version; D2 stays in its mempool
    released = _release(custody, batch.id)
    assert released.kept_outpoints == (d1,)

    custody.chain.fund(alice.script_hex, 300_000)  # more funds, mined with D2 below
    custody.mine(SETTINGS.confirmations_min)
    with custody.uow() as uow:
        back = uow.btc_payouts.outputs([d2_outpoint])[d2_outpoint]
    assert back.status == "confirmed"  # the missing deposit is back on the chain
    # It came back before the successor was made, but D1 was not enough alone: the successor
    # spends every surviving input, D2 among them now, and other coins as needed.
    tick = worker.run_once()
    assert (tick.batches, tick.errors) == (1, [])
    (successor,) = [b for b in custody.batches() if b.id != batch.id]
    assert {d1, d2_outpoint} <= set(successor.outpoints)
    custody.mine()
    assert worker.run_once().mined == 1
    with pytest.raises(NodeRejectedError) as conflict:
        custody.chain.sendrawtransaction(batch.raw_hex)
    assert "missingorspent" in str(conflict.value)
    with pytest.raises(NodeNotFoundError):
        custody.chain.getrawtransaction(batch.txid)
    custody.settle(worker)
    custody.assert_paid_once("p1")


def test_an_old_version_is_refused_after_the_successor_when_the_deposit_comes_back_late(
    custody: Custody,
) -> None:
    """As above, but the missing deposit comes back only once the successor (spending D1 and
    another coin) is mined: the old version, all of whose inputs but D1 are then on the chain,
    is refused for its spent input D1; D2 stays reserved by the released batch, and the
    destination is paid once."""
    custody.fund(300_000)  # D1
    (d1,) = [o.outpoint for o in _spendable(custody)]
    alice = deposit_address(custody.uow, custody.wallet, "alice", new=True, clock=custody.clock)
    d2, _ = custody.chain.fund(alice.script_hex, 300_000)
    custody.mine(SETTINGS.confirmations_min)
    # A redemption's payout: the customer's deposit it spends is minted iSTSi's backing.
    custody.request("p1", 500_000, kind="redemption")
    worker = custody.worker()
    assert worker.run_once().batches == 1
    (batch,) = custody.batches()
    d2_outpoint = next(o for o in batch.outpoints if o != d1)
    custody.chain.reorg(SETTINGS.confirmations_min + 1, include_mempool=False)
    custody.watch()
    assert worker.run_once().orphaned == 1
    custody.chain.evict(d2)  # D2 and the version spending it leave the mempool
    assert custody.chain.mempool_txids == []
    _release(custody, batch.id)
    custody.fund(300_000)
    assert worker.run_once().batches == 1
    (successor,) = [b for b in custody.batches() if b.id != batch.id]
    assert d1 in successor.outpoints and d2_outpoint not in successor.outpoints
    custody.mine()
    assert worker.run_once().mined == 1
    # The deposit comes back: its transaction is mined again. The in-memory chain has no
    # control for that (a dropped funding transaction cannot be sent again: its inputs are
    # outside the chain), so the test puts it back in the mempool itself.
    custody.chain._add_to_mempool(custody.chain._txs[d2])
    custody.mine(SETTINGS.confirmations_min)
    with custody.uow() as uow:
        back = uow.btc_payouts.outputs([d2_outpoint])[d2_outpoint]
    assert (back.status, back.reserved_by) == ("confirmed", batch.id)
    with pytest.raises(NodeRejectedError) as conflict:
        custody.chain.sendrawtransaction(batch.raw_hex)
    assert "missingorspent" in str(conflict.value)
    custody.settle(worker)
    custody.assert_paid_once("p1")
    assert d2_outpoint not in {o.outpoint for o in _spendable(custody)}


def test_a_release_is_refused_when_no_input_of_the_batch_survived(custody: Custody) -> None:
    """A batch whose only input a deep reorg dropped: a new batch could share no input with
    its old versions, which would be valid again if the deposit came back. The release is
    refused (code 41, saying why and that batched payouts cannot be cancelled); the batch stays
    orphaned and its payout is not queued again."""
    custody.mine(SETTINGS.confirmations_min)
    alice = deposit_address(custody.uow, custody.wallet, "alice", new=True, clock=custody.clock)
    d1, _ = custody.chain.fund(alice.script_hex, 300_000)
    custody.mine(SETTINGS.confirmations_min)
    # A redemption's payout: the customer's deposit it spends is minted iSTSi's backing.
    custody.request("p1", 200_000, kind="redemption")
    worker = custody.worker()
    assert worker.run_once().batches == 1
    custody.chain.reorg(SETTINGS.confirmations_min + 1, drop_txids=[d1])
    custody.watch()
    assert worker.run_once().orphaned == 1
    (batch,) = custody.batches()
    with pytest.raises(InvalidOperationStateError) as refused:
        _release(custody, batch.id)
    message = str(refused.value)
    assert refused.value.code == 41
    assert "none of its inputs survived" in message and "cannot be cancelled" in message
    (after,) = custody.batches()
    assert after.status == "orphaned"
    assert custody.payouts()["p1"].status == "broadcast"
    custody.fund(400_000)
    assert worker.run_once().batches == 0


def test_a_successor_is_released_only_if_it_still_conflicts_with_the_batch_it_succeeds(
    custody: Custody,
) -> None:
    """A chain of releases: batch B0 (D1, D2) lost D2 and was released; its successor S1 spends
    D1 and D3. A later reorg drops D1's transaction too, so S1 is orphaned with D3 alone
    surviving. A successor of S1 spending D3 would share no input with B0, whose old versions
    would be valid again if D1 and D2 both came back: releasing S1 is refused (code 41)."""
    b0, d1, _ = _orphan_a_batch_of_two_deposits(custody)
    _release(custody, b0.id)
    custody.fund(300_000)  # D3
    worker = custody.worker()
    assert worker.run_once().batches == 1
    (s1,) = [b for b in custody.batches() if b.id != b0.id]
    assert d1 in s1.outpoints and len(s1.outpoints) == 2
    custody.chain.reorg(custody.chain.tip_height, drop_txids=[d1.split(":")[0]])
    custody.watch()
    assert worker.run_once().orphaned == 1
    with pytest.raises(InvalidOperationStateError) as refused:
        _release(custody, s1.id)
    assert refused.value.code == 41 and b0.id in str(refused.value)
    statuses = {b.id: b.status for b in custody.batches()}
    assert statuses == {b0.id: "released", s1.id: "orphaned"}
    assert custody.payouts()["p1"].status == "broadcast"


# --- a confirmed batch reorged away ------------------------------------------------------------


def test_a_confirmed_batch_whose_block_a_deep_reorg_took_is_reopened_and_paid_again_once(
    custody: Custody,
) -> None:
    """A batch completed at confirmations_min; a deeper reorg then took its block away and the
    node dropped its transaction. The batch is followed again: a critical alert, the payout back
    from completed to broadcast, the recorded transaction sent again, and it completes once on
    the active chain."""
    custody.fund(150_300)  # no change output: the leftover is under dust
    custody.request("p1", 150_000)
    worker = custody.worker()
    worker.run_once()
    custody.settle(worker)
    custody.assert_paid_once("p1")
    (batch,) = custody.batches()
    assert batch.status == "confirmed"
    custody.chain.reorg(SETTINGS.confirmations_min + 2, drop_txids=[batch.txid])
    custody.watch()
    assert custody.paid("p1") == []
    tick = worker.run_once()
    assert (tick.reopened, tick.rebroadcast) == (1, 1)
    view = custody.payouts()["p1"]
    assert (view.status, view.confirmations, view.completed_at) == ("broadcast", 0, None)
    (reopened,) = custody.batches()
    assert (reopened.status, reopened.txid) == ("broadcast", batch.txid)
    assert custody.chain.mempool_txids == [batch.txid]
    with custody.uow() as uow:
        alerts = [a for a in uow.books.alerts() if a.kind == "btc_batch_reopened"]
    assert [(a.severity, a.details["payouts"]) for a in alerts] == [("critical", "p1")]
    custody.settle(worker)
    custody.assert_paid_once("p1")
    assert worker.run_once().reopened == 0


# --- change addresses --------------------------------------------------------------------------


def test_a_change_address_issued_for_a_batch_is_audited(custody: Custody) -> None:
    """Every custody address issued has its audit record, change included, written with the
    batch that uses it."""
    custody.fund(400_000)
    custody.request("p1", 150_000)
    custody.worker().run_once()
    (batch,) = custody.batches()
    assert batch.change_address is not None
    with custody.uow() as uow:
        records = uow.audit.find(operation_id=f"btc-address:{batch.change_address}", limit=10)
    assert [r.entry.operation for r in records] == ["btc_change_address_issued"]
    (record,) = records
    assert record.entry.parameters["branch"] == 1
    assert record.entry.state_changes[0]["address"] == batch.change_address


def test_a_mined_batch_whose_input_a_deep_reorg_took_is_orphaned_and_releasable(
    custody: Custody,
) -> None:
    """The same reorg when the batch was already mined: its payout is no longer ``mined`` once
    the batch is orphaned, so an operator's release queues it again."""
    custody.fund(300_000)
    alice = deposit_address(custody.uow, custody.wallet, "alice", new=True, clock=custody.clock)
    d2, _ = custody.chain.fund(alice.script_hex, 300_000)
    custody.mine(SETTINGS.confirmations_min)
    # A redemption's payout: the customer's deposit it spends is minted iSTSi's backing.
    custody.request("p1", 500_000, kind="redemption")
    worker = custody.worker()
    worker.run_once()
    custody.mine()
    assert worker.run_once().mined == 1
    assert custody.payouts()["p1"].status == "mined"
    (batch,) = custody.batches()
    custody.chain.reorg(SETTINGS.confirmations_min + 1, drop_txids=[d2])
    custody.watch()
    assert worker.run_once().orphaned == 1
    (orphaned,) = custody.batches()
    assert (orphaned.status, orphaned.mined_height) == ("orphaned", None)
    assert custody.payouts()["p1"].status == "broadcast"
    released = release_batch(
        custody.uow, custody.chain, batch_id=batch.id, released_by="ops", clock=custody.clock
    )
    assert released.requeued == ("p1",)
    assert custody.payouts()["p1"].status == "queued"
