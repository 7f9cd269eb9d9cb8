"""The alert rules inside ``sluice serve``: evaluated, and their notifications sent, on a loop of
their own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from sluice.server.loop import ServiceLoop

if TYPE_CHECKING:
    from sluice.server.wiring import Service


def alerts_loop(service: Service) -> ServiceLoop | None:
    """The alert rules' loop, or None when there is nothing to evaluate or notify."""
    return None
