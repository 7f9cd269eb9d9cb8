"""``sluice demo`` end to end, as a newcomer runs it: the command, its report, and its files.

The report is checked against :func:`sluice.demo.plan` (what the customers did, a pure function of
the seed), and the Integration DB and the ledger file the demo leaves behind are checked too.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

from sluice import bootstrap
from sluice.demo import CUSTOMERS, Plan, money, plan, run_demo
from sluice.ledger.local import EmbeddedLedger
from sluice.services.books import customer_balances
from sluice.services.ingestion import connection_name

pytestmark = pytest.mark.slow

SEED = 1


def sluice_script() -> str:
    """The ``sluice`` console script of this virtualenv (cli.py has no ``__main__``)."""
    script = Path(sys.executable).with_name("sluice")
    found = str(script) if script.exists() else shutil.which("sluice")
    assert found, "the sluice console script is not installed (pip install -e .)"
    return found


def sluice_demo(data: Path) -> str:
    done = subprocess.run(
        [sluice_script(), "demo", "--data", str(data), "--seed", str(SEED)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # wide enough that no table row wraps
    )
    assert done.returncode == 0, f"sluice demo failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


def table_row(report: str, first_cell: str, containing: str = "") -> list[str]:
    """The cells of the (first) table row whose first cell is ``first_cell``."""
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("│").split("│")]
        if len(cells) > 1 and cells[0] == first_cell and containing in line:
            return cells
    raise AssertionError(f"no table row starting with {first_cell!r} in:\n{report}")


def check_report(report: str, expected: Plan) -> None:
    balances = expected.expected_balances()
    for customer in CUSTOMERS:
        cells = table_row(report, customer.name)
        shown = money(balances[customer.id])
        assert cells[1:5] == [customer.account, shown, shown, "✓"], cells
    suspense = money(expected.expected_suspense())
    assert table_row(report, "suspense")[2:5] == [suspense, suspense, "✓"]
    offer = expected.offer
    assert "1 pending offer" in report
    offer_row = table_row(report, offer.customer.name, containing="USDX")
    assert offer_row[1] == f"{money(offer.amount)} USDX"
    assert offer_row[3].startswith("pending_receiver_acceptance")
    assert f"deposit_unattributed × {expected.unattributed()}" in report
    assert "invariant holds" in report
    assert "all checks hold" in report


def check_files(data: Path, expected: Plan) -> None:
    """What the demo left behind: exact balances in the DB, the cursor at the ledger end."""
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    ledger = EmbeddedLedger.open(str(data / "ledger.db"), read_only=True)
    try:
        balances = customer_balances(database.uow)
        for customer in CUSTOMERS:
            coin = balances[f"customer:{customer.id}"]
            assert list(coin.values()) == [expected.expected_balances()[customer.id]]
        assert sum(balances["suspense"].values(), Decimal(0)) == expected.expected_suspense()
        (treasury,) = ledger.parties("exchange")
        with database.uow() as uow:
            cursor = uow.ingestion.load_cursor(connection_name(treasury, "exchange"))
        assert cursor is not None
        assert cursor.offset == ledger.ledger_end("exchange")
    finally:
        ledger.close()
        database.dispose()


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    data = tmp_path_factory.mktemp("demo") / "data"
    return data, sluice_demo(data)


def test_the_report_shows_what_the_customers_did(demo_folder: tuple[Path, str]) -> None:
    data, report = demo_folder
    expected = plan(SEED)
    check_report(report, expected)
    check_files(data, expected)


def test_ingestion_is_killed_part_way_and_resumes_from_its_cursor(
    demo_folder: tuple[Path, str],
) -> None:
    _, report = demo_folder
    killed = next(line for line in report.splitlines() if "run 1:" in line)
    resumed = next(line for line in report.splitlines() if "run 2:" in line)
    if "SIGKILL" in killed:
        offset = killed.split("offset ", 1)[1].split(" ", 1)[0]
        assert int(offset) > 0
        assert f"resumed from offset {offset} ✓" in resumed
    else:  # the demo's documented fallback on a machine too fast to catch it
        assert "before it could be killed" in killed
    assert "= ledger end ✓" in resumed


def test_a_second_run_in_the_same_folder_starts_fresh(demo_folder: tuple[Path, str]) -> None:
    data, _ = demo_folder
    report = sluice_demo(data)
    expected = plan(SEED)
    check_report(report, expected)  # not doubled: the folder was wiped first
    check_files(data, expected)


def test_a_folder_the_demo_did_not_make_is_left_alone(tmp_path: Path) -> None:
    precious = tmp_path / "notes.txt"
    precious.write_text("keep me")
    out = io.StringIO()
    assert not run_demo(tmp_path, seed=SEED, console=Console(file=out, width=200))
    assert "was not made by `sluice demo`" in out.getvalue()
    assert precious.read_text() == "keep me"
