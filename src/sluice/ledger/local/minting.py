"""Tokens coming into and leaving existence: the admin mints and burns, the demo faucet taps."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from sluice.domain.amounts import ZERO, format_amount
from sluice.domain.ledger import InstrumentId

from .errors import InsufficientFundsError, NotAuthorizedError
from .results import CommandResult
from .state import positive_amount
from .transfers import Transfers


class Minting(Transfers):
    """Mint, tap and burn."""

    def mint(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult:
        """The admin mints a new holding for ``owner`` (who sees the exercise as choice
        observer)."""
        return self._mint("mint", owner, instrument, amount, reason, command_id, max_record_time)

    def tap(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        command_id: str | None = None,
    ) -> CommandResult:
        """The demo faucet: ``owner`` taps new tokens for itself (tx-kind mint, "tapped
        faucet")."""
        return self._mint("tap", owner, instrument, amount, None, command_id, None)

    def _mint(
        self,
        kind: str,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        reason: str | None,
        command_id: str | None,
        max_record_time: datetime | None,
    ) -> CommandResult:
        with self._lock:
            config = self.instrument_config(instrument)
            self._check_party(owner)
            value = positive_amount(amount)
            act_as = (owner,) if kind == "tap" else (instrument.admin,)
            record = {
                "kind": kind,
                "admin": instrument.admin,
                "rules_cid": self._rules_by_admin[instrument.admin],
                "owner": owner,
                "instrument_id": instrument.id,
                "amount": format_amount(value),
                "reason": reason,
            }

            def prepare(_t: datetime) -> dict[str, Any]:
                if kind == "tap" and not config.policy.tap_allowed:
                    raise NotAuthorizedError(f"{instrument.key()} has no faucet")
                return dict(record)

            return self._run(
                act_as=act_as,
                command_id=command_id,
                max_record_time=max_record_time,
                prepare=prepare,
            )

    def burn(
        self,
        owner: str,
        instrument: InstrumentId,
        amount: Decimal | str | int,
        *,
        inputs: Sequence[str] | None = None,
        reason: str | None = None,
        command_id: str | None = None,
        max_record_time: datetime | None = None,
    ) -> CommandResult:
        """The admin burns ``amount`` of ``owner``'s holdings (``inputs``, or picked), returning
        any change to the owner."""
        with self._lock:
            config = self.instrument_config(instrument)
            self._check_party(owner)
            value = positive_amount(amount)
            if inputs is None:
                inputs = [h.contract_id for h in self.select_inputs(owner, instrument, value)]
            input_cids = list(inputs)
            admin = instrument.admin

            def prepare(record_time: datetime) -> dict[str, Any]:
                checked = self._check_inputs(
                    input_cids, owner, instrument, record_time, config.policy.inputs_max
                )
                total = sum((h.amount for h, _ in checked), ZERO)
                if total < value:
                    raise InsufficientFundsError(
                        f"the inputs hold {format_amount(total)}; burning {format_amount(value)}"
                    )
                return {
                    "kind": "burn",
                    "admin": admin,
                    "rules_cid": self._rules_by_admin[admin],
                    "owner": owner,
                    "instrument_id": instrument.id,
                    "amount": format_amount(value),
                    "change": format_amount(total - value),
                    "inputs": [
                        [h.contract_id, format_amount(h.amount), expired] for h, expired in checked
                    ],
                    "reason": reason,
                }

            return self._run(
                act_as=(admin,),
                command_id=command_id,
                max_record_time=max_record_time,
                prepare=prepare,
            )
