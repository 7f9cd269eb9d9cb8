"""What a signed reserves document cannot lie about, even signed by the operator's own keys:

* which instrument the custody's Bitcoin backs, once the verifier pins it (``istsi``, published
  with the descriptor): a document naming another instrument, or none, with iSTSi then "backed"
  by the treasury's own iSTSi holdings, is refused; a Bitcoin report counts in satoshis;
* the same public key twice in a descriptor (other chain codes) is one signer, not two;
* the other obligations (pending redemptions and payouts, unminted deposits, suspense, in-flight
  withdrawals, holds, fees) are owed with the liabilities: a custody that covers the tree but
  not what is also owed out of it is reported as not covering, and the verifier recomputes it.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import pytest
from embit import bip32  # type: ignore[import-untyped]
from embit.descriptor.checksum import checksum  # type: ignore[import-untyped]

from sluice.bitcoin.keys import SandboxCustody
from sluice.domain.journal import COMPLIANCE_HOLD, FEES, IN_FLIGHT, SUSPENSE, AccountRef
from sluice.domain.ledger import InstrumentId
from sluice.ports.issuance import GuardFigures
from sluice.services.por_reserves import (
    DocumentError,
    _reports,
    read_obligations,
    reserves_document,
)
from sluice.services.por_reserves_report import OBLIGATIONS_NOTE
from sluice.services.por_reserves_verify import read_descriptor, verify_reserves
from tests.unit.por.test_reserves_document import (
    CHAIN,
    ISTSI,
    TAKEN_AT,
    Document,
    World,
    resign,
)

pytest_plugins = ["tests.unit.por.test_reserves_document"]


def _content(document: Document) -> Document:
    return {k: v for k, v in document.items() if k not in ("digest", "signatures")}


def _rebuilt(world: World, document: Document, istsi: str | None, owed: dict[str, int]) -> Document:
    """The operator's forgery: the reports recomputed for ``istsi`` as the Bitcoin-backed one,
    then signed with its own custody keys."""
    content = _content(document)
    content["reports"] = _reports(content["bitcoin"], content["canton"], istsi, owed, {})
    return resign(world, content)


def test_bitcoin_backing_another_instrument_is_refused_when_pinned(world: World) -> None:
    document = world.document()
    owed = {ISTSI.key(): 0, world.cc.key(): 200_000}
    document["bitcoin"]["instrument"] = world.cc.key()
    forged = _rebuilt(world, document, world.cc.key(), owed)
    pinned = verify_reserves(forged, descriptor=world.custody.descriptor, istsi=ISTSI.key())
    assert not pinned.valid and pinned.istsi_pinned
    assert (
        f"bitcoin.instrument is {world.cc.key()!r}, not the pinned Bitcoin-backed instrument "
        f"{ISTSI.key()}" in pinned.reasons
    )
    # Unpinned it still reads as valid, but says whose word the backing is, and shows the source.
    unpinned = verify_reserves(forged, descriptor=world.custody.descriptor)
    assert unpinned.valid and not unpinned.istsi_pinned
    assert any("Bitcoin-backed instrument was not pinned" in n for n in unpinned.notes)
    sources = {c["instrument"]: c["reserves_source"] for c in unpinned.coverage}
    assert sources == {world.cc.key(): "bitcoin", ISTSI.key(): "canton"}


def test_istsi_backed_by_its_own_tokens_is_refused_when_pinned(world: World) -> None:
    """``bitcoin.instrument: null``: iSTSi's reserves would be the treasury's own iSTSi
    holdings (customers' tokens in custody), which always "cover" the tree."""
    world.ledger.mint(
        world.treasury,
        world.ledger.create_instrument(world.dso, "iSTSi", None, name="iSTSi", symbol="iSTSi"),
        "0.002",
        reason="customers' iSTSi in custody",
    )
    document = world.document()
    own = next(i for i in document["canton"]["instruments"] if i["instrument"].startswith("iSTSi"))
    own_key = own["instrument"]
    document["bitcoin"]["instrument"] = None
    forged = _rebuilt(world, document, None, {own_key: 200_000, world.cc.key(): 0})
    report = next(r for r in forged["reports"] if r["instrument"] == own_key)
    assert (report["reserves_source"], report["reserves_cover_liabilities"]) == ("canton", True)
    assert verify_reserves(forged, descriptor=world.custody.descriptor).valid
    refused = verify_reserves(forged, descriptor=world.custody.descriptor, istsi=own_key)
    assert not refused.valid
    assert any("not the pinned Bitcoin-backed instrument" in r for r in refused.reasons)
    assert any(f"{own_key}'s reserves are on bitcoin, not 'canton'" in r for r in refused.reasons)


def test_a_bitcoin_report_counts_in_satoshis(world: World) -> None:
    document = world.document()
    assert verify_reserves(document, istsi=ISTSI.key()).valid
    content = _content(document)
    report = next(r for r in content["reports"] if r["instrument"] == ISTSI.key())
    report |= {"decimals": 10, "reserves": "0.0000295", "liabilities": "0.00002", "owed": "0.00002"}
    result = verify_reserves(resign(world, content), istsi=ISTSI.key())
    assert not result.valid
    assert any("decimals must be 8, not 10" in r for r in result.reasons), result.reasons


def _same_key_other_chain_code(xpub: str) -> str:
    key = bip32.HDKey.from_base58(xpub)
    twin = bip32.HDKey(
        key.key,
        bytes(32 - len(b"twin")) + b"twin",
        version=key.version,
        depth=key.depth,
        fingerprint=key.fingerprint,
        child_number=key.child_number,
    )
    return str(twin.to_base58())


def test_one_public_key_listed_twice_is_one_signer(custody: SandboxCustody) -> None:
    first, second = custody.xpubs[:2]
    twin = _same_key_other_chain_code(first)
    assert twin != first
    body = f"wsh(sortedmulti(2,{first}/0/*,{twin}/0/*,{second}/0/*))"
    with pytest.raises(DocumentError, match="public keys are not distinct"):
        read_descriptor(f"{body}#{checksum(body)}", CHAIN)


# --- other obligations ----------------------------------------------------------------------------


def test_a_pending_redemption_is_owed_with_the_tree(world: World) -> None:
    """The review's example, scaled: custody 295000 sats, 200000 owed in the tree, 150000 of a
    redemption burned and not paid yet: 295000 < 350000, not covered."""
    obligations = {ISTSI.key(): {"pending_redemptions": 150_000, "pending_payouts": 0}}
    document = reserves_document(world.ctx, "snap-1", TAKEN_AT, {ISTSI.key(): 200_000}, obligations)
    report = next(r for r in document["reports"] if r["instrument"] == ISTSI.key())
    assert report["other_obligations"] == {"pending_payouts": "0", "pending_redemptions": "150000"}
    assert (report["liabilities_units"], report["other_obligations_units"]) == ("200000", "150000")
    assert (report["owed_units"], report["owed"]) == ("350000", "0.0035")
    assert (report["reserves_cover_liabilities"], report["ratio_bps"]) == (False, "8428")
    result = verify_reserves(document, descriptor=world.custody.descriptor, istsi=ISTSI.key())
    assert result.valid, result.reasons
    assert OBLIGATIONS_NOTE in result.notes
    coverage = next(c for c in result.coverage if c["instrument"] == ISTSI.key())
    assert (coverage["owed_units"], coverage["reserves_cover_liabilities"]) == ("350000", False)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("reserves_cover_liabilities", True),
        ("ratio_bps", "14750"),
        ("owed_units", "200000"),
        ("other_obligations_units", "0"),
    ],
)
def test_the_verifier_recomputes_against_what_is_owed(world: World, field: str, value: Any) -> None:
    obligations = {ISTSI.key(): {"pending_redemptions": 150_000}}
    document = reserves_document(world.ctx, "snap-1", TAKEN_AT, {ISTSI.key(): 200_000}, obligations)
    content = copy.deepcopy(_content(document))
    report = next(r for r in content["reports"] if r["instrument"] == ISTSI.key())
    report[field] = value
    result = verify_reserves(resign(world, content), istsi=ISTSI.key())
    assert not result.valid
    assert any(field in r for r in result.reasons), result.reasons


def test_obligations_must_be_units(world: World) -> None:
    with pytest.raises(Exception, match="obligations of"):
        reserves_document(world.ctx, "snap-1", TAKEN_AT, {}, {ISTSI.key(): {"pending_payouts": -1}})


def test_the_obligations_are_read_from_the_guard_and_the_journal() -> None:
    coin = InstrumentId("dso::1220aa", "Amulet")

    balances = {
        AccountRef("customer:alice", coin): Decimal("5"),
        AccountRef(SUSPENSE, coin): Decimal("1.5"),
        AccountRef(IN_FLIGHT, coin): Decimal("2"),
        AccountRef(COMPLIANCE_HOLD, coin): Decimal("0.25"),
        AccountRef(FEES, coin): Decimal("-0.1"),  # no asset: counts as 0
        AccountRef("treasury:treasury::1220cd", coin): Decimal("8.75"),
        AccountRef(IN_FLIGHT, ISTSI): Decimal("0.0001"),
    }
    uow = SimpleNamespace(
        books=SimpleNamespace(balances=lambda: balances),
        issuance=SimpleNamespace(guard_figures=lambda: GuardFigures(900, 1000, 150, 30, 40)),
    )
    found = read_obligations(uow, ISTSI)
    assert found[coin.key()] == {
        SUSPENSE: 15_000_000_000,
        IN_FLIGHT: 20_000_000_000,
        COMPLIANCE_HOLD: 2_500_000_000,
        FEES: 0,
        "other": 0,
    }
    assert found[ISTSI.key()] == {
        SUSPENSE: 0,
        IN_FLIGHT: 10_000,
        COMPLIANCE_HOLD: 0,
        FEES: 0,
        "other": 0,
        "pending_redemptions": 150,
        "pending_payouts": 30,
        "deposits_unminted": 40,
    }
