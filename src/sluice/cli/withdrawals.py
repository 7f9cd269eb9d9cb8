"""``sluice withdraw`` and ``sluice withdrawals``: request, list and hold withdrawals."""

from __future__ import annotations

import sys
from typing import Annotated, get_args

import typer
from rich.table import Table

from sluice.cli.common import (
    DbOption,
    JsonOption,
    LedgerOption,
    LedgerUrlOption,
    SandboxClockOption,
    TreasuryOption,
    current_time,
    fail,
    fail_with,
    kyc_registry,
    note,
    open_database,
    print_json,
    print_table,
    short_amount,
    timestamp_or_none,
    treasury_party,
    withdrawal_json,
    withdrawal_settings,
)
from sluice.config import Settings
from sluice.domain.errors import InvalidInputError, SluiceError
from sluice.domain.ledger import InstrumentId, check_party_id, format_timestamp
from sluice.domain.withdrawals import WithdrawalStatus
from sluice.services.ingestion import connection_name
from sluice.services.recovery import hold_state, largest_live_trec_tgt
from sluice.services.withdrawals import (
    hold_until_safe,
    list_withdrawals,
    release_hold,
    request_withdrawal,
)

withdrawals_app = typer.Typer(
    no_args_is_help=True, help="Withdrawals: list them; hold submissions after a DB restore."
)


STATUSES: tuple[str, ...] = get_args(WithdrawalStatus)


def instrument_option(instrument: str | None, admin: str | None, id_: str | None) -> InstrumentId:
    """``--instrument ADMIN:ID`` (split at the last colon: party ids contain ``::``), or
    ``--admin`` and ``--id``."""
    if instrument is not None:
        if admin is not None or id_ is not None:
            fail("name the instrument with --instrument ADMIN:ID or with --admin and --id")
        head, sep, tail = instrument.rpartition(":")
        if not sep or not head or not tail or head.endswith(":"):
            fail(f"--instrument {instrument!r} is not ADMIN:ID (e.g. dso::1220abcd:Amulet)")
        admin, id_ = head, tail
    if not admin or not id_ or not id_.strip():
        fail("name the instrument: --instrument ADMIN:ID, or --admin and --id")
    try:
        check_party_id(admin)
    except InvalidInputError as exc:
        fail_with(exc)
    return InstrumentId(admin, id_)


def withdraw(
    customer: Annotated[str, typer.Option("--customer", help="The customer paying out.")],
    to: Annotated[str, typer.Option("--to", help="The receiving party.")],
    amount: Annotated[str, typer.Option("--amount", help="Exact decimal amount.")],
    key: Annotated[
        str, typer.Option("--key", help="Idempotency key: the same key again returns the first.")
    ],
    instrument: Annotated[
        str | None, typer.Option("--instrument", metavar="ADMIN:ID", help="The instrument.")
    ] = None,
    admin: Annotated[str | None, typer.Option("--admin", help="Instrument admin party.")] = None,
    instrument_id: Annotated[str | None, typer.Option("--id", help="Instrument id.")] = None,
    treasury: TreasuryOption = None,
    db: DbOption = None,
    ledger: LedgerOption = None,
    ledger_url: LedgerUrlOption = None,
    sandbox_clock: SandboxClockOption = False,
    as_json: JsonOption = False,
) -> None:
    """Request a withdrawal: debit the customer and queue the payout (workers submit it)."""
    settings = Settings.from_environment()
    what = instrument_option(instrument, admin, instrument_id)
    party = treasury_party(treasury, settings)
    now = current_time(ledger, ledger_url, sandbox_clock)
    database = open_database(db, settings)
    try:
        record = request_withdrawal(
            database.uow,
            treasury=party,
            customer_id=customer,
            receiver=to,
            instrument=what,
            amount=amount,
            idempotency_key=key,
            clock=lambda: now,
            settings=withdrawal_settings(),
            compliance=kyc_registry(),
        )
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()
    if as_json:
        print_json(withdrawal_json(record))
        return
    lines = [
        f"withdrawal {record.id}: {record.status}",
        f"  {short_amount(record.amount)} {record.instrument.id} "
        f"from customer {record.customer_id} to {record.receiver}",
        f"  inputs: {', '.join(record.inputs) if record.inputs else 'none reserved yet'}",
        f"  trec_tgt: {timestamp_or_none(record.trec_tgt) or 'set when inputs are reserved'}",
    ]
    sys.stdout.write("\n".join(lines) + "\n")


def _statuses(option: str | None) -> tuple[str, ...]:
    if option is None:
        return ()
    chosen = tuple(s.strip() for s in option.split(",") if s.strip())
    unknown = [s for s in chosen if s not in STATUSES]
    if unknown or not chosen:
        fail(f"--status {option!r}: expected one or more of {', '.join(STATUSES)}")
    return chosen


@withdrawals_app.command("list")
def withdrawals_list(
    status: Annotated[
        str | None, typer.Option("--status", help="Only these statuses (comma-separated).")
    ] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 1000,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Withdrawals and pool upkeep records, newest state first."""
    statuses = _statuses(status)
    database = open_database(db)
    try:
        records = list_withdrawals(
            database.uow, statuses=statuses, customer_id=customer, limit=limit
        )
    finally:
        database.dispose()
    if as_json:
        print_json([withdrawal_json(r) for r in records])
        return
    if not records:
        note("no withdrawals" + (" match" if status or customer else ""))
        return
    table = Table(title=f"{len(records)} withdrawal(s)")
    for column in ("id", "kind", "customer", "amount", "instrument", "status", "attempt"):
        table.add_column(column, no_wrap=column == "id")
    table.add_column("trec_tgt")
    table.add_column("failure / last error")
    for r in records:
        table.add_row(
            r.id,
            r.kind,
            r.customer_id or "—",
            short_amount(r.amount),
            r.instrument.id,
            r.status,
            f"{r.attempt}/{r.attempts_max}",
            timestamp_or_none(r.trec_tgt) or "—",
            r.failure or r.last_error or "",
        )
    print_table(table)


@withdrawals_app.command("hold")
def withdrawals_hold(
    until_safe: Annotated[
        bool,
        typer.Option(
            "--until-safe",
            help="Hold submissions until ingestion has passed every trec_tgt an attempt "
            "forgotten by a DB restore could have.",
        ),
    ] = False,
    release: Annotated[bool, typer.Option("--release", help="Lift the hold now.")] = False,
    treasury: TreasuryOption = None,
    node: Annotated[str | None, typer.Option("--node", help="Ledger node the party is on.")] = None,
    db: DbOption = None,
    ledger: LedgerOption = None,
    ledger_url: LedgerUrlOption = None,
    sandbox_clock: SandboxClockOption = False,
) -> None:
    """Show the withdrawal hold, set it (--until-safe) or lift it (--release)."""
    if until_safe and release:
        fail("--until-safe and --release are alternatives: pass one of them")
    settings = Settings.from_environment()
    database = open_database(db, settings)
    try:
        if release:
            release_hold(database.uow)
            note("hold released: workers submit withdrawals again")
            return
        if until_safe:
            span = withdrawal_settings()
            now = current_time(ledger, ledger_url, sandbox_clock)
            latest = largest_live_trec_tgt(database.uow)
            until = hold_until_safe(database.uow, clock=lambda: now, settings=span)
            why = (
                "the latest trec_tgt of a withdrawal in flight"
                if latest is not None and latest == until
                else f"now ({format_timestamp(now)}) + trec_span_s ({span.trec_span_s:g} s): an "
                "attempt submitted just before the backup was taken could have that trec_tgt"
            )
            note(f"withdrawal submissions held until {format_timestamp(until)}: {why}")
            note(
                "workers submit nothing until ingestion has passed that record time; "
                "then they lift the hold themselves"
            )
            return
        party = treasury_party(treasury, settings)
        state = hold_state(database.uow, connection_name(party, node or settings.node))
    finally:
        database.dispose()
    reached = timestamp_or_none(state.ingested_record_time) or "nothing yet"
    if state.until is None:
        note("no hold: workers submit withdrawals")
    elif state.in_force:
        note(
            f"withdrawal submissions held until {format_timestamp(state.until)}; "
            f"ingestion has reached {reached}"
        )
    else:
        note(
            f"the hold until {format_timestamp(state.until)} is over (ingestion has reached "
            f"{reached}); the next worker run clears it"
        )


def register(app: typer.Typer) -> None:
    app.command("withdraw")(withdraw)
    app.add_typer(withdrawals_app, name="withdrawals")
