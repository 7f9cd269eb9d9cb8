"""The router and ingestion booking the same mint or burn write its event exactly once.

Both may move a mint (or a burn) record to ``committed``: the router with the ledger's answer to
its command, ingestion with the ledger's update naming the record. In ``sluice serve`` they run
on two threads, each on its own database connection, so on PostgreSQL one may read the record
``submitted`` while the other is booking it. The interleavings are made deterministic here by
running one side inside the other at the point that matters (no sleeps):

* ingestion reads the batch's records (``issuance_books_for``: ``submitted``), then the router
  records the ledger's answer and commits (on another connection), then ingestion flushes and
  commits — the batch's snapshot is stale, yet it writes no second event;
* the router sends, ingestion books the update and commits before the answer comes back, then
  the router records the answer — it writes no second event.

Each event carries the operation's correlation id; ingestion's is at the update's record time.
Real parts: the embedded ledger with iSTSi and its issuer, the Integration DB, ingestion, the
router with every operation type (the deposit world of ``test_ingestion_issuance``).
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
from sluice.domain.events import Event
from sluice.ports.issuance import IssuerOutcomeUnknownError, IssuerResult
from sluice.services import ingestion as ingestion_module
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_deposit import mint_id
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_redeem import burn_id_of, request_redemption
from sluice.services.issuance_router import IssuanceRouter
from tests.integration import test_ingestion_issuance as ingestion_books
from tests.integration.test_ingestion_issuance import CHAIN, SATS, SETTINGS, Books, destination


def make_world(url: str, wallet: EmbitCustodyWallet) -> Books:
    world = Books(
        bootstrap.database(url),
        wallet,
        KycRegistry(),
        FakeChain(CHAIN, fee_rate_sat_vb=Decimal(5)),
        settings=SETTINGS,
    )
    world.customer("alice")
    return world


@pytest.fixture
def pg_world(postgres_url: str, wallet: EmbitCustodyWallet) -> Iterator[Books]:
    world = make_world(postgres_url, wallet)
    yield world
    world.db.dispose()


@pytest.fixture
def any_world(database_url: str, wallet: EmbitCustodyWallet) -> Iterator[Books]:
    world = make_world(database_url, wallet)
    yield world
    world.db.dispose()


wallet = ingestion_books.wallet


def outbox(world: Books, type: str) -> list[Event]:
    with world.db.uow() as uow:
        return [row.event for row in uow.events.find(limit=100_000, type=type)]


class LosingAnswers:
    """The world's issuer whose first mint and first burn commit on the ledger but whose answer
    is lost (:class:`IssuerOutcomeUnknownError`); later calls answer (the ledger's command
    deduplication answers the first result). ``before_answer`` runs after the ledger committed
    and before the answer is returned."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.lose = {"mint": 1, "burn": 1}
        self.answers: list[IssuerResult] = []
        self.before_answer: Any = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def _answer(self, kind: str, result: IssuerResult) -> IssuerResult:
        self.answers.append(result)
        if self.lose[kind] > 0:
            self.lose[kind] -= 1
            raise IssuerOutcomeUnknownError(f"the {kind}'s answer was lost")
        if self.before_answer is not None:
            hook, self.before_answer = self.before_answer, None
            hook()
        return result

    def mint(self, owner: str, sats: int, *, reason: str, command_id: str) -> IssuerResult:
        result = self.inner.mint(owner, sats, reason=reason, command_id=command_id)
        return self._answer("mint", result)

    def burn(
        self, owner: str, sats: int, *, reason: str, command_id: str, inputs: Sequence[str] = ()
    ) -> IssuerResult:
        result = self.inner.burn(owner, sats, reason=reason, command_id=command_id, inputs=inputs)
        return self._answer("burn", result)


def router_on(world: Books, issuer: Any) -> IssuanceRouter:
    return IssuanceRouter(replace(world.ctx, issuer=issuer), DEFINITIONS)


def ingest_with_router_between(
    world: Books, monkeypatch: pytest.MonkeyPatch, run_router: Any
) -> list[str]:
    """Ingest; once the batch has read the router's records (and before it books them), run
    ``run_router`` (its own connections, committed). Answers the statuses the batch read."""
    real = ingestion_module.issuance_books_for
    read: list[str] = []

    def books_then_router(uow: Any, steps: Any, party: str) -> Any:
        books = real(uow, steps, party)
        if (books.mints or books.burns) and not read:
            read.extend(r.status for r in [*books.mints.values(), *books.burns.values()])
            run_router()
        return books

    monkeypatch.setattr(ingestion_module, "issuance_books_for", books_then_router)
    world.ingest()
    monkeypatch.setattr(ingestion_module, "issuance_books_for", real)
    return read


def test_a_mint_the_router_commits_while_ingestion_books_it_has_one_event(
    pg_world: Books, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = pg_world
    issuer = LosingAnswers(world.issuer)
    router = router_on(world, issuer)
    op_id = world.deposit("alice", SATS)
    lost = router.run_operation(op_id)
    assert (lost.status, lost.step, lost.attempts) == ("pending", "mint", 1)
    mint = world.mint(op_id)
    assert mint is not None and mint.status == "submitted"

    def router_answers() -> None:
        moved = router.run_operation(op_id)
        assert (moved.status, moved.step) == ("waiting", "credit")
        committed = world.mint(op_id)
        assert committed is not None and committed.status == "committed"
        assert len(outbox(world, "istsi_minted")) == 1

    read = ingest_with_router_between(world, monkeypatch, router_answers)
    assert read == ["submitted"]  # the batch's snapshot was stale when it flushed

    minted = outbox(world, "istsi_minted")
    assert len(minted) == 1
    (event,) = minted
    assert event.payload["mint_id"] == mint_id(op_id)
    assert event.payload["update_id"] == issuer.answers[0].update_id
    assert event.correlation_id == world.operation(op_id).correlation_id
    booked = world.mint(op_id)
    assert booked is not None
    assert (booked.status, booked.credited, booked.update_id) == (
        "committed",
        True,
        issuer.answers[0].update_id,
    )
    assert router.run_operation(op_id).status == "completed"
    world.ingest()
    assert len(outbox(world, "istsi_minted")) == 1
    world.books_hold()


def test_a_burn_the_router_commits_while_ingestion_books_it_has_one_event(
    pg_world: Books, monkeypatch: pytest.MonkeyPatch
) -> None:
    world = pg_world
    world.deposit_credited("alice", SATS)
    issuer = LosingAnswers(world.issuer)
    issuer.lose["mint"] = 0
    router = router_on(world, issuer)
    redemption = request_redemption(
        world.ctx,
        customer_id="alice",
        amount_sats=150_000,
        address=destination(world.wallet),
        idempotency_key="k1",
        actor="customer:alice",
    )
    lost = router.run_operation(redemption.id)
    assert (lost.status, lost.step, lost.attempts) == ("pending", "burn", 1)

    def router_answers() -> None:
        moved = router.run_operation(redemption.id)
        assert moved.step in ("payout", "confirm"), moved
        assert len(outbox(world, "istsi_burned")) == 1

    read = ingest_with_router_between(world, monkeypatch, router_answers)
    assert read == ["submitted"]

    burned = outbox(world, "istsi_burned")
    assert len(burned) == 1
    (event,) = burned
    assert event.payload["burn_id"] == burn_id_of(redemption.id)
    assert event.payload["update_id"] == issuer.answers[0].update_id
    assert event.correlation_id == redemption.correlation_id
    with world.db.uow() as uow:
        burn = uow.issuance.get_burn(burn_id_of(redemption.id))
    assert burn is not None
    assert (burn.status, burn.update_id) == ("committed", issuer.answers[0].update_id)
    world.ingest()
    assert len(outbox(world, "istsi_burned")) == 1
    world.books_hold()


def test_a_mint_ingestion_books_before_the_routers_answer_has_one_event_at_its_record_time(
    any_world: Books,
) -> None:
    world = any_world
    issuer = LosingAnswers(world.issuer)
    issuer.lose["mint"] = 0
    issuer.before_answer = world.ingest  # the update is booked while the answer travels
    router = router_on(world, issuer)
    op_id = world.deposit("alice", SATS)
    moved = router.run_operation(op_id)
    assert moved.status == "completed", moved.last_error  # credited by then

    minted = outbox(world, "istsi_minted")
    assert len(minted) == 1
    (event,) = minted
    (answer,) = issuer.answers
    assert event.payload["update_id"] == answer.update_id
    assert event.correlation_id == world.operation(op_id).correlation_id
    assert event.occurred_at == answer.record_time  # the update's record time, not the clock
    world.books_hold()


def test_a_burn_ingestion_books_before_the_routers_answer_has_one_event_with_its_correlation_id(
    any_world: Books,
) -> None:
    world = any_world
    world.deposit_credited("alice", SATS)
    issuer = LosingAnswers(world.issuer)
    issuer.lose = {"mint": 0, "burn": 0}
    issuer.before_answer = world.ingest
    router = router_on(world, issuer)
    redemption = request_redemption(
        world.ctx,
        customer_id="alice",
        amount_sats=150_000,
        address=destination(world.wallet),
        idempotency_key="k1",
        actor="customer:alice",
    )
    router.run_operation(redemption.id)
    burned = outbox(world, "istsi_burned")
    assert len(burned) == 1
    (event,) = burned
    (answer,) = issuer.answers
    assert event.payload["update_id"] == answer.update_id
    assert event.correlation_id == redemption.correlation_id
    assert event.occurred_at == answer.record_time
