"""The reserves document across processes: a snapshot's document kept in the Integration DB
(SQLite and PostgreSQL) and printed by ``sluice por reserves``; ``sluice por verify-reserves``
run as its own process on the file, with no database and no configuration (a fresh working
directory, no SLUICE_* environment), with ``--node`` on the sandbox's chain file (the embedded
chain a :class:`~sluice.bitcoin.chainfile.FileNode` serves from a file); then in-process: a
tampered file, ``--roots`` (the liabilities must be the published roots' totals), a tip that
moved, and a node that cannot be asked. The other obligations read from the Integration DB on
each engine (the journal's suspense, in-flight and holds; a deposit confirmed and not minted) are
owed with the liabilities: the document reports them and covers only what covers both, and
``--istsi`` pins the instrument the custody backs (the verdict's first line says what was NOT
pinned).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from sluice import bootstrap
from sluice.bitcoin.chainfile import ChainFile, FileNode
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.cli import app
from sluice.domain.chains import CHAINS
from sluice.domain.journal import (
    COMPLIANCE_HOLD,
    IN_FLIGHT,
    SUSPENSE,
    AccountRef,
    JournalTransaction,
    Posting,
    treasury_account_name,
)
from sluice.domain.ledger import Cursor, InstrumentId
from sluice.por.documents import Root
from sluice.ports.bitcoin_watch import FoundOutput, WatchedBlock
from sluice.ports.reserves import PorSnapshot
from sluice.services.issuance_intake import open_deposit_operations
from sluice.services.por_reserves import read_obligations, reserves_document, store_reserves
from sluice.services.por_reserves_verify import verify_reserves
from sluice.services.por_snapshots import take_snapshot
from sluice.services.reserves_settings import ReservesContext, ReservesSettings

CHAIN = CHAINS["regtest"]
TAKEN_AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ISTSI = InstrumentId("issuer::1220ab", "iSTSi")
SLUICE = Path(sys.executable).with_name("sluice")


@dataclass
class Sandbox:
    ctx: ReservesContext
    chain_file: ChainFile
    descriptor: str
    document: dict[str, Any]
    path: Path  # the document, written as `sluice por reserves --out` writes it


@contextmanager
def new_sandbox(tmp_path: Path, database_url: str) -> Iterator[Sandbox]:
    custody = create_sandbox_custody(tmp_path / "keys", CHAIN)
    wallet = EmbitCustodyWallet(custody.descriptor, CHAIN, load_signing_keys(custody.key_files))
    chain_file = ChainFile(tmp_path / "chain-regtest.pickle", CHAIN)
    with chain_file.change() as chain:
        chain.fund(wallet.derive(0, 0).script_hex, 120_000, mine=True)
        chain.fund(wallet.derive(0, 5).script_hex, 30_000, mine=True)
        chain.mine(1)
    database = bootstrap.database(database_url)
    ctx = ReservesContext(
        uow=database.uow,
        clock=lambda: TAKEN_AT,
        treasury="treasury::1220cd",
        secret_path=tmp_path / "por-secret",
        settings=ReservesSettings(scan_gap=10),
        node=FileNode(chain_file),
        wallet=wallet,
        istsi=ISTSI,
    )
    document = reserves_document(ctx, "snap-1", TAKEN_AT, {ISTSI.key(): 100_000})
    with database.uow() as uow:
        uow.reserves.add_snapshot(PorSnapshot("snap-1", TAKEN_AT, [ISTSI.key()]))
        uow.commit()
    store_reserves(ctx, "snap-1", document)
    try:
        yield Sandbox(ctx, chain_file, custody.descriptor, document, tmp_path / "reserves.json")
    finally:
        database.dispose()


@pytest.fixture
def sandbox(tmp_path: Path, database_url: str) -> Iterator[Sandbox]:
    """On each database engine."""
    with new_sandbox(tmp_path, database_url) as made:
        yield made


@pytest.fixture
def sandbox_sqlite(tmp_path: Path, sqlite_url: str) -> Iterator[Sandbox]:
    """For what does not depend on the engine."""
    with new_sandbox(tmp_path, sqlite_url) as made:
        yield made


def _environment() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("SLUICE_")}


def _verify(*arguments: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SLUICE), "por", "verify-reserves", *arguments],
        cwd=cwd,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=120,
    )


def _verify_here(*arguments: str) -> Result:
    return CliRunner().invoke(app, ["por", "verify-reserves", *arguments])


def test_the_stored_document_is_printed_and_written(sandbox: Sandbox, database_url: str) -> None:
    runner = CliRunner()
    written = runner.invoke(
        app, ["por", "reserves", "--db", database_url, "--out", str(sandbox.path)]
    )
    assert written.exit_code == 0, written.output
    assert json.loads(sandbox.path.read_text()) == sandbox.document
    shown = runner.invoke(app, ["por", "reserves", "--db", database_url, "--snapshot", "snap-1"])
    assert shown.exit_code == 0, shown.output
    assert "bitcoin: 150000 sats in 2 addresses at block 3" in shown.output
    assert (
        "iSTSi@issuer::1220ab: reserves 0.0015 (bitcoin), liabilities 0.001 + other obligations "
        "0 units = owed 0.001, ratio 15000 bps, covered" in shown.output
    )
    as_json = runner.invoke(app, ["por", "reserves", "--db", database_url, "--json"])
    assert json.loads(as_json.stdout) == sandbox.document
    missing = runner.invoke(app, ["por", "reserves", "--db", database_url, "--snapshot", "nope"])
    assert missing.exit_code == 2
    verified = _verify_here(
        str(sandbox.path), "--descriptor", sandbox.descriptor, "--istsi", ISTSI.key()
    )
    assert verified.exit_code == 0, verified.output
    assert verified.stdout.startswith("valid\n")
    assert "signatures: 3 valid of threshold 2" in verified.stdout
    assert (
        "iSTSi@issuer::1220ab: reserves 150000 units (bitcoin), liabilities 100000 + other "
        "obligations 0 = owed 100000, ratio 15000 bps, covered" in verified.stdout
    )
    unpinned = _verify_here(str(sandbox.path))
    assert unpinned.exit_code == 0, unpinned.output
    assert unpinned.stdout.startswith(
        "valid (descriptor NOT pinned, Bitcoin-backed instrument NOT pinned)\n"
    )
    bare = _verify_here(str(sandbox.path), "--istsi", "iSTSi")
    assert bare.exit_code == 2 and "give the instrument's key" in bare.output
    other = _verify_here(str(sandbox.path), "--istsi", "iSTSi@someone::1220ff", "--json")
    assert other.exit_code == 2, other.output
    verdict = json.loads(other.stdout)
    assert verdict["istsi_pinned"] is True and verdict["valid"] is False
    assert (
        "bitcoin.instrument is 'iSTSi@issuer::1220ab', not the pinned Bitcoin-backed instrument "
        "iSTSi@someone::1220ff" in verdict["reasons"]
    )


def test_verify_reserves_runs_in_another_process_and_rechecks_on_the_chain_file(
    sandbox_sqlite: Sandbox, tmp_path: Path
) -> None:
    sandbox = sandbox_sqlite
    sandbox.path.write_text(json.dumps(sandbox.document))
    node = f"file:{sandbox.chain_file.path}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    completed = _verify(
        str(sandbox.path),
        "--descriptor",
        sandbox.descriptor,
        "--node",
        node,
        "--json",
        cwd=elsewhere,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    verdict = json.loads(completed.stdout)
    assert verdict["valid"] is True and verdict["descriptor_pinned"] is True
    assert verdict["node"] == {
        "height": sandbox.document["bitcoin"]["height"],
        "block_hash": sandbox.document["bitcoin"]["block_hash"],
        "tip_moved": False,
        "total_sats": 150_000,
        "differences": [],
    }

    tampered = dict(sandbox.document) | {"snapshot_id": "snap-2"}
    (elsewhere / "tampered.json").write_text(json.dumps(tampered))
    refused = _verify_here(str(elsewhere / "tampered.json"), "--json")
    assert refused.exit_code == 2, refused.output
    verdict = json.loads(refused.stdout)
    assert verdict["valid"] is False
    assert any("is not the content's SHA-256" in reason for reason in verdict["reasons"])
    assert any("does not verify" in reason for reason in verdict["reasons"])

    # Against the snapshot's published roots: the liabilities must be their totals.
    root = Root("snap-1", ISTSI.key(), b"\x07" * 32, 100_000, "0.001", 3, 2, "2026-12-05T12:00:00Z")
    roots_file = elsewhere / "roots.jsonl"
    roots_file.write_text(json.dumps(root.as_json()) + "\n")
    assert _verify_here(str(sandbox.path), "--roots", str(roots_file)).exit_code == 0
    roots_file.write_text(json.dumps(replace(root, total_units=100_001).as_json()) + "\n")
    short = _verify_here(str(sandbox.path), "--roots", str(roots_file))
    assert short.exit_code == 2 and "is not the published root's total_units" in short.stdout

    # Paid again since: the node's tip moved, the difference is reported, not a failure.
    with sandbox.chain_file.change() as chain:
        chain.fund(sandbox.document["bitcoin"]["addresses"][1]["script_hex"], 1_000, mine=True)
    moved = _verify_here(str(sandbox.path), "--node", node)
    assert moved.exit_code == 0, moved.output
    assert "moved since the document's block" in moved.stdout
    assert "the document states 30000 sats, the node 31000" in moved.stdout
    # A node that cannot be asked: exit 1, nothing compared.
    down = _verify_here(str(sandbox.path), "--node", "http://127.0.0.1:9")
    assert down.exit_code == 1, down.output
    assert "the node could not be asked" in down.stdout


def _owe(sandbox: Sandbox, instrument: InstrumentId, account: str, amount: str, n: int) -> None:
    """The treasury holds ``amount`` more of ``instrument``, owed to ``account``."""
    value = Decimal(amount)
    treasury = AccountRef(treasury_account_name("treasury::1220cd"), instrument)
    with sandbox.ctx.uow() as uow:
        uow.withdrawals.post(
            [
                JournalTransaction(
                    id=f"test:{n}",
                    kind="deposit",
                    postings=(
                        Posting(treasury, value),
                        Posting(AccountRef(account, instrument), -value),
                    ),
                )
            ]
        )
        uow.commit()


def _confirmed_deposit(sandbox: Sandbox, sats: int) -> None:
    """A deposit to custody the watcher confirmed and nothing minted yet."""
    with sandbox.ctx.uow() as uow:
        assert uow.btc_watch.claim_block(WatchedBlock(1, "b1" * 32, None), TAKEN_AT)
        found = FoundOutput(
            txid="d1" * 32,
            vout=0,
            kind="deposit",
            address="bcrt1qcustody",
            script_hex="0014" + "11" * 20,
            customer_id="alice",
            amount_sats=sats,
            status="seen",
        )
        uow.btc_watch.record_outputs([found], 1, "b1" * 32, TAKEN_AT)
        # Its bitcoin_deposit operation opens with the confirmation, as the watcher's does.
        assert open_deposit_operations(uow, uow.btc_watch.confirm(1, TAKEN_AT), TAKEN_AT) == 1
        uow.commit()


def test_the_other_obligations_are_read_and_owed_with_the_liabilities(sandbox: Sandbox) -> None:
    coin = InstrumentId("dso::1220aa", "Amulet")
    _owe(sandbox, coin, "customer:alice", "5", 1)
    _owe(sandbox, coin, SUSPENSE, "1.5", 2)
    _owe(sandbox, coin, IN_FLIGHT, "2", 3)
    _owe(sandbox, coin, COMPLIANCE_HOLD, "0.25", 4)
    _owe(sandbox, ISTSI, IN_FLIGHT, "0.0001", 5)
    _confirmed_deposit(sandbox, 60_000)
    with sandbox.ctx.uow() as uow:
        found = read_obligations(uow, ISTSI)
    assert found[coin.key()] == {
        SUSPENSE: 15_000_000_000,
        IN_FLIGHT: 20_000_000_000,
        COMPLIANCE_HOLD: 2_500_000_000,
        "fees": 0,
        "other": 0,
    }
    assert found[ISTSI.key()] == {
        SUSPENSE: 0,
        IN_FLIGHT: 10_000,
        COMPLIANCE_HOLD: 0,
        "fees": 0,
        "other": 0,
        "pending_redemptions": 0,
        "pending_payouts": 0,
        "deposits_unminted": 60_000,
    }
    # Read by the document itself: custody 150000 sats covers the tree's 100000 but not the
    # 70000 also owed out of it (a deposit not minted yet, iSTSi on its way out).
    document = reserves_document(sandbox.ctx, "snap-2", TAKEN_AT, {ISTSI.key(): 100_000})
    report = next(r for r in document["reports"] if r["instrument"] == ISTSI.key())
    assert (report["other_obligations_units"], report["owed_units"]) == ("70000", "170000")
    assert (report["reserves_cover_liabilities"], report["ratio_bps"]) == (False, "8823")
    result = verify_reserves(document, descriptor=sandbox.descriptor, istsi=ISTSI.key())
    assert result.valid, result.reasons
    assert any("operator's own statement" in note for note in result.notes)


class AtOffsets:
    """A participant's reader that holds nothing for the treasury and records the offsets it
    was asked the active contracts at (it answers earlier offsets: no active_contracts_at_end)."""

    def __init__(self, end: int) -> None:
        self.end = end
        self.asked: list[int | None] = []

    def ledger_end(self) -> int:
        return self.end

    def active_contracts(self, party: str, at_offset: int | None = None) -> list[Any]:
        self.asked.append(at_offset)
        return []


def test_a_snapshot_reads_the_treasury_at_the_journals_offset(sandbox: Sandbox) -> None:
    """take_snapshot reads ingestion's cursor with the liabilities and the other obligations,
    and the Canton part is read at exactly that offset although the ledger moved on."""
    reader = AtOffsets(end=40)
    ctx = replace(sandbox.ctx, ledger=reader, connection="treasury-exchange")
    with ctx.uow() as uow:
        uow.ingestion.set_cursor("treasury-exchange", ctx.treasury, Cursor(17, None, None, None))
        uow.commit()
    take_snapshot(ctx, snapshot_id="snap-at-17")
    with ctx.uow() as uow:
        stored = uow.reserves.snapshot("snap-at-17")
    assert stored is not None and stored.reserves is not None
    canton = stored.reserves["canton"]
    assert (canton["read_mode"], canton["offset"], canton["journal_offset"]) == (
        "at_journal_offset",
        17,
        17,
    )
    assert reader.asked == [17]
    assert verify_reserves(stored.reserves, descriptor=sandbox.descriptor).valid
