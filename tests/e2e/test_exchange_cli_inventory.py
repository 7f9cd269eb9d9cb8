"""``sluice swap --json`` beyond the exchange's inventory, through the console script: exit 2,
``error 83 insufficient_inventory`` on stderr and no swap JSON on stdout, the books untouched and
the refusal audited; a quote the inventory covers then swaps (``--json``: the swap).

How: the world and configuration of ``test_exchange_cli.py`` — a database whose books hold a
customer's iSTSi and the exchange's Amulet inventory (here only 100 of it), an oracle reading a
price file at 250.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from pathlib import Path

import sqlalchemy as sa

from sluice.services.books import check_invariant
from sluice.store import tables
from tests.e2e.test_cli_over_the_wire import environment, sluice
from tests.e2e.test_exchange_cli import exchange_config, exchange_world


def _quote(amount: str, env: dict[str, str]) -> dict[str, str]:
    asked = sluice(
        "quote", "--customer", "alice", "--sell", "iSTSi", "--buy", "Amulet",
        "--amount", amount, "--json", env=env,
    )  # fmt: skip
    quote: dict[str, str] = json.loads(asked.stdout)
    return quote


def test_a_swap_beyond_the_inventory_exits_2_with_error_83_and_moves_nothing(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    database = exchange_world(data, inventory="100")
    prices = tmp_path / "price.json"
    prices.write_text(json.dumps({"price": "250", "time": int(time.time())}))
    env = environment(data, SLUICE_CONFIG=str(exchange_config(tmp_path, prices)))

    def books() -> dict[str, Decimal]:
        with database.uow() as uow:
            return {account.id: value for account, value in uow.books.balances().items()}

    try:
        quote = _quote("1", env)  # 250 Amulet wanted, the exchange holds 100
        before = books()
        refused = sluice("swap", quote["id"], "--customer", "alice", "--json", env=env, code=2)
        assert refused.stdout == "", refused.explained()  # no swap to show
        assert "error 83 insufficient_inventory" in refused.stderr, refused.explained()
        assert books() == before
        with database.engine.connect() as connection:
            audited = connection.execute(
                sa.select(tables.audit_records.c.error).where(
                    tables.audit_records.c.operation_id == f"swap:{quote['id']}"
                )
            ).scalars()
            assert [error[:2] for error in audited if error] == ["83"]

        within = _quote("0.3", env)  # 75 Amulet
        done = json.loads(
            sluice("swap", within["id"], "--customer", "alice", "--json", env=env).stdout
        )
        assert (done["quote_id"], done["received"]) == (within["id"], within["received"])
        assert check_invariant(database.uow).problems == []
    finally:
        database.dispose()
