"""The issuer's commands on iSTSi (:mod:`sluice.ledger.local.issuer`), in process and over a
served embedded ledger's sandbox control endpoint (a real :class:`LedgerServer` on a free port).

Each test runs twice: on :class:`EmbeddedIssuerLedger` over an in-memory ledger, and on
:class:`RemoteIssuerLedger` over :class:`RemoteLedger` talking to that ledger served. What the
port says is checked against the ledger itself (holdings, supply, instructions).

Covers: ``create_istsi`` (8 decimals, KYC hold, idempotent), mint / burn / supply in whole sats,
a duplicate command id answering the first result, a lost response (and, over HTTP, a refused
or garbled answer) as :class:`IssuerOutcomeUnknownError` whose resend commits once, refusals as
:class:`IssuerRejectedError`, held transfers (only iSTSi's, in ``pending_internal_workflow``) and
the admin's decision: approved, the receiver accepts and holds the amount; rejected, the sender's
holding comes back unlocked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal

import pytest

from sluice.domain.ledger import InstrumentId
from sluice.ledger.local import EmbeddedLedger, RegistryPolicy
from sluice.ledger.local.issuer import (
    EmbeddedIssuerLedger,
    RemoteIssuerLedger,
    create_istsi,
)
from sluice.ledger.local.remote import RemoteLedger
from sluice.ledger.local.server import LedgerServer
from sluice.ports.issuance import (
    IssuerLedger,
    IssuerOutcomeUnknownError,
    IssuerRejectedError,
    sats_to_amount,
)


@dataclass
class World:
    ledger: EmbeddedLedger
    port: IssuerLedger
    admin: EmbeddedLedger | RemoteLedger  # what create_istsi was called with
    server: LedgerServer | None
    issuer: str
    treasury: str
    alice: str
    bob: str
    istsi: InstrumentId

    def held_sats(self, party: str) -> int:
        total = sum((h.amount for h in self.ledger.active_holdings(party, self.istsi)), Decimal(0))
        return int(total / Decimal("0.00000001"))


@contextmanager
def open_world(kind: str) -> Iterator[World]:
    ledger = EmbeddedLedger.open(None, seed=11, checkpoint_interval_s=None)
    for node in ("registry", "exchange", "wallets"):
        ledger.add_node(node)
    issuer = ledger.allocate_party("issuer", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    alice = ledger.allocate_party("alice", "wallets")
    bob = ledger.allocate_party("bob", "wallets")
    if kind == "in_process":
        istsi = create_istsi(ledger, issuer)
        yield World(
            ledger,
            EmbeddedIssuerLedger(ledger, issuer),
            ledger,
            None,
            issuer,
            treasury,
            alice,
            bob,
            istsi,
        )
        return
    server = LedgerServer(ledger).start()
    try:
        with RemoteLedger(server.url, timeout_s=10) as remote:
            istsi = create_istsi(remote, issuer)
            yield World(
                ledger,
                RemoteIssuerLedger(remote, issuer),
                remote,
                server,
                issuer,
                treasury,
                alice,
                bob,
                istsi,
            )
    finally:
        server.stop()


@pytest.fixture(params=["in_process", "served"])
def world(request: pytest.FixtureRequest) -> Iterator[World]:
    with open_world(request.param) as opened:
        yield opened


@pytest.fixture
def served() -> Iterator[World]:
    with open_world("served") as opened:
        yield opened


def test_create_istsi_registers_the_instrument_once(world: World) -> None:
    config = world.ledger.instrument_config(world.istsi)
    assert world.istsi == InstrumentId(world.issuer, "iSTSi") == world.port.instrument
    assert (config.name, config.symbol, config.decimals) == ("iSTSi", "iSTSi", 8)
    assert config.policy.kyc_hold and not config.policy.tap_allowed
    updates = world.ledger.update_count()
    world.ledger.set_policy(world.istsi, RegistryPolicy(kyc_hold=True, transfer_fee=Decimal(0)))
    changed = world.ledger.instrument_config(world.istsi)
    assert create_istsi(world.admin, world.issuer) == world.istsi
    assert world.ledger.instrument_config(world.istsi) == changed  # left as it is
    assert world.ledger.update_count() == updates


def test_mint_burn_and_supply_in_whole_sats(world: World) -> None:
    minted = world.port.mint(world.alice, 150_000, reason="issuance:op-1", command_id="m-1")
    assert minted.command_id == "m-1"
    assert world.ledger.update_by_id(minted.update_id, world.alice)
    assert world.held_sats(world.alice) == 150_000
    assert world.ledger.supply(world.istsi) == sats_to_amount(150_000) == Decimal("0.0015")
    assert world.port.supply() == 150_000

    burned = world.port.burn(world.alice, 50_001, reason="issuance:op-2:burn", command_id="b-1")
    assert burned.update_id != minted.update_id
    assert world.held_sats(world.alice) == 99_999
    assert world.port.supply() == 99_999
    assert world.ledger.totals(world.istsi).burned == sats_to_amount(50_001)


def test_a_duplicate_command_answers_the_first_result(world: World) -> None:
    first = world.port.mint(world.treasury, 1_000, reason="issuance:op-1", command_id="m-1")
    again = world.port.mint(world.treasury, 1_000, reason="issuance:op-1", command_id="m-1")
    assert again == first
    assert world.port.supply() == 1_000
    burn = world.port.burn(world.treasury, 400, reason="issuance:op-1:burn", command_id="b-1")
    assert world.port.burn(world.treasury, 400, reason="x", command_id="b-1") == burn
    assert world.port.supply() == 600


def test_a_lost_response_is_an_unknown_outcome_and_the_resend_commits_once(world: World) -> None:
    world.ledger.faults.drop_next_responses(1)
    with pytest.raises(IssuerOutcomeUnknownError):
        world.port.mint(world.treasury, 2_500, reason="issuance:op-9", command_id="m-9")
    assert world.port.supply() == 2_500  # it did commit
    result = world.port.mint(world.treasury, 2_500, reason="issuance:op-9", command_id="m-9")
    assert world.ledger.update_by_id(result.update_id, world.treasury)
    assert world.port.supply() == 2_500
    assert world.ledger.totals(world.istsi).minted == sats_to_amount(2_500)


def test_an_unavailable_node_is_an_unknown_outcome_and_nothing_committed(world: World) -> None:
    world.ledger.faults.fail_next_commands(1, message="node restarting")
    with pytest.raises(IssuerOutcomeUnknownError, match="node restarting"):
        world.port.mint(world.treasury, 700, reason="issuance:op-3", command_id="m-3")
    assert world.port.supply() == 0
    world.port.mint(world.treasury, 700, reason="issuance:op-3", command_id="m-3")
    assert world.port.supply() == 700


def test_transport_faults_over_http_are_unknown_outcomes(served: World) -> None:
    world = served
    assert world.server is not None
    world.server.faults.fail_next("/sandbox/v1/mint", 503)
    with pytest.raises(IssuerOutcomeUnknownError):
        world.port.mint(world.treasury, 300, reason="issuance:op-4", command_id="m-4")
    assert world.port.supply() == 0  # refused before the ledger saw it
    world.server.faults.malformed_next("/sandbox/v1/mint", process=True)
    with pytest.raises(IssuerOutcomeUnknownError):
        world.port.mint(world.treasury, 300, reason="issuance:op-4", command_id="m-4")
    assert world.port.supply() == 300  # handled, its answer cut
    world.port.mint(world.treasury, 300, reason="issuance:op-4", command_id="m-4")
    assert world.port.supply() == 300
    world.server.faults.fail_next("/sandbox/v1/active_instructions", 503)
    with pytest.raises(IssuerOutcomeUnknownError):
        world.port.held_transfers()


def test_refusals_are_rejections(world: World) -> None:
    world.port.mint(world.alice, 100, reason="issuance:op-5", command_id="m-5")
    with pytest.raises(IssuerRejectedError, match="insufficient_funds"):
        world.port.burn(world.alice, 101, reason="issuance:op-5:burn", command_id="b-5")
    with pytest.raises(IssuerRejectedError, match="inactive_contract"):
        world.port.decide_transfer("00dead", approve=True, reason="approved", command_id="k-1")
    assert world.port.supply() == 100


def _held_transfer(world: World, sats: int) -> str:
    world.port.mint(world.alice, 10_000, reason="issuance:op-h", command_id="m-h")
    offer = world.ledger.transfer(
        world.alice, world.bob, world.istsi, sats_to_amount(sats), reason="rent"
    )
    assert offer.instruction_cid is not None
    return offer.instruction_cid


def test_held_transfers_lists_istsi_transfers_waiting_for_the_admin(world: World) -> None:
    other = world.ledger.create_instrument(world.issuer, "USDX", RegistryPolicy(kyc_hold=True))
    world.ledger.tap(world.alice, other, 5)
    world.ledger.transfer(world.alice, world.bob, other, 1)  # held too, but not iSTSi
    cid = _held_transfer(world, 2_500)
    second = world.ledger.transfer(world.alice, world.treasury, world.istsi, sats_to_amount(10))

    held = world.port.held_transfers()
    assert [h.instruction_cid for h in held] == [cid, second.instruction_cid]
    first = held[0]
    assert (first.sender, first.receiver, first.amount, first.reason) == (
        world.alice,
        world.bob,
        sats_to_amount(2_500),
        "rent",
    )
    assert world.ledger.instruction(cid).status == "pending_internal_workflow"
    assert first.execute_before > first.requested_at
    assert [h.instruction_cid for h in world.port.held_transfers(limit=1)] == [cid]


def test_an_approved_transfer_goes_on_to_the_receiver(world: World) -> None:
    cid = _held_transfer(world, 2_500)
    result = world.port.decide_transfer(
        cid, approve=True, reason="approved", command_id=f"kyc-hold:{cid}"
    )
    again = world.port.decide_transfer(
        cid, approve=True, reason="approved", command_id=f"kyc-hold:{cid}"
    )
    assert again == result
    assert world.port.held_transfers() == []
    offers = [
        i for i in world.ledger.active_instructions(world.bob) if i.transfer.sender == world.alice
    ]
    assert [i.status for i in offers] == ["pending_receiver_acceptance"]
    world.ledger.accept(offers[0].contract_id, world.bob)
    assert world.held_sats(world.bob) == 2_500
    assert world.held_sats(world.alice) == 7_500
    assert world.port.supply() == 10_000


def test_a_rejected_transfer_gives_the_sender_its_holding_back(world: World) -> None:
    cid = _held_transfer(world, 2_500)
    world.ledger.faults.drop_next_responses(1)
    with pytest.raises(IssuerOutcomeUnknownError):
        world.port.decide_transfer(cid, approve=False, reason="receiver frozen", command_id="k-2")
    # The instruction is gone; the resend is answered by deduplication, not as inactive.
    result = world.port.decide_transfer(
        cid, approve=False, reason="receiver frozen", command_id="k-2"
    )
    assert world.ledger.update_by_id(result.update_id, world.issuer)
    assert world.port.held_transfers() == []
    assert world.ledger.active_instructions(world.bob) == []
    holdings = world.ledger.active_holdings(world.alice, world.istsi)
    assert all(h.lock is None for h in holdings)
    assert world.held_sats(world.alice) == 10_000
    assert world.held_sats(world.bob) == 0
