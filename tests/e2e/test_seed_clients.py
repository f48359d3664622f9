"""A client of the original Heimdall, unchanged, against the local stack over real HTTP (issue 11, item 8).

The seeds' scripts import through ``/api/v1/training/models/import`` and read ``.model_id`` from the
answer (documented there as ``{"model_id", "message": "Model imported successfully", "onnx_path":
"imported/..."}``), then create an export job with ``export_format`` and a deployment with
``deployment_type`` / ``deployment_config``, and call the endpoint with the key they get. Written as
such a script would be: plain ``httpx`` and the seeds' field names, nothing of this project's client.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
from tests.support.e2e import (  # noqa: F401 - api_fixture is a fixture
    ApiStack,
    api_fixture,
    error_of,
    make_bundle,
)

LEGACY_IMPORT = "/api/v1/training/models/import"


@pytest.fixture(scope="module")
def http(api: ApiStack) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.mark.parametrize("body", ["json", "gzip", "multipart"])
def test_a_seed_script_imports_exports_and_deploys(api: ApiStack, http: httpx.Client, body: str) -> None:
    bundle = make_bundle()
    if body == "multipart":
        response = http.post(LEGACY_IMPORT, files={"file": ("model.heimdall", bundle)})
    elif body == "gzip":
        response = http.post(
            LEGACY_IMPORT, content=gzip.compress(bundle), headers={"Content-Type": "application/gzip"}
        )
    else:
        response = http.post(LEGACY_IMPORT, content=bundle, headers={"Content-Type": "application/json"})
    assert response.status_code == 201, response.text
    answer = response.json()
    model_id = answer["model_id"]  # what the seeds' scripts read
    assert answer["message"] == "Model imported successfully"
    assert answer["onnx_path"].startswith("imported/")
    assert api.artifact(answer["onnx_path"])  # the path names the stored model
    assert answer["model"]["model_id"] == model_id  # and the current answer is there too

    job = http.post("/api/v1/export/jobs", json={"model_id": model_id, "export_format": "onnx"})
    assert job.status_code == 202, job.text
    assert job.json()["formats"] == ["onnx"] and job.json()["model_id"] == model_id
    assert http.delete(f"/api/v1/export/jobs/{job.json()['job_id']}").status_code == 200  # no conversion here
    refused = http.post(
        "/api/v1/export/jobs", json={"model_id": model_id, "export_config": {"opset_version": 11}}
    )
    assert error_of(refused, 422, "VALIDATION_ERROR")["field"] == "export_config.opset_version"

    created = http.post(
        "/api/v1/deployments",
        json={
            "model_id": model_id,
            "name": f"seed-{body}",
            "deployment_type": "platform_endpoint",
            "deployment_config": {"tier": "pro"},
        },
    )
    assert created.status_code == 201, created.text
    deployment = created.json()["deployment"]
    assert (deployment["type"], deployment["tier"]) == ("platform_endpoint", "pro")
    key = created.json()["api_key"]
    x = np.zeros((1, 3, 128, 32), dtype=np.float32).tolist()
    inferred = http.post(
        f"/v1/infer/{deployment['deployment_id']}",
        json={"input": x},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert inferred.status_code == 200, inferred.text
    assert set(inferred.json()["outputs"]) == {"positions", "uncertainties"}

    both = http.post(
        "/api/v1/deployments",
        json={"model_id": model_id, "name": "x", "type": "download", "deployment_type": "container"},
    )
    assert error_of(both, 422, "VALIDATION_ERROR")["field"] == "deployment_type"
