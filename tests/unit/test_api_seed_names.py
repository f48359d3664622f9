"""The original Heimdall's clients (the seeds): their request names as aliases on the request models,
the legacy import route's answer (``model_id``, ``message``, ``onnx_path`` on top), and a 422 naming the
field for whatever cannot be honoured."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError
from tests.support.api import JOBS, Api, bundle_bytes, import_model, multipart
from tests.support.api_logic import CHECKPOINT, put_checkpoint, runner

from heimdall.api.schemas import CreateExportJobRequest
from heimdall.domain.deployments import DeploymentType
from heimdall.errors import RequestInvalid
from heimdall.logic.api import ApiDeps
from heimdall.logic.deployment_requests import CreateDeploymentRequest, EndpointOptions
from heimdall.types import ExportFormat

IMPORT = "/api/v1/models/import"
LEGACY_IMPORT = "/api/v1/training/models/import"
SEED_MESSAGE = "Model imported successfully"


def job_request(**body: Any) -> CreateExportJobRequest:
    return CreateExportJobRequest.model_validate({"checkpoint_uri": CHECKPOINT, **body})


# --- export jobs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "formats"),
    [
        ({"export_format": "onnx"}, ["onnx"]),
        ({"export_format": "tensorrt", "formats": ["tensorrt"]}, ["tensorrt"]),  # both, the same
        ({"export_format": "onnx", "optimization_config": {"quantization": "int8"}}, ["onnx", "onnx_int8"]),
        (
            {"export_format": "onnx", "optimization_config": {"fp16": True, "int8": False}},
            ["onnx", "onnx_fp16"],
        ),
        (
            {"optimization_config": {"quantization": "fp16", "tensorrt": True}},
            ["onnx", "onnx_fp16", "tensorrt"],
        ),
        ({"optimization_config": {"quantization": None}}, None),  # asks for nothing more
        ({"optimization_config": {}}, None),
        ({"export_config": {}}, None),
        ({"export_config": {"format": "torchscript"}}, ["torchscript"]),
        ({"export_config": {"formats": ["onnx", "onnx_int8"]}}, ["onnx", "onnx_int8"]),
        ({"formats": ["onnx", "onnx_int8"], "optimization_config": {"int8": True}}, ["onnx", "onnx_int8"]),
    ],
)
def test_seed_job_names_map_onto_formats(body: dict[str, Any], formats: list[str] | None) -> None:
    request = job_request(**body)
    expected = None if formats is None else [ExportFormat(f) for f in formats]
    assert request.formats == expected


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"export_format": "onnx", "formats": ["tensorrt"]}, "export_format"),
        ({"export_format": "coreml"}, "export_format"),
        ({"export_format": ["onnx"]}, "export_format"),
        ({"export_config": {"opset_version": 13}}, "export_config.opset_version"),
        ({"export_config": {"dynamic_axes": True}}, "export_config.dynamic_axes"),
        ({"export_config": {"format": "onnx"}, "export_format": "tensorrt"}, "export_config.format"),
        ({"export_config": {"formats": ["onnx"]}, "formats": ["tensorrt"]}, "export_config.formats"),
        ({"export_config": "onnx"}, "export_config"),
        ({"optimization_config": {"quantization": "dynamic"}}, "optimization_config.quantization"),
        ({"optimization_config": {"pruning": {"sparsity": 0.5}}}, "optimization_config.pruning"),
        ({"optimization_config": {"fp16": "yes"}}, "optimization_config.fp16"),
        ({"optimization_config": [1]}, "optimization_config"),
        ({"formats": ["onnx"], "optimization_config": {"int8": True}}, "optimization_config.int8"),
        ({"formats": "onnx", "export_format": "onnx"}, "formats"),
    ],
)
def test_seed_job_names_that_cannot_be_honoured_are_refused(body: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestInvalid) as refused:
        job_request(**body)
    assert refused.value.field == field and refused.value.http_status == 422


def test_a_seed_job_request_over_http_is_the_same_job_as_ours(api: Api, deps: ApiDeps) -> None:
    put_checkpoint(deps)
    key = {"Idempotency-Key": "seed-1"}
    seed = api.post(
        JOBS,
        json_body={
            "checkpoint_uri": CHECKPOINT,
            "export_format": "onnx",
            "optimization_config": {"int8": True},
        },
        headers=key,
    )
    assert seed.status == 202, seed.body
    assert seed.json()["formats"] == ["onnx", "onnx_int8"]
    ours = api.post(
        JOBS, json_body={"checkpoint_uri": CHECKPOINT, "formats": ["onnx_int8", "onnx"]}, headers=key
    )
    assert ours.status == 202 and ours.json()["job_id"] == seed.json()["job_id"]
    refused = api.post(JOBS, json_body={"checkpoint_uri": CHECKPOINT, "export_config": {"opset_version": 11}})
    assert refused.status == 422 and refused.error["field"] == "export_config.opset_version"
    assert len(runner(deps).specs) == 1


# --- deployments ---------------------------------------------------------------------------------------


def deployment_request(**body: Any) -> CreateDeploymentRequest:
    return CreateDeploymentRequest.model_validate({"name": "d", "model_id": "m1", **body})


def test_seed_deployment_names_are_aliases() -> None:
    seed = deployment_request(deployment_type="platform_endpoint", deployment_config={"tier": "pro"}).root
    ours = deployment_request(type="platform_endpoint", options={"tier": "pro"}).root
    assert (
        (seed.type, seed.options)
        == (ours.type, ours.options)
        == (DeploymentType.PLATFORM_ENDPOINT, EndpointOptions.model_validate({"tier": "pro"}))
    )
    both = deployment_request(type="download", deployment_type="download", options={}, deployment_config={})
    assert both.root.type is DeploymentType.DOWNLOAD


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "download", "deployment_type": "container"}, "deployment_type"),
        (
            {"type": "download", "options": {"file": "onnx"}, "deployment_config": {"file": "bundle"}},
            "deployment_config",
        ),
    ],
)
def test_seed_deployment_names_that_disagree_with_ours_are_refused(body: dict[str, Any], field: str) -> None:
    with pytest.raises(RequestInvalid) as refused:
        deployment_request(**body)
    assert refused.value.field == field


def test_a_deployment_still_needs_a_type() -> None:
    with pytest.raises(ValidationError):
        deployment_request(options={})
    with pytest.raises(ValidationError):
        deployment_request(deployment_type="satellite")


def test_a_seed_deployment_request_over_http(api: Api) -> None:
    model = import_model(api)
    reply = api.post(
        "/api/v1/deployments",
        json_body={
            "deployment_type": "download",
            "deployment_config": {"file": "onnx"},
            "name": "seed",
            "model_id": model["model_id"],
        },
    )
    assert reply.status == 201, reply.body
    deployment = reply.json()["deployment"]
    assert deployment["type"] == "download" and deployment["options"] == {"file": "onnx"}
    seed = {"deployment_type": "platform_endpoint", "name": "s", "model_id": model["model_id"]}
    refused = api.post("/api/v1/deployments", json_body={**seed, "deployment_config": {"tier": "gold"}})
    assert refused.status == 422 and refused.error["field"] == "deployment_config.tier", refused.body
    ours = api.post("/api/v1/deployments", json_body={**seed, "options": {"tier": "gold"}})
    assert ours.status == 422 and ours.error["field"] == "options.tier"


# --- the legacy import answer --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["json", "gzip", "multipart"])
def test_the_legacy_import_route_answers_as_the_seeds_document(api: Api, deps: ApiDeps, kind: str) -> None:
    if kind == "multipart":
        content_type, body = multipart(bundle_bytes())
        reply = api.post(LEGACY_IMPORT, body=body, content_type=content_type)
    else:
        data = bundle_bytes(compress=kind == "gzip")
        reply = api.post(LEGACY_IMPORT, body=data, content_type="application/json", is_base64=kind == "gzip")
    assert reply.status == 201, reply.body[:300]
    answer = reply.json()
    assert answer["message"] == SEED_MESSAGE
    assert answer["model_id"] == answer["model"]["model_id"] == answer["import"]["model_id"]
    stored = deps.registry.get_model("alice", answer["model_id"]).onnx_key
    assert answer["onnx_path"] == stored and str(stored).startswith("imported/")


def test_the_current_import_route_answer_is_unchanged(api: Api) -> None:
    reply = api.post(IMPORT, body=bundle_bytes(), content_type="application/json")
    assert reply.status == 201 and set(reply.json()) == {"import", "model"}


def test_the_legacy_import_route_presigned_answer_is_unchanged(api: Api) -> None:
    reply = api.post(
        LEGACY_IMPORT,
        query={"mode": "presigned"},
        body=json.dumps({"size_bytes": 100}),
        content_type="application/json",
    )
    assert reply.status == 202 and set(reply.json()) == {"import", "upload"}
