"""The in-memory name index: which listed names a query could be, and how close each one is.

**Blocking.** A query must not be scored against all ~21,000 listed names. Every canonical token
of the list is indexed under itself, its spelling key as written, and, for four letters or more,
under each of their one-letter deletions (a symmetric deletion neighbourhood: two tokens one
typo apart — a wrong, missing, extra or swapped letter — share a key). A query token collects
the names holding any token it shares a key with. Tokens held by many names (``muhammad``,
``trading``) are capped: they only confirm names already found through a rarer token, or, when
the query has nothing rarer, are intersected with each other. The best few candidates by an
estimate of their score are then scored properly.

**Scoring** (0–100). Query and listed tokens are aligned one to one, best pairs first, by
rapidfuzz's normalised Indel similarity (the better of the canonical tokens and the spelling keys;
pairs under a floor do not align; an initial aligns with a name it begins). Each listed token
weighs its rarity on the list (inverse document frequency), so a shared rare surname counts for
more than a shared ``muhammad``; an aligned query token weighs what its listed token weighs, an
unaligned one its own rarity (the rarest for a word the list does not have). The matched weight
is measured against the lighter side (a dropped middle name still matches) and the heavier side
(extra unmatched words pull the score down), blended 70/30. A guard keeps one shared word from
matching: when either side has two or more words, two must align, else the score is capped below
any sensible threshold. Separately, the names written without spaces are compared whole
(``abdulrahman`` vs ``abdul rahman``); a near-identical result counts as well. An exact match of
the sorted canonical tokens scores 100 without further work.

The index is built once and never changed afterwards, so any number of threads may query it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from itertools import chain, compress

from rapidfuzz.distance import Indel
from rapidfuzz.process import extract

from sluice.screening.names import NormalisedName

DEFAULT_THRESHOLD = 85.0
"""A score at or above this is a match (0–100). Chosen with ``sluice bench screening`` on
labelled sets of seeds 1–3 against the full SDN list: precision ≈ 0.99, recall ≈ 0.96 (88 would
trade two points of recall for half a point of precision)."""

TOKEN_SIMILARITY_FLOOR = 0.75
"""Two tokens less similar than this do not align at all."""
SMALLER_SIDE_SHARE = 0.7
"""How much of the score is the matched share of the smaller side (the rest: the larger side)."""
_LARGER_SIDE_SHARE = 1 - SMALLER_SIDE_SHARE
POSTINGS_CAP = 400
"""A token held by more names than this only confirms candidates found otherwise."""
CANDIDATES_SCORED_MAX = 16
"""How many of the best-estimated candidates are scored fully."""
JOINED_SIMILARITY_MIN = 0.95
"""The whole-name comparison (spaces removed) counts only when at least this close."""
ONE_WORD_CAP = 60.0
"""The most a query scores when only one word aligns and either side has more."""
INITIAL_WEIGHT = 0.5
"""The weight of a one-letter token (an initial)."""
INITIAL_SIMILARITY = 0.9
"""How well an initial matches a name it begins."""
DELETION_LENGTH_MIN = 4
"""Tokens shorter than this are looked up exactly (their deletions would block too widely)."""
NEAR_WORDS_CACHED = 8_192
"""How many query words' near listed words an index keeps (least recently used go first)."""


@dataclass(frozen=True, slots=True)
class IndexedName:
    """One listed name (primary or alias) as the index holds it."""

    text: str
    entity: int
    tokens: tuple[str, ...]
    spellings: tuple[str, ...]
    weights: tuple[float, ...]
    total_weight: float
    words: int  # tokens that are not initials
    joined: str


@dataclass(frozen=True, slots=True)
class NameScore:
    """The best listed name for a query and its score (0–100)."""

    name: IndexedName
    score: float


def _deletions(token: str) -> set[str]:
    keys = {token}
    if len(token) >= DELETION_LENGTH_MIN:
        keys.update(token[:position] + token[position + 1 :] for position in range(len(token)))
    return keys


def token_similarity(left: str, right: str, floor: float = TOKEN_SIMILARITY_FLOOR) -> float:
    """0–1: normalised Indel similarity (0 under the floor); an initial is nearly as good as a
    name it begins."""
    if left == right:
        return 1.0
    if len(left) == 1 or len(right) == 1:
        return INITIAL_SIMILARITY if left[0] == right[0] else 0.0
    return Indel.normalized_similarity(left, right, score_cutoff=floor)


def _words(tokens: tuple[str, ...]) -> int:
    return sum(1 for token in tokens if len(token) > 1)


_NameScoring = tuple[tuple[int, ...], tuple[float, ...], tuple[bool, ...], float, int]
"""Of a listed name: its (token, spelling) pairs by number, its weights, which of its tokens
are words, its total weight, its number of words."""


@dataclass(frozen=True, slots=True)
class _ScoringTables:
    """What :meth:`NameIndex.best` scores with, precomputed: each distinct listed (token,
    spelling) pair numbered (names share them: a query's pair similarities are computed once
    per pair, not once per name), and per listed name what :class:`_QueryScorer` reads."""

    name_ids: tuple[tuple[int, ...], ...]
    pair_tokens: tuple[str, ...]
    pair_spellings: tuple[str, ...]
    initial_pairs: frozenset[int]  # pairs with a one-letter token or spelling
    scoring: tuple[_NameScoring, ...]

    @classmethod
    def build(cls, names: Sequence[IndexedName]) -> _ScoringTables:
        pair_ids: dict[tuple[str, str], int] = {}
        name_ids = tuple(
            tuple(
                pair_ids.setdefault(pair, len(pair_ids))
                for pair in zip(name.tokens, name.spellings, strict=True)
            )
            for name in names
        )
        return cls(
            name_ids=name_ids,
            pair_tokens=tuple(token for token, _ in pair_ids),
            pair_spellings=tuple(spelling for _, spelling in pair_ids),
            initial_pairs=frozenset(
                number
                for (token, spelling), number in pair_ids.items()
                if len(token) == 1 or len(spelling) == 1
            ),
            scoring=tuple(
                (
                    ids,
                    name.weights,
                    tuple(len(token) > 1 for token in name.tokens),
                    name.total_weight,
                    name.words,
                )
                for ids, name in zip(name_ids, names, strict=True)
            ),
        )


class NameIndex:
    """Listed names, indexed for blocking and scoring (immutable once built)."""

    def __init__(
        self, names: Sequence[tuple[str, int, NormalisedName]], *, batched: bool = True
    ) -> None:
        """``names``: (the name as listed, the entity's position, its normalised form).
        ``batched``: build the tables :meth:`best` scores with now (else on its first call:
        an index that only :meth:`ranked` reads never needs them)."""
        document_frequency: dict[str, int] = {}
        for _, _, normalised in names:
            for token in set(normalised.tokens):
                document_frequency[token] = document_frequency.get(token, 0) + 1
        count = max(len(names), 1)
        self._weights = {
            token: _weight(token, frequency, count)
            for token, frequency in document_frequency.items()
        }
        self._unknown_weight = math.log(1 + count)
        indexed: list[IndexedName] = []
        postings: dict[str, list[int]] = {}
        exact: dict[str, list[int]] = {}
        neighbourhood: dict[str, set[str]] = {}
        keyed: set[tuple[str, str]] = set()
        for position, (text, entity, normalised) in enumerate(names):
            weights = tuple(self._weights[token] for token in normalised.tokens)
            indexed.append(
                IndexedName(
                    text=text,
                    entity=entity,
                    tokens=normalised.tokens,
                    spellings=normalised.spellings,
                    weights=weights,
                    total_weight=sum(weights),
                    words=_words(normalised.tokens),
                    joined=normalised.joined,
                )
            )
            for token, spelling in zip(normalised.tokens, normalised.spellings, strict=True):
                held = postings.setdefault(token, [])
                if not held or held[-1] != position:
                    held.append(position)
                if (token, spelling) in keyed:
                    continue  # its keys are in already (muhammad, ali…: thousands of names)
                keyed.add((token, spelling))
                keys = _deletions(token)
                if spelling != token:
                    keys |= _deletions(spelling)
                for key in keys:
                    neighbourhood.setdefault(key, set()).add(token)
            exact.setdefault(normalised.sorted_key, []).append(position)
        self._names = tuple(indexed)
        self._totals = tuple(name.total_weight for name in indexed)
        self._postings = {token: tuple(held) for token, held in postings.items()}
        self._posting_sets = {
            token: frozenset(held) for token, held in postings.items() if len(held) > POSTINGS_CAP
        }
        self._exact = {key: tuple(held) for key, held in exact.items()}
        self._neighbourhood = {key: tuple(tokens) for key, tokens in neighbourhood.items()}
        self._held = {token: len(held) for token, held in self._postings.items()}
        # A query word's near listed words are the same for every query holding it (names
        # share words: half of the words of 3,000 varied listed and unlisted names are repeats).
        # The cache holds the tables it reads, not the index (no reference cycle to collect).
        self._near: Callable[[str, str, float], tuple[tuple[int, str, float], ...]] = lru_cache(
            maxsize=NEAR_WORDS_CACHED
        )(partial(_near_words, self._neighbourhood, self._held, self._weights))
        self._scoring_tables = _ScoringTables.build(self._names) if batched else None

    def _tables(self) -> _ScoringTables:
        """The tables best() scores with: built with the index, or on first use for an index
        built without them (two threads may both build them: the same tables)."""
        tables = self._scoring_tables
        if tables is None:
            tables = self._scoring_tables = _ScoringTables.build(self._names)
        return tables

    @property
    def names(self) -> tuple[IndexedName, ...]:
        return self._names

    def weight(self, token: str) -> float:
        """A token's weight: its rarity on the list (unknown tokens weigh as the rarest)."""
        if len(token) == 1:
            return INITIAL_WEIGHT
        return self._weights.get(token, self._unknown_weight)

    def best(
        self,
        query: NormalisedName,
        *,
        floor: float = TOKEN_SIMILARITY_FLOOR,
        bound: Callable[[NormalisedName, IndexedName], float] | None = None,
        beat: float = 0.0,
    ) -> NameScore | None:
        """The best-scoring listed name for ``query``, or None when nothing comes close.

        ``floor``: the token similarity under which two tokens do not align (stricter for a
        query that is a transliteration of ours than for a name typed in Latin letters).
        ``bound``: a cap on each candidate's score (a rendering's whole-name comparison); a
        candidate whose cap is not above ``beat`` (the best score found so far through other
        renderings) is not scored at all, and None is returned when none is."""
        if not query.tokens:
            return None
        exact = self._exact.get(query.sorted_key)
        if exact:
            return NameScore(self._names[exact[0]], 100.0)
        query_weights = tuple(self.weight(token) for token in query.tokens)
        estimates = self._candidates(query, query_weights, floor)
        if not estimates:
            return None
        names = self._names
        # Ranked as heapq.nlargest(CANDIDATES_SCORED_MAX, estimates, key=share) would (stable).
        ranked = self._top(estimates, sum(query_weights))
        scorer = _QueryScorer(self, query, query_weights, floor)
        best: NameScore | None = None
        if bound is None:
            # Every candidate is scored: their pair similarities and joined forms in batches.
            scorer.add(ranked)
            joined = scorer.joined(ranked)
            for position, joined_similarity in zip(ranked, joined, strict=True):
                score = scorer.score(position, joined_similarity)
                if best is None or score > best.score:
                    best = NameScore(names[position], score)
                    if score >= 100.0:
                        break  # no score is above 100, and ties go to the earlier candidate
            return best
        for position in ranked:
            name = names[position]
            cap = round(bound(query, name), 2)
            if cap <= beat or (best is not None and cap <= best.score):
                continue  # it cannot score more than what is already found
            scorer.add((position,))
            score = min(scorer.score(position, scorer.joined((position,))[0]), cap)
            if best is None or score > best.score:
                best = NameScore(name, score)
        return best

    def _top(self, estimates: dict[int, float], query_total: float) -> list[int]:
        """The candidates scored fully: the best few by the estimate's share of the larger
        side, the cheapest proxy of the blend (among equal shares, the one found first)."""
        totals = self._totals
        positions = list(estimates)
        shares = [
            # estimate / max(query_total, total), without a call per candidate
            estimate / (total if (total := totals[position]) > query_total else query_total)
            for position, estimate in estimates.items()
        ]
        order = sorted(range(len(shares)), key=shares.__getitem__, reverse=True)
        return [positions[rank] for rank in order[:CANDIDATES_SCORED_MAX]]

    def ranked(
        self, query: NormalisedName, *, floor: float = TOKEN_SIMILARITY_FLOOR
    ) -> Iterator[NameScore]:
        """The listed names :meth:`best` chooses from, best first (each name whose sorted tokens
        are the query's at 100, then the candidates scored — only once the caller asks past
        those): for a caller that checks more than the tokens and may set the first aside."""
        if not query.tokens:
            return
        names = self._names
        exact = self._exact.get(query.sorted_key, ())
        for position in exact:
            yield NameScore(names[position], 100.0)
        query_weights = tuple(self.weight(token) for token in query.tokens)
        estimates = self._candidates(query, query_weights, floor)
        totals = self._totals
        query_total = sum(query_weights)
        ranked = heapq.nlargest(
            CANDIDATES_SCORED_MAX,
            (position for position in estimates if position not in exact),
            key=lambda position: estimates[position] / max(query_total, totals[position]),
        )
        scored = [
            NameScore(names[position], score_tokens(query, query_weights, names[position], floor))
            for position in ranked
        ]
        # Stable: among equal scores the better estimate stays first, as in best().
        scored.sort(key=lambda name_score: -name_score.score)
        yield from scored

    def _candidates(
        self,
        query: NormalisedName,
        weights: tuple[float, ...],
        floor: float = TOKEN_SIMILARITY_FLOOR,
    ) -> dict[int, float]:
        """Candidate names → an estimate of their matched weight."""
        found: list[tuple[int, str, float]] = []
        for token, spelling in zip(query.tokens, query.spellings, strict=True):
            found.extend(self._near(token, spelling, floor))
        found.sort()
        estimates: dict[int, float] = {}
        common: list[tuple[str, float]] = []
        postings = self._postings
        add = estimates.get
        for held, listed, gain in found:
            if held <= POSTINGS_CAP:
                for position in postings[listed]:
                    estimates[position] = add(position, 0.0) + gain
            else:
                common.append((listed, gain))
        if not estimates and len(common) >= 2:
            # Only common words (e.g. "Muhammad Ali"): names holding at least two of them.
            first, second = common[0][0], common[1][0]
            for position in self._posting_sets[first] & self._posting_sets[second]:
                estimates[position] = 0.0
        for listed, gain in common:
            # Each name holding the word gains once per word, in the words' order as before.
            for position in self._posting_sets[listed].intersection(estimates):
                estimates[position] += gain
        return estimates


class _QueryScorer:
    """:func:`score_tokens` for one query against many listed names of one index, the same
    scores computed with less work: each distinct listed (token, spelling) pair is compared
    with the query's tokens once per query, many pairs per call to rapidfuzz."""

    __slots__ = (
        "_floor",
        "_index",
        "_joined",
        "_long",
        "_query",
        "_query_words",
        "_rows",
        "_tables",
        "_weights",
    )

    def __init__(
        self,
        index: NameIndex,
        query: NormalisedName,
        query_weights: tuple[float, ...],
        floor: float,
    ) -> None:
        self._index = index
        self._tables = index._tables()
        self._query = query
        self._weights = query_weights
        self._floor = floor
        self._long = tuple(len(token) > 1 for token in query.tokens)
        self._query_words = _words(query.tokens)
        self._joined = query.joined
        self._rows: dict[int, tuple[tuple[int, float], ...]] = {}
        """pair number → (query token position, similarity) for each query token it pairs
        with in score_tokens (similarity not 0)"""

    def add(self, positions: Sequence[int]) -> None:
        """Compare the query's tokens with the pairs of these names not compared yet."""
        rows = self._rows
        tables = self._tables
        pairs = dict.fromkeys(chain.from_iterable(map(tables.name_ids.__getitem__, positions)))
        new = [pair for pair in pairs if pair not in rows] if rows else list(pairs)
        if not new:
            return
        tokens = list(map(tables.pair_tokens.__getitem__, new))
        spellings = list(map(tables.pair_spellings.__getitem__, new))
        count = len(new)
        # Pairs with an initial on the listed side are compared one by one, as score_tokens does.
        initials = (
            []
            if tables.initial_pairs.isdisjoint(new)
            else [rank for rank, pair in enumerate(new) if pair in tables.initial_pairs]
        )
        floor = self._floor
        # Every listed word over the floor, by its Indel similarity to a query word.
        near = partial(extract, scorer=Indel.normalized_similarity, score_cutoff=floor, limit=None)
        found: list[list[tuple[int, float]]] = [[] for _ in new]
        for query_position, (query_token, query_spelling) in enumerate(
            zip(self._query.tokens, self._query.spellings, strict=True)
        ):
            if len(query_token) == 1 or len(query_spelling) == 1:
                for rank, (token, spelling) in enumerate(zip(tokens, spellings, strict=True)):
                    similarity = _pair_similarity(
                        query_token, query_spelling, token, spelling, floor
                    )
                    if similarity:
                        found[rank].append((query_position, similarity))
                continue
            # Words on both sides: the better of the two Indel similarities (1.0 for equal
            # words or equal spellings), the ones over the floor from one call each.
            similar: dict[int, float] = {}
            if query_token == query_spelling:
                # One call for both: the listed words, then their spellings (rank - count).
                for _, similarity, rank in near(query_token, tokens + spellings):
                    if rank >= count:
                        rank -= count
                    if similarity > similar.get(rank, 0.0):
                        similar[rank] = similarity
            else:
                for _, similarity, rank in near(query_token, tokens):
                    similar[rank] = similarity
                for _, similarity, rank in near(query_spelling, spellings):
                    if similarity > similar.get(rank, 0.0):
                        similar[rank] = similarity
            for rank in initials:
                similarity = _pair_similarity(
                    query_token, query_spelling, tokens[rank], spellings[rank], floor
                )
                if similarity:
                    similar[rank] = similarity
                else:
                    similar.pop(rank, None)
            for rank, similarity in similar.items():
                if similarity:  # (a floor of 0 lets extract return dissimilar words)
                    found[rank].append((query_position, similarity))
        rows.update(zip(new, map(tuple, found), strict=True))

    def joined(self, positions: Sequence[int]) -> list[float]:
        """The whole-name comparison of each of these names (0 under its minimum)."""
        names = self._index._names
        choices = [names[position].joined for position in positions]
        similarities = [0.0] * len(choices)
        for _, similarity, rank in extract(
            self._joined,
            choices,
            scorer=Indel.normalized_similarity,
            score_cutoff=JOINED_SIMILARITY_MIN,
            limit=None,
        ):
            similarities[rank] = similarity
        return similarities

    def score(self, position: int, joined: float) -> float:
        """score_tokens(query, query_weights, names[position], floor), once :meth:`add` has
        seen the name, given its whole-name comparison ``joined``."""
        pair_ids, name_weights, name_long, name_total, name_words = self._tables.scoring[position]
        rows = self._rows
        pairs = [
            (similarity, query_position, name_position)
            for name_position, pair in enumerate(pair_ids)
            for query_position, similarity in rows[pair]
        ]
        query_weights = self._weights
        matched = 0.0
        query_total = 0.0
        aligned_words = 0
        if pairs:
            # Aligned one to one, best pairs first (ties: the later query word, then the later
            # listed word, as sorting the tuples in reverse does).
            pairs.sort(reverse=True)
            unused_query = [True] * len(query_weights)
            used_name = [False] * len(pair_ids)
            query_long = self._long
            for similarity, query_position, name_position in pairs:
                if not unused_query[query_position] or used_name[name_position]:
                    continue
                unused_query[query_position] = False
                used_name[name_position] = True
                weight = name_weights[name_position]
                matched += similarity * weight
                query_total += weight
                if query_long[query_position] and name_long[name_position]:
                    aligned_words += 1
            query_total += sum(compress(query_weights, unused_query))
        else:
            query_total += sum(query_weights)
        # _blend(matched, query_total, name_total), written out
        if query_total < name_total:
            smaller, larger = query_total, name_total
        else:
            smaller, larger = name_total, query_total
        if smaller <= 0:
            score = 0.0
        else:
            smaller_share = matched / smaller
            larger_share = matched / larger
            score = 100 * (
                SMALLER_SIDE_SHARE * (1.0 if smaller_share > 1.0 else smaller_share)
                + _LARGER_SIDE_SHARE * (1.0 if larger_share > 1.0 else larger_share)
            )
        if (
            aligned_words < 2
            and score > ONE_WORD_CAP
            and (self._query_words >= 2 or name_words >= 2)
        ):
            score = ONE_WORD_CAP  # min(score, ONE_WORD_CAP) when one word aligns
        return round(max(score, 100 * joined), 2)


def _near_words(
    neighbourhood: dict[str, tuple[str, ...]],
    held_by: dict[str, int],
    listed_weights: dict[str, float],
    token: str,
    spelling: str,
    floor: float,
) -> tuple[tuple[int, str, float], ...]:
    """The listed words near a query word (one key apart, at the floor or above): for
    each, how many names hold it, the word, and its similarity times its weight (of an
    index: its neighbourhood, its words' postings lengths and weights)."""
    similar: set[str] = set()
    for key in _deletions(token) | _deletions(spelling):
        listed_tokens = neighbourhood.get(key)
        if listed_tokens is not None:
            similar.update(listed_tokens)
    if not similar:
        return ()
    found: list[tuple[int, str, float]] = []
    if len(token) == 1 or len(spelling) == 1:
        for listed in similar:
            if listed in (token, spelling):
                similarity = 1.0
            else:
                similarity = max(
                    token_similarity(token, listed, floor),
                    token_similarity(spelling, listed, floor),
                )
            if similarity:
                found.append((held_by[listed], listed, similarity * listed_weights[listed]))
        return tuple(found)
    # max(token_similarity(token, listed), token_similarity(spelling, listed)) for every
    # word near the query's word, the Indel similarities in one call each.
    near = list(similar)
    similarities = _similarities(token, near, floor)
    if spelling != token:
        spelled = _similarities(spelling, near, floor)
        similarities = [
            other if other > similarity else similarity
            for similarity, other in zip(similarities, spelled, strict=True)
        ]
    for listed, similarity in zip(near, similarities, strict=True):
        if listed in (token, spelling):
            similarity = 1.0
        if similarity:
            found.append((held_by[listed], listed, similarity * listed_weights[listed]))
    return tuple(found)


def _pair_similarity(
    query_token: str, query_spelling: str, token: str, spelling: str, floor: float
) -> float:
    """How well a query word pairs with a listed word in score_tokens (0: not at all)."""
    if query_token == token or query_spelling == spelling:
        return 1.0
    if len(query_token) == 1 or len(token) == 1:
        similarity = INITIAL_SIMILARITY if query_token[0] == token[0] else 0.0
    else:
        similarity = Indel.normalized_similarity(query_token, token, score_cutoff=floor)
    if len(query_spelling) == 1 or len(spelling) == 1:
        spelled = INITIAL_SIMILARITY if query_spelling[0] == spelling[0] else 0.0
    else:
        spelled = Indel.normalized_similarity(query_spelling, spelling, score_cutoff=floor)
    return spelled if spelled > similarity else similarity


def _similarities(text: str, choices: list[str], floor: float) -> list[float]:
    """token_similarity(text, choice, floor) for each choice that is not ``text`` itself (an
    initial against a name, or normalised Indel similarity), the Indel ones in one call."""
    if len(text) == 1:
        return [INITIAL_SIMILARITY if choice[0] == text else 0.0 for choice in choices]
    similarities = [0.0] * len(choices)
    for _, similarity, rank in extract(
        text, choices, scorer=Indel.normalized_similarity, score_cutoff=floor, limit=None
    ):
        similarities[rank] = similarity
    first = text[0]
    for rank, choice in enumerate(choices):
        if len(choice) == 1:
            similarities[rank] = INITIAL_SIMILARITY if choice == first else 0.0
    return similarities


def _weight(token: str, frequency: int, count: int) -> float:
    if len(token) == 1:
        return INITIAL_WEIGHT
    return math.log(1 + count / frequency)


def _blend(matched: float, query_total: float, name_total: float) -> float:
    smaller, larger = sorted((query_total, name_total))
    if smaller <= 0:
        return 0.0
    return 100 * (
        SMALLER_SIDE_SHARE * min(matched / smaller, 1.0)
        + (1 - SMALLER_SIDE_SHARE) * min(matched / larger, 1.0)
    )


def score_tokens(
    query: NormalisedName,
    query_weights: tuple[float, ...],
    name: IndexedName,
    floor: float = TOKEN_SIMILARITY_FLOOR,
) -> float:
    """Score (0–100) ``query`` against one listed name (see the module docstring)."""
    # token_similarity of the words and of their spellings, written out: this loop is most of
    # a screening's time.
    pairs: list[tuple[float, int, int]] = []
    name_tokens = name.tokens
    name_spellings = name.spellings
    similar = Indel.normalized_similarity
    for query_position, (query_token, query_spelling) in enumerate(
        zip(query.tokens, query.spellings, strict=True)
    ):
        for name_position, name_token in enumerate(name_tokens):
            name_spelling = name_spellings[name_position]
            if query_token == name_token or query_spelling == name_spelling:
                pairs.append((1.0, query_position, name_position))
                continue
            if len(query_token) == 1 or len(name_token) == 1:
                similarity = INITIAL_SIMILARITY if query_token[0] == name_token[0] else 0.0
            else:
                similarity = similar(query_token, name_token, score_cutoff=floor)
            if len(query_spelling) == 1 or len(name_spelling) == 1:
                spelled = INITIAL_SIMILARITY if query_spelling[0] == name_spelling[0] else 0.0
            else:
                spelled = similar(query_spelling, name_spelling, score_cutoff=floor)
            if spelled > similarity:
                similarity = spelled
            if similarity:
                pairs.append((similarity, query_position, name_position))
    pairs.sort(reverse=True)
    used_query: set[int] = set()
    used_name: set[int] = set()
    matched = 0.0
    query_total = 0.0
    aligned_words = 0
    for similarity, query_position, name_position in pairs:
        if query_position in used_query or name_position in used_name:
            continue
        used_query.add(query_position)
        used_name.add(name_position)
        # An aligned query word weighs what the listed word weighs (a misspelt word would
        # otherwise weigh as the rarest word there is).
        weight = name.weights[name_position]
        matched += similarity * weight
        query_total += weight
        if len(query.tokens[query_position]) > 1 and len(name.tokens[name_position]) > 1:
            aligned_words += 1
    query_total += sum(
        weight for position, weight in enumerate(query_weights) if position not in used_query
    )
    score = _blend(matched, query_total, name.total_weight)
    if aligned_words < 2 and max(_words(query.tokens), name.words) >= 2:
        score = min(score, ONE_WORD_CAP)
    joined = Indel.normalized_similarity(
        query.joined, name.joined, score_cutoff=JOINED_SIMILARITY_MIN
    )
    return round(max(score, 100 * joined), 2)
