"""``sluice instruments``: onboard, list, disable and enable instruments."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from sluice.cli.common import (
    ActorOption,
    DbOption,
    JsonOption,
    actor_name,
    fail,
    fail_with,
    note,
    open_database,
    print_json,
    print_table,
)
from sluice.domain.errors import SluiceError
from sluice.domain.ledger import InstrumentId
from sluice.ports import InstrumentRecord
from sluice.services.reference import list_instruments, onboard_instrument, set_instrument_enabled

instruments_app = typer.Typer(
    no_args_is_help=True, help="Onboarded instruments: add, list, disable, enable."
)


AdminOption = Annotated[str, typer.Option("--admin", help="The instrument admin's party.")]
IdOption = Annotated[str, typer.Option("--id", help="The admin's id for the instrument.")]


def _limits(text: str | None) -> dict[str, str]:
    """``key=value,key=value`` → a dict (the values are checked as exact decimals later)."""
    if text is None or not text.strip():
        return {}
    limits: dict[str, str] = {}
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            fail(f"--limits {text!r}: expected key=value pairs separated by commas")
        if name in limits:
            fail(f"--limits: {name} is given twice")
        limits[name] = value
    return limits


def instrument_json(record: InstrumentRecord) -> dict[str, object]:
    return {
        "instrument": record.instrument.as_json(),
        "registry_url": record.registry_url,
        "trusted": record.trusted,
        "enabled": record.enabled,
        "transfer_kinds": list(record.transfer_kinds),
        "limits": dict(record.limits),
    }


@instruments_app.command("add")
def instruments_add(
    admin: AdminOption,
    instrument_id: IdOption,
    registry: Annotated[str, typer.Option("--registry", help="The admin's registry URL.")],
    trusted: Annotated[
        bool,
        typer.Option(
            "--trusted/--untrusted", help="Whether the exchange trusts the admin (required)."
        ),
    ],
    transfer_kinds: Annotated[
        str,
        typer.Option(
            "--transfer-kinds", help="What withdrawals may become: direct, offer, or both."
        ),
    ] = "direct",
    limits: Annotated[
        str | None,
        typer.Option(
            "--limits", metavar="KEY=VALUE,…", help="e.g. withdrawal_max=5000,transfer_fee=0.1"
        ),
    ] = None,
    db: DbOption = None,
    actor: ActorOption = None,
) -> None:
    """Onboard an instrument of a trusted admin so its deposits are credited."""
    instrument = InstrumentId(admin, instrument_id)
    parsed = _limits(limits)
    database = open_database(db)
    try:
        added = onboard_instrument(
            database.uow,
            instrument,
            registry_url=registry,
            trusted=trusted,
            transfer_kinds=transfer_kinds,
            limits=parsed,
            actor=actor_name(actor),
        )
        record = next(r for r in list_instruments(database.uow) if r.instrument == instrument)
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()
    if not added:
        note(
            f"instrument {instrument.key()} is already onboarded "
            f"({'enabled' if record.enabled else 'disabled'}); nothing changed"
        )
        return
    shown = ", ".join(f"{k}={v}" for k, v in record.limits.items()) or "none"
    note(
        f"onboarded {instrument.key()} for {', '.join(record.transfer_kinds)} withdrawals; "
        f"limits: {shown}"
    )


@instruments_app.command("list")
def instruments_list(db: DbOption = None, as_json: JsonOption = False) -> None:
    """Every onboarded instrument, enabled or not."""
    database = open_database(db)
    try:
        records = list_instruments(database.uow)
    finally:
        database.dispose()
    if as_json:
        print_json([instrument_json(r) for r in records])
        return
    if not records:
        note("no instruments onboarded")
        return
    table = Table(title=f"{len(records)} instrument(s)")
    for column in ("id", "admin", "enabled", "trusted", "transfer kinds", "registry", "limits"):
        table.add_column(column)
    for r in records:
        table.add_row(
            r.instrument.id,
            r.instrument.admin,
            "yes" if r.enabled else "no",
            "yes" if r.trusted else "no",
            ", ".join(r.transfer_kinds),
            r.registry_url or "—",
            ", ".join(f"{k}={v}" for k, v in r.limits.items()),
        )
    print_table(table)


def _set_enabled(
    admin: str, instrument_id: str, enabled: bool, db: str | None, actor: str | None
) -> None:
    instrument = InstrumentId(admin, instrument_id)
    who = actor_name(actor)
    database = open_database(db)
    try:
        set_instrument_enabled(database.uow, instrument, enabled, actor=who)
    except SluiceError as exc:
        fail_with(exc)
    finally:
        database.dispose()
    if enabled:
        note(f"instrument {instrument.key()} enabled: its deposits are credited again")
    else:
        note(
            f"instrument {instrument.key()} disabled: its deposits go to suspense with an "
            "alert, and no withdrawal of it can be requested"
        )


@instruments_app.command("disable")
def instruments_disable(
    admin: AdminOption, instrument_id: IdOption, db: DbOption = None, actor: ActorOption = None
) -> None:
    """Stop crediting deposits of an instrument (they go to suspense) and refuse withdrawals."""
    _set_enabled(admin, instrument_id, False, db, actor)


@instruments_app.command("enable")
def instruments_enable(
    admin: AdminOption, instrument_id: IdOption, db: DbOption = None, actor: ActorOption = None
) -> None:
    """Credit deposits of a disabled instrument again."""
    _set_enabled(admin, instrument_id, True, db, actor)


def register(app: typer.Typer) -> None:
    app.add_typer(instruments_app, name="instruments")
