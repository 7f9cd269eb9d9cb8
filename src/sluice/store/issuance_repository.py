"""The iSTSi router's durable state over SQLAlchemy Core: operations and their steps, the mints
and burns it decided, the mint guard's row, decisions on held transfers, customers' own parties
and the contract addresses in force.

Guarantees:

* **An id is written once.** Operations, mints, burns, decisions and contract-address rows are
  inserted with ``ON CONFLICT DO NOTHING`` and the insert says whether the row went in: a
  second worker (or a step run again after a crash) learns it lost and writes nothing, so an
  operation is opened, a mint decided and a held transfer decided at most once.
* **An operation moves from the state it was read in.** :meth:`update_operation` is a
  conditional ``UPDATE … WHERE version = :expected``: two workers that read the same version
  cannot both move it; the loser sees False and must read it again.
* **Two mints check the guard one after the other.** :meth:`lock_guard` updates the one
  ``issuance_state`` row first: on PostgreSQL that row lock is held until the transaction ends,
  so a second minting transaction waits there and reads the guard's figures only after the
  first committed its mint record (READ COMMITTED reads the newest committed rows per
  statement). SQLite transactions begin ``IMMEDIATE`` and are serialised already.
* Timestamps are canonical RFC 3339 text (text order is time order); JSON columns are text.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Row,
    String,
    and_,
    cast,
    delete,
    exists,
    func,
    literal,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.sql import Executable, Select

from sluice.domain.deposits import Alert
from sluice.ports.issuance import (
    BurnRecord,
    BurnStatus,
    ContractAddresses,
    GuardFigures,
    IssuanceOperation,
    MintingState,
    MintRecord,
    MintStatus,
    StepRecord,
    TransferDecision,
)
from sluice.store.bitcoin_rows import insert_alert
from sluice.store.bitcoin_tables import btc_outputs, btc_payouts
from sluice.store.issuance_tables import (
    customer_parties,
    issuance_burns,
    issuance_contracts,
    issuance_mints,
    issuance_operations,
    issuance_state,
    issuance_steps,
    issuance_transfer_decisions,
)
from sluice.store.rows import insert_for, is_postgresql, optional_time, time_of, to_json, ts

STATE_ROW = 1
# Custody outputs that back iSTSi: confirmed (or already credited) and not spent.
RESERVE_STATUSES = ("confirmed", "credited")
# A redemption stops counting against the reserves once its payout is done or it was undone.
REDEMPTION_CLOSED_STATUSES = ("completed", "compensated", "resolved", "returned")
# The redemption's payout id (services/issuance_redeem.payout_id_of).
REDEMPTION_PAYOUT_PREFIX = "redeem:"
# Custody payouts that will never be paid (no batch of theirs can be mined).
PAYOUT_CLOSED_STATUSES = ("cancelled", "failed")
# A deposit's operation id: btc-deposit:<txid>:<vout> (sluice.services.issuance_intake).
DEPOSIT_OPERATION_PREFIX = "btc-deposit:"
# A held deposit's return payout id (services/issuance_held.return_payout_id).
RETURN_PAYOUT_PREFIX = "return:"


def _json_of(text: str | None) -> dict[str, Any]:
    return dict(json.loads(text)) if text else {}


def _operation_from_row(row: Row[Any]) -> IssuanceOperation:
    return IssuanceOperation(
        id=row.id,
        type=row.type,
        correlation_id=row.correlation_id,
        status=row.status,
        customer_id=row.customer_id,
        amount_sats=int(row.amount_sats),
        step=row.step,
        attempts=int(row.attempts),
        params=_json_of(row.params),
        result=_json_of(row.result),
        created_at=time_of(row.created_at),
        updated_at=time_of(row.updated_at),
        version=int(row.version),
        next_attempt_at=optional_time(row.next_attempt_at),
        last_error=row.last_error,
        completed_at=optional_time(row.completed_at),
    )


def _operation_row(operation: IssuanceOperation) -> dict[str, Any]:
    return {
        "id": operation.id,
        "type": operation.type,
        "correlation_id": operation.correlation_id,
        "status": operation.status,
        "customer_id": operation.customer_id,
        "amount_sats": operation.amount_sats,
        "step": operation.step,
        "attempts": operation.attempts,
        "params": to_json(dict(operation.params)),
        "result": to_json(dict(operation.result)),
        "last_error": operation.last_error,
        "next_attempt_at": ts(operation.next_attempt_at),
        "created_at": ts(operation.created_at),
        "updated_at": ts(operation.updated_at),
        "completed_at": ts(operation.completed_at),
        "version": operation.version,
    }


def _step_from_row(row: Row[Any]) -> StepRecord:
    return StepRecord(
        operation_id=row.operation_id,
        seq=int(row.seq),
        step=row.step,
        kind=row.kind,
        outcome=row.outcome,
        attempt=int(row.attempt),
        at=time_of(row.at),
        detail=_json_of(row.detail),
        error=row.error,
    )


def _mint_from_row(row: Row[Any]) -> MintRecord:
    return MintRecord(
        id=row.id,
        operation_id=row.operation_id,
        customer_id=row.customer_id,
        owner=row.owner,
        amount_sats=int(row.amount_sats),
        reason=row.reason,
        status=row.status,
        created_at=time_of(row.created_at),
        update_id=row.update_id,
        credited=bool(row.credited),
    )


def _burn_from_row(row: Row[Any]) -> BurnRecord:
    return BurnRecord(
        id=row.id,
        operation_id=row.operation_id,
        customer_id=row.customer_id,
        owner=row.owner,
        amount_sats=int(row.amount_sats),
        reason=row.reason,
        status=row.status,
        created_at=time_of(row.created_at),
        update_id=row.update_id,
    )


def _decision_from_row(row: Row[Any]) -> TransferDecision:
    return TransferDecision(
        instruction_cid=row.instruction_cid,
        sender=row.sender,
        receiver=row.receiver,
        amount_sats=int(row.amount_sats),
        approve=bool(row.approve),
        reason=row.reason,
        decided_at=time_of(row.decided_at),
        update_id=row.update_id,
    )


def _state_from_row(row: Row[Any]) -> MintingState:
    return MintingState(
        minting_halted=bool(row.minting_halted),
        halted_reason=row.halted_reason,
        halted_at=optional_time(row.halted_at),
    )


def _addresses_of(text: str) -> ContractAddresses:
    data: Mapping[str, Any] = json.loads(text)
    return ContractAddresses(
        bitcoin_node_url=data.get("bitcoin_node_url"),
        custody_descriptor=data.get("custody_descriptor"),
        issuer_party=data.get("issuer_party"),
        registry_url=data.get("registry_url"),
    )


class SqlIssuanceRepository:
    def __init__(self, connection: Connection) -> None:
        self._c = connection

    def _insert(self, table: Any, key: str, values: Mapping[str, Any]) -> bool:
        """Insert one row unless its key exists; True when it went in."""
        statement: Executable = (
            insert_for(self._c, table)
            .values(**values)
            .on_conflict_do_nothing(index_elements=[key])
            .returning(literal_column("1"))
        )
        return self._c.execute(statement).first() is not None

    # -- operations ------------------------------------------------------------------------------

    def insert_operation(self, operation: IssuanceOperation) -> bool:
        return self._insert(issuance_operations, "id", _operation_row(operation))

    def get_operation(self, operation_id: str, *, lock: bool = False) -> IssuanceOperation | None:
        query = select(issuance_operations).where(issuance_operations.c.id == operation_id)
        if lock and is_postgresql(self._c):
            # SQLite's transactions begin IMMEDIATE and are serialised already.
            query = query.with_for_update()
        row = self._c.execute(query).first()
        return _operation_from_row(row) if row else None

    def update_operation(self, operation: IssuanceOperation, *, expected_version: int) -> bool:
        if operation.version != expected_version + 1:
            raise ValueError(
                f"operation {operation.id}: version {operation.version} does not follow "
                f"the expected version {expected_version}"
            )
        values = _operation_row(operation)
        del values["id"]
        statement = (
            update(issuance_operations)
            .where(
                issuance_operations.c.id == operation.id,
                issuance_operations.c.version == expected_version,
            )
            .values(**values)
        )
        return self._c.execute(statement).rowcount == 1

    def due_operations(self, now: datetime, limit: int = 100) -> list[IssuanceOperation]:
        table = issuance_operations
        query = (
            select(table)
            .where(
                table.c.status.in_(["pending", "waiting"]),
                or_(table.c.next_attempt_at.is_(None), table.c.next_attempt_at <= ts(now)),
            )
            .order_by(table.c.created_at, table.c.id)
            .limit(limit)
        )
        return [_operation_from_row(row) for row in self._c.execute(query)]

    def operations(
        self,
        *,
        type: str | None = None,
        status: str | None = None,
        customer_id: str | None = None,
        limit: int = 1000,
    ) -> list[IssuanceOperation]:
        table = issuance_operations
        query = select(table)
        if type is not None:
            query = query.where(table.c.type == type)
        if status is not None:
            query = query.where(table.c.status == status)
        if customer_id is not None:
            query = query.where(table.c.customer_id == customer_id)
        query = query.order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
        return [_operation_from_row(row) for row in self._c.execute(query)]

    def add_step(self, record: StepRecord) -> None:
        self._c.execute(
            issuance_steps.insert().values(
                operation_id=record.operation_id,
                seq=record.seq,
                step=record.step,
                kind=record.kind,
                outcome=record.outcome,
                attempt=record.attempt,
                detail=to_json(dict(record.detail)),
                error=record.error,
                at=ts(record.at),
            )
        )

    def steps(self, operation_id: str) -> list[StepRecord]:
        query = (
            select(issuance_steps)
            .where(issuance_steps.c.operation_id == operation_id)
            .order_by(issuance_steps.c.seq)
        )
        return [_step_from_row(row) for row in self._c.execute(query)]

    # -- mints and burns -------------------------------------------------------------------------

    def insert_mint(self, mint: MintRecord) -> bool:
        return self._insert(
            issuance_mints,
            "id",
            {
                "id": mint.id,
                "operation_id": mint.operation_id,
                "customer_id": mint.customer_id,
                "owner": mint.owner,
                "amount_sats": mint.amount_sats,
                "reason": mint.reason,
                "status": mint.status,
                "update_id": mint.update_id,
                "credited": mint.credited,
                "created_at": ts(mint.created_at),
            },
        )

    def get_mint(self, mint_id: str) -> MintRecord | None:
        row = self._c.execute(select(issuance_mints).where(issuance_mints.c.id == mint_id)).first()
        return _mint_from_row(row) if row else None

    def set_mint_status(
        self, mint_id: str, status: MintStatus, *, update_id: str | None = None
    ) -> None:
        values: dict[str, Any] = {"status": status}
        if update_id is not None:
            values["update_id"] = update_id
        self._c.execute(
            update(issuance_mints).where(issuance_mints.c.id == mint_id).values(**values)
        )

    def commit_mint(self, mint_id: str, update_id: str) -> bool:
        statement = (
            update(issuance_mints)
            .where(issuance_mints.c.id == mint_id, issuance_mints.c.status != "committed")
            .values(status="committed", update_id=update_id)
            .returning(issuance_mints.c.id)
        )
        return self._c.execute(statement).first() is not None

    def mints_by_reason(self, reasons: Sequence[str]) -> dict[str, MintRecord]:
        wanted = list(dict.fromkeys(reasons))
        if not wanted:
            return {}
        query = select(issuance_mints).where(issuance_mints.c.reason.in_(wanted))
        return {row.reason: _mint_from_row(row) for row in self._c.execute(query)}

    def mark_mint_credited(self, mint_id: str) -> None:
        self._c.execute(
            update(issuance_mints).where(issuance_mints.c.id == mint_id).values(credited=True)
        )

    def insert_burn(self, burn: BurnRecord) -> bool:
        return self._insert(
            issuance_burns,
            "id",
            {
                "id": burn.id,
                "operation_id": burn.operation_id,
                "customer_id": burn.customer_id,
                "owner": burn.owner,
                "amount_sats": burn.amount_sats,
                "reason": burn.reason,
                "status": burn.status,
                "update_id": burn.update_id,
                "created_at": ts(burn.created_at),
            },
        )

    def get_burn(self, burn_id: str) -> BurnRecord | None:
        row = self._c.execute(select(issuance_burns).where(issuance_burns.c.id == burn_id)).first()
        return _burn_from_row(row) if row else None

    def set_burn_status(
        self, burn_id: str, status: BurnStatus, *, update_id: str | None = None
    ) -> None:
        values: dict[str, Any] = {"status": status}
        if update_id is not None:
            values["update_id"] = update_id
        self._c.execute(
            update(issuance_burns).where(issuance_burns.c.id == burn_id).values(**values)
        )

    def commit_burn(self, burn_id: str, update_id: str) -> bool:
        statement = (
            update(issuance_burns)
            .where(issuance_burns.c.id == burn_id, issuance_burns.c.status != "committed")
            .values(status="committed", update_id=update_id)
            .returning(issuance_burns.c.id)
        )
        return self._c.execute(statement).first() is not None

    def correlation_ids(self, operation_ids: Sequence[str]) -> dict[str, str | None]:
        wanted = list(dict.fromkeys(operation_ids))
        if not wanted:
            return {}
        query = select(issuance_operations.c.id, issuance_operations.c.correlation_id).where(
            issuance_operations.c.id.in_(wanted)
        )
        return {row.id: row.correlation_id for row in self._c.execute(query)}

    def burns_by_reason(self, reasons: Sequence[str]) -> dict[str, BurnRecord]:
        wanted = list(dict.fromkeys(reasons))
        if not wanted:
            return {}
        query = select(issuance_burns).where(issuance_burns.c.reason.in_(wanted))
        return {row.reason: _burn_from_row(row) for row in self._c.execute(query)}

    # -- the mint guard --------------------------------------------------------------------------

    def lock_guard(self) -> MintingState:
        bump = (
            update(issuance_state)
            .where(issuance_state.c.id == STATE_ROW)
            .values(guard_seq=issuance_state.c.guard_seq + 1)
        )
        if self._c.execute(bump).rowcount != 1:
            # The migration inserts the row; should it be missing, create it (a concurrent
            # creator makes this insert wait, then skip) and take its lock.
            self._insert(
                issuance_state,
                "id",
                {"id": STATE_ROW, "guard_seq": 0, "minting_halted": False},
            )
            self._c.execute(bump)
        return self.minting_state()

    def guard_figures(self, *, paying: str | None = None) -> GuardFigures:
        minted = select(func.coalesce(func.sum(issuance_mints.c.amount_sats), 0)).where(
            issuance_mints.c.status != "failed"
        )
        burned = select(func.coalesce(func.sum(issuance_burns.c.amount_sats), 0)).where(
            issuance_burns.c.status == "committed"
        )
        # Unspent custody outputs that are confirmed, and the change of our own payouts from
        # the block that mined them on (were that block reorged away, the payout's inputs
        # would be unspent again and its change gone, so the sum stays right either way).
        outputs = btc_outputs.c
        reserves = select(func.coalesce(func.sum(outputs.amount_sats), 0)).where(
            outputs.spent_txid.is_(None),
            or_(
                outputs.status.in_(RESERVE_STATUSES),
                and_(outputs.kind == "change", outputs.status == "seen"),
            ),
        )
        # A redemption is pending from when its burn committed (before, its amount is still in
        # the supply: counting it here too would count it twice) until the watcher saw its
        # payout's inputs spent — the very event that takes them out of the reserves above, so
        # "paid" and "spent" change together, in the watcher's block transaction (and a reorg
        # undoes both). Not at its re-mint: that payout can never be paid, the Bitcoin stays.
        ops = issuance_operations
        burned_for_it = exists().where(
            issuance_burns.c.operation_id == ops.c.id,
            issuance_burns.c.status == "committed",
        )
        paid = exists().where(
            btc_payouts.c.id == literal(REDEMPTION_PAYOUT_PREFIX, String) + ops.c.id,
            btc_payouts.c.batch_id.is_not(None),
            exists().where(
                btc_outputs.c.reserved_by == btc_payouts.c.batch_id,
                btc_outputs.c.spent_txid.is_not(None),
            ),
        )
        pending = select(func.coalesce(func.sum(ops.c.amount_sats), 0)).where(
            ops.c.type == "token_withdrawal",
            ops.c.status.not_in(REDEMPTION_CLOSED_STATUSES),
            ops.c.step != "remint",
            burned_for_it,
            ~paid,
        )
        # A redemption compensated by a re-mint not done yet: burned, never to be paid, owed.
        awaiting_remint = select(func.coalesce(func.sum(ops.c.amount_sats), 0)).where(
            ops.c.type == "token_withdrawal",
            ops.c.status.not_in(REDEMPTION_CLOSED_STATUSES),
            ops.c.step == "remint",
            burned_for_it,
        )
        # Every other custody payout (an operator's, a held deposit's return) spends Bitcoin
        # that may back iSTSi: it is pending from its request (no burn takes it out of the
        # supply) until the watcher saw its batch's inputs spent, by the same rule as above. A
        # payout cancelled before any batch held it is never paid.
        payouts = btc_payouts.c
        other_paid = exists().where(
            btc_outputs.c.reserved_by == payouts.batch_id,
            btc_outputs.c.spent_txid.is_not(None),
        )
        other_pending = select(func.coalesce(func.sum(payouts.amount_sats), 0)).where(
            payouts.kind != "redemption",
            payouts.status.not_in(PAYOUT_CLOSED_STATUSES),
            or_(payouts.batch_id.is_(None), ~other_paid),
        )
        row = self._c.execute(
            select(
                minted.scalar_subquery().label("minted"),
                burned.scalar_subquery().label("burned"),
                reserves.scalar_subquery().label("reserves"),
                pending.scalar_subquery().label("pending"),
                other_pending.scalar_subquery().label("other_pending"),
                _unminted_deposits(paying).scalar_subquery().label("unminted"),
                awaiting_remint.scalar_subquery().label("awaiting_remint"),
            )
        ).one()
        return GuardFigures(
            supply=int(row.minted) - int(row.burned),
            reserves=int(row.reserves),
            pending_redemptions=int(row.pending),
            pending_payouts=int(row.other_pending),
            unminted_deposits=int(row.unminted),
            awaiting_remint=int(row.awaiting_remint),
        )

    def minting_state(self) -> MintingState:
        row = self._c.execute(
            select(issuance_state).where(issuance_state.c.id == STATE_ROW)
        ).first()
        return _state_from_row(row) if row else MintingState(minting_halted=False)

    def set_minting_halted(self, halted: bool, *, reason: str | None, at: datetime) -> None:
        values = {
            "minting_halted": halted,
            "halted_reason": reason if halted else None,
            "halted_at": ts(at) if halted else None,
        }
        statement = update(issuance_state).where(issuance_state.c.id == STATE_ROW).values(**values)
        if self._c.execute(statement).rowcount != 1:
            self._c.execute(issuance_state.insert().values(id=STATE_ROW, guard_seq=0, **values))

    # -- held transfers --------------------------------------------------------------------------

    def insert_decision(self, decision: TransferDecision) -> bool:
        return self._insert(
            issuance_transfer_decisions,
            "instruction_cid",
            {
                "instruction_cid": decision.instruction_cid,
                "sender": decision.sender,
                "receiver": decision.receiver,
                "amount_sats": decision.amount_sats,
                "approve": decision.approve,
                "reason": decision.reason,
                "decided_at": ts(decision.decided_at),
                "update_id": decision.update_id,
            },
        )

    def get_decision(self, instruction_cid: str) -> TransferDecision | None:
        table = issuance_transfer_decisions
        row = self._c.execute(
            select(table).where(table.c.instruction_cid == instruction_cid)
        ).first()
        return _decision_from_row(row) if row else None

    def set_decision_update(self, instruction_cid: str, update_id: str) -> None:
        table = issuance_transfer_decisions
        self._c.execute(
            update(table)
            .where(table.c.instruction_cid == instruction_cid)
            .values(update_id=update_id)
        )

    def decisions(self, limit: int = 1000) -> list[TransferDecision]:
        table = issuance_transfer_decisions
        query = (
            select(table)
            .order_by(table.c.decided_at.desc(), table.c.instruction_cid.desc())
            .limit(limit)
        )
        return [_decision_from_row(row) for row in self._c.execute(query)]

    # -- customer parties ------------------------------------------------------------------------

    def set_customer_party(
        self, customer_id: str, party: str, at: datetime, *, mint_to_party: bool = False
    ) -> bool:
        table = customer_parties
        # Lock the party's row and the customer's row (PostgreSQL) so the check and the write
        # below see the same rows.
        query = select(table).where(or_(table.c.party == party, table.c.customer_id == customer_id))
        if is_postgresql(self._c):
            query = query.with_for_update()
        rows = self._c.execute(query).all()
        if any(row.party == party and row.customer_id != customer_id for row in rows):
            return False
        # The replacement is one savepoint: a registration of the same party (or customer) by a
        # concurrent transaction makes the insert wait on PostgreSQL and then find a key taken;
        # the savepoint is rolled back, so the customer's earlier row stays and False means
        # nothing was written.
        savepoint = self._c.begin_nested()
        self._c.execute(delete(table).where(table.c.customer_id == customer_id))
        statement: Executable = (
            insert_for(self._c, table)
            .values(
                party=party,
                customer_id=customer_id,
                mint_to_party=mint_to_party,
                registered_at=ts(at),
            )
            .on_conflict_do_nothing()  # no target: the party or the customer taken
            .returning(literal_column("1"))
        )
        if self._c.execute(statement).first() is None:
            savepoint.rollback()
            return False
        savepoint.commit()
        return True

    def mint_to_party(self, customer_id: str) -> str | None:
        table = customer_parties
        row = self._c.execute(
            select(table.c.party).where(
                and_(table.c.customer_id == customer_id, table.c.mint_to_party.is_(True))
            )
        ).first()
        return row.party if row else None

    def customer_of_party(self, parties: Sequence[str]) -> dict[str, str]:
        wanted = list(dict.fromkeys(parties))
        if not wanted:
            return {}
        table = customer_parties
        query = select(table.c.party, table.c.customer_id).where(table.c.party.in_(wanted))
        return {row.party: row.customer_id for row in self._c.execute(query)}

    def party_of_customer(self, customer_id: str) -> str | None:
        table = customer_parties
        row = self._c.execute(
            select(table.c.party).where(table.c.customer_id == customer_id)
        ).first()
        return row.party if row else None

    # -- contract addresses ----------------------------------------------------------------------

    def add_contract_addresses(
        self, addresses: ContractAddresses, *, approval_id: str, effective_at: datetime
    ) -> bool:
        return self._insert(
            issuance_contracts,
            "approval_id",
            {
                "approval_id": approval_id,
                "addresses": to_json(addresses.as_json()),
                "effective_at": ts(effective_at),
                # When it was written (the port takes no time): orders rows of the same
                # effective_at, so a later approval wins a tie.
                "recorded_at": ts(datetime.now(UTC)),
            },
        )

    def contract_addresses(self, now: datetime) -> ContractAddresses | None:
        table = issuance_contracts
        row = self._c.execute(
            select(table.c.addresses)
            .where(table.c.effective_at <= ts(now))
            .order_by(
                table.c.effective_at.desc(), table.c.recorded_at.desc(), table.c.approval_id.desc()
            )
            .limit(1)
        ).first()
        return _addresses_of(row.addresses) if row else None

    def contract_address_history(self) -> list[tuple[ContractAddresses, str, datetime]]:
        table = issuance_contracts
        query = select(table).order_by(
            table.c.effective_at, table.c.recorded_at, table.c.approval_id
        )
        return [
            (_addresses_of(row.addresses), row.approval_id, time_of(row.effective_at))
            for row in self._c.execute(query)
        ]

    def add_alerts(self, alerts: Sequence[Alert], at: datetime) -> int:
        return sum(insert_alert(self._c, alert, at) for alert in alerts)


def _unminted_deposits(paying: str | None) -> Select[tuple[Any]]:
    """The sum of the customers' deposits owed as iSTSi not minted yet: ``bitcoin_deposit``
    operations not closed, whose custody output is confirmed in the active chain (one a reorg
    took away, or not confirmed again yet, is not in custody: nothing is owed for it until it
    is), with no mint record but a ``failed`` one (a mint not failed is in the supply already).
    A deposit being paid back is counted by its return payout instead, never twice: a returned
    operation is closed before its payout is requested, and one whose return payout
    (``return:<operation id>``) exists and is not cancelled or failed, or is the payout
    ``paying`` being requested, is left out here."""
    ops, outputs, payouts = issuance_operations.c, btc_outputs.c, btc_payouts.c
    return_id = literal(RETURN_PAYOUT_PREFIX, String) + ops.id
    minted = exists().where(
        issuance_mints.c.operation_id == ops.id, issuance_mints.c.status != "failed"
    )
    in_custody = exists().where(
        outputs.kind == "deposit",
        outputs.status.in_(RESERVE_STATUSES),
        ops.id
        == literal(DEPOSIT_OPERATION_PREFIX, String)
        + outputs.txid
        + literal(":", String)
        + cast(outputs.vout, String),
    )
    being_returned = exists().where(
        payouts.id == return_id, payouts.status.not_in(PAYOUT_CLOSED_STATUSES)
    )
    conditions = [
        ops.type == "bitcoin_deposit",
        ops.status.not_in(REDEMPTION_CLOSED_STATUSES),
        in_custody,
        ~minted,
        ~being_returned,
    ]
    if paying is not None:
        conditions.append(return_id != literal(paying, String))
    return select(func.coalesce(func.sum(ops.amount_sats), 0)).where(*conditions)
