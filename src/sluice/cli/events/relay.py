"""``sluice events relay``: publish the outbox's committed events."""

from __future__ import annotations
