"""The state of one simulation run, which every part of it reads and changes: the seed's random
source, the sandbox, the exchange's processes (dropped by a crash), the model of what the ledger
committed, the Bitcoin custody (its in-memory chain, what was sent to it and asked of it, and the
chain as its blocks say, block by block), the Integration DB as the checks read it, and the result
with its violations.

Everything random is drawn from :attr:`SimulationState.rng` only, in the order the parts ask:
that order is what makes a seed give the same run.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, TypeVar, cast

from sqlalchemy import Connection, Engine, and_, select

from sluice.bitcoin.fakechain import FakeChain
from sluice.domain.amounts import ZERO
from sluice.domain.chains import to_sats
from sluice.domain.journal import AccountRef
from sluice.domain.ledger import InstrumentId, parse_timestamp
from sluice.domain.withdrawals import AWAITING_OUTCOME_STATUSES
from sluice.ledger.local import CommandResult
from sluice.ports.bitcoin import BitcoinNode, CustodyWallet, JsonObject
from sluice.sandbox import Sandbox
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.books import check_invariant
from sluice.services.issuance_burn_inputs import burn_holder
from sluice.services.withdrawals import WithdrawalSettings
from sluice.sim.issuance_state import IssuanceWorld
from sluice.store import bitcoin_tables, tables
from sluice.store.issuance_tables import issuance_burns
from sluice.store.repositories import SqlBooksRepository

CUSTOMERS = 3
TAP = Decimal(10_000)
# Short spans relative to the clock moves, so that retries, stale offers and expiries all happen
# within a few hundred steps; a small pool threshold and a split size below the largest deposits
# (at most 40), so that merges and splits do too: at 8 and 50 a sweep of 200 seeds of 60 steps
# met a merge by chance and a split only after one.
SETTINGS = WithdrawalSettings(
    trec_span_s=60.0,
    attempts_max=2,
    offer_expiry_s=400.0,
    offer_timeout_s=340.0,
    merge_threshold=5,
    merge_small_below=Decimal(25),
    split_parallel=2,
    split_large_at_least=Decimal(20),
)
# Records that may hold reserved inputs: those awaiting an outcome, and retries queued with their
# anchor.
HOLDING_STATUSES = AWAITING_OUTCOME_STATUSES | {"queued"}
# Alerts the simulation expects: deposits with an unknown or missing reason go to suspense; a
# Bitcoin payout requested before custody holds enough confirmed funds waits for them; a
# reconciliation source left uncompared for longer than its bound (simulated time runs minutes
# per step while the watcher trails the miners: true, and a warning only — a discrepancy in a
# compared source is checked by the reserves invariants).
EXPECTED_ALERTS = ("deposit_unattributed", "btc_payout_insufficient_funds", "reconciliation_stale")
# And ingestion's lag behind the ledger past the reconciliation's bound, a warning: true when the
# draw leaves ingestion idle for dozens of steps after a rewind or a node restore (simulated time
# runs minutes per step). Ingestion's correctness is the cursor and payment checks' business,
# its liveness the drain's; a ledger discrepancy is critical and still a violation.
LAG_ALERT = ("reconciliation_ledger", "warning", "reconciliation warning: ingestion %")
# The command id of a withdrawal's, merge's or split's transfer: ``{record id}-{attempt}``.
_TRANSFER_COMMAND = re.compile(r"^((?:wd|merge|split)-[0-9a-f]{32})-(\d+)$")
_ACCEPT_COMMAND = re.compile(r"^deposit-accept-(.{24})-\d+$")

Tamper = Callable[[int, Sandbox], None]
_Process = TypeVar("_Process")


@dataclass(slots=True)
class SimulationResult:
    """What one simulation did and every check that failed (``violations``, each naming the step
    and the check). ``outcomes`` counts what happened (not part of the JSON line)."""

    seed: int
    steps: int
    deposits: int = 0
    withdrawals: int = 0
    crashes: int = 0
    faults: int = 0
    violations: list[str] = field(default_factory=list)
    outcomes: Counter[str] = field(default_factory=Counter)

    @property
    def ok(self) -> bool:
        return not self.violations

    def as_json_line(self) -> str:
        """The deterministic one-line summary: the same seed gives the same line."""
        return json.dumps(
            {
                "seed": self.seed,
                "steps": self.steps,
                "deposits": self.deposits,
                "withdrawals": self.withdrawals,
                "crashes": self.crashes,
                "faults": self.faults,
                "violations": self.violations,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )


@dataclass(frozen=True, slots=True)
class Commit:
    """A transaction the treasury's stream carries, and what ingesting it must credit."""

    update_id: str
    record_time: datetime
    account: str | None = None  # customer:… or suspense
    instrument: InstrumentId | None = None
    amount: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class DepositOffer:
    contract_id: str
    customer_id: str
    account: str
    instrument: InstrumentId
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Request:
    customer_id: str
    key: str
    instrument: InstrumentId
    amount: Decimal


@dataclass(frozen=True, slots=True)
class DatabaseState:
    """What the checks read from the Integration DB."""

    books_problems: list[str]
    cursor_offset: int | None
    cursor_time: datetime | None
    balances: dict[AccountRef, Decimal]
    records: list[Any]  # rows of RECORDS
    reserved: dict[str, str]  # active holding → the record that reserved it
    spent: dict[str, bool]  # archived inputs of records that hold inputs → whether locked
    alerts: list[tuple[str, str]]  # (kind, message) of the first unexpected alert
    treasury_holdings: frozenset[str]  # the treasury's active holdings, ingested
    # iSTSi burns sent or committed (their inputs stay active until ingestion books the burn),
    # not rejected: the only holders of reservations that are not withdrawal records (a burn
    # reserves the holdings it spends, and a rejected one gives them back).
    burn_holders: frozenset[str] = frozenset()
    bitcoin: BitcoinRows | None = None  # once the simulation has a Bitcoin custody


class SimulationState:
    def __init__(self, seed: int, steps: int, sandbox: Sandbox, crash_rate: float) -> None:
        self.rng = random.Random(seed)
        self.sandbox = sandbox
        self.ledger = sandbox.ledger
        self.engine: Engine = sandbox.database.engine
        self.crash_rate = crash_rate
        # Of the faults injected, the share that are late commits (0: none, and no draw for it).
        self.late_commit_rate = 0.0
        self.result = SimulationResult(seed=seed, steps=steps)
        self.label = "setup"
        self.instruments = (sandbox.coin, sandbox.token)
        self.customer_ids = sorted(sandbox.customers)
        self.accounts = {"acct-" + c.removeprefix("cust-"): c for c in self.customer_ids}
        # The model: what the ledger committed, as the customers and the treasury's completions
        # tell it.
        self.unconfirmed: list[Commit] = []  # not (yet) seen in ingested_updates
        self.ingested: set[str] = set()  # update ids seen there
        self.owed: dict[tuple[str, InstrumentId], Decimal] = {}  # by the ingested commits
        self.sent: dict[tuple[str, InstrumentId], Decimal] = {}
        self.deposit_offers: dict[str, DepositOffer] = {}  # by the last 24 chars of the cid
        self.payments: dict[str, int] = {}  # record id → transfers committed
        self.accepted: set[str] = set()  # USDX withdrawals whose offer the receiver accepted
        self.requests: list[Request] = []
        self.completion_sequence = 0
        # What the checks remember from one step to the next.
        self.cursor_floor: datetime | None = None  # the cursor's record time at the last check
        self.newest_ingested: datetime | None = None  # of the commits ingested since a rewind
        self.reclaimed: set[tuple[str, str]] = set()
        self._failed_checks: set[str] = set()
        self._processes: dict[str, object] = {}
        self._database_state: DatabaseState | None = None
        self.dirty = True  # the Integration DB may have changed since it was last read
        # The Bitcoin custody, made by its actor the first time one of its actions is drawn.
        self.bitcoin: BitcoinCustody | None = None
        # iSTSi issuance (sim/issuance_state.py), set up by its actor before the first step.
        self.issuance: IssuanceWorld | None = None

    def violation(self, check: str, detail: str) -> None:
        """Record a failed check; each check is reported once, at the first step it fails."""
        if check in self._failed_checks:
            return
        self._failed_checks.add(check)
        self.result.violations.append(f"{self.label}: {check}: {detail}")

    # -- the exchange's processes, rebuilt after a crash ------------------------------------------

    def process(self, name: str, start: Callable[[], _Process]) -> _Process:
        """The exchange's process ``name`` (ingestion, a worker), started by ``start`` if none
        runs: at the beginning, after a crash, or after it stopped."""
        running = self._processes.get(name)
        if running is None:
            running = self._processes[name] = start()
        return cast(_Process, running)

    def stop(self, name: str) -> None:
        self._processes.pop(name, None)

    def stop_all(self) -> None:
        self._processes.clear()

    def restart(self, where: str) -> None:
        """A crash: the workers and ingestion are gone; new ones start from the DB."""
        self.result.crashes += 1
        self.result.outcomes[f"crash_{where}"] += 1
        self.stop_all()

    # -- the model of what the ledger committed -------------------------------------------------

    def watch(
        self,
        committed: CommandResult,
        account: str | None = None,
        instrument: InstrumentId | None = None,
        amount: Decimal = ZERO,
    ) -> None:
        """A commit the treasury's stream carries (crediting ``account``, if given)."""
        self.unconfirmed.append(
            Commit(committed.update_id, committed.record_time, account, instrument, amount)
        )

    def add_sent(self, customer: str, instrument: InstrumentId, amount: Decimal) -> None:
        key = (customer, instrument)
        self.sent[key] = self.sent.get(key, ZERO) + amount

    def absorb_completions(self) -> None:
        """Learn from the treasury's command completions what the exchange made the ledger do:
        transfers for withdrawal-like records, and accepted deposit offers."""
        completions = self.ledger.completions(self.sandbox.treasury, self.completion_sequence)
        for completion in completions:
            self.completion_sequence = completion.sequence
            if completion.status != "ok":
                continue
            transfer = _TRANSFER_COMMAND.match(completion.command_id)
            if transfer is not None:
                record = transfer.group(1)
                self.payments[record] = self.payments.get(record, 0) + 1
                self.unconfirmed.append(Commit(completion.update_id or "", completion.record_time))
                continue
            accept = _ACCEPT_COMMAND.match(completion.command_id)
            if accept is not None:
                offer = self.deposit_offers.pop(accept.group(1), None)
                if offer is None:
                    self.violation("credits", f"an unknown offer was accepted: {completion}")
                    continue
                self.result.outcomes["deposit_offer_accepted"] += 1
                self.add_sent(offer.customer_id, offer.instrument, offer.amount)
                self.unconfirmed.append(
                    Commit(
                        completion.update_id or "",
                        completion.record_time,
                        offer.account,
                        offer.instrument,
                        offer.amount,
                    )
                )

    # -- the Integration DB, as the checks read it ----------------------------------------------

    def read_database(self) -> DatabaseState:
        """Everything the checks need from the Integration DB. Read again only after a step that
        could have written to it: a step that only moved the ledger (a customer's transfer, the
        clock, the admin) leaves it as it was, so the previous reading is still exact."""
        if self._database_state is not None and not self.dirty:
            return self._database_state
        problems = check_invariant(self.sandbox.database.uow).problems
        holdings = tables.holdings
        with self.engine.connect() as connection:
            cursor = connection.execute(
                select(tables.ledger_cursors.c.offset, tables.ledger_cursors.c.record_time).where(
                    tables.ledger_cursors.c.connection == self.sandbox.connection
                )
            ).first()
            balances = SqlBooksRepository(connection).balances()
            records = list(connection.execute(RECORDS))
            reserved = {
                row.contract_id: row.reserved_by
                for row in connection.execute(
                    select(holdings.c.contract_id, holdings.c.reserved_by).where(
                        holdings.c.reserved_by.is_not(None),
                        holdings.c.archived_update_id.is_(None),
                    )
                )
            }
            awaited = [
                contract_id
                for row in records
                if row.status in HOLDING_STATUSES
                for contract_id in json.loads(row.inputs)
                if contract_id not in reserved
            ]
            spent = {
                row.contract_id: row.lock_holders is not None
                for row in connection.execute(
                    select(holdings.c.contract_id, holdings.c.lock_holders).where(
                        holdings.c.contract_id.in_(awaited),
                        holdings.c.archived_update_id.is_not(None),
                    )
                )
            }
            alerts = [
                (row.kind, row.message)
                for row in connection.execute(
                    select(tables.alerts.c.kind, tables.alerts.c.message)
                    .where(tables.alerts.c.kind.not_in(EXPECTED_ALERTS))
                    .where(
                        ~and_(
                            tables.alerts.c.kind == LAG_ALERT[0],
                            tables.alerts.c.severity == LAG_ALERT[1],
                            tables.alerts.c.message.like(LAG_ALERT[2]),
                        )
                    )
                    .order_by(tables.alerts.c.id)
                    .limit(1)
                )
            ]
            self._confirm_ingested(connection)
            treasury_holdings = frozenset(
                connection.execute(
                    select(holdings.c.contract_id).where(
                        holdings.c.owner == self.sandbox.treasury,
                        holdings.c.archived_update_id.is_(None),
                    )
                ).scalars()
            )
            burn_holders = frozenset(
                burn_holder(burn_id)
                for burn_id in connection.execute(
                    select(issuance_burns.c.id).where(issuance_burns.c.status != "failed")
                ).scalars()
            )
            bitcoin = read_bitcoin(connection) if self.bitcoin is not None else None
        self._database_state = DatabaseState(
            books_problems=problems,
            cursor_offset=cursor.offset if cursor is not None else None,
            cursor_time=parse_timestamp(cursor.record_time)
            if cursor is not None and cursor.record_time
            else None,
            balances=balances,
            records=records,
            reserved=reserved,
            spent=spent,
            alerts=alerts,
            treasury_holdings=treasury_holdings,
            burn_holders=burn_holders,
            bitcoin=bitcoin,
        )
        self.dirty = False
        return self._database_state

    def _confirm_ingested(self, connection: Connection) -> None:
        """Move the commits ingestion has taken in (by update id) out of ``unconfirmed``, adding
        what they credit to ``owed``."""
        if not self.unconfirmed:
            return
        ids = [commit.update_id for commit in self.unconfirmed]
        column = tables.ingested_updates.c.update_id
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            self.ingested.update(
                connection.execute(select(column).where(column.in_(chunk))).scalars()
            )
        waiting: list[Commit] = []
        for commit in self.unconfirmed:
            if commit.update_id not in self.ingested:
                waiting.append(commit)
                continue
            newest = self.newest_ingested
            self.newest_ingested = max(newest, commit.record_time) if newest else commit.record_time
            if commit.account is not None and commit.instrument is not None:
                key = (commit.account, commit.instrument)
                self.owed[key] = self.owed.get(key, ZERO) + commit.amount
        self.unconfirmed = waiting


RECORDS = select(
    tables.withdrawals.c.id,
    tables.withdrawals.c.kind,
    tables.withdrawals.c.customer_id,
    tables.withdrawals.c.receiver,
    tables.withdrawals.c.instrument_admin,
    tables.withdrawals.c.instrument_id,
    tables.withdrawals.c.amount,
    tables.withdrawals.c.status,
    tables.withdrawals.c.inputs,
    tables.withdrawals.c.rebuilt,
    tables.withdrawals.c.failure,
).order_by(tables.withdrawals.c.id)


# --- Bitcoin custody -----------------------------------------------------------------------------
# The simulation's custody runs on an in-memory chain (the embedded default). Its checks compare
# the Integration DB with what the node's blocks say, read through the node's own calls
# (``getblock``), so they do not trust the chain's internals any more than the watcher does.


@dataclass(frozen=True, slots=True)
class ChainOutput:
    """An output of a transaction (not a coinbase) in a block."""

    txid: str
    vout: int
    script_hex: str
    amount_sats: int
    height: int
    block_hash: str

    @property
    def outpoint(self) -> str:
        return f"{self.txid}:{self.vout}"


@dataclass(frozen=True, slots=True)
class ChainView:
    """The chain from its first block up to ``block_hash``: every output of a transaction that is
    not a coinbase, which of them are unspent, and what each transaction spends."""

    height: int
    block_hash: str
    outputs: dict[str, ChainOutput]  # outpoint → output
    unspent: frozenset[str]
    inputs: dict[str, tuple[str, ...]]  # txid → the outpoints it spends


@dataclass(frozen=True, slots=True)
class PayoutRequest:
    """A payout the simulation asked for; each pays its own destination script, so every output
    to that script on the chain is a payment of this payout."""

    id: str
    address: str
    script_hex: str
    amount_sats: int


@dataclass(slots=True)
class BitcoinCustody:
    """The simulation's Bitcoin custody: the in-memory chain, the 2-of-3 wallet, the settings,
    what the customers sent and the payouts requested, and what the checks remember."""

    node: FakeChain
    wallet: CustodyWallet
    settings: BitcoinSettings
    link: BitcoinNode  # the node as the exchange's processes reach it (the checks read ``node``)
    funded: dict[str, tuple[str, int]] = field(default_factory=dict)  # txid → (customer, sats)
    payouts: dict[str, PayoutRequest] = field(default_factory=dict)
    batch_of: dict[str, str] = field(default_factory=dict)  # payout id → first batch seen
    # The highest cursor the watcher has reached: a reorg moves its cursor back to the fork point
    # and the new branch, at least as long, brings it back up.
    cursor_high: int = -1
    views: dict[str, ChainView] = field(default_factory=dict)  # by block hash
    derived: dict[tuple[int, int], str] = field(default_factory=dict)  # (branch, index) → script

    def view(self, block_hash: str) -> ChainView:
        """The chain up to ``block_hash`` (on the active chain or not), built block by block from
        the nearest block already seen; a block's content never changes under its hash."""
        found = self.views.get(block_hash)
        if found is not None:
            return found
        blocks: list[JsonObject] = []
        current: str | None = block_hash
        while current is not None and current not in self.views:
            block = self.node.getblock(current)
            blocks.append(block)
            current = block.get("previousblockhash")
        view = self.views[current] if current is not None else None
        for block in reversed(blocks):
            view = _apply_block(view, block)
            self.views[view.block_hash] = view
        assert view is not None
        return view

    def script(self, branch: int, index: int) -> str:
        """The custody script at ``branch``/``index``, derived once."""
        key = (branch, index)
        script = self.derived.get(key)
        if script is None:
            script = self.derived[key] = self.wallet.derive(branch, index).script_hex
        return script

    def custody_scripts(self, issued: Mapping[str, tuple[int, int]], lookahead: int) -> set[str]:
        """The scripts of every issued address and of the next ``lookahead`` indices of each
        branch: an output to one of those that the DB does not know is custody's money too."""
        scripts = set(issued)
        for branch in (0, 1):
            indices = [index for b, index in issued.values() if b == branch]
            first = max(indices) + 1 if indices else 0
            scripts.update(self.script(branch, i) for i in range(first, first + lookahead))
        return scripts


def _apply_block(parent: ChainView | None, block: JsonObject) -> ChainView:
    outputs = dict(parent.outputs) if parent is not None else {}
    unspent = set(parent.unspent) if parent is not None else set()
    inputs = dict(parent.inputs) if parent is not None else {}
    height, block_hash = int(block["height"]), str(block["hash"])
    for tx in block["tx"]:
        if any("coinbase" in vin for vin in tx["vin"]):
            continue
        spent = tuple(f"{vin['txid']}:{vin['vout']}" for vin in tx["vin"])
        inputs[tx["txid"]] = spent
        unspent.difference_update(spent)
        for out in tx["vout"]:
            output = ChainOutput(
                tx["txid"],
                int(out["n"]),
                str(out["scriptPubKey"]["hex"]),
                to_sats(out["value"]),
                height,
                block_hash,
            )
            outputs[output.outpoint] = output
            unspent.add(output.outpoint)
    return ChainView(height, block_hash, outputs, frozenset(unspent), inputs)


@dataclass(frozen=True, slots=True)
class BitcoinRows:
    """What the Bitcoin checks read from the Integration DB (``btc_*`` tables)."""

    blocks: dict[int, str]  # the watcher's chain: height → hash
    outputs: dict[str, Any]  # outpoint → btc_outputs row
    payouts: list[Any]  # btc_payouts rows
    batches: dict[str, Any]  # id → btc_batches row
    addresses: dict[str, tuple[int, int]]  # script → (branch, index)

    @property
    def cursor(self) -> tuple[int, str] | None:
        """The watcher's cursor: its highest block (height, hash)."""
        if not self.blocks:
            return None
        height = max(self.blocks)
        return height, self.blocks[height]


def read_bitcoin(connection: Connection) -> BitcoinRows:
    blocks, outputs = bitcoin_tables.btc_blocks, bitcoin_tables.btc_outputs
    addresses, batches = bitcoin_tables.btc_addresses, bitcoin_tables.btc_batches
    payouts = bitcoin_tables.btc_payouts
    return BitcoinRows(
        blocks={
            row.height: row.hash
            for row in connection.execute(select(blocks.c.height, blocks.c.hash))
        },
        outputs={
            f"{row.txid}:{row.vout}": row
            for row in connection.execute(select(outputs).order_by(outputs.c.txid, outputs.c.vout))
        },
        payouts=list(connection.execute(select(payouts).order_by(payouts.c.id))),
        batches={row.id: row for row in connection.execute(select(batches).order_by(batches.c.id))},
        addresses={
            row.script_hex: (row.branch, row.derivation_index)
            for row in connection.execute(
                select(addresses.c.script_hex, addresses.c.branch, addresses.c.derivation_index)
            )
        },
    )
