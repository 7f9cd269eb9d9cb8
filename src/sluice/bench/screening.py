"""Measuring sanctions screening: speed on one core and quality on a labelled set of names.

**Speed.** The full list is loaded (timed), then a stream of queries — the labelled set below,
positives and negatives interleaved, cycled for ``count`` screenings (or ``seconds``) — is
screened one at a time in one thread, the process pinned to one CPU where the OS allows it.
Reported: screenings/s over the whole stream and the p50/p99 latency of single screenings.

**Quality.** The labelled set is built from the list itself, deterministically for a seed:

* *positives* — listed names (primary names and aliases) as a customer might write them:
  natural order ``First LAST`` (reordered), a middle name dropped, one or two typos (a letter
  wrong, missing, extra or swapped), transliteration (another spelling of the same name —
  ``Mohammed``/``Muhammad``, ``kh``/``h``, ``y``/``i``… — or a Slavic name written in Cyrillic),
  case, punctuation and diacritics; about a third carry two of these at once;
* *negatives* — names not on the list, a quarter each: people and companies made from name and
  company-word pools; *near misses*, a listed name of two to four significant words with all but
  one replaced by dissimilar words (the same surname with other first names, a listed company's
  distinctive word with other words); and *lookalikes*, a listed name of two or three words with
  one replaced by another word that looks like it (Indel similarity 0.55–0.75: ``Moreno`` →
  ``Romero``), the others kept. A negative is rejected when a listed name has the same words,
  or a subset or superset of its words (two or more) — those are the list's own name written
  differently, not misses.

Precision and recall count a name as matched when the screen says ``match`` at the default
threshold; a positive matched to a different entity than the one it was made from is counted as
found (the screen did raise it) and reported separately as ``wrong_entity``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import combinations
from pathlib import Path
from typing import Any

from rapidfuzz.distance import Indel

from sluice.bench.record import machine
from sluice.screening.index import DEFAULT_THRESHOLD
from sluice.screening.lists import INDIVIDUAL_KINDS, SanctionsList, load_list
from sluice.screening.names import (
    VARIANTS,
    canonical_token,
    fold,
    is_stop_word,
    name_orders,
    normalise_name,
)
from sluice.screening.screen import ListedSanctions

SECTION = "## Sanctions screening (`sluice bench screening`)"
HEADER = (
    "| date | machine | list | load s | screenings | screenings/s | p50 / p99 ms "
    "| positives / negatives (seed) | threshold | precision | recall | F1 | targets | command |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
)
SCREENINGS_PER_S_TARGET = 1_000.0
PRECISION_TARGET = 0.95
RECALL_TARGET = 0.90
EXAMPLES_MAX = 8
SCREENINGS_MAX = 10_000_000
"""The bound on a time-boxed run (``seconds``)."""
DEFAULT_SEED = 20_251_121
"""The seed reported; the scoring was tuned on other seeds (1, 2, 3)."""

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
class Example:
    query: str
    variation: str
    source_name: str | None
    matched_name: str | None
    score: float


@dataclass(frozen=True, slots=True)
class ScreeningBenchReport:
    list_source: str
    entity_count: int
    name_count: int
    address_count: int
    load_s: float
    seed: int
    threshold: float
    positives: int
    negatives: int
    screenings: int
    elapsed_s: float
    screenings_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    pinned_cpu: int | None
    true_positives: int
    false_negatives: int
    false_positives: int
    true_negatives: int
    precision: float
    recall: float
    f1: float
    wrong_entity: int
    recall_by_variation: dict[str, tuple[int, int]] = field(default_factory=dict)
    false_positive_rate_by_variation: dict[str, tuple[int, int]] = field(default_factory=dict)
    false_positive_examples: tuple[Example, ...] = ()
    false_negative_examples: tuple[Example, ...] = ()

    @property
    def targets_met(self) -> dict[str, bool]:
        return {
            f"≥ {SCREENINGS_PER_S_TARGET:,.0f} screenings/s": (
                self.screenings_per_s >= SCREENINGS_PER_S_TARGET
            ),
            f"precision ≥ {PRECISION_TARGET}": self.precision >= PRECISION_TARGET,
            f"recall ≥ {RECALL_TARGET}": self.recall >= RECALL_TARGET,
        }

    def as_dict(self) -> dict[str, Any]:
        result = asdict(self)
        result["targets_met"] = self.targets_met
        return result


# --- Name pools for negatives and near misses ----------------------------------------------


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _pairs(text: str) -> tuple[tuple[str, str], ...]:
    """``"a:b c:d"`` → ``(("a", "b"), ("c", "d"))``."""
    return tuple((pair.partition(":")[0], pair.partition(":")[2]) for pair in text.split())


FIRST_NAMES = _words(
    """
    James Emily Oliver Charlotte William Sophie Thomas Hannah George Lucy Henry Grace Peter
    Laura Michael Sarah David Rachel Simon Claire Lukas Anna Jonas Lena Felix Mia Matteo Giulia
    Lorenzo Chiara Pierre Camille Louis Manon Hugo Chloe Pablo Lucia Diego Carmen Javier Marta
    Sergio Elena Joao Beatriz Tiago Ines Piotr Agnieszka Tomasz Katarzyna Jan Eva Mikko Aino
    Lars Ingrid Sven Astrid Kenji Yuki Hiroshi Aiko Wei Mei Jun Xiu Minho Jiwoo Arjun Priya
    Rahul Anjali Vikram Deepa Tunde Amara Kwame Zainab Emeka Ngozi Kofi Ama Tariq Leila Karim
    Nadia Samir Yasmin Olga Ivan Natasha Boris Irina Nikita Svetlana Oleg Tatiana Bogdan Daria
    Mehmet Ayse Emre Zeynep Cem Elif Andrea Nicola
    """
)

LAST_NAMES = _words(
    """
    Smith Jones Taylor Brown Wilson Evans Thompson Walker Wright Robinson Hughes Edwards Green
    Hall Wood Harris Clarke Turner Mueller Schneider Fischer Weber Wagner Becker Hoffmann
    Schulz Rossi Russo Ferrari Esposito Bianchi Romano Colombo Ricci Marino Martin Bernard
    Dubois Thomas Robert Richard Petit Durand Leroy Garcia Fernandez Gonzalez Rodriguez Lopez
    Martinez Sanchez Perez Silva Santos Ferreira Pereira Oliveira Costa Nowak Kowalski
    Wisniewski Wojcik Kaminski Virtanen Korhonen Nieminen Andersson Johansson Karlsson Nilsson
    Tanaka Suzuki Watanabe Yamamoto Nakamura Wang Zhang Liu Chen Yang Park Choi Jung Sharma
    Patel Gupta Reddy Iyer Okafor Adeyemi Mensah Boateng Haddad Khoury Mansour Nasrallah Saleh
    Aziz Ivanova Smirnova Kuznetsova Popova Sokolova Lebedev Kozlov Novikov Morozov Volkov
    Solovyov Yilmaz Kaya Demir Sahin Celik Ozturk Horvat Kovacs Nagy Szabo Novak Dvorak
    """
)

COMPANY_WORDS = _words(
    """
    Northwind Bluewater Silverline Evergreen Summit Redwood Brightstone Oakridge Harbourview
    Clearpoint Ironbridge Westfield Lakeshore Sunrise Granite Maple Cedar Falcon Orion Vega
    Atlas Helios Nimbus Zephyr Aurora Pioneer Keystone Meridian Horizon Crescent Pinnacle
    Riverside Highland Copperfield Stonegate Windmill Lighthouse Bayside Fairway Kingsley
    Ashford Whitmore Danube Baltic Adriatic Andes Sahara Tundra Monsoon Quasar Nova Vertex
    Lumen Cobalt Indigo Saffron
    """
)

INDUSTRY_WORDS = _words(
    """
    Logistics Trading Shipping Holdings Capital Ventures Technologies Software Consulting
    Engineering Foods Textiles Pharma Energy Mining Metals Chemicals Electronics Media Finance
    Insurance Properties Construction Freight Aviation Marine Agro Retail Telecom Analytics
    """
)

LEGAL_FORMS = ("LLC", "Ltd", "Limited", "Inc.", "GmbH", "S.A.", "B.V.", "AG", "PLC", "S.R.L.")

SLAVIC_ENDINGS = _words("ov ev in ovich evich ovna evna sky skiy enko uk ova eva ina skaya yuk ko")


# Latin to Cyrillic, longest first (anyascii brings it back with its own conventions).
_CYRILLIC_RULES = _pairs(
    """
    shch:щ zh:ж kh:х ts:ц ch:ч sh:ш yu:ю ya:я yo:ё ye:е iy:ий yy:ый x:кс a:а b:б v:в g:г d:д
    e:е z:з i:и y:ы k:к l:л m:м n:н o:о p:п r:р s:с t:т u:у f:ф h:х c:к w:в j:й q:к
    """
)

# Systematic spelling differences between transliteration conventions (one applied at a time).
_SPELLINGS = _pairs(
    """
    kh:h y:i iy:y ks:x x:ks ou:u u:ou ph:f ee:i v:w ca:ka co:ko cu:ku ie:y j:dzh ii:iy sh:sch
    ei:ey ey:ei q:k ah:a ll:l ss:s
    """
)

_DIACRITICS = {"a": "á", "e": "é", "i": "í", "o": "ö", "u": "ü", "n": "ñ", "c": "ç", "s": "š"}
_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_VARIANT_GROUPS: dict[str, list[str]] = {}
for _variant, _canonical in VARIANTS.items():
    _VARIANT_GROUPS.setdefault(_canonical, [_canonical]).append(_variant)


# --- Building the labelled set -------------------------------------------------------------


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


# --- Running the benchmark -----------------------------------------------------------------


@contextmanager
def _one_core() -> Iterator[int | None]:
    """Pin the process to one CPU while measuring (restored afterwards), where possible."""
    getter = getattr(os, "sched_getaffinity", None)
    setter = getattr(os, "sched_setaffinity", None)
    if getter is None or setter is None:
        yield None
        return
    before = getter(0)
    cpu = max(before)
    try:
        setter(0, {cpu})
    except OSError:
        yield None
        return
    try:
        yield cpu
    finally:
        setter(0, before)


def _ratio(numerator: int, denominator: int) -> float:
    return round(numerator / denominator, 4) if denominator else 0.0


def run_screening_bench(
    list_dir: Path,
    *,
    prefix: str | None = "full-",
    count: int = 20_000,
    seconds: float | None = None,
    seed: int = DEFAULT_SEED,
    positives_n: int = 1_500,
    negatives_n: int = 1_500,
    threshold: float = DEFAULT_THRESHOLD,
) -> ScreeningBenchReport:
    """Load the list, build the labelled set, screen ``count`` queries for speed — or as many
    as fit in ``seconds`` when given (at most ``SCREENINGS_MAX``) — and every labelled name once
    for quality (see the module docstring)."""
    if count < 1:
        raise ValueError("count must be at least 1")
    if seconds is not None and seconds <= 0:
        raise ValueError("seconds must be positive")
    started = time.perf_counter()
    sanctions_list = load_list(Path(list_dir), prefix)
    load_s = time.perf_counter() - started
    screen = ListedSanctions(sanctions_list, threshold=threshold)
    labelled = build_labelled_set(sanctions_list, seed, positives_n, negatives_n)
    queries = [item.query for item in labelled]

    latencies_ns: list[int] = []
    with _one_core() as cpu:
        clock = time.perf_counter_ns
        stream_started = clock()
        deadline = stream_started + int(seconds * 1e9) if seconds is not None else None
        limit = SCREENINGS_MAX if deadline is not None else count
        for position in range(limit):
            query = queries[position % len(queries)]
            before = clock()
            screen.screen_name(query)
            after = clock()
            latencies_ns.append(after - before)
            if deadline is not None and after >= deadline:
                break
        elapsed_s = (clock() - stream_started) / 1e9
    count = len(latencies_ns)

    true_positives = false_negatives = false_positives = true_negatives = wrong_entity = 0
    by_variation: dict[str, list[int]] = {}
    negatives_by_kind: dict[str, list[int]] = {}
    false_positive_examples: list[Example] = []
    false_negative_examples: list[Example] = []
    for item in labelled:
        result = screen.screen_name(item.query)
        example = Example(
            item.query, item.variation, item.source_name, result.matched_name, result.score
        )
        if item.listed:
            tally = by_variation.setdefault(item.variation.split("+")[0], [0, 0])
            tally[1] += 1
            if result.match:
                true_positives += 1
                tally[0] += 1
                wrong_entity += result.entity_id != item.entity_id
            else:
                false_negatives += 1
                if len(false_negative_examples) < EXAMPLES_MAX:
                    false_negative_examples.append(example)
        else:
            tally = negatives_by_kind.setdefault(item.variation, [0, 0])
            tally[1] += 1
            if result.match:
                false_positives += 1
                tally[0] += 1
                if len(false_positive_examples) < EXAMPLES_MAX:
                    false_positive_examples.append(example)
            else:
                true_negatives += 1
    precision = _ratio(true_positives, true_positives + false_positives)
    recall = _ratio(true_positives, true_positives + false_negatives)
    f1 = round(2 * precision * recall / (precision + recall), 4) if precision + recall else 0.0
    ordered = sorted(latencies_ns)
    return ScreeningBenchReport(
        list_source=sanctions_list.source,
        entity_count=sanctions_list.entity_count,
        name_count=sanctions_list.name_count,
        address_count=sanctions_list.address_count,
        load_s=round(load_s, 3),
        seed=seed,
        threshold=threshold,
        positives=sum(1 for item in labelled if item.listed),
        negatives=sum(1 for item in labelled if not item.listed),
        screenings=count,
        elapsed_s=round(elapsed_s, 6),
        screenings_per_s=round(count / elapsed_s, 1) if elapsed_s else 0.0,
        p50_ms=round(statistics.median(ordered) / 1e6, 3),
        p99_ms=round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] / 1e6, 3),
        max_ms=round(ordered[-1] / 1e6, 3),
        pinned_cpu=cpu,
        true_positives=true_positives,
        false_negatives=false_negatives,
        false_positives=false_positives,
        true_negatives=true_negatives,
        precision=precision,
        recall=recall,
        f1=f1,
        wrong_entity=wrong_entity,
        recall_by_variation={kind: (found, total) for kind, (found, total) in by_variation.items()},
        false_positive_rate_by_variation={
            kind: (found, total) for kind, (found, total) in negatives_by_kind.items()
        },
        false_positive_examples=tuple(false_positive_examples),
        false_negative_examples=tuple(false_negative_examples),
    )


# --- Recording -----------------------------------------------------------------------------


def _targets(report: ScreeningBenchReport) -> str:
    return "; ".join(
        f"{target}: {'met' if met else 'NOT met'}" for target, met in report.targets_met.items()
    )


def _examples(title: str, examples: Sequence[Example]) -> str:
    if not examples:
        return f"* {title}: none\n"
    lines = [f"* {title}:\n"]
    for example in examples:
        lines.append(
            f"  * `{example.query}` ({example.variation}; from `{example.source_name}`) → "
            f"`{example.matched_name}` at {example.score:.1f}\n"
        )
    return "".join(lines)


def record_screening_report(
    report: ScreeningBenchReport, path: Path, *, command: str = "sluice bench screening"
) -> None:
    """Add a row for ``report`` to the table of the "Sanctions screening" section of ``path``
    (created the first time) and rewrite the section's details below the table with this run's
    breakdown; the rest of the file is kept as it is."""
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    head, found, tail = text.partition(SECTION)
    rows: list[str] = []
    rest = ""
    if found:
        section, separator, after = tail.partition("\n## ")
        rest = separator + after if separator else ""
        rows = [line + "\n" for line in section.splitlines() if line.startswith("| 2")]
    else:
        head = text.rstrip("\n") + "\n\n"
    source = Path(report.list_source.split(" (")[0]).name or report.list_source
    rows.append(
        f"| {datetime.now(UTC):%Y-%m-%d} | {machine()}, load {os.getloadavg()[0]:.1f}"
        f"{f', pinned to CPU {report.pinned_cpu}' if report.pinned_cpu is not None else ''} "
        f"| {source}: {report.entity_count} entities, {report.name_count} names "
        f"| {report.load_s} | {report.screenings} | {report.screenings_per_s} "
        f"| {report.p50_ms} / {report.p99_ms} "
        f"| {report.positives} / {report.negatives} ({report.seed}) | {report.threshold} "
        f"| {report.precision} | {report.recall} | {report.f1} | {_targets(report)} "
        f"| `{command}` |\n"
    )
    recall_lines = ", ".join(
        f"{kind} {found}/{total}" for kind, (found, total) in report.recall_by_variation.items()
    )
    negative_lines = ", ".join(
        f"{kind} {found}/{total}"
        for kind, (found, total) in report.false_positive_rate_by_variation.items()
    )
    details = (
        "\n### Latest run\n\n"
        f"* List: {report.list_source}; {report.address_count} digital currency addresses.\n"
        f"* Confusion at threshold {report.threshold}: {report.true_positives} true positives, "
        f"{report.false_negatives} false negatives, {report.false_positives} false positives, "
        f"{report.true_negatives} true negatives; {report.wrong_entity} positives matched "
        "another entity than the one they were made from.\n"
        f"* Recall by variation (found/total, first variation of each name): {recall_lines}.\n"
        f"* False positives by kind of negative (matched/total): {negative_lines}.\n"
        f"* Latency max {report.max_ms} ms over {report.screenings} screenings "
        f"({report.elapsed_s} s).\n"
        + _examples("False positives", report.false_positive_examples)
        + _examples("False negatives", report.false_negative_examples)
    )
    body = f"{SECTION}\n\n{HEADER}{''.join(rows)}{details}"
    path.write_text(head + body + ("\n" + rest.lstrip("\n") if rest else ""))


def bench_command(
    list_dir: Path,
    *,
    prefix: str | None = "full-",
    count: int = 20_000,
    seconds: float | None = None,
    seed: int = DEFAULT_SEED,
    record: Path | None = None,
) -> ScreeningBenchReport:
    """``sluice bench screening``: measure, print the figures as JSON, record when asked."""
    report = run_screening_bench(list_dir, prefix=prefix, count=count, seconds=seconds, seed=seed)
    sys.stdout.write(json.dumps(report.as_dict(), ensure_ascii=False, default=str) + "\n")
    if record is not None:
        command = " ".join(["sluice", *sys.argv[1:]]) if sys.argv[1:2] == ["bench"] else None
        record_screening_report(report, record, command=command or "sluice bench screening")
    return report
