"""The router's operation types: one line per type. A later type (the cross-token exchange) adds
its definition here."""

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
