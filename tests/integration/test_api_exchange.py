"""Quotes and swaps over HTTP on SQLite and PostgreSQL: a customer quotes and swaps their own
balance (the quote id as the idempotency key: the same swap twice), sees their swaps, and cannot
quote or swap for someone else; a refusal answers its code; 503 without an exchange."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest

from sluice import bootstrap
from sluice.config import DeploymentConfig
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.journal import (
    AccountRef,
    customer_account_name,
    transfer_into,
    treasury_account_name,
)
from sluice.services.exchange import ExchangeContext
from tests.api_support import ApiWorld, api_world


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    found = api_world(database_url)
    yield found
    found.sandbox.close()


def _seed(world: ApiWorld) -> None:
    sandbox = world.sandbox
    for number, (account, instrument, amount) in enumerate(
        (
            (customer_account_name("cust-0"), sandbox.token, "100"),
            (EXCHANGE_INVENTORY, sandbox.coin, "10000"),
        )
    ):
        with sandbox.database.uow() as uow:
            uow.withdrawals.post(
                [
                    transfer_into(
                        f"seed:{number}",
                        "deposit",
                        treasury=AccountRef(treasury_account_name(sandbox.treasury), instrument),
                        liability=AccountRef(account, instrument),
                        amount=Decimal(amount),
                    )
                ]
            )
            uow.commit()


def _exchange(world: ApiWorld, tmp_path: Path) -> None:
    prices = tmp_path / "price.json"
    now = world.context.clock().timestamp()
    prices.write_text(json.dumps({"price": "3", "time": int(now)}))
    config = DeploymentConfig.model_validate(
        {
            "oracle": {
                "feeds": [
                    {
                        "pair": "USDX/AMULET",
                        "kind": "file",
                        "path": str(prices),
                        "price_pointer": "/price",
                        "time_pointer": "/time",
                        "heartbeat_s": 3600,
                    }
                ]
            },
            "exchange": {
                "quote_lifetime_s": 3600,
                "pairs": [{"sell": "USDX", "buy": "Amulet", "oracle_pair": "USDX/AMULET"}],
            },
        }
    )
    uow = world.sandbox.database.uow
    oracle = bootstrap.oracle_service(config, uow, clock=world.context.clock)
    world.context.oracle = oracle
    world.context.exchange = ExchangeContext(
        uow=uow,
        clock=world.context.clock,
        oracle=oracle,
        registry=world.context.compliance,
        settings=config.exchange.settings(),
    )


def _post(world: ApiWorld, who: str, path: str, body: object) -> tuple[int, dict[str, object]]:
    with world.client() as client:
        answer = client.post(path, json=body, headers=world.headers(who))
    return answer.status_code, answer.json()


def test_without_an_exchange_quotes_answer_503(world: ApiWorld) -> None:
    body = {"sell": "USDX", "buy": "Amulet", "sell_amount": "1"}
    status, answer = _post(world, "user", "/v1/customers/cust-0/quotes", body)
    assert (status, answer["code"], answer["error"]) == (503, 11, "exchange_not_configured")


def test_a_customer_quotes_and_swaps_their_own_balance(world: ApiWorld, tmp_path: Path) -> None:
    _seed(world)
    _exchange(world, tmp_path)
    body = {"sell": "USDX", "buy": "Amulet", "sell_amount": "10"}
    status, quote = _post(world, "user", "/v1/customers/cust-0/quotes", body)
    assert status == 201, quote
    assert Decimal(str(quote["rate"])) == 3
    received = Decimal(str(quote["received"]))
    fee = Decimal(str(quote["fee"]["amount"]))  # type: ignore[index]
    assert received + fee == 30

    status, other = _post(world, "user", "/v1/customers/cust-1/quotes", body)
    assert (status, other["code"]) == (404, 10)  # another customer's: not theirs to see
    status, refused = _post(
        world,
        "user",
        "/v1/customers/cust-0/swaps",
        {"quote_id": quote["id"], "min_received": "31"},
    )
    assert refused["code"] == 82 and 400 <= status < 500, refused

    status, swap = _post(world, "user", "/v1/customers/cust-0/swaps", {"quote_id": quote["id"]})
    assert status == 200, swap
    assert Decimal(str(swap["received"])) == received
    status, again = _post(
        world, "operator", "/v1/customers/cust-0/swaps", {"quote_id": quote["id"]}
    )
    assert (status, again) == (200, swap)
    with world.client() as client:
        listed = client.get("/v1/customers/cust-0/swaps", headers=world.headers("user")).json()
    assert [item["quote_id"] for item in listed] == [quote["id"]]
    with world.sandbox.database.uow() as uow:
        owed = uow.withdrawals.balance(
            AccountRef(customer_account_name("cust-0"), world.sandbox.coin)
        )
    assert owed == received
