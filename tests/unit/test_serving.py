"""The inference endpoint's resolver (heimdall.inference.app), in-memory stores, real ONNX Runtime sessions.

What the end-to-end tests cannot provoke on the reference model: a model that answers NaN, a stored model
whose bytes no longer match its checksum, a rate-limit window that rolls over, bodies of every wrong
shape. The endpoint's answers go through the Lambda handler with API Gateway's event shape, as in AWS.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from tests.support.api import FakeLambdaContext

from heimdall.domain.api_keys import generate_api_key, hash_api_key
from heimdall.domain.deployments import ApiKeyRecord, Deployment, DeploymentStatus, DeploymentType, Tier
from heimdall.inference.deps import ServingDeps, use_serving_deps
from heimdall.local.payload_format import HttpRequest, build_event
from heimdall.local.stack import invoker, load_function
from heimdall.settings import BundleLimits, ResourceNames
from heimdall.testing.deployments import InMemoryDeploymentStore
from heimdall.testing.storage import InMemoryObjectStore

NAMES = ResourceNames(
    ingest_bucket="in",
    artifacts_bucket="art",
    table_name="t",
    event_bus_name="b",
    job_queue="q",
    job_definition="d",
)
OWNER = "owner-1"


def log_model() -> bytes:
    """``y = log(x)`` on ``[batch, 2]`` float32: finite inputs can make NaN (x < 0) or -inf (x = 0)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "log", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, 12, 0, 30, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


class Endpoint:
    """A platform endpoint of the log model in in-memory stores, and a way to call the handler."""

    def __init__(self, tmp: Path, *, tier: Tier = Tier.FREE, max_request_bytes: int = 1 << 20) -> None:
        import hashlib

        self.onnx = log_model()
        self.store = InMemoryObjectStore()
        self.store.put_bytes("s3://art/models/m1/model.onnx", self.onnx)
        self.deployments = InMemoryDeploymentStore()
        self.clock = Clock()
        key_id, self.key = generate_api_key()
        self.deployment = Deployment(
            deployment_id="dep-1",
            owner=OWNER,
            model_id="m1",
            type=DeploymentType.PLATFORM_ENDPOINT,
            name="log",
            tier=tier,
            key_id=key_id,
            model_version="2.0.0",
            onnx_key="models/m1/model.onnx",
            onnx_sha256=hashlib.sha256(self.onnx).hexdigest(),
        )
        self.deployments.put_deployment(
            self.deployment,
            api_key=ApiKeyRecord(
                key_id=key_id, deployment_id="dep-1", owner=OWNER, key_hash=hash_api_key(self.key)
            ),
        )
        self.deps = ServingDeps(
            deployments=self.deployments,
            store=self.store,
            names=NAMES,
            limits=BundleLimits(),
            workdir=tmp / "models",
            now=self.clock,
            max_request_bytes=max_request_bytes,
        )
        self.handler = invoker(load_function("infer"))

    def call(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        *,
        key: str | None = "",
        content_type: str | None = "application/json",
    ) -> tuple[int, dict[str, str], Any]:
        headers = [] if content_type is None else [("content-type", content_type)]
        key = self.key if key == "" else key
        if key is not None:
            headers.append(("authorization", f"Bearer {key}"))
        event = build_event(
            HttpRequest(method=method, target=path, headers=headers, body=body, source_ip="127.0.0.1"),
            identity=None,
            request_id="r1",
        )
        result = self.handler(event, FakeLambdaContext())
        answer = json.loads(result["body"]) if result.get("body") else None
        return result["statusCode"], {k.lower(): v for k, v in result.get("headers", {}).items()}, answer

    def infer(self, document: Any, **kwargs: Any) -> tuple[int, dict[str, str], Any]:
        return self.call("POST", "/v1/infer/dep-1", json.dumps(document).encode(), **kwargs)


@pytest.fixture(autouse=True)
def _no_metrics_output(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # as the local stack runs handlers


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    made = Endpoint(tmp_path)
    use_serving_deps(lambda: made.deps)
    try:
        yield made
    finally:
        use_serving_deps(None)


def test_an_inference_answers_named_outputs_and_counts_usage(endpoint: Endpoint) -> None:
    status, headers, answer = endpoint.infer({"inputs": {"x": [[1.0, np.e]]}})
    assert status == 200, answer
    np.testing.assert_allclose(answer["outputs"]["y"], [[0.0, 1.0]], atol=1e-6)
    assert answer["model_version"] == "2.0.0" and answer["model_id"] == "m1" and answer["normalized"] is False
    assert headers["x-ratelimit-limit"] == "10" and headers["x-ratelimit-remaining"] == "9"
    usage = endpoint.deployments.get_usage("dep-1")
    assert usage.request_count == 1 and usage.total_inference_ms == pytest.approx(
        answer["latency_ms"], abs=1e-3
    )
    assert usage.last_request_at == endpoint.clock.now


def test_a_model_answering_nan_is_a_422_not_a_broken_body(endpoint: Endpoint) -> None:
    status, _, answer = endpoint.infer({"input": [[-1.0, 1.0]]})
    assert status == 422 and answer["error"]["code"] == "NON_FINITE_OUTPUT", answer
    assert answer["error"]["details"]["outputs"] == ["y"]
    status, _, answer = endpoint.infer({"input": [[0.0, 1.0]]})  # log(0) = -inf
    assert status == 422 and answer["error"]["code"] == "NON_FINITE_OUTPUT"
    assert endpoint.deployments.get_usage("dep-1").request_count == 2  # the model ran both times


def test_the_rate_limit_answers_429_with_retry_after_until_a_request_fits(endpoint: Endpoint) -> None:
    for _ in range(10):
        assert endpoint.infer({"input": [[1.0, 1.0]]})[0] == 200
    status, headers, answer = endpoint.infer({"input": [[1.0, 1.0]]})
    assert status == 429 and answer["error"]["code"] == "RATE_LIMITED"
    # All 10 came at 12:00:30: one more fits once they leave the 60-s window, at 12:01:30.
    assert headers["retry-after"] == "60"
    assert answer["error"]["details"] == {"retry_after_s": 60, "limit": 10}
    endpoint.clock.now += timedelta(seconds=59)
    assert endpoint.infer({"input": [[1.0, 1.0]]})[0] == 429
    endpoint.clock.now += timedelta(seconds=1)
    status, headers, _ = endpoint.infer({"input": [[1.0, 1.0]]})
    assert (status, headers["x-ratelimit-remaining"]) == (200, "9")
    assert endpoint.deployments.get_usage("dep-1").request_count == 11


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b'{"inputs": {}}', "INVALID_INPUT"),
        (b'{"inputs": [[1, 2]]}', "INVALID_INPUT"),
        (b'{"input": [[1, 2]], "extra": 1}', "INVALID_INPUT"),
        (b"[[1, 2]]", "INVALID_INPUT"),
        (b'{"input": [[1, Infinity]]}', "INVALID_JSON"),
        (b'{"input": [[1e999, 1]]}', "INVALID_JSON"),
        (b'{"input": [[1, 2], [3]]}', "INVALID_INPUT"),
        (b'{"input": [[true, false]]}', "INVALID_INPUT"),
        (b"\xff\xfe", "INVALID_JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "INVALID_JSON"),
    ],
)
def test_bodies_that_are_not_inputs_are_400(endpoint: Endpoint, body: bytes, code: str) -> None:
    status, _, answer = endpoint.call("POST", "/v1/infer/dep-1", body)
    assert status == 400 and answer["error"]["code"] == code, answer


def test_a_body_over_the_limit_is_413(tmp_path: Path) -> None:
    small = Endpoint(tmp_path, max_request_bytes=64)
    use_serving_deps(lambda: small.deps)
    try:
        status, _, answer = small.infer({"input": [[1.0, 2.0]] * 20})
    finally:
        use_serving_deps(None)
    assert status == 413 and answer["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_a_stored_model_that_no_longer_matches_its_checksum_is_never_loaded(endpoint: Endpoint) -> None:
    endpoint.store.put_bytes("s3://art/models/m1/model.onnx", endpoint.onnx + b"\x00")
    status, _, answer = endpoint.infer({"input": [[1.0, 1.0]]})
    assert status == 422 and answer["error"]["code"] == "CHECKSUM_MISMATCH", answer
    assert len(endpoint.deps.cache) == 0 and not list((endpoint.deps.workdir).glob("*.onnx"))
    assert endpoint.deployments.get_usage("dep-1").request_count == 0


def test_a_binary_tensor_body_is_served_like_a_list_body(endpoint: Endpoint) -> None:
    import base64

    x = np.array([[1.0, np.e]], dtype="<f4")
    tensor = {"dtype": "float32", "shape": [1, 2], "data_b64": base64.b64encode(x.tobytes()).decode()}
    status, _, answer = endpoint.infer({"inputs": {"x": tensor}})
    assert status == 200, answer
    assert answer["outputs"] == endpoint.infer({"input": x.tolist()})[2]["outputs"]


def test_the_session_is_created_once_and_reused(endpoint: Endpoint) -> None:
    assert endpoint.infer({"input": [[1.0, 1.0]]})[0] == 200
    loaded = endpoint.deps.cache.get("m1", str(endpoint.deployment.onnx_sha256))
    assert loaded is not None
    endpoint.store.delete("s3://art/models/m1/model.onnx")  # a second fetch would now fail
    assert endpoint.infer({"input": [[2.0, 2.0]]})[0] == 200
    assert endpoint.deps.cache.get("m1", str(endpoint.deployment.onnx_sha256)) is loaded


def test_health_and_usage_take_the_key_and_say_where_the_endpoint_stands(endpoint: Endpoint) -> None:
    status, _, health = endpoint.call("GET", "/v1/deployments/dep-1/health")
    assert status == 200 and health["ready"] is True and health["model_loaded"] is False
    endpoint.infer({"input": [[1.0, 1.0]]})
    assert endpoint.call("GET", "/v1/deployments/dep-1/health")[2]["model_loaded"] is True
    endpoint.deployments.transition_deployment(OWNER, "dep-1", DeploymentStatus.INACTIVE, actor=OWNER)
    status, _, health = endpoint.call("GET", "/v1/deployments/dep-1/health")
    assert status == 200 and health["ready"] is False and health["status"] == "INACTIVE"
    status, _, answer = endpoint.infer({"input": [[1.0, 1.0]]})
    assert status == 409 and answer["error"]["code"] == "DEPLOYMENT_INACTIVE"
    status, _, usage = endpoint.call("GET", "/v1/deployments/dep-1/usage")
    assert status == 200 and usage["request_count"] == 1
    for path in ("/v1/deployments/dep-1/usage", "/v1/deployments/dep-1/health", "/v1/infer/dep-1"):
        method = "POST" if "infer" in path else "GET"
        status, headers, answer = endpoint.call(method, path, b"{}", key=None)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer"), answer


def test_a_key_opens_only_its_own_deployment_and_unknown_paths_are_404(endpoint: Endpoint) -> None:
    status, _, answer = endpoint.call("POST", "/v1/infer/dep-2", b'{"input": [[1, 1]]}')
    assert status == 401, answer
    status, _, answer = endpoint.call("GET", "/v1/nothing-here")
    assert status == 404 and answer["error"]["code"] == "NOT_FOUND"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/infer/dep-1", "POST"),
        ("PUT", "/v1/infer/dep-1", "POST"),
        ("DELETE", "/v1/infer/dep-1", "POST"),
        ("POST", "/v1/deployments/dep-1/usage", "GET"),
        ("PATCH", "/v1/openapi.json", "GET"),
    ],
)
def test_a_method_a_path_does_not_serve_is_405_with_allow(
    endpoint: Endpoint, method: str, path: str, allow: str
) -> None:
    status, headers, answer = endpoint.call(method, path, b"{}")
    assert status == 405 and headers["allow"] == allow, answer
    assert answer["error"]["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "xml"],
)
def test_a_body_that_is_not_json_is_415(endpoint: Endpoint, content_type: str) -> None:
    status, _, answer = endpoint.call(
        "POST", "/v1/infer/dep-1", b'{"input": [[1, 2]]}', content_type=content_type
    )
    assert status == 415 and answer["error"]["code"] == "UNSUPPORTED_MEDIA_TYPE", answer


@pytest.mark.parametrize("content_type", [None, "application/json; charset=utf-8", "APPLICATION/JSON"])
def test_json_or_no_content_type_is_served(endpoint: Endpoint, content_type: str | None) -> None:
    status, _, answer = endpoint.call(
        "POST", "/v1/infer/dep-1", b'{"input": [[1, 2]]}', content_type=content_type
    )
    assert status == 200, answer


def test_the_endpoints_openapi_document_is_public_valid_and_complete(endpoint: Endpoint) -> None:
    from openapi_spec_validator import validate

    status, _, document = endpoint.call("GET", "/v1/openapi.json", key=None)
    assert status == 200
    validate(document)
    operations = {(method, path) for path, item in document["paths"].items() for method in item}
    assert operations == {
        ("post", "/v1/infer/{deployment_id}"),
        ("get", "/v1/deployments/{deployment_id}/usage"),
        ("get", "/v1/deployments/{deployment_id}/health"),
        ("get", "/v1/openapi.json"),
    }
    infer = document["paths"]["/v1/infer/{deployment_id}"]["post"]
    assert {"200", "400", "401", "409", "413", "414", "415", "422", "429"} <= set(infer["responses"])
    not_allowed = document["components"]["responses"]["MethodNotAllowed"]
    assert not_allowed["headers"]["Allow"]["required"] and "405" in document["info"]["description"]
    assert document["components"]["responses"]["TooManyRequests"]["headers"]["Retry-After"]["required"]
    assert document["paths"]["/v1/openapi.json"]["get"]["security"] == []
    body = document["components"]["schemas"]["InferenceRequest"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in body["anyOf"]} == {"NamedInputs", "SingleInput"}
