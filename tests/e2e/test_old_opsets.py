"""Old-opset models on the local stack over real HTTP (issue 11, items 9-10).

Real opset-6 models from the onnx package's own backend tests, which ONNX Runtime cannot load as
stamped (``BatchNormalization(6)``, ``AveragePool(1)``), are imported (inline, and dropped into S3),
served through a platform endpoint and must answer the reference outputs; a model whose upgrade
fails is imported but refused as an endpoint; export returns the original bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from tests.support import e2e
from tests.support.e2e import ApiStack, api_fixture, error_of  # noqa: F401 - api_fixture is a fixture

from heimdall.bundle import read_bundle
from heimdall.testing.sample_bundles import reference_bundle
from heimdall.testing.sample_models import ReferenceModel, onnx_backend_model, unconvertible_onnx

pytestmark = pytest.mark.slow

IMPORT = "/api/v1/models/import"
DEPLOYMENTS = "/api/v1/deployments"
JSON_TYPE = {"Content-Type": "application/json"}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def http(api: ApiStack) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def endpoint(http: httpx.Client, model_id: str) -> httpx.Response:
    return http.post(
        DEPLOYMENTS, json={"type": "platform_endpoint", "name": "old-opset", "model_id": model_id}
    )


def infer(api: ApiStack, deployment_id: str, key: str, inputs: dict[str, Any]) -> httpx.Response:
    with httpx.Client(base_url=api.url, timeout=60, event_hooks={"response": [e2e.check_response]}) as client:
        return client.post(
            f"/v1/infer/{deployment_id}",
            json={"inputs": {name: value.tolist() for name, value in inputs.items()}},
            headers={"Authorization": f"Bearer {key}"},
        )


def check_served(api: ApiStack, http: httpx.Client, model: dict[str, Any], reference: ReferenceModel) -> None:
    """A platform endpoint of ``model`` is created ACTIVE and answers ``reference``'s outputs."""
    created = endpoint(http, model["model_id"])
    assert created.status_code == 201, created.text
    deployment, key = created.json()["deployment"], created.json()["api_key"]
    assert deployment["status"] == "ACTIVE"
    answer = infer(api, deployment["deployment_id"], key, reference.inputs)
    assert answer.status_code == 200, answer.text
    outputs = answer.json()["outputs"]
    assert set(outputs) == set(reference.outputs)
    for name, want in reference.outputs.items():
        np.testing.assert_allclose(np.asarray(outputs[name]), want, rtol=1e-4, atol=1e-5, err_msg=name)


def test_an_old_opset_import_is_upgraded_served_and_exported_as_sent(
    api: ApiStack, http: httpx.Client
) -> None:
    reference = onnx_backend_model("test_BatchNorm2d_eval")
    imported = http.post(IMPORT, content=reference_bundle(reference), headers=JSON_TYPE)
    assert imported.status_code == 201, imported.text
    assert imported.json()["import"]["status"] == "INDEXED"
    model = http.get(f"/api/v1/models/{imported.json()['model']['model_id']}").json()
    assert model["servable"] is True and model["not_servable_reason"] is None
    upgrade = model["opset_upgrade"]
    assert upgrade["result"] == "upgraded" and (upgrade["from_opset"], upgrade["to_opset"]) == (6, 17)
    assert upgrade["converter"].startswith("onnx.version_converter") and upgrade["samples_checked"] == 1
    assert model["onnx_sha256"] == sha256(reference.onnx) != upgrade["onnx_sha256"]
    # Both copies are stored, under keys made of the model id; the upgraded one hashes as recorded.
    assert upgrade["onnx_key"] == f"imported/{model['model_id']}/model.opset17.onnx"
    assert sha256(api.artifact(upgrade["onnx_key"])) == upgrade["onnx_sha256"]

    check_served(api, http, model, reference)

    exported = http.get(f"/api/v1/models/{model['model_id']}/export")
    assert exported.status_code == 200, exported.text
    assert exported.headers["x-heimdall-onnx-sha256"] == sha256(reference.onnx)
    assert read_bundle(exported.content).onnx_sha256 == sha256(reference.onnx)


def test_an_old_opset_bundle_dropped_into_s3_is_served_too(api: ApiStack, http: httpx.Client) -> None:
    reference = onnx_backend_model("test_AvgPool2d")
    data = reference_bundle(reference, model={"model_name": "dropped-avgpool"})
    api.s3().put_object(Bucket=api.names.ingest_bucket, Key="bundles/partner/avgpool.heimdall", Body=data)

    def indexed() -> dict[str, Any] | None:
        items = http.get("/api/v1/models", params={"name": "dropped-avgpool"}).json()["items"]
        return items[0] if items else None

    model = e2e.wait_for("the dropped bundle indexed", indexed, timeout_s=60)
    assert model["opset_upgrade"]["result"] == "upgraded" and model["servable"] is True
    check_served(api, http, model, reference)


def test_a_model_whose_upgrade_fails_is_imported_but_not_served(api: ApiStack, http: httpx.Client) -> None:
    data = unconvertible_onnx()
    bundle = reference_bundle(ReferenceModel("unconvertible", data, {}, {}), with_samples=False)
    imported = http.post(IMPORT, content=bundle, headers=JSON_TYPE)
    assert imported.status_code == 201, imported.text
    assert imported.json()["import"]["status"] == "INDEXED"
    model = imported.json()["model"]
    assert model["servable"] is False and "cannot convert" in model["not_servable_reason"]
    assert model["opset_upgrade"]["result"] == "convert_failed" and model["opset_upgrade"]["onnx_key"] is None

    refused = error_of(endpoint(http, model["model_id"]), 409, "MODEL_NOT_SERVABLE")
    assert "cannot convert" in refused["message"]
    listed = http.get(DEPLOYMENTS, params={"model_id": model["model_id"]}).json()["items"]
    assert listed == []
    # Its own bytes stay available: export, and a download deployment of the ONNX file.
    exported = http.get(f"/api/v1/models/{model['model_id']}/export")
    assert exported.status_code == 200 and read_bundle(exported.content).onnx_sha256 == sha256(data)
    download = http.post(
        DEPLOYMENTS,
        json={"type": "download", "name": "raw", "model_id": model["model_id"], "options": {"file": "onnx"}},
    )
    assert download.status_code == 201, download.text
    link = download.json()["download"]
    assert link["sha256"] == sha256(data)
    assert sha256(httpx.get(link["url"], timeout=60).content) == sha256(data)


def test_an_old_opset_model_exports_from_its_upgraded_copy_and_its_packages_build(
    api: ApiStack, http: httpx.Client
) -> None:
    """An export job of an imported opset-6 model runs the serving check as indexing did: the upgraded
    copy is the FP32 product its formats and export package are built from (not the bundle's ONNX,
    which ONNX Runtime cannot load), and the package deployments of the model build from it."""
    reference = onnx_backend_model("test_BatchNorm2d_eval")
    data = reference_bundle(reference, model={"model_name": "exported-batchnorm"})
    imported = http.post(IMPORT, content=data, headers=JSON_TYPE)
    assert imported.status_code == 201, imported.text
    model = imported.json()["model"]
    started = http.post("/api/v1/export/jobs", json={"model_id": model["model_id"]})
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]

    def finished() -> dict[str, Any] | None:
        current: dict[str, Any] = http.get(f"/api/v1/export/jobs/{job_id}").json()
        assert current["status"] not in ("FAILED", "CANCELLED"), current
        return current if current["status"] == "SUCCEEDED" else None

    done = e2e.wait_for(f"bundle job {job_id}", finished, timeout_s=240, every_s=1.0)
    statuses = {f["format"]: f["status"] for f in done["result"]["formats"]}
    assert statuses["onnx"] == statuses["onnx_fp16"] == statuses["onnx_int8"] == "built", statuses
    result = json.loads(api.artifact(f"exports/{job_id}/result.json"))
    upgrade = model["opset_upgrade"]
    assert result["bundle_onnx_sha256"] == model["onnx_sha256"] == sha256(reference.onnx)
    # The job's upgrade is the indexing's: the same converter gives the same bytes.
    assert result["opset_upgrade"]["onnx_sha256"] == upgrade["onnx_sha256"] == result["formats"][0]["sha256"]

    container = http.post(
        DEPLOYMENTS, json={"type": "container", "name": "old-box", "model_id": model["model_id"]}
    )
    assert container.status_code == 201, container.text
    assert container.json()["deployment"]["export_job_id"] == job_id
    with zipfile.ZipFile(
        io.BytesIO(httpx.get(container.json()["download"]["url"], timeout=60).content)
    ) as box:
        served = box.read(next(n for n in box.namelist() if n.endswith("/1/model.onnx")))
    assert sha256(served) == upgrade["onnx_sha256"]
    edge = http.post(
        DEPLOYMENTS, json={"type": "edge_package", "name": "old-edge", "model_id": model["model_id"]}
    )
    assert edge.status_code == 201, edge.text
    # Export still returns the bundle as it was sent.
    exported = http.get(f"/api/v1/models/{model['model_id']}/export")
    assert read_bundle(exported.content).onnx_sha256 == sha256(reference.onnx)
