"""The C extension sluice.por._merkle against the pure-Python construction: the same roots,
proofs and verdicts on random inputs, on a tree of 100,000 leaves (whose padding spans many
levels), and on refusals. Under CI=true the extension must be built: a missing one fails."""

from __future__ import annotations

import os
import random
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice.domain.errors import InvalidInputError
from sluice.por import hashing
from sluice.por.tree import IMPLEMENTATION, NATIVE, PythonTree
from sluice.por.verify import NATIVE_COMPUTE_ROOT, compute_root
from tests.unit.por.strategies import Case, cases

needs_native = pytest.mark.skipif(not NATIVE, reason="sluice.por._merkle is not built here")


def test_the_c_extension_is_built_where_ci_runs() -> None:
    if os.environ.get("CI") == "true":
        assert NATIVE, "CI must build sluice.por._merkle (make install; needs libssl-dev)"
    elif not NATIVE:
        pytest.skip("sluice.por._merkle is not built here; CI=true requires it")
    assert IMPLEMENTATION.startswith("native")
    assert NATIVE_COMPUTE_ROOT is not None


@needs_native
@settings(max_examples=150, deadline=None)
@given(case=cases(min_size=0, max_size=40))
def test_native_and_python_builds_give_identical_roots_and_proofs(case: Case) -> None:
    native, python = case.build(native=True), case.build(native=False)
    assert native.built.root_hash == python.built.root_hash
    assert native.built.total_units == python.built.total_units
    assert (native.built.depth, native.built.leaf_count) == (python.built.depth, len(case.units))
    for customer_id in case.customer_ids:
        assert native.proof(customer_id) == python.proof(customer_id)


@needs_native
def test_a_tree_of_100_000_leaves_is_the_same_natively() -> None:
    rng = random.Random(100_000)
    ids = [f"customer-{i:06d}" for i in range(100_000)]
    units = [rng.randrange(10**16) for _ in ids]
    native = Case(b"secret", "snap", "Amulet@DSO::1220", ids, units, 10).build(native=True)
    python = PythonTree(b"secret", "snap", "Amulet@DSO::1220", ids, units)
    assert native.built.depth == 17
    assert native.built.root_hash == python.root_hash
    assert native.built.total_units == sum(units)
    for position in (0, 99_999, rng.randrange(100_000)):
        index = native.built.leaf_index(position)
        assert index == python.leaf_index(position)
        assert native.built.input_position(index) == position
        assert native.built.siblings(index) == python.siblings(index)
        assert native.built.nonce(position) == python.nonce(position)


@needs_native
def test_a_tree_just_past_a_power_of_two_pads_the_same_natively() -> None:
    # 2^15 + 1 leaves: depth 16, and padding-only subtrees of up to 2^14 leaves, which the C
    # extension hashes on several threads.
    ids = [f"c{i}" for i in range(2**15 + 1)]
    units = list(range(len(ids)))
    native = Case(b"secret", "snap", "I", ids, units, 0).build(native=True)
    python = PythonTree(b"secret", "snap", "I", ids, units)
    assert native.built.depth == python.depth == 16
    assert native.built.root_hash == python.root_hash
    last = native.built.leaf_index(len(ids) - 1)
    assert native.built.siblings(last) == python.siblings(last)


PINNED_BUILD = """
import os
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
from sluice.por import _merkle
ids = [f"c{i}" for i in range(40_000)]
print(_merkle.build(b"secret", "snap", "I", ids, list(range(40_000))).root_hash.hex())
"""


@needs_native
def test_the_root_does_not_depend_on_how_many_cores_built_it() -> None:
    # A process pinned to one core builds on one thread; this one may use all of its cores.
    pinned = subprocess.run(
        [sys.executable, "-c", PINNED_BUILD], capture_output=True, text=True, check=True
    )
    ids = [f"c{i}" for i in range(40_000)]
    here = Case(b"secret", "snap", "I", ids, list(range(40_000)), 0).build(native=True)
    assert pinned.stdout.strip() == here.built.root_hash.hex()


@needs_native
@pytest.mark.parametrize(
    ("units", "error", "message"),
    [
        ([1, True], TypeError, "must be an int, not bool"),
        ([1, 2.5], TypeError, "must be an int, not float"),
        ([1, -(2**70)], ValueError, "negative"),
        ([1, 2**200], ValueError, r"not below 2\^127"),
    ],
)
def test_the_extension_refuses_what_python_refuses(
    units: list[object], error: type[Exception], message: str
) -> None:
    from sluice.por import _merkle

    ids = [f"c{i}" for i in range(len(units))]
    with pytest.raises(error, match=message):
        _merkle.build(b"k", "s", "I", ids, units)  # type: ignore[arg-type]
    with pytest.raises(error, match=message):
        PythonTree(b"k", "s", "I", ids, units)  # type: ignore[arg-type]


@pytest.mark.parametrize("native", [False, True] if NATIVE else [False])
def test_a_customer_id_that_is_not_a_string_is_refused(native: bool) -> None:
    case = Case(b"k", "s", "I", ["a", 7], [1, 2], 0)  # type: ignore[list-item]
    with pytest.raises(InvalidInputError, match="position 1 is not a str"):
        case.build(native=native)


@needs_native
def test_leaves_and_sums_beyond_64_bits_are_exact() -> None:
    ids, units = ["a", "b", "c"], [2**100 + 7, 2**64, 2**64 - 1]
    native = Case(b"k", "s", "I", ids, units, 0).build(native=True)
    assert native.built.total_units == sum(units)
    assert native.built.root_hash == PythonTree(b"k", "s", "I", ids, units).root_hash


@needs_native
@settings(max_examples=300, deadline=None)
@given(
    customer_id=st.text(max_size=10),
    nonce=st.binary(min_size=31, max_size=33),
    units=st.integers(-2, 2**128),
    index=st.integers(-1, 70),
    siblings=st.lists(
        st.tuples(st.binary(min_size=31, max_size=33), st.integers(-1, 2**127 + 1)), max_size=6
    ),
)
def test_native_and_python_paths_agree_on_every_input(
    customer_id: str,
    nonce: bytes,
    units: int,
    index: int,
    siblings: list[tuple[bytes, int]],
) -> None:
    assert NATIVE_COMPUTE_ROOT is not None
    arguments = ("snap", "I", customer_id, nonce, units, index, siblings)
    try:
        expected: object = compute_root(*arguments)
    except ValueError:
        expected = ValueError
    try:
        actual: object = NATIVE_COMPUTE_ROOT(*arguments)
    except ValueError:
        actual = ValueError
    assert actual == expected
    if expected is not ValueError:
        assert isinstance(expected, tuple)
        assert expected[1] == units + sum(units for _, units in siblings)
        assert expected[1] < hashing.SUM_LIMIT
