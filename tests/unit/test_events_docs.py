"""The event and monitoring docs against the code: every event type of the catalogue is
documented with its aggregate type and written somewhere by the product, every type the code
writes is in the catalogue, and every metric the docs name exists."""

from __future__ import annotations

import re
from pathlib import Path

from sluice.domain.events import EVENT_TYPES

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src" / "sluice"
DOCS = ROOT / "docs"

# A call that writes or builds an event with a literal type: ``emit(uow, "x", …)``,
# ``new_event("x", …)`` and the product's helpers named after them (``withdrawal_event``,
# ``hold_event``, ``withdrawal_events`` …): the type is the first string argument, after at most
# one positional argument (the unit of work).
EMITTING_CALL = re.compile(
    r"\b(?P<fn>\w*(?:emit|event|events))\(\s*(?:[\w.\[\]]+\s*,\s*)?(?:type\s*=\s*)?"
    r"[\"'](?P<type>[A-Za-z0-9_.:-]+)[\"']"
)
# Any call of the outbox's writers, whatever its arguments (``emit(uow, event_type, …)``).
WRITER_CALL = re.compile(r"\b(?:emit|emit_all|new_event)\(")
STRING_LITERAL = re.compile(r"[\"']([a-z][a-z0-9_]*)[\"']")
# Code that is not the product's state changes (the catalogue itself, drivers that make events
# of their own to measure or show them).
NOT_PRODUCT = ("domain/events.py", "sim/", "demo/", "bench/")
METRIC = re.compile(r"\bsluice_[a-z0-9_]*[a-z0-9]")
SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_info")


def product_sources() -> dict[str, str]:
    sources = {}
    for path in sorted(SRC.rglob("*.py")):
        name = path.relative_to(SRC).as_posix()
        if not name.startswith(NOT_PRODUCT):
            sources[name] = path.read_text(encoding="utf-8")
    return sources


def emitting_calls() -> list[tuple[str, str, str]]:
    """(module, function, literal type) of every emitting call in the product's source."""
    return [
        (name, match["fn"], match["type"])
        for name, text in product_sources().items()
        for match in EMITTING_CALL.finditer(text)
    ]


def table_rows(text: str) -> list[list[str]]:
    return [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in text.splitlines()
        if line.lstrip().startswith("|")
    ]


def test_every_event_type_is_documented_with_its_aggregate_type() -> None:
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    rows = table_rows(text)
    undocumented = []
    for kind in EVENT_TYPES.values():
        name, aggregate = f"`{kind.name}`", f"`{kind.aggregate_type}`"
        in_row = any(row and row[0] == name and aggregate in row[1:] for row in rows)
        if not in_row:
            undocumented.append(f"{kind.name} ({kind.aggregate_type})")
    assert not undocumented, f"event types without a row naming their aggregate: {undocumented}"


def test_every_event_type_has_its_payload_described() -> None:
    text = (DOCS / "events.md").read_text(encoding="utf-8")
    payloads = text[text.index("\n## Payloads") :]
    headings = {
        line.strip("# ").split(" ")[0].strip("`")
        for line in payloads.splitlines()
        if line.startswith("#")
    }
    rows = {row[0].strip("`") for row in table_rows(payloads) if row}
    missing = [name for name in EVENT_TYPES if name not in headings and name not in rows]
    assert not missing, f"event types with no payload section: {missing}"
    # each part's section names its aggregate type
    for aggregate in {kind.aggregate_type for kind in EVENT_TYPES.values()}:
        assert f"aggregate_type `{aggregate}`" in payloads, aggregate


def test_every_literal_type_the_code_emits_is_in_the_catalogue() -> None:
    calls = emitting_calls()
    # the scan finds the product's emits (a broken pattern would find none and prove nothing)
    assert len({call[2] for call in calls}) >= 20, calls
    unknown = sorted({f"{m}: {fn}({t!r})" for m, fn, t in calls if t not in EVENT_TYPES})
    assert not unknown, f"events written with a type not in EVENT_TYPES: {unknown}"


def test_every_catalogued_type_is_emitted_by_the_product() -> None:
    """A type counts as emitted when an emitting call names it, or when a module that writes
    events names it as a string (a type chosen by a condition or a lookup table)."""
    emitted = {call[2] for call in emitting_calls()}
    sources = product_sources()
    emitting_modules = {call[0] for call in emitting_calls()}
    emitting_modules |= {name for name, text in sources.items() if WRITER_CALL.search(text)}
    for module in emitting_modules:
        emitted |= set(STRING_LITERAL.findall(sources[module]))
    never = [name for name in EVENT_TYPES if name not in emitted]
    assert not never, f"event types the product never writes: {never}"


def documented_metrics() -> set[str]:
    names: set[str] = set()
    for doc in ("monitoring.md", "events.md", "alert-rules.example.toml", "grafana-dashboard.json"):
        names |= set(METRIC.findall((DOCS / doc).read_text(encoding="utf-8")))
    return names


def test_every_metric_the_docs_name_exists() -> None:
    monitoring = "\n".join(
        path.read_text(encoding="utf-8") for path in sorted((SRC / "monitoring").rglob("*.py"))
    )
    defined = set(re.findall(r"[\"'](sluice_[a-z0-9_]+)[\"']", monitoring))
    names = documented_metrics()
    assert len(names) >= 25, names
    unknown = []
    for name in sorted(names):
        base = name
        for suffix in SUFFIXES:
            if base.endswith(suffix) and base.removesuffix(suffix) in defined:
                base = base.removesuffix(suffix)
                break
        if base not in defined:
            unknown.append(name)
    assert not unknown, (
        f"metrics named in the docs that src/sluice/monitoring does not define: {unknown}"
    )
