"""Shared strategies for the proof-of-liabilities tests: small random trees."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from hypothesis import strategies as st

from sluice.por.documents import Root
from sluice.por.tree import NATIVE, LiabilityTree, build_tree

TAKEN_AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
BUILDERS = [False, True] if NATIVE else [False]


@dataclass(frozen=True)
class Case:
    secret: bytes
    snapshot_id: str
    instrument: str
    customer_ids: list[str]
    units: list[int]
    decimals: int

    def build(self, *, native: bool | None = None) -> LiabilityTree:
        return build_tree(
            self.secret,
            self.snapshot_id,
            self.instrument,
            self.customer_ids,
            self.units,
            decimals=self.decimals,
            native=native,
        )


def root_of(tree: LiabilityTree) -> Root:
    return tree.root(TAKEN_AT)


identifiers = st.text(min_size=1, max_size=12)
balances = st.one_of(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=2**64 + 5),
    st.integers(min_value=2**100, max_value=2**120),
)


@st.composite
def cases(draw: st.DrawFn, *, min_size: int = 1, max_size: int = 17) -> Case:
    customer_ids = draw(st.lists(identifiers, min_size=min_size, max_size=max_size, unique=True))
    return Case(
        secret=draw(st.binary(min_size=1, max_size=80)),
        snapshot_id=draw(identifiers),
        instrument=draw(identifiers),
        customer_ids=customer_ids,
        units=[draw(balances) for _ in customer_ids],
        decimals=draw(st.integers(min_value=0, max_value=18)),
    )
