"""The ``[events]`` section: where the relay publishes the outbox's events (NATS JetStream, or
the in-process bus of the embedded default) and how."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from sluice.config.sections import _check_url, _Section


class EventsConfig(_Section):
    """``bus``: ``embedded`` (in-process subscribers, the default) or ``nats`` (JetStream at
    ``nats_url``). ``stream``: the JetStream stream (subjects ``sluice.>``), created or checked
    at start with ``duplicate_window_s`` as its dedup window. ``max_in_flight``: publishes
    awaiting their ack at once; ``ack_timeout_s``: how long one may wait (then its outcome is
    unknown and it is published again with the same id); ``batch``: rows claimed per round;
    ``interval_s``: how long the relay sleeps when nothing is left; ``relay_in_serve``: whether
    ``sluice serve`` runs the relay. ``subject_prefix``: put before every subject (``""``
    by default, else tokens each ending in ``.``, e.g. ``"staging."``), so that deployments sharing
    one NATS account have streams of their own (a stream's subjects may not overlap another's)."""

    bus: Literal["embedded", "nats"] = "embedded"
    nats_url: str = "nats://127.0.0.1:4222"
    stream: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] = "SLUICE"
    duplicate_window_s: Annotated[float, Field(gt=0, le=7 * 86_400)] = 120.0
    max_in_flight: Annotated[int, Field(ge=1, le=65_536)] = 1024
    ack_timeout_s: Annotated[float, Field(gt=0, le=600)] = 5.0
    batch: Annotated[int, Field(ge=1, le=100_000)] = 1000
    interval_s: Annotated[float, Field(gt=0, le=3600)] = 0.25
    relay_in_serve: bool = True
    subject_prefix: Annotated[str, Field(pattern=r"^([A-Za-z0-9_-]+\.)*$", max_length=64)] = ""

    @field_validator("nats_url")
    @classmethod
    def _url(cls, value: str) -> str:
        checked = _check_url(value, schemes=("nats", "tls"))
        assert checked is not None
        return checked
