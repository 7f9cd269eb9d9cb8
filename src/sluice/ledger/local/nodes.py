"""Participant nodes and the parties they host, and the node faults :mod:`.faults` reaches
through the ledger: a restore from backup (the node relearns what came after the backup at new
offsets) and a major upgrade (its offsets restart from 1). Both are journaled.
"""

from __future__ import annotations

from bisect import bisect_right

from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import format_timestamp, parse_timestamp

from .clock import SynchronizerClock
from .errors import UnknownPartyError
from .state import CHECKPOINT, Node, digest, dumps


class Nodes(SynchronizerClock):
    """Nodes, the parties they host, and the node faults (restore from backup, upgrade)."""

    def add_node(self, name: str) -> str:
        with self._lock:
            self._check_writable()
            if not name or name in self._nodes:
                raise InvalidInputError(f"node name {name!r} is empty or taken")
            self._apply_node(name)
            self._write("node", name)
            return name

    def _apply_node(self, name: str) -> None:
        self._nodes[name] = Node(name)

    def allocate_party(self, hint: str, node: str) -> str:
        """A new party ``hint::1220<64 hex>`` hosted on ``node`` (deterministic from the seed)."""
        with self._lock:
            self._check_writable()
            if not hint or "::" in hint or any(c.isspace() for c in hint) or len(hint) > 100:
                raise InvalidInputError(f"party hint {hint!r}: 1-100 characters, no '::'")
            if node not in self._nodes:
                raise InvalidInputError(f"unknown node {node!r}")
            count = len(self._party_node)
            party = f"{hint}::1220{digest(f'{self._settings.seed}:party:{hint}:{count}')}"
            self._apply_party(party, node)
            self._write("party", dumps({"party": party, "node": node}))
            return party

    def _apply_party(self, party: str, node: str) -> None:
        self._party_node[party] = node
        self._nodes[node].parties.add(party)

    def nodes(self) -> list[str]:
        with self._lock:
            return list(self._nodes)

    def parties(self, node: str | None = None) -> list[str]:
        with self._lock:
            return [p for p, n in self._party_node.items() if node is None or n == node]

    def node_of(self, party: str) -> str:
        with self._lock:
            try:
                return self._party_node[party]
            except KeyError:
                raise UnknownPartyError(f"unknown party {party!r}") from None

    # --- node faults (called through ledger.faults) --------------------------------------------

    def _restore_node(self, name: str, backup_offset: int, offset_shift: int) -> None:
        with self._lock:
            self._check_writable()
            node = self._nodes.get(name)
            if node is None:
                raise InvalidInputError(f"unknown node {name!r}")
            if not 0 <= backup_offset <= node.end():
                raise InvalidInputError(
                    f"backup offset {backup_offset} is outside 0..{node.end()} of node {name}"
                )
            if offset_shift < 0:
                raise InvalidInputError("offset_shift must not be negative")
            time = format_timestamp(self.time())
            self._apply_restore(name, backup_offset, offset_shift, time)
            self._write(
                "restore",
                dumps(
                    {
                        "node": name,
                        "backup_offset": backup_offset,
                        "offset_shift": offset_shift,
                        "time": time,
                    }
                ),
            )

    def _apply_restore(self, name: str, backup_offset: int, offset_shift: int, time: str) -> None:
        old = self._nodes[name]
        keep = bisect_right(old.offsets, backup_offset)
        node = self._reset_node(old)
        for index in range(keep):
            node.append(old.items[index], old.times[index], old.offsets[index])
        offset = backup_offset + offset_shift
        for index in range(keep, len(old.offsets)):
            if old.items[index] != CHECKPOINT:
                offset += 1
                node.append(old.items[index], old.times[index], offset)
        checkpoint_time = parse_timestamp(time)
        node.append(CHECKPOINT, checkpoint_time, max(offset, node.end()) + 1)
        self._last_time = max(self._last_time, checkpoint_time)
        self._nodes[name] = node

    def _upgrade_node(self, name: str) -> None:
        with self._lock:
            self._check_writable()
            if name not in self._nodes:
                raise InvalidInputError(f"unknown node {name!r}")
            self._nodes[name] = self._reset_node(self._nodes[name])
            self._write("upgrade", name)

    @staticmethod
    def _reset_node(old: Node) -> Node:
        node = Node(old.name)
        node.parties = old.parties
        return node
