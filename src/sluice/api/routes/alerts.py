"""Alerts over HTTP: the alerts raised, and acknowledging one."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["alerts"])
