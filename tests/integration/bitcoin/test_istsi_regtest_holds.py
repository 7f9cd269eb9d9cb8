"""iSTSi issuance on a real node through refusals and reorgs: ``litecoind -regtest``, SQLite and
PostgreSQL.

* A deposit paid from an address on the deployment's sanctions list (a one-entry OFAC SDN list
  naming it as a ``Digital Currency Address - XBT``, loaded from ``[compliance] sanctions_list``
  as a deployment loads it) is held at KYC: the router reads the deposit's input from the node and
  screens its address. Nothing is minted, a review item is open, and the compliance officer can
  neither release nor return it (41).
* A deposit minted, then its block taken off the chain by ``invalidateblock`` and the chain
  mined again, longer: the deposit's transaction, back from the mempool, is confirmed in another
  block. The watcher sees the reorg under the minted deposit, raises the critical
  ``issuance_reserve_reorged`` alert and halts minting; it opens no second operation for the
  output confirmed again, the ledger holds one mint for it, and a later deposit is not minted
  while minting is halted (it waits at its mint step) until minting is resumed (the executor of
  the officer's approved ``issuance.resume_minting``).

Real parts, as in ``test_istsi_regtest.py``: the node, its legacy wallet paying the deposits, a
2-of-3 custody from a ``[bitcoin]`` section reached over RPC, :func:`bootstrap.bitcoin_custody`
and :func:`bootstrap.issuance`, the deposit watcher, ingestion of the treasury's updates from the
embedded ledger, and the router with every operation type (no crashes here).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sluice import bootstrap
from sluice.config import ComplianceConfig, DeploymentConfig
from sluice.demo.issuance import write_sanctions
from sluice.domain.chains import to_coins, to_sats
from sluice.domain.errors import InvalidOperationStateError
from sluice.domain.ledger import REASON_KEY
from sluice.ledger.local.engine import EmbeddedLedger
from sluice.ports.issuance import IssuanceOperation
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.ingestion import Ingestion, IngestionSettings
from sluice.services.issuance_deposit import mint_id, review_id
from sluice.services.issuance_held import release_held_deposit, return_held_deposit
from sluice.services.issuance_intake import deposit_operation_id
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.mint_guard import resume_minting
from tests.bitcoin_regtest import RegtestNode
from tests.integration.bitcoin.test_istsi_regtest import (
    CONFIRMATIONS,
    CUSTOMER,
    Clock,
    custody_config,
    token_ledger,
)

pytestmark = pytest.mark.slow

DEPOSIT_SATS = 1_000_000
LATER_SATS = 300_000
ROUNDS_MAX = 10


@dataclass
class World:
    node: RegtestNode
    config: DeploymentConfig
    database: bootstrap.Database
    custody: bootstrap.BitcoinCustody
    issuance: bootstrap.Issuance
    ledger: EmbeddedLedger
    treasury: str
    clock: Clock

    @property
    def router(self) -> IssuanceRouter:
        return self.issuance.router

    def watch(self) -> int:
        """One round of the deposit watcher; the reorgs it saw."""
        tick = DepositWatcher(
            self.database.uow,
            self.custody.node,
            self.custody.wallet,
            self.custody.settings,
            self.clock,
        ).run_once()
        assert tick.error is None, tick.error
        return int(tick.reorgs)

    def route(
        self, operation_id: str, until: Callable[[IssuanceOperation], bool]
    ) -> IssuanceOperation:
        for _ in range(ROUNDS_MAX):
            self.clock.advance(self.issuance.context.settings.lease_s + 1)
            tick = self.router.tick()
            assert tick.error is None, tick
            op = self.operation(operation_id)
            if until(op):
                return op
        raise AssertionError(f"{operation_id} did not get there: {self.operation(operation_id)}")

    def ingest(self) -> None:
        Ingestion(
            self.database.uow,
            self.ledger.client(self.treasury),
            self.treasury,
            connection="istsi-holds",
            settings=IngestionSettings(retry_delay_s=0.0),
            sleep=lambda _s: None,
        ).run()

    def operation(self, operation_id: str) -> IssuanceOperation:
        with self.database.uow() as uow:
            op = uow.issuance.get_operation(operation_id)
        assert op is not None, operation_id
        return op

    def operations(self) -> list[str]:
        with self.database.uow() as uow:
            return [op.id for op in uow.issuance.operations()]

    def address(self) -> str:
        return deposit_address(
            self.database.uow, self.custody.wallet, CUSTOMER, clock=self.clock
        ).address

    def deposit_of(self, txid: str, address: str) -> str:
        """The operation id of the output of ``txid`` paying ``address``."""
        paid = self.node.rpc.call("getrawtransaction", txid, True)
        (vout,) = [
            int(out["n"])
            for out in paid["vout"]
            if address in out["scriptPubKey"].get("addresses", [])
        ]
        return deposit_operation_id(txid, vout)

    def mints(self) -> dict[str, int]:
        """Reason → how many iSTSi mints on the ledger carry it."""
        found: dict[str, int] = {}
        for item in self.ledger.client(self.treasury).updates(self.treasury, 0):
            transaction = item["update"].get("Transaction")
            for event in transaction["value"]["events"] if transaction else ():
                exercised = event.get("ExercisedEvent", {})
                if exercised.get("choice") == "RegistryRules_Mint":
                    reason = exercised["choiceArgument"]["meta"]["values"].get(REASON_KEY)
                    found[reason] = found.get(reason, 0) + 1
        return found

    def halted(self) -> bool:
        with self.database.uow() as uow:
            return uow.issuance.minting_state().minting_halted

    def close(self) -> None:
        try:
            self.issuance.close()
            self.custody.close()
        finally:
            self.database.dispose()


def pay_from(node: RegtestNode, sender: str, to: str, sats: int) -> str:
    """A transaction whose only input is an output of the node's wallet at ``sender``, paying
    ``sats`` to ``to`` and the rest (less a fee) back to ``sender``; its txid."""
    funding = node.fund(sender, 2 * sats)
    node.mine(1)
    (coin,) = [
        u for u in node.rpc.call("listunspent", 1, 9999999, [sender]) if u["txid"] == funding
    ]
    change = to_sats(coin["amount"]) - sats - 10_000
    raw = node.rpc.call(
        "createrawtransaction",
        [{"txid": coin["txid"], "vout": coin["vout"]}],
        {to: to_coins(sats), sender: to_coins(change)},
    )
    signed = node.rpc.call("signrawtransactionwithwallet", raw)
    assert signed["complete"], signed
    return str(node.rpc.call("sendrawtransaction", signed["hex"]))


@pytest.fixture
def make_world(
    litecoind: RegtestNode, database_url: str, tmp_path: Path
) -> Iterator[Callable[[str | None], World]]:
    """A world whose ``[compliance] sanctions_list`` names ``listed`` (none: no list)."""
    made: list[World] = []
    ledgers: list[EmbeddedLedger] = []

    def make(listed: str | None) -> World:
        config = custody_config(litecoind, tmp_path)
        if listed is not None:
            write_sanctions(tmp_path / "sanctions", listed)
            config = config.model_copy(
                update={"compliance": ComplianceConfig(sanctions_list=tmp_path / "sanctions")}
            )
        ledger, treasury = token_ledger()
        ledgers.append(ledger)
        clock = Clock()
        database = bootstrap.database(database_url)
        custody = bootstrap.bitcoin_custody(config)
        issuance = bootstrap.issuance(
            config, database, custody=custody, clock=clock, ledger=ledger, treasury=treasury
        )
        world = World(litecoind, config, database, custody, issuance, ledger, treasury, clock)
        made.append(world)
        with database.uow() as uow:
            uow.reference.add_customer(CUSTOMER, "Alice")
            uow.compliance.set_profile(CUSTOMER, at=clock(), tier=1, status="active")
            uow.commit()
        return world

    try:
        yield make
    finally:
        for world in made:
            world.close()
        for ledger in ledgers:
            ledger.close()


def test_a_deposit_from_a_listed_sender_is_held_on_a_real_node(
    make_world: Callable[[str | None], World], litecoind: RegtestNode
) -> None:
    sender = litecoind.new_address()
    world = make_world(sender)
    address = world.address()
    txid = pay_from(litecoind, sender, address, DEPOSIT_SATS)
    litecoind.mine(CONFIRMATIONS)
    world.watch()
    op_id = world.deposit_of(txid, address)
    assert world.operation(op_id).step == "kyc"

    held = world.route(op_id, lambda op: op.status != "pending")
    assert held.status == "held", held
    assert f"sender {sender} is" in (held.last_error or "") and "sanctions" in (
        held.last_error or ""
    )
    assert held.result["kyc"]["listed_senders"] == [sender]
    with world.database.uow() as uow:
        assert uow.issuance.get_mint(mint_id(op_id)) is None
        review = uow.compliance.review(review_id(op_id))
    assert review is not None and review.kind == "deposit_held" and review.closed_at is None
    assert world.issuance.context.issuer.supply() == 0 and world.mints() == {}

    # The officer can do nothing with it: the Bitcoin stays in custody, frozen.
    ctx = world.issuance.context
    for refused in (
        lambda: release_held_deposit(ctx, op_id, reason="looks fine", actor="officer"),
        lambda: return_held_deposit(
            ctx, op_id, address=litecoind.new_address(), reason="send back", actor="officer"
        ),
    ):
        with pytest.raises(InvalidOperationStateError) as error:
            refused()
        assert error.value.code == 41 and sender in str(error.value)
    # More rounds change nothing.
    world.clock.advance(3600)
    assert world.router.tick().error is None
    assert world.operation(op_id).status == "held" and world.mints() == {}


def test_a_minted_deposit_reorged_away_is_never_minted_twice_and_halts_minting(
    make_world: Callable[[str | None], World], litecoind: RegtestNode
) -> None:
    world = make_world(None)
    address = world.address()
    txid = litecoind.fund(address, DEPOSIT_SATS)
    litecoind.mine(CONFIRMATIONS)
    world.watch()
    op_id = world.deposit_of(txid, address)
    minted = world.route(op_id, lambda op: (op.status, op.step) == ("waiting", "credit"))
    assert minted.amount_sats == DEPOSIT_SATS
    assert world.mints() == {f"issuance:{op_id}": 1}

    # The block holding the deposit is taken off the chain, and the chain is mined again
    # (longer): the transaction, back from the mempool, is confirmed again in another block.
    block = litecoind.rpc.call("getrawtransaction", txid, True)["blockhash"]
    litecoind.invalidate(block)
    assert txid in litecoind.rpc.call("getrawmempool")
    litecoind.mine(CONFIRMATIONS + 1)
    assert litecoind.rpc.call("getrawtransaction", txid, True)["blockhash"] != block
    # The watcher sees the reorg under the minted deposit: a critical alert, minting halted.
    assert world.watch() >= 1
    assert world.halted()
    with world.database.uow() as uow:
        alerts = [a for a in uow.books.alerts() if a.kind == "issuance_reserve_reorged"]
    assert alerts and all(a.severity == "critical" for a in alerts)
    assert any(txid in a.message for a in alerts)
    world.watch()
    assert world.operations() == [op_id]  # no second operation for the same output
    world.ingest()
    done = world.route(op_id, lambda op: op.status != "waiting")
    assert done.status == "completed", done.last_error
    assert world.mints() == {f"issuance:{op_id}": 1}
    assert world.issuance.context.issuer.supply() == DEPOSIT_SATS

    # While minting is halted a new deposit is not minted: it waits at its mint step.
    later_txid = litecoind.fund(address, LATER_SATS)
    litecoind.mine(CONFIRMATIONS)
    world.watch()
    later = world.deposit_of(later_txid, address)
    waiting = world.route(later, lambda op: op.step == "mint" and op.status == "waiting")
    with world.database.uow() as uow:
        last = uow.issuance.steps(later)[-1]
    assert (last.step, last.outcome, last.detail) == ("mint", "wait", {"minting": "halted"})
    assert waiting.amount_sats == LATER_SATS
    assert world.mints() == {f"issuance:{op_id}": 1}

    # An officer's resume lets it on; the reorged deposit is still minted once.
    resume_minting(world.database.uow, reason="reorg checked", actor="officer", at=world.clock())
    world.route(later, lambda op: (op.status, op.step) == ("waiting", "credit"))
    assert world.mints() == {f"issuance:{op_id}": 1, f"issuance:{later}": 1}
    assert world.issuance.context.issuer.supply() == DEPOSIT_SATS + LATER_SATS
