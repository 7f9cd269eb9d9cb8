"""For tests whose world has no ingestion: the holdings table made to mirror what a party holds
on the embedded ledger now, as ingestion would have booked it (new holdings inserted, spent ones
archived). Services that choose inputs from the table (withdrawals, iSTSi burns) then see the
ledger's holdings."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update

from sluice import bootstrap
from sluice.domain.ledger import InstrumentId
from sluice.store.tables import holdings


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
