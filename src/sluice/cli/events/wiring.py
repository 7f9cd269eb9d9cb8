"""What the ``sluice events`` commands share: the Typer group."""

from __future__ import annotations

import typer

events_app = typer.Typer(
    no_args_is_help=True,
    help="Events: the outbox's relay to NATS JetStream, and following the stream.",
)
