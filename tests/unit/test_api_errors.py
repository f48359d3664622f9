"""The resolver as a whole: identity and scopes, unknown routes and methods, capabilities, the 503 and
last-resort 500 mappings, the Lambda handler, and generated garbage that must never give a 5xx."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.support.api import (
    READ,
    WRITE,
    Api,
    FakeLambdaContext,
    decode_reply,
    document,
    http_event,
    make_deps,
    multipart,
)

from heimdall.api.app import app, openapi_text
from heimdall.api.deps import use_deps
from heimdall.errors import RegistryUnavailable
from heimdall.logic import models as models_logic
from heimdall.logic.api import ApiDeps

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    "claims",
    [None, {}, {"sub": ""}, {"sub": "   "}, {"sub": 42}, {"sub": "x" * 257}, {"scope": "heimdall/read"}],
    ids=["no-authorizer", "no-claims", "empty-sub", "blank-sub", "number-sub", "long-sub", "scope-only"],
)
def test_no_usable_identity_is_401(api: Api, claims: dict[str, Any] | None) -> None:
    for method, path in [
        ("GET", "/api/v1/models"),
        ("POST", "/api/v1/models/import"),
        ("GET", "/api/v1/nowhere"),
    ]:
        event = http_event(method, path, claims=claims, scopes=[READ, WRITE], authorizer=claims is not None)
        reply = api.send(event)
        assert reply.status == 401 and reply.error["code"] == "UNAUTHORIZED", (method, path)


@pytest.mark.parametrize(
    ("claims", "scopes", "can_read", "can_write"),
    [
        ({"sub": "alice"}, [READ], True, False),
        ({"sub": "alice"}, [WRITE], True, True),
        ({"sub": "alice"}, [], False, False),
        ({"sub": "alice"}, None, False, False),
        ({"sub": "alice"}, ["openid", "profile"], False, False),
        ({"sub": "alice", "scope": "openid heimdall/read"}, None, True, False),
        ({"sub": "alice", "scope": "heimdall/write"}, [], True, True),
        ({"sub": "alice", "scp": "[heimdall/read heimdall/write]"}, None, True, True),
        ({"sub": "alice", "scp": ["heimdall/read"]}, None, True, False),
        ({"sub": "alice", "scope": "heimdall/write"}, ["heimdall/read"], True, False),  # the list wins
    ],
)
def test_scopes_come_from_the_authorizer_or_the_claims(
    api: Api, claims: dict[str, Any], scopes: list[str] | None, can_read: bool, can_write: bool
) -> None:
    read = api.send(http_event("GET", "/api/v1/models", claims=claims, scopes=scopes))
    write = api.send(http_event("DELETE", "/api/v1/models/nothing-here", claims=claims, scopes=scopes))
    assert read.status == (200 if can_read else 403)
    assert write.status == (404 if can_write else 403)
    if not can_write:
        assert write.error["code"] == "FORBIDDEN" and "heimdall/write" in write.error["message"]


def test_scopes_can_be_switched_off(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEIMDALL_API_REQUIRE_SCOPES", "false")
    assert api.get("/api/v1/models", scopes=()).status == 200
    assert api.delete("/api/v1/models/nothing-here", scopes=None).status == 404
    assert api.get("/api/v1/models", sub=None).status == 401  # an identity is still needed


def test_the_openapi_document_is_public(api: Api) -> None:
    reply = api.get("/api/v1/openapi.json", sub=None)
    assert reply.status == 200 and reply.header("Content-Type") == "application/json"
    assert reply.body.decode() == openapi_text()
    assert reply.json()["info"]["title"] == "Heimdall Export API"


def test_unknown_routes_are_404_and_known_paths_with_other_methods_405(api: Api) -> None:
    missing = api.get("/api/v2/models")
    assert missing.status == 404 and missing.error["code"] == "NOT_FOUND"
    assert api.get("/").status == 404
    wrong = api.call("PUT", "/api/v1/models")
    assert wrong.status == 405 and wrong.error["code"] == "METHOD_NOT_ALLOWED"
    assert wrong.header("Allow") == "GET"
    patch = api.call("PATCH", "/api/v1/models/m-1")
    assert patch.status == 405 and patch.header("Allow") == "DELETE, GET"
    assert api.call("GET", "/api/v1/export/jobs").header("Allow") == "POST"


def test_capabilities_list_the_formats_per_framework(api: Api) -> None:
    reply = api.get("/api/v1/export/capabilities", scopes=(READ,))
    assert reply.status == 200
    body = reply.json()
    assert body["frameworks"] == ["pytorch"]
    assert {f["format"] for f in body["formats"]} == {
        "onnx",
        "torchscript",
        "onnx_fp16",
        "onnx_int8",
        "tensorrt",
    }
    assert {f["quality"] for f in body["formats"]} <= {"exact", "high", "approximate"}
    assert api.get("/api/v1/export/capabilities", query={"framework": "pytorch"}).json() == body
    unknown = api.get("/api/v1/export/capabilities", query={"framework": "tensorflow"})
    assert unknown.status == 422 and unknown.error["field"] == "framework"
    assert "pytorch" in unknown.error["message"]


def test_validation_messages_name_every_field_up_to_a_few(api: Api) -> None:
    body = {"model_id": 7, "checkpoint_uri": 8, "manifest_uri": 9, "formats": ["a", "b", "c"]}
    reply = api.post("/api/v1/export/jobs", json_body=body)
    error = reply.error
    assert reply.status == 422 and error["field"] == "model_id"
    assert error["message"].startswith("model_id: Input should be a valid string; checkpoint_uri: ")
    assert "formats.1: Input should be 'onnx', 'torchscript'" in error["message"]
    assert error["message"].endswith("; and 1 more") and len(error["details"]["errors"]) == 6


class DownRegistry:
    """A registry whose database is throttling: every call fails after the adapter's retries."""

    def __getattr__(self, name: str) -> Callable[..., Any]:
        def fail(*args: Any, **kwargs: Any) -> Any:
            raise RegistryUnavailable("DynamoDB is throttling; retry later")

        return fail


def test_an_outage_is_503_with_retry_after(api: Api, deps: ApiDeps) -> None:
    down = DownRegistry()
    use_deps(lambda: replace(deps, registry=down, claims=down))
    for path in ("/api/v1/models", "/api/v1/models/m-1", "/api/v1/export/jobs/j-1"):
        reply = api.get(path)
        assert reply.status == 503 and reply.error["code"] == "REGISTRY_UNAVAILABLE", path
        assert reply.header("Retry-After") == "5"


def test_a_bug_is_a_bare_500_that_is_logged_not_shown(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise KeyError("secret-internal-detail")

    monkeypatch.setattr(models_logic, "list_models", broken)
    with caplog.at_level(logging.ERROR):
        event = http_event("GET", "/api/v1/models", scopes=[READ])
        reply = decode_reply(app.resolve(event, FakeLambdaContext()))  # type: ignore[arg-type]
    assert reply.status == 500 and json.loads(reply.body) == {
        "error": {"code": "INTERNAL_ERROR", "message": "internal error"}
    }
    assert "secret-internal-detail" not in reply.body.decode()
    assert "secret-internal-detail" in caplog.text


@pytest.fixture
def lambda_module() -> Iterator[Any]:
    """``functions/api/app.py`` loaded as Lambda loads it (its folder on the path)."""
    path = REPO_ROOT / "functions" / "api" / "app.py"
    spec = importlib.util.spec_from_file_location("lambda_api_app", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


@pytest.mark.filterwarnings("ignore:No application metrics to publish")
def test_the_lambda_handler_serves_the_resolver(api: Api, lambda_module: Any) -> None:
    raw = lambda_module.lambda_handler(
        http_event("GET", "/api/v1/models", scopes=[READ]), FakeLambdaContext()
    )
    assert raw["statusCode"] == 200 and json.loads(raw["body"]) == {"items": [], "next_cursor": None}
    raw = lambda_module.lambda_handler(
        http_event("GET", "/api/v1/models", authorizer=False), FakeLambdaContext()
    )
    assert raw["statusCode"] == 401


# --------------------------------------------------------------------------------------------------
# Garbage never gives a 5xx, and every answer is one the document declares

OPERATIONS = sorted((method.upper(), path) for path, item in document()["paths"].items() for method in item)
PARAMETERS = sorted(
    {
        p["name"]
        for item in document()["paths"].values()
        for op in item.values()
        for p in op.get("parameters", [])
    }
)
CONTENT_TYPES = [
    None,
    "application/json",
    "application/gzip",
    "application/octet-stream",
    "text/plain",
    "multipart/form-data",
    "multipart/form-data; boundary=xyz",
    "application/x-www-form-urlencoded",
]
TEXT = st.text(max_size=24) | st.sampled_from(
    ["..", "%2e%2e", "-1", "0", "1001", "true", "NaN", "presigned", "x" * 300]
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    method, template = draw(st.sampled_from(OPERATIONS))
    path = template
    while "{" in path:
        start, end = path.index("{"), path.index("}")
        path = path[:start] + quote(draw(TEXT), safe="") + path[end + 1 :]
    query = draw(st.dictionaries(st.sampled_from([*PARAMETERS, "extra"]), TEXT, max_size=4))
    kind = draw(st.sampled_from(["none", "bytes", "json", "multipart"]))
    body: bytes | None = None
    content_type = draw(st.sampled_from(CONTENT_TYPES))
    if kind == "bytes":
        body = draw(st.binary(max_size=64))
    elif kind == "json":
        value = draw(
            st.recursive(
                st.none() | st.booleans() | st.integers() | TEXT,
                lambda c: st.lists(c) | st.dictionaries(TEXT, c),
                max_leaves=8,
            )
        )
        body = json.dumps(value).encode()
    elif kind == "multipart":
        content_type, body = multipart(
            draw(st.binary(max_size=64)), name=draw(st.sampled_from(["file", "other"]))
        )
    return {
        "method": method,
        "path": path,
        "query": query,
        "body": body,
        "content_type": content_type,
        "is_base64": draw(st.booleans()),
        "scopes": draw(st.sampled_from([(READ, WRITE), (READ,), ()])),
    }


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(request=requests())
def test_generated_requests_get_declared_answers_and_never_a_5xx(
    request: dict[str, Any], tmp_path_factory: pytest.TempPathFactory
) -> None:
    deps = make_deps(tmp_path_factory.mktemp("fuzz"))
    use_deps(lambda: deps)
    try:
        reply = Api(deps).call(**request)  # checks the answer against the document
    finally:
        use_deps(None)
    assert reply.status < 500
