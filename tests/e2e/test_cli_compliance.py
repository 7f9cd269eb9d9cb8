"""The compliance officer's command line: screening names, the KYC registry's checks, freezing,
tiers, limits, flagged addresses, the review queue and the audit trail.

How: each test runs the real ``sluice`` command (typer's runner, in-process) on an Integration DB
under ``tmp_path`` (``SLUICE_DATA_DIR`` / ``SLUICE_DATABASE_URL``; the officer's name from
``SLUICE_ACTOR``), with the reference sanctions lists (``../shared/reference/sanctions``, the
17-entry ``sample-`` set) and checks what it prints, its exit code and the state it leaves behind:
``compliance check`` exits 0 when allowed and 1 when denied, printing the decision as JSON; bad
input and damaged lists end with exit code 2 and exactly one line on stderr; ``audit verify``
exits 1 and names the record once the trail has been tampered with.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import sqlite3
from collections.abc import Collection
from pathlib import Path
from typing import Any, Protocol

import pytest
from typer.testing import CliRunner, Result

from sluice.cli import app
from tests.conftest import reference_path

OFFICER = "officer:carol"
LISTED_ADDRESS = "0x2f389ce8bd8ff92de3402ffce4691d17fc4f6535"  # ofac-sdn:33151, sample set


class Sluice(Protocol):
    def __call__(
        self, command: str, *more: str, code: int = 0, env: dict[str, str] | None = None
    ) -> Result: ...


@pytest.fixture
def sanctions() -> Path:
    return reference_path("sanctions")


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "sluice.db"


@pytest.fixture
def sluice(tmp_path: Path, database: Path) -> Sluice:
    """``sluice("compliance queue --json", *more, code=0)`` runs the command (split at spaces;
    ``more`` are passed as they are), checks the exit code and returns the click result."""
    return cli_runner(tmp_path, f"sqlite:///{database}")


def cli_runner(data_dir: Path, database_url: str) -> Sluice:
    """A :class:`Sluice` on ``database_url``, acting as the compliance officer, with none of
    this process's ``SLUICE_*`` settings (no sanctions list unless a call's ``env`` gives one)."""
    runner = CliRunner()
    base: dict[str, str | None] = {name: None for name in os.environ if name.startswith("SLUICE_")}
    base.update(
        {
            "SLUICE_DATA_DIR": str(data_dir),
            "SLUICE_DATABASE_URL": database_url,
            "SLUICE_ACTOR": OFFICER,
            "COLUMNS": "250",
        }
    )

    def run(command: str, *more: str, code: int = 0, env: dict[str, str] | None = None) -> Result:
        args = [*command.split(), *more]
        result = runner.invoke(app, args, env={**base, **(env or {})})
        assert result.exit_code == code, (
            f"sluice {' '.join(args)} exited {result.exit_code}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}"
        )
        return result

    return run


def list_extract(directory: Path, listed: Collection[str]) -> Path:
    """A list directory (``directory``, made here) holding the full list's rows of the people
    named ``listed`` (as the list writes them), all of them found."""
    source = reference_path("sanctions", "full-sdn.csv")
    directory.mkdir()
    with source.open(encoding="utf-8", newline="") as full:
        rows = [row for row in csv.reader(full) if len(row) > 1 and row[1] in listed]
    assert sorted(row[1] for row in rows) == sorted(listed)
    with (directory / "sdn.csv").open("w", encoding="utf-8", newline="") as out:
        csv.writer(out).writerows(rows)
    return directory


def refused(result: Result, starts: str, *containing: str) -> None:
    """One line on stderr (the caller checked exit code 2)."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(starts), lines[0]
    for text in containing:
        assert text in lines[0], lines[0]


def json_lines(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def decision(sluice: Sluice, *args: str, code: int, env: dict[str, str] | None = None) -> Any:
    """``compliance check`` with ``args``; its JSON decision."""
    result = sluice("compliance check", *args, code=code, env=env)
    return json.loads(result.stdout)


def queue(sluice: Sluice) -> Any:
    return json.loads(sluice("compliance queue --json").stdout)


# --- screening names ----------------------------------------------------------------------------


def test_screening_one_name_prints_one_json_line_with_the_match_and_the_entity(
    sluice: Sluice, sanctions: Path
) -> None:
    # Given name first, other spellings of the listed "KHOROSHEV, Dmitry Yuryevich".
    result = sluice(
        "compliance screen --prefix sample-",
        *("--list", str(sanctions), "--name", "Dmitri Yurievich Khoroshev"),
    )
    (line,) = json_lines(result)
    assert line["name"] == "Dmitri Yurievich Khoroshev"
    assert line["match"] is True
    assert line["entity_id"] == "ofac-sdn:48603"
    assert line["matched_name"] == "KHOROSHEV, Dmitry Yuryevich"
    assert 0 < line["score"] <= 100


def test_screening_a_batch_prints_one_line_per_name_in_order(
    sluice: Sluice, sanctions: Path, tmp_path: Path
) -> None:
    names = tmp_path / "names.txt"
    names.write_text("Burton Burgess\nJane Q. Nobody\n\n  suex otc sro  \n", encoding="utf-8")
    result = sluice(
        "compliance screen --prefix sample-", *("--list", str(sanctions), "--batch", str(names))
    )
    lines = json_lines(result)
    assert [line["name"] for line in lines] == ["Burton Burgess", "Jane Q. Nobody", "suex otc sro"]
    assert [line["match"] for line in lines] == [True, False, True]
    assert [lines[0]["entity_id"], lines[2]["entity_id"]] == ["ofac-sdn:10278", "ofac-sdn:33151"]


def test_a_damaged_list_is_refused_with_exit_2_naming_the_file_and_line(
    sluice: Sluice, sanctions: Path, tmp_path: Path
) -> None:
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    shutil.copyfile(sanctions / "invalid-sdn.csv", damaged / "x-sdn.csv")
    result = sluice(
        "compliance screen --prefix x-", *("--list", str(damaged), "--name", "Burton"), code=2
    )
    refused(result, "error 60 invalid_input: sanctions list x-sdn.csv line ", "expected 12 fields")
    assert result.stdout == ""


def test_screening_needs_exactly_one_of_a_name_or_a_batch(sluice: Sluice, sanctions: Path) -> None:
    result = sluice("compliance screen --prefix sample-", "--list", str(sanctions), code=2)
    refused(result, "error: give exactly one of --name NAME or --batch FILE")


def test_a_directory_of_several_lists_needs_a_prefix(sluice: Sluice, sanctions: Path) -> None:
    result = sluice("compliance screen", *("--list", str(sanctions), "--name", "Burton"), code=2)
    refused(result, "error 60 invalid_input:", "several OFAC sets", "prefix")


# --- the KYC registry and the officer -------------------------------------------------------------


def test_checks_follow_freezing_tiers_and_limits_set_from_the_command_line(
    sluice: Sluice,
) -> None:
    added = json.loads(sluice("customers add cust-a --name", "Anna Example").stdout)
    assert (added["tier"], added["status"]) == (1, "active")
    check = ("--customer", "cust-a", "--operation", "withdrawal", "--amount")

    allowed = decision(sluice, *check, "150", code=0)
    assert (allowed["allowed"], allowed["code"]) == (True, 0)
    assert [c["name"] for c in allowed["checks"]] == [
        "status",
        "sanctions_customer",
        "limits",
        "risk",
    ]

    ladder = json.loads(
        sluice(
            "compliance limits --tier 1 --operation withdrawal --daily 100 --reason", "new policy"
        ).stdout
    )
    (step,) = [s for s in ladder if (s["tier"], s["operation"]) == (1, "withdrawal")]
    assert step == {
        "tier": 1,
        "operation": "withdrawal",
        "per_operation": None,
        "daily": "100.0000000000",
        "monthly": None,
    }
    over = decision(sluice, *check, "150", code=1)
    assert (over["allowed"], over["code"], over["required_tier"]) == (False, 21, 2)
    assert "tier 2 is needed" in json.dumps(over["checks"])

    tier = json.loads(sluice("compliance tier cust-a 2 --reason", "EDD done").stdout)
    assert tier["tier"] == 2
    assert decision(sluice, *check, "150", code=0)["allowed"] is True

    frozen = json.loads(sluice("compliance freeze cust-a --reason", "court order 9").stdout)
    assert (frozen["status"], frozen["status_reason"]) == ("frozen", "court order 9")
    denied = decision(sluice, *check, "10", code=1)
    assert denied["code"] == 20
    assert {"name": "status", "passed": False, "reason": "customer is frozen (court order 9)"} in (
        denied["checks"]
    )
    assert [c["customer_id"] for c in queue(sluice)["customers"]] == ["cust-a"]

    active = json.loads(sluice("compliance unfreeze cust-a --reason", "lifted").stdout)
    assert (active["status"], active["status_reason"]) == ("active", None)
    assert decision(sluice, *check, "10", code=0)["allowed"] is True
    assert queue(sluice)["customers"] == []


def test_a_flagged_address_is_refused_until_it_is_unflagged(sluice: Sluice) -> None:
    sluice("customers add cust-b --name", "Bert Example")
    address = "bob::1220" + "ab" * 32
    check = ("--customer", "cust-b", "--operation", "transfer", "--amount", "5")

    flagged = sluice("compliance flag", address, "--reason", "phishing report")
    assert f"{address} flagged" in flagged.stderr
    denied = decision(sluice, *check, "--counterparty", address, code=1)
    assert denied["code"] == 22 and denied["counterparty"] == address
    (entry,) = queue(sluice)["flagged_addresses"]
    assert (entry["address"], entry["reason"], entry["flagged_by"]) == (
        address,
        "phishing report",
        OFFICER,
    )

    sluice("compliance unflag", address, "--reason", "cleared")
    assert decision(sluice, *check, "--counterparty", address, code=0)["allowed"] is True
    assert queue(sluice)["flagged_addresses"] == []
    again = sluice("compliance unflag", address, "--reason", "twice", code=2)
    refused(again, "error 10", "is not flagged")


def test_a_counterparty_on_the_configured_sanctions_list_is_refused(
    sluice: Sluice, sanctions: Path, tmp_path: Path
) -> None:
    config = tmp_path / "sluice.toml"
    config.write_text(
        f'[compliance]\nsanctions_list = "{sanctions}"\nsanctions_prefix = "sample-"\n',
        encoding="utf-8",
    )
    env = {"SLUICE_CONFIG": str(config)}
    sluice("customers add cust-c --name", "Cleo Example")
    check = ("--customer", "cust-c", "--operation", "withdrawal", "--amount", "5")

    denied = decision(sluice, *check, "--counterparty", LISTED_ADDRESS, code=1, env=env)
    assert denied["code"] == 22
    (failed,) = [c for c in denied["checks"] if not c["passed"]]
    assert failed["name"] == "sanctions_counterparty"
    assert "ofac-sdn:33151" in failed["reason"]
    clean = decision(sluice, *check, "--counterparty", "0x" + "1" * 40, code=0, env=env)
    assert clean["allowed"] is True


def test_a_customer_matching_the_list_goes_under_review_until_the_review_is_closed(
    sluice: Sluice, sanctions: Path
) -> None:
    sluice("customers add cust-d --name", "Burton Burgess")
    sluice("customers add cust-e --name", "Erika Example")
    screened = sluice("compliance screen-customers --prefix sample-", "--list", str(sanctions))
    (match,) = json_lines(screened)
    assert (match["customer_id"], match["entity_id"]) == ("cust-d", "ofac-sdn:10278")
    listed = queue(sluice)
    (review,) = listed["reviews"]
    assert (review["kind"], review["customer_id"]) == ("sanctions_match", "cust-d")
    assert [(c["customer_id"], c["status"]) for c in listed["customers"]] == [
        ("cust-d", "under_review")
    ]
    check = ("--customer", "cust-d", "--operation", "deposit", "--amount", "5")
    assert decision(sluice, *check, code=1)["code"] == 20

    closed = sluice("compliance close-review", review["id"], "--resolution", "false positive")
    assert f"review {review['id']} closed" in closed.stderr
    assert queue(sluice)["reviews"] == []
    sluice("compliance unfreeze cust-d --reason", "false positive")
    assert decision(sluice, *check, code=0)["allowed"] is True
    again = sluice("compliance close-review", review["id"], "--resolution", "again", code=2)
    refused(again, "error 10", "no open review")


def test_officer_commands_need_a_reason(sluice: Sluice) -> None:
    sluice("customers add cust-f --name", "Fay Example")
    result = sluice("compliance freeze cust-f --reason", " ", code=2)
    refused(result, "error 60 invalid_input:", "reason is required")
    assert queue(sluice)["customers"] == []


# --- the audit trail ------------------------------------------------------------------------------


def test_audit_trail_lists_a_customer_and_verifies_until_a_record_is_tampered_with(
    sluice: Sluice, database: Path
) -> None:
    sluice("customers add cust-g --name", "Gus Example")
    sluice("customers add cust-h --name", "Hal Example")
    sluice("compliance freeze cust-g --reason", "check")
    decision(sluice, "--customer", "cust-g", "--operation", "withdrawal", "--amount", "7", code=1)
    sluice("compliance unfreeze cust-g --reason", "ok")

    trail = json_lines(sluice("audit list --customer cust-g"))
    assert [r["operation"] for r in trail] == [
        "customer_registered",
        "customer_status_changed",
        "compliance_check:withdrawal",
        "customer_status_changed",
    ]
    assert {r["customer_id"] for r in trail} == {"cust-g"}
    assert [r["actor"] for r in trail] == [OFFICER] * 4
    assert trail[2]["error"].startswith("20: ")
    assert trail[1]["parameters"] == {"status": "frozen", "reason": "check"}
    intact = sluice("audit verify")
    assert intact.stdout.strip() == "audit trail intact: 5 records"

    target = trail[2]["seq"]
    connection = sqlite3.connect(database)
    try:
        connection.execute("DROP TRIGGER audit_records_no_update")
        connection.execute("UPDATE audit_records SET error = NULL WHERE seq = ?", (target,))
        connection.commit()
    finally:
        connection.close()
    broken = sluice("audit verify", code=1)
    assert f"modified: record {target} (compliance_check:withdrawal" in broken.stdout
    assert "audit trail BROKEN: 1 finding(s) in 5 records" in broken.stdout
