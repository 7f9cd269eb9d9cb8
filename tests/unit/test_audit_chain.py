"""The audit chain under tampering, in memory (sluice.domain.audit).

Covers the canonical content (one serialisation per record, the same after a round trip through
stored JSON, refusals for values without one; for content without floats, the store's orjson
bytes are those canonical bytes, over random trees of text, integers and decimals), chain
building, and verification: a clean chain
passes, and every kind of tampering — a field modified, a hash recomputed, a record deleted from
the start, middle or end, records swapped or renumbered, a forged record inserted or appended, the
head altered — fails and names the record by its seq. A hypothesis test applies one random
tampering to random chains and checks that the first finding names exactly the tampered seq.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from enum import Enum

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.domain.audit import (
    GENESIS_HASH,
    AuditEntry,
    AuditRecord,
    ChainVerification,
    ChainVerifier,
    FloatFreeArray,
    FloatFreeContent,
    FloatFreeObject,
    canonical_bytes,
    canonical_content,
    chain_entries,
    chain_hash,
    content_hash,
    json_value,
    timestamp_text,
    verify_chain,
)
from sluice.domain.audit.records import _UTC_TEXTS
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import format_timestamp
from sluice.store.audit_repository import _content_hash as _store_content_hash
from sluice.store.audit_repository import _row as _store_row

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def entry(i: int, **changes: object) -> AuditEntry:
    base = AuditEntry(
        operation_id=f"w-{i}",
        operation="withdrawal_requested",
        actor="customer:c1",
        recorded_at=T0 + timedelta(seconds=i),
        customer_id="c1",
        kyc={"tier": 2, "status": "active"},
        parameters={"amount": Decimal("12.5000000000"), "receiver": "bob::1220ab", "n": i},
        checks=[{"check": "tier", "passed": True, "reason": "tier 2 ≥ 1"}],
        state_changes=[{"debited": "customer:c1", "amount": Decimal("12.5")}],
        error=None,
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def chain(n: int) -> list[AuditRecord]:
    return chain_entries([entry(i) for i in range(1, n + 1)])


def head_of(records: list[AuditRecord]) -> tuple[int, str]:
    return (records[-1].seq, records[-1].hash) if records else (0, GENESIS_HASH)


def seqs(result: ChainVerification) -> list[int]:
    return [finding.seq for finding in result.findings]


def kinds(result: ChainVerification) -> set[str]:
    return {finding.kind for finding in result.findings}


def renumbered(records: list[AuditRecord], shift: int) -> list[AuditRecord]:
    return [replace(record, seq=record.seq + shift) for record in records]


def forged(after: AuditRecord | None, seq: int) -> AuditRecord:
    """A record forged by someone who knows the hashing scheme, linked after ``after``."""
    previous_hash = after.hash if after is not None else GENESIS_HASH
    fake = entry(999, operation_id="forged", actor="intruder")
    return AuditRecord(seq, fake, previous_hash, chain_hash(previous_hash, seq, fake))


# --- canonical content ---------------------------------------------------------------------------


def test_canonical_content_is_the_same_whatever_the_key_order_or_container_type() -> None:
    one = entry(1, parameters={"b": 1, "a": (1, 2)}, state_changes=({"x": Decimal("1.50")},))
    two = entry(1, parameters={"a": [1, 2], "b": 1}, state_changes=[{"x": Decimal("1.50")}])
    assert canonical_bytes(canonical_content(1, one)) == canonical_bytes(canonical_content(1, two))


def test_decimals_and_times_are_recorded_as_canonical_text() -> None:
    paris = timezone(timedelta(hours=1))
    content = canonical_content(
        7,
        entry(
            1,
            recorded_at=datetime(2026, 3, 1, 13, 0, tzinfo=paris),
            parameters={"amount": Decimal("1E+3"), "at": datetime(2026, 1, 1, tzinfo=UTC)},
        ),
    )
    assert content["recorded_at"] == "2026-03-01T12:00:00.000000Z"
    assert content["parameters"] == {"amount": "1000", "at": "2026-01-01T00:00:00.000000Z"}
    assert content["seq"] == 7


def test_enums_big_integers_and_sets_have_one_form() -> None:
    class Colour(Enum):
        RED = "red"

    assert json_value({"c": Colour.RED, "n": 2**70, "s": {3, 1, 2}}) == {
        "c": "red",
        "n": str(2**70),
        "s": [1, 2, 3],
    }


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"at": datetime(2026, 1, 1)}, "has no time zone"),
        ({"x": float("nan")}, "not a finite number"),
        ({"x": object()}, "cannot be recorded"),
        ({(1, 2): "tuple key"}, "not a string"),
        ({1: "a", "1": "b"}, "appears twice"),
    ],
)
def test_values_without_a_canonical_form_are_refused_naming_the_field(
    value: dict[object, object], problem: str
) -> None:
    with pytest.raises(InvalidInputError, match=problem):
        canonical_content(1, entry(1, parameters=value))


def test_an_entry_with_an_over_long_or_empty_field_is_refused() -> None:
    with pytest.raises(InvalidInputError, match="operation_id is 301 characters"):
        chain_entries([entry(1, operation_id="x" * 301)])
    with pytest.raises(InvalidInputError, match="actor must not be empty"):
        chain_entries([entry(1, actor="")])


json_leaves = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.decimals(allow_nan=False, allow_infinity=False, places=4)
    | st.datetimes(timezones=st.just(UTC))
)
json_trees = st.recursive(
    json_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(parameters=st.dictionaries(st.text(max_size=8), json_trees, max_size=5))
@settings(max_examples=200, deadline=None)
def test_content_read_back_from_stored_json_hashes_as_it_was_appended(
    parameters: dict[str, object],
) -> None:
    written = entry(1, parameters=parameters)
    stored = json.loads(json.dumps(json_value(parameters)))  # what a reader gets back
    read_back = replace(written, parameters=stored)
    assert chain_hash(GENESIS_HASH, 1, read_back) == chain_hash(GENESIS_HASH, 1, written)


float_free_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=20)
    | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=6)  # control characters
    | st.decimals(allow_nan=False, allow_infinity=False, places=4)
)
float_free_trees = st.recursive(
    float_free_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@given(
    parameters=st.dictionaries(st.text(max_size=8), float_free_trees, max_size=5),
    checks=st.lists(st.dictionaries(st.text(max_size=8), float_free_trees, max_size=3), max_size=3),
    previous=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
@settings(max_examples=300, deadline=None)
def test_content_without_floats_hashes_the_same_from_orjson_as_from_canonical_bytes(
    parameters: dict[str, object], checks: list[dict[str, object]], previous: str
) -> None:
    """The store hashes float-free content from orjson's bytes: they must be the canonical ones,
    and the content the one the general walk gives."""
    written = entry(1, parameters=parameters, checks=checks, correlation_id="req-é\u2028")
    content = canonical_content(1, written)
    assert type(content) is FloatFreeContent
    assert content["parameters"] == json_value(parameters)
    assert content["checks"] == json_value(checks)
    assert orjson.dumps(content, option=orjson.OPT_SORT_KEYS) == canonical_bytes(dict(content))
    assert _store_content_hash(previous, content) == content_hash(previous, dict(content))


canonical_leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.text(max_size=20)
    | st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=6)  # control characters
)
canonical_trees = st.recursive(
    canonical_leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _marked(value: object) -> object:
    """``value`` with every object and array marked float-free, as a builder would."""
    if isinstance(value, dict):
        return FloatFreeObject({key: _marked(item) for key, item in value.items()})
    if isinstance(value, list):
        return FloatFreeArray(_marked(item) for item in value)
    return value


@given(
    kyc=st.dictionaries(st.text(max_size=8), canonical_trees, max_size=4),
    parameters=st.dictionaries(st.text(max_size=8), canonical_trees, max_size=5),
    checks=st.lists(st.dictionaries(st.text(max_size=8), canonical_trees, max_size=3), max_size=3),
    previous=st.text(alphabet="0123456789abcdef", min_size=64, max_size=64),
)
@settings(max_examples=300, deadline=None)
def test_content_marked_float_free_is_stored_and_hashed_as_the_plain_content(
    kyc: dict[str, object],
    parameters: dict[str, object],
    checks: list[dict[str, object]],
    previous: str,
) -> None:
    """A builder may mark content it knows to be canonical and float-free; the log then takes it
    as it is, and stores and hashes exactly what it does for the same content unmarked."""
    plain = replace(entry(1, parameters=parameters, checks=checks), kyc=kyc)
    marked = replace(
        plain,
        kyc=_marked(kyc),  # type: ignore[arg-type]
        parameters=_marked(parameters),  # type: ignore[arg-type]
        checks=_marked(checks),  # type: ignore[arg-type]
    )
    # Also beside unmarked content, with a float (then the whole content takes the general walk).
    with_float: dict[str, object] = {"c": 1.5}
    for more in ([], [with_float]):
        walked = canonical_content(1, replace(plain, state_changes=[{"a": "b"}, *more]))
        taken = canonical_content(1, replace(marked, state_changes=[FloatFreeObject(a="b"), *more]))
        assert type(taken) is type(walked)
        assert taken == walked
        assert canonical_bytes(taken) == canonical_bytes(walked)
        stored_hash = _store_content_hash(previous, taken)
        assert stored_hash == _store_content_hash(previous, walked)
        assert stored_hash == content_hash(previous, walked)
        assert _store_row(taken, previous, "h") == _store_row(walked, previous, "h")


@given(parameters=st.dictionaries(st.text(max_size=8), json_trees, max_size=5))
@settings(max_examples=200, deadline=None)
def test_content_with_floats_or_times_takes_the_canonical_encoder(
    parameters: dict[str, object],
) -> None:
    content = canonical_content(1, entry(1, parameters=parameters))
    walked = json_value(parameters)
    assert content["parameters"] == walked
    assert _store_content_hash(GENESIS_HASH, content) == content_hash(GENESIS_HASH, dict(content))
    if _has_float(walked):  # floats are what orjson may write differently
        assert type(content) is not FloatFreeContent


def _has_float(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_has_float(item) for item in value)
    return False


def test_a_remembered_time_has_the_text_of_format_timestamp_in_any_time_zone() -> None:
    """Record times' text is remembered (ingestion writes each to several tables): the text is
    the canonical one, for UTC times (remembered) and others (converted, not remembered), and the
    memory stays bounded."""
    east = timezone(timedelta(hours=5, minutes=30))
    first = datetime.min.replace(tzinfo=UTC)
    for value in (T0, T0.astimezone(east), T0 + timedelta(microseconds=1), first):
        assert timestamp_text(value) == format_timestamp(value)
        assert timestamp_text(value) == format_timestamp(value)  # the second time, remembered
    assert timestamp_text(T0.astimezone(east)) == "2026-03-01T12:00:00.000000Z"
    assert timestamp_text(T0) == "2026-03-01T12:00:00.000000Z"
    for seconds in range(9000):
        timestamp_text(T0 + timedelta(seconds=seconds))
    assert len(_UTC_TEXTS) <= 8192
    assert timestamp_text(T0 + timedelta(seconds=8999)) == "2026-03-01T14:29:59.000000Z"


def test_text_that_is_not_unicode_is_refused_by_the_stores_hash_as_by_the_canonical_one() -> None:
    content = canonical_content(1, entry(1, parameters={"name": "\ud800"}))
    assert type(content) is FloatFreeContent
    with pytest.raises(InvalidInputError, match="not valid Unicode"):
        _store_content_hash(GENESIS_HASH, content)


# --- a clean chain -----------------------------------------------------------------------------


def test_a_clean_chain_verifies_and_links_each_record_to_the_one_before() -> None:
    records = chain(5)
    assert records[0].previous_hash == GENESIS_HASH
    assert all(b.previous_hash == a.hash for a, b in itertools.pairwise(records))
    result = verify_chain(records, head_of(records))
    assert result.ok and result.findings == []
    assert result.records_checked == 5
    assert (result.last_seq, result.last_hash) == head_of(records)


def test_an_empty_log_without_a_head_verifies() -> None:
    assert verify_chain([], None).ok
    assert verify_chain([], (0, GENESIS_HASH)).ok


def test_chaining_in_several_appends_gives_the_same_chain_as_one() -> None:
    whole = chain(6)
    first = chain_entries([entry(i) for i in (1, 2, 3)])
    rest = chain_entries([entry(i) for i in (4, 5, 6)], after_seq=3, previous_hash=first[-1].hash)
    assert first + rest == whole


def test_verification_from_a_checkpoint_reads_only_what_came_after_it() -> None:
    records = chain(8)
    checkpoint = (records[4].seq, records[4].hash)
    result = verify_chain(records[5:], head_of(records), start=checkpoint)
    assert result.ok and result.records_checked == 3
    wrong = verify_chain(records[5:], head_of(records), start=(5, "f" * 64))
    assert not wrong.ok and seqs(wrong)[0] == 6


def test_records_out_of_seq_order_are_refused_as_a_caller_error() -> None:
    records = chain(3)
    with pytest.raises(InvalidInputError, match="ascending seq order"):
        verify_chain([records[1], records[0]], head_of(records))


# --- tampering ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"operation_id": "w-other"},
        {"operation": "withdrawal_cancelled"},
        {"actor": "officer:mallory"},
        {"recorded_at": T0 - timedelta(days=1)},
        {"customer_id": "c2"},
        {"kyc": {"tier": 4, "status": "active"}},
        {"parameters": {"amount": Decimal("1.0000000000"), "receiver": "bob::1220ab", "n": 3}},
        {"checks": []},
        {"state_changes": [{"debited": "customer:c2", "amount": Decimal("12.5")}]},
        {"error": "refused"},
    ],
    ids=lambda change: next(iter(change)),
)
def test_a_modified_field_names_the_record(change: dict[str, object]) -> None:
    records = chain(5)
    records[2] = replace(records[2], entry=replace(records[2].entry, **change))  # type: ignore[arg-type]
    result = verify_chain(records, head_of(chain(5)))
    assert not result.ok
    assert [(f.seq, f.kind, f.operation_id) for f in result.findings] == [
        (3, "modified", records[2].entry.operation_id)
    ]
    assert "record 3 (" in result.findings[0].message


def test_a_modified_hash_or_link_names_the_record() -> None:
    head = head_of(chain(5))
    for column in ("hash", "previous_hash"):
        records = chain(5)
        records[1] = replace(records[1], **{column: "e" * 64})  # type: ignore[arg-type]
        assert seqs(verify_chain(records, head)) == [2], column


def test_a_record_modified_with_its_hash_recomputed_is_named_by_the_broken_link() -> None:
    records = chain(5)
    changed = replace(records[1].entry, actor="officer:mallory")
    records[1] = replace(records[1], entry=changed, hash=chain_hash(records[0].hash, 2, changed))
    result = verify_chain(records, head_of(chain(5)))
    assert [(f.seq, f.kind) for f in result.findings] == [(2, "modified")]
    assert "record 3 no longer links to it" in result.findings[0].message


def test_the_last_record_modified_with_its_hash_recomputed_is_caught_by_the_head() -> None:
    records = chain(5)
    changed = replace(records[4].entry, error="tampered")
    records[4] = replace(records[4], entry=changed, hash=chain_hash(records[3].hash, 5, changed))
    result = verify_chain(records, head_of(chain(5)))
    assert [(f.seq, f.kind) for f in result.findings] == [(5, "head")]


@pytest.mark.parametrize("position", [1, 4, 7])
def test_a_deleted_record_is_named(position: int) -> None:
    records = chain(7)
    kept = [r for r in records if r.seq != position]
    result = verify_chain(kept, head_of(records))
    expected = "truncated" if position == 7 else "deleted"
    assert [(f.seq, f.kind) for f in result.findings] == [(position, expected)]
    assert f"record {position} is missing" in result.findings[0].message


def test_records_cut_off_the_end_are_named_from_the_head() -> None:
    records = chain(7)
    result = verify_chain(records[:4], head_of(records))
    assert [(f.seq, f.kind) for f in result.findings] == [(5, "truncated")]
    assert "records 5–7 are missing" in result.findings[0].message


def test_a_deleted_record_whose_successors_were_renumbered_is_named() -> None:
    records = chain(8)
    tampered = records[:3] + renumbered(records[4:], -1)
    result = verify_chain(tampered, head_of(records))
    assert seqs(result)[0] == 4 and result.findings[0].kind == "deleted"
    assert kinds(result) == {"deleted", "reordered"}


@pytest.mark.parametrize(("first", "second"), [(2, 6), (3, 4), (1, 8)])
def test_two_swapped_records_are_both_named(first: int, second: int) -> None:
    records = chain(8)
    a, b = records[first - 1], records[second - 1]
    records[first - 1] = replace(b, seq=first)
    records[second - 1] = replace(a, seq=second)
    result = verify_chain(records, head_of(chain(8)))
    assert seqs(result) == [first, second]
    assert kinds(result) == {"reordered"}
    assert "swapped" in result.findings[0].message


def test_a_forged_record_inserted_in_the_middle_is_named() -> None:
    records = chain(6)
    fake = forged(records[2], 4)
    tampered = [*records[:3], fake, *renumbered(records[3:], +1)]
    result = verify_chain(tampered, head_of(records))
    inserted = [f for f in result.findings if f.kind == "inserted"]
    assert [(f.seq, f.operation_id) for f in inserted] == [(4, "forged")]
    assert seqs(result)[0] == 4


def test_a_forged_record_appended_past_the_head_is_named() -> None:
    records = chain(4)
    result = verify_chain([*records, forged(records[-1], 5)], head_of(records))
    assert [(f.seq, f.kind, f.operation_id) for f in result.findings] == [(5, "inserted", "forged")]


def test_an_altered_or_missing_head_is_reported() -> None:
    records = chain(4)
    altered = verify_chain(records, (4, "a" * 64))
    assert [(f.seq, f.kind) for f in altered.findings] == [(4, "head")]
    missing = verify_chain(records, None)
    assert [f.kind for f in missing.findings] == ["head"]


def test_a_damaged_row_is_named_with_why_it_could_not_be_read() -> None:
    records = chain(3)
    records[1] = replace(records[1], damage="its parameters are not JSON")
    result = verify_chain(records, head_of(chain(3)))
    assert [(f.seq, f.kind) for f in result.findings] == [(2, "modified")]
    assert "its parameters are not JSON" in result.findings[0].message


def test_a_chain_broken_everywhere_is_reported_without_keeping_every_record() -> None:
    records = chain(60)
    tampered = [replace(r, entry=replace(r.entry, actor="x")) for r in records]
    verifier = ChainVerifier(detail_max=10)
    for record in tampered:
        verifier.add(record)
    result = verifier.finish(head_of(records))
    assert not result.ok
    assert seqs(result)[0] == 1
    assert "more records from record" in result.findings[-1].message


# --- one random tampering on a random chain --------------------------------------------------


Tampering = Callable[[list[AuditRecord]], tuple[list[AuditRecord], tuple[int, str], set[int]]]


def _modify(i: int) -> Tampering:
    def apply(records: list[AuditRecord]) -> tuple[list[AuditRecord], tuple[int, str], set[int]]:
        out = list(records)
        out[i - 1] = replace(out[i - 1], entry=replace(out[i - 1].entry, actor="mallory"))
        return out, head_of(records), {i}

    return apply


def _rehash(i: int) -> Tampering:
    def apply(records: list[AuditRecord]) -> tuple[list[AuditRecord], tuple[int, str], set[int]]:
        out = list(records)
        changed = replace(out[i - 1].entry, error="covered up")
        out[i - 1] = replace(
            out[i - 1], entry=changed, hash=chain_hash(out[i - 1].previous_hash, i, changed)
        )
        return out, head_of(records), {i}

    return apply


def _delete(i: int) -> Tampering:
    def apply(records: list[AuditRecord]) -> tuple[list[AuditRecord], tuple[int, str], set[int]]:
        return records[: i - 1] + records[i:], head_of(records), {i}

    return apply


def _delete_and_renumber(i: int) -> Tampering:
    def apply(records: list[AuditRecord]) -> tuple[list[AuditRecord], tuple[int, str], set[int]]:
        rest = renumbered(records[i:], -1)
        expected = {i} | ({i + 1} if rest else set())  # the gap, and the renumbered run
        return records[: i - 1] + rest, head_of(records), expected

    return apply


def _swap(i: int, j: int) -> Tampering:
    def apply(records: list[AuditRecord]) -> tuple[list[AuditRecord], tuple[int, str], set[int]]:
        out = list(records)
        out[i - 1], out[j - 1] = replace(records[j - 1], seq=i), replace(records[i - 1], seq=j)
        return out, head_of(records), {i, j}

    return apply


def _insert(i: int) -> Tampering:
    def apply(records: list[AuditRecord]) -> tuple[list[AuditRecord], tuple[int, str], set[int]]:
        fake = forged(records[i - 2] if i > 1 else None, i)
        return [*records[: i - 1], fake, *renumbered(records[i - 1 :], +1)], head_of(records), {i}

    return apply


def _append() -> Tampering:
    def apply(records: list[AuditRecord]) -> tuple[list[AuditRecord], tuple[int, str], set[int]]:
        return (
            [*records, forged(records[-1], len(records) + 1)],
            head_of(records),
            {len(records) + 1},
        )

    return apply


def _truncate(k: int) -> Tampering:
    def apply(records: list[AuditRecord]) -> tuple[list[AuditRecord], tuple[int, str], set[int]]:
        keep = max(0, len(records) - k)
        return records[:keep], head_of(records), {keep + 1}

    return apply


def _head() -> Tampering:
    def apply(records: list[AuditRecord]) -> tuple[list[AuditRecord], tuple[int, str], set[int]]:
        return records, (len(records), "c" * 64), {len(records)}

    return apply


@st.composite
def tamperings(draw: st.DrawFn) -> tuple[int, str, Tampering]:
    n = draw(st.integers(min_value=1, max_value=25))
    position = st.integers(min_value=1, max_value=n)
    options: list[tuple[str, Tampering]] = [
        ("modify", _modify(draw(position))),
        ("rehash", _rehash(draw(position))),
        ("delete", _delete(draw(position))),
        ("delete and renumber", _delete_and_renumber(draw(position))),
        ("insert", _insert(draw(position))),
        ("append", _append()),
        ("truncate", _truncate(draw(st.integers(min_value=1, max_value=n)))),
        ("head", _head()),
    ]
    if n >= 2:
        i, j = sorted(draw(st.lists(position, min_size=2, max_size=2, unique=True)))
        options.append(("swap", _swap(i, j)))
    name, tampering = draw(st.sampled_from(options))
    return n, name, tampering


@given(tamperings())
@settings(max_examples=400, deadline=None)
def test_any_single_tampering_fails_verification_and_names_the_tampered_seq(
    case: tuple[int, str, Tampering],
) -> None:
    n, name, tampering = case
    records, head, expected = tampering(chain(n))
    result = verify_chain(records, head)
    assert not result.ok, name
    assert result.findings[0].seq == min(expected), (name, result.findings)
    assert set(seqs(result)) == expected, (name, result.findings)
