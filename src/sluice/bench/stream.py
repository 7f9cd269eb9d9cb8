"""A realistic treasury stream made with the embedded ledger, written as JSON lines.

Many customers deposit to one treasury (1-step, through its preapproval; a few with a reason
nobody knows), some send 2-step offers of a second token that the treasury accepts, and the
treasury pays withdrawals out. Time moves on, so the node emits checkpoints too.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import orjson

from sluice.domain.ledger import InstrumentId
from sluice.ledger.local import EmbeddedLedger, RegistryPolicy


@dataclass(frozen=True, slots=True)
class StreamSetup:
    """What the exchange knows before ingesting: its party, customers, onboarded instruments."""

    party: str
    accounts: dict[str, str]  # deposit account → customer id
    instruments: list[InstrumentId]

    def write(self, path: Path) -> None:
        path.write_text(
            json.dumps(
                {
                    "party": self.party,
                    "accounts": self.accounts,
                    "instruments": [[i.admin, i.id] for i in self.instruments],
                }
            )
        )

    @classmethod
    def read(cls, path: Path) -> StreamSetup:
        data = json.loads(path.read_text())
        return cls(
            party=data["party"],
            accounts=data["accounts"],
            instruments=[InstrumentId(admin, id_) for admin, id_ in data["instruments"]],
        )


def generate(
    path: Path,
    updates: int,
    *,
    customers: int = 200,
    seed: int = 7,
    ledger_path: Path | None = None,
) -> StreamSetup:
    """Write at least ``updates`` items of the treasury's stream to ``path`` (JSON lines); with
    ``ledger_path`` the ledger itself is kept in that file too (for serving it)."""
    rng = random.Random(seed)
    ledger = EmbeddedLedger.open(
        None if ledger_path is None else str(ledger_path), seed=seed, checkpoint_interval_s=30.0
    )
    for node in ("exchange", "wallets", "registry"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    issuer = ledger.allocate_party("issuer", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    coin = ledger.create_instrument(dso, "Amulet", name="Canton Coin", symbol="CC")
    token = ledger.create_instrument(
        issuer, "USDX", RegistryPolicy(preapprovals_allowed=False), symbol="USDX"
    )
    ledger.create_preapproval(treasury, coin)
    people = [ledger.allocate_party(f"customer-{n}", "wallets") for n in range(customers)]
    accounts = {f"acct-{n:05d}": f"cust-{n:05d}" for n in range(customers)}
    for person in people:
        ledger.tap(person, coin, 10_000_000)
        ledger.mint(person, token, 1_000_000)
        ledger.create_preapproval(person, coin)
    ledger.tap(treasury, coin, 1_000_000)

    withdrawals = 0
    while ledger.ledger_end(treasury) < updates:
        n = rng.randrange(customers)
        roll = rng.random()
        amount = Decimal(rng.randrange(1, 5_000_000)).scaleb(-4)
        if roll < 0.80:
            reason = f"acct-{n:05d}" if rng.random() > 0.03 else f"unknown-{rng.randrange(999)}"
            ledger.transfer(people[n], treasury, coin, amount, reason=reason)
        elif roll < 0.88:
            offer = ledger.transfer(people[n], treasury, token, amount, reason=f"acct-{n:05d}")
            if offer.instruction_cid is not None:
                ledger.accept(offer.instruction_cid, treasury)
        else:
            withdrawals += 1
            ledger.transfer(treasury, people[n], coin, amount / 10, reason=f"w-{withdrawals}")
        ledger.advance(rng.uniform(0.1, 2.0))
    ledger.checkpoint()

    with path.open("wb") as out:
        for item in ledger.updates(treasury, 0):
            out.write(orjson.dumps(item))
            out.write(b"\n")
    ledger.close()
    setup = StreamSetup(party=treasury, accounts=accounts, instruments=[coin, token])
    setup.write(path.with_suffix(".setup.json"))
    return setup
