"""The demo's Bitcoin custody chapter (:mod:`sluice.demo.bitcoin`), run on its own: a sandbox
2-of-3 custody in a data folder, the in-memory chain, an Integration DB with the demo's customers.

How: the chapter runs against a stand-in for the demo's exchange (the data folder, the DB and a
clock: all the chapter uses), then its report is printed to a string. Every step it reports must
hold, and what it reports is checked again independently of the chapter: the deposits in the DB
(each outpoint once; the dropped one reorged, the moved one confirmed in a block of the new branch;
the dust one never confirmed), the payouts (one batch, fee-bumped once, every payout completed and
paid by that batch's mined version on the chain, the replaced version nowhere on it), the key
files (mode 0600 in a 0700 folder, never in the report) and the balance against the chain. The
chapter must stay fast: under 2 seconds.
"""

from __future__ import annotations

import io
import stat
import time
from collections.abc import Iterator
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from rich.console import Console

from sluice import bootstrap
from sluice.demo import CUSTOMERS, bitcoin
from sluice.demo.report import Sections
from sluice.demo.world import Exchange
from sluice.services.reference import register_customer

CHAPTER_SECONDS_MAX = 2.0


class Clock:
    """The demo's clock is its ledger's: it moves when told. Here, a second per reading."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 5, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(scope="module")
def told(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[bitcoin.BitcoinStory, str, Path, Any]]:
    data = tmp_path_factory.mktemp("demo")
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    for customer in CUSTOMERS:
        register_customer(database.uow, customer.id, customer.name, [customer.account])
    exchange = cast(
        Exchange, SimpleNamespace(world=SimpleNamespace(data_dir=data), database=database)
    )
    exchange.clock = Clock()  # type: ignore[method-assign]
    started = time.perf_counter()
    story = bitcoin.CHAPTER.run(exchange, lambda _message: nullcontext())
    elapsed = time.perf_counter() - started
    assert elapsed < CHAPTER_SECONDS_MAX, f"the chapter took {elapsed:.2f}s"
    output = io.StringIO()
    console = Console(file=output, width=200, color_system=None)
    ok = bitcoin.CHAPTER.show(console, story, Sections())
    assert ok, output.getvalue()
    yield story, output.getvalue(), data, database
    database.dispose()


def test_every_step_of_the_chapter_holds_and_is_reported(told: Any) -> None:
    story, report, _data, _database = told
    assert [step.ok for step in story.steps] == [True] * 7
    assert "1. Bitcoin custody" in report and "2. Bitcoin deposits" in report
    assert "3. Bitcoin payouts" in report
    assert "✗" not in report
    assert report.count("✓") == 7


def test_deposits_survive_the_reorg_and_are_counted_once(told: Any) -> None:
    story, _report, _data, _database = told
    names = {c.id: c.name for c in CUSTOMERS}
    deposits = story.deposits
    outpoints = [(d.txid, d.vout) for d in deposits]
    assert len(outpoints) == len(set(outpoints)) == 6
    by_status: dict[str, list[tuple[str, int]]] = {}
    for d in deposits:
        by_status.setdefault(d.status, []).append((names[d.customer], d.amount_sats))
    assert sorted(by_status["confirmed"]) == [
        ("Alice Martin", 50_000_000),
        ("Bob Chen", 3_000_000),
        ("Bob Chen", 25_000_000),
        ("Carol Diaz", 10_000_000),
    ]
    assert by_status["dust"] == [("Dave Okafor", 300)]
    assert by_status["reorged"] == [("Erin Novak", 2_000_000)]
    moved = next(d for d in deposits if d.amount_sats == 3_000_000)
    assert moved.block_hash is not None and moved.confirmations >= 6
    # Bob's second deposit went to a new address: his first was funded.
    bobs = {d.address for d in deposits if d.customer == "bob"}
    assert len(bobs) == 2


def test_the_payouts_left_in_one_bumped_batch_and_were_paid_once(told: Any) -> None:
    story, _report, _data, database = told
    payouts = story.payouts
    assert [p.status for p in payouts] == ["completed"] * 3
    assert len({p.batch_id for p in payouts}) == 1 and len({p.txid for p in payouts}) == 1
    with database.uow() as uow:
        batch = uow.btc_payouts.get_batch(payouts[0].batch_id)
    assert batch is not None
    assert batch.status == "confirmed" and batch.bumps == 1 and len(batch.versions) == 2
    replaced = batch.versions[0]["txid"]
    assert replaced != batch.txid == payouts[0].txid
    assert all(p.fee_sats and p.confirmations >= 6 for p in payouts)


def test_the_keys_stay_private_and_the_balance_is_the_chains(told: Any) -> None:
    story, report, data, _database = told
    keys = data / bitcoin.KEYS_DIR
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    files = sorted(keys.iterdir())
    assert len(files) == 3
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.read_text().strip() not in report
    assert "tprv" not in report
    balance = story.balance
    assert balance is not None
    # 0.88 BTC of deposits, 300 sats of dust and the exchange's own float came in, 0.17 BTC went
    # out (fees deducted from the payouts), and the bump's extra fee came from the change.
    came_in = 88_000_300 + bitcoin.FLOAT_SATS
    assert came_in - 17_000_000 - 1_000 < balance.total_sats < came_in - 17_000_000
    assert balance.total_sats == story.chain_sats
    assert f"at height {balance.height}" in report
