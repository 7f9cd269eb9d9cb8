"""The reserve figures through the real application (``create_app`` with the test client), on
SQLite and PostgreSQL: staff read every instrument's figures with their read points (a token at
ingestion's offset, iSTSi at the watcher's block), users and anonymous callers are refused, the
report works without a reserves context (the API's own database), and the history pages by
instrument (key or bare id), time and limit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sluice.domain.ledger import InstrumentId
from sluice.ports.bitcoin_watch import FoundOutput, WatchedBlock
from sluice.ports.issuance import MintRecord
from sluice.services.reserves import record_readings
from sluice.services.reserves_settings import ReservesContext, ReservesSettings
from tests.api_support import ApiWorld, api_world

ISTSI = InstrumentId("issuer::1220" + "aa" * 32, "iSTSi")
BLOCK = "00" * 31 + "07"
WHEN = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    built = api_world(database_url)
    built.sandbox.deposit("cust-0", Decimal(50))
    built.sandbox.deposit("cust-1", Decimal("7.25"))
    built.sandbox.ingest()
    yield built
    built.sandbox.close()


def reserves_context(world: ApiWorld, tmp_path: Path, **settings: int) -> ReservesContext:
    return ReservesContext(
        uow=world.context.uow,
        clock=world.context.clock,
        treasury=world.sandbox.treasury,
        secret_path=tmp_path / "por-secret",
        settings=ReservesSettings(**settings),  # type: ignore[arg-type]
        istsi=ISTSI,
    )


def issue_istsi(world: ApiWorld, sats: int) -> None:
    """``sats`` of iSTSi minted, and as many confirmed in custody at block 7."""
    with world.context.uow() as uow:
        uow.issuance.insert_mint(
            MintRecord(
                id="issuance:op1:mint",
                operation_id="op1",
                customer_id="cust-0",
                owner=world.sandbox.treasury,
                amount_sats=sats,
                reason="issuance:op1",
                status="submitted",
                created_at=WHEN,
            )
        )
        assert uow.btc_watch.claim_block(WatchedBlock(7, BLOCK, None), WHEN)
        output = FoundOutput(
            txid="cd" * 32,
            vout=0,
            kind="deposit",
            address="bcrt1qcustody",
            script_hex="0014" + "22" * 20,
            customer_id="cust-0",
            amount_sats=sats,
            status="seen",
        )
        uow.btc_watch.record_outputs([output], 7, BLOCK, WHEN)
        uow.btc_watch.confirm(7, WHEN)
        uow.commit()


def get(world: ApiWorld, who: str | None, path: str, **params: Any) -> Any:
    with world.client() as client:
        return client.get(path, headers=world.headers(who), params=params)


def test_staff_read_every_instruments_figures_at_their_read_points(world: ApiWorld) -> None:
    answer = get(world, "operator", "/v1/reserves")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["thresholds"] == {"warning_bps": 10100, "critical_bps": 10000, "full_bps": 10000}
    coin = world.sandbox.coin.key()
    # No reserves context, no issuance, no iSTSi onboarded: tokens only.
    assert [r["kind"] for r in body["instruments"]] == ["token"]
    (row,) = [r for r in body["instruments"] if r["instrument"] == coin]
    assert (row["supply"], row["reserves"], row["ratio_bps"]) == ("57.25", "57.25", 10000)
    assert (row["supply_units"], row["decimals"], row["level"]) == ("572500000000", 10, "ok")
    assert row["figures"]["customers"] == "57.25" and row["id"] is None
    with world.context.uow() as uow:
        cursor = uow.ingestion.load_cursor(world.sandbox.connection)
    assert cursor is not None
    point = {"source": "ledger", "offset": cursor.offset}  # only the ledger's fields
    assert row["read_at"] == {"supply": point, "reserves": point}

    for who, status, code in (("user", 403, 2), (None, 401, 1)):
        refused = get(world, who, "/v1/reserves")
        assert (refused.status_code, refused.json()["code"]) == (status, code)
    assert get(world, "compliance_officer", "/v1/reserves").status_code == 200


def test_istsi_at_the_watchers_block_with_the_contexts_thresholds(
    world: ApiWorld, tmp_path: Path
) -> None:
    world.context.reserves = reserves_context(world, tmp_path, ratio_warning_bps=10500)
    issue_istsi(world, 120_000)
    body = get(world, "operator", "/v1/reserves").json()
    assert body["thresholds"]["warning_bps"] == 10500
    istsi = body["instruments"][0]
    assert (istsi["instrument"], istsi["kind"], istsi["decimals"]) == (ISTSI.key(), "istsi", 8)
    assert (istsi["supply_units"], istsi["reserves_units"]) == ("120000", "120000")
    assert (istsi["ratio_bps"], istsi["level"]) == (10000, "warning")
    assert istsi["read_at"] == {
        "supply": {"source": "db"},
        "reserves": {"source": "chain", "height": 7, "block_hash": BLOCK},
    }
    assert istsi["figures"]["custody"] == "0.0012"


def test_the_history_by_instrument_time_and_page(world: ApiWorld, tmp_path: Path) -> None:
    ctx = reserves_context(world, tmp_path)
    world.context.reserves = ctx
    first = record_readings(ctx)
    second = record_readings(ctx)
    assert [r.instrument for r in first] == [ISTSI.key(), world.sandbox.coin.key()]

    everything = get(world, "operator", "/v1/reserves/history").json()
    assert [r["id"] for r in everything["items"]] == [r.id for r in reversed(first + second)]
    coin = get(world, "operator", "/v1/reserves/history", instrument="Amulet").json()
    assert [r["id"] for r in coin["items"]] == [second[1].id, first[1].id]
    assert coin["items"][0]["read_at"]["supply"]["source"] == "ledger"
    paged = get(world, "operator", "/v1/reserves/history", limit=1, offset=1).json()
    assert [r["id"] for r in paged["items"]] == [second[0].id]
    assert paged["next_offset"] == 2
    later = (second[1].taken_at + timedelta(hours=1)).isoformat()
    assert get(world, "operator", "/v1/reserves/history", since=later).json()["items"] == []

    unknown = get(world, "operator", "/v1/reserves/history", instrument="Nope")
    assert (unknown.status_code, unknown.json()["code"]) == (404, 10)
    refused = get(world, "user", "/v1/reserves/history")
    assert (refused.status_code, refused.json()["code"]) == (403, 2)
