"""Customer deposit addresses (``sluice.services.btc_addresses``) with the real custody wallet.

A sandbox custody (three new keys in a temporary directory, the 2-of-3 descriptor over them) and
an SQLite Integration DB; funding is done the way it happens in production: an output to the
address in a block of the in-memory chain, seen by the deposit watcher. Covers: an unknown
customer is refused; a customer keeps their address until it is funded, then gets the next
index; ``new=True`` issues one at once; indexes are shared by all customers so an address never
goes to two of them; change addresses have their own branch; every issuance is audited; a stored
address the configured descriptor does not derive is refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS
from sluice.domain.errors import InvalidOperationStateError, NotFoundError
from sluice.services.audit import list_audit_records, verify_audit_log
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import change_address, customer_addresses, deposit_address
from sluice.services.btc_watcher import DepositWatcher

CHAIN = CHAINS["regtest"]
START = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    custody = create_sandbox_custody(tmp_path_factory.mktemp("custody") / "keys", CHAIN)
    return EmbitCustodyWallet(custody.descriptor, CHAIN, [])


@pytest.fixture
def database(tmp_path: Path) -> Iterator[bootstrap.Database]:
    db = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    with db.uow() as uow:
        for customer in ("alice", "bob"):
            uow.reference.add_customer(customer, customer.title())
        uow.commit()
    yield db
    db.dispose()


def test_an_unknown_customer_gets_no_address(
    database: bootstrap.Database, wallet: EmbitCustodyWallet
) -> None:
    with pytest.raises(NotFoundError, match="unknown customer 'nobody'"):
        deposit_address(database.uow, wallet, "nobody", clock=Clock())
    with pytest.raises(NotFoundError):
        customer_addresses(database.uow, "nobody")
    with database.uow() as uow:
        assert uow.btc_watch.address_count() == 0


def test_an_address_is_kept_until_funded_then_the_next_index(
    database: bootstrap.Database, wallet: EmbitCustodyWallet
) -> None:
    clock = Clock()
    first = deposit_address(database.uow, wallet, "alice", clock=clock)
    assert (first.branch, first.index) == (0, 0)
    assert first == wallet.derive(0, 0)
    assert deposit_address(database.uow, wallet, "alice", clock=clock) == first
    bobs = deposit_address(database.uow, wallet, "bob", clock=clock)
    assert bobs.index == 1 and bobs.address != first.address

    chain = FakeChain(CHAIN)
    watcher = DepositWatcher(database.uow, chain, wallet, BitcoinSettings(chain=CHAIN), clock)
    chain.fund(first.script_hex, 50_000, mine=True)
    assert watcher.run_once().outputs == 1
    second = deposit_address(database.uow, wallet, "alice", clock=clock)
    assert second.index == 2 and second.address not in {first.address, bobs.address}
    # The new one is now kept in turn; bob's, never funded, is still his.
    assert deposit_address(database.uow, wallet, "alice", clock=clock) == second
    assert deposit_address(database.uow, wallet, "bob", clock=clock) == bobs

    fresh = deposit_address(database.uow, wallet, "bob", new=True, clock=clock)
    assert fresh.index == 3
    assert deposit_address(database.uow, wallet, "bob", clock=clock) == fresh
    assert [a.index for a in customer_addresses(database.uow, "alice")] == [0, 2]
    assert [a.index for a in customer_addresses(database.uow, "bob")] == [1, 3]
    (funded, current) = customer_addresses(database.uow, "alice")
    assert funded.funded_at is not None and current.funded_at is None

    issued = list_audit_records(database.uow, customer_id="alice")
    assert [(r.entry.operation, r.entry.parameters["reason"]) for r in issued] == [
        ("btc_deposit_address_issued", "first"),
        ("btc_deposit_address_issued", "funded"),
    ]
    assert issued[1].entry.state_changes[-1] == {"replaces": first.address}
    requested = list_audit_records(database.uow, customer_id="bob")
    assert [r.entry.parameters["reason"] for r in requested] == ["first", "requested"]
    assert verify_audit_log(database.uow).ok


def test_change_addresses_have_their_own_branch(
    database: bootstrap.Database, wallet: EmbitCustodyWallet
) -> None:
    clock = Clock()
    deposit = deposit_address(database.uow, wallet, "alice", clock=clock)
    with database.uow() as uow:
        change = change_address(uow, wallet, clock)
        again = change_address(uow, wallet, clock)
        uow.commit()
    assert (change.branch, change.index, again.index) == (1, 0, 1)
    assert change == wallet.derive(1, 0)
    assert deposit.index == 0 and change.address != deposit.address
    with database.uow() as uow:
        rows = uow.btc_watch.addresses(branch=1)
    assert [(a.customer_id, a.index) for a in rows] == [(None, 0), (None, 1)]
    assert [r.entry.operation for r in list_audit_records(database.uow)][-2:] == [
        "btc_change_address_issued",
        "btc_change_address_issued",
    ]


def test_an_address_of_another_descriptor_is_refused(
    database: bootstrap.Database, wallet: EmbitCustodyWallet, tmp_path: Path
) -> None:
    deposit_address(database.uow, wallet, "alice", clock=Clock())
    other = create_sandbox_custody(tmp_path / "other-keys", CHAIN)
    elsewhere = EmbitCustodyWallet(other.descriptor, CHAIN, [])
    with pytest.raises(InvalidOperationStateError, match="the descriptor changed"):
        deposit_address(database.uow, elsewhere, "alice", clock=Clock())
