"""``sluice btc``: Bitcoin custody — its keys, deposit addresses, deposits, payouts, the watcher,
and the embedded chain's sandbox controls.

Custody is the ``[bitcoin]`` section of the configuration. Without one, every command works on
the *sandbox custody*: three keys made in the data directory on first use, on an embedded
in-memory regtest chain kept in a file there (``sluice btc sandbox …`` funds, mines and reorgs
it). That is for trying things, never for real funds, and the commands say so on stderr.

Every listing has ``--json``; its keys are a contract that scripts rely on.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import structlog
import typer
from rich.table import Table

from sluice import bootstrap
from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    deployment,
    fail,
    fail_with,
    note,
    open_database,
    print_json,
    print_table,
    stop_signals,
    timestamp_or_none,
    utc_now,
)
from sluice.domain.chains import chain_named
from sluice.domain.errors import SluiceError
from sluice.ports.bitcoin import BitcoinNodeError, NodeUnavailableError

if TYPE_CHECKING:
    from sluice.bitcoin.chainfile import ChainFile

btc_app = typer.Typer(
    no_args_is_help=True,
    help="Bitcoin custody: keys, deposit addresses, deposits, payouts, the watcher, the sandbox.",
)
custody_app = typer.Typer(no_args_is_help=True, help="The custody's keys and descriptor.")
sandbox_app = typer.Typer(
    no_args_is_help=True,
    help="The embedded chain (no node configured): fund an address, mine blocks, make a reorg.",
)
btc_app.add_typer(custody_app, name="custody")
btc_app.add_typer(sandbox_app, name="sandbox")

SANDBOX_NOTE = (
    "sandbox custody: keys made in {directory} on an embedded in-memory regtest chain, for "
    "trying things only (configure [bitcoin] for real custody)"
)
# Exit code when the node could not be reached: the command may simply be tried again.
NODE_UNAVAILABLE_EXIT = 1


# --- wiring --------------------------------------------------------------------------------------


def _node_failed(exc: BitcoinNodeError) -> NoReturn:
    if isinstance(exc, NodeUnavailableError):
        fail(f"the Bitcoin node is not reachable: {exc}", code=NODE_UNAVAILABLE_EXIT)
    fail(f"the Bitcoin node refused: {exc}")


def _log_to_stderr() -> None:
    """The services' log lines on stderr, as `sluice serve` writes them: stdout is for results
    (``--json``)."""
    if structlog.is_configured():
        return
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.dev.ConsoleRenderer(colors=False),
        ],
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )


def _custody() -> bootstrap.BitcoinCustody:
    _log_to_stderr()
    config = deployment()
    try:
        custody = bootstrap.bitcoin_custody(config)
    except SluiceError as exc:
        fail_with(exc)
    if not custody.configured:
        note(SANDBOX_NOTE.format(directory=bootstrap.bitcoin_directory(config) / "sandbox"))
    return custody


@contextmanager
def _custody_only() -> Iterator[bootstrap.BitcoinCustody]:
    """Custody without the Integration DB; a refusal or a node failure ends the command."""
    custody = _custody()
    try:
        yield custody
    except SluiceError as exc:
        fail_with(exc)
    except BitcoinNodeError as exc:
        _node_failed(exc)
    finally:
        custody.close()


@contextmanager
def _session(
    db: str | None,
) -> Iterator[tuple[bootstrap.BitcoinCustody, bootstrap.Database]]:
    """Custody and the Integration DB for one command, both closed whatever happens."""
    with _custody_only() as custody:
        database = open_database(db or deployment().database_url)
        try:
            yield custody, database
        finally:
            database.dispose()


def _sandbox(custody: bootstrap.BitcoinCustody) -> ChainFile:
    if custody.sandbox is None:
        fail(
            "`sluice btc sandbox` works on the embedded chain only; this configuration names a "
            f"real node ({custody.description}): fund, mine and reorg through the node itself"
        )
    return custody.sandbox


def _plain(value: object) -> object:
    """A service's record as JSON: dataclasses by field, Decimals exact, times as text."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime):
        return timestamp_or_none(value)
    return value


def _write(lines: list[str]) -> None:
    sys.stdout.write("\n".join(lines) + "\n")


# --- custody init --------------------------------------------------------------------------------


def _toml_block(network: str, descriptor: str, key_files: list[Path]) -> str:
    """The ``[bitcoin]`` block for a new custody: the first two keys sign; the third is the
    backup the operator keeps elsewhere. TOML's basic strings take JSON's escapes."""
    signing, backup = key_files[:2], key_files[2:]
    lines = [
        "[bitcoin]",
        f"network = {json.dumps(network)}",
        f"descriptor = {json.dumps(descriptor)}",
        f"key_files = [{', '.join(json.dumps(str(p)) for p in signing)}]",
    ]
    for path in backup:
        lines.append(f"# backup key, not needed to sign: keep it offline: {path}")
    lines += [
        "# the node: rpc_url, and rpc_cookie_file (or rpc_user with rpc_password_file);",
        "# without rpc_url custody runs on the embedded in-memory chain",
        '# rpc_url = "http://127.0.0.1:18443"',
        '# rpc_cookie_file = "/var/lib/bitcoind/regtest/.cookie"',
    ]
    return "\n".join(lines) + "\n"


@custody_app.command("init")
def custody_init(
    keys_dir: Annotated[
        Path, typer.Option("--keys-dir", help="A new directory for the three key files (0700).")
    ],
    network: Annotated[
        str, typer.Option("--network", help="bitcoin, testnet, signet, regtest, litecoin-regtest.")
    ] = "regtest",
    toml: Annotated[
        bool, typer.Option("--toml", help="Print only the [bitcoin] block of the configuration.")
    ] = False,
    as_json: JsonOption = False,
) -> None:
    """Make three custody keys (files mode 0600) and print the 2-of-3 descriptor and the
    configuration to use. For a sandbox or a test network: production keys are made and kept
    wherever the operator keeps them, and only their public halves reach the descriptor."""
    from sluice.bitcoin.keys import create_sandbox_custody

    try:
        chain = chain_named(network)
        made = create_sandbox_custody(keys_dir, chain)
    except SluiceError as exc:
        fail_with(exc)
    except OSError as exc:
        fail(f"cannot write the keys in {keys_dir}: {exc}")
    block = _toml_block(chain.name, made.descriptor, made.key_files)
    if chain.name == "bitcoin":
        note("these keys were made on this machine: for real funds, make them offline")
    if as_json:
        print_json(
            {
                "network": chain.name,
                "descriptor": made.descriptor,
                "key_files": [str(p) for p in made.key_files],
                "xpubs": list(made.xpubs),
                "toml": block,
            }
        )
        return
    if toml:
        sys.stdout.write(block)
        return
    _write(
        [
            f"custody keys made in {keys_dir} (3 files, mode 0600; two of them sign):",
            *[f"  {path}" for path in made.key_files],
            "descriptor:",
            f"  {made.descriptor}",
            "",
            "configuration (add it to the file given to `sluice --config`, with the node's part):",
            "",
            block.rstrip("\n"),
        ]
    )


# --- addresses, deposits, balance ----------------------------------------------------------------


@btc_app.command("address")
def btc_address(
    customer: Annotated[str, typer.Option("--customer", help="The customer depositing.")],
    new: Annotated[
        bool, typer.Option("--new", help="A new address even if the current one is unfunded.")
    ] = False,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The customer's deposit address: the same one until it receives funds, then a new one
    (or a new one now with --new). An address is never given to two customers."""
    from sluice.services.btc_addresses import deposit_address

    with _session(db) as (custody, database):
        issued = deposit_address(database.uow, custody.wallet, customer, new=new, clock=utc_now)
    if as_json:
        print_json({"customer": customer, "address": issued.address, "index": issued.index})
        return
    _write([f"{issued.address}  (customer {customer}, index {issued.index})"])


@btc_app.command("deposits")
def btc_deposits(
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Deposits to custody addresses with their confirmations and status (seen, confirmed,
    reorged, dust, credited)."""
    from sluice.services.btc_watcher import list_deposits

    with _session(db) as (_custody, database):
        deposits = list_deposits(database.uow, customer_id=customer)
    rows = [_record_json(d) for d in deposits]
    if as_json:
        print_json(rows)
        return
    table = Table("txid:vout", "customer", "amount (sats)", "confirmations", "status", "block")
    for row in rows:
        table.add_row(
            f"{row['txid']}:{row['vout']}",
            str(row.get("customer") or ""),
            str(row["amount_sats"]),
            str(row["confirmations"]),
            str(row["status"]),
            str(row.get("block_height") if row.get("block_height") is not None else ""),
        )
    print_table(table)


def _record_json(value: object) -> dict[str, Any]:
    record = _plain(value)
    assert isinstance(record, dict)
    return record


@btc_app.command("balance")
def btc_balance(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Custody's unspent outputs and their totals, at the watcher's height and block hash."""
    from sluice.services.btc_watcher import custody_balance

    with _session(db) as (_custody, database):
        balance = custody_balance(database.uow)
    record = _record_json(balance)
    if as_json:
        print_json(record)
        return
    table = Table("txid:vout", "kind", "amount (sats)", "confirmations", "status")
    for utxo in record.get("utxos", []):
        table.add_row(
            f"{utxo['txid']}:{utxo['vout']}",
            str(utxo.get("kind", "")),
            str(utxo["amount_sats"]),
            str(utxo.get("confirmations", "")),
            str(utxo.get("status", "")),
        )
    print_table(table)
    totals = {k: v for k, v in record.items() if k != "utxos"}
    _write([f"{key}: {value}" for key, value in totals.items()])


# --- payouts -------------------------------------------------------------------------------------


payout_app = typer.Typer(
    invoke_without_command=True,
    help="Queue an operator's payout (--id --to --amount), or `cancel` one not yet batched.",
)
batch_app = typer.Typer(no_args_is_help=True, help="Payout batches: an operator's decisions.")
btc_app.add_typer(payout_app, name="payout")
btc_app.add_typer(batch_app, name="batch")


@payout_app.callback()
def btc_payout(
    ctx: typer.Context,
    payout_id: Annotated[
        str | None,
        typer.Option("--id", help="The payout's id: the same id again is the same payout."),
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="The destination address.")] = None,
    amount: Annotated[
        int | None,
        typer.Option("--amount", min=1, help="Satoshis; the network fee is deducted from it."),
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Queue an operator's payout. The payouts worker (`sluice serve`, `sluice workers run`,
    `sluice btc watch`) batches, signs 2-of-3 and broadcasts it."""
    if ctx.invoked_subcommand is not None:
        return
    from sluice.services.btc_payouts import request_payout

    missing = [
        name
        for name, value in (("--id", payout_id), ("--to", to), ("--amount", amount))
        if value is None
    ]
    if missing:
        fail(f"Missing option {', '.join(repr(m) for m in missing)}")
    assert payout_id is not None
    assert to is not None
    assert amount is not None
    requested_by = actor_name(actor)
    with _session(db) as (custody, database):
        payout = request_payout(
            database.uow,
            custody.wallet,
            custody.settings,
            payout_id=payout_id,
            address=to,
            amount_sats=amount,
            kind="operator",
            requested_by=requested_by,
            clock=utc_now,
        )
        problem = custody.signing_problem()
    if problem is not None:
        note(f"queued, but {problem}")
    record = payout.to_json()
    if as_json:
        print_json(record)
        return
    _write([f"payout {record['id']}: {record['status']} ({record['amount_sats']} sats to {to})"])


@payout_app.command("cancel")
def btc_payout_cancel(
    payout_id: Annotated[str, typer.Option("--id", help="The payout to cancel.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why, for the audit.")] = None,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Cancel a payout not yet in a batch (queued or waiting_fee), audited. A batched payout is
    not cancellable (error 41): a signed transaction paying it is recorded and may be mined."""
    from sluice.services.btc_payouts import cancel_payout

    cancelled_by = actor_name(actor)
    with _session(db) as (_custody, database):
        payout = cancel_payout(
            database.uow,
            payout_id=payout_id,
            cancelled_by=cancelled_by,
            clock=utc_now,
            reason=reason,
        )
    record = payout.to_json()
    if as_json:
        print_json(record)
        return
    _write([f"payout {record['id']}: {record['status']}"])


@batch_app.command("release")
def btc_batch_release(
    batch_id: Annotated[str, typer.Option("--id", help="The orphaned batch to release.")],
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Release an orphaned batch (an input was reorged out of the chain): its payouts are queued
    again for a successor batch that spends every surviving input of this one, so the two can
    never both be mined. Refused (error 41) unless it is orphaned, an input survived and the node
    holds none of its versions."""
    from sluice.services.btc_payouts import release_batch

    released_by = actor_name(actor)
    with _session(db) as (custody, database):
        released = release_batch(
            database.uow,
            custody.node,
            batch_id=batch_id,
            released_by=released_by,
            clock=utc_now,
        )
    record = released.to_json()
    if as_json:
        print_json(record)
        return
    _write(
        [
            f"batch {batch_id}: released; payouts queued again: "
            + (", ".join(released.requeued) or "none")
        ]
    )


@btc_app.command("payouts")
def btc_payouts(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Payouts with the custody outpoints they spend, their fee, confirmations and status."""
    from sluice.services.btc_payouts import list_payouts

    with _session(db) as (custody, database):
        payouts = list_payouts(database.uow, custody.settings)
    rows = [p.to_json() for p in payouts]
    if as_json:
        print_json(rows)
        return
    table = Table("id", "amount (sats)", "fee (sats)", "txid", "confirmations", "status")
    for row in rows:
        table.add_row(
            str(row["id"]),
            str(row["amount_sats"]),
            str(row["fee_sats"] if row["fee_sats"] is not None else ""),
            str(row["txid"] or ""),
            str(row["confirmations"]),
            str(row["status"]),
        )
    print_table(table)


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


# --- the sandbox (embedded chain only) -----------------------------------------------------------


@sandbox_app.command("fund")
def sandbox_fund(
    address: Annotated[str, typer.Option("--address", help="Where to pay (this network's).")],
    amount: Annotated[int, typer.Option("--amount", min=1, help="Satoshis.")],
    mine: Annotated[bool, typer.Option("--mine", help="Also mine a block with it.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Pay an address from outside the custody, into the embedded chain's mempool."""
    with _custody_only() as custody:
        file = _sandbox(custody)
        script = custody.wallet.validate_address(address)
        with file.change() as chain:
            txid, vout = chain.fund(script, amount, mine=mine)
            height = chain.tip_height
    record = {"txid": txid, "vout": vout, "address": address, "amount_sats": amount}
    if as_json:
        print_json({**record, "mined": mine, "height": height})
        return
    where = f"mined at height {height}" if mine else "in the mempool: `sluice btc sandbox mine`"
    _write([f"funded {txid}:{vout} with {amount} sats to {address} ({where})"])


@sandbox_app.command("mine")
def sandbox_mine(
    blocks: Annotated[int, typer.Argument(min=1, max=10_000, help="How many blocks.")] = 1,
    as_json: JsonOption = False,
) -> None:
    """Mine blocks on the embedded chain (the first takes the whole mempool)."""
    with _custody_only() as custody:
        file = _sandbox(custody)
        with file.change() as chain:
            hashes = chain.mine(blocks)
            height = chain.tip_height
    if as_json:
        print_json({"blocks": hashes, "height": height, "tip": hashes[-1]})
        return
    _write([f"mined {len(hashes)} block(s): height {height}, tip {hashes[-1]}"])


@sandbox_app.command("reorg")
def sandbox_reorg(
    depth: Annotated[int, typer.Option("--depth", min=1, help="Blocks to replace.")],
    drop: Annotated[
        list[str] | None,
        typer.Option("--drop", help="A txid left out of the new branch (repeatable)."),
    ] = None,
    blocks: Annotated[
        int | None,
        typer.Option("--blocks", min=1, help="Blocks of the new branch (default: depth + 1)."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Replace the top blocks of the embedded chain with a longer branch; their transactions
    go into the new branch (except those dropped)."""
    with _custody_only() as custody:
        file = _sandbox(custody)
        try:
            with file.change() as chain:
                hashes = chain.reorg(depth, drop_txids=tuple(drop or ()), blocks=blocks)
                height = chain.tip_height
        except ValueError as exc:
            fail(str(exc))
    if as_json:
        print_json({"depth": depth, "blocks": hashes, "height": height, "tip": hashes[-1]})
        return
    _write([f"replaced {depth} block(s) with {len(hashes)}: height {height}, tip {hashes[-1]}"])


def register(app: typer.Typer) -> None:
    app.add_typer(btc_app, name="btc")
