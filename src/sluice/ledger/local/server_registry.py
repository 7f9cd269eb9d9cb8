"""The Registry API of the embedded ledger's server, one per instrument admin under
``/registries/<admin>/registry``: the transfer factory, choice contexts and instrument
metadata. Errors are ``{"error": ...}`` with 400 or 404.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from sluice.domain.errors import InvalidInputError, NotFoundError
from sluice.domain.history import parse_transfer
from sluice.ledger.wire import Json

from .engine import EmbeddedLedger, LedgerError
from .server_problems import Problem, json_response, registry_problem
from .server_requests import read_body

PAGE_SIZE_MAX = 1000

T = TypeVar("T")


class RegistryApi:
    """The Registry API endpoints of every instrument admin of ``ledger``."""

    def __init__(self, ledger: EmbeddedLedger) -> None:
        self.ledger = ledger

    async def _answer(self, work: Callable[[], Any]) -> Response:
        try:
            return json_response(await run_in_threadpool(work))
        except Problem as problem:
            return problem.response()

    def _registry(self, admin: str) -> Any:
        try:
            return self.ledger.registry(admin)
        except NotFoundError as exc:
            raise registry_problem(404, str(exc)) from exc

    def _translate(self, work: Callable[[], T]) -> T:
        try:
            return work()
        except NotFoundError as exc:
            raise registry_problem(404, str(exc)) from exc
        except LedgerError as exc:
            raise registry_problem(
                404 if exc.error == "inactive_contract" else 400, str(exc)
            ) from exc
        except (InvalidInputError, ValueError) as exc:
            raise registry_problem(400, str(exc)) from exc

    async def _request_object(self, request: Request) -> Json:
        try:
            raw = await read_body(request)
        except Problem:
            raise registry_problem(413, "the body is too large") from None
        try:
            value = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            raise registry_problem(400, f"the body is not JSON: {exc}") from None
        if not isinstance(value, dict):
            raise registry_problem(400, "the body must be a JSON object")
        return value

    async def transfer_factory(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        try:
            body = await self._request_object(request)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            arguments = body.get("choiceArguments")
            if not isinstance(arguments, Mapping):
                raise registry_problem(400, "choiceArguments is required")
            expected = arguments.get("expectedAdmin")
            if expected != admin:
                raise registry_problem(
                    400, f"expectedAdmin {expected!r} is not this registry's admin {admin}"
                )
            registry = self._registry(admin)
            transfer_value = arguments.get("transfer")
            if not isinstance(transfer_value, Mapping):
                raise registry_problem(400, "choiceArguments.transfer is required")
            transfer = self._translate(lambda: parse_transfer(transfer_value))
            factory = self._translate(lambda: registry.transfer_factory(transfer))
            answer: Json = factory.as_json()
            if body.get("excludeDebugFields") is True:
                _drop_debug(answer["choiceContext"])
            return answer

        return await self._answer(work)

    async def choice_context(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        instruction_id = request.path_params["instruction_id"]
        choice = request.path_params["choice"]
        try:
            body = await self._request_object(request)
        except Problem as problem:
            return problem.response()

        def work() -> Json:
            registry = self._registry(admin)
            ask = {
                "accept": registry.accept_context,
                "reject": registry.reject_context,
                "withdraw": registry.withdraw_context,
            }.get(choice)
            if ask is None:
                raise registry_problem(404, f"no choice context for {choice!r}")
            context = self._translate(lambda: ask(instruction_id))
            answer: Json = context.as_json()
            if body.get("excludeDebugFields") is True:
                _drop_debug(answer)
            return answer

        return await self._answer(work)

    async def info(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        return await self._answer(lambda: self._registry(admin).info())

    async def instruments(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        size_text = request.query_params.get("pageSize", "25")
        token = request.query_params.get("pageToken")

        def work() -> Json:
            try:
                size = int(size_text)
            except ValueError:
                raise registry_problem(400, f"pageSize {size_text!r} is not a number") from None
            if not 1 <= size <= PAGE_SIZE_MAX:
                raise registry_problem(400, f"pageSize must be between 1 and {PAGE_SIZE_MAX}")
            found = self._registry(admin).instruments()
            start = 0
            if token:
                ids = [i.id for i in found]
                if token not in ids:
                    raise registry_problem(400, f"unknown pageToken {token!r}")
                start = ids.index(token) + 1
            page = found[start : start + size]
            answer: Json = {"instruments": [i.as_json() for i in page]}
            if start + size < len(found):
                answer["nextPageToken"] = page[-1].id
            return answer

        return await self._answer(work)

    async def instrument(self, request: Request) -> Response:
        admin = request.path_params["admin"]
        instrument_id = request.path_params["instrument_id"]

        def work() -> Json:
            registry = self._registry(admin)
            found = self._translate(lambda: registry.instrument(instrument_id))
            answer: Json = found.as_json()
            return answer

        return await self._answer(work)


def _drop_debug(context: Json) -> None:
    for contract in context.get("disclosedContracts", []):
        for key in [k for k in contract if k.startswith("debug")]:
            del contract[key]


def registry_routes(registry: RegistryApi) -> list[BaseRoute]:
    return [
        Route(
            "/transfer-instruction/v1/transfer-factory",
            registry.transfer_factory,
            methods=["POST"],
        ),
        Route(
            "/transfer-instruction/v1/{instruction_id}/choice-contexts/{choice}",
            registry.choice_context,
            methods=["POST"],
        ),
        Route("/metadata/v1/info", registry.info, methods=["GET"]),
        Route("/metadata/v1/instruments", registry.instruments, methods=["GET"]),
        Route("/metadata/v1/instruments/{instrument_id}", registry.instrument, methods=["GET"]),
    ]
