"""The errors of the API client, and the :class:`ApiError` an error answer stands for.

Every answer that is not the expected status becomes an :class:`ApiError` carrying the server's
``code``, ``message``, ``field`` and HTTP status; bodies that are not the API's ``{"error": {...}}``
(API Gateway's own answers, HTML error pages, S3's XML) get a code from the status, and a 429 says
when to retry. Transport failures and waits have their own codes. All are
:class:`~heimdall.errors.HeimdallError`, so the command line prints them as ``error CODE: message``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import httpx

from heimdall.errors import HeimdallError

# Codes for answers whose body is not the API's error object (API Gateway, proxies, storage).
_STATUS_CODES = {
    400: "BAD_REQUEST",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    422: "VALIDATION_ERROR",
    429: "TOO_MANY_REQUESTS",
    500: "INTERNAL_ERROR",
    502: "BAD_GATEWAY",
    503: "SERVICE_UNAVAILABLE",
    504: "GATEWAY_TIMEOUT",
}
_S3_ERROR = re.compile(rb"<Code>([^<]{1,128})</Code>.*?<Message>([^<]{0,512})</Message>", re.DOTALL)
_TAG = re.compile(r"<[^>]*>")


class ApiError(HeimdallError):
    """The API, or the storage behind a presigned URL, refused a request (or a job/import it followed).

    ``code`` is the server's own code (``NOT_FOUND``, ``INVALID_BUNDLE``, ...), ``status`` the HTTP
    status (``None`` when the failure was reported in a resource, such as a rejected import).
    """

    code = "API_ERROR"

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None,
        field: str | None = None,
        details: Mapping[str, Any] | None = None,
        retry_after: str | None = None,
    ) -> None:
        super().__init__(message, field=field)
        # One class serves every code the server may send (including ones added after this client):
        # the code is data here, not a subclass.
        self.code = code  # type: ignore[misc]
        self.status = status
        self.details = dict(details or {})
        self.retry_after = retry_after


class ApiUnreachable(HeimdallError):
    """No connection could be made (refused, unknown host, TLS failure)."""

    code = "API_UNREACHABLE"


class ApiTimeout(HeimdallError):
    """The server did not answer in time."""

    code = "API_TIMEOUT"


class ConnectionLost(HeimdallError):
    """The connection broke mid-answer, or the server spoke something that is not HTTP."""

    code = "API_CONNECTION_ERROR"


class WaitTimedOut(HeimdallError):
    """A job or an import was still undecided when the wait ran out."""

    code = "WAIT_TIMEOUT"


class JobFailed(HeimdallError):
    """An export job that was waited for ended FAILED."""

    code = "JOB_FAILED"


class JobCancelled(JobFailed):
    """An export job that was waited for ended CANCELLED."""

    code = "JOB_CANCELLED"


def error_from_response(
    response: httpx.Response, *, code: str | None = None, origin: str = "the API"
) -> ApiError:
    """The :class:`ApiError` an error answer stands for; its body must have been read.

    ``code`` overrides the code for bodies that do not carry one (storage answers); ``origin`` names
    who answered in messages that come from the status alone.
    """
    status = response.status_code
    retry_after = response.headers.get("retry-after")
    fallback = code or _STATUS_CODES.get(status, f"HTTP_{status}")
    body = response.content
    doc = loads_json(body)
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        error = doc["error"]
        details = error.get("details")
        field = error.get("field")
        return ApiError(
            str(error.get("code") or fallback),
            str(error.get("message") or response.reason_phrase) + _retry_hint(status, retry_after),
            status=status,
            field=field if isinstance(field, str) else None,
            details=details if isinstance(details, dict) else None,
            retry_after=retry_after,
        )
    if isinstance(doc, dict) and isinstance(doc.get("message"), str):  # API Gateway's own answers
        detail = doc["message"]
    elif s3 := _S3_ERROR.search(body[:8192]):
        detail = f"{s3.group(1).decode(errors='replace')}: {s3.group(2).decode(errors='replace')}"
    else:
        text = " ".join(_TAG.sub(" ", body[:4096].decode("utf-8", errors="replace")).split())
        detail = text[:200] or response.reason_phrase or "no body"
    message = f"{origin} answered HTTP {status}: {detail}{_retry_hint(status, retry_after)}"
    return ApiError(fallback, message, status=status, retry_after=retry_after)


def _retry_hint(status: int, retry_after: str | None) -> str:
    """What a 429 adds to its message: when to try again, from ``Retry-After`` (seconds or a date)."""
    if status != 429:
        return ""
    if not retry_after or not retry_after.strip():
        return " (retry later: the answer gave no Retry-After)"
    value = retry_after.strip()
    return f" (retry after {value} s)" if value.isdigit() else f" (retry after {value})"


def loads_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
