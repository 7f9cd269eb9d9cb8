"""The router's operation types: one line per type.

DESIGN §7 lists the cross-token exchange as the router's third operation; it is not one, and no
``cross_token_exchange`` definition belongs here. A swap (:mod:`sluice.services.exchange`) moves
nothing outside sluice's database: it is one database transaction that posts the journal entry
and writes the swap, the KYC usage, the audit record and the event together, keyed by the quote
id (which plays the operation id). It is atomic by construction, so it has no steps to resume
after a crash and nothing to compensate, which is what the router exists for (see
``docs/exchange.md``)."""

from __future__ import annotations

from collections.abc import Mapping

from sluice.services import issuance_deposit, issuance_redeem
from sluice.services.issuance_router import OperationDefinition

DEFINITIONS: Mapping[str, OperationDefinition] = {
    definition.type: definition
    for definition in (
        issuance_deposit.DEFINITION,  # bitcoin_deposit
        issuance_redeem.DEFINITION,  # token_withdrawal
    )
}
