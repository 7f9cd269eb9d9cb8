"""Properties of the Merkle-sum tree and its verifier (hypothesis, small random trees, both
builders): every honest proof verifies and the totals add up; any change to a proof or to the
root makes verification fail; negative and overflowing balances are refused; a tree that claims
max(children) instead of their sum is caught by every customer below such a node."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from sluice.domain.errors import InvalidInputError
from sluice.por import hashing
from sluice.por.documents import Proof, Root, Sibling, format_units
from sluice.por.verify import verify_proof
from tests.unit.por.strategies import BUILDERS, Case, cases, identifiers, root_of

FIELDS_OF_A_PROOF = [
    "customer_id",
    "nonce",
    "units",
    "balance",
    "index",
    "sibling_hash",
    "sibling_units",
    "siblings_dropped",
    "sibling_added",
    "snapshot_id",
    "instrument",
]
FIELDS_OF_A_ROOT = ["root_hash", "total_units", "total", "depth", "snapshot_id", "instrument"]


def _flip(value: bytes, bit: int) -> bytes:
    data = bytearray(value)
    data[bit // 8 % len(data)] ^= 1 << bit % 8
    return bytes(data)


@settings(max_examples=150, deadline=None)
@given(case=cases(), native=st.sampled_from(BUILDERS))
def test_every_customers_proof_verifies_and_the_total_is_the_sum(case: Case, native: bool) -> None:
    tree = case.build(native=native)
    root = root_of(tree)
    assert root.total_units == sum(case.units)
    assert root.total == format_units(sum(case.units), case.decimals)
    assert root.leaf_count == len(case.customer_ids)
    assert 2**root.depth >= root.leaf_count > 2 ** (root.depth - 1) or root.depth == 0
    indexes = set()
    for position, customer_id in enumerate(case.customer_ids):
        proof = tree.proof(customer_id)
        assert proof.units == case.units[position]
        assert verify_proof(proof, root).valid
        assert verify_proof(proof, root, native=False).valid
        indexes.add(proof.index)
    assert indexes == set(range(len(case.customer_ids)))


def _change_proof(proof: Proof, field: str, data: st.DataObject, decimals: int) -> Proof:
    replace = dataclasses.replace
    if field == "customer_id":
        other = data.draw(identifiers.filter(lambda text: text != proof.customer_id))
        return replace(proof, customer_id=other)
    if field == "nonce":
        return replace(proof, nonce=_flip(proof.nonce, data.draw(st.integers(0, 255))))
    if field == "units":  # the balance written to match, so only the hashes can tell
        units = data.draw(
            st.integers(0, hashing.SUM_LIMIT - 1).filter(lambda value: value != proof.units)
        )
        return replace(proof, units=units, balance=format_units(units, decimals))
    if field == "balance":
        balance = format_units(proof.units + data.draw(st.integers(1, 10**6)), decimals)
        return replace(proof, balance=balance)
    if field == "index":
        top = max(2 ** len(proof.siblings) - 1, 1)
        return replace(
            proof, index=data.draw(st.integers(0, top).filter(lambda i: i != proof.index))
        )
    if field == "snapshot_id":
        return replace(proof, snapshot_id=proof.snapshot_id + "x")
    if field == "instrument":
        return replace(proof, instrument=proof.instrument + "x")
    siblings = list(proof.siblings)
    if field == "sibling_added":
        return replace(proof, siblings=(*siblings, Sibling(bytes(32), 0)))
    assume(siblings)
    level = data.draw(st.integers(0, len(siblings) - 1))
    hash_, units = siblings[level]
    if field == "siblings_dropped":
        return replace(proof, siblings=tuple(siblings[:level]))
    if field == "sibling_hash":
        siblings[level] = Sibling(_flip(hash_, data.draw(st.integers(0, 255))), units)
    else:
        other = data.draw(st.integers(0, 2**128).filter(lambda value: value != units))
        siblings[level] = Sibling(hash_, other)
    return replace(proof, siblings=tuple(siblings))


@settings(max_examples=400, deadline=None)
@given(
    case=cases(),
    native=st.sampled_from(BUILDERS),
    field=st.sampled_from(FIELDS_OF_A_PROOF),
    data=st.data(),
)
def test_any_change_to_a_proof_fails_verification(
    case: Case, native: bool, field: str, data: st.DataObject
) -> None:
    tree = case.build(native=native)
    root = root_of(tree)
    proof = tree.proof(data.draw(st.sampled_from(case.customer_ids)))
    changed = _change_proof(proof, field, data, case.decimals)
    assert changed != proof
    verdict = verify_proof(changed, root)
    assert not verdict.valid
    assert verdict.reason
    assert not verify_proof(changed, root, native=False).valid


def _change_root(root: Root, field: str, data: st.DataObject) -> Root:
    replace = dataclasses.replace
    if field == "root_hash":
        return replace(root, root_hash=_flip(root.root_hash, data.draw(st.integers(0, 255))))
    if field == "total_units":
        other = data.draw(st.integers(0, 2**127).filter(lambda value: value != root.total_units))
        # the total rewritten at the same scale, so only the recomputed sum can tell
        return replace(root, total_units=other, total=str(other))
    if field == "total":
        return replace(root, total=root.total + "1" if "." in root.total else root.total + ".5")
    if field == "depth":
        return replace(root, depth=data.draw(st.integers(0, 40).filter(lambda d: d != root.depth)))
    if field == "snapshot_id":
        return replace(root, snapshot_id=root.snapshot_id + "x")
    return replace(root, instrument=root.instrument + "x")


@settings(max_examples=300, deadline=None)
@given(
    case=cases(),
    native=st.sampled_from(BUILDERS),
    field=st.sampled_from(FIELDS_OF_A_ROOT),
    data=st.data(),
)
def test_any_change_to_the_root_fails_verification(
    case: Case, native: bool, field: str, data: st.DataObject
) -> None:
    tree = case.build(native=native)
    root = root_of(tree)
    proof = tree.proof(data.draw(st.sampled_from(case.customer_ids)))
    changed = _change_root(root, field, data)
    assert not verify_proof(proof, changed).valid
    assert not verify_proof(proof, changed, native=False).valid


@pytest.mark.parametrize("native", BUILDERS)
@pytest.mark.parametrize(
    ("units", "problem"),
    [
        ([5, -1, 7], "negative"),
        ([2**127], r"2\^127"),
        ([2**126, 2**126], r"2\^127"),
        ([2**126, 2**125, 2**125, 1], r"2\^127"),
    ],
)
def test_negative_or_overflowing_balances_refuse_the_whole_tree(
    native: bool, units: list[int], problem: str
) -> None:
    case = Case(b"k", "s", "I", [f"c{i}" for i in range(len(units))], units, 0)
    with pytest.raises(InvalidInputError, match=problem):
        case.build(native=native)


@pytest.mark.parametrize("native", BUILDERS)
def test_a_customer_given_twice_refuses_the_tree(native: bool) -> None:
    case = Case(b"k", "s", "I", ["alice", "bob", "alice"], [1, 2, 3], 0)
    with pytest.raises(InvalidInputError, match="alice appears more than once"):
        case.build(native=native)


@pytest.mark.parametrize("native", BUILDERS)
def test_a_balance_of_2_to_the_126_is_kept_exactly(native: bool) -> None:
    case = Case(b"k", "s", "I", ["a", "b", "c"], [2**126 - 1, 2**126, 0], 0)
    tree = case.build(native=native)
    assert tree.built.total_units == 2**127 - 1
    assert all(verify_proof(tree.proof(c), root_of(tree)).valid for c in case.customer_ids)


@pytest.mark.parametrize("native", BUILDERS)
def test_no_customer_publishes_a_padding_root_at_total_zero(native: bool) -> None:
    tree = Case(b"k", "snap", "I", [], [], 10).build(native=native)
    root = root_of(tree)
    padding = hashing.padding_leaf_hash(0, hashing.snapshot_label("snap"))
    assert (root.root_hash, root.total_units, root.total) == (padding, 0, "0")
    assert (root.leaf_count, root.depth) == (0, 0)


def test_a_sibling_sum_under_reported_in_a_proof_is_caught() -> None:
    case = Case(b"k", "s", "I", ["a", "b", "c", "d", "e"], [10, 20, 30, 40, 50], 0)
    tree = case.build()
    root = root_of(tree)
    proof = tree.proof("c")
    for level, sibling in enumerate(proof.siblings):
        if sibling.units == 0:
            continue
        siblings = list(proof.siblings)
        siblings[level] = Sibling(sibling.hash, sibling.units - 1)
        verdict = verify_proof(dataclasses.replace(proof, siblings=tuple(siblings)), root)
        assert not verdict.valid


def _max_tree(case: Case) -> tuple[Root, list[Proof], list[bool]]:
    """The classic cheat: the tree's byte layout, but each parent claims max(children) instead
    of their sum (so the published total is the largest balance). Returns the root, every
    customer's proof, and whether some node above that customer's leaf claims less than the sum
    of its children (the customers who must notice)."""
    label = hashing.instrument_label(case.snapshot_id, case.instrument)
    records = sorted(
        (hashing.uid_for(hashing.nonce_for(case.secret, case.snapshot_id, c), c), c, u)
        for c, u in zip(case.customer_ids, case.units, strict=True)
    )
    depth = hashing.depth_for(len(records))
    padding = hashing.snapshot_label(case.snapshot_id)
    level = [(hashing.leaf_hash(label, uid, units), units, False) for uid, _, units in records]
    level += [
        (hashing.padding_leaf_hash(i, padding), 0, False) for i in range(len(records), 2**depth)
    ]
    levels = [level]
    for _ in range(depth):
        below = levels[-1]
        levels.append(
            [
                (
                    hashing.node_hash(left[0], left[1], right[0], right[1]),
                    max(left[1], right[1]),
                    max(left[1], right[1]) != left[1] + right[1],
                )
                for left, right in zip(below[::2], below[1::2], strict=True)
            ]
        )
    top_hash, top_units, _ = levels[-1][0]
    root = Root(
        case.snapshot_id,
        case.instrument,
        top_hash,
        top_units,
        str(top_units),
        len(records),
        depth,
        "2026-12-05T12:00:00Z",
    )
    proofs, cheated = [], []
    for index, (_, customer_id, units) in enumerate(records):
        siblings = tuple(
            Sibling(levels[k][(index >> k) ^ 1][0], levels[k][(index >> k) ^ 1][1])
            for k in range(depth)
        )
        proofs.append(
            Proof(
                case.snapshot_id,
                case.instrument,
                customer_id,
                hashing.nonce_for(case.secret, case.snapshot_id, customer_id),
                units,
                str(units),
                index,
                siblings,
            )
        )
        cheated.append(any(levels[k][index >> k][2] for k in range(1, depth + 1)))
    return root, proofs, cheated


@settings(max_examples=200, deadline=None)
@given(case=cases(min_size=2), data=st.data())
def test_a_tree_claiming_max_instead_of_the_sum_is_caught_below_every_such_node(
    case: Case, data: st.DataObject
) -> None:
    case = dataclasses.replace(
        case,
        units=[data.draw(st.integers(0, 1000)) for _ in case.customer_ids],
        decimals=0,
    )
    root, proofs, cheated = _max_tree(case)
    for proof, below_a_cheat in zip(proofs, cheated, strict=True):
        assert verify_proof(proof, root).valid is not below_a_cheat
        assert verify_proof(proof, root, native=False).valid is not below_a_cheat
    if sum(1 for units in case.units if units) >= 2:
        assert root.total_units < sum(case.units)
        assert any(cheated)


@settings(max_examples=100, deadline=None)
@given(case=cases(), other=identifiers)
def test_a_proof_checked_against_another_snapshots_root_fails(case: Case, other: str) -> None:
    assume(other != case.snapshot_id)
    tree = case.build()
    elsewhere = dataclasses.replace(case, snapshot_id=other).build()
    proof = tree.proof(case.customer_ids[0])
    root = dataclasses.replace(root_of(elsewhere), snapshot_id=case.snapshot_id)
    assert not verify_proof(proof, root).valid
