"""Request and response bodies of the iSTSi issuance endpoints (:mod:`sluice.api.routes.issuance`).

Amounts of iSTSi and Bitcoin are whole satoshis (1 iSTSi unit = 1 sat); balances are decimal
strings as everywhere else in the API; times are RFC 3339 UTC. Operations are answered as
:func:`sluice.services.issuance_router.operation_json` builds them, so the CLI's ``--json`` and
the API show the same fields.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import ConfigDict, Field, StringConstraints

from sluice.api.schemas import (
    HTTP_URL_PATTERN,
    JSON_INTEGER,
    NOT_BLANK,
    SPACES,
    Amount,
    Body,
    InstrumentRef,
    Out,
    Reason,
    instrument_ref,
)
from sluice.domain.amounts import format_amount
from sluice.domain.ledger import format_timestamp
from sluice.ports.bitcoin import DerivedAddress
from sluice.ports.bitcoin_watch import DepositView
from sluice.ports.issuance import IssuanceOperation, TransferDecision
from sluice.services.balances import BalanceLine

# 21 million bitcoin in satoshis: no amount of sats can be larger.
SATS_MAX = 2_100_000_000_000_000

Sats = Annotated[int, Field(gt=0, le=SATS_MAX, description="whole satoshis"), JSON_INTEGER]
BitcoinAddress = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, strip_whitespace=True, pattern=NOT_BLANK),
    Field(description="a Bitcoin address of the custody's network"),
]
# The contract addresses' shapes (services.issuance_contracts checks them again, and a
# descriptor's BIP-380 checksum besides, which no pattern can say).
DESCRIPTOR_PATTERN = r"^[!-\"$-~]*\([!-\"$-~]*\)#[qpzry9x8gf2tvdw0s3jn54khce6mua7l]{8}$"
ISSUER_PARTY_PATTERN = rf"^[^:{SPACES}]{{1,200}}::1220[0-9a-f]{{64}}$"
HttpUrl = Annotated[str, StringConstraints(max_length=2000, pattern=HTTP_URL_PATTERN)]
Descriptor = Annotated[str, StringConstraints(max_length=2000, pattern=DESCRIPTOR_PATTERN)]
IssuerParty = Annotated[str, StringConstraints(pattern=ISSUER_PARTY_PATTERN)]
CONTRACT_FIELDS = ("bitcoin_node_url", "custody_descriptor", "issuer_party", "registry_url")

# --- requests ------------------------------------------------------------------------------------


class RedemptionIn(Body):
    amount_sats: Sats
    address: BitcoinAddress


class OverrideIn(Body):
    reason: Reason


class ReturnIn(Body):
    address: BitcoinAddress
    reason: Reason


class ContractAddressesIn(Body):
    """The components the router talks to; a field left out (null) is not in force. At least one
    is given."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "anyOf": [
                {"required": [name], "properties": {name: {"type": "string"}}}
                for name in CONTRACT_FIELDS
            ]
        },
    )

    bitcoin_node_url: HttpUrl | None = None
    custody_descriptor: Descriptor | None = None
    issuer_party: IssuerParty | None = None
    registry_url: HttpUrl | None = None
    reason: Reason | None = None


# --- answers -------------------------------------------------------------------------------------


class StepOut(Out):
    seq: int
    step: str
    kind: str
    outcome: str
    attempt: int
    detail: dict[str, Any]
    error: str | None
    at: str


class OperationOut(Out):
    id: str
    type: str
    correlation_id: str
    status: str
    customer_id: str
    amount_sats: int
    step: str = Field(description='the step to run next ("done" once every step ran)')
    attempts: int = Field(description="failed attempts of that step")
    params: dict[str, Any]
    result: dict[str, Any]
    last_error: str | None
    next_attempt_at: str | None
    created_at: str
    updated_at: str
    completed_at: str | None
    steps: list[StepOut] | None = Field(
        default=None, description="every step record, oldest first (single operations only)"
    )


class DepositAddressOut(Out):
    customer_id: str
    address: str = Field(description="pay Bitcoin here to be credited iSTSi")
    index: int = Field(description="the address's derivation index (K/0/index)")


class IstsiDepositOut(Out):
    txid: str
    vout: int
    customer_id: str | None
    address: str
    amount_sats: int
    confirmations: int
    status: str = Field(description="the Bitcoin output's status at the watcher")
    block_height: int | None
    operation_id: str = Field(description="the issuance operation that mints for this deposit")
    operation_status: str | None = Field(description="null until the deposit confirms")


class BalanceLineOut(Out):
    instrument: InstrumentRef
    available: Amount
    held: Amount = Field(description="held deposits (compliance holds, held iSTSi deposits)")
    in_flight: Amount = Field(description="open withdrawals and redemptions")


class BalanceLinesOut(Out):
    customer_id: str
    balances: list[BalanceLineOut]


class GuardOut(Out):
    supply_sats: int
    ledger_supply_sats: int
    reserves_sats: int
    pending_redemptions_sats: int
    pending_payouts_sats: int = Field(description="custody payouts other than redemptions, unpaid")
    unminted_deposits_sats: int = Field(
        description=(
            "customers' confirmed deposits not minted yet (owed: minted or returned); a payout "
            "other than a redemption must leave them in custody"
        )
    )
    headroom_sats: int = Field(
        description="reserves − pending redemptions − pending payouts − supply"
    )
    minting_halted: bool
    halted_reason: str | None


class TransferDecisionOut(Out):
    instruction_cid: str
    sender: str
    receiver: str
    amount_sats: int
    approve: bool
    reason: str
    decided_at: str
    update_id: str | None


# --- conversions ---------------------------------------------------------------------------------


def operation_out(data: dict[str, Any]) -> OperationOut:
    """From :func:`~sluice.services.issuance_router.operation_json`'s dictionary."""
    return OperationOut.model_validate(data)


def deposit_address_out(customer_id: str, derived: DerivedAddress) -> DepositAddressOut:
    return DepositAddressOut(customer_id=customer_id, address=derived.address, index=derived.index)


def deposit_out(
    view: DepositView, operation_id: str, op: IssuanceOperation | None
) -> IstsiDepositOut:
    return IstsiDepositOut(
        txid=view.txid,
        vout=view.vout,
        customer_id=view.customer,
        address=view.address,
        amount_sats=view.amount_sats,
        confirmations=view.confirmations,
        status=view.status,
        block_height=view.block_height,
        operation_id=operation_id,
        operation_status=op.status if op is not None else None,
    )


def balance_lines_out(customer_id: str, lines: list[BalanceLine]) -> BalanceLinesOut:
    return BalanceLinesOut(
        customer_id=customer_id,
        balances=[
            BalanceLineOut(
                instrument=instrument_ref(line.instrument),
                available=format_amount(line.available),
                held=format_amount(line.held),
                in_flight=format_amount(line.in_flight),
            )
            for line in lines
        ],
    )


def decision_out(decision: TransferDecision) -> TransferDecisionOut:
    return TransferDecisionOut(
        instruction_cid=decision.instruction_cid,
        sender=decision.sender,
        receiver=decision.receiver,
        amount_sats=decision.amount_sats,
        approve=decision.approve,
        reason=decision.reason,
        decided_at=format_timestamp(decision.decided_at),
        update_id=decision.update_id,
    )
