"""The sanctions list in force: screening names and addresses, and reloading without downtime.

:class:`ListedSanctions` holds one :class:`SanctionsList` at a time. A reload builds the new list
completely — reading, checking and indexing every file — and only then replaces the one
reference that screening reads, so a screen always uses a whole list, old or new, never part of
one. A reload that fails raises and leaves the previous list in force. Reloads take turns; screens
never wait for them.

It satisfies :class:`sluice.ports.SanctionsScreen`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path

from sluice.domain.errors import InvalidInputError
from sluice.ports import AddressMatch, NameMatch, SanctionsScreen
from sluice.screening.index import DEFAULT_THRESHOLD
from sluice.screening.lists import SanctionsList, check_name, load_list
from sluice.screening.scripts import ANYASCII

BATCH_SIZE_MAX = 100_000
"""The most names :meth:`ListedSanctions.screen_names` takes at once."""


class ListedSanctions:
    """The sanctions list in force (see the module docstring)."""

    def __init__(
        self,
        sanctions_list: SanctionsList,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        directory: Path | None = None,
        prefix: str | None = None,
    ) -> None:
        if not 0 < threshold <= 100:
            raise ValueError(f"threshold must be in (0, 100], got {threshold}")
        self._current = sanctions_list
        self._threshold = threshold
        self._directory = directory
        self._prefix = prefix
        self._reloading = threading.Lock()

    @classmethod
    def load(
        cls,
        directory: Path,
        prefix: str | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        strict: bool = False,
    ) -> ListedSanctions:
        """Load the list in ``directory`` (see :func:`sluice.screening.lists.load_list`)."""
        sanctions_list = load_list(Path(directory), prefix, strict=strict)
        return cls(sanctions_list, threshold=threshold, directory=Path(directory), prefix=prefix)

    @property
    def current(self) -> SanctionsList:
        return self._current

    @property
    def threshold(self) -> float:
        return self._threshold

    @property
    def source(self) -> str:
        return self._current.source

    @property
    def loaded_at(self) -> datetime:
        return self._current.loaded_at

    @property
    def entity_count(self) -> int:
        return self._current.entity_count

    @property
    def name_count(self) -> int:
        return self._current.name_count

    @property
    def address_count(self) -> int:
        return self._current.address_count

    def reload(
        self, directory: Path | None = None, prefix: str | None = None, *, strict: bool = False
    ) -> SanctionsList:
        """Load the list again (from ``directory``/``prefix``, by default those of the last
        load) and put it in force; on any error, raise and keep the list in force as it is."""
        with self._reloading:
            directory = Path(directory) if directory is not None else self._directory
            if directory is None:
                raise ValueError("no directory to reload from: give one")
            if prefix is None and directory == self._directory:
                prefix = self._prefix
            fresh = load_list(directory, prefix, strict=strict)
            # One reference assignment: a screen sees the old list or the new one, whole.
            self._current = fresh
            self._directory, self._prefix = directory, prefix
            return fresh

    def screen_name(self, name: str) -> NameMatch:
        """Screen one name against the list in force (blank → InvalidInputError)."""
        return _screen(self._current, name, self._threshold)

    def explain_name(self, name: str) -> tuple[NameMatch, str | None]:
        """Screen one name, and say how it was brought to Latin letters for its closest listed
        name (``"anyascii"``, ``"pinyin: Fangwei Li"``…; None when nothing came close)."""
        return _screen_explained(self._current, name, self._threshold)

    def screen_names(self, names: Iterable[str]) -> list[NameMatch]:
        """Screen many names against one list (the same list for all of them)."""
        sanctions_list = self._current
        results: list[NameMatch] = []
        for name in names:
            if len(results) >= BATCH_SIZE_MAX:
                raise InvalidInputError(f"at most {BATCH_SIZE_MAX} names per batch")
            results.append(_screen(sanctions_list, name, self._threshold))
        return results

    def screen_address(self, address: str) -> AddressMatch | None:
        """The listed address equal to ``address`` (trimmed; ``0x…`` case-insensitively)."""
        listed = self._current.find_address(address)
        if listed is None:
            return None
        return AddressMatch(listed.address, listed.entity.entity_id, listed.entity.name)


def _screen(sanctions_list: SanctionsList, name: str, threshold: float) -> NameMatch:
    return _screen_explained(sanctions_list, name, threshold)[0]


def _screen_explained(
    sanctions_list: SanctionsList, name: str, threshold: float
) -> tuple[NameMatch, str | None]:
    name = check_name(name)
    found = sanctions_list.find_name(name)
    if found is None:
        return (
            NameMatch(name=name, match=False, score=0.0, entity_id=None, matched_name=None),
            None,
        )
    match = NameMatch(
        name=name,
        match=found.score >= threshold,
        score=found.score,
        entity_id=found.entity.entity_id,
        matched_name=found.matched_name,
    )
    return match, found.rendering


def screen_to_json_lines(
    screen: SanctionsScreen, names: Iterable[str], *, skip_blank: bool = True
) -> Iterator[str]:
    """One JSON object per name: ``{"name", "match", "score", "entity_id", "matched_name"}``,
    the score on 0–100 with one decimal, and ``"transliteration"`` for a name written in a script
    with renderings of its own (Arabic, Chinese, Korean, Japanese: which one matched). Names are
    trimmed (a line's newline included); blank ones are skipped unless ``skip_blank`` is False
    (then they raise InvalidInputError).
    Below the threshold, ``entity_id``/``matched_name`` still name the closest listed name."""
    for name in names:
        if skip_blank and not name.strip():
            continue
        rendering: str | None = None
        if isinstance(screen, ListedSanctions):
            result, rendering = screen.explain_name(name.strip())
        else:
            result = screen.screen_name(name.strip())
        line: dict[str, object] = {
            "name": result.name,
            "match": result.match,
            "score": round(result.score, 1),
            "entity_id": result.entity_id,
            "matched_name": result.matched_name,
        }
        if rendering is not None and rendering != ANYASCII:
            # A name written in another script: which transliteration matched.
            line["transliteration"] = rendering
        yield json.dumps(line, ensure_ascii=False)
