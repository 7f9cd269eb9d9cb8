"""``sluice quote`` and ``sluice swap`` through the console script, against a database whose
books hold a customer's iSTSi and the exchange's Amulet inventory (as after deposits) and an
oracle reading a price file: a quote's figures, a swap booked once (run twice, the same swap),
the books moved by exactly the quote, and refusals that move nothing — a quote of another
customer (10), a minimum above what is received (82), an oracle gone stale (80)."""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

from sluice import bootstrap
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.journal import (
    AccountRef,
    customer_account_name,
)
from sluice.domain.ledger import InstrumentId
from sluice.services.books import check_invariant
from sluice.services.reference import onboard_instrument, register_customer
from tests.e2e.test_cli_over_the_wire import environment, sluice
from tests.ledger_holdings import seed_owed

TREASURY = "treasury::1220aa"
ISTSI = InstrumentId("issuer::1220bb", "iSTSi")
AMULET = InstrumentId("dso::1220cc", "Amulet")


def exchange_world(data: Path, inventory: str = "100000") -> bootstrap.Database:
    """Alice (10 iSTSi) and Bob, tier 2, and ``inventory`` Amulet in the exchange's inventory."""
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    uow = database.uow
    for instrument in (ISTSI, AMULET):
        onboard_instrument(uow, instrument)
    for customer in ("alice", "bob"):
        register_customer(uow, customer, customer.title(), [], tier=2)
    for number, (account, instrument, amount) in enumerate(
        (
            (customer_account_name("alice"), ISTSI, "10"),
            (EXCHANGE_INVENTORY, AMULET, inventory),
        )
    ):
        seed_owed(
            database.engine,
            number,
            treasury=TREASURY,
            account=account,
            instrument=instrument,
            amount=amount,
        )
    return database


def exchange_config(tmp_path: Path, prices: Path) -> Path:
    """A configuration with the ISTSI/AMULET file feed reading ``prices`` and that pair."""
    config = tmp_path / "sluice.toml"
    config.write_text(
        f"""
[oracle]
[[oracle.feeds]]
pair = "ISTSI/AMULET"
kind = "file"
path = "{prices}"
price_pointer = "/price"
time_pointer = "/time"
decimals = 4
heartbeat_s = 60

[exchange]
fee_rate = "0.003"
quote_lifetime_s = 600
[[exchange.pairs]]
sell = "iSTSi"
buy = "Amulet"
oracle_pair = "ISTSI/AMULET"
"""
    )
    return config


def test_quote_and_swap_through_the_command_line(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = exchange_world(data)
    prices = tmp_path / "price.json"
    prices.write_text(json.dumps({"price": "250", "time": int(time.time())}))
    env = environment(data, SLUICE_CONFIG=str(exchange_config(tmp_path, prices)))
    try:
        asked = sluice(
            "quote", "--customer", "alice", "--sell", "iSTSi", "--buy", "Amulet",
            "--amount", "2", "--json", env=env,
        )  # fmt: skip
        quote = json.loads(asked.stdout)
        assert Decimal(quote["rate"]) == 250 and quote["fee"]["kind"] == "oracle"
        received, fee = Decimal(quote["received"]), Decimal(quote["fee"]["amount"])
        assert received + fee == 500 and fee > 0  # 2 × 250, the fee taken from it
        assert Decimal(quote["minimum_received"]) < received

        refused = sluice("swap", quote["id"], "--customer", "bob", env=env, code=2)
        assert "error 10" in refused.stderr
        greedy = sluice(
            "swap", quote["id"], "--customer", "alice", "--min-received", "600", env=env, code=2
        )
        assert "error 82" in greedy.stderr

        done = json.loads(
            sluice("swap", quote["id"], "--customer", "alice", "--json", env=env).stdout
        )
        again = json.loads(
            sluice("swap", quote["id"], "--customer", "alice", "--json", env=env).stdout
        )
        assert again == done  # the quote id is the idempotency key
        assert Decimal(done["received"]) == received
        with database.uow() as uow:
            owed = {
                instrument.id: uow.withdrawals.balance(
                    AccountRef(customer_account_name("alice"), instrument)
                )
                for instrument in (ISTSI, AMULET)
            }
        assert owed == {"iSTSi": Decimal(8), "Amulet": received}
        assert check_invariant(database.uow).problems == []

        prices.write_text(json.dumps({"price": "250", "time": int(time.time()) - 3600}))
        stale = sluice(
            "quote", "--customer", "alice", "--sell", "iSTSi", "--buy", "Amulet",
            "--amount", "1", env=env, code=2,
        )  # fmt: skip
        assert "error 80" in stale.stderr and "stale" in stale.stderr
    finally:
        database.dispose()
