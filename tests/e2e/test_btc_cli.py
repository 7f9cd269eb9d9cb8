"""``sluice btc`` as an operator drives it, on the embedded chain, and custody inside ``sluice
serve``'s wiring.

Covers: ``sluice btc custody init`` (three key files of mode 0600 in a directory of mode 0700, a
descriptor whose checksum verifies, a ``--toml`` block that is valid TOML and a valid
configuration, the ``--json`` shape, a second init into the same directory refused); a customer's
deposit address kept until it is funded, then a new one, never another customer's; ``sandbox fund``
+ ``sandbox mine`` + ``watch --once``: a deposit seen, confirmed at the sixth confirmation exactly
once (later rounds confirm nothing), a dust output recorded as dust; reorgs made with ``sandbox
reorg``: one that drops a deposit (``reorged``) and one that moves it to another block (the same
``txid:vout``, once); a payout queued (idempotent by id, a different request under the same id
refused), sent by ``watch --once``, mined and completed, the recipient paid the amount less the
fee, the change back in custody; the JSON keys of every command, which are a contract; the sandbox
commands refused and ``watch --once`` exiting 1 when a real node is configured and down; commands
run side by side each changing the embedded chain the other left (nothing lost), the funding
spending from ``sandbox fund --from``'s address (another network's refused); ``watch`` without
``--once`` confirming a deposit funded while it runs and stopping cleanly on Ctrl-C. In process:
``sluice serve``'s service with a ``[bitcoin]`` section runs the watcher and the payouts worker on
their own loop, which confirms a deposit and completes a payout, and which keeps running (reported
failing) while the node is unreachable. Against a real node (Debian's ``litecoind -regtest``,
skipped when it is not installed unless ``CI=true``), the whole path through the command line:
``custody init --toml`` with the node's part added, a deposit funded from the node's wallet, a
reorg made with ``invalidateblock`` that the deposit survives as the same one, confirmed once, and
a payout signed 2-of-3, accepted, mined and completed, the recipient paid the amount less the fee.

How: every ``sluice`` is the virtualenv's console script run as a process (the helpers of
``test_cli_over_the_wire``) with ``SLUICE_DATA_DIR`` in ``tmp_path``, so the sandbox custody and
the embedded chain's file are made there on first use; customers are registered in the SQLite
Integration DB in process (each ``sluice`` start costs seconds). What the chain holds is read back
from its file (``FileNode``), as another process sees it.
"""

from __future__ import annotations

import json
import signal
import stat
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.chainfile import ChainFile, FileNode
from sluice.bitcoin.keys import create_sandbox_custody
from sluice.bitcoin.params import AddressCodec
from sluice.bitcoin.wallet import parse_descriptor
from sluice.config import BitcoinConfig, DeploymentConfig, load_config
from sluice.domain.chains import CHAINS, to_sats
from sluice.server import build_service
from sluice.services.btc_addresses import change_address, deposit_address
from sluice.services.btc_payouts import list_payouts, request_payout
from sluice.services.btc_watcher import list_deposits
from sluice.services.reference import register_customer
from tests.bitcoin_regtest import RegtestNode
from tests.e2e.test_cli_over_the_wire import (
    command,
    environment,
    free_port,
    run_together,
    sluice,
    sluice_script,
)

pytestmark = pytest.mark.slow

REGTEST = CHAINS["regtest"]
# An address outside custody (BIP 173's P2WPKH example, on regtest).
OUTSIDE = "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"
OUTSIDE_SCRIPT = "0014751e76e8199196d454941c45d1b3a323f1433bd6"
# A sender outside custody for ``sandbox fund --from``; a mainnet address (BIP 173's).
SENDER_SCRIPT = "0014" + "66" * 20
SENDER = AddressCodec(REGTEST).address_of(bytes.fromhex(SENDER_SCRIPT)) or ""
MAINNET = "bc1qw508d6qejxtdg4y5r3zarvary0c5xw7kv8f3t4"

ADDRESS_KEYS = {"customer", "address", "index"}
DEPOSIT_KEYS = {
    "txid",
    "vout",
    "customer",
    "address",
    "amount_sats",
    "confirmations",
    "status",
    "block_height",
    "block_hash",
}
PAYOUT_KEYS = {
    "id",
    "kind",
    "address",
    "txid",
    "vout",
    "outpoints",
    "amount_sats",
    "fee_sats",
    "confirmations",
    "status",
    "batch_id",
    "requested_by",
    "requested_at",
    "completed_at",
    "last_error",
}
BALANCE_KEYS = {"height", "block_hash", "utxos", "total_sats", "confirmed_sats", "reserved_sats"}
WAIT_S = 30.0


def btc(env: dict[str, str], *args: str, code: int = 0) -> Any:
    """``sluice btc ARGS --json``, its output decoded."""
    done = sluice("btc", *args, "--json", env=env, code=code)
    return json.loads(done.stdout) if code == 0 else done


def with_customers(data: Path, *customers: str) -> dict[str, str]:
    env = environment(data, SLUICE_ACTOR="operator-1")
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    try:
        for customer in customers:
            register_customer(database.uow, customer, f"{customer.title()} Example", [])
    finally:
        database.dispose()
    return env


def chain_node(data: Path) -> FileNode:
    return FileNode(ChainFile(data / "bitcoin" / "chain-regtest.pickle", REGTEST))


def utc_now() -> datetime:
    return datetime.now(UTC)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.05)


# --- custody init --------------------------------------------------------------------------------


def test_custody_init_makes_private_keys_and_a_configuration_that_loads(tmp_path: Path) -> None:
    env = environment(tmp_path / "data")
    plain, toml, as_json = run_together(
        command("btc", "custody", "init", "--keys-dir", str(tmp_path / "a"), env=env),
        command("btc", "custody", "init", "--keys-dir", str(tmp_path / "b"), "--toml", env=env),
        command(
            "btc",
            "custody",
            "init",
            "--keys-dir",
            str(tmp_path / "c"),
            "--network",
            "litecoin-regtest",
            "--json",
            env=env,
        ),
    )
    for folder in ("a", "b", "c"):
        keys = sorted((tmp_path / folder).iterdir())
        assert len(keys) == 3
        assert stat.S_IMODE((tmp_path / folder).stat().st_mode) == 0o700
        assert all(stat.S_IMODE(key.stat().st_mode) == 0o600 for key in keys)
    # The plain output names the key files and the descriptor, whose checksum verifies.
    descriptor = next(line.strip() for line in plain.stdout.splitlines() if "wsh(" in line)
    assert "#" in descriptor
    parse_descriptor(descriptor.split(" = ")[-1].strip('"'), REGTEST)
    for key in sorted((tmp_path / "a").iterdir()):
        assert str(key) in plain.stdout
    assert "[bitcoin]" in plain.stdout
    # --toml prints only the block: valid TOML, and a valid configuration as it is.
    block = tomllib.loads(toml.stdout)["bitcoin"]
    assert set(block) == {"network", "descriptor", "key_files"}
    assert block["network"] == "regtest"
    parse_descriptor(block["descriptor"], REGTEST)
    assert len(block["key_files"]) == 2  # two sign; the third is named as the backup
    (tmp_path / "sluice.toml").write_text(toml.stdout)
    config = load_config(tmp_path / "sluice.toml", environ={})
    assert config.bitcoin is not None and config.bitcoin.embedded
    custody = bootstrap.bitcoin_custody(config.model_copy(update={"data_dir": tmp_path / "x"}))
    assert custody.configured and custody.can_sign
    # --json
    made = json.loads(as_json.stdout)
    assert set(made) == {"network", "descriptor", "key_files", "xpubs", "toml"}
    assert made["network"] == "litecoin-regtest" and len(made["xpubs"]) == 3
    parse_descriptor(made["descriptor"], CHAINS["litecoin-regtest"])
    assert tomllib.loads(made["toml"])["bitcoin"]["network"] == "litecoin-regtest"
    # A custody's keys are never overwritten.
    again = sluice("btc", "custody", "init", "--keys-dir", str(tmp_path / "a"), env=env, code=2)
    assert "refusing to overwrite" in again.stderr


# --- deposits ------------------------------------------------------------------------------------


def test_a_deposit_is_seen_confirmed_once_and_the_address_then_renewed(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = with_customers(data, "alice", "bob")
    first = btc(env, "address", "--customer", "alice")
    assert set(first) == ADDRESS_KEYS
    assert first["customer"] == "alice" and first["address"].startswith("bcrt1q")
    again, bob = (
        json.loads(done.stdout)
        for done in run_together(
            command("btc", "address", "--customer", "alice", "--json", env=env),
            command("btc", "address", "--customer", "bob", "--json", env=env),
        )
    )
    assert again == first  # kept until it receives funds
    assert bob["address"] != first["address"] and bob["index"] != first["index"]
    unknown = btc(env, "address", "--customer", "carol", code=2)
    assert "unknown customer 'carol'" in unknown.stderr

    funded = btc(env, "sandbox", "fund", "--address", first["address"], "--amount", "150000")
    assert {"txid", "vout", "address", "amount_sats"} <= set(funded)
    dust = btc(env, "sandbox", "fund", "--address", first["address"], "--amount", "200")
    mined = btc(env, "sandbox", "mine", "5")
    assert mined["height"] == 5 and len(mined["blocks"]) == 5

    tick = btc(env, "watch", "--once")
    assert tick["error"] is None
    assert tick["watch"]["outputs"] == 1 and tick["watch"]["dust"] == 1
    assert tick["watch"]["confirmed"] == 0
    deposits = {(d["txid"], d["vout"]): d for d in btc(env, "deposits")}
    assert all(set(d) == DEPOSIT_KEYS for d in deposits.values())
    deposit = deposits[(funded["txid"], funded["vout"])]
    assert (deposit["status"], deposit["confirmations"]) == ("seen", 5)
    assert (deposit["amount_sats"], deposit["customer"]) == (150000, "alice")
    assert deposits[(dust["txid"], dust["vout"])]["status"] == "dust"

    btc(env, "sandbox", "mine", "1")
    tick = btc(env, "watch", "--once")
    assert tick["watch"]["confirmed"] == 1
    (deposit,) = [d for d in btc(env, "deposits", "--customer", "alice") if d["amount_sats"] > 200]
    assert (deposit["status"], deposit["confirmations"]) == ("confirmed", 6)
    # Confirmed exactly once: more blocks and rounds count confirmations, nothing more.
    btc(env, "sandbox", "mine", "2")
    tick = btc(env, "watch", "--once")
    assert tick["watch"]["confirmed"] == 0 and tick["watch"]["blocks"] == 2
    tick = btc(env, "watch", "--once")
    assert tick["watch"]["blocks"] == 0 and tick["watch"]["confirmed"] == 0
    deposits = btc(env, "deposits", "--customer", "alice")
    assert len(deposits) == 2
    assert [d["confirmations"] for d in deposits if d["status"] == "confirmed"] == [8]
    assert btc(env, "deposits", "--customer", "bob") == []

    renewed = btc(env, "address", "--customer", "alice")
    assert renewed["address"] not in (first["address"], bob["address"])
    assert renewed["index"] not in (first["index"], bob["index"])
    assert btc(env, "address", "--customer", "alice") == renewed

    balance = btc(env, "balance")
    assert set(balance) == BALANCE_KEYS
    assert balance["height"] == 8
    assert balance["block_hash"] == chain_node(data).getblockchaininfo()["bestblockhash"]
    # The dust output is custody's too, but never confirmed (nor credited).
    assert balance["confirmed_sats"] == 150000 and balance["total_sats"] == 150200


def test_reorgs_drop_a_deposit_or_move_it_to_another_block(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = with_customers(data, "alice")
    address = btc(env, "address", "--customer", "alice")["address"]
    moved = btc(env, "sandbox", "fund", "--address", address, "--amount", "70000")
    btc(env, "sandbox", "mine", "2")
    dropped = btc(env, "sandbox", "fund", "--address", address, "--amount", "80000", "--mine")
    assert btc(env, "watch", "--once")["watch"]["outputs"] == 2
    before = {d["txid"]: d for d in btc(env, "deposits")}
    assert before[moved["txid"]]["block_height"] == 1
    assert before[dropped["txid"]]["block_height"] == 3

    # The last block is replaced by a branch without the second deposit.
    reorg = btc(env, "sandbox", "reorg", "--depth", "1", "--drop", dropped["txid"])
    assert reorg["depth"] == 1 and reorg["height"] == 4
    tick = btc(env, "watch", "--once")
    assert tick["watch"]["reorgs"] == 1 and tick["watch"]["rolled_back_blocks"] == 1
    after = {d["txid"]: d for d in btc(env, "deposits")}
    assert (after[dropped["txid"]]["status"], after[dropped["txid"]]["confirmations"]) == (
        "reorged",
        0,
    )
    assert after[moved["txid"]]["confirmations"] == 4

    # The whole chain above genesis replaced: the first deposit comes back in the new branch's
    # first block, as the same deposit.
    btc(env, "sandbox", "reorg", "--depth", "4")
    tick = btc(env, "watch", "--once")
    assert tick["watch"]["reorgs"] == 1 and tick["watch"]["rolled_back_blocks"] == 4
    deposits = btc(env, "deposits")
    assert [d["txid"] for d in deposits].count(moved["txid"]) == 1
    (again,) = [d for d in deposits if d["txid"] == moved["txid"]]
    assert again["status"] == "seen" and again["vout"] == moved["vout"]
    assert again["block_height"] == 1
    assert again["block_hash"] != before[moved["txid"]]["block_hash"]
    assert again["block_hash"] == chain_node(data).getblockhash(1)
    assert again["confirmations"] == 5  # the new branch: heights 1–5


def test_commands_side_by_side_change_the_embedded_chain_one_after_the_other(
    tmp_path: Path,
) -> None:
    env = environment(tmp_path / "data")
    btc(env, "sandbox", "mine", "1")  # makes the sandbox custody once, before the race
    first, second, funded = run_together(
        command("btc", "sandbox", "mine", "3", "--json", env=env),
        command("btc", "sandbox", "mine", "3", "--json", env=env),
        command(
            "btc",
            *("sandbox", "fund", "--address", OUTSIDE, "--amount", "9000", "--from", SENDER),
            "--json",
            env=env,
        ),
    )
    # Each change applied to the chain the other left: no block and no funding lost.
    heights = sorted(json.loads(done.stdout)["height"] for done in (first, second))
    assert heights == [4, 7]
    node = chain_node(tmp_path / "data")
    assert node.getblockchaininfo()["blocks"] == 7
    record = json.loads(funded.stdout)
    assert record["from"] == SENDER
    found = node.getrawtransaction(record["txid"])
    assert found["txid"] == record["txid"]
    # The funding spends an output paid to --from's address, which the node answers as well.
    (spent,) = found["vin"]
    source = node.getrawtransaction(spent["txid"])
    paid = source["vout"][spent["vout"]]["scriptPubKey"]
    assert paid["hex"] == SENDER_SCRIPT
    # Another network's sender is refused, naming it.
    mainnet = btc(
        env, "sandbox", "fund", *("--address", OUTSIDE, "--amount", "1", "--from", MAINNET), code=2
    )
    assert f"address '{MAINNET}' refused: a bitcoin address" in mainnet.stderr


def test_watch_follows_the_chain_until_interrupted(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = with_customers(data, "alice")
    address = btc(env, "address", "--customer", "alice")["address"]
    log = tmp_path / "watch.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sluice_script(), "btc", "watch", "--interval", "0.2"],
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
        )
    try:
        wait_for(lambda: "Ctrl-C stops" in log.read_text(), "the watch to start")
        btc(env, "sandbox", "fund", "--address", address, "--amount", "60000", "--mine")
        btc(env, "sandbox", "mine", "5")
        wait_for(lambda: "confirmed 1" in log.read_text(), "the running watch to confirm it")
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=WAIT_S) == 0, log.read_text()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert log.read_text().rstrip().endswith("stopped")
    (deposit,) = btc(env, "deposits")
    assert deposit["status"] == "confirmed"


# --- payouts -------------------------------------------------------------------------------------


def test_a_payout_is_queued_sent_mined_and_completed_once(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = with_customers(data, "alice")
    # The exchange's own Bitcoin (a customer's deposit is owed to them: no operator payout may
    # spend it)
    address = btc(env, "float-address")["address"]
    funded = btc(env, "sandbox", "fund", "--address", address, "--amount", "500000", "--mine")
    btc(env, "sandbox", "mine", "5")
    btc(env, "watch", "--once")
    assert btc(env, "balance")["total_sats"] == 500000

    queued = btc(env, "payout", "--id", "p-1", "--to", OUTSIDE, "--amount", "120000")
    assert set(queued) == PAYOUT_KEYS
    assert (queued["id"], queued["status"], queued["kind"]) == ("p-1", "queued", "operator")
    assert queued["requested_by"] == "operator-1"  # SLUICE_ACTOR, as the other groups take it
    assert (queued["txid"], queued["outpoints"], queued["fee_sats"]) == (None, [], None)
    # The same id again is the same payout; under the same id, another payout is refused.
    assert btc(env, "payout", "--id", "p-1", "--to", OUTSIDE, "--amount", "120000") == queued
    other = btc(env, "payout", "--id", "p-1", "--to", OUTSIDE, "--amount", "130000", code=2)
    assert "error 42 duplicate_operation" in other.stderr
    invalid = btc(env, "payout", "--id", "p-2", "--to", "tb1qnotours", "--amount", "90000", code=2)
    assert "invalid_address" in invalid.stderr

    tick = btc(env, "watch", "--once")
    assert tick["payouts"]["broadcast"] == 1 and tick["payouts"]["batched"] == 1
    (sent,) = btc(env, "payouts")
    assert set(sent) == PAYOUT_KEYS
    assert sent["status"] == "broadcast" and sent["confirmations"] == 0
    assert sent["outpoints"] == [f"{funded['txid']}:{funded['vout']}"]
    assert sent["fee_sats"] > 0
    node = chain_node(data)
    assert sent["txid"] in node.file.snapshot().mempool_txids

    btc(env, "sandbox", "mine", "1")
    btc(env, "watch", "--once")
    (mined,) = btc(env, "payouts")
    assert (mined["status"], mined["confirmations"]) == ("mined", 1)
    btc(env, "sandbox", "mine", "5")
    tick = btc(env, "watch", "--once")
    assert tick["payouts"]["completed"] == 1
    (done,) = btc(env, "payouts")
    assert (done["status"], done["confirmations"], done["txid"]) == ("completed", 6, sent["txid"])
    assert btc(env, "watch", "--once")["payouts"]["completed"] == 0  # completed once

    # The recipient got the amount less the fee; the change came back to custody.
    transaction = node.getrawtransaction(done["txid"])
    paid = {o["scriptPubKey"]["hex"]: to_sats(o["value"]) for o in transaction["vout"]}
    assert paid[OUTSIDE_SCRIPT] == 120000 - done["fee_sats"]
    balance = btc(env, "balance")
    (change,) = balance["utxos"]
    assert change["kind"] == "change" and change["txid"] == done["txid"]
    assert change["amount_sats"] == 500000 - 120000
    assert balance["total_sats"] == 380000


# --- a real node configured ----------------------------------------------------------------------


def test_with_a_node_configured_the_sandbox_is_refused_and_a_down_node_named(
    tmp_path: Path,
) -> None:
    custody = create_sandbox_custody(tmp_path / "keys", REGTEST)
    port = free_port()  # nothing listens there
    config = tmp_path / "sluice.toml"
    config.write_text(
        "[bitcoin]\n"
        f"descriptor = {json.dumps(custody.descriptor)}\n"
        f"key_files = {json.dumps([str(p) for p in custody.key_files[:2]])}\n"
        f'rpc_url = "http://127.0.0.1:{port}"\n'
        f'rpc_cookie_file = "{tmp_path / "regtest" / ".cookie"}"\n'
    )
    env = with_customers(tmp_path / "data", "alice")
    env["SLUICE_CONFIG"] = str(config)
    mine, fund, watch = run_together(
        command("btc", "sandbox", "mine", "1", env=env, code=2),
        command(
            "btc", "sandbox", "fund", "--address", OUTSIDE, "--amount", "1000", env=env, code=2
        ),
        command("btc", "watch", "--once", env=env, code=1),
    )
    for refused in (mine, fund):
        assert "works on the embedded chain only" in refused.stderr
        assert f"127.0.0.1:{port}" in refused.stderr
    assert "not reachable" in watch.stderr or "did not answer" in watch.stderr
    # Addresses come from the descriptor, with no node needed.
    assert btc(env, "address", "--customer", "alice")["index"] == 0
    assert "sandbox custody" not in sluice("btc", "deposits", env=env).stderr


# --- inside sluice serve -------------------------------------------------------------------------


def test_serve_runs_the_watcher_and_payouts_on_their_own_loop(tmp_path: Path) -> None:
    custody = create_sandbox_custody(tmp_path / "keys", REGTEST)
    section = BitcoinConfig(
        descriptor=custody.descriptor,
        key_files=[str(p) for p in custody.key_files[1:]],
        payout_batch_window_s=0,
    )
    config = DeploymentConfig(data_dir=tmp_path / "data", bitcoin=section)
    service = build_service(config, interval_s=0.05)
    try:
        assert service.bitcoin is not None and service.bitcoin_loop is not None
        assert [p.name for p in service.bitcoin_loop.parts] == [
            "bitcoin_watcher",
            "bitcoin_payouts",
        ]
        assert "bitcoin_loop" in service.context.readiness
        register_customer(service.database.uow, "alice", "Alice Example", [])
        address = deposit_address(
            service.database.uow, service.bitcoin.wallet, "alice", clock=utc_now
        )
        # The customer's deposit backs the iSTSi it mints (issuance is on by default), so the
        # operator payout below is paid from a surplus: Bitcoin sent to a change address of the
        # custody, which counts as reserves and mints nothing.
        with service.database.uow() as uow:
            surplus = change_address(uow, service.bitcoin.wallet, utc_now)
            uow.commit()
        sandbox = service.bitcoin.sandbox
        assert sandbox is not None
        with sandbox.change() as chain:
            chain.fund(address.script_hex, 400000, mine=True)
            chain.fund(surplus.script_hex, 400000, mine=True)
            chain.mine(5)
        service.start()

        def deposits() -> list[str]:
            return [d.status for d in list_deposits(service.database.uow)]

        # Confirmed, then credited once the issuance loop has minted it.
        wait_for(lambda: deposits() in (["confirmed"], ["credited"]), "the deposit to be confirmed")
        request_payout(
            service.database.uow,
            service.bitcoin.wallet,
            service.bitcoin.settings,
            payout_id="serve-1",
            address=OUTSIDE,
            amount_sats=100000,
            kind="operator",
            requested_by="test",
            clock=utc_now,
        )

        def payout() -> str:
            return list_payouts(service.database.uow)[0].status

        wait_for(lambda: payout() == "broadcast", "the payout to be broadcast")
        with sandbox.change() as chain:
            chain.mine(6)
        wait_for(lambda: payout() == "completed", "the payout to be completed")
        assert service.context.readiness["bitcoin_loop"]()[0]
    finally:
        assert service.close(timeout_s=20)


def test_serve_keeps_running_while_the_node_is_down(tmp_path: Path) -> None:
    custody = create_sandbox_custody(tmp_path / "keys", REGTEST)
    section = BitcoinConfig(
        descriptor=custody.descriptor,
        key_files=[str(custody.key_files[0])],  # one key: watching only
        rpc_url=f"http://127.0.0.1:{free_port()}",
        rpc_cookie_file=tmp_path / ".cookie",
        rpc_timeout_s=0.5,
    )
    service = build_service(
        DeploymentConfig(data_dir=tmp_path / "data", bitcoin=section), interval_s=0.05
    )
    try:
        assert service.bitcoin_loop is not None
        assert [p.name for p in service.bitcoin_loop.parts] == ["bitcoin_watcher"]
        service.start()
        probe = service.context.readiness["bitcoin_loop"]

        def failing() -> bool:
            status = (
                service.bitcoin_loop.status()["bitcoin_watcher"] if service.bitcoin_loop else None
            )
            return status is not None and status.failures_in_a_row >= 2

        wait_for(failing, "the watcher to fail twice against a node that is down")
        ready, detail = probe()
        assert "failing: bitcoin_watcher" in detail
        assert ready  # the loop itself runs on, round after round
        assert service.alive and service.context.readiness["service_loop"]()[0]
    finally:
        assert service.close(timeout_s=20)


# --- against a real node --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def litecoind() -> Iterator[RegtestNode]:
    """Debian's ``litecoind -regtest`` whose wallet holds spendable coins."""
    node = RegtestNode()
    try:
        node.start()
        node.mine(101)
        yield node
    finally:
        node.close()


def test_against_a_real_node_everything_through_the_cli(
    tmp_path: Path, litecoind: RegtestNode
) -> None:
    data = tmp_path / "data"
    env = with_customers(data, "alice")
    # The operator's path: custody init --toml, then the node's part added to the block.
    made = sluice(
        "btc",
        "custody",
        "init",
        "--keys-dir",
        str(tmp_path / "keys"),
        "--network",
        "litecoin-regtest",
        "--toml",
        env=env,
    )
    config = tmp_path / "sluice.toml"
    config.write_text(
        made.stdout
        + f'rpc_url = "{litecoind.url}"\n'
        + f'rpc_cookie_file = "{litecoind.cookie_file}"\n'
        # Litecoin relays nothing under 10 sat/vB; the young chain has no estimate: the floor.
        + "fee_rate_min_sat_vb = 20\n"
        + "payout_batch_window_s = 0\n"
    )
    env["SLUICE_CONFIG"] = str(config)
    address = btc(env, "address", "--customer", "alice")["address"]
    assert address.startswith("rltc1q")

    funding = litecoind.fund(address, 40_000_000)
    litecoind.mine(5)
    tick = btc(env, "watch", "--once")
    assert tick["error"] is None and tick["watch"]["outputs"] == 1
    (deposit,) = btc(env, "deposits", "--customer", "alice")
    assert (deposit["txid"], deposit["status"], deposit["confirmations"]) == (funding, "seen", 5)
    assert deposit["amount_sats"] == 40_000_000

    # A reorg: the deposit's block is invalidated and another branch mined (to another address:
    # the same block again would be a duplicate); the deposit comes back, as the same one.
    old_hash = deposit["block_hash"]
    litecoind.invalidate(old_hash)
    litecoind.mine(7)
    tick = btc(env, "watch", "--once")
    assert tick["watch"]["reorgs"] == 1 and tick["watch"]["confirmed"] == 1
    (deposit,) = btc(env, "deposits", "--customer", "alice")
    assert deposit["txid"] == funding and deposit["status"] == "confirmed"
    assert deposit["block_hash"] != old_hash and deposit["confirmations"] == 7
    assert btc(env, "watch", "--once")["watch"]["confirmed"] == 0

    # Alice's deposit is owed to her (minted or returned): an operator's payout may not spend
    # it, only the exchange's own Bitcoin, sent to a float address.
    receiver = litecoind.new_address()
    refused = btc(env, "payout", "--id", "real-1", "--to", receiver, "--amount", "5000000", code=2)
    assert "error 30 mint_guard_breach" in refused.stderr
    own = litecoind.fund(btc(env, "float-address")["address"], 10_000_000)
    litecoind.mine(6)
    btc(env, "watch", "--once")
    queued = btc(env, "payout", "--id", "real-1", "--to", receiver, "--amount", "5000000")
    assert queued["status"] == "queued"
    tick = btc(env, "watch", "--once")
    assert tick["payouts"]["broadcast"] == 1, tick
    (sent,) = btc(env, "payouts")
    assert sent["status"] == "broadcast"
    (spent,) = sent["outpoints"]  # one of custody's two outputs (the coins are fungible)
    assert spent.split(":")[0] in (funding, own)
    assert litecoind.rpc.getmempoolentry(sent["txid"])
    litecoind.mine(6)
    tick = btc(env, "watch", "--once")
    (done,) = btc(env, "payouts")
    assert (done["status"], done["confirmations"]) == ("completed", 6), tick
    received = litecoind.rpc.call("getreceivedbyaddress", receiver, 1)
    assert to_sats(received) == 5_000_000 - done["fee_sats"]
    balance = btc(env, "balance")
    assert balance["block_hash"] == litecoind.rpc.getblockchaininfo()["bestblockhash"]
    assert balance["total_sats"] == 40_000_000 + 10_000_000 - 5_000_000


def test_an_operator_cancels_an_unbatched_payout_and_releases_an_orphaned_batch(
    tmp_path: Path,
) -> None:
    """``sluice btc payout cancel`` cancels a payout not yet batched (audited) and refuses a
    batched one with error 41. ``sluice btc batch release`` refuses a batch the node still holds
    (error 41); once a deep reorg dropped one of its inputs for good, the batch is orphaned, and
    the release keeps its surviving input reserved and queues its payout again for a successor
    (not cancellable meanwhile), which the next round, once more funds confirm, makes spending
    that input."""
    data = tmp_path / "data"
    env = with_customers(data, "alice")
    # The exchange's own Bitcoin, at two float addresses (an operator may not spend deposits)
    first = btc(env, "float-address")["address"]
    btc(env, "sandbox", "fund", "--address", first, "--amount", "300000", "--mine")
    second = btc(env, "float-address")["address"]
    dropped = btc(env, "sandbox", "fund", "--address", second, "--amount", "300000", "--mine")
    btc(env, "sandbox", "mine", "5")
    btc(env, "watch", "--once")
    assert btc(env, "balance")["total_sats"] == 600000

    btc(env, "payout", "--id", "p-late", "--to", OUTSIDE, "--amount", "90000")
    cancelled = btc(env, "payout", "cancel", "--id", "p-late")
    assert set(cancelled) == PAYOUT_KEYS
    assert cancelled["status"] == "cancelled"
    assert "operator-1" in cancelled["last_error"]

    btc(env, "payout", "--id", "p-big", "--to", OUTSIDE, "--amount", "500000")
    assert btc(env, "watch", "--once")["payouts"]["broadcast"] == 1
    batched = btc(env, "payout", "cancel", "--id", "p-big", code=2)
    assert "error 41" in batched.stderr
    sent = {p["id"]: p for p in btc(env, "payouts")}
    batch_id = sent["p-big"]["batch_id"]
    assert len(sent["p-big"]["outpoints"]) == 2
    held = btc(env, "batch", "release", "--id", batch_id, code=2)
    assert "error 41" in held.stderr

    btc(env, "sandbox", "reorg", "--depth", "6", "--drop", dropped["txid"])
    assert btc(env, "watch", "--once")["payouts"]["orphaned"] == 1
    released = btc(env, "batch", "release", "--id", batch_id)
    assert released["requeued_payouts"] == ["p-big"]
    assert released["status"] == "released"
    (kept,) = released["kept_outpoints"]  # the first deposit; the second was dropped
    assert kept in sent["p-big"]["outpoints"]
    assert not kept.startswith(dropped["txid"])
    after = {p["id"]: p for p in btc(env, "payouts")}
    assert (after["p-big"]["status"], after["p-big"]["batch_id"]) == ("queued", batch_id)
    assert after["p-late"]["status"] == "cancelled"
    again = btc(env, "batch", "release", "--id", batch_id, code=2)
    assert "error 41" in again.stderr
    waiting = btc(env, "payout", "cancel", "--id", "p-big", code=2)
    assert "error 41" in waiting.stderr and "successor" in waiting.stderr

    # The first deposit alone cannot pay it: with another one confirmed, its successor spends
    # both.
    third = btc(env, "float-address")["address"]
    btc(env, "sandbox", "fund", "--address", third, "--amount", "300000", "--mine")
    btc(env, "sandbox", "mine", "5")
    assert btc(env, "watch", "--once")["payouts"]["broadcast"] == 1
    paid = {p["id"]: p for p in btc(env, "payouts")}["p-big"]
    assert paid["status"] == "broadcast" and paid["batch_id"] != batch_id
    assert kept in paid["outpoints"]
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    try:
        with database.uow() as uow:
            operations = {
                r.entry.operation
                for name in ("p-late", batch_id)
                for r in uow.audit.find(operation_id=name, limit=20)
            }
    finally:
        database.dispose()
    assert {"btc_payout_cancelled", "btc_batch_orphaned", "btc_batch_released"} <= operations


def test_the_exchanges_own_bitcoin_goes_to_a_float_address_and_is_no_deposit(
    tmp_path: Path,
) -> None:
    """``sluice btc float-address``: a new change-branch address each time; what it receives is
    custody's (in the balance) but nobody's deposit (nothing to mint)."""
    data = tmp_path / "data"
    env = with_customers(data, "alice")
    first = btc(env, "float-address")
    second = btc(env, "float-address")
    assert set(first) == {"address", "branch", "index"} and first["branch"] == 1
    assert first["address"] != second["address"] and first["index"] != second["index"]
    btc(env, "sandbox", "fund", "--address", first["address"], "--amount", "250000", "--mine")
    btc(env, "sandbox", "mine", "6")
    btc(env, "watch", "--once")
    assert btc(env, "deposits") == []
    assert btc(env, "balance")["total_sats"] == 250000
