"""Reconciliation over HTTP: run one now, and the runs kept with their reports.

Who may: running one needs ``router_admin``: a run reacts to what it finds as a scheduled one
does (a critical discrepancy halts minting, an emergency pauses the system), which is the
router administrator's domain, and a run reads the ledger and the Bitcoin node in full, so it is
not for every principal to trigger. The reports are read by the auditors (``compliance_override``
or ``router_admin``), as the audit trail is: they show the treasury's and custody's figures, not
any one customer's. When the process has no reserves side (``ApiContext.reserves`` is None) the
endpoints answer 503.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path

from sluice.api.context import ApiContext
from sluice.api.reconciliation_schemas import ReconciliationRunOut, run_out
from sluice.api.routes.common import ERRORS, AuditReaders, Context, PageParams, RouterAdmin
from sluice.api.schemas import Page, page
from sluice.domain.errors import SluiceError
from sluice.services.reconciliation import get_run, list_runs, reconcile
from sluice.services.reserves_settings import ReservesContext

router = APIRouter(tags=["reserves"])

RunId = Annotated[str, Path(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9._:-]+$")]
# Runs a page is cut from (the newest ones).
HISTORY_MAX = 1000


class ReconciliationNotConfiguredError(SluiceError):
    """This process has no reserves side; answered 503."""

    code = 11
    error = "reserves_not_configured"
    http_status = 503


def reserves_of(context: ApiContext) -> ReservesContext:
    found = context.reserves
    if found is None:
        raise ReconciliationNotConfiguredError(
            "reconciliation is not configured in this process (no reserves side)"
        )
    return found


@router.post(
    "/v1/reserves/reconcile",
    response_model=ReconciliationRunOut,
    responses=ERRORS,
    summary="Reconcile now: every source read independently, classed, reacted to and stored",
)
def post_reconcile(context: Context, caller: RouterAdmin) -> ReconciliationRunOut:
    return run_out(reconcile(reserves_of(context), trigger="manual"))


@router.get(
    "/v1/reserves/reconciliations",
    response_model=Page[ReconciliationRunOut],
    responses=ERRORS,
    summary="The reconciliation runs kept, newest first",
)
def get_reconciliations(
    context: Context, paging: PageParams, caller: AuditReaders
) -> dict[str, Any]:
    ctx = reserves_of(context)
    runs = list_runs(ctx, limit=min(paging.offset + paging.limit, HISTORY_MAX))
    items = [run_out(run) for run in runs[paging.offset : paging.offset + paging.limit]]
    return page(items, paging.offset, paging.limit)


@router.get(
    "/v1/reserves/reconciliations/{run_id}",
    response_model=ReconciliationRunOut,
    responses=ERRORS,
    summary="One reconciliation run's report",
)
def get_reconciliation(
    run_id: RunId, context: Context, caller: AuditReaders
) -> ReconciliationRunOut:
    return run_out(get_run(reserves_of(context), run_id))
