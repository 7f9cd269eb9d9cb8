"""`sluice btc custody init`, `address`, `deposits` and `balance`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sluice.cli.btc.wiring import (
    _record_json,
    _session,
    _write,
    btc_app,
    custody_app,
)
from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    fail,
    fail_with,
    note,
    print_json,
    print_table,
    utc_now,
)
from sluice.domain.chains import chain_named
from sluice.domain.errors import SluiceError

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


@btc_app.command("float-address")
def btc_float_address(
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """A new custody address for the exchange's own Bitcoin (an operating float): operator
    payouts and returns are paid from it. It is on the change branch, so nothing is minted
    against what it receives; customers' deposits are owed to them and are never paid out as
    operator payouts."""
    from sluice.services.btc_addresses import change_address

    with _session(db) as (custody, database), database.uow() as uow:
        issued = change_address(uow, custody.wallet, utc_now)
        uow.commit()
    if as_json:
        print_json({"address": issued.address, "branch": 1, "index": issued.index})
        return
    _write([f"{issued.address}  (the exchange's own Bitcoin, change branch, index {issued.index})"])


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
