"""Which scripts a name is written in, and the Latin renderings screening tries for it.

The lists write names in Latin letters. A name written in another script is screened through
one or more Latin *renderings*, each labelled with the transliteration that produced it, and the
best-scoring rendering is the result (its label is the explanation of a match):

* **Latin, Cyrillic, Greek** (and anything else): one rendering, anyascii's — exactly what
  screening did before scripts were told apart.
* **Arabic and Persian**: anyascii's rendering, and the consonant skeletons of
  :mod:`sluice.screening.arabic`, compared with the skeletons of the listed names.
* **Chinese** (Han characters): pinyin without tones (pypinyin), surname first, the given name's
  syllables joined and separated, and Wade–Giles where it differs; Han characters are also read
  as Japanese (pykakasi), since Japanese names use them too.
* **Korean** (Hangul): Revised Romanization (korean-romanizer), a McCune–Reischauer-like form and
  the North Korean lists' form, syllables joined and separated, common surname spellings.
* **Japanese** (kana, with or without kanji): Hepburn through pykakasi, long vowels written out
  and collapsed.

See :mod:`sluice.screening.cjk` for the East Asian renderings.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache

LATIN = "latin"
CYRILLIC = "cyrillic"
GREEK = "greek"
ARABIC = "arabic"
HAN = "han"
HANGUL = "hangul"
KANA = "kana"
OTHER = "other"

ANYASCII = "anyascii"
"""The label of the rendering every name gets (the only one for Latin, Cyrillic and Greek)."""

_PREFIXES: tuple[tuple[str, str], ...] = (
    ("LATIN", LATIN),
    ("CYRILLIC", CYRILLIC),
    ("GREEK", GREEK),
    ("ARABIC", ARABIC),
    ("CJK UNIFIED IDEOGRAPH", HAN),
    ("CJK COMPATIBILITY IDEOGRAPH", HAN),
    ("HANGUL", HANGUL),
    ("HIRAGANA", KANA),
    ("KATAKANA", KANA),
)
SCRIPTS_RENDERED = frozenset({ARABIC, HAN, HANGUL, KANA})
"""Scripts that get renderings of their own besides anyascii's."""


@dataclass(frozen=True, slots=True)
class Rendering:
    """A Latin form of a name and the transliteration that produced it."""

    system: str
    text: str


@lru_cache(maxsize=4_096)
def script_of(character: str) -> str | None:
    """The script of one letter (None for digits, spaces and punctuation)."""
    if not character.isalpha():
        return None
    name = unicodedata.name(character, "")
    for prefix, script in _PREFIXES:
        if name.startswith(prefix):
            return script
    if "\u3400" <= character <= "\u9fff" or "\uf900" <= character <= "\ufaff":
        return HAN
    return OTHER


def scripts_of(name: str) -> frozenset[str]:
    """The scripts a name's letters are written in."""
    found = {script_of(character) for character in name}
    found.discard(None)
    return frozenset(script for script in found if script is not None)


def needs_renderings(name: str) -> bool:
    """Whether a name is written (partly) in a script with renderings of its own."""
    if name.isascii():
        return False
    return any(
        not character.isascii() and script_of(character) in SCRIPTS_RENDERED for character in name
    )
