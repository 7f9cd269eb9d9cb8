"""The mint guard's model tied to the code: spin's counterexample for a mutant is replayed against
the real services, with the same mutation applied to the code, and the code misbehaves the same
way; the unmutated code, driven through the very same schedule, does not.

How: spin refutes ``verification/mint_guard.pml`` under ``MUTANT_GUARD_OUTSIDE_TX`` (record_mint's
figures read in a transaction of their own, before the one that records the mint), with three
deposits, no redemption, no operator's payout nor excess Bitcoin and no lost answer, so that the
schedule involves deposits only. The model prints one ``EV <event> <n>`` line per step it takes;
the replay of the counterexample (``spin -t``) is read back and each event is done in a small
world of real services (the sandbox custody wallet, the in-memory chain and the watcher, SQLite,
the embedded ledger with its issuer, the deposit operation's step functions;
``tests/integration/issuance_deposit_world``):

* ``confirm d``: a deposit of one unit (``SATS``) is paid to the customer's address and confirmed
  by the watcher, which opens its ``bitcoin_deposit`` operation;
* ``reserve d``: the operation's ``kyc`` and ``reserve`` steps (the output becomes credited);
* ``read k``: the mutated code reads the guard's figures and the ledger's supply now (in a
  transaction of its own); the code as it is reads nothing here;
* ``commit k``/``sent k``: the operation's ``mint`` step (record_mint, then send_mint); mutated,
  record_mint compares against what ``read k`` saw (``SqlIssuanceRepository.guard_figures`` and
  the issuer's ``supply`` answer that, by monkeypatch);
* ``reorg d``: the chain drops the deposit's transaction and the watcher rolls the reorg back
  (minting halts: the deposit was credited);
* ``resume``: an operator resumes minting.

The mutated code ends with the supply above the reserves less pending redemptions, as the model
does (its assertion P1); the code as it is refuses the last mint (MintGuardError: the step fails,
minting halts) and the supply stays within the reserves.

The redemption model is tied the same way: spin refutes ``verification/redemption.pml`` under
``MUTANT_COMPENSATE_UNCHECKED`` (the compensation and the remint step do not look at the payout's
final state) with no crash, reorg, eviction or bump, and its counterexample is replayed against
the router with ``issuance_redeem.DEFINITION``, the payout worker, the chain and the embedded
ledger (the world of ``tests/integration/test_issuance_redeem``), the router running one step at a
time. The same mutation applied to the code (``issuance_redeem.cancel_payout`` cancels nothing
and ``_unpaid_for_good`` answers "not completed") re-mints and then pays the same redemption; the
code as it is cancels the queued payout before the re-mint, so nothing is paid.

Last, the two gaps spin found in the operators' payout check (``btc_payouts._dips_into_backing``
as it was: no check while the supply is 0, though redemptions are pending; a redemption waiting
for its re-mint owed nowhere) are driven on the services: the payout each gap let through is
refused now (the check was fixed after spin found them).

Why this approach rather than driving the services through random traces of the model and
comparing states: a replay needs only the mapping of the events of one schedule, and the world
the integration tests already build; a conformance test would also need every model state mapped
to the database's (amounts, statuses, the halt switch, the operations' steps) and a trace
generator, more machinery to keep honest than the models themselves. The replay tests what
matters most: that the hazard the model finds is a hazard of the code, and that the code as it
is closes it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.errors import MintGuardError
from sluice.ports import UnitOfWorkFactory
from sluice.ports.issuance import GuardFigures, MintRecord
from sluice.services import issuance_deposit, issuance_redeem
from sluice.services.btc_payouts import PayoutView, get_payout, list_payouts, request_payout
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_overrides import compensate_operation
from sluice.services.issuance_router import StepOutcome
from sluice.services.issuance_settings import IssuanceSettings
from sluice.services.mint_guard import guard_status, halt_minting, record_mint, resume_minting
from sluice.store.issuance_repository import SqlIssuanceRepository
from tests.integration.issuance_deposit_world import CHAIN, World
from tests.integration.test_issuance_redeem import (
    CONFIRMATIONS,
    DEFINITIONS,
    SETTINGS,
    destination,
)
from tests.integration.test_issuance_redeem import World as RedemptionWorld
from tests.verification.spin import run_spin

MODEL = Path(__file__).resolve().parents[2] / "verification" / "mint_guard.pml"
MUTANT = "MUTANT_GUARD_OUTSIDE_TX"
BOUNDS = ("ND=3", "REDEMPTIONS=0", "PAYOUTS=0", "EXCESS=0", "CRASHES=0")
SATS = 125_000  # one unit of the model
EVENT = re.compile(r"^\s*EV (\w+)(?: (\d+))?\s*$", re.MULTILINE)
KNOWN = {"confirm", "reserve", "read", "commit", "sent", "reorg", "resume"}

Event = tuple[str, int]


@pytest.fixture(scope="module")
def counterexample(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    result = run_spin(MODEL, defines=(MUTANT, *BOUNDS), work_dir=tmp_path_factory.mktemp("pan"))
    assert result.errors == 1, result.output
    assert result.trail is not None
    assert "assertion violated (supply<=(reserves-pending))" in result.output
    events = [(m.group(1), int(m.group(2) or -1)) for m in EVENT.finditer(result.trail)]
    unknown = {name for name, _ in events} - KNOWN
    assert not unknown, f"the replay does not know the model's events {unknown}: {events}"
    assert events[-1][0] == "commit", events
    return events


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    custody = create_sandbox_custody(tmp_path_factory.mktemp("custody") / "keys", CHAIN)
    return EmbitCustodyWallet(custody.descriptor, CHAIN, load_signing_keys(custody.key_files))


@pytest.fixture
def world(tmp_path: Path, wallet: EmbitCustodyWallet) -> Iterator[World]:
    db = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    world = World(db, wallet, KycRegistry())
    world.customer("alice")
    yield world
    db.dispose()


@dataclass
class Replay:
    """The model's events done in ``world``; ``mutated`` applies the mutant's change to
    record_mint (its figures read before its transaction)."""

    world: World
    mutated: bool
    monkeypatch: pytest.MonkeyPatch
    operations: dict[int, str] = field(default_factory=dict)
    read: dict[int, tuple[GuardFigures, int]] = field(default_factory=dict)
    minted: dict[int, StepOutcome] = field(default_factory=dict)

    def run(self, events: list[Event]) -> None:
        for name, n in events:
            getattr(self, f"on_{name}")(n)

    def on_confirm(self, deposit: int) -> None:
        self.operations[deposit] = self.world.deposit("alice", SATS, sender=deposit + 1)

    def on_reserve(self, deposit: int) -> None:
        op = self.world.operation(self.operations[deposit])
        assert issuance_deposit.kyc(self.world.ctx, op).kind == "done"
        assert issuance_deposit.reserve(self.world.ctx, op).kind == "done"

    def on_read(self, key: int) -> None:
        if not self.mutated:
            return  # the code as it is reads the figures inside the mint's transaction
        ledger_supply = self.world.issuer.supply()
        with self.world.db.uow() as uow:
            self.read[key] = (uow.issuance.guard_figures(), ledger_supply)

    def on_commit(self, key: int) -> None:
        op = self.world.operation(self.operations[key])  # the model's key is its deposit
        with self.monkeypatch.context() as patch:
            if self.mutated:
                figures, ledger_supply = self.read[key]
                patch.setattr(SqlIssuanceRepository, "guard_figures", lambda *_a, **_k: figures)
                patch.setattr(self.world.issuer, "supply", lambda: ledger_supply)
            self.minted[key] = issuance_deposit.mint(self.world.ctx, op)

    def on_sent(self, key: int) -> None:
        assert self.minted[key].kind == "done", self.minted[key]
        mint = self.world.mint(self.operations[key])
        assert mint is not None and mint.status == "committed"

    def on_reorg(self, deposit: int) -> None:
        chain = self.world.chain
        txid = self.operations[deposit].split(":")[1]
        height = chain.getblock(chain.getrawtransaction(txid)["blockhash"])["height"]
        chain.reorg(chain.tip_height - height + 1, drop_txids=[txid])
        assert self.world.watcher.run_once().reorgs == 1

    def on_resume(self, _: int) -> None:
        resume_minting(self.world.db.uow, reason="replayed", actor="officer", at=self.world.clock())


def headroom_sats(world: World) -> int:
    """reserves − pending − supply, as the guard counts them now."""
    return int(guard_status(world.ctx)["headroom_sats"])


def test_the_counterexample_is_a_race_of_two_mints_after_a_reorg_and_a_resume(
    counterexample: list[Event],
) -> None:
    names = [name for name, _ in counterexample]
    assert "reorg" in names and "resume" in names
    last = counterexample[-1][1]
    # The last mint read its figures before the mint committed just before it.
    read_at = counterexample.index(("read", last))
    assert any(name == "commit" for name, _ in counterexample[read_at:-1])


def test_the_mutated_code_mints_above_the_reserves_like_the_mutant(
    world: World, counterexample: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    replay = Replay(world, mutated=True, monkeypatch=monkeypatch)
    replay.run(counterexample)
    last = counterexample[-1][1]
    assert replay.minted[last].kind == "done", replay.minted[last]
    status = guard_status(world.ctx)
    assert status["supply_sats"] > status["reserves_sats"] - status["pending_redemptions_sats"]
    assert headroom_sats(world) < 0
    commits = [n for name, n in counterexample if name == "commit"]
    recorded = [world.mint(op_id) for op_id in replay.operations.values()]
    assert len([m for m in recorded if m is not None]) == len(commits)


def test_the_code_refuses_the_same_schedules_last_mint(
    world: World, counterexample: list[Event], monkeypatch: pytest.MonkeyPatch
) -> None:
    replay = Replay(world, mutated=False, monkeypatch=monkeypatch)
    replay.run(counterexample)
    last = counterexample[-1][1]
    refused = replay.minted[last]
    assert refused.kind == "fail" and "would take the supply" in (refused.error or "")
    assert world.mint(replay.operations[last]) is None
    assert world.halted()
    assert headroom_sats(world) >= 0


# --- the redemption model's counterexample -------------------------------------------------------

REDEMPTION_MODEL = MODEL.parent / "redemption.pml"
REDEMPTION_MUTANT = "MUTANT_COMPENSATE_UNCHECKED"
REDEMPTION_BOUNDS = ("CRASHES=0", "REORGS=0", "EVICTIONS=0", "BUMPS=0")
REDEEMED_SATS = 300_000
REDEMPTION_EVENTS = {
    "burned",
    "payout_requested",
    "compensated",
    "compensation_refused",
    "to_remint",
    "reminted",
    "completed",
    "batched",
    "broadcast",
    "recorded",
    "mine",
    "deep",
}


@pytest.fixture(scope="module")
def redemption_counterexample(tmp_path_factory: pytest.TempPathFactory) -> list[Event]:
    result = run_spin(
        REDEMPTION_MODEL,
        defines=(REDEMPTION_MUTANT, *REDEMPTION_BOUNDS),
        work_dir=tmp_path_factory.mktemp("pan"),
    )
    assert result.errors == 1, result.output
    assert "!((ledger_remint&&ever_paid))" in result.output
    assert result.trail is not None
    events = [(m.group(1), int(m.group(2) or -1)) for m in EVENT.finditer(result.trail)]
    unknown = {name for name, _ in events} - REDEMPTION_EVENTS
    assert not unknown, f"the replay does not know the model's events {unknown}: {events}"
    return events


@pytest.fixture
def redemption_world(tmp_path: Path, wallet: EmbitCustodyWallet) -> Iterator[RedemptionWorld]:
    db = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    world = RedemptionWorld(db, wallet)
    # One step a run: the model's events are the router's steps.
    world.ctx = replace(world.ctx, settings=IssuanceSettings(steps_per_round=1))
    world.router.ctx = world.ctx
    world.customer("alice")
    world.give_istsi("alice", 1_000_000)
    world.fund_custody(2_000_000)
    yield world
    db.dispose()


@dataclass
class RedemptionReplay:
    """The redemption model's events done in ``world``; ``mutated`` applies the mutant's change:
    the compensation cancels nothing and neither it nor the remint step looks at whether the
    payout can still be paid."""

    world: RedemptionWorld
    mutated: bool
    monkeypatch: pytest.MonkeyPatch
    operation_id: str = ""
    paid_batches: set[int] = field(default_factory=set)
    compensation_refused: bool = False

    def run(self, events: list[Event]) -> None:
        if self.mutated:
            self.monkeypatch.setattr(issuance_redeem, "cancel_payout", _cancel_nothing)
            self.monkeypatch.setattr(issuance_redeem, "_unpaid_for_good", _not_completed)
        self.operation_id = self.world.redeem(REDEEMED_SATS).id
        for name, n in events:
            getattr(self, f"on_{name}")(n)

    def step(self) -> str:
        return self.world.run(self.operation_id).step

    def on_burned(self, _: int) -> None:
        assert self.step() == "payout"
        self.world.book_burn(self.world.operation(self.operation_id))

    def on_payout_requested(self, _: int) -> None:
        assert self.step() == "confirm"

    def on_compensated(self, _: int) -> None:
        moved = compensate_operation(
            self.world.ctx, DEFINITIONS, self.operation_id, reason="replayed", actor="operator"
        )
        assert moved.step == "remint", moved

    def on_compensation_refused(self, _: int) -> None:
        self.compensation_refused = True

    def on_to_remint(self, _: int) -> None:
        assert self.step() == "remint"

    def on_reminted(self, _: int) -> None:
        self.step()  # record_mint and send_mint; it waits for ingestion to credit it
        self.world.book_remint(self.world.operation(self.operation_id))
        assert self.world.run(self.operation_id).status == "compensated"

    def on_completed(self, _: int) -> None:
        assert self.world.run(self.operation_id).status == "completed"

    def on_batched(self, batch: int) -> None:
        if batch not in self.paid_batches:  # the worker batches, signs, records and sends
            self.paid_batches.add(batch)
            self.world.pay()

    def on_broadcast(self, _: int) -> None:
        pass  # done by the worker's round of on_batched

    def on_recorded(self, _: int) -> None:
        pass

    def on_mine(self, _: int) -> None:
        self.world.mine()

    def on_deep(self, _: int) -> None:
        self.world.mine(CONFIRMATIONS)
        self.world.pay()

    def payout(self) -> PayoutView:
        view = get_payout(self.world.db.uow, issuance_redeem.payout_id_of(self.operation_id))
        assert view is not None
        return view

    def reminted(self) -> bool:
        with self.world.db.uow() as uow:
            mint = uow.issuance.get_mint(issuance_redeem.remint_id_of(self.operation_id))
        return mint is not None and mint.status == "committed"


def _cancel_nothing(uow_factory: UnitOfWorkFactory, *, payout_id: str, **_: object) -> PayoutView:
    view = get_payout(uow_factory, payout_id)
    assert view is not None
    return view


def _not_completed(view: PayoutView) -> bool:
    return view.status != "completed"


def test_the_redemption_counterexample_remints_before_the_payout_is_mined(
    redemption_counterexample: list[Event],
) -> None:
    names = [name for name, _ in redemption_counterexample]
    assert names.index("compensated") < names.index("reminted") < len(names)
    assert names[-1] == "mine"


def test_the_mutated_code_pays_and_remints_one_redemption_like_the_mutant(
    redemption_world: RedemptionWorld,
    redemption_counterexample: list[Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replay = RedemptionReplay(redemption_world, mutated=True, monkeypatch=monkeypatch)
    replay.run(redemption_counterexample)
    _, script = destination(redemption_world.wallet, "dest")
    assert len(redemption_world.paid_to(script)) == 1  # paid on the chain
    assert replay.reminted()  # and the customer's iSTSi minted back


def test_the_code_cancels_the_payout_before_the_remint_on_the_same_schedule(
    redemption_world: RedemptionWorld,
    redemption_counterexample: list[Event],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replay = RedemptionReplay(redemption_world, mutated=False, monkeypatch=monkeypatch)
    replay.run(redemption_counterexample)
    _, script = destination(redemption_world.wallet, "dest")
    assert replay.reminted()
    assert replay.payout().status == "cancelled"
    assert redemption_world.paid_to(script) == []  # never paid


# --- the gaps spin found in the operators' payout check, on the code ------------------------------
#
# The mint guard model refutes P3 with btc_payouts._dips_into_backing as it was (the mutants
# MUTANT_PAYOUT_ZERO_SUPPLY_EXEMPT and MUTANT_PAYOUT_REMINT_UNOWED; docs/verification.md, "Two
# gaps found in the operators' payout check"). The payouts each gap let through are refused now.


def check_operator_payout_refused(world: RedemptionWorld, sats: int) -> None:
    """An operator's payout of ``sats`` is refused for the backing (MintGuardError), and
    nothing is queued."""
    with pytest.raises(MintGuardError, match="would spend Bitcoin that is owed"):
        _operator_payout(world, sats)
    assert [p for p in list_payouts(world.db.uow) if p.kind == "operator"] == []


def _operator_payout(world: RedemptionWorld, sats: int) -> PayoutView:
    return request_payout(
        world.db.uow,
        world.wallet,
        SETTINGS,
        payout_id="ops-1",
        address=destination(world.wallet, "ops")[0],
        amount_sats=sats,
        kind="operator",
        requested_by="ops",
        clock=world.clock,
    )


def test_an_operators_payout_may_not_take_the_bitcoin_of_pending_redemptions_at_zero_supply(
    tmp_path: Path, wallet: EmbitCustodyWallet
) -> None:
    db = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    try:
        world = RedemptionWorld(db, wallet)
        world.customer("alice")
        world.give_istsi("alice", 1_000_000)  # on the ledger: our records' supply stays 0
        world.fund_custody(400_000)
        op = world.redeem(300_000)
        world.run(op.id)  # burned: the records' supply is now below 0, 300,000 pending
        # 390,000 would leave 10,000 sats for the 300,000 owed to the redemption.
        check_operator_payout_refused(world, 390_000)
    finally:
        db.dispose()


def test_an_operators_payout_may_not_take_the_bitcoin_a_remint_waits_for(
    tmp_path: Path, wallet: EmbitCustodyWallet
) -> None:
    db = bootstrap.database(f"sqlite:///{tmp_path / 'sluice.db'}")
    try:
        world = RedemptionWorld(db, wallet)
        world.customer("alice")
        world.fund_custody(1_000_000)
        recorded = MintRecord(
            id="issuance:earlier:mint",
            operation_id="earlier",
            customer_id="alice",
            owner=world.treasury,
            amount_sats=700_000,
            reason="issuance:earlier",
            status="submitted",
            created_at=world.clock(),
        )
        record_mint(world.ctx, recorded, actor="test")  # 700,000 in our records' supply
        world.give_istsi("alice", 1_000_000)
        op = world.redeem(300_000)
        world.run(op.id)  # burned: supply 400,000
        halt_minting(db.uow, reason="test", kind="test", details={}, at=world.clock(), actor="test")
        moved = compensate_operation(
            world.ctx, DEFINITIONS, op.id, reason="customer asked", actor="operator"
        )
        assert moved.step == "remint"
        assert world.run(op.id).step == "remint"  # waits while minting is halted
        # 400,000 supply + 300,000 to re-mint are owed out of 1,000,000 sats of reserves.
        check_operator_payout_refused(world, 600_000)
    finally:
        db.dispose()
