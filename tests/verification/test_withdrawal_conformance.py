"""The withdrawal model and the code misbehave alike: a mutant's counterexample replayed on code.

spin finds the shortest counterexample of two of the model's mutants. Replayed by ``spin -t``,
the model prints each step with the state after it (``STEP <name> now=... status=...
attempt=... committed=... refunds=...``). This test drives the real services through the same
steps, in the same order, on a :class:`~sluice.sandbox.Sandbox` (SQLite, the embedded ledger and
its faults):

* ``MUTANT_RETRY_FRESH_INPUTS`` (a retry that chooses its inputs afresh instead of spending its
  anchor). With the same mutation applied to the code (``WithdrawalWorker._settle`` queues the
  retry without its anchor, which stays reserved so that the retry's selection takes other
  holdings), the code follows the model step by step — the record's status, attempt and credits
  back after each DB step, the transfers committed on the ledger after each ledger step — and
  ends as the model does: two transfers for one withdrawal. Without the mutation, the same steps
  pay once: the retry spends the anchor, and the late first attempt is refused by the ledger.
* ``MUTANT_REFUND_WITHOUT_FENCE`` (a credit back once the last attempt's ``trec_tgt`` has passed).
  With the same mutation (``Withdrawal.may_have_left`` always false), the code follows the model
  and ends paid and credited back; without it, the same steps fence the anchor instead, and
  ingestion completes the withdrawal when it reads the late transfer: no credit back.

Each model step maps to one call (``STEP_ACTIONS``); a step the mapping does not know fails the
test, so a change of the model that the code cannot follow shows here.

Why this rather than a conformance test over random traces: the replay needs only this mapping
from step names to calls, and it checks exactly the claim the model's mutants make — that the
rule spin says matters is the rule that keeps the code from paying twice. A random-trace
conformance test would need a Python stepper of the whole model beside the mapping, and most of
its traces would repeat what tests/integration/test_withdrawal*.py already check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sluice.domain.ledger import Cursor
from sluice.domain.withdrawals import Withdrawal
from sluice.ports import WithdrawalRepository
from sluice.sandbox import Sandbox
from sluice.services.withdrawals import WithdrawalSettings, WithdrawalWorker, WorkerTick
from tests.integration.test_withdrawals import balance, fund, ledger_view, record
from tests.verification.spin import run_spin

MODEL = Path(__file__).resolve().parents[2] / "verification" / "withdrawal.pml"
# One worker and the faults the counterexample needs, so that its trail is the short story.
ATTEMPTS_MAX = 2
BOUNDS = (
    "WORKERS=1",
    f"AMAX={ATTEMPTS_MAX}",
    "CRASHES=0",
    "FAULTS=1",
    "LATE=1",
    "OTHERS=0",
    "TMAX=8",
)
SPAN = 2  # the model's trec_span_s, in record-time steps (the model's default)
# The customer deposits 500 and 300 (two holdings, each covers the withdrawal) and withdraws 120.
AMOUNT = Decimal(120)
BALANCE_DEBITED = Decimal(800) - AMOUNT

_STEP = re.compile(
    r"STEP\s+(?P<name>[\w-]+)\s+now=(?P<now>\d+)\s+status=(?P<status>\w+)\s+attempt=(?P<attempt>\d+)"
    r"\s+committed=(?P<committed>\d+)\s+refunds=(?P<refunds>\d+)"
)


@dataclass(frozen=True)
class Step:
    """One step of the model's trail, with the model's state after it."""

    name: str
    now: int  # the model's record time
    status: str
    attempt: int
    committed: int
    refunds: int


def model_steps(trail: str) -> list[Step]:
    return [
        Step(
            name=match["name"],
            now=int(match["now"]),
            status=match["status"].lower(),
            attempt=int(match["attempt"]),
            committed=int(match["committed"]),
            refunds=int(match["refunds"]),
        )
        for match in _STEP.finditer(trail)
    ]


def shortest_counterexample(work_dir: Path, *defines: str) -> list[Step]:
    result = run_spin(MODEL, defines=(*BOUNDS, *defines), work_dir=work_dir, shortest=True)
    assert result.errors == 1 and result.printed is not None, result.output
    steps = model_steps(result.printed)
    assert steps, result.trail
    return steps


@pytest.fixture(scope="module")
def counterexample(tmp_path_factory: pytest.TempPathFactory) -> list[Step]:
    steps = shortest_counterexample(
        tmp_path_factory.mktemp("spin"), "MUTANT_RETRY_FRESH_INPUTS", "CHECK_ONE_TRANSFER"
    )
    assert steps[-1].committed == 2, steps
    return steps


@pytest.fixture(scope="module")
def refund_counterexample(tmp_path_factory: pytest.TempPathFactory) -> list[Step]:
    steps = shortest_counterexample(
        tmp_path_factory.mktemp("spin"), "MUTANT_REFUND_WITHOUT_FENCE", "CHECK_NO_REFUND_OF_PAID"
    )
    assert (steps[-1].committed, steps[-1].refunds) == (1, 1), steps
    return steps


def retry_with_fresh_inputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's MUTANT_RETRY_FRESH_INPUTS applied to the code: a retry is queued without its
    anchor. The anchor stays reserved (as the model's holding stays spent by the attempt that
    may still commit), so the retry's selection takes other holdings."""
    original = WithdrawalWorker._settle

    class FreshInputs:
        def __init__(self, repo: WithdrawalRepository) -> None:
            self._repo = repo

        def __getattr__(self, name: str) -> Any:
            return getattr(self._repo, name)

        def update(self, withdrawal: Withdrawal) -> None:
            if withdrawal.status == "queued" and withdrawal.inputs:
                withdrawal = replace(withdrawal, inputs=())
            self._repo.update(withdrawal)

    def mutated(
        self: WithdrawalWorker,
        repo: WithdrawalRepository,
        withdrawal: Withdrawal,
        cursor: Cursor,
        tick: WorkerTick,
    ) -> Withdrawal | None:
        return original(self, FreshInputs(repo), withdrawal, cursor, tick)  # type: ignore[arg-type]

    monkeypatch.setattr(WithdrawalWorker, "_settle", mutated)


def refund_without_fence(monkeypatch: pytest.MonkeyPatch) -> None:
    """The model's MUTANT_REFUND_WITHOUT_FENCE applied to the code: a record whose last attempt
    expired unseen is credited back at once, as if no attempt could have left."""
    monkeypatch.setattr(Withdrawal, "may_have_left", lambda _self: False)


class Replay:
    """The code driven through the model's steps, for one withdrawal."""

    def __init__(self, sb: Sandbox) -> None:
        self.sb = sb
        fund(sb, "cust-0", "500", "300")
        self.worker = sb.withdrawal_worker()
        self.withdrawal_id = ""
        # The model's record time n is the ledger's time_zero + n * time_unit_s.
        self.time_zero = sb.clock()
        self.time_unit_s = 0.0
        self.last_delivery_committed: bool | None = None

    def tick(self) -> WorkerTick:
        return WorkerTick()

    # --- the steps --------------------------------------------------------------------------

    def reserve(self, step: Step) -> None:
        if not self.withdrawal_id:
            # request_withdrawal reserves at once when free holdings cover the amount.
            requested = self.sb.withdraw("cust-0", str(AMOUNT), key="k1")
            self.withdrawal_id = requested.id
            assert requested.trec_tgt is not None
            reserved_at = self.sb.clock()
            self.time_unit_s = (requested.trec_tgt - reserved_at).total_seconds() / SPAN
            self.time_zero = reserved_at - timedelta(seconds=step.now * self.time_unit_s)
        else:
            self.worker.reserve_queued(self.tick())

    def submit(self, fault: Callable[[], None] | None) -> None:
        if fault is not None:
            fault()
        self.worker.submit_reserved(self.tick())

    def settle(self) -> None:
        self.worker.settle_expired(self.tick())

    def advance(self, step: Step) -> None:
        """A checkpoint at the model's record time (commits in between moved the ledger's record
        time by a microsecond each: their order is the model's)."""
        moment = self.time_zero + timedelta(seconds=step.now * self.time_unit_s)
        if moment > self.sb.clock():
            self.sb.ledger.set_time(moment)
        self.sb.ledger.checkpoint()

    def ingest(self) -> None:
        self.sb.ingest()

    def deliver_late(self) -> None:
        (delivered,) = self.sb.ledger.faults.deliver_late_commits(1)
        self.last_delivery_committed = delivered.committed

    def committed(self) -> int:
        return ledger_view(self.sb).paid(self.withdrawal_id)

    def refunds(self) -> int:
        """Credits back of the withdrawal: the customer's balance back up by its amount."""
        return int((balance(self.sb, "cust-0") - BALANCE_DEBITED) / AMOUNT)

    def status(self) -> tuple[str, int]:
        current = record(self.sb, self.withdrawal_id)
        return current.status, current.attempt


def step_actions(replay: Replay) -> dict[str, Callable[[Step], None]]:
    faults = replay.sb.ledger.faults

    def ignore(_step: Step) -> None:
        pass

    def submit(fault: Callable[[], None] | None) -> Callable[[Step], None]:
        return lambda _step: replay.submit(fault)

    return {
        "reserve": replay.reserve,
        # The worker's claim, call and record are one submit_reserved; it runs at the call.
        "claim": ignore,
        "call-commit": submit(None),
        "call-commit-unanswered": submit(faults.drop_next_responses),
        "call-reject": submit(None),
        "call-reject-fault": submit(faults.fail_next_commands),
        "call-lost": submit(faults.late_commit_next),
        "record": ignore,
        "settle": lambda _step: replay.settle(),
        "tick": replay.advance,
        "ingest": lambda _step: replay.ingest(),
        "late-commit": lambda _step: replay.deliver_late(),
        "pending-commit": lambda _step: replay.deliver_late(),
    }


# After these steps the DB is where the model is; after the claim and the call the model is in
# ``submitting`` while submit_reserved has already recorded ``submitted``.
DB_STEPS = {"reserve", "record", "settle", "ingest"}
LEDGER_STEPS = {"call-commit", "call-commit-unanswered", "late-commit", "pending-commit"}


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[Sandbox]:
    settings = WithdrawalSettings(attempts_max=ATTEMPTS_MAX)
    sb = Sandbox.create(f"sqlite:///{tmp_path / 'sluice.db'}", withdrawal_settings=settings)
    yield sb
    sb.close()


def replay_steps(sb: Sandbox, steps: list[Step], *, follow: bool) -> Replay:
    """Drive the code through ``steps``; with ``follow``, check after each that the code is in
    the model's state."""
    replay = Replay(sb)
    actions = step_actions(replay)
    unknown = sorted({step.name for step in steps} - set(actions))
    assert not unknown, f"model steps the replay does not map to the code: {unknown}"
    for index, step in enumerate(steps):
        actions[step.name](step)
        where = f"step {index} ({step.name})"
        if follow and step.name in DB_STEPS:
            assert replay.status() == (step.status, step.attempt), where
            assert replay.refunds() == step.refunds, where
        if follow and step.name in LEDGER_STEPS:
            assert replay.committed() == step.committed, where
    return replay


def test_the_mutants_counterexample_pays_twice_on_the_code_with_the_same_mutation(
    counterexample: list[Step], sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    retry_with_fresh_inputs(monkeypatch)
    replay = replay_steps(sandbox, counterexample, follow=True)
    assert replay.committed() == 2 == counterexample[-1].committed
    sandbox.ingest()
    transfers = ledger_view(sandbox).with_reason(replay.withdrawal_id)
    assert [t.amount for t in transfers if t.outcome == "Completed"] == [Decimal(120)] * 2


def test_the_same_steps_pay_once_on_the_code_as_it_is(
    counterexample: list[Step], sandbox: Sandbox
) -> None:
    replay = replay_steps(sandbox, counterexample, follow=False)
    assert replay.committed() == 1
    assert replay.last_delivery_committed is False  # the late attempt's anchor is spent
    sandbox.ingest()
    done = record(sandbox, replay.withdrawal_id)
    assert (done.status, done.attempt) == ("completed", 2)


def test_the_refund_mutants_counterexample_pays_and_credits_back_on_the_code_alike(
    refund_counterexample: list[Step], sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    refund_without_fence(monkeypatch)
    replay = replay_steps(sandbox, refund_counterexample, follow=True)
    assert (replay.committed(), replay.refunds()) == (1, 1)
    assert record(sandbox, replay.withdrawal_id).status == "failed"


def test_the_same_steps_fence_instead_of_crediting_back_on_the_code_as_it_is(
    refund_counterexample: list[Step], sandbox: Sandbox
) -> None:
    replay = replay_steps(sandbox, refund_counterexample, follow=False)
    assert (replay.committed(), replay.refunds()) == (1, 0)
    fencing = record(sandbox, replay.withdrawal_id)
    assert fencing.failure is not None and fencing.status == "reserved"  # its fence, not sent
    sandbox.ingest()
    done = record(sandbox, replay.withdrawal_id)
    assert (done.status, done.failure) == ("completed", None)
    assert replay.refunds() == 0
