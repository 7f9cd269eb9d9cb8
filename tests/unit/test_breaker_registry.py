"""The ``registry`` breaker counts the registry failing, not the registry answering about a
request: a 4xx (an archived instruction, a bad request), an instrument of another admin or the
embedded registry's refusal leave it closed; 5xx, timeouts and rate limits open it.

How: :class:`~sluice.ledger.canton.registry.HttpRegistry` over ``httpx.MockTransport`` under
:class:`~sluice.services.breaker_proxies.GuardedRegistryClient`, with a process-free
:class:`~sluice.services.breakers.Breakers` on a fake monotonic clock.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest

from sluice.domain.breaker import BreakerSettings
from sluice.domain.ledger import InstrumentId, Transfer
from sluice.ledger.canton.registry import HttpRegistry
from sluice.ports import RegistryError
from sluice.services.breaker_proxies import GuardedRegistryClient, registry_failure
from sluice.services.breakers import Breakers

ADMIN = "admin::1220aa"


def _guarded(status: int) -> tuple[GuardedRegistryClient, Breakers]:
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"error": f"status {status}"})

    inner = HttpRegistry(
        "http://registry.test",
        ADMIN,
        transport=httpx.MockTransport(answer),
        retries_max=0,
        sleep=lambda _s: None,
    )
    breakers = Breakers(default=BreakerSettings(), monotonic=lambda: 1000.0)
    return GuardedRegistryClient(inner, registry=breakers), breakers


@pytest.mark.parametrize("status", [400, 404, 409])
def test_registry_answers_about_the_request_leave_the_breaker_closed(status: int) -> None:
    client, breakers = _guarded(status)
    for n in range(25):
        with pytest.raises(RegistryError) as raised:
            client.choice_context("withdraw", f"00archived{n}")
        assert raised.value.answered
        assert raised.value.status == status
    assert breakers.states()["registry"] == "closed"


@pytest.mark.parametrize("status", [500, 503, 429, 408])
def test_registry_failures_open_the_breaker(status: int) -> None:
    client, breakers = _guarded(status)
    for n in range(10):
        with pytest.raises(RegistryError) as raised:
            client.choice_context("withdraw", f"00cid{n}")
        assert not raised.value.answered
    assert breakers.states()["registry"] == "open"


def test_an_instrument_of_another_admin_is_an_answer_not_a_failure() -> None:
    client, breakers = _guarded(200)
    transfer = Transfer(
        sender="a::1",
        receiver="b::1",
        amount=Decimal("1"),
        instrument=InstrumentId(admin="other::1220bb", id="USD"),
        requested_at=datetime(2026, 1, 1, tzinfo=UTC),
        execute_before=datetime(2026, 1, 2, tzinfo=UTC),
        input_holding_cids=(),
        meta={},
    )
    for _ in range(25):
        with pytest.raises(RegistryError, match="not the admin"):
            client.transfer_factory(transfer)
    assert breakers.states()["registry"] == "closed"


def test_registry_failure_classifies_errors() -> None:
    assert not registry_failure(RegistryError("archived", answered=True, status=404))
    assert registry_failure(RegistryError("unreachable"))
    assert registry_failure(ConnectionError("reset"))
