"""The reserves document of a proof-of-reserves snapshot, built on the in-memory chain and the
embedded ledger, and checked by :func:`verify_reserves`.

A sandbox custody (three new keys, the 2-of-3 descriptor; the wallet holds two of them), the
in-memory chain paying two issued deposit addresses and a change address, and the embedded
ledger with the treasury's Canton Coin holdings. Covers: the document verifies (digest, two
signatures under the descriptor's xpubs, addresses derived from the descriptor, every sum, every
report); a change to any balance, address, height, block hash, signature or the descriptor makes
it fail, whether the digest is left alone or recomputed (and, as a property, a change to any
value anywhere in it); a lie the operator signs itself (a
balance with matching outputs, another custody's address) is caught by the sums, the descriptor
or the node; one key's signature is reported as below the threshold; missing sources are stated;
the node recheck (same block, a moved tip, a block not on the node's chain); the signatures
verify by hand with the `cryptography` package and hashlib; and what a customer's node can check
of the Canton part (a stakeholder looks each contract up; an outsider cannot).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec as crypto_ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from embit import bip32  # type: ignore[import-untyped]
from hypothesis import given, settings
from hypothesis import strategies as st

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import SandboxCustody, create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS
from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.ledger import Cursor, InstrumentId
from sluice.ledger.local.engine import EmbeddedLedger
from sluice.por.documents import Root
from sluice.ports import LedgerReadError
from sluice.ports.reserves import PorSnapshot
from sluice.services.btc_addresses import deposit_address
from sluice.services.por_reserves import (
    canonical_json,
    document_digest,
    reserves_document,
    store_reserves,
)
from sluice.services.por_reserves_verify import verify_reserves
from sluice.services.reserves_settings import ReservesContext, ReservesSettings

CHAIN = CHAINS["regtest"]
TAKEN_AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
ISTSI = InstrumentId("issuer::1220ab", "iSTSi")
CONNECTION = "treasury-exchange"
Document = dict[str, Any]


class Clock:
    def __init__(self) -> None:
        self.now = TAKEN_AT

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(scope="module")
def custody(tmp_path_factory: pytest.TempPathFactory) -> SandboxCustody:
    return create_sandbox_custody(tmp_path_factory.mktemp("custody") / "keys", CHAIN)


def wallet_with(custody: SandboxCustody, keys: int) -> EmbitCustodyWallet:
    return EmbitCustodyWallet(
        custody.descriptor, CHAIN, load_signing_keys(custody.key_files[:keys])
    )


@dataclass
class World:
    ctx: ReservesContext
    chain: FakeChain
    wallet: EmbitCustodyWallet
    custody: SandboxCustody
    ledger: EmbeddedLedger
    treasury: str
    dso: str
    carol: str
    cc: InstrumentId

    def document(self, *, caught_up: bool = True, **changes: Any) -> Document:
        """The document, ingestion's cursor first moved to the ledger's end (``caught_up``: the
        journal is at the offset the embedded ledger's holdings are read at) or left where it
        is."""
        if caught_up:
            self.ingested_to(self.ledger.node_client("exchange").ledger_end())
        ctx = replace(self.ctx, **changes)
        liabilities = {ISTSI.key(): 200_000, self.cc.key(): 400_000_000_000}
        return reserves_document(ctx, "snap-1", TAKEN_AT, liabilities)

    def ingested_to(self, offset: int) -> None:
        """Ingestion's cursor on the treasury's connection at ``offset``."""
        with self.ctx.uow() as uow:
            uow.ingestion.set_cursor(CONNECTION, self.treasury, Cursor(offset, None, None, None))
            uow.commit()


@contextmanager
def new_world(tmp_path: Path, custody: SandboxCustody) -> Iterator[World]:
    db = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    with db.uow() as uow:
        for customer in ("alice", "bob"):
            uow.reference.add_customer(customer, customer.title())
        uow.commit()
    wallet = wallet_with(custody, 2)
    chain = FakeChain(CHAIN)
    clock = Clock()
    alice = deposit_address(db.uow, wallet, "alice", clock=clock)
    bob = deposit_address(db.uow, wallet, "bob", clock=clock)
    chain.fund(alice.script_hex, 150_000, mine=True)
    chain.fund(alice.script_hex, 50_000, mine=True)
    chain.fund(bob.script_hex, 70_000, mine=True)
    chain.fund(wallet.derive(1, 0).script_hex, 25_000, mine=True)
    chain.fund("0014" + "ab" * 20, 99_999, mine=True)  # not custody's
    chain.mine(2)
    ledger = EmbeddedLedger.open(None, seed=3, checkpoint_interval_s=None)
    for node in ("registry", "exchange", "customer"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    carol = ledger.allocate_party("carol", "customer")
    cc = ledger.create_instrument(dso, "Amulet", None, name="Canton Coin", symbol="CC")
    ledger.mint(treasury, cc, "42.5", reason="a")
    ledger.mint(treasury, cc, "7.5", reason="b")
    ctx = ReservesContext(
        uow=db.uow,
        clock=clock,
        treasury=treasury,
        secret_path=tmp_path / "por-secret",
        settings=ReservesSettings(scan_gap=3),
        ledger=ledger.node_client("exchange"),
        node=chain,
        wallet=wallet,
        istsi=ISTSI,
        connection=CONNECTION,
    )
    yield World(ctx, chain, wallet, custody, ledger, treasury, dso, carol, cc)
    db.dispose()


@pytest.fixture
def world(tmp_path: Path, custody: SandboxCustody) -> Iterator[World]:
    with new_world(tmp_path, custody) as made:
        yield made


@pytest.fixture(scope="module")
def built(
    tmp_path_factory: pytest.TempPathFactory, custody: SandboxCustody
) -> Iterator[tuple[World, Document]]:
    """One world and its document, for the tests that only read them."""
    with new_world(tmp_path_factory.mktemp("built"), custody) as made:
        yield made, made.document()


def resign(world: World, document: Document, keys: int = 2) -> Document:
    """What an operator holding the keys can do: sign whatever it wrote."""
    digest = document_digest(document)
    signed = wallet_with(world.custody, keys).sign_digest(digest)
    return document | {
        "digest": digest.hex(),
        "signatures": [{"xpub": x, "signature": s} for x, s in sorted(signed)],
    }


def test_the_document_states_the_custody_and_the_treasury_and_verifies(world: World) -> None:
    document = world.document()
    bitcoin = document["bitcoin"]
    tip = world.chain.getblockchaininfo()
    assert (bitcoin["height"], bitcoin["block_hash"]) == (tip["blocks"], tip["bestblockhash"])
    assert bitcoin["ranges"] == [{"branch": 0, "last_index": 4}, {"branch": 1, "last_index": 2}]
    assert [(a["branch"], a["index"], a["balance_sats"]) for a in bitcoin["addresses"]] == [
        (0, 0, 200_000),
        (0, 1, 70_000),
        (1, 0, 25_000),
    ]
    assert len(bitcoin["addresses"][0]["outputs"]) == 2
    assert bitcoin["total_sats"] == 295_000 and bitcoin["threshold"] == 2
    assert bitcoin["descriptor"] == world.custody.descriptor
    assert sorted(s["xpub"] for s in document["signatures"]) == sorted(world.custody.xpubs[:2])
    (held,) = document["canton"]["instruments"]
    assert (held["instrument"], held["total_units"], held["total"]) == (
        world.cc.key(),
        "500000000000",
        "50",
    )
    assert {c["amount"] for c in held["contracts"]} == {"42.5", "7.5"}
    reports = {r["instrument"]: r for r in document["reports"]}
    istsi = reports[ISTSI.key()]
    assert (istsi["reserves_source"], istsi["reserves_units"], istsi["ratio_bps"]) == (
        "bitcoin",
        "295000",
        "14750",
    )
    assert istsi["reserves_cover_liabilities"] is True and istsi["reserves"] == "0.00295"
    token = reports[world.cc.key()]
    assert (token["reserves_units"], token["ratio_bps"], token["liabilities"]) == (
        "500000000000",
        "12500",
        "40",
    )
    assert (
        document["digest"]
        == hashlib.sha256(
            canonical_json({k: v for k, v in document.items() if k not in ("digest", "signatures")})
        ).hexdigest()
    )
    result = verify_reserves(document, descriptor=world.custody.descriptor)
    assert result.valid, result.reasons
    assert (result.signatures_valid, result.threshold, result.descriptor_pinned) == (2, 2, True)
    assert [(c["instrument"], c["reserves_cover_liabilities"]) for c in result.coverage] == [
        (world.cc.key(), True),
        (ISTSI.key(), True),
    ]
    # A copy that went through a file (another spelling of the same JSON) verifies the same.
    assert verify_reserves(json.loads(json.dumps(document, indent=3))).valid


def _set(path: str, value: Any) -> Callable[[Document], None]:
    def change(document: Document) -> None:
        *parents, last = path.split(".")
        target: Any = document
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[int(last) if last.isdigit() else last] = value

    return change


def _other_signature(document: Document) -> None:
    first, second = document["signatures"]
    first["signature"] = second["signature"]


TAMPERINGS: dict[str, Callable[[Document], None]] = {
    "balance": _set("bitcoin.addresses.0.balance_sats", 200_001),
    "output amount": _set("bitcoin.addresses.0.outputs.0.amount_sats", 150_001),
    "address": _set("bitcoin.addresses.1.address", "bcrt1qw508d6qejxtdg4y5r3zarvary0c5xw7kygt080"),
    "script": _set("bitcoin.addresses.1.script_hex", "0020" + "11" * 32),
    "index": _set("bitcoin.addresses.1.index", 2),
    "height": _set("bitcoin.height", 3),
    "block hash": _set("bitcoin.block_hash", "00" * 32),
    "total": _set("bitcoin.total_sats", 300_000),
    "signature": _other_signature,
    "descriptor": _set("bitcoin.descriptor", "wsh(sortedmulti(1,tpubD6NzVbkrYhZ4X/0/*))"),
    "canton units": _set("canton.instruments.0.contracts.0.units", "525000000000"),
    "canton total": _set("canton.instruments.0.total_units", "600000000000"),
    "offset": _set("canton.offset", 1),
    "units past 2^127": _set("canton.instruments.0.contracts.0.units", "9" * 5000),
    "report ratio": _set("reports.0.ratio_bps", "99999"),
    "report cover": _set("reports.1.reserves_cover_liabilities", False),
    "liabilities": _set("reports.0.liabilities_units", "1"),
    "snapshot": _set("snapshot_id", "snap-2"),
}


@pytest.mark.parametrize("name", sorted(TAMPERINGS))
def test_any_change_makes_the_document_fail(built: tuple[World, Document], name: str) -> None:
    document = copy.deepcopy(built[1])
    TAMPERINGS[name](document)
    result = verify_reserves(document)
    assert not result.valid
    # Recomputing the digest does not help a third party: the keys signed the old one.
    document["digest"] = document_digest(document).hex()
    result = verify_reserves(document)
    assert not result.valid
    assert any("does not verify" in r or "descriptor" in r for r in result.reasons), result


def _made_up_output(document: Document) -> None:
    _set("bitcoin.addresses.0.outputs.0.amount_sats", 850_000)(document)
    _set("bitcoin.addresses.0.balance_sats", 900_000)(document)
    _set("bitcoin.total_sats", 995_000)(document)


OPERATOR_LIES: dict[str, Callable[[Document], None]] = {
    "balance without outputs": _set("bitcoin.addresses.0.balance_sats", 900_000),
    "an output made up, balance and total to match": _made_up_output,
    "someone else's address": _set("bitcoin.addresses.1.script_hex", "0014" + "ab" * 20),
    "an address outside the ranges": _set("bitcoin.addresses.1.index", 40),
    "a report that does not follow": _set("reports.1.reserves_units", "900000000000"),
    "canton total": _set("canton.instruments.0.total", "60"),
}


@pytest.mark.parametrize("name", sorted(OPERATOR_LIES))
def test_a_lie_the_operator_signs_itself_is_caught(
    built: tuple[World, Document], name: str
) -> None:
    world, document = built[0], copy.deepcopy(built[1])
    OPERATOR_LIES[name](document)
    signed = resign(world, document)
    result = verify_reserves(signed, descriptor=world.custody.descriptor, node=world.chain)
    assert not result.valid, name
    assert result.signatures_valid == 2


def test_one_signature_is_reported_below_the_threshold(world: World) -> None:
    document = world.document(wallet=wallet_with(world.custody, 1))
    assert len(document["signatures"]) == 1
    result = verify_reserves(document)
    assert not result.valid
    assert result.signatures_valid == 1 and result.threshold == 2
    assert result.reasons == ("signed by 1 of the descriptor's 3 keys; it requires 2",)
    unsigned = world.document(wallet=wallet_with(world.custody, 0))
    assert unsigned["signatures"] == []
    assert verify_reserves(unsigned).signatures_valid == 0
    doubled = resign(world, copy.deepcopy(document), keys=1)
    doubled["signatures"] *= 2
    assert "signed twice" in " ".join(verify_reserves(doubled).reasons)


def test_a_key_outside_the_descriptor_does_not_count(world: World, tmp_path: Path) -> None:
    stranger = create_sandbox_custody(tmp_path / "stranger", CHAIN)
    document = world.document()
    digest = bytes.fromhex(document["digest"])
    (signed,) = wallet_with(stranger, 1).sign_digest(digest)
    document["signatures"][1] = {"xpub": signed[0], "signature": signed[1]}
    result = verify_reserves(document)
    assert not result.valid and result.signatures_valid == 1
    assert any("is not a key of the descriptor" in r for r in result.reasons)


def test_the_pinned_descriptor_must_be_the_documents(world: World, tmp_path: Path) -> None:
    document = world.document()
    other = create_sandbox_custody(tmp_path / "other", CHAIN)
    result = verify_reserves(document, descriptor=other.descriptor)
    assert not result.valid
    assert "the document's descriptor is not the pinned one" in result.reasons
    unpinned = verify_reserves(document)
    assert unpinned.valid and not unpinned.descriptor_pinned
    assert any("not pinned" in n for n in unpinned.notes)


def test_missing_sources_are_stated_never_dropped(world: World) -> None:
    document = world.document(wallet=None, node=None, ledger=None)
    assert document["bitcoin"] == {
        "read": False,
        "reason": "no custody in this process",
        "instrument": ISTSI.key(),
        "descriptor": None,
    }
    assert document["canton"]["read"] is False and document["signatures"] == []
    reports = {r["instrument"]: r for r in document["reports"]}
    assert set(reports) == {ISTSI.key(), world.cc.key()}
    for report in reports.values():
        assert report["reserves_read"] is False and report["reserves_units"] is None
        assert report["reserves_cover_liabilities"] is None and report["reason"]
    result = verify_reserves(document)
    assert result.valid and result.threshold is None
    assert any("no custody" in n for n in result.notes)
    assert not verify_reserves(document, descriptor=world.custody.descriptor).valid
    # A node that is down: the custody is named, its balances are not.
    world.chain.down = True
    down = world.document()
    assert down["bitcoin"]["read"] is False and "could not be scanned" in down["bitcoin"]["reason"]
    assert down["bitcoin"]["descriptor"] == world.custody.descriptor
    assert verify_reserves(down, descriptor=world.custody.descriptor).valid


def test_the_node_recheck_compares_balances(world: World) -> None:
    document = world.document()
    same = verify_reserves(document, node=world.chain)
    assert same.valid and same.node is not None
    assert (same.node.tip_moved, same.node.total_sats, same.node.differences) == (
        False,
        295_000,
        (),
    )
    world.chain.fund(document["bitcoin"]["addresses"][1]["script_hex"], 5_000, mine=True)
    moved = verify_reserves(document, node=world.chain)
    assert moved.valid and moved.node is not None and moved.node.tip_moved
    address = document["bitcoin"]["addresses"][1]["address"]
    assert moved.node.differences == (f"{address}: the document states 70000 sats, the node 75000",)
    assert any("tip moved" in n for n in moved.notes)
    world.chain.down = True
    assert verify_reserves(document, node=world.chain).node_error is not None


def test_a_block_not_on_the_nodes_chain_is_invalid(world: World) -> None:
    document = world.document()
    document["bitcoin"]["block_hash"] = "ab" * 32
    document = resign(world, document)
    world.chain.mine()
    result = verify_reserves(document, node=world.chain)
    assert not result.valid
    assert any("not on this node's chain" in r for r in result.reasons)


def test_the_signatures_verify_by_hand(world: World) -> None:
    """What docs/proof-of-reserves.md tells a reader to do, with other libraries."""
    document = json.loads(json.dumps(world.document()))
    content = {k: v for k, v in document.items() if k not in ("digest", "signatures")}
    text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8")).digest()
    assert digest.hex() == document["digest"]
    for signature in document["signatures"]:
        assert signature["xpub"] in document["bitcoin"]["descriptor"]
        sec = bip32.HDKey.from_base58(signature["xpub"]).key.sec()
        public = crypto_ec.EllipticCurvePublicKey.from_encoded_point(crypto_ec.SECP256K1(), sec)
        public.verify(
            bytes.fromhex(signature["signature"]),
            digest,
            crypto_ec.ECDSA(Prehashed(hashes.SHA256())),
        )


def test_the_treasury_contracts_are_checked_by_a_stakeholders_node_only(world: World) -> None:
    document = world.document()
    (held,) = document["canton"]["instruments"]
    for contract in held["contracts"]:
        # The instrument's admin is a stakeholder of every holding: its node finds each one.
        event = world.ledger.events_by_contract_id(contract["contract_id"], world.dso)
        created = event["created"]["createdEvent"]
        assert created["contractId"] == contract["contract_id"]
        # A customer's party is not a stakeholder: its node does not see the treasury's holdings.
        with pytest.raises(NotFoundError, match="not visible"):
            world.ledger.events_by_contract_id(contract["contract_id"], world.carol)
    assert document["canton"]["offset"] == world.ledger.node_client("exchange").ledger_end()


def test_the_document_is_kept_with_its_snapshot(world: World) -> None:
    document = world.document()
    with pytest.raises(InvalidInputError):
        store_reserves(world.ctx, "snap-1", document)
    with world.ctx.uow() as uow:
        uow.reserves.add_snapshot(
            PorSnapshot(
                "snap-1", TAKEN_AT, [ISTSI.key()], report={"liabilities": {ISTSI.key(): {}}}
            )
        )
        uow.commit()
    store_reserves(world.ctx, "snap-1", document)
    with world.ctx.uow() as uow:
        kept = uow.reserves.snapshot("snap-1")
    assert kept is not None and kept.reserves == document
    assert kept.report["reserves"][ISTSI.key()]["ratio_bps"] == "14750"
    assert kept.report["liabilities"] == {ISTSI.key(): {}}
    assert verify_reserves(kept.reserves).valid


def test_liabilities_must_be_units(world: World) -> None:
    with pytest.raises(InvalidInputError):
        reserves_document(world.ctx, "snap-1", TAKEN_AT, {ISTSI.key(): -1})
    with pytest.raises(InvalidInputError):
        reserves_document(world.ctx, "snap-1", TAKEN_AT.replace(tzinfo=None), {})


def _root(instrument: str, total_units: int, snapshot_id: str = "snap-1") -> Root:
    return Root(snapshot_id, instrument, b"\x01" * 32, total_units, "-", 2, 1, "2026-12-05T12:00Z")


def test_the_liabilities_are_the_published_roots_totals(built: tuple[World, Document]) -> None:
    world, document = built
    roots = [_root(ISTSI.key(), 200_000), _root(world.cc.key(), 400_000_000_000)]
    assert verify_reserves(document, roots=roots).valid
    smaller = verify_reserves(document, roots=[roots[0], _root(world.cc.key(), 5)])
    assert smaller.reasons == (
        f"{world.cc.key()}: liabilities_units '400000000000' is not the published root's "
        "total_units 5",
    )
    only_one = verify_reserves(document, roots=roots[:1])
    assert only_one.reasons == (f"{world.cc.key()}: liabilities reported without a published root",)
    other = verify_reserves(document, roots=[_root(ISTSI.key(), 200_000, "snap-0")])
    assert other.reasons == ("no root given is of snapshot 'snap-1'",)
    extra = verify_reserves(document, roots=[*roots, _root("USDC@issuer::1220ee", 1)])
    assert extra.reasons == ("USDC@issuer::1220ee has a published root but no report",)


def test_a_report_left_out_is_caught(built: tuple[World, Document]) -> None:
    world, document = built
    shorter = copy.deepcopy(document)
    shorter["reports"] = [r for r in shorter["reports"] if r["instrument"] != world.cc.key()]
    result = verify_reserves(resign(world, shorter))
    assert result.reasons == (f"{world.cc.key()} has reserves in the document but no report",)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _leaves(item, (*path, key))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            yield from _leaves(item, (*path, position))
    else:
        yield path


def _changed(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value[:-1] + ("1" if value[-1:] != "1" else "2")
    return "0"


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_change_to_any_value_fails_even_with_the_digest_recomputed(
    built: tuple[World, Document], data: st.DataObject
) -> None:
    document = copy.deepcopy(built[1])
    path = data.draw(st.sampled_from(sorted(_leaves(document), key=repr)))
    *parents, last = path
    target: Any = document
    for part in parents:
        target = target[part]
    target[last] = _changed(target[last])
    assert not verify_reserves(document).valid, path
    if path[0] != "digest":
        document["digest"] = document_digest(document).hex()
        assert not verify_reserves(document).valid, path


# --- the Canton part at the journal's offset -----------------------------------------------------


class KeptOffsets:
    """A participant's reader over the embedded ledger: it answers the treasury's active
    contracts at the offsets it kept (as a participant does within its pruning window)."""

    def __init__(self, node: Any) -> None:
        self.node = node
        self.kept: dict[int, list[Any]] = {}
        self.asked: list[int | None] = []

    def keep(self, party: str) -> int:
        end, items = self.node.active_contracts_at_end(party)
        self.kept[int(end)] = items
        return int(end)

    def ledger_end(self) -> int:
        return int(self.node.ledger_end())

    def active_contracts(self, party: str, at_offset: int | None = None) -> list[Any]:
        self.asked.append(at_offset)
        if at_offset not in self.kept:
            raise LedgerReadError(f"offset {at_offset} not kept", retryable=False)
        return self.kept[at_offset]


def test_holdings_at_the_ledgers_end_past_the_journal_leave_the_cover_undetermined(
    world: World,
) -> None:
    """The embedded ledger answers at its end only: with ingestion behind it (a withdrawal paid
    on the ledger and not ingested is gone from the holdings but still owed in the journal), the
    token's cover is stated as undetermined, never as false, and the verifier shows it so."""
    journal = world.ledger.node_client("exchange").ledger_end()
    world.ingested_to(journal)
    world.ledger.mint(world.treasury, world.cc, "1", reason="not ingested yet")
    document = world.document(caught_up=False)
    canton = document["canton"]
    assert (canton["read_mode"], canton["journal_offset"]) == ("at_ledger_end", journal)
    assert canton["offset"] > journal
    reports = {r["instrument"]: r for r in document["reports"]}
    token = reports[world.cc.key()]
    assert token["reserves_read"] is True and token["reserves_units"] == "510000000000"
    assert token["reserves_cover_liabilities"] is None and token["ratio_bps"] is None
    assert f"offset {canton['offset']}" in token["reason"]
    assert f"journal's offset {journal}" in token["reason"]
    assert reports[ISTSI.key()]["reserves_cover_liabilities"] is True  # Bitcoin: unaffected
    result = verify_reserves(document, descriptor=world.custody.descriptor)
    assert result.valid, result.reasons
    covers = {c["instrument"]: c["cover"] for c in result.coverage}
    assert covers == {world.cc.key(): "undetermined", ISTSI.key(): "covered"}
    assert any("cover is undetermined" in note for note in result.notes)
    # Claiming the cover anyway, or the read at the journal's offset, is caught.
    content = {k: v for k, v in document.items() if k not in ("digest", "signatures")}
    claimed = copy.deepcopy(content)
    for report in claimed["reports"]:
        if report["instrument"] == world.cc.key():
            report |= {"reserves_cover_liabilities": True, "ratio_bps": "12750"}
    result = verify_reserves(resign(world, claimed), descriptor=world.custody.descriptor)
    assert not result.valid
    assert any("reserves_cover_liabilities is wrong" in r for r in result.reasons)
    moved = copy.deepcopy(content)
    moved["canton"]["read_mode"] = "at_journal_offset"
    result = verify_reserves(resign(world, moved), descriptor=world.custody.descriptor)
    assert not result.valid
    assert any("read at the journal's offset" in r for r in result.reasons), result.reasons


def test_an_unknown_journal_offset_leaves_the_cover_undetermined(world: World) -> None:
    document = world.document(connection=None)
    assert document["canton"]["journal_offset"] is None
    token = next(r for r in document["reports"] if r["instrument"] == world.cc.key())
    assert token["reserves_cover_liabilities"] is None and "not known" in token["reason"]
    assert verify_reserves(document, descriptor=world.custody.descriptor).valid


def test_a_participant_is_read_at_the_journals_offset(world: World) -> None:
    """A reader that answers earlier offsets is asked for the holdings at exactly the journal's
    offset, however far the ledger moved since: reserves and what is owed are of one moment."""
    reader = KeptOffsets(world.ledger.node_client("exchange"))
    journal = reader.keep(world.treasury)
    world.ingested_to(journal)
    world.ledger.mint(world.treasury, world.cc, "100", reason="not ingested yet")
    document = world.document(caught_up=False, ledger=reader)
    canton = document["canton"]
    assert reader.asked == [journal]
    assert (canton["read_mode"], canton["offset"], canton["journal_offset"]) == (
        "at_journal_offset",
        journal,
        journal,
    )
    token = next(r for r in document["reports"] if r["instrument"] == world.cc.key())
    assert (token["reserves_units"], token["reserves_cover_liabilities"], token["reason"]) == (
        "500000000000",
        True,
        None,
    )
    result = verify_reserves(document, descriptor=world.custody.descriptor)
    assert result.valid, result.reasons
    assert {c["cover"] for c in result.coverage} == {"covered"}
    # An offset the participant no longer answers (pruned): the ledger is stated as not read.
    world.ingested_to(journal - 1)
    pruned = world.document(caught_up=False, ledger=reader)
    assert pruned["canton"]["read"] is False and "not kept" in pruned["canton"]["reason"]
    token = next(r for r in pruned["reports"] if r["instrument"] == world.cc.key())
    assert token["reserves_read"] is False
    result = verify_reserves(pruned, descriptor=world.custody.descriptor)
    assert result.valid, result.reasons
    covers = {c["instrument"]: c["cover"] for c in result.coverage}
    assert covers == {world.cc.key(): "not_read", ISTSI.key(): "covered"}
