"""The iSTSi router's repository (``uow.issuance``) on SQLite and PostgreSQL alike, and the mint
guard's lock on PostgreSQL.

Covers: operations (an id is inserted once, JSON round trip, updates conditional on the version,
due operations oldest first, listing newest first with filters), steps in ``seq`` order, mints
and burns (an id once, statuses and update ids, lookup by reason, crediting), the guard (its
switches, its row recreated when missing, its figures from real ``btc_outputs`` rows and the
mint, burn and redemption rows), decisions on held transfers (the first stands), customer
parties (one per customer, a party of another customer refused), contract addresses (the row in
force at a time) and alerts (an id raises once). Everything is written through the unit of
work and read back in a new one.

Concurrency (PostgreSQL): a second transaction's ``lock_guard`` waits (seen in
``pg_stat_activity``) until the first one commits, and then reads the guard's figures with the
first one's mint in them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.domain.deposits import Alert
from sluice.ports.issuance import (
    BurnRecord,
    ContractAddresses,
    GuardFigures,
    IssuanceOperation,
    MintRecord,
    StepRecord,
    TransferDecision,
)
from sluice.store.bitcoin_tables import btc_outputs, btc_payouts
from sluice.store.issuance_tables import issuance_state
from sluice.store.rows import ts

WHEN = datetime(2026, 12, 5, 6, 0, 0, tzinfo=UTC)
WAIT_TIMEOUT_S = 20.0


@pytest.fixture
def database(database_url: str) -> Iterator[bootstrap.Database]:
    db = bootstrap.database(database_url)
    yield db
    db.dispose()


def _operation(
    op_id: str,
    *,
    type: str = "bitcoin_deposit",
    status: str = "pending",
    minutes: int = 0,
    amount: int = 100_000,
    customer: str = "alice",
    next_attempt_at: datetime | None = None,
) -> IssuanceOperation:
    return IssuanceOperation(
        id=op_id,
        type=type,  # type: ignore[arg-type]
        correlation_id=f"corr-{op_id}",
        status=status,  # type: ignore[arg-type]
        customer_id=customer,
        amount_sats=amount,
        step="kyc",
        attempts=0,
        params={"txid": "ab" * 32, "vout": 1, "nested": {"a": [1, 2]}},
        result={},
        created_at=WHEN + timedelta(minutes=minutes),
        updated_at=WHEN + timedelta(minutes=minutes),
        next_attempt_at=next_attempt_at,
    )


def _mint(n: int, amount: int, status: str = "submitted", owner: str = "treasury") -> MintRecord:
    return MintRecord(
        id=f"issuance:op{n}:mint",
        operation_id=f"op{n}",
        customer_id="alice",
        owner=owner,
        amount_sats=amount,
        reason=f"issuance:op{n}",
        status=status,  # type: ignore[arg-type]
        created_at=WHEN,
    )


def _burn(n: int, amount: int, status: str = "submitted") -> BurnRecord:
    return BurnRecord(
        id=f"issuance:op{n}:burn",
        operation_id=f"op{n}",
        customer_id="alice",
        owner="treasury",
        amount_sats=amount,
        reason=f"issuance:op{n}:burn",
        status=status,  # type: ignore[arg-type]
        created_at=WHEN,
    )


def _add_output(
    db: bootstrap.Database,
    n: int,
    amount: int,
    status: str,
    *,
    spent: bool = False,
    kind: str = "deposit",
    reserved_by: str | None = None,
) -> None:
    with db.engine.begin() as c:
        c.execute(
            sa.insert(btc_outputs).values(
                txid=f"{0x150000 + n:064x}",
                vout=0,
                kind=kind,
                address="bcrt1q0addr0000",
                script_hex="00",
                customer_id="alice",
                amount_sats=amount,
                status=status,
                block_height=1,
                block_hash="b1" * 32,
                input_outpoints="[]",
                first_seen_at=ts(WHEN),
                confirmed_at=None,
                credited_at=None,
                reserved_by=reserved_by,
                spent_txid=f"{0xDEAD:064x}" if spent else None,
                spent_height=2 if spent else None,
                spent_block_hash="b2" * 32 if spent else None,
            )
        )


def _addresses(node: str) -> ContractAddresses:
    return ContractAddresses(
        bitcoin_node_url=node,
        custody_descriptor="wsh(...)#checksum",
        issuer_party="issuer::1220ab",
        registry_url=None,
    )


# --- operations ---------------------------------------------------------------------------------


def test_an_operation_is_inserted_once_and_read_back_whole(database: bootstrap.Database) -> None:
    op = _operation("btc-deposit:aa:1", next_attempt_at=WHEN + timedelta(seconds=30))
    with database.uow() as uow:
        assert uow.issuance.insert_operation(op) is True
        assert uow.issuance.insert_operation(replace(op, amount_sats=1)) is False
        uow.commit()
    with database.uow() as uow:
        assert uow.issuance.get_operation(op.id) == op
        assert uow.issuance.get_operation(op.id, lock=True) == op
        assert uow.issuance.get_operation("nope") is None


def test_an_update_applies_only_at_the_expected_version(database: bootstrap.Database) -> None:
    op = _operation("op1")
    with database.uow() as uow:
        uow.issuance.insert_operation(op)
        uow.commit()
    moved = replace(
        op,
        status="waiting",
        step="reserve",
        attempts=2,
        result={"mint": {"update_id": "u1"}},
        last_error="node down",
        next_attempt_at=WHEN + timedelta(minutes=5),
        updated_at=WHEN + timedelta(minutes=1),
        completed_at=WHEN + timedelta(minutes=2),
        version=2,
    )
    with database.uow() as uow:
        assert uow.issuance.update_operation(moved, expected_version=1) is True
        uow.commit()
    # Another worker that read version 1 cannot move it again.
    stale = replace(op, status="stuck", version=2)
    with database.uow() as uow:
        assert uow.issuance.update_operation(stale, expected_version=1) is False
        uow.commit()
    with database.uow() as uow:
        assert uow.issuance.get_operation("op1") == moved
        with pytest.raises(ValueError, match="version"):
            uow.issuance.update_operation(replace(moved, version=5), expected_version=2)
        assert uow.issuance.update_operation(replace(moved, version=3), expected_version=2)
        assert (
            uow.issuance.update_operation(
                replace(_operation("nope"), version=2), expected_version=1
            )
            is False
        )


def test_due_operations_are_open_and_past_their_time_oldest_first(
    database: bootstrap.Database,
) -> None:
    now = WHEN + timedelta(hours=1)
    with database.uow() as uow:
        for op in (
            _operation("late", minutes=3, next_attempt_at=now),  # exactly now: due
            _operation("early", minutes=1),  # no time set: due
            _operation("waiting", status="waiting", minutes=2, next_attempt_at=now - timedelta(1)),
            _operation("future", minutes=0, next_attempt_at=now + timedelta(seconds=1)),
            _operation("held", status="held", minutes=0),
            _operation("stuck", status="stuck", minutes=0),
            _operation("done", status="completed", minutes=0),
            _operation("same-b", minutes=4),
            _operation("same-a", minutes=4),
        ):
            uow.issuance.insert_operation(op)
        uow.commit()
    with database.uow() as uow:
        due = [op.id for op in uow.issuance.due_operations(now)]
        assert due == ["early", "waiting", "late", "same-a", "same-b"]
        assert [op.id for op in uow.issuance.due_operations(now, limit=2)] == ["early", "waiting"]
        assert "future" in [op.id for op in uow.issuance.due_operations(now + timedelta(1))]


def test_operations_are_listed_newest_first_by_filter(database: bootstrap.Database) -> None:
    with database.uow() as uow:
        uow.issuance.insert_operation(_operation("d1", minutes=1))
        uow.issuance.insert_operation(_operation("d2", minutes=2, status="stuck", customer="bob"))
        uow.issuance.insert_operation(
            _operation("r1", minutes=3, type="token_withdrawal", status="stuck")
        )
        uow.commit()
    with database.uow() as uow:
        repo = uow.issuance
        assert [op.id for op in repo.operations()] == ["r1", "d2", "d1"]
        assert [op.id for op in repo.operations(type="bitcoin_deposit")] == ["d2", "d1"]
        assert [op.id for op in repo.operations(status="stuck")] == ["r1", "d2"]
        assert [op.id for op in repo.operations(customer_id="alice")] == ["r1", "d1"]
        assert [op.id for op in repo.operations(type="token_withdrawal", status="pending")] == []
        assert [op.id for op in repo.operations(limit=1)] == ["r1"]


def test_steps_come_back_in_seq_order_and_a_seq_is_taken_once(
    database: bootstrap.Database,
) -> None:
    records = [
        StepRecord("op1", 2, "reserve", "step", "wait", 0, WHEN, {"why": "not confirmed"}),
        StepRecord("op1", 1, "kyc", "step", "retry", 1, WHEN, {}, error="registry down"),
        StepRecord("op2", 1, "kyc", "override", "done", 0, WHEN, {"actor": "ops"}),
    ]
    with database.uow() as uow:
        for record in records:
            uow.issuance.add_step(record)
        uow.commit()
    with database.uow() as uow:
        assert uow.issuance.steps("op1") == [records[1], records[0]]
        assert uow.issuance.steps("none") == []
        with pytest.raises(sa.exc.IntegrityError):
            uow.issuance.add_step(replace(records[0], step="again"))


# --- mints and burns ----------------------------------------------------------------------------


def test_mints_are_recorded_once_moved_and_found_by_reason(database: bootstrap.Database) -> None:
    with database.uow() as uow:
        assert uow.issuance.insert_mint(_mint(1, 500)) is True
        assert uow.issuance.insert_mint(_mint(1, 999)) is False
        assert uow.issuance.insert_mint(_mint(2, 700, owner="alice::1220")) is True
        uow.commit()
    with database.uow() as uow:
        repo = uow.issuance
        assert repo.get_mint("issuance:op1:mint") == _mint(1, 500)
        assert repo.get_mint("nope") is None
        repo.set_mint_status("issuance:op1:mint", "committed", update_id="u-1")
        repo.set_mint_status("issuance:op2:mint", "failed")
        repo.mark_mint_credited("issuance:op1:mint")
        uow.commit()
    with database.uow() as uow:
        repo = uow.issuance
        found = repo.mints_by_reason(
            ["issuance:op1", "issuance:op2", "issuance:op9", "issuance:op1"]
        )
        assert set(found) == {"issuance:op1", "issuance:op2"}
        assert found["issuance:op1"] == replace(
            _mint(1, 500), status="committed", update_id="u-1", credited=True
        )
        assert found["issuance:op2"].status == "failed"
        assert found["issuance:op2"].update_id is None
        assert found["issuance:op2"].credited is False
        assert repo.mints_by_reason([]) == {}


def test_burns_are_recorded_once_moved_and_found_by_reason(database: bootstrap.Database) -> None:
    with database.uow() as uow:
        assert uow.issuance.insert_burn(_burn(1, 400)) is True
        assert uow.issuance.insert_burn(_burn(1, 1)) is False
        uow.commit()
    with database.uow() as uow:
        assert uow.issuance.get_burn("issuance:op1:burn") == _burn(1, 400)
        assert uow.issuance.get_burn("nope") is None
        uow.issuance.set_burn_status("issuance:op1:burn", "committed", update_id="u-b")
        uow.commit()
    with database.uow() as uow:
        found = uow.issuance.burns_by_reason(["issuance:op1:burn", "issuance:op1"])
        assert found == {
            "issuance:op1:burn": replace(_burn(1, 400), status="committed", update_id="u-b")
        }
        assert uow.issuance.burns_by_reason([]) == {}


# --- the mint guard -----------------------------------------------------------------------------


def _guard_seq(db: bootstrap.Database) -> int:
    with db.engine.connect() as c:
        return int(c.execute(sa.select(issuance_state.c.guard_seq)).scalar_one())


def test_the_guard_lock_counts_and_returns_the_switches(database: bootstrap.Database) -> None:
    before = _guard_seq(database)
    with database.uow() as uow:
        state = uow.issuance.lock_guard()
        assert state.minting_halted is False
        uow.issuance.set_minting_halted(True, reason="breach", at=WHEN)
        uow.commit()
    assert _guard_seq(database) == before + 1
    with database.uow() as uow:
        halted = uow.issuance.lock_guard()
        assert (halted.minting_halted, halted.halted_reason, halted.halted_at) == (
            True,
            "breach",
            WHEN,
        )
        assert uow.issuance.minting_state() == halted
        uow.issuance.set_minting_halted(False, reason="resumed", at=WHEN)
        uow.commit()
    with database.uow() as uow:
        state = uow.issuance.minting_state()
        assert (state.minting_halted, state.halted_reason, state.halted_at) == (False, None, None)
    # Rolled back: the count is back too.
    with database.uow() as uow:
        uow.issuance.lock_guard()
    assert _guard_seq(database) == before + 2


def test_the_guard_row_is_recreated_when_missing(database: bootstrap.Database) -> None:
    with database.engine.begin() as c:
        c.execute(sa.delete(issuance_state))
    with database.uow() as uow:
        assert uow.issuance.minting_state().minting_halted is False
        assert uow.issuance.lock_guard().minting_halted is False
        uow.commit()
    assert _guard_seq(database) == 1
    with database.engine.begin() as c:
        c.execute(sa.delete(issuance_state))
    with database.uow() as uow:
        uow.issuance.set_minting_halted(True, reason="reorg", at=WHEN)
        uow.commit()
    with database.uow() as uow:
        assert uow.issuance.lock_guard().halted_reason == "reorg"


def test_guard_figures_from_outputs_mints_burns_and_redemptions(
    database: bootstrap.Database,
) -> None:
    with database.uow() as uow:
        assert uow.issuance.guard_figures() == GuardFigures(0, 0, 0)
    # Reserves: confirmed or credited and unspent only.
    _add_output(database, 1, 1_000_000, "confirmed")
    _add_output(database, 2, 200_000, "credited")
    _add_output(database, 3, 40_000_000, "confirmed", spent=True)
    _add_output(database, 4, 50_000_000, "credited", spent=True)
    _add_output(database, 5, 60_000_000, "seen")
    _add_output(database, 6, 70_000_000, "reorged")
    _add_output(database, 7, 300, "dust")
    with database.uow() as uow:
        repo = uow.issuance
        # Supply: mints not failed, minus burns committed.
        repo.insert_mint(_mint(1, 300_000, "submitted"))
        repo.insert_mint(_mint(2, 200_000, "committed"))
        repo.insert_mint(_mint(3, 9_000_000, "failed"))
        repo.insert_burn(_burn(4, 50_000, "committed"))
        repo.insert_burn(_burn(5, 7_000_000, "submitted"))
        repo.insert_burn(_burn(6, 8_000_000, "failed"))
        # Pending redemptions: token withdrawals not closed whose burn committed.
        for n, status in enumerate(("pending", "waiting", "held", "stuck")):
            repo.insert_operation(
                _operation(f"r-open-{n}", type="token_withdrawal", status=status, amount=10 + n)
            )
            repo.insert_burn(_redemption_burn(f"r-open-{n}", 10 + n, "committed"))
        for n, status in enumerate(("completed", "compensated", "resolved", "returned")):
            repo.insert_operation(
                _operation(f"r-shut-{n}", type="token_withdrawal", status=status, amount=10**7)
            )
        # Its burn not committed (not sent yet, unknown, rejected): its amount is still in the
        # supply, so it is not pending as well.
        for status in ("submitted", "failed"):
            repo.insert_operation(
                _operation(f"r-{status}", type="token_withdrawal", status="pending", amount=10**7)
            )
            repo.insert_burn(_redemption_burn(f"r-{status}", 10**7, status))
        repo.insert_operation(
            _operation("r-no-burn", type="token_withdrawal", status="pending", amount=10**7)
        )
        repo.insert_operation(_operation("deposit", status="pending", amount=10**8))
        # At its re-mint the payout can never be paid: the Bitcoin stays, nothing is pending;
        # it is owed to the re-mint (awaiting_remint), which no other payout may spend.
        remint = _operation("r-remint", type="token_withdrawal", status="pending", amount=10**7)
        repo.insert_operation(replace(remint, step="remint"))
        repo.insert_burn(_redemption_burn("r-remint", 10**7, "committed"))
        assert repo.guard_figures() == GuardFigures(
            supply=300_000 + 200_000 - 50_000 - 46 - 10**7,
            reserves=1_000_000 + 200_000,
            pending_redemptions=10 + 11 + 12 + 13,
            awaiting_remint=10**7,
        )
        uow.commit()
    figures = GuardFigures(
        supply=450_000 - 46 - 10**7,
        reserves=1_200_000,
        pending_redemptions=46,
        awaiting_remint=10**7,
    )
    with database.uow() as uow:
        assert uow.issuance.guard_figures() == figures
    assert figures.allows(1_200_000 - 46 - figures.supply)
    assert not figures.allows(1_200_000 - 46 - figures.supply + 1)


def _redemption_burn(op_id: str, amount: int, status: str) -> BurnRecord:
    return replace(
        _burn(0, amount, status),
        id=f"issuance:{op_id}:burn",
        operation_id=op_id,
        reason=f"issuance:{op_id}:burn",
    )


def test_a_redemption_counts_as_pending_only_once_its_burn_committed(
    database: bootstrap.Database,
) -> None:
    """Steady state (reserves = supply), a redemption at its burn and a new deposit: the
    deposit's mint fits. Before the burn commits, the redemption's amount is in the supply;
    after, it is pending: never both (a false breach would halt minting)."""
    _add_output(database, 1, 1_000_000, "credited")
    _add_output(database, 2, 50_000, "confirmed")  # the new deposit
    op = _operation("r-1", type="token_withdrawal", status="pending", amount=300_000)
    with database.uow() as uow:
        uow.issuance.insert_mint(_mint(1, 1_000_000, "committed"))
        uow.issuance.insert_operation(replace(op, step="burn"))
        uow.issuance.insert_burn(_redemption_burn("r-1", 300_000, "submitted"))
        figures = uow.issuance.guard_figures()
        uow.commit()
    assert figures == GuardFigures(supply=1_000_000, reserves=1_050_000, pending_redemptions=0)
    assert figures.allows(50_000)
    with database.uow() as uow:
        uow.issuance.set_burn_status("issuance:r-1:burn", "committed", update_id="u-burn")
        figures = uow.issuance.guard_figures()
        uow.commit()
    assert figures == GuardFigures(supply=700_000, reserves=1_050_000, pending_redemptions=300_000)
    assert figures.allows(50_000) and not figures.allows(50_001)


def test_a_redemption_leaves_the_pending_sum_when_the_watcher_sees_its_inputs_spent(
    database: bootstrap.Database,
) -> None:
    """A redemption stops counting as pending when a custody output its payout's batch reserved
    is recorded spent: the watcher's record that takes that output out of the reserves, so both
    figures move together whatever the payouts worker recorded meanwhile. The payout's change
    (ours, in the same block) counts before it is confirmed; a change output reorged away or
    spent does not."""
    _add_output(database, 1, 5_000_000, "confirmed")
    _add_output(database, 2, 700_000, "seen", kind="change")
    _add_output(database, 3, 800_000, "reorged", kind="change")
    _add_output(database, 4, 900_000, "seen", kind="change", spent=True)
    _add_output(database, 5, 600_000, "seen")  # a deposit not yet confirmed: not counted
    # Inputs of the batches: spent (the watcher saw the block) or still unspent.
    _add_output(database, 6, 40_000, "credited", spent=True, reserved_by="b-paid")
    _add_output(database, 7, 50_000, "credited", spent=True, reserved_by="b-watcher-first")
    _add_output(database, 8, 60_000, "credited", reserved_by="b-worker-first")
    _add_output(database, 9, 70_000, "credited", reserved_by="b-broadcast")
    amounts = {
        "paid": 1_000,
        "watcher-first": 2_000,
        "worker-first": 4_000,
        "queued": 8_000,
        "broadcast": 16_000,
        "no-payout": 32_000,
    }
    with database.uow() as uow:
        repo = uow.issuance
        for name, amount in amounts.items():
            repo.insert_operation(
                _operation(f"r-{name}", type="token_withdrawal", status="pending", amount=amount)
            )
            repo.insert_burn(_redemption_burn(f"r-{name}", amount, "committed"))
        uow.commit()
    with database.engine.begin() as c:
        for name, status, batch in (
            ("paid", "completed", "b-paid"),
            # The watcher recorded the spend before the payouts worker saw the block.
            ("watcher-first", "broadcast", "b-watcher-first"),
            # The payouts worker saw the block first: the inputs are still in the reserves.
            ("worker-first", "mined", "b-worker-first"),
            ("queued", "queued", None),
            ("broadcast", "broadcast", "b-broadcast"),
        ):
            c.execute(
                sa.insert(btc_payouts).values(
                    id=f"redeem:r-{name}",
                    kind="redemption",
                    address="bcrt1q0dest0000",
                    script_hex="00",
                    amount_sats=amounts[name],
                    status=status,
                    batch_id=batch,
                    requested_by="test",
                    requested_at=ts(WHEN),
                )
            )
    with database.uow() as uow:
        assert uow.issuance.guard_figures() == GuardFigures(
            supply=-sum(amounts.values()),
            reserves=5_000_000 + 700_000 + 60_000 + 70_000,
            pending_redemptions=4_000 + 8_000 + 16_000 + 32_000,
        )


# --- held transfers -----------------------------------------------------------------------------


def test_a_held_transfers_first_decision_stands(database: bootstrap.Database) -> None:
    first = TransferDecision("cid-1", "alice::1220", "bob::1220", 5_000, True, "both known", WHEN)
    later = TransferDecision(
        "cid-2", "bob::1220", "eve::1220", 7, False, "receiver unknown", WHEN + timedelta(1)
    )
    with database.uow() as uow:
        assert uow.issuance.insert_decision(first) is True
        assert uow.issuance.insert_decision(replace(first, approve=False)) is False
        assert uow.issuance.insert_decision(later) is True
        uow.commit()
    with database.uow() as uow:
        assert uow.issuance.get_decision("cid-1") == first
        assert uow.issuance.get_decision("nope") is None
        uow.issuance.set_decision_update("cid-1", "u-approve")
        uow.commit()
    with database.uow() as uow:
        assert uow.issuance.decisions() == [later, replace(first, update_id="u-approve")]
        assert uow.issuance.decisions(limit=1) == [later]


# --- customer parties ---------------------------------------------------------------------------


def test_one_party_per_customer_and_never_anothers(database: bootstrap.Database) -> None:
    with database.uow() as uow:
        repo = uow.issuance
        assert repo.set_customer_party("alice", "alice::1220a", WHEN) is True
        assert repo.set_customer_party("bob", "bob::1220b", WHEN, mint_to_party=True) is True
        uow.commit()
    with database.uow() as uow:
        repo = uow.issuance
        assert repo.party_of_customer("alice") == "alice::1220a"
        assert repo.mint_to_party("alice") is None
        assert repo.mint_to_party("bob") == "bob::1220b"
        assert repo.customer_of_party(["alice::1220a", "bob::1220b", "eve::1"]) == {
            "alice::1220a": "alice",
            "bob::1220b": "bob",
        }
        # Bob's party is not Alice's to take: nothing written.
        assert repo.set_customer_party("alice", "bob::1220b", WHEN, mint_to_party=True) is False
        uow.commit()
    with database.uow() as uow:
        repo = uow.issuance
        assert repo.party_of_customer("alice") == "alice::1220a"
        assert repo.customer_of_party(["bob::1220b"]) == {"bob::1220b": "bob"}
        # Alice's new party replaces her old one; the same party again changes the choice.
        assert repo.set_customer_party("alice", "alice::1220c", WHEN, mint_to_party=True)
        assert repo.set_customer_party("bob", "bob::1220b", WHEN, mint_to_party=False)
        uow.commit()
    with database.uow() as uow:
        repo = uow.issuance
        assert repo.party_of_customer("alice") == "alice::1220c"
        assert repo.mint_to_party("alice") == "alice::1220c"
        assert repo.customer_of_party(["alice::1220a"]) == {}
        assert repo.mint_to_party("bob") is None
        assert repo.party_of_customer("carol") is None
        assert repo.customer_of_party([]) == {}


# --- contract addresses -------------------------------------------------------------------------


def test_the_contract_addresses_in_force_are_the_latest_effective(
    database: bootstrap.Database,
) -> None:
    with database.uow() as uow:
        repo = uow.issuance
        assert repo.add_contract_addresses(
            _addresses("http://n1"), approval_id="a1", effective_at=WHEN
        )
        assert not repo.add_contract_addresses(
            _addresses("http://other"), approval_id="a1", effective_at=WHEN
        )
        later = WHEN + timedelta(hours=24)
        assert repo.add_contract_addresses(
            _addresses("http://n3"), approval_id="a3", effective_at=later
        )
        # Recorded after a1 with the same effective time: it wins the tie.
        assert repo.add_contract_addresses(
            _addresses("http://n2"), approval_id="a2", effective_at=WHEN
        )
        uow.commit()
    with database.uow() as uow:
        repo = uow.issuance
        assert repo.contract_addresses(WHEN - timedelta(seconds=1)) is None
        assert repo.contract_addresses(WHEN) == _addresses("http://n2")
        assert repo.contract_addresses(later - timedelta(seconds=1)) == _addresses("http://n2")
        assert repo.contract_addresses(later) == _addresses("http://n3")
        assert repo.contract_address_history() == [
            (_addresses("http://n1"), "a1", WHEN),
            (_addresses("http://n2"), "a2", WHEN),
            (_addresses("http://n3"), "a3", later),
        ]


def test_an_alert_is_raised_once(database: bootstrap.Database) -> None:
    alert = Alert("mint_guard_breach:1", "critical", "mint_guard_breach", "supply over reserves")
    other = Alert("issuance_stuck:op1", "warning", "issuance_stuck", "stuck", details={"a": "b"})
    with database.uow() as uow:
        assert uow.issuance.add_alerts([alert, other], WHEN) == 2
        assert uow.issuance.add_alerts([alert], WHEN) == 0
        uow.commit()
    with database.engine.connect() as c:
        kinds = c.exec_driver_sql("SELECT kind FROM alerts ORDER BY id").scalars().all()
    assert kinds == ["issuance_stuck", "mint_guard_breach"]


def test_nothing_is_written_without_commit(database: bootstrap.Database) -> None:
    with database.uow() as uow:
        uow.issuance.insert_operation(_operation("op1"))
        uow.issuance.insert_mint(_mint(1, 10))
        uow.issuance.set_customer_party("alice", "alice::1", WHEN)
    with database.uow() as uow:
        assert uow.issuance.get_operation("op1") is None
        assert uow.issuance.get_mint("issuance:op1:mint") is None
        assert uow.issuance.party_of_customer("alice") is None


# --- concurrency (PostgreSQL) -------------------------------------------------------------------


def _wait_for_a_lock_wait(engine: sa.Engine, thread: threading.Thread) -> None:
    """Until another session waits on a lock (bounded: a failure, not a time assertion)."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while time.monotonic() < deadline and thread.is_alive():
        with engine.connect() as c:
            waiting = c.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).scalar_one()
        if waiting:
            return
        time.sleep(0.02)
    pytest.fail("the second transaction never waited for the first one's guard lock")


@pytest.mark.postgres
def test_lock_guard_serialises_two_minting_transactions(postgres_url: str) -> None:
    database = bootstrap.database(postgres_url)
    try:
        _add_output(database, 1, 1_000_000, "confirmed")
        order: list[str] = []
        first_holds = threading.Event()
        release_first = threading.Event()
        seen_by_second: dict[str, GuardFigures] = {}
        errors: list[BaseException] = []

        def first() -> None:
            try:
                with database.uow() as uow:
                    uow.issuance.lock_guard()
                    uow.issuance.insert_mint(_mint(1, 600_000))
                    order.append("first locked")
                    first_holds.set()
                    assert release_first.wait(WAIT_TIMEOUT_S)
                    order.append("first commits")
                    uow.commit()
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)
                first_holds.set()

        def second() -> None:
            try:
                with database.uow() as uow:
                    uow.issuance.lock_guard()
                    order.append("second locked")
                    seen_by_second["figures"] = uow.issuance.guard_figures()
                    uow.commit()
            except BaseException as error:  # pragma: no cover - reported below
                errors.append(error)

        a = threading.Thread(target=first)
        a.start()
        assert first_holds.wait(WAIT_TIMEOUT_S)
        b = threading.Thread(target=second)
        b.start()
        try:
            _wait_for_a_lock_wait(database.engine, b)
            # The second is blocked in lock_guard while the first is open.
            assert order == ["first locked"]
        finally:
            release_first.set()
            a.join(WAIT_TIMEOUT_S)
            b.join(WAIT_TIMEOUT_S)
        assert not errors, errors
        assert not a.is_alive() and not b.is_alive()
        assert order == ["first locked", "first commits", "second locked"]
        # It read the guard after the first mint was committed: the mint counts.
        assert seen_by_second["figures"] == GuardFigures(
            supply=600_000, reserves=1_000_000, pending_redemptions=0
        )
        assert _guard_seq(database) == 2
    finally:
        database.dispose()


@pytest.mark.postgres
def test_a_party_registered_by_two_customers_at_once_goes_to_the_first(
    postgres_url: str,
) -> None:
    database = bootstrap.database(postgres_url)
    try:
        with database.uow() as uow:
            assert uow.issuance.set_customer_party("bob", "bob::old", WHEN)
            uow.commit()
        outcome: dict[str, bool] = {}
        holding = database.uow()
        first = holding.__enter__()
        assert first.issuance.set_customer_party("alice", "shared::1220", WHEN)

        def other() -> None:
            with database.uow() as uow:
                outcome["bob"] = uow.issuance.set_customer_party("bob", "shared::1220", WHEN)
                uow.commit()  # committed even though refused: it must have written nothing

        thread = threading.Thread(target=other)
        thread.start()
        try:
            _wait_for_a_lock_wait(database.engine, thread)
            assert outcome == {}
            first.commit()
        finally:
            holding.__exit__(None, None, None)
            thread.join(WAIT_TIMEOUT_S)
        assert outcome == {"bob": False}
        with database.uow() as uow:
            assert uow.issuance.customer_of_party(["shared::1220", "bob::old"]) == {
                "shared::1220": "alice",
                "bob::old": "bob",
            }
    finally:
        database.dispose()
