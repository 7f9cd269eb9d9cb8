"""The independent reads: the treasury's holdings from the embedded ledger's active contracts
(at one offset, only the party's own holdings), and the custody's outputs from the node's UTXO
set (at one block); and the reserve arithmetic they feed."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS
from sluice.domain.errors import InvalidInputError
from sluice.domain.ledger import Holding, InstrumentId
from sluice.domain.reserves import (
    Tolerances,
    amount_of,
    classify,
    format_units,
    ratio_bps,
    units_of,
)
from sluice.ledger.local.engine import EmbeddedLedger
from sluice.ports import LedgerReadError
from sluice.services.por_snapshots import _units as por_units
from sluice.services.reserve_sources import LedgerHoldings, read_ledger_holdings, scan_custody

REGTEST = CHAINS["regtest"]


def test_the_treasury_holdings_come_from_the_ledger_at_one_offset() -> None:
    ledger = EmbeddedLedger.open(None, seed=3, checkpoint_interval_s=None)
    for node in ("registry", "exchange"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    treasury = ledger.allocate_party("treasury", "exchange")
    other = ledger.allocate_party("other", "exchange")
    cc = ledger.create_instrument(dso, "Amulet", None, name="Canton Coin", symbol="CC")
    ledger.mint(treasury, cc, "42.5", reason="a")
    ledger.mint(treasury, cc, "7.5", reason="b")
    ledger.mint(other, cc, "1000", reason="c")
    client = ledger.node_client("exchange")
    read = read_ledger_holdings(client, treasury)
    assert read.offset == client.ledger_end() > 0
    assert read.totals() == {cc: Decimal("50")}
    assert len(read.of(cc)) == 2
    with pytest.raises(LedgerReadError):
        client.active_contracts(treasury, read.offset - 1)
    assert len(client.active_contracts(treasury, read.offset)) >= 2


def test_the_custody_scan_reads_the_node_utxo_set(tmp_path: Path) -> None:
    custody = create_sandbox_custody(tmp_path / "keys", REGTEST)
    wallet = EmbitCustodyWallet(custody.descriptor, REGTEST, [])
    chain = FakeChain(REGTEST)
    deposit = wallet.derive(0, 3)
    change = wallet.derive(1, 0)
    chain.fund(deposit.script_hex, 150_000, mine=True)
    chain.fund(change.script_hex, 25_000, mine=True)
    chain.mine(2)
    scan = scan_custody(chain, wallet, {0: 5, 1: 2})
    assert scan.total_sats == 175_000 and len(scan.outputs) == 2
    tip = chain.getblockchaininfo()
    assert (scan.height, scan.block_hash) == (tip["blocks"], tip["bestblockhash"])
    assert scan_custody(chain, wallet, {0: 2, 1: 2}).total_sats == 25_000  # index 3 not scanned
    with pytest.raises(InvalidInputError):
        scan_custody(chain, wallet, {})


def test_reserve_arithmetic_is_exact() -> None:
    assert units_of(Decimal("1.0000000001"), 10) == 10_000_000_001
    with pytest.raises(InvalidInputError):
        units_of(Decimal("0.00000000001"), 10)
    assert format_units(125, 1) == "12.5" and format_units(0, 8) == "0"
    assert ratio_bps(9_999, 10_000) == 9_999 and ratio_bps(1, 0) is None
    assert ratio_bps(2**100, 2**100 - 1) == 10_000  # rounded down


@pytest.mark.parametrize(
    ("expected", "actual", "severity"),
    [
        (10_000, 10_000, None),
        (10_000, 9_999, "minor"),  # 1 bp
        (10_000, 9_990, "warning"),  # 10 bp
        (10_000, 9_900, "critical"),  # 100 bp
        (10_000, 9_899, "emergency"),
        (10_000, 20_000, "warning"),  # a surplus is capped
        (0, 1, "warning"),
    ],
)
def test_a_difference_is_classed_by_its_relative_size(
    expected: int, actual: int, severity: str | None
) -> None:
    assert classify(expected, actual, Tolerances()) == severity


# --- exactness past the default 28 significant digits --------------------------------------------

WIDE = Decimal("123456789012345678901.2345678901")  # 31 significant digits


def test_units_are_exact_past_28_significant_digits() -> None:
    assert units_of(WIDE, 10) == 1_234_567_890_123_456_789_012_345_678_901
    largest = 2**127 - 1
    assert format_units(largest, 10) == "17014118346046923173168730371.5884105727"
    assert amount_of(largest, 10) == Decimal("17014118346046923173168730371.5884105727")
    assert units_of(amount_of(largest, 10), 10) == largest
    assert units_of(Decimal("-0.5"), 10) == -5_000_000_000


@pytest.mark.parametrize(
    "amount", ["1E+200", "1E-999999999", "0.00000000001", "NaN", "Infinity", "1" * 81]
)
def test_an_amount_that_cannot_be_counted_exactly_is_refused(amount: str) -> None:
    with pytest.raises(InvalidInputError):
        units_of(Decimal(amount), 10)


def test_holdings_are_summed_exactly() -> None:
    instrument = InstrumentId("dso::1", "Amulet")
    big = Decimal("99999999999999999999999999.9999999999")
    read = LedgerHoldings(
        "treasury::1",
        7,
        tuple(
            Holding(f"c{n}", "treasury::1", instrument, amount)
            for n, amount in enumerate((big, big, Decimal("0.0000000003")))
        ),
    )
    total = read.totals()[instrument]
    assert total == Decimal("200000000000000000000000000.0000000001")
    assert units_of(total, 10) == 2_000_000_000_000_000_000_000_000_000_000_000_001


def test_a_liabilities_balance_becomes_exact_units() -> None:
    assert por_units(WIDE, 10, "c-1", "Amulet@dso::1") == units_of(WIDE, 10)
    with pytest.raises(InvalidInputError, match="c-1's balance"):
        por_units(Decimal("0.000000001"), 8, "c-1", "iSTSi@issuer::1")
