"""Immutable value objects that are cheap to build.

A ``frozen=True`` dataclass sets each field through ``object.__setattr__`` when it is built,
which costs several times the plain slot stores of an ordinary dataclass; ingestion builds a few
such objects per deposit. :func:`value_class` makes a slotted dataclass whose fields the type
checker treats as read-only (as if frozen) and that hashes and compares by its fields exactly as
a frozen one does, but is built with plain slot stores. Nothing assigns to its fields after it is
built (mypy rejects such an assignment).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

_T = TypeVar("_T")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def value_class(cls: type[_T]) -> type[_T]:
    """``@dataclass(frozen=True, slots=True)`` for the type checker; at run time the same class
    built without the per-field ``object.__setattr__`` (same ``__eq__``, ``__hash__``,
    ``__repr__``)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
