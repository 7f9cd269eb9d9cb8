"""A real node for the tests: Debian's ``litecoind`` (Litecoin Core 0.21, a Bitcoin Core fork with
the same RPC) in ``-regtest``, on free ports, in a temporary data directory.

Why these options:

* ``-vbparams=mweb:-2:0``: without it regtest activates MWEB and cannot mine past block 431.
* ``-mempoolreplacement=1``: Litecoin turns BIP 125 replacement off by default; payouts bump fees.
* ``-txindex=1``: ``getrawtransaction`` finds mined transactions, which a broadcast's check by
  txid relies on.
* ``-fallbackfee``: a young chain has no fee estimate, and the node's own wallet (which funds the
  tests' deposits) would refuse to send without one.
* ``-rpcservertimeout=1``: a 0.21 node stopping waits for its clients' idle keep-alive
  connections to time out (30 s by default), and the tests' clients keep theirs open.
* ``-rpcauth``: a fixed user and password for :attr:`RegtestNode.rpc`, while the node still writes
  its cookie file (which ``-rpcpassword`` would turn off), so cookie authentication can be tested.

The data directory is in memory when ``/dev/shm`` has room. The node's legacy wallet (Debian's
build has no descriptor wallets) is created on first start and loaded by name on later ones;
:meth:`RegtestNode.fund` pays from it. A missing ``litecoind`` fails under ``CI=true`` and skips
otherwise, saying that ``make test`` installs it.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any

import pytest

from sluice.bitcoin.rpc import BitcoinRpc
from sluice.domain.chains import to_coins
from sluice.ports.bitcoin import BitcoinNodeError, NodeUnavailableError

WALLET = "tests"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def litecoind_path() -> str:
    """The ``litecoind`` program; fails under ``CI=true`` when it is missing, skips otherwise."""
    path = shutil.which("litecoind")
    if path is None:
        reason = (
            "litecoind is not installed (Debian package litecoind): "
            "`make test` installs it, or `make tools`"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; it is required under CI=true")
        pytest.skip(reason)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _datadir_parent() -> str | None:
    """Where data directories go: memory (``/dev/shm``) when there is room, because the legacy
    wallet syncs its database at every new address (about 30 ms each on a disk, 1 ms in memory);
    the system's temporary directory otherwise."""
    shm = "/dev/shm"
    try:
        stats = os.statvfs(shm)
    except OSError:
        return None
    room = stats.f_bavail * stats.f_frsize
    return shm if os.access(shm, os.W_OK) and room > 1 << 30 else None


def _rpcauth(user: str, password: str) -> str:
    """The ``-rpcauth`` value for ``user``/``password`` (salted HMAC-SHA256, as
    share/rpcauth/rpcauth.py computes it)."""
    salt = secrets.token_hex(16)
    digest = hmac.new(salt.encode(), password.encode(), hashlib.sha256).hexdigest()
    return f"{user}:{salt}${digest}"


class RegtestNode:
    """One ``litecoind -regtest`` process and its data directory. The ports and data directory
    stay the same across :meth:`restart`, so a client made before a restart works after it."""

    def __init__(self, *, fallback_fee: Decimal = Decimal("0.0002")) -> None:
        self.program = litecoind_path()
        self.datadir = Path(tempfile.mkdtemp(prefix="sluice-litecoind-", dir=_datadir_parent()))
        self.rpc_port = free_port()
        self.p2p_port = free_port()
        self.user = "sluice"
        self.password = secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.rpc_port}/"
        self.cookie_file = self.datadir / "regtest" / ".cookie"
        self.fallback_fee = fallback_fee
        self._process: subprocess.Popen[bytes] | None = None
        self._mining_address: str | None = None
        self.rpc = BitcoinRpc(self.url, user=self.user, password=self.password, timeout_s=30.0)

    # -- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> RegtestNode:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _arguments(self) -> list[str]:
        arguments = [
            self.program,
            "-regtest",
            f"-datadir={self.datadir}",
            "-server",
            "-listen=0",
            "-dnsseed=0",
            "-discover=0",
            "-printtoconsole=0",
            f"-port={self.p2p_port}",
            f"-rpcport={self.rpc_port}",
            "-rpcbind=127.0.0.1",
            "-rpcallowip=127.0.0.1",
            f"-rpcauth={_rpcauth(self.user, self.password)}",
            "-vbparams=mweb:-2:0",
            "-mempoolreplacement=1",
            "-txindex=1",
            f"-fallbackfee={self.fallback_fee}",
            "-keypool=100",
            "-rpcservertimeout=1",
        ]
        if (self.datadir / "regtest" / "wallets" / WALLET).exists():
            arguments.append(f"-wallet={WALLET}")
        return arguments

    def start(self) -> None:
        """Start the node and wait (bounded) until its RPC answers and its wallet is loaded."""
        if self.running:
            return
        log = (self.datadir / "stderr.log").open("ab")
        try:
            self._process = subprocess.Popen(
                self._arguments(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        finally:
            log.close()
        probe = BitcoinRpc(
            self.url, user=self.user, password=self.password, timeout_s=5.0, read_retries=0
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            while True:
                if not self.running:
                    raise RuntimeError(f"litecoind exited at start: {self.diagnostics()}")
                try:
                    probe.getblockchaininfo()
                    break
                except NodeUnavailableError:  # not listening yet, or -28 warming up
                    if time.monotonic() > deadline:
                        self.kill(flush=False)
                        raise RuntimeError(
                            f"litecoind did not answer within {START_TIMEOUT_S} s: "
                            f"{self.diagnostics()}"
                        ) from None
                    time.sleep(0.05)
        finally:
            probe.close()
        if WALLET not in self.rpc.call("listwallets"):
            self.rpc.call("createwallet", WALLET)

    def stop(self) -> None:
        """Stop the node the orderly way (RPC ``stop``), killing it if it does not exit in time."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            try:
                self.rpc.call("stop")
            except BitcoinNodeError:
                process.terminate()
            try:
                process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None

    def kill(self, *, flush: bool = True) -> None:
        """Kill the node at once (SIGKILL): no orderly shutdown. A killed node forgets what it had
        not written to disk, which on a young regtest chain is every block since it started; with
        ``flush`` (the default) its state is written first (``gettxoutsetinfo`` forces that), so
        it comes back at the same tip, as a node that crashed after a while would."""
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            if flush:
                with contextlib.suppress(BitcoinNodeError):
                    self.rpc.call("gettxoutsetinfo")
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)
        self._process = None

    def restart(self) -> None:
        """Stop and start again with the same data directory, ports and wallet; the node writes
        a new cookie file."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the node (killing it if need be) and remove its data directory."""
        try:
            try:
                self.stop()
            except Exception:
                self.kill(flush=False)
        finally:
            self.rpc.close()
            shutil.rmtree(self.datadir, ignore_errors=True)

    def diagnostics(self) -> str:
        """The end of the node's stderr and debug.log, for error messages."""
        parts = []
        for path in (self.datadir / "stderr.log", self.datadir / "regtest" / "debug.log"):
            if path.exists():
                lines = path.read_text(errors="replace").splitlines()[-15:]
                parts.append(f"{path.name}:\n" + "\n".join(lines))
        return "\n".join(parts) or "(no output)"

    # -- the chain and the wallet -------------------------------------------------------------

    def new_address(self) -> str:
        """A fresh bech32 (P2WPKH) address of the node's wallet."""
        return str(self.rpc.call("getnewaddress", "", "bech32"))

    @property
    def mining_address(self) -> str:
        if self._mining_address is None:
            self._mining_address = self.new_address()
        return self._mining_address

    def mine(self, count: int = 1, address: str | None = None) -> list[str]:
        """Mine ``count`` blocks paying ``address`` (the wallet's mining address by default);
        their hashes."""
        hashes = self.rpc.call("generatetoaddress", count, address or self.mining_address)
        return [str(block_hash) for block_hash in hashes]

    def fund(self, address: str, sats: int) -> str:
        """Pay ``sats`` to ``address`` from the node's wallet (exact coins); the txid."""
        return str(self.rpc.call("sendtoaddress", address, to_coins(sats)))

    def invalidate(self, block_hash: str) -> None:
        """Take ``block_hash`` (and its descendants) off the active chain. The next :meth:`mine`
        pays a fresh address: mining the same block again would be refused as a duplicate."""
        self.rpc.call("invalidateblock", block_hash)
        self._mining_address = None

    def reconsider(self, block_hash: str) -> None:
        self.rpc.call("reconsiderblock", block_hash)

    @property
    def height(self) -> int:
        return int(self.rpc.getblockchaininfo()["blocks"])

    def cli(self, *arguments: str) -> Any:
        """``litecoin-cli`` against this node (cookie authentication): its output, decoded when it
        is JSON."""
        program = shutil.which("litecoin-cli") or "litecoin-cli"
        completed = subprocess.run(
            [
                program,
                "-regtest",
                f"-datadir={self.datadir}",
                f"-rpcport={self.rpc_port}",
                *arguments,
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        text = completed.stdout.strip()
        try:
            return json.loads(text, parse_float=Decimal)
        except ValueError:
            return text
