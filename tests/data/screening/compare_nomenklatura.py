"""OpenSanctions' matcher (nomenklatura) on the per-script labelled sets, for comparison.

Not part of sluice and not run by its tests: nomenklatura needs PyICU, which has no wheel here
and builds from source, so it runs in a virtualenv of its own::

    python -m venv /tmp/nk-venv && /tmp/nk-venv/bin/pip install nomenklatura
    /tmp/nk-venv/bin/python tests/data/screening/compare_nomenklatura.py \\
        tests/data/screening/scripts.json logic-v1 0.7

nomenklatura's algorithms score a pair of entities; yente finds the candidates to score in
Elasticsearch. Here the candidates are the 50 listed entities sharing the most metaphone keys
(rigour) with the query's words, transliterated by normality (ICU), and, for a positive, the
labelled entity is always scored as well, so the recall printed is an upper bound. Prints one
JSON line: the algorithm, the threshold, screenings/s and precision/recall per script.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from followthemoney import model  # type: ignore[import-not-found]
from nomenklatura.matching import get_algorithm  # type: ignore[import-not-found]
from normality import ascii_text  # type: ignore[import-not-found]
from rigour.text.phonetics import metaphone  # type: ignore[import-not-found]

LIST_DIRECTORY = Path(__file__).resolve().parents[4] / "shared" / "reference" / "sanctions"
CANDIDATES_MAX = 50


def words(text: str) -> list[str]:
    ascii_form = ascii_text(text) or ""
    cleaned = "".join(letter if letter.isalnum() else " " for letter in ascii_form.lower())
    return [word for word in cleaned.split() if len(word) > 1]


def main(set_path: str, algorithm_name: str = "logic-v1", threshold_text: str = "0.7") -> None:
    algorithm = get_algorithm(algorithm_name)
    config = algorithm.default_config()
    threshold = float(threshold_text)
    names: dict[str, list[str]] = defaultdict(list)
    kinds: dict[str, str] = {}
    with (LIST_DIRECTORY / "full-sdn.csv").open(encoding="utf-8-sig") as sdn:
        for row in csv.reader(sdn):
            if len(row) >= 3 and row[0].strip().isdigit():
                names[row[0]].append(row[1])
                kinds[row[0]] = row[2].strip()
    with (LIST_DIRECTORY / "full-alt.csv").open(encoding="utf-8-sig") as alt:
        for row in csv.reader(alt):
            if len(row) >= 4 and row[0] in names:
                names[row[0]].append(row[3])
    entities: dict[str, Any] = {}
    keys: dict[str, set[str]] = defaultdict(set)
    by_name: dict[str, str] = {}
    for number, listed in names.items():
        entity = model.make_entity("Person" if kinds[number] == "individual" else "Organization")
        entity.id = number
        entity.add("name", listed)
        entities[number] = entity
        for name in listed:
            by_name.setdefault(name, number)
            for word in words(name):
                keys[metaphone(word)].add(number)

    def screen(query: str, listed: str | None) -> float:
        asked = model.make_entity("LegalEntity")
        asked.id = "query"
        asked.add("name", query)
        shared: Counter[str] = Counter()
        for word in words(query):
            shared.update(keys.get(metaphone(word), ()))
        candidates = [number for number, _ in shared.most_common(CANDIDATES_MAX)]
        if listed is not None and listed in by_name and by_name[listed] not in candidates:
            candidates.append(by_name[listed])  # the labelled entity is always scored
        scores = [algorithm.compare(asked, entities[number], config).score for number in candidates]
        return max(scores, default=0.0)

    labelled = json.loads(Path(set_path).read_text(encoding="utf-8"))["names"]
    tallies: dict[str, list[int]] = {}
    started = time.perf_counter()
    for item in labelled:
        matched = screen(item["query"], item["listed"]) >= threshold
        tally = tallies.setdefault(item["script"], [0, 0, 0, 0])  # p, n, tp, fp
        if item["listed"]:
            tally[0] += 1
            tally[2] += matched
        else:
            tally[1] += 1
            tally[3] += matched
    elapsed = time.perf_counter() - started
    figures = {
        script: {
            "precision": round(found / (found + wrong), 4) if found + wrong else 0.0,
            "recall": round(found / positives, 4) if positives else 0.0,
            "positives / negatives": f"{positives} / {negatives}",
        }
        for script, (positives, negatives, found, wrong) in tallies.items()
    }
    print(
        json.dumps(
            {
                "algorithm": algorithm.NAME,
                "threshold": threshold,
                "screenings_per_s": round(len(labelled) / elapsed, 1),
                "scripts": figures,
            },
            ensure_ascii=False,
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:])
