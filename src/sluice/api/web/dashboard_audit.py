"""``/dashboard/audit``: the audit trail, searchable by operation, customer and actor, with its
hash chain's status.

Read by the auditors, as ``GET /v1/audit`` is (``compliance_override`` or ``router_admin``).
The customer and the operation id are looked up by the store (``list_audit_records``, as the
API does); the operation's name and the actor are matched, as parts of a word, among the latest
``SCAN_MAX`` records those leave, newest first. The chain's head is always shown; verifying the
whole chain (``GET /v1/audit/verify``) reads every record, so it runs when asked for."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from sluice.api.web.dashboard_actions import AUDIT_READERS, allow, show
from sluice.api.web.pages import Page, staff_page
from sluice.domain.audit import AuditRecord
from sluice.services.audit import list_audit_records, verify_audit_log

router = APIRouter(include_in_schema=False)

SCAN_MAX = 5000
ROWS_MAX = 200
Text = Annotated[str, Query(max_length=300)]


def details(record: AuditRecord) -> str:
    """A record's parameters, checks and state changes as indented JSON, for reading."""
    entry = record.entry
    content = {
        "parameters": dict(entry.parameters),
        "checks": [dict(check) for check in entry.checks],
        "state_changes": [dict(change) for change in entry.state_changes],
        "correlation_id": entry.correlation_id,
        "hash": record.hash,
    }
    return json.dumps(content, indent=1, default=str, ensure_ascii=False)


@router.get("/dashboard/audit")
def audit_page(
    page: Annotated[Page, Depends(staff_page)],
    operation: Text = "",
    operation_id: Text = "",
    customer_id: Annotated[str, Query(max_length=100)] = "",
    actor: Text = "",
    verify: bool = False,
) -> HTMLResponse:
    allow(page, AUDIT_READERS)
    operation, operation_id = operation.strip(), operation_id.strip()
    customer_id, actor = customer_id.strip(), actor.strip()
    scanned = list_audit_records(
        page.context.uow,
        customer_id=customer_id or None,
        operation_id=operation_id or None,
        limit=SCAN_MAX,
    )
    matched = [
        record
        for record in reversed(scanned)
        if operation.lower() in record.entry.operation.lower()
        and actor.lower() in record.entry.actor.lower()
    ]
    with page.context.uow() as uow:
        head = uow.audit.head()
    return show(
        page,
        "dashboard/audit.html",
        records=[(record, details(record)) for record in matched[:ROWS_MAX]],
        matched=len(matched),
        scanned=len(scanned),
        scan_max=SCAN_MAX,
        rows_max=ROWS_MAX,
        query={
            "operation": operation,
            "operation_id": operation_id,
            "customer_id": customer_id,
            "actor": actor,
        },
        head=head,
        verification=verify_audit_log(page.context.uow) if verify else None,
    )
