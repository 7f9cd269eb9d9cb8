"""Measuring Bitcoin custody: the deposit watcher against the node's own block rate, and signing.

**Blocks.** The benchmark makes its own regtest blocks, each holding one payment of
``outputs_per_block`` outputs (about 1,000 by default): a few (``custody_per_block``) pay customers'
deposit addresses of a sandbox custody (three fresh keys, the real embit wallet), the rest pay
random P2WSH scripts that are nobody's. Those outside scripts matter: the node's wallet never
spends them, so every block's payment is funded from the wallet's coinbase coins and change, never
from a thousand small outputs of the block before (which would be a transaction too large).

**The node.** By default a ``litecoind -regtest`` (Debian's Litecoin Core 0.21, a Bitcoin Core
fork with the same RPC) started by the benchmark on free ports in a temporary data directory (in
memory when ``/dev/shm`` has room), with a legacy wallet that mines the coins it pays from; or a
running regtest node (``--rpc-url``) whose loaded wallet pays; or, when there is no ``litecoind``
on the ``PATH``, the in-memory chain :class:`~sluice.bitcoin.fakechain.FakeChain`. The JSON line
says which (``"node"``).

**The figure.** Over the same blocks, in the same run, through the same
:class:`~sluice.bitcoin.rpc.BitcoinRpc` client:

* ``raw_blocks_per_s``: ``getblock(getblockhash(h))`` at verbosity 2, decoded, for every block —
  the node's own rate of handing blocks out, which no watcher can beat;
* ``watcher_blocks_per_s``: :class:`~sluice.services.btc_watcher.DepositWatcher` from its start
  (a new watcher over a new SQLite Integration DB, the customers' addresses issued through
  :func:`~sluice.services.btc_addresses.deposit_address`) until its cursor reaches the last block:
  the same reads, plus matching every output and input against custody's scripts and outpoints,
  and one committed transaction per block (the block row, the custody outputs, funded addresses,
  confirmations and their audit records).

``ratio`` = watcher ÷ raw (target ≥ 0.5). The two are measured in alternation, ``rounds`` times,
after one untimed raw pass that warms the node's block files into the page cache, and each figure
is the median of its rounds, so a slow moment of the machine falls on both alike. After each
watcher pass the custody outputs it found are checked against the ones paid.

**Signing.** :meth:`~sluice.bitcoin.wallet.EmbitCustodyWallet.sign` of a payout spending 1, 10
and 100 custody inputs to one outside script plus change: derivation of each input's script,
the PSBT, two of the three keys' signatures, their verification, finalising and extracting.
Every run spends inputs at indexes never derived before, so no run profits from the wallet's
cache of derived scripts. ``sign_ms`` is the p50 per input count (target: 100 inputs under
500 ms), and ``libsecp256k1`` says whether embit signs with the C library (the wallet refuses to
start otherwise).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sluice import bootstrap
from sluice.bench.bitcoin_node import COINBASE_MATURITY as COINBASE_MATURITY
from sluice.bench.bitcoin_node import START_TIMEOUT_S as START_TIMEOUT_S
from sluice.bench.bitcoin_node import STOP_TIMEOUT_S as STOP_TIMEOUT_S
from sluice.bench.bitcoin_node import (
    WALLET,
    BlockMaker,
    Litecoind,
    MemoryBlocks,
    RpcBlocks,
)
from sluice.bench.record import insert_table_row, machine
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.rpc import BitcoinRpc
from sluice.bitcoin.wallet import EmbitCustodyWallet, check_secp256k1
from sluice.domain.chains import CHAINS, Chain
from sluice.domain.errors import BitcoinTransactionError
from sluice.ports.bitcoin import (
    BitcoinNode,
    SpendInput,
    TxOutput,
)
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_watcher import DepositWatcher

SECTION = "## Bitcoin custody (`sluice bench bitcoin`)"
HEADER = (
    "| date | machine | node | blocks × outputs | raw blocks/s | watcher blocks/s | ratio "
    "| sign p50 ms (1 / 10 / 100 inputs) | targets | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|\n"
)
RATIO_TARGET = 0.5
SIGN_TARGET_MS = 500.0
SIGN_INPUTS = (1, 10, 100)
NODES = ("auto", "litecoind", "in-memory")
NETWORK = "litecoin-regtest"
# Amounts above every regtest chain's P2WSH dust limit (litecoin's is 10x bitcoin's).
OUTSIDE_SATS = 20_000
DEPOSIT_SATS = 100_000


@dataclass(frozen=True, slots=True)
class BitcoinBenchSettings:
    blocks: int = 50
    outputs_per_block: int = 1_000
    custody_per_block: int = 20
    customers: int = 200
    rounds: int = 5
    sign_inputs: tuple[int, ...] = SIGN_INPUTS
    sign_runs: int = 9
    node: str = "auto"
    rpc_url: str | None = None
    network: str = NETWORK

    def __post_init__(self) -> None:
        if self.node not in NODES:
            raise ValueError(f"node must be one of {', '.join(NODES)}, not {self.node!r}")
        if not 1 <= self.custody_per_block <= min(self.customers, self.outputs_per_block):
            # One payment cannot pay an address twice (the node refuses duplicated addresses).
            raise ValueError("custody outputs per block must be within 1..customers and outputs")
        if min(self.blocks, self.rounds, self.sign_runs) < 1 or not self.sign_inputs:
            raise ValueError("blocks, rounds and sign runs must be at least 1")


# --- where the blocks come from ------------------------------------------------------------------


def open_blocks(settings: BitcoinBenchSettings, chain: Chain) -> BlockMaker:
    """The node the settings name: a running one, a ``litecoind`` of our own, or in memory."""
    if settings.rpc_url is not None:
        rpc = BitcoinRpc(settings.rpc_url, timeout_s=60.0)
        if not rpc.call("listwallets"):
            rpc.call("createwallet", WALLET)
        version = str(rpc.call("getnetworkinfo").get("subversion", "")).strip("/")
        # The host and port only: the URL may carry the node's user and password.
        where = urlsplit(settings.rpc_url)
        return RpcBlocks(rpc, chain, f"{version or 'node'} at {where.hostname}:{where.port}")
    program = shutil.which("litecoind")
    if settings.node == "in-memory" or (settings.node == "auto" and program is None):
        return MemoryBlocks(chain)
    if program is None:
        raise RuntimeError("litecoind is not on the PATH (Debian package litecoind)")
    node = Litecoind(program)
    try:
        node.start()
        return RpcBlocks(node.rpc, chain, node.version(), owned=node)
    except BaseException:
        node.close()
        raise


# --- the custody and the blocks ------------------------------------------------------------------


@dataclass
class Sandbox:
    """A sandbox custody (three keys in a temporary directory) and its customers' addresses."""

    wallet: EmbitCustodyWallet
    customers: list[str]
    deposit_scripts: list[str]
    workdir: Path


def sandbox(chain: Chain, customers: int, workdir: Path) -> Sandbox:
    custody = create_sandbox_custody(workdir / "keys", chain)
    wallet = EmbitCustodyWallet(custody.descriptor, chain, load_signing_keys(custody.key_files))
    names = [f"customer-{index:05d}" for index in range(customers)]
    # Each customer's first deposit address is the next index of the deposit branch, in the
    # order they ask: the same scripts in every fresh database.
    scripts = [wallet.derive(0, index).script_hex for index in range(customers)]
    return Sandbox(wallet, names, scripts, workdir)


def outside_script() -> str:
    """A random P2WSH script: nobody's, and never the node wallet's to spend."""
    return "0020" + secrets.token_hex(32)


@dataclass
class Blocks:
    first: int
    last: int
    outputs: int
    custody_outputs: int
    transactions: int
    bytes_total: int

    @property
    def heights(self) -> range:
        return range(self.first, self.last + 1)


def make_blocks(maker: BlockMaker, box: Sandbox, settings: BitcoinBenchSettings) -> Blocks:
    """``settings.blocks`` blocks of one payment each (see the module docstring); counted back
    from the node's own ``getblock``."""
    if isinstance(maker, RpcBlocks):
        per_block = (settings.outputs_per_block - settings.custody_per_block) * OUTSIDE_SATS + (
            settings.custody_per_block * DEPOSIT_SATS
        )
        # Twice the payments, for the fees, and a coinbase's worth of margin.
        maker.fund(2 * per_block * settings.blocks)
    heights = []
    next_customer = 0
    for _ in range(settings.blocks):
        payments: list[tuple[str, int]] = []
        for _ in range(settings.custody_per_block):
            payments.append((box.deposit_scripts[next_customer], DEPOSIT_SATS))
            next_customer = (next_customer + 1) % len(box.deposit_scripts)
        for number in range(settings.outputs_per_block - settings.custody_per_block):
            payments.append((outside_script(), OUTSIDE_SATS + number))
        # Custody's outputs spread through the payment, not bunched at its start.
        payments.sort()
        heights.append(maker.make_block(payments))
    first, last = heights[0], heights[-1]
    if heights != list(range(first, last + 1)):
        raise RuntimeError(f"the blocks are not consecutive: {heights}")
    outputs = transactions = size = 0
    custody = set(box.deposit_scripts)
    custody_outputs = 0
    for height in range(first, last + 1):
        block = maker.node.getblock(maker.node.getblockhash(height))
        transactions += len(block["tx"])
        size += int(block.get("size", 0))
        for tx in block["tx"]:
            outputs += len(tx["vout"])
            custody_outputs += sum(1 for o in tx["vout"] if o["scriptPubKey"]["hex"] in custody)
    return Blocks(first, last, outputs, custody_outputs, transactions, size)


# --- the measurements ----------------------------------------------------------------------------


def raw_pass(node: BitcoinNode, heights: range) -> float:
    """Seconds to read every block at verbosity 2, as the watcher's reads would."""
    started = time.perf_counter()
    for height in heights:
        node.getblock(node.getblockhash(height))
    return time.perf_counter() - started


@dataclass
class WatchPass:
    seconds: float
    outputs: int
    confirmed: int
    rounds: int


def _clock() -> datetime:
    return datetime.now(UTC)


def watcher_pass(
    node: BitcoinNode, box: Sandbox, chain: Chain, blocks: Blocks, number: int
) -> WatchPass:
    """A new watcher over a new SQLite database, from its start to the last block; the DB and
    the customers' addresses are made before the clock starts."""
    path = box.workdir / f"watch-{number}.db"
    database = bootstrap.database(f"sqlite:///{path}")
    try:
        with database.uow() as uow:
            for customer in box.customers:
                uow.reference.add_customer(customer, customer)
            uow.commit()
        for customer, script_hex in zip(box.customers, box.deposit_scripts, strict=True):
            issued = deposit_address(database.uow, box.wallet, customer, clock=_clock)
            if issued.script_hex != script_hex:
                raise RuntimeError(f"{customer} was issued index {issued.index}, not the expected")
        settings = BitcoinSettings(
            chain=chain,
            watch_start_height=blocks.first,
            watch_blocks_max=len(blocks.heights),
        )
        watcher = DepositWatcher(database.uow, node, box.wallet, settings, _clock)
        outputs = confirmed = rounds = 0
        started = time.perf_counter()
        while True:
            tick = watcher.run_once()
            rounds += 1
            if tick.error is not None:
                raise RuntimeError(f"the watcher stopped: {tick.error}")
            outputs += tick.outputs + tick.dust
            confirmed += tick.confirmed
            if tick.cursor_height is not None and tick.cursor_height >= blocks.last:
                break
            if not tick.blocks:
                raise RuntimeError(f"the watcher made no progress at {tick.cursor_height}")
        seconds = time.perf_counter() - started
    finally:
        database.engine.dispose()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return WatchPass(seconds, outputs, confirmed, rounds)


def sign_timings(wallet: EmbitCustodyWallet, counts: Sequence[int], runs: int) -> dict[str, float]:
    """p50 ms of signing a payout of each input count (see the module docstring)."""
    result: dict[str, float] = {}
    next_index = 1_000_000  # far above any deposit address the blocks paid
    for count in counts:
        samples = []
        for _ in range(runs):
            inputs = [
                SpendInput(secrets.token_hex(32), index % 3, 50_000 + index, 0, next_index + index)
                for index in range(count)
            ]
            change = wallet.derive(1, next_index).script_hex
            next_index += count
            total = sum(spend.amount_sats for spend in inputs)
            fee = 200 * count + 500
            outputs = [
                TxOutput(outside_script(), total // 2),
                TxOutput(change, total - total // 2 - fee),
            ]
            started = time.perf_counter()
            wallet.sign(inputs, outputs)
            samples.append((time.perf_counter() - started) * 1000.0)
        result[str(count)] = round(statistics.median(samples), 2)
    return result


def uses_libsecp256k1() -> bool:
    try:
        check_secp256k1()
    except BitcoinTransactionError:
        return False
    return True


def measure(
    settings: BitcoinBenchSettings, *, progress: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the whole benchmark; its figures as the JSON line's dictionary."""
    chain = CHAINS[settings.network]
    libsecp = uses_libsecp256k1()
    with tempfile.TemporaryDirectory(prefix="sluice-bench-btc-") as workdir:
        box = sandbox(chain, settings.customers, Path(workdir))
        progress("starting the node")
        maker = open_blocks(settings, chain)
        try:
            progress(
                f"making {settings.blocks} blocks of {settings.outputs_per_block} outputs "
                f"on {maker.description}"
            )
            blocks = make_blocks(maker, box, settings)
            node = maker.node
            raw_pass(node, blocks.heights)  # untimed: block files into the page cache
            raw_seconds: list[float] = []
            watch_passes: list[WatchPass] = []
            for number in range(settings.rounds):
                progress(f"round {number + 1} of {settings.rounds}: raw reads, then the watcher")
                raw_seconds.append(raw_pass(node, blocks.heights))
                passed = watcher_pass(node, box, chain, blocks, number)
                if passed.outputs != blocks.custody_outputs:
                    raise RuntimeError(
                        f"the watcher found {passed.outputs} custody outputs, "
                        f"{blocks.custody_outputs} were paid"
                    )
                watch_passes.append(passed)
        finally:
            maker.close()
        progress("signing payouts")
        sign_ms = sign_timings(box.wallet, settings.sign_inputs, settings.sign_runs)
    count = len(blocks.heights)
    raw_rates = [count / s for s in raw_seconds]
    watch_rates = [count / p.seconds for p in watch_passes]
    raw_rate = statistics.median(raw_rates)
    watch_rate = statistics.median(watch_rates)
    ratio = watch_rate / raw_rate
    largest = str(max(settings.sign_inputs))
    in_memory = isinstance(maker, MemoryBlocks)
    return {
        "node": maker.description,
        "network": chain.name,
        "db": "sqlite",
        "blocks": count,
        "outputs": blocks.outputs,
        "outputs_per_block": round(blocks.outputs / count, 1),
        "custody_outputs": blocks.custody_outputs,
        "transactions": blocks.transactions,
        "block_kb": round(blocks.bytes_total / count / 1000, 1),
        "rounds": settings.rounds,
        "raw_blocks_per_s": round(raw_rate, 1),
        "watcher_blocks_per_s": round(watch_rate, 1),
        "ratio": round(ratio, 3),
        "raw_rounds_per_s": [round(r, 1) for r in raw_rates],
        "watcher_rounds_per_s": [round(r, 1) for r in watch_rates],
        "confirmed": watch_passes[-1].confirmed,
        "sign_ms": sign_ms,
        "sign_runs": settings.sign_runs,
        "libsecp256k1": libsecp,
        # The target is against a node's RPC: the in-memory chain hands out blocks by a plain
        # call, so its ratio says how fast the watcher's own work is, not how it keeps up.
        "ratio_target_met": None if in_memory else ratio >= RATIO_TARGET,
        "sign_target_met": sign_ms[largest] < SIGN_TARGET_MS,
    }


# --- recording ---------------------------------------------------------------------------------


def append_bitcoin_result(path: Path, result: dict[str, Any], *, command: str) -> None:
    """Add one row to the section's table in ``path`` (made on first use), keeping everything
    else in the file, prose under the table included, in place."""
    ratio_met = {True: "met", False: "NOT met", None: "n/a (no node)"}[result["ratio_target_met"]]
    sign_met = "met" if result["sign_target_met"] else "NOT met"
    sign = " / ".join(f"{value:.1f}" for value in result["sign_ms"].values())
    secp = "" if result["libsecp256k1"] else " (pure-Python secp256k1)"
    row = (
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine()}, load {os.getloadavg()[0]:.1f} "
        f"| {result['node']} | {result['blocks']} × {result['outputs_per_block']:,.0f} "
        f"| {result['raw_blocks_per_s']} | {result['watcher_blocks_per_s']} | {result['ratio']} "
        f"| {sign}{secp} | ratio ≥ {RATIO_TARGET}: {ratio_met}; "
        f"{max(int(k) for k in result['sign_ms'])} inputs < {SIGN_TARGET_MS:.0f} ms: {sign_met} "
        f"| `{command}` |\n"
    )
    insert_table_row(path, SECTION, HEADER, row)


def bench_command(
    settings: BitcoinBenchSettings,
    record: Path | None = None,
    *,
    progress: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:
    """``sluice bench bitcoin``: measure, print the JSON line, append the row to ``record``."""
    result = measure(settings, progress=progress)
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()
    if record is not None:
        command = (
            " ".join(["sluice", *sys.argv[1:]])
            if sys.argv[1:2] == ["bench"]
            else f"sluice bench bitcoin --record {record}"
        )
        append_bitcoin_result(record, result, command=command)
    return result
