"""Screening a customer's names against the sanctions list (DESIGN §6): every name they give, in
whatever script it is written, when they are registered, when they add a name, and when an
officer screens the whole customer base (``sluice compliance screen-customers``).

What it guarantees:

* Each name is recorded with the script(s) it is written in, told by the screening package
  (:class:`NameScreening` carries its function; entry points wire it).
* A name at or above the list's threshold puts an active customer under review (every operation
  is refused until an officer makes them active again or blacklists them), records the hit on
  the customer, opens one review item per listed entity, and is audited
  (``customer_screened``, with a ``compliance_action_taken`` event and a ``customer_kyc_changed``
  event for the status change), in the same transaction as the names themselves. A
  registration that matches is therefore never visible without its hold.
* Names screened with no match are audited as screened (``customer_screened``, no hit).
* Without a sanctions list (none configured), names are recorded and the outcome says they were
  not screened (:attr:`ScreeningOutcome.screened` is False); nothing is held.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from sluice.domain.audit import AuditEntry
from sluice.domain.compliance import KycStatus, Profile, ReviewItem
from sluice.domain.customer_names import CustomerName, script_label
from sluice.domain.events import new_event
from sluice.ports import NameMatch, UnitOfWork
from sluice.services.compliance_session import kyc_event
from sluice.services.events import emit_all

NOT_SCREENED = "not screened: no sanctions list is configured"

ScriptsOf = Callable[[str], Collection[str]]
"""The scripts a name's letters are written in (``sluice.screening.scripts.scripts_of``)."""
Explain = Callable[[str], tuple[NameMatch, str | None]]
"""Screen one name; the result and the transliteration that brought it to Latin letters for
the match (None: the name's own Latin letters, or the default transliteration)."""


@dataclass(frozen=True, slots=True)
class NameScreening:
    """What a customer's names are screened with: how a name's scripts are told and, when a
    sanctions list is in force, how a name is screened against it (None: not screened)."""

    scripts_of: ScriptsOf
    explain: Explain | None = None
    source: str | None = None

    @property
    def screens(self) -> bool:
        """Whether a sanctions list is in force (else names are recorded, not screened)."""
        return self.explain is not None

    def script(self, name: str) -> str:
        return script_label(self.scripts_of(name))


@dataclass(frozen=True, slots=True)
class NameHit:
    """A customer's name at or above the threshold, the listed name it matched and the
    transliteration it matched through (None: Latin letters, or anyascii's)."""

    customer_id: str
    name: CustomerName
    result: NameMatch
    transliteration: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name.name,
            "script": self.name.script,
            "primary": self.name.primary,
            "entity_id": self.result.entity_id,
            "matched_name": self.result.matched_name,
            "score": round(self.result.score, 1),
            "transliteration": self.transliteration,
        }


@dataclass(frozen=True, slots=True)
class ScreeningOutcome:
    """What registering a customer (or adding names) did about screening."""

    screened: bool
    names: tuple[CustomerName, ...] = ()
    hits: tuple[NameHit, ...] = ()
    status: KycStatus | None = None  # the status a match put the customer in (None: unchanged)
    source: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "screened": self.screened,
            "sanctions_list": self.source,
            "names": [name.name for name in self.names],
            "matches": [hit.as_dict() for hit in self.hits],
            "status": self.status,
            "note": None if self.screened or not self.names else NOT_SCREENED,
        }


def screen_names(
    screening: NameScreening, customer_id: str, names: Sequence[CustomerName]
) -> list[NameHit]:
    """The names at or above the threshold, best first (none without a list)."""
    if screening.explain is None:
        return []
    hits: list[NameHit] = []
    for name in names:
        result, rendering = screening.explain(name.name)
        if result.match:
            hits.append(NameHit(customer_id, name, result, rendering))
    return sorted(hits, key=lambda hit: -hit.result.score)


def _reason(hit: NameHit) -> str:
    via = f", via {hit.transliteration}" if hit.transliteration else ""
    return (
        f"name {hit.name.name!r} matches {hit.result.matched_name!r} ({hit.result.entity_id}, "
        f"score {hit.result.score:.1f}{via})"
    )


def audit_screening(
    uow: UnitOfWork,
    profile: Profile,
    names: Sequence[CustomerName],
    hits: Sequence[NameHit],
    *,
    actor: str,
    at: datetime,
    operation_id: str,
    status: KycStatus | None = None,
    source: str | None = None,
) -> None:
    """The ``customer_screened`` audit record and its ``compliance_action_taken`` event: which names
    were screened, against which list, and what matched (nothing: screened clear)."""
    matches = [hit.as_dict() for hit in hits]
    parameters: dict[str, object] = {
        "names": [name.name for name in names],
        "list": source,
        "matches": matches,
    }
    if hits:
        parameters["name"] = hits[0].name.name
    changes: list[dict[str, object]] = [
        {"sanctions_match": matches[0] if matches else None, "status": status or profile.status}
    ]
    emit_all(
        uow,
        [
            new_event(
                "compliance_action_taken",
                profile.customer_id,
                {
                    "customer_id": profile.customer_id,
                    "action": "customer_screened",
                    "subject": operation_id,
                    "reason": _reason(hits[0]) if hits else None,
                    "actor": actor,
                    "details": parameters,
                    "changes": changes,
                },
                at=at,
            )
        ],
    )
    uow.audit.append(
        [
            AuditEntry(
                operation_id=operation_id,
                operation="customer_screened",
                actor=actor,
                recorded_at=at,
                customer_id=profile.customer_id,
                kyc=profile.as_dict(),
                parameters=parameters,
                state_changes=changes,
            )
        ]
    )


def hold_for_sanctions(
    uow: UnitOfWork,
    profile: Profile,
    hits: Sequence[NameHit],
    *,
    actor: str,
    at: datetime,
) -> KycStatus | None:
    """Record the best hit on the customer, put an active customer under review and open one
    review item per listed entity matched (a review already open stays as it is). Returns the
    status set (None: the customer was not active, and stays as they are)."""
    best = hits[0]
    hit: dict[str, object] = {
        "entity_id": best.result.entity_id,
        "matched_name": best.result.matched_name,
        "score": best.result.score,
        "name": best.name.name,
        "transliteration": best.transliteration,
    }
    reason = _reason(best)
    new_status: KycStatus | None = "under_review" if profile.status == "active" else None
    if new_status is not None:
        uow.compliance.set_profile(
            profile.customer_id,
            at=at,
            sanctions_match=hit,
            status=new_status,
            status_reason=reason,
        )
    else:
        uow.compliance.set_profile(profile.customer_id, at=at, sanctions_match=hit)
    entities: set[str | None] = set()
    for each in hits:
        if each.result.entity_id in entities:
            continue
        entities.add(each.result.entity_id)
        uow.compliance.open_review(
            ReviewItem(
                id=f"sanctions:{profile.customer_id}:{each.result.entity_id}",
                kind="sanctions_match",
                reason=_reason(each),
                opened_at=at,
                customer_id=profile.customer_id,
                subject=each.result.entity_id,
            )
        )
    if new_status is not None:
        after = replace(profile, status=new_status, status_reason=reason)
        emit_all(uow, [kyc_event(profile, after, at=at, actor=actor, reason=reason)])
    return new_status


def screen_and_hold(
    uow: UnitOfWork,
    screening: NameScreening | None,
    customer_id: str,
    names: Sequence[CustomerName],
    *,
    actor: str,
    at: datetime,
    operation_id: str,
) -> ScreeningOutcome:
    """Screen ``names`` of a customer in the caller's transaction; a match holds the customer
    (:func:`hold_for_sanctions`); screened names are audited either way."""
    if screening is None or screening.explain is None:
        return ScreeningOutcome(screened=False, names=tuple(names))
    if not names:
        return ScreeningOutcome(screened=True, source=screening.source)
    profile = uow.compliance.profiles([customer_id], lock=True)[customer_id]
    hits = screen_names(screening, customer_id, names)
    status = hold_for_sanctions(uow, profile, hits, actor=actor, at=at) if hits else None
    audit_screening(
        uow,
        profile,
        names,
        hits,
        actor=actor,
        at=at,
        operation_id=operation_id,
        status=status,
        source=screening.source,
    )
    return ScreeningOutcome(
        screened=True, names=tuple(names), hits=tuple(hits), status=status, source=screening.source
    )
