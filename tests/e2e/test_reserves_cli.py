"""``sluice reserves``, ``sluice reserves record`` and ``sluice reserves history`` as an operator
runs them, on an Integration DB holding what the router, the deposit watcher and ingestion
recorded: iSTSi minted against Bitcoin in custody (read at the watcher's block) and a token's
customer liabilities against the treasury (read at ingestion's offset).

Covers: the report's JSON keys (a contract) and figures; the table names the block height and
hash and the ledger offset; iSTSi is found among the onboarded instruments (no issuance context
is built); ``record`` keeps one reading per instrument and raises the warning once (iSTSi at
exactly 100 % is under the 101 % threshold), not again the next round; ``history`` by bare id
and its keys; an unknown instrument is refused with exit code 2.

How: each ``sluice`` is the virtualenv's console script in a process with ``SLUICE_DATA_DIR`` in
``tmp_path`` (the helpers of ``test_cli_over_the_wire``); the DB is written in process first
through the repositories.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.domain.journal import (
    IN_FLIGHT,
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import Cursor, InstrumentId
from sluice.ports.bitcoin_watch import FoundOutput, WatchedBlock
from sluice.ports.issuance import MintRecord
from sluice.server.world import TREASURY_KEY
from sluice.services.ingestion import connection_name
from sluice.store.database import migrate
from tests.e2e.test_cli_over_the_wire import Done, environment, sluice

pytestmark = pytest.mark.slow

WHEN = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)
TREASURY = "treasury::1220" + "cc" * 32
ISTSI = InstrumentId("issuer::1220" + "aa" * 32, "iSTSi")
AMULET = InstrumentId("dso::1220" + "bb" * 32, "Amulet")
BLOCK = "00" * 31 + "2a"
READING_KEYS = {
    "id",
    "instrument",
    "kind",
    "decimals",
    "supply_units",
    "supply",
    "reserves_units",
    "reserves",
    "ratio_bps",
    "level",
    "read_at",
    "figures",
    "taken_at",
}


def prepare(url: str) -> None:
    """100 000 sats of iSTSi minted against 100 000 sats confirmed in custody at block 42; 12.5
    Amulet owed (10 to alice, 2.5 in flight) and held by the treasury, ingested to offset 77."""
    database = bootstrap.database(url)
    migrate(database.engine)
    with database.uow() as uow:
        uow.withdrawals.set_control(TREASURY_KEY, TREASURY)
        uow.reference.add_instrument(ISTSI, None, True, "direct,offer")
        uow.reference.add_instrument(AMULET, None, True, "direct")
        uow.issuance.insert_mint(
            MintRecord(
                id="issuance:op1:mint",
                operation_id="op1",
                customer_id="alice",
                owner=TREASURY,
                amount_sats=100_000,
                reason="issuance:op1",
                status="committed",
                created_at=WHEN,
            )
        )
        assert uow.btc_watch.claim_block(WatchedBlock(42, BLOCK, None), WHEN)
        output = FoundOutput(
            txid="ab" * 32,
            vout=0,
            kind="deposit",
            address="bcrt1qcustody",
            script_hex="0014" + "11" * 20,
            customer_id="alice",
            amount_sats=100_000,
            status="seen",
        )
        uow.btc_watch.record_outputs([output], 42, BLOCK, WHEN)
        uow.btc_watch.confirm(42, WHEN)
        treasury = AccountRef(treasury_account_name(TREASURY), AMULET)
        uow.withdrawals.post(
            [
                JournalTransaction(
                    id=f"test:{n}",
                    kind="deposit",
                    postings=(
                        Posting(treasury, amount),
                        Posting(AccountRef(name, AMULET), -amount),
                    ),
                )
                for n, (name, amount) in enumerate(
                    [(customer_account_name("alice"), Decimal(10)), (IN_FLIGHT, Decimal("2.5"))]
                )
            ]
        )
        uow.ingestion.set_cursor(
            connection_name(TREASURY, "exchange"), TREASURY, Cursor(77, None, None, None)
        )
        uow.commit()
    database.dispose()


def as_json(env: dict[str, str], *args: str, code: int = 0) -> Any:
    done: Done = sluice(*args, "--json", env=env, code=code)
    return json.loads(done.stdout)


def test_the_figures_their_read_points_readings_and_alerts_through_the_cli(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = environment(data)
    prepare(f"sqlite:///{data / 'sluice.db'}")

    report = as_json(env, "reserves")
    assert set(report) == {"taken_at", "thresholds", "instruments"}
    istsi, amulet = report["instruments"]
    assert set(istsi) == READING_KEYS and set(amulet) == READING_KEYS
    assert (istsi["instrument"], istsi["kind"], istsi["decimals"]) == (ISTSI.key(), "istsi", 8)
    assert (istsi["supply_units"], istsi["reserves_units"]) == ("100000", "100000")
    assert (istsi["supply"], istsi["ratio_bps"], istsi["level"]) == ("0.001", 10000, "warning")
    assert istsi["read_at"] == {
        "supply": {"source": "db"},
        "reserves": {"source": "chain", "height": 42, "block_hash": BLOCK},
    }
    assert (amulet["instrument"], amulet["kind"], amulet["decimals"]) == (AMULET.key(), "token", 10)
    assert (amulet["supply"], amulet["reserves"], amulet["ratio_bps"]) == ("12.5", "12.5", 10000)
    assert amulet["figures"]["customers"] == "10" and amulet["figures"]["in_flight"] == "2.5"
    offset = {"source": "ledger", "offset": 77}
    assert amulet["read_at"] == {"supply": offset, "reserves": offset}
    assert amulet["level"] == "ok" and amulet["id"] is None

    table = sluice("reserves", env=env).stdout
    assert f"block 42 {BLOCK}" in table.splitlines()  # the hash in full, on a line of its own
    assert "reserves: block 42" in table and "ledger offset 77" in table
    assert "100.00 %" in table

    first = as_json(env, "reserves", "record")
    assert [r["instrument"] for r in first["readings"]] == [ISTSI.key(), AMULET.key()]
    assert all(isinstance(r["id"], int) for r in first["readings"])
    (alert,) = first["alerts"]
    assert alert["severity"] == "warning" and alert["id"].startswith("reserve-ratio:warning:")
    assert as_json(env, "reserves", "record")["alerts"] == []  # still a warning: nothing new

    history = as_json(env, "reserves", "history", "--instrument", "iSTSi", "--limit", "1")
    assert [r["instrument"] for r in history] == [ISTSI.key()]
    assert history[0]["id"] == first["readings"][0]["id"] + 2 and set(history[0]) == READING_KEYS

    refused = sluice("reserves", "history", "--instrument", "Nope", env=env, code=2)
    assert "no instrument 'Nope'" in refused.stderr
