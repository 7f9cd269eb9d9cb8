"""``sluice serve`` with Bitcoin custody runs iSTSi issuance: a deposit paid on the embedded chain
is picked up by the watcher, which opens its operation, and the router's loop part runs its first
step — all in the served process, driven from outside with the CLI as an operator would.

How: a ``[bitcoin]`` section on the embedded regtest chain (no node) with the sandbox custody's
descriptor and two key files, in a configuration file named by ``SLUICE_CONFIG``; ``sluice serve``
as a subprocess (see tests/e2e/test_serve.py); then ``sluice customers add``, ``sluice btc
address``, ``sluice btc sandbox fund --mine`` in other processes. The sandbox's funding spends
from a sender address the chain can show, so the KYC step screens it and lets it through: the
operation completing — KYC, reserve, mint, and the credit once the served ingestion booked the
mint — is the router part's work. Polls are bounded; SIGTERM must stop everything cleanly.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody
from sluice.domain.chains import CHAINS
from tests.e2e.test_serve import environment, sluice, start, stop_cleanly, wait_for

pytestmark = pytest.mark.slow

ROUTER_WAIT_S = 90.0


def configure(folder: Path) -> Path:
    keys = create_sandbox_custody(folder / "keys", CHAINS["regtest"])
    files = ", ".join(json.dumps(str(path)) for path in keys.key_files[:2])
    config = folder / "sluice.toml"
    config.write_text(
        "[bitcoin]\n"
        'network = "regtest"\n'
        f"descriptor = {json.dumps(keys.descriptor)}\n"
        f"key_files = [{files}]\n"
        "confirmations_min = 1\n"
        "\n[issuance]\n"
        "poll_s = 1\n"
    )
    return config


def test_serve_runs_the_issuance_router_on_a_watched_deposit(tmp_path: Path) -> None:
    env = environment(tmp_path, SLUICE_CONFIG=str(configure(tmp_path)))
    served = start(tmp_path, env, "serve")
    try:
        ready = wait_for(served, "/ready").json()
        assert ready["checks"]["issuance_loop"]["ready"] is True, ready
        assert "iSTSi issuance: router and KYC hold worker" in served.output()
        assert "iSTSi issuance is off" not in served.output()

        added = sluice("customers", "add", "alice", "--name", "Alice L", env=env, cwd=tmp_path)
        assert added.returncode == 0, added.stderr
        shown = sluice("btc", "address", "--customer", "alice", "--json", env=env, cwd=tmp_path)
        assert shown.returncode == 0, shown.stderr
        address = json.loads(shown.stdout)["address"]
        paid = sluice(
            "btc", "sandbox", "fund", "--address", address, "--amount", "125000", "--mine",
            env=env, cwd=tmp_path,
        )  # fmt: skip
        assert paid.returncode == 0, paid.stderr

        database = bootstrap.database(f"sqlite:///{tmp_path / 'data' / 'sluice.db'}")
        try:
            deadline = time.monotonic() + ROUTER_WAIT_S
            while True:
                with database.uow() as uow:
                    operations = uow.issuance.operations()
                    steps = uow.issuance.steps(operations[0].id) if operations else []
                if operations and operations[0].status == "completed":
                    break
                assert served.process.poll() is None, served.output()
                assert time.monotonic() < deadline, (operations, served.output())
                time.sleep(0.2)
        finally:
            database.dispose()
        (operation,) = operations
        assert operation.id.startswith("btc-deposit:")
        assert (operation.customer_id, operation.amount_sats) == ("alice", 125_000)
        done = [s.step for s in steps if s.outcome == "done"]
        assert done == ["kyc", "reserve", "mint", "credit"], steps
        assert operation.result["credited"] is True
        assert "issuance_router" in served.output()
    finally:
        if served.process.poll() is None:
            stop_cleanly(served)
