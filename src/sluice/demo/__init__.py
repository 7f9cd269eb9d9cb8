"""The sluice demo: an exchange, its customers and the token ledger, end to end in a few seconds.

What it shows, on the embedded defaults (two SQLite files in one data folder, the embedded
reference ledger):

1. **Setup.** A ledger with three nodes: ``dso`` (the token admins), ``exchange`` (the treasury)
   and ``wallets`` (the customers). A Canton-Coin-like instrument (``Amulet`` of the DSO party,
   "Canton Coin", CC) and a second token, USDX, whose admin allows no transfer preapprovals. The
   treasury pre-approves incoming Canton Coin. The Integration DB knows both instruments, five
   customers and Mallory, who is on the exchange's block list, each with a deposit account.
2. **Activity.** Customers tap the faucet and make a few hundred 1-step deposits to the treasury
   with their deposit account as the reason; a few carry a reason nobody knows (or none). One
   customer and Mallory send USDX, which can only arrive as an offer; both stay pending. The clock
   moves, so the exchange's node emits checkpoints.
3. **Crash and resume.** ``sluice ingest`` runs as a separate process and is killed with SIGKILL
   part-way. A second run resumes from the cursor the first one committed (not from zero) and
   ends at the ledger end. It reads the ledger file read-only; the demo process is its only
   writer.
4. **The workers**, in the demo process against the same ledger, each step followed by ingestion
   (in process from here on): the deposit worker accepts the customer's USDX offer (credited once
   ingestion sees the accept) and rejects Mallory's (the compliance gate denies her party, the
   funds go back to her). The customers' wallets pre-approve CC; customers withdraw CC, paid in
   one step, and USDX, paid as offers the receiver answers: one accepted (paid), one rejected
   (credited back). Then a withdrawal worker dies right after submitting a withdrawal, before
   recording it; a new worker takes over, does not submit it again, ingestion sees the transfer,
   and the clock moves past the attempt's ``trec_tgt`` without anything being refunded: the
   withdrawal is paid exactly once (one transfer with its id as reason on the ledger).
5. **Compliance.** An officer freezes a customer, whose next deposit is held instead of credited;
   the officer reviews the queue, unfreezes the customer and releases it; the audit trail's hash
   chain is verified.
6. **The HTTP API.** The application ``sluice serve`` runs (``create_app``) in uvicorn on a free
   local port, on the demo's Integration DB, driven with httpx as an exchange's systems and staff
   would: API keys per role (made by the ``create_api_key`` service; only their ids are shown), a
   customer's balance and deposit instructions, a withdrawal sent twice with one
   ``Idempotency-Key`` (one withdrawal), a large one (above a threshold set low for the demo)
   proposed and approved by two distinct staff members, an emergency pause (a withdrawal request
   answers 503 with code 50, a balance read still works) and resume, a request without credentials
   (401) and one for another customer's balance (404), and the pause in the audit trail with its
   request's correlation id. The demo's withdrawal worker then pays both withdrawals.
7. **The books.** What each customer deposited against what sluice credited, suspense, the
   pending offers, every deposit offer and withdrawal with its outcome, each customer's balance
   (deposits credited − withdrawals paid, refunds included), the cursor, alerts, and the journal
   invariant ``Σ customers + suspense + in-flight + fees = treasury holdings``.
8. **Bitcoin custody**, on the embedded defaults: a sandbox 2-of-3 custody (three keys in the data
   folder, two sign) on the in-memory chain. The customers get deposit addresses and deposit (one
   of them dust); the watcher confirms the deposits at 6. A reorg two blocks deep drops one
   unconfirmed deposit (``reorged``) and moves another to a new block (the same deposit,
   confirmed once). Three payouts leave in one 2-of-3 transaction, fee deducted; the worker dies
   between broadcasting and recording it and the next one finds it in the mempool; blocks come
   without it and it is fee-bumped (a new txid, the same inputs and payouts), then completed at
   6 confirmations. The custody balance at the watcher's height and hash equals the chain's UTXO
   set for the custody's descriptors.
9. **iSTSi issuance**, on that custody and the demo's ledger (an issuer party and iSTSi, every
   transfer between parties held for KYC). Alice and Bob deposit BTC from their own wallets; at 6
   confirmations the watcher opens an operation per deposit and the router runs it (KYC of the
   customer and of the deposit's input addresses, reserve, the mint guard, the mint to the
   treasury), and ingestion credits each customer. A reorg 6 blocks deep takes both minted
   deposits off the chain and back: minting halts with a critical alert, the same deposits have
   one operation each and were minted once, and the officer resumes minting. Dave is minted on
   his own party; Erin's deposit, sent from an address on a (one-entry) sanctions list, is held.
   Alice and Bob redeem: burned, both payouts in one 2-of-3 batch, completed at 6 confirmations
   with what each received. Dave's iSTSi transfer to Carol's party is held, approved by the KYC
   hold worker and accepted; his transfer to Erin, whom the officer froze, is rejected. The mint
   guard's supply, reserves and headroom close it, with the treasury's iSTSi on the ledger equal
   to the customers' on the books.
10. **Reserves and a proof of reserves**, on that world. The reserve figures per instrument (what
    is owed against what backs it, each side with the ledger offset or block it was read at) and
    iSTSi's reserve ratio; a reconciliation comparing all three sources (the treasury's active
    contracts on the ledger, custody's ``scantxoutset``, iSTSi supply against reserves), clean.
    Then Bitcoin leaves custody in a transaction sluice never made: the next run classes the
    shortfall critical and halts minting; the Bitcoin comes back, a run is clean again, and
    resuming minting is proposed by the officer and approved by a second member of staff. A
    proof-of-liabilities snapshot publishes one root per instrument (the customers' balances in
    the journal); Alice's inclusion proof verifies with the standalone verifier against the
    published root, a copy claiming one unit more is refused, and the signed reserves document
    verifies against the custody descriptor, the node and the roots.
11. **The cross-token exchange**, on that world: the exchange's desk funds its inventory of
    Canton Coin from a suspense deposit (an operator proposes, a treasurer approves); oracle
    prices from files in the data folder (ISTSI/CC crossed from ISTSI/USD and CC/USD, each with
    a secondary); Alice quotes and swaps iSTSi for CC (the same quote again: the same swap); the
    CC/USD primary goes stale (degraded: the fallback fee), then its secondary (offline: quotes
    and swaps refused), then both publish again (healthy); an expired quote and a price that
    moved past the minimum are refused; a fresh quote executes; the books balance.
12. **Events, metrics, alerts and breakers**, on the embedded defaults. An alert rule (events
    waiting in the outbox) fires against the metrics and an operator acknowledges it; the ledger
    circuit breaker opens under injected faults, refuses, probes after its wait (an injected
    clock) and closes; the relay publishes the outbox to the in-process bus with a subscriber
    (counts by type, one envelope), a second round publishes nothing and a copy is dropped as a
    duplicate; the rule resolves, and a /metrics excerpt shows operations, the outbox's pending
    count and the reserve ratios.

**Over the wire.** ``--via-http`` serves the demo's ledger on a local port (as ``sluice ledger
serve`` does) and ``--ledger-url URL`` uses a ``sluice ledger serve`` already running (on a fresh
ledger: ``--create --ledger NEW_FILE``). Then every call of the exchange side — both ingestion runs
(the killed one is a separate process again), the workers' commands, the registries — goes through
the Canton client over HTTP and WebSocket, and the outside world (the admins, the customers'
wallets, the clock) is driven through the server's sandbox control API.

Every run starts from scratch: the data folder is wiped first (only when it is empty or was made
by the demo). What the customers do is a pure function of the seed (:func:`plan`), so a test can
check the report against it.

**Layout.** :mod:`~sluice.demo.world` builds the world (the plan, the ledger, the Integration DB,
the exchange's services); each chapter is a module with a ``CHAPTER`` (:class:`Chapter`: ``run``
then ``show``), listed in order in :data:`CHAPTERS`; :mod:`~sluice.demo.report` holds the
formatting and the summary tables read from the books between chapters. A new chapter is one
module and one line in :data:`CHAPTERS`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.panel import Panel

from sluice.demo import (
    api,
    bitcoin,
    compliance,
    events,
    exchange,
    ingestion,
    issuance,
    report,
    reserves,
    setup,
    workers,
)
from sluice.demo.api import API_CUSTOMER, API_OTHER, API_WITHDRAWALS
from sluice.demo.compliance import HELD_AMOUNT, HELD_CUSTOMER
from sluice.demo.ingestion import ingest_command, sluice_command
from sluice.demo.next_steps import show_dashboard, show_next_steps
from sluice.demo.report import Chapter, Sections, money
from sluice.demo.world import (
    BLOCKED,
    CUSTOMERS,
    EVERYONE,
    NODE,
    SYMBOLS,
    TAP,
    Customer,
    Exchange,
    FolderInUseError,
    Ledger,
    Plan,
    PlannedWithdrawal,
    Wire,
    build_ledger,
    plan,
    prepare_folder,
    set_up_books,
)
from sluice.ledger.local import EmbeddedLedger
from sluice.ledger.local.remote import RemoteLedger
from sluice.ledger.local.server import LedgerServer

__all__ = [
    "API_CUSTOMER",
    "API_OTHER",
    "API_WITHDRAWALS",
    "BLOCKED",
    "CHAPTERS",
    "CUSTOMERS",
    "EVERYONE",
    "HELD_AMOUNT",
    "HELD_CUSTOMER",
    "SYMBOLS",
    "TAP",
    "Chapter",
    "Customer",
    "FolderInUseError",
    "Plan",
    "PlannedWithdrawal",
    "ingest_command",
    "money",
    "plan",
    "run_demo",
    "sluice_command",
]

TITLE = (
    "sluice demo: customer deposits, ingestion killed and resumed, deposit offers, "
    "withdrawals (one through a worker crash), the HTTP API, the books"
)

# The chapters, in the order they run; each prints its sections as soon as it has run, numbered
# in this order.
CHAPTERS: tuple[Chapter[Any], ...] = (
    setup.CHAPTER,  # the ledger and the books the demo built
    ingestion.CHAPTER,  # `sluice ingest` in another process, killed, then resumed
    report.DEPOSITS_CREDITED,  # what sluice credited each customer, the offers left pending
    workers.CHAPTER,  # deposit offers answered, withdrawals paid, a worker crash
    report.WITHDRAWALS_SETTLED,  # every withdrawal's outcome, each customer's balance
    compliance.CHAPTER,  # a deposit held, reviewed and released
    api.CHAPTER,  # the exchange's systems and staff over HTTP
    report.BOOKS,  # the cursor, the alerts, the books per instrument and the invariant
    bitcoin.CHAPTER,  # custody: deposits, a reorg, a batched payout through a crash and a bump
    issuance.CHAPTER,  # iSTSi: minted at 6, a reorg, a held deposit, redemptions, held transfers
    reserves.CHAPTER,  # reserves, reconciliation (a shortfall halts minting), proof of reserves
    exchange.CHAPTER,  # inventory funded, iSTSi swapped for CC, a feed going stale, refusals
    events.CHAPTER,  # the relay to the in-process bus, an alert rule, a breaker, /metrics
)


def tell(chapter: Chapter[Any], exchange: Exchange, console: Console, sections: Sections) -> bool:
    """Run one chapter, then print what happened; True when its checks hold."""
    story = chapter.run(exchange, console.status)
    return chapter.show(console, story, sections)


def run_demo(
    data_dir: Path,
    *,
    seed: int,
    console: Console,
    via_http: bool = False,
    ledger_url: str | None = None,
) -> bool:
    """Run the demo in ``data_dir`` (wiped first); True when every check of the report holds:
    the books balance, each customer got what they deposited, suspense holds the rest, both
    offers were pending and then accepted / rejected as planned, ingestion resumed from its
    cursor to the ledger end, every withdrawal ended as planned (the crashed one paid exactly
    once), each balance is deposits credited − withdrawals paid, and every request of the HTTP
    API answered as planned.

    ``via_http``: serve the ledger on a local port and go through the Canton client;
    ``ledger_url``: the same against a ``sluice ledger serve`` already running."""
    started = time.perf_counter()
    console.print(Panel.fit(TITLE, subtitle=f"seed {seed}", style="bold"))
    try:
        prepare_folder(data_dir)
    except FolderInUseError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return False
    the_plan = plan(seed)
    path = data_dir / "ledger.db"
    embedded: EmbeddedLedger | None = None
    server: LedgerServer | None = None
    ledger: Ledger
    wire: Wire | None = None
    if ledger_url is not None:
        wire = Wire(ledger_url.rstrip("/"))
        ledger = RemoteLedger(wire.base_url)
    else:
        embedded = EmbeddedLedger.open(str(path), seed=seed, checkpoint_interval_s=60.0)
        ledger = embedded
        if via_http:
            server = LedgerServer(embedded, default_node=NODE).start()
            wire = Wire(server.url, started_here=True)
            ledger = RemoteLedger(wire.base_url)
    try:
        with console.status("building the ledger: taps, deposits, offers, checkpoints…"):
            world = build_ledger(data_dir, path, ledger, the_plan, wire)
    except FolderInUseError as exc:
        console.print(f"[bold red]error:[/] {exc}")
        return False
    try:
        database = set_up_books(world)
        try:
            exchange = Exchange(world, ledger, database)
            sections = Sections()
            checks = [tell(chapter, exchange, console, sections) for chapter in CHAPTERS]
        finally:
            database.dispose()
    finally:
        if world.http is not None:
            world.http.close()
        ledger.close()
        if server is not None:
            server.stop()
        if embedded is not None and embedded is not ledger:
            embedded.close()
    show_next_steps(console, world)
    ok = all(checks)
    elapsed = time.perf_counter() - started
    with_start_up = time.time() - psutil.Process().create_time()
    verdict = "[bold green]all checks hold[/]" if ok else "[bold red]some checks failed[/]"
    console.print(
        f"\n{verdict} — the demo took {elapsed:.1f}s ({with_start_up:.1f}s with Python start-up)"
    )
    show_dashboard(console, world)
    return ok
