"""``/me``: the customer's page (``docs/web.md``)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import HTMLResponse

from sluice.api.web.pages import Page, customer_page

router = APIRouter(include_in_schema=False)


@router.get("/me")
def me(page: Annotated[Page, Depends(customer_page)]) -> HTMLResponse:
    return page.render("me.html")
