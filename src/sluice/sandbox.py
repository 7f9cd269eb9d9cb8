"""An exchange wired to the embedded ledger in one process: the test bed of the workers, the
simulation, the demo and the benchmarks.

:meth:`Sandbox.create` builds a small world — nodes ``registry`` (the token admins), ``exchange``
(the treasury) and ``wallets`` (the customers); Canton Coin (``Amulet`` of the DSO party, 1-step:
everyone pre-approves it) and USDX (its issuer allows no preapprovals, so every transfer is an
offer); customers ``cust-N`` with deposit accounts ``acct-N`` and a party each — and hands out the
services bound to it: ingestion, the withdrawal worker, the deposit worker. The clock of every
service is the ledger's own (record times are what ``trec_tgt`` is compared with).

With ``via_http=True`` the sandbox also serves its ledger over HTTP on a local port
(:class:`~sluice.ledger.local.server.LedgerServer`, as ``sluice ledger serve`` does) and every call
of the exchange side — ingestion's reads, the workers' commands, the registries — goes through the
Canton client over that socket, exactly as against a real participant node. The customers' wallets,
the token admins and the clock stay in process: they are the outside world.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from sluice import bootstrap
from sluice.domain.ledger import InstrumentId
from sluice.domain.risk import RiskRules
from sluice.domain.withdrawals import Withdrawal
from sluice.ledger.canton import (
    CantonCommands,
    CantonLedgerClient,
    LedgerHttp,
    NoAuth,
    registry_lookup,
)
from sluice.ledger.local import EmbeddedLedger, RegistryPolicy
from sluice.ledger.local.adapters import EmbeddedCommands, embedded_registries
from sluice.ledger.local.server import LedgerServer
from sluice.ports import (
    ComplianceGate,
    LedgerClient,
    LedgerCommands,
    RegistryLookup,
    UnitOfWorkFactory,
)
from sluice.services.compliance import ComplianceSettings, KycRegistry, RegistryGate
from sluice.services.deposit_worker import DepositWorker, DepositWorkerSettings
from sluice.services.ingestion import (
    Ingestion,
    IngestionProgress,
    IngestionSettings,
    connection_name,
)
from sluice.services.reference import onboard_instrument, register_customer
from sluice.services.withdrawals import (
    WithdrawalSettings,
    WithdrawalWorker,
    request_withdrawal,
)

EXCHANGE_NODE = "exchange"


def sandbox_registry(risk: RiskRules | None = None) -> KycRegistry:
    """The default limit ladder and no sanctions list; the risk rules are off unless given,
    because the sandbox's customers are scripts that deposit and withdraw at machine speed — the
    very pattern the velocity and smurfing rules exist to catch."""
    off = RiskRules(
        velocity_weight=0, structuring_weight=0, smurfing_weight=0, new_counterparty_weight=0
    )
    return KycRegistry(ComplianceSettings(risk=risk or off))


@dataclass(frozen=True, slots=True)
class SandboxWorld:
    """The parties and instruments of the sandbox's small world (see :func:`create_world`)."""

    treasury: str
    coin: InstrumentId
    token: InstrumentId


def create_world(ledger: EmbeddedLedger, *, coin_fee: Decimal = Decimal(0)) -> SandboxWorld:
    """The sandbox's world on an empty ledger, without customers: nodes ``registry``, ``exchange``
    and ``wallets``; the DSO's Canton Coin (``Amulet``, 1-step: the treasury pre-approves it) and
    the issuer's USDX (offers only), both admins on ``registry``; the treasury on ``exchange``."""
    for node in ("registry", EXCHANGE_NODE, "wallets"):
        ledger.add_node(node)
    dso = ledger.allocate_party("dso", "registry")
    issuer = ledger.allocate_party("issuer", "registry")
    treasury = ledger.allocate_party("treasury", EXCHANGE_NODE)
    coin = ledger.create_instrument(dso, "Amulet", RegistryPolicy(transfer_fee=coin_fee))
    token = ledger.create_instrument(issuer, "USDX", RegistryPolicy(preapprovals_allowed=False))
    ledger.create_preapproval(treasury, coin)
    return SandboxWorld(treasury=treasury, coin=coin, token=token)


def onboard_world(
    uow: UnitOfWorkFactory, world: SandboxWorld, *, coin_fee: Decimal = Decimal(0)
) -> None:
    """Onboard the world's two instruments in the Integration DB (idempotent): Amulet for direct
    transfers, USDX for offers."""
    onboard_instrument(
        uow,
        world.coin,
        transfer_kinds="direct",
        limits={"transfer_fee": str(coin_fee)} if coin_fee else None,
    )
    onboard_instrument(uow, world.token, transfer_kinds="offer")


@dataclass
class Sandbox:
    ledger: EmbeddedLedger
    database: bootstrap.Database
    treasury: str
    coin: InstrumentId
    token: InstrumentId
    customers: dict[str, str] = field(default_factory=dict)  # customer id → party
    withdrawal_settings: WithdrawalSettings = field(default_factory=WithdrawalSettings)
    ingestion_settings: IngestionSettings = field(default_factory=IngestionSettings)
    node: str = EXCHANGE_NODE
    server: LedgerServer | None = None
    # The KYC registry every flow of the sandbox passes (see ``sandbox_registry``).
    compliance: KycRegistry = field(default_factory=lambda: sandbox_registry())
    _http: LedgerHttp | None = None
    _registries: RegistryLookup | None = None

    @classmethod
    def create(
        cls,
        database_url: str,
        *,
        customers: int = 3,
        seed: int = 1,
        ledger: EmbeddedLedger | None = None,
        coin_fee: Decimal = Decimal(0),
        tap: Decimal = Decimal(10_000),
        withdrawal_settings: WithdrawalSettings | None = None,
        ingestion_settings: IngestionSettings | None = None,
        via_http: bool = False,
    ) -> Sandbox:
        ledger = ledger or EmbeddedLedger.open(None, seed=seed, checkpoint_interval_s=30.0)
        for node in ("registry", EXCHANGE_NODE, "wallets"):
            ledger.add_node(node)
        dso = ledger.allocate_party("dso", "registry")
        issuer = ledger.allocate_party("issuer", "registry")
        treasury = ledger.allocate_party("treasury", EXCHANGE_NODE)
        coin = ledger.create_instrument(dso, "Amulet", RegistryPolicy(transfer_fee=coin_fee))
        token = ledger.create_instrument(issuer, "USDX", RegistryPolicy(preapprovals_allowed=False))
        ledger.create_preapproval(treasury, coin)
        database = bootstrap.database(database_url)
        server = LedgerServer(ledger, default_node=EXCHANGE_NODE).start() if via_http else None
        onboard_instrument(
            database.uow,
            coin,
            transfer_kinds="direct",
            limits={"transfer_fee": str(coin_fee)} if coin_fee else None,
            registry_url=server.registry_url(coin.admin) if server else None,
        )
        onboard_instrument(
            database.uow,
            token,
            transfer_kinds="offer",
            registry_url=server.registry_url(token.admin) if server else None,
        )
        sandbox = cls(
            ledger=ledger,
            database=database,
            treasury=treasury,
            coin=coin,
            token=token,
            withdrawal_settings=withdrawal_settings or WithdrawalSettings(),
            ingestion_settings=ingestion_settings or IngestionSettings(),
            server=server,
        )
        if server is not None:
            sandbox._http = LedgerHttp(server.node_url(EXCHANGE_NODE), NoAuth(), retries_max=2)
        for n in range(customers):
            sandbox.add_customer(f"cust-{n}", f"acct-{n}", tap=tap)
        return sandbox

    def add_customer(self, customer_id: str, account: str, *, tap: Decimal) -> str:
        party = self.ledger.allocate_party(customer_id, "wallets")
        self.ledger.create_preapproval(party, self.coin)
        if tap:
            self.ledger.tap(party, self.coin, tap)
            self.ledger.tap(party, self.token, tap)
        register_customer(self.database.uow, customer_id, customer_id, [account])
        self.customers[customer_id] = party
        return party

    # -- wiring -----------------------------------------------------------------------------------

    @property
    def connection(self) -> str:
        return connection_name(self.treasury, self.node)

    def clock(self) -> datetime:
        return self.ledger.time()

    @property
    def via_http(self) -> bool:
        return self._http is not None

    def ledger_client(self) -> LedgerClient:
        """The treasury node's reading side: in process, or the Canton client over HTTP."""
        if self._http is not None:
            return CantonLedgerClient(self._http)
        return self.ledger.client(self.treasury)

    @property
    def commands(self) -> LedgerCommands:
        if self._http is not None:
            # The embedded ledger commits at once, so the margin only has to keep a late
            # submission out; a real node needs its tolerance plus its submission delay.
            margin = self.withdrawal_settings.trec_span_s / 4
            return CantonCommands(self._http, clock=self.clock, local_margin_s=margin)
        return EmbeddedCommands(self.ledger)

    @property
    def registries(self) -> RegistryLookup:
        if self.server is not None:
            if self._registries is None:
                # As in a deployment: each admin's registry URL is onboarding's, read from the
                # DB; one client per registry for the sandbox's life.
                self._registries = registry_lookup(bootstrap.registry_urls(self.database.uow, {}))
            return self._registries
        return embedded_registries(self.ledger)

    def ingestion(self, **kwargs: object) -> Ingestion:
        return Ingestion(
            self.database.uow,
            self.ledger_client(),
            self.treasury,
            connection=self.connection,
            settings=self.ingestion_settings,
            sleep=lambda _s: None,
            **{"compliance": self.compliance, **kwargs},  # type: ignore[arg-type]
        )

    def ingest(self) -> IngestionProgress:
        return self.ingestion().run()

    def withdrawal_worker(
        self,
        *,
        commands: LedgerCommands | None = None,
        after_submit: Callable[[Withdrawal], None] | None = None,
        settings: WithdrawalSettings | None = None,
    ) -> WithdrawalWorker:
        return WithdrawalWorker(
            self.database.uow,
            commands or self.commands,
            self.registries,
            treasury=self.treasury,
            connection=self.connection,
            clock=self.clock,
            settings=settings or self.withdrawal_settings,
            after_submit=after_submit,
            compliance=self.compliance,
        )

    def deposit_worker(
        self,
        gate: ComplianceGate | None = None,
        settings: DepositWorkerSettings | None = None,
    ) -> DepositWorker:
        return DepositWorker(
            self.database.uow,
            self.commands,
            self.registries,
            gate or RegistryGate(self.database.uow, self.compliance, self.clock),
            treasury=self.treasury,
            settings=settings,
        )

    def withdraw(
        self,
        customer_id: str,
        amount: Decimal | str,
        *,
        instrument: InstrumentId | None = None,
        key: str,
        receiver: str | None = None,
    ) -> Withdrawal:
        return request_withdrawal(
            self.database.uow,
            treasury=self.treasury,
            customer_id=customer_id,
            receiver=receiver or self.customers[customer_id],
            instrument=instrument or self.coin,
            amount=amount,
            idempotency_key=key,
            clock=self.clock,
            settings=self.withdrawal_settings,
            compliance=self.compliance,
        )

    def deposit(
        self, customer_id: str, amount: Decimal | str, *, instrument: InstrumentId | None = None
    ) -> str | None:
        """The customer sends ``amount`` to the treasury with their deposit account as reason;
        returns the offer's contract id when it became one."""
        account = "acct-" + customer_id.removeprefix("cust-")
        result = self.ledger.transfer(
            self.customers[customer_id],
            self.treasury,
            instrument or self.coin,
            Decimal(amount),
            reason=account,
        )
        return result.instruction_cid

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
        if self.server is not None:
            self.server.stop()
        self.database.dispose()
        self.ledger.close()
