"""Chinese, Korean and Japanese names in Latin letters, the ways the lists write them.

* **Chinese**: pypinyin reads each character (tones dropped). The first character is the
  surname (the first two for a four-character name — the compound surnames); the given name's
  syllables are written joined (``LI, Fangwei``) and separated (``LI Fang Wei``), in pinyin and,
  where it differs, Wade–Giles.
* **Korean**: korean-romanizer gives each syllable's Revised Romanization (syllable by syllable:
  a name's syllables are not assimilated across). Lists mostly write McCune–Reischauer, often as
  North Korea does (``KIM Jong Un``, ``CHOE Ryong Hae``, ``PAK Jong Chon``), so each given-name
  syllable also gets those vowels (``eo``→``o``, ``eu``→``u``) and, for McCune–Reischauer, the
  unvoiced initials (``g``→``k``, ``d``→``t``, ``b``→``p``, ``j``→``ch``), and the customary
  ``eo``→``u`` many people write (``Jung``, ``Sung``, ``Hyun``). Surnames take their
  customary spellings (``김`` → Kim, ``이``/``리`` → Lee, Yi, Ri, Rhee, ``박`` → Park, Pak).
  Syllables are joined and separated (a hyphen separates words for screening).
  A Korean name written in hanja (金正恩) is read as Korean too: the hanja library gives each
  character's Sino-Korean reading (김정은 after the surname 金, which names read 김 where the
  word reads 금), and the Hangul is then rendered as above.
* **Japanese**: pykakasi's Hepburn for kana and kanji, long vowels written out
  (``shoukou``) and collapsed (``shoko``), as passports and lists write them. A kanji word is
  read with each reading pykakasi's dictionary lists for it, not only the first: names take
  readings that words do not (高山 is Kouzan as a word, Takayama as a name).

A rendering is spelt as the lists spell it, so a letter apart from a listed name is another
syllable, not a typo: the whole-name comparison that bounds a rendering's score charges two
letters for each edit (:func:`whole_name_score`).

Everything is a pure function of the text; each rendering is labelled with its system.
"""

from __future__ import annotations

import itertools
import re
from functools import lru_cache
from typing import Any

from korean_romanizer.romanizer import Romanizer
from rapidfuzz.distance import Levenshtein

from sluice.screening.index import IndexedName
from sluice.screening.names import NormalisedName
from sluice.screening.scripts import HAN, HANGUL, KANA, Rendering, script_of

PINYIN = "pinyin"
WADE_GILES = "Wade-Giles"
REVISED_ROMANIZATION = "Revised Romanization"
MCCUNE_REISCHAUER = "McCune-Reischauer"
NORTH_KOREAN = "McCune-Reischauer (North Korean lists)"
CUSTOMARY = "customary Korean spelling"
HEPBURN = "Hepburn"
SINO_KOREAN = "Sino-Korean reading"
RENDERINGS_MAX = 32
"""The most renderings one name gets (each is screened)."""
KANJI_READINGS_MAX = 4
"""The most readings of one kanji word tried (pykakasi's dictionary lists up to a dozen)."""
JAPANESE_READINGS_MAX = 8
"""The most combinations of the words' readings tried for one name."""
LETTER_EDIT_COST = 2.0
"""What one letter edit costs a rendering against a listed name, in letters (see
:func:`whole_name_score`)."""

# Customary spellings of the most common Korean surnames (the official romanisation, "Gim",
# is not how anyone writes Kim). A surname not here is written by its syllable's forms.
_KOREAN_SURNAMES: dict[str, tuple[str, ...]] = {
    "김": ("Kim",),
    "이": ("Lee", "Yi", "Ri", "Rhee"),
    "리": ("Ri", "Lee", "Yi"),
    "박": ("Park", "Pak"),
    "최": ("Choe", "Choi"),
    "정": ("Jong", "Jung", "Chong", "Jeong"),
    "강": ("Kang",),
    "조": ("Jo", "Cho"),
    "윤": ("Yun", "Yoon"),
    "장": ("Jang", "Chang"),
    "임": ("Lim", "Im", "Rim"),
    "림": ("Rim", "Lim"),
    "한": ("Han",),
    "오": ("O", "Oh"),
    "신": ("Sin", "Shin"),
    "권": ("Kwon", "Kwan"),
    "황": ("Hwang",),
    "송": ("Song",),
    "전": ("Jon", "Jeon", "Chon"),
    "홍": ("Hong",),
    "고": ("Ko", "Go"),
    "문": ("Mun", "Moon"),
    "양": ("Yang",),
    "손": ("Son",),
    "배": ("Pae", "Bae"),
    "백": ("Paek", "Baek"),
    "허": ("Ho", "Heo"),
    "유": ("Yu", "Yoo"),
    "류": ("Ryu", "Yu"),
    "노": ("No", "Roh"),
    "로": ("Ro",),
    "심": ("Sim", "Shim"),
    "안": ("An", "Ahn"),
    "현": ("Hyon", "Hyun"),
    "주": ("Ju", "Chu"),
    "차": ("Cha",),
    "구": ("Ku", "Koo"),
    "서": ("So", "Seo"),
    "명": ("Myong", "Myung"),
    "방": ("Pang", "Bang"),
    "태": ("Thae", "Tae"),
}
# A Korean name is two to four syllables; hanja read as Korean only for names of that length.
_HANJA_NAME_LENGTHS = range(2, 5)
# The surname 金 is read 김 (Kim); as a word it is 금 (gold), the library's reading.
_HANJA_SURNAME_READINGS = {"金": "김"}
_UNVOICED_INITIALS = (("g", "k"), ("d", "t"), ("b", "p"), ("j", "ch"))
_LONG_VOWELS = re.compile(r"ou|oo|uu|aa|ii|ee")


def _unique(renderings: list[Rendering]) -> tuple[Rendering, ...]:
    seen: set[str] = set()
    kept: list[Rendering] = []
    for rendering in renderings:
        key = rendering.text.casefold()
        if key not in seen:
            seen.add(key)
            kept.append(rendering)
    return tuple(kept[:RENDERINGS_MAX])


def _letters_of(text: str, script: str) -> str:
    return "".join(character for character in text if script_of(character) == script)


def _given_forms(syllables: list[str]) -> tuple[str, ...]:
    """Given-name syllables joined and separated, capitalised as lists write them."""
    if not syllables:
        return ("",)
    joined = "".join(syllables).capitalize()
    separated = " ".join(syllable.capitalize() for syllable in syllables)
    return (joined, separated) if len(syllables) > 1 else (joined,)


def _name(given: str, surname: str) -> str:
    """Natural order (given name first), as screening reads an uncommaed name."""
    return f"{given} {surname}".strip()


# --- Chinese --------------------------------------------------------------------------------


def chinese_renderings(text: str) -> tuple[Rendering, ...]:
    """Pinyin (and Wade–Giles) renderings of the Han characters of ``text``."""
    characters = _letters_of(text, HAN)
    if not characters:
        return ()
    surname_length = 2 if len(characters) == 4 else 1
    renderings: list[Rendering] = []
    # Imported on first use: pypinyin loads its dictionaries when imported (about half a
    # second), which a list without Chinese queries need not wait for.
    from pypinyin import Style, lazy_pinyin

    for system, style in ((PINYIN, Style.NORMAL), (WADE_GILES, Style.WADEGILES)):
        syllables = [
            syllable.replace("'", "").replace("-", "")
            for syllable in lazy_pinyin(characters, style=style, errors="ignore")
        ]
        if not syllables:
            continue
        surname = "".join(syllables[:surname_length]).capitalize()
        for given in _given_forms(syllables[surname_length:]):
            renderings.append(Rendering(system, _name(given, surname)))
    return _unique(renderings)


# --- Korean ---------------------------------------------------------------------------------


@lru_cache(maxsize=4_096)
def revised_romanization(syllable: str) -> str:
    """One Hangul syllable in Revised Romanization (korean-romanizer)."""
    return str(Romanizer(syllable).romanize()).strip().lower()


def _north_korean(syllable: str) -> str:
    """RR vowels as McCune–Reischauer writes them without breves (``eo``→``o``, ``eu``→``u``)."""
    return syllable.replace("eo", "o").replace("eu", "u")


def _customary(syllable: str) -> str:
    """The spelling many people choose for ``eo`` after a consonant: ``u`` (Jung, Sung,
    Hyun), with ``eu`` as ``u`` too."""
    return re.sub(r"(?<=[^aeiouy])eo", "u", syllable).replace("eu", "u")


def _mccune_reischauer(syllable: str) -> str:
    """The North Korean form with McCune–Reischauer's unvoiced initial consonant."""
    syllable = _north_korean(syllable)
    for voiced, unvoiced in _UNVOICED_INITIALS:
        if syllable.startswith(voiced):
            return unvoiced + syllable[len(voiced) :]
    return syllable


def korean_renderings(text: str) -> tuple[Rendering, ...]:
    """RR, McCune–Reischauer and North Korean renderings of the Hangul of ``text``."""
    words = [_letters_of(word, HANGUL) for word in text.split()]
    words = [word for word in words if word]
    if not words:
        return ()
    if len(words) >= 2 and len(words[0]) == 1:
        surname_syllable, given_syllables = words[0], "".join(words[1:])
    else:
        joined = "".join(words)
        surname_syllable, given_syllables = joined[0], joined[1:]
    romanized = [revised_romanization(syllable) for syllable in given_syllables]
    surname_romanized = revised_romanization(surname_syllable)
    surnames = _KOREAN_SURNAMES.get(
        surname_syllable,
        (
            surname_romanized,
            _north_korean(surname_romanized),
            _mccune_reischauer(surname_romanized),
        ),
    )
    renderings: list[Rendering] = []
    for system, convert in (
        (NORTH_KOREAN, _north_korean),
        (REVISED_ROMANIZATION, lambda syllable: syllable),
        (MCCUNE_REISCHAUER, _mccune_reischauer),
        (CUSTOMARY, _customary),
    ):
        syllables = [convert(syllable) for syllable in romanized]
        for given in _given_forms(syllables):
            for surname in surnames:
                renderings.append(Rendering(system, _name(given, surname.capitalize())))
    return _unique(renderings)


def hanja_hangul(text: str) -> str | None:
    """The Sino-Korean reading (in Hangul) of a name written in hanja, or ``None`` when
    ``text`` is not two to four Han characters or one of them has no reading."""
    characters = _letters_of(text, HAN)
    if len(characters) not in _HANJA_NAME_LENGTHS:
        return None
    # Imported on first use, as pypinyin is (its dictionary loads at import).
    import hanja

    surname = _HANJA_SURNAME_READINGS.get(characters[0])
    hangul = str(hanja.translate(characters, "substitution"))
    if surname is not None:
        hangul = surname + hangul[1:]
    if len(hangul) != len(characters) or any(script_of(c) != HANGUL for c in hangul):
        return None
    return hangul


def sino_korean_renderings(text: str) -> tuple[Rendering, ...]:
    """The Korean renderings of the Sino-Korean reading of a name written in hanja."""
    hangul = hanja_hangul(text)
    if hangul is None:
        return ()
    return tuple(
        Rendering(f"{SINO_KOREAN} ({hangul}), {rendering.system}", rendering.text)
        for rendering in korean_renderings(hangul)
    )


# --- Japanese -------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _kakasi() -> Any:
    """pykakasi's converter, its dictionaries loaded on first use (once per process)."""
    import pykakasi

    return pykakasi.kakasi()  # type: ignore[no-untyped-call]


@lru_cache(maxsize=1)
def _kanji_readings_table() -> Any:
    """pykakasi's kanji dictionary (kanwadict: each kanji word's readings, most common first),
    or None when this pykakasi does not have it where 2.3 keeps it."""
    try:
        from pykakasi.kanji import Kanwa
    except ImportError:  # pragma: no cover - another pykakasi layout
        return None
    return Kanwa()  # type: ignore[no-untyped-call]


@lru_cache(maxsize=4_096)
def _hepburn(kana: str) -> str:
    """Kana in Hepburn (pykakasi), "" when any of it cannot be read."""
    words = [str(item["hepburn"]) for item in _kakasi().convert(kana)]
    written = "".join(words)
    return written if written.isascii() and written.isalpha() else ""


def kanji_readings(word: str) -> tuple[str, ...]:
    """The readings pykakasi's dictionary gives a kanji word, in Hepburn, its own first.

    pykakasi reads a word with the first reading its dictionary lists, often a word's
    Sino-Japanese reading (高山 Kouzan, 照明 Shoumei, 組 Kumi); the dictionary also lists the
    readings names take (Takayama, Teruaki, Gumi), so each is tried, at most
    :data:`KANJI_READINGS_MAX` of them."""
    table = _kanji_readings_table()
    entries = table.load(word[0]) if table is not None else None
    readings = [kana for kana, context in (entries or {}).get(word, ()) if context is None]
    found: list[str] = []
    for kana in readings:
        written = _hepburn(kana)
        if written and written not in found:
            found.append(written)
        if len(found) == KANJI_READINGS_MAX:
            break
    return tuple(found)


@lru_cache(maxsize=1_024)
def japanese_renderings(text: str) -> tuple[Rendering, ...]:
    """Hepburn renderings (pykakasi) of the kana and kanji of ``text``: each word's readings
    (see :func:`kanji_readings`), long vowels written out and collapsed. None when a character
    has no reading (a Chinese character Japanese does not use)."""
    kept = "".join(
        character if script_of(character) in (HAN, KANA) or character == "ー" else " "
        for character in text
    )
    if not kept.strip():
        return ()
    choices: list[tuple[str, ...]] = []
    for item in _kakasi().convert(kept):
        original, written = str(item["orig"]).strip(), str(item["hepburn"]).strip()
        if not original:
            continue
        if not (written.isascii() and written.replace(" ", "").isalpha()):
            return ()
        readings = kanji_readings(original) if script_of(original[0]) == HAN else ()
        choices.append((written, *(reading for reading in readings if reading != written)))
    if not choices:
        return ()
    renderings: list[Rendering] = []
    for words in itertools.islice(itertools.product(*choices), JAPANESE_READINGS_MAX):
        long_form = " ".join(word.capitalize() for word in words)
        short_form = " ".join(
            _LONG_VOWELS.sub(lambda found: found.group(0)[0], word).capitalize() for word in words
        )
        # The collapsed form first: lists write Kudo, not Kudou (工藤会 is KUDO-KAI; KOUDOU-KAI,
        # another group, has the long form's spelling key).
        renderings.extend((Rendering(HEPBURN, short_form), Rendering(HEPBURN, long_form)))
    return _unique(renderings)


def whole_name_score(query: NormalisedName, name: IndexedName) -> float:
    """0–100: how alike a rendered name and a listed name are as wholes, spaces removed.

    An East Asian name has no middle name to drop: every syllable is the name. The index's
    score forgives unmatched words on the longer side (``Hung Min SON`` against ``SON, Min``),
    so a rendering's score is also bounded by this comparison of the whole names: the tokens
    sorted and joined, or in their natural orders (given name first or surname first).
    """
    query_sorted = "".join(sorted(query.tokens))
    name_sorted = "".join(sorted(name.tokens))
    surname_first = "".join(query.tokens[-1:] + query.tokens[:-1])
    return 100 * max(
        _letters_alike(query_sorted, name_sorted),
        _letters_alike(query.joined, name.joined),
        _letters_alike(surname_first, name.joined),
    )


def _letters_alike(left: str, right: str) -> float:
    """0–1: one less, per letter edit, by :data:`LETTER_EDIT_COST` over the longer's length.

    A rendering is spelt in the system the lists use, so a letter apart is another syllable
    (찬 Chan and 창 Chang), not a typo: an edit costs twice what it costs a name typed in
    Latin letters."""
    if left == right:
        return 1.0
    longer = max(len(left), len(right))
    return max(0.0, 1 - LETTER_EDIT_COST * Levenshtein.distance(left, right) / longer)


@lru_cache(maxsize=4_096)
def east_asian_renderings(text: str, scripts: frozenset[str]) -> tuple[Rendering, ...]:
    """The renderings for the East Asian scripts among ``scripts``."""
    renderings: list[Rendering] = []
    if HANGUL in scripts:
        renderings.extend(korean_renderings(text))
    if KANA in scripts:
        renderings.extend(japanese_renderings(text))
    elif HAN in scripts:
        renderings.extend(chinese_renderings(text))
        renderings.extend(japanese_renderings(text))
        renderings.extend(sino_korean_renderings(text))
    return tuple(renderings)
