"""The local API Gateway: real HTTP in front of the API Lambda handler, with HTTP API's event shapes.

:class:`LocalGateway` does locally what an API Gateway HTTP API with a JWT authorizer and a Lambda
proxy integration (payload format 2.0, one ``$default`` route) does in AWS, so that the handler runs
unchanged and the differences a client could notice are the ones AWS has too:

* the event is built as API Gateway builds it (see
  :func:`~heimdall.local.payload_format.build_event`): raw path and query string as sent, header
  names lower-cased and repeated headers joined with commas, repeated query parameters joined with
  commas, ``Cookie`` headers moved into ``cookies``, the body base64-encoded unless its content type
  is textual, and the authorizer's claims under ``requestContext.authorizer.jwt``;
* a bearer token stands in for the JWT: it is looked up in a token table
  (:mod:`heimdall.local.api_tokens`; constant-time comparison) and its identity becomes the claims;
  no token or an unknown one is a 401 and the handler is not called. Routes in
  :data:`PUBLIC_ROUTES` have no authorizer, as ``Auth: NONE`` routes in the template;
* AWS's size limits hold: a request body over HTTP API's 10 MiB payload limit is a 413 (decided from
  ``Content-Length`` without reading the body), an event over Lambda's 6 MB invocation limit is a 413,
  and a handler response over Lambda's 6 MB response limit is a 502 — so a test notices locally what
  would fail in AWS;
* the handler's result is written back as API Gateway interprets a format-2.0 response (status,
  headers, ``cookies`` as ``Set-Cookie`` lines, base64 bodies decoded, ``Content-Length`` computed).

Requests that change state (POST, PUT, PATCH, DELETE) run under the lock the local stack passes in,
the lock its dispatcher holds around every other handler call (moto's DynamoDB does not make
conditional writes atomic under concurrency); reads run concurrently.

This module holds the gateway itself (its routes, limits and lock, and the call to the handler);
:mod:`heimdall.local.payload_format` holds the event and response shapes and
:mod:`heimdall.local.http_server` the reading and writing of HTTP. Nothing here imports anything
heavy: these modules are standard library only.
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

from heimdall.local.api_tokens import ApiIdentity
from heimdall.local.http_server import GatewayRequestHandler, GatewayServer
from heimdall.local.payload_format import (
    HttpRequest,
    HttpResponse,
    MalformedResponse,
    build_event,
    error_response,
    interpret_result,
)

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
#: API Gateway HTTP API's maximum request payload.
MAX_REQUEST_BYTES = 10 * MIB
#: Lambda's synchronous invocation limit on the event ("Request must be smaller than 6291456 bytes").
MAX_EVENT_BYTES = 6 * MIB
#: Lambda's limit on a synchronous response ("Exceeded maximum allowed payload size (6291556 bytes)").
MAX_RESPONSE_BYTES = 6 * MIB + 100

#: (method, raw path) of the routes with no authorizer: in the template they are ``Auth: NONE``.
PUBLIC_ROUTES = frozenset({("GET", "/api/v1/openapi.json")})
#: Methods whose requests are serialised with the stack's other handler calls.
MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})

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
        self._server: GatewayServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> LocalGateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalGateway:
        """Bind and serve in a daemon thread (raises :class:`OSError` when the port is taken)."""
        server = GatewayServer((self.host, self.port), GatewayRequestHandler)
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
