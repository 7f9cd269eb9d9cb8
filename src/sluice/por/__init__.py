"""Proof of liabilities: a Merkle-sum tree per instrument and snapshot, its published root,
customers' inclusion proofs, and the verifier anyone can run (``docs/proof-of-reserves.md``).

The tree is built by the C extension ``sluice.por._merkle`` when it is built (``make install``
compiles it) and by the pure-Python construction otherwise; both give byte-identical roots and
proofs. ``NATIVE`` / ``IMPLEMENTATION`` say which one is in use. Verifying needs only this
package: no database, no configuration.
"""

from sluice.por.documents import Proof, Root, Sibling, format_units
from sluice.por.tree import IMPLEMENTATION, NATIVE, LiabilityTree, build_tree
from sluice.por.verify import Verification, verify_proof

__all__ = [
    "IMPLEMENTATION",
    "NATIVE",
    "LiabilityTree",
    "Proof",
    "Root",
    "Sibling",
    "Verification",
    "build_tree",
    "format_units",
    "verify_proof",
]
