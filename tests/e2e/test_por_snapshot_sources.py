"""``sluice por snapshot`` stores a reserves document read from the real sources, as ``sluice
reserves reconcile`` opens them: on an embedded world (a customer's Amulet deposit ingested, so
the treasury holds it on the ledger) with the sandbox custody funded on the embedded chain, the
document's Bitcoin part is read at the chain's tip and signed by the three sandbox custody keys,
its Canton part lists the treasury's holding contract by contract at the ledger's offset, and the
reports set both against the liabilities (iSTSi, held in the journal but with no issuance run,
is found from the books: its reserves are the custody's satoshis). The supply source the process
cannot open (no issuer) is said on stderr; the snapshot is taken all the same. The document
``sluice por reserves --out`` writes is then valid for ``sluice por verify-reserves`` run as its
own process with nothing else.

How: the world is made and ingested in process, as ``sluice demo`` and ``sluice ingest`` would;
``snapshot`` and ``verify-reserves`` are the virtualenv's console script run as processes with
``SLUICE_DATA_DIR`` in ``tmp_path``; ``por reserves --out`` runs in process (``--db``).
"""

from __future__ import annotations

import json
import os
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sluice import bootstrap
from sluice.bitcoin.chainfile import ChainFile, sandbox_custody
from sluice.bitcoin.keys import load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.cli import app
from sluice.domain.chains import CHAINS
from sluice.domain.journal import (
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import InstrumentId
from sluice.server.world import prepare_embedded_world
from sluice.services.ingestion import Ingestion, IngestionSettings, connection_name
from sluice.services.reference import register_customer
from tests.e2e.test_cli_over_the_wire import environment, sluice, sluice_script

pytestmark = pytest.mark.slow

REGTEST = CHAINS["regtest"]
ISTSI = InstrumentId("issuer::1220bb", "iSTSi")
DEPOSIT = Decimal("25.5")  # Amulet alice sends the treasury
ISTSI_OWED = Decimal("0.001")  # alice's iSTSi in the journal: 100 000 sats
CUSTODY_SATS = (120_000, 30_000)  # funded at the sandbox custody's addresses 0/0 and 0/4


def _world(data: Path) -> tuple[str, InstrumentId, str]:
    """An embedded world whose treasury holds alice's ingested deposit, alice's iSTSi in the
    journal, and the sandbox custody funded on the embedded chain; (treasury, Amulet, the custody
    descriptor)."""
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    try:
        world = prepare_embedded_world(data / "ledger.db", database, actor="test")
        ledger = world.ledger
        with database.uow() as uow:
            coin = next(
                r.instrument for r in uow.reference.instruments() if r.instrument.id == "Amulet"
            )
        alice = ledger.allocate_party("alice", "wallets")
        ledger.create_preapproval(alice, coin)
        ledger.tap(alice, coin, Decimal(100))
        register_customer(database.uow, "alice", "alice", ["acct-alice"])
        ledger.transfer(alice, world.treasury, coin, DEPOSIT, reason="acct-alice")
        Ingestion(
            database.uow,
            ledger.node_client("exchange"),
            world.treasury,
            connection=connection_name(world.treasury, "exchange"),
            settings=IngestionSettings(retry_delay_s=0.0),
            sleep=lambda _s: None,
        ).run(follow=False)
        ledger.flush()
        ledger.close()
        with database.uow() as uow:
            postings = (
                Posting(AccountRef(treasury_account_name(world.treasury), ISTSI), ISTSI_OWED),
                Posting(AccountRef(customer_account_name("alice"), ISTSI), -ISTSI_OWED),
            )
            uow.withdrawals.post([JournalTransaction(id="istsi", kind="test", postings=postings)])
            uow.commit()
    finally:
        database.dispose()
    custody = sandbox_custody(data / "bitcoin" / "sandbox", REGTEST)
    keys = load_signing_keys(list(custody.key_files), chain=REGTEST)
    wallet = EmbitCustodyWallet(custody.descriptor, REGTEST, keys)
    with ChainFile(data / "bitcoin" / "chain-regtest.pickle", REGTEST).change() as chain:
        for index, sats in zip((0, 4), CUSTODY_SATS, strict=True):
            chain.fund(wallet.derive(0, index).script_hex, sats, mine=True)
        chain.mine(1)
    return world.treasury, coin, custody.descriptor


def test_the_snapshot_stores_a_signed_document_read_from_custody_and_the_ledger(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = environment(data)
    treasury, coin, descriptor = _world(data)

    taken = sluice("por", "snapshot", "--id", "snap-sources", env=env)
    roots = {root["instrument"]: root for root in map(json.loads, taken.stdout.splitlines())}
    assert roots[coin.key()]["total_units"] == "255000000000"
    assert roots[ISTSI.key()]["total_units"] == "100000"
    assert "supply: not read (no iSTSi instrument in the books" in taken.stderr
    assert "reserves: bitcoin read at block 3: 150000 sats, 3 custody signature(s)" in (
        taken.stderr
    )
    assert f"reserves: canton read at offset 2: 1 instrument(s) held by {treasury}" in (
        taken.stderr
    )

    document_file = tmp_path / "reserves.json"
    written = CliRunner().invoke(
        app,
        ["por", "reserves", "--db", f"sqlite:///{data / 'sluice.db'}", "--out", str(document_file)],
    )
    assert written.exit_code == 0, written.output
    document = json.loads(document_file.read_text())
    assert document["snapshot_id"] == "snap-sources"
    bitcoin, canton = document["bitcoin"], document["canton"]
    assert (bitcoin["read"], bitcoin["instrument"], bitcoin["descriptor"]) == (
        True,
        ISTSI.key(),
        descriptor,
    )
    assert bitcoin["total_sats"] == sum(CUSTODY_SATS) and bitcoin["height"] == 3
    assert [(a["branch"], a["index"]) for a in bitcoin["addresses"]] == [(0, 0), (0, 4)]
    assert len(document["signatures"]) == 3
    assert (canton["read"], canton["party"], canton["offset"]) == (True, treasury, 2)
    (held,) = canton["instruments"]
    assert (held["instrument"], held["total_units"]) == (coin.key(), "255000000000")
    assert [c["units"] for c in held["contracts"]] == ["255000000000"]
    reports = {report["instrument"]: report for report in document["reports"]}
    assert reports[coin.key()]["reserves_source"] == "canton"
    assert reports[coin.key()]["ratio_bps"] == "10000"
    assert reports[ISTSI.key()]["reserves_source"] == "bitcoin"
    assert (reports[ISTSI.key()]["reserves_units"], reports[ISTSI.key()]["ratio_bps"]) == (
        "150000",
        "15000",
    )

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(elsewhere)}
    verified = subprocess.run(
        [
            sluice_script(),
            "por",
            "verify-reserves",
            str(document_file),
            "--descriptor",
            descriptor,
            "--istsi",
            ISTSI.key(),
        ],
        cwd=elsewhere,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("valid\n")
    assert "signatures: 3 valid of threshold 2" in verified.stdout
