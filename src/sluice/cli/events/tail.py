"""``sluice events tail``: follow the event stream."""

from __future__ import annotations
