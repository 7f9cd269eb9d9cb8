"""Where the Bitcoin benchmark's blocks come from: a running node over RPC, a ``litecoind`` of
its own in a temporary data directory, or the in-memory chain (``open_blocks`` in
:mod:`sluice.bench.bitcoin` picks one)."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.params import AddressCodec
from sluice.bitcoin.rpc import BitcoinRpc
from sluice.domain.chains import Chain, to_coins
from sluice.ports.bitcoin import (
    BitcoinNode,
    BitcoinNodeError,
    NodeUnavailableError,
)

COINBASE_MATURITY = 100
WALLET = "sluice-bench"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


class BlockMaker(Protocol):
    """A node the benchmark reads, and a way to put one block of payments on it."""

    node: BitcoinNode
    description: str

    def make_block(self, payments: Sequence[tuple[str, int]]) -> int:
        """Mine one block paying each ``(script_hex, sats)``; its height."""
        ...

    def close(self) -> None: ...


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _datadir_parent() -> str | None:
    """Memory when it has room: the legacy wallet syncs its file at every new address."""
    try:
        stats = os.statvfs("/dev/shm")
    except OSError:
        return None
    room = stats.f_bavail * stats.f_frsize
    return "/dev/shm" if os.access("/dev/shm", os.W_OK) and room > 1 << 30 else None


class Litecoind:
    """A ``litecoind -regtest`` of the benchmark's own, in a temporary data directory.

    ``-vbparams=mweb:-2:0`` keeps MWEB off (regtest cannot mine past block 431 otherwise);
    ``-txindex=1`` as custody runs it; ``-fallbackfee`` because a young chain has no estimate
    and the wallet would not pay without one; ``-rpcservertimeout=1`` so stopping does not
    wait 30 s for the client's idle keep-alive connection."""

    def __init__(self, program: str) -> None:
        self.program = program
        self.datadir = Path(tempfile.mkdtemp(prefix="sluice-bench-ltc-", dir=_datadir_parent()))
        self.rpc_port = _free_port()
        self.password = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.rpc_port}/"
        self._process: subprocess.Popen[bytes] | None = None
        self.rpc = BitcoinRpc(self.url, user="bench", password=self.password, timeout_s=60.0)

    def version(self) -> str:
        completed = subprocess.run(
            [self.program, "-version"], capture_output=True, text=True, timeout=30, check=False
        )
        first = completed.stdout.splitlines()[0] if completed.stdout else ""
        # "Litecoin Core version v0.21.2.1-gfce5d45…": the name and the release.
        words = first.split()
        release = words[-1].lstrip("v").split("-")[0] if words else "?"
        parts = release.split(".")
        return f"{Path(self.program).name} {'.'.join(parts[:3])}"

    def start(self) -> None:
        arguments = [
            self.program,
            "-regtest",
            f"-datadir={self.datadir}",
            "-server",
            "-listen=0",
            "-dnsseed=0",
            "-discover=0",
            "-printtoconsole=0",
            f"-rpcport={self.rpc_port}",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            "-rpcuser=bench",
            f"-rpcpassword={self.password}",
            "-vbparams=mweb:-2:0",
            "-txindex=1",
            "-fallbackfee=0.0002",
            "-rpcservertimeout=1",
        ]
        log = (self.datadir / "stderr.log").open("ab")
        try:
            self._process = subprocess.Popen(
                arguments, stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        probe = BitcoinRpc(
            self.url, user="bench", password=self.password, timeout_s=5.0, read_retries=0
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if self._process.poll() is not None:
                    raise RuntimeError(f"litecoind exited at start: {self._tail()}")
                try:
                    probe.getblockchaininfo()
                    break
                except NodeUnavailableError:  # not listening yet, or warming up
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"litecoind did not answer within {START_TIMEOUT_S} s: {self._tail()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            probe.close()
        self.rpc.call("createwallet", WALLET)

    def _tail(self) -> str:
        parts = []
        for path in (self.datadir / "stderr.log", self.datadir / "regtest" / "debug.log"):
            if path.exists():
                parts.extend(path.read_text(errors="replace").splitlines()[-10:])
        return "\n".join(parts) or "(no output)"

    def close(self) -> None:
        """Stop the node (killing it if it does not exit in time) and remove its data."""
        process = self._process
        try:
            if process is not None and process.poll() is None:
                try:
                    self.rpc.call("stop")
                except BitcoinNodeError:
                    process.terminate()
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            self._process = None
            self.rpc.close()
            shutil.rmtree(self.datadir, ignore_errors=True)


class RpcBlocks:
    """Blocks made on a regtest node through RPC: ``sendmany`` from its wallet, then one block
    mined to the wallet (so its coins keep coming)."""

    def __init__(
        self, rpc: BitcoinRpc, chain: Chain, description: str, owned: Litecoind | None = None
    ) -> None:
        self.node: BitcoinNode = rpc
        self.rpc = rpc
        self.description = description
        self._owned = owned
        self._codec = AddressCodec(chain)
        info = rpc.getblockchaininfo()
        if info.get("chain") != "regtest":
            raise ValueError(f"the benchmark mines blocks: the node is on {info.get('chain')}")
        self._mining_address = str(rpc.call("getnewaddress", "", "bech32"))

    def fund(self, sats: int) -> None:
        """Mine to the wallet until it can spend ``sats`` (coinbase matures after 100 blocks)."""
        for _ in range(20):
            if to_coins(sats) <= self.rpc.call("getbalance"):
                return
            height = int(self.rpc.getblockchaininfo()["blocks"])
            count = COINBASE_MATURITY + 1 if height < COINBASE_MATURITY else 25
            self.rpc.call("generatetoaddress", count, self._mining_address)
        raise RuntimeError(f"the node's wallet could not be funded with {sats} sats")

    def make_block(self, payments: Sequence[tuple[str, int]]) -> int:
        amounts = {}
        for script_hex, sats in payments:
            address = self._codec.address_of(bytes.fromhex(script_hex))
            if address is None:
                raise ValueError(f"no address for script {script_hex}")
            amounts[address] = to_coins(sats)
        self.rpc.call("sendmany", "", amounts)
        self.rpc.call("generatetoaddress", 1, self._mining_address)
        return int(self.rpc.getblockchaininfo()["blocks"])

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
        else:
            self.rpc.close()


class MemoryBlocks:
    """Blocks made on the in-memory chain: one funding transaction per block."""

    def __init__(self, chain: Chain) -> None:
        self.chain = FakeChain(chain)
        self.node: BitcoinNode = self.chain
        self.description = "in-memory"

    def make_block(self, payments: Sequence[tuple[str, int]]) -> int:
        self.chain.fund_many(list(payments))
        self.chain.mine()
        return self.chain.tip_height

    def close(self) -> None:
        return None
