"""A customer's several names over the HTTP API: registered with ``names``, each kept with its
script, every one screened against the sanctions list in the registration itself.

How: the real application around a sandbox exchange (:mod:`tests.api_support`), on SQLite and
PostgreSQL, its KYC registry holding the real OFAC list (``../shared/reference/sanctions``,
the ``full-`` set, read where it is and loaded once for the module) as a deployment configured
with ``compliance.sanctions_list`` would; an operator's key registers customers.

Covers: a customer whose Arabic-script name (primary, or among ``names``) is a listed person's
is answered 201 already under review, the answer saying which name matched which listed name
through which transliteration, with a review item opened; a Chinese other name of a listed
person does the same; unlisted names in several scripts pass and are shown with their scripts
by ``GET``; registering again adds only the names new to the customer; without a list, the
registration works and says the names were not screened; bad input (blank, overlong, too many
names, a name that is not text) is refused with 422 and code 60 before anything is written;
migration 0015 creates exactly the declared ``customer_names`` table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sluice.domain.customer_names import NAME_LENGTH_MAX, OTHER_NAMES_MAX
from sluice.screening import ListedSanctions
from sluice.services.compliance import KycRegistry
from sluice.services.compliance_officer import review_queue
from tests.api_support import ApiWorld, api_world
from tests.conftest import reference_path
from tests.schema_check import schema_differences


@pytest.fixture(scope="module")
def sanctions() -> ListedSanctions:
    return ListedSanctions.load(reference_path("sanctions"), "full-")


@pytest.fixture
def world(database_url: str, sanctions: ListedSanctions) -> Iterator[ApiWorld]:
    built = api_world(database_url, customers=1)
    built.context.compliance = KycRegistry(built.context.compliance.settings, sanctions)
    yield built
    built.sandbox.close()


def register(world: ApiWorld, body: dict[str, Any], status: int = 201) -> Any:
    answer = world.client().post("/v1/customers", json=body, headers=world.headers("operator"))
    assert answer.status_code == status, answer.text
    return answer.json()


def test_a_customer_registered_with_the_arabic_name_of_a_listed_person_is_held(
    world: ApiWorld,
) -> None:
    created = register(world, {"id": "cust-q", "name": "قاسم سلیمانی"})
    assert (created["name_script"], created["names"]) == ("arabic", [])
    assert created["kyc"]["status"] == "under_review"
    assert "SOLEIMANI, Qasem" in created["kyc"]["status_reason"]
    screening = created["screening"]
    assert (screening["screened"], screening["status"]) == (True, "under_review")
    (match,) = screening["matches"]
    assert (match["name"], match["primary"], match["matched_name"]) == (
        "قاسم سلیمانی",
        True,
        "SOLEIMANI, Qasem",
    )
    assert match["transliteration"].startswith("Arabic consonant skeleton")
    (review,) = review_queue(world.context.uow).reviews
    assert (review.kind, review.customer_id) == ("sanctions_match", "cust-q")


def test_a_listed_person_among_the_other_names_holds_the_customer(world: ApiWorld) -> None:
    created = register(
        world, {"id": "cust-l", "name": "Frank Example", "names": ["Франк Пример", "李方伟"]}
    )
    assert created["names"] == [
        {"name": "Франк Пример", "script": "cyrillic"},
        {"name": "李方伟", "script": "han"},
    ]
    assert created["kyc"]["status"] == "under_review"
    (match,) = created["screening"]["matches"]
    assert (match["name"], match["script"], match["primary"]) == ("李方伟", "han", False)
    assert match["matched_name"] == "LI, Fangwei"
    assert match["transliteration"].startswith("pinyin")


def test_unlisted_names_pass_and_are_shown_with_their_scripts(world: ApiWorld) -> None:
    names = ["Олег Петров", "王小明", "Peter Beispiel"]
    created = register(world, {"id": "cust-u", "name": "Peter Example", "names": names})
    assert created["kyc"]["status"] == "active"
    assert created["screening"]["matches"] == []
    assert created["screening"]["names"] == ["Peter Example", *names]
    shown = world.client().get("/v1/customers/cust-u", headers=world.headers("operator")).json()
    assert shown["name_script"] == "latin"
    assert [(n["name"], n["script"]) for n in shown["names"]] == [
        ("Олег Петров", "cyrillic"),
        ("王小明", "han"),
        ("Peter Beispiel", "latin"),
    ]
    assert "screening" not in shown

    again = register(
        world, {"id": "cust-u", "name": "Peter Example", "names": ["王小明", "김민수"]}
    )
    assert again["screening"]["names"] == ["김민수"]  # only the name new to them
    assert [n["script"] for n in again["names"]] == ["cyrillic", "han", "latin", "hangul"]


def test_without_a_list_the_registration_says_the_names_were_not_screened(
    world: ApiWorld,
) -> None:
    world.context.compliance = KycRegistry(world.context.compliance.settings)
    created = register(world, {"id": "cust-n", "name": "قاسم سلیمانی", "names": ["李方伟"]})
    assert created["kyc"]["status"] == "active"
    assert created["screening"]["screened"] is False
    assert "not screened" in created["screening"]["note"]


@pytest.mark.parametrize(
    "body",
    [
        {"id": "cust-b", "name": "   "},
        {"id": "cust-b", "name": "x" * (NAME_LENGTH_MAX + 1)},
        {"id": "cust-b", "name": "Bea", "names": [" "]},
        {
            "id": "cust-b",
            "name": "Bea",
            "names": [f"Alias {n}" for n in range(OTHER_NAMES_MAX + 1)],
        },
        {"id": "cust-b", "name": "Bea", "names": [7]},
        {"id": "cust-b", "name": "Bea", "names": "Bea Example"},
    ],
    ids=["blank", "too long", "blank other", "too many", "not text", "not a list"],
)
def test_bad_names_are_refused_before_anything_is_written(
    world: ApiWorld, body: dict[str, Any]
) -> None:
    refused = register(world, body, status=422)
    assert (refused["code"], refused["error"]) == (60, "invalid_input")
    missing = world.client().get("/v1/customers/cust-b", headers=world.headers("operator"))
    assert missing.status_code == 404


def test_a_customer_cannot_be_given_more_than_the_most_other_names(world: ApiWorld) -> None:
    first = [f"Alias {n}" for n in range(OTHER_NAMES_MAX)]
    register(world, {"id": "cust-m", "name": "Many Names", "names": first})
    refused = register(
        world, {"id": "cust-m", "name": "Many Names", "names": ["One More"]}, status=422
    )
    assert refused["code"] == 60
    assert f"at most {OTHER_NAMES_MAX} other names" in refused["message"]


def test_the_migration_creates_the_declared_customer_names_table(database_url: str) -> None:
    assert schema_differences(database_url, "customer_names") == []
    assert schema_differences(database_url, "name_script") == []
