"""Name normalisation for sanctions screening: one spelling for the many ways a name is written.

A name goes through, in order:

1. **Transliteration** to ASCII with anyascii (Cyrillic, Greek, Arabic script, diacritics:
   ``Малкевич`` → ``malkevich``, ``Müller`` → ``muller``).
2. **Case folding and punctuation**: acronyms written with dots become one word (``S.A.`` →
   ``sa``), apostrophes vanish (``D'S``, ``Yur'evich``), every other mark separates words.
3. **Order**: ``"LAST, First Middle"`` (the lists' order for individuals) is turned into the
   natural ``"First Middle LAST"``; matching compares tokens regardless of order, the natural
   order is kept for the whole-string comparison and for display.
4. **Stop words**: legal forms (``LTD``, ``LLC``, ``joint stock company``…, and the long ones
   misspelt: ``compny``), titles and
   generational suffixes (``Dr``, ``Jr``), connectors (``and``, ``of``, ``de``) and the Arabic
   article as a separate word (``AL-HASSAN`` → ``hassan``) carry no identity and are set aside —
   unless nothing else is left, then they are the name.
5. **Canonical tokens**: a table of common transliteration variants maps each to one form
   (``mohammed``/``muhammad``/``mohamad`` → ``muhammad``, ``alexander``/``aleksandr``…), then a
   light spelling key evens out the remaining systematic differences (``kh``/``h``, ``y``/``i``,
   ``x``/``ks``, ``ph``/``f``, ``ou``/``u``, doubled letters, a final ``h``).

Everything here is a pure function of its input; the same function serves the list (when it is
indexed) and the query (when it is screened), so both sides always agree.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from anyascii import anyascii
from rapidfuzz.distance import Indel

# Transliteration variants → one canonical form. Groups are names that are the same name written
# through different transliteration conventions (not translations: Joseph is not Yusuf here).
_VARIANT_GROUPS: tuple[tuple[str, ...], ...] = (
    (
        "muhammad",
        "mohammed",
        "mohammad",
        "mohamed",
        "mohamad",
        "muhammed",
        "muhamad",
        "muhamed",
        "mohammod",
        "mohamud",
        "muhamud",
        "mahomed",
        "mohd",
        "mouhamed",
        "mouhammad",
    ),
    ("ahmad", "ahmed", "ahmet", "akhmed", "achmed", "ahmat", "akhmad"),
    ("abdul", "abd", "abdel", "abdal", "abdoul", "abdol", "abdelu", "abdool"),
    ("abdullah", "abdallah", "abdulla", "abdollah", "abdalla", "abdellah"),
    ("yusuf", "yousef", "yousuf", "yusef", "youssef", "yousif", "yusif", "youcef"),
    ("hussein", "husayn", "husein", "hussain", "husain", "hosein", "hossein", "hussien"),
    ("hasan", "hassan", "hasen"),
    ("hasani", "hassani"),
    ("umar", "omar", "omer", "oumar"),
    ("usama", "osama", "ousama", "oussama", "usamah"),
    ("abu", "abou", "abo"),
    ("mustafa", "mostafa", "moustafa", "mustapha", "moustapha", "mustafah"),
    ("ibrahim", "ebrahim", "ibraheem", "brahim"),
    ("khalid", "khaled", "khaleed"),
    ("mahmud", "mahmoud", "mahmood", "mehmood"),
    ("yahya", "yahia", "yehia", "yahyah"),
    ("said", "saeed", "sayed", "sayyid", "saied", "saeid", "sayid", "saiid"),
    ("salih", "saleh", "saaleh"),
    ("hamid", "hameed", "hamed"),
    ("rashid", "rasheed", "rachid", "rashed"),
    ("nasir", "nasser", "naser", "nassir", "nacer"),
    ("karim", "kareem", "kerim"),
    ("rahman", "rehman", "rahmon"),
    ("jamal", "gamal", "djamal"),
    ("jafar", "jaafar", "jafer", "jaffar"),
    ("hussaini", "husseini", "husaini", "hosseini", "husayni"),
    ("aleksandr", "alexander", "alexandr", "aleksander", "alexandre", "oleksandr", "olexander"),
    ("aleksei", "alexey", "aleksey", "alexei", "alexej", "oleksii", "oleksiy", "aleksej"),
    ("dmitri", "dmitriy", "dmitry", "dmitrii", "dmytro", "dimitri", "dmitrij"),
    ("sergei", "sergey", "sergiy", "serhii", "serhiy", "sergej", "sergiu"),
    ("yuri", "yury", "yuriy", "iouri", "yurii", "jurij", "juri", "iurii"),
    ("mikhail", "michail", "mykhailo", "mikhael", "mihail"),
    ("andrei", "andrey", "andriy", "andrii", "andrej"),
    ("nikolai", "nikolay", "mykola", "nicolai", "nikolaj"),
    ("yevgeni", "evgeny", "evgeniy", "yevgeniy", "evgenii", "yevhen", "yevgeny", "evgenij"),
    ("vladimir", "wladimir", "volodymyr", "vladymyr"),
    ("viktor", "victor"),
    ("grigori", "grigory", "grigoriy", "grigorii", "hryhorii"),
    ("igor", "ihor"),
    ("maksim", "maxim", "maksym", "maxime"),
    ("konstantin", "constantin", "kostiantyn", "kostyantyn"),
    ("vitali", "vitaly", "vitaliy", "vitalii"),
    ("anatoli", "anatoly", "anatoliy", "anatolii"),
    ("gennadi", "gennady", "gennadiy", "gennadii"),
    ("valeri", "valery", "valeriy", "valerii"),
    ("arkadi", "arkady", "arkadiy", "arkadii"),
    ("yevgenia", "evgenia", "evgeniya", "yevgeniya"),
    ("pyotr", "petr", "piotr"),
    ("fyodor", "fedor", "feodor", "fiodor"),
    ("yakov", "iakov", "jakov"),
    ("ilya", "ilia", "ilja", "illia"),
    ("natalia", "natalya", "nataliya"),
    ("yulia", "yuliya", "iuliia", "julia"),
    ("tatiana", "tatyana", "tatjana", "tetiana"),
    ("olga", "olha"),
    ("ekaterina", "yekaterina", "katerina", "kateryna"),
    ("elena", "yelena", "olena"),
)
VARIANTS: dict[str, str] = {
    variant: group[0] for group in _VARIANT_GROUPS for variant in group if variant != group[0]
}

# Two-word spellings of one word, joined before the table applies ("abd al rahman").
_JOINED_PHRASES: tuple[tuple[str, str], ...] = (
    ("abd al ", "abdul "),
    ("abd el ", "abdul "),
    ("abd ul ", "abdul "),
    ("abu al ", "abu "),
)

# Legal forms as phrases first (longest first), then as single words.
_LEGAL_PHRASES: tuple[str, ...] = (
    "public joint stock company",
    "closed joint stock company",
    "open joint stock company",
    "private joint stock company",
    "joint stock company",
    "limited liability company",
    "limited liability partnership",
    "private limited company",
    "public limited company",
    "sociedad anonima",
    "societe anonyme",
    "sociedad de responsabilidad limitada",
    "company limited",
)
LEGAL_FORMS: frozenset[str] = frozenset(
    {
        "ltd",
        "limited",
        "llc",
        "llp",
        "lp",
        "inc",
        "incorporated",
        "corp",
        "corporation",
        "co",
        "company",
        "plc",
        "gmbh",
        "ag",
        "sa",
        "sas",
        "sarl",
        "srl",
        "sro",
        "spa",
        "bv",
        "nv",
        "oy",
        "ab",
        "kft",
        "zao",
        "ooo",
        "oao",
        "pao",
        "ao",
        "ojsc",
        "cjsc",
        "pjsc",
        "jsc",
        "tov",
        "fzco",
        "fze",
        "fzc",
        "fzllc",
        "pte",
        "pvt",
        "pty",
        "bhd",
        "sdn",
        "kg",
        "ltda",
        "cia",
        "cv",
        "eirl",
        "sac",
        "saic",
    }
)
# Only titles that are never part of a name: "HAJJI" and "SHEIKH" are surnames on the lists.
TITLES: frozenset[str] = frozenset({"mr", "mrs", "ms", "dr", "jr", "sr"})
CONNECTORS: frozenset[str] = frozenset(
    {"and", "of", "the", "for", "de", "del", "la", "le", "les", "du", "da", "di", "des", "y", "e"}
)
# The Arabic definite article and its sun-letter forms, only as a separate word.
ARTICLES: frozenset[str] = frozenset({"al", "el", "ad", "ed", "as", "ash", "at", "az", "ar", "an"})
STOP_WORDS: frozenset[str] = LEGAL_FORMS | TITLES | CONNECTORS | ARTICLES
_LONG_LEGAL_FORMS = ("company", "limited", "corporation", "incorporated")
_MISSPELT_FORM_SIMILARITY_MIN = 0.85

_ACRONYM = re.compile(r"\b[a-z0-9](?:\.[a-z0-9])+\.?(?![a-z0-9])")
_APOSTROPHES = re.compile(r"['`´ʼʹ’‘]")
_NOT_WORD = re.compile(r"[^a-z0-9]+")
_DOUBLED = re.compile(r"(.)\1+")
# Spelling key: applied to canonical tokens, in this order (each rule sees the previous' output).
_SPELLING_RULES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"ck|q"), "k"),
    (re.compile(r"dzh|dj"), "j"),
    (re.compile(r"kh"), "h"),
    (re.compile(r"ph"), "f"),
    (re.compile(r"tch"), "ch"),
    (re.compile(r"sch"), "sh"),
    (re.compile(r"c(?![hei])"), "k"),
    (re.compile(r"x"), "ks"),
    (re.compile(r"w"), "v"),
    (re.compile(r"y"), "i"),
    (re.compile(r"ou|oo"), "u"),
    (re.compile(r"(?<=[aeiou])h$"), ""),
)


@dataclass(frozen=True, slots=True)
class NormalisedName:
    """A name as screening compares it.

    ``tokens`` are the canonical tokens in natural order (first names first), stop words set
    aside; ``spellings`` the same words through the spelling key only; ``folded`` is the
    readable ASCII form in natural order, before canonicalisation.
    """

    original: str
    folded: str
    tokens: tuple[str, ...]
    spellings: tuple[str, ...]  # per token: the spelling key of the word as written
    set_aside: tuple[str, ...]

    @property
    def sorted_key(self) -> str:
        """The tokens sorted: equal for two names that differ only in order or spelling."""
        return " ".join(sorted(self.tokens))

    @property
    def joined(self) -> str:
        """The tokens in natural order without spaces (compares "abdul rahman"/"abdulrahman")."""
        return "".join(self.tokens)


def transliterate(text: str) -> str:
    """Any script to ASCII (anyascii), after Unicode compatibility normalisation."""
    return anyascii(unicodedata.normalize("NFKC", text))


def fold(text: str) -> str:
    """ASCII, lower case, acronyms joined, apostrophes dropped, other punctuation as spaces."""
    text = transliterate(text).casefold()
    text = _APOSTROPHES.sub("", text)
    text = _ACRONYM.sub(lambda found: found.group(0).replace(".", "") + " ", text)
    text = text.replace("&", " and ")
    return " ".join(_NOT_WORD.sub(" ", text).split())


def name_orders(name: str) -> tuple[str, ...]:
    """The orders a name may be written in: ``"LAST, First Middle"`` gives the natural order
    ``"First Middle LAST"`` first and the listed order second; a name without exactly one
    separating comma (a company's "X, Y & Z LTD.") is returned as it is."""
    parts = [part.strip() for part in name.split(",")]
    if len(parts) == 3 and fold(parts[2]) in TITLES:
        # "DELOS REYES, Feliciano, Jr.": the generational suffix goes at the end.
        parts = [parts[0], f"{parts[1]} {parts[2]}"]
    if len(parts) != 2 or not parts[0] or not parts[1]:
        return (" ".join(name.split()),)
    last, first = parts
    return (f"{first} {last}", f"{last} {first}")


@lru_cache(maxsize=65_536)
def spelling_key(token: str) -> str:
    """The spelling key alone (see the module docstring)."""
    if len(token) <= 2 or token.isdigit():
        return token
    for pattern, replacement in _SPELLING_RULES:
        token = pattern.sub(replacement, token)
    return _DOUBLED.sub(r"\1", token)


def canonical_token(token: str) -> str:
    """The transliteration table, then the spelling key (see the module docstring)."""
    return spelling_key(VARIANTS.get(token, token))


@lru_cache(maxsize=65_536)
def is_stop_word(word: str) -> bool:
    """A stop word, or a legal form misspelt by a letter or two (``compny``, ``limted``)."""
    if word in STOP_WORDS:
        return True
    return len(word) >= 6 and any(
        Indel.normalized_similarity(word, form) >= _MISSPELT_FORM_SIMILARITY_MIN
        for form in _LONG_LEGAL_FORMS
    )


def _remove_phrases(folded: str) -> tuple[str, list[str]]:
    padded = f" {folded} "
    removed: list[str] = []
    for phrase, joined in _JOINED_PHRASES:
        padded = padded.replace(f" {phrase}", f" {joined}")
    for phrase in _LEGAL_PHRASES:
        if f" {phrase} " in padded:
            padded = padded.replace(f" {phrase} ", " ")
            removed.append(phrase)
    return padded.strip(), removed


def normalise_name(name: str, *, ordered_last_first: bool | None = None) -> NormalisedName:
    """Normalise ``name`` (see the module docstring).

    ``ordered_last_first``: whether a single comma separates ``LAST, First`` (individuals on the
    lists); ``None`` guesses so for a name with exactly one comma and at most four words on
    either side. Order never changes the tokens' multiset, only ``folded`` and ``joined``.
    """
    orders = name_orders(name)
    natural = orders[0]
    if len(orders) == 2 and ordered_last_first is None:
        last, _, first = name.partition(",")
        ordered_last_first = len(last.split()) <= 4 and len(first.split()) <= 4
    if len(orders) == 2 and not ordered_last_first:
        natural = " ".join(name.replace(",", " ").split())
    folded = fold(natural)
    remaining, set_aside = _remove_phrases(folded)
    words = remaining.split()
    kept = [word for word in words if not is_stop_word(word)]
    set_aside.extend(word for word in words if is_stop_word(word))
    if not kept:
        # "THE COMPANY": nothing but stop words, so those are the name.
        kept, set_aside = words or folded.split(), []
    return NormalisedName(
        original=name,
        folded=folded,
        tokens=tuple(canonical_token(word) for word in kept),
        spellings=tuple(spelling_key(word) for word in kept),
        set_aside=tuple(set_aside),
    )
