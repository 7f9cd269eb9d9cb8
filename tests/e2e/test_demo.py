"""``sluice demo`` end to end, as a newcomer runs it: the command, its report, and its files.

The report is checked against :func:`sluice.demo.plan` (what the customers did, a pure function of
the seed): the deposits credited, the two USDX offers (accepted; rejected by the block list), every
withdrawal's status and outcome (the one whose worker crashed paid once), and each customer's final
balance. The Integration DB and the ledger file the demo leaves behind are checked too, the ledger
independently of sluice: the transfers carrying the crashed withdrawal's id, and every wallet's
holdings against what the customer was given, sent and was paid.
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
from sluice.demo import (
    BLOCKED,
    CUSTOMERS,
    EVERYONE,
    HELD_AMOUNT,
    HELD_CUSTOMER,
    SYMBOLS,
    TAP,
    Customer,
    Plan,
    PlannedWithdrawal,
    money,
    plan,
    run_demo,
)
from sluice.domain.ledger import REASON_KEY, InstrumentId
from sluice.ledger.local import EmbeddedLedger
from sluice.services.books import check_invariant, customer_balances
from sluice.services.ingestion import connection_name
from sluice.services.withdrawals import list_withdrawals

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


def section(report: str, start: str, end: str) -> str:
    """The part of the report from the heading ``start`` to the heading ``end``."""
    assert start in report and end in report, (start, end)
    return report.split(start, 1)[1].split(end, 1)[0]


def shortened(planned: PlannedWithdrawal) -> str:
    return f"{planned.id[:11]}…"


def check_report(report: str, expected: Plan) -> None:
    balances = expected.expected_balances()
    for customer in CUSTOMERS:
        cells = table_row(report, customer.name)
        shown = money(balances[customer.id])
        assert cells[1:5] == [customer.account, shown, shown, "✓"], cells
    suspense = money(expected.expected_suspense())
    assert table_row(report, "suspense")[2:5] == [suspense, suspense, "✓"]
    pending = section(report, "4. Pending offers", "5. The workers")
    assert "2 pending offers" in pending
    for offer in (expected.offer, expected.blocked_offer):
        offer_row = table_row(pending, offer.customer.name, containing="USDX")
        assert offer_row[1:3] == [f"{money(offer.amount)} USDX", offer.customer.account]
        assert offer_row[3].startswith("pending_receiver_acceptance")
    assert f"deposit_unattributed × {expected.unattributed()}" in report
    check_workers_report(report, expected)
    assert "invariant holds" in report
    assert "all checks hold" in report


def check_workers_report(report: str, expected: Plan) -> None:
    """The deposit offers, the withdrawals and the final balances, row by row against the plan."""
    offers = section(report, "6. Deposit offers", "7. Withdrawals")
    accepted = table_row(offers, expected.offer.customer.name)
    assert accepted[1] == f"{money(expected.offer.amount)} USDX"
    assert accepted[3].startswith("accept") and accepted[4:] == [
        "completed",
        f"{money(expected.offer.amount)} USDX to {expected.offer.customer.name}",
        "✓",
    ]
    rejected = table_row(offers, BLOCKED.name)
    assert rejected[3] == "reject (sender flagged: on the exchange's block list)"
    assert rejected[4] == "rejected" and rejected[6] == "✓"

    withdrawals = section(report, "7. Withdrawals", "8. Balances after")
    assert len(expected.withdrawals) == 7
    for planned in expected.withdrawals:
        cells = table_row(withdrawals, shortened(planned))
        outcome = cells[6]
        assert cells[1:6] == [
            planned.customer.name,
            money(planned.amount),
            planned.symbol,
            planned.path,
            planned.expected_status,
        ], cells
        if planned.answer == "reject":
            assert outcome == "refunded: offer rejected", cells
        elif planned.crash:
            assert outcome == "paid once, through a worker crash", cells
        else:
            assert outcome == "paid", cells
        assert cells[7] == "✓"
    crashed = next(w for w in expected.withdrawals if w.crash)
    assert f"transfers on the ledger with reason {shortened(crashed)}: 1 ✓" in report
    assert "submitted it 0 more time(s) ✓" in report
    assert "retried or refunded 0 attempt(s) ✓" in report

    final = section(report, "8. Balances after", "9. Compliance")
    for customer in EVERYONE:
        cells = table_row(final, customer.name)
        shown = []
        for symbol in SYMBOLS:
            credited = expected.credited(customer, symbol)
            paid = expected.paid_out(customer, symbol)
            shown += [money(credited), money(paid), money(credited - paid)]
        assert cells[1:] == [*shown, "✓"], cells

    compliance = section(report, "9. Compliance", "10. Cursor")
    carol = CUSTOMERS[2].name
    held = table_row(compliance, f"officer freezes {carol}; {carol} deposits 75.00 CC")
    assert held[1].startswith("held, not credited") and "customer is frozen" in held[1], held
    released = table_row(compliance, f"officer unfreezes {carol} and releases the deposit")
    assert "compliance hold 0.00" in released[1] and released[2] == "✓", released
    audit = table_row(compliance, "sluice audit verify")
    assert "hash chain intact" in audit[1] and audit[2] == "✓", audit


def payments(ledger: EmbeddedLedger, party: str, reason: str) -> list[str]:
    """Update ids of the committed transactions in which ``party`` exercised a transfer whose
    reason is ``reason``: read from the ledger file, not from sluice's books."""
    found = []
    for item in ledger.updates(party, 0):
        transaction = item["update"].get("Transaction")
        if transaction is None:
            continue
        for event in transaction["value"]["events"]:
            exercised = event.get("ExercisedEvent", {})
            if exercised.get("choice") != "TransferFactory_Transfer":
                continue
            if exercised["choiceArgument"]["transfer"]["meta"]["values"].get(REASON_KEY) == reason:
                found.append(transaction["value"]["updateId"])
    return found


def wallet_expected(expected: Plan, customer: Customer, symbol: str) -> Decimal:
    """What the customer's wallet must hold on the ledger: given − sent + paid back out."""
    paid = expected.paid_out(customer, "CC" if symbol == "CC" else "USDX")
    if symbol == "CC":
        if customer == BLOCKED:
            return Decimal(0)
        sent = sum((d.amount for d in expected.deposits if d.customer == customer), Decimal(0))
        if customer == HELD_CUSTOMER:
            sent += HELD_AMOUNT  # the deposit held for compliance review, then released
        return TAP - sent + paid
    # USDX: minted for the offer; the accepted one went to the treasury, the rejected one came back
    held = Decimal(0)
    if customer == expected.blocked_offer.customer:
        held += expected.blocked_offer.amount
    return held + paid


def check_files(data: Path, expected: Plan) -> None:
    """What the demo left behind: exact balances and withdrawal statuses in the DB, the books
    balanced, the cursor at the ledger end, and on the ledger the crashed withdrawal paid once and
    every wallet holding what it was given, sent and paid."""
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    ledger = EmbeddedLedger.open(str(data / "ledger.db"), read_only=True)
    try:
        (treasury,) = ledger.parties("exchange")
        symbols = {c.instrument.id: c.instrument for c in ledger.instrument_configs()}
        coin, usdx = symbols["Amulet"], symbols["USDX"]
        instruments: dict[str, InstrumentId] = {"CC": coin, "USDX": usdx}
        balances = customer_balances(database.uow)
        for customer in EVERYONE:
            account = balances.get(f"customer:{customer.id}", {})
            for symbol in SYMBOLS:
                released = HELD_AMOUNT if (customer, symbol) == (HELD_CUSTOMER, "CC") else 0
                assert account.get(instruments[symbol].key(), Decimal(0)) == (
                    expected.expected_final(customer, symbol) + released
                ), (customer, symbol)
        assert sum(balances.get("compliance_hold", {}).values(), Decimal(0)) == 0
        assert sum(balances["suspense"].values(), Decimal(0)) == expected.expected_suspense()
        assert check_invariant(database.uow).problems == []

        records = {w.id: w for w in list_withdrawals(database.uow) if w.kind == "withdrawal"}
        assert set(records) == {w.id for w in expected.withdrawals}
        for planned in expected.withdrawals:
            record = records[planned.id]
            assert (record.status, record.amount, record.instrument) == (
                planned.expected_status,
                planned.amount,
                instruments[planned.symbol],
            ), planned
            count = len(payments(ledger, treasury, planned.id))
            # A 1-step payment is one transfer; an offer is one transfer (answered separately).
            assert count == 1, (planned, count)
        crashed = next(w for w in expected.withdrawals if w.crash)
        assert len(payments(ledger, treasury, crashed.id)) == 1

        parties = {p.split("::", 1)[0]: p for p in ledger.parties("wallets")}
        for customer in EVERYONE:
            for symbol in SYMBOLS:
                held = sum(
                    (
                        h.amount
                        for h in ledger.active_holdings(parties[customer.id], instruments[symbol])
                    ),
                    Decimal(0),
                )
                assert held == wallet_expected(expected, customer, symbol), (customer, symbol)

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
