"""RFC 6901 JSON pointers: parsed once (at configuration), resolved against a decoded document.

``""`` is the whole document; ``"/a/0/b~1c"`` walks key ``a``, index ``0``, key ``b/c``
(``~1`` is ``/``, ``~0`` is ``~``, decoded in that order). An array index is ``0`` or digits
without a leading zero; ``-`` (the element after the last) never resolves. Standard library only.
"""

from __future__ import annotations

import re
from typing import Any

_INDEX = re.compile(r"^(0|[1-9][0-9]*)$")
_BAD_ESCAPE = re.compile(r"~(?![01])")


class PointerError(ValueError):
    """The pointer is not RFC 6901, or does not resolve in the document."""


def parse_pointer(pointer: str) -> tuple[str, ...]:
    """The reference tokens of ``pointer``, unescaped."""
    if pointer == "":
        return ()
    if not pointer.startswith("/"):
        raise PointerError(f"{pointer!r} is not a JSON pointer (it must start with '/')")
    if _BAD_ESCAPE.search(pointer):
        raise PointerError(f"{pointer!r} has a '~' not followed by 0 or 1")
    return tuple(t.replace("~1", "/").replace("~0", "~") for t in pointer[1:].split("/"))


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value ``pointer`` refers to in ``document``; PointerError when there is none."""
    value = document
    for token in parse_pointer(pointer):
        if isinstance(value, dict):
            if token not in value:
                raise PointerError(f"{pointer!r}: no member {token!r}")
            value = value[token]
        elif isinstance(value, list):
            if not _INDEX.match(token) or int(token) >= len(value):
                raise PointerError(f"{pointer!r}: no element {token!r}")
            value = value[int(token)]
        else:
            raise PointerError(f"{pointer!r}: {token!r} is below a scalar")
    return value
