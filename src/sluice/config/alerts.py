"""The ``[alerts]`` section: alert rules and where notifications go.

A rule compares a Prometheus metric of sluice (``sluice_…``, as ``/metrics`` shows it) or the
count of open alerts (``alerts_open``) with a threshold; while the comparison holds for ``for``
seconds, it raises an alert, one per label set of the matching series. Rules come from
``rules_file`` (a TOML file of ``[[rules]]`` tables: ``docs/alert-rules.example.toml``) and from
inline ``[[alerts.rules]]`` tables of the deployment file.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from sluice.config.sections import _check_url, _Section
from sluice.domain.errors import InvalidInputError

Severity = Literal["critical", "warning", "info"]
SEVERITIES: tuple[Severity, ...] = ("critical", "warning", "info")
Operator = Literal[">", ">=", "<", "<=", "==", "!="]
Aggregate = Literal["sum", "max", "min", "count"]

#: The pseudo-metric counting the alerts not resolved (labels: severity, kind, rule).
ALERTS_OPEN = "alerts_open"

_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_.:-]{0,99}$")
_METRIC = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?$")
_MATCHER = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*(?:,|$)')


class AlertRulesError(InvalidInputError):
    """Alert rules that cannot be used; ``problems`` lists each as ``"rule NAME: field: …"``."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        listed = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"alert rules {source} have {len(problems)} problem(s):\n{listed}")


def parse_matchers(text: str) -> list[tuple[str, str, str]]:
    """``a="x", b!="y", c=~"z.*"`` as ``(label, op, value)`` triples; ValueError when it does
    not read."""
    matchers: list[tuple[str, str, str]] = []
    position = 0
    text = text.strip()
    while position < len(text):
        found = _MATCHER.match(text, position)
        if found is None or found.end() == position:
            raise ValueError(f"cannot read the label matchers {text!r}")
        label, op, value = found.group(1), found.group(2), found.group(3)
        value = value.replace('\\"', '"').replace("\\\\", "\\")
        if op == "=~":
            re.compile(value)
        matchers.append((label, op, value))
        position = found.end()
    return matchers


def split_metric(text: str) -> tuple[str, list[tuple[str, str, str]]]:
    """``name{matchers}`` as the name and its matchers."""
    found = _METRIC.match(text.strip())
    if found is None:
        raise ValueError(f'{text!r} is not a metric name with optional {{label="value"}}')
    return found.group(1), parse_matchers(found.group(2) or "")


class WebhookRecipient(_Section):
    """A webhook: the alert is POSTed there as JSON, with ``headers`` (e.g. authorization)."""

    url: str
    headers: dict[str, str] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        checked = _check_url(value)
        assert checked is not None
        return checked


class LogRecipient(_Section):
    """The log: one structured line (``alert_notified``) per alert."""

    log: Literal[True] = True


Recipient = WebhookRecipient | LogRecipient


def _recipient(value: Any) -> Any:
    """``"log"``, a URL string, or a table (``{url=…, headers={…}}`` / ``{log=true}``)."""
    if isinstance(value, str):
        if value == "log":
            return LogRecipient()
        return {"url": value}
    return value


def _recipients(value: Any) -> Any:
    if isinstance(value, (str, dict)):
        value = [value]
    if isinstance(value, list):
        return [_recipient(one) for one in value]
    return value


def _log_only() -> list[Recipient]:
    return [LogRecipient()]


class AlertRule(_Section):
    """One rule. ``metric``: a sluice metric's name, with optional label matchers
    (``sluice_breaker_state{flow="ledger"}``; ``=``, ``!=``, ``=~``), or ``alerts_open``; ``labels``
    adds matchers as a table. ``increase_s``: compare the increase of a counter over that many
    seconds instead of its value. ``aggregate``: compare one figure over all matching series
    (sum/max/min/count) instead of each series. ``for``: seconds the comparison must hold before
    the alert fires. ``message``: a template (``{rule}``, ``{value}``, ``{threshold}``, ``{op}``,
    ``{metric}``, ``{labels}`` and each label by name)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str
    metric: str
    labels: dict[str, str] = Field(default_factory=dict)
    op: Operator = Field(default=">", alias="operator")
    threshold: float
    for_s: Annotated[float, Field(ge=0, le=7 * 86_400, alias="for")] = 0.0
    increase_s: Annotated[float, Field(gt=0, le=7 * 86_400)] | None = None
    aggregate: Aggregate | None = None
    severity: Severity = "warning"
    recipients: list[Recipient] = Field(default_factory=_log_only)
    message: str = "{rule}: {metric}{labels} is {value} ({op} {threshold})"
    description: str = ""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError(
                "a rule name is 1-100 letters, digits and _.:- starting with a letter or _"
            )
        return value

    @field_validator("metric")
    @classmethod
    def _metric(cls, value: str) -> str:
        split_metric(value)
        return value.strip()

    @field_validator("recipients", mode="before")
    @classmethod
    def _recipients_in(cls, value: Any) -> Any:
        return _recipients(value)

    @field_validator("message")
    @classmethod
    def _template(cls, value: str) -> str:
        try:
            value.format_map(_Lenient(rule="r", value=1.0, threshold=1.0, op=">"))
        except (ValueError, IndexError) as error:
            raise ValueError(f"the template does not read: {error}") from error
        return value

    @property
    def metric_name(self) -> str:
        return split_metric(self.metric)[0]

    @property
    def matchers(self) -> list[tuple[str, str, str]]:
        """The metric's inline matchers, then ``labels`` as equalities."""
        return split_metric(self.metric)[1] + [(k, "=", v) for k, v in self.labels.items()]


class _Lenient(dict[str, Any]):
    """Template values; a name it does not know stays as written."""

    def __missing__(self, key: str) -> str:
        return "{" + key + "}"


def render_message(template: str, values: dict[str, Any]) -> str:
    """``template`` filled with ``values`` (unknown names left as written)."""
    try:
        return template.format_map(_Lenient(values))
    except (ValueError, IndexError, KeyError, AttributeError):
        return template


class AlertsConfig(_Section):
    """``rules_file``: a TOML file of ``[[rules]]`` (``docs/alert-rules.example.toml`` shows the
    form); ``rules``: inline ``[[alerts.rules]]``; none: only the alerts the product raises itself.
    ``evaluate_interval_s``: how often ``sluice serve`` evaluates the rules and sends
    notifications. ``recipients``: by severity, where the product's own alerts are sent (the log
    when a severity has none). Webhook delivery: ``notify_attempts`` tries per round, waiting
    ``notify_backoff_s`` doubled each time up to ``notify_backoff_max_s``, each with a
    ``notify_timeout_s`` timeout; after ``notify_give_up_after`` failed tries in all the alert is
    logged as given up."""

    rules_file: Path | None = None
    rules: list[AlertRule] = Field(default_factory=list)
    evaluate_interval_s: Annotated[float, Field(gt=0, le=3600)] = 15.0
    recipients: dict[Severity, list[Recipient]] = Field(default_factory=dict)
    notify_attempts: Annotated[int, Field(ge=1, le=20)] = 3
    notify_backoff_s: Annotated[float, Field(ge=0, le=60)] = 0.5
    notify_backoff_max_s: Annotated[float, Field(ge=0, le=600)] = 8.0
    notify_timeout_s: Annotated[float, Field(gt=0, le=120)] = 5.0
    notify_give_up_after: Annotated[int, Field(ge=1, le=1000)] = 12

    @field_validator("recipients", mode="before")
    @classmethod
    def _recipients_in(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: _recipients(v) for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _unique(self) -> AlertsConfig:
        names = [rule.name for rule in self.rules]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"rules: duplicate rule names {', '.join(duplicated)}")
        return self

    def recipients_for(self, severity: str) -> list[Recipient]:
        """Where the product's own alerts of ``severity`` go."""
        chosen = self.recipients.get(severity)  # type: ignore[call-overload]
        return list(chosen) if chosen else [LogRecipient()]

    def all_rules(self) -> list[AlertRule]:
        """Inline rules, then those of ``rules_file``; AlertRulesError when any is unusable."""
        rules = list(self.rules)
        if self.rules_file is not None:
            rules.extend(load_rules(self.rules_file))
        names = [rule.name for rule in rules]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise AlertRulesError(
                str(self.rules_file), [f"rule {n}: name: defined twice" for n in duplicated]
            )
        return rules


def parse_rules(data: Any, source: str) -> list[AlertRule]:
    """The ``[[rules]]`` of a parsed TOML document; AlertRulesError naming each rule and field
    that is wrong."""
    if not isinstance(data, dict):
        raise AlertRulesError(source, ["the file is not a TOML table"])
    unknown = sorted(set(data) - {"rules"})
    problems = [f"{key}: unknown key (rules are [[rules]] tables)" for key in unknown]
    raw = data.get("rules", [])
    if not isinstance(raw, list):
        raise AlertRulesError(source, [*problems, "rules: must be an array of tables"])
    rules: list[AlertRule] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        label = f"rules[{index}]"
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            label = f"rule {item['name']}"
        if not isinstance(item, dict):
            problems.append(f"{label}: must be a table")
            continue
        try:
            rule = AlertRule.model_validate(item)
        except ValidationError as error:
            for detail in error.errors():
                where = ".".join(str(p) for p in detail["loc"]) or "rule"
                message = str(detail["msg"]).removeprefix("Value error, ")
                problems.append(f"{label}: {where}: {message}")
            continue
        if rule.name in seen:
            problems.append(f"{label}: name: defined twice")
            continue
        seen.add(rule.name)
        rules.append(rule)
    if problems:
        raise AlertRulesError(source, problems)
    return rules


def load_rules(path: Path) -> list[AlertRule]:
    """The rules of a TOML rules file; AlertRulesError when it is missing or wrong."""
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError as error:
        raise AlertRulesError(str(path), ["the file does not exist"]) from error
    except tomllib.TOMLDecodeError as error:
        raise AlertRulesError(str(path), [f"not TOML: {error}"]) from error
    return parse_rules(data, str(path))
