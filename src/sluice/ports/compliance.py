"""The compliance ports: the KYC gate on multi-step deposits and the sanctions list in force."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

from sluice.domain.ledger import InstrumentId


class ComplianceGate(Protocol):
    """Whether the exchange may take funds from a sender (multi-step deposits): the KYC
    registry's decision, without recording any usage (the credit records it when it lands)."""

    def allows_deposit(
        self, customer_id: str, sender: str, instrument: InstrumentId, amount: Decimal
    ) -> tuple[bool, str]: ...


@dataclass(frozen=True, slots=True)
class NameMatch:
    """A sanctions screening result for one name."""

    name: str
    match: bool
    score: float
    entity_id: str | None
    matched_name: str | None


@dataclass(frozen=True, slots=True)
class AddressMatch:
    """A listed digital currency address (or party) and the entity it belongs to."""

    address: str
    entity_id: str
    entity_name: str


class SanctionsScreen(Protocol):
    """The sanctions list in force (in memory; reloads swap it without downtime)."""

    def screen_name(self, name: str) -> NameMatch: ...
    def screen_address(self, address: str) -> AddressMatch | None: ...
