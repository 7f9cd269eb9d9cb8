"""`sluice btc sandbox fund|mine|reorg`: the embedded chain's controls."""

from __future__ import annotations

from typing import Annotated

import typer

from sluice.cli.btc.wiring import (
    _custody_only,
    _sandbox,
    _write,
    sandbox_app,
)
from sluice.cli.common import (
    JsonOption,
    fail,
    print_json,
)

# --- the sandbox (embedded chain only) -----------------------------------------------------------


@sandbox_app.command("fund")
def sandbox_fund(
    address: Annotated[str, typer.Option("--address", help="Where to pay (this network's).")],
    amount: Annotated[int, typer.Option("--amount", min=1, help="Satoshis.")],
    mine: Annotated[bool, typer.Option("--mine", help="Also mine a block with it.")] = False,
    sender: Annotated[
        str | None,
        typer.Option(
            "--from",
            help="The sender's address (this network's): the payment spends an output of it, "
            "so the deposit's sender screening sees it (e.g. an address on a sanctions list). "
            "Default: an outside address of the chain's own.",
        ),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Pay an address from outside the custody, into the embedded chain's mempool.

    With --from, the payment spends an output paid to that address (the chain answers its
    transaction too), so a deposit from a chosen sender is screened, held or minted as a real
    one would be."""
    with _custody_only() as custody:
        file = _sandbox(custody)
        script = custody.wallet.validate_address(address)
        sender_script = None if sender is None else custody.wallet.validate_address(sender)
        with file.change() as chain:
            txid, vout = chain.fund(script, amount, mine=mine, sender_script=sender_script)
            height = chain.tip_height
    record = {"txid": txid, "vout": vout, "address": address, "amount_sats": amount}
    if as_json:
        print_json({**record, "from": sender, "mined": mine, "height": height})
        return
    where = f"mined at height {height}" if mine else "in the mempool: `sluice btc sandbox mine`"
    source = f" from {sender}" if sender is not None else ""
    _write([f"funded {txid}:{vout} with {amount} sats to {address}{source} ({where})"])


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
