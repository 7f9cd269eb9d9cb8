"""iSTSi issuance end to end on a real node: Bitcoin deposited on ``litecoind -regtest`` becomes
iSTSi exactly once, and iSTSi redeemed becomes Bitcoin exactly once, through a crash of the router
between every pair of steps — on SQLite and PostgreSQL.

Real parts: the node (:mod:`tests.bitcoin_regtest`, the module's ``litecoind`` fixture, its legacy
wallet paying the deposit), a custody on ``litecoin-regtest`` made as an operator makes one (three
keys, the 2-of-3 descriptor, two key files, the node reached over RPC with its cookie file, all
from a ``[bitcoin]`` section), wired by :func:`sluice.bootstrap.bitcoin_custody` and
:func:`sluice.bootstrap.issuance`; the deposit watcher, the payouts worker, ingestion of the
treasury's updates from the embedded ledger (which holds iSTSi and its issuer), the KYC registry
and the router with every operation type (:data:`DEFINITIONS`).

The embedded ledger stands for the token ledger, a system of its own: it is opened once and
outlives the router's process. Everything else of that process is built again after each crash:
the database connection, the node's client, the custody wallet, the issuer's commands, the
watcher, the payouts worker and the router.

The crash: every step function of :data:`DEFINITIONS` is wrapped so that, the first time a step
of an operation answers a given outcome, the wrapper raises :class:`RouterCrash` (a
``BaseException``, which the engine does not catch) after the step did its work and before the
engine recorded it — the point where a step's effect (a mint sent, a burn sent, a payout queued)
exists and nothing says so. A new process then carries on once the lease of the dead one ran out:
the step runs again (idempotent) and is recorded. The deposit crashes after ``kyc``, ``reserve``,
``mint`` and ``credit`` (waiting for ingestion, then done); the redemption after ``burn``,
``payout`` and ``confirm`` (waiting for the payout, then done).

At the end: the ledger holds exactly one mint carrying the deposit's reason and one burn carrying
the redemption's; supply is the deposit less the redemption; the customer's account was credited
once (by ingestion) and debited once (by the redemption request); the node holds exactly one
transaction paying the destination, of the amount less the fee the payout recorded; the
redemption completed with what the customer received recorded; the books' invariant holds;
supply is within the confirmed reserves; the audit chain verifies.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.bitcoin.keys import create_sandbox_custody
from sluice.config import BitcoinConfig, DeploymentConfig
from sluice.domain.chains import CHAINS, to_sats
from sluice.domain.journal import IN_FLIGHT, AccountRef, customer_account_name
from sluice.domain.ledger import REASON_KEY
from sluice.ledger.local.engine import EmbeddedLedger
from sluice.ports.issuance import IssuanceOperation, StepOutcomeKind, sats_to_amount
from sluice.services.audit import verify_audit_log
from sluice.services.books import check_invariant
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_payouts import PayoutWorker, get_payout
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.ingestion import Ingestion, IngestionSettings
from sluice.services.issuance_deposit import mint_id
from sluice.services.issuance_intake import deposit_operation_id
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_redeem import burn_id_of, payout_id_of, request_redemption
from sluice.services.issuance_router import (
    IssuanceRouter,
    OperationDefinition,
    StepFn,
    StepOutcome,
)
from sluice.services.issuance_settings import IssuanceContext
from sluice.services.mint_guard import guard_status
from sluice.services.reconciliation import reconcile
from sluice.services.reserves_settings import ReservesContext
from sluice.store.tables import accounts, journal_postings, journal_transactions
from tests.bitcoin_regtest import RegtestNode

pytestmark = pytest.mark.slow

NETWORK = "litecoin-regtest"
CONFIRMATIONS = 2  # few blocks to mine, still more than one
DEPOSIT_SATS = 1_000_000
REDEEM_SATS = 600_000
CUSTOMER = "alice"
ROUNDS_MAX = 20  # router rounds to reach a state: far more than the steps and crashes need
START = datetime(2026, 12, 5, 9, 0, tzinfo=UTC)


class RouterCrash(BaseException):
    """The router's process dying: not an ``Exception``, so no step handler catches it."""


class Clock:
    """The process's clock (the router's leases and waits, the watcher's and the payouts'
    times): it moves a second per reading, and by hand past a lease."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class Crashes:
    """Which (operation, step, outcome) already crashed the router, in order."""

    seen: list[tuple[str, str, StepOutcomeKind]] = field(default_factory=list)

    def wrap(self, name: str, function: StepFn) -> StepFn:
        def step(ctx: IssuanceContext, op: IssuanceOperation) -> StepOutcome:
            outcome = function(ctx, op)  # the step's work is done (and committed) here
            key = (op.id, name, outcome.kind)
            if key not in self.seen:
                self.seen.append(key)
                raise RouterCrash(f"killed after {name} of {op.id} answered {outcome.kind}")
            return outcome

        return step

    def definitions(self) -> dict[str, OperationDefinition]:
        """:data:`DEFINITIONS` with every step (main path and extra) wrapped."""
        return {
            kind: replace(
                definition,
                steps=tuple((name, self.wrap(name, fn)) for name, fn in definition.steps),
                extra_steps={n: self.wrap(n, fn) for n, fn in definition.extra_steps.items()},
            )
            for kind, definition in DEFINITIONS.items()
        }

    def of(self, operation_id: str) -> list[tuple[str, str]]:
        return [(step, kind) for op, step, kind in self.seen if op == operation_id]


@dataclass
class Process:
    """What one process of the router builds from the configuration: nothing survives it."""

    database: bootstrap.Database
    custody: bootstrap.BitcoinCustody
    issuance: bootstrap.Issuance
    router: IssuanceRouter
    watcher: DepositWatcher
    payouts: PayoutWorker

    @property
    def ctx(self) -> IssuanceContext:
        return self.issuance.context

    def close(self) -> None:
        try:
            self.issuance.close()
            self.custody.close()
        finally:
            self.database.dispose()


@dataclass
class World:
    node: RegtestNode
    config: DeploymentConfig
    db_url: str
    ledger: EmbeddedLedger
    treasury: str
    clock: Clock = field(default_factory=Clock)
    crashes: Crashes = field(default_factory=Crashes)
    restarts: int = 0
    process: Process = field(init=False)

    def __post_init__(self) -> None:
        self.process = self.start()

    def start(self) -> Process:
        database = bootstrap.database(self.db_url)
        custody = bootstrap.bitcoin_custody(self.config)
        issuance = bootstrap.issuance(
            self.config,
            database,
            custody=custody,
            clock=self.clock,
            ledger=self.ledger,
            treasury=self.treasury,
        )
        ctx = issuance.context
        return Process(
            database=database,
            custody=custody,
            issuance=issuance,
            router=IssuanceRouter(ctx, self.crashes.definitions()),
            watcher=DepositWatcher(
                database.uow, custody.node, custody.wallet, custody.settings, self.clock
            ),
            payouts=PayoutWorker(
                database.uow, custody.node, custody.wallet, custody.settings, self.clock
            ),
        )

    def restart(self) -> None:
        """A new process after a crash: the old one's objects are dropped."""
        self.process.close()
        self.process = self.start()
        self.restarts += 1

    def close(self) -> None:
        self.process.close()

    # -- driving ----------------------------------------------------------------------------

    def route(
        self, operation_id: str, until: Callable[[IssuanceOperation], bool]
    ) -> IssuanceOperation:
        """Router rounds (``tick``, as the loop runs them) until the operation is where
        ``until`` says; every crash is followed by a new process, once the lease ran out."""
        lease = self.process.ctx.settings.lease_s
        for _ in range(ROUNDS_MAX):
            self.clock.advance(lease + 1)  # past a dead process's lease and any wait
            try:
                tick = self.process.router.tick()
            except RouterCrash:
                self.restart()
                continue
            assert tick.error is None and not tick.stuck and not tick.held, tick
            op = self.operation(operation_id)
            if until(op):
                return op
        raise AssertionError(f"{operation_id} did not get there: {self.operation(operation_id)}")

    def ingest(self) -> None:
        Ingestion(
            self.process.database.uow,
            self.ledger.client(self.treasury),
            self.treasury,
            connection="istsi-e2e",
            settings=IngestionSettings(retry_delay_s=0.0),
            sleep=lambda _s: None,
        ).run()

    def watch(self) -> None:
        assert self.process.watcher.run_once().error is None

    def pay(self) -> Any:
        tick = self.process.payouts.run_once()
        assert not tick.errors, tick.errors
        return tick

    # -- reads ------------------------------------------------------------------------------

    def operation(self, operation_id: str) -> IssuanceOperation:
        with self.process.database.uow() as uow:
            op = uow.issuance.get_operation(operation_id)
        assert op is not None
        return op

    def balance(self, name: str) -> Decimal:
        istsi = self.process.ctx.issuer.instrument
        with self.process.database.uow() as uow:
            return uow.withdrawals.balance(AccountRef(name, istsi))

    def customer_postings(self) -> list[tuple[str, Decimal]]:
        """(journal kind, signed amount) of every posting to the customer's iSTSi account, in
        the order written (credits negative: the account is a liability)."""
        istsi = self.process.ctx.issuer.instrument
        query = (
            sa.select(journal_transactions.c.kind, journal_postings.c.amount)
            .join(journal_postings, journal_postings.c.transaction_id == journal_transactions.c.id)
            .join(accounts, accounts.c.id == journal_postings.c.account_id)
            .where(
                accounts.c.name == customer_account_name(CUSTOMER),
                accounts.c.instrument_admin == istsi.admin,
                accounts.c.instrument_id == istsi.id,
            )
            .order_by(journal_transactions.c.created_at, journal_transactions.c.id)
        )
        with self.process.database.engine.connect() as connection:
            return [(str(r.kind), Decimal(r.amount)) for r in connection.execute(query)]

    def ledger_commands(self, choice: str) -> dict[str, int]:
        """Reason → how many ``choice`` exercises (mint or burn) of iSTSi carry it, read from the
        treasury's whole update stream on the ledger."""
        found: dict[str, int] = {}
        for item in self.ledger.client(self.treasury).updates(self.treasury, 0):
            transaction = item["update"].get("Transaction")
            for event in transaction["value"]["events"] if transaction else ():
                exercised = event.get("ExercisedEvent", {})
                if exercised.get("choice") == choice:
                    reason = exercised["choiceArgument"]["meta"]["values"].get(REASON_KEY)
                    found[reason] = found.get(reason, 0) + 1
        return found


def custody_config(node: RegtestNode, folder: Path) -> DeploymentConfig:
    """A ``[bitcoin]`` section as an operator writes one for a custody on the node."""
    keys = create_sandbox_custody(folder / "keys", CHAINS[NETWORK])
    section = BitcoinConfig(
        network=NETWORK,
        rpc_url=node.url,
        rpc_cookie_file=node.cookie_file,
        descriptor=keys.descriptor,
        key_files=[str(path) for path in keys.key_files[:2]],
        confirmations_min=CONFIRMATIONS,
        payout_batch_window_s=0.0,
        watch_start_height=node.height,  # nothing of this custody is older
    )
    return DeploymentConfig(data_dir=folder / "data", bitcoin=section)


def token_ledger() -> tuple[EmbeddedLedger, str]:
    """The token ledger (nodes dso and exchange) and the treasury party on it."""
    ledger = EmbeddedLedger.open(None, seed=16, checkpoint_interval_s=None)
    for node in ("dso", "exchange"):
        ledger.add_node(node)
    return ledger, ledger.allocate_party("treasury", "exchange")


@pytest.fixture
def world(litecoind: RegtestNode, database_url: str, tmp_path: Path) -> Iterator[World]:
    ledger, treasury = token_ledger()
    world = World(litecoind, custody_config(litecoind, tmp_path), database_url, ledger, treasury)
    try:
        yield world
    finally:
        try:
            world.close()
        finally:
            ledger.close()


def test_deposit_mint_redeem_payout_burn_through_a_router_crash_between_every_pair_of_steps(
    world: World,
) -> None:
    node = world.node
    with world.process.database.uow() as uow:
        uow.reference.add_customer(CUSTOMER, "Alice")
        uow.compliance.set_profile(CUSTOMER, at=world.clock(), tier=1, status="active")
        uow.commit()

    # -- the deposit: paid by the node's wallet, confirmed, its operation opened by the watcher.
    address = deposit_address(
        world.process.database.uow, world.process.custody.wallet, CUSTOMER, clock=world.clock
    ).address
    deposit_txid = node.fund(address, DEPOSIT_SATS)
    paid = node.rpc.call("getrawtransaction", deposit_txid, True)
    (vout,) = [
        int(out["n"]) for out in paid["vout"] if address in out["scriptPubKey"].get("addresses", [])
    ]
    node.mine(CONFIRMATIONS)
    world.watch()
    deposit_op = deposit_operation_id(deposit_txid, vout)
    assert world.operation(deposit_op).step == "kyc"

    # -- kyc → reserve → mint → credit, a crash after each; ingestion books the mint.
    waiting = world.route(deposit_op, lambda op: (op.status, op.step) == ("waiting", "credit"))
    assert waiting.customer_id == CUSTOMER and waiting.amount_sats == DEPOSIT_SATS
    assert world.process.ctx.issuer.supply() == DEPOSIT_SATS
    world.ingest()
    with world.process.database.uow() as uow:
        mint = uow.issuance.get_mint(mint_id(deposit_op))
    assert mint is not None and mint.credited and mint.status == "committed"
    minted = world.route(deposit_op, lambda op: op.status != "waiting")
    assert minted.status == "completed", minted.last_error
    assert world.crashes.of(deposit_op) == [
        ("kyc", "done"),
        ("reserve", "done"),
        ("mint", "done"),
        ("credit", "wait"),
        ("credit", "done"),
    ]
    assert world.balance(customer_account_name(CUSTOMER)) == sats_to_amount(DEPOSIT_SATS)

    # -- the redemption: burn → payout → confirm, a crash after each.
    destination = node.new_address()
    redemption = request_redemption(
        world.process.ctx,
        customer_id=CUSTOMER,
        amount_sats=REDEEM_SATS,
        address=destination,
        idempotency_key="e2e-1",
        actor=f"customer:{CUSTOMER}",
    )
    assert world.balance(IN_FLIGHT) == sats_to_amount(REDEEM_SATS)
    queued = world.route(redemption.id, lambda op: (op.status, op.step) == ("waiting", "confirm"))
    assert queued.result["burn_id"] == burn_id_of(redemption.id)
    assert world.process.ctx.issuer.supply() == DEPOSIT_SATS - REDEEM_SATS
    world.ingest()  # books the burn against in flight
    assert world.balance(IN_FLIGHT) == 0

    # The payouts worker sends it (one transaction), mined to the confirmations needed.
    assert world.pay().broadcast == 1
    (payout_txid,) = node.rpc.call("getrawmempool")
    node.mine(CONFIRMATIONS)
    world.watch()
    assert world.pay().completed == 1
    done = world.route(redemption.id, lambda op: op.status != "waiting")
    assert done.status == "completed", done.last_error
    assert world.crashes.of(redemption.id) == [
        ("burn", "done"),
        ("payout", "done"),
        ("confirm", "wait"),
        ("confirm", "done"),
    ]
    assert world.restarts == 9

    # -- what each side holds now.
    payout = get_payout(world.process.database.uow, payout_id_of(redemption.id))
    assert payout is not None and payout.status == "completed" and payout.txid == payout_txid
    fee = payout.fee_sats or 0
    assert 0 < fee < REDEEM_SATS
    assert done.result["received_sats"] == REDEEM_SATS - fee
    assert done.result["fee_sats"] == fee and done.result["txid"] == payout_txid

    # The node: one transaction paid the destination, the amount less the recorded fee.
    (received,) = node.rpc.call("listreceivedbyaddress", 1, False, False, destination)
    assert received["txids"] == [payout_txid]
    assert to_sats(received["amount"]) == REDEEM_SATS - fee
    assert node.rpc.call("getrawmempool") == []

    # The ledger: one mint for the deposit, one burn for the redemption, nothing else.
    assert world.ledger_commands("RegistryRules_Mint") == {f"issuance:{deposit_op}": 1}
    assert world.ledger_commands("RegistryRules_Burn") == {f"issuance:{redemption.id}:burn": 1}
    assert world.process.ctx.issuer.supply() == DEPOSIT_SATS - REDEEM_SATS

    # The books: credited once by the mint, debited once by the redemption.
    assert world.customer_postings() == [
        ("issuance_mint", -sats_to_amount(DEPOSIT_SATS)),
        ("redemption_requested", sats_to_amount(REDEEM_SATS)),
    ]
    assert world.balance(customer_account_name(CUSTOMER)) == sats_to_amount(
        DEPOSIT_SATS - REDEEM_SATS
    )
    assert world.balance(IN_FLIGHT) == 0
    check = check_invariant(world.process.database.uow)
    assert check.holds, check
    with world.process.database.uow() as uow:
        assert uow.books.alerts() == []

    # Supply within the confirmed reserves (the change came back to custody and confirmed).
    guard = guard_status(world.process.ctx)
    assert guard["supply_sats"] == DEPOSIT_SATS - REDEEM_SATS
    assert guard["pending_redemptions_sats"] == 0
    assert guard["supply_sats"] <= guard["reserves_sats"], guard
    assert not guard["minting_halted"]

    verified = verify_audit_log(world.process.database.uow)
    assert verified.ok, verified.findings
    assert verified.records_checked > 0

    # -- reconciliation on the real node: the journal against the ledger's active contracts, the
    # custody outputs in the DB against the node's scantxoutset over the descriptor, the supply
    # against the node's confirmed custody outputs: all compared, all agree.
    process = world.process
    reserves = ReservesContext(
        uow=process.database.uow,
        clock=world.clock,
        treasury=world.treasury,
        secret_path=world.node.datadir / "por-secret",
        ledger=world.ledger.client(world.treasury),
        node=process.custody.node,
        wallet=process.custody.wallet,
        issuer=process.ctx.issuer,
        istsi=process.ctx.issuer.instrument,
        connection="istsi-e2e",
        confirmations_min=process.custody.settings.confirmations_min,
    )
    run = reconcile(reserves, trigger="manual")
    states = {name: source["state"] for name, source in run.report["sources"].items()}
    assert states == {"ledger": "compared", "custody": "compared", "supply": "compared"}, run.report
    assert run.discrepancies == () and run.status == "ok"
    # iSTSi minted behind the router's back is supply nothing backs: the node's reserves show it.
    process.ctx.issuer.mint(world.treasury, DEPOSIT_SATS, reason="unbacked", command_id="unbacked")
    run = reconcile(reserves, trigger="manual")
    (short,) = [d for d in run.discrepancies if d.source == "supply"]
    assert short.actual_units < short.expected_units and short.severity == "emergency"
    with process.database.uow() as uow:
        assert uow.issuance.minting_state().minting_halted
