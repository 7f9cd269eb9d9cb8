"""Bitcoin payouts under the hazards a review found: what could leave payouts stuck, marked paid
when they were not, or custody's funds stranded or spent on fees.

Each test drives the real payout worker, wallet and deposit watcher over the in-memory chain and
a SQLite DB (the ``custody`` fixture of ``test_payouts``) into one hazard, then checks the
outcome on the DB and on the chain itself: a payout whose output would be dust is left out of
its batch (and can be cancelled while unbatched); a batch whose input a deep reorg dropped is
orphaned with a critical alert and is released only by an operator once no version of it can be
found on the node; a confirmed batch whose block a deep reorg took away is reopened and paid
again with its recorded transaction; a worker acting on an old read of a batch writes nothing;
fee bumps stop at ``fee_rate_max_sat_vb``; a batch back from a shallow reorg is not bumped at
once; and a change address's issuance is audited.
"""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from sluice.ports.bitcoin_payouts import BATCH_OPEN_STATUSES
from sluice.services.btc_payout_sending import _Sent
from sluice.services.btc_payouts import PayoutTick
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
