"""Deployments and the inference endpoint end to end, on the local stack over real HTTP (issue 6).

One real conversion (the reference localization net: ONNX, FP16 and INT8) runs when the module starts;
its export job and model are deployed as each type. Inference answers are compared with PyTorch
running the same checkpoint on the same input, with and without the bundle's normalisation. Keys,
rate limits, usage, the lifecycle, history and events are checked through the API, the endpoint,
the emulator's S3 and a subscriber on the bus.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnx
import pytest
from tests.support import e2e
from tests.support.e2e import (  # noqa: F401 - api_fixture is a fixture
    OTHER_TOKEN,
    ApiStack,
    Cli,
    api_fixture,
    error_of,
)

from heimdall.events import DetailType, parse_detail
from heimdall.local.demo import MANIFEST, write_checkpoint

pytestmark = pytest.mark.slow

MODEL_NAME = "deploy-net"
DEPLOYMENTS = "/api/v1/deployments"
INPUT_SHAPE = (1, 3, 128, 32)
MEANS = np.asarray(MANIFEST["normalization_stats"]["feature_means"], dtype=np.float32).reshape(1, 3, 1, 1)
STDS = np.asarray(MANIFEST["normalization_stats"]["feature_stds"], dtype=np.float32).reshape(1, 3, 1, 1)
#: FP32 ONNX Runtime against PyTorch: the conversion's own parity tolerance is 1e-5; JSON round trips
#: floats exactly, so the same bound holds here with a little room for thread-count differences.
TOLERANCE = 1e-4


# --- the model: one real conversion ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path, _ = write_checkpoint(tmp_path_factory.mktemp("checkpoint"))
    return path


@pytest.fixture(scope="module")
def http(api: ApiStack) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def job(api: ApiStack, http: httpx.Client, checkpoint: Path) -> dict[str, Any]:
    """A succeeded export job (ONNX, FP16, INT8) of the reference checkpoint, its model indexed."""
    staged = e2e.stage_checkpoint(
        api, MODEL_NAME, checkpoint.read_bytes(), "model.safetensors", ("onnx", "onnx_fp16", "onnx_int8")
    )
    created = http.post(
        "/api/v1/export/jobs",
        json={"checkpoint_uri": staged.checkpoint_uri, "manifest_uri": staged.manifest_uri},
    )
    assert created.status_code == 202, created.text
    job_id = created.json()["job_id"]

    def finished() -> dict[str, Any] | None:
        current: dict[str, Any] = http.get(f"/api/v1/export/jobs/{job_id}").json()
        assert current["status"] not in ("FAILED", "CANCELLED"), current
        return current if current["status"] == "SUCCEEDED" and current["model_id"] else None

    return e2e.wait_for(f"export job {job_id}", finished, timeout_s=280, every_s=1.0)


@pytest.fixture(scope="module")
def model_id(job: dict[str, Any]) -> str:
    return str(job["model_id"])


@pytest.fixture(scope="module")
def torch_model(checkpoint: Path) -> Any:
    """The checkpoint in PyTorch, as the conversion built it."""
    import torch
    from safetensors.torch import load_file

    from heimdall_batch.architectures import resolve

    model = resolve("localization_net")()
    model.load_state_dict(load_file(str(checkpoint)))
    model.eval()
    torch.set_num_threads(1)
    return model


def torch_outputs(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    import torch

    with torch.no_grad():
        positions, uncertainties = model(torch.from_numpy(x))
    return {"positions": positions.numpy(), "uncertainties": uncertainties.numpy()}


def sample_input(seed: int, batch: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).random((batch, *INPUT_SHAPE[1:]), dtype=np.float32)


# --- helpers ----------------------------------------------------------------------------------------------


def create(client: httpx.Client, kind: str, name: str, **fields: Any) -> dict[str, Any]:
    response = client.post(DEPLOYMENTS, json={"type": kind, "name": name, **fields})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def infer(
    api: ApiStack, deployment_id: str, key: str | None, body: Any, *, raw: bytes | None = None
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    with httpx.Client(base_url=api.url, timeout=60, event_hooks={"response": [e2e.check_response]}) as client:
        if raw is not None:
            return client.post(f"/v1/infer/{deployment_id}", content=raw, headers=headers)
        return client.post(f"/v1/infer/{deployment_id}", json=body, headers=headers)


def endpoint_get(api: ApiStack, deployment_id: str, what: str, key: str) -> httpx.Response:
    with httpx.Client(base_url=api.url, timeout=60, event_hooks={"response": [e2e.check_response]}) as client:
        return client.get(
            f"/v1/deployments/{deployment_id}/{what}", headers={"Authorization": f"Bearer {key}"}
        )


def fetch(url: str) -> bytes:
    response = httpx.get(url, timeout=60)
    assert response.status_code == 200, response.text
    return response.content


@pytest.fixture(scope="module")
def endpoint(http: httpx.Client, model_id: str) -> dict[str, Any]:
    """A pro platform endpoint of the converted model, without normalisation."""
    return create(http, "platform_endpoint", "plain", model_id=model_id, options={"tier": "pro"})


@pytest.fixture(scope="module")
def normalizing(http: httpx.Client, job: dict[str, Any]) -> dict[str, Any]:
    """A pro platform endpoint made from the export job, applying the bundle's normalisation."""
    return create(
        http,
        "platform_endpoint",
        "normalizing",
        export_job_id=job["job_id"],
        options={"tier": "pro", "apply_normalization": True},
    )


# --- download, edge and container --------------------------------------------------------------------------


def test_a_download_deployment_links_the_export_package(
    http: httpx.Client, job: dict[str, Any], model_id: str
) -> None:
    created = create(http, "download", "package-link", export_job_id=job["job_id"])
    deployment, link = created["deployment"], created["download"]
    assert created["api_key"] is None and deployment["key_id"] is None and deployment["endpoint"] is None
    assert deployment["status"] == "ACTIVE" and deployment["model_id"] == model_id
    assert deployment["export_job_id"] == job["job_id"]
    package = fetch(link["url"])
    assert len(package) == link["size_bytes"] == deployment["artifact"]["size_bytes"]
    with zipfile.ZipFile(io.BytesIO(package)) as archive:
        assert {"metadata.json", "model.onnx", "README.md"} <= set(archive.namelist())
    # A fresh link on demand, the bundle when asked.
    again = http.get(f"{DEPLOYMENTS}/{deployment['deployment_id']}/download").json()
    assert fetch(again["url"]) == package
    bundle = create(http, "download", "bundle-link", model_id=model_id, options={"file": "bundle"})
    assert json.loads(fetch(bundle["download"]["url"]))["model"]["model_name"] == MODEL_NAME
    # The ONNX model itself, with the checksum the registry holds for it.
    onnx_link = create(http, "download", "onnx-link", model_id=model_id, options={"file": "onnx"})
    onnx_bytes = fetch(onnx_link["download"]["url"])
    sha256 = http.get(f"/api/v1/models/{model_id}").json()["onnx_sha256"]
    assert hashlib.sha256(onnx_bytes).hexdigest() == sha256 == onnx_link["download"]["sha256"]
    assert onnx.load_model_from_string(onnx_bytes).graph.output[0].name == "positions"


def test_an_edge_package_ships_the_int8_model_with_wrappers_of_its_real_io(
    api: ApiStack, http: httpx.Client, model_id: str
) -> None:
    created = create(http, "edge_package", "edge", model_id=model_id)
    artifact = created["deployment"]["artifact"]
    data = fetch(created["download"]["url"])
    assert hashlib.sha256(data).hexdigest() == artifact["sha256"] == created["download"]["sha256"]
    assert artifact["key"].startswith(f"deployments/{created['deployment']['deployment_id']}/")
    assert api.artifact(artifact["key"]) == data
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        names = set(archive.namelist())
        metadata = json.loads(archive.read("metadata.json"))
        chosen = metadata["edge"]["model_file"]
        model = onnx.load_model_from_string(archive.read(chosen))
        kotlin = archive.read("runtimes/kotlin/ModelWrapper.kt").decode()
        swift = archive.read("runtimes/swift/ModelWrapper.swift").decode()
    assert metadata["edge"]["precision"] == "int8" and "int8" in chosen
    assert {"README.md", "metadata.json", chosen} <= names
    outputs = [o.name for o in model.graph.output]
    assert outputs == ["positions", "uncertainties"]
    for wrapper in (kotlin, swift):
        for name in outputs:
            assert f'"{name}"' in wrapper
        assert "-1, 3, 128, 32" in wrapper  # the real input shape, batch dynamic
    # An explicit precision that was not built is refused; FP16 was.
    fp16 = create(http, "edge_package", "edge-fp16", model_id=model_id, options={"precision": "fp16"})
    assert fp16["deployment"]["options"] == {"precision": "fp16"}
    with zipfile.ZipFile(io.BytesIO(fetch(fp16["download"]["url"]))) as archive:
        assert json.loads(archive.read("metadata.json"))["edge"]["precision"] == "fp16"


def _pbtxt_tensors(config: str, kind: str) -> list[tuple[str, str, list[int]]]:
    block = re.search(rf"^{kind} \[\n(.*?)\n\]", config, re.S | re.M)
    assert block is not None, config
    return [
        (name, dtype, [int(d) for d in dims.split(",")])
        for name, dtype, dims in re.findall(
            r'name: "([^"]+)"\s+data_type: (\w+)\s+dims: \[ ([-0-9, ]+) \]', block.group(1)
        )
    ]


def test_a_container_package_holds_a_triton_repository_matching_the_real_model(
    http: httpx.Client, job: dict[str, Any]
) -> None:
    created = create(http, "container", "triton", export_job_id=job["job_id"])
    with zipfile.ZipFile(io.BytesIO(fetch(created["download"]["url"]))) as archive:
        names = set(archive.namelist())
        dockerfile = archive.read("Dockerfile").decode()
        build = archive.getinfo("build.sh")
        config = archive.read(f"model_repository/{MODEL_NAME}/config.pbtxt").decode()
        graph = onnx.load_model_from_string(archive.read(f"model_repository/{MODEL_NAME}/1/model.onnx")).graph
    assert "README.md" in names and re.search(
        r"^FROM nvcr\.io/nvidia/tritonserver:\S+-py3$", dockerfile, re.M
    )
    assert (build.external_attr >> 16) & 0o111, "build.sh is executable"
    assert "max_batch_size: " in config and 'platform: "onnxruntime_onnx"' in config
    # The config against the graph itself: names, types, dims without the batch axis.
    for kind, tensors in (("input", graph.input), ("output", graph.output)):
        real = [
            (
                t.name,
                "TYPE_FP32",
                [d.dim_value if d.dim_value else -1 for d in t.type.tensor_type.shape.dim][1:],
            )
            for t in tensors
        ]
        assert _pbtxt_tensors(config, kind) == real, (kind, config)


def test_package_deployments_of_an_imported_model_are_refused_but_it_can_be_served(
    api: ApiStack, http: httpx.Client
) -> None:
    imported = http.post(
        "/api/v1/models/import", content=e2e.make_bundle(), headers={"Content-Type": "application/json"}
    )
    assert imported.status_code == 201, imported.text
    imported_id = imported.json()["model"]["model_id"]
    for kind in ("download", "edge_package", "container"):
        refused = http.post(DEPLOYMENTS, json={"type": kind, "name": "x", "model_id": imported_id})
        assert "export package" in error_of(refused, 409, "NO_EXPORT_PACKAGE")["message"]
    # Its own files can be handed out: the indexed bundle and the ONNX model, byte for byte.
    onnx_link = create(http, "download", "i-onnx", model_id=imported_id, options={"file": "onnx"})
    assert fetch(onnx_link["download"]["url"]) == e2e.sample_onnx()
    bundle_link = create(http, "download", "i-bundle", model_id=imported_id, options={"file": "bundle"})
    bundle = json.loads(fetch(bundle_link["download"]["url"]))
    assert bundle["integrity"]["onnx_sha256"] == hashlib.sha256(e2e.sample_onnx()).hexdigest()
    # Deleting a link to the model's own files leaves the files (and the model) in place.
    for link in (onnx_link, bundle_link):
        assert http.delete(f"{DEPLOYMENTS}/{link['deployment']['deployment_id']}").status_code == 204
    for link in (onnx_link, bundle_link):
        assert api.artifact(link["deployment"]["artifact"]["key"])
    served = create(http, "platform_endpoint", "imported", model_id=imported_id)
    onnx_model = onnx.load_model_from_string(e2e.sample_onnx())
    dims = [d.dim_value or 1 for d in onnx_model.graph.input[0].type.tensor_type.shape.dim]
    x = np.random.default_rng(5).random(dims, dtype=np.float32)
    answer = infer(api, served["deployment"]["deployment_id"], served["api_key"], {"input": x.tolist()})
    assert answer.status_code == 200, answer.text
    import onnxruntime as ort

    session = ort.InferenceSession(e2e.sample_onnx(), providers=["CPUExecutionProvider"])
    expected = session.run(None, {session.get_inputs()[0].name: x})
    for name, value in zip([o.name for o in session.get_outputs()], expected, strict=True):
        np.testing.assert_allclose(np.asarray(answer.json()["outputs"][name]), value, atol=TOLERANCE)


def test_a_seed_bundle_without_complete_stats_is_served_but_never_normalised(
    api: ApiStack, http: httpx.Client
) -> None:
    # The original Heimdall wrote `{}` (no stats) or only the means: neither can normalise an input.
    models = []
    for seed, stats in ((42, {"feature_means": [0.485, 0.456, 0.406]}), (43, {})):
        sent = e2e.make_bundle(dialect="legacy", fallbacks=True, seed=seed, normalization_stats=stats)
        response = http.post(
            "/api/v1/models/import", content=sent, headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 201, response.text
        models.append(response.json()["model"]["model_id"])
    for model in models:
        options = {"apply_normalization": True}
        body = {"type": "platform_endpoint", "name": "n", "model_id": model, "options": options}
        error = error_of(http.post(DEPLOYMENTS, json=body), 422, "VALIDATION_ERROR")
        assert error["field"] == "options.apply_normalization"
        assert "no complete normalization_stats" in error["message"]
    served = create(http, "platform_endpoint", "seed-partial", model_id=models[0])
    x = sample_input(9)
    answer = infer(api, served["deployment"]["deployment_id"], served["api_key"], {"input": x.tolist()})
    assert answer.status_code == 200, answer.text
    assert answer.json()["normalized"] is False


def test_an_imported_model_gets_edge_and_container_packages_once_its_bundle_is_converted(
    http: httpx.Client,
) -> None:
    imported = http.post(
        "/api/v1/models/import", content=e2e.make_bundle(), headers={"Content-Type": "application/json"}
    )
    assert imported.status_code == 201, imported.text
    imported_id = imported.json()["model"]["model_id"]
    started = http.post("/api/v1/export/jobs", json={"model_id": imported_id, "formats": ["onnx_int8"]})
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    assert started.json()["source"] == "bundle"

    def finished() -> dict[str, Any] | None:
        current: dict[str, Any] = http.get(f"/api/v1/export/jobs/{job_id}").json()
        assert current["status"] not in ("FAILED", "CANCELLED"), current
        return current if current["status"] == "SUCCEEDED" else None

    done = e2e.wait_for(f"bundle job {job_id}", finished, timeout_s=240, every_s=1.0)
    assert done["model_id"] == imported_id
    statuses = {f["format"]: f["status"] for f in done["result"]["formats"]}
    assert statuses == {"onnx": "built", "onnx_int8": "built"}
    # The job built no FP16 model: an FP16 endpoint is refused, naming why.
    fp16 = {"precision": "fp16"}
    refused = http.post(
        DEPLOYMENTS, json={"type": "platform_endpoint", "name": "x", "model_id": imported_id, "options": fp16}
    )
    assert "onnx_fp16" in error_of(refused, 409, "NOT_READY")["message"]
    # Deployed from the model: the package types now find the export package its job wrote.
    edge = create(http, "edge_package", "imported-edge", model_id=imported_id)
    assert edge["deployment"]["export_job_id"] == job_id
    with zipfile.ZipFile(io.BytesIO(fetch(edge["download"]["url"]))) as archive:
        metadata = json.loads(archive.read("metadata.json"))
        kotlin = archive.read("runtimes/kotlin/ModelWrapper.kt").decode()
    assert metadata["edge"]["precision"] == "int8"
    assert '"positions"' in kotlin and "-1, 3, 128, 32" in kotlin
    container = create(http, "container", "imported-box", model_id=imported_id)
    with zipfile.ZipFile(io.BytesIO(fetch(container["download"]["url"]))) as archive:
        model_file = next(n for n in archive.namelist() if n.endswith("/1/model.onnx"))
        assert archive.read(model_file) == e2e.sample_onnx()  # the imported model, byte for byte
    # Its bundle is still the one that was imported (a bundle job writes none).
    link = create(http, "download", "imported-bundle", model_id=imported_id, options={"file": "bundle"})
    assert json.loads(fetch(link["download"]["url"]))["integrity"]["onnx_sha256"] == hashlib.sha256(
        e2e.sample_onnx()
    ).hexdigest()


def test_bad_create_requests_are_refused_with_the_field(
    http: httpx.Client, model_id: str, job: dict[str, Any]
) -> None:
    cases = [
        ({"type": "platform_endpoint", "name": "x"}, 422, "VALIDATION_ERROR"),
        (
            {"type": "platform_endpoint", "name": "x", "model_id": model_id, "export_job_id": job["job_id"]},
            422,
            "VALIDATION_ERROR",
        ),
        ({"type": "teleport", "name": "x", "model_id": model_id}, 422, "VALIDATION_ERROR"),
        (
            {"type": "platform_endpoint", "name": "x", "model_id": model_id, "options": {"tier": "gold"}},
            422,
            "VALIDATION_ERROR",
        ),
        (
            {"type": "edge_package", "name": "x", "model_id": model_id, "options": {"tier": "pro"}},
            422,
            "VALIDATION_ERROR",
        ),
        (
            {
                "type": "container",
                "name": "x",
                "model_id": model_id,
                "options": {"triton_image": "evil; rm -rf /"},
            },
            422,
            "VALIDATION_ERROR",
        ),
        ({"type": "platform_endpoint", "name": "x", "model_id": "no-such-model"}, 404, "NOT_FOUND"),
        ({"type": "download", "name": "x", "export_job_id": "no-such-job"}, 404, "NOT_FOUND"),
    ]
    for body, status, code in cases:
        error_of(http.post(DEPLOYMENTS, json=body), status, code)
    tier = http.post(DEPLOYMENTS, json=cases[3][0]).json()["error"]
    assert tier["field"] == "options.tier"


# --- inference ---------------------------------------------------------------------------------------------


def test_inference_matches_pytorch_on_the_same_input(
    api: ApiStack, endpoint: dict[str, Any], torch_model: Any
) -> None:
    deployment_id, key = endpoint["deployment"]["deployment_id"], endpoint["api_key"]
    assert key.startswith("hdk_") and endpoint["deployment"]["endpoint"] == f"/v1/infer/{deployment_id}"
    for seed, batch in ((1, 1), (2, 4)):
        x = sample_input(seed, batch)
        answer = infer(api, deployment_id, key, {"inputs": {"input": x.tolist()}})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model_version"] == "1.0.0" and body["normalized"] is False and body["latency_ms"] > 0
        assert answer.headers["x-ratelimit-limit"] == "100"
        expected = torch_outputs(torch_model, x)
        assert set(body["outputs"]) == set(expected)
        for name, value in expected.items():
            got = np.asarray(body["outputs"][name], dtype=np.float32)
            assert got.shape == value.shape
            np.testing.assert_allclose(got, value, atol=TOLERANCE, rtol=0)


def test_an_endpoint_can_serve_the_int8_or_fp16_model_its_export_built(
    api: ApiStack, http: httpx.Client, model_id: str, endpoint: dict[str, Any], torch_model: Any
) -> None:
    x = sample_input(21, 4)
    fp32 = infer(api, endpoint["deployment"]["deployment_id"], endpoint["api_key"], {"input": x.tolist()})
    expected = torch_outputs(torch_model, x)
    for precision, tolerance in (("int8", 0.1), ("fp16", 0.01)):
        options = {"precision": precision}
        served = create(http, "platform_endpoint", f"p-{precision}", model_id=model_id, options=options)
        assert served["deployment"]["options"]["precision"] == precision
        assert served["deployment"]["onnx_sha256"] != endpoint["deployment"]["onnx_sha256"]
        answer = infer(api, served["deployment"]["deployment_id"], served["api_key"], {"input": x.tolist()})
        assert answer.status_code == 200, answer.text
        for name, value in expected.items():
            got = np.asarray(answer.json()["outputs"][name], dtype=np.float32)
            np.testing.assert_allclose(got, value, atol=tolerance, rtol=0)
            # Another model than the FP32 one answered: its numbers differ, within its tolerance.
            assert not np.array_equal(got, np.asarray(fp32.json()["outputs"][name], dtype=np.float32))


def test_normalisation_is_applied_only_when_the_deployment_asks(
    api: ApiStack, endpoint: dict[str, Any], normalizing: dict[str, Any], torch_model: Any
) -> None:
    x = sample_input(3)
    plain = infer(api, endpoint["deployment"]["deployment_id"], endpoint["api_key"], {"input": x.tolist()})
    normed = infer(
        api, normalizing["deployment"]["deployment_id"], normalizing["api_key"], {"input": x.tolist()}
    )
    assert plain.status_code == normed.status_code == 200, (plain.text, normed.text)
    assert normed.json()["normalized"] is True and normalizing["deployment"]["apply_normalization"] is True
    with_stats = torch_outputs(torch_model, (x - MEANS) / STDS)
    without = torch_outputs(torch_model, x)
    for name in with_stats:
        np.testing.assert_allclose(
            np.asarray(normed.json()["outputs"][name]), with_stats[name], atol=TOLERANCE
        )
        np.testing.assert_allclose(np.asarray(plain.json()["outputs"][name]), without[name], atol=TOLERANCE)
    assert not np.allclose(with_stats["positions"], without["positions"], atol=1e-3), "the stats must matter"


@pytest.mark.parametrize(
    ("body", "raw", "code", "shape_error"),
    [
        ({"input": np.zeros((1, 3, 64, 32)).tolist()}, None, "INVALID_INPUT", True),
        ({"input": np.zeros((3, 128, 32)).tolist()}, None, "INVALID_INPUT", True),
        ({"inputs": {"image": np.zeros(INPUT_SHAPE).tolist()}}, None, "INVALID_INPUT", False),
        ({"input": [[[["a"]]]]}, None, "INVALID_INPUT", True),
        ({"values": [1, 2]}, None, "INVALID_INPUT", False),
        (None, b"{not json", "INVALID_JSON", False),
        (None, b'{"input": [NaN]}', "INVALID_JSON", False),
        (None, b"", "INVALID_INPUT", False),
    ],
)
def test_inputs_that_do_not_fit_the_model_are_400_with_the_expected_shape(
    api: ApiStack, endpoint: dict[str, Any], body: Any, raw: bytes | None, code: str, shape_error: bool
) -> None:
    answer = infer(api, endpoint["deployment"]["deployment_id"], endpoint["api_key"], body, raw=raw)
    error = error_of(answer, 400, code)
    if shape_error:
        assert error["details"]["expected_shape"] == ["batch", 3, 128, 32], error
        assert "[batch, 3, 128, 32]" in error["message"], error


def test_every_auth_failure_is_the_same_401(
    api: ApiStack, http: httpx.Client, endpoint: dict[str, Any], normalizing: dict[str, Any]
) -> None:
    deployment_id = endpoint["deployment"]["deployment_id"]
    body = {"input": sample_input(4).tolist()}
    well_formed = "hdk_" + "0" * 16 + "_" + "A" * 43
    for key in (
        None,
        "not-a-key",
        well_formed,
        api.token,
        normalizing["api_key"],
        endpoint["api_key"] + "x",
    ):
        answer = infer(api, deployment_id, key, body)
        assert (
            error_of(answer, 401, "UNAUTHORIZED")["message"]
            == "a valid API key for this deployment is required"
        )
        assert answer.headers.get("www-authenticate", "").startswith("Bearer")
    for what in ("usage", "health"):
        error_of(endpoint_get(api, deployment_id, what, normalizing["api_key"]), 401, "UNAUTHORIZED")
    # The API's own routes do not take deployment keys, nor the endpoint the API's token.
    error_of(
        httpx.get(f"{api.url}{DEPLOYMENTS}", headers={"Authorization": f"Bearer {endpoint['api_key']}"}),
        401,
        "UNAUTHORIZED",
    )


def test_a_rotated_key_stops_working_at_once(api: ApiStack, http: httpx.Client, model_id: str) -> None:
    created = create(http, "platform_endpoint", "rotating", model_id=model_id)
    deployment_id, old = created["deployment"]["deployment_id"], created["api_key"]
    body = {"input": sample_input(6).tolist()}
    assert infer(api, deployment_id, old, body).status_code == 200
    rotated = http.post(f"{DEPLOYMENTS}/{deployment_id}/rotate-key")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()["api_key"]
    assert new != old and rotated.json()["deployment"]["key_id"] != created["deployment"]["key_id"]
    error_of(infer(api, deployment_id, old, body), 401, "UNAUTHORIZED")
    assert infer(api, deployment_id, new, body).status_code == 200
    history = http.get(f"{DEPLOYMENTS}/{deployment_id}/history").json()["items"]
    assert [e["action"] for e in history] == ["created", "key_rotated"]
    # Only platform endpoints have keys.
    link = create(http, "download", "no-key", model_id=model_id)
    error_of(http.post(f"{DEPLOYMENTS}/{link['deployment']['deployment_id']}/rotate-key"), 409, "NOT_READY")


def test_a_burst_on_a_free_key_is_rate_limited_across_concurrent_clients(
    api: ApiStack, http: httpx.Client, model_id: str
) -> None:
    created = create(http, "platform_endpoint", "free", model_id=model_id, options={"tier": "free"})
    deployment_id, key = created["deployment"]["deployment_id"], created["api_key"]
    body = {"input": sample_input(7).tolist()}
    answers: list[httpx.Response] = []
    lock = threading.Lock()
    start = threading.Barrier(15)

    def client() -> None:
        start.wait()
        answer = infer(api, deployment_id, key, body)
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=client) for _ in range(15)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    statuses = sorted(a.status_code for a in answers)
    limited = [a for a in answers if a.status_code == 429]
    assert len(answers) == 15 and set(statuses) <= {200, 429}, statuses
    # Free is 10 a minute: exactly 10 get through, wherever the burst falls (a minute boundary too).
    assert len(limited) == 5 and statuses.count(200) == 10, statuses
    for answer in limited:
        assert answer.json()["error"]["code"] == "RATE_LIMITED"
        # When the first admitted request leaves the 60-s window: within a minute of the burst.
        assert 1 <= int(answer.headers["retry-after"]) <= 60
        assert answer.json()["error"]["details"]["retry_after_s"] == int(answer.headers["retry-after"])
    usage = endpoint_get(api, deployment_id, "usage", key).json()
    assert usage["request_count"] == statuses.count(200), usage


def test_usage_counts_every_answered_request_and_its_inference_time(
    api: ApiStack, http: httpx.Client, model_id: str
) -> None:
    created = create(http, "platform_endpoint", "metered", model_id=model_id, options={"tier": "enterprise"})
    deployment_id, key = created["deployment"]["deployment_id"], created["api_key"]
    fresh = endpoint_get(api, deployment_id, "usage", key).json()
    assert fresh == {
        "deployment_id": deployment_id,
        "request_count": 0,
        "last_request_at": None,
        "total_inference_ms": 0.0,
    }
    latencies = []
    for seed in range(4):
        answer = infer(api, deployment_id, key, {"input": sample_input(10 + seed).tolist()})
        assert answer.status_code == 200
        latencies.append(answer.json()["latency_ms"])
    error_of(infer(api, deployment_id, key, {"input": [[1.0]]}), 400, "INVALID_INPUT")  # not a run
    usage = endpoint_get(api, deployment_id, "usage", key).json()
    assert usage["request_count"] == 4 and usage["last_request_at"] is not None
    assert usage["total_inference_ms"] == pytest.approx(sum(latencies), abs=0.01)
    shown = http.get(f"{DEPLOYMENTS}/{deployment_id}").json()
    assert shown["usage"]["request_count"] == 4
    health = endpoint_get(api, deployment_id, "health", key).json()
    assert health["ready"] is True and health["model_loaded"] is True and health["tier"] == "enterprise"


# --- lifecycle ---------------------------------------------------------------------------------------------


def test_deactivate_activate_delete_with_history_and_events(
    api: ApiStack, http: httpx.Client, model_id: str
) -> None:
    created = create(http, "platform_endpoint", "lifecycle", model_id=model_id)
    deployment_id, key = created["deployment"]["deployment_id"], created["api_key"]
    path = f"{DEPLOYMENTS}/{deployment_id}"
    body = {"input": sample_input(8).tolist()}

    off = http.patch(f"{path}/deactivate")
    assert off.status_code == 200 and off.json()["status"] == "INACTIVE"
    error_of(infer(api, deployment_id, key, body), 409, "DEPLOYMENT_INACTIVE")
    assert endpoint_get(api, deployment_id, "health", key).json()["ready"] is False
    error_of(http.patch(f"{path}/deactivate"), 409, "CONFLICT")
    on = http.patch(f"{path}/activate")
    assert on.status_code == 200 and on.json()["status"] == "ACTIVE"
    error_of(http.patch(f"{path}/activate"), 409, "CONFLICT")
    assert infer(api, deployment_id, key, body).status_code == 200

    history = http.get(f"{path}/history").json()["items"]
    assert [(e["action"], e["before"], e["after"], e["actor"]) for e in history] == [
        ("created", None, "ACTIVE", e2e.LOCAL_SUB),
        ("deactivated", "ACTIVE", "INACTIVE", e2e.LOCAL_SUB),
        ("activated", "INACTIVE", "ACTIVE", e2e.LOCAL_SUB),
    ]
    listed = http.get(DEPLOYMENTS, params={"model_id": model_id, "limit": 100}).json()["items"]
    assert deployment_id in [d["deployment_id"] for d in listed]

    assert http.delete(path).status_code == 204
    error_of(http.get(path), 404, "NOT_FOUND")
    error_of(infer(api, deployment_id, key, body), 401, "UNAUTHORIZED")
    error_of(http.delete(path), 404, "NOT_FOUND")

    def announced() -> list[str] | None:
        api.subscriber.poll()
        kinds = [
            e["detail-type"]
            for e in api.subscriber.received
            if e["detail"].get("deployment_id") == deployment_id
        ]
        return kinds if len(kinds) >= 4 else None

    kinds = e2e.wait_for("the deployment's events", announced)
    assert kinds == [
        "Deployment Activated",
        "Deployment Deactivated",
        "Deployment Activated",
        "Deployment Deactivated",
    ]
    for event in api.subscriber.received:
        if event["detail"].get("deployment_id") == deployment_id:
            parse_detail(event["detail-type"], event["detail"])  # the published schema
            assert event["detail"]["deployment_type"] == "platform_endpoint"
    keys = {
        e["detail"]["idempotency_key"]
        for e in api.subscriber.received
        if e["detail"].get("deployment_id") == deployment_id
    }
    assert len(keys) == 4
    assert DetailType.DEPLOYMENT_ACTIVATED.value == "Deployment Activated"


def test_a_deleted_package_deployment_removes_its_zip(
    api: ApiStack, http: httpx.Client, model_id: str
) -> None:
    created = create(http, "container", "doomed", model_id=model_id)
    key = created["deployment"]["artifact"]["key"]
    assert api.artifact_keys(key) == [key]
    off = http.patch(f"{DEPLOYMENTS}/{created['deployment']['deployment_id']}/deactivate")
    assert off.status_code == 200
    error_of(
        http.get(f"{DEPLOYMENTS}/{created['deployment']['deployment_id']}/download"),
        409,
        "DEPLOYMENT_INACTIVE",
    )
    assert http.delete(f"{DEPLOYMENTS}/{created['deployment']['deployment_id']}").status_code == 204
    assert api.artifact_keys(key) == []


def test_a_model_with_deployments_cannot_be_deleted_under_them(
    http: httpx.Client, endpoint: dict[str, Any]
) -> None:
    model_id = endpoint["deployment"]["model_id"]
    refused = error_of(http.delete(f"/api/v1/models/{model_id}"), 409, "CONFLICT")
    assert "deployments" in refused["message"]
    assert http.get(f"/api/v1/models/{model_id}").status_code == 200


def test_another_owner_sees_and_changes_nothing(api: ApiStack, endpoint: dict[str, Any]) -> None:
    deployment_id = endpoint["deployment"]["deployment_id"]
    with api.client(OTHER_TOKEN) as other:
        assert other.get(DEPLOYMENTS).json()["items"] == []
        for method, suffix in (
            ("GET", ""),
            ("PATCH", "/deactivate"),
            ("GET", "/history"),
            ("POST", "/rotate-key"),
            ("DELETE", ""),
        ):
            error_of(other.request(method, f"{DEPLOYMENTS}/{deployment_id}{suffix}"), 404, "NOT_FOUND")
        error_of(
            other.post(
                DEPLOYMENTS,
                json={
                    "type": "platform_endpoint",
                    "name": "x",
                    "model_id": endpoint["deployment"]["model_id"],
                },
            ),
            404,
            "NOT_FOUND",
        )


# --- the command line -------------------------------------------------------------------------------------


def test_deploy_and_infer_from_the_command_line(
    api: ApiStack, model_id: str, torch_model: Any, tmp_path: Path
) -> None:
    cli = Cli(api=api, cwd=tmp_path)
    created = cli.json(
        "deploy",
        "create",
        "--model",
        model_id,
        "--type",
        "platform_endpoint",
        "--name",
        "cli",
        "--tier",
        "pro",
    )
    deployment_id, key = created["deployment"]["deployment_id"], created["api_key"]
    x = sample_input(9)
    request = tmp_path / "input.json"
    request.write_text(json.dumps({"input": x.tolist()}))
    answer = cli.json("infer", deployment_id, "--key", key, "--input", str(request))
    for name, value in torch_outputs(torch_model, x).items():
        np.testing.assert_allclose(np.asarray(answer["outputs"][name]), value, atol=TOLERANCE)
    table = cli.run("infer", deployment_id, "--key", key, "--input", str(request)).stdout
    assert "positions" in table and "uncertainties" in table
    cli.run("deploy", "deactivate", deployment_id)
    assert (
        "DEPLOYMENT_INACTIVE"
        in cli.run("infer", deployment_id, "--key", key, "--input", str(request), expect=1).stderr
    )
    history = cli.json("deploy", "history", deployment_id)
    assert [e["action"] for e in history["items"]] == ["created", "deactivated"]


def test_deploy_create_with_output_writes_the_package(
    api: ApiStack, job: dict[str, Any], tmp_path: Path
) -> None:
    cli = Cli(api=api, cwd=tmp_path)
    target = tmp_path / "edge.zip"
    created = cli.json(
        "deploy",
        "create",
        "--job",
        job["job_id"],
        "--type",
        "edge_package",
        "--name",
        "cli-edge",
        "-o",
        str(target),
    )
    artifact = created["deployment"]["artifact"]
    assert hashlib.sha256(target.read_bytes()).hexdigest() == artifact["sha256"]
    with zipfile.ZipFile(target) as archive:
        assert "runtimes/kotlin/ModelWrapper.kt" in archive.namelist()
    onnx_file = tmp_path / "model.onnx"
    linked = cli.json(
        "deploy", "create", "--model", job["model_id"], "--type", "download", "--name", "cli-onnx",
        "--file", "onnx", "-o", str(onnx_file),
    )  # fmt: skip
    assert hashlib.sha256(onnx_file.read_bytes()).hexdigest() == linked["deployment"]["artifact"]["sha256"]
    refused = cli.run(
        "deploy",
        "create",
        "--job",
        job["job_id"],
        "--type",
        "edge_package",
        "--name",
        "x",
        "--tier",
        "pro",
        expect=2,
    )
    assert "--tier" in refused.stderr
    listed = cli.json("deploy", "list", "--model", job["model_id"])
    assert created["deployment"]["deployment_id"] in [d["deployment_id"] for d in listed["items"]]
