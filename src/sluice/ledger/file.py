"""A ledger read from a file of recorded updates: the source of ``sluice ledger replay``.

The file holds ``JsGetUpdatesResponse`` or ``JsTransaction`` objects, either as one JSON array or
as JSON lines (one object per line); a file holding a single object is read as a list of one.
JSON lines are streamed, so a large file is never loaded whole.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from sluice.domain.errors import InvalidInputError, MalformedUpdateError
from sluice.domain.history import item_offset, unwrap_update
from sluice.domain.ledger import parse_timestamp

_READ_BUFFER = 1 << 20


class UpdateFile:
    """Implements the reading side of the ledger port over a file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such update file: {self.path}")

    def ledger_end(self) -> int:
        end = 0
        for item in self._items():
            offset = item_offset(item)
            if offset is not None:
                end = max(end, offset)
        return end

    def updates(
        self, party: str, after_offset: int | None, *, limit: int | None = None
    ) -> Iterator[Mapping[str, Any]]:
        count = 0
        for item in self._items():
            if after_offset is not None:
                offset = item_offset(item)
                if offset is not None and offset <= after_offset:
                    continue
            yield item
            count += 1
            if limit is not None and count >= limit:
                return

    def offset_at_record_time(self, party: str, time: datetime) -> int:
        """The largest offset whose record time is at or before ``time`` (0 if none)."""
        found = 0
        for item in self._items():
            offset = item_offset(item)
            recorded = _record_time(item)
            if offset is not None and recorded is not None and recorded <= time:
                found = max(found, offset)
        return found

    def _items(self) -> Iterator[Mapping[str, Any]]:
        with self.path.open("rb") as handle:
            head = handle.read(4096).lstrip()
        if head.startswith(b"["):
            yield from self._whole()
            return
        # A large buffer: the lines are long, and the default 8 KiB one costs a read per line.
        with self.path.open("rb", buffering=_READ_BUFFER) as handle:
            for number, line in enumerate(handle, start=1):
                if line.isspace():  # (iteration never yields an empty line)
                    continue
                try:
                    item = orjson.loads(line)
                except orjson.JSONDecodeError as exc:
                    if number == 1:
                        # Not JSON lines after all: one (pretty-printed) object.
                        yield from self._whole()
                        return
                    raise MalformedUpdateError(
                        None, f"{self.path} line {number}: not valid JSON ({exc})"
                    ) from exc
                if type(item) is not dict:  # (where it is, spelled out only when needed)
                    _check_object(item, f"{self.path} line {number}")
                yield item

    def _whole(self) -> Iterator[Mapping[str, Any]]:
        try:
            value = orjson.loads(self.path.read_bytes())
        except orjson.JSONDecodeError as exc:
            raise MalformedUpdateError(None, f"{self.path}: not valid JSON ({exc})") from exc
        items = value if isinstance(value, list) else [value]
        for index, item in enumerate(items):
            yield _check_object(item, f"{self.path} item {index}")


def _check_object(item: object, where: str) -> Mapping[str, Any]:
    if not isinstance(item, dict):
        raise MalformedUpdateError(
            None, f"{where}: expected a JSON object, got {type(item).__name__}"
        )
    return item


def _record_time(item: Mapping[str, Any]) -> datetime | None:
    """A transaction's record time, or a checkpoint's latest synchronizer time; None if it has
    none that can be read."""
    try:
        kind, body = unwrap_update(item)
        if kind == "transaction":
            return parse_timestamp(body.get("recordTime"))
        times = [
            parse_timestamp(entry.get("recordTime"))
            for entry in body.get("synchronizerTimes") or ()
            if isinstance(entry, Mapping)
        ]
    except (InvalidInputError, AttributeError, TypeError):
        return None
    return max(times, default=None)
