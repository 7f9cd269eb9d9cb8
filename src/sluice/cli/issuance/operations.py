"""`sluice issuance list|show|run|guard|set-party`: the router's operations, its rounds, the
mint guard's figures and where a customer's minted iSTSi goes."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.table import Table

from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    fail,
    note,
    print_json,
    print_table,
    stop_signals,
    utc_now,
)
from sluice.cli.issuance.wiring import (
    database_only,
    issuance_app,
    issuance_session,
    operation_lines,
    print_steps,
    write,
)
from sluice.domain.audit import AuditEntry
from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.ledger import check_party_id
from sluice.ports.issuance import OPERATION_TYPES, OperationStatus
from sluice.services.issuance_router import RouterTick, operation_json

STATUSES: tuple[OperationStatus, ...] = (
    "pending",
    "waiting",
    "held",
    "stuck",
    "completed",
    "compensated",
    "resolved",
    "returned",
)
# `issuance run` without --once: the pause between rounds, bounded both ways.
INTERVAL_S_DEFAULT = 2.0


def _one_of(option: str, value: str | None, allowed: tuple[str, ...]) -> str | None:
    if value is not None and value not in allowed:
        fail(f"{option} {value!r}: expected one of {', '.join(allowed)}")
    return value


@issuance_app.command("list")
def issuance_list(
    type_: Annotated[
        str | None,
        typer.Option("--type", help=f"Only this type: {', '.join(OPERATION_TYPES)}."),
    ] = None,
    status: Annotated[
        str | None, typer.Option("--status", help=f"Only this status: {', '.join(STATUSES)}.")
    ] = None,
    customer: Annotated[str | None, typer.Option("--customer", help="Only this customer.")] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, max=10_000)] = 1000,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """The router's operations (Bitcoin deposits minted as iSTSi, redemptions), newest first."""
    kind = _one_of("--type", type_, OPERATION_TYPES)
    state = _one_of("--status", status, STATUSES)
    with database_only(db, as_json=as_json) as database, database.uow() as uow:
        found = uow.issuance.operations(type=kind, status=state, customer_id=customer, limit=limit)
    rows = [operation_json(op) for op in found]
    if as_json:
        print_json(rows)
        return
    if not rows:
        note("no issuance operations" + (" match" if kind or state or customer else ""))
        return
    table = Table(title=f"{len(rows)} operation(s)")
    # The id (a deposit's names its txid) folds; the short columns are kept whole.
    table.add_column("id", overflow="fold", min_width=20)
    for column in ("type", "customer", "sats", "status", "step", "attempts", "updated"):
        table.add_column(column, no_wrap=True)
    table.add_column("last error", overflow="fold")
    for row in rows:
        table.add_row(
            row["id"],
            row["type"],
            row["customer_id"],
            str(row["amount_sats"]),
            row["status"],
            row["step"],
            str(row["attempts"]),
            row["updated_at"],
            row["last_error"] or "",
        )
    print_table(table)


@issuance_app.command("show")
def issuance_show(
    operation_id: Annotated[str, typer.Argument(help="The operation's id.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """One operation with every step record: its attempts, waits, holds, compensations and the
    operators' overrides."""
    with database_only(db, as_json=as_json) as database:
        with database.uow() as uow:
            op = uow.issuance.get_operation(operation_id)
            steps = uow.issuance.steps(operation_id) if op is not None else []
        if op is None:
            raise NotFoundError(f"unknown issuance operation {operation_id!r}")
    record = operation_json(op, steps)
    if as_json:
        print_json(record)
        return
    write(operation_lines(record))
    print_steps(record["steps"])


def _tick_json(tick: RouterTick) -> dict[str, Any]:
    return {
        "paused": tick.paused,
        "looked_at": tick.looked_at,
        "steps": tick.steps,
        "completed": list(tick.completed),
        "stuck": list(tick.stuck),
        "held": list(tick.held),
        "lost": list(tick.lost),
        "rebuilt": tick.rebuilt,
        "error": tick.error,
    }


def _round_lines(router: dict[str, Any], transfers: dict[str, int]) -> list[str]:
    if router["paused"]:
        return ["paused: the router runs no step until the pause is lifted"]
    lines = [
        f"router: {router['looked_at']} operation(s) due, {router['steps']} step(s) recorded",
        f"held transfers: {transfers['approved']} approved, {transfers['rejected']} rejected, "
        f"{transfers['resent']} resent, {transfers['failed']} failed",
    ]
    for name in ("completed", "stuck", "held", "lost"):
        if router[name]:
            lines.append(f"  {name}: {', '.join(router[name])}")
    if router["error"]:
        lines.append(f"  error: {router['error']}")
    return lines


@issuance_app.command("run")
def issuance_run(
    once: Annotated[bool, typer.Option("--once", help="One round, then exit.")] = False,
    interval: Annotated[
        float,
        typer.Option("--interval", min=0.1, max=3600, help="Seconds between rounds."),
    ] = INTERVAL_S_DEFAULT,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Run the router: the operations due, step by step, and the issuer's decisions on held
    iSTSi transfers. One round with --once, else rounds until Ctrl-C (or SIGTERM), which stop
    after the round running. `sluice serve` runs the same rounds on its own loop."""
    from sluice.services.issuance_transfers import decide_held_transfers

    totals: dict[str, int] = {
        "rounds": 0,
        "steps": 0,
        "approved": 0,
        "rejected": 0,
        "resent": 0,
        "failed": 0,
    }
    last: dict[str, Any] = {}
    with issuance_session(db, as_json=as_json) as issuance, stop_signals() as stopping:
        while True:
            tick = _tick_json(issuance.router.tick())
            held = decide_held_transfers(issuance.context)
            transfers = {
                "approved": held.approved,
                "rejected": held.rejected,
                "resent": held.resent,
                "failed": held.failed,
            }
            last = {"router": tick, "transfers": transfers}
            totals["rounds"] += 1
            totals["steps"] += tick["steps"]
            for name, count in transfers.items():
                totals[name] += count
            if once:
                break
            if not as_json and (tick["steps"] or any(transfers.values()) or tick["error"]):
                write(_round_lines(tick, transfers))
            deadline = time.monotonic() + interval
            while not stopping() and time.monotonic() < deadline:
                time.sleep(min(0.1, interval))
            if stopping():
                break
    if as_json:
        print_json(last if once else {**last, "totals": totals})
        return
    if once:
        write(_round_lines(last["router"], last["transfers"]))
    else:
        write([f"stopped after {totals['rounds']} round(s), {totals['steps']} step(s) recorded"])


@issuance_app.command("guard")
def issuance_guard(db: DbOption = None, as_json: JsonOption = False) -> None:
    """The mint guard: iSTSi supply (ours and the ledger's), the Bitcoin reserves, redemptions
    pending, the headroom left for minting, and whether minting is halted."""
    from sluice.services.mint_guard import guard_status

    with issuance_session(db, as_json=as_json) as issuance:
        status = guard_status(issuance.context)
    if as_json:
        print_json(status)
        return
    lines = [
        f"supply: {status['supply_sats']} sats (ledger: {status['ledger_supply_sats']})",
        f"reserves: {status['reserves_sats']} sats",
        f"pending redemptions: {status['pending_redemptions_sats']} sats",
        f"other pending payouts: {status['pending_payouts_sats']} sats",
        f"deposits not minted yet: {status['unminted_deposits_sats']} sats",
        f"headroom: {status['headroom_sats']} sats",
    ]
    if status["minting_halted"]:
        lines.append(f"minting HALTED: {status['halted_reason']}")
        lines.append("  resume with `sluice issuance resume-minting --reason …` (approval-gated)")
    else:
        lines.append("minting: on")
    write(lines)


@issuance_app.command("set-party")
def issuance_set_party(
    customer: Annotated[str, typer.Option("--customer", help="The customer.")],
    party: Annotated[str, typer.Option("--party", help="Their own party on the token ledger.")],
    mint_to_party: Annotated[
        bool,
        typer.Option(
            "--mint-to-party",
            help="Mint their deposits' iSTSi to that party (default: to the treasury, credited "
            "to their account in the books).",
        ),
    ] = False,
    actor: ActorOption = None,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Register a customer's own party on the token ledger (replacing an earlier one): it names
    them in held transfers, and with --mint-to-party their minted iSTSi goes there. Audited."""
    who = actor_name(actor)
    with database_only(db, as_json=as_json) as database:
        checked = check_party_id(party)
        at = utc_now()
        with database.uow() as uow:
            if uow.accounts.customer(customer) is None:
                raise NotFoundError(f"unknown customer {customer!r}")
            before = uow.issuance.party_of_customer(customer)
            if not uow.issuance.set_customer_party(
                customer, checked, at, mint_to_party=mint_to_party
            ):
                raise InvalidInputError(f"party {checked} belongs to another customer")
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=f"customer_party:{customer}:{checked}:{at.isoformat()}",
                        operation="issuance_customer_party_set",
                        actor=who,
                        recorded_at=at,
                        customer_id=customer,
                        parameters={"party": checked, "mint_to_party": mint_to_party},
                        state_changes=[{"party": checked, "was": before}],
                    )
                ]
            )
            uow.commit()
    record = {"customer_id": customer, "party": checked, "mint_to_party": mint_to_party}
    if as_json:
        print_json(record)
        return
    where = "that party" if mint_to_party else "the treasury (credited in the books)"
    write([f"customer {customer}: party {checked}; minted iSTSi goes to {where}"])
