"""The synchronizer clock and offset checkpoints: record times strictly increase (``max(now,
last + 1µs)``), the clock moves only when told, and every node gets a checkpoint when the
checkpoint interval has passed.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import format_timestamp

from .state import CHECKPOINT, LedgerState

ONE_MICROSECOND = timedelta(microseconds=1)


class SynchronizerClock(LedgerState):
    """The synchronizer clock; checkpoints on every node."""

    def time(self) -> datetime:
        """The synchronizer's current time: the clock, or the last record time if that is later."""
        with self._lock:
            return max(self._now, self._last_time)

    def advance(self, seconds: float) -> datetime:
        """Move the clock forward; emits a checkpoint if the checkpoint interval has passed."""
        if seconds < 0:
            raise InvalidInputError("the clock does not go backwards")
        with self._lock:
            return self.set_time(self._now + timedelta(seconds=seconds))

    def set_time(self, time: datetime) -> datetime:
        with self._lock:
            self._check_writable()
            if time.tzinfo is None:
                raise InvalidInputError("time must carry a time zone")
            time = time.astimezone(UTC)
            if time < self._now:
                raise InvalidInputError(
                    f"the clock does not go backwards ({format_timestamp(time)} < "
                    f"{format_timestamp(self._now)})"
                )
            self._now = time
            self._write("clock", format_timestamp(time))
            self._maybe_checkpoint()
            return self.time()

    def checkpoint(self) -> datetime:
        """Every node emits an offset checkpoint at the synchronizer's current time. Nothing can
        commit at or before that time afterwards."""
        with self._lock:
            self._check_writable()
            time = self.time()
            self._apply_checkpoint(time)
            self._write("checkpoint", format_timestamp(time))
            return time

    def _apply_checkpoint(self, time: datetime) -> None:
        for node in self._nodes.values():
            node.append(CHECKPOINT, time)
        self._last_time = max(self._last_time, time)
        self._last_checkpoint_time = time

    def _maybe_checkpoint(self) -> None:
        interval = self._settings.checkpoint_interval_s
        if interval is None:
            return
        if (self.time() - self._last_checkpoint_time).total_seconds() >= interval:
            self.checkpoint()

    def _next_record_time(self) -> datetime:
        return max(self._now, self._last_time + ONE_MICROSECOND)
