"""The screening benchmark's labelled set: listed names varied, and unlisted names.

Deterministic for a list and a seed; see :mod:`sluice.bench.screening` for what each positive
variation and each kind of negative is.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

from rapidfuzz.distance import Indel

from sluice.screening.lists import INDIVIDUAL_KINDS, SanctionsList
from sluice.screening.names import (
    VARIANTS,
    canonical_token,
    fold,
    is_stop_word,
    name_orders,
    normalise_name,
)

from .pools import (
    _CYRILLIC_RULES,
    _DIACRITICS,
    _LETTERS,
    _SPELLINGS,
    _VARIANT_GROUPS,
    COMPANY_WORDS,
    FIRST_NAMES,
    INDUSTRY_WORDS,
    LAST_NAMES,
    LEGAL_FORMS,
    SLAVIC_ENDINGS,
)

POSITIVE_VARIATIONS = ("reordered", "middle_dropped", "typo", "transliterated", "written")


@dataclass(frozen=True, slots=True)
class LabelledName:
    """A query and what the screen should say about it."""

    query: str
    listed: bool
    entity_id: str | None  # the entity a positive was made from
    source_name: str | None  # the listed name a positive (or a near miss) was made from
    variation: str  # how it was made: a positive variation, or "person", "company", "near_miss"


@dataclass(frozen=True, slots=True)
class _Listed:
    text: str
    entity_id: str
    individual: bool
    words: tuple[str, ...]  # natural order, as written (stop words kept)


class _Collisions:
    """Whether a made-up name is really one of the list's names written differently."""

    def __init__(self, sanctions_list: SanctionsList) -> None:
        self._sets = {frozenset(name.tokens) for name in sanctions_list.index.names}
        self._postings: dict[str, set[frozenset[str]]] = {}
        for tokens in self._sets:
            for token in tokens:
                self._postings.setdefault(token, set()).add(tokens)

    def collides(self, query: str) -> bool:
        tokens = frozenset(normalise_name(query).tokens)
        if not tokens or tokens in self._sets:
            return True
        for size in range(2, len(tokens)):
            if any(frozenset(subset) in self._sets for subset in combinations(tokens, size)):
                return True
        if len(tokens) >= 2:
            holders = [self._postings.get(token, set()) for token in tokens]
            if set.intersection(*holders):
                return True
        return False


def _listed_names(sanctions_list: SanctionsList) -> list[_Listed]:
    listed: list[_Listed] = []
    for entity in sanctions_list.entities:
        individual = entity.kind in INDIVIDUAL_KINDS
        for number, text in enumerate((entity.name, *entity.aliases)):
            natural = name_orders(text)[0] if individual and (number == 0 or "," in text) else text
            words = tuple(natural.replace(",", " ").split())
            significant = normalise_name(natural, ordered_last_first=False).tokens
            # Names too short to vary honestly (acronyms, "P-532") stay out of the set.
            if len(significant) >= 1 and sum(len(token) for token in significant) >= 6:
                listed.append(_Listed(text, entity.entity_id, individual, words))
    return listed


def _significant(word: str) -> bool:
    """Whether a word carries identity (not a legal form, connector, title or article)."""
    return any(not is_stop_word(part) for part in fold(word).split())


def _typo(word: str, rng: random.Random) -> str:
    position = rng.randrange(1, len(word))
    operation = rng.choice(("substitute", "delete", "insert", "transpose"))
    if operation == "substitute":
        letter = rng.choice(_LETTERS.replace(word[position].lower(), ""))
        return word[:position] + letter + word[position + 1 :]
    if operation == "delete":
        return word[:position] + word[position + 1 :]
    if operation == "insert":
        return word[:position] + rng.choice(_LETTERS) + word[position:]
    if position == len(word) - 1:
        position -= 1
    if position < 1:
        return word[:position] + rng.choice(_LETTERS) + word[position:]
    return word[:position] + word[position + 1] + word[position] + word[position + 2 :]


def _with_typos(words: list[str], rng: random.Random) -> list[str] | None:
    eligible = [
        index
        for index, word in enumerate(words)
        if len(word) >= 4 and word.isalpha() and _significant(word)
    ]
    if not eligible:
        return None
    words = list(words)
    first = rng.choice(eligible)
    words[first] = _typo(words[first], rng)
    if rng.random() < 0.5:
        # A second typo: in another word, or in the same one if it is long (8 letters or more).
        others = [index for index in eligible if index != first or len(words[index]) >= 8]
        if others:
            second = rng.choice(others)
            words[second] = _typo(words[second], rng)
    return words


def _cyrillic(word: str) -> str:
    lower, out = word.lower(), []
    position = 0
    while position < len(lower):
        for latin, cyrillic in _CYRILLIC_RULES:
            if lower.startswith(latin, position):
                out.append(cyrillic)
                position += len(latin)
                break
        else:
            out.append(lower[position])
            position += 1
    text = "".join(out)
    return text[:1].upper() + text[1:]


def _transliterated(words: list[str], individual: bool, rng: random.Random) -> list[str] | None:
    lowered = [word.lower() for word in words]
    slavic = individual and any(
        word.isalpha() and len(word) > 4 and word.endswith(SLAVIC_ENDINGS) for word in lowered
    )
    if slavic and rng.random() < 0.5:
        return [_cyrillic(word) if word.isalpha() else word for word in words]
    in_table = [
        index for index, word in enumerate(lowered) if VARIANTS.get(word, word) in _VARIANT_GROUPS
    ]
    if in_table and rng.random() < 0.6:
        index = rng.choice(in_table)
        group = _VARIANT_GROUPS[VARIANTS.get(lowered[index], lowered[index])]
        choices = [spelling for spelling in group if spelling != lowered[index]]
        words = list(words)
        words[index] = rng.choice(choices).capitalize()
        return words
    options = [
        (index, old, new)
        for index, word in enumerate(lowered)
        if len(word) >= 5
        and word.isalpha()
        and _significant(word)
        and any(vowel in word for vowel in "aeiouy")
        for old, new in _SPELLINGS
        if old in word[1:]
    ]
    if not options:
        return None
    index, old, new = rng.choice(options)
    words = list(words)
    head, tail = lowered[index][:1], lowered[index][1:]
    words[index] = (head + tail.replace(old, new, 1)).capitalize()
    return words


def _written(words: list[str], rng: random.Random) -> list[str]:
    """Case, punctuation and diacritics as people type them."""
    style = rng.choice(("lower", "title", "upper"))
    words = [word.strip(",.") for word in words]
    words = [
        word.lower() if style == "lower" else word.title() if style == "title" else word.upper()
        for word in words
    ]
    if rng.random() < 0.5:
        index = rng.randrange(len(words))
        word = words[index]
        spots = [position for position, letter in enumerate(word) if letter.lower() in _DIACRITICS]
        if spots:
            position = rng.choice(spots)
            letter = _DIACRITICS[word[position].lower()]
            words[index] = (
                word[:position]
                + (letter.upper() if word[position].isupper() else letter)
                + word[position + 1 :]
            )
    if len(words) >= 2 and rng.random() < 0.3:
        index = rng.randrange(len(words) - 1)
        words[index] = words[index] + rng.choice(("-", ".", ","))
    return words


def _varied(listed: _Listed, variation: str, rng: random.Random) -> list[str] | None:
    words = list(listed.words)
    if variation == "reordered":
        if len(words) < 2:
            return None
        if listed.individual and "," in listed.text:
            return words  # the natural order of a "LAST, First" listing
        shift = rng.randrange(1, len(words))
        return words[shift:] + words[:shift] if listed.individual else None
    if variation == "middle_dropped":
        significant = [index for index, word in enumerate(words) if _significant(word)]
        # People: a middle name. Companies: a word from the middle of a long name only (what is
        # left of a short one is generic: "GREEN SHIPPING LTD." → "GREEN LTD.").
        if len(significant) < (3 if listed.individual else 4):
            return None
        drop = rng.choice(significant[1:-1])
        return words[:drop] + words[drop + 1 :]
    if variation == "typo":
        return _with_typos(words, rng)
    if variation == "transliterated":
        return _transliterated(words, listed.individual, rng)
    return _written(words, rng)


def _positive(listed: _Listed, rng: random.Random, first: str) -> LabelledName | None:
    words = _varied(listed, first, rng)
    if words is None:
        return None
    variation = first
    if rng.random() < 0.35:
        second = rng.choice([kind for kind in POSITIVE_VARIATIONS if kind != first])
        twice = _varied(
            _Listed(" ".join(words), listed.entity_id, listed.individual, tuple(words)),
            second,
            rng,
        )
        if twice is not None:
            words, variation = twice, f"{first}+{second}"
    query = " ".join(words)
    if not normalise_name(query).tokens:
        return None
    return LabelledName(query, True, listed.entity_id, listed.text, variation)


def _dissimilar(word: str, pool: Sequence[str], rng: random.Random) -> str:
    folded = fold(word)
    for _ in range(20):
        candidate = rng.choice(pool)
        if Indel.normalized_similarity(fold(candidate), folded) < 0.6:
            return candidate
    return rng.choice(pool)


def _near_miss(listed: _Listed, rng: random.Random) -> str | None:
    words = [word.strip(",") for word in listed.words]
    significant = [
        index for index, word in enumerate(words) if _significant(word) and len(fold(word)) >= 3
    ]
    # One significant word kept, the others replaced: another name sharing a word with a listed
    # one (the same surname, a listed company's distinctive word).
    if not 2 <= len(significant) <= 4:
        return None
    kept = rng.choice(significant)
    for index in significant:
        if index == kept:
            continue
        if listed.individual:
            pool = LAST_NAMES if index == significant[-1] else FIRST_NAMES
        else:
            pool = COMPANY_WORDS if index == significant[0] else INDUSTRY_WORDS
        words[index] = _dissimilar(words[index], pool, rng)
    return " ".join(words)


def _lookalike(listed: _Listed, vocabulary: Sequence[str], rng: random.Random) -> str | None:
    """A listed name of two or three words with one replaced by a word that looks like it but is
    another word (Indel similarity 0.55–0.75: "Moreno" → "Romero"), the others kept."""
    words = [word.strip(",") for word in listed.words]
    significant = [
        index for index, word in enumerate(words) if _significant(word) and len(fold(word)) >= 4
    ]
    if not 2 <= len(significant) <= 3:
        return None
    index = rng.choice(significant)
    original = fold(words[index])
    start = rng.randrange(len(vocabulary))
    for offset in range(0, len(vocabulary), 7):
        candidate = vocabulary[(start + offset) % len(vocabulary)]
        similarity = Indel.normalized_similarity(candidate, original)
        if 0.55 <= similarity < 0.75 and canonical_token(candidate) != canonical_token(original):
            words[index] = candidate.upper() if words[index].isupper() else candidate.title()
            return " ".join(words)
    return None


def _person(rng: random.Random) -> str:
    names = [rng.choice(FIRST_NAMES)]
    if rng.random() < 0.3:
        names.append(rng.choice(FIRST_NAMES))
    names.append(rng.choice(LAST_NAMES))
    if rng.random() < 0.15:
        names.append(rng.choice(LAST_NAMES))
    if rng.random() < 0.2:
        return f"{names[-1].upper()}, {' '.join(names[:-1])}"
    return " ".join(names)


def _company(rng: random.Random) -> str:
    words = [rng.choice(COMPANY_WORDS)]
    if rng.random() < 0.3:
        words.append(rng.choice(COMPANY_WORDS))
    words.append(rng.choice(INDUSTRY_WORDS))
    if rng.random() < 0.7:
        words.append(rng.choice(LEGAL_FORMS))
    return " ".join(words)


def build_labelled_set(
    sanctions_list: SanctionsList, seed: int, positives_n: int, negatives_n: int
) -> list[LabelledName]:
    """``positives_n`` listed names varied and ``negatives_n`` unlisted names (a third of them
    near misses), shuffled; the same for the same list and seed (see the module docstring)."""
    rng = random.Random(seed)
    listed = _listed_names(sanctions_list)
    if not listed:
        raise ValueError("the list has no names to build a labelled set from")
    collisions = _Collisions(sanctions_list)
    positives: list[LabelledName] = []
    seen: set[str] = set()
    attempts = 0
    while len(positives) < positives_n and attempts < 50 * positives_n:
        attempts += 1
        kind = POSITIVE_VARIATIONS[attempts % len(POSITIVE_VARIATIONS)]
        made = _positive(rng.choice(listed), rng, kind)
        if made is not None and made.query not in seen:
            seen.add(made.query)
            positives.append(made)
    negatives: list[LabelledName] = []
    vocabulary = sorted(
        {fold(word) for item in listed for word in item.words if word.isalpha() and len(word) > 3}
        | {fold(word) for word in (*FIRST_NAMES, *LAST_NAMES, *COMPANY_WORDS, *INDUSTRY_WORDS)}
    )

    def lookalike() -> tuple[str | None, str | None]:
        source = rng.choice(listed)
        return _lookalike(source, vocabulary, rng), source.text

    makers: tuple[tuple[str, Callable[[], tuple[str | None, str | None]]], ...] = (
        ("person", lambda: (_person(rng), None)),
        ("company", lambda: (_company(rng), None)),
        ("near_miss", lambda: _near_miss_of(rng, listed)),
        ("lookalike", lookalike),
    )
    attempts = 0
    while len(negatives) < negatives_n and attempts < 200 * max(negatives_n, 1):
        attempts += 1
        kind, maker = makers[len(negatives) % len(makers)]
        query, source = maker()
        if query is None or query in seen or collisions.collides(query):
            continue
        seen.add(query)
        negatives.append(LabelledName(query, False, None, source, kind))
    if len(positives) < positives_n or len(negatives) < negatives_n:
        raise ValueError(
            f"could only make {len(positives)} positives and {len(negatives)} negatives "
            "from this list"
        )
    labelled = positives + negatives
    rng.shuffle(labelled)
    return labelled


def _near_miss_of(rng: random.Random, listed: list[_Listed]) -> tuple[str | None, str | None]:
    source = rng.choice(listed)
    return _near_miss(source, rng), source.text
