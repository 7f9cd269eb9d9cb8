"""Circuit breakers over HTTP: each flow's breaker, and forcing one open or closed."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter(tags=["system"])
