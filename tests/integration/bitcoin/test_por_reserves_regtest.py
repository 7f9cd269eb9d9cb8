"""The reserves document on a real node: a custody on ``litecoin-regtest`` paid by the node's
wallet on both branches, its document read over RPC, and the node's own ``scantxoutset`` over the
published descriptor (asked directly, not through sluice's reads) giving the balances the document
states; the verifier's ``--node`` recheck agrees, in a process of its own with the node's cookie.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS, to_sats
from sluice.domain.ledger import InstrumentId
from sluice.services.por_reserves import reserves_document
from sluice.services.por_reserves_verify import verify_reserves
from sluice.services.reserves_settings import ReservesContext, ReservesSettings
from tests.bitcoin_regtest import RegtestNode

CHAIN = CHAINS["litecoin-regtest"]
TAKEN_AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ISTSI = InstrumentId("issuer::1220ab", "iSTSi")
SLUICE = Path(sys.executable).with_name("sluice")
PAID = {(0, 0): 1_000_000, (0, 3): 250_000, (1, 1): 40_000}


def test_the_nodes_scan_over_the_descriptor_gives_the_documents_balances(
    litecoind: RegtestNode, tmp_path: Path
) -> None:
    custody = create_sandbox_custody(tmp_path / "keys", CHAIN)
    wallet = EmbitCustodyWallet(custody.descriptor, CHAIN, load_signing_keys(custody.key_files))
    for (branch, index), sats in PAID.items():
        litecoind.fund(wallet.derive(branch, index).address, sats)
    litecoind.mine(1)
    database = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    ctx = ReservesContext(
        uow=database.uow,
        clock=lambda: TAKEN_AT,
        treasury="treasury::1220cd",
        secret_path=tmp_path / "por-secret",
        settings=ReservesSettings(scan_gap=5),
        node=litecoind.rpc,
        wallet=wallet,
        istsi=ISTSI,
    )
    try:
        document = reserves_document(ctx, "snap-1", TAKEN_AT, {ISTSI.key(): 1_290_000})
    finally:
        database.dispose()
    bitcoin = document["bitcoin"]
    assert bitcoin["chain"] == "litecoin-regtest" and bitcoin["total_sats"] == 1_290_000
    stated = {(a["branch"], a["index"]): a["balance_sats"] for a in bitcoin["addresses"]}
    assert stated == PAID
    assert all(a["address"].startswith("rltc1") for a in bitcoin["addresses"])

    # The node's own scan over the published descriptor, branch by branch.
    on_node: dict[str, int] = {}
    for item in bitcoin["ranges"]:
        body = custody.descriptor.partition("#")[0].replace("/0/*", f"/{item['branch']}/*")
        described = litecoind.rpc.call("getdescriptorinfo", body)["descriptor"]
        answer = litecoind.rpc.call(
            "scantxoutset", "start", [{"desc": described, "range": [0, item["last_index"]]}]
        )
        assert answer["bestblock"] == bitcoin["block_hash"]
        for unspent in answer["unspents"]:
            script_hex = unspent["scriptPubKey"]
            sats = to_sats(Decimal(str(unspent["amount"])))
            on_node[script_hex] = on_node.get(script_hex, 0) + sats
    assert on_node == {a["script_hex"]: a["balance_sats"] for a in bitcoin["addresses"]}

    result = verify_reserves(document, descriptor=custody.descriptor, node=litecoind.rpc)
    assert result.valid, result.reasons
    assert result.node is not None and not result.node.tip_moved
    assert result.signatures_valid == 3

    path = tmp_path / "reserves.json"
    path.write_text(json.dumps(document))
    environment = {k: v for k, v in os.environ.items() if not k.startswith("SLUICE_")}
    completed = subprocess.run(
        [
            str(SLUICE),
            "por",
            "verify-reserves",
            str(path),
            "--node",
            litecoind.url,
            "--rpc-cookie-file",
            str(litecoind.cookie_file),
            "--json",
        ],
        cwd=tmp_path,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr
    verdict = json.loads(completed.stdout)
    assert verdict["node"]["total_sats"] == 1_290_000 and verdict["node"]["differences"] == []
