"""Ports wrapped in their flow's circuit breaker: each call's outcome is recorded, and while the
breaker is open a call is refused with :class:`~sluice.services.breakers.BreakerOpenError`
before it reaches the component.

* :class:`GuardedLedgerCommands` — command submissions (``ledger``).
* :func:`guarded_registries` — the instrument admins' Registry API (``registry``).
* :class:`GuardedBitcoinNode` — every Bitcoin node call (``bitcoin``); broadcasting
  (``sendrawtransaction``) is also a call of ``payouts``.

A refused call never reached the component, so the work it belonged to was not attempted: the
loop skips a part whose flow is open (:mod:`sluice.server.loop`) and treats a refusal raised
from inside a part as a skip, so the work waits in the database and is picked up again once the
breaker lets calls through.

What counts as a failure is decided per port: a ledger command the node rejected for a reason
that is the request's (a duplicate command id, a contract already archived, no permission) says
the node works; a transport error, a timeout or an injected component failure does not. A
Bitcoin node that answers (a rejected transaction, an unknown transaction) works; one that cannot
be reached does not — except that a rejected broadcast counts against ``payouts``.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar

from sluice.domain.ledger import InstrumentId, Transfer
from sluice.ports import (
    ChoiceContextData,
    CommandError,
    FactoryChoice,
    InstructionChoice,
    LedgerCommands,
    RegistryClient,
    RegistryError,
    RegistryLookup,
)
from sluice.ports.bitcoin import BitcoinNode, JsonObject, NodeRejectedError
from sluice.services.breakers import Breakers, counts_as_failure, guard

# The errors a node answers about the command itself (names of sluice's error codes, which the
# ledger adapters put in CommandError.code): the node works, the request was wrong or late.
COMMAND_ANSWERS = frozenset(
    {
        "invalid_input",
        "invalid_amount",
        "not_found",
        "duplicate_operation",
        "insufficient_permissions",
        "insufficient_balance",
        "invalid_operation_state",
        "instrument_not_onboarded",
        "compliance_check_failed",
        "address_blacklisted",
        "max_record_time_exceeded",
        "insufficient_funds",
        "locked_input",
        "input_not_owned",
        "inactive_contract",
        "expired",
        "too_many_inputs",
        "preapproval_missing",
        "preapproval_not_allowed",
        # Canton's error ids for the same answers.
        "CONTRACT_NOT_FOUND",
        "DUPLICATE_COMMAND",
        "INVALID_ARGUMENT",
        "LOCAL_VERDICT_LOCKED_CONTRACTS",
        "LOCAL_VERDICT_INACTIVE_CONTRACTS",
        "DAML_AUTHORIZATION_ERROR",
        "DAML_INTERPRETATION_ERROR",
    }
)

# Bitcoin Core's "already in the chain" (a broadcast of a transaction that confirmed).
RPC_ALREADY_IN_CHAIN = -27

T = TypeVar("T")


def command_failure(exc: BaseException) -> bool:
    """A ledger command's error that counts against the ``ledger`` breaker."""
    if isinstance(exc, CommandError):
        # A definite rejection without a code was refused before it was sent (too close to
        # its max record time).
        return not exc.definite or (exc.code is not None and exc.code not in COMMAND_ANSWERS)
    return counts_as_failure(exc)


def node_failure(exc: BaseException) -> bool:
    """A Bitcoin node call's error that counts against the ``bitcoin`` breaker: the node could
    not be asked (a rejection or "not found" is the node's answer)."""
    if isinstance(exc, NodeRejectedError):
        return False
    return counts_as_failure(exc)


def broadcast_failure(exc: BaseException) -> bool:
    """A broadcast's error that counts against the ``payouts`` breaker: the node could not be
    reached, or it rejected the transaction (not because it is already in the chain)."""
    if isinstance(exc, NodeRejectedError):
        return exc.code != RPC_ALREADY_IN_CHAIN
    return counts_as_failure(exc)


class GuardedLedgerCommands:
    """:class:`LedgerCommands` under the ``ledger`` breaker."""

    def __init__(
        self, inner: LedgerCommands, *, flow: str = "ledger", registry: Breakers | None = None
    ) -> None:
        self.inner = inner
        self._flow = flow
        self._registry = registry

    def submit_transfer(
        self,
        transfer: Transfer,
        factory: FactoryChoice,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None,
    ) -> None:
        with guard(self._flow, registry=self._registry, failure=command_failure):
            self.inner.submit_transfer(
                transfer,
                factory,
                act_as=act_as,
                command_id=command_id,
                max_record_time=max_record_time,
            )

    def exercise_instruction(
        self,
        choice: InstructionChoice,
        instruction_cid: str,
        context: ChoiceContextData,
        *,
        act_as: str,
        command_id: str,
        max_record_time: datetime | None = None,
    ) -> None:
        with guard(self._flow, registry=self._registry, failure=command_failure):
            self.inner.exercise_instruction(
                choice,
                instruction_cid,
                context,
                act_as=act_as,
                command_id=command_id,
                max_record_time=max_record_time,
            )


def registry_failure(exc: BaseException) -> bool:
    """Does a registry call's ``exc`` count against the registry? Not when the registry answered
    about the request (:attr:`RegistryError.answered`: a 4xx, an unknown instruction, another
    admin's instrument): that registry works."""
    if isinstance(exc, RegistryError) and exc.answered:
        return False
    return counts_as_failure(exc)


class GuardedRegistryClient:
    """One admin's :class:`RegistryClient` under the ``registry`` breaker."""

    def __init__(self, inner: RegistryClient, *, registry: Breakers | None = None) -> None:
        self.inner = inner
        self._registry = registry

    def transfer_factory(self, transfer: Transfer) -> FactoryChoice:
        with guard("registry", registry=self._registry, failure=registry_failure):
            return self.inner.transfer_factory(transfer)

    def choice_context(self, choice: InstructionChoice, instruction_cid: str) -> ChoiceContextData:
        with guard("registry", registry=self._registry, failure=registry_failure):
            return self.inner.choice_context(choice, instruction_cid)


def guarded_registries(
    lookup: RegistryLookup, *, registry: Breakers | None = None
) -> RegistryLookup:
    """``lookup`` whose clients are under the ``registry`` breaker."""

    def guarded(instrument: InstrumentId) -> RegistryClient:
        return GuardedRegistryClient(lookup(instrument), registry=registry)

    return guarded


class GuardedBitcoinNode:
    """:class:`BitcoinNode` under the ``bitcoin`` breaker; broadcasts under ``payouts`` too."""

    def __init__(self, inner: BitcoinNode, *, registry: Breakers | None = None) -> None:
        self.inner = inner
        self._registry = registry

    def __getattr__(self, name: str) -> Any:
        # What the node offers beyond the port (the embedded chain's mining, ...), unguarded.
        return getattr(self.inner, name)

    def _call(self, call: Callable[[], T]) -> T:
        with guard("bitcoin", registry=self._registry, failure=node_failure):
            return call()

    def getblockchaininfo(self) -> JsonObject:
        return self._call(self.inner.getblockchaininfo)

    def getblockhash(self, height: int) -> str:
        return self._call(lambda: self.inner.getblockhash(height))

    def getblock(self, block_hash: str) -> JsonObject:
        return self._call(lambda: self.inner.getblock(block_hash))

    def getrawtransaction(self, txid: str, block_hash: str | None = None) -> JsonObject:
        return self._call(lambda: self.inner.getrawtransaction(txid, block_hash))

    def sendrawtransaction(self, raw_hex: str) -> str:
        with guard("payouts", registry=self._registry, failure=broadcast_failure):
            return self._call(lambda: self.inner.sendrawtransaction(raw_hex))

    def testmempoolaccept(self, raw_hexes: list[str]) -> list[JsonObject]:
        return self._call(lambda: self.inner.testmempoolaccept(raw_hexes))

    def estimatesmartfee(self, conf_target: int) -> JsonObject:
        return self._call(lambda: self.inner.estimatesmartfee(conf_target))

    def scantxoutset(self, descriptors: list[str | JsonObject]) -> JsonObject:
        return self._call(lambda: self.inner.scantxoutset(descriptors))

    def getmempoolentry(self, txid: str) -> JsonObject:
        return self._call(lambda: self.inner.getmempoolentry(txid))
