"""Screening names written in other scripts (``sluice.screening.scripts``, ``.arabic``, ``.cjk``).

Covers script detection, the renderings of each script (pinyin, Revised Romanization and
McCune–Reischauer, Hepburn, Arabic consonant skeletons), and screening against the full OFAC SDN
list in ``../shared/reference/sanctions`` the names of the issue's table — written in Cyrillic,
Arabic, Persian, Chinese and Korean script, they match their listed Latin forms, and the match
says which transliteration matched. Hypothesis checks that a name listed as its own
transliteration (a list built on the fly) always matches when screened in its own script.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from anyascii import anyascii
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from sluice.domain.errors import InvalidInputError
from sluice.screening import DEFAULT_THRESHOLD, SanctionedEntity, SanctionsList, load_list
from sluice.screening.arabic import arabic_queries, covers_surname, long_vowels_agree, skeleton
from sluice.screening.cjk import (
    chinese_renderings,
    hanja_hangul,
    japanese_renderings,
    kanji_readings,
    korean_renderings,
)
from sluice.screening.names import is_stop_word
from sluice.screening.scripts import (
    ANYASCII,
    ARABIC,
    CYRILLIC,
    HAN,
    HANGUL,
    KANA,
    LATIN,
    needs_renderings,
    scripts_of,
)
from tests.conftest import reference_path


@pytest.fixture(scope="module")
def full_list() -> SanctionsList:
    return load_list(Path(reference_path("sanctions")), "full-")


def texts(renderings: tuple[object, ...]) -> set[str]:
    return {getattr(rendering, "text") for rendering in renderings}  # noqa: B009


# --- Detection --------------------------------------------------------------------------------


def test_each_script_is_detected() -> None:
    assert scripts_of("TIMCHENKO, Gennady") == {LATIN}
    assert scripts_of("Геннадий Тимченко") == {CYRILLIC}
    assert scripts_of("حسن نصر الله") == {ARABIC}
    assert scripts_of("قاسم سلیمانی") == {ARABIC}
    assert scripts_of("李方伟") == {HAN}
    assert scripts_of("김정은") == {HANGUL}
    assert scripts_of("アサハラ しょうこう") == {KANA}
    assert scripts_of("Kim 정은") == {LATIN, HANGUL}


def test_only_arabic_and_east_asian_scripts_get_renderings_of_their_own() -> None:
    assert not needs_renderings("Геннадий Тимченко")
    assert not needs_renderings("Müller & Söhne GmbH")
    assert needs_renderings("أيمن الظواهري")
    assert needs_renderings("李方伟")


# --- Renderings -------------------------------------------------------------------------------


def test_chinese_is_pinyin_without_tones_given_name_joined_and_separated() -> None:
    assert {"Fangwei Li", "Fang Wei Li"} <= texts(chinese_renderings("李方伟"))
    assert "Fangwei Li" in texts(chinese_renderings("李方偉"))  # traditional characters


def test_korean_is_revised_romanization_and_mccune_reischauer_with_customary_surnames() -> None:
    renderings = texts(korean_renderings("김정은"))
    assert {"Jong Un Kim", "Jongun Kim", "Jeong Eun Kim", "Chong Un Kim"} <= renderings
    assert {"Pyong Chol Ri", "Pyong Chol Lee"} <= texts(korean_renderings("리병철"))


def test_hanja_are_read_as_korean_with_the_surname_kim_as_names_read_it() -> None:
    assert hanja_hangul("金正恩") == "김정은"  # as a word, 金 is 금 (gold)
    assert hanja_hangul("朴正熙") == "박정희"
    assert hanja_hangul("李方伟") == "이방위"  # a Chinese name gets a Korean reading too
    # A Korean name is two to four syllables: one character or five are not read.
    assert hanja_hangul("金") is None
    assert hanja_hangul("森尾卯太男") is None


def test_japanese_is_hepburn_long_vowels_written_out_and_collapsed() -> None:
    assert {"Asahara Shoukou", "Asahara Shoko"} <= texts(japanese_renderings("アサハラ ショウコウ"))


def test_kanji_are_read_with_each_reading_the_dictionary_gives_names_too() -> None:
    # pykakasi's own reading of 高山 is Kouzan; names read it Takayama.
    assert kanji_readings("高山")[:2] == ("kouzan", "takayama")
    assert "teruaki" in kanji_readings("照明")
    assert "Takayama Kiyoshi" in texts(japanese_renderings("高山清司"))
    assert "Yamaguchi Gumi" in texts(japanese_renderings("山口組"))


def test_a_name_with_a_character_japanese_cannot_read_gets_no_japanese_rendering() -> None:
    assert japanese_renderings("成龙") == ()  # 龙 is simplified Chinese only


def test_long_vowels_written_in_arabic_script_must_be_in_the_listed_word() -> None:
    assert long_vowels_agree("قاسم سلیمانی", "SOLEIMANI, Qasem")
    assert long_vowels_agree("علی خامنه‌ای", "KHAMENEI, Ali Husseini")
    assert not long_vowels_agree("علی دایی", "DA'UD, Lu'ay")  # same skeletons: l, dd
    assert not long_vowels_agree("عمر فاروق", "OMAIRI, Farouk")  # OMAIRI writes a diphthong


def test_an_arabic_word_and_a_latin_word_of_its_skeleton_must_open_and_close_alike() -> None:
    # DIABY ends on a vowel that Arabic script would write; دياب ends on b.
    assert not long_vowels_agree("عمرو دياب", "DIABY, Omar")
    # ATA opens on a vowel, طه on a consonant (both are the skeleton t).
    assert not long_vowels_agree("رشيد طه", "RASHID, Ata Abdoulaziz")
    # أحمد opens on an alef, MOHAMMAD on m: skeletons only alike (hmd, mhmd) are checked too.
    assert not long_vowels_agree("أحمد شوقي", "SHWEIKI, Mohammad Amer")
    assert long_vowels_agree("يحيى السنوار", "SINWAR, Yahya")
    assert long_vowels_agree("إسماعيل هنية", "HANIYEH, Ismail")


def test_the_second_part_of_an_abd_compound_is_not_checked_as_a_word_opening() -> None:
    # عبداللهی is ABDOLLAHI: its اللهی does not open a Latin word.
    assert long_vowels_agree("علی عبداللهی", "ABDOLLAHI, Ali")


def test_a_long_vowel_must_stand_between_the_same_consonants_in_the_listed_word() -> None:
    # محمود writes its long u between m and d; MUHAMMAD has an a there (both m-h-m-d).
    assert not long_vowels_agree("محمود عباس", "ABBAS, Muhammad")
    assert long_vowels_agree("محمود نیکوسخن", "NIKOUSOKHAN, Mahmoud")
    assert long_vowels_agree("محمد صلاح", "SALAH, Muhammad")
    assert not long_vowels_agree("محمد صلاح", "SYAWAL, Muhammad")  # no long a after s-l


def test_a_skeleton_query_must_hold_the_listed_surname() -> None:
    (karim_mansur,) = arabic_queries("كريم منصور")
    assert not covers_surname(karim_mansur, "AL-GHANIMI, Karim Mansur", 0.8)
    (ali_baghdadi,) = arabic_queries("علي البغدادي")
    assert covers_surname(ali_baghdadi, "AL BAGHDADI, Ali Al-Mahmoudi", 0.8)
    assert covers_surname(karim_mansur, "KARIM MANSUR TRADING", 0.8)  # no surname to hold


def test_arabic_skeletons_agree_with_the_listed_latin_forms() -> None:
    assert skeleton("zawahiri") == "zhr"
    assert skeleton("soleimani") == skeleton("sulaymani") == "slmn"
    assert skeleton("ali") == "l_"  # marked: not an initial
    assert skeleton("leila") == "ll"  # two consonants, not one doubled
    assert skeleton("wali") == "wl"  # an initial w is a consonant
    (as_written,) = arabic_queries("أيمن الظواهري")
    assert as_written.tokens == ("mn", "zhr")
    queries = arabic_queries("حسن نصر الله")
    assert [query.tokens for query in queries] == [("hsn", "nsr", "l_"), ("hsn", "nsrl")]


# --- Screening against the full list: the table ---------------------------------------


@pytest.mark.parametrize(
    ("query", "listed", "rendering"),
    [
        ("Геннадий Тимченко", "TIMCHENKO, Gennady", ANYASCII),
        ("أيمن الظواهري", "AL ZAWAHIRI, Dr. Ayman", "Arabic consonant skeleton"),
        ("حسن نصر الله", "NASRALLAH, Hasan", "Arabic consonant skeleton"),
        ("قاسم سلیمانی", "SOLEIMANI, Qasem", "Arabic consonant skeleton"),
        ("李方伟", "LI, Fangwei", "pinyin"),
        ("김정은", "KIM, Jong Un", "McCune-Reischauer"),
        ("최룡해", "CHOE, Ryong Hae", "McCune-Reischauer"),
        # Korean names written in hanja: read as Korean (金 as a surname is 김, Kim).
        ("金正恩", "KIM, Jong Un", "Sino-Korean reading (김정은)"),
        ("崔龍海", "CHOE, Ryong Hae", "Sino-Korean reading (최룡해)"),
    ],
)
def test_a_name_in_its_own_script_matches_its_listed_latin_form(
    full_list: SanctionsList, query: str, listed: str, rendering: str
) -> None:
    found = full_list.find_name(query)
    assert found is not None
    assert found.matched_name == listed
    assert found.score >= DEFAULT_THRESHOLD
    assert found.rendering.startswith(rendering)


@pytest.mark.parametrize("query", ["王小明", "박지성", "Лев Толстой", "فيروز"])
def test_unlisted_names_in_other_scripts_do_not_match(full_list: SanctionsList, query: str) -> None:
    found = full_list.find_name(query)
    assert found is None or found.score < DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    "query",
    [
        "عمرو دياب",  # Amr Diab: the consonants of DIABY, Omar
        "كريم منصور",  # Karim Mansur: two given names of AL-GHANIMI, Karim Mansur
        "رشيد طه",  # Rashid Taha: Taha and Ata (RASHID, Ata Abdoulaziz) are both t
        "محمود عباس",  # Mahmoud Abbas: Mahmoud and Muhammad (ABBAS, Muhammad) both m-h-m-d
    ],
)
def test_an_arabic_name_sharing_only_consonants_with_a_listed_name_does_not_match(
    full_list: SanctionsList, query: str
) -> None:
    found = full_list.find_name(query)
    assert found is None or found.score < DEFAULT_THRESHOLD


@pytest.mark.parametrize(
    ("query", "listed"),
    [
        ("高山清司", "TAKAYAMA, Kiyoshi"),
        ("竹内照明", "TAKEUCHI, Teruaki"),
        ("山口組", "YAMAGUCHI-GUMI"),
    ],
)
def test_a_japanese_name_in_kanji_matches_through_the_reading_names_take(
    full_list: SanctionsList, query: str, listed: str
) -> None:
    found = full_list.find_name(query)
    assert found is not None and found.score >= DEFAULT_THRESHOLD
    assert found.matched_name == listed
    assert found.rendering.startswith("Hepburn")


@pytest.mark.parametrize(
    "query",
    [
        "박찬호",  # Chan Ho Pak: PAK, Chang-Ho is one syllable off (찬 Chan, 창 Chang)
        "김철수",  # Chol Su Kim: KIM, Chol has one syllable less
        "成龙",  # Cheng Long: not SEI (成's Japanese reading alone)
    ],
)
def test_an_east_asian_name_a_syllable_off_a_listed_name_does_not_match(
    full_list: SanctionsList, query: str
) -> None:
    found = full_list.find_name(query)
    assert found is None or found.score < DEFAULT_THRESHOLD


def test_a_listed_name_set_aside_by_its_vowels_leaves_room_for_the_next(
    full_list: SanctionsList,
) -> None:
    # ABOU SALMAN has ایوب سلیمانی's skeletons exactly (b, slmn) but not its vowels.
    found = full_list.find_name("ایوب سلیمانی")
    assert found is not None and found.score >= DEFAULT_THRESHOLD
    assert found.matched_name == "SOLEIMANI, Ayoub"


def test_latin_names_are_screened_as_before(full_list: SanctionsList) -> None:
    found = full_list.find_name("Ayman al-Zawahiri")
    assert found is not None and found.rendering == ANYASCII
    assert found.matched_name == "AL ZAWAHIRI, Dr. Ayman"


# --- Property: a name listed as its own transliteration matches --------------------------------

ARABIC_LETTERS = "بتجحدرزسشصطعفقكلمنهوي"
HANGUL_SYLLABLES = [chr(code) for code in range(0xAC00, 0xD7A4, 97)]
HAN_CHARACTERS = "王李张刘陈杨黄赵周吴徐孙马朱胡郭何林高罗明华伟芳军国建平文志海"


def one_entity(name: str) -> SanctionsList:
    entity = SanctionedEntity(entity_id="test:1", name=name, kind="individual", source="test")
    filler = SanctionedEntity(
        entity_id="test:2", name="NORTHWIND, Charlotte", kind="individual", source="test"
    )
    return SanctionsList.build([entity, filler], source="test")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.text(alphabet=ARABIC_LETTERS, min_size=3, max_size=6), min_size=2, max_size=3))
def test_an_arabic_name_listed_as_its_own_transliteration_matches_it(words: list[str]) -> None:
    assume("عبد" not in words)  # written "abdul" on purpose: the lists' canonical form
    # Written as a list writes it: each letter through anyascii, short vowels between them.
    listed_words = ["a".join(anyascii(letter) for letter in word) for word in words]
    assume(not any(is_stop_word(word.lower()) for word in listed_words))  # "BHD" is Berhad
    listed = " ".join(word.upper() for word in listed_words)
    found = one_entity(listed).find_name(" ".join(words))
    assert found is not None and found.score >= DEFAULT_THRESHOLD


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(HANGUL_SYLLABLES), min_size=2, max_size=3),
    st.sampled_from(["Kim", "Pak", "Ri"]),
)
def test_a_korean_name_listed_in_its_romanisation_matches_it(
    given_syllables: list[str], surname: str
) -> None:
    hangul_surname = {"Kim": "김", "Pak": "박", "Ri": "리"}[surname]
    query = hangul_surname + "".join(given_syllables)
    rendering = korean_renderings(query)[0].text  # "Given Syllables Surname"
    *given, _ = rendering.split()
    found = one_entity(f"{surname.upper()}, {' '.join(given)}").find_name(query)
    assert found is not None and found.score >= DEFAULT_THRESHOLD


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=HAN_CHARACTERS, min_size=2, max_size=3))
def test_a_chinese_name_listed_in_pinyin_matches_it(characters: str) -> None:
    rendering = chinese_renderings(characters)[0].text  # "Givenname Surname"
    given_name, surname = rendering.rsplit(" ", 1)
    found = one_entity(f"{surname.upper()}, {given_name}").find_name(characters)
    assert found is not None and found.score >= DEFAULT_THRESHOLD


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(HANGUL_SYLLABLES), min_size=2, max_size=3),
    st.sampled_from(["Kim", "Pak", "Ri"]),
    st.data(),
)
def test_a_korean_name_listed_in_any_of_its_romanisations_matches_it(
    given_syllables: list[str], surname: str, data: st.DataObject
) -> None:
    query = {"Kim": "김", "Pak": "박", "Ri": "리"}[surname] + "".join(given_syllables)
    rendering = data.draw(st.sampled_from(korean_renderings(query)))
    *given, listed_surname = rendering.text.split()
    found = one_entity(f"{listed_surname.upper()}, {' '.join(given)}").find_name(query)
    assert found is not None and found.score >= DEFAULT_THRESHOLD


@settings(max_examples=40, deadline=None)
@given(st.text(alphabet=HAN_CHARACTERS, min_size=2, max_size=4), st.data())
def test_a_chinese_name_listed_in_any_of_its_renderings_matches_it(
    characters: str, data: st.DataObject
) -> None:
    rendering = data.draw(st.sampled_from(chinese_renderings(characters)))
    given_name, surname = rendering.text.rsplit(" ", 1)
    found = one_entity(f"{surname.upper()}, {given_name}").find_name(characters)
    assert found is not None and found.score >= DEFAULT_THRESHOLD


KANA_SYLLABLES = list(
    "かきくけこさしすせそたちつてとなにぬねのはひふへほまみむめもやゆよらりるれろわ"
)
KANJI_WORDS = [
    "山田",
    "高山",
    "田中",
    "中村",
    "小林",
    "竹内",
    "山口",
    "清司",
    "太郎",
    "照明",
    "和也",
]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.sampled_from(KANA_SYLLABLES), min_size=2, max_size=4),
    st.lists(st.sampled_from(KANA_SYLLABLES), min_size=2, max_size=3),
)
def test_a_japanese_name_in_kana_listed_in_hepburn_matches_it(
    surname: list[str], given_name: list[str]
) -> None:
    query = f"{''.join(surname)} {''.join(given_name)}"
    listed_surname, listed_given = japanese_renderings(query)[0].text.split()
    found = one_entity(f"{listed_surname.upper()}, {listed_given}").find_name(query)
    assert found is not None and found.score >= DEFAULT_THRESHOLD


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(KANJI_WORDS), st.sampled_from(KANJI_WORDS), st.data())
def test_a_japanese_name_in_kanji_listed_in_any_of_its_readings_matches_it(
    surname: str, given_name: str, data: st.DataObject
) -> None:
    query = surname + given_name
    reading = data.draw(st.sampled_from(japanese_renderings(query)))
    words = reading.text.split()
    assume(len(words) == 2)
    found = one_entity(f"{words[0].upper()}, {words[1]}").find_name(query)
    assert found is not None and found.score >= DEFAULT_THRESHOLD
    assert found.rendering.startswith("Hepburn")


MIXED_SCRIPTS = st.one_of(
    st.characters(min_codepoint=0x600, max_codepoint=0x6FF),
    st.characters(min_codepoint=0x4E00, max_codepoint=0x4EFF),
    st.characters(min_codepoint=0xAC00, max_codepoint=0xACFF),
    st.characters(min_codepoint=0x3040, max_codepoint=0x30FF),
    st.sampled_from(" -,.\u200cـ'ーA"),
)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=MIXED_SCRIPTS, min_size=1, max_size=12))
def test_any_text_in_these_scripts_screens_without_an_error_or_is_refused_as_input(
    text: str,
) -> None:
    screened = one_entity("NASRALLAH, Hasan")
    try:
        found = screened.find_name(text)
    except InvalidInputError:
        return
    assert found is None or 0 <= found.score <= 100
