"""``sluice serve`` runs the reserves loop: reserve readings and scheduled reconciliation beside
ingestion, the Bitcoin watcher and issuance, in the served process.

How: ``build_service`` on a data directory with the sandbox custody as a ``[bitcoin]`` section
(the embedded in-memory chain, no node) and ``[reserves]`` intervals of a fraction of a second;
a customer's deposit is paid on the chain and minted by the issuance loop. The reserves loop must
store readings and scheduled runs, and once ingestion and the watcher have caught up a run must
have compared all three sources (the journal against the ledger's active contracts, the
watcher's outputs against the node's scan, the supply against confirmed reserves) and found them
agreeing. Polls are bounded; the service must stop cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from sluice.bitcoin.keys import create_sandbox_custody
from sluice.config import BitcoinConfig, DeploymentConfig, ReservesConfig
from sluice.domain.chains import CHAINS
from sluice.ports.reserves import ReconciliationRun
from sluice.server import build_service
from sluice.server.loop import _wall_clock
from sluice.server.reserves import Every, reserves_loop
from sluice.services.btc_addresses import deposit_address
from sluice.services.reference import register_customer
from sluice.services.reserves_settings import ReservesContext, ReservesSettings

WAIT_S = 60.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.05)


def test_serve_records_readings_and_reconciles_on_its_reserves_loop(tmp_path: Path) -> None:
    custody = create_sandbox_custody(tmp_path / "keys", CHAINS["regtest"])
    config = DeploymentConfig(
        data_dir=tmp_path / "data",
        bitcoin=BitcoinConfig(
            descriptor=custody.descriptor,
            key_files=[str(p) for p in custody.key_files[1:]],
            confirmations_min=1,
        ),
        reserves=ReservesConfig(reading_interval_s=0.2, reconcile_interval_s=0.2),
    )
    service = build_service(config, interval_s=0.05)
    try:
        loop = service.reserves_loop
        assert loop is not None
        assert [p.name for p in loop.parts] == ["reserve_readings", "reconciliation"]
        assert service.context.reserves is not None
        assert "reserves_loop" in service.context.readiness
        assert service.bitcoin is not None and service.bitcoin.sandbox is not None
        register_customer(service.database.uow, "alice", "Alice Example", [])
        address = deposit_address(
            service.database.uow, service.bitcoin.wallet, "alice", clock=_wall_clock
        )
        with service.bitcoin.sandbox.change() as chain:
            chain.fund(address.script_hex, 250_000, mine=True)
            chain.mine(2)
        service.start()

        def runs() -> list[ReconciliationRun]:
            with service.database.uow() as uow:
                return uow.reserves.runs(limit=5)

        def all_compared() -> bool:
            for run in runs():
                states = {n: s["state"] for n, s in run.report["sources"].items()}
                supply = run.report["sources"]["supply"]
                if set(states.values()) == {"compared"} and supply["supply_units"] == "250000":
                    return True
            return False

        wait_for(all_compared, "a scheduled run comparing all three sources after the mint")
        compared = next(
            r for r in runs() if {s["state"] for s in r.report["sources"].values()} == {"compared"}
        )
        assert compared.trigger == "schedule"
        assert (compared.status, compared.worst, compared.discrepancies) == ("ok", None, ())
        with service.database.uow() as uow:
            readings = uow.reserves.latest_readings()
        assert readings, "no reserve reading recorded"
        wait_for(lambda: len(runs()) >= 2, "a second scheduled run")
        status = loop.status()
        assert status["reserve_readings"].runs >= 1
        assert status["reconciliation"].failures_in_a_row == 0, status
        assert service.context.readiness["reserves_loop"]()[0]
        with service.database.uow() as uow:
            assert not uow.issuance.minting_state().minting_halted
    finally:
        assert service.close(timeout_s=20)


def test_each_part_runs_at_its_own_interval_and_both_off_means_no_loop(tmp_path: Path) -> None:
    now = [100.0]
    every = Every(5.0, monotonic=lambda: now[0])
    assert every.due()  # the first round
    now[0] += 4.9
    assert not every.due()
    now[0] += 0.1
    assert every.due()
    assert not every.due()

    def context(readings_s: float, reconcile_s: float) -> ReservesContext:
        return ReservesContext(
            uow=lambda: None,  # type: ignore[arg-type,return-value]
            clock=_wall_clock,
            treasury="treasury::1",
            secret_path=tmp_path / "secret",
            settings=ReservesSettings(
                reading_interval_s=readings_s, reconcile_interval_s=reconcile_s
            ),
        )

    assert reserves_loop(context(0, 0)) is None
    only = reserves_loop(context(60, 0))
    assert only is not None and [p.name for p in only.parts] == ["reserve_readings"]
    both = reserves_loop(context(60, 300))
    assert both is not None and both.interval_s == 60
    assert [p.name for p in both.parts] == ["reserve_readings", "reconciliation"]
