"""The ``[web]`` section: the pages' session lifetimes (short for staff), whether the session
cookie is ``Secure``, and how many failed sign-ins a client address gets per minute
(``docs/web.md``)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, model_validator

from sluice.config.sections import _Section

SECONDS = Annotated[int, Field(ge=60, le=30 * 86_400)]


class WebConfig(_Section):
    staff_idle_s: SECONDS = 15 * 60
    staff_max_s: SECONDS = 8 * 3600
    customer_idle_s: SECONDS = 60 * 60
    customer_max_s: SECONDS = 24 * 3600
    secure_cookies: bool = True
    login_failures_per_minute: Annotated[int, Field(ge=1, le=1000)] = 5

    @model_validator(mode="after")
    def _idle_within_max(self) -> WebConfig:
        for who in ("staff", "customer"):
            if getattr(self, f"{who}_idle_s") > getattr(self, f"{who}_max_s"):
                raise ValueError(f"{who}_idle_s must not exceed {who}_max_s")
        return self
