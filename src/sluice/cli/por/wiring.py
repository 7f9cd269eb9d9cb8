"""What the ``sluice por`` commands share: the Typer group."""

from __future__ import annotations

import typer

por_app = typer.Typer(
    no_args_is_help=True,
    help=(
        "Proof of reserves: liabilities snapshots as Merkle-sum trees, customers' inclusion "
        "proofs, the signed reserves, and the verifiers anyone can run."
    ),
)
