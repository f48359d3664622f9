"""The gateway's HTTP server: reads requests off the wire and writes responses back, as API Gateway's
front end does.

:class:`GatewayServer` and :class:`GatewayRequestHandler` are :mod:`http.server` underneath: they
refuse what API Gateway refuses before any function runs (a missing or unknown bearer token, a
declared body over the limit, a request that does not parse, each in the API's JSON error shape),
read plain and chunked bodies, and hand every admitted request to the :class:`LocalGateway` that owns
the server (:meth:`LocalGateway.respond <heimdall.local.gateway.LocalGateway.respond>`).

Standard library only, like the rest of the gateway.
"""

from __future__ import annotations

import base64
import logging
import secrets
import socket
import sys
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from heimdall.local.api_tokens import ApiIdentity
from heimdall.local.payload_format import HttpRequest, HttpResponse, error_response

if TYPE_CHECKING:
    from heimdall.local.gateway import LocalGateway

logger = logging.getLogger(__name__)

#: How long a connection closed after an early refusal keeps draining what the client still sends.
_LINGER_S = 2.0


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


class GatewayServer(ThreadingHTTPServer):
    """One thread per connection; ``gateway`` is the :class:`LocalGateway` its requests go to."""

    daemon_threads = True
    request_queue_size = 64  # bursts of concurrent clients (the API benchmark runs 8) are not refused
    gateway: LocalGateway

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that goes away mid-exchange is routine; socketserver would print a traceback.
        if isinstance(sys.exc_info()[1], OSError):
            logger.debug("connection from %s failed", client_address, exc_info=True)
        else:
            logger.exception("the gateway failed on a request from %s", client_address)


class GatewayRequestHandler(BaseHTTPRequestHandler):
    """One connection: each request on it is checked, read and handed to the server's gateway."""

    server: GatewayServer
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
