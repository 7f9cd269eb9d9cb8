"""A decision's audit content, marked float-free by the session that builds it, is exactly what
the plain values give (sluice.services.compliance_session)."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

import orjson

from sluice.domain.audit import FloatFreeArray, FloatFreeObject, json_value
from sluice.domain.compliance import Check, LimitLadder, Profile, decide
from sluice.domain.compliance import ComplianceRequest as Request
from sluice.services.compliance_session import _array, _checks_content, _kyc_content, _texts


def _same(marked: object, plain: object) -> None:
    assert marked == plain
    assert orjson.dumps(marked) == orjson.dumps(plain)  # same order: the stored column text
    assert json_value(marked) == json_value(plain)


def test_kyc_content_is_the_profile_as_a_dict_and_marked_when_plain() -> None:
    for profile in (Profile("c", 2, "active"), Profile("c", 0, "frozen", "why", 40)):
        content = _kyc_content(profile, {})
        assert type(content) is FloatFreeObject
        _same(content, profile.as_dict())
    odd = Profile("c", 2**70, "active")
    assert type(_kyc_content(odd, {})) is dict
    assert _kyc_content(odd, {}) == odd.as_dict()


def test_checks_content_lists_each_check_as_a_dict_and_is_marked_when_plain() -> None:
    ladder = LimitLadder.default()
    for amount in (Decimal("10"), Decimal("99999999999")):
        decision = decide(
            Request("c", "deposit", amount, "cp"),
            Profile("c", 1, "active"),
            ladder=ladder,
            used_daily=Decimal("1.5"),
            used_monthly=Decimal("2.5"),
            risk_score=3,
            risk_threshold=50,
        )
        content = _checks_content(decision.checks, {})
        assert type(content) is FloatFreeArray
        _same(content, [check.as_dict() for check in decision.checks])
    odd = (Check("x", True, "fine"), Check("y", 1, "one"))  # type: ignore[arg-type]
    content = _checks_content(odd, {})
    assert type(content) is list
    assert content == [check.as_dict() for check in odd]


def test_the_content_of_a_check_or_profile_seen_before_is_the_one_kept() -> None:
    """A session keeps the content of the checks and profiles its decisions share: the same
    object again gives the same content; an equal but other object is made its own."""
    checks: dict[int, tuple[Check, Mapping[str, object]]] = {}
    check, equal = Check("status", True, "customer is active"), Check("status", True, "x")
    first = _checks_content((check,), checks)
    again = _checks_content((check, equal), checks)
    assert again[0] is first[0]
    _same(again, [check.as_dict(), equal.as_dict()])
    odd = Check("y", 1, "one")  # type: ignore[arg-type]
    assert type(_checks_content((odd,), checks)) is list
    assert id(odd) not in checks  # only float-free content is kept
    profiles: dict[int, tuple[Profile, Mapping[str, object]]] = {}
    profile = Profile("c", 2, "active")
    kept = _kyc_content(profile, profiles)
    assert _kyc_content(profile, profiles) is kept
    changed = Profile("c", 2, "under_review", "why", 80)
    _same(_kyc_content(changed, profiles), changed.as_dict())


def test_only_text_objects_and_arrays_of_marked_objects_are_marked() -> None:
    assert type(_texts({"a": "b", "c": None})) is FloatFreeObject
    assert type(_texts({"a": 1})) is dict
    assert type(_texts({"a": 1.5})) is dict
    assert type(_array([FloatFreeObject(a="b")])) is FloatFreeArray
    assert type(_array([FloatFreeObject(a="b"), {"c": 1.5}])) is list
