"""Customers whose names are written in Arabic, Chinese, Korean or Cyrillic script are screened
against the list's Latin forms by ``sluice compliance screen-customers``.

How: the real ``sluice`` command (typer's runner, in-process) on an SQLite database under
``tmp_path``, against an OFAC list made at test time of the real rows of four listed people,
taken from ``../shared/reference/sanctions/full-sdn.csv`` (an extract: the loader accepts one).
A customer has one name in sluice today; that name, in whatever script it is written, is what
``screen-customers`` screens (every screen goes through the same ``find_name``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.test_cli_compliance import (  # noqa: F401
    Sluice,
    json_lines,
    list_extract,
    queue,
    sluice,
)

LISTED = {
    "NASRALLAH, Hasan": "حسن نصر الله",
    "KIM, Jong Un": "김정은",
    "LI, Fangwei": "李方伟",
    "TIMCHENKO, Gennady": "Геннадий Тимченко",
}


@pytest.fixture
def database(tmp_path: Path) -> Path:
    return tmp_path / "sluice.db"


@pytest.fixture
def extract(tmp_path: Path) -> Path:
    """A list directory holding the full list's rows of the four people of ``LISTED``."""
    return list_extract(tmp_path / "list", LISTED)


def test_customers_named_in_other_scripts_are_found_by_screen_customers(
    sluice: Sluice,  # noqa: F811
    extract: Path,
) -> None:
    for number, name in enumerate(LISTED.values()):
        sluice(f"customers add cust-{number} --name", name)
    sluice("customers add cust-x --name", "王小明")
    screened = sluice("compliance screen-customers --list", str(extract))
    matches = {line["customer_id"]: line for line in json_lines(screened)}
    assert sorted(matches) == [f"cust-{number}" for number in range(len(LISTED))]
    assert [(c["customer_id"], c["status"]) for c in queue(sluice)["customers"]] == sorted(
        (f"cust-{number}", "under_review") for number in range(len(LISTED))
    )


def test_screening_a_name_in_another_script_says_which_listed_name_it_matched(
    sluice: Sluice,  # noqa: F811
    extract: Path,
) -> None:
    for listed, written in LISTED.items():
        result = sluice("compliance screen --list", str(extract), "--name", written)
        (line,) = json_lines(result)
        assert (line["match"], line["matched_name"]) == (True, listed), json.dumps(line)
        if written.isascii() or "TIMCHENKO" in listed:
            assert "transliteration" not in line  # Latin and Cyrillic: as before
        else:
            assert line["transliteration"].split(":")[0] in (
                "Arabic consonant skeleton",
                "McCune-Reischauer (North Korean lists)",
                "pinyin",
            )
