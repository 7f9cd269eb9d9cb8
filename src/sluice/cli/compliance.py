"""``sluice compliance``: the KYC registry and the compliance officer's work: screen, check,
review, release, return, freeze, limits, flags."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from sluice import bootstrap
from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    TreasuryOption,
    actor_name,
    compliance_database,
    deployment,
    fail,
    fail_with,
    kyc_registry,
    note,
    open_database,
    print_json,
    print_table,
    profile_json,
    short_amount,
    timestamp_or_none,
    treasury_party,
    utc_now,
    withdrawal_json,
)
from sluice.config import Settings
from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.compliance import OPERATIONS, HeldDeposit, ReviewItem, check_operation
from sluice.domain.errors import SluiceError
from sluice.services.compliance import describe_decisions, verify_operation_compliance
from sluice.services.compliance_officer import (
    change_tier,
    close_review,
    flag_address,
    limits_from_text,
    review_queue,
    screen_customers,
    set_customer_status,
    unflag_address,
)
from sluice.services.compliance_officer import release_hold as release_deposit
from sluice.services.compliance_officer import return_hold as return_deposit
from sluice.services.compliance_officer import set_limits as set_tier_limits

compliance_app = typer.Typer(
    no_args_is_help=True,
    help="The KYC registry and the compliance officer: screen, check, review, release, freeze.",
)


ReasonOption = Annotated[str, typer.Option("--reason", help="Why (goes into the audit trail).")]


def hold_json(hold: HeldDeposit) -> dict[str, object]:
    return {
        "id": hold.id,
        "status": hold.status,
        "customer_id": hold.customer_id,
        "deposit_account": hold.deposit_account,
        "sender": hold.sender,
        "instrument": f"{hold.instrument_admin}:{hold.instrument_id}",
        "amount": format_amount(hold.amount),
        "update_id": hold.update_id,
        "why": hold.why,
        "held_at": timestamp_or_none(hold.held_at),
        "decided_by": hold.decided_by,
        "decided_at": timestamp_or_none(hold.decided_at),
        "withdrawal_id": hold.withdrawal_id,
    }


def review_json(review: ReviewItem) -> dict[str, object]:
    return {
        "id": review.id,
        "kind": review.kind,
        "customer_id": review.customer_id,
        "subject": review.subject,
        "reason": review.reason,
        "opened_at": timestamp_or_none(review.opened_at),
    }


@compliance_app.command("screen")
def compliance_screen(
    list_dir: Annotated[
        Path, typer.Option("--list", help="Directory of the sanctions list (OFAC CSV / JSONL).")
    ],
    name: Annotated[str | None, typer.Option("--name", help="One name to screen.")] = None,
    batch: Annotated[
        Path | None, typer.Option("--batch", help="A file of names, one per line.")
    ] = None,
    prefix: Annotated[
        str | None,
        typer.Option("--prefix", help="Which OFAC file set of the directory (e.g. full-)."),
    ] = None,
) -> None:
    """Screen names against a sanctions list: one JSON line per name."""
    if (name is None) == (batch is None):
        fail("give exactly one of --name NAME or --batch FILE")
    try:
        screen = bootstrap.sanctions_screen(list_dir, prefix)
        if batch is not None:
            try:
                text = batch.read_text(encoding="utf-8")
            except OSError as exc:
                fail(f"cannot read {batch}: {exc.strerror or exc}")
            names = [line.strip() for line in text.splitlines() if line.strip()]
        else:
            names = [name or ""]
        for line in bootstrap.screening_json_lines(screen, names):
            sys.stdout.write(line + "\n")
    except SluiceError as exc:
        fail_with(exc)


@compliance_app.command("check")
def compliance_check(
    customer: Annotated[str, typer.Option("--customer", help="The customer.")],
    operation: Annotated[
        str,
        typer.Option("--operation", help="deposit, withdrawal, mint, burn, transfer, exchange."),
    ],
    amount: Annotated[str, typer.Option("--amount", help="Amount in reference units.")],
    counterparty: Annotated[
        str | None, typer.Option("--counterparty", help="The other party, if any.")
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Ask the KYC registry whether an operation would be allowed now (audited, uses nothing)."""
    with compliance_database(db) as database:
        decision = verify_operation_compliance(
            database.uow,
            kyc_registry(),
            customer,
            check_operation(operation),
            parse_amount(amount, field="amount"),
            counterparty,
            at=utc_now(),
            actor=actor_name(actor),
        )
    print_json(describe_decisions([decision])[0])
    raise typer.Exit(0 if decision.allowed else 1)


@compliance_app.command("queue")
def compliance_queue(db: DbOption = None, as_json: JsonOption = False) -> None:
    """The review queue: open reviews, held deposits, customers not active, flagged addresses."""
    database = open_database(db)
    try:
        queue = review_queue(database.uow)
    finally:
        database.dispose()
    if as_json:
        print_json(
            {
                "reviews": [review_json(r) for r in queue.reviews],
                "holds": [hold_json(h) for h in queue.holds],
                "customers": [profile_json(p) for p in queue.customers],
                "flagged_addresses": [
                    {"address": a, "reason": r, "flagged_by": b, "flagged_at": timestamp_or_none(t)}
                    for a, r, b, t in queue.flagged_addresses
                ],
            }
        )
        return
    holds = Table(title=f"held deposits ({len(queue.holds)})")
    for column in ("hold", "customer", "sender", "amount", "why"):
        holds.add_column(column)
    for hold in queue.holds:
        holds.add_row(
            hold.id,
            hold.customer_id or "-",
            hold.sender,
            f"{short_amount(hold.amount)} {hold.instrument_id}",
            hold.why,
        )
    print_table(holds)
    reviews = Table(title=f"open reviews ({len(queue.reviews)})")
    for column in ("review", "kind", "customer", "reason"):
        reviews.add_column(column)
    for review in queue.reviews:
        reviews.add_row(review.id, review.kind, review.customer_id or "-", review.reason)
    print_table(reviews)
    customers = Table(title=f"customers not active ({len(queue.customers)})")
    for column in ("customer", "tier", "status", "reason"):
        customers.add_column(column)
    for profile in queue.customers:
        customers.add_row(
            profile.customer_id, str(profile.tier), profile.status, profile.status_reason or ""
        )
    print_table(customers)
    if queue.flagged_addresses:
        flagged = Table(title=f"flagged addresses ({len(queue.flagged_addresses)})")
        for column in ("address", "reason", "by"):
            flagged.add_column(column)
        for address, reason, by, _at in queue.flagged_addresses:
            flagged.add_row(address, reason, by)
        print_table(flagged)


@compliance_app.command("release")
def compliance_release(
    hold_id: Annotated[str, typer.Argument(help="The held deposit (see `compliance queue`).")],
    reason: ReasonOption,
    customer: Annotated[
        str | None,
        typer.Option("--customer", help="Credit this customer (when the deposit named none)."),
    ] = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Release a held deposit: credit it to its customer."""
    with compliance_database(db) as database:
        hold = release_deposit(
            database.uow,
            hold_id,
            actor=actor_name(actor),
            at=utc_now(),
            reason=reason,
            customer_id=customer,
            registry=kyc_registry(),
        )
    print_json(hold_json(hold))


@compliance_app.command("return")
def compliance_return(
    hold_id: Annotated[str, typer.Argument(help="The held deposit (see `compliance queue`).")],
    reason: ReasonOption,
    treasury: TreasuryOption = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Return a held deposit to its sender (queued as a payout; the workers send it)."""
    settings = Settings.from_environment()
    party = treasury_party(treasury or deployment().treasury.party, settings)
    with compliance_database(db, settings) as database:
        record = return_deposit(
            database.uow,
            hold_id,
            treasury=party,
            actor=actor_name(actor),
            at=utc_now(),
            reason=reason,
            registry=kyc_registry(),
        )
    print_json(withdrawal_json(record))


def _status_command(
    customer: str, status: str, reason: str, actor: str | None, db: str | None
) -> None:
    with compliance_database(db) as database:
        profile = set_customer_status(
            database.uow, customer, status, actor=actor_name(actor), at=utc_now(), reason=reason
        )
    print_json(profile_json(profile))


CustomerArgument = Annotated[str, typer.Argument(help="The customer.")]


@compliance_app.command("freeze")
def compliance_freeze(
    customer: CustomerArgument, reason: ReasonOption, actor: ActorOption = None, db: DbOption = None
) -> None:
    """Freeze a customer: every operation of theirs is refused, deposits are held."""
    _status_command(customer, "frozen", reason, actor, db)


@compliance_app.command("unfreeze")
def compliance_unfreeze(
    customer: CustomerArgument, reason: ReasonOption, actor: ActorOption = None, db: DbOption = None
) -> None:
    """Make a frozen, under-review or blacklisted customer active again."""
    _status_command(customer, "active", reason, actor, db)


@compliance_app.command("status")
def compliance_status(
    customer: CustomerArgument,
    status: Annotated[str, typer.Argument(help="active, under_review, frozen or blacklisted.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Set a customer's KYC status."""
    _status_command(customer, status, reason, actor, db)


@compliance_app.command("tier")
def compliance_tier(
    customer: CustomerArgument,
    tier: Annotated[int, typer.Argument(min=0, max=4, help="The new KYC tier, 0–4.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Change a customer's KYC tier (after enhanced verification, say)."""
    with compliance_database(db) as database:
        profile = change_tier(
            database.uow, customer, tier, actor=actor_name(actor), at=utc_now(), reason=reason
        )
    print_json(profile_json(profile))


@compliance_app.command("limits")
def compliance_limits(
    tier: Annotated[
        int | None, typer.Option("--tier", min=0, max=4, help="Tier to change.")
    ] = None,
    operation: Annotated[
        str | None, typer.Option("--operation", help="Operation to change.")
    ] = None,
    per_operation: Annotated[
        str | None, typer.Option("--per-operation", help="Amount or 'none'.")
    ] = None,
    daily: Annotated[str | None, typer.Option("--daily", help="Amount or 'none'.")] = None,
    monthly: Annotated[str | None, typer.Option("--monthly", help="Amount or 'none'.")] = None,
    reason: Annotated[str | None, typer.Option("--reason", help="Why (audited).")] = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Show the limit ladder in force; with --tier and --operation, set one step of it."""
    database = open_database(db)
    registry = kyc_registry()
    try:
        if tier is not None or operation is not None:
            if tier is None or operation is None or reason is None:
                fail("setting limits needs --tier, --operation and --reason")
            set_tier_limits(
                database.uow,
                tier,
                operation,
                limits_from_text(per_operation, daily, monthly),
                actor=actor_name(actor),
                at=utc_now(),
                reason=reason,
            )
        with database.uow() as uow:
            ladder = registry.session(uow, [], since=utc_now(), lock=False).ladder
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()
    print_json(
        [
            {"tier": t, "operation": op, **ladder.of(t, op).as_dict()}
            for t in range(5)
            for op in OPERATIONS
        ]
    )


@compliance_app.command("flag")
def compliance_flag(
    address: Annotated[str, typer.Argument(help="A party or address.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Flag an address: every operation with it is refused at once, deposits from it held."""
    with compliance_database(db) as database:
        added = flag_address(
            database.uow, address, actor=actor_name(actor), at=utc_now(), reason=reason
        )
    note(f"{address} flagged" if added else f"{address} was already flagged")


@compliance_app.command("unflag")
def compliance_unflag(
    address: Annotated[str, typer.Argument(help="A flagged party or address.")],
    reason: ReasonOption,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Lift an address's flag."""
    with compliance_database(db) as database:
        unflag_address(database.uow, address, actor=actor_name(actor), at=utc_now(), reason=reason)
    note(f"{address} unflagged")


@compliance_app.command("close-review")
def compliance_close_review(
    review_id: Annotated[str, typer.Argument(help="The review (see `compliance queue`).")],
    resolution: Annotated[str, typer.Option("--resolution", help="What was decided and why.")],
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Close a review item."""
    with compliance_database(db) as database:
        close_review(
            database.uow, review_id, actor=actor_name(actor), at=utc_now(), resolution=resolution
        )
    note(f"review {review_id} closed")


@compliance_app.command("screen-customers")
def compliance_screen_customers(
    list_dir: Annotated[
        Path | None,
        typer.Option(
            "--list", help="Sanctions list directory (default: compliance.sanctions_list)."
        ),
    ] = None,
    prefix: Annotated[str | None, typer.Option("--prefix", help="OFAC file set prefix.")] = None,
    actor: ActorOption = None,
    db: DbOption = None,
) -> None:
    """Screen every name of every customer (primary and other names, in any script); matches
    go under review (run after each list update). One JSON line per matching name on stdout
    (which name, its script, the listed name and the transliteration it matched through), a
    sentence per match on stderr."""
    config = deployment()
    directory = list_dir or config.compliance.sanctions_list
    if directory is None:
        fail("no sanctions list: pass --list DIR or set compliance.sanctions_list")
    with compliance_database(db) as database:
        screen = bootstrap.sanctions_screen(directory, prefix or config.compliance.sanctions_prefix)
        matches = screen_customers(
            database.uow,
            bootstrap.name_screening(screen),
            actor=actor_name(actor),
            at=utc_now(),
            on_progress=lambda done, total: note(f"screened {done}/{total} names"),
        )
    for hit in matches:
        line = {"customer_id": hit.customer_id, **dataclasses.asdict(hit.result)}
        line["score"] = round(hit.result.score, 1)
        line.update(
            script=hit.name.script,
            primary=hit.name.primary,
            transliteration=hit.transliteration,
        )
        sys.stdout.write(json.dumps(line, ensure_ascii=False) + "\n")
        via = f" via {hit.transliteration}" if hit.transliteration else ""
        note(
            f"{hit.customer_id}: {'name' if hit.name.primary else 'other name'} "
            f"{hit.name.name!r} ({hit.name.script or 'script not recorded'}) matches "
            f"{hit.result.matched_name!r} ({hit.result.entity_id}, score "
            f"{hit.result.score:.1f}{via})"
        )
    customers = len({hit.customer_id for hit in matches})
    note(
        f"{len(matches)} matching name(s) of {customers} customer(s); see `sluice compliance queue`"
    )


def register(app: typer.Typer) -> None:
    app.add_typer(compliance_app, name="compliance")
