"""Party views of the current state: active holdings, instructions and contracts
(``JsGetActiveContractsResponse``), a contract's events, completions, counters.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from sluice.domain.errors import NotFoundError
from sluice.domain.ledger import Holding, InstrumentId, TransferInstruction
from sluice.ledger.wire import Json
from sluice.ports import JsonObject

from .instruments import Instruments
from .results import Completion
from .transactions import Contract, build_tree, created_event_body


class Views(Instruments):
    """What a party sees of the current state, and its completions."""

    def events_by_contract_id(self, contract_id: str, party: str) -> JsonObject:
        """``JsGetEventsByContractIdResponse``: the create of a contract ``party`` is a stakeholder
        of, and its archive if it was archived, at the offsets of the party's node.

        Active contracts are found at once; an archived one by searching the party's updates from
        the newest (O(updates the party sees) — a lookup for tools and tests, not a hot path)."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            synchronizer_id = self._settings.synchronizer_id
            result: Json = {}
            origin = self._origin.get(contract_id)
            if origin is not None:
                contract = self.contract(contract_id)
                if party not in contract.signatories and party not in contract.observers:
                    raise NotFoundError(f"contract {contract_id} is not visible to {party}")
                seq, node_id = origin
                body = created_event_body(contract, node_id)
                result["created"] = {
                    "createdEvent": {
                        "offset": node.offset_by_seq.get(seq, 0),
                        **body,
                        "witnessParties": [party],
                    },
                    "synchronizerId": synchronizer_id,
                }
                return result
            for seq in range(len(self._updates) - 1, -1, -1):
                update = self._updates[seq]
                if party not in update.visible:
                    continue
                tree = build_tree(json.loads(update.record))
                by_id = {n.node_id: n for n in tree.nodes}
                for is_create, value, node_id in tree.effects:
                    found_id = value.contract_id if is_create else value
                    tree_node = by_id.get(node_id)
                    if (
                        found_id != contract_id
                        or tree_node is None
                        or party not in tree_node.visible
                    ):
                        continue
                    offset = node.offset_by_seq.get(seq, 0)
                    event = tree_node.event()
                    if is_create and "created" not in result:
                        result["created"] = {
                            "createdEvent": {"offset": offset, **event, "witnessParties": [party]},
                            "synchronizerId": synchronizer_id,
                        }
                    elif not is_create and "archived" not in result:
                        result["archived"] = {
                            "archivedEvent": {
                                "offset": offset,
                                "nodeId": node_id,
                                "contractId": contract_id,
                                "templateId": event["templateId"],
                                "witnessParties": [party],
                                "packageName": event["packageName"],
                                "implementedInterfaces": list(event["implementedInterfaces"]),
                            },
                            "synchronizerId": synchronizer_id,
                        }
                if "created" in result:
                    return result
            if result:
                return result
            raise NotFoundError(f"contract {contract_id} is not visible to {party}")

    def active_holdings(self, party: str, instrument: InstrumentId | None = None) -> list[Holding]:
        """The holdings ``party`` owns (locked ones included), oldest first."""
        with self._lock:
            self._check_party(party)
            accounts = self._accounts.get(party, {})
            if instrument is not None:
                return [h.to_domain() for h in accounts.get(instrument, {}).values()]
            return [h.to_domain() for account in accounts.values() for h in account.values()]

    def holding(self, contract_id: str) -> Holding | None:
        with self._lock:
            found = self._holdings.get(contract_id)
            return None if found is None else found.to_domain()

    def active_instructions(self, party: str) -> list[TransferInstruction]:
        """Pending transfer instructions where ``party`` is sender, receiver or admin."""
        with self._lock:
            self._check_party(party)
            return [
                self._instructions[cid].to_domain()
                for cid in self._instructions_by_party.get(party, {})
            ]

    def instruction(self, contract_id: str) -> TransferInstruction:
        return self.instruction_contract(contract_id).to_domain()

    def active_contracts(self, party: str) -> list[JsonObject]:
        """``JsGetActiveContractsResponse`` items for every active contract ``party`` is a
        stakeholder of (a snapshot; O(active contracts))."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            items: list[JsonObject] = []
            tables: Iterable[Mapping[str, Contract]] = (
                self._rules,
                self._preapprovals,
                self._instructions,
                self._holdings,
            )
            for table in tables:
                for contract in table.values():
                    if party not in contract.signatories and party not in contract.observers:
                        continue
                    seq, node_id = self._origin[contract.contract_id]
                    event = created_event_body(contract, node_id)
                    event = {
                        "offset": node.offset_by_seq.get(seq, 0),
                        **event,
                        "witnessParties": [party],
                    }
                    items.append(
                        {
                            "workflowId": "",
                            "contractEntry": {
                                "JsActiveContract": {
                                    "createdEvent": event,
                                    "synchronizerId": self._settings.synchronizer_id,
                                    "reassignmentCounter": 0,
                                }
                            },
                        }
                    )
            return items

    def completions(self, party: str, after_sequence: int = 0) -> list[Completion]:
        """The completions of commands ``party`` submitted, after ``after_sequence``."""
        with self._lock:
            self._check_party(party)
            node = self._nodes[self._party_node[party]]
            result: list[Completion] = []
            for index in self._completions_by_party.get(party, []):
                row = self._completions[index]
                if row.sequence <= after_sequence:
                    continue
                update_id: str | None = None
                offset: int | None = None
                if row.update_seq is not None:
                    update_id = self._updates[row.update_seq].update_id
                    offset = node.offset_by_seq.get(row.update_seq)
                result.append(
                    Completion(
                        sequence=row.sequence,
                        command_id=row.command_id,
                        act_as=row.act_as,
                        status="ok" if row.update_seq is not None else "error",
                        code=row.code,
                        error=row.error,
                        message=row.message,
                        update_id=update_id,
                        offset=offset,
                        record_time=row.record_time,
                    )
                )
            return result

    def update_count(self) -> int:
        with self._lock:
            return len(self._updates)

    def completion_sequence(self) -> int:
        """The sequence number of the latest completion (of any party); 0 if none. A reader
        following :meth:`completions` polls this cheaply to see whether there is anything new."""
        with self._lock:
            return len(self._completions)
