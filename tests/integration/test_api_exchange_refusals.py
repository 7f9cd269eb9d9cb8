"""The KYC 80 % warning and the inventory bound of swaps, over HTTP on SQLite and PostgreSQL
(the service-level tests are in ``test_exchange_swaps.py``): a swap that takes the customer past
80 % of their tier's daily exchange limit answers its warning (and keeps it in the listing), one
past the limit is refused (21); a swap beyond the exchange's inventory answers 409 with code 83
and moves nothing — no books, no swap, no event, no use of the KYC limits.

How: the real application around a sandbox exchange (``tests.api_support``), an oracle reading
a price file (USDX/AMULET at 3) and the exchange context as ``sluice serve`` builds it; the
customer's USDX and the exchange's Amulet inventory seeded as after deposits; tier 1's exchange
limits set by the compliance officer's service (100 a day, 1000 in 30 days).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa

from sluice import bootstrap
from sluice.config import DeploymentConfig
from sluice.domain.compliance import TierLimits
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.journal import AccountRef, customer_account_name
from sluice.services.books import check_invariant
from sluice.services.compliance_officer import set_limits
from sluice.services.exchange import ExchangeContext
from sluice.store import tables
from sluice.store.events_tables import event_outbox
from tests.api_support import ApiWorld, api_world
from tests.ledger_holdings import seed_owed

D = Decimal


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    found = api_world(database_url)
    yield found
    found.sandbox.close()


def _deploy(world: ApiWorld, tmp_path: Path, *, owned: str, inventory: str) -> None:
    """cust-0 owns ``owned`` USDX, the exchange ``inventory`` Amulet; the exchange is on."""
    sandbox = world.sandbox
    for number, (account, instrument, amount) in enumerate(
        (
            (customer_account_name("cust-0"), sandbox.token, owned),
            (EXCHANGE_INVENTORY, sandbox.coin, inventory),
        ),
        start=9001,
    ):
        seed_owed(
            sandbox.database.engine,
            number,
            treasury=sandbox.treasury,
            account=account,
            instrument=instrument,
            amount=amount,
        )
    prices = tmp_path / "price.json"
    prices.write_text(json.dumps({"price": "3", "time": int(world.context.clock().timestamp())}))
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
    uow = sandbox.database.uow
    oracle = bootstrap.oracle_service(config, uow, clock=world.context.clock)
    world.context.oracle = oracle
    world.context.exchange = ExchangeContext(
        uow=uow,
        clock=world.context.clock,
        oracle=oracle,
        registry=world.context.compliance,
        settings=config.exchange.settings(),
    )


def _post(world: ApiWorld, path: str, body: object) -> tuple[int, dict[str, object]]:
    with world.client() as client:
        answer = client.post(path, json=body, headers=world.headers("user"))
    return answer.status_code, answer.json()


def _quote(world: ApiWorld, amount: str) -> dict[str, object]:
    body = {"sell": "USDX", "buy": "Amulet", "sell_amount": amount}
    status, quote = _post(world, "/v1/customers/cust-0/quotes", body)
    assert status == 201, quote
    return quote


def _swap(world: ApiWorld, quote: dict[str, object]) -> tuple[int, dict[str, object]]:
    return _post(world, "/v1/customers/cust-0/swaps", {"quote_id": quote["id"]})


def _swaps(world: ApiWorld) -> list[dict[str, object]]:
    with world.client() as client:
        answer = client.get("/v1/customers/cust-0/swaps", headers=world.headers("user"))
    assert answer.status_code == 200, answer.text
    listed: list[dict[str, object]] = answer.json()
    return listed


def _books(world: ApiWorld) -> dict[str, Decimal]:
    with world.sandbox.database.uow() as uow:
        return {account.id: balance for account, balance in uow.books.balances().items()}


def _count(world: ApiWorld, table: sa.Table, column: str, value: str) -> int:
    statement = sa.select(sa.func.count()).select_from(table).where(table.c[column] == value)
    with world.sandbox.database.engine.connect() as connection:
        return int(connection.execute(statement).scalar_one())


def test_a_swap_past_80_percent_of_the_daily_limit_answers_its_warning(
    world: ApiWorld, tmp_path: Path
) -> None:
    _deploy(world, tmp_path, owned="1000", inventory="100000")
    with world.sandbox.database.uow() as uow:
        tier = uow.compliance.profiles(["cust-0"])["cust-0"].tier
    set_limits(
        world.context.uow,
        tier,
        "exchange",
        TierLimits(None, D(100), D(1000)),
        actor="compliance",
        at=world.context.clock(),
        reason="the test's limits",
    )

    status, first = _swap(world, _quote(world, "50"))
    assert (status, first["warnings"]) == (200, []), first  # 50 % of the day: no warning
    status, second = _swap(world, _quote(world, "35"))
    assert (status, second["warnings"]) == (200, ["daily 85 %"]), second
    # (the sandbox's clock stands still: both swaps have one time, so the listing's order is
    # the quote ids')
    listed = {item["quote_id"]: item["warnings"] for item in _swaps(world)}
    assert listed == {first["quote_id"]: [], second["quote_id"]: ["daily 85 %"]}

    before = _books(world)
    status, refused = _swap(world, _quote(world, "20"))  # 105 of 100 today
    assert (status, refused["code"], refused["error"]) == (403, 21, "insufficient_kyc_tier"), (
        status,
        refused,
    )
    assert _books(world) == before
    assert len(_swaps(world)) == 2
    with world.sandbox.database.uow() as uow:
        owed = uow.withdrawals.balance(
            AccountRef(customer_account_name("cust-0"), world.sandbox.token)
        )
    assert owed == D(1000) - 50 - 35


def test_a_swap_beyond_the_inventory_is_refused_with_83_and_moves_nothing(
    world: ApiWorld, tmp_path: Path
) -> None:
    _deploy(world, tmp_path, owned="100", inventory="100")
    before = _books(world)
    quote = _quote(world, "50")  # 150 Amulet wanted, the exchange holds 100
    status, refused = _swap(world, quote)
    assert (status, refused["code"], refused["error"]) == (409, 83, "insufficient_inventory")
    assert "100" in str(refused["message"]) and "150" in str(refused["message"]), refused
    assert _books(world) == before
    assert _swaps(world) == []
    assert _count(world, event_outbox, "type", "swap_executed") == 0
    refusals = sa.select(tables.audit_records.c.error).where(
        tables.audit_records.c.operation_id == f"swap:{quote['id']}",
        tables.audit_records.c.operation == "swap_refused",
    )
    with world.sandbox.database.engine.connect() as connection:
        (error,) = connection.execute(refusals).scalars().all()
    assert error.startswith("83")

    # A sale the inventory covers goes through, once.
    within = _quote(world, "30")  # 90 Amulet
    status, swap = _swap(world, within)
    assert status == 200, swap
    assert [item["quote_id"] for item in _swaps(world)] == [within["id"]]
    assert _count(world, event_outbox, "type", "swap_executed") == 1
    assert check_invariant(world.sandbox.database.uow).problems == []
