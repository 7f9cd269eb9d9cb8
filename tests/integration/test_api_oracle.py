"""``GET /v1/oracle/health`` on SQLite and PostgreSQL, and the oracle's loop in ``sluice serve``
(:func:`sluice.server.oracle.oracle_loop`): the loop reads every feed and the API answers what it
read — healthy, then degraded with the primary's rejection once the primary goes stale — to every
role; 503 without feeds; 401 without credentials."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from sluice.config import DeploymentConfig
from sluice.server.oracle import oracle_loop
from tests.api_support import ApiWorld, api_world


@pytest.fixture
def world(database_url: str) -> Iterator[ApiWorld]:
    found = api_world(database_url)
    yield found
    found.sandbox.close()


def _price(path: Path, price: str, at: float, round_id: int) -> None:
    path.write_text(json.dumps({"price": price, "time": int(at), "round": round_id}))


def _config(tmp_path: Path, now: float) -> tuple[DeploymentConfig, Path]:
    """File feeds priced at ``now`` (the API's clock: the sandbox's, not the wall's)."""
    primary, secondary = tmp_path / "primary.json", tmp_path / "secondary.json"
    _price(primary, "2.50", now, 1)
    _price(secondary, "2.51", now, 1)
    source = {"price_pointer": "/price", "time_pointer": "/time"}
    config = DeploymentConfig.model_validate(
        {
            "oracle": {
                "poll_s": 5,
                "feeds": [
                    {
                        "pair": "CC/USD",
                        "kind": "file",
                        "path": str(primary),
                        "round_pointer": "/round",
                        "decimals": 2,
                        "heartbeat_s": 60,
                        "secondary": {"kind": "file", "path": str(secondary), **source},
                        **source,
                    }
                ],
            }
        }
    )
    return config, primary


def _health(world: ApiWorld, who: str | None) -> tuple[int, dict[str, object]]:
    with world.client() as client:
        answer = client.get("/v1/oracle/health", headers=world.headers(who))
    return answer.status_code, answer.json()


def test_without_feeds_the_health_endpoint_answers_503(world: ApiWorld) -> None:
    status, body = _health(world, "user")
    assert (status, body["code"], body["error"]) == (503, 11, "oracle_not_configured")
    assert _health(world, None)[0] == 401


def test_the_loop_reads_the_feeds_and_every_role_sees_their_health(
    world: ApiWorld, tmp_path: Path
) -> None:
    now = world.context.clock().timestamp()
    config, primary = _config(tmp_path, now)
    service = SimpleNamespace(config=config, database=world.sandbox.database, context=world.context)
    bare = SimpleNamespace(**{**vars(service), "config": DeploymentConfig()})
    assert oracle_loop(bare) is None  # type: ignore[arg-type]
    loop = oracle_loop(service)  # type: ignore[arg-type]
    assert loop is not None and world.context.oracle is not None
    try:
        status, body = _health(world, "user")
        assert status == 200, body
        (feed,) = body["feeds"]  # type: ignore[misc]
        assert feed["health"] is None  # not read yet

        loop.run_round()
        for who in ("user", "operator", "compliance_officer", "super_admin"):
            status, body = _health(world, who)
            assert (status, body["health"]) == (200, "healthy"), body
        (feed,) = body["feeds"]  # type: ignore[misc]
        assert (feed["price"], feed["source"], feed["fallback_fee"]) == ("2.50", "primary", False)

        _price(primary, "2.50", now - 3600, 2)  # an hour before: stale
        loop.run_round()
        status, body = _health(world, "operator")
        (feed,) = body["feeds"]  # type: ignore[misc]
        assert (body["health"], feed["source"], feed["fallback_fee"]) == (
            "degraded",
            "secondary",
            True,
        )
        assert feed["last_rejection"]["rule"] == "stale"
    finally:
        loop.stop(timeout_s=1.0)
