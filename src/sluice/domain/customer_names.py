"""A customer's names: the primary (legal) name and the others they give — the same name in
other scripts (``Qasem Soleimani`` and ``قاسم سلیمانی``), a maiden name, an alias. Every one of
them is screened against the sanctions list, at registration, when it is added and by
``sluice compliance screen-customers``.

Guarantees: a name is stripped, holds something besides spaces and is at most
:data:`NAME_LENGTH_MAX` characters (the column's width); a customer has at most
:data:`OTHER_NAMES_MAX` other names; the same name is kept once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sluice.domain.errors import InvalidInputError

NAME_LENGTH_MAX = 200
OTHER_NAMES_MAX = 20
SCRIPT_SEPARATOR = "+"


@dataclass(frozen=True, slots=True)
class CustomerName:
    """One name of a customer and the script(s) it is written in (``latin``, ``arabic``,
    ``han+kana``…; None for a primary name recorded before scripts were)."""

    name: str
    script: str | None
    primary: bool = False


def script_label(scripts: Iterable[str]) -> str:
    """The scripts of a name as one stored label: sorted, joined by ``+`` (``other`` when the
    name has no letters at all)."""
    found = sorted(set(scripts))
    return SCRIPT_SEPARATOR.join(found) if found else "other"


def check_customer_name(name: str, *, what: str = "a customer's name") -> str:
    """The name stripped, or :class:`InvalidInputError` (blank, too long)."""
    if not isinstance(name, str):
        raise InvalidInputError(f"{what} must be text")
    stripped = name.strip()
    if not stripped:
        raise InvalidInputError(f"{what} must not be empty")
    if len(stripped) > NAME_LENGTH_MAX:
        raise InvalidInputError(
            f"{what} is at most {NAME_LENGTH_MAX} characters, got {len(stripped)}"
        )
    return stripped


def check_other_names(primary: str, names: Iterable[str], known: Iterable[str] = ()) -> list[str]:
    """The other names to add, checked, in the order given, without the primary name, the
    ``known`` ones and repeats; refused when the customer would have more than
    :data:`OTHER_NAMES_MAX` other names."""
    kept = len(set(known) - {primary})
    seen = {primary, *known}
    added: list[str] = []
    for name in names:
        checked = check_customer_name(name, what="another name")
        if checked in seen:
            continue
        seen.add(checked)
        added.append(checked)
    if kept + len(added) > OTHER_NAMES_MAX:
        raise InvalidInputError(
            f"a customer has at most {OTHER_NAMES_MAX} other names "
            f"({kept} recorded, {len(added)} more given)"
        )
    return added
