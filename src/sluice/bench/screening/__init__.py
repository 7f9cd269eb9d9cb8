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

**Other scripts.** Names written in Arabic, Persian, Chinese, Korean, Japanese and Cyrillic
script, from two labelled sets built by hand from the list (each one's method recorded in the
file) — ``tests/data/screening/scripts.json``, the development set the rules were tuned on, and
``tests/data/screening/scripts-check.json``, other names written later to check them (whose
failures then shaped further rules: a development set too) — are screened
once each and reported per script: precision, recall and screenings/s, against precision ≥ 0.95
and recall ≥ 0.90 (:mod:`.scripts`).

The parts: :mod:`.pools` (name pools and spelling tables), :mod:`.labelled` (the labelled set),
:mod:`.scripts` (the per-script set and figures), :mod:`.benchmark` (the run and its report) and
:mod:`.report` (recording, and the command).
"""

from __future__ import annotations

from .benchmark import (
    DEFAULT_SEED,
    EXAMPLES_MAX,
    PRECISION_TARGET,
    RECALL_TARGET,
    SCREENINGS_MAX,
    SCREENINGS_PER_S_TARGET,
    Example,
    ScreeningBenchReport,
    run_screening_bench,
)
from .labelled import POSITIVE_VARIATIONS, LabelledName, build_labelled_set
from .pools import (
    COMPANY_WORDS,
    FIRST_NAMES,
    INDUSTRY_WORDS,
    LAST_NAMES,
    LEGAL_FORMS,
    SLAVIC_ENDINGS,
)
from .report import HEADER, SECTION, bench_command, record_screening_report
from .scripts import CHECK_SET, SCRIPTS_SET, ScriptFigures, load_scripts_set, measure_scripts

__all__ = [
    "CHECK_SET",
    "COMPANY_WORDS",
    "DEFAULT_SEED",
    "EXAMPLES_MAX",
    "FIRST_NAMES",
    "HEADER",
    "INDUSTRY_WORDS",
    "LAST_NAMES",
    "LEGAL_FORMS",
    "POSITIVE_VARIATIONS",
    "PRECISION_TARGET",
    "RECALL_TARGET",
    "SCREENINGS_MAX",
    "SCREENINGS_PER_S_TARGET",
    "SCRIPTS_SET",
    "SECTION",
    "SLAVIC_ENDINGS",
    "Example",
    "LabelledName",
    "ScreeningBenchReport",
    "ScriptFigures",
    "bench_command",
    "build_labelled_set",
    "load_scripts_set",
    "measure_scripts",
    "record_screening_report",
    "run_screening_bench",
]
