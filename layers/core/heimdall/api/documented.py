"""How the API's operations document their answers in the OpenAPI documents: each operation's success,
its errors (as :class:`~heimdall.api.schemas.ErrorBody`) and the ones every operation may give, and the
request bodies routes read themselves. Used by the ``/api/v1`` routes and by the ``/v1`` inference app.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

from aws_lambda_powertools.event_handler.openapi.types import OpenAPIResponse
from pydantic import BaseModel

from heimdall.api.responses import JSON
from heimdall.api.schemas import SCHEMAS, ErrorBody

__all__ = [
    "COMMON_ERRORS",
    "ERROR_RESPONSES",
    "METHOD_NOT_ALLOWED_NOTE",
    "PROTOCOL_ERRORS",
    "documented",
    "json_request_body",
    "method_not_allowed_response",
]


#: The error statuses operations declare: (name of the shared response in the document, description).
ERROR_RESPONSES: Mapping[int, tuple[str, str]] = {
    400: (
        "BadRequest",
        "Malformed request: invalid JSON, a bad cursor or page size, a body that is not what its "
        "content type says, or inputs that do not fit the model (INVALID_JSON, INVALID_CURSOR, "
        "INVALID_PAGINATION, BAD_REQUEST, INVALID_INPUT)",
    ),
    401: ("Unauthorized", "No identity: no token, a bad token, or claims without a subject (UNAUTHORIZED)"),
    403: ("Forbidden", "The caller lacks the scope this request needs (FORBIDDEN)"),
    404: ("NotFound", "No such record, another owner's record, or an id that is not well-formed (NOT_FOUND)"),
    405: (
        "MethodNotAllowed",
        "The path exists, but not for this method; Allow lists the methods it serves (METHOD_NOT_ALLOWED)",
    ),
    409: (
        "Conflict",
        "The record is not in a state that allows this (CONFLICT, INVALID_TRANSITION, NOT_READY, "
        "NO_CHECKPOINT, NO_EXPORT_PACKAGE, DEPLOYMENT_INACTIVE, MODEL_NOT_SERVABLE)",
    ),
    413: (
        "PayloadTooLarge",
        "The request body or the bundle is over the limit (PAYLOAD_TOO_LARGE, TOO_LARGE)",
    ),
    414: (
        "UriTooLong",
        "The request line (path and query) is over 64 KiB; refused before any handler runs (URI_TOO_LONG)",
    ),
    415: (
        "UnsupportedMediaType",
        "The body's Content-Type is not one the operation takes (UNSUPPORTED_MEDIA_TYPE); no Content-Type "
        "at all is read as JSON (or, for an import, as a bundle told by its bytes)",
    ),
    422: (
        "Unprocessable",
        "Request validation failed (VALIDATION_ERROR), an Idempotency-Key was sent again with another "
        "request (IDEMPOTENCY_KEY_REUSED), the bundle or package was refused (INVALID_BUNDLE, "
        "CHECKSUM_MISMATCH, PACKAGE_INCONSISTENT, ...), or the model answered NaN (NON_FINITE_OUTPUT)",
    ),
    429: (
        "TooManyRequests",
        "The API key's requests for the last minute are used up; retry after Retry-After seconds "
        "(RATE_LIMITED)",
    ),
    503: (
        "Unavailable",
        "Storage or the registry is unavailable; retry after Retry-After seconds (STORAGE_ERROR, "
        "REGISTRY_UNAVAILABLE)",
    ),
}
#: Every authenticated operation may answer these: no identity, no scope, a bad parameter, an outage.
COMMON_ERRORS = (401, 403, 422, 503)
#: Every operation, public or not, may answer these: a request line too long to read.
PROTOCOL_ERRORS = (414,)
#: No operation answers 405 (it is the answer to a method no operation has at that path): the documents
#: declare it once, in components/responses, and say so in their description.
METHOD_NOT_ALLOWED_NOTE = (
    "A method a path does not serve is 405 METHOD_NOT_ALLOWED with an Allow header "
    "(components/responses/MethodNotAllowed); a request line over 64 KiB is 414 URI_TOO_LONG."
)

_RETRY_AFTER_HEADER = {
    "description": "Seconds to wait before retrying.",
    "required": True,
    "schema": {"type": "string", "pattern": "^[0-9]+$"},
}


def json_request_body(model: type[BaseModel], description: str) -> dict[str, Any]:
    """The ``requestBody`` of an operation whose route reads ``model`` itself (see heimdall.api.bodies)."""
    return {
        "required": True,
        "description": description,
        "content": {JSON: {"schema": {"$ref": SCHEMAS + model.__name__}}},
    }


def documented(
    status: int,
    description: str,
    model: type[Any] | None = None,
    *,
    errors: tuple[int, ...] = (),
    public: bool = False,
    content: Mapping[str, Any] | None = None,
    headers: Mapping[str, Any] | None = None,
) -> dict[int, OpenAPIResponse]:
    """An operation's ``responses``: its success, its ``errors`` and the common ones, as ErrorBody.

    ``model`` is the success body (JSON: a pydantic model or a dataclass); ``content`` replaces it for
    other bodies, and no body at all is documented when both are None (204). ``public`` operations
    need no identity, so they do not list 401/403.
    """
    success: dict[str, Any] = {"description": description}
    if model is not None:
        success["content"] = {JSON: {"model": model}}
    elif content is not None:
        success["content"] = dict(content)
    if headers:
        success["headers"] = dict(headers)
    out: dict[int, Any] = {status: success}
    common = PROTOCOL_ERRORS if public else (*COMMON_ERRORS, *PROTOCOL_ERRORS)
    for code in sorted({*errors, *common}):
        error: dict[str, Any] = {
            "description": ERROR_RESPONSES[code][1],
            "content": {JSON: {"model": ErrorBody}},
        }
        if code in (429, 503):
            error["headers"] = {"Retry-After": _RETRY_AFTER_HEADER}
        out[code] = error
    return cast(dict[int, OpenAPIResponse], out)


def method_not_allowed_response() -> dict[str, Any]:
    """The document's shared 405: ErrorBody, with the ``Allow`` header listing the path's methods."""
    return {
        "description": ERROR_RESPONSES[405][1],
        "headers": {
            "Allow": {
                "description": "The methods the path serves, comma-separated.",
                "required": True,
                "schema": {"type": "string"},
            }
        },
        "content": {JSON: {"schema": {"$ref": SCHEMAS + ErrorBody.__name__}}},
    }
