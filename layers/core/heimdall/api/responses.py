"""Error responses of the HTTP functions: ``{"error": {"code", "message", "field"?, "details"?}}``.

Shared by the management API (:mod:`heimdall.api.app`) and the inference endpoint
(:mod:`heimdall.serving`), so that both answer errors the same way.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, TypeVar

from aws_lambda_powertools.event_handler import Response
from aws_lambda_powertools.event_handler.api_gateway import ApiGatewayResolver

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
