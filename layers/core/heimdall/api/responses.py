"""Error responses of the HTTP functions: ``{"error": {"code", "message", "field"?, "details"?}}``.

Shared by the management API (:mod:`heimdall.api.app`) and the inference endpoint
(:mod:`heimdall.inference.app`), so that both answer errors the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver
from aws_lambda_powertools.utilities.data_classes.common import BaseProxyEvent

H = TypeVar("H", bound=Callable[..., Response[str]])

JSON = "application/json"
#: Seconds a client should wait before retrying a 503.
RETRY_AFTER_S = 5


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    field: str | None = None,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response[str]:
    """An ``{"error": ...}`` response (rendered here, so odd detail values cannot break serialisation)."""
    error: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        error["field"] = field
    if details:
        error["details"] = details
    extra = dict(headers or {})
    if status == HTTPStatus.SERVICE_UNAVAILABLE:
        extra.setdefault("Retry-After", str(RETRY_AFTER_S))
    body = json.dumps({"error": error}, default=str, ensure_ascii=False)
    return Response(status_code=status, content_type=JSON, body=body, headers=extra)


def handler_of(resolver: ApiGatewayResolver, exc_class: type[Exception]) -> Callable[[H], H]:
    """``resolver.exception_handler``, with its type: the handler answers for ``exc_class`` and subclasses."""
    register = resolver.exception_handler(exc_class)

    def decorate(handler: H) -> H:
        register(handler)
        return handler

    return decorate


def no_route_response(resolver: ApiGatewayResolver) -> Response[str]:
    """404 for a path no route of ``resolver`` has; 405 ``METHOD_NOT_ALLOWED`` with ``Allow`` for a path
    that other methods serve (``GET /v1/infer/{id}``, ``DELETE /api/v1/models``)."""
    event: BaseProxyEvent = resolver.current_event
    allowed = allowed_methods(resolver, event.path)
    if allowed:
        return error_response(
            405,
            "METHOD_NOT_ALLOWED",
            f"{event.http_method} is not allowed here; allowed: {', '.join(allowed)}",
            headers={"Allow": ", ".join(allowed)},
        )
    return error_response(404, "NOT_FOUND", "no such endpoint")


def allowed_methods(resolver: ApiGatewayResolver, path: str) -> list[str]:
    """The methods some route of ``resolver`` serves at ``path``."""
    # Powertools keeps its routes private and has no 405 of its own; this reads them only to answer one.
    routes = [*resolver._static_routes, *resolver._dynamic_routes]
    return sorted({route.method for route in routes if route.rule.match(path)})
