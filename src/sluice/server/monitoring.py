"""Monitoring inside ``sluice serve``: the metrics' collectors, the readiness probes of the
ledger, the Bitcoin node and NATS, and the circuit breakers' configuration."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sluice.server.wiring import Service


def install_monitoring(service: Service) -> None:
    """Install the service's metrics, readiness probes and circuit breakers."""
