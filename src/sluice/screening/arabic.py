"""Arabic and Persian names against their Latin listed forms: consonant skeletons.

Arabic script does not write short vowels, and one letter stands for sounds that Latin
renderings spell differently (``ظ`` is Z or DH, ``ق`` Q, K or G). So both sides are reduced to
the part they agree on, a **consonant skeleton** of each word:

* The Arabic word is written one Latin letter per Arabic letter through anyascii
  (``الظواهري`` → ``zwhry``: anyascii's digraphs become the one letter the skeleton gives them,
  so that ``زاده`` stays z-d-h), after the article is taken off (``ال``, also in ``بال``/``وال``)
  and ta marbuta (``ة``) dropped; alef, hamza and ayn carriers vanish. ``عبد`` is written
  ``abdul`` (``abd al-``, ``abdel`` and ``abdul`` are one canonical word on the Latin side) and
  ``الله`` as the Latin side's ``ala``. A Persian zero-width non-joiner joins the word's parts.
* The listed word is the word as written, through the screen's transliteration table
  (``mohammed`` → ``muhammad``), stop words set aside as the screen does.
* Both then lose vowels and the half-vowels ``w``, ``y`` and ``v`` (``و`` and ``ي`` are
  ``u``/``i`` as often as ``w``/``y``) except as a word's first letter, where they are
  consonants (``Wali``, ``Yusuf``). Latin digraphs become one letter (``kh``→``h``, ``gh``→``g``,
  ``th``→``t``, ``dh``/``zh``→``z``), ``q``/``c``→``k``, doubled letters collapse and a final
  ``h`` goes (ta marbuta; the Latin spelling key drops it too). A one-letter skeleton is
  marked (``ali`` → ``l_``) so that the index does not take it for an initial.

Compounds are tried joined as well as apart: ``نصر الله`` as ``nasrallah``, ``عبد الرحمن`` as
``abdulrahman``, ``ابو بكر`` as ``abubakr``, ``X الدين`` as one word; and a name's skeleton
written without spaces is compared whole (``amirali`` and ``amir ali`` alike). The skeletons are
scored by the same index and the same scoring as Latin names (aligned tokens, rarity weights),
against an index of the listed names' skeletons.

A skeleton match alone does not score like an exact one: what the skeleton leaves out is
checked against the listed words of the same (or a nearly identical) skeleton, and a match that
fails is capped below the threshold (:data:`sluice.screening.lists.VOWELS_DISAGREE_CAP`):

* the long vowels Arabic script writes must be in the listed word, each between the same
  consonants (``محمود`` Mahmoud writes its u between m and d, MUHAMMAD an a there);
* the word must open and close alike: a Latin word opening on a vowel is an Arabic word opening
  on alef, ayn or hamza and the other way round (``طه`` is not ATA), and a Latin word ending
  on a vowel is an Arabic word ending on a letter that writes one (``دياب`` is not DIABY);
* the query must hold the listed surname, or one of its words (``كريم منصور`` is two given
  names of AL-GHANIMI, Karim Mansur, not that person).

When the best skeleton match fails these, the next candidate is checked. Skeletons still cannot
tell apart names that differ only in their short vowels (``صالح`` Saleh and ``صلاح`` Salah when
the Latin form writes an e): those are left to the score's other words and to the reviewer.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from anyascii import anyascii

from sluice.screening.index import token_similarity
from sluice.screening.names import (
    VARIANTS,
    NormalisedName,
    canonical_token,
    fold,
    is_stop_word,
    name_orders,
)
from sluice.screening.scripts import ARABIC, script_of

SKELETON = "Arabic consonant skeleton"

_ARTICLE = "ال"
_ARTICLE_PREFIXES = ("بال", "وال", "فال", "لل")
_ABD = "عبد"
_ABU = ("ابو", "أبو", "ابي", "أبي")
_ALLAH = "الله"
_DIN = "الدين"
_TA_MARBUTA = "ة"
_NON_JOINER = "\u200c"
_VOWEL_CARRIERS = frozenset("اأإآعٱ")
# Letters Persian says (and Latin renderings of Persian names write) otherwise than Arabic:
# رضا is Reza, not Rida; ثابت Sabet, not Thabit. Names holding them are tried both ways.
_PERSIAN_SOUNDS = {"ض": "z", "ث": "s", "ص": "s"}
_PERSIAN_SUFFIXES = frozenset({"ای", "زاده", "پور", "نژاد", "زادە"})
# Words written one way in Arabic script and several in Latin letters, as the Latin side's
# canonical form comes to (``abd``/``abdel``/``abdul`` → ``abdul``; ``allah`` → ``ala``).
_SPECIAL_WORDS = {_ALLAH: "ala", _ABD: "abdul", **dict.fromkeys(_ABU, "abu")}
_ARABIC_DIGRAPHS = {"th": "t", "dh": "z", "kh": "h", "gh": "g", "sh": "S", "ch": "C", "zh": "z"}
_DIACRITICS = re.compile("[\u064b-\u065f\u0670\u0640]")  # harakat, superscript alef, tatweel
_DIGRAPHS: tuple[tuple[str, str], ...] = (
    ("sh", "S"),
    ("ch", "C"),
    ("kh", "h"),
    ("gh", "g"),
    ("th", "t"),
    ("dh", "z"),
    ("zh", "z"),
    ("ph", "f"),
    ("ck", "k"),
)
_SINGLE_LETTERS: tuple[tuple[str, str], ...] = (("q", "k"), ("c", "k"), ("x", "ks"))
_NOT_CONSONANT = re.compile(r"[aeiouywv'`\W\d_]+")
_DOUBLED = re.compile(r"(.)\1+")


@lru_cache(maxsize=65_536)
def skeleton(word: str, *, latin: bool = True) -> str:
    """The consonant skeleton of an ASCII word (see the module docstring); ``latin=False`` for
    a word already written one letter per Arabic letter (:func:`_arabic_word`), whose letter
    pairs are not digraphs (``زاده`` is z-d-h, not z-dh)."""
    word = word.casefold()
    # An initial w (v) or y is a consonant in both scripts (ولي Wali, يوسف Yusuf).
    initial = "w" if word[:1] in ("w", "v") else "y" if word[:1] == "y" else ""
    for digraph, letter in (*_DIGRAPHS, *_SINGLE_LETTERS) if latin else _SINGLE_LETTERS:
        word = word.replace(digraph, letter)
    # Latin doubles a letter for gemination, Arabic script does not (shadda goes unwritten): two
    # like letters in Arabic are two consonants (ممدوح Mamduh). Latin's doubles collapse before
    # the vowels go, so l-y-l (لیلا Leila) stays two consonants on both sides.
    if latin:
        word = _DOUBLED.sub(r"\1", word)
    consonants = (initial + _NOT_CONSONANT.sub("", word)).lower()
    if len(consonants) > 1 and consonants.endswith("h"):
        # A final h is ta marbuta or a Latin spelling's (the spelling key drops it after a
        # vowel already): it is dropped on both sides alike.
        consonants = consonants[:-1]
    if not consonants:
        return word or "_"
    return consonants + "_" if len(consonants) == 1 else consonants


@dataclass(frozen=True, slots=True)
class SkeletonName(NormalisedName):
    """A name as skeletons: ``joined`` is the skeleton of the whole name written without spaces
    (``amirali hajizadeh`` and ``amir ali hajizadeh`` both ``mrlhjzd``), not the skeletons
    joined (a one-consonant word's skeleton is marked, see :func:`skeleton`)."""

    whole: str = ""

    @property
    def joined(self) -> str:
        return self.whole


def skeleton_name(
    original: str, folded: str, words: Sequence[str], *, latin: bool = True
) -> SkeletonName:
    """The skeleton form of a name of (canonical) ASCII words (see :func:`skeleton`)."""
    tokens = tuple(skeleton(word, latin=latin) for word in words)
    return SkeletonName(
        original=original,
        folded=folded,
        tokens=tokens,
        spellings=tokens,
        set_aside=(),
        whole=skeleton("".join(words), latin=latin),
    )


def listed_skeletons(normalised: NormalisedName) -> NormalisedName:
    """A listed name's skeleton form, for the skeleton index: its words as written (through
    the transliteration table, not the spelling key, which would hide an initial ``y``), stop
    words set aside as the screen sets them aside."""
    words = [
        VARIANTS.get(word, word)
        for word in normalised.folded.replace("abd al ", "abdul ").split()
        if not is_stop_word(word)
    ]
    return skeleton_name(normalised.original, normalised.folded, words or normalised.tokens)


def _arabic_word(word: str, *, persian: bool = False, prefixed: bool = False) -> str:
    """One Arabic-script word in ASCII, one letter per Arabic letter (anyascii's digraphs as
    the letter the skeleton gives them), article and ta marbuta off (see the docstring);
    ``prefixed``: a preposition with the article (``لل``, ``بال``…) is read as letters of the
    word."""
    word = _DIACRITICS.sub("", word)
    if word in _SPECIAL_WORDS:
        return _SPECIAL_WORDS[word]
    for prefix in () if prefixed else _ARTICLE_PREFIXES:
        if word.startswith(prefix) and len(word) > len(prefix) + 1:
            word = word[len(prefix) :]
            break
    else:
        if word.startswith(_ARTICLE) and len(word) > len(_ARTICLE) + 1:
            word = word[len(_ARTICLE) :]
    word = word.removesuffix(_TA_MARBUTA)
    # A word opening on a vowel carrier (alef, ayn) opens on a vowel: "a" keeps the next
    # letter from counting as an initial consonant (ايمن is Ayman, not Yman).
    opening = "a" if word[:1] in _VOWEL_CARRIERS else ""
    letters = (
        _PERSIAN_SOUNDS[character]
        if persian and character in _PERSIAN_SOUNDS
        else anyascii(character).casefold() or "a"  # alef: a vowel, keeps d-a-d two letters
        for character in word
    )
    return opening + "".join(_ARABIC_DIGRAPHS.get(letter, letter) for letter in letters)


def _joinings(words: list[str], originals: list[str]) -> list[list[str]]:
    """The word lists to try: as written, and with the name's compounds joined."""
    variants = [words]
    joined: list[str] = []
    index = 0
    changed = False
    while index < len(words):
        word = words[index]
        following = originals[index + 1] if index + 1 < len(words) else None
        if following is not None and (
            originals[index] in (_ABD, *_ABU) or following in (_ALLAH, _DIN)
        ):
            joined.append(word + words[index + 1])
            index += 2
            changed = True
            continue
        joined.append(word)
        index += 1
    if changed:
        variants.append(joined)
    return variants


def _name_words(name: str) -> list[str]:
    """A name's words, Persian suffixes written apart joined to their word and a one-word
    ``عبدX`` split in two."""
    # A zero-width non-joiner (Persian: حاجی‌زاده) keeps the parts of one word apart in print.
    originals: list[str] = []
    for word in re.split(r"[\s\-،,.]+", name.replace(_NON_JOINER, "")):
        if not word or not any(script_of(character) is not None for character in word):
            continue
        if originals and word in _PERSIAN_SUFFIXES:
            # خامنه ای, حاجی زاده: a suffix written apart is still part of the word before.
            originals[-1] += word
        elif word.startswith(_ABD) and len(word) > len(_ABD) + 1:
            # عبدالخالق is عبد الخالق written as one word: apart first, joined below.
            originals.extend((_ABD, word[len(_ABD) :]))
        else:
            originals.append(word)
    return originals


@lru_cache(maxsize=4_096)
def arabic_queries(name: str) -> tuple[NormalisedName, ...]:
    """The skeleton forms of a name written (partly) in Arabic script, compounds apart and
    joined; words in other scripts go through anyascii."""
    originals = _name_words(name)
    queries: list[NormalisedName] = []
    seen: set[tuple[str, ...]] = set()
    both = any(character in _PERSIAN_SOUNDS for character in name)
    # لل, بال… open a word as a preposition and the article, or as the name's own letters
    # (للبب): tried both ways, the preposition first.
    prefixes = any(word.startswith(_ARTICLE_PREFIXES) for word in originals)
    for persian, prefixed in itertools.product(
        (False, True) if both else (False,), (False, True) if prefixes else (False,)
    ):
        words = [
            _arabic_word(word, persian=persian, prefixed=prefixed)
            if any(script_of(character) == ARABIC for character in word)
            else _letters(canonical_token(anyascii(word).casefold()))
            for word in originals
        ]
        for variant in _joinings(words, originals):
            kept = [word for word in variant if word]
            query = skeleton_name(name, " ".join(kept), kept, latin=False)
            if kept and query.tokens not in seen:
                seen.add(query.tokens)
                queries.append(query)
    return tuple(queries)


def _letters(word: str) -> str:
    """A Latin word's digraphs as single letters, as :func:`_arabic_word` writes them."""
    for digraph, letter in _DIGRAPHS:
        word = word.replace(digraph, letter)
    return word


# --- The long vowels: what the skeleton leaves out --------------------------------------------

_LONG_VOWELS = {"ا": "A", "آ": "A", "و": "U", "ي": "I", "ی": "I"}
_LATIN_VOWELS = {"a": "A", "e": "E", "i": "I", "o": "U", "u": "U"}
_LATIN_HALF_VOWELS = {"y": "I", "w": "U", "v": "U"}
_VOWEL_PAIR = re.compile(r"[aeiouy][aeiouy]")
_INNER_LONG = re.compile("[اآوؤيیئىءأإع]")
_OPENING_VOWELS = frozenset("aeiou")
_NEAR_SKELETON_SIMILARITY = 0.8
_VOWEL_OPENINGS = frozenset("اأإآٱعءؤئويیه")
_CLOSING_VOWELS = frozenset("aeiouy")
_VOWEL_CLOSINGS = frozenset("اآأإىيیوؤئءةهعۀ")


def _arabic_vowels(word: str) -> str:
    """The long vowels Arabic script writes in a word (alef, waw, ya), in order: not a word's
    first letter (a consonant or a carrier there) nor its last (a final ی is often "a" in
    Persian: مجتبی Mojtaba)."""
    word = _DIACRITICS.sub("", word)
    if word.startswith(_ARTICLE) and len(word) > len(_ARTICLE) + 1:
        word = word[len(_ARTICLE) :]
    return "".join(_LONG_VOWELS.get(letter, "") for letter in word[1:-1])


def _latin_vowels(word: str) -> str:
    """A Latin word's vowels (and half-vowels after its first letter) as vowel classes."""
    return "".join(
        _LATIN_VOWELS.get(letter) or (_LATIN_HALF_VOWELS.get(letter, "") if index else "")
        for index, letter in enumerate(word)
    )


def _written_in(arabic: str, latin: str) -> bool:
    """Whether Arabic's long vowels appear, in order, among the Latin word's vowels (an ``e``
    stands for an alef or a ya; a Latin word writes the short vowels as well)."""
    position = 0
    for vowel in arabic:
        while position < len(latin) and not (
            latin[position] == vowel or (latin[position] == "E" and vowel in "AI")
        ):
            position += 1
        if position == len(latin):
            return False
        position += 1
    return True


def _ends_agree(word: str, latin: str) -> bool:
    """Whether an Arabic-script word and a Latin word of the same skeleton open and close alike.

    * A Latin word opening on a vowel is an Arabic word opening on a vowel carrier (alef, ayn,
      hamza), and the other way round: ``طه`` (Taha) is not ``ATA``, ``أحمد`` not MOHAMMAD.
      Arabic words opening on waw, ya or ha are left alone (French renderings write
      ``Ouissam`` for وسام).
    * A Latin word closing on a vowel (``DIABY``, ``KHALIDI``) is an Arabic word closing on a
      letter that writes one (alef, alef maqsura, waw, ya, ta marbuta, ha, hamza, ayn): Arabic
      script writes a name's final long vowel, so ``دياب`` is Diab, not Diaby.
    """
    word = _DIACRITICS.sub("", word)
    if word.startswith(_ARTICLE) and len(word) > len(_ARTICLE) + 1:
        word = word[len(_ARTICLE) :]
    if latin[:1] in _OPENING_VOWELS and word[:1] not in _VOWEL_OPENINGS:
        return False
    if word[:1] in _CARRIERS and latin[:1] not in _OPENING_VOWELS:
        return False
    return not (latin[-1:] in _CLOSING_VOWELS and word[-1:] not in _VOWEL_CLOSINGS)


def long_vowels_agree(name: str, listed: str) -> bool:
    """Whether each word of ``name`` (Arabic script) that writes long vowels finds them in one of
    the words of ``listed`` (Latin): ``علی دایی`` (Ali Daei) does not agree with ``DA'UD,
    Lu'ay`` although their skeletons are the same; nor does a word without long vowels with a
    listed word of its skeleton that writes two vowels together inside (``عمر``, OMAIRI); nor
    a word with listed words of its skeleton that all open or close otherwise (see
    :func:`_ends_agree`: ``دياب`` and DIABY, ``طه`` and ATA)."""
    listed_words = [
        (
            skeleton(VARIANTS.get(word, word)),
            _latin_vowels(word),
            bool(_VOWEL_PAIR.search(word[1:-1])),
            word,
        )
        for word in fold(listed).split()
        if not is_stop_word(word)
    ]
    words = _name_words(name)
    for position, word in enumerate(words):
        if word in _SPECIAL_WORDS or not any(script_of(letter) == ARABIC for letter in word):
            continue
        vowels = _arabic_vowels(word)
        consonants = skeleton(_arabic_word(word), latin=False)
        same = [entry for entry in listed_words if entry[0] == consonants]
        # Words whose skeletons are only alike (``hmd`` and ``mhmd``) must open and close alike;
        # not the second part of an عبد or ابو compound, which the Latin form writes inside one
        # word (عبد اللهی, ABDOLLAHI).
        compound = position > 0 and words[position - 1] in (_ABD, *_ABU)
        near = same or [
            entry
            for entry in listed_words
            if token_similarity(consonants, entry[0], _NEAR_SKELETON_SIMILARITY)
        ]
        if near and not compound and not any(_ends_agree(word, entry[3]) for entry in near):
            return False
        if same and not _INNER_LONG.search(word[1:-1]) and all(entry[2] for entry in same):
            # The listed word writes a long vowel or diphthong inside (OMAIRI), the Arabic word
            # none (عمر Omar): not the same word.
            return False
        if same and not any(_vowels_in_place(word, entry[3]) for entry in same):
            return False
        if not vowels:
            continue
        # Compared with the listed words of the same skeleton, else with any of them.
        if not any(_written_in(vowels, entry[1]) for entry in same or listed_words):
            return False
    return True


_CARRIERS = frozenset("اأإآعٱءؤئ")
_SILENT_INSIDE = frozenset("عءأإؤئٱ")
_LONG_VOWEL_CLASSES = {"ا": "A", "آ": "A", "و": "U", "ي": "I", "ی": "I", "ى": "A"}


def _skeleton_letter(letter: str) -> str:
    latin = anyascii(letter).casefold()
    return _ARABIC_DIGRAPHS.get(latin, latin)


def _arabic_places(word: str) -> tuple[int, list[tuple[int, str]]]:
    """An Arabic-script word's consonants (counted as its skeleton counts them) and its long
    vowels inside, each with the number of consonants before it."""
    word = _DIACRITICS.sub("", word)
    if word.startswith(_ARTICLE) and len(word) > len(_ARTICLE) + 1:
        word = word[len(_ARTICLE) :]
    word = word.removesuffix(_TA_MARBUTA)
    consonants: list[str] = []
    vowels: list[tuple[int, str]] = []
    for position, letter in enumerate(word):
        if position == 0:
            if letter not in _CARRIERS:
                consonants.append(_skeleton_letter(letter))
        elif letter in _LONG_VOWEL_CLASSES:
            if position < len(word) - 1:
                vowels.append((len(consonants), _LONG_VOWEL_CLASSES[letter]))
        elif letter not in _SILENT_INSIDE:
            consonants.append(_skeleton_letter(letter))
    if len(consonants) > 1 and consonants[-1] == "h":
        consonants.pop()  # as the skeleton drops a final h
        vowels = [(min(place, len(consonants)), vowel) for place, vowel in vowels]
    return len(consonants), vowels


def _latin_places(word: str) -> tuple[int, list[tuple[int, str]]]:
    """A Latin word's consonants (counted as :func:`skeleton` counts them) and its vowels, each
    with the number of consonants before it."""
    word = word.casefold()
    for digraph, letter in (*_DIGRAPHS, *_SINGLE_LETTERS):
        word = word.replace(digraph, letter)
    word = _DOUBLED.sub(r"\1", word)
    consonants = 0
    last_consonant = ""
    vowels: list[tuple[int, str]] = []
    for position, letter in enumerate(word):
        if position == 0 and letter in "wvy":
            consonants, last_consonant = 1, letter
        elif letter in _LATIN_VOWELS:
            vowels.append((consonants, _LATIN_VOWELS[letter]))
        elif letter in _LATIN_HALF_VOWELS:
            vowels.append((consonants, _LATIN_HALF_VOWELS[letter]))
        elif letter.isalpha():
            consonants += 1
            last_consonant = letter
    if consonants > 1 and last_consonant == "h" and word.rstrip("aeiouywv").endswith("h"):
        consonants -= 1
        vowels = [(min(place, consonants), vowel) for place, vowel in vowels]
    return consonants, vowels


def _vowels_in_place(word: str, latin: str) -> bool:
    """Whether each long vowel an Arabic-script word writes is where the Latin word of the same
    skeleton has a vowel of its kind: between the same consonants. ``محمود`` (Mahmoud) writes
    its ``و`` between m and d, MUHAMMAD an a there: not the same name, though both are m-h-m-d.
    True when the two words do not count the same consonants (nothing to compare then)."""
    arabic_count, arabic_vowels = _arabic_places(word)
    latin_count, latin_vowels = _latin_places(latin)
    if arabic_count != latin_count:
        return True
    for place, vowel in arabic_vowels:
        if not any(
            where == place and (found == vowel or (found == "E" and vowel in "AI"))
            for where, found in latin_vowels
        ):
            return False
    return True


def covers_surname(query: NormalisedName, listed: str, floor: float) -> bool:
    """Whether a skeleton query aligns with a word of the listed name's surname (the part before
    the comma of ``"LAST, First Middle"``; True for a name written otherwise).

    A skeleton says little on its own, so two given names shared with a longer listed name
    (``كريم منصور`` and ``AL-GHANIMI, Karim Mansur``) are not that person; the surname, or one
    of its words, must be among the query's."""
    if len(name_orders(listed)) != 2:
        return True
    surname = listed.partition(",")[0]
    words = [VARIANTS.get(word, word) for word in fold(surname).split() if not is_stop_word(word)]
    if not words or len(words) > 4:
        return True
    surnames = [skeleton(word) for word in words]
    return any(
        token_similarity(token, listed_token, floor)
        for token in query.tokens
        for listed_token in surnames
    )
