"""Sanctions lists: loading the OFAC SDN CSV set and OpenSanctions entity JSON lines into one
immutable, indexed :class:`SanctionsList`.

**OFAC SDN CSV set** (no header row, ``-0-`` — possibly with a trailing space — means empty):

* ``sdn.csv``: ent_num, SDN_Name, SDN_Type, Program, Title, Call_Sign, Vess_type, Tonnage, GRT,
  Vess_flag, Vess_owner, Remarks. Individuals are written ``"LAST, First Middle"``.
* ``alt.csv``: ent_num, alt_num, alt_type, alt_name, alt_remarks — aliases.
* ``add.csv``: ent_num, add_num, address, city/state/postal, country, add_remarks.
* ``sdn_comments.csv``: ent_num, remarks continued (a long remarks field continues there).

The files of one set share a prefix (``sdn.csv`` or ``full-sdn.csv``, ``full-alt.csv``…); only
``sdn.csv`` is required. From the remarks, the loader takes the a.k.a.'s (``a.k.a. 'NAME'``, also
``f.k.a.``/``n.k.a.``), indexed as aliases, and the digital currency addresses
(``Digital Currency Address - XBT 1KUU…``), matched exactly. A lone DOS end-of-file character
(``\\x1a``) closing a file is tolerated.

**OpenSanctions** (FollowTheMoney entities, one JSON object per line, ``*.jsonl`` or ``*.json``):
``{"id", "schema", "caption", "properties": {"name": [...], "alias": [...], ...}}``. People,
organisations, companies, legal entities, public bodies, vessels and airplanes are screened by
``name``, ``alias``, ``weakAlias`` and ``previousName``; ``CryptoWallet`` entities contribute
their ``publicKey`` addresses, attributed to their ``holder`` (to the wallet itself when the
holder is not in the file — a listed address is never dropped). Other schemas are skipped.

**Guarantees.** A damaged file — a short or garbled row, a non-numeric ``ent_num``, a duplicate
entity, an empty name, bytes that are not UTF-8, a line that is not a JSON object — is refused
with a :class:`SanctionsListError` naming the file, the line and the problem; nothing is half
loaded. A row of ``alt``/``add``/``sdn_comments`` pointing at an entity the set does not have
(which happens in extracts of a list) is skipped and reported in ``SanctionsList.warnings``, or
refused with ``strict=True``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any

from sluice.domain.errors import InvalidInputError
from sluice.screening.arabic import (
    SKELETON,
    arabic_queries,
    covers_surname,
    listed_skeletons,
    long_vowels_agree,
)
from sluice.screening.cjk import east_asian_renderings, whole_name_score
from sluice.screening.index import ONE_WORD_CAP, NameIndex, NameScore
from sluice.screening.names import NormalisedName, normalise_name
from sluice.screening.scripts import ANYASCII, ARABIC, LATIN, needs_renderings, scripts_of

OFAC_ID_PREFIX = "ofac-sdn:"
OFAC_PARTS = ("sdn", "alt", "add", "sdn_comments")
OFAC_FIELD_COUNTS = {"sdn": 12, "alt": 5, "add": 6, "sdn_comments": 2}
OFAC_EMPTY = "-0-"
END_OF_FILE = "\x1a"
JSON_SUFFIXES = (".jsonl", ".json")
SCREENED_SCHEMAS = frozenset(
    {"Person", "Organization", "Company", "LegalEntity", "PublicBody", "Vessel", "Airplane"}
)
NAME_PROPERTIES = ("name", "alias", "weakAlias", "previousName")
INDIVIDUAL_KINDS = frozenset({"individual", "Person"})
NAME_LENGTH_MAX = 1_000
"""Longer names are refused (lists and queries alike): no real name is that long."""
WARNINGS_KEPT_MAX = 100
RENDERED_SIMILARITY_FLOOR = 0.85
"""Token floor for our own transliterations (pinyin, Korean, Hepburn): they are spelt as the
lists spell them, so a looser alignment would only find lookalikes."""
SKELETON_SIMILARITY_FLOOR = 0.8
"""Token floor for consonant skeletons (a skeleton is short: one consonant apart is far)."""
VOWELS_DISAGREE_CAP = 80.0
"""The most a skeleton match scores when the letters the Arabic script writes besides the
consonants (long vowels, a word's opening and closing vowel) are not the listed name's (see
:func:`sluice.screening.arabic.long_vowels_agree`), or when none of the query's words is the
listed surname (:func:`sluice.screening.arabic.covers_surname`)."""

_ALSO_KNOWN_AS = re.compile(r"\b[afn]\.k\.a\.,?\s*'([^']+)'", re.IGNORECASE)
_CURRENCY_ADDRESS = re.compile(r"Digital Currency Address - ([A-Za-z0-9]+)\s+([^\s;]+)")


class SanctionsListError(InvalidInputError):
    """A sanctions list file that cannot be loaded; says which file, which line and why."""

    def __init__(self, path: Path | str, problem: str, *, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path.name} line {line}" if line is not None else f"{self.path}"
        super().__init__(f"sanctions list {where}: {problem}")


@dataclass(frozen=True, slots=True)
class SanctionedEntity:
    """One listed person, organisation, vessel or aircraft."""

    entity_id: str
    name: str
    kind: str
    source: str
    programs: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    addresses: tuple[str, ...] = ()
    locations: tuple[str, ...] = ()
    remarks: str = ""


@dataclass(frozen=True, slots=True)
class ListedAddress:
    """A listed digital currency address and the entity it belongs to."""

    address: str
    currency: str | None
    entity: SanctionedEntity


@dataclass(frozen=True, slots=True)
class NameFound:
    """The closest listed name to a query (whatever its score) and its entity."""

    score: float
    entity: SanctionedEntity
    matched_name: str
    rendering: str = ANYASCII
    """How the query was brought to Latin letters for the match: ``"anyascii"`` (Latin,
    Cyrillic, Greek…), or e.g. ``"pinyin: Fangwei Li"``, ``"Arabic consonant skeleton: hsn
    nsrl"`` (see :mod:`sluice.screening.scripts`)."""


def address_key(address: str) -> str:
    """How an address is compared: trimmed; ``0x…`` hex addresses case-insensitively."""
    address = address.strip()
    if address[:2].lower() == "0x":
        return address.lower()
    return address


def check_name(name: str) -> str:
    """A name fit to screen, or :class:`InvalidInputError` (blank, too long)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInputError("a name to screen must not be empty")
    if len(name) > NAME_LENGTH_MAX:
        raise InvalidInputError(f"a name to screen is at most {NAME_LENGTH_MAX} characters")
    return name.strip()


@dataclass(frozen=True)
class SanctionsList:
    """A loaded list: its entities, their names indexed, their addresses by exact key.

    Built once by :meth:`build` and never changed afterwards (safe to share between threads).
    """

    entities: tuple[SanctionedEntity, ...]
    source: str
    loaded_at: datetime
    warnings: tuple[str, ...]
    index: NameIndex = field(repr=False)
    _addresses: dict[str, ListedAddress] = field(repr=False)
    skeleton_index: NameIndex | None = field(default=None, repr=False)
    """The listed names' consonant skeletons, for names written in Arabic script."""

    @classmethod
    def build(
        cls,
        entities: Iterable[SanctionedEntity],
        *,
        source: str,
        addresses: Iterable[tuple[str, str | None, SanctionedEntity]] = (),
        warnings: Iterable[str] = (),
    ) -> SanctionsList:
        """Index ``entities`` (every name and alias) and ``addresses`` (address, currency,
        entity); an entity's own ``addresses`` are indexed too."""
        entities = tuple(entities)
        names: list[tuple[str, int, NormalisedName]] = []
        for position, entity in enumerate(entities):
            seen: set[str] = set()
            last_first = entity.kind in INDIVIDUAL_KINDS
            for number, text in enumerate((entity.name, *entity.aliases)):
                # The primary name and formal aliases of an individual are "LAST, First";
                # a.k.a.'s taken from remarks are written naturally — let the comma decide.
                normalised = normalise_name(
                    text, ordered_last_first=last_first if number == 0 or "," in text else None
                )
                if normalised.tokens and normalised.sorted_key not in seen:
                    seen.add(normalised.sorted_key)
                    names.append((text, position, normalised))
        by_key: dict[str, ListedAddress] = {}
        for entity in entities:
            for address in entity.addresses:
                by_key.setdefault(address_key(address), ListedAddress(address, None, entity))
        for address, currency, entity in addresses:
            by_key[address_key(address)] = ListedAddress(address, currency, entity)
        return cls(
            entities=entities,
            source=source,
            loaded_at=datetime.now(UTC),
            warnings=tuple(warnings),
            index=NameIndex(names),
            _addresses=by_key,
            skeleton_index=NameIndex(
                [
                    (text, entity, listed_skeletons(normalised))
                    for text, entity, normalised in names
                ],
                batched=False,  # read through ranked() only
            ),
        )

    @property
    def entity_count(self) -> int:
        return len(self.entities)

    @property
    def name_count(self) -> int:
        return len(self.index.names)

    @property
    def address_count(self) -> int:
        return len(self._addresses)

    def find_name(self, name: str) -> NameFound | None:
        """The closest listed name to ``name`` (None when no listed name is close at all)."""
        normalised = normalise_name(check_name(name))
        if not normalised.tokens:
            raise InvalidInputError(f"a name to screen needs letters or digits: {name!r}")
        rendering = ANYASCII
        if needs_renderings(name):
            # A name wholly in a script with renderings of its own is screened through those
            # alone (anyascii's reading of Han or Hangul finds only lookalikes); Latin words
            # mixed in keep anyascii's result in the running.
            found = self.index.best(normalised) if LATIN in scripts_of(name) else None
            found, rendering = self._best_rendering(name, found)
        else:
            found = self.index.best(normalised)
        if found is None:
            return None
        return NameFound(found.score, self.entities[found.name.entity], found.name.text, rendering)

    def _best_rendering(self, name: str, found: NameScore | None) -> tuple[NameScore | None, str]:
        """The best of anyascii's result and the script's own renderings (see
        :mod:`sluice.screening.scripts`); ties go to the earlier one."""
        rendering = ANYASCII
        scripts = scripts_of(name)
        for candidate in east_asian_renderings(name, scripts):
            if found is not None and found.score >= 100.0:
                break  # ties go to the earlier rendering: nothing later can win
            query = _rendered_query(candidate.text)
            scored = (
                self.index.best(
                    query,
                    floor=RENDERED_SIMILARITY_FLOOR,
                    bound=whole_name_score,
                    beat=found.score if found is not None else 0.0,
                )
                if query.tokens
                else None
            )
            if scored is not None and (found is None or scored.score > found.score):
                found, rendering = scored, f"{candidate.system}: {candidate.text}"
        if ARABIC in scripts and self.skeleton_index is not None:
            queries = arabic_queries(name)
            for query in queries:
                if found is not None and found.score >= 100.0:
                    break  # ties go to the earlier form: nothing later can win
                scored = self._best_skeleton(name, query, one_word=len(queries[0].tokens) == 1)
                if scored is not None and (found is None or scored.score > found.score):
                    found, rendering = scored, f"{SKELETON}: {' '.join(query.tokens)}"
        return found, rendering

    def _best_skeleton(
        self, name: str, query: NormalisedName, *, one_word: bool
    ) -> NameScore | None:
        """The best listed name for a skeleton query once the letters the skeleton leaves out
        are checked: candidates in the order of their skeleton scores, each capped when its
        vowels or surname disagree (see :data:`VOWELS_DISAGREE_CAP`), until no later one can
        do better."""
        assert self.skeleton_index is not None
        best: NameScore | None = None
        for scored in self.skeleton_index.ranked(query, floor=SKELETON_SIMILARITY_FLOOR):
            if best is not None and scored.score <= best.score:
                break  # ranked by score: nothing after this one scores more
            score = scored.score
            if one_word:
                # One word's consonants are too little to name anyone (فيروز Fairuz and
                # FARAZ are both f-r-z): a one-word name matches through its letters only.
                score = min(score, ONE_WORD_CAP)
            if score > VOWELS_DISAGREE_CAP and not (
                long_vowels_agree(name, scored.name.text)
                and covers_surname(query, scored.name.text, SKELETON_SIMILARITY_FLOOR)
            ):
                score = VOWELS_DISAGREE_CAP
            if best is None or score > best.score:
                best = NameScore(scored.name, score)
            if best.score >= 100.0:
                break  # before the generator scores the candidates past the exact names
        return best

    def find_address(self, address: str) -> ListedAddress | None:
        """The listed address equal to ``address`` (see :func:`address_key`), if any."""
        if not isinstance(address, str) or not address.strip():
            raise InvalidInputError("an address to screen must not be empty")
        return self._addresses.get(address_key(address))

    def addresses(self) -> Iterator[ListedAddress]:
        return iter(self._addresses.values())


@lru_cache(maxsize=4_096)
def _rendered_query(text: str) -> NormalisedName:
    """A rendering as screening compares it (renderings are written given name first)."""
    return normalise_name(text, ordered_last_first=False)


# --- Finding the files ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListFiles:
    """The files of one list: an OFAC set (by part) and/or OpenSanctions JSON-lines files."""

    ofac: dict[str, Path]
    json_lines: tuple[Path, ...]

    def describe(self, directory: Path) -> str:
        files = [path.name for path in (*self.ofac.values(), *self.json_lines)]
        return f"{directory} ({', '.join(files)})"


def ofac_sets(directory: Path) -> dict[str, dict[str, Path]]:
    """The OFAC CSV sets in ``directory`` by prefix ("" for plain ``sdn.csv``)."""
    sets: dict[str, dict[str, Path]] = {}
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name.endswith("sdn.csv"):
            prefix = path.name.removesuffix("sdn.csv")
            parts = {
                part: directory / f"{prefix}{part}.csv"
                for part in OFAC_PARTS
                if (directory / f"{prefix}{part}.csv").is_file()
            }
            sets[prefix] = parts
    return sets


def find_list_files(directory: Path, prefix: str | None = None) -> ListFiles:
    """Which files make the list in ``directory`` (see :func:`load_list`)."""
    if not directory.is_dir():
        raise SanctionsListError(directory, "is not a directory")
    sets = ofac_sets(directory)
    json_lines = tuple(
        path
        for path in sorted(directory.iterdir())
        if path.is_file()
        and path.suffix in JSON_SUFFIXES
        and (prefix is None or path.name.startswith(prefix))
    )
    if prefix is not None:
        ofac = sets.get(prefix, {})
        if not ofac and not json_lines:
            known = ", ".join(repr(found) for found in sets) or "none"
            raise SanctionsListError(
                directory,
                f"no list files with the prefix {prefix!r} "
                f"(no {prefix}sdn.csv, no {prefix}*.jsonl; OFAC sets here: {known})",
            )
        return ListFiles(ofac, json_lines)
    if len(sets) > 1:
        names = ", ".join(f"{found!r} ({found}sdn.csv)" for found in sets)
        raise SanctionsListError(
            directory, f"holds several OFAC sets: {names}; choose one with a prefix"
        )
    ofac = next(iter(sets.values()), {})
    if not ofac and not json_lines:
        raise SanctionsListError(
            directory, "holds no sanctions list (no *sdn.csv, no *.jsonl or *.json)"
        )
    return ListFiles(ofac, json_lines)


def load_list(directory: Path, prefix: str | None = None, *, strict: bool = False) -> SanctionsList:
    """Load the list in ``directory``: the OFAC CSV set (``{prefix}sdn.csv`` and, when present,
    ``{prefix}alt.csv``, ``{prefix}add.csv``, ``{prefix}sdn_comments.csv``) and every
    OpenSanctions ``*.jsonl``/``*.json`` file (those starting with ``prefix`` when given).

    Without ``prefix`` the directory must hold at most one OFAC set. ``strict`` refuses rows
    that point at unknown entities instead of skipping them. Raises
    :class:`SanctionsListError` for anything that cannot be loaded.
    """
    directory = Path(directory)
    files = find_list_files(directory, prefix)
    entities: list[SanctionedEntity] = []
    addresses: list[tuple[str, str | None, SanctionedEntity]] = []
    warnings: list[str] = []
    if files.ofac:
        loaded = load_ofac(files.ofac, strict=strict)
        entities.extend(loaded.entities)
        addresses.extend(loaded.addresses)
        warnings.extend(loaded.warnings)
    seen = {entity.entity_id for entity in entities}
    for path in files.json_lines:
        loaded = load_open_sanctions(path)
        for entity in loaded.entities:
            if entity.entity_id in seen:
                raise SanctionsListError(path, f"entity {entity.entity_id!r} is listed twice")
            seen.add(entity.entity_id)
        entities.extend(loaded.entities)
        addresses.extend(loaded.addresses)
        warnings.extend(loaded.warnings)
    if not entities and not addresses:
        raise SanctionsListError(directory, "the list is empty")
    return SanctionsList.build(
        entities,
        source=files.describe(directory),
        addresses=addresses,
        warnings=_bounded(warnings),
    )


def _bounded(warnings: list[str]) -> list[str]:
    if len(warnings) <= WARNINGS_KEPT_MAX:
        return warnings
    more = len(warnings) - WARNINGS_KEPT_MAX
    return [*warnings[:WARNINGS_KEPT_MAX], f"… and {more} more"]


@dataclass(frozen=True, slots=True)
class Loaded:
    entities: tuple[SanctionedEntity, ...]
    addresses: tuple[tuple[str, str | None, SanctionedEntity], ...]
    warnings: tuple[str, ...]


# --- OFAC ----------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise SanctionsListError(path, f"is not UTF-8 text (byte {exc.start})", line=line) from exc


def ofac_rows(path: Path, part: str) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields with ``-0-`` as "") of an OFAC CSV file, checked for shape."""
    expected = OFAC_FIELD_COUNTS[part]
    reader = csv.reader(io.StringIO(_read_text(path), newline=""), strict=True)
    finished_at: int | None = None
    try:
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and row[0].strip() in ("", END_OF_FILE)):
                # Blank lines and the DOS end-of-file mark may only close the file.
                finished_at = finished_at or line
                continue
            if finished_at is not None:
                raise SanctionsListError(
                    path, "a row follows a blank line or an end-of-file mark", line=line
                )
            if len(row) != expected:
                shown = ",".join(row)[:60]
                raise SanctionsListError(
                    path,
                    f"expected {expected} fields ({part}.csv), found {len(row)}: {shown!r}",
                    line=line,
                )
            yield line, ["" if value.strip() == OFAC_EMPTY else value.strip() for value in row]
    except csv.Error as exc:
        raise SanctionsListError(path, f"not valid CSV: {exc}", line=reader.line_num) from exc


def _number(path: Path, line: int, value: str, what: str) -> int:
    if not value.isdigit():
        raise SanctionsListError(path, f"{what} must be a number, found {value!r}", line=line)
    return int(value)


@dataclass(slots=True)
class _Draft:
    ent_num: int
    name: str
    kind: str
    programs: tuple[str, ...]
    remarks: str
    aliases: list[str] = field(default_factory=list)
    locations: list[str] = field(default_factory=list)


def load_ofac(parts: dict[str, Path], *, strict: bool = False) -> Loaded:
    """Load one OFAC CSV set (``parts`` by part name; ``sdn`` required)."""
    sdn = parts.get("sdn")
    if sdn is None:
        raise SanctionsListError(next(iter(parts.values())), "the set has no sdn.csv")
    drafts: dict[int, _Draft] = {}
    for line, row in ofac_rows(sdn, "sdn"):
        ent_num = _number(sdn, line, row[0], "ent_num")
        if ent_num in drafts:
            raise SanctionsListError(sdn, f"ent_num {ent_num} is listed twice", line=line)
        if not row[1]:
            raise SanctionsListError(sdn, f"ent_num {ent_num} has no name", line=line)
        if len(row[1]) > NAME_LENGTH_MAX:
            raise SanctionsListError(sdn, f"ent_num {ent_num} has a name too long", line=line)
        programs = tuple(
            program.strip() for program in row[3].strip("[] ").split("] [") if program.strip()
        )
        drafts[ent_num] = _Draft(ent_num, row[1], row[2] or "entity", programs, row[11])
    warnings: list[str] = []

    def owner(path: Path, line: int, value: str) -> _Draft | None:
        ent_num = _number(path, line, value, "ent_num")
        draft = drafts.get(ent_num)
        if draft is None:
            problem = f"ent_num {ent_num} is not in {sdn.name}"
            if strict:
                raise SanctionsListError(path, problem, line=line)
            warnings.append(f"{path.name} line {line}: {problem}; row skipped")
        return draft

    if "alt" in parts:
        path = parts["alt"]
        for line, row in ofac_rows(path, "alt"):
            _number(path, line, row[1], "alt_num")
            if not row[3]:
                raise SanctionsListError(path, f"alias {row[1]} has no name", line=line)
            draft = owner(path, line, row[0])
            if draft is not None:
                draft.aliases.append(row[3])
    if "add" in parts:
        path = parts["add"]
        for line, row in ofac_rows(path, "add"):
            _number(path, line, row[1], "add_num")
            draft = owner(path, line, row[0])
            location = ", ".join(value for value in row[2:5] if value)
            if draft is not None and location:
                draft.locations.append(location)
    if "sdn_comments" in parts:
        path = parts["sdn_comments"]
        for line, row in ofac_rows(path, "sdn_comments"):
            draft = owner(path, line, row[0])
            if draft is not None:
                # The remarks were cut at a fixed length; the rest continues here verbatim.
                draft.remarks += row[1]
    entities: list[SanctionedEntity] = []
    addresses: list[tuple[str, str | None, SanctionedEntity]] = []
    for draft in drafts.values():
        also_known_as = [
            found.strip() for found in _ALSO_KNOWN_AS.findall(draft.remarks) if found.strip()
        ]
        listed = [
            (match.group(2).rstrip("."), match.group(1))
            for match in _CURRENCY_ADDRESS.finditer(draft.remarks)
        ]
        entity = SanctionedEntity(
            entity_id=f"{OFAC_ID_PREFIX}{draft.ent_num}",
            name=draft.name,
            kind=draft.kind,
            source="ofac-sdn",
            programs=draft.programs,
            aliases=tuple(dict.fromkeys([*draft.aliases, *also_known_as])),
            addresses=tuple(dict.fromkeys(address for address, _ in listed)),
            locations=tuple(draft.locations),
            remarks=draft.remarks,
        )
        entities.append(entity)
        addresses.extend((address, currency, entity) for address, currency in listed)
    return Loaded(tuple(entities), tuple(addresses), tuple(warnings))


# --- OpenSanctions -------------------------------------------------------------------------


def _strings(path: Path, line: int, properties: dict[str, Any], key: str) -> list[str]:
    values = properties.get(key, [])
    if not isinstance(values, list) or not all(isinstance(value, str) for value in values):
        raise SanctionsListError(path, f"property {key!r} must be a list of strings", line=line)
    return [value.strip() for value in values if value.strip()]


def load_open_sanctions(path: Path) -> Loaded:
    """Load one file of FollowTheMoney entities, one JSON object per line."""
    entities: dict[str, SanctionedEntity] = {}
    wallets: list[tuple[int, str, str, list[str], list[str]]] = []
    for line, text in enumerate(_read_text(path).splitlines(), start=1):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SanctionsListError(path, f"not valid JSON: {exc.msg}", line=line) from exc
        if not isinstance(record, dict):
            raise SanctionsListError(path, "a line must hold one JSON object", line=line)
        entity_id, schema = record.get("id"), record.get("schema")
        if not isinstance(entity_id, str) or not entity_id.strip():
            raise SanctionsListError(path, 'the entity has no "id"', line=line)
        if not isinstance(schema, str) or not schema:
            raise SanctionsListError(path, f'entity {entity_id!r} has no "schema"', line=line)
        properties = record.get("properties", {})
        if not isinstance(properties, dict):
            raise SanctionsListError(
                path, f'entity {entity_id!r}: "properties" must be an object', line=line
            )
        caption = record.get("caption")
        caption = caption.strip() if isinstance(caption, str) else ""
        if schema == "CryptoWallet":
            keys = _strings(path, line, properties, "publicKey")
            holders = _strings(path, line, properties, "holder")
            wallets.append((line, entity_id, caption, keys, holders))
            continue
        if schema not in SCREENED_SCHEMAS:
            continue
        names: list[str] = []
        for key in NAME_PROPERTIES:
            names.extend(_strings(path, line, properties, key))
        if caption:
            names.append(caption)
        names = list(dict.fromkeys(names))
        if not names:
            raise SanctionsListError(path, f"entity {entity_id!r} has no name", line=line)
        if any(len(name) > NAME_LENGTH_MAX for name in names):
            raise SanctionsListError(path, f"entity {entity_id!r} has a name too long", line=line)
        if entity_id in entities:
            raise SanctionsListError(path, f"entity {entity_id!r} is listed twice", line=line)
        # The first "name" is the primary name; without one, the caption is.
        primary = names[0] if _strings(path, line, properties, "name") or not caption else caption
        entities[entity_id] = SanctionedEntity(
            entity_id=entity_id,
            name=primary,
            kind=schema,
            source="opensanctions",
            programs=tuple(_strings(path, line, properties, "program")),
            aliases=tuple(name for name in names if name != primary),
        )
    addresses: list[tuple[str, str | None, SanctionedEntity]] = []
    warnings: list[str] = []
    for line, wallet_id, caption, keys, holders in wallets:
        holder = next((entities[found] for found in holders if found in entities), None)
        if holder is None:
            # The holder is not in this file: the address stays listed, under the wallet.
            holder = SanctionedEntity(
                entity_id=holders[0] if holders else wallet_id,
                name=caption or wallet_id,
                kind="CryptoWallet",
                source="opensanctions",
            )
            if holders:
                warnings.append(
                    f"{path.name} line {line}: wallet {wallet_id!r} holder {holders[0]!r} "
                    "is not in the file; its addresses are listed under the holder's id"
                )
        for key in keys:
            addresses.append((key, None, holder))
    return Loaded(tuple(entities.values()), tuple(addresses), tuple(warnings))
