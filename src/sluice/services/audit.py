"""Reading the audit trail: verifying its hash chain and listing its records (DESIGN §6).

Verification reads the log page by page, each page in its own short transaction, so memory stays
bounded (one page plus what :class:`~sluice.domain.audit.ChainVerifier` keeps around breaks) and
appenders are never held up for long. Appends may continue meanwhile: the head is read only once
no record is left to read, and then the log is read once more — if nothing new turned up, every
record read was committed before the head was read and no record beyond the head exists, so the
head is compared with a consistent picture (a record beyond it was not appended through the log).
"""

from __future__ import annotations

from collections.abc import Callable

from sluice.domain.audit import (
    GENESIS_HASH,
    AuditRecord,
    ChainVerification,
    ChainVerifier,
)
from sluice.domain.errors import InvalidInputError
from sluice.ports import UnitOfWorkFactory

PAGE_SIZE_MAX = 10_000
LIST_LIMIT_MAX = 10_000


def verify_audit_log(
    uow_factory: UnitOfWorkFactory,
    *,
    page_size: int = 5000,
    on_progress: Callable[[int], None] | None = None,
    start: tuple[int, str] = (0, GENESIS_HASH),
) -> ChainVerification:
    """Verify the whole chain (or, from a trusted checkpoint ``start``, what came after it).

    ``on_progress`` is called with the number of records checked so far after each page.
    """
    if not 1 <= page_size <= PAGE_SIZE_MAX:
        raise InvalidInputError(f"page size must be 1–{PAGE_SIZE_MAX}, got {page_size}")
    verifier = ChainVerifier(start)
    after = start[0]
    checked = 0

    def read() -> list[AuditRecord]:
        nonlocal after, checked
        with uow_factory() as uow:
            page = uow.audit.records(after_seq=after, limit=page_size)
        for record in page:
            verifier.add(record)
        if page:
            after = page[-1].seq
            checked += len(page)
            if on_progress is not None:
                on_progress(checked)
        return page

    while True:
        if len(read()) == page_size:
            continue
        with uow_factory() as uow:
            head = uow.audit.head()
        if not read():
            return verifier.finish(head)


def list_audit_records(
    uow_factory: UnitOfWorkFactory,
    *,
    customer_id: str | None = None,
    operation_id: str | None = None,
    limit: int = 100,
) -> list[AuditRecord]:
    """The latest ``limit`` records (of a customer and/or an operation when given), oldest
    first."""
    if not 1 <= limit <= LIST_LIMIT_MAX:
        raise InvalidInputError(f"limit must be 1–{LIST_LIMIT_MAX}, got {limit}")
    with uow_factory() as uow:
        return uow.audit.find(customer_id=customer_id, operation_id=operation_id, limit=limit)
