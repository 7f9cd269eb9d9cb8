"""``sluice alerts …`` commands."""

from __future__ import annotations
