"""Name and address screening on small lists built in the test (``sluice.screening``).

Covers what a match is: reordered names, typos, a dropped middle name, transliteration (Cyrillic,
variant spellings), aliases; what is not: near misses sharing one word with a listed name, a
single common first name, a listed name with another distinctive word; the threshold; exact
address matching; the JSON lines the CLI prints; bad input.
"""

from __future__ import annotations

import json

import pytest

from sluice.domain.errors import InvalidInputError
from sluice.ports import SanctionsScreen
from sluice.screening import (
    DEFAULT_THRESHOLD,
    ListedSanctions,
    SanctionedEntity,
    SanctionsList,
    screen_to_json_lines,
)
from sluice.screening.names import normalise_name


def person(number: int, name: str, *aliases: str) -> SanctionedEntity:
    return SanctionedEntity(
        entity_id=f"test:{number}",
        name=name,
        kind="individual",
        source="test",
        aliases=aliases,
    )


def organisation(
    number: int, name: str, *aliases: str, addresses: tuple[str, ...] = ()
) -> SanctionedEntity:
    return SanctionedEntity(
        entity_id=f"test:{number}",
        name=name,
        kind="entity",
        source="test",
        aliases=aliases,
        addresses=addresses,
    )


ETH_ADDRESS = "0x2f389ce8bd8ff92de3402ffce4691d17fc4f6535"
BTC_ADDRESS = "1KUUJPkyDhamZXgpsyXqNGc3x1QPXtdhgz"

ENTITIES = (
    person(1, "KHOROSHEV, Dmitry Yuryevich", "KHOROSHEV, Dmitriy Yurevich", "LOCKBITSUPP"),
    person(2, "MALKEVICH, Alexander Aleksandrovich"),
    person(3, "MORENO, Daniel"),
    person(4, "LOGAN MOREY, Elvis Angus", "BURTON BURGESS"),
    person(5, "AL-HASSAN, Mohammed Yusuf"),
    organisation(6, "IRAN AIRCRAFT MANUFACTURING INDUSTRIAL COMPANY", "HESA"),
    organisation(7, "BANCO NACIONAL DE CUBA", "NATIONAL BANK OF CUBA"),
    organisation(8, "SUEX OTC, S.R.O.", addresses=(ETH_ADDRESS, BTC_ADDRESS)),
    # Common words elsewhere on the list, so that they weigh as little as they do on a real one.
    person(9, "SMITH, John"),
    person(10, "GARCIA, Maria"),
    person(11, "MORENO, Carlos Alberto"),
    person(12, "IVANOV, Dmitry"),
    person(13, "HASSAN, Ali"),
    organisation(14, "IRAN TRADING COMPANY"),
    organisation(15, "NATIONAL TRADING HOLDING"),
)


@pytest.fixture(scope="module")
def sanctions_list() -> SanctionsList:
    return SanctionsList.build(ENTITIES, source="test list")


@pytest.fixture
def screen(sanctions_list: SanctionsList) -> ListedSanctions:
    return ListedSanctions(sanctions_list)


def matched(screen: ListedSanctions, name: str) -> str | None:
    result = screen.screen_name(name)
    return result.entity_id if result.match else None


@pytest.mark.parametrize(
    ("query", "entity_id"),
    [
        ("Dmitry Yuryevich Khoroshev", "test:1"),  # reordered
        ("khoroshev, dmitry yuryevich", "test:1"),  # case, listed order
        ("Dmitry Khoroshev", "test:1"),  # patronymic dropped
        ("Elvis Logan Morey", "test:4"),  # middle name dropped
        ("Elvis Angus LOGAN-MOREY", "test:4"),  # punctuation
        ("Dmitri Yurievich Horoshev", "test:1"),  # spelling convention
        ("Dmitry Yuryevich Khorashev", "test:1"),  # one typo
        ("Daniel Antonio Moreno", "test:3"),  # a middle name the list does not have
        ("Dimtry Yuryevich Khorosehv", "test:1"),  # two swapped letters
        ("Малкевич Александр", "test:2"),  # Cyrillic, patronymic dropped
        ("Alexandr Malkevich", "test:2"),
        ("Muhammad Yousef Hassan", "test:5"),  # variants and the article dropped
        ("Mohamed Yusuf al Hassan", "test:5"),
        ("Burton Burgess", "test:4"),  # an alias
        ("LockBitSupp", "test:1"),
        ("National Bank of Cuba", "test:7"),
        ("Iran Aircraft Manufacturing Industrial Co.", "test:6"),
        ("Suex OTC", "test:8"),
    ],
)
def test_listed_names_written_differently_match(
    screen: ListedSanctions, query: str, entity_id: str
) -> None:
    assert matched(screen, query) == entity_id


@pytest.mark.parametrize(
    "query",
    [
        "Lucia Moreno",  # shares the surname only
        "Daniel",  # a single common first name
        "Daniel Garcia",  # a first name and a surname of two different listed people
        "Dmitry Petrov",  # shares a common first name
        "Banco Nacional de Chile",  # a listed bank's words with another distinctive word
        "Iran Aircraft Holding",  # half of a listed company's words
        "Peter Johnson",  # not on the list at all
        "Khoroshev",  # a listed surname alone
    ],
)
def test_near_misses_do_not_match(screen: ListedSanctions, query: str) -> None:
    result = screen.screen_name(query)
    assert not result.match, result


def test_an_exact_listed_name_scores_100_with_its_entity(screen: ListedSanctions) -> None:
    result = screen.screen_name("MORENO, Daniel")
    assert result.match
    assert result.score == 100.0
    assert result.entity_id == "test:3"
    assert result.matched_name == "MORENO, Daniel"


def test_a_typo_scores_below_an_exact_name_but_above_the_threshold(
    screen: ListedSanctions,
) -> None:
    exact = screen.screen_name("Dmitry Yuryevich Khoroshev").score
    typo = screen.screen_name("Dmitry Yuryevich Khorashev").score
    assert DEFAULT_THRESHOLD <= typo < exact


def test_the_threshold_decides_the_match_not_the_score(sanctions_list: SanctionsList) -> None:
    lenient = ListedSanctions(sanctions_list, threshold=DEFAULT_THRESHOLD)
    strict = ListedSanctions(sanctions_list, threshold=100.0)
    typo_lenient = lenient.screen_name("Dmitry Yuryevich Khorashev")
    typo_strict = strict.screen_name("Dmitry Yuryevich Khorashev")
    assert typo_lenient.score == typo_strict.score
    assert typo_lenient.match and not typo_strict.match
    assert strict.screen_name("Daniel Moreno").match


def test_below_the_threshold_the_closest_name_is_still_reported(screen: ListedSanctions) -> None:
    result = screen.screen_name("Lucia Moreno")
    assert not result.match
    assert result.matched_name is not None and "MORENO" in result.matched_name
    assert result.score < DEFAULT_THRESHOLD


def test_a_name_nothing_resembles_scores_zero_without_an_entity(
    screen: ListedSanctions,
) -> None:
    result = screen.screen_name("Qwxyz Vbnmkj")
    assert (result.match, result.score, result.entity_id, result.matched_name) == (
        False,
        0.0,
        None,
        None,
    )


def test_threshold_out_of_range_is_refused(sanctions_list: SanctionsList) -> None:
    with pytest.raises(ValueError, match="threshold"):
        ListedSanctions(sanctions_list, threshold=0)


@pytest.mark.parametrize("name", ["", "   ", "\n"])
def test_a_blank_name_is_invalid_input(screen: ListedSanctions, name: str) -> None:
    with pytest.raises(InvalidInputError):
        screen.screen_name(name)


def test_a_name_without_letters_or_digits_is_invalid_input(screen: ListedSanctions) -> None:
    with pytest.raises(InvalidInputError, match="letters or digits"):
        screen.screen_name("-- !! --")


def test_an_overlong_name_is_invalid_input(screen: ListedSanctions) -> None:
    with pytest.raises(InvalidInputError, match="at most"):
        screen.screen_name("A" * 5_000)


def test_listed_addresses_match_exactly(screen: ListedSanctions) -> None:
    found = screen.screen_address(BTC_ADDRESS)
    assert found is not None
    assert (found.address, found.entity_id, found.entity_name) == (
        BTC_ADDRESS,
        "test:8",
        "SUEX OTC, S.R.O.",
    )
    assert screen.screen_address(f"  {BTC_ADDRESS}\n") == found


def test_hex_addresses_match_in_any_case_other_addresses_do_not(
    screen: ListedSanctions,
) -> None:
    assert screen.screen_address(ETH_ADDRESS.upper().replace("0X", "0x")) is not None
    assert screen.screen_address(BTC_ADDRESS.lower()) is None


def test_an_unlisted_or_near_address_does_not_match(screen: ListedSanctions) -> None:
    assert screen.screen_address(BTC_ADDRESS[:-1] + "y") is None
    assert screen.screen_address(ETH_ADDRESS[:-2]) is None


def test_a_blank_address_is_invalid_input(screen: ListedSanctions) -> None:
    with pytest.raises(InvalidInputError):
        screen.screen_address(" ")


def test_the_holder_satisfies_the_sanctions_screen_port(screen: ListedSanctions) -> None:
    port: SanctionsScreen = screen
    assert port.screen_name("Daniel Moreno").match
    assert port.screen_address(ETH_ADDRESS) is not None


def test_counts_and_source_describe_the_list_in_force(screen: ListedSanctions) -> None:
    assert screen.entity_count == len(ENTITIES)
    assert screen.name_count >= len(ENTITIES) + 4  # the aliases
    assert screen.address_count == 2
    assert screen.source == "test list"
    assert screen.loaded_at.tzinfo is not None


def test_a_batch_is_screened_in_order(screen: ListedSanctions) -> None:
    results = screen.screen_names(["Daniel Moreno", "Peter Johnson", "Burton Burgess"])
    assert [result.match for result in results] == [True, False, True]
    assert [result.name for result in results] == [
        "Daniel Moreno",
        "Peter Johnson",
        "Burton Burgess",
    ]


def test_json_lines_carry_the_fields_the_cli_prints(screen: ListedSanctions) -> None:
    lines = list(screen_to_json_lines(screen, ["Dmitry Khoroshev\n", "\n", "Peter Johnson"]))
    assert len(lines) == 2  # the blank line is skipped
    first, second = (json.loads(line) for line in lines)
    assert set(first) == {"name", "match", "score", "entity_id", "matched_name"}
    assert first["name"] == "Dmitry Khoroshev"
    assert first["match"] is True
    assert first["entity_id"] == "test:1"
    assert first["score"] == round(first["score"], 1)
    assert second["match"] is False


def test_json_lines_keep_non_latin_names_readable(screen: ListedSanctions) -> None:
    (line,) = screen_to_json_lines(screen, ["Малкевич Александр"])
    assert "Малкевич" in line
    assert json.loads(line)["entity_id"] == "test:2"


def test_json_lines_refuse_a_blank_name_when_asked_to(screen: ListedSanctions) -> None:
    with pytest.raises(InvalidInputError):
        list(screen_to_json_lines(screen, [" "], skip_blank=False))


# --- Ranked candidates and bounded scores (used by the renderings of other scripts) -----------


def test_ranked_gives_the_exact_names_first_then_the_candidates_by_score(
    sanctions_list: SanctionsList,
) -> None:
    index = sanctions_list.index
    query = normalise_name(sanctions_list.entities[0].name)
    ranked = list(index.ranked(query))
    assert ranked[0].score == 100.0
    best = index.best(query)
    assert best is not None and best.name == ranked[0].name
    scores = [found.score for found in ranked]
    assert scores == sorted(scores, reverse=True)


def test_a_bound_caps_each_candidate_and_skips_those_that_cannot_beat_the_score_found(
    sanctions_list: SanctionsList,
) -> None:
    index = sanctions_list.index
    name = sanctions_list.entities[0].name
    query = normalise_name(name + " Extra")  # not exact: candidates are scored
    unbounded = index.best(query)
    assert unbounded is not None
    capped = index.best(query, bound=lambda _query, _name: 50.0)
    assert capped is not None and capped.score == min(unbounded.score, 50.0)
    assert index.best(query, bound=lambda _query, _name: 50.0, beat=50.0) is None


@pytest.mark.parametrize("floor", [0.0, 0.5, 0.75, 0.85, 1.0])
@pytest.mark.parametrize(
    "name",
    [
        "Dmitri KHOROSHEF",
        "Aleksandr Malkevitch",
        "Mohamed Yousef Hassan",
        "Elvis Morey",
        "Daniel Moreno Garcia",
        "Iran Aircraft Industries Company",
        "B. Nacional de Cuba",
        "Carlos A MORENO",
        "J Smith",
        "Ali",
    ],
)
def test_best_scores_its_candidates_as_score_tokens_does(
    sanctions_list: SanctionsList, name: str, floor: float
) -> None:
    """best() scores its candidates in batches (pair similarities once per query); ranked()
    scores each one with score_tokens: the best of either is the same name at the same score."""
    index = sanctions_list.index
    query = normalise_name(name)
    best = index.best(query, floor=floor)
    first = next(index.ranked(query, floor=floor), None)
    if first is None:
        assert best is None
    else:
        assert best is not None
        assert (best.name, best.score) == (first.name, first.score)
