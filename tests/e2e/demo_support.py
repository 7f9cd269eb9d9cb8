"""The small demo world the chapter tests run their chapters on: the demo's own ledger and
Integration DB, built from the first ``deposits`` Canton Coin deposits of the seed-17 plan (its
offers, no withdrawals), ingested."""

from __future__ import annotations

from pathlib import Path

from sluice.demo.world import Exchange, Plan, build_ledger, plan, prepare_folder, set_up_books
from sluice.ledger.local import EmbeddedLedger


def small_plan(deposits: int) -> Plan:
    full = plan(17)
    return Plan(
        deposits=full.deposits[:deposits],
        pauses=full.pauses[:deposits],
        offer=full.offer,
        offer_after=deposits // 2,
        blocked_offer=full.blocked_offer,
        withdrawals=(),
    )


def small_demo(data: Path, small: Plan) -> tuple[EmbeddedLedger, Exchange]:
    """The world of ``small`` in ``data`` (a fresh folder), ingested; the caller closes the
    ledger and disposes of ``exchange.database``."""
    prepare_folder(data)
    path = data / "ledger.db"
    ledger = EmbeddedLedger.open(str(path), seed=17, checkpoint_interval_s=60.0)
    world = build_ledger(data, path, ledger, small, None)
    exchange = Exchange(world, ledger, set_up_books(world))
    exchange.ingest()
    return ledger, exchange
