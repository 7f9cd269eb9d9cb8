"""Customers, their names and deposit accounts, and the instruments the exchange has onboarded.

A customer gives a primary name and any number of other names (up to
:data:`~sluice.domain.customer_names.OTHER_NAMES_MAX`): other scripts, maiden names, aliases.
Every one is screened against the sanctions list when it is recorded
(:mod:`sluice.services.customer_screening`).

Onboarding an instrument is what makes its deposits count: ingestion credits a deposit only when
its instrument is onboarded *and enabled*; anything else goes to suspense with an alert. Only
instruments whose admin the exchange trusts are onboarded, each with the transfer kinds its
withdrawals may take (``direct``: 1-step; ``offer``: the receiver must accept) and optional
limits, kept as exact decimal strings.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from urllib.parse import urlsplit

from sluice.domain.amounts import format_amount, parse_amount
from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import check_tier
from sluice.domain.customer_names import CustomerName, check_customer_name, check_other_names
from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.exchange import EXCHANGE_INVENTORY
from sluice.domain.ledger import InstrumentId, check_party_id
from sluice.ports import InstrumentRecord, UnitOfWork, UnitOfWorkFactory
from sluice.services.customer_screening import NameScreening, ScreeningOutcome, screen_and_hold

# The transfer kinds a withdrawal of an onboarded instrument may take (see DESIGN §1).
WITHDRAWAL_TRANSFER_KINDS = ("direct", "offer")
_LIMIT_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")


def register_customer(
    uow_factory: UnitOfWorkFactory,
    customer_id: str,
    name: str,
    deposit_accounts: list[str],
    *,
    other_names: Sequence[str] = (),
    tier: int | None = None,
    actor: str = "operator",
    at: datetime | None = None,
    screening: NameScreening | None = None,
) -> ScreeningOutcome:
    """Create a customer (if new) and attach deposit accounts and other names to it; idempotent.
    A new customer starts on KYC tier 1 (basic verification done), active, unless ``tier`` says
    otherwise.

    With ``screening``, each name is recorded with its script(s), and the names new to the
    customer are screened against the sanctions list in force, in the same transaction: a match
    puts the customer under review (see :mod:`sluice.services.customer_screening`). Without a
    list, the outcome says the names were not screened."""
    if not customer_id.strip():
        raise InvalidInputError("customer id must not be empty")
    if customer_id == EXCHANGE_INVENTORY:
        raise InvalidInputError(
            f"customer id {EXCHANGE_INVENTORY!r} is reserved: it names the exchange's inventory"
        )
    primary = check_customer_name(name)
    given = [check_customer_name(other, what="another name") for other in other_names]
    checked_tier = check_tier(tier) if tier is not None else None
    when = at or datetime.now(UTC)
    with uow_factory() as uow:
        primary_script = screening.script(primary) if screening is not None else None
        created = uow.reference.add_customer(customer_id, primary, primary_script)
        if created and checked_tier is not None:
            uow.compliance.set_profile(customer_id, at=when, tier=checked_tier)
        added = _add_names(uow, customer_id, given, screening=screening, actor=actor, at=when)
        if created:
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=f"customer:{customer_id}",
                        operation="customer_registered",
                        actor=actor,
                        recorded_at=when,
                        customer_id=customer_id,
                        parameters={
                            "name": primary,
                            "other_names": [other.name for other in added],
                            "deposit_accounts": list(deposit_accounts),
                            "tier": checked_tier if checked_tier is not None else 1,
                            "screened": screening is not None and screening.screens,
                        },
                        state_changes=[{"customer": customer_id, "created": True}],
                    )
                ]
            )
        if not created and added:
            _audit_names_added(uow, customer_id, added, screening, actor=actor, at=when)
        new_names = [CustomerName(primary, primary_script, primary=True)] if created else []
        new_names += added
        outcome = screen_and_hold(
            uow,
            screening,
            customer_id,
            new_names,
            actor=actor,
            at=when,
            operation_id=f"screen:{customer_id}:{when.isoformat()}",
        )
        for account in deposit_accounts:
            if not account.strip():
                raise InvalidInputError("deposit account id must not be empty")
            owner = uow.reference.customer_of_deposit_account(account)
            if owner is not None and owner != customer_id:
                raise InvalidInputError(
                    f"deposit account {account!r} already belongs to customer {owner!r}"
                )
            uow.reference.add_deposit_account(account, customer_id)
        uow.commit()
        return outcome


def add_customer_names(
    uow_factory: UnitOfWorkFactory,
    customer_id: str,
    names: Sequence[str],
    *,
    actor: str = "operator",
    at: datetime | None = None,
    screening: NameScreening | None = None,
) -> ScreeningOutcome:
    """Give a registered customer more names (another script, a maiden name, an alias), each
    recorded with its script(s) and screened like the names given at registration; a name the
    customer already has is skipped."""
    given = [check_customer_name(name, what="another name") for name in names]
    if not given:
        raise InvalidInputError("give at least one name to add")
    when = at or datetime.now(UTC)
    with uow_factory() as uow:
        added = _add_names(uow, customer_id, given, screening=screening, actor=actor, at=when)
        if added:
            _audit_names_added(uow, customer_id, added, screening, actor=actor, at=when)
        outcome = screen_and_hold(
            uow,
            screening,
            customer_id,
            added,
            actor=actor,
            at=when,
            operation_id=f"screen:{customer_id}:{when.isoformat()}",
        )
        uow.commit()
        return outcome


def customer_names(uow_factory: UnitOfWorkFactory, customer_id: str) -> list[CustomerName]:
    """A customer's names, the primary one first."""
    with uow_factory() as uow:
        names = uow.reference.customer_names_of(customer_id)
    if names is None:
        raise NotFoundError(f"unknown customer {customer_id!r}")
    return names


def _add_names(
    uow: UnitOfWork,
    customer_id: str,
    given: Sequence[str],
    *,
    screening: NameScreening | None,
    actor: str,
    at: datetime,
) -> list[CustomerName]:
    """Record the names the customer does not have yet (checked: at most OTHER_NAMES_MAX)."""
    # The customer's row is locked first (PostgreSQL), so two requests adding names to one
    # customer take turns instead of both inserting the same name.
    uow.compliance.profiles([customer_id], lock=True)
    known = uow.reference.customer_names_of(customer_id)
    if known is None:
        raise NotFoundError(f"unknown customer {customer_id!r}")
    primary, others = known[0], known[1:]
    fresh = check_other_names(primary.name, given, [other.name for other in others])
    added = [
        CustomerName(name, screening.script(name) if screening is not None else None)
        for name in fresh
    ]
    uow.reference.add_customer_names(customer_id, added, actor=actor, at=at)
    return added


def _audit_names_added(
    uow: UnitOfWork,
    customer_id: str,
    added: Sequence[CustomerName],
    screening: NameScreening | None,
    *,
    actor: str,
    at: datetime,
) -> None:
    uow.audit.append(
        [
            AuditEntry(
                operation_id=f"customer-names:{customer_id}:{at.isoformat()}",
                operation="customer_names_added",
                actor=actor,
                recorded_at=at,
                customer_id=customer_id,
                parameters={
                    "names": [{"name": name.name, "script": name.script} for name in added],
                    "screened": screening is not None and screening.screens,
                },
                state_changes=[{"customer": customer_id, "names_added": len(added)}],
            )
        ]
    )


def check_transfer_kinds(kinds: str | Collection[str]) -> tuple[str, ...]:
    """A non-empty subset of ``direct`` and ``offer`` (as a comma-separated string or a list), in
    canonical order."""
    names = kinds.split(",") if isinstance(kinds, str) else list(kinds)
    cleaned = {name.strip() for name in names if name.strip()}
    if not cleaned:
        raise InvalidInputError("transfer kinds must name at least one of: direct, offer")
    unknown = sorted(cleaned - set(WITHDRAWAL_TRANSFER_KINDS))
    if unknown:
        raise InvalidInputError(
            f"unknown transfer kind(s) {', '.join(unknown)}: expected direct and/or offer"
        )
    return tuple(kind for kind in WITHDRAWAL_TRANSFER_KINDS if kind in cleaned)


def check_limits(limits: Mapping[str, str | Decimal | int]) -> dict[str, str]:
    """Limit names (``withdrawal_max``, ``transfer_fee``…: lower case, digits, underscores) with
    exact, non-negative decimal values, returned as canonical decimal strings."""
    checked: dict[str, str] = {}
    for name, value in limits.items():
        if not _LIMIT_NAME.match(name):
            raise InvalidInputError(
                f"limit name {name!r} must be lower case letters, digits and underscores"
            )
        amount = parse_amount(value, field=f"limit {name}")
        if amount < 0:
            raise InvalidInputError(f"limit {name} must not be negative, got {value}")
        checked[name] = format_amount(amount)
    return checked


def check_registry_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidInputError(f"registry URL {url!r} is not an http(s) URL")
    return url


def onboard_instrument(
    uow_factory: UnitOfWorkFactory,
    instrument: InstrumentId,
    *,
    registry_url: str | None = None,
    trusted: bool = True,
    transfer_kinds: str | Collection[str] = "direct",
    limits: Mapping[str, str | Decimal | int] | None = None,
    actor: str = "operator",
    at: datetime | None = None,
) -> bool:
    """Record an instrument as onboarded (and enabled) so its deposits are credited, with an
    ``instrument_onboarded`` audit record by ``actor``.

    Refuses an admin the exchange does not trust: its registry hands out the choice contexts
    sluice passes to the ledger, and its deposits would be credited as real money. Idempotent:
    returns False, changing nothing, when the instrument is already onboarded."""
    check_party_id(instrument.admin)
    if not instrument.id.strip():
        raise InvalidInputError("instrument id must not be empty")
    if not trusted:
        raise InvalidInputError(
            f"the admin {instrument.admin} is not trusted: only instruments of trusted admins "
            "are onboarded, since their registries answer for what sluice submits and their "
            "deposits are credited to customers"
        )
    if registry_url is not None:
        check_registry_url(registry_url)
    kinds = check_transfer_kinds(transfer_kinds)
    checked = check_limits(limits or {})
    when = at or datetime.now(UTC)
    with uow_factory() as uow:
        added = uow.reference.add_instrument(
            instrument, registry_url, trusted, ",".join(kinds), checked or None
        )
        if added:
            uow.audit.append(
                [
                    AuditEntry(
                        operation_id=f"instrument:{instrument.key()}",
                        operation="instrument_onboarded",
                        actor=actor,
                        recorded_at=when,
                        parameters={
                            "admin": instrument.admin,
                            "id": instrument.id,
                            "registry_url": registry_url,
                            "transfer_kinds": list(kinds),
                            "limits": {k: str(v) for k, v in (checked or {}).items()},
                        },
                        state_changes=[{"instrument": instrument.key(), "onboarded": True}],
                    )
                ]
            )
        uow.commit()
        return added


def set_instrument_enabled(
    uow_factory: UnitOfWorkFactory,
    instrument: InstrumentId,
    enabled: bool,
    *,
    actor: str = "operator",
    at: datetime | None = None,
) -> None:
    """Enable or disable an onboarded instrument, with an ``instrument_enabled`` /
    ``instrument_disabled`` audit record by ``actor``. While disabled its deposits go to suspense
    with an alert and no withdrawal of it can be requested."""
    when = at or datetime.now(UTC)
    operation = "instrument_enabled" if enabled else "instrument_disabled"
    with uow_factory() as uow:
        if not uow.reference.set_instrument_enabled(instrument, enabled):
            raise NotFoundError(f"instrument {instrument.key()} is not onboarded")
        uow.audit.append(
            [
                AuditEntry(
                    operation_id=f"instrument:{instrument.key()}:{operation}:{when.isoformat()}",
                    operation=operation,
                    actor=actor,
                    recorded_at=when,
                    parameters={"admin": instrument.admin, "id": instrument.id},
                    state_changes=[{"instrument": instrument.key(), "enabled": enabled}],
                )
            ]
        )
        uow.commit()


def list_instruments(uow_factory: UnitOfWorkFactory) -> list[InstrumentRecord]:
    with uow_factory() as uow:
        return uow.reference.instruments()
