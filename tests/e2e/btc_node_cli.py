"""Driving ``sluice btc`` against a real ``litecoind -regtest`` (the harness's
:class:`~tests.bitcoin_regtest.RegtestNode`): a custody made by ``sluice btc custody init``, its
configuration file pointing at the node, and every command run as a process.

Run as a program (``python -m tests.e2e.btc_node_cli crash-after-broadcast --config F --db URL``)
it is one round as ``sluice btc watch --once`` makes it (the watcher, then the payouts worker),
wired from the same configuration file, that kills its own process with SIGKILL right after the
node accepted a broadcast (a new batch or a fee bump) and before it is recorded as sent: a real
crash at the one point the CLI gives no way to reach (the worker's ``after_broadcast`` hook).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from tests.bitcoin_regtest import RegtestNode
from tests.e2e.test_cli_over_the_wire import Done, environment, sluice_script

NETWORK = "litecoin-regtest"
COMMAND_TIMEOUT_S = 180.0
POLL_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
MATURE_BLOCKS = 110  # a few coinbase outputs past maturity (100) for the node's wallet to spend
SATS_PER_COIN = 100_000_000


def wait_until(what: str, check: Callable[[], bool], timeout_s: float = POLL_TIMEOUT_S) -> None:
    """Poll ``check`` until it holds, failing with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(POLL_INTERVAL_S)


def sats(coins: Decimal | str | int) -> int:
    value = Decimal(coins) * SATS_PER_COIN
    assert value == value.to_integral_value(), f"{coins} is not a whole number of litoshi"
    return int(value)


@dataclass
class Watching:
    """A ``sluice btc watch`` loop process and the file its output goes to."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout_s: float = POLL_TIMEOUT_S) -> None:
        def said() -> bool:
            assert self.process.poll() is None, f"the watch exited: {self.output()}"
            return text in self.output()

        wait_until(f"the watch to say {text!r}", said, timeout_s)

    def stop(self) -> int:
        """SIGTERM, then its exit code (SIGKILL if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=COMMAND_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@dataclass
class Custody:
    """A custody on the node: its configuration file, its Integration DB, and the environment
    every ``sluice`` process runs in. ``rounds`` keeps the JSON of every ``watch --once``."""

    node: RegtestNode
    folder: Path
    db: str
    config: Path
    env: dict[str, str]
    rounds: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        node: RegtestNode,
        folder: Path,
        db: str,
        *,
        password_file: bool = False,
        **settings: object,
    ) -> Custody:
        """``sluice btc custody init --toml``, then the node's part and ``settings`` appended to
        the ``[bitcoin]`` block, as an operator does. The node is reached with its cookie file,
        or (``password_file``) with ``rpc_user`` and ``rpc_password_file``."""
        folder.mkdir(parents=True, exist_ok=True)
        env = environment(folder / "data")
        config = folder / "sluice.toml"
        custody = cls(node, folder, db, config, env)
        made = custody.run_plain(
            "btc",
            "custody",
            "init",
            "--keys-dir",
            str(folder / "keys"),
            "--network",
            NETWORK,
            "--toml",
        )
        block = made.stdout
        assert block.startswith("[bitcoin]\n"), made.explained()
        lines = [f"rpc_url = {json.dumps(node.url)}"]
        if password_file:
            secret = folder / "rpc-password"
            secret.write_text(node.password + "\n")
            secret.chmod(0o600)
            lines += [
                f"rpc_user = {json.dumps(node.user)}",
                f"rpc_password_file = {json.dumps(str(secret))}",
            ]
        else:
            lines.append(f"rpc_cookie_file = {json.dumps(str(node.cookie_file))}")
        for key, value in settings.items():
            lines.append(f"{key} = {json.dumps(value) if isinstance(value, str) else value}")
        config.write_text(block + "\n".join(lines) + "\n")
        return custody

    # -- running sluice ---------------------------------------------------------------------

    def run_plain(self, *args: str, code: int = 0) -> Done:
        """``sluice ARGS`` without the configuration file (for ``custody init``)."""
        return self._run([sluice_script(), *args], args, code)

    def run(self, *args: str, code: int = 0) -> Done:
        """``sluice --config FILE ARGS --db URL``, expected to exit with ``code``; no run may
        end in a traceback, whatever its code."""
        argv = [sluice_script(), "--config", str(self.config), *args, "--db", self.db]
        return self._run(argv, args, code)

    def _run(self, argv: list[str], args: tuple[str, ...], code: int) -> Done:
        completed = subprocess.run(
            argv, capture_output=True, text=True, env=self.env, timeout=COMMAND_TIMEOUT_S
        )
        done = Done(tuple(args), completed.returncode, completed.stdout, completed.stderr)
        assert done.code == code, f"expected exit code {code}: {done.explained()}"
        assert "Traceback" not in done.output, done.explained()
        self.check_no_secret(done.output)
        return done

    def check_no_secret(self, output: str) -> None:
        """Neither the node's password nor a custody key is ever printed or logged."""
        secrets = [self.node.password]
        secrets += [p.read_text().strip() for p in sorted(self.folder.glob("keys/*"))]
        for secret in secrets:
            assert secret and secret not in output, "a secret was printed"

    def start_watch(self, interval_s: float) -> Watching:
        """``sluice btc watch --interval S`` running on, its output in a file."""
        log = self.folder / f"watch-{len(list(self.folder.glob('watch-*.log')))}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [
                    sluice_script(),
                    "--config",
                    str(self.config),
                    "btc",
                    "watch",
                    "--interval",
                    str(interval_s),
                    "--db",
                    self.db,
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
            )
        return Watching(process, log)

    def json(self, *args: str, code: int = 0) -> Any:
        done = self.run(*args, "--json", code=code)
        try:
            return json.loads(done.stdout)
        except ValueError:
            raise AssertionError(f"not JSON: {done.explained()}") from None

    def add_customer(self, customer: str) -> None:
        self.run("customers", "add", customer, "--name", f"Customer {customer.title()}")

    def address(self, customer: str, *, new: bool = False) -> dict[str, Any]:
        answer: dict[str, Any] = self.json(
            "btc", "address", "--customer", customer, *(["--new"] if new else [])
        )
        assert answer["customer"] == customer
        return answer

    def float_address(self) -> str:
        """A new custody address for the exchange's own Bitcoin (``sluice btc float-address``)."""
        return str(self.json("btc", "float-address")["address"])

    def balance(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.json("btc", "balance")
        return answer

    def watch(self, *, code: int = 0) -> dict[str, Any]:
        """One ``sluice btc watch --once --json`` (a new process every time)."""
        answer: dict[str, Any] = self.json("btc", "watch", "--once", code=code)
        self.rounds.append(answer)
        return answer

    def watch_together(self, count: int) -> list[dict[str, Any]]:
        """``count`` rounds of ``sluice btc watch --once --json`` started at once; each must
        exit 0 without a traceback. Their answers, in no particular order."""
        argv = [
            sluice_script(),
            "--config",
            str(self.config),
            "btc",
            "watch",
            "--once",
            "--json",
            "--db",
            self.db,
        ]
        processes = [
            subprocess.Popen(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=self.env
            )
            for _ in range(count)
        ]
        answers: list[dict[str, Any]] = []
        try:
            for process in processes:
                stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
                done = Done(("btc", "watch", "--once"), process.returncode, stdout, stderr)
                assert done.code == 0 and "Traceback" not in done.output, done.explained()
                self.check_no_secret(done.output)
                answers.append(json.loads(stdout))
        finally:
            for process in processes:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        self.rounds += answers
        return answers

    def deposits(self) -> dict[str, dict[str, Any]]:
        """``sluice btc deposits --json`` by ``txid:vout``; a key seen twice fails."""
        rows = self.json("btc", "deposits")
        keyed = {f"{r['txid']}:{r['vout']}": r for r in rows}
        assert len(keyed) == len(rows), f"one deposit listed twice: {rows}"
        return keyed

    def payouts(self) -> dict[str, dict[str, Any]]:
        rows = self.json("btc", "payouts")
        keyed = {str(r["id"]): r for r in rows}
        assert len(keyed) == len(rows), f"one payout listed twice: {rows}"
        return keyed

    def confirmed_in_rounds(self) -> int:
        """Outputs the watcher reported confirmed, over every round so far."""
        return sum(int(r["watch"].get("confirmed") or 0) for r in self.rounds)


# --- the node's side -------------------------------------------------------------------------


def pays(output: dict[str, Any], address: str) -> bool:
    """Whether a ``vout`` entry pays ``address`` (0.21 nodes answer ``addresses[]``, newer ones
    ``address``)."""
    script = output["scriptPubKey"]
    return bool(script.get("address") == address or address in script.get("addresses", []))


def output_index(node: RegtestNode, txid: str, address: str) -> int:
    """The vout of ``txid`` paying ``address`` (the node knows the transaction: -txindex)."""
    tx = node.rpc.call("getrawtransaction", txid, True)
    (found,) = [out["n"] for out in tx["vout"] if pays(out, address)]
    return int(found)


def pay_below_relay_dust(node: RegtestNode, address: str, sats_paid: int) -> tuple[str, str]:
    """Pay ``sats_paid`` (under the dust limit) to ``address`` in a block of its own: the node's
    wallet and mempool both refuse a dust output, but a block need only be valid, so the
    transaction is signed by the wallet and mined with ``generateblock``. (txid, block hash)."""
    coin = max(node.rpc.call("listunspent", 1), key=lambda u: Decimal(u["amount"]))
    change = Decimal(coin["amount"]) - Decimal(sats_paid) / SATS_PER_COIN - Decimal("0.001")
    raw = node.rpc.call(
        "createrawtransaction",
        [{"txid": coin["txid"], "vout": coin["vout"]}],
        [{address: Decimal(sats_paid) / SATS_PER_COIN}, {node.new_address(): change}],
    )
    signed = node.rpc.call("signrawtransactionwithwallet", raw)
    assert signed["complete"], signed
    (accepted,) = node.rpc.call("testmempoolaccept", [signed["hex"]])
    assert accepted["reject-reason"] == "dust", accepted  # what the relay policy says of it
    block = node.rpc.call("generateblock", node.new_address(), [signed["hex"]])
    return str(accepted["txid"]), str(block["hash"])


def double_spend_in_block(node: RegtestNode, txid: str) -> str:
    """A block (on the current tip) holding a transaction that spends ``txid``'s inputs back to
    the node's wallet, so ``txid`` can never be mined on this branch; the block's hash."""
    tx = node.rpc.call("getrawtransaction", txid, True)
    spent = Decimal(0)
    inputs = []
    for vin in tx["vin"]:
        previous = node.rpc.call("getrawtransaction", vin["txid"], True)
        spent += Decimal(previous["vout"][vin["vout"]]["value"])
        inputs.append({"txid": vin["txid"], "vout": vin["vout"]})
    raw = node.rpc.call(
        "createrawtransaction", inputs, [{node.new_address(): spent - Decimal("0.001")}]
    )
    signed = node.rpc.call("signrawtransactionwithwallet", raw)
    assert signed["complete"], signed
    block = node.rpc.call("generateblock", node.new_address(), [signed["hex"]])
    return str(block["hash"])


def empty_blocks(node: RegtestNode, count: int) -> list[str]:
    """Blocks with no transaction but the coinbase: the mempool stays as it is, as if miners
    passed over it."""
    return [
        str(node.rpc.call("generateblock", node.new_address(), [])["hash"]) for _ in range(count)
    ]


def in_mempool(node: RegtestNode, txid: str) -> bool:
    return txid in node.rpc.call("getrawmempool")


# --- a crash between broadcast and record ----------------------------------------------------


def crash_after_broadcast(config: Path, db: str) -> None:
    """One round as ``sluice btc watch --once`` makes it (the watcher, then the payouts worker,
    wired from the configuration file through :mod:`sluice.bootstrap`), killed with SIGKILL by
    the worker's hook right after the node took a broadcast (a new batch or a fee bump), before
    it is recorded as sent. Returns only if nothing was sent."""
    from sluice import bootstrap
    from sluice.cli.common import utc_now
    from sluice.config import load_config
    from sluice.services.btc_payouts import PayoutWorker
    from sluice.services.btc_watcher import DepositWatcher

    def die(batch: object) -> None:
        del batch
        os.kill(os.getpid(), signal.SIGKILL)

    custody = bootstrap.bitcoin_custody(load_config(config))
    database = bootstrap.database(db)
    try:
        watched = DepositWatcher(
            database.uow, custody.node, custody.wallet, custody.settings, clock=utc_now
        ).run_once()
        assert watched.error is None, watched
        worker = PayoutWorker(
            database.uow,
            custody.node,
            custody.wallet,
            custody.settings,
            clock=utc_now,
            after_broadcast=die,
        )
        tick = worker.run_once()
        sys.stdout.write(f"nothing was broadcast: {tick}\n")
    finally:
        database.dispose()
        custody.close()


def run_crash_after_broadcast(custody: Custody, repo: Path, timeout_s: float) -> None:
    """:func:`crash_after_broadcast` in a process of its own, which must die of SIGKILL."""
    crashed = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.e2e.btc_node_cli",
            "crash-after-broadcast",
            "--config",
            str(custody.config),
            "--db",
            custody.db,
        ],
        cwd=repo,
        env=custody.env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    assert crashed.returncode == -signal.SIGKILL, (
        crashed.returncode,
        crashed.stdout,
        crashed.stderr,
    )


def _main(argv: list[str]) -> int:
    if (
        len(argv) != 5
        or argv[0] != "crash-after-broadcast"
        or argv[1] != "--config"
        or (argv[3] != "--db")
    ):
        sys.stderr.write(
            "usage: python -m tests.e2e.btc_node_cli crash-after-broadcast --config F --db URL\n"
        )
        return 2
    crash_after_broadcast(Path(argv[2]), argv[4])
    return 0


if __name__ == "__main__":
    os._exit(_main(sys.argv[1:]))
