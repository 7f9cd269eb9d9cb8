"""Conservation and single spending hold under any sequence of operations (hypothesis).

Random sequences of taps, mints, burns, self / direct / offer transfers over random input sets
(including other parties' holdings, locked and already spent ones), accepts, rejects, withdrawals,
admin updates of held transfers, expiries and clock moves are applied to a ledger with two
instruments (one with a fee, one with a KYC hold). Rejections are expected; after every step:

* per instrument, Σ active holdings = minted − burned − fees, and equals the sum over every
  party's ``active_holdings``;
* reading the admin's stream (the admin is a stakeholder of every holding), no contract is ever
  consumed twice, and every consumed contract was created earlier.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sluice.ledger.local import CommandRejectedError, EmbeddedLedger, RegistryPolicy

PARTIES = ("alice", "bob", "carol", "treasury")

amounts = st.one_of(
    st.integers(1, 400).map(Decimal),
    st.decimals(
        min_value=Decimal("0.0000000001"), max_value=Decimal("50"), places=10, allow_nan=False
    ),
)
party_index = st.integers(0, len(PARTIES) - 1)
instrument_index = st.integers(0, 1)
transfer = st.tuples(
    st.just("transfer"),
    party_index,
    # The receiver, as an offset from the sender: 0 is a self transfer.
    st.sampled_from([0, 1, 1, 2, 2, 3, 3]),
    instrument_index,
    amounts,
    # Explicit inputs (else the ledger picks): (one of the sender's own holdings of the
    # instrument?, index) — the others may be anyone's, of either instrument, spent or locked.
    st.lists(st.tuples(st.booleans(), st.integers(0, 40)), max_size=4),
)
settle = st.tuples(
    st.just("settle"),
    st.sampled_from(["accept", "reject", "withdraw", "update"]),
    st.integers(0, 10),
    st.booleans(),
)
operation = st.one_of(
    transfer,
    settle,
    transfer,
    settle,
    transfer,
    settle,
    st.tuples(st.just("tap"), party_index, instrument_index, amounts),
    st.tuples(st.just("mint"), party_index, instrument_index, amounts),
    st.tuples(st.just("burn"), party_index, instrument_index, amounts),
    st.tuples(st.just("advance"), st.sampled_from([1, 10, 60, 600, 3600, 90000])),
    st.tuples(st.just("expire")),
    st.tuples(st.just("preapproval"), party_index, instrument_index),
)


def check_invariants(ledger: EmbeddedLedger, admin: str, instruments: list[Any]) -> None:
    for instrument in instruments:
        totals = ledger.totals(instrument)
        assert totals.supply == totals.minted - totals.burned - totals.fees
        held = sum(
            (h.amount for p in ledger.parties() for h in ledger.active_holdings(p, instrument)),
            Decimal(0),
        )
        assert held == totals.supply
        assert totals.supply >= 0
    created: set[str] = set()
    consumed: set[str] = set()
    for item in ledger.updates(admin, 0):
        if "Transaction" not in item["update"]:
            continue
        for event in item["update"]["Transaction"]["value"]["events"]:
            if "CreatedEvent" in event:
                created.add(event["CreatedEvent"]["contractId"])
            elif event["ExercisedEvent"]["consuming"]:
                contract_id = event["ExercisedEvent"]["contractId"]
                assert contract_id not in consumed, f"{contract_id} consumed twice"
                assert contract_id in created, f"{contract_id} consumed before it was created"
                consumed.add(contract_id)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(st.lists(operation, min_size=10, max_size=50))
def test_holdings_are_conserved_and_never_spent_twice(operations: list[tuple[Any, ...]]) -> None:
    ledger = EmbeddedLedger.open(None, seed=1, checkpoint_interval_s=600)
    ledger.add_node("registry")
    ledger.add_node("others")
    admin = ledger.allocate_party("admin", "registry")
    parties = [ledger.allocate_party(name, "others") for name in PARTIES]
    instruments = [
        ledger.create_instrument(admin, "Fee", RegistryPolicy(transfer_fee=Decimal("0.5"))),
        ledger.create_instrument(
            admin, "Held", RegistryPolicy(kyc_hold=True, execute_before_span_max_s=3600)
        ),
    ]
    for party in parties[:3]:
        for instrument in instruments:
            ledger.tap(party, instrument, "500")
    ledger.create_preapproval(parties[3], instruments[0])
    seen_holdings = [h.contract_id for p in parties for h in ledger.active_holdings(p)]

    for op in operations:
        kind = op[0]
        try:
            if kind in ("tap", "mint", "burn"):
                _, who, which, amount = op
                action = getattr(ledger, kind)
                action(parties[who], instruments[which], amount)
            elif kind == "transfer":
                _, sender, receiver_offset, which, amount, picks = op
                receiver = (sender + receiver_offset) % len(parties)
                own = [
                    h.contract_id
                    for h in ledger.active_holdings(parties[sender], instruments[which])
                ]
                inputs = None
                if picks and own:
                    chosen = [
                        own[i % len(own)] if mine else seen_holdings[i % len(seen_holdings)]
                        for mine, i in picks
                    ]
                    inputs = list(dict.fromkeys(chosen))
                ledger.transfer(
                    parties[sender], parties[receiver], instruments[which], amount, inputs=inputs
                )
            elif kind == "settle":
                _, choice, index, approve = op
                pending = [i for p in parties for i in ledger.active_instructions(p)]
                if pending:
                    instruction = pending[index % len(pending)]
                    transfer = instruction.transfer
                    if choice == "accept":
                        ledger.accept(instruction.contract_id, transfer.receiver)
                    elif choice == "reject":
                        ledger.reject(instruction.contract_id, transfer.receiver)
                    elif choice == "withdraw":
                        ledger.withdraw(instruction.contract_id, transfer.sender)
                    else:
                        ledger.admin_update(instruction.contract_id, approve=approve)
            elif kind == "advance":
                ledger.advance(op[1])
            elif kind == "expire":
                ledger.expire_instructions()
            else:
                _, who, which = op
                ledger.create_preapproval(parties[who], instruments[which])
        except CommandRejectedError:
            pass
        known = set(seen_holdings)
        seen_holdings.extend(
            h.contract_id
            for p in parties
            for h in ledger.active_holdings(p)
            if h.contract_id not in known
        )
        check_invariants(ledger, admin, instruments)
