"""iSTSi issuance as the product wires it: ``bootstrap.issuance`` on a demo-like embedded ledger
file with a custody on the in-memory chain, the ``[issuance]`` section's errors, the contract
address rebuild hook, the server's loop parts, and the ``issuance.*`` approval executors run
twice (idempotent) — on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sluice import bootstrap
from sluice.api.context import ApiContext
from sluice.api.operations import executors
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.fakechain.records import build
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.config import ConfigError, DeploymentConfig, load_config
from sluice.domain.approvals import Approval
from sluice.domain.errors import InvalidInputError, InvalidOperationStateError
from sluice.domain.ledger import InstrumentId
from sluice.ledger.local.engine import EmbeddedLedger
from sluice.ports.issuance import ContractAddresses
from sluice.server.issuance import (
    ROUTER_PART,
    TRANSFERS_PART,
    issuance_loop,
    issuance_off_reason,
)
from sluice.services.access import ApiKeyVerifier
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.compliance import KycRegistry
from sluice.services.controls import pause, resume
from sluice.services.issuance_contracts import apply_contract_addresses, descriptor_checksum
from sluice.services.issuance_deposit import mint_id
from sluice.services.issuance_intake import deposit_operation_id
from sluice.services.issuance_router import create_operation
from sluice.services.mint_guard import halt_minting
from sluice.services.settings import RuntimeSettings
from tests.integration.issuance_deposit_world import CHAIN, CONFIRMATIONS, Clock, sender_script

SATS = 125_000


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    keys = create_sandbox_custody(tmp_path_factory.mktemp("custody") / "keys", CHAIN)
    return EmbitCustodyWallet(keys.descriptor, CHAIN, load_signing_keys(keys.key_files))


def demo_like_ledger(path: Path) -> str:
    """An embedded ledger file laid out as the demo's (nodes dso, exchange, wallets; the
    treasury on exchange); answers the treasury party."""
    ledger = EmbeddedLedger.open(str(path), seed=16)
    for node in ("dso", "exchange", "wallets"):
        ledger.add_node(node)
    treasury = ledger.allocate_party("treasury", "exchange")
    ledger.allocate_party("alice", "wallets")
    ledger.flush()
    ledger.close()
    return treasury


@dataclass
class Setup:
    config: DeploymentConfig
    db: bootstrap.Database
    custody: bootstrap.BitcoinCustody
    chain: FakeChain
    clock: Clock
    treasury: str
    ledger_path: Path

    def issuance(self, **config: Any) -> bootstrap.Issuance:
        deployment = self.config
        if config:
            deployment = self.config.model_copy(
                update={"issuance": self.config.issuance.model_copy(update=config)}
            )
        return bootstrap.issuance(deployment, self.db, custody=self.custody, clock=self.clock)

    def customer(self, customer: str) -> None:
        with self.db.uow() as uow:
            uow.reference.add_customer(customer, customer.title())
            uow.compliance.set_profile(customer, at=self.clock(), tier=1, status="active")
            uow.commit()

    def deposit(self, customer: str, sats: int) -> str:
        """A deposit from a customer's wallet, confirmed by the watcher (which opens the
        operation); answers its id."""
        address = deposit_address(self.db.uow, self.custody.wallet, customer, clock=self.clock)
        source, _ = self.chain.fund(sender_script(1), sats + 2_000, mine=True)
        tx = build([(bytes.fromhex(source), 0, b"\x51", 0xFFFFFFFE)], [(address.script_hex, sats)])
        txid = self.chain.sendrawtransaction(tx.serialize().hex())
        self.chain.mine(CONFIRMATIONS + 1)
        watcher = DepositWatcher(
            self.db.uow, self.chain, self.custody.wallet, self.custody.settings, self.clock
        )
        assert watcher.run_once().error is None
        return deposit_operation_id(txid, 0)

    def operation(self, operation_id: str) -> Any:
        with self.db.uow() as uow:
            return uow.issuance.get_operation(operation_id)


@pytest.fixture
def setup(database_url: str, wallet: EmbitCustodyWallet, tmp_path: Path) -> Iterator[Setup]:
    path = tmp_path / "ledger.db"
    treasury = demo_like_ledger(path)
    chain = FakeChain(CHAIN)
    custody = bootstrap.BitcoinCustody(
        node=chain,
        wallet=wallet,
        settings=BitcoinSettings(chain=CHAIN, confirmations_min=CONFIRMATIONS),
        description="custody on the in-memory chain",
        configured=True,
        signers=2,
    )
    config = DeploymentConfig(data_dir=tmp_path, ledger={"path": path})  # type: ignore[arg-type]
    db = bootstrap.database(database_url)
    yield Setup(config, db, custody, chain, Clock(), treasury, path)
    db.dispose()


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_mints_a_confirmed_deposit_through_the_router(setup: Setup) -> None:
    issuance = setup.issuance()
    try:
        ctx = issuance.context
        issuer = ctx.issuer.instrument.admin
        assert issuer.startswith("issuer::")
        assert ctx.treasury == setup.treasury
        assert "issuer::" in issuance.description
        with setup.db.uow() as uow:
            onboarded = uow.withdrawals.instrument(InstrumentId(issuer, "iSTSi"))
        assert onboarded is not None and onboarded.enabled
        setup.customer("alice")
        op_id = setup.deposit("alice", SATS)
        assert setup.operation(op_id).step == "kyc"
        for _ in range(3):
            issuance.router.tick()
        op = setup.operation(op_id)
        assert (op.status, op.step) == ("waiting", "credit")
        assert ctx.issuer.supply() == SATS
        with setup.db.uow() as uow:
            uow.issuance.mark_mint_credited(mint_id(op_id))  # what ingestion does
            uow.commit()
        setup.clock.now += timedelta(seconds=ctx.settings.poll_s + 1)
        tick = issuance.router.tick()
        assert tick.completed == (op_id,)
        assert setup.operation(op_id).status == "completed"
    finally:
        issuance.close()
    # The file holds what was minted (flushed at close); a second wiring finds the same issuer
    # and instrument instead of making new ones.
    again = setup.issuance()
    try:
        assert again.context.issuer.instrument.admin == issuer
        assert again.context.issuer.supply() == SATS
    finally:
        again.close()
    reread = EmbeddedLedger.open(str(setup.ledger_path), read_only=True)
    try:
        assert [p for p in reread.parties() if p.startswith("issuer::")] == [issuer]
    finally:
        reread.close()


def test_a_configured_issuer_party_is_used(setup: Setup) -> None:
    ledger = EmbeddedLedger.open(str(setup.ledger_path))
    party = ledger.allocate_party("exchange-issuer", "dso")
    ledger.flush()
    ledger.close()
    issuance = setup.issuance(issuer_party=party)
    try:
        assert issuance.context.issuer.instrument == InstrumentId(party, "iSTSi")
        assert issuance.context.issuer.supply() == 0
    finally:
        issuance.close()


def test_bootstrap_refuses_what_it_cannot_wire(setup: Setup, tmp_path: Path) -> None:
    missing = setup.config.model_copy(
        update={"ledger": setup.config.ledger.model_copy(update={"path": tmp_path / "no.db"})}
    )
    with pytest.raises(InvalidInputError, match=r"no embedded ledger at .*no\.db"):
        bootstrap.issuance(missing, setup.db, custody=setup.custody)
    canton = setup.config.model_copy(
        update={
            "ledger": setup.config.ledger.model_copy(
                update={"kind": "canton", "path": None, "participant_url": "http://p:7575"}
            )
        }
    )
    with pytest.raises(InvalidInputError, match=r"Canton participant.*control_url"):
        bootstrap.issuance(canton, setup.db, custody=setup.custody)
    assert issuance_off_reason(canton, setup.custody, None) is not None
    assert "[bitcoin]" in (issuance_off_reason(setup.config, None, None) or "")
    with pytest.raises(InvalidInputError, match="instrument_id: no instrument 'OTHER'"):
        setup.issuance(instrument_id="OTHER")
    # The ledger was closed after each failure: it can be opened for writing again.
    setup.issuance().close()


def test_config_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "sluice.toml"
    path.write_text(
        "[issuance]\n"
        'issuer_party = "no-namespace"\n'
        "poll_s = 0\n"
        'control_url = "ftp://x"\n'
        "backoff_base_s = 600\n"
        "backoff_cap_s = 60\n"
        "colour = 1\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    text = str(caught.value)
    for key in ("issuance.issuer_party", "issuance.poll_s", "issuance.control_url"):
        assert key in text, text
    assert "colour" in text
    path.write_text("[issuance]\nbackoff_base_s = 600\nbackoff_cap_s = 60\n")
    with pytest.raises(ConfigError, match=r"backoff_base_s .* must not exceed backoff_cap_s"):
        load_config(path, environ={})
    path.write_text('[issuance]\nattempts_max = 3\ncontrol_url = "http://ledger:8080/"\n')
    section = load_config(path, environ={}).issuance
    assert section.control_url == "http://ledger:8080"
    assert section.settings().attempts_max == 3


# --- the contract addresses in force ----------------------------------------------------------


def test_a_new_issuer_party_in_force_rebuilds_the_context(setup: Setup) -> None:
    issuance = setup.issuance()
    try:
        first = issuance.router.ctx.issuer.instrument.admin
        ledger = issuance_ledger(issuance)
        party = ledger.allocate_party("issuer2", "dso")
        apply_contract_addresses(
            setup.db.uow,
            ContractAddresses(None, None, party, None),
            approval_id="a-1",
            effective_at=setup.clock.now + timedelta(hours=1),
            actor="test",
            at=setup.clock(),
        )
        assert not issuance.router.tick().rebuilt  # not in force yet
        assert issuance.router.ctx.issuer.instrument.admin == first
        setup.clock.now += timedelta(hours=2)
        assert issuance.router.tick().rebuilt
        assert issuance.router.ctx.issuer.instrument == InstrumentId(party, "iSTSi")
        with setup.db.uow() as uow:
            assert uow.withdrawals.instrument(InstrumentId(party, "iSTSi")) is not None
        # Another custody descriptor than the running one: the router runs nothing.
        body = "raw(0014" + "11" * 20 + ")"
        apply_contract_addresses(
            setup.db.uow,
            ContractAddresses(None, f"{body}#{descriptor_checksum(body)}", party, None),
            approval_id="a-2",
            effective_at=setup.clock.now,
            actor="test",
            at=setup.clock(),
        )
        tick = issuance.router.tick()
        assert tick.error is not None and "descriptor" in tick.error
        loop = issuance_loop(issuance, setup.db, interval_s=1.0)
        loop.run_round()
        status = loop.status()
        assert status[ROUTER_PART].failures_in_a_row == 1
        assert "IssuanceRoundError" in (status[ROUTER_PART].last_error or "")
        assert status[TRANSFERS_PART].failures_in_a_row == 0
    finally:
        issuance.close()
    # A new wiring starts from the addresses in force (and refuses them the same way).
    with pytest.raises(InvalidInputError, match="descriptor"):
        setup.issuance()


def issuance_ledger(issuance: bootstrap.Issuance) -> EmbeddedLedger:
    ledger = issuance.context.issuer._ledger  # type: ignore[attr-defined]
    assert isinstance(ledger, EmbeddedLedger)
    return ledger


def test_the_loop_parts_run_the_router_and_stop_for_the_pause(setup: Setup) -> None:
    issuance = setup.issuance()
    try:
        setup.customer("alice")
        op_id = setup.deposit("alice", SATS)
        loop = issuance_loop(issuance, setup.db, interval_s=0.1)
        pause(setup.db.uow, mode="emergency", reason="drill", actor="test", at=setup.clock())
        loop.run_round()
        assert loop.status()[ROUTER_PART].skipped is not None
        assert setup.operation(op_id).step == "kyc"
        resume(setup.db.uow, reason="drill over", actor="test", at=setup.clock())
        for _ in range(3):
            loop.run_round()
        assert setup.operation(op_id).step == "credit"
        assert loop.status()[ROUTER_PART].failures_in_a_row == 0
        assert loop.status()[TRANSFERS_PART].runs == 3
    finally:
        issuance.close()


# --- the approval executors -------------------------------------------------------------------


def api_context(setup: Setup, issuance: bootstrap.Issuance | None) -> ApiContext:
    context = ApiContext(
        uow=setup.db.uow,
        treasury=setup.treasury,
        clock=setup.clock,
        compliance=KycRegistry(),
        settings=RuntimeSettings(setup.db.uow, {}, clock=setup.clock),
        keys=ApiKeyVerifier(setup.db.uow),
        issuance=issuance,
    )
    context.executors = executors(context)
    return context


def approval(operation: str, approval_id: str, **parameters: Any) -> Approval:
    return Approval(
        id=approval_id,
        operation=operation,
        parameters=parameters,
        proposed_by="alice-admin",
        proposed_at=START_OF_TESTS,
        required=2,
        status="approved",
        reason="operator checked",
    )


START_OF_TESTS = Clock().now


def stuck_operation(setup: Setup, operation_id: str) -> str:
    """An operation whose step fails for good (its deposit output is unknown): stuck."""
    with setup.db.uow() as uow:
        create_operation(
            uow,
            operation_id=operation_id,
            type="bitcoin_deposit",
            customer_id="alice",
            amount_sats=SATS,
            params={"txid": "ab" * 32, "vout": 0, "address": "x"},
            first_step="reserve",
            at=setup.clock(),
        )
        uow.commit()
    return operation_id


def overrides(setup: Setup, operation_id: str) -> list[Any]:
    with setup.db.uow() as uow:
        return [s for s in uow.issuance.steps(operation_id) if s.kind == "override"]


def test_override_executors_run_once_per_approval(setup: Setup) -> None:
    issuance = setup.issuance()
    try:
        context = api_context(setup, issuance)
        setup.customer("alice")
        op_id = stuck_operation(setup, f"btc-deposit:{'ab' * 32}:0")
        issuance.router.run_operation(op_id)
        assert setup.operation(op_id).status == "stuck"
        retry = context.executors["issuance.retry"]
        first = retry(approval("issuance.retry", "ap-1", operation_id=op_id), setup.clock())
        assert first["operation"]["status"] == "pending"  # type: ignore[index]
        # Run again (a crash before the approval recorded its outcome): nothing more happens.
        again = retry(approval("issuance.retry", "ap-1", operation_id=op_id), setup.clock())
        assert again["already_done"] is True
        assert len(overrides(setup, op_id)) == 1
        # Another approval is another retry, refused while the operation is not stuck.
        with pytest.raises(InvalidOperationStateError):
            retry(approval("issuance.retry", "ap-2", operation_id=op_id), setup.clock())
        resolve = context.executors["issuance.resolve"]
        issuance.router.run_operation(op_id)
        assert setup.operation(op_id).status == "stuck"
        done = resolve(approval("issuance.resolve", "ap-3", operation_id=op_id), setup.clock())
        assert done["operation"]["status"] == "resolved"  # type: ignore[index]
        assert resolve(approval("issuance.resolve", "ap-3", operation_id=op_id), setup.clock())[
            "already_done"
        ]
        assert len(overrides(setup, op_id)) == 2
        # A compensation of a deposit nothing was minted for, twice.
        other = stuck_operation(setup, f"btc-deposit:{'cd' * 32}:0")
        issuance.router.run_operation(other)
        compensate = context.executors["issuance.compensate"]
        made = compensate(
            approval("issuance.compensate", "ap-4", operation_id=other), setup.clock()
        )
        assert made["operation"]["status"] == "compensated"  # type: ignore[index]
        assert compensate(
            approval("issuance.compensate", "ap-4", operation_id=other), setup.clock()
        )["already_done"]
        assert len(overrides(setup, other)) == 1
    finally:
        issuance.close()


def test_executors_without_issuance_say_so(setup: Setup) -> None:
    context = api_context(setup, None)
    with pytest.raises(InvalidOperationStateError, match="does not run in this process"):
        context.executors["issuance.retry"](
            approval("issuance.retry", "ap-1", operation_id="x"), setup.clock()
        )
    with pytest.raises(InvalidInputError, match="operation_id"):
        api_context(setup, setup.issuance()).executors["issuance.resolve"](
            approval("issuance.resolve", "ap-2"), setup.clock()
        )


def test_resume_minting_runs_once_per_approval(setup: Setup) -> None:
    context = api_context(setup, None)  # the guard's switch needs no issuer
    resume = context.executors["issuance.resume_minting"]

    def halted() -> bool:
        with setup.db.uow() as uow:
            return bool(uow.issuance.minting_state().minting_halted)

    def halt() -> None:
        halt_minting(
            setup.db.uow, reason="drill", kind="test", details={}, at=setup.clock(), actor="t"
        )

    halt()
    assert halted()
    assert resume(approval("issuance.resume_minting", "ap-1"), setup.clock()) == {
        "minting_halted": False
    }
    assert not halted()
    # Halted again, then the same approval's executor runs again: the new halt stands.
    halt()
    assert resume(approval("issuance.resume_minting", "ap-1"), setup.clock())["already_done"]
    assert halted()
    assert not resume(approval("issuance.resume_minting", "ap-2"), setup.clock())["minting_halted"]


def test_contract_addresses_are_written_once_with_the_time_lock(setup: Setup) -> None:
    context = api_context(setup, None)
    update = context.executors["issuance.update_contract_addresses"]
    party = "issuer::1220" + "ab" * 32
    effective = setup.clock.now + timedelta(hours=24)
    proposal = replace(
        approval("issuance.update_contract_addresses", "ap-9", issuer_party=party),
        effective_at=effective,
    )
    first = update(proposal, setup.clock())
    assert first["written"] is True and first["issuer_party"] == party
    assert update(proposal, setup.clock())["written"] is False
    nested = replace(
        approval(
            "issuance.update_contract_addresses",
            "ap-10",
            addresses={"registry_url": "https://registry.example"},
        ),
        effective_at=effective,
    )
    assert update(nested, setup.clock())["written"] is True
    with pytest.raises(InvalidInputError, match="issuer_party"):
        update(
            approval("issuance.update_contract_addresses", "ap-11", issuer_party="x::y"),
            setup.clock(),
        )
    with setup.db.uow() as uow:
        assert uow.issuance.contract_addresses(setup.clock.now) is None
        in_force = uow.issuance.contract_addresses(effective + timedelta(seconds=1))
    assert in_force is not None and in_force.registry_url == "https://registry.example"
