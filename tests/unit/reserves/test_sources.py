"""The independent reads: the treasury's holdings from the embedded ledger's active contracts
(at one offset, only the party's own holdings), and the custody's outputs from the node's UTXO
set (at one block); and the reserve arithmetic they feed."""

from __future__ import annotations

import threading
import time
from decimal import Decimal
from pathlib import Path
from typing import TypeVar

import pytest

from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.bootstrap import reserves_settings
from sluice.config import DeploymentConfig
from sluice.config.reserves import ReservesConfig
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
from sluice.ports.bitcoin import JsonObject, NodeRejectedError, NodeUnavailableError
from sluice.services import reserve_sources
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
    assert por_units(WIDE, 10, "c-1", "Amulet@dso::1") == 1_234_567_890_123_456_789_012_345_678_901
    with pytest.raises(InvalidInputError, match="c-1's balance"):
        por_units(Decimal("0.000000001"), 8, "c-1", "iSTSi@issuer::1")


# --- a custody scan that takes long, or meets another scan ----------------------------------------

IN_PROGRESS = 'scantxoutset: Scan already in progress, use action "abort" or "status" (code -8)'


class BusyNode(FakeChain):
    """A node that answers -8 "Scan already in progress" ``busy`` times, then scans; with a
    ``gate``, each scan waits for it (a slow scan), counting scans running at once."""

    def __init__(self, busy: int = 0, gate: threading.Event | None = None) -> None:
        super().__init__(REGTEST)
        self.busy = busy
        self.gate = gate
        self.calls = 0
        self.running = 0
        self.most_at_once = 0
        self.started = threading.Event()
        self._count = threading.Lock()

    def scantxoutset(self, descriptors: list[str | JsonObject]) -> JsonObject:
        with self._count:
            self.calls += 1
            if self.calls <= self.busy:
                raise NodeRejectedError(IN_PROGRESS, code=-8)
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        self.started.set()
        try:
            if self.gate is not None:
                assert self.gate.wait(10)
            return super().scantxoutset(descriptors)
        finally:
            with self._count:
                self.running -= 1


class TimedNode(BusyNode):
    """A node that takes a timeout per scan, as the RPC client does."""

    scan_timeout_s = 7.0

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[float] = []

    def scan_utxo_set(self, descriptors: list[str | JsonObject], *, timeout_s: float) -> JsonObject:
        self.timeouts.append(timeout_s)
        return self.scantxoutset(descriptors)


class RefusingNode(BusyNode):
    def scantxoutset(self, descriptors: list[str | JsonObject]) -> JsonObject:
        self.calls += 1
        raise NodeRejectedError("scantxoutset: Invalid descriptor (code -8)", code=-8)


@pytest.fixture
def wallet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> EmbitCustodyWallet:
    monkeypatch.setattr(reserve_sources, "SCAN_POLL_S", 0.005)
    custody = create_sandbox_custody(tmp_path / "keys", REGTEST)
    return EmbitCustodyWallet(custody.descriptor, REGTEST, [])


Node = TypeVar("Node", bound=FakeChain)


def _funded(node: Node, wallet: EmbitCustodyWallet) -> Node:
    node.fund(wallet.derive(0, 1).script_hex, 150_000, mine=True)
    return node


def test_a_node_busy_with_another_scan_is_asked_again_until_it_scans(
    wallet: EmbitCustodyWallet,
) -> None:
    node = _funded(BusyNode(busy=3), wallet)
    assert scan_custody(node, wallet, {0: 2}, timeout_s=5).total_sats == 150_000
    assert node.calls == 4


def test_waiting_for_a_busy_node_ends_at_the_scan_timeout(wallet: EmbitCustodyWallet) -> None:
    node = _funded(BusyNode(busy=10**9), wallet)
    started = time.monotonic()
    with pytest.raises(NodeUnavailableError, match="busy with another UTXO scan"):
        scan_custody(node, wallet, {0: 2}, timeout_s=0.1)
    assert 0.1 <= time.monotonic() - started < 2
    assert node.calls > 2 and node.running == 0


def test_another_rejection_is_not_retried(wallet: EmbitCustodyWallet) -> None:
    node = _funded(RefusingNode(), wallet)
    with pytest.raises(NodeRejectedError, match="Invalid descriptor"):
        scan_custody(node, wallet, {0: 2}, timeout_s=5)
    assert node.calls == 1


def test_the_scan_gets_the_time_left_of_its_own_timeout(wallet: EmbitCustodyWallet) -> None:
    node = _funded(TimedNode(), wallet)
    scan_custody(node, wallet, {0: 2}, timeout_s=42)
    scan_custody(node, wallet, {0: 2})  # the node's own scan timeout
    assert 41 < node.timeouts[0] <= 42 and 6 < node.timeouts[1] <= 7
    with pytest.raises(InvalidInputError):
        scan_custody(node, wallet, {0: 2}, timeout_s=0)


def test_one_scan_at_a_time_in_a_process(wallet: EmbitCustodyWallet) -> None:
    gate = threading.Event()
    node = _funded(BusyNode(gate=gate), wallet)
    results: list[int] = []

    def scan() -> None:
        results.append(scan_custody(node, wallet, {0: 2}, timeout_s=10).total_sats)

    first = threading.Thread(target=scan)
    first.start()
    assert node.started.wait(5)
    second = threading.Thread(target=scan)
    second.start()
    with pytest.raises(NodeUnavailableError, match="another custody scan of this process"):
        scan_custody(node, wallet, {0: 2}, timeout_s=0.05)
    time.sleep(0.05)
    assert node.calls == 1  # the second waits for the first, not the node
    gate.set()
    first.join(10)
    second.join(10)
    assert results == [150_000, 150_000]
    assert node.calls == 2 and node.most_at_once == 1


def test_the_scan_timeout_is_configured_in_the_reserves_section(tmp_path: Path) -> None:
    config = DeploymentConfig(data_dir=tmp_path, reserves=ReservesConfig(scan_timeout_s=1800))
    assert reserves_settings(config).scan_timeout_s == 1800
    assert reserves_settings(DeploymentConfig(data_dir=tmp_path)).scan_timeout_s == 600
    with pytest.raises(ValueError, match="scan_timeout_s"):
        ReservesConfig(scan_timeout_s=0)
