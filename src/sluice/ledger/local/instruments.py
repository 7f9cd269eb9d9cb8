"""Instruments and their admins' registries: creating an instrument (with its admin's rules
contract, the transfer factory), its policy, the Registry API view, contract lookups for choice
contexts and disclosure, and an instrument's supply and totals.
"""

from __future__ import annotations

import base64
from decimal import Decimal

from sluice.domain.amounts import ZERO
from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.ledger import InstrumentId
from sluice.ledger.wire import Json

from .commits import Commits
from .errors import InactiveContractError, UnknownInstrumentError
from .registry import InstrumentConfig, Registry, RegistryPolicy
from .results import InstrumentTotals
from .state import dumps
from .transactions import Contract, InstructionContract, created_event_body


class Instruments(Commits):
    """Instruments, policies, registries, and the contract lookups their contexts use."""

    def create_instrument(
        self,
        admin: str,
        instrument_id: str,
        policy: RegistryPolicy | None = None,
        *,
        name: str | None = None,
        symbol: str | None = None,
        decimals: int = 10,
    ) -> InstrumentId:
        """Register an instrument of ``admin``; the admin's registry rules contract (its transfer
        factory) is created on the ledger with its first instrument."""
        with self._lock:
            self._check_writable()
            self._check_party(admin)
            instrument = InstrumentId(admin, instrument_id)
            if not instrument_id or instrument in self._instruments:
                raise InvalidInputError(f"instrument {instrument.key()} is empty or exists")
            if not 0 <= decimals <= 10:
                raise InvalidInputError("decimals must be between 0 and 10")
            if admin not in self._rules_by_admin:
                self._run(
                    act_as=(admin,),
                    command_id=None,
                    max_record_time=None,
                    prepare=lambda _t: {"kind": "rules_create", "admin": admin},
                )
            config = InstrumentConfig(
                instrument=instrument,
                name=name or instrument_id,
                symbol=symbol or instrument_id.upper()[:12],
                decimals=decimals,
                policy=policy or RegistryPolicy(),
            )
            self._instruments[instrument] = config
            self._write("instrument", dumps(config.as_json()))
            return instrument

    def set_policy(self, instrument: InstrumentId, policy: RegistryPolicy) -> None:
        with self._lock:
            self._check_writable()
            config = self.instrument_config(instrument)
            config = InstrumentConfig(
                config.instrument, config.name, config.symbol, config.decimals, policy
            )
            self._instruments[instrument] = config
            self._write("policy", dumps(config.as_json()))

    def instrument_config(self, instrument: InstrumentId) -> InstrumentConfig:
        with self._lock:
            try:
                return self._instruments[instrument]
            except KeyError:
                raise UnknownInstrumentError(f"unknown instrument {instrument.key()}") from None

    def instrument_configs(self) -> list[InstrumentConfig]:
        with self._lock:
            return list(self._instruments.values())

    def registry(self, admin: str) -> Registry:
        """The Registry API of ``admin`` (transfer factory, choice contexts, metadata)."""
        with self._lock:
            self._check_party(admin)
            return Registry(self, admin)

    def rules_id(self, admin: str) -> str:
        """The contract id of ``admin``'s registry rules (its transfer factory)."""
        with self._lock:
            try:
                return self._rules_by_admin[admin]
            except KeyError:
                raise UnknownInstrumentError(f"{admin} administers no instrument") from None

    def preapproval_id(self, receiver: str, instrument: InstrumentId) -> str | None:
        with self._lock:
            return self._preapproval_by_key.get((receiver, instrument))

    def contract(self, contract_id: str) -> Contract:
        """An active contract of any kind."""
        with self._lock:
            for table in (self._holdings, self._instructions, self._preapprovals, self._rules):
                found = table.get(contract_id)
                if found is not None:
                    return found
            raise NotFoundError(f"no active contract {contract_id}")

    def disclosed_contract(self, contract_id: str) -> Json:
        """An active contract as a ``DisclosedContract`` for a command; its ``createdEventBlob``
        is the base64 of the create's template and argument (the embedded ledger's stand-in for
        Canton's serialized contract)."""
        with self._lock:
            contract = self.contract(contract_id)
            cached = self._blobs.get(contract_id)
            if cached is None:
                body = created_event_body(contract, 0)
                payload = {
                    "templateId": body["templateId"],
                    "createArgument": body["createArgument"],
                }
                blob = base64.b64encode(dumps(payload).encode()).decode()
                cached = (body["templateId"], blob, body["packageName"], body["createdAt"])
                if len(self._blobs) >= 10_000:
                    self._blobs.clear()
                self._blobs[contract_id] = cached
            template_id, blob, package_name, created_at = cached
            return {
                "templateId": template_id,
                "contractId": contract_id,
                "createdEventBlob": blob,
                "synchronizerId": self._settings.synchronizer_id,
                "debugPackageName": package_name,
                "debugCreatedAt": created_at,
            }

    def instruction_contract(self, instruction_cid: str) -> InstructionContract:
        with self._lock:
            try:
                return self._instructions[instruction_cid]
            except KeyError:
                raise InactiveContractError(
                    f"transfer instruction {instruction_cid} is not active"
                ) from None

    def supply(self, instrument: InstrumentId) -> Decimal:
        """Σ active holdings of the instrument (locked ones included)."""
        with self._lock:
            return self._supply.get(instrument, ZERO)

    def totals(self, instrument: InstrumentId) -> InstrumentTotals:
        with self._lock:
            return InstrumentTotals(
                minted=self._minted.get(instrument, ZERO),
                burned=self._burned.get(instrument, ZERO),
                fees=self._fees.get(instrument, ZERO),
                supply=self._supply.get(instrument, ZERO),
            )
