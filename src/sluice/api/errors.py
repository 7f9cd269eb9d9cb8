"""One mapping from sluice's error codes (DESIGN §10) to HTTP statuses, and the JSON body every
error answer carries: ``{code, error, message, details, correlation_id}``.

Services never raise HTTP errors; these handlers translate. Bad input is a 4xx naming the field
that is wrong; anything unexpected is logged with its correlation id and answered as a 500 with
the same body shape (the tests drive the API with generated input to make sure none happens).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match

from sluice.domain.audit import current_correlation_id
from sluice.domain.errors import (
    ApprovalRequiredError,
    ComplianceError,
    DuplicateOperationError,
    InsufficientKycTierError,
    RateLimitedError,
    SluiceError,
)
from sluice.ports import CommandError, RegistryError

log = structlog.get_logger("sluice.api")


class JsonResponse(Response):
    """A JSON answer serialised with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


STATUS_BY_CODE: Mapping[int, int] = {
    1: 401,  # unauthorized
    2: 403,  # insufficient permissions
    10: 404,  # not found
    11: 502,  # component call failed
    12: 502,  # invalid component response
    20: 403,  # compliance check failed
    21: 403,  # insufficient KYC tier
    22: 403,  # address blacklisted
    30: 409,  # insufficient reserves
    31: 409,  # reserve ratio too low
    32: 502,  # bitcoin transaction failed
    40: 504,  # operation timeout
    41: 409,  # invalid operation state
    42: 409,  # duplicate operation
    43: 202,  # approval required: accepted, waiting for approvals
    50: 503,  # system paused
    51: 503,  # emergency mode
    52: 503,  # maintenance mode
    53: 429,  # rate limited
    54: 503,  # circuit breaker open
    60: 422,  # invalid input
    61: 422,  # invalid amount
    62: 422,  # insufficient balance
    63: 422,  # instrument not onboarded
}

HTTP_ERROR_NAMES: Mapping[int, tuple[int, str]] = {
    401: (1, "unauthorized"),
    403: (2, "insufficient_permissions"),
    404: (10, "not_found"),
    405: (60, "method_not_allowed"),
    415: (60, "unsupported_media_type"),
    422: (60, "invalid_input"),
}


def error_body(
    code: int, error: str, message: str, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    return {
        "code": code,
        "error": error,
        "message": message,
        "details": dict(details or {}),
        "correlation_id": current_correlation_id.get(),
    }


def status_of(exc: SluiceError) -> int:
    # An error may name its own status (e.g. 503 for a part the deployment does not configure).
    status = getattr(exc, "http_status", None) or STATUS_BY_CODE.get(exc.code)
    if status is not None:
        return status
    return 422 if isinstance(exc, ValueError) else 500


def details_of(exc: SluiceError) -> dict[str, Any]:
    details: dict[str, Any] = {}
    if isinstance(exc, ComplianceError) and exc.checks:
        details["checks"] = [
            {"name": name, "passed": passed, "reason": reason}
            for name, passed, reason in exc.checks
        ]
    if isinstance(exc, InsufficientKycTierError):
        details["required_tier"] = exc.required_tier
    if isinstance(exc, RateLimitedError):
        details["retry_after_s"] = round(exc.retry_after_s, 3)
    if isinstance(exc, DuplicateOperationError) and exc.first_operation is not None:
        details["first"] = dict(exc.first_operation)
    if isinstance(exc, ApprovalRequiredError):
        details["approval_id"] = exc.approval_id
    field = getattr(exc, "field", None)
    if isinstance(field, str):
        details["field"] = field
    return details


def sluice_error_response(exc: SluiceError) -> JsonResponse:
    status = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimitedError):
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s + 0.499)))
    if status == 401:
        headers["WWW-Authenticate"] = 'Bearer realm="sluice", charset="UTF-8"'
    if status >= 500:
        log.error("request failed", code=exc.code, error=exc.error, message=str(exc))
    return JsonResponse(
        error_body(exc.code, exc.error, str(exc), details_of(exc)), status, headers=headers
    )


def _field(location: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in location)


HTTP_METHODS = ("DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT")


def allowed_methods(request: Request) -> str:
    """Every method the request's path takes, for a 405's ``Allow`` header. (Starlette names
    only the methods of the first route matching the path; a path served by two routes, a GET
    and a POST, takes both.)"""
    routes = request.app.router.routes

    def takes(method: str) -> bool:
        scope = {**request.scope, "method": method}
        return any(route.matches(scope)[0] is Match.FULL for route in routes)

    return ", ".join(method for method in HTTP_METHODS if takes(method))


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(SluiceError)
    async def _sluice(_request: Request, exc: SluiceError) -> JsonResponse:
        return sluice_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, exc: RequestValidationError) -> JsonResponse:
        problems = [
            {"field": _field(tuple(problem.get("loc", ()))), "problem": str(problem.get("msg"))}
            for problem in exc.errors()
        ]
        first = problems[0] if problems else {"field": "", "problem": "invalid"}
        message = f"{first['field']}: {first['problem']}"
        if len(problems) > 1:
            message += f" (and {len(problems) - 1} more)"
        return JsonResponse(error_body(60, "invalid_input", message, {"fields": problems}), 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JsonResponse:
        code, error = HTTP_ERROR_NAMES.get(exc.status_code, (60, "bad_request"))
        status = exc.status_code if exc.status_code < 500 else 500
        headers = dict(exc.headers or {})
        if status == 405:
            headers["Allow"] = allowed_methods(request)
        return JsonResponse(error_body(code, error, str(exc.detail)), status, headers=headers)

    @app.exception_handler(CommandError)
    async def _command(_request: Request, exc: CommandError) -> JsonResponse:
        return JsonResponse(
            error_body(11, "component_call_failed", f"the ledger refused the command: {exc}"), 502
        )

    @app.exception_handler(RegistryError)
    async def _registry(_request: Request, exc: RegistryError) -> JsonResponse:
        return JsonResponse(
            error_body(11, "component_call_failed", f"the registry call failed: {exc}"), 502
        )

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JsonResponse:
        log.exception("unexpected error", error=repr(exc))
        return JsonResponse(
            error_body(0, "internal_error", "an unexpected error occurred; see the server log"),
            500,
        )
