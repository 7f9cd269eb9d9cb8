"""``sluice por snapshot``, ``roots``, ``proof`` and ``snapshots`` as an operator runs them, and
``sluice por verify`` as a customer runs it: in another process, in an empty directory, with a
clean environment (no ``SLUICE_*``, no configuration, no database) — only the proof file and the
published root file.

How: the journal (customers' Amulet at 10 decimals and iSTSi at 8) is written in process into the
Integration DB under ``SLUICE_DATA_DIR``; every ``sluice`` is the virtualenv's console script run
as a process. A tampered proof (one more unit) and a tampered root file (another total) exit 2.
Without a ledger the snapshot is still taken, its reserves document saying the ledger was not
read (``test_por_snapshot_sources`` takes one from every source).
"""

from __future__ import annotations

import json
import os
import subprocess
from decimal import Decimal
from pathlib import Path

import pytest

from sluice import bootstrap
from sluice.domain.journal import (
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import InstrumentId
from tests.e2e.test_cli_over_the_wire import environment, sluice, sluice_script

pytestmark = pytest.mark.slow

AMULET = InstrumentId("dso::1220aa", "Amulet")
ISTSI = InstrumentId("issuer::1220bb", "iSTSi")
TREASURY = "treasury::1220cc"
BALANCES = [
    ("alice", AMULET, "12.5"),
    ("bob", AMULET, "0.0000000001"),
    ("carol", AMULET, "1000"),
    ("alice", ISTSI, "0.00001"),
    ("bob", ISTSI, "2.5"),
]


def _journal(data: Path) -> None:
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    with database.uow() as uow:
        for n, (customer, instrument, amount) in enumerate(BALANCES):
            value = Decimal(amount)
            postings = (
                Posting(AccountRef(treasury_account_name(TREASURY), instrument), value),
                Posting(AccountRef(customer_account_name(customer), instrument), -value),
            )
            uow.withdrawals.post([JournalTransaction(id=f"t{n}", kind="test", postings=postings)])
        uow.commit()
    database.dispose()


def _verify(workdir: Path, proof: Path, roots: Path) -> subprocess.CompletedProcess[str]:
    """``sluice por verify`` in an empty directory with nothing of the operator's around."""
    workdir.mkdir(exist_ok=True)
    clean = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(workdir)}
    done = subprocess.run(
        [sluice_script(), "por", "verify", str(proof), "--root", str(roots)],
        cwd=workdir,
        env=clean,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert os.listdir(workdir) == [], "the verifier wrote something (a database?)"
    return done


def test_a_customer_verifies_their_proof_with_nothing_but_the_published_roots(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    env = environment(data)
    _journal(data)

    taken = sluice("por", "snapshot", "--id", "snap-e2e", env=env)
    lines = taken.stdout.splitlines()
    roots = [json.loads(line) for line in lines]
    assert [root["instrument"] for root in roots] == sorted([AMULET.key(), ISTSI.key()])
    totals = {root["instrument"]: (root["total_units"], root["total"]) for root in roots}
    assert totals[AMULET.key()] == ("10125000000001", "1012.5000000001")
    assert totals[ISTSI.key()] == ("250001000", "2.50001")  # satoshis: iSTSi at 8 decimals
    assert (data / "por-secret").stat().st_mode & 0o777 == 0o600
    roots_file = tmp_path / "roots.jsonl"
    roots_file.write_text(taken.stdout)
    # `sluice por roots` prints the same file, from the DB.
    assert sluice("por", "roots", env=env).stdout == taken.stdout
    assert sluice("por", "roots", "--snapshot", "snap-e2e", env=env).stdout == taken.stdout

    proof_file = tmp_path / "proof.json"
    proven = sluice("por", "proof", "--customer", "bob", "--instrument", "iSTSi", env=env)
    proof = json.loads(proven.stdout)
    assert (proof["customer_id"], proof["units"], proof["balance"]) == ("bob", "250000000", "2.5")
    proof_file.write_text(proven.stdout)

    valid = _verify(tmp_path / "customer", proof_file, roots_file)
    assert valid.returncode == 0, valid.stdout + valid.stderr
    assert valid.stdout.startswith("valid: bob's balance of 2.5 iSTSi@issuer::1220bb")

    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(proof | {"units": "250000001", "balance": "2.50000001"}))
    refused = _verify(tmp_path / "customer", tampered, roots_file)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stdout.startswith("INVALID:")
    other_roots = tmp_path / "other-roots.jsonl"
    other_roots.write_text(
        "".join(
            json.dumps(root | {"total_units": str(int(root["total_units"]) - 1)}) + "\n"
            for root in roots
        )
    )
    assert _verify(tmp_path / "customer", proof_file, other_roots).returncode == 2

    history = json.loads(sluice("por", "snapshots", "--json", env=env).stdout)
    assert [item["id"] for item in history] == ["snap-e2e"]
    assert history[0]["instruments"] == sorted([AMULET.key(), ISTSI.key()])


def test_refusals_name_the_problem_and_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    env = environment(data)
    _journal(data)
    none_yet = sluice("por", "roots", env=env, code=2)
    assert "error 10 not_found" in none_yet.stderr and none_yet.stdout == ""
    taken = sluice("por", "snapshot", "--id", "snap-1", "--instrument", "Amulet", env=env)
    # No ledger here: the snapshot is taken, its reserves document says the Canton part was not
    # read and why, and so does stderr.
    assert f"ledger: not read (no embedded ledger at {data / 'ledger.db'})" in taken.stderr
    assert "reserves: canton not read (no ledger reader in this process)" in taken.stderr
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    with database.uow() as uow:
        stored = uow.reserves.snapshot("snap-1")
    database.dispose()
    assert stored is not None and stored.reserves is not None
    assert stored.reserves["canton"]["read"] is False
    again = sluice("por", "snapshot", "--id", "snap-1", env=env, code=2)
    assert "error 42 duplicate_operation: a snapshot snap-1 exists already" in again.stderr
    assert again.stdout == ""
    missing = sluice(
        "por", "proof", "--customer", "nobody", "--instrument", "Amulet", env=env, code=2
    )
    assert "error 10 not_found: customer nobody has no balance" in missing.stderr
    # snap-1 holds Amulet only.
    sluice("por", "proof", "--customer", "bob", "--instrument", "iSTSi", env=env, code=2)
    (data / "por-secret").chmod(0o644)
    exposed = sluice("por", "snapshot", env=env, code=2)
    assert "error 41 invalid_operation_state" in exposed.stderr
    assert "open to others" in exposed.stderr
