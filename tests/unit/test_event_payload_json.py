"""Stored event payloads and event ids: the outbox stores ``payload_json``'s text (``json.dumps``)
whichever encoder writes it (orjson for payloads both write alike), and event ids are version-4
UUIDs."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.domain.events import json_default, new_event, payload_json
from sluice.store.events_repository import stored_payload


def _reference(payload: dict[str, Any]) -> str:
    return json.dumps(dict(payload), separators=(",", ":"), default=json_default)


_scalars = (
    st.text()
    | st.integers()
    | st.booleans()
    | st.none()
    | st.floats(allow_nan=True)
    | st.decimals(allow_nan=False)
    | st.datetimes(timezones=st.just(UTC))
)
_values = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(), _values, max_size=8))
def test_a_payload_is_stored_as_json_dumps_writes_it(payload: dict[str, Any]) -> None:
    assert stored_payload(payload) == payload_json(payload) == _reference(payload)


class _Colour(StrEnum):
    RED = "red"


def test_payloads_orjson_would_write_differently_take_json() -> None:
    cases: list[dict[str, Any]] = [
        {"amount": 1e-05, "big": 1e16, "nan": float("nan")},
        {"nested": {"list": [1, 2.5, {"x": 1e-7}]}},
        {"accent": "café", "quote": 'a "b"', "slash": "a\\b", "control": "a\nb\x01", "del": "\x7f"},
        {"big": 2**70, "negative": -(2**70)},
        {"enum": _Colour.RED, "tuple": (1, "a"), "set": {"only"}},
        {1: "integer key"},
        {"at": datetime(2026, 12, 6, 4, 5, 6, 789, tzinfo=UTC), "amount": Decimal("1.50")},
    ]
    for payload in cases:
        assert stored_payload(payload) == payload_json(payload) == _reference(payload)


def test_a_deposit_event_payload_is_written_as_before() -> None:
    payload = {
        "deposit_id": "1220abc:0",
        "customer_id": "c-0001",
        "sender": "alice::1220",
        "deposit_account": "acct-7",
        "instrument": {"admin": "admin::1220", "id": "USDC"},
        "amount": "12.5",
        "status": "credited",
        "held_in": None,
        "offset": 41,
    }
    assert stored_payload(payload) == payload_json(payload) == _reference(payload)


def test_event_ids_are_random_version_4_uuids_in_their_usual_text() -> None:
    at = datetime(2026, 12, 6, tzinfo=UTC)
    ids = {new_event("alert_raised", "a", {}, at=at).event_id for _ in range(2000)}
    assert len(ids) == 2000
    for text in ids:
        parsed = uuid.UUID(text)
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122
        assert str(parsed) == text


def make(count: int) -> list[str]:
    at = datetime(2026, 12, 6, tzinfo=UTC)
    return [new_event("alert_raised", "a", {}, at=at).event_id for _ in range(count)]


def test_event_ids_differ_across_threads_and_a_forked_child() -> None:
    """Ids come from a pool of random bytes per thread; a thread or a forked child never hands
    out bytes another one does."""
    import multiprocessing
    import threading

    make(1)  # this thread's pool filled, partly used
    seen: list[str] = []
    threads = [threading.Thread(target=lambda: seen.extend(make(300))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        children = pool.map(make, [300, 300])
    mine = make(300)
    every = seen + mine + [event_id for ids in children for event_id in ids]
    assert len(every) == 300 * 7  # four threads, this one, two children
    assert len(set(every)) == len(every)
