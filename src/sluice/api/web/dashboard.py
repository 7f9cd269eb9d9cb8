"""``/dashboard``: the staff overview, with a page per concern under it (``docs/web.md``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from sluice.api.web.pages import Page, staff_page

router = APIRouter(include_in_schema=False)


@router.get("/dashboard")
def overview(page: Annotated[Page, Depends(staff_page)]) -> HTMLResponse:
    return page.render("dashboard/overview.html")
