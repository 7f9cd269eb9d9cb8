"""``sluice alerts …`` commands: list, ack, rules check, evaluate."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sluice.cli.alerts.wiring import alerts_app
from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    compliance_database,
    deployment,
    fail,
    log_to_stderr,
    note,
    print_json,
    print_table,
    timestamp_or_none,
    utc_now,
)
from sluice.config.alerts import AlertRule, AlertRulesError, LogRecipient, load_rules
from sluice.ports.alerts import AlertRecord
from sluice.services.alerts import acknowledge, list_alerts

rules_app = typer.Typer(no_args_is_help=True, help="The alert rules: check a rules file.")
alerts_app.add_typer(rules_app, name="rules")


def alert_json(record: AlertRecord) -> dict[str, object]:
    return {
        "id": record.id,
        "severity": record.severity,
        "kind": record.kind,
        "rule": record.rule,
        "message": record.message,
        "details": dict(record.details),
        "status": record.status,
        "update_id": record.update_id,
        "created_at": timestamp_or_none(record.created_at),
        "last_seen_at": timestamp_or_none(record.last_seen_at),
        "occurrences": record.occurrences,
        "acknowledged_at": timestamp_or_none(record.acknowledged_at),
        "acknowledged_by": record.acknowledged_by,
        "resolved_at": timestamp_or_none(record.resolved_at),
        "notified_at": timestamp_or_none(record.notified_at),
        "notify_attempts": record.notify_attempts,
    }


@alerts_app.command("list")
def alerts_list(
    show_all: Annotated[
        bool, typer.Option("--all", help="Every alert, resolved ones included.")
    ] = False,
    open_only: Annotated[
        bool, typer.Option("--open", help="Only alerts not acknowledged nor resolved.")
    ] = False,
    severity: Annotated[
        str | None, typer.Option("--severity", help="critical, warning or info.")
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 100,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Alerts, newest first: by default those not resolved (open and acknowledged)."""
    if show_all and open_only:
        fail("give --all or --open, not both")
    status = None if show_all else ["open"] if open_only else ["open", "acknowledged"]
    with compliance_database(db or deployment().database_url) as database:
        found = list_alerts(database.uow, status=status, severity=severity, limit=limit)
    if as_json:
        print_json([alert_json(a) for a in found.alerts])
        return
    if not found.alerts:
        note("no alerts")
        return
    table = Table(title=f"{len(found.alerts)} of {found.total} alert(s)")
    for column in ("id", "severity", "status", "kind", "seen", "last seen", "message"):
        table.add_column(column, no_wrap=column in ("id", "severity", "status"))
    for a in found.alerts:
        table.add_row(
            a.id,
            a.severity,
            a.status,
            a.kind,
            str(a.occurrences),
            timestamp_or_none(a.last_seen_at or a.created_at),
            a.message,
        )
    print_table(table)


@alerts_app.command("ack")
def alerts_ack(
    alert_id: Annotated[str, typer.Argument(help="The alert's id (from `sluice alerts list`).")],
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Acknowledge an alert (audited). The product's own alerts are resolved with it; an alert
    rule's stays until its condition clears."""
    who = actor_name(actor)
    with compliance_database(db or deployment().database_url) as database:
        record = acknowledge(database.uow, alert_id, actor=who, at=utc_now())
    if as_json:
        print_json(alert_json(record))
        return
    note(f"alert {record.id} acknowledged by {who} ({record.status})")


def _recipients_text(rule: AlertRule) -> str:
    return ", ".join("log" if isinstance(r, LogRecipient) else r.url for r in rule.recipients)


@rules_app.command("check")
def alerts_rules_check(
    file: Annotated[
        Path | None,
        typer.Argument(help="A rules file; default: [alerts] rules_file and inline rules."),
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Validate alert rules and print them; exit 2 naming each rule and field that is wrong."""
    try:
        rules = load_rules(file) if file is not None else deployment().alerts.all_rules()
    except AlertRulesError as exc:
        fail(str(exc))
    if as_json:
        print_json([r.model_dump(mode="json", by_alias=True) for r in rules])
        return
    if not rules:
        note("no alert rules")
        return
    table = Table(title=f"{len(rules)} alert rule(s)")
    for column in ("name", "severity", "condition", "for", "recipients"):
        table.add_column(column)
    for r in rules:
        condition = r.metric
        if r.labels:
            condition += " " + ",".join(f'{k}="{v}"' for k, v in r.labels.items())
        if r.increase_s is not None:
            condition = f"increase({condition}[{r.increase_s:g}s])"
        if r.aggregate is not None:
            condition = f"{r.aggregate}({condition})"
        table.add_row(
            r.name,
            r.severity,
            f"{condition} {r.op} {r.threshold:g}",
            f"{r.for_s:g}s",
            _recipients_text(r),
        )
    print_table(table)


@alerts_app.command("evaluate")
def alerts_evaluate(
    once: Annotated[
        bool, typer.Option("--once", help="One evaluation and one notification round (default).")
    ] = True,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Evaluate the alert rules once against a fresh collection of the database's metrics, then
    send the notifications due. Exit 0 whatever fired; ``for`` durations start again with each
    run (a rule with ``for`` > 0 never fires from one run alone)."""
    del once  # one round is all this command does; ``sluice serve`` evaluates on a loop
    log_to_stderr()
    from sluice.monitoring.alerts import RuleEvaluator
    from sluice.monitoring.metrics import REGISTRY
    from sluice.monitoring.notify import Notifier

    config = deployment()
    try:
        rules = config.alerts.all_rules()
    except AlertRulesError as exc:
        fail(str(exc))
    with compliance_database(db or config.database_url) as database:
        try:
            from sluice.monitoring.collectors import ensure_state

            ensure_state(database.uow, utc_now)
        except ImportError:  # pragma: no cover - collectors ship with the metrics
            note("the database's metrics are not available: only alerts_open is evaluated")
        evaluator = RuleEvaluator(rules, database.uow, REGISTRY, clock=utc_now)
        done = evaluator.evaluate()
        notifier = Notifier(config.alerts, rules, database.uow, clock=utc_now)
        try:
            sent = notifier.notify()
        finally:
            notifier.close()
    summary = {
        "rules": len(rules),
        "raised": done.raised,
        "repeated": done.repeated,
        "resolved": done.resolved,
        "pending": [f"{rule}{dict(labels)}" for rule, labels in done.pending],
        "notified": sent.notified,
        "notify_failed": sent.failed,
        "given_up": sent.given_up,
    }
    if as_json:
        print_json(summary)
        return
    sys.stdout.write(
        f"{len(rules)} rule(s): {len(done.raised)} raised, {len(done.repeated)} still firing, "
        f"{len(done.resolved)} resolved, {len(done.pending)} pending; "
        f"{len(sent.notified)} notified, {len(sent.failed)} not delivered "
        f"({len(sent.given_up)} given up)\n"
    )
