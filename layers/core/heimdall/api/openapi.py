"""The OpenAPI document of the HTTP API, generated from the resolver's routes.

Powertools writes the operations, parameters and responses from the routes, which declare every
4xx/5xx they can give (:func:`heimdall.api.schemas.documented`) and the request bodies they read
themselves. This module adds what the routes cannot: the bearer (JWT) security scheme, the public
document route, the schemas of those request bodies, no body for 204s, and one shared definition of
each error response instead of a copy per operation.

The document is served at ``GET /api/v1/openapi.json`` and committed as ``heimdall/api/openapi.json``;
``python -m heimdall.api --check`` (and a unit test) keeps the two in sync.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from heimdall import __version__
from heimdall.api.documented import ERROR_RESPONSES, METHOD_NOT_ALLOWED_NOTE, method_not_allowed_response
from heimdall.api.responses import JSON
from heimdall.api.schemas import REQUEST_MODELS, SCHEMAS, ErrorBody

if TYPE_CHECKING:
    from aws_lambda_powertools.event_handler import APIGatewayHttpResolver

OPENAPI_PATH = "/api/v1/openapi.json"
TITLE = "Heimdall Export API"
DESCRIPTION = (
    "Models, bundle export and import, export jobs and capabilities of Heimdall Export. Every "
    "operation but this document needs a bearer token (a JWT in AWS, a static token locally); reads "
    "need the scope heimdall/read or heimdall/write, writes heimdall/write. Records belong to the "
    'caller: another caller\'s are not found (404). Errors are JSON {"error": {"code", "message"}}. '
    + METHOD_NOT_ALLOWED_NOTE
)
SECURITY_SCHEME = "bearerAuth"
TAGS = ["models", "imports", "export jobs", "capabilities", "deployments", "meta"]


@dataclass(frozen=True)
class DocumentSpec:
    """What a document adds to its resolver's routes: its title and description, the bearer scheme,
    the one public route (the document itself) and the request bodies the routes read themselves."""

    title: str
    description: str
    tags: tuple[str, ...]
    public_path: str
    bearer_format: str
    bearer_description: str
    request_models: tuple[type[BaseModel], ...]


API_DOCUMENT = DocumentSpec(
    title=TITLE,
    description=DESCRIPTION,
    tags=tuple(TAGS),
    public_path=OPENAPI_PATH,
    bearer_format="JWT",
    bearer_description=(
        "In AWS a JWT from the configured issuer; locally the token `heimdall local up` prints."
    ),
    request_models=REQUEST_MODELS,
)

_RESPONSES = "#/components/responses/"


def build_document(resolver: APIGatewayHttpResolver, spec: DocumentSpec = API_DOCUMENT) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``resolver``'s routes, completed as the module docstring says."""
    # Powertools' OpenAPI models take a tenth of a second to import: only when a document is built.
    from aws_lambda_powertools.event_handler.openapi.models import HTTPBearer  # noqa: PLC0415

    raw = resolver.get_openapi_json_schema(
        title=spec.title,
        version=__version__,
        description=spec.description,
        tags=list(spec.tags),
        security_schemes={
            SECURITY_SCHEME: HTTPBearer(bearerFormat=spec.bearer_format, description=spec.bearer_description)
        },
        security=[{SECURITY_SCHEME: []}],
    )
    document: dict[str, Any] = json.loads(raw)
    components = document.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    _, request_schemas = models_json_schema(
        [(model, "validation") for model in spec.request_models], ref_template=SCHEMAS + "{model}"
    )
    for name, schema in request_schemas.get("$defs", {}).items():
        schemas.setdefault(name, schema)
    components["schemas"] = dict(sorted(schemas.items()))
    shared: dict[str, Any] = {}
    for path, item in document["paths"].items():
        for operation in item.values():
            _complete_operation(path, operation, shared, public_path=spec.public_path)
    shared[ERROR_RESPONSES[405][0]] = method_not_allowed_response()
    components["responses"] = dict(sorted(shared.items()))
    _drop_unused_schemas(document)
    return document


def _complete_operation(
    path: str, operation: dict[str, Any], shared: dict[str, Any], *, public_path: str
) -> None:
    if path == public_path:
        operation["security"] = []  # public, like its route in AWS (Auth: NONE)
    if not operation.get("parameters") and "requestBody" not in operation:
        operation["responses"].pop("422", None)  # nothing to validate: never a validation error
    error_body = {"$ref": SCHEMAS + ErrorBody.__name__}
    responses: dict[str, Any] = {}
    for status, response in sorted(operation["responses"].items()):
        if status == "204":
            response.pop("content", None)
        media = response.get("content", {}).get(JSON, {})
        if media.get("schema", {}).get("$ref") == SCHEMAS + "HTTPValidationError":
            # Powertools' own 422 shape is never sent: request validation errors are ErrorBody too.
            media["schema"] = error_body
        if int(status) in ERROR_RESPONSES and media.get("schema") == error_body:
            # Every operation's 401 (...) is the same: declared once, referred to by each.
            name = ERROR_RESPONSES[int(status)][0]
            shared.setdefault(name, response)
            responses[status] = {"$ref": _RESPONSES + name}
        else:
            responses[status] = response
    operation["responses"] = responses


def _refs(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = {node["$ref"]} if isinstance(node.get("$ref"), str) else set()
        for value in node.values():
            found |= _refs(value)
        return found
    if isinstance(node, list):
        return set().union(*(_refs(item) for item in node)) if node else set()
    return set()


def _drop_unused_schemas(document: dict[str, Any]) -> None:
    """Remove component schemas nothing refers to (Powertools' unused validation-error shapes)."""
    schemas: dict[str, Any] = document["components"]["schemas"]
    used: set[str] = set()
    roots = _refs(document["paths"]) | _refs(document["components"].get("responses", {}))
    pending = {ref.removeprefix(SCHEMAS) for ref in roots}
    while pending:
        name = pending.pop()
        if name in used or name not in schemas:
            continue
        used.add(name)
        pending |= {ref.removeprefix(SCHEMAS) for ref in _refs(schemas[name])}
    for name in [n for n in schemas if n not in used]:
        del schemas[name]


def render(document: dict[str, Any]) -> str:
    """The document as the committed file holds it (stable, readable, newline-terminated)."""
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def committed_text() -> str:
    """The committed ``openapi.json`` shipped with the package."""
    return resources.files("heimdall.api").joinpath("openapi.json").read_text(encoding="utf-8")
