"""The embedded in-memory chain, kept in a file so that one chain outlives a command.

Without a node (no ``rpc_url``), custody runs on :class:`~sluice.bitcoin.fakechain.FakeChain`.
Each ``sluice btc …`` command is its own process, so the chain is pickled into the data
directory: ``sluice btc sandbox fund`` in one command, ``sluice btc sandbox mine`` in the next and
``sluice btc watch --once`` after them all see the same blocks, mempool and UTXO set.

How processes share the file: every change (a broadcast, mining, funding, a reorg) takes an
exclusive ``flock`` on a lock file beside it, loads the newest chain, applies the change and
writes the result to a temporary file that replaces the chain file (``os.replace``, atomic). A
reader therefore always opens a whole chain, never a half-written one, without a lock; it keeps
what it loaded and loads again only when the file was replaced. :class:`FileNode` answers the
node's calls this way, so a long-running ``sluice serve`` and the commands an operator types
beside it see each other's blocks, as two clients of one node would.

The file holds a pickle, which runs code when loaded: it is only ever read from the operator's
own data directory (as the Integration DB's SQLite file is), and it is a sandbox, never a
production node.

The sandbox custody (:func:`sandbox_custody`) lives beside it: three keys made on first use and
the descriptor they give, recorded in ``custody.json`` so every later command uses the same ones.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import pickle
import tempfile
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody
from sluice.domain.chains import Chain
from sluice.domain.errors import InvalidInputError
from sluice.ports.bitcoin import JsonObject, NodeUnavailableError

# Bumped when what is pickled changes shape; an older file is refused with a clear message.
FORMAT = 3  # 2: FakeChain moved into the sluice.bitcoin.fakechain package; 3: funding sources kept
# How long a change waits for another process's change to finish before giving up.
LOCK_WAIT_S = 30.0

_RLOCK = type(threading.RLock())


def _wall_clock() -> datetime:
    return datetime.now(UTC)


class _ChainPickler(pickle.Pickler):
    """Pickles a chain's data; its thread lock and its clock (a process's own things, which
    pickle cannot write) are written as names and made anew when loaded."""

    def persistent_id(self, obj: Any) -> str | None:
        if isinstance(obj, _RLOCK):
            return "lock"
        if isinstance(obj, types.FunctionType) and "<lambda>" in obj.__qualname__:
            return "wall-clock"
        return None


class _ChainUnpickler(pickle.Unpickler):
    def persistent_load(self, pid: Any) -> Any:
        if pid == "lock":
            return threading.RLock()
        if pid == "wall-clock":
            return _wall_clock
        raise pickle.UnpicklingError(f"unknown persistent id {pid!r}")


def _dumps(value: Any) -> bytes:
    buffer = io.BytesIO()
    _ChainPickler(buffer, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return buffer.getvalue()


@contextlib.contextmanager
def _locked(path: Path, wait_s: float = LOCK_WAIT_S) -> Iterator[None]:
    """An exclusive ``flock`` on ``path`` (created if missing), waited for at most ``wait_s``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise NodeUnavailableError(
                        f"the embedded chain {path} stayed locked by another process for "
                        f"{wait_s:g} s"
                    ) from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing the descriptor drops the lock


def _write_atomically(path: Path, data: bytes) -> None:
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


class ChainFile:
    """One embedded chain of network ``chain`` in the file ``path``."""

    def __init__(self, path: Path, chain: Chain) -> None:
        self.path = path
        self.chain = chain
        self._lock_path = path.with_name(path.name + ".lock")
        self._seen: tuple[int, int, int] | None = None
        self._loaded: FakeChain | None = None

    def _identity(self) -> tuple[int, int, int] | None:
        try:
            status = self.path.stat()
        except FileNotFoundError:
            return None
        return (status.st_ino, status.st_mtime_ns, status.st_size)

    def _load(self) -> FakeChain:
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return FakeChain(self.chain)
        try:
            stored: Any = _ChainUnpickler(io.BytesIO(data)).load()
        except Exception as exc:
            raise InvalidInputError(
                f"the embedded chain file {self.path} cannot be read ({exc}); "
                "move it away to start a new chain"
            ) from None
        if (
            not isinstance(stored, dict)
            or stored.get("format") != FORMAT
            or not isinstance(stored.get("chain"), FakeChain)
        ):
            raise InvalidInputError(
                f"the embedded chain file {self.path} is not one this version of sluice wrote; "
                "move it away to start a new chain"
            )
        if stored.get("network") != self.chain.name:
            raise InvalidInputError(
                f"the embedded chain file {self.path} holds a {stored.get('network')} chain, "
                f"not {self.chain.name}"
            )
        loaded: FakeChain = stored["chain"]
        return loaded

    def snapshot(self) -> FakeChain:
        """The chain as the file has it now (loaded again only when the file was replaced). A
        new, empty chain before the first change; it is not written until something changes."""
        identity = self._identity()
        if self._loaded is None or identity != self._seen:
            self._loaded = self._load()
            self._seen = identity
        return self._loaded

    @contextlib.contextmanager
    def change(self) -> Iterator[FakeChain]:
        """The newest chain, to change; written back when the block ends without an error (an
        error leaves the file as it was)."""
        with _locked(self._lock_path):
            chain = self._load()
            yield chain
            stored = {"format": FORMAT, "network": self.chain.name, "chain": chain}
            _write_atomically(self.path, _dumps(stored))
            self._loaded = chain
            self._seen = self._identity()


class FileNode:
    """A :class:`~sluice.ports.bitcoin.BitcoinNode` over a :class:`ChainFile`: reads answer from
    the newest chain in the file, a broadcast changes the file under its lock."""

    def __init__(self, file: ChainFile) -> None:
        self.file = file

    def getblockchaininfo(self) -> JsonObject:
        return self.file.snapshot().getblockchaininfo()

    def getblockhash(self, height: int) -> str:
        return self.file.snapshot().getblockhash(height)

    def getblock(self, block_hash: str) -> JsonObject:
        return self.file.snapshot().getblock(block_hash)

    def getrawtransaction(self, txid: str, block_hash: str | None = None) -> JsonObject:
        return self.file.snapshot().getrawtransaction(txid, block_hash)

    def sendrawtransaction(self, raw_hex: str) -> str:
        with self.file.change() as chain:
            return chain.sendrawtransaction(raw_hex)

    def testmempoolaccept(self, raw_hexes: list[str]) -> list[JsonObject]:
        return self.file.snapshot().testmempoolaccept(raw_hexes)

    def estimatesmartfee(self, conf_target: int) -> JsonObject:
        return self.file.snapshot().estimatesmartfee(conf_target)

    def scantxoutset(self, descriptors: list[str | JsonObject]) -> JsonObject:
        return self.file.snapshot().scantxoutset(descriptors)

    def getmempoolentry(self, txid: str) -> JsonObject:
        return self.file.snapshot().getmempoolentry(txid)


# --- the sandbox custody -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SandboxCustodyFiles:
    network: str
    descriptor: str
    key_files: tuple[Path, ...]
    directory: Path


def sandbox_custody(directory: Path, chain: Chain) -> SandboxCustodyFiles:
    """The sandbox custody in ``directory``: three keys and their descriptor, made on first use
    (under a lock, so two first commands at once make one custody) and read back afterwards."""
    record = directory / "custody.json"
    with _locked(directory / "custody.lock"):
        if not record.exists():
            made = create_sandbox_custody(directory / "keys", chain)
            text = json.dumps(
                {
                    "network": chain.name,
                    "descriptor": made.descriptor,
                    "key_files": [str(path) for path in made.key_files],
                },
                indent=2,
            )
            _write_atomically(record, text.encode() + b"\n")
    try:
        stored = json.loads(record.read_text())
        found = SandboxCustodyFiles(
            network=str(stored["network"]),
            descriptor=str(stored["descriptor"]),
            key_files=tuple(Path(p) for p in stored["key_files"]),
            directory=directory,
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidInputError(f"the sandbox custody record {record} is damaged: {exc}") from None
    if found.network != chain.name:
        raise InvalidInputError(
            f"the sandbox custody in {directory} is on {found.network}, not {chain.name}"
        )
    return found
