"""Proof of reserves over HTTP: the published roots and the snapshots for everyone, without
credentials (a proof of reserves is public: anyone may check the totals and every customer checks
their proof against these very roots), each snapshot's reserves document, and a customer's own
inclusion proof.

A user (role ``user``) gets only their own proof: any other customer id answers 404, as
everywhere in the API; staff may fetch any customer's (to help them check it). A customer whose
balance was zero at the snapshot has no leaf and gets 404. Making a proof needs the operator's
secret: without the reserves side wired (``ApiContext.reserves`` is None) the answer is 503.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query

from sluice.api.context import ApiContext
from sluice.api.por_schemas import (
    ProofOut,
    RootOut,
    SnapshotOut,
    proof_out,
    root_out,
    snapshot_out,
)
from sluice.api.routes.common import ERRORS, Context, OwnOrCompliance, PageParams
from sluice.api.routes.customers import CustomerId
from sluice.api.schemas import Page, page
from sluice.domain.errors import SluiceError
from sluice.services.por_secret import load_secret
from sluice.services.por_snapshots import (
    inclusion_proof,
    published_roots,
    reserves_of,
    snapshot_history,
)

router = APIRouter(tags=["por"], responses=ERRORS)

SnapshotId = Annotated[str, Path(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._:-]+$")]
SnapshotQuery = Annotated[
    str | None,
    Query(
        min_length=1,
        max_length=100,
        pattern=r"^[A-Za-z0-9._:-]+$",
        description="the snapshot's id (default: the latest)",
    ),
]
InstrumentQuery = Annotated[
    str,
    Query(
        min_length=1,
        max_length=300,
        description="the instrument's key <id>@<admin>, or its id when only one has it",
    ),
]
# Snapshots a page is cut from (the newest ones).
HISTORY_MAX = 10_000


class ReservesNotConfiguredError(SluiceError):
    """This process has no reserves side (no secret to make proofs with); answered 503."""

    code = 11
    error = "reserves_not_configured"
    http_status = 503


def _secret_of(context: ApiContext) -> bytes:
    reserves = context.reserves
    if reserves is None:
        raise ReservesNotConfiguredError(
            "the proof of reserves is not configured in this process: no proofs can be made"
        )
    return load_secret(reserves.secret_path)


@router.get(
    "/v1/por/roots",
    response_model=list[RootOut],
    summary="The published liabilities roots of a snapshot (public; a root file for the verifier)",
)
def get_roots(context: Context, snapshot: SnapshotQuery = None) -> list[dict[str, Any]]:
    return [root_out(item).model_dump() for item in published_roots(context.uow, snapshot)]


@router.get(
    "/v1/por/snapshots",
    response_model=Page[SnapshotOut],
    summary="The proof-of-reserves snapshots taken, newest first (public)",
)
def list_snapshots(context: Context, paging: PageParams) -> dict[str, object]:
    limit = min(paging.offset + paging.limit, HISTORY_MAX)
    found = snapshot_history(context.uow, limit=limit)[paging.offset :]
    return page([snapshot_out(item) for item in found], paging.offset, paging.limit)


@router.get(
    "/v1/por/snapshots/{snapshot_id}/reserves",
    response_model=dict[str, Any],
    summary="A snapshot's signed reserves document (public)",
)
def get_reserves(snapshot_id: SnapshotId, context: Context) -> dict[str, Any]:
    return reserves_of(context.uow, snapshot_id)


@router.get(
    "/v1/customers/{customer_id}/por/proof",
    response_model=ProofOut,
    summary="The customer's inclusion proof in a snapshot's liabilities tree",
)
def get_proof(
    customer_id: CustomerId,
    context: Context,
    caller: OwnOrCompliance,
    instrument: InstrumentQuery,
    snapshot: SnapshotQuery = None,
) -> ProofOut:
    caller.check_customer(customer_id)
    document = inclusion_proof(
        context.uow, lambda: _secret_of(context), customer_id, instrument, snapshot
    )
    return proof_out(document)
