"""The ``[breakers]`` section: the circuit breakers' defaults, and any flow's own settings."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from sluice.config.sections import _Section


class BreakerConfig(_Section):
    """A breaker opens when, over the last ``window`` calls and after at least ``min_calls``,
    the share that failed reaches ``failure_rate``; it stays open ``open_s`` seconds, then lets
    ``probes`` calls through (half-open): all succeed → closed, one fails → open again."""

    window: Annotated[int, Field(ge=1, le=10_000)] = 20
    min_calls: Annotated[int, Field(ge=1, le=10_000)] = 10
    failure_rate: Annotated[float, Field(gt=0, le=1)] = 0.5
    open_s: Annotated[float, Field(gt=0, le=86_400)] = 30.0
    probes: Annotated[int, Field(ge=1, le=1000)] = 3

    @model_validator(mode="after")
    def _sizes(self) -> BreakerConfig:
        if self.min_calls > self.window:
            raise ValueError("min_calls must not be above window")
        return self


class BreakersConfig(_Section):
    """``defaults`` for every flow; ``flows.<name>`` replaces them for one flow (ledger,
    registry, bitcoin, payouts, nats, webhooks)."""

    defaults: BreakerConfig = BreakerConfig()
    flows: dict[str, BreakerConfig] = Field(default_factory=dict)
