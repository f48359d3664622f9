"""The local API Gateway: real HTTP in front of the API Lambda handler, with HTTP API's event shapes.

:class:`LocalGateway` does locally what an API Gateway HTTP API with a JWT authorizer and a Lambda
proxy integration (payload format 2.0, one ``$default`` route) does in AWS, so that the handler runs
unchanged and the differences a client could notice are the ones AWS has too:

* the event is built as API Gateway builds it (see :func:`build_event`): raw path and query string
  as sent, header names lower-cased and repeated headers joined with commas, repeated query
  parameters joined with commas, ``Cookie`` headers moved into ``cookies``, the body base64-encoded
  unless its content type is textual, and the authorizer's claims under
  ``requestContext.authorizer.jwt``;
* a bearer token stands in for the JWT: it is looked up in a token table (constant-time comparison)
  and its identity becomes the claims; no token or an unknown one is a 401 and the handler is not
  called. Routes in :data:`PUBLIC_ROUTES` have no authorizer, as ``Auth: NONE`` routes in the template;
* AWS's size limits hold: a request body over HTTP API's 10 MiB payload limit is a 413 (decided from
  ``Content-Length`` without reading the body), an event over Lambda's 6 MB invocation limit is a 413,
  and a handler response over Lambda's 6 MB response limit is a 502 — so a test notices locally what
  would fail in AWS;
* the handler's result is written back as API Gateway interprets a format-2.0 response (status,
  headers, ``cookies`` as ``Set-Cookie`` lines, base64 bodies decoded, ``Content-Length`` computed).

Requests that change state (POST, PUT, PATCH, DELETE) run under the lock the local stack passes in,
the lock its dispatcher holds around every other handler call (moto's DynamoDB does not make
conditional writes atomic under concurrency); reads run concurrently.

Nothing here imports anything heavy: the module is standard library only.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import logging
import os
import secrets
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: API Gateway HTTP API's maximum request payload.
MAX_REQUEST_BYTES = 10 * MIB
#: Lambda's synchronous invocation limit on the event ("Request must be smaller than 6291456 bytes").
MAX_EVENT_BYTES = 6 * MIB
#: Lambda's limit on a synchronous response ("Exceeded maximum allowed payload size (6291556 bytes)").
MAX_RESPONSE_BYTES = 6 * MIB + 100

DEFAULT_SUB = "local-user"
DEFAULT_SCOPES = ("heimdall/read", "heimdall/write")
TOKEN_FILE_NAME = "api-token"  # noqa: S105 - a file name, not a secret
#: (method, raw path) of the routes with no authorizer: in the template they are ``Auth: NONE``.
PUBLIC_ROUTES = frozenset({("GET", "/api/v1/openapi.json")})
#: Methods whose requests are serialised with the stack's other handler calls.
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

# HTTP API passes these bodies to Lambda as text; any other type (none, form-urlencoded and
# multipart included) arrives base64-encoded. The developer guide says only "if the content type of
# the request is binary"; this split is the one observed against HTTP API (ministack PR #766).
_TEXT_MEDIA_TYPES = frozenset({"application/json", "application/xml", "application/javascript"})
# Connection-level headers the gateway owns; a handler's values for them are not passed on.
_HOP_BY_HOP = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding"})
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_LINGER_S = 2.0

LambdaHandler = Callable[[dict[str, Any], Any], Any]


@dataclass(frozen=True)
class Integration:
    """A Lambda behind some of the gateway's paths: its handler, its context, and whether the JWT
    authorizer guards it (the inference function's routes check a deployment's API key instead)."""

    handler: LambdaHandler
    context_factory: Callable[[], Any] = lambda: None
    authorizer: bool = True
    #: Whether its state-changing requests take the gateway's lock (a function that serialises its own
    #: writes, as the inference function's counters do locally, runs concurrently like Lambda).
    serialized: bool = True


# --- identities and tokens ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ApiIdentity:
    """Who a bearer token stands for: the JWT's ``sub`` and the scopes it grants."""

    sub: str
    scopes: tuple[str, ...] = ()

    def claims(self) -> dict[str, str]:
        """The claims a JWT authorizer would pass on (``scope`` is space-separated, as in OAuth)."""
        return {"sub": self.sub, "scope": " ".join(self.scopes)}


@dataclass(frozen=True)
class ApiTokens:
    """The local stack's token table, its default token and the file that holds that token."""

    default: str
    file: Path
    table: dict[str, ApiIdentity]


def parse_identities(raw: Mapping[str, Any]) -> dict[str, ApiIdentity]:
    """``{"<token>": {"sub": "...", "scopes": [...]}}`` (or :class:`ApiIdentity` values) → token table.

    Raises :class:`ValueError` naming the entry that is malformed.
    """
    table: dict[str, ApiIdentity] = {}
    for token, entry in raw.items():
        if not isinstance(token, str) or not token.strip():
            raise ValueError("API tokens must be non-empty strings")
        if isinstance(entry, ApiIdentity):
            table[token] = entry
            continue
        if not isinstance(entry, Mapping):
            raise ValueError(f"API token entry for {token[:4]}…: expected an object with 'sub' and 'scopes'")
        sub, scopes = entry.get("sub"), entry.get("scopes", [])
        if not isinstance(sub, str) or not sub:
            raise ValueError(f"API token entry for {token[:4]}…: 'sub' must be a non-empty string")
        if isinstance(scopes, str):
            scopes = scopes.split()
        if not isinstance(scopes, list) or not all(isinstance(s, str) for s in scopes):
            raise ValueError(f"API token entry for {token[:4]}…: 'scopes' must be a list of strings")
        table[token] = ApiIdentity(sub=sub, scopes=tuple(scopes))
    return table


def load_api_tokens(workdir: Path, extra: Mapping[str, Any] | None = None) -> ApiTokens:
    """The local token table.

    The default token is ``HEIMDALL_API_TOKEN`` when set, else freshly generated; either way it is
    written to ``{workdir}/api-token`` (mode 0600) for the command line to find, and it stands for
    ``local-user`` with read and write scopes. ``HEIMDALL_API_TOKENS`` (a JSON object) and ``extra``
    add tokens, later sources winning.
    """
    default = os.environ.get("HEIMDALL_API_TOKEN", "").strip() or secrets.token_urlsafe(32)
    table = {default: ApiIdentity(DEFAULT_SUB, DEFAULT_SCOPES)}
    if env_tokens := os.environ.get("HEIMDALL_API_TOKENS", "").strip():
        try:
            parsed = json.loads(env_tokens)
        except json.JSONDecodeError as exc:
            raise ValueError(f"HEIMDALL_API_TOKENS is not valid JSON: {exc}") from None
        if not isinstance(parsed, dict):
            raise ValueError("HEIMDALL_API_TOKENS must be a JSON object of token → {sub, scopes}")
        table.update(parse_identities(parsed))
    table.update(parse_identities(extra or {}))
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / TOKEN_FILE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)  # an older file may have been created with wider permissions
        out.write(default + "\n")
    return ApiTokens(default=default, file=path, table=table)


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


# --- the server ----------------------------------------------------------------------------------------


class _BadRequest(Exception):
    pass


#: The characters of an HTTP method token (RFC 9110 §5.6.2).
_TOKEN_CHARS = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
#: The codes of the refusals http.server makes itself, before any handler runs: a request line over
#: 64 KiB (414), a header line over 64 KiB or over 100 headers (431), an unknown HTTP version (505),
#: anything else that does not parse (400).
_PROTOCOL_ERRORS = {
    HTTPStatus.BAD_REQUEST: "BAD_REQUEST",
    HTTPStatus.REQUEST_URI_TOO_LONG: "URI_TOO_LONG",
    HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE: "HEADERS_TOO_LARGE",
    HTTPStatus.EXPECTATION_FAILED: "EXPECTATION_FAILED",
    HTTPStatus.HTTP_VERSION_NOT_SUPPORTED: "HTTP_VERSION_NOT_SUPPORTED",
}
#: A refusal's message quotes at most this much of what http.server says (it may quote the request line).
_MAX_PROTOCOL_MESSAGE = 200


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64  # bursts of concurrent clients (the API benchmark runs 8) are not refused
    gateway: LocalGateway

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-exchange is routine; socketserver would print a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            logger.debug("connection from %s failed", client_address, exc_info=True)
        else:
            logger.exception("the gateway failed on a request from %s", client_address)


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # keep-alive, so concurrent clients reuse their connections
    # Headers and body go out as separate writes: with Nagle's algorithm on, the body waits for the
    # client's delayed ACK of the headers (about 40 ms per keep-alive request). API Gateway has no such stall.
    disable_nagle_algorithm = True
    timeout = 60  # an idle or stalled connection does not hold its thread for ever
    _linger = False

    # http.server calls these by name.
    def do_GET(self) -> None:
        self._dispatch()

    do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = do_OPTIONS = do_GET

    def __getattr__(self, name: str) -> Any:
        # Any other method token (TRACE, QUERY, M-SEARCH, ...) reaches the handler as well, as it would
        # through API Gateway: the API answers it (405 with Allow, or 404), not http.server's 501 HTML
        # page. What is not a token at all is a malformed request: 400.
        if name.startswith("do_"):
            method = name.removeprefix("do_")
            return self._dispatch if method and set(method) <= _TOKEN_CHARS else self._bad_method
        raise AttributeError(name)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusal of a request it cannot parse, in the API's JSON error shape.

        The standard library answers these with an HTML page; every error a client of the API gets,
        from the handlers or from here, is ``{"error": {"code", "message"}}``. The connection closes:
        after a malformed request nothing that follows on it can be trusted.
        """
        status = HTTPStatus(code)
        text = (message or status.phrase)[:_MAX_PROTOCOL_MESSAGE]
        response = error_response(status, _PROTOCOL_ERRORS.get(status, "BAD_REQUEST"), text)
        request_id = base64.b64encode(secrets.token_bytes(10)).decode("ascii")
        # A request line that did not parse leaves the version at HTTP/0.9, whose replies have no status
        # line or headers: a refusal always has them.
        self.request_version = self.protocol_version
        self._reply(response, request_id, close=True)

    def _bad_method(self) -> None:
        self.send_error(HTTPStatus.BAD_REQUEST, f"the request method {self.command[:32]!r} is not a token")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def handle_expect_100(self) -> bool:
        # A request that is refused anyway gets its refusal instead of "100 Continue" (no upload).
        if self._precheck() is None:
            return super().handle_expect_100()
        return True

    def finish(self) -> None:
        super().finish()
        if self._linger:
            _drain(self.connection)

    # --- the request ---------------------------------------------------------------------------------

    def _precheck(self) -> HttpResponse | None:
        """The refusal this request gets before its body is read (auth, declared size), or None."""
        gateway = self.server.gateway
        path = self.path.partition("?")[0]
        if gateway.authorized(self.command, path):
            scheme, _, token = (self.headers.get("Authorization") or "").strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return error_response(
                    401,
                    "UNAUTHORIZED",
                    "missing bearer token: send 'Authorization: Bearer <token>' "
                    "(heimdall local up prints the token)",
                    ("WWW-Authenticate", 'Bearer realm="heimdall"'),
                )
            if gateway.identify(token.strip()) is None:
                return error_response(
                    401,
                    "UNAUTHORIZED",
                    "invalid bearer token",
                    ("WWW-Authenticate", 'Bearer realm="heimdall", error="invalid_token"'),
                )
        length = self.headers.get("Content-Length")
        if length is not None:
            if not length.strip().isdigit():
                return error_response(400, "BAD_REQUEST", "Content-Length is not a number")
            if int(length) > gateway.max_request_bytes:
                return self._too_large(int(length))
        return None

    def _too_large(self, size: int | None) -> HttpResponse:
        limit = self.server.gateway.max_request_bytes
        told = f"is {size} bytes" if size is not None else "is over the limit"
        return error_response(
            413, "PAYLOAD_TOO_LARGE", f"the request body {told}; the API accepts at most {limit} bytes"
        )

    def _identity(self) -> ApiIdentity | None:
        if not self.server.gateway.authorized(self.command, self.path.partition("?")[0]):
            return None
        token = (self.headers.get("Authorization") or "").strip().partition(" ")[2].strip()
        return self.server.gateway.identify(token)

    def _read_body(self) -> bytes | None:
        """The request body; None when it is over the limit (the rest is left unread)."""
        limit = self.server.gateway.max_request_bytes
        encoding = (self.headers.get("Transfer-Encoding") or "").strip().lower()
        if encoding:
            if encoding.rsplit(",", 1)[-1].strip() != "chunked":
                raise _BadRequest(f"unsupported Transfer-Encoding {encoding!r}")
            return self._read_chunked(limit)
        length = int(self.headers.get("Content-Length") or 0)  # checked by _precheck
        body = self.rfile.read(length)
        if len(body) < length:
            raise _BadRequest("the connection closed before the whole body arrived")
        return body

    def _read_chunked(self, limit: int) -> bytes | None:
        parts: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(65537)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise _BadRequest("malformed chunk size") from None
            if size == 0:
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass  # trailers carry nothing the event has a place for
                return b"".join(parts)
            total += size
            if total > limit:
                return None
            chunk = self.rfile.read(size)
            if len(chunk) < size:
                raise _BadRequest("the connection closed inside a chunk")
            parts.append(chunk)
            self.rfile.readline()

    def _body_declared(self) -> bool:
        length = (self.headers.get("Content-Length") or "0").strip()
        return bool(self.headers.get("Transfer-Encoding")) or length != "0"

    def _dispatch(self) -> None:
        gateway = self.server.gateway
        request_id = base64.b64encode(secrets.token_bytes(10)).decode("ascii")
        refusal = self._precheck()
        if refusal is not None:
            self._reply(refusal, request_id, close=self._body_declared())
            return
        try:
            body = self._read_body()
        except _BadRequest as exc:
            self._reply(error_response(400, "BAD_REQUEST", str(exc)), request_id, close=True)
            return
        except OSError:
            logger.info("request %s: the client went away while sending the body", request_id)
            self.close_connection = True
            return
        if body is None:
            self._reply(self._too_large(None), request_id, close=True)
            return
        request = HttpRequest(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            protocol=self.request_version,
        )
        self._reply(gateway.respond(request, self._identity(), request_id), request_id)

    def _reply(self, response: HttpResponse, request_id: str, *, close: bool = False) -> None:
        self.send_response_only(response.status)
        names = {name.lower() for name, _ in response.headers}
        for name, value in response.headers:
            self.send_header(name, value)
        if "date" not in names:
            self.send_header("Date", self.date_time_string())
        self.send_header("Apigw-Requestid", request_id)
        no_body = response.status in (204, 304) or response.status < 200
        if not no_body:
            self.send_header("Content-Length", str(len(response.body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
            self._linger = True
        self.end_headers()
        if self.command != "HEAD" and not no_body:
            self.wfile.write(response.body)
        self.log_request(response.status, len(response.body))


def _drain(connection: socket.socket) -> None:
    """Read and drop what the client still sends after an early refusal, for a short while.

    Closing a socket with unread input resets the connection, and the reset can destroy the
    refusal before the client reads it; half-closing and draining first lets it arrive.
    """
    deadline = time.monotonic() + _LINGER_S
    try:
        connection.shutdown(socket.SHUT_WR)
        while (left := deadline - time.monotonic()) > 0:
            connection.settimeout(left)
            if not connection.recv(65536):
                return
    except OSError:
        return


class LocalGateway:
    """An HTTP server on ``host:port`` that hands every request to ``handler`` as HTTP API does.

    ``tokens`` maps bearer tokens to identities; ``lock`` (optional) serialises the requests that
    change state with the other users of the same lock; ``context_factory`` builds the Lambda context
    object for each call. ``integrations`` sends the paths under a prefix to another function (as
    the template's routes do), with or without the JWT authorizer. ``port=0`` picks a free port;
    :attr:`url` says which.
    """

    def __init__(
        self,
        handler: LambdaHandler,
        tokens: Mapping[str, ApiIdentity],
        *,
        host: str = "127.0.0.1",
        port: int = 3000,
        lock: AbstractContextManager[object] | None = None,
        context_factory: Callable[[], Any] = lambda: None,
        public_routes: Iterable[tuple[str, str]] = PUBLIC_ROUTES,
        max_request_bytes: int = MAX_REQUEST_BYTES,
        max_event_bytes: int = MAX_EVENT_BYTES,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        integrations: Mapping[str, Integration] | None = None,
    ) -> None:
        self.handler = handler
        self._default = Integration(handler, context_factory)
        # Longest prefix first, so that a more specific prefix wins.
        self._integrations = sorted((integrations or {}).items(), key=lambda item: -len(item[0]))
        self._tokens = [(token.encode("utf-8"), identity) for token, identity in tokens.items()]
        self.host = host
        self.port = port
        self._lock: AbstractContextManager[object] = lock if lock is not None else nullcontext()
        self._context_factory = context_factory
        self.public_routes = frozenset(public_routes)
        self.max_request_bytes = max_request_bytes
        self.max_event_bytes = max_event_bytes
        self.max_response_bytes = max_response_bytes
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalGateway:
        """Bind and serve in a daemon thread (raises :class:`OSError` when the port is taken)."""
        server = _Server((self.host, self.port), _RequestHandler)
        server.gateway = self
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="local-gateway", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop accepting requests and close the listening socket."""
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = None
        self._thread = None

    @property
    def url(self) -> str:
        """The base URL, e.g. ``http://127.0.0.1:3000``."""
        return f"http://{self.host}:{self.port}"

    # --- requests --------------------------------------------------------------------------------------

    def integration_for(self, path: str) -> Integration:
        """The function that serves ``path``."""
        for prefix, integration in self._integrations:
            if path.startswith(prefix):
                return integration
        return self._default

    def authorized(self, method: str, path: str) -> bool:
        """Whether the JWT authorizer guards ``method path`` (a bearer token of the table is needed)."""
        return (method, path) not in self.public_routes and self.integration_for(path).authorizer

    def identify(self, token: str) -> ApiIdentity | None:
        """The identity of ``token``, compared in constant time with every known token."""
        given = token.encode("utf-8", "surrogateescape")
        found = None
        for known, identity in self._tokens:
            if hmac.compare_digest(given, known):  # no early exit: the time does not tell which matched
                found = identity
        return found

    def respond(self, request: HttpRequest, identity: ApiIdentity | None, request_id: str) -> HttpResponse:
        """Run the handler for an admitted request and turn its result (or failure) into a response."""
        where = f"request {request_id} {request.method} {request.target.partition('?')[0]}"
        event = build_event(request, identity=identity, request_id=request_id)
        event_size = len(json.dumps(event))
        if event_size > self.max_event_bytes:
            return error_response(
                413,
                "PAYLOAD_TOO_LARGE",
                f"the request makes a {event_size}-byte Lambda event; Lambda accepts at most "
                f"{self.max_event_bytes} bytes (binary bodies grow by a third in base64)",
            )
        integration = self.integration_for(request.target.partition("?")[0])
        serialized = integration.serialized and request.method in MUTATING_METHODS
        lock = self._lock if serialized else nullcontext()
        try:
            with lock:
                result = integration.handler(event, integration.context_factory())
            size = len(json.dumps(result))
        except Exception:
            logger.exception("%s: the handler failed", where)
            return error_response(500, "INTERNAL_ERROR", f"the API handler failed (request {request_id})")
        if size > self.max_response_bytes:
            logger.error(
                "%s: the handler's response is %d bytes, over Lambda's %d-byte limit; AWS answers 502",
                where,
                size,
                self.max_response_bytes,
            )
            return error_response(
                502,
                "RESPONSE_TOO_LARGE",
                f"the API handler's response is {size} bytes; Lambda returns at most "
                f"{self.max_response_bytes} bytes",
            )
        try:
            return interpret_result(result)
        except MalformedResponse as exc:
            logger.error("%s: malformed handler response: %s", where, exc)
            return error_response(
                500, "INTERNAL_ERROR", f"the API handler returned a malformed response: {exc}"
            )
