"""The reserves repository on SQLite and PostgreSQL alike: readings with their history, runs with
their discrepancies, and proof-of-reserves snapshots (written once), roots and leaves, with units
beyond 64 bits kept exactly."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sluice import bootstrap
from sluice.ports.reserves import (
    Discrepancy,
    PorSnapshot,
    PublishedRoot,
    ReadPoint,
    ReconciliationRun,
    ReserveReading,
)
from sluice.store.database import migrate

WHEN = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)
BIG = 2**100 + 7  # beyond 64 bits


def _database(url: str) -> bootstrap.Database:
    database = bootstrap.database(url)
    migrate(database.engine)
    return database


def test_readings_keep_their_history_and_the_newest_per_instrument(database_url: str) -> None:
    database = _database(database_url)
    chain = ReadPoint("chain", height=101, block_hash="ab" * 32)
    with database.uow() as uow:
        for i, (instrument, ratio) in enumerate(
            [("iSTSi@issuer", 10000), ("iSTSi@issuer", 9000), ("Amulet@dso", 10001)]
        ):
            uow.reserves.add_reading(
                ReserveReading(
                    instrument=instrument,
                    kind="istsi" if instrument.startswith("iSTSi") else "token",
                    supply_units=BIG,
                    reserves_units=BIG * ratio // 10000,
                    ratio_bps=ratio,
                    taken_at=WHEN + timedelta(minutes=i),
                    read_at={"reserves": chain, "supply": ReadPoint("ledger", offset=9)},
                    figures={"customers": "1.5"},
                )
            )
        uow.commit()
    with database.uow() as uow:
        history = uow.reserves.readings("iSTSi@issuer")
        latest = uow.reserves.latest_readings()
        since = uow.reserves.readings(since=WHEN + timedelta(minutes=1))
    assert [r.ratio_bps for r in history] == [9000, 10000]
    assert history[0].supply_units == BIG and history[0].read_at["reserves"] == chain
    assert history[0].read_at["supply"].offset == 9 and history[0].figures == {"customers": "1.5"}
    assert [(r.instrument, r.ratio_bps) for r in latest] == [
        ("Amulet@dso", 10001),
        ("iSTSi@issuer", 9000),
    ]
    assert len(since) == 2
    database.dispose()


def test_runs_keep_their_discrepancies_in_order(database_url: str) -> None:
    database = _database(database_url)
    found = [
        Discrepancy("ledger", "Amulet@dso", "warning", BIG, BIG - 5, "short", {"cids": ["a"]}),
        Discrepancy("supply", "iSTSi@issuer", "critical", 100, 90, "under-backed"),
    ]
    with database.uow() as uow:
        uow.reserves.add_run(
            ReconciliationRun(
                id="rec-1",
                trigger="manual",
                status="discrepancies",
                started_at=WHEN,
                finished_at=WHEN + timedelta(seconds=2),
                worst="critical",
                report={"ledger": {"offset": 4}},
                actions=("minting_halted",),
                discrepancies=found,
            )
        )
        uow.reserves.add_run(
            ReconciliationRun(
                id="rec-2",
                trigger="schedule",
                status="ok",
                started_at=WHEN + timedelta(minutes=5),
                finished_at=WHEN + timedelta(minutes=5),
                worst=None,
                report={},
            )
        )
        uow.commit()
    with database.uow() as uow:
        runs = uow.reserves.runs()
        one = uow.reserves.run("rec-1")
        critical = uow.reserves.discrepancies(severity="critical")
        ledger = uow.reserves.discrepancies(source="ledger")
    assert [r.id for r in runs] == ["rec-2", "rec-1"]
    assert one is not None and list(one.discrepancies) == found
    assert one.actions == ("minting_halted",) and one.report == {"ledger": {"offset": 4}}
    assert one.discrepancies[0].difference_units == -5
    assert [(run_id, d.source) for run_id, _, d in critical] == [("rec-1", "supply")]
    assert [d.details for _, _, d in ledger] == [{"cids": ["a"]}]
    database.dispose()


def test_a_snapshot_is_written_once_with_its_roots_and_leaves(database_url: str) -> None:
    database = _database(database_url)
    snapshot = PorSnapshot("snap-1", WHEN, ("Amulet@dso",), report={"Amulet@dso": {"ok": True}})
    root = PublishedRoot("snap-1", "Amulet@dso", "00" * 32, BIG, "1.5", 2, 1, WHEN)
    with database.uow() as uow:
        assert uow.reserves.add_snapshot(snapshot)
        assert not uow.reserves.add_snapshot(snapshot)  # the same id: nothing written
        uow.reserves.add_root(root)
        assert (
            uow.reserves.add_leaves("snap-1", "Amulet@dso", [("bob", 1), ("alice", BIG - 1)]) == 2
        )
        uow.reserves.set_snapshot_report("snap-1", {"Amulet@dso": {"ok": False}}, {"btc": {}})
        uow.commit()
    with database.uow() as uow:
        stored = uow.reserves.snapshot("snap-1")
        assert uow.reserves.latest_snapshot() == stored
        assert uow.reserves.roots("snap-1") == [root]
        assert uow.reserves.leaves("snap-1", "Amulet@dso") == [("alice", BIG - 1), ("bob", 1)]
        assert uow.reserves.leaf("snap-1", "Amulet@dso", "alice") == BIG - 1
        assert uow.reserves.leaf("snap-1", "Amulet@dso", "carol") is None
    assert stored is not None and stored.report == {"Amulet@dso": {"ok": False}}
    assert stored.reserves == {"btc": {}} and stored.instruments == ("Amulet@dso",)
    database.dispose()
