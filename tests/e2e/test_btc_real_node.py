"""Bitcoin custody against a real node, driven through the ``sluice btc`` commands.

Covers, on Debian's ``litecoind -regtest`` (Litecoin Core 0.21, Bitcoin Core's RPC) started by the
harness (:mod:`tests.bitcoin_regtest`) in a temporary data directory:

* **Deposits** (SQLite). Two customers get deposit addresses (never the same one; the same one
  again until it is funded, a new one after). The node's legacy wallet pays two deposits to one
  address, one of them under the P2WSH dust limit of Litecoin (3300 litoshi; the node's wallet
  and mempool refuse such an output, so that one is mined with ``generateblock``). Blocks are
  mined and ``sluice btc watch --once`` runs again and again, each run a new process, so the
  watcher is restarted between all rounds. The node is killed (SIGKILL: connection refused)
  and stopped (its cookie file gone, a new one at its next start): a round then exits with
  code 1 and names the node it cannot reach, without a traceback, and the next round after the
  node is back carries on. A deposit is ``seen`` until
  it has 6 confirmations, then ``confirmed``; it is never listed twice and its amount is what
  was sent; the dust output is recorded as ``dust`` and never confirmed.
  A reorg made with ``invalidateblock`` on the block holding an unconfirmed deposit, then a block
  mined to another address (the same block again would be a duplicate), puts the deposit in a
  new block: the same ``txid:vout``, one row, its new block hash. Switching back
  (``invalidateblock`` on the new block, ``reconsiderblock`` on the old one) moves it back; it
  then confirms once. A deposit whose block is invalidated and whose transaction is
  double-spent in the new branch ends ``reorged`` and is never confirmed, however many blocks
  follow. The watcher's rounds report exactly one confirmation per confirmed deposit, the
  audit trail names each confirmed deposit once (and ``sluice audit verify`` passes), and the
  outputs table holds exactly the rows listed.
* **A long-running watch** (``sluice btc watch --interval 0.2``, SQLite) sees a deposit, rides
  out the node killed under it (it says so and keeps running), confirms the deposit once the
  node is back, watches an address issued by another process while it runs, sends a payout
  queued meanwhile and completes it, and exits 0 on SIGTERM.
* **A confirmed deposit reorged away** (6 blocks deep) and back in a new, at first shorter,
  branch: one row, an alert, seen again, confirmed again.
* **Payouts** (SQLite and PostgreSQL). After deposits are confirmed, three ``sluice btc payout``
  requests (a replay of one answers the same payout) go out in ONE transaction at the next
  round: on the node it has the custody's inputs, the three payouts' outputs (each the amount
  less its share of the fee) and a change output, every input's witness is the empty dummy, two
  signatures and the 2-of-3 ``sortedmulti`` script, and it signals BIP 125. Blocks are then
  mined empty (``generateblock`` with no transaction: the batch stays in the mempool as if
  miners passed it over) until ``payout_bump_after_blocks``; the next round fee-bumps it: a new
  txid spending the same outpoints and paying more fee (taken from the change), the old one
  gone from the mempool, the payouts the same. Mined, its block is invalidated and the same
  transaction mined again in a new block: the payouts follow it (one batch, the same txid).
  Confirmed, ``sluice btc payouts`` shows each completed with the mined txid, and the
  node's wallet received each payout's amount less its fee share exactly once, custody holds
  just the change (``sluice btc balance``; deposits = payouts paid + fee + change), and later
  rounds send nothing more.
* **Rounds at once** (SQLite and PostgreSQL): three ``sluice btc watch --once`` started
  together over three queued payouts make one batch, one transaction, one payment each.
* **The replaced version mined after all** (SQLite; the node reached with ``rpc_user`` and
  ``rpc_password_file`` instead of its cookie file): after a fee bump, a block holding the
  *first* version (``generateblock`` with its raw transaction) completes the same payouts with
  that txid, paid once, and nothing more is sent.
* **A node that forgot the batch** (SQLite): killed with the batch in its mempool, the node
  comes back without it; the next round sends the recorded transaction again (the same txid,
  nothing new) and it completes, paying the destination (an address of no wallet) once.
* **A crash between broadcast and record** (SQLite). A payout's id asked again with another
  amount, and another network's address, are refused (exit 2) and queue nothing. One round as
  ``sluice btc watch --once`` makes it, wired from the same configuration file, is killed with
  SIGKILL by the payouts worker's ``after_broadcast`` hook: the node holds the batch, the DB
  still says it was only signed. The next ``sluice btc watch --once`` finds it in the mempool
  and records it as sent without sending anything else; it is mined, completes, and the
  destination is paid exactly once. The same for a round killed right after the node took a
  fee bump (the bump was recorded before it was sent): the next round finds it in the mempool,
  neither sends nor bumps again, and it is the version mined.

No run ends in a traceback, and no output holds the node's password or a custody key. Every
wait is a bounded poll. Without ``litecoind`` the harness skips (fails under ``CI=true``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice.store.bitcoin_tables import btc_outputs, btc_payouts
from sluice.store.tables import alerts, audit_records
from tests.bitcoin_regtest import RegtestNode
from tests.e2e.btc_node_cli import (
    MATURE_BLOCKS,
    Custody,
    double_spend_in_block,
    empty_blocks,
    in_mempool,
    output_index,
    pay_below_relay_dust,
    pays,
    run_crash_after_broadcast,
    sats,
    wait_until,
)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CONFIRMATIONS = 6
DUST_LIMIT = 3300  # Litecoin's P2WSH dust limit (its dust relay fee is 10x Bitcoin's)
BUMP_AFTER = 2
CRASH_TIMEOUT_S = 120.0
LOOP_TIMEOUT_S = 60.0  # for a running watch to see what happened (its start costs seconds)


@pytest.fixture
def node() -> Iterator[RegtestNode]:
    """A node of its own for each test, its wallet holding spendable coins."""
    regtest = RegtestNode()
    try:
        regtest.start()
        regtest.mine(MATURE_BLOCKS)
        yield regtest
    finally:
        regtest.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sluice.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


def tip(node: RegtestNode) -> str:
    return str(node.rpc.call("getbestblockhash"))


def block_txids(node: RegtestNode, block_hash: str) -> list[str]:
    return [str(txid) for txid in node.rpc.call("getblock", block_hash, 1)["tx"]]


def wait_in_mempool(node: RegtestNode, txid: str) -> None:
    wait_until(f"{txid} back in the node's mempool", lambda: in_mempool(node, txid))


def outputs_in_db(db: str) -> dict[str, tuple[str, int]]:
    """Every custody output the watcher recorded (its table, not a listing of it)."""
    engine = sa.create_engine(db)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(
                    btc_outputs.c.txid,
                    btc_outputs.c.vout,
                    btc_outputs.c.status,
                    btc_outputs.c.amount_sats,
                )
            ).all()
    finally:
        engine.dispose()
    found = {f"{r.txid}:{r.vout}": (str(r.status), int(r.amount_sats)) for r in rows}
    assert len(found) == len(rows), rows
    return found


def alerts_of(db: str, kind: str) -> list[dict[str, Any]]:
    engine = sa.create_engine(db)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.select(alerts).where(alerts.c.kind == kind)).all()
    finally:
        engine.dispose()
    return [dict(row._mapping) for row in rows]


def payout_status(db: str, payout_id: str) -> str | None:
    engine = sa.create_engine(db)
    try:
        with engine.connect() as connection:
            status = connection.execute(
                sa.select(btc_payouts.c.status).where(btc_payouts.c.id == payout_id)
            ).scalar_one_or_none()
    finally:
        engine.dispose()
    return None if status is None else str(status)


def confirmations_audited(db: str) -> list[str]:
    """The deposits named by the audit trail's ``btc_deposits_confirmed`` records, with
    repetitions: a deposit confirmed twice would be named twice."""
    engine = sa.create_engine(db)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.select(audit_records.c.parameters).where(
                    audit_records.c.operation == "btc_deposits_confirmed"
                )
            ).all()
    finally:
        engine.dispose()
    named: list[str] = []
    for row in rows:
        parameters = json.loads(row.parameters)
        column = parameters["columns"].index("output")
        named += [str(deposit[column]) for deposit in parameters["deposits"]]
    return named


# --- deposits ----------------------------------------------------------------------------------


def test_deposits_confirm_once_across_restarts_node_outages_and_reorgs(
    node: RegtestNode, tmp_path: Path
) -> None:
    custody = Custody.create(
        node,
        tmp_path / "custody",
        f"sqlite:///{tmp_path / 'sluice.db'}",
        confirmations_min=CONFIRMATIONS,
    )
    custody.add_customer("alice")
    custody.add_customer("bob")
    alice = custody.address("alice")
    bob = custody.address("bob")
    assert alice["address"] != bob["address"] and alice["index"] != bob["index"]
    assert custody.address("alice") == alice  # unfunded: the same address again
    alice_address = str(alice["address"])

    # Two deposits to alice's address: one in the mempool, one of dust in a block of its own.
    big_sats, dust_sats = 1_000_000, 3_000
    assert dust_sats < DUST_LIMIT
    big_txid = node.fund(alice_address, big_sats)
    big = f"{big_txid}:{output_index(node, big_txid, alice_address)}"
    dust_txid, _ = pay_below_relay_dust(node, alice_address, dust_sats)
    dust = f"{dust_txid}:{output_index(node, dust_txid, alice_address)}"

    first = custody.watch()
    assert first["error"] is None
    assert first["watch"]["dust"] == 1 and first["watch"]["outputs"] == 0
    assert first["watch"]["cursor_height"] == node.height
    deposits = custody.deposits()
    assert deposits[dust]["status"] == "dust" and deposits[dust]["amount_sats"] == dust_sats
    assert big not in deposits  # still in the mempool

    node.mine(1)
    custody.watch()
    deposits = custody.deposits()
    assert deposits[big]["status"] == "seen"
    assert deposits[big]["amount_sats"] == big_sats
    assert deposits[big]["confirmations"] == 1
    assert deposits[big]["customer"] == "alice"

    # The node is killed: a round says it cannot reach it (connection refused), exits 1 and
    # changes nothing; once it is back, the next round reads on.
    node.kill()
    down = custody.watch(code=1)
    assert down["error"] is not None and f"127.0.0.1:{node.rpc_port}" in down["error"]
    assert down["watch"]["blocks"] == 0
    node.start()
    node.mine(1)
    assert custody.watch()["watch"]["cursor_height"] == node.height
    # Stopped the orderly way, the node takes its cookie file along; restarted, it writes a new
    # one, which the next round reads.
    node.stop()
    down = custody.watch(code=1)
    assert down["error"] is not None and f"127.0.0.1:{node.rpc_port}" in down["error"]
    assert down["watch"]["blocks"] == 0
    node.start()
    node.mine(2)
    resumed = custody.watch()
    assert resumed["error"] is None and resumed["watch"]["blocks"] == 2
    assert custody.deposits()[big]["confirmations"] == 4

    node.mine(1)
    custody.watch()
    deposits = custody.deposits()
    assert (deposits[big]["status"], deposits[big]["confirmations"]) == ("seen", 5)
    node.mine(1)
    assert custody.watch()["watch"]["confirmed"] == 1
    deposits = custody.deposits()
    assert (deposits[big]["status"], deposits[big]["confirmations"]) == ("confirmed", 6)
    assert deposits[dust]["status"] == "dust"

    # A reorg moves bob's unconfirmed deposit to another block, then back; the node restarts
    # first (a new cookie file for the next round to read).
    node.restart()
    moved_sats = 500_000
    moved_txid = node.fund(str(bob["address"]), moved_sats)
    moved = f"{moved_txid}:{output_index(node, moved_txid, str(bob['address']))}"
    (old_block,) = node.mine(1)
    assert moved_txid in block_txids(node, old_block)
    custody.watch()
    assert custody.deposits()[moved]["block_hash"] == old_block

    node.invalidate(old_block)
    wait_in_mempool(node, moved_txid)
    (new_block,) = node.mine(1)  # to a fresh address: the same block again is a duplicate
    assert new_block != old_block and moved_txid in block_txids(node, new_block)
    reorged = custody.watch()
    assert reorged["watch"]["reorgs"] == 1
    deposits = custody.deposits()
    assert deposits[moved]["status"] == "seen"
    assert deposits[moved]["block_hash"] == new_block
    assert deposits[moved]["amount_sats"] == moved_sats

    node.invalidate(new_block)
    node.reconsider(old_block)
    wait_until("the node back on the first branch", lambda: tip(node) == old_block)
    assert custody.watch()["watch"]["reorgs"] == 1
    deposits = custody.deposits()
    assert (deposits[moved]["status"], deposits[moved]["block_hash"]) == ("seen", old_block)
    assert deposits[moved]["confirmations"] == 1
    node.mine(CONFIRMATIONS - 2)
    custody.watch()
    assert custody.deposits()[moved]["status"] == "seen"
    node.mine(1)
    assert custody.watch()["watch"]["confirmed"] == 1
    deposits = custody.deposits()
    assert (deposits[moved]["status"], deposits[moved]["confirmations"]) == ("confirmed", 6)
    assert deposits[moved]["block_hash"] == old_block

    # A deposit dropped by a reorg: its block invalidated, its coins spent elsewhere.
    funded_again = custody.address("alice")  # funded: a new address now
    assert funded_again["address"] != alice_address and funded_again["index"] != alice["index"]
    dropped_sats = 200_000
    dropped_txid = node.fund(str(funded_again["address"]), dropped_sats)
    dropped = f"{dropped_txid}:{output_index(node, dropped_txid, str(funded_again['address']))}"
    (dropped_block,) = node.mine(1)
    custody.watch()
    assert custody.deposits()[dropped]["status"] == "seen"
    node.invalidate(dropped_block)
    wait_in_mempool(node, dropped_txid)
    double_spend_in_block(node, dropped_txid)
    assert not in_mempool(node, dropped_txid)  # its conflict is mined: it is gone for good
    node.mine(1)
    assert custody.watch()["watch"]["reorgs"] == 1
    deposits = custody.deposits()
    assert (deposits[dropped]["status"], deposits[dropped]["confirmations"]) == ("reorged", 0)
    node.mine(CONFIRMATIONS)
    assert custody.watch()["watch"]["confirmed"] == 0
    # Reconsidering the dropped block changes nothing: its branch is shorter.
    node.reconsider(dropped_block)
    assert custody.watch()["watch"]["reorgs"] == 0

    deposits = custody.deposits()
    assert {key: (row["status"], row["amount_sats"]) for key, row in deposits.items()} == {
        big: ("confirmed", big_sats),
        dust: ("dust", dust_sats),
        moved: ("confirmed", moved_sats),
        dropped: ("reorged", dropped_sats),
    }
    assert outputs_in_db(custody.db) == {
        key: (row["status"], row["amount_sats"]) for key, row in deposits.items()
    }
    assert custody.confirmed_in_rounds() == 2  # each confirmed deposit exactly once
    assert sorted(confirmations_audited(custody.db)) == sorted([big, moved])
    custody.run("audit", "verify")
    balance = custody.json("btc", "balance")
    assert balance["height"] == node.height and balance["block_hash"] == tip(node)
    assert balance["confirmed_sats"] == big_sats + moved_sats


def test_a_confirmed_deposit_reorged_away_comes_back_as_the_same_deposit(
    node: RegtestNode, tmp_path: Path
) -> None:
    """A deposit with 6 confirmations whose block is invalidated; the new branch, shorter than
    the watcher's cursor at first, holds it again: the watcher rolls back (a shorter chain
    whose hashes differ is a reorg, not a node behind), warns with an alert, and the deposit is
    the same row, seen again, confirmed again 6 blocks later."""
    db = f"sqlite:///{tmp_path / 'sluice.db'}"
    custody = Custody.create(node, tmp_path / "custody", db, confirmations_min=CONFIRMATIONS)
    custody.add_customer("alice")
    address = str(custody.address("alice")["address"])
    amount = 800_000
    txid = node.fund(address, amount)
    deposit = f"{txid}:{output_index(node, txid, address)}"
    (first_block, *_) = node.mine(CONFIRMATIONS)
    assert custody.watch()["watch"]["confirmed"] == 1
    assert outputs_in_db(db) == {deposit: ("confirmed", amount)}

    node.invalidate(first_block)
    wait_in_mempool(node, txid)
    (new_block,) = node.mine(1)
    assert txid in block_txids(node, new_block)
    reorged = custody.watch()
    assert reorged["error"] is None
    assert reorged["watch"]["reorgs"] == 1
    assert reorged["watch"]["rolled_back_blocks"] == CONFIRMATIONS
    row = custody.deposits()[deposit]
    assert (row["status"], row["confirmations"], row["block_hash"]) == ("seen", 1, new_block)
    (alert,) = alerts_of(db, "btc_deposit_reorged")
    assert alert["severity"] == "warning" and first_block in alert["id"]

    node.mine(CONFIRMATIONS - 1)
    assert custody.watch()["watch"]["confirmed"] == 1
    assert outputs_in_db(db) == {deposit: ("confirmed", amount)}
    row = custody.deposits()[deposit]
    assert (row["confirmations"], row["block_hash"]) == (CONFIRMATIONS, new_block)
    assert len(alerts_of(db, "btc_deposit_reorged")) == 1


# --- payouts -----------------------------------------------------------------------------------


def funded_custody(
    node: RegtestNode, folder: Path, db: str, amounts: list[int], *, password_file: bool = False
) -> Custody:
    """A custody holding the exchange's own Bitcoin, outputs of ``amounts`` to a float address,
    confirmed (a customer's deposit would be owed to them: no operator payout may spend it)."""
    custody = Custody.create(
        node,
        folder,
        db,
        password_file=password_file,
        confirmations_min=CONFIRMATIONS,
        payout_batch_window_s=0,
        payout_bump_after_blocks=BUMP_AFTER,
    )
    custody.add_customer("alice")
    address = custody.float_address()
    for amount in amounts:
        node.fund(address, amount)
    node.mine(CONFIRMATIONS)
    custody.watch()
    assert custody.deposits() == {}  # nobody's deposit
    utxos = custody.balance()["utxos"]
    assert sorted(u["amount_sats"] for u in utxos) == sorted(amounts)
    return custody


def multisig_witness(vin: dict[str, Any]) -> None:
    """A P2WSH 2-of-3 spend: the empty dummy, two signatures (SIGHASH_ALL), the script
    ``OP_2 <33-byte key> x3 OP_3 OP_CHECKMULTISIG``."""
    witness = vin["txinwitness"]
    assert len(witness) == 4, witness
    dummy, first, second, script = witness
    assert dummy == ""
    for signature in (first, second):
        assert signature.startswith("30") and signature.endswith("01"), signature
    assert first != second
    assert len(script) == 2 * (1 + 3 * 34 + 2), script
    assert script.startswith("52") and script.endswith("53ae"), script
    keys = [script[2 + 68 * n : 2 + 68 * (n + 1)] for n in range(3)]
    assert all(key.startswith("21") for key in keys)
    assert [k[2:] for k in keys] == sorted(k[2:] for k in keys)  # sortedmulti


def tx_fee(node: RegtestNode, tx: dict[str, Any]) -> int:
    """What ``tx`` pays in fee: its inputs (looked up on the node) less its outputs."""
    spent = sum(
        sats(node.rpc.call("getrawtransaction", i["txid"], True)["vout"][i["vout"]]["value"])
        for i in tx["vin"]
    )
    return spent - sum(sats(o["value"]) for o in tx["vout"])


def received(node: RegtestNode, address: str) -> int:
    return sats(node.rpc.call("getreceivedbyaddress", address, 1))


def test_batched_payouts_signed_2_of_3_bumped_once_and_paid_once(
    node: RegtestNode, tmp_path: Path, db_url: str
) -> None:
    custody = funded_custody(node, tmp_path / "custody", db_url, [45_000_000, 40_000_000])
    destinations = [node.new_address() for _ in range(3)]
    amounts = [10_000_000, 20_000_000, 30_000_000]
    for n, (address, amount) in enumerate(zip(destinations, amounts, strict=True)):
        queued = custody.json(
            "btc", "payout", "--id", f"p-{n}", "--to", address, "--amount", str(amount)
        )
        assert (queued["id"], queued["status"], queued["amount_sats"]) == (
            f"p-{n}",
            "queued",
            amount,
        )
    again = custody.json(
        "btc", "payout", "--id", "p-0", "--to", destinations[0], "--amount", str(amounts[0])
    )
    assert again["id"] == "p-0" and again["status"] == "queued"

    sent = custody.watch()
    assert sent["payouts"]["batches"] == 1 and sent["payouts"]["batched"] == 3
    assert sent["payouts"]["broadcast"] == 1 and not sent["payouts"]["errors"]
    payouts = custody.payouts()
    assert set(payouts) == {"p-0", "p-1", "p-2"}
    (first_txid,) = {p["txid"] for p in payouts.values()}
    (outpoints,) = {tuple(p["outpoints"]) for p in payouts.values()}
    assert {p["status"] for p in payouts.values()} == {"broadcast"}
    assert in_mempool(node, first_txid)
    assert node.rpc.call("getmempoolentry", first_txid)["bip125-replaceable"] is True

    tx = node.rpc.call("getrawtransaction", first_txid, True)
    assert sorted(f"{i['txid']}:{i['vout']}" for i in tx["vin"]) == sorted(outpoints)
    for vin in tx["vin"]:
        multisig_witness(vin)
    assert len(tx["vout"]) == 4  # three payouts and the change
    fee_first = sum(int(p["fee_sats"]) for p in payouts.values())
    assert fee_first > 0
    assert tx_fee(node, tx) == fee_first  # the payouts share the fee, the change pays none
    for n, (address, amount) in enumerate(zip(destinations, amounts, strict=True)):
        out = tx["vout"][payouts[f"p-{n}"]["vout"]]
        assert pays(out, address)
        assert sats(out["value"]) == amount - payouts[f"p-{n}"]["fee_sats"]

    # Blocks pass without the batch: it is fee-bumped once, the same inputs, a new txid.
    empty_blocks(node, BUMP_AFTER - 1)
    waiting = custody.watch()
    assert waiting["payouts"]["bumped"] == 0 and in_mempool(node, first_txid)
    empty_blocks(node, 1)
    bumped = custody.watch()
    assert bumped["payouts"]["bumped"] == 1 and not bumped["payouts"]["errors"]
    payouts = custody.payouts()
    (bumped_txid,) = {p["txid"] for p in payouts.values()}
    assert bumped_txid != first_txid
    assert {tuple(p["outpoints"]) for p in payouts.values()} == {outpoints}
    assert {p["status"] for p in payouts.values()} == {"broadcast"}
    assert in_mempool(node, bumped_txid) and not in_mempool(node, first_txid)
    replacement = node.rpc.call("getrawtransaction", bumped_txid, True)
    assert sorted(f"{i['txid']}:{i['vout']}" for i in replacement["vin"]) == sorted(outpoints)
    for vin in replacement["vin"]:
        multisig_witness(vin)
    # The extra fee came from the change: each payout still pays what it paid before.
    assert tx_fee(node, replacement) > fee_first
    assert sum(int(p["fee_sats"]) for p in payouts.values()) == fee_first
    for n, (address, amount) in enumerate(zip(destinations, amounts, strict=True)):
        out = replacement["vout"][payouts[f"p-{n}"]["vout"]]
        assert pays(out, address)
        assert sats(out["value"]) == amount - payouts[f"p-{n}"]["fee_sats"]

    (mined_block,) = node.mine(1)
    assert bumped_txid in block_txids(node, mined_block)
    assert custody.watch()["payouts"]["mined"] == 1
    assert {p["status"] for p in custody.payouts().values()} == {"mined"}
    # Its block is reorged away; the same transaction is mined again in another block.
    node.invalidate(mined_block)
    wait_in_mempool(node, bumped_txid)
    (remined_block,) = node.mine(1)
    assert bumped_txid in block_txids(node, remined_block)
    reorged = custody.watch()
    assert reorged["watch"]["reorgs"] == 1
    assert reorged["payouts"]["broadcast"] == 0 and reorged["payouts"]["rebroadcast"] == 0
    payouts = custody.payouts()
    assert {(p["status"], p["txid"], p["confirmations"]) for p in payouts.values()} == {
        ("mined", bumped_txid, 1)
    }
    node.mine(CONFIRMATIONS - 1)
    done = custody.watch()
    assert done["payouts"]["confirmed"] == 1 and done["payouts"]["completed"] == 3
    payouts = custody.payouts()
    for n, (address, amount) in enumerate(zip(destinations, amounts, strict=True)):
        payout = payouts[f"p-{n}"]
        assert payout["status"] == "completed" and payout["txid"] == bumped_txid
        assert payout["confirmations"] == CONFIRMATIONS
        assert received(node, address) == amount - payout["fee_sats"]
        (utxo,) = node.rpc.call("listunspent", 1, 9_999_999, [address])
        assert utxo["txid"] == bumped_txid

    # What custody holds now is the change, and nothing was lost: deposits = paid + fee + change.
    balance = custody.json("btc", "balance")
    paid_vouts = {int(p["vout"]) for p in payouts.values()}
    (change_vout,) = set(range(len(replacement["vout"]))) - paid_vouts
    change_sats = sats(replacement["vout"][change_vout]["value"])
    (utxo,) = balance["utxos"]
    assert (utxo["txid"], utxo["vout"], utxo["kind"]) == (bumped_txid, change_vout, "change")
    assert utxo["amount_sats"] == change_sats == balance["total_sats"]
    paid = sum(amount - int(payouts[f"p-{n}"]["fee_sats"]) for n, amount in enumerate(amounts))
    assert paid + tx_fee(node, replacement) + change_sats == 45_000_000 + 40_000_000

    # Later rounds send nothing more.
    node.mine(1)
    after = custody.watch()
    assert after["payouts"]["broadcast"] == 0 and after["payouts"]["batches"] == 0
    assert after["payouts"]["bumped"] == 0 and after["payouts"]["rebroadcast"] == 0
    for n, (address, amount) in enumerate(zip(destinations, amounts, strict=True)):
        assert received(node, address) == amount - payouts[f"p-{n}"]["fee_sats"]
    assert node.rpc.call("getrawmempool") == []


def test_rounds_run_at_once_batch_each_payout_once(
    node: RegtestNode, tmp_path: Path, db_url: str
) -> None:
    """Three ``sluice btc watch --once`` started together over queued payouts: whichever
    batches them, they are in one batch, one transaction reaches the node, and each destination
    is paid once."""
    custody = funded_custody(node, tmp_path / "custody", db_url, [20_000_000, 20_000_000])
    destinations = [node.new_address() for _ in range(3)]
    amounts = [4_000_000, 5_000_000, 6_000_000]
    for n, (address, amount) in enumerate(zip(destinations, amounts, strict=True)):
        custody.json("btc", "payout", "--id", f"c-{n}", "--to", address, "--amount", str(amount))
    rounds = custody.watch_together(3)
    assert sum(r["payouts"]["batched"] for r in rounds) == 3
    payouts = custody.payouts()
    (txid,) = {p["txid"] for p in payouts.values()}
    assert {p["status"] for p in payouts.values()} == {"broadcast"}
    assert node.rpc.call("getrawmempool") == [txid]
    node.mine(CONFIRMATIONS)
    custody.watch()
    payouts = custody.payouts()
    for n, (address, amount) in enumerate(zip(destinations, amounts, strict=True)):
        assert payouts[f"c-{n}"]["status"] == "completed"
        assert received(node, address) == amount - payouts[f"c-{n}"]["fee_sats"]
    assert node.rpc.call("getrawmempool") == []


def foreign_address(node: RegtestNode) -> str:
    """An address of this network whose key is in no wallet of the node (the generator point's
    P2WPKH): the node's wallet would otherwise take a payment to it back into its mempool after
    a crash, on its own."""
    generator = "0279be667ef9dcbbac55a06295ce870b07029bfcdb2dce28d959f2815b16f81798"
    descriptor = node.rpc.call("getdescriptorinfo", f"wpkh({generator})")["descriptor"]
    (address,) = node.rpc.call("deriveaddresses", descriptor)
    assert not node.rpc.call("getaddressinfo", address)["ismine"]
    return str(address)


def test_a_batch_the_node_forgot_in_a_crash_is_sent_again_unchanged(
    node: RegtestNode, tmp_path: Path
) -> None:
    """The node is killed with the batch in its mempool (a killed node does not save its
    mempool): the next round sends the recorded transaction again, the same txid, and the
    payout completes, paid once."""
    custody = funded_custody(
        node, tmp_path / "custody", f"sqlite:///{tmp_path / 'sluice.db'}", [20_000_000]
    )
    destination = foreign_address(node)
    amount = 3_000_000
    custody.json("btc", "payout", "--id", "lost-1", "--to", destination, "--amount", str(amount))
    assert custody.watch()["payouts"]["broadcast"] == 1
    (payout,) = custody.payouts().values()
    txid = str(payout["txid"])
    assert node.rpc.call("getrawmempool") == [txid]

    node.kill()
    node.start()
    assert node.rpc.call("getrawmempool") == []
    again = custody.watch()
    assert again["payouts"]["rebroadcast"] == 1 and again["payouts"]["batches"] == 0
    assert node.rpc.call("getrawmempool") == [txid]

    node.mine(CONFIRMATIONS)
    assert custody.watch()["payouts"]["completed"] == 1
    (payout,) = custody.payouts().values()
    assert (payout["status"], payout["txid"]) == ("completed", txid)
    tx = node.rpc.call("getrawtransaction", txid, True)
    paid = [sats(out["value"]) for out in tx["vout"] if pays(out, destination)]
    assert paid == [amount - payout["fee_sats"]]
    unspent = node.rpc.call("gettxout", txid, payout["vout"])
    assert sats(unspent["value"]) == amount - payout["fee_sats"]
    assert unspent["confirmations"] == CONFIRMATIONS


def test_a_crash_between_broadcast_and_record_ends_with_one_payment(
    node: RegtestNode, tmp_path: Path
) -> None:
    custody = funded_custody(
        node, tmp_path / "custody", f"sqlite:///{tmp_path / 'sluice.db'}", [40_000_000]
    )
    destination = node.new_address()
    amount = 15_000_000
    custody.json("btc", "payout", "--id", "crash-1", "--to", destination, "--amount", str(amount))
    # The same id asking for something else is refused; so is another network's address.
    changed = custody.run(
        "btc", "payout", "--id", "crash-1", "--to", destination, "--amount", "15000001", code=2
    )
    assert "crash-1" in changed.stderr and "15000000" in changed.stderr
    mainnet = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"  # BIP 173's P2WPKH example
    foreign = custody.run(
        "btc", "payout", "--id", "crash-x", "--to", mainnet, "--amount", str(amount), code=2
    )
    assert "error 64" in foreign.stderr and "litecoin-regtest" in foreign.stderr
    assert set(custody.payouts()) == {"crash-1"}

    run_crash_after_broadcast(custody, REPO, CRASH_TIMEOUT_S)
    (payout,) = custody.payouts().values()
    assert payout["status"] == "batched"  # recorded as signed, not as sent
    txid = str(payout["txid"])
    assert node.rpc.call("getrawmempool") == [txid]  # yet the node holds it

    recovered = custody.watch()
    assert recovered["payouts"]["recovered"] == 1 and recovered["payouts"]["batches"] == 0
    assert node.rpc.call("getrawmempool") == [txid]  # nothing else was sent
    (payout,) = custody.payouts().values()
    assert (payout["status"], payout["txid"]) == ("broadcast", txid)

    node.mine(CONFIRMATIONS)
    done = custody.watch()
    assert done["payouts"]["completed"] == 1
    (payout,) = custody.payouts().values()
    assert (payout["status"], payout["txid"]) == ("completed", txid)
    assert received(node, destination) == amount - payout["fee_sats"]
    (utxo,) = node.rpc.call("listunspent", 1, 9_999_999, [destination])
    assert utxo["txid"] == txid
    node.mine(1)
    custody.watch()
    assert received(node, destination) == amount - payout["fee_sats"]
    assert node.rpc.call("getrawmempool") == []


def test_a_crash_between_a_fee_bump_and_its_record_ends_with_one_payment(
    node: RegtestNode, tmp_path: Path
) -> None:
    custody = funded_custody(
        node, tmp_path / "custody", f"sqlite:///{tmp_path / 'sluice.db'}", [40_000_000]
    )
    destination = node.new_address()
    amount = 15_000_000
    custody.json("btc", "payout", "--id", "crash-2", "--to", destination, "--amount", str(amount))
    assert custody.watch()["payouts"]["broadcast"] == 1
    (payout,) = custody.payouts().values()
    first_txid = str(payout["txid"])

    # The bump is due; the round that makes it dies right after the node took it.
    empty_blocks(node, BUMP_AFTER)
    run_crash_after_broadcast(custody, REPO, CRASH_TIMEOUT_S)
    (payout,) = custody.payouts().values()
    bumped_txid = str(payout["txid"])  # recorded before it was sent
    assert bumped_txid != first_txid
    assert node.rpc.call("getrawmempool") == [bumped_txid]

    # The next round finds the bump in the mempool: it starts the bump's timer instead of
    # bumping again, and sends nothing.
    recovered = custody.watch()
    assert recovered["payouts"]["bumped"] == 0 and recovered["payouts"]["broadcast"] == 0
    (payout,) = custody.payouts().values()
    (pending,) = node.rpc.call("getrawmempool")
    assert pending == bumped_txid
    assert payout["status"] == "broadcast" and payout["txid"] == pending

    node.mine(CONFIRMATIONS)
    done = custody.watch()
    assert done["payouts"]["completed"] == 1
    (payout,) = custody.payouts().values()
    assert (payout["status"], payout["txid"]) == ("completed", pending)
    assert received(node, destination) == amount - payout["fee_sats"]
    (utxo,) = node.rpc.call("listunspent", 1, 9_999_999, [destination])
    assert utxo["txid"] == pending
    node.mine(1)
    after = custody.watch()
    assert after["payouts"]["rebroadcast"] == 0 and not after["payouts"]["errors"]
    assert received(node, destination) == amount - payout["fee_sats"]
    assert node.rpc.call("getrawmempool") == []


def test_a_long_running_watch_rides_out_the_node_going_away(
    node: RegtestNode, tmp_path: Path
) -> None:
    custody = Custody.create(
        node,
        tmp_path / "custody",
        f"sqlite:///{tmp_path / 'sluice.db'}",
        confirmations_min=CONFIRMATIONS,
        payout_batch_window_s=0,
    )
    custody.add_customer("alice")
    address = str(custody.address("alice")["address"])
    watching = custody.start_watch(interval_s=0.2)
    try:
        amount = 700_000
        txid = node.fund(address, amount)
        deposit = f"{txid}:{output_index(node, txid, address)}"
        node.mine(1)
        wait_until(
            "the deposit seen by the running watch",
            lambda: outputs_in_db(custody.db).get(deposit) == ("seen", amount),
            timeout_s=LOOP_TIMEOUT_S,
        )
        node.kill()
        watching.wait_for(f"127.0.0.1:{node.rpc_port}", timeout_s=LOOP_TIMEOUT_S)
        node.start()
        # An address issued by another process while the watch runs is watched too.
        custody.add_customer("bob")
        bob_address = str(custody.address("bob")["address"])
        bob_txid = node.fund(bob_address, amount)
        bob_deposit = f"{bob_txid}:{output_index(node, bob_txid, bob_address)}"
        node.mine(CONFIRMATIONS - 1)
        wait_until(
            "the first deposit confirmed by the running watch",
            lambda: outputs_in_db(custody.db).get(deposit) == ("confirmed", amount),
            timeout_s=LOOP_TIMEOUT_S,
        )
        wait_until(
            "the second deposit seen by the running watch",
            lambda: outputs_in_db(custody.db).get(bob_deposit) == ("seen", amount),
            timeout_s=LOOP_TIMEOUT_S,
        )

        # The exchange's own Bitcoin, which an operator's payout may spend (the customers'
        # deposits are owed to them), confirmed by the running watch.
        own_address = custody.float_address()
        own_txid = node.fund(own_address, 500_000)
        own = f"{own_txid}:{output_index(node, own_txid, own_address)}"
        node.mine(CONFIRMATIONS)
        wait_until(
            "the exchange's own Bitcoin confirmed by the running watch",
            lambda: outputs_in_db(custody.db).get(own) == ("confirmed", 500_000),
            timeout_s=LOOP_TIMEOUT_S,
        )

        # A payout queued meanwhile is sent by the running watch, and completes.
        destination = node.new_address()
        custody.json("btc", "payout", "--id", "loop-1", "--to", destination, "--amount", "400000")

        def sent() -> bool:
            pool = node.rpc.call("getrawmempool")
            return len(pool) == 1 and any(
                pays(out, destination)
                for out in node.rpc.call("getrawtransaction", pool[0], True)["vout"]
            )

        wait_until("the payout in the node's mempool", sent, timeout_s=LOOP_TIMEOUT_S)
        (payout_txid,) = node.rpc.call("getrawmempool")
        node.mine(CONFIRMATIONS)
        wait_until(
            "the payout completed by the running watch",
            lambda: payout_status(custody.db, "loop-1") == "completed",
            timeout_s=LOOP_TIMEOUT_S,
        )
        assert watching.process.poll() is None
    finally:
        code = watching.stop()
    output = watching.output()
    assert code == 0, output
    assert "Traceback" not in output and "stopped" in output, output
    custody.check_no_secret(output)
    assert sorted(confirmations_audited(custody.db)) == sorted([deposit, bob_deposit])
    (payout,) = custody.payouts().values()
    assert (payout["status"], payout["txid"]) == ("completed", payout_txid)
    assert received(node, destination) == 400_000 - payout["fee_sats"]


def test_a_replaced_version_mined_after_all_is_the_same_payout(
    node: RegtestNode, tmp_path: Path
) -> None:
    """After a fee bump, a miner that kept the first version mines it (``generateblock`` with
    its raw transaction, which the node's mempool had replaced): the batch is tracked by the
    outpoints it spends, so the payouts complete with that txid and are paid once; the bump is
    never sent again."""
    custody = funded_custody(
        node,
        tmp_path / "custody",
        f"sqlite:///{tmp_path / 'sluice.db'}",
        [30_000_000],
        password_file=True,
    )
    destinations = [node.new_address() for _ in range(2)]
    amounts = [5_000_000, 7_000_000]
    for n, (address, amount) in enumerate(zip(destinations, amounts, strict=True)):
        custody.json("btc", "payout", "--id", f"r-{n}", "--to", address, "--amount", str(amount))
    assert custody.watch()["payouts"]["batched"] == 2
    (first_txid,) = {p["txid"] for p in custody.payouts().values()}
    first_hex = str(node.rpc.call("getrawtransaction", first_txid))
    first_shares = {pid: p["fee_sats"] for pid, p in custody.payouts().items()}

    empty_blocks(node, BUMP_AFTER)
    assert custody.watch()["payouts"]["bumped"] == 1
    (bumped_txid,) = {p["txid"] for p in custody.payouts().values()}
    assert bumped_txid != first_txid and in_mempool(node, bumped_txid)

    block = node.rpc.call("generateblock", node.new_address(), [first_hex])["hash"]
    assert first_txid in block_txids(node, block)
    assert not in_mempool(node, bumped_txid)  # its inputs are spent: gone for good
    mined = custody.watch()
    assert mined["payouts"]["mined"] == 1 and mined["payouts"]["stuck"] == 0
    node.mine(CONFIRMATIONS - 1)
    done = custody.watch()
    assert done["payouts"]["completed"] == 2
    payouts = custody.payouts()
    for n, (address, amount) in enumerate(zip(destinations, amounts, strict=True)):
        payout = payouts[f"r-{n}"]
        assert (payout["status"], payout["txid"]) == ("completed", first_txid)
        assert payout["fee_sats"] == first_shares[f"r-{n}"]
        assert received(node, address) == amount - payout["fee_sats"]
        (utxo,) = node.rpc.call("listunspent", 1, 9_999_999, [address])
        assert utxo["txid"] == first_txid
    node.mine(1)
    after = custody.watch()
    assert after["payouts"]["rebroadcast"] == 0 and after["payouts"]["bumped"] == 0
    assert not after["payouts"]["errors"]
    assert node.rpc.call("getrawmempool") == []
    (utxo,) = custody.json("btc", "balance")["utxos"]
    assert (utxo["txid"], utxo["kind"]) == (first_txid, "change")
