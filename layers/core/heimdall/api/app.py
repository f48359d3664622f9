"""The HTTP API's resolver: routes, the caller check, and the one place errors become responses.

``app`` is a Powertools :class:`APIGatewayHttpResolver` (API Gateway HTTP API, payload format 2.0) with
request validation on (parameters; the routes that take a body read it with :mod:`heimdall.api.bodies`).
The Lambda handler (``functions/api/app.py``) calls ``app.resolve``; the local gateway calls the same
handler with the same event shape.

Errors: every response that is not a success is ``{"error": {"code", "message", "field"?, "details"?}}``.
Typed errors (:class:`heimdall.errors.HeimdallError`) carry their status; request validation is 422
``VALIDATION_ERROR`` (400 ``INVALID_PAGINATION`` for a bad page size); an unknown route is 404 (405
with ``Allow`` when the path exists for other methods); a 503 says when to retry. Anything else is a
bug: it is logged and answered with a bare 500 ``INTERNAL_ERROR``.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from http import HTTPStatus
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response
from aws_lambda_powertools.event_handler.exceptions import NotFoundError
from aws_lambda_powertools.event_handler.openapi.exceptions import RequestValidationError

from heimdall.api.auth import authenticate
from heimdall.api.documented import documented
from heimdall.api.openapi import OPENAPI_PATH, build_document, render
from heimdall.api.responses import JSON, H, error_response, handler_of, no_route_response
from heimdall.api.routes import capabilities, deployments, export_jobs, imports, models, uploads
from heimdall.errors import HeimdallError
from heimdall.observability import logger

#: At most this many validation problems are spelled out in one message.
MAX_LISTED_PROBLEMS = 5
_PAGINATION_PARAMS = {("query", "limit"), ("query", "cursor")}

app = APIGatewayHttpResolver(enable_validation=True)
app.use(middlewares=[authenticate])
for _routes in (models, imports, export_jobs, capabilities, deployments, uploads):
    app.include_router(_routes.router)


@cache
def openapi_text() -> str:
    """The generated OpenAPI document, rendered once per container."""
    return render(build_document(app))


@app.get(
    OPENAPI_PATH,
    summary="This API's OpenAPI document",
    tags=["meta"],
    responses=documented(
        200, "The OpenAPI 3.1 document", content={JSON: {"schema": {"type": "object"}}}, public=True
    ),
)
def openapi_document() -> Response[str]:
    """The OpenAPI document (no authentication needed)."""
    return Response(status_code=200, content_type=JSON, body=openapi_text())


# --------------------------------------------------------------------------------------------------
# Errors → responses


def handles(exc_class: type[Exception]) -> Callable[[H], H]:
    """``app.exception_handler``, typed (see :func:`heimdall.api.responses.handler_of`)."""
    return handler_of(app, exc_class)


def internal_error(exc: BaseException) -> Response[str]:
    """A bug: logged in full, answered without detail."""
    logger.exception("unhandled error in the HTTP API", extra={"error_type": type(exc).__name__})
    return error_response(500, "INTERNAL_ERROR", "internal error")


@handles(HeimdallError)
def heimdall_error(exc: HeimdallError) -> Response[str]:
    """Typed errors carry their own status and code."""
    if exc.http_status >= 500:
        level = logger.warning if exc.http_status == HTTPStatus.SERVICE_UNAVAILABLE else logger.error
        level("request failed", extra={"code": exc.code, "error": exc.message})
    return error_response(exc.http_status, exc.code, exc.message, field=exc.field, details=exc.details)


def _where(loc: tuple[Any, ...]) -> str:
    """Where a problem is: ``("query", "limit")`` → ``limit``, ``("body", "formats", 0)`` → ``formats.0``."""
    return ".".join(str(part) for part in (loc[1:] or loc)) or "request"


@handles(RequestValidationError)
def invalid_request(exc: RequestValidationError) -> Response[str]:
    """Request validation (Powertools' of parameters, ours of bodies): 422 naming the fields, or 400
    INVALID_PAGINATION when only the page size or cursor is wrong."""
    errors = list(exc.errors())
    if any(tuple(e.get("loc", ()))[:1] == ("response",) for e in errors):
        # Powertools reports a response that does not match its model this way: our bug, not the caller's.
        return internal_error(exc)
    problems = [(tuple(e.get("loc", ())), str(e.get("msg", "invalid"))) for e in errors]
    message = "; ".join(f"{_where(loc)}: {msg}" for loc, msg in problems[:MAX_LISTED_PROBLEMS])
    if len(problems) > MAX_LISTED_PROBLEMS:
        message += f"; and {len(problems) - MAX_LISTED_PROBLEMS} more"
    field = _where(problems[0][0]) if problems else None
    details = {"errors": [{"loc": list(loc), "message": msg} for loc, msg in problems[:20]]}
    if problems and all(loc[:2] in _PAGINATION_PARAMS for loc, _ in problems):
        # The same code whichever layer noticed a bad page request (the registry raises it too).
        return error_response(400, "INVALID_PAGINATION", message, field=field, details=details)
    return error_response(422, "VALIDATION_ERROR", message, field=field, details=details)


@handles(NotFoundError)
def no_route(exc: NotFoundError) -> Response[str]:
    """404 for a path no route has; 405 (with Allow) for a path that exists for other methods."""
    return no_route_response(app)


@handles(Exception)
def unexpected(exc: Exception) -> Response[str]:
    """Last resort: a bug. Never reached by bad input (the tests send plenty)."""
    return internal_error(exc)
