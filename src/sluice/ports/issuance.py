"""What iSTSi issuance needs from the outside: the issuer's commands on the token ledger
(:class:`IssuerLedger`) and the router's durable operations in the database
(:class:`IssuanceRepository`, the ``issuance_*`` tables).

iSTSi is a token-standard instrument whose admin is the exchange's issuer party; 1 unit is 1
satoshi (the registry's metadata says 8 decimals, so a holding of ``0.00000001`` is one
satoshi). Its registry policy is a KYC hold: a transfer between parties waits in
``pending_internal_workflow`` until the admin (sluice) approves or rejects it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, Literal, Protocol

from sluice.domain.deposits import Alert
from sluice.domain.ledger import InstrumentId

# --- the issuer on the token ledger --------------------------------------------------------------

SATS_PER_UNIT = Decimal("0.00000001")  # one satoshi as a ledger amount (8 decimals)


def sats_to_amount(sats: int) -> Decimal:
    """A whole number of satoshis as the ledger amount of iSTSi."""
    return (Decimal(sats) * SATS_PER_UNIT).quantize(SATS_PER_UNIT)


def amount_to_sats(amount: Decimal) -> int:
    """A ledger amount of iSTSi as whole satoshis; :class:`ValueError` for a fraction of one."""
    sats = amount / SATS_PER_UNIT
    if sats != sats.to_integral_value():
        raise ValueError(f"{amount} is not a whole number of satoshis")
    return int(sats)


class IssuerLedgerError(Exception):
    """A command of the issuer failed."""


class IssuerRejectedError(IssuerLedgerError):
    """The ledger refused the command (insufficient holdings, an inactive or expired contract,
    not authorised): sending it again would be refused again."""


class IssuerOutcomeUnknownError(IssuerLedgerError):
    """No answer (timeout, lost response, node unavailable): the command may or may not have
    committed. Send it again with the same ``command_id``: the ledger's command deduplication
    answers the first result if it did commit."""


@dataclass(frozen=True, slots=True)
class IssuerResult:
    """A committed command of the issuer."""

    command_id: str
    update_id: str
    record_time: datetime


@dataclass(frozen=True, slots=True)
class HeldTransfer:
    """A transfer instruction of the instrument waiting in ``pending_internal_workflow`` for the
    admin's decision."""

    instruction_cid: str
    sender: str
    receiver: str
    amount: Decimal
    reason: str | None
    requested_at: datetime
    execute_before: datetime


class IssuerLedger(Protocol):
    """The issuer party's commands on the token ledger.

    This is where a real token implementation's commands plug in on Canton: its mint and burn
    choices exercised as the admin, and its ``TransferInstruction_Update`` choice for held
    transfers. The embedded ledger implements it in process and over its HTTP server
    (:mod:`sluice.ledger.local.issuer`). Every command carries a ``command_id``: sent again
    with the same id, it commits at most once (the ledger's command deduplication) and answers
    the first result.
    """

    @property
    def instrument(self) -> InstrumentId:
        """iSTSi: ``{admin: issuer party, id: "iSTSi"}``."""
        ...

    def mint(self, owner: str, sats: int, *, reason: str, command_id: str) -> IssuerResult:
        """Create a holding of ``sats`` for ``owner``."""
        ...

    def burn(
        self,
        owner: str,
        sats: int,
        *,
        reason: str,
        command_id: str,
        inputs: Sequence[str] = (),
    ) -> IssuerResult:
        """Burn ``sats`` of ``owner``'s holdings (change goes back to the owner): ``inputs``, the
        holdings the caller reserved for this burn (so that no withdrawal, merge or split of the
        treasury spends them meanwhile), or, when empty, holdings the ledger picks."""
        ...

    def decide_transfer(
        self, instruction_cid: str, *, approve: bool, reason: str, command_id: str
    ) -> IssuerResult:
        """End a held transfer's internal workflow: approved, it goes on to the receiver;
        rejected, the sender's holdings come back."""
        ...

    def held_transfers(self, limit: int = 100) -> list[HeldTransfer]:
        """Transfers of the instrument waiting for the admin, oldest first."""
        ...

    def supply(self) -> int:
        """The instrument's supply on the ledger, in satoshis."""
        ...


# --- the router's operations ----------------------------------------------------------------------

OperationType = Literal["bitcoin_deposit", "token_withdrawal"]
OPERATION_TYPES: tuple[OperationType, ...] = ("bitcoin_deposit", "token_withdrawal")

OperationStatus = Literal[
    "pending",  # its current step runs when ``next_attempt_at`` has passed
    "waiting",  # for something outside (ingestion, confirmations, minting halted): polled
    "held",  # KYC refused: waits for a compliance officer (release or return)
    "stuck",  # retries exhausted: waits for an operator (retry, compensate, resolve)
    "completed",
    "compensated",
    "resolved",  # closed by an operator with a reason
    "returned",  # a held deposit's Bitcoin was paid back
]
OPEN_STATUSES: tuple[OperationStatus, ...] = ("pending", "waiting")
TERMINAL_STATUSES: tuple[OperationStatus, ...] = (
    "completed",
    "compensated",
    "resolved",
    "returned",
)

StepKind = Literal["step", "compensation", "override"]
StepOutcomeKind = Literal["done", "wait", "retry", "hold", "fail"]


@dataclass(frozen=True, slots=True)
class IssuanceOperation:
    """A durable operation of the router (an ``issuance_operations`` row).

    ``step`` is the name of the step to run next (``"done"`` once every step ran);
    ``attempts`` counts the failed attempts of that step. ``params`` is what the operation was
    created with, ``result`` what its steps produced so far (merged, JSON)."""

    id: str
    type: OperationType
    correlation_id: str
    status: OperationStatus
    customer_id: str
    amount_sats: int
    step: str
    attempts: int
    params: Mapping[str, Any]
    result: Mapping[str, Any]
    created_at: datetime
    updated_at: datetime
    version: int = 1
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    completed_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One attempt of a step, a compensation or an operator's override (``issuance_steps``)."""

    operation_id: str
    seq: int
    step: str
    kind: StepKind
    outcome: StepOutcomeKind
    attempt: int
    at: datetime
    detail: Mapping[str, Any] = field(default_factory=dict)
    error: str | None = None


MintStatus = Literal["submitted", "committed", "failed"]
BurnStatus = Literal["submitted", "committed", "failed"]


@dataclass(frozen=True, slots=True)
class MintRecord:
    """A mint the router decided (``issuance_mints``): written, with the mint guard's check, in
    one transaction before the command is sent. ``id`` is the ledger command id; ``reason`` is
    the text the ledger's mint carries (``issuance:<operation id>`` or
    ``issuance:<operation id>:remint``), by which ingestion books it."""

    id: str
    operation_id: str
    customer_id: str
    owner: str  # the treasury party, or the customer's own party
    amount_sats: int
    reason: str
    status: MintStatus
    created_at: datetime
    update_id: str | None = None
    credited: bool = False  # to the customer's exchange account (owner is the treasury)


@dataclass(frozen=True, slots=True)
class BurnRecord:
    """A burn the router decided (``issuance_burns``), written before the command is sent."""

    id: str
    operation_id: str
    customer_id: str
    owner: str
    amount_sats: int
    reason: str
    status: BurnStatus
    created_at: datetime
    update_id: str | None = None


@dataclass(frozen=True, slots=True)
class GuardFigures:
    """What the mint guard compares, in satoshis, read in the mint's transaction.

    ``supply``: iSTSi issued by our records (mints not failed, minus burns committed), or the
    ledger's supply if that is higher. ``reserves``: custody outputs confirmed (or credited) and
    unspent, and the change of our own payouts from the block that mined them on.
    ``pending_redemptions``: redemptions burned and not yet paid; ``pending_payouts``: other
    custody payouts not yet paid (both are outflows the guard keeps clear of the backing; the
    issue's invariant ``supply ≤ reserves − pending redemptions`` names the first). A
    redemption not closed and not at
    its re-mint counts from when its burn committed (before, its amount is still in ``supply``)
    until the watcher saw its payout's inputs spent (a custody output reserved by the payout's
    batch has a spending transaction): the same record that takes those inputs out of
    ``reserves``, so a payout leaves both figures at once. A payout of another kind (an
    operator's, a held deposit's return), not cancelled or failed, counts from its request
    (with no batch yet it is pending) until the watcher saw its inputs spent, by the same
    rule.

    ``unminted_deposits``: customers' confirmed deposits owed as iSTSi not minted yet (or to be
    paid back): the amounts of the ``bitcoin_deposit`` operations not closed (waiting at KYC,
    held for an officer, stuck, or before their mint) whose custody output is confirmed in the
    active chain and that have no mint record but a ``failed`` one (a mint not failed is in
    ``supply`` already). A deposit being returned is closed (``returned``) before its return
    payout is requested, which then counts in ``pending_payouts``; a deposit whose return
    payout (``return:<operation id>``) exists, not cancelled or failed, is left out too: it
    is counted once. Only a
    payout other than a redemption is held to it (:mod:`sluice.services.btc_payouts`); the mint
    rule (:meth:`allows`) leaves it out, since a mint turns an unminted deposit into supply and
    adds nothing owed (counting it there would count the deposit being minted twice).

    ``awaiting_remint``: redemptions burned and compensated by a re-mint not done yet (step
    ``remint``, not closed; the re-mint waits while minting is halted). They are neither supply
    (burned) nor pending (their payout will never be paid), yet their Bitcoin is owed to the
    re-mint: a payout other than a redemption is held to it too; the mint rule leaves it out
    (the re-mint itself is a mint that turns it into supply)."""

    supply: int
    reserves: int
    pending_redemptions: int
    pending_payouts: int = 0
    unminted_deposits: int = 0
    awaiting_remint: int = 0

    @property
    def pending(self) -> int:
        """Every pending outflow: redemptions and other payouts."""
        return self.pending_redemptions + self.pending_payouts

    def allows(self, amount_sats: int) -> bool:
        return self.supply + amount_sats <= self.reserves - self.pending


@dataclass(frozen=True, slots=True)
class MintingState:
    """The router's switches (the ``issuance_state`` row)."""

    minting_halted: bool
    halted_reason: str | None = None
    halted_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class TransferDecision:
    """The admin's decision on a held transfer (``issuance_transfer_decisions``)."""

    instruction_cid: str
    sender: str
    receiver: str
    amount_sats: int
    approve: bool
    reason: str
    decided_at: datetime
    update_id: str | None = None


@dataclass(frozen=True, slots=True)
class ContractAddresses:
    """Which components the router talks to (``update_contract_addresses``)."""

    bitcoin_node_url: str | None
    custody_descriptor: str | None
    issuer_party: str | None
    registry_url: str | None

    def as_json(self) -> dict[str, str | None]:
        return {
            "bitcoin_node_url": self.bitcoin_node_url,
            "custody_descriptor": self.custody_descriptor,
            "issuer_party": self.issuer_party,
            "registry_url": self.registry_url,
        }


class IssuanceRepository(Protocol):
    """The router's operations, their steps, the mints and burns it decided, its switches."""

    # operations
    def insert_operation(self, operation: IssuanceOperation) -> bool:
        """Insert it; False (nothing written) when an operation with its id exists."""
        ...

    def get_operation(self, operation_id: str, *, lock: bool = False) -> IssuanceOperation | None:
        """``lock`` holds the row until the transaction ends (PostgreSQL)."""
        ...

    def update_operation(self, operation: IssuanceOperation, *, expected_version: int) -> bool:
        """Write every field of ``operation`` (its ``version`` must be ``expected_version + 1``)
        only while the stored row is at ``expected_version``; False when it is not (another
        worker moved it)."""
        ...

    def due_operations(self, now: datetime, limit: int = 100) -> list[IssuanceOperation]:
        """Open operations (``pending`` or ``waiting``) whose ``next_attempt_at`` is unset or
        has passed, oldest first."""
        ...

    def operations(
        self,
        *,
        type: str | None = None,
        status: str | None = None,
        customer_id: str | None = None,
        limit: int = 1000,
    ) -> list[IssuanceOperation]:
        """Newest first."""
        ...

    def add_step(self, record: StepRecord) -> None:
        """Append a step record (``seq`` is taken by the caller: one past :meth:`steps`' last)."""
        ...

    def steps(self, operation_id: str) -> list[StepRecord]:
        """In ``seq`` order."""
        ...

    # mints and burns
    def insert_mint(self, mint: MintRecord) -> bool:
        """False (nothing written) when a mint with its id exists."""
        ...

    def get_mint(self, mint_id: str) -> MintRecord | None: ...

    def set_mint_status(
        self, mint_id: str, status: MintStatus, *, update_id: str | None = None
    ) -> None: ...

    def commit_mint(self, mint_id: str, update_id: str) -> bool:
        """Mark the mint ``committed`` with ``update_id`` unless it is committed already, in one
        conditional update: True when this call changed it. Of two writers booking the same mint
        concurrently (the router with the ledger's answer, ingestion with the ledger's update)
        exactly one gets True, so exactly one writes its ``istsi_minted`` event."""
        ...

    def mints_by_reason(self, reasons: Sequence[str]) -> dict[str, MintRecord]:
        """Mints to the treasury by their ``reason`` (for ingestion to book them)."""
        ...

    def mark_mint_credited(self, mint_id: str) -> None: ...

    def insert_burn(self, burn: BurnRecord) -> bool: ...

    def get_burn(self, burn_id: str) -> BurnRecord | None: ...

    def set_burn_status(
        self, burn_id: str, status: BurnStatus, *, update_id: str | None = None
    ) -> None: ...

    def commit_burn(self, burn_id: str, update_id: str) -> bool:
        """:meth:`commit_mint` for a burn (exactly one ``istsi_burned``)."""
        ...

    def correlation_ids(self, operation_ids: Sequence[str]) -> dict[str, str | None]:
        """The correlation ids of these operations (ingestion's issuance events carry them)."""
        ...

    def burns_by_reason(self, reasons: Sequence[str]) -> dict[str, BurnRecord]: ...

    # the mint guard
    def lock_guard(self) -> MintingState:
        """Take the guard's lock for the rest of the transaction (one row updated: on PostgreSQL
        a row lock, on SQLite the database's write lock), so that two mints check the guard one
        after the other; returns the switches as they are."""
        ...

    def guard_figures(self, *, paying: str | None = None) -> GuardFigures:
        """The guard's figures from the database (``supply`` from our records only; the caller
        takes the ledger's supply into account). ``paying``: the id of a custody payout being
        requested; a deposit it returns (``return:<operation id>``) is left out of
        ``unminted_deposits``, as that payout is what will count it."""
        ...

    def minting_state(self) -> MintingState: ...

    def set_minting_halted(self, halted: bool, *, reason: str | None, at: datetime) -> None: ...

    # held transfers (the KYC hold worker)
    def insert_decision(self, decision: TransferDecision) -> bool:
        """False when the instruction was decided before (its first decision stands)."""
        ...

    def get_decision(self, instruction_cid: str) -> TransferDecision | None: ...

    def set_decision_update(self, instruction_cid: str, update_id: str) -> None: ...

    def decisions(self, limit: int = 1000) -> list[TransferDecision]:
        """Newest first."""
        ...

    # customer parties (a customer's own party on the token ledger)
    def set_customer_party(
        self, customer_id: str, party: str, at: datetime, *, mint_to_party: bool = False
    ) -> bool:
        """Register ``party`` as the customer's (replacing their earlier one) and whether minted
        iSTSi goes there; False (nothing written) when the party belongs to another customer."""
        ...

    def mint_to_party(self, customer_id: str) -> str | None:
        """The customer's party when they chose to receive minted iSTSi there, else None."""
        ...

    def customer_of_party(self, parties: Sequence[str]) -> dict[str, str]:
        """party → customer id, for the registered ones."""
        ...

    def party_of_customer(self, customer_id: str) -> str | None: ...

    # contract addresses (approval-gated, time-locked)
    def add_contract_addresses(
        self, addresses: ContractAddresses, *, approval_id: str, effective_at: datetime
    ) -> bool:
        """False when the approval already wrote its row (an executor run again)."""
        ...

    def contract_addresses(self, now: datetime) -> ContractAddresses | None:
        """The latest row in force at ``now`` (``effective_at`` passed), None when none."""
        ...

    def contract_address_history(self) -> list[tuple[ContractAddresses, str, datetime]]:
        """Every row, oldest first: the addresses, the approval id, effective_at."""
        ...

    def add_alerts(self, alerts: Sequence[Alert], at: datetime) -> int:
        """Insert alerts whose id is new; returns how many went in."""
        ...
