"""The events relay inside ``sluice serve``: publishes the outbox on a loop of its own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.server.loop import ServiceLoop

if TYPE_CHECKING:
    from sluice.server.wiring import Service


def events_loop(service: Service) -> ServiceLoop | None:
    """The relay's loop, or None when ``[events] relay_in_serve`` is off."""
    return None
