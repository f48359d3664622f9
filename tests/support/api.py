"""The HTTP API's resolver in-process, every reply checked against the OpenAPI document.

Shared by the HTTP API's unit tests (``test_api_*.py``) and the ``deps`` and ``api`` fixtures of
``tests/unit/conftest.py``.

* :func:`http_event` makes API Gateway HTTP API (payload format 2.0) events as AWS sends them, with the
  JWT authorizer's context (``requestContext.authorizer.jwt.claims`` / ``scopes``).
* :class:`Api` runs the resolver in-process on such events and checks **every** response against the
  OpenAPI document: the status is one the operation declares, the body validates against the declared
  schema for that status, declared-required headers are present and valid. A test cannot produce a
  response the document does not describe without failing.
* In-memory collaborators (:func:`make_deps`; the ``deps`` and ``api`` fixtures on them are in
  ``conftest.py``), real bundles with a real ONNX model, multipart bodies.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import jsonschema
from tests.support.api_logic import ONNX
from tests.support.api_logic import make_deps as make_logic_deps
from tests.support.jobs import RecordingRunner

from heimdall.api.app import app, openapi_text
from heimdall.logic.api import ApiDeps
from heimdall.testing.sample_bundles import sample_bundle

READ, WRITE = "heimdall/read", "heimdall/write"
ALL_SCOPES = (READ, WRITE)
BOUNDARY = "----heimdall-test-boundary"
JOBS = "/api/v1/export/jobs"


# --------------------------------------------------------------------------------------------------
# Events


@dataclass(frozen=True)
class FakeLambdaContext:
    """What Powertools' logger reads from a Lambda context."""

    function_name: str = "heimdall-api"
    function_version: str = "$LATEST"
    memory_limit_in_mb: int = 512
    invoked_function_arn: str = "arn:aws:lambda:eu-west-1:123456789012:function:heimdall-api"
    aws_request_id: str = "c6af9ac6-7b61-11e6-9a41-93e8deadbeef"


def http_event(
    method: str,
    path: str,
    *,
    query: Mapping[str, str | list[str]] | None = None,
    headers: Mapping[str, str] | None = None,
    body: str | None = None,
    is_base64: bool = False,
    claims: Mapping[str, Any] | None = None,
    scopes: list[str] | None = None,
    authorizer: bool = True,
) -> dict[str, Any]:
    """An API Gateway v2 event; ``path`` is the raw (still percent-encoded) path."""
    pairs = [
        (k, v)
        for k, values in (query or {}).items()
        for v in ([values] if isinstance(values, str) else values)
    ]
    request_context: dict[str, Any] = {
        "accountId": "123456789012",
        "apiId": "api1234567",
        "domainName": "api1234567.execute-api.eu-west-1.amazonaws.com",
        "domainPrefix": "api1234567",
        "http": {
            "method": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "sourceIp": "192.0.2.1",
            "userAgent": "pytest",
        },
        "requestId": "JKJaXmPLvHcESHA=",
        "routeKey": "$default",
        "stage": "$default",
        "time": "25/Nov/2026:12:00:00 +0000",
        "timeEpoch": 1795694400000,
    }
    if authorizer:
        request_context["authorizer"] = {
            "jwt": {"claims": dict(claims) if claims is not None else {"sub": "alice"}, "scopes": scopes}
        }
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": urlencode(pairs),
        "headers": {k.lower(): v for k, v in (headers or {}).items()},
        "requestContext": request_context,
        "isBase64Encoded": is_base64,
    }
    if pairs:
        joined: dict[str, list[str]] = {}
        for k, v in pairs:  # API Gateway joins a repeated parameter's values with commas
            joined.setdefault(k, []).append(v)
        event["queryStringParameters"] = {k: ",".join(v) for k, v in joined.items()}
    if body is not None:
        event["body"] = body
    return event


def multipart(content: bytes, *, name: str = "file", filename: str = "model.heimdall") -> tuple[str, bytes]:
    """A ``multipart/form-data`` body with one file field (as ``curl -F name=@filename`` sends it)."""
    head = (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={BOUNDARY}", head + content + f"\r\n--{BOUNDARY}--\r\n".encode()


# --------------------------------------------------------------------------------------------------
# Responses, checked against the document


@dataclass
class Reply:
    """A resolver response, decoded."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def error(self) -> dict[str, Any]:
        """The ``error`` object of an error response."""
        document = self.json()
        assert set(document) == {"error"}, document
        return dict(document["error"])

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


@cache
def document() -> dict[str, Any]:
    """The OpenAPI document the resolver serves."""
    return dict(json.loads(openapi_text()))


def _template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)) + "$")


def operation_for(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    """The documented (template, operation) a request goes to; concrete paths before templated ones."""
    paths: dict[str, Any] = document()["paths"]
    for template in sorted(paths, key=lambda t: t.count("{")):
        operation = paths[template].get(method.lower())
        if operation is not None and _template_regex(template).match(path):
            return template, operation
    return None


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if not isinstance(ref, str):
        return node
    target: Any = document()
    for part in ref.removeprefix("#/").split("/"):
        target = target[part]
    return _resolve(target)


def schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    """Why ``instance`` does not validate against a schema of the document (empty: it does)."""
    root = {**schema, "components": document()["components"]}
    validator = jsonschema.Draft202012Validator(root)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance)]


def check_conformance(method: str, path: str, reply: Reply) -> None:
    """Fail unless the document declares ``reply`` for this request."""
    found = operation_for(method, path)
    if found is None:  # no operation: 404/405 (or 401/403 first), which must be an ErrorBody all the same
        assert reply.status in (401, 403, 404, 405), f"{method} {path}: {reply.status} without an operation"
        assert not schema_errors({"$ref": "#/components/schemas/ErrorBody"}, reply.json())
        return
    template, operation = found
    declared = operation["responses"]
    assert str(reply.status) in declared, (
        f"{method} {template} answered {reply.status}, which it does not declare ({sorted(declared)}): "
        f"{reply.body[:300]!r}"
    )
    response = _resolve(declared[str(reply.status)])
    for name, header in response.get("headers", {}).items():
        value = reply.header(name)
        if header.get("required"):
            assert value is not None, f"{method} {template} {reply.status}: header {name} missing"
        if value is not None and "schema" in header:
            assert not schema_errors(header["schema"], value), f"header {name}={value!r}"
    content = response.get("content")
    if not content:
        assert reply.body == b"", f"{method} {template} {reply.status} declares no body"
        return
    media = (reply.header("content-type") or "").partition(";")[0].strip()
    assert media in content, (
        f"{method} {template} {reply.status}: content type {media!r} not in {list(content)}"
    )
    if media == "application/json":
        problems = schema_errors(content[media].get("schema", {}), reply.json())
        assert not problems, f"{method} {template} {reply.status} does not match the document: {problems[:5]}"


# --------------------------------------------------------------------------------------------------
# The client


class Api:
    """Calls the resolver in-process, as API Gateway would, and checks each reply against the document."""

    def __init__(self, deps: ApiDeps) -> None:
        self.deps = deps

    def call(
        self,
        method: str,
        path: str,
        *,
        sub: str | None = "alice",
        scopes: tuple[str, ...] | None = ALL_SCOPES,
        query: Mapping[str, str | list[str]] | None = None,
        json_body: Any = None,
        body: bytes | str | None = None,
        content_type: str | None = None,
        headers: Mapping[str, str] | None = None,
        is_base64: bool | None = None,
        event_changes: Mapping[str, Any] | None = None,
    ) -> Reply:
        """One request (no ``sub``: no authorizer context). Binary bodies go base64-encoded, as API Gateway
        sends them."""
        all_headers = dict(headers or {})
        text: str | None = None
        if json_body is not None:
            text = json.dumps(json_body)
            content_type = content_type or "application/json"
        elif isinstance(body, bytes):
            if is_base64 is None:  # API Gateway passes JSON as text and base64-encodes anything else
                is_base64 = not (content_type or "").startswith("application/json")
            text = base64.b64encode(body).decode() if is_base64 else body.decode("utf-8", "surrogateescape")
        elif body is not None:
            text = body
        if content_type is not None:
            all_headers["Content-Type"] = content_type
        event = http_event(
            method,
            path,
            query=query,
            headers=all_headers,
            body=text,
            is_base64=bool(is_base64),
            claims=None if sub is None else {"sub": sub},
            scopes=None if scopes is None else list(scopes),
            authorizer=sub is not None,
        )
        event.update(event_changes or {})
        return self.send(event)

    def send(self, event: dict[str, Any]) -> Reply:
        """Resolve a ready-made event and check the reply."""
        raw = app.resolve(event, FakeLambdaContext())  # type: ignore[arg-type]
        reply = decode_reply(raw)
        check_conformance(event["requestContext"]["http"]["method"], event["rawPath"], reply)
        assert reply.status < 500 or reply.status == 503, f"server error: {reply.body[:500]!r}"
        return reply

    def get(self, path: str, **kwargs: Any) -> Reply:
        return self.call("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> Reply:
        return self.call("POST", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> Reply:
        return self.call("DELETE", path, **kwargs)


def decode_reply(raw: Mapping[str, Any]) -> Reply:
    """A Lambda proxy response (payload 2.0) as status, lower-case headers and body bytes."""
    body = raw.get("body") or ""
    data = base64.b64decode(body) if raw.get("isBase64Encoded") else str(body).encode()
    headers = {str(k).lower(): str(v) for k, v in (raw.get("headers") or {}).items()}
    return Reply(status=int(raw["statusCode"]), headers=headers, body=data)


# --------------------------------------------------------------------------------------------------
# Collaborators and data


def make_deps(workdir: Path, **api_limits: int) -> ApiDeps:
    """In-memory collaborators (as the use cases' own tests make them), with a job runner that remembers."""
    return replace(make_logic_deps(workdir, **api_limits), jobs=RecordingRunner())


def bundle_bytes(*, compress: bool = False, **metadata: Any) -> bytes:
    """A valid bundle of the sample model (``metadata`` overrides parts of the sample metadata)."""
    return sample_bundle(ONNX, compress=compress, **metadata)


def import_model(api: Api, *, sub: str = "alice", data: bytes | None = None) -> dict[str, Any]:
    """Import a bundle inline through the API; returns the new model (ModelOut)."""
    reply = api.post(
        "/api/v1/models/import", sub=sub, body=data or bundle_bytes(), content_type="application/json"
    )
    assert reply.status == 201, reply.body[:500]
    model: dict[str, Any] = reply.json()["model"]
    return model


def model_path(model_id: str, suffix: str = "") -> str:
    return f"/api/v1/models/{quote(model_id, safe='')}{suffix}"
