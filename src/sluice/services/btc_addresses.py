"""Custody addresses: each customer's deposit address, and change addresses for payouts.

* A customer keeps their current (latest) deposit address until an output to it is seen (the
  watcher sets ``funded_at``); then, or when they ask for a new one, they get a fresh address at
  the next index of the deposit branch (``K/0/*``).
* An address is never reused across customers, nor between deposits and change: the database's
  unique ``(branch, derivation_index)`` index decides, and an index taken by a concurrent
  issuance is skipped (see :meth:`BitcoinWatchRepository.add_address`). One customer's requests
  also take turns on their customer row, so two requests at once do not both issue an address.
* Every issuance is audited, in the transaction that records it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from sluice.domain.audit import AuditEntry
from sluice.domain.errors import InvalidOperationStateError, NotFoundError
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.bitcoin import CustodyWallet, DerivedAddress
from sluice.ports.bitcoin_watch import CHANGE_BRANCH, DEPOSIT_BRANCH, CustodyAddress

Clock = Callable[[], datetime]

# Indexes tried in one issuance before giving up: each lost try means another transaction took
# that index and committed, so running out needs that many concurrent issuances at once.
_ISSUE_TRIES_MAX = 100


def deposit_address(
    uow_factory: UnitOfWorkFactory,
    wallet: CustodyWallet,
    customer_id: str,
    *,
    new: bool = False,
    clock: Clock,
    actor: str | None = None,
) -> DerivedAddress:
    """The customer's current deposit address, or a fresh one when it was funded or ``new``."""
    with uow_factory() as uow:
        repo = uow.btc_watch
        if not repo.customer_exists(customer_id, lock=True):
            raise NotFoundError(f"unknown customer {customer_id!r}")
        current = repo.latest_address(customer_id)
        if current is not None and current.funded_at is None and not new:
            return _checked(wallet, current)
        derived = _issue(
            uow,
            wallet,
            DEPOSIT_BRANCH,
            customer_id,
            clock(),
            actor=actor or f"customer:{customer_id}",
            reason="requested" if new else ("funded" if current is not None else "first"),
            replaces=current.address if current is not None else None,
        )
        uow.commit()
        return derived


def change_address(uow: UnitOfWork, wallet: CustodyWallet, clock: Clock) -> DerivedAddress:
    """A fresh change address (``K/1/*``), recorded (and audited) in the caller's unit of work."""
    return _issue(uow, wallet, CHANGE_BRANCH, None, clock(), actor="btc-payouts", reason="change")


def customer_addresses(uow_factory: UnitOfWorkFactory, customer_id: str) -> list[CustodyAddress]:
    """Every deposit address issued to the customer, oldest first."""
    with uow_factory() as uow:
        if not uow.btc_watch.customer_exists(customer_id):
            raise NotFoundError(f"unknown customer {customer_id!r}")
        return uow.btc_watch.addresses(customer_id=customer_id, branch=DEPOSIT_BRANCH)


def _checked(wallet: CustodyWallet, stored: CustodyAddress) -> DerivedAddress:
    """The stored address, after checking that this wallet derives it at its index: an address
    of another descriptor (a configuration mistake) would send the customer's coins to keys this
    custody does not hold."""
    derived = wallet.derive(stored.branch, stored.index)
    if derived.address != stored.address or derived.script_hex != stored.script_hex:
        raise InvalidOperationStateError(
            f"custody address {stored.address} (branch {stored.branch}, index {stored.index}) "
            "is not what the configured descriptor derives there: the descriptor changed since "
            "it was issued; configure the custody's own descriptor"
        )
    return derived


def _issue(
    uow: UnitOfWork,
    wallet: CustodyWallet,
    branch: int,
    customer_id: str | None,
    now: datetime,
    *,
    actor: str,
    reason: str,
    replaces: str | None = None,
) -> DerivedAddress:
    repo = uow.btc_watch
    index = repo.next_index(branch)
    for _ in range(_ISSUE_TRIES_MAX):
        derived = wallet.derive(branch, index)
        record = CustodyAddress(
            address=derived.address,
            script_hex=derived.script_hex,
            branch=branch,
            index=index,
            customer_id=customer_id,
            created_at=now,
        )
        if repo.add_address(record):
            break
        # Taken by a transaction that committed meanwhile: past it (and whatever else is taken).
        index = max(index + 1, repo.next_index(branch))
    else:
        raise InvalidOperationStateError(
            f"no free custody address index on branch {branch} after {_ISSUE_TRIES_MAX} tries "
            "(too many concurrent issuances); try again"
        )
    kind = "deposit" if branch == DEPOSIT_BRANCH else "change"
    uow.audit.append(
        [
            AuditEntry(
                operation_id=f"btc-address:{derived.address}",
                operation=f"btc_{kind}_address_issued",
                actor=actor,
                recorded_at=now,
                customer_id=customer_id,
                parameters={"branch": branch, "index": index, "reason": reason},
                state_changes=[
                    {"address": derived.address, "customer": customer_id, "index": index}
                ]
                + ([{"replaces": replaces}] if replaces is not None else []),
            )
        ]
    )
    return derived
