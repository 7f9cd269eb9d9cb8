"""The part of a simulation run's state that iSTSi issuance adds (kept apart from
:mod:`sluice.sim.state`, which holds one attribute of this type): the issuer on the run's embedded
ledger, the router's context (the run's Integration DB, its KYC registry, the Bitcoin custody's
wallet and node), and what the issuance actor did that the checks compare with the DB and the
ledger — the redemptions requested, the senders' addresses listed, the ledger's completions of
the issuer's commands.

It is made before the run's first step, before any ledger fault is armed (the deployment's own
setup: :func:`sluice.sim.actors.issuance.world`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sluice.ledger.local.issuer import EmbeddedIssuerLedger
from sluice.services.issuance_settings import IssuanceContext, IssuanceSettings

# Short waits relative to the clock moves of the ledger's admin, so that leases left by a crash,
# backoffs and polls all end within a run; enough attempts that the ledger's faults (each makes
# one step retry) never exhaust them.
ROUTER_SETTINGS = IssuanceSettings(
    attempts_max=12,
    backoff_base_s=1.0,
    backoff_cap_s=30.0,
    poll_s=5.0,
    lease_s=30.0,
)


@dataclass(frozen=True, slots=True)
class Redemption:
    """A redemption a customer asked for (the first request under its key)."""

    operation_id: str
    customer_id: str
    key: str
    amount_sats: int
    address: str
    script_hex: str


@dataclass(slots=True)
class IssuanceWorld:
    """The run's issuance: the context the router and the hold worker run with, the issuer, and
    what the actor did."""

    ctx: IssuanceContext
    issuer: EmbeddedIssuerLedger
    issuer_party: str
    # Each customer's own wallet on the chain (a P2WPKH script outside custody): their deposits
    # spend outputs of it, so the KYC step can read who sent them.
    senders: dict[str, str] = field(default_factory=dict)  # customer → sender script
    listed: set[str] = field(default_factory=set)  # sender addresses flagged by the officer
    redemptions: dict[str, Redemption] = field(default_factory=dict)  # by operation id
    # The ledger's committed commands of the issuer, by command id (mint, remint, burn, KYC
    # decision): a command id is its record's id, whose reason it carries.
    committed: Counter[str] = field(default_factory=Counter)
    completion_sequence: int = 0
    # What the checks read last (reused while the Integration DB is unchanged).
    reading: object | None = None
    reading_of: object | None = None
