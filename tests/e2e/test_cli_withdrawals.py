"""The operator's command line on the embedded defaults: onboarding, withdrawals, the hold,
incoming offers and moving ingestion's cursor.

How: each test builds a small world in an embedded ledger file under ``tmp_path`` (a treasury;
Amulet, which the treasury and customers pre-approve, so transfers are direct; USDX, whose admin
allows no preapprovals, so every transfer is an offer; customers ``cust-0`` and ``cust-1`` with
deposit accounts ``acct-0`` / ``acct-1``, who deposit Amulet and send USDX offers, one with a
reason nobody knows) and registers the customers in the Integration DB. Then it runs the real
``sluice`` command (typer's runner, in-process) with ``SLUICE_DATA_DIR`` and friends pointing at
``tmp_path``, and checks what it prints, its exit code, and the state it leaves in the DB and on
the ledger. Bad input must end with exit code 2 and exactly one line on stderr.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from typer.testing import CliRunner

from sluice import bootstrap
from sluice.cli import app
from sluice.domain.ledger import InstrumentId, format_timestamp, parse_timestamp
from sluice.ledger.local import EmbeddedLedger, RegistryPolicy
from sluice.services.books import customer_balances
from sluice.services.reference import register_customer

NODE = "exchange"


@dataclass(frozen=True, slots=True)
class World:
    data: Path
    treasury: str
    coin: InstrumentId
    token: InstrumentId
    parties: dict[str, str]  # customer id → party
    stranger: str  # a party with no account at the exchange

    @property
    def ledger_path(self) -> Path:
        return self.data / "ledger.db"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.data / 'sluice.db'}"

    def open_ledger(self, *, read_only: bool = False) -> EmbeddedLedger:
        return EmbeddedLedger.open(str(self.ledger_path), read_only=read_only)

    def balances(self) -> dict[str, dict[str, Decimal]]:
        database = bootstrap.database(self.db_url)
        try:
            return customer_balances(database.uow)
        finally:
            database.dispose()


def build_world(data: Path) -> World:
    ledger = EmbeddedLedger.open(str(data / "ledger.db"), seed=7, checkpoint_interval_s=30.0)
    for node in ("registry", NODE, "wallets"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    issuer = ledger.allocate_party("issuer", "registry")
    treasury = ledger.allocate_party("treasury", NODE)
    stranger = ledger.allocate_party("stranger", "wallets")
    coin = ledger.create_instrument(dso, "Amulet")
    token = ledger.create_instrument(issuer, "USDX", RegistryPolicy(preapprovals_allowed=False))
    ledger.create_preapproval(treasury, coin)
    parties: dict[str, str] = {}
    for n in range(2):
        party = ledger.allocate_party(f"cust-{n}", "wallets")
        ledger.create_preapproval(party, coin)
        ledger.tap(party, coin, Decimal(10_000))
        ledger.tap(party, token, Decimal(10_000))
        parties[f"cust-{n}"] = party
    ledger.tap(stranger, token, Decimal(1_000))
    # The clock moves past the checkpoint interval after each transfer: a checkpoint follows.
    ledger.transfer(parties["cust-0"], treasury, coin, Decimal(500), reason="acct-0")
    ledger.advance(40)
    ledger.transfer(parties["cust-1"], treasury, coin, Decimal(300), reason="acct-1")
    ledger.advance(40)
    ledger.transfer(parties["cust-0"], treasury, token, Decimal(40), reason="acct-0")
    ledger.advance(40)
    ledger.transfer(stranger, treasury, token, Decimal(7), reason="acct-nobody")
    ledger.advance(40)
    ledger.close()
    database = bootstrap.database(f"sqlite:///{data / 'sluice.db'}")
    for n in range(2):
        register_customer(database.uow, f"cust-{n}", f"Customer {n}", [f"acct-{n}"])
    database.dispose()
    return World(data, treasury, coin, token, parties, stranger)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return build_world(tmp_path)


@pytest.fixture
def sluice(world: World) -> Any:
    """``sluice("withdrawals list --json", *more, code=0)`` runs ``sluice withdrawals list
    --json …`` on the world's files (the command is split at spaces; ``more`` are passed as they
    are), checks the exit code and returns the click result."""
    runner = CliRunner()
    env: dict[str, str | None] = {
        name: None for name in os.environ if name.startswith("SLUICE_WITHDRAWAL_")
    }
    env.update(
        {
            "SLUICE_DATA_DIR": str(world.data),
            "SLUICE_DATABASE_URL": world.db_url,
            "SLUICE_LEDGER_PATH": str(world.ledger_path),
            "SLUICE_TREASURY_PARTY": world.treasury,
            "SLUICE_LEDGER_NODE": NODE,
            "COLUMNS": "250",
        }
    )

    def run(command: str, *more: str, code: int = 0) -> Result:
        args = [*command.split(), *more]
        result = runner.invoke(app, args, env=env)
        assert result.exit_code == code, (
            f"sluice {' '.join(args)} exited {result.exit_code}, expected {code}\n"
            f"stdout: {result.stdout}\nstderr: {result.stderr}\nexception: {result.exception!r}"
        )
        return result

    return run


def refused(result: Result, starts: str, *containing: str) -> None:
    """Exit 2 (checked by the caller) with one line on stderr."""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(starts), lines[0]
    for text in containing:
        assert text in lines[0], lines[0]


def onboard(sluice: Any, world: World) -> None:
    registry = "--registry https://registry.example"
    sluice(f"instruments add --admin {world.coin.admin} --id Amulet {registry}/dso --trusted")
    sluice(
        f"instruments add --admin {world.token.admin} --id USDX {registry}/issuer --trusted "
        "--transfer-kinds offer"
    )


def listed(sluice: Any, command: str) -> list[dict[str, Any]]:
    value: list[dict[str, Any]] = json.loads(sluice(f"{command} --json").stdout)
    return value


def ledger_time(world: World) -> str:
    ledger = world.open_ledger(read_only=True)
    try:
        return format_timestamp(ledger.time())
    finally:
        ledger.close()


# --- instruments -------------------------------------------------------------------------------


def test_instruments_are_added_listed_disabled_and_enabled(sluice: Any, world: World) -> None:
    amulet = f"--admin {world.coin.admin} --id Amulet"
    added = sluice(
        f"instruments add {amulet} --registry https://registry.example/dso --trusted",
        *("--transfer-kinds", "offer, direct"),
        *("--limits", "withdrawal_max=5000,transfer_fee=0.1"),
    )
    assert "onboarded Amulet@" in added.stderr
    again = sluice(f"instruments add {amulet} --registry https://registry.example/dso --trusted")
    assert "already onboarded" in again.stderr

    (record,) = listed(sluice, "instruments list")
    assert record == {
        "instrument": {"admin": world.coin.admin, "id": "Amulet"},
        "registry_url": "https://registry.example/dso",
        "trusted": True,
        "enabled": True,
        "transfer_kinds": ["direct", "offer"],
        "limits": {"transfer_fee": "0.1000000000", "withdrawal_max": "5000.0000000000"},
    }
    sluice(f"instruments disable {amulet} --actor alice")
    assert [r["enabled"] for r in listed(sluice, "instruments list")] == [False]
    table = sluice("instruments list").stdout
    assert "Amulet" in table and "withdrawal_max=5000.0000000000" in table
    sluice(f"instruments enable {amulet} --actor bob")
    assert [r["enabled"] for r in listed(sluice, "instruments list")] == [True]

    # Each change is in the audit trail, by whom (the first add said no --actor: the login name).
    trail = [json.loads(line) for line in sluice("audit list").stdout.splitlines()]
    instrument_records = [
        (r["operation"], r["actor"]) for r in trail if r["operation"].startswith("instrument_")
    ]
    assert [op for op, _ in instrument_records] == [
        "instrument_onboarded",
        "instrument_disabled",
        "instrument_enabled",
    ]
    assert [actor for _, actor in instrument_records][1:] == ["alice", "bob"]
    sluice("audit verify")  # the chain still verifies (the fixture fails on an error)


@pytest.mark.parametrize(
    ("options", "starts", "says"),
    [
        (["--untrusted"], "error 60 invalid_input:", "only instruments of trusted admins"),
        (["--trusted", "--transfer-kinds", "direct,teleport"], "error 60", "teleport"),
        (["--trusted", "--transfer-kinds", " , "], "error 60", "at least one of"),
        (["--trusted", "--limits", "withdrawal_max=abc"], "error 61 invalid_amount:", "abc"),
        (["--trusted", "--limits", "withdrawal_max=-1"], "error 60", "negative"),
        (["--trusted", "--limits", "Fee=1"], "error 60", "lower case"),
        (["--trusted", "--limits", "withdrawal_max"], "error:", "key=value"),
        (["--trusted", "--limits", "a=1,a=2"], "error:", "twice"),
        (["--trusted", "--registry", "ftp://registry.example"], "error 60", "http(s)"),
    ],
)
def test_instruments_add_refuses_bad_input_with_one_line(
    sluice: Any, world: World, options: list[str], starts: str, says: str
) -> None:
    registry = [] if "--registry" in options else ["--registry", "https://registry.example/dso"]
    command = f"instruments add --admin {world.coin.admin} --id Amulet"
    refused(sluice(command, *registry, *options, code=2), starts, says)
    assert listed(sluice, "instruments list") == []


def test_instrument_commands_refuse_unknown_and_malformed_instruments(
    sluice: Any, world: World
) -> None:
    refused(
        sluice(f"instruments disable --admin {world.coin.admin} --id Nope", code=2),
        "error 10 not_found:",
        "not onboarded",
    )
    refused(
        sluice(
            "instruments add --admin not-a-party --id X --registry https://r.example --trusted",
            code=2,
        ),
        "error 60 invalid_input:",
        "is not a party id",
    )


# --- withdrawals -------------------------------------------------------------------------------


def test_withdraw_reserves_inputs_and_the_workers_pay_it_out(sluice: Any, world: World) -> None:
    onboard(sluice, world)
    sluice("ingest --once")
    receiver = world.parties["cust-0"]
    now = parse_timestamp(ledger_time(world))

    request = f"withdraw --customer cust-0 --to {receiver} --amount 120 --key k1"
    first = json.loads(sluice(f"{request} --instrument {world.coin.admin}:Amulet --json").stdout)
    assert first["status"] == "reserved"
    assert first["amount"] == "120.0000000000"
    assert first["inputs"]
    assert parse_timestamp(first["trec_tgt"]) == now + timedelta(seconds=120)
    printed = sluice(f"{request} --admin {world.coin.admin} --id Amulet").stdout
    assert printed.splitlines()[0] == f"withdrawal {first['id']}: reserved"
    assert f"trec_tgt: {first['trec_tgt']}" in printed
    assert world.balances()["customer:cust-0"] == {world.coin.key(): Decimal(380)}

    (shown,) = listed(sluice, "withdrawals list --status reserved")
    assert shown == first
    assert listed(sluice, "withdrawals list --customer cust-1") == []
    table = sluice("withdrawals list").stdout
    row = next(line for line in table.splitlines() if first["id"] in line)
    cells = [cell.strip() for cell in row.strip().strip("│").split("│")]
    expected = [first["id"], "withdrawal", "cust-0", "120", "Amulet", "reserved", "1/3"]
    assert cells == [*expected, first["trec_tgt"], ""]

    assert "submitted 1" in sluice("workers run --once").stderr
    sluice("ingest --once")
    (done,) = listed(sluice, "withdrawals list")
    assert done["status"] == "completed"
    ledger = world.open_ledger(read_only=True)
    received = sum(h.amount for h in ledger.active_holdings(receiver, world.coin))
    ledger.close()
    assert received == Decimal(10_000 - 500 + 120)
    assert "the books balance" in sluice("check").stderr


@pytest.mark.parametrize(
    ("options", "starts", "says"),
    [
        (["--amount", "100000"], "error 62 insufficient_balance:", "cannot withdraw"),
        (["--amount", "12.3.4"], "error 61 invalid_amount:", "not a decimal"),
        (["--amount", "-5"], "error 61 invalid_amount:", "must be positive"),
        (["--amount", "0.00000000001"], "error 61 invalid_amount:", "fractional digits"),
        (["--to", "nobody"], "error 60 invalid_input:", "is not a party id"),
        (["--customer", "cust-9"], "error 10 not_found:", "cust-9"),
        (["--instrument", "issuer::1220ab:Gold"], "error 63 instrument_not_onboarded:", "Gold"),
        (["--instrument", "Amulet"], "error:", "ADMIN:ID"),
        (["--key", "k1", "--amount", "2"], "error 42 duplicate_operation:", "k1"),
    ],
)
def test_withdraw_refuses_bad_input_with_a_coded_one_line_error(
    sluice: Any, world: World, options: list[str], starts: str, says: str
) -> None:
    onboard(sluice, world)
    sluice("ingest --once")
    base = {
        "--customer": "cust-0",
        "--to": world.parties["cust-0"],
        "--instrument": f"{world.coin.admin}:Amulet",
        "--amount": "1",
        "--key": "k1",
    }
    sluice("withdraw", *[part for pair in base.items() for part in pair])
    arguments = {**base, "--key": "k2", **dict(zip(options[::2], options[1::2], strict=True))}
    result = sluice("withdraw", *[part for pair in arguments.items() for part in pair], code=2)
    refused(result, starts, says)
    (only,) = listed(sluice, "withdrawals list")
    assert only["amount"] == "1.0000000000"
    assert world.balances()["customer:cust-0"] == {world.coin.key(): Decimal(499)}


def test_withdrawals_list_refuses_an_unknown_status(sluice: Any) -> None:
    refused(sluice("withdrawals list --status paid", code=2), "error:", "queued")


# --- the hold ----------------------------------------------------------------------------------


def test_hold_until_safe_stops_submissions_until_ingestion_passes_it(
    sluice: Any, world: World
) -> None:
    onboard(sluice, world)
    sluice("ingest --once")
    assert "no hold" in sluice("withdrawals hold").stderr
    now = parse_timestamp(ledger_time(world))

    held = sluice("withdrawals hold --until-safe").stderr
    until = format_timestamp(now + timedelta(seconds=120))
    assert f"held until {until}: now ({format_timestamp(now)}) + trec_span_s (120 s)" in held
    assert f"held until {until}; ingestion has reached" in sluice("withdrawals hold").stderr
    withdrawal = json.loads(
        sluice(
            f"withdraw --customer cust-1 --to {world.parties['cust-1']} "
            f"--admin {world.coin.admin} --id Amulet --amount 50 --key h1 --json"
        ).stdout
    )
    assert withdrawal["trec_tgt"] == until
    # Until-safe again: now the withdrawal's trec_tgt is what the hold must wait for.
    again = sluice("withdrawals hold --until-safe").stderr
    assert f"held until {until}: the latest trec_tgt of a withdrawal in flight" in again
    assert "submissions HELD" in sluice("workers run --once").stderr
    assert listed(sluice, "withdrawals list")[0]["status"] == "reserved"

    assert "hold released" in sluice("withdrawals hold --release").stderr
    assert "no hold" in sluice("withdrawals hold").stderr

    sluice("withdrawals hold --until-safe")
    ledger = world.open_ledger()
    ledger.advance(200)
    ledger.checkpoint()
    ledger.close()
    sluice("ingest --once")
    assert "is over" in sluice("withdrawals hold").stderr
    assert "submitted 1" in sluice("workers run --once").stderr
    assert "no hold" in sluice("withdrawals hold").stderr
    refused(sluice("withdrawals hold --until-safe --release", code=2), "error:", "one of")


# --- incoming offers ---------------------------------------------------------------------------


def test_deposits_offers_shows_what_the_worker_did_with_each_offer(
    sluice: Any, world: World
) -> None:
    onboard(sluice, world)
    sluice("ingest --once")
    by_reason = {o["reason"]: o for o in listed(sluice, "deposits offers")}
    assert set(by_reason) == {"acct-0", "acct-nobody"}
    known, unknown = by_reason["acct-0"], by_reason["acct-nobody"]
    assert (known["known_account"], known["customer_id"]) == (True, "cust-0")
    assert known["amount"] == "40.0000000000"
    assert (unknown["known_account"], unknown["customer_id"]) == (False, None)
    assert known["instrument_onboarded"] and known["status"] == "pending_receiver_acceptance"
    assert (known["action"], known["attempts"], known["last_error"]) == (None, 0, None)

    ran = sluice("workers run --once").stderr
    assert "accepted 1" in ran and "left alone 1" in ran
    after = {o["reason"]: o for o in listed(sluice, "deposits offers")}
    assert (after["acct-0"]["action"], after["acct-0"]["attempts"]) == ("accept", 1)
    assert after["acct-nobody"]["action"] is None
    table = sluice("deposits offers").stdout
    assert "unknown account" in table and "acct-nobody" in table

    sluice("ingest --once")
    (left,) = listed(sluice, "deposits offers")
    assert left["reason"] == "acct-nobody"
    assert world.balances()["customer:cust-0"] == {
        world.coin.key(): Decimal(500),
        world.token.key(): Decimal(40),
    }


# --- moving ingestion's cursor -----------------------------------------------------------------


def treasury_items(world: World) -> list[tuple[int, str, bool]]:
    """(offset, record time, is a transaction) of the treasury's stream."""
    ledger = world.open_ledger(read_only=True)
    try:
        items = []
        for item in ledger.updates(world.treasury, None):
            update = item["update"]
            if "Transaction" in update:
                value = update["Transaction"]["value"]
                items.append((value["offset"], value["recordTime"], True))
            else:
                value = update["OffsetCheckpoint"]["value"]
                items.append((value["offset"], value["synchronizerTimes"][0]["recordTime"], False))
        return items
    finally:
        ledger.close()


def test_ingest_from_an_offset_rereads_and_skips_what_was_ingested(
    sluice: Any, world: World
) -> None:
    onboard(sluice, world)
    sluice("ingest --once")
    before = world.balances()
    items = treasury_items(world)
    end = items[-1][0]
    first = next(offset for offset, _, is_transaction in items if is_transaction)

    moved = sluice(f"ingest --once --from-offset {first}").stderr
    assert f"cursor moved from offset {end} to {first}" in moved
    assert "updates already ingested will be skipped" in moved
    again = sum(1 for offset, _, is_transaction in items if is_transaction and offset > first)
    assert "ingested 0 transactions" in moved and f"({again} already ingested, skipped)" in moved
    assert world.balances() == before

    refused(sluice(f"ingest --from-offset {end + 5}", code=2), "error:", "ledger end")
    refused(
        sluice(f"ingest --from-offset 1 --from-record-time {items[0][1]}", code=2),
        "error:",
        "alternatives",
    )
    refused(
        sluice("ingest --from-record-time yesterday", code=2),
        "error 60 invalid_input:",
        "--from-record-time",
    )
    refused(
        sluice("ingest --from-record-time 2026-01-01T00:00:00", code=2), "error 60", "no time zone"
    )


def test_after_a_node_restore_ingest_from_record_time_picks_up_what_the_old_cursor_misses(
    sluice: Any, world: World
) -> None:
    onboard(sluice, world)
    sluice("ingest --once")
    items = treasury_items(world)
    old_end = items[-1][0]
    # The node's backup was taken right after the treasury's first update (its preapproval):
    # the last update the operator trusts. Then a customer deposits again.
    trusted_offset, trusted_time, _ = next(item for item in items if item[2])
    ledger = world.open_ledger()
    ledger.faults.restore_node_from_backup(NODE, trusted_offset)
    ledger.transfer(
        world.parties["cust-1"], world.treasury, world.coin, Decimal(25), reason="acct-1"
    )
    ledger.close()
    assert treasury_items(world)[-1][0] <= old_end  # the old cursor is past the new deposit

    moved = sluice(f"ingest --once --from-record-time {trusted_time}").stderr
    assert f"cursor moved from offset {old_end} to " in moved
    assert "ingested 1 transactions" in moved
    assert world.balances()["customer:cust-1"] == {world.coin.key(): Decimal(325)}
    assert "the books balance" in sluice("check").stderr
