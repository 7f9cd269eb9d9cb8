"""The Registry API client: :class:`HttpRegistry` and :func:`registry_lookup`.

A registry is the off-ledger service of an instrument's admin
(``<registry>/registry/transfer-instruction/v1/...`` and ``<registry>/registry/metadata/v1/...``;
for Canton Coin, the exchange's own validator's Scan proxy). What it guarantees:

* the admin expected on the ledger is the one sluice onboarded (``admin``, from sluice's DB),
  never one read from an answer: a transfer of another admin's instrument is refused here, and the
  choice arguments carry ``expectedAdmin`` = the instrument's admin as sluice knows it;
* the choice context (``choiceContextData.values``) and the disclosed contracts are passed through
  untouched, as the token standard requires;
* every failure — a timeout ("timed out after N s"), an unreachable registry, a non-2xx answer, an
  answer of the wrong shape — is :class:`sluice.ports.RegistryError` naming the registry's URL.
  Reads are retried like any read (:class:`sluice.ledger.canton.transport.LedgerHttp`): asking for
  a factory or a context changes nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any, get_args
from urllib.parse import quote

import httpx

from sluice.domain.ledger import InstrumentId, Transfer, TransferKind
from sluice.ledger import wire
from sluice.ports import (
    ChoiceContextData,
    FactoryChoice,
    InstructionChoice,
    RegistryClient,
    RegistryError,
    RegistryLookup,
)

from .auth import NoAuth, TokenSource
from .errors import CantonError
from .transport import LedgerHttp

TRANSFER_FACTORY_PATH = "/registry/transfer-instruction/v1/transfer-factory"
INFO_PATH = "/registry/metadata/v1/info"
INSTRUMENTS_PATH = "/registry/metadata/v1/instruments"
TRANSFER_KINDS: frozenset[str] = frozenset(get_args(TransferKind))


class HttpRegistry:
    """:class:`sluice.ports.RegistryClient` for the registry of ``admin`` at ``base_url``."""

    def __init__(
        self,
        base_url: str,
        admin: str,
        *,
        auth: TokenSource | None = None,
        timeout_s: float = 10,
        retries_max: int = 2,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin = admin
        self._http = LedgerHttp(
            self.base_url,
            auth if auth is not None else NoAuth(),
            timeout_s=timeout_s,
            retries_max=retries_max,
            transport=transport,
            sleep=sleep,
        )

    # -- the port -----------------------------------------------------------------------------

    def transfer_factory(self, transfer: Transfer) -> FactoryChoice:
        """``POST .../transfer-factory``: the factory, the transfer kind and the choice context
        for ``transfer``."""
        if transfer.instrument.admin != self.admin:
            raise RegistryError(
                f"the registry at {self.base_url} serves admin {self.admin}, not the admin of "
                f"instrument {transfer.instrument.key()}",
                answered=True,
            )
        body = {
            "choiceArguments": wire.transfer_factory_arguments(transfer),
            "excludeDebugFields": True,
        }
        answer = self._object(self._call("POST", TRANSFER_FACTORY_PATH, body), "the factory")
        factory_id = answer.get("factoryId")
        kind = answer.get("transferKind")
        if not isinstance(factory_id, str) or not factory_id:
            raise self._malformed(TRANSFER_FACTORY_PATH, "no factoryId")
        if kind not in TRANSFER_KINDS:
            raise self._malformed(
                TRANSFER_FACTORY_PATH,
                f"transferKind {kind!r} is not one of {', '.join(sorted(TRANSFER_KINDS))}",
            )
        context = self._choice_context(answer.get("choiceContext"), TRANSFER_FACTORY_PATH)
        return FactoryChoice(factory_id=factory_id, transfer_kind=kind, context=context)

    def choice_context(self, choice: InstructionChoice, instruction_cid: str) -> ChoiceContextData:
        """``POST .../{instruction}/choice-contexts/{accept|reject|withdraw}``."""
        if choice not in wire.INSTRUCTION_CHOICES:
            raise RegistryError(f"{choice!r} is not a transfer instruction choice", answered=True)
        if not instruction_cid:
            raise RegistryError("the transfer instruction's contract id is empty", answered=True)
        path = (
            f"/registry/transfer-instruction/v1/{quote(instruction_cid, safe='')}"
            f"/choice-contexts/{choice}"
        )
        answer = self._call("POST", path, {"meta": {}, "excludeDebugFields": True})
        return self._choice_context(answer, path)

    # -- metadata -----------------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """``GET /registry/metadata/v1/info``: ``adminId`` and ``supportedApis`` as answered
        (for display: the admin sluice trusts is :attr:`admin`)."""
        return self._object(self._call("GET", INFO_PATH), "the registry info")

    def instruments(self, *, page_size: int = 100, pages_max: int = 100) -> list[dict[str, Any]]:
        """``GET /registry/metadata/v1/instruments``, following ``nextPageToken`` for at most
        ``pages_max`` pages."""
        found: list[dict[str, Any]] = []
        token: str | None = None
        for _ in range(pages_max):
            params: dict[str, Any] = {"pageSize": page_size}
            if token:
                params["pageToken"] = token
            answer = self._object(
                self._call("GET", INSTRUMENTS_PATH, params=params), "the instrument list"
            )
            items = answer.get("instruments")
            if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
                raise self._malformed(INSTRUMENTS_PATH, "instruments is not a list of objects")
            found.extend(items)
            next_token = answer.get("nextPageToken")
            if not isinstance(next_token, str) or not next_token or next_token == token:
                return found
            token = next_token
        raise RegistryError(
            f"the registry at {self.base_url} lists more than {pages_max} pages of instruments"
        )

    def instrument(self, instrument_id: str) -> dict[str, Any]:
        """``GET /registry/metadata/v1/instruments/{id}``."""
        path = f"{INSTRUMENTS_PATH}/{quote(instrument_id, safe='')}"
        return self._object(self._call("GET", path), f"instrument {instrument_id}")

    def close(self) -> None:
        self._http.close()

    # -- internals ----------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        params: dict[str, Any] | None = None,
    ) -> Any:
        try:
            if method == "GET":
                return self._http.get(path, params=params)
            return self._http.post(path, body, params=params, read=True)
        except CantonError as exc:
            # A 4xx (but a timeout or rate limit) is the registry's answer about the request.
            status = exc.status
            answered = status is not None and 400 <= status < 500 and status not in (408, 429)
            raise RegistryError(
                f"the registry at {self.base_url} failed: {exc}", answered=answered, status=status
            ) from exc

    def _object(self, value: Any, what: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise RegistryError(
                f"the registry at {self.base_url} answered {what} with "
                f"{type(value).__name__}, not a JSON object"
            )
        return value

    def _malformed(self, path: str, problem: str) -> RegistryError:
        return RegistryError(f"the registry at {self.base_url} answered {path}: {problem}")

    def _choice_context(self, value: Any, path: str) -> ChoiceContextData:
        if not isinstance(value, dict):
            raise self._malformed(path, "no choice context")
        data = value.get("choiceContextData")
        if not isinstance(data, dict):
            raise self._malformed(path, "choiceContextData is not an object")
        values = data.get("values", {})
        if not isinstance(values, dict):
            raise self._malformed(path, "choiceContextData.values is not an object")
        disclosed = value.get("disclosedContracts")
        if not isinstance(disclosed, list):
            raise self._malformed(path, "disclosedContracts is not a list")
        for contract in disclosed:
            if (
                not isinstance(contract, dict)
                or not isinstance(contract.get("contractId"), str)
                or not isinstance(contract.get("createdEventBlob"), str)
            ):
                raise self._malformed(
                    path, "a disclosed contract lacks its contractId or createdEventBlob"
                )
        return ChoiceContextData(values, tuple(disclosed))


def registry_lookup(
    url_of: Callable[[InstrumentId], str | None],
    *,
    auth: TokenSource | None = None,
    timeout_s: float = 10,
    retries_max: int = 2,
    transport: httpx.BaseTransport | None = None,
) -> RegistryLookup:
    """:data:`sluice.ports.RegistryLookup` over HTTP: the registry URL of an instrument comes
    from ``url_of`` (onboarding, in the DB); one :class:`HttpRegistry` per (URL, admin)."""
    cache: dict[tuple[str, str], HttpRegistry] = {}
    lock = threading.Lock()

    def lookup(instrument: InstrumentId) -> RegistryClient:
        url = url_of(instrument)
        if not url:
            raise RegistryError(
                f"instrument {instrument.key()} has no registry URL; onboard it with --registry-url"
            )
        key = (url.rstrip("/"), instrument.admin)
        with lock:
            found = cache.get(key)
            if found is None:
                found = HttpRegistry(
                    key[0],
                    instrument.admin,
                    auth=auth,
                    timeout_s=timeout_s,
                    retries_max=retries_max,
                    transport=transport,
                )
                cache[key] = found
            return found

    return lookup
