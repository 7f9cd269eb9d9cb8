"""Run-time configuration that changes only through approvals and after a time lock.

A handful of settings (:data:`DEFINITIONS`) can be changed while sluice runs: how many approvals a
critical operation needs, the time lock itself, the withdrawal size above which a withdrawal needs
approvals, and the rate limits. Each change is a row with the moment it takes effect
(``effective_at`` = approval time + the time lock in force when it was proposed); the value in
force is the latest row whose ``effective_at`` has passed, else the deployment's default, else the
built-in default. Nothing ever edits or deletes a row, so the history of every setting stays.

Values are JSON: integers and floats as numbers, decimal amounts as strings, ``null`` where a
setting allows "never". :func:`check_setting` validates and normalises a value for its key and
says what is wrong, naming the key.

:class:`RuntimeSettings` reads the rows at most once per ``ttl_s`` (a hot API asks on every
request) but compares ``effective_at`` with its clock on every read, so a scheduled change comes
into force on time even while the rows are cached.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from sluice.domain.audit import AuditEntry
from sluice.domain.errors import DuplicateOperationError, InvalidInputError
from sluice.domain.ledger import format_timestamp
from sluice.ports import SettingRecord, UnitOfWorkFactory

log = logging.getLogger(__name__)

SettingKind = Literal["int", "float", "decimal"]
SettingValue = int | float | Decimal | None

_DAY_S = 86_400.0
_RATE_MAX = 10_000_000.0
_DECIMAL_MAX = Decimal(10) ** 15


@dataclass(frozen=True, slots=True)
class SettingDefinition:
    """One setting: its type, default, bounds (``minimum_exclusive``: strictly above
    ``minimum``) and what it means."""

    key: str
    kind: SettingKind
    default: SettingValue
    description: str
    minimum: int | float | Decimal | None = None
    maximum: int | float | Decimal | None = None
    minimum_exclusive: bool = False
    nullable: bool = False

    def bounds(self) -> str:
        low = (
            ""
            if self.minimum is None
            else f"{'>' if self.minimum_exclusive else '≥'} {_text(self.minimum)}"
        )
        high = "" if self.maximum is None else f"≤ {_text(self.maximum)}"
        return ", ".join(part for part in (low, high) if part)


def _text(number: int | float | Decimal) -> str:
    if isinstance(number, float) and number.is_integer():
        return str(int(number))
    if isinstance(number, Decimal):
        return format(number, "f")
    return str(number)


DEFINITIONS: Mapping[str, SettingDefinition] = {
    d.key: d
    for d in (
        SettingDefinition(
            "approvals.required",
            "int",
            2,
            "How many distinct principals must approve a critical operation (the proposer "
            "counts when eligible).",
            minimum=1,
            maximum=10,
        ),
        SettingDefinition(
            "config.timelock_s",
            "float",
            _DAY_S,
            "Seconds between the approval of a configuration change and the moment it takes "
            "effect.",
            minimum=0.0,
            maximum=30 * _DAY_S,
        ),
        SettingDefinition(
            "withdrawals.approval_above",
            "decimal",
            Decimal("10000"),
            "Withdrawals larger than this (in reference units) need approvals; null: never.",
            minimum=Decimal(0),
            maximum=_DECIMAL_MAX,
            nullable=True,
        ),
        SettingDefinition(
            "rate_limits.key_per_s",
            "float",
            50.0,
            "Requests per second each API key or token subject may sustain.",
            minimum=0.0,
            maximum=_RATE_MAX,
            minimum_exclusive=True,
        ),
        SettingDefinition(
            "rate_limits.key_burst",
            "int",
            100,
            "Requests each API key or token subject may make at once above its rate.",
            minimum=1,
            maximum=int(_RATE_MAX),
        ),
        SettingDefinition(
            "rate_limits.global_per_s",
            "float",
            2000.0,
            "Requests per second the whole API may sustain.",
            minimum=0.0,
            maximum=_RATE_MAX,
            minimum_exclusive=True,
        ),
        SettingDefinition(
            "rate_limits.global_burst",
            "int",
            4000,
            "Requests the whole API may take at once above its rate.",
            minimum=1,
            maximum=int(_RATE_MAX),
        ),
    )
}


@dataclass(frozen=True, slots=True)
class RateLimits:
    key_per_s: float
    key_burst: int
    global_per_s: float
    global_burst: int


def definition(key: str) -> SettingDefinition:
    found = DEFINITIONS.get(key)
    if found is None:
        raise InvalidInputError(f"unknown setting {key!r}: one of {', '.join(sorted(DEFINITIONS))}")
    return found


def _number(key: str, kind: SettingKind, value: object) -> int | float | Decimal:
    """``value`` as the setting's type, or InvalidInputError saying why it is not one."""
    if isinstance(value, bool) or value is None:
        raise InvalidInputError(f"{key}: expected {_KIND_NAMES[kind]}, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        try:
            parsed: int | float | Decimal = Decimal(text) if kind != "int" else int(text)
        except (InvalidOperation, ValueError):
            raise InvalidInputError(f"{key}: expected {_KIND_NAMES[kind]}, got {value!r}") from None
        value = parsed
    if not isinstance(value, int | float | Decimal):
        raise InvalidInputError(
            f"{key}: expected {_KIND_NAMES[kind]}, got a {type(value).__name__}"
        )
    if isinstance(value, float | Decimal) and not (
        math.isfinite(value) if isinstance(value, float) else value.is_finite()
    ):
        raise InvalidInputError(f"{key}: {value} is not a finite number")
    if kind == "int":
        if isinstance(value, int):
            return value
        if value != int(value):
            raise InvalidInputError(f"{key}: expected a whole number, got {value}")
        return int(value)
    if kind == "float":
        return float(value)
    if isinstance(value, float):
        return Decimal(repr(value))  # the shortest text that reads back as this float
    return Decimal(value)


_KIND_NAMES: Mapping[SettingKind, str] = {
    "int": "a whole number",
    "float": "a number",
    "decimal": "a decimal amount, best given as a string",
}


def check_setting(key: str, value: object) -> SettingValue:
    """``value`` validated and normalised for setting ``key``: an ``int``, a ``float``, a
    ``Decimal`` or (where allowed) None. :class:`InvalidInputError` names the key and the
    problem."""
    spec = definition(key)
    if value is None:
        if spec.nullable:
            return None
        raise InvalidInputError(f"{key}: a value is required (null is not allowed)")
    number = _number(key, spec.kind, value)
    if spec.minimum is not None:
        too_low = number <= spec.minimum if spec.minimum_exclusive else number < spec.minimum
        if too_low:
            raise InvalidInputError(f"{key}: {number} is out of range (must be {spec.bounds()})")
    if spec.maximum is not None and number > spec.maximum:
        raise InvalidInputError(f"{key}: {number} is out of range (must be {spec.bounds()})")
    return number


def setting_json(value: SettingValue) -> int | float | str | None:
    """How a checked value is stored and shown: decimals as their plain text."""
    if isinstance(value, Decimal):
        return format(value, "f")
    return value


def check_defaults(defaults: Mapping[str, object]) -> dict[str, SettingValue]:
    """Deployment defaults, each checked (unknown keys refused)."""
    return {key: check_setting(key, value) for key, value in defaults.items()}


@dataclass(frozen=True, slots=True)
class _Row:
    effective_at: datetime
    value: SettingValue
    record: SettingRecord


class RuntimeSettings:
    """The settings in force, read from the Integration DB (thread-safe).

    ``defaults`` (from the deployment's configuration) replace the built-in defaults; a value
    approved at run time replaces both from its ``effective_at`` on. ``clock`` is wall-clock
    time (UTC); ``monotonic`` times the cache.
    """

    def __init__(
        self,
        uow_factory: UnitOfWorkFactory,
        defaults: Mapping[str, object] | None = None,
        *,
        clock: Callable[[], datetime],
        ttl_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not ttl_s >= 0:
            raise InvalidInputError(f"ttl_s must be ≥ 0, got {ttl_s!r}")
        self._uow_factory = uow_factory
        self._defaults: dict[str, SettingValue] = {k: d.default for k, d in DEFINITIONS.items()}
        self._defaults.update(check_defaults(defaults or {}))
        self._clock = clock
        self._ttl_s = ttl_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._rows: dict[str, list[_Row]] | None = None
        self._read_at = 0.0

    # --- reading ----------------------------------------------------------------------------

    def refresh(self) -> None:
        """Forget the cached rows; the next read goes to the database."""
        with self._lock:
            self._rows = None

    def default(self, key: str) -> SettingValue:
        definition(key)
        return self._defaults[key]

    def value(self, key: str) -> SettingValue:
        """The value in force now: the latest row whose ``effective_at`` has passed, else the
        default."""
        definition(key)
        row = self._in_force(self._current_rows().get(key, []), self._clock())
        return row.value if row is not None else self._defaults[key]

    def approvals_required(self) -> int:
        value = self.value("approvals.required")
        assert isinstance(value, int)
        return value

    def config_timelock_s(self) -> float:
        value = self.value("config.timelock_s")
        assert isinstance(value, float)
        return value

    def withdrawal_approval_above(self) -> Decimal | None:
        value = self.value("withdrawals.approval_above")
        assert value is None or isinstance(value, Decimal)
        return value

    def rate_limits(self) -> RateLimits:
        rows = self._current_rows()
        now = self._clock()

        def get(key: str) -> SettingValue:
            row = self._in_force(rows.get(key, []), now)
            return row.value if row is not None else self._defaults[key]

        key_per_s, key_burst = get("rate_limits.key_per_s"), get("rate_limits.key_burst")
        global_per_s, global_burst = (
            get("rate_limits.global_per_s"),
            get("rate_limits.global_burst"),
        )
        assert isinstance(key_per_s, float)
        assert isinstance(global_per_s, float)
        assert isinstance(key_burst, int)
        assert isinstance(global_burst, int)
        return RateLimits(key_per_s, key_burst, global_per_s, global_burst)

    def check_change(self, key: str, value: object) -> SettingValue:
        """A proposed value, validated and normalised (see :func:`check_setting`)."""
        return check_setting(key, value)

    def describe(self) -> list[dict[str, Any]]:
        """Every setting as JSON: ``key``, ``value`` in force, ``default``, ``description``
        (with its bounds) and ``scheduled``: the changes not yet in force (``value``,
        ``effective_at``, ``set_by``, ``approval_id``), soonest first. Reads the database
        afresh."""
        self.refresh()
        rows = self._current_rows()
        now = self._clock()
        described: list[dict[str, Any]] = []
        for key, spec in DEFINITIONS.items():
            key_rows = rows.get(key, [])
            in_force = self._in_force(key_rows, now)
            bounds = spec.bounds()
            described.append(
                {
                    "key": key,
                    "value": setting_json(
                        in_force.value if in_force is not None else self._defaults[key]
                    ),
                    "default": setting_json(self._defaults[key]),
                    "description": f"{spec.description} ({_KIND_NAMES[spec.kind]}"
                    + (f", {bounds}" if bounds else "")
                    + (", or null" if spec.nullable else "")
                    + ")",
                    "scheduled": [
                        {
                            "value": setting_json(row.value),
                            "effective_at": format_timestamp(row.effective_at),
                            "set_by": row.record.set_by,
                            "approval_id": row.record.approval_id,
                        }
                        for row in key_rows
                        if row.effective_at > now
                    ],
                }
            )
        return described

    @staticmethod
    def _in_force(rows: list[_Row], now: datetime) -> _Row | None:
        chosen = None
        for row in rows:  # by effective_at
            if row.effective_at > now:
                break
            chosen = row
        return chosen

    @property
    def cached(self) -> bool:
        """True while the rows read last are still fresh: a read now touches no database."""
        with self._lock:
            return self._rows is not None and self._monotonic() - self._read_at < self._ttl_s

    def _current_rows(self) -> dict[str, list[_Row]]:
        now = self._monotonic()
        with self._lock:
            if self._rows is not None and now - self._read_at < self._ttl_s:
                return self._rows
        with self._uow_factory() as uow:
            records = uow.access.settings()
        rows: dict[str, list[_Row]] = {}
        for record in records:
            try:
                value = check_setting(record.key, record.value)
            except InvalidInputError as exc:
                # A row written under other rules (an unknown key, changed bounds) is not
                # applied; the default or an earlier row stays in force.
                log.warning(
                    "ignoring stored setting %s effective %s: %s",
                    record.key,
                    format_timestamp(record.effective_at),
                    exc,
                )
                continue
            rows.setdefault(record.key, []).append(_Row(record.effective_at, value, record))
        for key_rows in rows.values():
            key_rows.sort(key=lambda row: row.effective_at)
        with self._lock:
            self._rows = rows
            self._read_at = now
        return rows


def apply_setting(
    uow_factory: UnitOfWorkFactory,
    *,
    key: str,
    value: object,
    effective_at: datetime,
    set_by: str,
    approval_id: str | None,
    at: datetime,
) -> SettingRecord:
    """Schedule ``value`` for ``key`` from ``effective_at`` on (what an approved
    ``config.change`` does, with ``effective_at`` = its approval's). Writing the same value for
    the same moment again returns the stored row (an executor may run twice); a different value
    for that moment is :class:`DuplicateOperationError`. Audited."""
    checked = check_setting(key, value)
    if effective_at.tzinfo is None:
        raise InvalidInputError("effective_at must carry a time zone")
    if not set_by.strip():
        raise InvalidInputError("set_by must not be empty")
    record = SettingRecord(
        key=key,
        value=setting_json(checked),
        effective_at=effective_at,
        set_by=set_by,
        approval_id=approval_id,
    )
    with uow_factory() as uow:
        for existing in uow.access.settings():
            if existing.key != key or existing.effective_at != effective_at:
                continue
            same = _same_value(key, existing.value, checked)
            if same:
                return existing
            raise DuplicateOperationError(
                f"setting {key} already has another value ({existing.value!r}) taking effect at "
                f"{format_timestamp(effective_at)}"
            )
        uow.access.add_setting(record)
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=f"setting:{key}:{format_timestamp(effective_at)}",
                    operation="config_change_scheduled",
                    actor=set_by,
                    recorded_at=at,
                    parameters={
                        "key": key,
                        "value": record.value,
                        "effective_at": effective_at,
                        "approval_id": approval_id,
                    },
                    state_changes=[
                        {"setting": key, "value": record.value, "effective_at": effective_at}
                    ],
                )
            ]
        )
        uow.commit()
    return record


def _same_value(key: str, stored: object, checked: SettingValue) -> bool:
    try:
        return check_setting(key, stored) == checked
    except InvalidInputError:
        return False
