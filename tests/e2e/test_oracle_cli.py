"""``sluice oracle status`` and ``sluice oracle rejections`` through the console script, on file
feeds another process would keep current: healthy (exit 0), degraded when the primary goes stale
and the secondary is used at the fallback fee (exit 1), offline when neither can be used (exit 2),
and the refused prices listed with their rules."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tests.e2e.test_cli_over_the_wire import environment, sluice


def _price(path: Path, price: str, at: float, round_id: int) -> None:
    path.write_text(json.dumps({"price": price, "time": int(at), "round": round_id}))


def _config(tmp_path: Path, primary: Path, secondary: Path) -> Path:
    config = tmp_path / "sluice.toml"
    config.write_text(
        f"""
[oracle]
heartbeat_margin_s = 5

[[oracle.feeds]]
pair = "ISTSI/USD"
kind = "file"
path = "{primary}"
price_pointer = "/price"
time_pointer = "/time"
round_pointer = "/round"
decimals = 2
heartbeat_s = 60
secondary = {{ kind = "file", path = "{secondary}", price_pointer = "/price", \
time_pointer = "/time" }}
"""
    )
    return config


def test_status_follows_the_feeds_health_and_rejections_name_their_rules(tmp_path: Path) -> None:
    primary, secondary = tmp_path / "primary.json", tmp_path / "secondary.json"
    now = time.time()
    _price(primary, "97000.00", now, 1)
    _price(secondary, "97100.00", now, 1)
    env = environment(tmp_path / "data", SLUICE_CONFIG=str(_config(tmp_path, primary, secondary)))

    healthy = json.loads(sluice("oracle", "status", "--json", env=env).stdout)
    assert healthy["health"] == "healthy"
    (feed,) = healthy["feeds"]
    assert (feed["pair"], feed["source"], feed["price"]) == ("ISTSI/USD", "primary", "97000.00")
    assert feed["fallback_fee"] is False

    _price(primary, "97000.00", now - 3600, 2)  # an hour old: past its heartbeat
    degraded = json.loads(sluice("oracle", "status", "--json", env=env, code=1).stdout)
    (feed,) = degraded["feeds"]
    assert (degraded["health"], feed["source"], feed["fallback_fee"]) == (
        "degraded",
        "secondary",
        True,
    )
    assert feed["last_rejection"]["rule"] == "stale"

    primary.write_text("{not json")
    secondary.write_text(json.dumps({"price": "-1", "time": int(time.time())}))
    offline = sluice("oracle", "status", "--json", env=env, code=2)
    assert json.loads(offline.stdout)["health"] == "offline"
    table = sluice("oracle", "status", "--no-refresh", env=env, code=2)
    assert "offline" in table.stdout

    rejected = json.loads(sluice("oracle", "rejections", "--json", env=env).stdout)
    rules = {item["rule"] for item in rejected}
    assert {"stale", "malformed", "not_positive"} <= rules, rules
    only = json.loads(
        sluice(
            "oracle", "rejections", "--pair", "ISTSI/USD", "--limit", "1", "--json", env=env
        ).stdout
    )
    assert len(only) == 1 and only[0]["pair"] == "ISTSI/USD"
    unknown = sluice("oracle", "rejections", "--pair", "NOPE/USD", env=env, code=2)
    assert "no price feed for NOPE/USD" in unknown.stderr
