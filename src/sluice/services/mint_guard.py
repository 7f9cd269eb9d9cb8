"""The mint guard (Chainlink Secure Mint's rule): iSTSi is minted only while

    supply + amount ≤ confirmed reserves − pending redemptions

and the check is made in the same database transaction that records the mint.

What makes it safe:

* **Checked and recorded together, one at a time.** :func:`record_mint` takes the guard's lock
  (``IssuanceRepository.lock_guard``: a row lock on PostgreSQL, the write lock on SQLite) before
  it reads the figures, and inserts the mint record (``submitted``) in that same transaction. A
  recorded mint counts in the supply from then on (whether or not it was sent), so two
  concurrent mints each see the other's amount: together they never exceed the reserves.
* **The ledger's supply counts too.** ``supply`` is the larger of our records' and the ledger's
  (read just before the transaction): a mint made outside sluice cannot be hidden by our records.
* **Recorded before sent, sent with its record's id.** The ledger command id is the record's
  id; :func:`send_mint` may be called again after a crash or an unclear answer and the ledger's
  command deduplication answers the first result: one mint per record, whatever happens.
* **Never resent once the ledger may have forgotten it.** The ledger remembers a command id for
  its deduplication window (24 h) only. :func:`send_mint` refuses to send a record older than
  ``IssuanceSettings.resend_window_s`` (12 h by default, validated below the ledger's window)
  with :class:`ResendWindowPassedError` (41): the step fails (stuck, critical alert) and an
  operator reconciles the record with the ledger. A mint ingestion booked is marked
  ``committed`` with its update id (and ``credited``), so a mint whose answer was lost is never
  sent again once the books have it.
* **A mint checks its own reserve.** :func:`record_mint` takes an optional ``check`` run under
  the guard's lock: a deposit's mint is recorded (or a recorded one answered for sending) only
  while its custody output is still ``credited`` (:class:`MintNotReadyError` otherwise, nothing
  written), so a reorg that took the deposit away stops its mint even once minting resumes.
* **A breach stops everything.** A refused check rolls the mint back, then halts minting (in
  a new transaction: the halt must survive the refusal), raises a critical alert and an audit
  record. Every later mint is refused (:class:`MintingHaltedError`, 31) until an approved
  ``issuance.resume_minting`` runs :func:`resume_minting`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import structlog

from sluice.domain.audit import AuditEntry
from sluice.domain.deposits import Alert
from sluice.domain.errors import (
    InvalidInputError,
    InvalidOperationStateError,
    MintGuardError,
    MintingHaltedError,
)
from sluice.domain.ledger import format_timestamp
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.ports.issuance import (
    IssuerRejectedError,
    IssuerResult,
    MintRecord,
)
from sluice.services.events import emit_all
from sluice.services.issuance_events import minted_event
from sluice.services.issuance_settings import IssuanceContext

log = structlog.get_logger("sluice.issuance")

ACTOR = "mint-guard"

# Run by record_mint under the guard's lock: why the mint may not be recorded or sent now (None:
# it may). Say, a deposit's mint whose custody output is no longer credited.
MintCheck = Callable[[UnitOfWork], str | None]


class ResendWindowPassedError(InvalidOperationStateError):
    """A mint or burn whose outcome is unknown is older than the resend window: the ledger may
    no longer remember its command id, so sending it again could commit it twice. An operator
    reconciles the record with the ledger instead."""


class MintNotReadyError(InvalidOperationStateError):
    """``record_mint``'s check refused: nothing was recorded or is to be sent (yet)."""


def is_committed(mint: MintRecord) -> bool:
    """The mint committed on the ledger: sent with an answer, or booked by ingestion (which
    marks it ``credited``, and ``committed`` with its update id)."""
    return mint.status == "committed" or mint.credited


def check_resend_window(
    ctx: IssuanceContext, *, kind: str, record_id: str, created_at: datetime
) -> None:
    """Refuse (:class:`ResendWindowPassedError`, 41) to send a ``submitted`` record older than
    ``settings.resend_window_s``: past it, the ledger's deduplication may have forgotten the
    command id and a resend could commit a second time."""
    age_s = (ctx.clock() - created_at).total_seconds()
    window_s = ctx.settings.resend_window_s
    if age_s > window_s:
        raise ResendWindowPassedError(
            f"the {kind} {record_id} was recorded {age_s / 3600:.1f} h ago and its outcome is "
            f"unknown: it is not sent again after {window_s / 3600:.1f} h (the ledger may no "
            "longer deduplicate its command id); reconcile it with the ledger (its reason "
            f"names {record_id})"
        )


def record_mint(
    ctx: IssuanceContext, mint: MintRecord, *, actor: str, check: MintCheck | None = None
) -> MintRecord:
    """Check the guard and record ``mint`` (``submitted``) in one transaction; the record as
    stored. A mint already recorded under this id is answered as it is (it passed the guard
    when it was recorded): at once when it is finished (committed, credited or failed), else
    after the checks below. Minting halted: :class:`MintingHaltedError` (31). ``check``
    refusing: :class:`MintNotReadyError` (41), nothing written. The guard refusing: minting
    halts (critical alert, audited) and :class:`MintGuardError` (30)."""
    if mint.amount_sats <= 0:
        raise ValueError(f"a mint is of a positive number of satoshis: {mint.amount_sats}")
    ledger_supply = ctx.issuer.supply()
    with ctx.uow() as uow:
        repo = uow.issuance
        state = repo.lock_guard()
        existing = repo.get_mint(mint.id)
        if existing is not None and (existing.status != "submitted" or existing.credited):
            return existing  # nothing to send: its step moves on (or fails) whatever the switch
        if state.minting_halted:
            raise MintingHaltedError(
                f"minting is halted ({state.halted_reason or 'no reason given'}): the mint "
                f"{mint.id} waits until an approved resume_minting"
            )
        if check is not None:
            refused_by_check = check(uow)
            if refused_by_check is not None:
                raise MintNotReadyError(f"the mint {mint.id} waits: {refused_by_check}")
        if existing is not None:
            return existing
        figures = repo.guard_figures()
        supply = max(figures.supply, ledger_supply)
        if supply + mint.amount_sats > figures.reserves - figures.pending:
            uow.rollback()
            breach = (
                f"the mint {mint.id} of {mint.amount_sats} sats would take the supply of "
                f"{supply} sats above the reserves of {figures.reserves} sats less "
                f"{figures.pending_redemptions} sats of pending redemptions and "
                f"{figures.pending_payouts} sats of other pending payouts"
            )
            refused = True
        else:
            refused = False
            repo.insert_mint(mint)
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=mint.operation_id,
                        operation="issuance_mint_recorded",
                        actor=actor,
                        recorded_at=mint.created_at,
                        customer_id=mint.customer_id,
                        parameters={
                            "mint_id": mint.id,
                            "owner": mint.owner,
                            "amount_sats": mint.amount_sats,
                            "reason": mint.reason,
                        },
                        checks=[
                            {
                                "check": "mint_guard",
                                "supply_sats": supply,
                                "ledger_supply_sats": ledger_supply,
                                "reserves_sats": figures.reserves,
                                "pending_redemptions_sats": figures.pending_redemptions,
                                "pending_payouts_sats": figures.pending_payouts,
                                "passed": True,
                            }
                        ],
                        state_changes=[{"mint": mint.id, "status": mint.status}],
                    )
                ]
            )
            uow.commit()
    if not refused:
        return mint
    details = {
        "mint_id": mint.id,
        "operation_id": mint.operation_id,
        "amount_sats": str(mint.amount_sats),
        "supply_sats": str(supply),
        "ledger_supply_sats": str(ledger_supply),
        "reserves_sats": str(figures.reserves),
        "pending_redemptions_sats": str(figures.pending_redemptions),
        "pending_payouts_sats": str(figures.pending_payouts),
    }
    halt_minting(
        ctx.uow,
        reason=breach,
        kind="mint_guard_breach",
        details=details,
        at=ctx.clock(),
        actor=actor,
        alert_id=f"mint_guard_breach:{mint.id}",
    )
    log.error("mint guard breach: minting halted", **details)
    raise MintGuardError(breach)


def send_mint(ctx: IssuanceContext, mint: MintRecord) -> IssuerResult:
    """Send a recorded mint to the ledger (command id = the record's id) and record its result:
    ``committed`` with the update id; refused by the ledger → ``failed`` and the error raised
    again. :class:`~sluice.ports.issuance.IssuerOutcomeUnknownError` is raised as it is: send the
    same record again, while it is younger than the resend window — older, nothing is sent and
    :class:`ResendWindowPassedError` (41) is raised (see :func:`check_resend_window`). Only a
    ``submitted`` record is sent (callers skip a committed or credited one).

    :class:`~sluice.services.breakers.BreakerOpenError` (the ``ledger`` breaker refused the
    call, see :mod:`sluice.services.issuer_breaker`) is raised as it is: nothing was sent and
    the record is left ``submitted``, to be sent with the same command id once the breaker lets
    calls through. The answer is recorded by a conditional update (``commit_mint``):
    ingestion may book the same mint from the ledger's update at the same time, and only the
    one that moves the record writes ``istsi_minted`` (with the operation's correlation id)."""
    if mint.status != "submitted" or mint.credited:
        state = "credited" if mint.credited else mint.status
        raise ValueError(f"the mint {mint.id} is {state}: only a submitted mint is sent")
    check_resend_window(ctx, kind="mint", record_id=mint.id, created_at=mint.created_at)
    try:
        result = ctx.issuer.mint(
            mint.owner, mint.amount_sats, reason=mint.reason, command_id=mint.id
        )
    except IssuerRejectedError as exc:
        with ctx.uow() as uow:
            uow.issuance.set_mint_status(mint.id, "failed")
            uow.audit.append([_sent_entry(mint, ctx.clock(), "failed", error=str(exc))])
            uow.commit()
        raise
    with ctx.uow() as uow:
        if uow.issuance.commit_mint(mint.id, result.update_id):
            now = ctx.clock()
            correlation_id = uow.issuance.correlation_ids([mint.operation_id]).get(
                mint.operation_id
            )
            uow.audit.append([_sent_entry(mint, now, "committed", result=result)])
            emit_all(uow, [minted_event(mint, result.update_id, now, correlation_id)])
            uow.commit()
    return result


def _sent_entry(
    mint: MintRecord,
    at: datetime,
    status: str,
    *,
    result: IssuerResult | None = None,
    error: str | None = None,
) -> AuditEntry:
    return AuditEntry(
        operation_id=mint.operation_id,
        operation="issuance_mint_sent",
        actor=ACTOR,
        recorded_at=at,
        customer_id=mint.customer_id,
        parameters={"mint_id": mint.id, "owner": mint.owner, "amount_sats": mint.amount_sats},
        state_changes=[
            {
                "mint": mint.id,
                "status": status,
                **({"update_id": result.update_id} if result else {}),
            }
        ],
        error=error,
    )


def halt_minting_in(
    uow: UnitOfWork,
    *,
    reason: str,
    kind: str,
    details: Mapping[str, str],
    at: datetime,
    actor: str,
    alert_id: str | None = None,
) -> None:
    """Halt minting in the caller's transaction (the caller commits): the switch, a critical
    alert of ``kind`` and an audit record. Already halted: the first reason stays, the alert and
    the record are added (each event is reported)."""
    repo = uow.issuance
    state = repo.lock_guard()
    if not state.minting_halted:
        repo.set_minting_halted(True, reason=reason, at=at)
    repo.add_alerts(
        [
            Alert(
                id=alert_id or f"{kind}:{format_timestamp(at)}",
                severity="critical",
                kind=kind,
                message=f"minting halted: {reason}",
                details=dict(details),
            )
        ],
        at,
    )
    uow.audit.append(
        [
            AuditEntry(
                operation_id=alert_id or f"{kind}:{format_timestamp(at)}",
                operation="issuance_minting_halted",
                actor=actor,
                recorded_at=at,
                parameters={"reason": reason, "kind": kind, **details},
                state_changes=[
                    {
                        "minting_halted": True,
                        "was": state.minting_halted,
                    }
                ],
            )
        ]
    )


def halt_minting(
    uow_factory: UnitOfWorkFactory,
    *,
    reason: str,
    kind: str,
    details: Mapping[str, str],
    at: datetime,
    actor: str,
    alert_id: str | None = None,
) -> None:
    """Halt minting in a transaction of its own (see :func:`halt_minting_in`)."""
    with uow_factory() as uow:
        halt_minting_in(
            uow, reason=reason, kind=kind, details=details, at=at, actor=actor, alert_id=alert_id
        )
        uow.commit()


def resume_minting(
    uow_factory: UnitOfWorkFactory, *, reason: str, actor: str, at: datetime
) -> None:
    """Resume minting (the executor of the approved ``issuance.resume_minting``). Audited; run
    again once minting is on, it changes nothing."""
    if not reason.strip():
        raise InvalidInputError("resuming minting needs a reason")
    with uow_factory() as uow:
        repo = uow.issuance
        state = repo.lock_guard()
        if not state.minting_halted:
            return
        repo.set_minting_halted(False, reason=None, at=at)
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=f"resume_minting:{format_timestamp(at)}",
                    operation="issuance_minting_resumed",
                    actor=actor,
                    recorded_at=at,
                    parameters={"reason": reason, "halted_reason": state.halted_reason},
                    state_changes=[{"minting_halted": False, "was": True}],
                )
            ]
        )
        uow.commit()
    log.warning("minting resumed", actor=actor, reason=reason)


def guard_status(ctx: IssuanceContext) -> dict[str, Any]:
    """The guard's figures now, in satoshis, and the switch."""
    ledger_supply = ctx.issuer.supply()
    with ctx.uow() as uow:
        figures = uow.issuance.guard_figures()
        state = uow.issuance.minting_state()
    supply = max(figures.supply, ledger_supply)
    return {
        "supply_sats": supply,
        "ledger_supply_sats": ledger_supply,
        "reserves_sats": figures.reserves,
        "pending_redemptions_sats": figures.pending_redemptions,
        "pending_payouts_sats": figures.pending_payouts,
        "unminted_deposits_sats": figures.unminted_deposits,
        "headroom_sats": figures.reserves - figures.pending - supply,
        "minting_halted": state.minting_halted,
        "halted_reason": state.halted_reason,
    }
