"""``sluice serve`` wires the cross-token exchange into its API: with ``[[oracle.feeds]]`` and
``[[exchange.pairs]]`` configured, the service answers a customer's quote (201) and executes the
swap over HTTP, with no hand-made exchange context (the API tests set theirs by hand).

How: ``build_service`` on a data directory (the embedded world it creates: Amulet and USDX
onboarded) and the database each engine gives, a file price feed written at the wall clock's
now, the exchange's Amulet inventory and a customer's USDX seeded as after deposits, a user key
for the customer; the service's loops run (the oracle's loop reads the feed), and the real
application around the service's context answers. The books must move by exactly the swap and
keep their invariant.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

from fastapi.testclient import TestClient

from sluice.api.app import create_app
from sluice.config import DeploymentConfig
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.journal import FEES, AccountRef, customer_account_name
from sluice.server.wiring import build_service
from sluice.services.access import create_api_key
from sluice.services.books import check_invariant
from sluice.services.reference import list_instruments, register_customer
from tests.ledger_holdings import seed_owed

WAIT_S = 30.0


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S} s waiting for {what}")
        time.sleep(0.05)


def _config(tmp_path: Path, prices: Path) -> DeploymentConfig:
    return DeploymentConfig.model_validate(
        {
            "data_dir": str(tmp_path / "data"),
            "reserves": {"reconcile_interval_s": 0},  # not what this test is about
            "oracle": {
                "poll_s": 0.2,
                "feeds": [
                    {
                        "pair": "USDX/AMULET",
                        "kind": "file",
                        "path": str(prices),
                        "price_pointer": "/price",
                        "time_pointer": "/time",
                        "heartbeat_s": 3600,
                    }
                ],
            },
            "exchange": {
                "quote_lifetime_s": 600,
                "pairs": [{"sell": "USDX", "buy": "Amulet", "oracle_pair": "USDX/AMULET"}],
            },
        }
    )


def test_serve_answers_a_quote_and_executes_its_swap_over_http(
    tmp_path: Path, database_url: str
) -> None:
    prices = tmp_path / "price.json"
    prices.write_text(json.dumps({"price": "3", "time": int(time.time())}))
    service = build_service(_config(tmp_path, prices), database_url=database_url, interval_s=0.05)
    try:
        assert service.context.exchange is not None, "serve built no exchange for the API"
        assert service.context.exchange.oracle is service.context.oracle
        (oracle_loop,) = [loop for loop in service.extra_loops if loop.name == "oracle"]
        assert "oracle_loop" in service.context.readiness

        uow, engine = service.database.uow, service.database.engine
        onboarded = {record.instrument.id: record.instrument for record in list_instruments(uow)}
        usdx, amulet = onboarded["USDX"], onboarded["Amulet"]
        register_customer(uow, "alice", "Alice Example", [])
        for number, (account, instrument, amount) in enumerate(
            ((customer_account_name("alice"), usdx, "100"), (EXCHANGE_INVENTORY, amulet, "1000")),
            start=1,
        ):
            seed_owed(
                engine,
                number,
                treasury=service.treasury,
                account=account,
                instrument=instrument,
                amount=amount,
            )
        _record, key = create_api_key(
            uow,
            role="user",
            customer_id="alice",
            label="alice",
            actor="test",
            at=service.context.clock(),
        )
        headers = {"X-API-Key": key}

        service.start()
        _wait_for(lambda: oracle_loop.rounds >= 1, "the oracle loop's first round")
        with TestClient(create_app(service.context, access_log=False)) as client:
            health = client.get("/v1/oracle/health", headers=headers)
            assert (health.status_code, health.json()["health"]) == (200, "healthy"), health.text

            asked = client.post(
                "/v1/customers/alice/quotes",
                json={"sell": "USDX", "buy": "Amulet", "sell_amount": "10"},
                headers=headers,
            )
            assert asked.status_code == 201, asked.text
            quote = asked.json()
            assert Decimal(quote["rate"]) == 3 and quote["fee"]["kind"] == "oracle"
            received, fee = Decimal(quote["received"]), Decimal(quote["fee"]["amount"])
            assert received + fee == 30 and fee > 0

            done = client.post(
                "/v1/customers/alice/swaps", json={"quote_id": quote["id"]}, headers=headers
            )
            assert done.status_code == 200, done.text
            swap = done.json()
            assert (swap["quote_id"], Decimal(swap["received"])) == (quote["id"], received)
            assert swap["journal_transaction_id"] == f"swap:{quote['id']}"
            listed = client.get("/v1/customers/alice/swaps", headers=headers).json()
            assert [item["quote_id"] for item in listed] == [quote["id"]]

        with uow() as work:
            balances = {
                (account, instrument.id): work.withdrawals.balance(AccountRef(account, instrument))
                for account in (customer_account_name("alice"), EXCHANGE_INVENTORY, FEES)
                for instrument in (usdx, amulet)
            }
        assert balances == {
            (customer_account_name("alice"), "USDX"): Decimal(90),
            (customer_account_name("alice"), "Amulet"): received,
            (EXCHANGE_INVENTORY, "USDX"): Decimal(10),
            (EXCHANGE_INVENTORY, "Amulet"): Decimal(1000) - received - fee,
            (FEES, "USDX"): Decimal(0),
            (FEES, "Amulet"): fee,
        }
        assert check_invariant(uow).problems == []
    finally:
        assert service.close(timeout_s=20)
