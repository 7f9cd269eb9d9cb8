"""The event tree of one transaction: its nodes in pre-order, who sees each, and its effects.

:class:`_Builder` collects the nodes as the Daml engine would emit them (node ids in pre-order,
an exercise's ``lastDescendantNodeId`` set when it ends, visibility inherited from ancestors);
:func:`project` shows a tree as one party's node serves it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sluice.domain.ledger import Lock
from sluice.ledger.wire import HOLDING_INTERFACE_ID, Json

from .contracts import (
    HOLDING_TEMPLATE_ID,
    REGISTRY_PACKAGE_NAME,
    Contract,
    HoldingContract,
    _unique,
    contract_id_for,
    created_event_body,
)


@dataclass(slots=True)
class Node:
    node_id: int
    # Parties that see this node: its informees and the informees of every ancestor.
    visible: frozenset[str]
    kind: str  # "CreatedEvent" or "ExercisedEvent"
    # The event without ``offset`` and ``witnessParties``; for a create it is rendered from
    # ``contract`` only when someone reads it (commits and replays never need it).
    body: Json | None
    contract: Contract | None = None

    def event(self) -> Json:
        if self.body is None:
            assert self.contract is not None
            self.body = created_event_body(self.contract, self.node_id)
        return self.body


@dataclass(slots=True)
class Tree:
    nodes: list[Node]
    # (True, contract, node id) for a create, (False, contract id, node id) for an archive, in
    # execution order (a contract created and consumed in one transaction is created first).
    effects: list[tuple[bool, Any, int]]
    # What the command produced, for its caller: new holding ids, the instruction id, ...
    outcome: Json = field(default_factory=dict)

    @property
    def visible(self) -> frozenset[str]:
        parties: set[str] = set()
        for node in self.nodes:
            parties.update(node.visible)
        return frozenset(parties)


class _Builder:
    """Collects the nodes of one transaction in pre-order, as the Daml engine would emit them."""

    def __init__(self, update_id: str, created_at: str) -> None:
        self.update_id = update_id
        self.created_at = created_at
        self.nodes: list[Node] = []
        self.effects: list[tuple[bool, Any, int]] = []
        self._next_id = 0
        self._open: list[Node] = []

    def _take_id(self) -> int:
        node_id = self._next_id
        self._next_id += 1
        return node_id

    def skip(self) -> None:
        """A node the Ledger API does not show (a fetch): it only leaves a gap in the node ids."""
        self._next_id += 1

    def _visible(self, informees: Iterable[str]) -> frozenset[str]:
        inherited = self._open[-1].visible if self._open else frozenset()
        return inherited.union(informees)

    def create(self, make: Any) -> Any:
        """Create the contract ``make(contract_id)`` at the next node id."""
        node_id = self._take_id()
        contract = make(contract_id_for(self.update_id, node_id))
        visible = self._visible((*contract.signatories, *contract.observers))
        self.nodes.append(Node(node_id, visible, "CreatedEvent", None, contract))
        self.effects.append((True, contract, node_id))
        return contract

    def holding(
        self,
        admin: str,
        owner: str,
        instrument_id: str,
        amount: Decimal,
        origin: str,
        lock: Lock | None = None,
    ) -> HoldingContract:
        created_at = self.created_at
        result: HoldingContract = self.create(
            lambda cid: HoldingContract(
                cid, admin, owner, instrument_id, amount, lock, created_at, origin
            )
        )
        return result

    def begin(
        self,
        *,
        contract_id: str,
        template_id: str,
        package_name: str,
        choice: str,
        argument: Json,
        actors: Sequence[str],
        consuming: bool,
        signatories: Sequence[str],
        observers: Sequence[str] = (),
        choice_observers: Sequence[str] = (),
        interface_id: str | None = None,
        implemented: Sequence[str] = (),
    ) -> Node:
        node_id = self._take_id()
        informees = [*signatories, *actors, *choice_observers]
        if consuming:
            informees.extend(observers)
            # A consuming exercise archives its contract before its children run.
            self.effects.append((False, contract_id, node_id))
        node = Node(
            node_id,
            self._visible(informees),
            "ExercisedEvent",
            {
                "nodeId": node_id,
                "contractId": contract_id,
                "templateId": template_id,
                "interfaceId": interface_id,
                "choice": choice,
                "choiceArgument": argument,
                "actingParties": list(_unique(actors)),
                "consuming": consuming,
                "lastDescendantNodeId": node_id,
                "exerciseResult": None,
                "packageName": package_name,
                # Canton lists the implemented interfaces of consumed contracts only.
                "implementedInterfaces": list(implemented) if consuming else [],
            },
        )
        self.nodes.append(node)
        self._open.append(node)
        return node

    def end(self, node: Node, result: Any) -> None:
        assert self._open, "no exercise is open"
        assert self._open[-1] is node, "exercises must end in reverse order"
        assert node.body is not None
        self._open.pop()
        node.body["lastDescendantNodeId"] = self._next_id - 1
        node.body["exerciseResult"] = result

    def archive_holding(self, contract_id: str, admin: str, owner: str) -> None:
        signatories = _unique((admin, owner))
        node = self.begin(
            contract_id=contract_id,
            template_id=HOLDING_TEMPLATE_ID,
            package_name=REGISTRY_PACKAGE_NAME,
            choice="Archive",
            argument={},
            actors=signatories,
            consuming=True,
            signatories=signatories,
            implemented=(HOLDING_INTERFACE_ID,),
        )
        self.end(node, {})

    def tree(self, outcome: Json) -> Tree:
        assert not self._open, "an exercise was left open"
        return Tree(self.nodes, self.effects, outcome)


# --- one builder per record kind ---------------------------------------------------------------


def project(tree: Tree, party: str, offset: int) -> list[Json]:
    """The events of ``tree`` that ``party`` sees, as its node would serve them: original node ids
    (gaps where it sees nothing), ``witnessParties`` = the requesting party."""
    events: list[Json] = []
    for node in tree.nodes:
        if party in node.visible:
            body = node.event()
            events.append({node.kind: {"offset": offset, **body, "witnessParties": [party]}})
    return events
