"""``sluice alerts …`` through its console script: ``rules check`` (the example file, and a
wrong one refused naming the rule and field), ``evaluate`` raising a rule's alert from the
database's own metrics and sending it to a local webhook, ``list`` with the product's own alerts
beside it, ``ack`` (audited; a second ack refused with 41)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from sluice import bootstrap
from sluice.domain.deposits import Alert
from sluice.services.events import emit
from sluice.store.bitcoin_rows import insert_alert
from tests.e2e.test_cli_over_the_wire import environment, sluice
from tests.integration.test_alert_rules_notify import Hook

DOCS = Path(__file__).resolve().parents[2] / "docs"
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_rules_check_prints_the_example_and_refuses_a_wrong_file(tmp_path: Path) -> None:
    env = environment(tmp_path / "data")
    done = sluice(
        "alerts", "rules", "check", str(DOCS / "alert-rules.example.toml"), "--json", env=env
    )
    rules = json.loads(done.stdout)
    assert any(r["name"] == "reserve_ratio_below_full" and r["operator"] == "<" for r in rules)
    assert all("for" in r for r in rules)

    wrong = tmp_path / "wrong.toml"
    wrong.write_text('[[rules]]\nname = "lag"\nmetric = "sluice_x"\nthreshold = "high"\n')
    refused = sluice("alerts", "rules", "check", str(wrong), env=env, code=2)
    assert "rule lag: threshold:" in refused.stderr


def test_evaluate_list_and_acknowledge(tmp_path: Path) -> None:
    hook = Hook(fail_first=1)
    data = tmp_path / "data"
    rules = tmp_path / "rules.toml"
    rules.write_text(
        f"""
[[rules]]
name = "outbox_waiting"
metric = "sluice_outbox_pending_events"
operator = ">="
threshold = 3
severity = "critical"
message = "{{value}} events wait"
recipients = [{{ url = "{hook.url}" }}, "log"]
"""
    )
    config = tmp_path / "sluice.toml"
    config.write_text(
        f'[alerts]\nrules_file = "{rules}"\nnotify_backoff_s = 0\n'
        '[alerts.recipients]\nwarning = ["log"]\n'
    )
    env = environment(data, SLUICE_CONFIG=str(config))
    db = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    try:
        with db.uow() as uow:
            for n in range(3):
                emit(uow, "withdrawal_requested", f"w{n}", {"n": n}, at=T0)
            insert_alert(
                uow._connection,  # type: ignore[attr-defined]
                Alert(id="ingest:1", severity="warning", kind="unknown_instrument", message="?"),
                T0,
            )
            uow.commit()

        done = json.loads(sluice("alerts", "evaluate", "--once", "--json", env=env).stdout)
        assert done["raised"] == ["rule:outbox_waiting"]
        assert sorted(done["notified"]) == ["ingest:1", "rule:outbox_waiting"]
        assert len(hook.requests) == 2  # one 500, then taken
        body = hook.requests[-1][1]
        assert body["alert_id"] == "rule:outbox_waiting" and body["severity"] == "critical"
        assert body["message"].endswith("events wait")

        again = json.loads(sluice("alerts", "evaluate", "--json", env=env).stdout)
        assert again["repeated"] == ["rule:outbox_waiting"] and again["notified"] == []

        listed = json.loads(sluice("alerts", "list", "--json", env=env).stdout)
        by_id = {a["id"]: a for a in listed}
        assert set(by_id) == {"ingest:1", "rule:outbox_waiting"}
        assert by_id["rule:outbox_waiting"]["occurrences"] == 2
        assert by_id["rule:outbox_waiting"]["notify_attempts"] == 1
        assert by_id["ingest:1"]["rule"] is None
        critical = json.loads(
            sluice("alerts", "list", "--severity", "critical", "--json", env=env).stdout
        )
        assert [a["id"] for a in critical] == ["rule:outbox_waiting"]

        acked = json.loads(
            sluice("alerts", "ack", "ingest:1", "--actor", "ops-1", "--json", env=env).stdout
        )
        assert acked["status"] == "resolved" and acked["acknowledged_by"] == "ops-1"
        refused = sluice("alerts", "ack", "ingest:1", "--actor", "ops-2", env=env, code=2)
        assert "error 41" in refused.stderr and "ops-1" in refused.stderr

        open_now = json.loads(sluice("alerts", "list", "--open", "--json", env=env).stdout)
        assert [a["id"] for a in open_now] == ["rule:outbox_waiting"]
        everything = json.loads(sluice("alerts", "list", "--all", "--json", env=env).stdout)
        assert len(everything) == 2
        table = sluice("alerts", "list", env=env).stdout
        assert "rule:outbox_waiting" in table and "ingest:1" not in table

        with db.uow() as uow:
            audited = [
                r.entry for r in uow.audit.records() if r.entry.operation == "alert_acknowledged"
            ]
        assert [(e.actor, e.parameters["alert_id"]) for e in audited] == [("ops-1", "ingest:1")]
    finally:
        db.dispose()
        hook.close()
