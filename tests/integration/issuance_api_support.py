"""iSTSi issuance around an API test world (:func:`tests.api_support.api_world`): iSTSi created
on the sandbox's embedded ledger (its admin the sandbox's issuer party), a sandbox custody wallet
(embit, 2 of 3 keys) on an in-memory chain, the router with every operation type, set as the
application's ``ApiContext.issuance``. Ingestion's booking of a mint is simulated by posting the
``issuance_mint`` journal transaction SPEC16 says it posts."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from sluice import bootstrap
from sluice.bitcoin.fakechain import FakeChain
from sluice.bitcoin.keys import create_sandbox_custody, load_signing_keys
from sluice.bitcoin.wallet import EmbitCustodyWallet
from sluice.domain.chains import CHAINS
from sluice.domain.journal import (
    AccountRef,
    JournalTransaction,
    Posting,
    customer_account_name,
    treasury_account_name,
)
from sluice.domain.ledger import InstrumentId
from sluice.ledger.local.issuer import EmbeddedIssuerLedger, create_istsi
from sluice.ports.issuance import sats_to_amount
from sluice.services.bitcoin_settings import BitcoinSettings
from sluice.services.issuance_operations import DEFINITIONS
from sluice.services.issuance_router import IssuanceRouter
from sluice.services.issuance_settings import IssuanceContext
from tests.api_support import ApiWorld
from tests.ledger_holdings import mirror_holdings

CHAIN = CHAINS["regtest"]
CONFIRMATIONS = 2


@dataclass
class IssuanceWorld:
    api: ApiWorld
    issuance: bootstrap.Issuance
    wallet: EmbitCustodyWallet
    chain: FakeChain
    istsi: InstrumentId
    minted: int = 0

    @property
    def ctx(self) -> IssuanceContext:
        return self.issuance.context

    def give_istsi(self, customer: str, sats: int) -> None:
        """A mint to the treasury and ingestion's credit of it to the customer."""
        self.minted += 1
        ctx = self.ctx
        ctx.issuer.mint(
            ctx.treasury, sats, reason=f"test:{customer}", command_id=f"test-mint:{self.minted}"
        )
        sandbox = self.api.sandbox
        mirror_holdings(sandbox.database, sandbox.ledger, ctx.treasury, self.istsi)
        value = sats_to_amount(sats)
        treasury = AccountRef(treasury_account_name(ctx.treasury), self.istsi)
        account = AccountRef(customer_account_name(customer), self.istsi)
        with ctx.uow() as uow:
            uow.withdrawals.post(
                [
                    JournalTransaction(
                        id=f"test:issuance_mint:{self.minted}",
                        kind="issuance_mint",
                        postings=(Posting(treasury, value), Posting(account, -value)),
                    )
                ]
            )
            uow.commit()

    def outside_address(self, name: str) -> str:
        """A P2WPKH address outside custody (a customer's own wallet)."""
        address = self.wallet.address_of("0014" + hashlib.sha256(name.encode()).hexdigest()[:40])
        assert address is not None
        return address


def custody_wallet(directory: Path) -> EmbitCustodyWallet:
    sandbox = create_sandbox_custody(directory, CHAIN)
    keys = load_signing_keys(sandbox.key_files[:2], chain=CHAIN)
    return EmbitCustodyWallet(sandbox.descriptor, CHAIN, keys)


def add_issuance(world: ApiWorld, wallet: EmbitCustodyWallet) -> IssuanceWorld:
    """Configure issuance for ``world``'s application (``ApiContext.issuance``); ``wallet`` from
    :func:`custody_wallet` (made once per module: key generation is slow)."""
    sandbox = world.sandbox
    issuer_party = sandbox.token.admin
    istsi = create_istsi(sandbox.ledger, issuer_party)
    chain = FakeChain(CHAIN)
    ctx = IssuanceContext(
        uow=sandbox.database.uow,
        clock=world.context.clock,
        issuer=EmbeddedIssuerLedger(sandbox.ledger, issuer_party),
        registry=sandbox.compliance,
        wallet=wallet,
        node=chain,
        treasury=sandbox.treasury,
        bitcoin=BitcoinSettings(chain=CHAIN, confirmations_min=CONFIRMATIONS),
    )
    issuance = bootstrap.Issuance(
        context=ctx,
        router=IssuanceRouter(ctx, DEFINITIONS),
        description="iSTSi issuance (test)",
        close=lambda: None,
    )
    world.context.issuance = issuance
    return IssuanceWorld(api=world, issuance=issuance, wallet=wallet, chain=chain, istsi=istsi)
