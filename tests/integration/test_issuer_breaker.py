"""The issuer's mints and burns under the ``ledger`` circuit breaker, on SQLite and PostgreSQL.

While the breaker refuses, the router's mint and burn steps send nothing and wait: no iSTSi is
minted or burned, no record fails, nothing is compensated, no attempt of the operation is used
up, and the record keeps its id (the command id). Once the breaker lets calls through, the same
record is sent and commits once. The proxy counts the ledger's definite refusals of a command as
answers (the ledger works), and only a missing answer (or an unexpected error) as a failure.

Real parts: the Integration DB, the embedded ledger with iSTSi and its issuer, ingestion, the
router with every operation type; the process's breakers are replaced by a registry of the
test's own, wired into :class:`GuardedIssuer` here (as bootstrap wires the process's).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from decimal import Decimal
from typing import Any

import pytest

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.breaker import BreakerSettings
from sluice.ports.issuance import (
    IssuerOutcomeUnknownError,
    IssuerRejectedError,
    IssuerResult,
)
from sluice.server.issuance import router_part
from sluice.services.breakers import BreakerOpenError, Breakers
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_deposit import mint_id
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_redeem import burn_id_of, request_redemption
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.issuer_breaker import GuardedIssuer, issuer_failure
from tests.integration import test_ingestion_issuance as ingestion_books
from tests.integration.test_ingestion_issuance import CHAIN, SATS, SETTINGS, Books, destination

wallet = ingestion_books.wallet


@pytest.fixture
def world(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[Books]:
    world = Books(
        bootstrap.database(database_url),
        wallet,
        KycRegistry(),
        FakeChain(CHAIN, fee_rate_sat_vb=Decimal(5)),
        settings=SETTINGS,
    )
    world.customer("alice")
    yield world
    world.db.dispose()


class Counting:
    """The world's issuer, counting the mints and burns that reached it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.sent: list[tuple[str, str]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def mint(self, owner: str, sats: int, *, reason: str, command_id: str) -> IssuerResult:
        self.sent.append(("mint", command_id))
        result: IssuerResult = self.inner.mint(owner, sats, reason=reason, command_id=command_id)
        return result

    def burn(
        self, owner: str, sats: int, *, reason: str, command_id: str, inputs: Sequence[str] = ()
    ) -> IssuerResult:
        self.sent.append(("burn", command_id))
        result: IssuerResult = self.inner.burn(
            owner, sats, reason=reason, command_id=command_id, inputs=inputs
        )
        return result


def guarded_router(world: Books) -> tuple[IssuanceRouter, Counting, Breakers]:
    counting = Counting(world.issuer)
    registry = Breakers()
    issuer = GuardedIssuer(counting, registry=registry)
    return IssuanceRouter(replace(world.ctx, issuer=issuer), DEFINITIONS), counting, registry


def outbox_types(world: Books) -> list[str]:
    with world.db.uow() as uow:
        return [row.event.type for row in uow.events.find(limit=100_000)]


def step_outcomes(world: Books, operation_id: str) -> list[str]:
    return [f"{r.step}:{r.outcome}" for r in world.steps(operation_id)]


def test_a_deposit_mint_waits_while_the_ledger_breaker_is_open_then_mints_once(
    world: Books,
) -> None:
    router, counting, registry = guarded_router(world)
    op_id = world.deposit("alice", SATS)
    supply = world.supply()
    registry.get("ledger").force("open")

    for _ in range(3):
        waiting = router.run_operation(op_id)
        assert (waiting.status, waiting.step, waiting.attempts) == ("waiting", "mint", 0)
    assert counting.sent == []
    assert world.supply() == supply
    recorded = world.mint(op_id)
    assert recorded is not None
    assert (recorded.id, recorded.status, recorded.credited) == (mint_id(op_id), "submitted", False)
    assert not any(o.endswith((":fail", ":retry")) for o in step_outcomes(world, op_id))
    assert world.alert_kinds() == []
    assert "istsi_minted" not in outbox_types(world)

    registry.get("ledger").force(None)
    moved = router.run_operation(op_id)
    assert (moved.status, moved.step) == ("waiting", "credit")
    assert counting.sent == [("mint", mint_id(op_id))]  # the record's id, sent once
    assert world.supply() == supply + SATS
    world.ingest()
    assert router.run_operation(op_id).status == "completed"
    assert outbox_types(world).count("istsi_minted") == 1
    assert world.alert_kinds() == []
    world.books_hold()


def test_a_redemption_burn_waits_while_the_ledger_breaker_is_open_then_burns_once(
    world: Books,
) -> None:
    world.deposit_credited("alice", SATS)
    router, counting, registry = guarded_router(world)
    redemption = request_redemption(
        world.ctx,
        customer_id="alice",
        amount_sats=150_000,
        address=destination(world.wallet),
        idempotency_key="k1",
        actor="customer:alice",
    )
    supply = world.supply()
    registry.get("ledger").force("open")

    for _ in range(3):
        waiting = router.run_operation(redemption.id)
        assert (waiting.status, waiting.step, waiting.attempts) == ("waiting", "burn", 0)
    assert counting.sent == []
    assert world.supply() == supply
    with world.db.uow() as uow:
        burn = uow.issuance.get_burn(burn_id_of(redemption.id))
    assert burn is not None and (burn.status, burn.update_id) == ("submitted", None)
    assert not any(o.endswith((":fail", ":retry")) for o in step_outcomes(world, redemption.id))
    assert world.operation(redemption.id).status not in ("stuck", "compensated")
    assert "istsi_burned" not in outbox_types(world)

    registry.get("ledger").force(None)
    moved = router.run_operation(redemption.id)
    assert moved.step in ("payout", "confirm"), moved
    assert counting.sent == [("burn", burn_id_of(redemption.id))]
    assert world.supply() == supply - 150_000
    assert outbox_types(world).count("istsi_burned") == 1
    world.ingest()
    assert outbox_types(world).count("istsi_burned") == 1
    world.books_hold()


# --- what counts against the breaker --------------------------------------------------------------


class Answering:
    """An issuer answering each call with the next of ``answers`` (an exception is raised)."""

    def __init__(self, answers: list[BaseException]) -> None:
        self.answers = answers
        self.calls = 0

    def mint(self, owner: str, sats: int, *, reason: str, command_id: str) -> IssuerResult:
        self.calls += 1
        raise self.answers.pop(0)

    def burn(
        self, owner: str, sats: int, *, reason: str, command_id: str, inputs: Sequence[str] = ()
    ) -> IssuerResult:
        return self.mint(owner, sats, reason=reason, command_id=command_id)


def test_definite_refusals_do_not_open_the_breaker_and_lost_answers_do() -> None:
    registry = Breakers({}, default=BreakerSettings(window=4, min_calls=2, open_s=3600))
    refusing = Answering([IssuerRejectedError("insufficient holdings") for _ in range(6)])
    guarded = GuardedIssuer(refusing, registry=registry)  # type: ignore[arg-type]
    for _ in range(6):
        with pytest.raises(IssuerRejectedError):
            guarded.burn("treasury", 1, reason="r", command_id="c")
    assert registry.get("ledger").state == "closed"

    lost = Answering([IssuerOutcomeUnknownError("timeout") for _ in range(2)])
    guarded = GuardedIssuer(lost, registry=registry)  # type: ignore[arg-type]
    for _ in range(2):
        with pytest.raises(IssuerOutcomeUnknownError):
            guarded.mint("treasury", 1, reason="r", command_id="c")
    assert registry.get("ledger").state == "open"
    with pytest.raises(BreakerOpenError):
        guarded.mint("treasury", 1, reason="r", command_id="c")
    assert lost.calls == 2  # refused before the call
    assert not issuer_failure(IssuerRejectedError("no"))
    assert issuer_failure(IssuerOutcomeUnknownError("?"))


def test_the_router_part_waits_for_the_ledger_breaker() -> None:
    assert router_part(None).flows == ("ledger",)  # type: ignore[arg-type]
