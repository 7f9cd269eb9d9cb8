"""Name normalisation for sanctions screening (``sluice.screening.names``).

Covers transliteration and case folding, punctuation and acronyms, the ``LAST, First`` order of
the lists, stop words (legal forms, titles, the Arabic article), the table of transliteration
variants and the spelling key — with examples from the SDN list, and with hypothesis for the
properties every name must keep (order does not matter, case does not matter, never a crash).
"""

from __future__ import annotations

import string

from hypothesis import given
from hypothesis import strategies as st

from sluice.screening.names import (
    canonical_token,
    fold,
    is_stop_word,
    name_orders,
    normalise_name,
    transliterate,
)


def tokens(name: str) -> tuple[str, ...]:
    return normalise_name(name).tokens


def test_cyrillic_and_diacritics_are_transliterated_to_ascii() -> None:
    assert transliterate("Малкевич Александр") == "Malkevich Aleksandr"
    assert fold("José MÜLLER-Lüdenscheidt") == "jose muller ludenscheidt"


def test_cyrillic_name_has_the_same_tokens_as_its_listed_latin_form() -> None:
    cyrillic = normalise_name("Малкевич Александр Александрович")
    listed = normalise_name("MALKEVICH, Alexander Aleksandrovich", ordered_last_first=True)
    assert cyrillic.sorted_key == listed.sorted_key


def test_soft_sign_and_apostrophes_do_not_split_a_word() -> None:
    assert tokens("Дмитрий Юрьевич") == tokens("Dmitriy Yurevich")
    assert fold("D'S SUPERMARKET") == "ds supermarket"


def test_dotted_acronyms_become_one_word_and_other_punctuation_separates() -> None:
    assert fold("SUEX OTC, S.R.O.") == "suex otc sro"
    assert fold("AIRCRAFT, AVIONICS, PARTS & SUPPORT LTD.") == (
        "aircraft avionics parts and support ltd"
    )


def test_last_first_order_gives_the_natural_order_first() -> None:
    assert name_orders("MORENO, Daniel") == ("Daniel MORENO", "MORENO Daniel")
    assert name_orders("LOGAN MOREY, Elvis Angus") == (
        "Elvis Angus LOGAN MOREY",
        "LOGAN MOREY Elvis Angus",
    )


def test_generational_suffix_after_a_second_comma_stays_with_the_first_names() -> None:
    assert name_orders("DELOS REYES, Feliciano Semborio, Jr.")[0] == (
        "Feliciano Semborio Jr. DELOS REYES"
    )


def test_a_company_with_several_commas_keeps_its_order() -> None:
    name = "AIRCRAFT, AVIONICS, PARTS & SUPPORT LTD."
    assert name_orders(name) == (name,)


def test_listed_order_and_natural_order_have_the_same_tokens() -> None:
    listed = normalise_name("KHOROSHEV, Dmitry Yuryevich", ordered_last_first=True)
    natural = normalise_name("Dmitry Yuryevich Khoroshev")
    assert listed.tokens == natural.tokens
    assert listed.folded == "dmitry yuryevich khoroshev"


def test_a_company_name_with_one_comma_is_not_reordered_when_told_so() -> None:
    normalised = normalise_name("SUEX OTC, S.R.O.", ordered_last_first=False)
    assert normalised.folded == "suex otc sro"
    assert normalised.tokens == tokens("Suex OTC")


def test_legal_forms_are_set_aside_as_words_and_as_phrases() -> None:
    normalised = normalise_name("TNK TRADING INTERNATIONAL S.A.")
    assert "sa" in normalised.set_aside
    assert tokens("Rosneft Open Joint Stock Company") == tokens("ROSNEFT")
    assert tokens("Mahan Air LLC") == tokens("MAHAN AIR")


def test_a_legal_form_misspelt_by_a_letter_is_still_a_stop_word() -> None:
    assert is_stop_word("compny")
    assert is_stop_word("limted")
    assert not is_stop_word("compania")
    assert tokens("KHALIDI COMPNY") == tokens("KHALIDI COMPANY")


def test_a_name_of_nothing_but_stop_words_keeps_them() -> None:
    assert tokens("THE COMPANY") != ()


def test_the_arabic_article_as_a_separate_word_is_set_aside() -> None:
    assert tokens("AL-HASSAN, Ali") == tokens("Ali Hassan")
    assert tokens("Abd al-Rahman") == tokens("Abdul Rahman")


def test_hajji_and_sheikh_stay_because_they_are_surnames_on_the_lists() -> None:
    assert len(tokens("Muhammad HAJJI")) == 2


def test_transliteration_variants_share_one_canonical_token() -> None:
    for group in (
        ("mohammed", "muhammad", "mohamad", "mohamed"),
        ("alexander", "aleksandr", "alexandr"),
        ("yusuf", "yousef", "youssef"),
        ("dmitry", "dmitriy", "dmitrii"),
        ("hussein", "husain", "hossein"),
    ):
        assert len({canonical_token(variant) for variant in group}) == 1, group


def test_spelling_key_evens_out_systematic_differences() -> None:
    assert canonical_token("mikhailov") == canonical_token("mihailov")
    assert canonical_token("maksimov") == canonical_token("maximov")
    assert canonical_token("philippov") == canonical_token("filipov")
    assert canonical_token("boutros") == canonical_token("butros")


def test_the_spelling_as_written_is_kept_next_to_the_canonical_token() -> None:
    normalised = normalise_name("Mohammed")
    assert normalised.tokens == (canonical_token("muhammad"),)
    assert normalised.spellings[0] != normalised.tokens[0]


def test_different_names_stay_different() -> None:
    assert tokens("Daniel Moreno") != tokens("Lucia Moreno")
    assert canonical_token("hassan") != canonical_token("hussein")


_words = st.text(alphabet=string.ascii_letters, min_size=1, max_size=12)


@given(st.lists(_words, min_size=1, max_size=5), st.randoms(use_true_random=False))
def test_word_order_never_changes_the_sorted_key(words: list[str], rng: object) -> None:
    shuffled = list(words)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    assert normalise_name(" ".join(words)).sorted_key == (
        normalise_name(" ".join(shuffled)).sorted_key
    )


@given(st.lists(_words, min_size=1, max_size=5))
def test_case_never_changes_the_tokens(words: list[str]) -> None:
    name = " ".join(words)
    assert normalise_name(name.upper()).tokens == normalise_name(name.lower()).tokens


@given(st.text(max_size=80))
def test_any_text_normalises_to_lowercase_ascii_tokens(text: str) -> None:
    normalised = normalise_name(text)
    for token in normalised.tokens:
        assert token
        assert token.isascii()
        assert token == token.lower()
        assert token.isalnum()
