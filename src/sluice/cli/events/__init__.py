"""``sluice events``: ``relay`` publishes the outbox's committed events to NATS JetStream (or
the in-process bus); ``tail`` follows the stream."""

from __future__ import annotations

import typer

# Each module adds its commands to ``events_app`` when it is imported, in this order.
from sluice.cli.events import relay, tail
from sluice.cli.events.wiring import events_app

__all__ = ["events_app", "register", "relay", "tail"]


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")
