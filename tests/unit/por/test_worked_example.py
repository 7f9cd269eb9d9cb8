"""The worked example of docs/proof-of-reserves.md: every hex value the page shows is computed
here from the page's inputs, with both builders, and the page's own stdlib verifier snippet runs
on the proof and root it describes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from sluice.por import hashing
from sluice.por.tree import NATIVE, build_tree
from sluice.por.verify import verify_proof

DOC = Path(__file__).parents[3] / "docs" / "proof-of-reserves.md"
SECRET = b"example secret, never use"
SNAPSHOT_ID = "2026-12-05T12:00:00Z#1"
INSTRUMENT = "Amulet@DSO::1220abcd"
CUSTOMERS = {"alice": 125_000_000_000, "bob": 30_000_000_000, "carol": 1}
TAKEN_AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)

NONCES = {
    "alice": "790897745409ef22c0cf326cb0cf74087c0f7a19ca7f82f4f49e5123c1b5e8d4",
    "bob": "0c4935948878b54894e7fc0e642aca9c8436211feeaee4332a510bb2ca8f010a",
    "carol": "d75e5bcd38f2178918fbd9ad9b62ffab72c5cef0b8d6bda1efc75dbc9403d342",
}
UIDS = {
    "alice": "823f9b0d0f169c0974d31f5373db3561d1e062a8bbaf4b7b3166e090efe1403e",
    "bob": "f06ebc8897f2bbeb55d33c7708a47892e38ff529d85f17ab759d2459891d8bf8",
    "carol": "59509c6d5b55974ec6294ea844f731158bc9d07783f169f05a316a6f74bf0f9e",
}
LEAVES = {
    "alice": "c740c95f74400cdff6ef714d4b00773706003f2a31721f825c66e85017a8d305",
    "bob": "544ab432973001fe8dcbce22b0f68d1d5f500d4a0796ba04f70966d4d220c3d0",
    "carol": "94dacf911cef192b1f590e10c2e7e800c4785efb4e031ca0a106301820b5ff20",
}
LABEL = "a659959ab90ab21ad04ccce200121c68ee99f85f9decee8813c981b5086046db"
SNAPSHOT_LABEL = "a3bc2ffbbf0e98841f238a2792cb6ab2450385c3f366a69c0923016eab6c06c2"
PADDING_3 = "d484f78f97835cc4bce5c94fc48623d26cd2d4100df8fef7129cb1133d829901"
NODE_CAROL_ALICE = "8064272c44295e3b6ee5eff9bef193ef31bbdb2bc929c745de0c0d9aaf31d647"
NODE_BOB_PADDING = "172834e373b55acd16c3a08e63fb83887fdd63ac7185056d0e389bc0b73046a5"
ROOT = {
    "snapshot_id": SNAPSHOT_ID,
    "instrument": INSTRUMENT,
    "root_hash": "cb36c17c66f7722fa5c407629d8f55576f23aa63fe3fcc698bd345944d236e98",
    "total_units": "155000000001",
    "total": "15.5000000001",
    "leaf_count": 3,
    "depth": 2,
    "taken_at": "2026-12-05T12:00:00Z",
}
BOB_PROOF = {
    "snapshot_id": SNAPSHOT_ID,
    "instrument": INSTRUMENT,
    "customer_id": "bob",
    "nonce": NONCES["bob"],
    "units": "30000000000",
    "balance": "3",
    "index": 2,
    "siblings": [
        {"hash": PADDING_3, "units": "0"},
        {"hash": NODE_CAROL_ALICE, "units": "125000000001"},
    ],
}
BUILDERS = [False, True] if NATIVE else [False]


def test_every_hash_of_the_example_follows_from_the_byte_layout() -> None:
    label = hashing.instrument_label(SNAPSHOT_ID, INSTRUMENT)
    assert label.hex() == LABEL
    assert hashing.snapshot_label(SNAPSHOT_ID).hex() == SNAPSHOT_LABEL
    for customer, units in CUSTOMERS.items():
        nonce = hashing.nonce_for(SECRET, SNAPSHOT_ID, customer)
        assert nonce.hex() == NONCES[customer]
        uid = hashing.uid_for(nonce, customer)
        assert uid.hex() == UIDS[customer]
        assert hashing.leaf_hash(label, uid, units).hex() == LEAVES[customer]
    padding = hashing.padding_leaf_hash(3, bytes.fromhex(SNAPSHOT_LABEL))
    assert padding.hex() == PADDING_3
    left = hashing.node_hash(
        bytes.fromhex(LEAVES["carol"]), 1, bytes.fromhex(LEAVES["alice"]), 125_000_000_000
    )
    right = hashing.node_hash(bytes.fromhex(LEAVES["bob"]), 30_000_000_000, padding, 0)
    assert (left.hex(), right.hex()) == (NODE_CAROL_ALICE, NODE_BOB_PADDING)
    root = hashing.node_hash(left, 125_000_000_001, right, 30_000_000_000)
    assert root.hex() == ROOT["root_hash"]


@pytest.mark.parametrize("native", BUILDERS)
def test_the_example_tree_publishes_the_documented_root_and_proof(native: bool) -> None:
    tree = build_tree(
        SECRET,
        SNAPSHOT_ID,
        INSTRUMENT,
        list(CUSTOMERS),
        list(CUSTOMERS.values()),
        decimals=10,
        native=native,
    )
    root = tree.root(TAKEN_AT)
    assert root.as_json() == ROOT
    assert tree.proof("bob").as_json() == BOB_PROOF
    assert [tree.built.leaf_index(i) for i in range(3)] == [1, 2, 0]  # alice, bob, carol
    for customer in CUSTOMERS:
        assert verify_proof(tree.proof(customer), root).valid


def test_the_documented_json_is_the_one_on_the_page() -> None:
    text = DOC.read_text()
    blocks = [json.loads(block) for block in re.findall(r"```json\n(\{\n.*?\n\})\n```", text, re.S)]
    assert ROOT in blocks
    assert BOB_PROOF in blocks
    for value in [*NONCES.values(), *UIDS.values(), *LEAVES.values(), NODE_BOB_PADDING, LABEL]:
        assert value in text


def test_the_pages_stdlib_verifier_accepts_the_example(tmp_path: Path) -> None:
    text = DOC.read_text()
    snippet = re.search(r"```python\n(import hashlib, json\n.*?)```", text, re.S)
    assert snippet is not None
    (tmp_path / "proof.json").write_text(json.dumps(BOB_PROOF))
    (tmp_path / "root.json").write_text(json.dumps(ROOT))
    completed = subprocess.run(
        [sys.executable, "-c", snippet.group(1)], cwd=tmp_path, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr
    (tmp_path / "root.json").write_text(json.dumps({**ROOT, "total_units": "155000000000"}))
    completed = subprocess.run(
        [sys.executable, "-c", snippet.group(1)], cwd=tmp_path, capture_output=True, text=True
    )
    assert completed.returncode != 0
