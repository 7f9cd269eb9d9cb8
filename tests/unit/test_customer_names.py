"""A customer's names as the domain checks them: stripped, bounded, without repeats, at most
``OTHER_NAMES_MAX`` other names; the script label stored with each.

How: the pure functions of :mod:`sluice.domain.customer_names` on examples, and a property test
that whatever other names are given, the ones kept are checked, new and within the bound.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sluice.domain.customer_names import (
    NAME_LENGTH_MAX,
    OTHER_NAMES_MAX,
    check_customer_name,
    check_other_names,
    script_label,
)
from sluice.domain.errors import InvalidInputError


def test_a_name_is_stripped_and_bounded() -> None:
    assert check_customer_name("  قاسم سلیمانی \n") == "قاسم سلیمانی"
    assert check_customer_name("x" * NAME_LENGTH_MAX) == "x" * NAME_LENGTH_MAX
    with pytest.raises(InvalidInputError, match="must not be empty"):
        check_customer_name(" \t ")
    with pytest.raises(InvalidInputError, match=f"at most {NAME_LENGTH_MAX} characters"):
        check_customer_name("x" * (NAME_LENGTH_MAX + 1))


def test_other_names_skip_the_primary_the_known_and_repeats_in_the_order_given() -> None:
    kept = check_other_names("Qasem", ["李方伟", " Qasem ", "Алиса", "李方伟", "Bob"], ["Bob"])
    assert kept == ["李方伟", "Алиса"]


def test_a_customer_has_at_most_the_most_other_names() -> None:
    known = [f"Alias {n}" for n in range(OTHER_NAMES_MAX)]
    assert check_other_names("Primary", known, known) == []
    with pytest.raises(InvalidInputError, match=f"at most {OTHER_NAMES_MAX} other names"):
        check_other_names("Primary", ["One more"], known)


def test_the_script_label_is_sorted_and_joined() -> None:
    assert script_label({"kana", "han"}) == "han+kana"
    assert script_label(["latin"]) == "latin"
    assert script_label([]) == "other"


@given(st.lists(st.text(min_size=1, max_size=30), max_size=30))
def test_the_names_kept_are_checked_new_and_within_the_bound(names: list[str]) -> None:
    try:
        kept = check_other_names("Primary", names)
    except InvalidInputError:
        return
    assert len(kept) == len(set(kept)) <= OTHER_NAMES_MAX
    assert "Primary" not in kept
    assert all(name == name.strip() and 0 < len(name) <= NAME_LENGTH_MAX for name in kept)
