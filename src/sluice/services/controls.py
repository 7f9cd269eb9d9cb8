"""Emergency pause: one switch that stops every value-moving operation until it is resumed.

Three modes, each with its error code (DESIGN §10): ``paused`` (50), ``emergency`` (51) and
``maintenance`` (52). While any is on, withdrawal requests and cancellations, suspense
assignment, releases and returns of held deposits, and the withdrawal and deposit workers all
stop with that error; reads keep working, and ingestion keeps recording what the ledger did (it
moves nothing itself). The switch lives in the Integration DB, so it stops every process and
every worker against that database at once. Pausing and resuming are audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import orjson

from sluice.domain.audit import AuditEntry
from sluice.domain.errors import (
    EmergencyModeError,
    InvalidInputError,
    InvalidOperationStateError,
    MaintenanceModeError,
    SystemPausedError,
)
from sluice.domain.ledger import format_timestamp, parse_timestamp
from sluice.ports import UnitOfWork, UnitOfWorkFactory
from sluice.services.events import emit

PauseMode = Literal["paused", "emergency", "maintenance"]
PAUSE_MODES: tuple[PauseMode, ...] = ("paused", "emergency", "maintenance")
PAUSE_KEY = "pause"
# The aggregate of the pause's events.
SYSTEM_AGGREGATE = "system"

_ERRORS: dict[str, type[SystemPausedError]] = {
    "paused": SystemPausedError,
    "emergency": EmergencyModeError,
    "maintenance": MaintenanceModeError,
}


@dataclass(frozen=True, slots=True)
class PauseState:
    mode: PauseMode
    reason: str
    actor: str
    since: datetime

    def as_json(self) -> dict[str, object]:
        return {
            "mode": self.mode,
            "reason": self.reason,
            "actor": self.actor,
            "since": format_timestamp(self.since),
        }

    def error(self) -> SystemPausedError:
        return _ERRORS[self.mode](
            f"sluice is in {self.mode} mode since {format_timestamp(self.since)} "
            f"({self.reason}); value-moving operations are stopped until it is resumed"
        )


def pause_state(uow: UnitOfWork) -> PauseState | None:
    """The pause in force, read inside ``uow``; None when running normally."""
    text = uow.withdrawals.control(PAUSE_KEY)
    if not text:
        return None
    data = orjson.loads(text)
    return PauseState(
        mode=data["mode"],
        reason=data["reason"],
        actor=data["actor"],
        since=parse_timestamp(data["since"]),
    )


def check_not_paused(uow: UnitOfWork) -> None:
    """Raise the pause's error (50, 51 or 52) when one is in force."""
    state = pause_state(uow)
    if state is not None:
        raise state.error()


def current_pause(uow_factory: UnitOfWorkFactory) -> PauseState | None:
    with uow_factory() as uow:
        return pause_state(uow)


def _mode(value: str) -> PauseMode:
    for mode in PAUSE_MODES:
        if value == mode:
            return mode
    raise InvalidInputError(f"mode must be one of {', '.join(PAUSE_MODES)}, got {value!r}")


def pause(
    uow_factory: UnitOfWorkFactory,
    *,
    mode: str,
    reason: str,
    actor: str,
    at: datetime,
) -> PauseState:
    """Stop value-moving operations. Pausing again replaces the mode and reason."""
    if not reason.strip():
        raise InvalidInputError("a pause needs a reason")
    state = PauseState(mode=_mode(mode), reason=reason.strip(), actor=actor, since=at)
    with uow_factory() as uow:
        previous = pause_state(uow)
        uow.withdrawals.set_control(PAUSE_KEY, orjson.dumps(state.as_json()).decode())
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=f"pause:{format_timestamp(at)}",
                    operation="system_paused",
                    actor=actor,
                    recorded_at=at,
                    parameters={"mode": state.mode, "reason": state.reason},
                    state_changes=[
                        {
                            "pause": state.mode,
                            "was": previous.mode if previous is not None else "running",
                        }
                    ],
                )
            ]
        )
        emit(
            uow,
            "system_paused",
            SYSTEM_AGGREGATE,
            {
                "mode": state.mode,
                "was": previous.mode if previous is not None else "running",
                "reason": state.reason,
                "actor": actor,
            },
            at=at,
        )
        uow.commit()
    return state


def resume(uow_factory: UnitOfWorkFactory, *, reason: str, actor: str, at: datetime) -> None:
    """Lift the pause; refused (41) when nothing is paused."""
    if not reason.strip():
        raise InvalidInputError("resuming needs a reason")
    with uow_factory() as uow:
        previous = pause_state(uow)
        if previous is None:
            raise InvalidOperationStateError("sluice is not paused")
        uow.withdrawals.set_control(PAUSE_KEY, None)
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=f"resume:{format_timestamp(at)}",
                    operation="system_resumed",
                    actor=actor,
                    recorded_at=at,
                    parameters={"reason": reason.strip()},
                    state_changes=[{"pause": "running", "was": previous.mode}],
                )
            ]
        )
        emit(
            uow,
            "system_resumed",
            SYSTEM_AGGREGATE,
            {"mode": "running", "was": previous.mode, "reason": reason.strip(), "actor": actor},
            at=at,
        )
        uow.commit()
