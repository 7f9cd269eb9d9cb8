"""The embedded ledger persisted to SQLite: a reopened file is the same ledger.

A scenario touching every kind of journal entry (nodes, parties, instruments, policies, clock,
checkpoints, every kind of update, rejections, a node restore and a major upgrade) is run on a
file; the file is reopened and everything a client can observe is compared with the live ledger.
Also: continuing after a reopen is deterministic, writes are batched until ``flush()``, and a
read-only reader catches up with ``refresh()``.
"""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from sluice.domain.ledger import InstrumentId
from sluice.ledger.local import (
    EmbeddedLedger,
    InsufficientFundsError,
    ReadOnlyLedgerError,
    RegistryPolicy,
)


def scenario(ledger: EmbeddedLedger) -> dict[str, Any]:
    for node in ("registry", "exchange", "customers"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    alice = ledger.allocate_party("alice", "customers")
    bob = ledger.allocate_party("bob", "customers")
    cc = ledger.create_instrument(dso, "Amulet", RegistryPolicy(transfer_fee=Decimal("0.1")))
    held = ledger.create_instrument(dso, "Held", RegistryPolicy(kyc_hold=True))
    ledger.create_preapproval(treasury, cc)
    ledger.tap(alice, cc, "1000")
    ledger.mint(alice, held, "50", reason="issued")
    for i in range(5):
        ledger.transfer(alice, treasury, cc, f"{i + 1}", reason=f"acct-{i}")
        ledger.advance(20)
    offer = ledger.transfer(alice, bob, cc, "7")
    assert offer.instruction_cid is not None
    ledger.accept(offer.instruction_cid, bob)
    offer = ledger.transfer(alice, bob, cc, "8")
    assert offer.instruction_cid is not None
    ledger.reject(offer.instruction_cid, bob)
    pending = ledger.transfer(alice, treasury, held, "5")
    assert pending.instruction_cid is not None
    ledger.admin_update(pending.instruction_cid, approve=True)
    with pytest.raises(InsufficientFundsError):
        ledger.transfer(alice, bob, cc, "100000")
    backup = ledger.ledger_end("exchange")
    ledger.burn(treasury, cc, "2", reason="redeem")
    ledger.checkpoint()
    ledger.faults.restore_node_from_backup("exchange", backup, offset_shift=3)
    ledger.set_policy(cc, RegistryPolicy(transfer_fee=Decimal("0.2")))
    ledger.transfer(alice, treasury, cc, "1", reason="after")
    ledger.faults.major_upgrade("customers")
    ledger.transfer(alice, alice, cc, "1", command_id="after-upgrade")
    ledger.cancel_preapproval(treasury, cc)
    ledger.advance(1)
    return {"parties": [dso, treasury, alice, bob], "instruments": [cc, held]}


def observe(ledger: EmbeddedLedger, parties: list[str], instruments: list[InstrumentId]) -> Any:
    """Everything a client can read, as comparable JSON text."""
    return json.dumps(
        {
            "time": str(ledger.time()),
            "nodes": {node: ledger.ledger_end(node) for node in ledger.nodes()},
            "parties": ledger.parties(),
            "updates": {p: list(ledger.updates(p, 0)) for p in parties},
            "acs": {p: ledger.active_contracts(p) for p in parties},
            "holdings": {p: [repr(h) for h in ledger.active_holdings(p)] for p in parties},
            "instructions": {p: [repr(i) for i in ledger.active_instructions(p)] for p in parties},
            "completions": {p: [repr(c) for c in ledger.completions(p)] for p in parties},
            "totals": [repr(ledger.totals(i)) for i in instruments],
            "configs": [c.as_json() for c in ledger.instrument_configs()],
        },
        sort_keys=True,
        default=str,
    )


def test_a_reopened_file_is_exactly_the_same_ledger(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    live = EmbeddedLedger.open(path, seed=3)
    names = scenario(live)
    expected = observe(live, **names)
    live.close()
    reopened = EmbeddedLedger.open(path, seed=999)  # the file's own settings win
    assert reopened.seed == 3
    assert observe(reopened, **names) == expected
    reopened.close()


def test_the_memory_and_file_ledgers_of_one_seed_are_identical(tmp_path: Path) -> None:
    in_memory = EmbeddedLedger.open(None, seed=3)
    on_file = EmbeddedLedger.open(str(tmp_path / "ledger.db"), seed=3)
    names = scenario(in_memory)
    scenario(on_file)
    assert observe(in_memory, **names) == observe(on_file, **names)
    on_file.close()


def test_a_reopened_ledger_continues_exactly_as_an_uninterrupted_one(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    with EmbeddedLedger.open(path, seed=8) as first:
        names = scenario(first)
    uninterrupted = EmbeddedLedger.open(None, seed=8)
    scenario(uninterrupted)
    reopened = EmbeddedLedger.open(path)
    alice, treasury = names["parties"][2], names["parties"][1]
    cc = names["instruments"][0]
    for ledger in (reopened, uninterrupted):
        ledger.allocate_party("carol", "customers")
        ledger.transfer(alice, treasury, cc, "3", reason="later")
        ledger.tap(alice, cc, "1")
    assert observe(reopened, **names) == observe(uninterrupted, **names)
    reopened.close()


def test_writes_are_batched_until_flushed(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    writer = EmbeddedLedger.open(path, batch_size=1000)
    writer.add_node("n")
    party = writer.allocate_party("p", "n")
    reader = EmbeddedLedger.open(path, read_only=True)
    assert reader.parties() == []
    writer.flush()
    assert reader.refresh() == 2
    assert reader.parties() == [party]
    writer.close()


def test_a_read_only_reader_follows_the_writer_and_cannot_write(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    writer = EmbeddedLedger.open(path, seed=2, batch_size=1)
    names = scenario(writer)
    reader = EmbeddedLedger.open(path, read_only=True)
    assert observe(reader, **names) == observe(writer, **names)
    alice, treasury = names["parties"][2], names["parties"][1]
    writer.transfer(alice, treasury, names["instruments"][0], "1", reason="more")
    assert reader.refresh() > 0
    assert observe(reader, **names) == observe(writer, **names)
    with pytest.raises(ReadOnlyLedgerError):
        reader.tap(alice, names["instruments"][0], "1")
    # A node client of a read-only ledger follows the writer by itself.
    client = reader.client(treasury)
    writer.transfer(alice, treasury, names["instruments"][0], "1", reason="followed")
    assert client.ledger_end() == writer.ledger_end(treasury)
    assert list(client.updates(treasury, None)) == list(writer.updates(treasury, None))
    with pytest.raises(ReadOnlyLedgerError):
        writer.refresh()
    writer.close()


def test_a_file_of_another_format_is_refused(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.db"
    EmbeddedLedger.open(str(path)).close()
    with sqlite3.connect(path) as connection:
        connection.execute("UPDATE meta SET value = '0' WHERE key = 'format'")
    with pytest.raises(ValueError, match="format"):
        EmbeddedLedger.open(str(path))


def test_a_ledger_left_open_flushes_when_it_is_dropped(tmp_path: Path) -> None:
    path = str(tmp_path / "ledger.db")
    ledger = EmbeddedLedger.open(path, batch_size=1000)
    ledger.add_node("n")
    party = ledger.allocate_party("p", "n")
    del ledger
    assert EmbeddedLedger.open(path).parties() == [party]
