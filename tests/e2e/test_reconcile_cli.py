"""``sluice reserves reconcile``, ``reconciliations`` and ``reconciliation RUN_ID`` as an operator
runs them, on an embedded world with the sandbox custody.

Covers: on a world whose ingestion is at the ledger's end, a run compares the journal with the
ledger's active contracts and exits 0, with custody not compared (the watcher has no block yet)
and the supply not read (no issuance has run), each with its reason; the run's JSON keys (a
contract); after the journal is tampered with (the treasury's balance of a token raised against
suspense: the ledger holds none of it), a run finds an emergency in the ledger source, exits 3,
halts minting and pauses the system; the history lists both runs newest first, one run's report
is shown by id, and an unknown id is refused with exit 2.

How: every ``sluice`` is the virtualenv's console script run as a process with
``SLUICE_DATA_DIR`` in ``tmp_path`` (the helpers of ``test_cli_over_the_wire``); the embedded
world is made and ingested in process first, as ``sluice demo`` and ``sluice ingest`` would.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.domain.journal import (
    SUSPENSE,
    AccountRef,
    JournalTransaction,
    Posting,
    treasury_account_name,
)
from sluice.server.world import prepare_embedded_world
from sluice.services import controls
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name
from tests.e2e.test_cli_over_the_wire import environment, sluice

pytestmark = pytest.mark.slow

RUN_KEYS = {
    "id",
    "trigger",
    "status",
    "worst",
    "started_at",
    "finished_at",
    "sources",
    "actions",
    "discrepancies",
}
DISCREPANCY_KEYS = {
    "source",
    "instrument",
    "severity",
    "expected_units",
    "actual_units",
    "difference_units",
    "message",
    "details",
}


def reconcile(env: dict[str, str], code: int) -> Any:
    return json.loads(sluice("reserves", "reconcile", "--json", env=env, code=code).stdout)


def test_reconcile_reports_exits_by_severity_and_keeps_history(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = environment(data)
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    try:
        world = prepare_embedded_world(data / "ledger.db", database, actor="test")
        Ingestion(
            database.uow,
            world.ledger.node_client("exchange"),
            world.treasury,
            connection=connection_name(world.treasury, "exchange"),
            settings=IngestionSettings(retry_delay_s=0.0),
            sleep=lambda _s: None,
        ).run(follow=False)
        world.ledger.flush()
        world.ledger.close()

        clean = reconcile(env, code=0)
        assert set(clean) == RUN_KEYS
        assert (clean["trigger"], clean["status"], clean["worst"]) == ("manual", "ok", None)
        ledger, custody, supply = (clean["sources"][n] for n in ("ledger", "custody", "supply"))
        assert ledger["state"] == "compared"
        assert ledger["ledger_offset"] == ledger["ingestion_offset"]
        assert custody["state"] == "not_compared" and "watcher has no block" in custody["reason"]
        assert supply["state"] == "not_read" and supply["reason"]

        with database.uow() as uow:
            instrument = uow.reference.instruments()[0].instrument
            uow.withdrawals.post(
                [
                    JournalTransaction(
                        id="tamper",
                        kind="tamper",
                        postings=(
                            Posting(
                                AccountRef(treasury_account_name(world.treasury), instrument),
                                Decimal(1),
                            ),
                            Posting(AccountRef(SUSPENSE, instrument), Decimal(-1)),
                        ),
                    )
                ]
            )
            uow.commit()
        found = reconcile(env, code=3)
        assert (found["status"], found["worst"]) == ("discrepancies", "emergency")
        (discrepancy,) = found["discrepancies"]
        assert set(discrepancy) == DISCREPANCY_KEYS
        assert (discrepancy["source"], discrepancy["instrument"]) == ("ledger", instrument.key())
        assert (discrepancy["expected_units"], discrepancy["actual_units"]) == ("10000000000", "0")
        assert found["actions"][:2] == ["minting_halted", "system_paused"]
        with database.uow() as uow:
            assert uow.issuance.minting_state().minting_halted
        pause = controls.current_pause(database.uow)
        assert pause is not None and found["id"] in pause.reason

        history = json.loads(sluice("reserves", "reconciliations", "--json", env=env).stdout)
        assert [run["id"] for run in history] == [found["id"], clean["id"]]
        shown = json.loads(
            sluice("reserves", "reconciliation", found["id"], "--json", env=env).stdout
        )
        assert shown == found
        people = sluice("reserves", "reconciliation", found["id"], env=env).stdout
        assert "emergency: [ledger]" in people and "actions: minting_halted" in people
        refused = sluice("reserves", "reconciliation", "recon-unknown", env=env, code=2)
        assert "no reconciliation run recon-unknown" in refused.stderr
    finally:
        database.dispose()
