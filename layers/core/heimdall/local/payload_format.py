"""API Gateway HTTP API's payload format 2.0, both ways: the event a request becomes, and the HTTP
response a handler's result becomes.

:func:`build_event` builds the event as API Gateway builds it for the ``$default`` route;
:func:`interpret_result` reads a handler's result as API Gateway reads it. Both are pure functions of
their input, so benchmarks and tests build real events without a server. :func:`error_response` is
the API's JSON error shape, for the refusals the gateway makes itself.

Standard library only, like the rest of the gateway.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from heimdall.local.api_tokens import ApiIdentity

logger = logging.getLogger(__name__)

# HTTP API passes these bodies to Lambda as text; any other type (none, form-urlencoded and
# multipart included) arrives base64-encoded. The developer guide says only "if the content type of
# the request is binary"; this split is the one observed against HTTP API (ministack PR #766).
_TEXT_MEDIA_TYPES = frozenset({"application/json", "application/xml", "application/javascript"})
# Connection-level headers the gateway owns; a handler's values for them are not passed on.
_HOP_BY_HOP = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# --- the event -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpRequest:
    """One request as it reached the gateway, before it becomes an event."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    protocol: str = "HTTP/1.1"


def is_textual(content_type: str | None) -> bool:
    """Whether HTTP API passes a body of this content type as text (else base64)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith("text/") or media in _TEXT_MEDIA_TYPES


def _request_time(now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC)
    return f"{stamp:%d}/{_MONTHS[stamp.month - 1]}/{stamp:%Y:%H:%M:%S} +0000"


def build_event(
    request: HttpRequest,
    *,
    identity: ApiIdentity | None,
    request_id: str,
    api_id: str = "local",
    account_id: str = "123456789012",
    now: float | None = None,
) -> dict[str, Any]:
    """The payload-format-2.0 event API Gateway HTTP API sends for ``request`` on its ``$default`` route.

    Fields API Gateway leaves out when empty stay out (``cookies``, ``queryStringParameters``,
    ``body``; ``pathParameters`` and ``stageVariables`` are never set on ``$default``), and the
    authorizer is present only when the route has one (``identity`` given).
    """
    target = request.target
    if not target.startswith("/"):  # absolute-form request target
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    raw_path, _, raw_query = target.partition("?")
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value
    host = headers.get("host", "localhost")
    headers.setdefault("x-forwarded-for", request.source_ip)
    headers.setdefault("x-forwarded-proto", "http")
    if ":" in host:
        headers.setdefault("x-forwarded-port", host.rsplit(":", 1)[1])
    epoch = time.time() if now is None else now
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": raw_path,
        "rawQueryString": raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    if raw_query:
        params: dict[str, str] = {}
        for key, value in parse_qsl(raw_query, keep_blank_values=True):
            params[key] = f"{params[key]},{value}" if key in params else value
        event["queryStringParameters"] = params
    context: dict[str, Any] = {
        "accountId": account_id,
        "apiId": api_id,
        "domainName": host,
        "domainPrefix": host.split(":", 1)[0].split(".", 1)[0],
        "http": {
            "method": request.method,
            "path": raw_path,
            "protocol": request.protocol,
            "sourceIp": request.source_ip,
            "userAgent": headers.get("user-agent", ""),
        },
        "requestId": request_id,
        "routeKey": "$default",
        "stage": "$default",
        "time": _request_time(epoch),
        "timeEpoch": int(epoch * 1000),
    }
    if identity is not None:
        context["authorizer"] = {"jwt": {"claims": identity.claims(), "scopes": list(identity.scopes)}}
    event["requestContext"] = context
    if request.body:
        text = _as_text(request.body) if is_textual(headers.get("content-type")) else None
        # A "textual" body that is not UTF-8 (a gzip bundle sent as application/json) goes base64:
        # decoding it with replacement characters would corrupt it.
        event["body"] = text if text is not None else base64.b64encode(request.body).decode("ascii")
        event["isBase64Encoded"] = text is None
    else:
        event["isBase64Encoded"] = False
    return event


def _as_text(body: bytes) -> str | None:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return None


# --- the response --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HttpResponse:
    """What goes back on the wire."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes


class MalformedResponse(Exception):
    """The handler returned something API Gateway could not turn into an HTTP response."""


def error_response(status: int, code: str, message: str, *headers: tuple[str, str]) -> HttpResponse:
    """A JSON error in the API's error shape."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return HttpResponse(status, [("Content-Type", "application/json"), *headers], body)


def _header_value(name: str, value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise MalformedResponse(f"header {name!r} has a {type(value).__name__} value")


def interpret_result(result: Any) -> HttpResponse:
    """API Gateway's reading of a format-2.0 Lambda result.

    A dict with ``statusCode`` is a response (``headers``, ``cookies``, ``body``,
    ``isBase64Encoded``); anything else is the body of a 200 ``application/json`` response (a string
    as is). ``multiValueHeaders`` is not part of format 2.0 and is dropped, as AWS drops it.
    """
    if not isinstance(result, dict) or "statusCode" not in result:
        text = result if isinstance(result, str) else json.dumps(result)
        return HttpResponse(200, [("Content-Type", "application/json")], text.encode())
    status = result["statusCode"]
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise MalformedResponse(f"statusCode {status!r} is not an HTTP status")
    raw_headers = result.get("headers") or {}
    if not isinstance(raw_headers, dict):
        raise MalformedResponse("headers is not an object")
    headers = [
        (str(name), _header_value(str(name), value))
        for name, value in raw_headers.items()
        if str(name).lower() not in _HOP_BY_HOP
    ]
    cookies = result.get("cookies") or []
    if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
        raise MalformedResponse("cookies is not a list of strings")
    headers += [("Set-Cookie", cookie) for cookie in cookies]
    if result.get("multiValueHeaders"):
        logger.warning("the handler returned multiValueHeaders, which payload format 2.0 ignores")
    body = result.get("body")
    if body is None:
        payload = b""
    elif not isinstance(body, str):
        raise MalformedResponse(f"body is a {type(body).__name__}, not a string")
    elif result.get("isBase64Encoded") is True:
        try:
            payload = base64.b64decode(body, validate=True)
        except binascii.Error:
            raise MalformedResponse("isBase64Encoded is true but body is not base64") from None
    else:
        payload = body.encode("utf-8")
    return HttpResponse(status, headers, payload)
