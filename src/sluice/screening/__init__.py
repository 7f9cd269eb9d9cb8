"""Sanctions screening (DESIGN §6): the OFAC SDN list and OpenSanctions entities in memory,
indexed; names matched after normalisation with rapidfuzz, digital currency addresses exactly.

* :mod:`sluice.screening.names` — normalisation (transliteration, order, variants).
* :mod:`sluice.screening.scripts` — which script a name is written in; its Latin renderings:
  :mod:`sluice.screening.arabic` (Arabic and Persian consonant skeletons) and
  :mod:`sluice.screening.cjk` (pinyin, Korean romanisations, Hepburn).
* :mod:`sluice.screening.index` — blocking and scoring, :data:`DEFAULT_THRESHOLD`.
* :mod:`sluice.screening.lists` — loaders, :class:`SanctionsList`, :func:`load_list`.
* :mod:`sluice.screening.screen` — :class:`ListedSanctions`, the list in force (reloadable),
  and :func:`screen_to_json_lines` for the CLI.
"""

from __future__ import annotations

from sluice.screening.index import DEFAULT_THRESHOLD
from sluice.screening.lists import (
    SanctionedEntity,
    SanctionsList,
    SanctionsListError,
    load_list,
)
from sluice.screening.names import NormalisedName, normalise_name
from sluice.screening.screen import ListedSanctions, screen_to_json_lines

__all__ = [
    "DEFAULT_THRESHOLD",
    "ListedSanctions",
    "NormalisedName",
    "SanctionedEntity",
    "SanctionsList",
    "SanctionsListError",
    "load_list",
    "normalise_name",
    "screen_to_json_lines",
]
