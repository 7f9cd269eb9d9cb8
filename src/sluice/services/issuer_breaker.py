"""The issuer's mints and burns of iSTSi under the ``ledger`` circuit breaker.

:class:`GuardedIssuer` wraps the :class:`~sluice.ports.issuance.IssuerLedger` the router's steps
use: each mint and burn is one call of the ``ledger`` flow (as the exchange's own command
submissions are, :class:`~sluice.services.breaker_proxies.GuardedLedgerCommands`), so a ledger
outage opens the breaker for issuance too, and while it is open a mint or a burn is refused with
:class:`~sluice.services.breakers.BreakerOpenError` before anything is sent.

What counts as a failure: an :class:`~sluice.ports.issuance.IssuerRejectedError` is the ledger's
definite answer about the command (insufficient holdings, an inactive contract, not authorised):
the ledger works, so it does not count. No answer
(:class:`~sluice.ports.issuance.IssuerOutcomeUnknownError`), any other issuer error or anything
unexpected does; input errors sluice raises on purpose do not (see
:func:`~sluice.services.breakers.counts_as_failure`).

A refusal means "not sent": :func:`~sluice.services.mint_guard.send_mint` and the redemption's
``burn_step`` leave the record ``submitted`` and send it with the same command id once the
breaker lets calls through, without using up an attempt of the operation.

The issuer's reads (``supply``, ``held_transfers``, ``instrument``) and its decisions on held
transfers pass through unguarded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sluice.domain.ledger import InstrumentId
from sluice.ports.issuance import HeldTransfer, IssuerLedger, IssuerRejectedError, IssuerResult
from sluice.services.breakers import Breakers, counts_as_failure, guard

FLOW = "ledger"


def issuer_failure(exc: BaseException) -> bool:
    """An issuer command's error that counts against the ``ledger`` breaker: anything but the
    ledger's definite refusal of the command (and the client-side errors that never count)."""
    if isinstance(exc, IssuerRejectedError):
        return False
    return counts_as_failure(exc)


class GuardedIssuer:
    """:class:`IssuerLedger` whose mints and burns are calls of the ``ledger`` breaker."""

    def __init__(self, inner: IssuerLedger, *, registry: Breakers | None = None) -> None:
        self.inner = inner
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        # What the issuer offers beyond the port (the embedded ledger's helpers), unguarded.
        return getattr(self.inner, name)

    @property
    def instrument(self) -> InstrumentId:
        return self.inner.instrument

    def mint(self, owner: str, sats: int, *, reason: str, command_id: str) -> IssuerResult:
        with guard(FLOW, registry=self._registry, failure=issuer_failure):
            return self.inner.mint(owner, sats, reason=reason, command_id=command_id)

    def burn(
        self,
        owner: str,
        sats: int,
        *,
        reason: str,
        command_id: str,
        inputs: Sequence[str] = (),
    ) -> IssuerResult:
        with guard(FLOW, registry=self._registry, failure=issuer_failure):
            return self.inner.burn(owner, sats, reason=reason, command_id=command_id, inputs=inputs)

    def decide_transfer(
        self, instruction_cid: str, *, approve: bool, reason: str, command_id: str
    ) -> IssuerResult:
        return self.inner.decide_transfer(
            instruction_cid, approve=approve, reason=reason, command_id=command_id
        )

    def held_transfers(self, limit: int = 100) -> list[HeldTransfer]:
        return self.inner.held_transfers(limit)

    def supply(self) -> int:
        return self.inner.supply()
