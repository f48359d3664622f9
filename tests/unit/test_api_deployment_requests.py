"""The body of ``POST /api/v1/deployments`` (:mod:`heimdall.logic.deployment_requests`): one model per
deployment type, and a refusal that names the same field first whatever else is wrong with the request
(its ``type``, then its own fields and its source, then its options, as sent)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.support.api import Api, import_model

DEPLOYMENTS = "/api/v1/deployments"
#: A well-formed id: every refusal below comes before the model is looked up.
MODEL = "m1"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        pytest.param({"name": "x", "model_id": MODEL}, "type", id="no-type"),
        pytest.param({"type": "teleport", "options": {"tier": "gold"}}, "type", id="unknown-type"),
        pytest.param({"deployment_type": "teleport", "name": "x"}, "type", id="unknown-seed-type"),
        pytest.param(
            {"type": "download", "deployment_type": "container"}, "deployment_type", id="seed-differs"
        ),
        pytest.param(
            {"type": "download", "options": {"file": "onnx"}, "deployment_config": {"file": "bundle"}},
            "deployment_config",
            id="seed-options-differ",
        ),
        pytest.param({"type": "download", "options": {"file": "zip"}}, "name", id="name-before-options"),
        pytest.param(
            {"type": "download", "name": "x", "options": {"file": "zip"}}, "body", id="source-before-options"
        ),
        pytest.param(
            {"type": "download", "name": "x", "model_id": MODEL, "options": {"file": "zip"}, "foo": 1},
            "foo",
            id="unknown-field-before-options",
        ),
        pytest.param(
            {"type": "platform_endpoint", "name": "x", "model_id": MODEL, "options": {"tier": "gold"}},
            "options.tier",
            id="option",
        ),
        pytest.param(
            {"type": "edge_package", "name": "x", "model_id": MODEL, "options": {"tier": "pro"}},
            "options.tier",
            id="another-type's-option",
        ),
        pytest.param(
            {"type": "container", "name": "x", "model_id": MODEL, "options": {"triton_image": "a" * 300}},
            "options.triton_image",
            id="image-too-long",
        ),
        pytest.param(
            {"type": "download", "name": "x", "model_id": MODEL, "options": None},
            "options",
            id="null-options",
        ),
        pytest.param(
            {"type": "download", "name": "x", "model_id": MODEL, "deployment_config": None},
            "options",
            id="null-seed-options",
        ),
        pytest.param(
            {"type": "download", "name": "x", "model_id": MODEL, "deployment_config": {"file": "zip"}},
            "deployment_config.file",
            id="seed-option",
        ),
        pytest.param(
            {
                "type": "platform_endpoint",
                "name": "x",
                "model_id": MODEL,
                "options": {"tier": "gold"},
                "deployment_config": {"tier": "gold"},
            },
            "deployment_config.tier",
            id="both-names-one-option",
        ),
    ],
)
def test_a_refused_request_names_its_first_fault(api: Api, body: dict[str, Any], field: str) -> None:
    reply = api.post(DEPLOYMENTS, json_body=body)
    assert (reply.status, reply.error["code"], reply.error.get("field")) == (422, "VALIDATION_ERROR", field)


@pytest.mark.parametrize(
    ("body", "options"),
    [
        pytest.param({"type": "download", "options": {"file": "onnx"}}, {"file": "onnx"}, id="download"),
        pytest.param(
            {"type": "platform_endpoint"},
            {"tier": "free", "apply_normalization": False, "precision": "fp32"},
            id="endpoint-defaults",
        ),
        pytest.param(
            {"deployment_type": "platform_endpoint", "deployment_config": {"tier": "pro"}},
            {"tier": "pro", "apply_normalization": False, "precision": "fp32"},
            id="seed-names",
        ),
    ],
)
def test_each_type_takes_its_options_with_their_defaults(
    api: Api, body: dict[str, Any], options: dict[str, Any]
) -> None:
    reply = api.post(DEPLOYMENTS, json_body={"name": "x", "model_id": import_model(api)["model_id"], **body})
    assert reply.status == 201, reply.body
    assert reply.json()["deployment"]["options"] == options


def test_a_download_links_to_the_export_package_unless_told_otherwise(api: Api) -> None:
    body = {"type": "download", "name": "x", "model_id": import_model(api)["model_id"]}
    reply = api.post(DEPLOYMENTS, json_body=body)  # an imported model has no export package
    assert (reply.status, reply.error["code"], reply.error["field"]) == (409, "NO_EXPORT_PACKAGE", "model_id")
