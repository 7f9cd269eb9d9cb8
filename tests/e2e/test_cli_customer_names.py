"""A customer's several names, in several scripts, screened at registration, when a name is
added and by ``sluice compliance screen-customers``, from the command line.

How: the real ``sluice`` command (typer's runner, in-process) on an Integration DB (SQLite under
``tmp_path`` and a fresh PostgreSQL database), the sanctions list configured through
``SLUICE_SANCTIONS_LIST`` (or not at all) as a deployment would. The list is made at test time
of the real rows of four listed people taken from ``../shared/reference/sanctions/full-sdn.csv``
(an extract, as ``test_cli_screening_scripts`` makes it; the loader accepts one), so what is
checked is the wiring: which names are screened, when, and what a match does.

Covers: a customer registered with an Arabic-script name of a listed person is held (under
review, a review item, the match audited) in the registration itself; names screened clear are
audited as screened; without a list, registration works and says the names were not screened;
a customer whose second name (Chinese or Cyrillic) is listed is found by ``screen-customers``,
which says which name matched, in which script, through which transliteration; a name added
later is screened when added; names are kept with their scripts and shown by ``customers
show``; bad input (a blank or overlong name, too many names, an unknown customer) is refused
with exit code 2 and one line naming the error code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import Result

from sluice.domain.customer_names import OTHER_NAMES_MAX
from tests.e2e.test_cli_compliance import (
    Sluice,
    cli_runner,
    json_lines,
    list_extract,
    queue,
    refused,
)

LISTED = ("NASRALLAH, Hasan", "SOLEIMANI, Qasem", "LI, Fangwei", "TIMCHENKO, Gennady")


@pytest.fixture
def extract(tmp_path: Path) -> Path:
    """A list directory holding the full list's rows of the people of ``LISTED``."""
    return list_extract(tmp_path / "list", LISTED)


@pytest.fixture
def sluice(tmp_path: Path, database_url: str) -> Sluice:
    """``sluice("customers add …", *more, code=0, env=…)`` on this test's database (SQLite or
    PostgreSQL), with no sanctions list unless ``env`` configures one."""
    return cli_runner(tmp_path, database_url)


def listed(extract: Path) -> dict[str, str]:
    return {"SLUICE_SANCTIONS_LIST": str(extract)}


def added(result: Result) -> Any:
    return json.loads(result.stdout)


def trail(sluice: Sluice, customer: str) -> list[dict[str, Any]]:
    return json_lines(sluice("audit list --customer", customer))


# --- at registration -----------------------------------------------------------------------------


def test_a_customer_registered_with_the_arabic_name_of_a_listed_person_is_held_at_registration(
    sluice: Sluice, extract: Path
) -> None:
    result = sluice(
        "customers add cust-a --name",
        "Hassan Example",
        "--name",
        "حسن نصر الله",
        env=listed(extract),
    )
    customer = added(result)
    assert customer["status"] == "under_review"
    assert customer["names"] == [
        {"name": "Hassan Example", "script": "latin", "primary": True},
        {"name": "حسن نصر الله", "script": "arabic", "primary": False},
    ]
    screening = customer["screening"]
    assert screening["screened"] is True
    (match,) = screening["matches"]
    assert (match["name"], match["script"], match["matched_name"]) == (
        "حسن نصر الله",
        "arabic",
        "NASRALLAH, Hasan",
    )
    assert match["transliteration"].startswith("Arabic consonant skeleton")
    assert "matches 'NASRALLAH, Hasan'" in result.stderr

    waiting = queue(sluice)
    (review,) = waiting["reviews"]
    assert (review["kind"], review["customer_id"]) == ("sanctions_match", "cust-a")
    assert "حسن نصر الله" in review["reason"]
    assert [(c["customer_id"], c["status"]) for c in waiting["customers"]] == [
        ("cust-a", "under_review")
    ]
    check = ("--customer", "cust-a", "--operation", "deposit", "--amount", "5")
    refused_check = json.loads(sluice("compliance check", *check, code=1).stdout)
    assert refused_check["code"] == 20

    records = trail(sluice, "cust-a")
    assert [r["operation"] for r in records] == [
        "customer_registered",
        "customer_screened",
        "compliance_check:deposit",
    ]
    assert records[1]["parameters"]["matches"][0]["matched_name"] == "NASRALLAH, Hasan"
    assert sluice("audit verify").stdout.startswith("audit trail intact")


def test_unlisted_names_pass_registration_and_are_audited_as_screened(
    sluice: Sluice, extract: Path
) -> None:
    result = sluice(
        "customers add cust-b --name", "Peter Example", "--name", "王小明", env=listed(extract)
    )
    customer = added(result)
    assert customer["status"] == "active"
    assert customer["screening"]["screened"] is True
    assert customer["screening"]["matches"] == []
    assert customer["screening"]["names"] == ["Peter Example", "王小明"]
    assert "2 name(s) screened: no match" in result.stderr
    assert queue(sluice)["reviews"] == []
    records = trail(sluice, "cust-b")
    assert [r["operation"] for r in records] == ["customer_registered", "customer_screened"]
    assert records[1]["parameters"]["matches"] == []
    assert records[1]["parameters"]["names"] == ["Peter Example", "王小明"]


def test_without_a_list_registration_works_and_says_the_names_were_not_screened(
    sluice: Sluice,
) -> None:
    result = sluice("customers add cust-c --name", "Hassan Example", "--name", "حسن نصر الله")
    customer = added(result)
    assert customer["status"] == "active"
    assert customer["screening"]["screened"] is False
    assert "not screened" in customer["screening"]["note"]
    assert "names not screened" in result.stderr
    records = trail(sluice, "cust-c")
    assert [r["operation"] for r in records] == ["customer_registered"]
    assert records[0]["parameters"]["screened"] is False
    assert records[0]["parameters"]["other_names"] == ["حسن نصر الله"]


# --- screen-customers -----------------------------------------------------------------------------


def test_screen_customers_finds_a_customer_by_a_second_name_in_chinese_or_cyrillic(
    sluice: Sluice, extract: Path
) -> None:
    # Registered before the list was configured: nothing screened them then.
    sluice("customers add cust-d --name", "Peter Example", "--name", "李方伟")
    sluice("customers add cust-e --name", "Anna Example", "--name", "Геннадий Тимченко")
    sluice("customers add cust-f --name", "Erika Example", "--name", "王小明")
    screened = sluice("compliance screen-customers --list", str(extract))
    matches = {line["customer_id"]: line for line in json_lines(screened)}
    assert sorted(matches) == ["cust-d", "cust-e"]
    chinese, cyrillic = matches["cust-d"], matches["cust-e"]
    assert (chinese["name"], chinese["script"], chinese["primary"]) == ("李方伟", "han", False)
    assert chinese["matched_name"] == "LI, Fangwei"
    assert chinese["transliteration"].startswith("pinyin")
    assert (cyrillic["name"], cyrillic["script"]) == ("Геннадий Тимченко", "cyrillic")
    assert cyrillic["matched_name"] == "TIMCHENKO, Gennady"
    assert cyrillic["transliteration"] is None  # anyascii's, as for Latin names
    assert "cust-d: other name '李方伟' (han) matches 'LI, Fangwei'" in screened.stderr
    assert "via pinyin" in screened.stderr
    assert [(c["customer_id"], c["status"]) for c in queue(sluice)["customers"]] == [
        ("cust-d", "under_review"),
        ("cust-e", "under_review"),
    ]
    assert [r["operation"] for r in trail(sluice, "cust-d")][-1] == "customer_screened"
    (run,) = [
        r for r in json_lines(sluice("audit list")) if r["operation"] == "customer_base_screened"
    ]
    assert run["parameters"]["names"] == 6
    assert (run["parameters"]["matches"], run["parameters"]["customers_matched"]) == (2, 2)


# --- names added later --------------------------------------------------------------------------


def test_a_name_added_later_is_screened_when_added_and_shown_with_its_script(
    sluice: Sluice, extract: Path
) -> None:
    sluice("customers add cust-g --name", "Qasem Example", env=listed(extract))
    plain = added(sluice("customers add-name cust-g", "Gus Example", env=listed(extract)))
    assert (plain["status"], plain["screening"]["matches"]) == ("active", [])
    again = added(sluice("customers add-name cust-g", "Gus Example", env=listed(extract)))
    assert again["screening"]["names"] == []  # already theirs: skipped

    result = sluice("customers add-name cust-g", "قاسم سلیمانی", env=listed(extract))
    held = added(result)
    assert held["status"] == "under_review"
    (match,) = held["screening"]["matches"]
    assert (match["name"], match["matched_name"]) == ("قاسم سلیمانی", "SOLEIMANI, Qasem")

    shown = json.loads(sluice("customers show cust-g").stdout)
    assert shown["names"] == [
        {"name": "Qasem Example", "script": "latin", "primary": True},
        {"name": "Gus Example", "script": "latin", "primary": False},
        {"name": "قاسم سلیمانی", "script": "arabic", "primary": False},
    ]
    assert [r["operation"] for r in trail(sluice, "cust-g")] == [
        "customer_registered",
        "customer_screened",
        "customer_names_added",
        "customer_screened",
        "customer_names_added",
        "customer_screened",
    ]


# --- bad input -----------------------------------------------------------------------------------


def test_bad_names_are_refused_with_their_error_code(sluice: Sluice) -> None:
    blank = sluice("customers add cust-h --name", "   ", code=2)
    refused(blank, "error 60 invalid_input:", "must not be empty")
    long = sluice("customers add cust-h --name", "Hal", "--name", "x" * 201, code=2)
    refused(long, "error 60 invalid_input:", "at most 200 characters")
    many = [part for n in range(OTHER_NAMES_MAX + 1) for part in ("--name", f"Alias {n}")]
    too_many = sluice("customers add cust-h --name", "Hal", *many, code=2)
    refused(too_many, "error 60 invalid_input:", f"at most {OTHER_NAMES_MAX} other names")
    unknown = sluice("customers add-name nobody", "Someone", code=2)
    refused(unknown, "error 10", "unknown customer")
    # Nothing of the refused registrations was kept.
    assert "unknown customer" in sluice("customers show cust-h", code=2).stderr
