"""`sluice btc watch`: the deposit watcher and the payout worker, round after round."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Annotated, Any

import typer

from sluice import bootstrap
from sluice.cli.btc.wiring import (
    NODE_UNAVAILABLE_EXIT,
    _record_json,
    _session,
    btc_app,
)
from sluice.cli.common import (
    DbOption,
    JsonOption,
    fail,
    note,
    print_json,
    stop_signals,
    utc_now,
)
from sluice.domain.errors import SluiceError
from sluice.ports.bitcoin import BitcoinNodeError

# --- the watcher ---------------------------------------------------------------------------------


@btc_app.command("watch")
def btc_watch(
    once: Annotated[
        bool, typer.Option("--once", help="One round of watching and payouts, then exit.")
    ] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.1, max=3600.0, help="Seconds between rounds."),
    ] = 5.0,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Follow the chain (deposits, confirmations, reorgs) and send queued payouts, round after
    round until Ctrl-C or SIGTERM (the round in progress finishes). With --once: one round, for
    scripts; exit 1 when the node could not be reached."""
    from sluice.services.btc_payouts import PayoutWorker
    from sluice.services.btc_watcher import DepositWatcher

    with _session(db) as (custody, database):
        watcher = DepositWatcher(
            database.uow, custody.node, custody.wallet, custody.settings, clock=utc_now
        )
        problem = custody.signing_problem()
        payouts = (
            PayoutWorker(
                database.uow, custody.node, custody.wallet, custody.settings, clock=utc_now
            )
            if problem is None
            else None
        )
        if problem is not None:
            note(f"payouts are not sent: {problem}")
        _check_network(custody)
        if not once:
            note(f"watching {custody.description} every {interval:g} s; Ctrl-C stops")
        with stop_signals() as stopping:
            while True:
                if once:
                    result = _round(watcher.run_once, payouts)
                else:
                    try:
                        result = _round(watcher.run_once, payouts)
                    except (SluiceError, BitcoinNodeError) as exc:
                        # A long watch outlives one failed round: say so and try again.
                        note(f"! round failed, tried again in {interval:g} s: {exc}")
                        result = {"busy": False, "error": None}
                if once:
                    if as_json:
                        print_json(result)
                    else:
                        note(_summary(result))
                    if result["error"] is not None:
                        raise typer.Exit(NODE_UNAVAILABLE_EXIT)
                    return
                if result["busy"] or result["error"] is not None:
                    note(_summary(result))
                _sleep_unless(interval, stopping)
                if stopping():
                    note("stopped")
                    return


def _check_network(custody: bootstrap.BitcoinCustody) -> None:
    """Refuse a node of another network; one that does not answer is the watcher's to report."""
    try:
        problem = custody.network_problem()
    except BitcoinNodeError:
        return
    if problem is not None:
        fail(problem)


def _round(watch: Callable[[], object], payouts: Any | None) -> dict[str, Any]:
    """One round: the watcher first (payouts learn from the spends it records), then the
    payouts worker (which does nothing while sluice is paused). A watcher that could not reach
    the node sets ``error``."""
    watched = _record_json(watch())
    paid = _record_json(payouts.run_once()) if payouts is not None else None
    busy = any(
        isinstance(v, int) and not isinstance(v, bool) and v
        for tick in (watched, paid)
        if tick is not None
        for k, v in tick.items()
        if k not in ("tip_height", "cursor_height", "followed")
    )
    return {
        "watch": watched,
        "payouts": paid,
        "paused": paid.get("paused") if paid is not None else None,
        "error": watched.get("error"),
        "busy": busy,
    }


def _summary(result: dict[str, Any]) -> str:
    parts: list[str] = []
    for name in ("watch", "payouts"):
        tick = result[name]
        if isinstance(tick, dict):
            counts = ", ".join(
                f"{k} {v}"
                for k, v in tick.items()
                if isinstance(v, int) and not isinstance(v, bool)
            )
            parts.append(f"{name}: {counts}")
            parts += [f"! {problem}" for problem in tick.get("errors") or []]
    if result["paused"] is not None:
        parts.append(f"payouts PAUSED ({result['paused']})")
    if result["error"] is not None:
        parts.append(f"! {result['error']}")
    return "; ".join(parts) if parts else "nothing to do"


def _sleep_unless(seconds: float, stop: Callable[[], bool]) -> None:
    deadline = time.monotonic() + seconds
    while not stop():
        left = deadline - time.monotonic()
        if left <= 0:
            return
        time.sleep(min(left, 0.1))
