"""Metric values after real flows on the in-memory chain, on SQLite and PostgreSQL: the
redemption and payout queues' depth and age while a redemption and its payout wait, and 0 once
they completed; the Bitcoin watcher's height and its lag behind the node's tip as blocks are
mined and watched.

How: the redemption world of ``test_issuance_redeem`` (router, embedded issuer, watcher and
payouts worker on the in-memory chain) on the database of an API test world, whose application
answers ``GET /metrics``; the scrape reads that database and the chain's tip as ``sluice serve``
installs them (:func:`install_state`), with the world's clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.monitoring.collectors import (
    ISSUANCE_STATUSES,
    PAYOUT_STATUSES,
    StateSources,
    install_state,
)
from sluice.services.btc_payouts import get_payout
from sluice.services.issuance_redeem import payout_id_of
from tests.api_support import ApiWorld, api_world
from tests.integration import test_issuance_redeem as redeem

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture(scope="module")
def wallet(tmp_path_factory: pytest.TempPathFactory) -> EmbitCustodyWallet:
    sandbox = create_sandbox_custody(tmp_path_factory.mktemp("keys") / "custody", redeem.CHAIN)
    keys = load_signing_keys(sandbox.key_files[:2], chain=redeem.CHAIN)
    return EmbitCustodyWallet(sandbox.descriptor, redeem.CHAIN, keys)


@pytest.fixture
def api(database_url: str) -> Iterator[ApiWorld]:
    built = api_world(database_url)
    yield built
    install_state(None)
    built.sandbox.close()


@pytest.fixture
def world(api: ApiWorld, wallet: EmbitCustodyWallet) -> redeem.World:
    world = redeem.World(api.sandbox.database, wallet)
    world.customer(redeem.ALICE)
    world.give_istsi(redeem.ALICE, 1_000_000)
    install_state(
        StateSources(
            engine=api.sandbox.database.engine,
            clock=world.clock,
            node_tip=lambda: world.chain.tip_height,
        )
    )
    return world


def scrape(api: ApiWorld) -> Samples:
    answer = api.client().get("/metrics")
    assert answer.status_code == 200, answer.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def queue(samples: Samples, name: str, statuses: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """status → (depth, oldest age) of one queue, every status present in the scrape."""
    found = {}
    for status in statuses:
        depth = value(samples, "sluice_queue_depth", queue=name, status=status)
        age = value(samples, "sluice_queue_oldest_age_seconds", queue=name, status=status)
        assert depth is not None and age is not None, (name, status)
        found[status] = (depth, age)
    return found


def waiting(found: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    return {status: shown for status, shown in found.items() if shown != (0, 0)}


def test_a_waiting_redemption_and_payout_show_depth_and_age_then_0_when_completed(
    api: ApiWorld, world: redeem.World
) -> None:
    world.fund_custody(2_000_000)
    before = scrape(api)
    assert waiting(queue(before, "redemptions", ISSUANCE_STATUSES)) == {}
    assert waiting(queue(before, "payouts", PAYOUT_STATUSES)) == {}

    # A redemption opened: one row in the redemptions queue, as old as the clock moved since.
    op = world.redeem(300_000)
    world.clock.now += timedelta(seconds=90)
    samples = scrape(api)
    shown = waiting(queue(samples, "redemptions", ISSUANCE_STATUSES))
    assert list(shown) == [world.operation(op.id).status] == ["pending"]
    depth, age = shown["pending"]
    assert depth == 1 and age >= 90
    assert waiting(queue(samples, "payouts", PAYOUT_STATUSES)) == {}

    # Burned and booked: its payout is requested and waits (queued) — both queues hold one.
    assert world.run(op.id).step == "confirm"
    world.book_burn(op)
    op = world.run(op.id)
    payout = get_payout(world.db.uow, payout_id_of(op.id))
    assert payout is not None and payout.status == "queued"
    world.clock.now += timedelta(seconds=30)
    samples = scrape(api)
    redemptions = waiting(queue(samples, "redemptions", ISSUANCE_STATUSES))
    assert list(redemptions) == [op.status]
    assert redemptions[op.status][0] == 1 and redemptions[op.status][1] >= 120
    payouts = waiting(queue(samples, "payouts", PAYOUT_STATUSES))
    assert list(payouts) == ["queued"]
    assert payouts["queued"][0] == 1 and payouts["queued"][1] >= 30

    # Broadcast: still one payout waiting, now as broadcast.
    world.pay()
    payouts = waiting(queue(scrape(api), "payouts", PAYOUT_STATUSES))
    assert list(payouts) == ["broadcast"] and payouts["broadcast"][0] == 1
    assert payouts["broadcast"][1] > 0

    # Mined, confirmed, the redemption completed: both queues empty, ages 0.
    for _ in range(redeem.CONFIRMATIONS + 1):
        world.mine()
        world.pay()
    assert world.run(op.id).status == "completed"
    after = scrape(api)
    assert waiting(queue(after, "redemptions", ISSUANCE_STATUSES)) == {}
    assert waiting(queue(after, "payouts", PAYOUT_STATUSES)) == {}


def test_the_watchers_height_and_lag_follow_the_chain(api: ApiWorld, world: redeem.World) -> None:
    world.fund_custody(500_000)  # mines and watches
    samples = scrape(api)
    tip = world.chain.tip_height
    assert value(samples, "sluice_bitcoin_watcher_height") == tip
    assert value(samples, "sluice_bitcoin_watcher_lag_blocks") == 0
    assert value(samples, "sluice_bitcoin_node_height") == tip

    # Blocks the watcher has not read yet: it lags by as many.
    world.chain.mine(3)
    samples = scrape(api)
    assert value(samples, "sluice_bitcoin_node_height") == tip + 3
    assert value(samples, "sluice_bitcoin_watcher_height") == tip
    assert value(samples, "sluice_bitcoin_watcher_lag_blocks") == 3

    # It reads them: caught up.
    world.watch()
    samples = scrape(api)
    assert value(samples, "sluice_bitcoin_watcher_height") == tip + 3
    assert value(samples, "sluice_bitcoin_watcher_lag_blocks") == 0
