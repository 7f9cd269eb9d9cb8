"""Proof-of-liabilities snapshots on SQLite and PostgreSQL: customers' balances read from the
journal (a token at 10 decimals, iSTSi at 8), one published root per instrument whose total is
the journal's customer total, every customer's proof verified against its published root by
the verifier anyone runs, and the refusals (a negative balance, an unknown customer, a reused
snapshot id, a secret that is not the one the snapshot was taken with)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from sluice import bootstrap
from sluice.domain.errors import DuplicateOperationError, InvalidInputError, NotFoundError
from sluice.domain.journal import (
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import InstrumentId
from sluice.por.documents import Proof, Root
from sluice.por.verify import verify_proof
from sluice.services.por_secret import PorSecretError, load_or_create_secret, load_secret
from sluice.services.por_snapshots import (
    customer_proof,
    find_istsi,
    published_roots,
    reserves_of,
    snapshot_history,
    take_snapshot,
)
from sluice.services.reserves_settings import ReservesContext
from sluice.store.database import migrate

AT = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
AMULET = InstrumentId("dso::1220aa", "Amulet")
ISTSI = InstrumentId("issuer::1220bb", "iSTSi")
TREASURY = "treasury::1220cc"

# customer → (Amulet, iSTSi) balances as the journal holds them
BALANCES = {
    "alice": ("100.0000000001", "0.05"),
    "bob": ("7", "1.23456789"),
    "carol": ("0.5", "0"),
    "dave": ("123456789.123456789", None),
    "erin": (None, "21"),
}


class Clock:
    def __init__(self) -> None:
        self.now = AT

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def db(database_url: str) -> Iterator[bootstrap.Database]:
    database = bootstrap.database(database_url)
    migrate(database.engine)
    yield database
    database.dispose()


def _context(db: bootstrap.Database, tmp_path: Path) -> ReservesContext:
    return ReservesContext(
        uow=db.uow,
        clock=Clock(),
        treasury=TREASURY,
        secret_path=tmp_path / "secrets" / "por-secret",
        istsi=ISTSI,
    )


def _post(
    db: bootstrap.Database, txid: str, instrument: InstrumentId, customer: str, amount: str
) -> None:
    """``amount`` owed to the customer (negative: the customer owes it), against the treasury."""
    value = Decimal(amount)
    postings = (
        Posting(AccountRef(treasury_account_name(TREASURY), instrument), value),
        Posting(AccountRef(customer_account_name(customer), instrument), -value),
    )
    with db.uow() as uow:
        uow.withdrawals.post([JournalTransaction(id=txid, kind="test", postings=postings)])
        uow.commit()


def _fund(db: bootstrap.Database) -> None:
    for customer, (amulet, istsi) in BALANCES.items():
        for instrument, amount in ((AMULET, amulet), (ISTSI, istsi)):
            if amount is not None:
                _post(db, f"{customer}-{instrument.id}", instrument, customer, amount)
    # frank had Amulet and spent it all: a zero balance, left out of the tree.
    _post(db, "frank-in", AMULET, "frank", "3")
    _post(db, "frank-out", AMULET, "frank", "-3")


def _journal_totals(db: bootstrap.Database) -> dict[str, Decimal]:
    totals: dict[str, Decimal] = {}
    with db.uow() as uow:
        for account, balance in uow.books.balances().items():
            if account.customer_id is not None:
                key = account.instrument.key()
                totals[key] = totals.get(key, Decimal(0)) + balance
    return totals


def test_roots_add_up_to_the_journal_and_every_customers_proof_verifies(
    db: bootstrap.Database, tmp_path: Path
) -> None:
    _fund(db)
    ctx = _context(db, tmp_path)
    roots = take_snapshot(ctx, snapshot_id="snap-1")
    by_key = {root.instrument: root for root in roots}
    assert sorted(by_key) == sorted([AMULET.key(), ISTSI.key()])
    journal = _journal_totals(db)
    amulet, istsi = by_key[AMULET.key()], by_key[ISTSI.key()]
    assert amulet.total_units == int(journal[AMULET.key()].scaleb(10))
    assert istsi.total_units == int(journal[ISTSI.key()].scaleb(8))
    assert istsi.total_units == 5_000_000 + 123_456_789 + 2_100_000_000
    assert Decimal(amulet.total) == journal[AMULET.key()]
    assert Decimal(istsi.total) == journal[ISTSI.key()]
    # Zero balances (carol's iSTSi, frank's Amulet) are left out.
    assert (amulet.leaf_count, amulet.depth) == (4, 2)
    assert (istsi.leaf_count, istsi.depth) == (3, 2)
    published = published_roots(db.uow)
    assert published == published_roots(db.uow, "snap-1")
    files = {item["instrument"]: Root.from_json(item) for item in published}
    holders = {
        AMULET.key(): ["alice", "bob", "carol", "dave"],
        ISTSI.key(): ["alice", "bob", "erin"],
    }
    for key, customers in holders.items():
        for customer in customers:
            instrument = key if customer != "alice" else key.split("@")[0]  # a bare id too
            document = customer_proof(ctx, customer, instrument)
            proof = Proof.from_json(document)
            assert (proof.customer_id, proof.instrument, proof.snapshot_id) == (
                customer,
                key,
                "snap-1",
            )
            for native in (False, None):
                verdict = verify_proof(proof, files[key], native=native)
                assert verdict.valid, verdict.reason
    alice = customer_proof(ctx, "alice", AMULET.key())
    assert (alice["units"], alice["balance"]) == ("1000000000001", "100.0000000001")
    assert customer_proof(ctx, "bob", ISTSI.key())["balance"] == "1.23456789"
    history = snapshot_history(db.uow)
    assert [item["id"] for item in history] == ["snap-1"]
    assert history[0]["instruments"] == sorted([AMULET.key(), ISTSI.key()])


def test_proofs_of_customers_not_in_the_snapshot_are_not_found(
    db: bootstrap.Database, tmp_path: Path
) -> None:
    ctx = _context(db, tmp_path)
    with pytest.raises(NotFoundError, match="no proof-of-liabilities snapshot"):
        customer_proof(ctx, "alice", AMULET.key())
    with pytest.raises(NotFoundError):
        published_roots(db.uow)
    _fund(db)
    take_snapshot(ctx, snapshot_id="snap-1")
    for customer, instrument in (("nobody", AMULET), ("frank", AMULET), ("carol", ISTSI)):
        with pytest.raises(NotFoundError, match=f"customer {customer} has no balance"):
            customer_proof(ctx, customer, instrument.key())
    with pytest.raises(NotFoundError, match="no instrument 'Gold'"):
        customer_proof(ctx, "alice", "Gold")
    with pytest.raises(NotFoundError, match="no proof-of-liabilities snapshot snap-9"):
        customer_proof(ctx, "alice", AMULET.key(), "snap-9")
    with pytest.raises(NotFoundError, match="no proof-of-liabilities snapshot snap-9"):
        reserves_of(db.uow, "snap-9")


def test_the_reserves_document_is_stored_with_the_snapshot_against_its_liabilities(
    db: bootstrap.Database, tmp_path: Path
) -> None:
    _fund(db)
    roots = take_snapshot(_context(db, tmp_path), snapshot_id="snap-1")
    document = reserves_of(db.uow, "snap-1")
    assert document["snapshot_id"] == "snap-1"
    owed = {report["instrument"]: report["liabilities_units"] for report in document["reports"]}
    assert owed == {root.instrument: str(root.total_units) for root in roots}
    (snapshot,) = snapshot_history(db.uow)
    assert snapshot["has_reserves"] is True
    # The liabilities report stays beside the reserves report.
    liabilities = snapshot["report"]["liabilities"]
    assert liabilities[AMULET.key()] == {
        "decimals": 10,
        "customers": 4,
        "zero_balances_left_out": 1,
        "total_units": str(roots[0].total_units),
    }
    assert liabilities[ISTSI.key()]["decimals"] == 8


def test_a_negative_balance_refuses_the_whole_snapshot(
    db: bootstrap.Database, tmp_path: Path
) -> None:
    _fund(db)
    _post(db, "overdrawn", ISTSI, "mallory", "-0.00000001")
    ctx = _context(db, tmp_path)
    with pytest.raises(
        InvalidInputError, match=r"customer mallory .*-0.00000001 iSTSi@issuer::1220bb"
    ):
        take_snapshot(ctx, snapshot_id="snap-1")
    assert snapshot_history(db.uow) == []
    # Another instrument alone can still be taken: its balances are all non-negative.
    (root,) = take_snapshot(ctx, snapshot_id="snap-2", instruments=["Amulet"])
    assert root.instrument == AMULET.key()


def test_the_secret_is_made_once_private_and_reused(db: bootstrap.Database, tmp_path: Path) -> None:
    _fund(db)
    ctx = _context(db, tmp_path)
    assert not ctx.secret_path.exists()
    take_snapshot(ctx, snapshot_id="snap-1")
    mode = stat.S_IMODE(ctx.secret_path.stat().st_mode)
    assert mode == 0o600
    secret = ctx.secret_path.read_bytes()
    assert len(secret) == 32
    take_snapshot(ctx, snapshot_id="snap-2")
    assert ctx.secret_path.read_bytes() == secret
    assert load_or_create_secret(ctx.secret_path) == secret
    # Other directory entries (a temporary file) are not left behind.
    assert os.listdir(ctx.secret_path.parent) == ["por-secret"]


def test_a_secret_open_to_others_or_of_another_size_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "por-secret"
    path.write_bytes(b"x" * 32)
    path.chmod(0o644)
    with pytest.raises(PorSecretError, match="open to others"):
        load_or_create_secret(path)
    path.chmod(0o600)
    assert load_or_create_secret(path) == b"x" * 32
    path.write_bytes(b"x" * 31)
    with pytest.raises(PorSecretError, match="holds 31 bytes, not 32"):
        load_or_create_secret(path)
    path.write_bytes(b"x" * 64)
    with pytest.raises(PorSecretError, match="holds 33\\+ bytes"):
        load_or_create_secret(path)
    # Proofs never make a secret: a lost one must be restored, not replaced.
    with pytest.raises(PorSecretError, match="is missing: restore it from the backup"):
        load_secret(tmp_path / "lost")
    assert not (tmp_path / "lost").exists()
    (tmp_path / "a-directory").mkdir()
    with pytest.raises(PorSecretError, match="cannot read the proof-of-liabilities secret"):
        load_or_create_secret(tmp_path / "a-directory")


def test_another_secret_cannot_give_proofs_of_a_published_snapshot(
    db: bootstrap.Database, tmp_path: Path
) -> None:
    _fund(db)
    ctx = _context(db, tmp_path)
    take_snapshot(ctx, snapshot_id="snap-1")
    ctx.secret_path.write_bytes(b"\x01" * 32)
    with pytest.raises(PorSecretError, match="do not rebuild the published root"):
        customer_proof(ctx, "bob", AMULET.key())


def test_each_snapshot_has_its_own_nonces_and_order_and_ids_are_not_reused(
    db: bootstrap.Database, tmp_path: Path
) -> None:
    _fund(db)
    ctx = _context(db, tmp_path)
    # A fixed secret, so that the leaves' orders below are known (they differ).
    ctx.secret_path.parent.mkdir()
    ctx.secret_path.write_bytes(bytes(range(32)))
    ctx.secret_path.chmod(0o600)
    first = take_snapshot(ctx, instruments=[AMULET.key()])
    second = take_snapshot(ctx, instruments=[AMULET.key()])
    assert first[0].snapshot_id != second[0].snapshot_id
    assert first[0].snapshot_id.startswith("por-20261205T12000")
    assert first[0].root_hash != second[0].root_hash
    assert first[0].total_units == second[0].total_units
    proofs = [
        {
            c: customer_proof(ctx, c, AMULET.key(), root.snapshot_id)
            for c in ("alice", "bob", "carol", "dave")
        }
        for root in (first[0], second[0])
    ]
    for customer in ("alice", "bob", "carol", "dave"):
        assert proofs[0][customer]["nonce"] != proofs[1][customer]["nonce"]
    orders = [sorted(p, key=lambda c: p[c]["index"]) for p in proofs]
    assert orders[0] != orders[1]
    with pytest.raises(DuplicateOperationError, match=f"a snapshot {first[0].snapshot_id}"):
        take_snapshot(ctx, snapshot_id=first[0].snapshot_id)
    with pytest.raises(InvalidInputError, match="snapshot id 'a/b'"):
        take_snapshot(ctx, snapshot_id="a/b")
    assert [item["id"] for item in snapshot_history(db.uow)] == [
        second[0].snapshot_id,
        first[0].snapshot_id,
    ]


def test_istsi_is_found_for_its_units_and_an_ambiguous_one_is_refused(
    db: bootstrap.Database,
) -> None:
    assert find_istsi(db.uow, AT, "iSTSi") is None
    _fund(db)
    # Not onboarded here, but held by customers: still known, so its units are satoshis.
    assert find_istsi(db.uow, AT, "iSTSi") == ISTSI
    assert find_istsi(db.uow, AT, "iSTSi", "issuer::1220ff") == InstrumentId(
        "issuer::1220ff", "iSTSi"
    )
    _post(db, "other-istsi", InstrumentId("issuer::1220dd", "iSTSi"), "bob", "1")
    with pytest.raises(InvalidInputError, match="several instruments are iSTSi"):
        find_istsi(db.uow, AT, "iSTSi")


def test_a_snapshot_id_seen_again_in_another_database_gets_its_own_proofs(
    db: bootstrap.Database, tmp_path: Path
) -> None:
    """Proof trees are kept in memory by snapshot id: one process answering for a database and
    then for another (a restore to a fresh database, consecutive simulations) with the same id
    and secret must rebuild, not serve the first database's tree."""
    _fund(db)
    ctx = _context(db, tmp_path)
    ctx.secret_path.parent.mkdir()
    ctx.secret_path.write_bytes(bytes(range(32)))
    ctx.secret_path.chmod(0o600)
    take_snapshot(ctx, snapshot_id="snap-1", instruments=[AMULET.key()])
    first = customer_proof(ctx, "bob", AMULET.key())
    other = bootstrap.database(f"sqlite:///{tmp_path / 'other.db'}")
    try:
        migrate(other.engine)
        _post(other, "bob-more", AMULET, "bob", "9")
        _post(other, "alice-some", AMULET, "alice", "2")
        other_ctx = _context(other, tmp_path)
        take_snapshot(other_ctx, snapshot_id="snap-1", instruments=[AMULET.key()])
        root = Root.from_json(published_roots(other.uow, "snap-1")[0])
        proof = Proof.from_json(customer_proof(other_ctx, "bob", AMULET.key()))
        assert (proof.units, first["units"]) == (90_000_000_000, "70000000000")
        verdict = verify_proof(proof, root)
        assert verdict.valid, verdict.reason
    finally:
        other.dispose()
