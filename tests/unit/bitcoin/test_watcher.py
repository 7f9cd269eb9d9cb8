"""The deposit watcher (``sluice.services.btc_watcher``) on the in-memory chain.

A sandbox custody (the real embit wallet over three new keys), the in-memory chain
(``FakeChain``) and an SQLite Integration DB. Customers get deposit addresses through
``deposit_address``; the chain's ``fund`` pays them and ``mine``/``reorg`` make blocks; the
watcher runs round by round and what it recorded is read back through ``list_deposits``,
``custody_balance``, the repository, the alerts and the audit trail. After every round the
watcher's stored blocks are checked against the node's active chain.

Covers: a deposit reaches 6 confirmations exactly once; reorgs of depth 1, 2 and 3 (the deposit
in the orphaned blocks comes back as the same row in the new branch); a reorg that drops a
deposit (reorged, never confirmed) and one that moves it to a later block (the same row,
confirmed once, counted from the new block); a confirmed deposit reorged raises a warning, a
credited one a critical alert, and the credited one that comes back stays credited; two
deposits to one address; dust; an address issued while the watcher runs; spends of custody
outputs (a 2-of-3 signed spend with change, and an output spent in the block that made it);
a restart (a new watcher object) resumes from the cursor without counting twice; two watchers on
one database; a node that is down, or behind (with the same chain, and with another one), then
back; a reorg while a round reads (the next block is read ahead while one is written); the
bound on blocks per round and the start height; a watcher given another custody's descriptor
refuses to run.

Two watchers racing on one reorg (a node wrapper runs the other watcher at a chosen call): one
that found its fork point before the other handled the reorg rolls back nothing (no false
alert, the credited deposit untouched), and a block fetched from the old branch is not stored
on top of the other's new branch. A block read ahead that the node orphans before it is applied
(its answer says ``confirmations: -1``) is never stored. ``confirmations_min`` lowered between
runs confirms at the next round with no new block (once, audited); raised, it leaves confirmed
deposits confirmed and applies to those still seen.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS
from sluice.domain.errors import InvalidOperationStateError
from sluice.ports.bitcoin import (
    DerivedAddress,
    JsonObject,
    NotFoundError,
    SpendInput,
    TxOutput,
)
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import change_address, deposit_address
from sluice.services.btc_watcher import DepositWatcher, WatchTick, custody_balance, list_deposits

CHAIN = CHAINS["regtest"]
START = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
ELSEWHERE = "0014" + "ab" * 20  # a script that is not custody's


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    keys_dir = tmp_path_factory.mktemp("custody") / "keys"
    custody = create_sandbox_custody(keys_dir, CHAIN)
    return EmbitCustodyWallet(custody.descriptor, CHAIN, load_signing_keys(custody.key_files))


@dataclass
class World:
    db: bootstrap.Database
    chain: FakeChain
    wallet: EmbitCustodyWallet
    settings: BitcoinSettings
    clock: Clock = field(default_factory=Clock)
    watcher: DepositWatcher = field(init=False)
    ticks: list[WatchTick] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.watcher = self.new_watcher()

    def new_watcher(self, node: Any = None) -> DepositWatcher:
        return DepositWatcher(
            self.db.uow, node or self.chain, self.wallet, self.settings, self.clock
        )

    def address(self, customer: str, *, new: bool = False) -> DerivedAddress:
        return deposit_address(self.db.uow, self.wallet, customer, new=new, clock=self.clock)

    def run(self) -> WatchTick:
        tick = self.run_unchecked()
        if tick.error is None:
            self.check_blocks()
        return tick

    def run_unchecked(self) -> WatchTick:
        tick = self.watcher.run_once()
        self.ticks.append(tick)
        return tick

    def check_blocks(self) -> None:
        """The watcher's blocks are the node's active chain, from the start height up."""
        with self.db.uow() as uow:
            cursor = uow.btc_watch.cursor()
            assert cursor is not None
            stored = uow.btc_watch.block_hashes(0, cursor.height)
        assert cursor.height == self.chain.tip_height
        for height, block_hash in stored.items():
            assert self.chain.getblockhash(height) == block_hash

    def deposit(self, txid: str, vout: int = 0) -> Any:
        (view,) = [d for d in list_deposits(self.db.uow) if (d.txid, d.vout) == (txid, vout)]
        return view

    def output(self, txid: str, vout: int = 0) -> Any:
        with self.db.uow() as uow:
            row = uow.btc_watch.output(txid, vout)
        assert row is not None
        return row

    def alerts(self) -> list[Any]:
        with self.db.uow() as uow:
            return uow.books.alerts()

    def operations(self, name: str) -> list[Any]:
        return [
            r for r in list_audit_records(self.db.uow, limit=10_000) if r.entry.operation == name
        ]

    @property
    def confirmed(self) -> int:
        return sum(t.confirmed for t in self.ticks)


@pytest.fixture
def world(tmp_path: Path, wallet: EmbitCustodyWallet) -> Iterator[World]:
    db = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    with db.uow() as uow:
        for customer in ("alice", "bob"):
            uow.reference.add_customer(customer, customer.title())
        uow.commit()
    yield World(db, FakeChain(CHAIN), wallet, BitcoinSettings(chain=CHAIN))
    db.dispose()


def test_a_deposit_reaches_six_confirmations_exactly_once(world: World) -> None:
    address = world.address("alice")
    txid, vout = world.chain.fund(address.script_hex, 125_000, mine=True)  # block 1
    world.chain.fund(ELSEWHERE, 9_999, mine=True)  # not ours: nothing recorded
    first = world.run()
    assert (first.blocks, first.outputs, first.confirmed, first.error) == (3, 1, 0, None)
    assert (first.tip_height, first.cursor_height) == (2, 2)
    seen = world.deposit(txid, vout)
    assert (seen.status, seen.confirmations, seen.amount_sats) == ("seen", 2, 125_000)
    assert (seen.customer, seen.address, seen.block_height) == ("alice", address.address, 1)
    statuses = []
    for _ in range(6):
        world.chain.mine()
        world.run()
        view = world.deposit(txid, vout)
        statuses.append((view.confirmations, view.status))
    assert statuses == [
        (3, "seen"),
        (4, "seen"),
        (5, "seen"),
        (6, "confirmed"),
        (7, "confirmed"),
        (8, "confirmed"),
    ]
    assert world.confirmed == 1
    assert [t.confirmed for t in world.ticks] == [0, 0, 0, 0, 1, 0, 0]
    assert world.run().blocks == 0  # nothing new: nothing done
    (audited,) = world.operations("btc_deposits_confirmed")
    assert audited.entry.customer_id == "alice"
    assert audited.entry.parameters["amount_sats"] == 125_000
    assert audited.entry.parameters["customers"] == ["alice"]
    assert audited.entry.parameters["deposits"] == [[f"{txid}:{vout}", "alice", 125_000, 1]]
    assert audited.entry.parameters["cursor_height"] == 6
    assert audited.entry.state_changes == [{"status": "confirmed", "deposits": 1}]
    row = world.output(txid, vout)
    assert row.kind == "deposit" and row.confirmed_at is not None
    assert row.input_outpoints and all(":" in o for o in row.input_outpoints)
    assert world.alerts() == []
    assert verify_audit_log(world.db.uow).ok


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_a_reorg_takes_the_deposit_to_the_new_branch(world: World, depth: int) -> None:
    address = world.address("alice")
    world.chain.mine(3)
    txid, _ = world.chain.fund(address.script_hex, 80_000)
    world.chain.mine(depth)  # the deposit is in the first of the last `depth` blocks
    world.run()
    before = world.deposit(txid)
    assert (before.status, before.block_height, before.confirmations) == ("seen", 4, depth)
    new_hashes = world.chain.reorg(depth)  # a longer branch; the deposit is in its first block
    tick = world.run()
    assert (tick.reorgs, tick.rolled_back_blocks, tick.blocks) == (1, depth, depth + 1)
    after = world.deposit(txid)
    assert (after.status, after.block_height, after.block_hash) == ("seen", 4, new_hashes[0])
    assert after.block_hash != before.block_hash
    assert after.confirmations == depth + 1
    (reorg,) = world.operations("btc_reorg")
    assert reorg.entry.parameters["fork_height"] == 3
    assert reorg.entry.state_changes == [
        {"output": f"{txid}:0", "was": "seen", "status": "reorged"}
    ]
    world.chain.mine(6)
    world.run()
    assert world.deposit(txid).status == "confirmed"
    assert world.confirmed == 1
    assert world.alerts() == []  # only a confirmed deposit reorged alerts


def test_a_reorg_above_the_deposit_leaves_it_alone(world: World) -> None:
    address = world.address("alice")
    txid, _ = world.chain.fund(address.script_hex, 80_000, mine=True)
    world.chain.mine(3)
    world.run()
    world.chain.reorg(2)
    tick = world.run()
    assert (tick.reorgs, tick.rolled_back_blocks) == (1, 2)
    view = world.deposit(txid)
    assert (view.status, view.block_height, view.confirmations) == ("seen", 1, 5)


def test_a_branch_of_the_same_length_is_a_reorg_at_once(world: World) -> None:
    address = world.address("alice")
    world.chain.mine(2)
    txid, _ = world.chain.fund(address.script_hex, 80_000, mine=True)  # block 3
    world.run()
    # No block beyond the cursor: only the hash at the cursor's height tells.
    world.chain.reorg(2, blocks=2, include_mempool=False)
    tick = world.run()
    assert (tick.reorgs, tick.rolled_back_blocks, tick.blocks) == (1, 2, 2)
    assert world.deposit(txid).status == "reorged"


def test_a_reorg_that_drops_the_deposit(world: World) -> None:
    address = world.address("alice")
    txid, _ = world.chain.fund(address.script_hex, 80_000, mine=True)
    world.chain.mine()
    world.run()
    world.chain.reorg(2, drop_txids=[txid])
    world.run()
    gone = world.deposit(txid)
    assert (gone.status, gone.block_height, gone.block_hash, gone.confirmations) == (
        "reorged",
        None,
        None,
        0,
    )
    world.chain.mine(10)
    world.run()
    assert world.deposit(txid).status == "reorged"
    assert world.confirmed == 0
    assert custody_balance(world.db.uow).total_sats == 0


def test_a_reorg_that_moves_the_deposit_to_a_later_block(world: World) -> None:
    address = world.address("alice")
    txid, _ = world.chain.fund(address.script_hex, 80_000)
    world.chain.mine(3)  # the deposit in block 1
    world.run()
    assert world.deposit(txid).confirmations == 3
    # The new branch's blocks leave it in the mempool; it is mined two blocks later.
    world.chain.reorg(3, include_mempool=False, blocks=5)
    world.chain.mine()  # block 6 holds it
    world.run()
    moved = world.deposit(txid)
    assert (moved.status, moved.block_height, moved.confirmations) == ("seen", 6, 1)
    counts = []
    for _ in range(6):
        world.chain.mine()
        world.run()
        counts.append((world.deposit(txid).confirmations, world.deposit(txid).status))
    assert counts[4] == (6, "confirmed") and counts[3] == (5, "seen")
    assert world.confirmed == 1
    with world.db.uow() as uow:
        assert len(uow.btc_watch.outputs()) == 1  # the same row


def test_a_confirmed_deposit_reorged_alerts_and_a_credited_one_stays_credited(
    world: World,
) -> None:
    alice = world.address("alice")
    bob = world.address("bob")
    a_txid, _ = world.chain.fund(alice.script_hex, 60_000)
    b_txid, _ = world.chain.fund(bob.script_hex, 70_000)
    world.chain.mine(6)
    world.run()
    assert world.deposit(a_txid).status == world.deposit(b_txid).status == "confirmed"
    with world.db.uow() as uow:
        uow.btc_watch.mark_credited(a_txid, 0, at=world.clock())
        uow.commit()
    # Both go back to the mempool; the new branch leaves them there for a block.
    world.chain.reorg(6, include_mempool=False, blocks=7)
    world.run()
    # (A credited deposit reorged also halts minting: that alert is issuance's.)
    alerts = {a.details["txid"]: a for a in world.alerts() if a.kind.startswith("btc_")}
    assert alerts[a_txid].severity == "critical" and alerts[a_txid].kind == "btc_deposit_reorged"
    assert alerts[b_txid].severity == "warning"
    assert "credited" in alerts[a_txid].message
    reorged = world.operations("btc_deposit_reorged")
    assert {(r.entry.customer_id, r.entry.parameters["was"]) for r in reorged} == {
        ("alice", "credited"),
        ("bob", "confirmed"),
    }
    assert world.deposit(a_txid).status == world.deposit(b_txid).status == "reorged"
    world.chain.mine()  # block 8 holds them again
    world.run()
    assert world.deposit(a_txid).status == world.deposit(b_txid).status == "seen"
    world.chain.mine(5)
    world.run()
    # Confirmed again, from the new block: alice's comes back credited, bob's confirmed.
    assert world.deposit(a_txid).status == "credited"
    assert world.deposit(b_txid).status == "confirmed"
    with world.db.uow() as uow, pytest.raises(InvalidOperationStateError):
        uow.btc_watch.mark_credited(a_txid, 0, at=world.clock())
    assert len([a for a in world.alerts() if a.kind.startswith("btc_")]) == 2
    assert verify_audit_log(world.db.uow).ok


def test_two_deposits_to_one_address_and_dust(world: World) -> None:
    address = world.address("alice")
    dust_limit = CHAIN.p2wsh_dust_limit_sats
    first, _ = world.chain.fund(address.script_hex, 40_000)
    second, _ = world.chain.fund(address.script_hex, 2_000)
    dust, _ = world.chain.fund(address.script_hex, dust_limit - 1)
    edge, _ = world.chain.fund(address.script_hex, dust_limit)  # at the limit: not dust
    world.chain.mine()
    tick = world.run()
    assert (tick.outputs, tick.dust) == (3, 1)
    deposits = {d.txid: d for d in list_deposits(world.db.uow, customer_id="alice")}
    assert {t: d.status for t, d in deposits.items()} == {
        first: "seen",
        second: "seen",
        dust: "dust",
        edge: "seen",
    }
    world.chain.mine(10)
    world.run()
    statuses = {d.txid: d.status for d in list_deposits(world.db.uow)}
    assert statuses[dust] == "dust"
    assert {statuses[first], statuses[second], statuses[edge]} == {"confirmed"}
    assert world.confirmed == 3
    assert list_deposits(world.db.uow, customer_id="bob") == []
    balance = custody_balance(world.db.uow)
    assert balance.total_sats == 40_000 + 2_000 + dust_limit - 1 + dust_limit
    assert balance.confirmed_sats == 40_000 + 2_000 + dust_limit
    assert (balance.height, balance.block_hash) == (11, world.chain.getblockhash(11))
    assert world.address("alice").index == 1  # funded: the next deposit goes elsewhere


def test_an_address_issued_while_the_watcher_runs_is_watched(world: World) -> None:
    world.address("alice")
    world.chain.mine()
    world.run()
    late = world.address("bob")  # after the watcher loaded its scripts
    txid, _ = world.chain.fund(late.script_hex, 30_000, mine=True)
    assert world.run().outputs == 1
    assert world.deposit(txid).customer == "bob"


def test_spends_of_custody_outputs_are_recorded(world: World) -> None:
    address = world.address("alice")
    txid, vout = world.chain.fund(address.script_hex, 500_000)
    world.chain.mine(6)
    world.run()
    with world.db.uow() as uow:
        change = change_address(uow, world.wallet, world.clock)
        uow.commit()
    signed = world.wallet.sign(
        [SpendInput(txid, vout, 500_000, address.branch, address.index)],
        [TxOutput(ELSEWHERE, 200_000), TxOutput(change.script_hex, 290_000)],
    )
    assert world.chain.sendrawtransaction(signed.raw_hex) == signed.txid
    world.chain.mine()
    tick = world.run()
    assert tick.outputs == 1  # the change
    spent = world.output(txid, vout)
    tip = world.chain.tip_height
    assert (spent.spent_txid, spent.spent_height) == (signed.txid, tip)
    assert spent.spent_block_hash == world.chain.getblockhash(tip)
    assert spent.status == "confirmed"  # spending does not change what it was
    change_vout = next(
        o["n"]
        for o in world.chain.getrawtransaction(signed.txid)["vout"]
        if o["scriptPubKey"]["hex"] == change.script_hex
    )
    change_row = world.output(signed.txid, change_vout)
    assert (change_row.kind, change_row.customer_id, change_row.amount_sats) == (
        "change",
        None,
        290_000,
    )
    assert change_row.input_outpoints == (f"{txid}:{vout}",)
    balance = custody_balance(world.db.uow)
    assert [(u.txid, u.kind) for u in balance.utxos] == [(signed.txid, "change")]
    assert list_deposits(world.db.uow)[0].txid == txid  # change is not a deposit
    # A reorg of the spending block clears the spend: the output is custody's again.
    world.chain.reorg(1, include_mempool=False)
    world.run()
    assert world.output(txid, vout).spent_txid is None
    assert world.output(signed.txid, change_vout).status == "reorged"
    assert {u.txid for u in custody_balance(world.db.uow).utxos} == {txid}
    world.chain.mine()  # the spend is mined again, in the new branch
    world.run()
    assert world.output(txid, vout).spent_txid == signed.txid
    change_back = world.output(signed.txid, change_vout)
    assert change_back.status == "seen" and change_back.block_height == world.chain.tip_height


def test_an_output_spent_in_the_block_that_made_it(world: World) -> None:
    address = world.address("alice")
    funding, vout = world.chain.fund(address.script_hex, 100_000)
    signed = world.wallet.sign(
        [SpendInput(funding, vout, 100_000, address.branch, address.index)],
        [TxOutput(ELSEWHERE, 90_000)],
    )
    world.chain.sendrawtransaction(signed.raw_hex)
    world.chain.mine()
    world.run()
    row = world.output(funding, vout)
    assert row.spent_txid == signed.txid and row.block_height == row.spent_height == 1
    assert custody_balance(world.db.uow).utxos == []
    # The next block spends nothing of ours: nothing is recorded twice.
    world.chain.mine(6)
    world.run()
    assert world.output(funding, vout).status == "confirmed"


def test_a_restarted_watcher_resumes_from_the_cursor(world: World) -> None:
    address = world.address("alice")
    txid, _ = world.chain.fund(address.script_hex, 90_000, mine=True)
    world.chain.mine(2)
    world.run()
    world.watcher = world.new_watcher()  # a restart: nothing in memory
    world.chain.mine(2)
    tick = world.run()
    assert (tick.blocks, tick.outputs) == (2, 0)
    world.watcher = world.new_watcher()
    world.chain.mine(4)
    assert world.run().confirmed == 1
    world.watcher = world.new_watcher()
    world.chain.reorg(1)
    tick = world.run()
    assert (tick.reorgs, tick.confirmed, tick.outputs) == (1, 0, 0)
    assert world.confirmed == 1
    with world.db.uow() as uow:
        assert len(uow.btc_watch.outputs()) == 1
    assert world.deposit(txid).confirmations == 10


def test_two_watchers_apply_each_block_once(world: World) -> None:
    address = world.address("alice")
    txid, _ = world.chain.fund(address.script_hex, 90_000, mine=True)
    other = world.new_watcher()
    assert world.run().blocks == 2
    assert other.run_once().blocks == 0  # already applied
    world.chain.mine(5)
    assert other.run_once().confirmed == 1
    assert world.run().confirmed == 0
    assert world.deposit(txid).status == "confirmed"


def test_a_node_that_is_down_then_back(world: World) -> None:
    address = world.address("alice")
    txid, _ = world.chain.fund(address.script_hex, 90_000, mine=True)
    world.run()
    world.chain.mine(5)
    world.chain.down = True
    tick = world.run()
    assert tick.error is not None and "did not answer" in tick.error
    assert (tick.blocks, tick.cursor_height) == (0, 1)
    assert world.deposit(txid).status == "seen"
    world.chain.down = False
    tick = world.run()
    assert (tick.blocks, tick.confirmed, tick.error) == (5, 1, None)


class BehindNode:
    """A node restarted from an older copy of the chain: it knows only up to ``height`` (and
    answers like the chain otherwise)."""

    def __init__(self, chain: FakeChain, height: int) -> None:
        self._chain = chain
        self.height = height

    def getblockchaininfo(self) -> JsonObject:
        info = self._chain.getblockchaininfo()
        return {**info, "blocks": self.height, "bestblockhash": self.getblockhash(self.height)}

    def getblockhash(self, height: int) -> str:
        if height > self.height:
            raise NotFoundError("Block height out of range", code=-8)
        return self._chain.getblockhash(height)

    def getblock(self, block_hash: str) -> JsonObject:
        block = self._chain.getblock(block_hash)
        if block["height"] > self.height:
            raise NotFoundError("Block not found", code=-5)
        if block["height"] == self.height:
            block.pop("nextblockhash", None)
        return block

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)


def test_a_node_that_is_behind_then_catches_up(world: World) -> None:
    address = world.address("alice")
    txid, _ = world.chain.fund(address.script_hex, 90_000, mine=True)
    world.chain.mine(4)
    world.run()
    behind = BehindNode(world.chain, 2)
    world.watcher = world.new_watcher(behind)
    tick = world.watcher.run_once()
    assert tick.error is not None and "behind" in tick.error
    assert (tick.blocks, tick.reorgs, tick.cursor_height, tick.tip_height) == (0, 0, 5, 2)
    assert world.deposit(txid).block_height == 1
    world.chain.mine(3)
    behind.height = world.chain.tip_height
    tick = world.watcher.run_once()
    assert (tick.blocks, tick.reorgs, tick.confirmed, tick.error) == (3, 0, 1, None)


def test_a_node_behind_on_another_branch_is_a_reorg(world: World) -> None:
    address = world.address("alice")
    txid, _ = world.chain.fund(address.script_hex, 90_000)
    world.chain.mine(4)  # the deposit in block 1
    world.run()
    # The node comes back on another branch from block 1 on, shorter than what was applied.
    world.chain.reorg(4, blocks=4)
    behind = BehindNode(world.chain, 3)
    world.watcher = world.new_watcher(behind)
    tick = world.watcher.run_once()
    assert (tick.reorgs, tick.rolled_back_blocks, tick.blocks, tick.error) == (1, 4, 3, None)
    assert tick.cursor_height == 3
    with world.db.uow() as uow:
        assert uow.btc_watch.block_hashes(0, 10) == {
            h: world.chain.getblockhash(h) for h in range(4)
        }
    moved = world.deposit(txid)
    assert (moved.block_height, moved.block_hash) == (1, world.chain.getblockhash(1))
    assert moved.status == "seen" and moved.confirmations == 3


class ReorgWhileReading:
    """The chain, reorganised by ``depth`` blocks just before the ``at``-th ``getblock`` (the
    watcher is then half-way through a round, with the next block read ahead)."""

    def __init__(self, chain: FakeChain, at: int, depth: int) -> None:
        self._chain = chain
        self._at = at
        self._depth = depth
        self.reads = 0

    def getblock(self, block_hash: str) -> JsonObject:
        self.reads += 1
        if self.reads == self._at:
            self._chain.reorg(self._depth)
        return self._chain.getblock(block_hash)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._chain, name)


@pytest.mark.parametrize("at", [2, 3, 5])
def test_a_reorg_while_the_watcher_reads(world: World, at: int) -> None:
    address = world.address("alice")
    txid, _ = world.chain.fund(address.script_hex, 80_000)
    world.chain.mine(5)  # the deposit in block 1
    node = ReorgWhileReading(world.chain, at, depth=5)
    world.watcher = world.new_watcher(node)
    first = world.watcher.run_once()
    assert first.error is None
    for _ in range(3):
        if world.watcher.run_once().blocks == 0:
            break
    world.check_blocks()
    view = world.deposit(txid)
    assert (view.block_height, view.block_hash) == (1, world.chain.getblockhash(1))
    assert view.status == "confirmed" and view.confirmations == 6
    with world.db.uow() as uow:
        assert len(uow.btc_watch.outputs()) == 1


def test_blocks_per_round_are_bounded_and_start_at_the_start_height(world: World) -> None:
    world.settings = replace(world.settings, watch_blocks_max=3, watch_start_height=4)
    world.watcher = world.new_watcher()
    address = world.address("alice")
    early, _ = world.chain.fund(address.script_hex, 10_000, mine=True)  # block 1: not read
    world.chain.mine(5)
    late, _ = world.chain.fund(address.script_hex, 20_000, mine=True)  # block 7
    ticks = [world.watcher.run_once() for _ in range(3)]
    assert [(t.blocks, t.cursor_height) for t in ticks] == [(3, 6), (1, 7), (0, 7)]
    with world.db.uow() as uow:
        assert uow.btc_watch.lowest_height() == 4
        assert [o.txid for o in uow.btc_watch.outputs()] == [late]
    assert early not in {d.txid for d in list_deposits(world.db.uow)}


def test_a_watcher_of_another_descriptor_refuses_to_run(world: World, tmp_path: Path) -> None:
    world.address("alice")
    other = create_sandbox_custody(tmp_path / "other-keys", CHAIN)
    elsewhere = EmbitCustodyWallet(other.descriptor, CHAIN, [])
    watcher = DepositWatcher(world.db.uow, world.chain, elsewhere, world.settings, world.clock)
    with pytest.raises(InvalidOperationStateError, match="another custody's descriptor"):
        watcher.run_once()
    with world.db.uow() as uow:
        assert uow.btc_watch.cursor() is None


class CallHook:
    """The chain, with ``action`` run once at the ``at``-th call of ``method``: before the call
    is answered, or (``after``) between reading the answer and returning it."""

    def __init__(
        self, chain: FakeChain, method: str, at: int, action: Any, *, after: bool = False
    ) -> None:
        self._chain = chain
        self._method = method
        self._at = at
        self._action = action
        self._after = after
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._chain, name)
        if name != self._method:
            return real

        def call(*args: Any) -> Any:
            self.calls += 1
            if self.calls != self._at:
                return real(*args)
            if self._after:
                answer = real(*args)
                self._action()
                return answer
            self._action()
            return real(*args)

        return call


def test_a_rollback_found_before_another_watcher_handled_the_reorg_does_nothing(
    world: World,
) -> None:
    """Watcher B finds its fork point; watcher A meanwhile rolls back, applies the whole new
    branch (confirming the deposit) and the mint credits it. B's rollback then finds the stored
    tip moved and undoes nothing: no alert, no second reorg record, the deposit stays credited."""
    world.chain.mine(2)
    world.run()
    address = world.address("alice")
    txid, vout = world.chain.fund(address.script_hex, 100_000)
    world.chain.mine()  # block 3
    world.run()
    world.chain.reorg(1, blocks=6)  # the deposit moves into block 3 of the new branch

    def a_handles_the_reorg() -> None:
        tick = world.run()
        assert (tick.reorgs, tick.blocks, tick.confirmed) == (1, 6, 1)
        with world.db.uow() as uow:
            uow.btc_watch.mark_credited(txid, vout, at=world.clock())
            uow.commit()

    # B's calls to getblockhash: the reorg check at its cursor, then the walk to the fork point.
    b = world.new_watcher(CallHook(world.chain, "getblockhash", 2, a_handles_the_reorg))
    tick_b = b.run_once()
    assert (tick_b.reorgs, tick_b.rolled_back_blocks, tick_b.blocks) == (0, 0, 0)
    assert tick_b.error is None
    world.check_blocks()
    deposit = world.deposit(txid, vout)
    assert (deposit.status, deposit.block_height) == ("credited", 3)
    assert world.alerts() == []
    assert len(world.operations("btc_reorg")) == 1
    # The next round of B starts from the stored cursor: nothing left to do.
    again = b.run_once()
    assert (again.reorgs, again.blocks, again.error) == (0, 0, None)
    assert world.deposit(txid, vout).status == "credited"


def test_a_block_fetched_from_the_old_branch_is_not_stored_on_the_new_one(world: World) -> None:
    """Watcher A fetches block 5 of the old branch; meanwhile the node replaces blocks 4–5 and
    watcher B (one block per round) rolls back and applies 4'. A's block 5 (parent: the old 4,
    which A still holds as its cursor) is refused in its transaction, and A's next rounds follow
    the new branch."""
    world.chain.mine(4)
    world.run()
    b = DepositWatcher(
        world.db.uow,
        world.chain,
        world.wallet,
        replace(world.settings, watch_blocks_max=1),
        world.clock,
    )
    assert b.run_once().blocks == 0
    world.chain.mine()  # block 5 of the old branch

    def reorg_and_b_runs() -> None:
        world.chain.reorg(2, blocks=2)
        tick = b.run_once()
        assert (tick.reorgs, tick.blocks, tick.cursor_height) == (1, 1, 4)

    a = world.new_watcher(CallHook(world.chain, "getblock", 1, reorg_and_b_runs, after=True))
    tick = a.run_once()
    assert (tick.blocks, tick.error) == (0, None)
    with world.db.uow() as uow:
        stored = uow.btc_watch.block_hashes(0, 10)
    # The stored chain is the node's, up to B's 4': no old block 5 on top of it.
    assert stored == {height: world.chain.getblockhash(height) for height in range(5)}
    for _ in range(3):
        if a.run_once().blocks:
            break
    world.check_blocks()


def test_a_block_read_ahead_then_orphaned_is_never_applied(world: World) -> None:
    """The round applies block 2 while block 3 is read ahead; the node replaces block 3 before
    answering, so the answer is the old block 3 with ``confirmations: -1`` (its parent, block 2,
    is what the watcher stored). It is not applied: the round ends at block 2, no reorg is
    recorded, and the next round applies the node's block 3."""
    address = world.address("alice")
    world.chain.mine()
    world.run()
    world.chain.mine()  # block 2
    txid, _ = world.chain.fund(address.script_hex, 70_000, mine=True)  # old block 3
    old_three = world.chain.getblockhash(3)
    node = CallHook(world.chain, "getblock", 2, lambda: world.chain.reorg(1, include_mempool=False))
    world.watcher = world.new_watcher(node)
    first = world.run_unchecked()
    assert (first.blocks, first.reorgs, first.cursor_height, first.error) == (1, 0, 2, None)
    with world.db.uow() as uow:
        assert uow.btc_watch.block_hashes(3, 3) == {}
        assert uow.btc_watch.output(txid, 0) is None
    assert world.chain.getblockhash(3) != old_three
    second = world.run()
    assert (second.blocks, second.reorgs) == (world.chain.tip_height - 2, 0)
    assert world.operations("btc_reorg") == []


def test_confirmations_min_changed_between_runs(world: World) -> None:
    address = world.address("alice")
    first, _ = world.chain.fund(address.script_hex, 50_000, mine=True)  # block 1
    world.chain.mine(3)
    world.run()
    assert world.deposit(first).confirmations == 4 and world.deposit(first).status == "seen"
    # Lowered to 3: the deposit already has 4, so it is confirmed at the next round, no new
    # block needed, once.
    world.settings = replace(world.settings, confirmations_min=3)
    world.watcher = world.new_watcher()
    tick = world.run()
    assert (tick.blocks, tick.confirmed) == (0, 1)
    assert world.deposit(first).status == "confirmed"
    (audited,) = world.operations("btc_deposits_confirmed")
    assert audited.entry.parameters["confirmations_min"] == 3
    assert audited.entry.parameters["deposits"] == [[f"{first}:0", "alice", 50_000, 1]]
    assert world.run().confirmed == 0
    # Raised to 10: the confirmed deposit stays confirmed; a deposit still seen waits for 10.
    second, _ = world.chain.fund(world.address("alice").script_hex, 60_000, mine=True)  # 5
    world.settings = replace(world.settings, confirmations_min=10)
    world.watcher = world.new_watcher()
    world.chain.mine(5)
    assert world.run().confirmed == 0
    assert world.deposit(first).status == "confirmed"
    assert (world.deposit(second).status, world.deposit(second).confirmations) == ("seen", 6)
    world.chain.mine(4)
    assert world.run().confirmed == 1
    assert world.deposit(second).status == "confirmed"
    assert verify_audit_log(world.db.uow).ok
