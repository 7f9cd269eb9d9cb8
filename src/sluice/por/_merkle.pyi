# The C extension's interface (src/sluice/por/_merkle.c); see sluice.por.tree for the semantics.
from collections.abc import Sequence

class Tree:
    @property
    def root_hash(self) -> bytes: ...
    @property
    def total_units(self) -> int: ...
    @property
    def depth(self) -> int: ...
    @property
    def leaf_count(self) -> int: ...
    def leaf_index(self, position: int, /) -> int: ...
    def input_position(self, index: int, /) -> int: ...
    def nonce(self, position: int, /) -> bytes: ...
    def siblings(self, index: int, /) -> list[tuple[bytes, int]]: ...

def build(
    secret: bytes,
    snapshot_id: str,
    instrument: str,
    customer_ids: Sequence[str],
    units: Sequence[int],
    /,
) -> Tree: ...
def compute_root(
    snapshot_id: str,
    instrument: str,
    customer_id: str,
    nonce: bytes,
    units: int,
    index: int,
    siblings: Sequence[tuple[bytes, int]],
    /,
) -> tuple[bytes, int]: ...
