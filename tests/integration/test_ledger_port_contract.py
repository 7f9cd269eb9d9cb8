"""One contract for the ledger port, run against both adapters.

``embedded``: the embedded ledger in process (its node client, commands and registries).
``canton``: the Canton client talking to the same embedded ledger served by ``LedgerServer`` over a
real socket (HTTP, and WebSocket for the update stream), the registries through the Registry API.

Every test drives the port only (``LedgerClient``, ``LedgerCommands``, ``RegistryClient``); the
world around it (customers' wallets, the clock) is the sandbox's. Both adapters must pass the same
assertions — and the stream each delivers must be the ledger's own, item for item.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from decimal import Decimal

import pytest

from sluice.domain.history import item_offset
from sluice.domain.ledger import REASON_KEY, Transfer, parse_timestamp
from sluice.ports import CommandError, LedgerClient, RegistryError
from sluice.sandbox import Sandbox


@pytest.fixture(params=["embedded", "canton"])
def sandbox(request: pytest.FixtureRequest) -> Iterator[Sandbox]:
    world = Sandbox.create("sqlite://", customers=2, via_http=request.param == "canton")
    assert world.via_http == (request.param == "canton")
    try:
        yield world
    finally:
        world.close()


def record_time(item: object) -> object:
    assert isinstance(item, dict)
    update = item["update"]
    if "Transaction" in update:
        return parse_timestamp(update["Transaction"]["value"]["recordTime"])
    times = update["OffsetCheckpoint"]["value"]["synchronizerTimes"]
    return max(parse_timestamp(t["recordTime"]) for t in times)


def transfer_from_treasury(sandbox: Sandbox, receiver: str, amount: str, *, coin: bool = True):
    instrument = sandbox.coin if coin else sandbox.token
    holdings = sandbox.ledger.active_holdings(sandbox.treasury, instrument)
    now = sandbox.clock()
    return Transfer(
        sender=sandbox.treasury,
        receiver=receiver,
        amount=Decimal(amount),
        instrument=instrument,
        requested_at=now,
        execute_before=now + timedelta(hours=1),
        input_holding_cids=tuple(h.contract_id for h in holdings),
        meta={REASON_KEY: f"contract-{amount}"},
    )


def fund_treasury(sandbox: Sandbox) -> None:
    sandbox.deposit("cust-0", "500")
    offer = sandbox.deposit("cust-1", "300", instrument=sandbox.token)
    assert offer is not None
    sandbox.ledger.accept(offer, sandbox.treasury)


def test_the_stream_is_the_ledgers_own_item_for_item(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    sandbox.ledger.advance(120)
    sandbox.ledger.checkpoint()
    client = sandbox.ledger_client()
    expected = list(sandbox.ledger.client(sandbox.treasury).updates(sandbox.treasury, 0))
    got = list(client.updates(sandbox.treasury, None))
    assert got == expected
    offsets = [item_offset(item) for item in got]
    assert offsets == sorted(offsets)
    assert len(set(offsets)) == len(offsets)
    assert client.ledger_end() == offsets[-1]


def test_updates_after_an_offset_and_with_a_limit(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    client = sandbox.ledger_client()
    everything = list(client.updates(sandbox.treasury, 0))
    middle = item_offset(everything[len(everything) // 2])
    assert middle is not None
    after = list(client.updates(sandbox.treasury, middle))
    assert after == [item for item in everything if (item_offset(item) or 0) > middle]
    assert list(client.updates(sandbox.treasury, 0, limit=2)) == everything[:2]
    assert list(client.updates(sandbox.treasury, client.ledger_end())) == []


def test_ledger_end_moves_with_each_commit(sandbox: Sandbox) -> None:
    client = sandbox.ledger_client()
    before = client.ledger_end()
    sandbox.deposit("cust-0", "10")
    assert client.ledger_end() > before


def test_offset_at_record_time_finds_the_last_item_at_or_before(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    sandbox.ledger.advance(5)
    sandbox.deposit("cust-1", "7")
    client: LedgerClient = sandbox.ledger_client()
    items = list(client.updates(sandbox.treasury, 0))
    first_time = record_time(items[0])
    assert isinstance(first_time, type(sandbox.clock()))
    assert client.offset_at_record_time(sandbox.treasury, first_time - timedelta(seconds=1)) == 0
    for item in items:
        at = record_time(item)
        assert isinstance(at, type(first_time))
        found = client.offset_at_record_time(sandbox.treasury, at)
        assert found == max(
            item_offset(i) or 0
            for i in items
            if record_time(i) <= at  # type: ignore[operator]
        )


def test_a_direct_transfer_commits_and_is_streamed_with_its_reason(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    receiver = sandbox.customers["cust-1"]
    transfer = transfer_from_treasury(sandbox, receiver, "120")
    factory = sandbox.registries(sandbox.coin).transfer_factory(transfer)
    assert factory.transfer_kind == "direct"
    client = sandbox.ledger_client()
    end = client.ledger_end()
    sandbox.commands.submit_transfer(
        transfer, factory, act_as=sandbox.treasury, command_id="direct-1", max_record_time=None
    )
    new = list(client.updates(sandbox.treasury, end))
    transactions = [i for i in new if "Transaction" in i["update"]]
    assert len(transactions) == 1
    text = str(transactions[0])
    assert "contract-120" in text
    assert "TransferFactory_Transfer" in text
    held = sum(h.amount for h in sandbox.ledger.active_holdings(receiver, sandbox.coin))
    assert held == Decimal(10_000) + Decimal(120)


def test_an_offer_is_made_then_withdrawn_through_the_registry_context(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    receiver = sandbox.customers["cust-0"]
    transfer = transfer_from_treasury(sandbox, receiver, "50", coin=False)
    registry = sandbox.registries(sandbox.token)
    factory = registry.transfer_factory(transfer)
    assert factory.transfer_kind == "offer"
    sandbox.commands.submit_transfer(
        transfer, factory, act_as=sandbox.treasury, command_id="offer-1", max_record_time=None
    )
    (instruction,) = [
        i
        for i in sandbox.ledger.active_instructions(sandbox.treasury)
        if i.transfer.sender == sandbox.treasury
    ]
    context = registry.choice_context("withdraw", instruction.contract_id)
    assert context.values  # passed through untouched from the registry
    sandbox.commands.exercise_instruction(
        "withdraw",
        instruction.contract_id,
        context,
        act_as=sandbox.treasury,
        command_id="withdraw-1",
    )
    assert not [
        i
        for i in sandbox.ledger.active_instructions(sandbox.treasury)
        if i.transfer.sender == sandbox.treasury
    ]


def test_an_incoming_offer_is_accepted(sandbox: Sandbox) -> None:
    offer_cid = sandbox.deposit("cust-0", "40", instrument=sandbox.token)
    assert offer_cid is not None
    context = sandbox.registries(sandbox.token).choice_context("accept", offer_cid)
    sandbox.commands.exercise_instruction(
        "accept", offer_cid, context, act_as=sandbox.treasury, command_id="accept-1"
    )
    held = sum(h.amount for h in sandbox.ledger.active_holdings(sandbox.treasury, sandbox.token))
    assert held == Decimal(40)


def test_spending_an_archived_holding_is_a_definite_rejection(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    receiver = sandbox.customers["cust-1"]
    transfer = transfer_from_treasury(sandbox, receiver, "10")
    factory = sandbox.registries(sandbox.coin).transfer_factory(transfer)
    commands = sandbox.commands
    commands.submit_transfer(
        transfer, factory, act_as=sandbox.treasury, command_id="spend-1", max_record_time=None
    )
    with pytest.raises(CommandError) as caught:
        commands.submit_transfer(
            transfer, factory, act_as=sandbox.treasury, command_id="spend-2", max_record_time=None
        )
    assert caught.value.definite


def test_the_same_command_id_twice_is_not_a_definite_answer(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    transfer = transfer_from_treasury(sandbox, sandbox.customers["cust-1"], "10")
    factory = sandbox.registries(sandbox.coin).transfer_factory(transfer)
    commands = sandbox.commands
    commands.submit_transfer(
        transfer, factory, act_as=sandbox.treasury, command_id="same", max_record_time=None
    )
    with pytest.raises(CommandError) as caught:
        commands.submit_transfer(
            transfer, factory, act_as=sandbox.treasury, command_id="same", max_record_time=None
        )
    assert not caught.value.definite  # it may have committed (it did): ingestion decides


def test_a_lost_response_is_not_a_definite_answer(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    transfer = transfer_from_treasury(sandbox, sandbox.customers["cust-1"], "10")
    factory = sandbox.registries(sandbox.coin).transfer_factory(transfer)
    sandbox.ledger.faults.drop_next_responses(1)
    end = sandbox.ledger.ledger_end(sandbox.treasury)
    with pytest.raises(CommandError) as caught:
        sandbox.commands.submit_transfer(
            transfer, factory, act_as=sandbox.treasury, command_id="lost", max_record_time=None
        )
    assert not caught.value.definite
    assert sandbox.ledger.ledger_end(sandbox.treasury) > end  # it did commit


def test_a_failed_command_is_a_definite_rejection(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    transfer = transfer_from_treasury(sandbox, sandbox.customers["cust-1"], "10")
    factory = sandbox.registries(sandbox.coin).transfer_factory(transfer)
    sandbox.ledger.faults.fail_next_commands(1)
    with pytest.raises(CommandError) as caught:
        sandbox.commands.submit_transfer(
            transfer, factory, act_as=sandbox.treasury, command_id="failed", max_record_time=None
        )
    assert caught.value.definite


def test_a_cut_stream_fails_the_read_after_complete_items_only(sandbox: Sandbox) -> None:
    from sluice.ports import LedgerReadError

    fund_treasury(sandbox)
    sandbox.deposit("cust-0", "5")
    client = sandbox.ledger_client()
    everything = list(client.updates(sandbox.treasury, 0))
    sandbox.ledger.faults.cut_stream_after(2, node=sandbox.node)
    got = []
    with pytest.raises(LedgerReadError):
        for item in client.updates(sandbox.treasury, 0):
            got.append(item)
    assert got == everything[: len(got)]
    assert len(got) <= 2


def test_a_registry_refuses_an_instrument_it_does_not_administer(sandbox: Sandbox) -> None:
    fund_treasury(sandbox)
    transfer = transfer_from_treasury(sandbox, sandbox.customers["cust-1"], "10")
    wrong = sandbox.registries(sandbox.token)  # USDX's admin asked about Canton Coin
    with pytest.raises(RegistryError):
        wrong.transfer_factory(transfer)


def test_a_choice_context_for_an_unknown_instruction_is_a_registry_error(
    sandbox: Sandbox,
) -> None:
    with pytest.raises(RegistryError):
        sandbox.registries(sandbox.token).choice_context("accept", "00" + "ab" * 33)
