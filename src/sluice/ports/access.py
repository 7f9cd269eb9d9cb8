"""The Integration DB's access-control side (DESIGN §10): API keys, approvals and run-time
settings; and the paged reads of customers, their accounts and suspense.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, Protocol

from sluice.domain.approvals import Approval
from sluice.domain.compliance import Profile
from sluice.domain.customer_names import CustomerName
from sluice.domain.ledger import InstrumentId
from sluice.domain.withdrawals import Withdrawal
from sluice.ports.repositories import HistoryRecord


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """An API key as stored: never the secret, only its sha256."""

    id: str
    secret_hash: str
    role: str
    customer_id: str | None
    label: str | None
    created_by: str
    created_at: datetime
    revoked_by: str | None = None
    revoked_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class SettingRecord:
    """One value of a run-time setting and the moment it takes (or took) effect."""

    key: str
    value: Any  # decoded JSON
    effective_at: datetime
    set_by: str
    approval_id: str | None = None


class AccessRepository(Protocol):
    """API keys, approvals of critical operations, run-time settings."""

    def add_api_key(self, record: ApiKeyRecord) -> None: ...
    def api_key(self, key_id: str) -> ApiKeyRecord | None: ...
    def api_keys(self, *, offset: int = 0, limit: int = 100) -> list[ApiKeyRecord]: ...
    def revoke_api_key(self, key_id: str, actor: str, at: datetime) -> bool:
        """Mark the key revoked; False if it does not exist or was already revoked."""
        ...

    def add_approval(self, approval: Approval) -> bool:
        """Insert a proposal; False (nothing written) if one with its id exists."""
        ...

    def approval(self, approval_id: str, *, lock: bool = False) -> Approval | None: ...
    def update_approval(self, approval: Approval) -> None: ...
    def approvals(
        self,
        *,
        status: str | None = None,
        customer_id: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> list[Approval]:
        """Newest first."""
        ...

    def add_setting(self, record: SettingRecord) -> None: ...
    def settings(self) -> list[SettingRecord]:
        """Every row (past, current and scheduled), by key then effective_at."""
        ...


@dataclass(frozen=True, slots=True)
class SuspenseItem:
    """A deposit credited to suspense (no or unknown reason), and to whom it was assigned."""

    update_id: str
    node_id: int
    record_time: datetime
    instrument: InstrumentId
    amount: Decimal
    sender: str | None
    reason: str | None
    assigned_to: str | None = None
    assigned_by: str | None = None
    assigned_at: datetime | None = None

    @property
    def id(self) -> str:
        return f"{self.update_id}:{self.node_id}"


@dataclass(frozen=True, slots=True)
class CustomerRecord:
    id: str
    name: str
    created_at: datetime
    profile: Profile
    deposit_accounts: tuple[str, ...] = ()
    # The script(s) of ``name`` (None: registered before scripts were recorded) and the
    # customer's other names, in the order given.
    name_script: str | None = None
    other_names: tuple[CustomerName, ...] = ()


class AccountsRepository(Protocol):
    """Paged reads of customers and their accounts, and suspense assignment."""

    def customer(self, customer_id: str) -> CustomerRecord | None: ...
    def customers(self, *, offset: int = 0, limit: int = 100) -> list[CustomerRecord]: ...
    def customer_balances(self, customer_id: str) -> dict[InstrumentId, Decimal]: ...
    def account_balances(self, account_name: str) -> dict[InstrumentId, Decimal]: ...
    def customer_history(
        self, customer_id: str, *, offset: int = 0, limit: int = 100
    ) -> list[HistoryRecord]:
        """Deposits credited to the customer and the transfers of their withdrawals, newest
        first."""
        ...

    def customer_withdrawals(
        self,
        customer_id: str | None,
        *,
        statuses: Collection[str] = (),
        offset: int = 0,
        limit: int = 100,
    ) -> list[Withdrawal]:
        """Newest first; ``customer_id`` None: every customer's."""
        ...

    def suspense_items(
        self, *, open_only: bool = True, offset: int = 0, limit: int = 100
    ) -> list[SuspenseItem]: ...
    def suspense_item(self, update_id: str, node_id: int) -> SuspenseItem | None: ...
    def assign_suspense(
        self,
        item: SuspenseItem,
        customer_id: str,
        *,
        actor: str,
        at: datetime,
        approval_id: str | None,
        reason: str | None,
    ) -> bool:
        """Record the assignment; False if the item was already assigned."""
        ...
