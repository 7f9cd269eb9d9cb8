"""Mounting the pages on the API's application."""

from __future__ import annotations

from importlib.resources import files

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from sluice.api.web import (
    auth,
    customer,
    dashboard,
    dashboard_audit,
    dashboard_compliance,
    dashboard_controls,
    dashboard_ops,
    dashboard_reserves,
    oidc_login,
)
from sluice.api.web.pages import handlers

ROUTERS = (
    auth.router,
    oidc_login.router,
    dashboard.router,
    dashboard_ops.router,
    dashboard_reserves.router,
    dashboard_compliance.router,
    dashboard_controls.router,
    dashboard_audit.router,
    customer.router,
)


def install_pages(app: FastAPI) -> None:
    """Mount the pages, their static files and their error answers on the API's app."""
    app.state.failed_sign_ins = auth.FailedSignIns()
    for exception, handler in handlers().items():
        app.add_exception_handler(exception, handler)
    for router in ROUTERS:
        app.include_router(router)
    static = files("sluice.api.web").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")
