"""For tests whose world has no ingestion: the holdings table made to mirror what a party holds
on the embedded ledger now, as ingestion would have booked it (new holdings inserted, spent ones
archived). Services that choose inputs from the table (withdrawals, iSTSi burns) then see the
ledger's holdings. And books seeded as after deposits (:func:`seed_owed`)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, insert, select, update

from sluice import bootstrap
from sluice.domain.journal import AccountRef, transfer_into, treasury_account_name
from sluice.domain.ledger import InstrumentId
from sluice.store.tables import holdings
from sluice.store.unit_of_work import SqlUnitOfWork


def mirror_holdings(
    db: bootstrap.Database, ledger: Any, party: str, instrument: InstrumentId | None = None
) -> None:
    """``ledger``: an :class:`~sluice.ledger.local.engine.EmbeddedLedger` (or its remote);
    ``instrument``: only that instrument's holdings (another one's may be ingestion's)."""
    active = {h.contract_id: h for h in ledger.active_holdings(party, instrument)}
    query = select(holdings.c.contract_id, holdings.c.archived_update_id).where(
        holdings.c.owner == party
    )
    if instrument is not None:
        query = query.where(
            holdings.c.instrument_admin == instrument.admin,
            holdings.c.instrument_id == instrument.id,
        )
    with db.engine.begin() as connection:
        known = dict(connection.execute(query).all())
        for contract_id, holding in active.items():
            if contract_id not in known:
                connection.execute(
                    insert(holdings).values(
                        contract_id=contract_id,
                        owner=party,
                        instrument_admin=holding.instrument.admin,
                        instrument_id=holding.instrument.id,
                        amount=holding.amount,
                        created_update_id="mirrored",
                        created_offset=0,
                    )
                )
        gone = [cid for cid, archived in known.items() if archived is None and cid not in active]
        if gone:
            connection.execute(
                update(holdings)
                .where(holdings.c.contract_id.in_(gone))
                .values(archived_update_id="mirrored", archived_offset=0)
            )


def seed_owed(
    engine: Engine,
    number: int,
    *,
    treasury: str,
    account: str,
    instrument: InstrumentId,
    amount: Decimal | str,
) -> None:
    """Books ``amount`` owed to ``account`` and held by ``treasury`` in one holding, as after a
    deposit ingestion booked (journal transaction ``seed:<number>``, holding
    ``holding-<number>``): the books' invariant holds."""
    value = Decimal(amount)
    with SqlUnitOfWork(engine) as uow:
        uow.withdrawals.post(
            [
                transfer_into(
                    f"seed:{number}",
                    "deposit",
                    treasury=AccountRef(treasury_account_name(treasury), instrument),
                    liability=AccountRef(account, instrument),
                    amount=value,
                )
            ]
        )
        uow.commit()
    with engine.begin() as connection:
        connection.execute(
            insert(holdings).values(
                contract_id=f"holding-{number}",
                owner=treasury,
                instrument_admin=instrument.admin,
                instrument_id=instrument.id,
                amount=value,
                created_update_id=f"update-{number}",
                created_offset=number,
            )
        )
