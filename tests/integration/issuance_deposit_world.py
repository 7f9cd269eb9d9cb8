"""A small world for the Bitcoin deposit → iSTSi tests: a sandbox custody (the real embit wallet),
the in-memory chain (``FakeChain``) and the watcher on an Integration DB (SQLite or PostgreSQL),
the embedded ledger with iSTSi registered and its issuer, the KYC registry (optionally with a
sanctions list naming a sender's address) and the router running ``bitcoin_deposit``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.fakechain.records import build
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS
from sluice.ledger.local.engine import EmbeddedLedger
from sluice.ledger.local.issuer import EmbeddedIssuerLedger, create_istsi
from sluice.ports.issuance import IssuanceOperation, MintRecord, StepRecord
from sluice.screening import ListedSanctions
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.btc_addresses import deposit_address
from sluice.services.btc_watcher import DepositWatcher
from sluice.services.compliance import KycRegistry
from sluice.services.issuance_deposit import DEFINITION, mint_id
from sluice.services.issuance_intake import deposit_operation_id
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.issuance_settings import IssuanceContext

CHAIN = CHAINS["regtest"]
START = datetime(2026, 12, 5, 6, 0, tzinfo=UTC)
CONFIRMATIONS = 2


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


def sender_script(n: int) -> str:
    """A P2WPKH script outside custody (a customer's own wallet)."""
    return "0014" + f"{n:02x}" * 20


def write_sanctions(directory: Path, address: str) -> ListedSanctions:
    """An OFAC SDN set of one entity whose remarks list ``address``."""
    directory.mkdir(parents=True, exist_ok=True)
    empty = ",".join(['"-0-"'] * 7)
    (directory / "sdn.csv").write_text(
        f'10001,"EVIL SENDER LTD","-0-","CYBER2",{empty},'
        f'"Digital Currency Address - XBT {address}; Digital Currency Address - LTC {address}."\n'
    )
    return ListedSanctions.load(directory)


@dataclass
class World:
    db: bootstrap.Database
    wallet: EmbitCustodyWallet
    registry: KycRegistry
    chain: FakeChain = field(default_factory=lambda: FakeChain(CHAIN))
    clock: Clock = field(default_factory=Clock)
    settings: BitcoinSettings = field(
        default_factory=lambda: BitcoinSettings(chain=CHAIN, confirmations_min=CONFIRMATIONS)
    )
    ledger: EmbeddedLedger = field(init=False)
    issuer: EmbeddedIssuerLedger = field(init=False)
    treasury: str = field(init=False)
    ctx: IssuanceContext = field(init=False)
    watcher: DepositWatcher = field(init=False)
    router: IssuanceRouter = field(init=False)

    def __post_init__(self) -> None:
        self.ledger = EmbeddedLedger.open(None, seed=16, checkpoint_interval_s=None)
        for node in ("registry", "exchange"):
            self.ledger.add_node(node)
        issuer_party = self.ledger.allocate_party("issuer", "registry")
        self.treasury = self.ledger.allocate_party("treasury", "exchange")
        create_istsi(self.ledger, issuer_party)
        self.issuer = EmbeddedIssuerLedger(self.ledger, issuer_party)
        self.ctx = IssuanceContext(
            uow=self.db.uow,
            clock=self.clock,
            issuer=self.issuer,
            registry=self.registry,
            wallet=self.wallet,
            node=self.chain,
            treasury=self.treasury,
            bitcoin=self.settings,
        )
        self.watcher = self.new_watcher()
        self.router = IssuanceRouter(self.ctx, {"bitcoin_deposit": DEFINITION})

    def new_watcher(self) -> DepositWatcher:
        return DepositWatcher(self.db.uow, self.chain, self.wallet, self.settings, self.clock)

    # -- customers and deposits -----------------------------------------------------------------

    def customer(self, customer: str, *, tier: int = 1, status: str = "active") -> None:
        with self.db.uow() as uow:
            uow.reference.add_customer(customer, customer.title())
            uow.compliance.set_profile(customer, at=self.clock(), tier=tier, status=status)  # type: ignore[arg-type]
            uow.commit()

    def deposit(self, customer: str, sats: int, *, sender: int = 1, confirm: bool = True) -> str:
        """``sats`` paid from ``sender``'s wallet to the customer's deposit address (the input
        is a real, readable output); confirmed by the watcher unless told not to. Answers the
        operation id."""
        address = deposit_address(self.db.uow, self.wallet, customer, clock=self.clock)
        source, _ = self.chain.fund(sender_script(sender), sats + 2_000, mine=True)
        tx = build([(bytes.fromhex(source), 0, b"\x51", 0xFFFFFFFE)], [(address.script_hex, sats)])
        txid = self.chain.sendrawtransaction(tx.serialize().hex())
        self.chain.mine()
        if confirm:
            self.confirm()
        return deposit_operation_id(txid, 0)

    def direct_deposit(self, customer: str, sats: int) -> str:
        """A deposit whose input spends a non-standard script (no address: unreadable)."""
        address = deposit_address(self.db.uow, self.wallet, customer, clock=self.clock)
        txid, vout = self.chain.fund(address.script_hex, sats, mine=True, sender_script="51")
        self.confirm()
        return deposit_operation_id(txid, vout)

    def confirm(self) -> None:
        self.chain.mine(CONFIRMATIONS)
        tick = self.watcher.run_once()
        assert tick.error is None

    # -- reads ------------------------------------------------------------------------------------

    def operation(self, operation_id: str) -> IssuanceOperation:
        with self.db.uow() as uow:
            op = uow.issuance.get_operation(operation_id)
        assert op is not None
        return op

    def operations(self) -> list[IssuanceOperation]:
        with self.db.uow() as uow:
            return uow.issuance.operations()

    def steps(self, operation_id: str) -> list[StepRecord]:
        with self.db.uow() as uow:
            return uow.issuance.steps(operation_id)

    def mint(self, operation_id: str) -> MintRecord | None:
        with self.db.uow() as uow:
            return uow.issuance.get_mint(mint_id(operation_id))

    def credit(self, operation_id: str) -> None:
        """What ingestion does when it books the mint."""
        with self.db.uow() as uow:
            uow.issuance.mark_mint_credited(mint_id(operation_id))
            uow.commit()

    def alerts(self) -> list[Any]:
        with self.db.uow() as uow:
            return uow.books.alerts()

    def halted(self) -> bool:
        with self.db.uow() as uow:
            return uow.issuance.minting_state().minting_halted

    def supply(self) -> int:
        return self.issuer.supply()

    def treasury_sats(self) -> int:
        holdings = self.ledger.active_holdings(self.treasury, self.issuer.instrument)
        return sum(int(h.amount * 100_000_000) for h in holdings)
