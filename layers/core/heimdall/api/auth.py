"""Who is calling, and may they: identity and scopes from the API Gateway v2 JWT authorizer context.

In AWS the HTTP API's JWT authorizer has already checked the token's signature, issuer and audience;
locally the gateway (:mod:`heimdall.local.gateway`) checks a bearer token and puts the same claims
shape into the event. Here we only read the result: ``requestContext.authorizer.jwt.claims["sub"]``
is the owner of everything the caller creates and the only owner whose records they can see.

Scopes come from ``jwt.scopes`` (a list) or, when API Gateway leaves that empty, from the ``scope``
claim (space-separated, OAuth 2) or the ``scp`` claim (Azure AD and Okta style). Reads need
``heimdall/read`` or ``heimdall/write``; anything else needs ``heimdall/write``. With
``HEIMDALL_API_REQUIRE_SCOPES=false`` any authenticated caller may do everything.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from heimdall.api.openapi import OPENAPI_PATH
from heimdall.errors import Forbidden, Unauthorized
from heimdall.settings import get_settings

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import Response
    from aws_lambda_powertools.event_handler.api_gateway import BaseRouter
    from aws_lambda_powertools.event_handler.middlewares import NextMiddleware
    from aws_lambda_powertools.event_handler.types import EventHandlerInstance

READ_SCOPE = "heimdall/read"
WRITE_SCOPE = "heimdall/write"
#: Methods that only read (and so need the read scope).
READ_METHODS = frozenset({"GET", "HEAD"})
#: Paths anyone may call: the OpenAPI document (``Auth: NONE`` on its route in AWS too).
PUBLIC_PATHS = frozenset({OPENAPI_PATH})
#: The longest subject accepted (the registry's owner field holds 256 characters).
MAX_SUB_CHARS = 256

_CONTEXT_KEY = "heimdall_caller"
# API Gateway renders a claim that is a JSON array as "[a b c]"; IdPs also use commas.
_SCOPE_SEPARATORS = re.compile(r"[\s,]+")


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: the subject (owner of their records) and the scopes granted."""

    sub: str
    scopes: frozenset[str]


def _claim_scopes(value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset(s for s in _SCOPE_SEPARATORS.split(value.strip().strip("[]")) if s)
    if isinstance(value, list):
        return frozenset(s for s in value if isinstance(s, str) and s)
    return frozenset()


def caller_from_event(event: Mapping[str, Any]) -> Caller:
    """The caller in the authorizer context of an API Gateway v2 event; :class:`Unauthorized` if none."""
    context = event.get("requestContext")
    authorizer = context.get("authorizer") if isinstance(context, Mapping) else None
    jwt = authorizer.get("jwt") if isinstance(authorizer, Mapping) else None
    claims = jwt.get("claims") if isinstance(jwt, Mapping) else None
    if not isinstance(claims, Mapping):
        raise Unauthorized("authentication required: send a bearer token")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.strip() or len(sub) > MAX_SUB_CHARS:
        raise Unauthorized("the token names no usable subject (sub claim)")
    listed = jwt.get("scopes") if isinstance(jwt, Mapping) else None
    if isinstance(listed, list) and listed:
        scopes = _claim_scopes(listed)
    else:
        scopes = _claim_scopes(claims.get("scope")) | _claim_scopes(claims.get("scp"))
    return Caller(sub=sub, scopes=scopes)


def required_scopes(method: str) -> frozenset[str]:
    """The scopes of which the caller needs one for an HTTP ``method``."""
    if method.upper() in READ_METHODS:
        return frozenset({READ_SCOPE, WRITE_SCOPE})
    return frozenset({WRITE_SCOPE})


def authorize(caller: Caller, method: str, *, require_scopes: bool) -> None:
    """Raise :class:`Forbidden` unless ``caller`` may make a ``method`` request."""
    if not require_scopes:
        return
    needed = required_scopes(method)
    if caller.scopes.isdisjoint(needed):
        raise Forbidden(
            f"this request needs the scope {' or '.join(sorted(needed))}",
            needed=sorted(needed),
        )


def authenticate(app: EventHandlerInstance, next_middleware: NextMiddleware) -> Response[Any]:
    """Resolver middleware: identify and authorize the caller of every route but the public ones."""
    event = app.current_event
    if event.path not in PUBLIC_PATHS:
        caller = caller_from_event(event.raw_event)
        authorize(caller, event.http_method, require_scopes=get_settings().api_require_scopes)
        app.context[_CONTEXT_KEY] = caller  # cleared by the resolver after each request
    return next_middleware(app)


def current_caller(router: BaseRouter) -> Caller:
    """The caller :func:`authenticate` identified for the request being handled."""
    caller = router.context.get(_CONTEXT_KEY)
    if not isinstance(caller, Caller):  # a route outside the middleware: a programming error
        raise RuntimeError("no authenticated caller in the request context")
    return caller
