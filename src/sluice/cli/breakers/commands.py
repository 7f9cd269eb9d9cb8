"""``sluice breakers …`` commands."""

from __future__ import annotations
