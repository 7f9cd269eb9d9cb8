"""The iSTSi instrument as the token standard's Registry API answers for it, over HTTP: the
embedded ledger served (:class:`LedgerServer` on a free port), iSTSi created through its sandbox
control (:func:`create_istsi` over :class:`RemoteLedger`, as ``[issuance] control_url`` does), and
the issuer's Registry API read with a plain HTTP client, as a wallet reads it.

The metadata says 8 decimals (1 unit is 1 satoshi), in the instrument's own answer and in the
instrument list, and its total supply is the minted satoshis at 8 decimals.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import httpx
import pytest

from sluice.ledger.local import EmbeddedLedger
from sluice.ledger.local.issuer import ISTSI_ID, RemoteIssuerLedger, create_istsi
from sluice.ledger.local.remote import RemoteLedger
from sluice.ledger.local.server import LedgerServer

MINTED_SATS = 150_000_001  # 1.50000001 iSTSi: the last satoshi shows at the 8th decimal


@pytest.fixture
def served() -> Iterator[tuple[LedgerServer, str, str]]:
    """The served ledger, the issuer party (iSTSi's admin) and the treasury party."""
    ledger = EmbeddedLedger.open(None, seed=16, checkpoint_interval_s=None)
    for node in ("registry", "exchange"):
        ledger.add_node(node)
    issuer = ledger.allocate_party("issuer", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    server = LedgerServer(ledger).start()
    try:
        yield server, issuer, treasury
    finally:
        server.stop()
        ledger.close()


def test_the_registry_api_says_istsi_has_8_decimals(
    served: tuple[LedgerServer, str, str],
) -> None:
    server, issuer, treasury = served
    with RemoteLedger(server.url, timeout_s=10) as remote:
        assert create_istsi(remote, issuer).id == ISTSI_ID
        RemoteIssuerLedger(remote, issuer).mint(
            treasury, MINTED_SATS, reason="test", command_id="metadata-mint"
        )

    base = f"{server.registry_url(issuer)}/registry/metadata/v1"
    with httpx.Client(timeout=10) as client:
        one = client.get(f"{base}/instruments/{ISTSI_ID}")
        listed = client.get(f"{base}/instruments")
        info = client.get(f"{base}/info")
    assert one.status_code == 200, one.text
    metadata = one.json()
    assert (metadata["id"], metadata["symbol"], metadata["decimals"]) == (ISTSI_ID, "iSTSi", 8)
    assert Decimal(metadata["totalSupply"]) == Decimal("1.50000001")

    assert listed.status_code == 200, listed.text
    (entry,) = [i for i in listed.json()["instruments"] if i["id"] == ISTSI_ID]
    assert entry["decimals"] == 8
    same = {k for k in metadata if k != "totalSupplyAsOf"}
    assert {k: entry[k] for k in same} == {k: metadata[k] for k in same}

    assert info.status_code == 200, info.text
    assert info.json()["adminId"] == issuer
