"""The web pages' settings (``[web]`` in the deployment configuration, ``docs/web.md``)."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class WebSettings:
    """Session lifetimes, short for staff: a session ends after ``*_idle_s`` without a request
    or ``*_max_s`` after sign-in, whichever comes first. ``secure_cookies``: the session cookie
    is ``Secure`` (browsers keep such cookies on ``https`` and on ``localhost``). Failed sign-ins
    are limited to ``login_failures_per_minute`` per client address (then 429), each audited."""

    staff_idle_s: int = 15 * 60
    staff_max_s: int = 8 * 3600
    customer_idle_s: int = 60 * 60
    customer_max_s: int = 24 * 3600
    secure_cookies: bool = True
    login_failures_per_minute: int = 5
