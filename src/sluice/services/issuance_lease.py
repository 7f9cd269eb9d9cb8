"""The lease a worker holds on an issuance operation while it runs a step (or an operator's
compensation runs), written explicitly into the operation's ``result`` JSON.

A claim (the router's before each step, an override's compensation) stores
``result["leased_until"]`` (RFC 3339) in the same version-checked update that moves
``next_attempt_at`` to the end of the lease; recording the step's outcome (or the override)
removes it. An operation is leased while that time lies ahead and the operation is open (or
``stuck`` under a compensation's claim). Earlier the lease was inferred from
``next_attempt_at − updated_at == lease_s``, which a wait or backoff of exactly ``lease_s``
matched too (an override then refused for no reason); the marker is written only by a claim.
A step that outlives its lease (a hanging ledger or node call) is recorded as usual when no
one moved the operation meanwhile, with a warning alert (``issuance_lease_overrun``). No schema
change: ``result`` is a JSON column already, and the marker shows in
``operation_json`` as ``result.leased_until`` while a step runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from sluice.domain.deposits import Alert
from sluice.domain.errors import SluiceError
from sluice.domain.ledger import format_timestamp, parse_timestamp
from sluice.ports.issuance import OPEN_STATUSES, IssuanceOperation

LEASE_KEY = "leased_until"


def with_lease(result: Mapping[str, Any], now: datetime, lease_s: float) -> dict[str, Any]:
    """``result`` with the lease marker of a claim made at ``now``."""
    return {**result, LEASE_KEY: format_timestamp(now + timedelta(seconds=lease_s))}


def without_lease(result: Mapping[str, Any]) -> dict[str, Any]:
    """``result`` without the lease marker (what a recorded outcome or an override keeps)."""
    return {key: value for key, value in result.items() if key != LEASE_KEY}


def lease_end(op: IssuanceOperation) -> datetime | None:
    """When the lease written by the last claim ends (None when there is none, or unreadable)."""
    value = op.result.get(LEASE_KEY)
    if value is None:
        return None
    try:
        return parse_timestamp(value, field=LEASE_KEY)
    except SluiceError:
        return None


def leased(op: IssuanceOperation, now: datetime) -> bool:
    """Whether a worker holds ``op`` right now: a claim's lease marker lies ahead of ``now``, on
    an open operation or a ``stuck`` one (a compensation's claim)."""
    if not (op.status in OPEN_STATUSES or op.status == "stuck"):
        return False
    end = lease_end(op)
    return end is not None and end > now


def overrun_alert(op: IssuanceOperation, seq: int, end: datetime, now: datetime) -> Alert:
    """A step that outlived its lease (a hanging ledger or node call): raise lease_s above the
    components' timeouts, and check the operation (an override may have acted meanwhile)."""
    return Alert(
        id=f"issuance-lease-overrun:{op.id}:{seq}",
        severity="warning",
        kind="issuance_lease_overrun",
        message=f"step {op.step} of issuance operation {op.id} outlived its lease by "
        f"{(now - end).total_seconds():.0f} s",
        details={"operation_id": op.id, "step": op.step, "lease_end": format_timestamp(end)},
    )
