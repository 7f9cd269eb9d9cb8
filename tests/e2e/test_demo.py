"""``sluice demo`` end to end, as a newcomer runs it: the command, its report, and its files.

The report is checked against :func:`sluice.demo.plan` (what the customers did, a pure function of
the seed): the deposits credited, the two USDX offers (accepted; rejected by the block list), every
withdrawal's status and outcome (the one whose worker crashed paid once), and each customer's final
balance. The HTTP API chapter is checked request by request against what an exchange's systems and
staff were meant to get (status, error code, what happened), and no API key appears in the report.
The Integration DB and the ledger file the demo leaves behind are checked too, the ledger
independently of sluice: the transfers carrying each withdrawal's id (those requested over HTTP
included), and every wallet's holdings against what the customer was given, sent and was paid.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from rich.console import Console

from sluice import bootstrap
from sluice.demo import (
    API_CUSTOMER,
    API_OTHER,
    API_WITHDRAWALS,
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
from sluice.services.access import ApiKeyVerifier, list_api_keys
from sluice.services.books import check_invariant, customer_balances
from sluice.services.controls import current_pause
from sluice.services.ingestion import connection_name
from sluice.services.withdrawals import list_withdrawals
from sluice.store import exchange_tables

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
    check_api_report(report, expected)
    assert "invariant holds" in report
    # The events chapter (tests/e2e/test_demo_events.py checks it in detail): the outbox relayed
    # to the in-process bus, and the /metrics excerpt with the reserve ratios of the world.
    assert "Events published to the in-process bus" in report
    assert "sluice_outbox_pending_events 0.0" in report
    assert 'sluice_reserve_ratio{instrument="Amulet"} 1.0' in report
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

    compliance = section(report, "9. Compliance", "10. The HTTP API")
    carol = CUSTOMERS[2].name
    held = table_row(compliance, f"officer freezes {carol}; {carol} deposits 75.00 CC")
    assert held[1].startswith("held, not credited") and "customer is frozen" in held[1], held
    released = table_row(compliance, f"officer unfreezes {carol} and releases the deposit")
    assert "compliance hold 0.00" in released[1] and released[2] == "✓", released
    audit = table_row(compliance, "sluice audit verify")
    assert "hash chain intact" in audit[1] and audit[2] == "✓", audit


def api_paid(customer: Customer, symbol: str) -> Decimal:
    """What the withdrawals requested over HTTP pay ``customer`` (the demo's worker pays both)."""
    return sum(
        (w.amount for w in API_WITHDRAWALS if w.customer == customer and w.symbol == symbol),
        Decimal(0),
    )


def table_rows(report: str) -> list[list[str]]:
    """The cells of every body row of the tables in ``report``."""
    rows = []
    for line in report.splitlines():
        if line.startswith("│"):
            rows.append([cell.strip() for cell in line.strip().strip("│").split("│")])
    return rows


def check_api_report(report: str, expected: Plan) -> None:
    """Each request of the HTTP API chapter, in order: who, method, path, status, sluice's error
    code where one is due, and what came of it."""
    chapter = section(report, "10. The HTTP API", "11. Cursor")
    user = f"{API_CUSTOMER.name} (user)"
    own = f"/v1/customers/{API_CUSTOMER.id}"
    small, large = API_WITHDRAWALS
    approve = f"/v1/approvals/ap-{shortened(large)}/approve"
    before = expected.expected_final(API_CUSTOMER, "CC")
    if API_CUSTOMER == HELD_CUSTOMER:
        before += HELD_AMOUNT
    after = before - small.amount - large.amount
    planned: list[tuple[str, str, str, str, list[str]]] = [
        (user, "GET", f"{own}/balances", "200", [f"CC {money(before)}"]),
        (user, "GET", f"{own}/deposit-instructions", "200", [API_CUSTOMER.account]),
        (user, "POST", f"{own}/withdrawals", "201", [shortened(small), "25.00 CC", "reserved"]),
        (user, "POST", f"{own}/withdrawals", "200", [shortened(small), "Idempotent-Replayed"]),
        (user, "POST", f"{own}/withdrawals", "202", ["1,200.00 CC", "0 of 2 approvals"]),
        ("operator", "POST", approve, "200", ["1 of 2 approvals: pending"]),
        ("system admin", "POST", approve, "200", ["2 of 2 approvals: executed", shortened(large)]),
        ("compliance officer", "POST", "/v1/system/pause", "200", ["paused"]),
        (user, "POST", f"{own}/withdrawals", "503", ["code 50 system_paused"]),
        (user, "GET", f"{own}/balances", "200", [f"CC {money(after)}"]),
        ("system admin", "POST", "/v1/system/resume", "200", ["running again"]),
        ("anonymous", "GET", f"{own}/balances", "401", ["code 1 unauthorized"]),
        (user, "GET", f"/v1/customers/{API_OTHER.id}/balances", "404", ["code 10 not_found"]),
        ("super admin", "GET", "/v1/audit?limit=50", "200", ["system_paused"]),
        ("operator", "GET", f"/v1/withdrawals/{shortened(small)}", "200", ["completed"]),
        ("operator", "GET", f"/v1/withdrawals/{shortened(large)}", "200", ["completed"]),
        ("super admin", "GET", "/v1/books/check", "200", ["the books balance"]),
    ]
    rows = table_rows(chapter)
    assert len(rows) == len(planned), rows
    for cells, (who, method, path, status, what) in zip(rows, planned, strict=True):
        assert cells[:4] == [who, method, path, status], cells
        assert all(part in cells[4] for part in what), (cells, what)
        assert cells[5] == "✓", cells
    # The pause in the audit trail carries the pause request's correlation id.
    given = re.search(r"X-Correlation-ID ([0-9a-f]{8})…", rows[7][4])
    recorded = re.search(r"correlation id ([0-9a-f]{8})…", rows[13][4])
    assert given and recorded and given.group(1) == recorded.group(1), (rows[7], rows[13])
    # Five keys by id; no key itself anywhere in the report before its last lines (the sign-in
    # keys of the dashboard, made for that).
    assert len(re.findall(r"(?:admin|operator|officer|\(user\)) [0-9a-f]{16}\b", chapter)) == 5
    before, _, _ = report.partition(DASHBOARD_HEADING)
    assert re.search(r"sk_[0-9a-f]{16}_", before) is None


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
    paid += api_paid(customer, symbol)
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


def swapped(database: bootstrap.Database, coin: InstrumentId) -> dict[str, Decimal]:
    """Canton Coin each customer received by swaps (the exchange chapter), as recorded."""
    swaps = exchange_tables.exchange_swaps
    statement = sa.select(swaps.c.customer_id, swaps.c.received).where(
        swaps.c.buy_id == coin.id, swaps.c.buy_admin == coin.admin
    )
    found: dict[str, Decimal] = {}
    with database.engine.connect() as connection:
        for customer_id, received in connection.execute(statement):
            found[customer_id] = found.get(customer_id, Decimal(0)) + received
    return found


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
        bought = swapped(database, coin)
        assert sorted(bought) == ["alice", "bob"]  # the exchange chapter's two swaps
        for customer in EVERYONE:
            account = balances.get(f"customer:{customer.id}", {})
            for symbol in SYMBOLS:
                released = HELD_AMOUNT if (customer, symbol) == (HELD_CUSTOMER, "CC") else 0
                swaps = bought.get(customer.id, Decimal(0)) if symbol == "CC" else 0
                assert account.get(instruments[symbol].key(), Decimal(0)) == (
                    expected.expected_final(customer, symbol)
                    + released
                    + swaps
                    - api_paid(customer, symbol)
                ), (customer, symbol)
        assert sum(balances.get("compliance_hold", {}).values(), Decimal(0)) == 0
        assert sum(balances["suspense"].values(), Decimal(0)) == expected.expected_suspense()
        assert check_invariant(database.uow).problems == []

        records = {w.id: w for w in list_withdrawals(database.uow) if w.kind == "withdrawal"}
        # Over HTTP: two withdrawals (the refused one during the pause was never created).
        every = (*expected.withdrawals, *API_WITHDRAWALS)
        assert set(records) == {w.id for w in every}
        for planned in every:
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
        keys = [k for k in list_api_keys(database.uow) if k.label != "demo dashboard"]
        assert sorted(k.role for k in keys) == sorted(
            ["super_admin", "system_admin", "operator", "compliance_officer", "user"]
        )
        assert [k.customer_id for k in keys if k.role == "user"] == [API_CUSTOMER.id]
        assert current_pause(database.uow) is None  # resumed

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


DASHBOARD_HEADING = "The dashboard and the customer page on the demo's data:"


def test_the_report_ends_with_the_dashboard_command_and_keys_that_sign_in(
    demo_folder: tuple[Path, str],
) -> None:
    data, report = demo_folder
    _before, heading, ending = report.partition(DASHBOARD_HEADING)
    assert heading, report[-2000:]
    lines = [line.strip() for line in ending.strip().splitlines()]
    assert lines[0].startswith(f"sluice serve --db sqlite:///{data / 'sluice.db'} --ledger ")
    assert "http://localhost:8080/login" in lines[0]
    shown = dict(
        re.fullmatch(r"sign in as (\S+(?: \(\w+\))?)\s+(sk_\S+)", line).groups()  # type: ignore[union-attr]
        for line in lines[1:4]
    )
    assert sorted(shown) == sorted(
        ["super_admin", "compliance_officer", f"user ({API_CUSTOMER.id})"]
    )
    written = (data / "dashboard-keys.txt").read_text().splitlines()
    assert sorted(line.split("\t")[2] for line in written) == sorted(shown.values())
    assert (data / "dashboard-keys.txt").stat().st_mode & 0o077 == 0
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    try:
        verifier = ApiKeyVerifier(database.uow)
        for who, key in shown.items():
            principal = verifier.authenticate(key)
            assert principal.role == who.split(" ")[0]
            if principal.is_user:
                assert principal.customer_id == API_CUSTOMER.id
    finally:
        database.dispose()


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
