"""Reading a node's stream: ledger ends, ``JsGetUpdatesResponse`` items for a party after an
offset (its projections of transactions, and checkpoints; disturbed by the injected read
faults), single updates, and the mapping between offsets and record times.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Iterator
from datetime import datetime

from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.ledger import format_timestamp
from sluice.ledger.wire import Json
from sluice.ports import JsonObject, LedgerReadError

from .errors import OffsetAfterLedgerEndError, UnknownPartyError
from .faults import ReadPlan
from .state import CHECKPOINT, CommittedUpdate, LedgerState, Node
from .transactions import build_tree, project, trace_context_for


class UpdateStream(LedgerState):
    """Each node's stream of updates and checkpoints, as a party reads it."""

    def ledger_end(self, node_or_party: str) -> int:
        """The current ledger end offset of a node (named directly or by one of its parties)."""
        with self._lock:
            return self._node(node_or_party).end()

    def _node(self, node_or_party: str) -> Node:
        node = self._nodes.get(node_or_party)
        if node is not None:
            return node
        name = self._party_node.get(node_or_party)
        if name is None:
            raise UnknownPartyError(f"no node or party {node_or_party!r}")
        return self._nodes[name]

    def updates(
        self, party: str, after_offset: int | None, *, limit: int | None = None
    ) -> Iterator[JsonObject]:
        """``JsGetUpdatesResponse`` objects for ``party`` after ``after_offset`` (None: from the
        beginning) on its node: its projections of transactions, and checkpoints, in offset order
        up to the ledger end as of this call (or ``limit`` items). Raises
        :class:`sluice.ports.LedgerReadError` part-way when a fault is injected."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            if after_offset is None:
                after_offset = 0
            if after_offset < 0:
                raise InvalidInputError("after_offset must not be negative")
            if limit is not None and limit < 0:
                raise InvalidInputError("limit must not be negative")
            plan = self.faults.read_plan(node.name)
            end = node.end()
            if after_offset > end and plan.start_after is None:
                raise OffsetAfterLedgerEndError(
                    f"offset {after_offset} is after the ledger end {end} of node {node.name}"
                )
            start = (
                after_offset if plan.start_after is None else min(after_offset, plan.start_after)
            )
            stop = end if plan.stall_at is None else min(end, plan.stall_at)
            index = bisect_right(node.offsets, start)
        return self._stream(node, party, index, stop, limit, plan)

    def _stream(
        self, node: Node, party: str, index: int, stop: int, limit: int | None, plan: ReadPlan
    ) -> Iterator[JsonObject]:
        delivered = 0
        while limit is None or delivered < limit:
            with self._lock:
                if plan.cut_after is not None and delivered >= plan.cut_after:
                    raise LedgerReadError(
                        f"injected fault: the stream of node {node.name} was cut after "
                        f"{delivered} items"
                    )
                if index >= len(node.offsets) or node.offsets[index] > stop:
                    return
                if plan.failure_rate and self.faults.roll(plan.failure_rate):
                    raise LedgerReadError(f"injected fault: reading node {node.name} failed")
                offset = node.offsets[index]
                item = node.items[index]
                time = node.times[index]
                index += 1
                if item == CHECKPOINT:
                    response: Json = self._checkpoint_json(offset, time)
                else:
                    update = self._updates[item]
                    if party not in update.visible:
                        continue
                    response = self._transaction_json(update, party, offset)
            yield response
            delivered += 1

    def _checkpoint_json(self, offset: int, time: datetime) -> Json:
        return {
            "update": {
                "OffsetCheckpoint": {
                    "value": {
                        "offset": offset,
                        "synchronizerTimes": [
                            {
                                "synchronizerId": self._settings.synchronizer_id,
                                "recordTime": format_timestamp(time),
                            }
                        ],
                    }
                }
            }
        }

    def _transaction_json(self, update: CommittedUpdate, party: str, offset: int) -> Json:
        tree = build_tree(json.loads(update.record))
        record_time = format_timestamp(update.record_time)
        return {
            "update": {
                "Transaction": {
                    "value": {
                        "updateId": update.update_id,
                        # Canton shows the command id to the submitting parties only.
                        "commandId": update.command_id if party in update.act_as else "",
                        "workflowId": "",
                        "effectiveAt": record_time,
                        "events": project(tree, party, offset),
                        "offset": offset,
                        "synchronizerId": self._settings.synchronizer_id,
                        "traceContext": trace_context_for(update.update_id),
                        "recordTime": record_time,
                    }
                }
            }
        }

    def update_by_id(self, update_id: str, party: str) -> JsonObject:
        """``JsGetUpdateResponse``: ``party``'s projection of one update, at its node's offset."""
        with self._lock:
            self._check_party(party)
            seq = self._update_seq.get(update_id)
            node = self._nodes[self._party_node[party]]
            offset = None if seq is None else node.offset_by_seq.get(seq)
            if seq is None or offset is None or party not in self._updates[seq].visible:
                raise NotFoundError(f"update {update_id} is not visible to {party}")
            return self._transaction_json(self._updates[seq], party, offset)

    def update_offset(self, update_id: str, node_or_party: str) -> int | None:
        """The offset of update ``update_id`` on a node (named directly or by one of its parties);
        None if the node does not have it (it sees nothing of it, or lost it in a restore)."""
        with self._lock:
            node = self._node(node_or_party)
            seq = self._update_seq.get(update_id)
            return None if seq is None else node.offset_by_seq.get(seq)

    def offset_at_record_time(self, node_or_party: str, time: datetime) -> int:
        """The largest offset of the node whose record time is at or before ``time`` (0 if none):
        where to resume a reader that has processed everything up to ``time``."""
        with self._lock:
            node = self._node(node_or_party)
            index = bisect_right(node.times, time)
            return node.offsets[index - 1] if index else 0

    def record_time_at(self, node_or_party: str, offset: int) -> datetime | None:
        """The record time of the node's item at ``offset`` (None if there is none)."""
        with self._lock:
            node = self._node(node_or_party)
            index = bisect_right(node.offsets, offset)
            if index and node.offsets[index - 1] == offset:
                return node.times[index - 1]
            return None

    def has_updates_after(self, party: str, offset: int) -> bool:
        """Whether ``party``'s node has a transaction ``party`` sees at an offset after
        ``offset`` (checkpoints do not count): if not, its active contracts at ``offset`` are
        exactly the current ones."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            for index in range(bisect_right(node.offsets, offset), len(node.offsets)):
                item = node.items[index]
                if item != CHECKPOINT and party in self._updates[item].visible:
                    return True
            return False
