"""Reading a price source: GET an HTTP JSON endpoint (httpx) or read a JSON file, and take the
price, time and round id at the source's JSON pointers.

What it guarantees: :meth:`FeedReader.read` never raises for anything the source does. A
timeout, a refused connection, a non-2xx status, or a body above ``body_bytes_max`` is an
``unreachable`` rejection; JSON that does not parse, a pointer that does not resolve, or a value
of the wrong type is ``malformed``. Every read is bounded: ``timeout_s`` for the whole request
(connect, each read, and the body as a whole) and ``body_bytes_max`` for the body. Numbers are
decoded exactly (JSON fractions as :class:`~decimal.Decimal`, never float); NaN and Infinity
are malformed. Redirects are not followed (a feed's URL is configured, not discovered).

It applies none of the price rules (positive, fresh, …): those are the domain's
(:func:`sluice.domain.oracle.check_observation`).
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

import httpx

from sluice.domain.oracle import (
    Observation,
    Reading,
    Rejection,
    SourceSpec,
    quantize_price,
    scale_raw,
)
from sluice.oracle.pointers import PointerError, resolve_pointer

BODY_BYTES_MAX = 1 << 20
ROUND_ID_MAX = 10**38 - 1  # the oracle_sources column's width; Chainlink's ids are 80 bits
_INTEGER = re.compile(r"^-?[0-9]{1,80}$")
_DECIMAL = re.compile(r"^-?[0-9]{1,80}(\.[0-9]{1,80})?$")


class MalformedError(ValueError):
    """The document is not what the source's pointers promise (becomes ``malformed``)."""


class FeedReader:
    """Reads sources over HTTP (one pooled httpx client) and from files."""

    def __init__(
        self,
        *,
        timeout_s: float = 5.0,
        body_bytes_max: int = BODY_BYTES_MAX,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.timeout_s = timeout_s
        self.body_bytes_max = body_bytes_max
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,
            transport=transport,
            headers={"accept": "application/json"},
        )

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> FeedReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def read(self, source: SourceSpec) -> Reading:
        """The source's observation, or the rejection saying why there is none."""
        if source.kind == "http":
            body = self._get(source.location)
        else:
            body = self._read_file(Path(source.location))
        if isinstance(body, Rejection):
            return body
        try:
            return observation_of(decode_json(body), source)
        except MalformedError as exc:
            return Rejection("malformed", str(exc))

    def _get(self, url: str) -> bytes | Rejection:
        deadline = time.monotonic() + self.timeout_s
        try:
            with self._client.stream("GET", url) as response:
                if not 200 <= response.status_code < 300:
                    return Rejection(
                        "unreachable",
                        f"GET {url} answered HTTP {response.status_code}",
                        str(response.status_code),
                    )
                chunks: list[bytes] = []
                size = 0
                for chunk in response.iter_bytes():
                    size += len(chunk)
                    if size > self.body_bytes_max:
                        return Rejection(
                            "unreachable",
                            f"GET {url}: the body is over {self.body_bytes_max} bytes",
                        )
                    if time.monotonic() > deadline:
                        return Rejection(
                            "unreachable", f"GET {url}: no whole answer in {self.timeout_s} s"
                        )
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TimeoutException:
            return Rejection("unreachable", f"GET {url}: timed out after {self.timeout_s} s")
        except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError) as exc:
            return Rejection("unreachable", f"GET {url}: {type(exc).__name__}: {exc}")

    def _read_file(self, path: Path) -> bytes | Rejection:
        try:
            with path.open("rb") as file:
                body = file.read(self.body_bytes_max + 1)
        except OSError as exc:
            return Rejection("unreachable", f"cannot read {path}: {exc.strerror or exc}")
        if len(body) > self.body_bytes_max:
            return Rejection("unreachable", f"{path} is over {self.body_bytes_max} bytes")
        return body


def _no_constant(name: str) -> Any:
    raise MalformedError(f"{name} is not a number sluice accepts")


def decode_json(body: bytes) -> Any:
    """JSON with exact numbers; MalformedError when it is not JSON."""
    try:
        return json.loads(body, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, MalformedError):
            raise
        raise MalformedError(f"the answer is not JSON: {exc}") from None


def _at(document: Any, pointer: str) -> Any:
    try:
        return resolve_pointer(document, pointer)
    except PointerError as exc:
        raise MalformedError(str(exc)) from None


def observation_of(document: Any, source: SourceSpec) -> Observation:
    """The observation at ``source``'s pointers in a decoded document."""
    price = _price(_at(document, source.price_pointer), source)
    at = _time(_at(document, source.time_pointer), source.time_pointer)
    round_id = None
    if source.round_pointer is not None:
        round_id = _round(_at(document, source.round_pointer), source.round_pointer)
    return Observation(price=price, at=at, round_id=round_id)


def _price(value: Any, source: SourceSpec) -> Decimal:
    pointer = source.price_pointer
    if source.scaled:
        if isinstance(value, str) and _INTEGER.match(value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise MalformedError(f"{pointer}: {value!r} is not an integer of 10^-{source.decimals}")
        return scale_raw(value, source.decimals)
    if isinstance(value, bool):
        raise MalformedError(f"{pointer}: {value!r} is not a price")
    if isinstance(value, str):
        if not _DECIMAL.match(value.strip()):
            raise MalformedError(f"{pointer}: {value!r} is not a decimal number")
        value = Decimal(value.strip())
    if isinstance(value, int):
        value = Decimal(value)
    if not isinstance(value, Decimal):
        raise MalformedError(f"{pointer}: {value!r} is not a price")
    try:
        return quantize_price(value, source.decimals)
    except ValueError as exc:
        raise MalformedError(f"{pointer}: {exc}") from None


def _time(value: Any, pointer: str) -> datetime:
    """Unix seconds (a number or digits) or an RFC 3339 text with its offset."""
    if isinstance(value, str) and _DECIMAL.match(value):
        value = Decimal(value)
    if isinstance(value, bool):
        raise MalformedError(f"{pointer}: {value!r} is not a time")
    if isinstance(value, int | Decimal):
        seconds = Decimal(value)
        if seconds < 0 or seconds > Decimal(253_402_300_799):
            raise MalformedError(f"{pointer}: {value} is not a time in seconds")
        try:
            return datetime.fromtimestamp(0, UTC) + _seconds(seconds)
        except (OverflowError, InvalidOperation) as exc:
            raise MalformedError(f"{pointer}: {value} is not a time") from exc
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise MalformedError(f"{pointer}: {value!r} is not an RFC 3339 time") from None
        if parsed.tzinfo is None:
            raise MalformedError(f"{pointer}: {value!r} has no UTC offset")
        return parsed.astimezone(UTC)
    raise MalformedError(f"{pointer}: {value!r} is not a time")


def _seconds(seconds: Decimal) -> timedelta:
    whole = int(seconds)
    micro = int((seconds - whole) * 1_000_000)
    return timedelta(seconds=whole, microseconds=micro)


def _round(value: Any, pointer: str) -> int:
    if isinstance(value, str) and _INTEGER.match(value):
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= ROUND_ID_MAX:
        raise MalformedError(f"{pointer}: {value!r} is not a round id")
    return value
