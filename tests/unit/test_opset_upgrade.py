"""Old-opset models (issue 11, items 9-10): the serving check and opset upgrade, the import that records
it, and deployments refused for a model that cannot serve. Real models from the onnx package's own
backend tests (opset 6), run in real ONNX Runtime; in-memory ports for the registry, store and events.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from tests.support.api import FakeLambdaContext

from heimdall.bundle import read_bundle
from heimdall.bundle.models import ComponentSelection
from heimdall.bundle.upgrade import UPGRADE_OPSET, check_serving, checkable_samples
from heimdall.bundle.verify import verify_bundle
from heimdall.domain.deployments import DeploymentStatus, DeploymentType
from heimdall.errors import ModelNotServable
from heimdall.inference.deps import ServingDeps, use_serving_deps
from heimdall.local.payload_format import HttpRequest, build_event
from heimdall.local.stack import invoker, load_function
from heimdall.logic.api import ApiDeps
from heimdall.logic.deployment_requests import DownloadOptions, DownloadRequest, EndpointRequest
from heimdall.logic.deployments import activate_deployment, create_deployment, deactivate_deployment
from heimdall.logic.imports import import_inline
from heimdall.logic.models import ExportOptions, delete_model, export_model
from heimdall.settings import ApiLimits, BundleLimits, Settings
from heimdall.testing.deployments import InMemoryDeploymentStore
from heimdall.testing.events import InMemoryEventSink
from heimdall.testing.registry import InMemoryRegistry
from heimdall.testing.sample_bundles import reference_bundle, sample_bundle
from heimdall.testing.sample_models import (
    OLD_OPSET_BACKEND_MODELS,
    ReferenceModel,
    localization_net_onnx,
    onnx_backend_model,
    unconvertible_onnx,
    unloadable_after_upgrade_onnx,
)
from heimdall.testing.storage import InMemoryObjectStore

NAMES = Settings(ingest_bucket="ingest", artifacts_bucket="artifacts").resource_names()
#: What the reference outputs are compared with: the onnx backend tests' own rtol, and the project's
#: FP32 parity bound as atol.
RTOL, ATOL = 1e-4, 1e-5


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ort_session(data: bytes) -> ort.InferenceSession:
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def verified(tmp_path: Path, bundle: bytes) -> tuple[Path, Any]:
    """The bundle's model, extracted, and the verification report (the structural pass passed)."""
    (tmp_path / "b.heimdall").write_bytes(bundle)
    report = verify_bundle(tmp_path / "b.heimdall", onnx_out=tmp_path / "m.onnx")
    assert report.valid and report.structure is not None and report.read is not None, report.message
    return tmp_path / "m.onnx", report


def serving_check(tmp_path: Path, bundle: bytes, **kwargs: Any) -> Any:
    path, report = verified(tmp_path, bundle)
    return check_serving(
        path,
        report.structure,
        limits=BundleLimits(),
        workdir=tmp_path,
        samples=report.read.bundle.sample_predictions,
        **kwargs,
    )


def crafted(name: str, data: bytes) -> ReferenceModel:
    return ReferenceModel(name, data, {}, {})


# --- the serving check -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", OLD_OPSET_BACKEND_MODELS)
def test_old_backend_test_models_are_upgraded_and_give_the_reference_outputs(
    tmp_path: Path, name: str
) -> None:
    model = onnx_backend_model(name)
    with pytest.raises(Exception, match="NOT_IMPLEMENTED"):  # what a platform endpoint hit at request one
        ort_session(model.onnx)
    check = serving_check(tmp_path, reference_bundle(model))
    assert check.servable and check.reason is None and check.from_opset == 6
    upgrade = check.upgrade
    assert upgrade is not None and upgrade.result == "upgraded", upgrade
    assert (upgrade.from_opset, upgrade.to_opset) == (6, UPGRADE_OPSET)
    assert upgrade.converter.startswith("onnx.version_converter (onnx ")
    assert upgrade.samples_checked == 1 and upgrade.max_abs_error is not None and upgrade.max_abs_error < ATOL
    upgraded = check.upgraded.read_bytes()
    assert sha256(upgraded) == upgrade.onnx_sha256 and len(upgraded) == upgrade.onnx_size_bytes
    proto = onnx.load_model_from_string(upgraded)
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [UPGRADE_OPSET]
    session = ort_session(upgraded)
    got = session.run(list(model.outputs), model.inputs)
    for (output, want), value in zip(model.outputs.items(), got, strict=True):
        np.testing.assert_allclose(value, want, rtol=RTOL, atol=ATOL, err_msg=f"{name} output {output}")


def test_a_model_that_loads_as_stamped_is_not_touched(tmp_path: Path) -> None:
    check = serving_check(tmp_path, sample_bundle(localization_net_onnx()))
    assert check.servable and check.upgrade is None and check.upgraded is None and check.from_opset == 17
    assert not (tmp_path / f"model.opset{UPGRADE_OPSET}.onnx").exists()


def test_an_opset_6_model_that_still_loads_is_served_as_stamped(tmp_path: Path) -> None:
    # Conv(1) still has a kernel: upgrading it would change served bytes for nothing.
    model = onnx_backend_model("test_Conv2d")
    ort_session(model.onnx)
    check = serving_check(tmp_path, reference_bundle(model))
    assert check.servable and check.upgrade is None and check.from_opset == 6


def test_a_model_the_converter_cannot_upgrade_is_not_servable_with_the_reason(tmp_path: Path) -> None:
    check = serving_check(
        tmp_path, reference_bundle(crafted("unconvertible", unconvertible_onnx()), with_samples=False)
    )
    assert not check.servable and check.upgraded is None
    assert check.upgrade is not None and check.upgrade.result == "convert_failed"
    assert check.reason == check.upgrade.message
    assert "cannot convert the model from opset 6 to 17" in check.reason and "Affine" in check.reason


def test_a_model_still_unloadable_after_the_upgrade_is_not_servable(tmp_path: Path) -> None:
    bundle = reference_bundle(crafted("lrn-double", unloadable_after_upgrade_onnx()), with_samples=False)
    check = serving_check(tmp_path, bundle)
    assert not check.servable and check.upgrade is not None and check.upgrade.result == "load_failed"
    assert "ONNX Runtime cannot load the model converted to opset 17" in (check.reason or "")
    assert "LRN" in (check.reason or "")


def test_an_upgrade_that_disagrees_with_the_sample_predictions_is_not_servable(tmp_path: Path) -> None:
    model = onnx_backend_model("test_BatchNorm2d_eval")
    off = {name: value + np.float32(0.01) for name, value in model.outputs.items()}
    check = serving_check(
        tmp_path, reference_bundle(ReferenceModel(model.name, model.onnx, model.inputs, off))
    )
    assert not check.servable and check.upgrade is not None
    assert check.upgrade.result == "samples_failed" and check.upgrade.samples_checked == 1
    assert check.upgrade.max_abs_error is not None and 0.009 < check.upgrade.max_abs_error < 0.011
    assert "disagrees with sample" in (check.reason or "") and "max abs error" in (check.reason or "")


def test_samples_that_name_no_graph_tensors_check_nothing(tmp_path: Path) -> None:
    # The format's own samples (frequency in, latitude out) are not the model's tensors.
    _, report = verified(tmp_path, sample_bundle(localization_net_onnx()))
    assert report.read.bundle.sample_predictions
    assert checkable_samples(report.read.bundle.sample_predictions, report.structure) == []
    model = onnx_backend_model("test_AvgPool2d")
    _, report = verified(tmp_path, reference_bundle(model))
    (sample,) = checkable_samples(report.read.bundle.sample_predictions, report.structure)
    assert set(sample["inputs"]) == set(model.inputs) and set(sample["outputs"]) == set(model.outputs)


def test_the_offline_upgrade_converts_even_a_model_that_loads(tmp_path: Path) -> None:
    check = serving_check(
        tmp_path, sample_bundle(localization_net_onnx(opset=13), model={"onnx_opset": 13}), force=True
    )
    assert check.servable and check.upgrade is not None and check.upgrade.result == "upgraded"
    assert (check.upgrade.from_opset, check.upgrade.to_opset) == (13, UPGRADE_OPSET)


# --- the import records it, deployments follow -----------------------------------------------------------


class NoJobs:
    def submit(self, spec: object) -> str:
        raise AssertionError("no job expected")

    def cancel(self, runner_job_id: str, reason: str) -> None:
        raise AssertionError("no job expected")


@pytest.fixture
def deps(tmp_path: Path) -> ApiDeps:
    registry = InMemoryRegistry()
    return ApiDeps(
        registry=registry,
        claims=registry,
        deployments=InMemoryDeploymentStore(),
        store=InMemoryObjectStore(),
        events=InMemoryEventSink(),
        jobs=NoJobs(),
        names=NAMES,
        limits=BundleLimits(),
        api=ApiLimits(),
        now=lambda: datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        workdir=tmp_path,
    )


def stored(deps: ApiDeps, key: str | None) -> bytes:
    assert isinstance(deps.store, InMemoryObjectStore) and key
    return deps.store.objects[("artifacts", key)]


def endpoint(model_id: str) -> EndpointRequest:
    return EndpointRequest(type=DeploymentType.PLATFORM_ENDPOINT, name="ep", model_id=model_id)


def test_an_old_opset_import_keeps_the_original_and_serves_an_upgraded_copy(deps: ApiDeps) -> None:
    model = onnx_backend_model("test_BatchNorm2d_eval")
    bundle = reference_bundle(model)
    record = import_inline(deps, "alice", bundle).model
    assert record is not None
    assert record.servable and record.not_servable_reason is None
    upgrade = record.opset_upgrade
    assert upgrade is not None and upgrade.result == "upgraded" and upgrade.samples_checked == 1
    # Beside the original, under a key made of ids only; both sha256s on the record.
    assert upgrade.onnx_key == f"imported/{record.model_id}/model.opset17.onnx"
    assert stored(deps, record.onnx_key) == model.onnx and record.onnx_sha256 == sha256(model.onnx)
    upgraded = stored(deps, upgrade.onnx_key)
    assert sha256(upgraded) == upgrade.onnx_sha256 != record.onnx_sha256
    assert record.served_onnx() == (upgrade.onnx_key, upgrade.onnx_sha256)
    assert deps.registry.get_model("alice", record.model_id) == record
    # The stored bundle, and so every export, carries the original bytes.
    assert read_bundle(stored(deps, record.bundle_key)).onnx_sha256 == sha256(model.onnx)
    options = ExportOptions(selection=ComponentSelection())
    exported = export_model(deps, "alice", record.model_id, options, requested_by="alice")
    assert exported.body is not None and read_bundle(exported.body).onnx_sha256 == sha256(model.onnx)

    created = create_deployment(deps, "alice", endpoint(record.model_id)).deployment
    assert (created.onnx_key, created.onnx_sha256) == (upgrade.onnx_key, upgrade.onnx_sha256)
    # Deleting the model removes the upgraded copy too.
    deps.deployments.delete_deployment("alice", created.deployment_id)
    delete_model(deps, "alice", record.model_id)
    assert isinstance(deps.store, InMemoryObjectStore)
    assert not [key for (_, key) in deps.store.objects if record.model_id in key]


@pytest.mark.parametrize(
    ("data", "says"),
    [(unconvertible_onnx(), "cannot convert"), (unloadable_after_upgrade_onnx(), "cannot load")],
)
def test_a_model_that_cannot_serve_is_imported_and_refused_as_an_endpoint(
    deps: ApiDeps, data: bytes, says: str
) -> None:
    record = import_inline(deps, "alice", reference_bundle(crafted("bad", data), with_samples=False)).model
    assert record is not None
    assert not record.servable and says in (record.not_servable_reason or "")
    assert record.opset_upgrade is not None and record.opset_upgrade.onnx_key is None
    assert stored(deps, record.onnx_key) == data
    with pytest.raises(ModelNotServable) as refused:
        create_deployment(deps, "alice", endpoint(record.model_id))
    assert refused.value.http_status == 409 and says in refused.value.message
    assert deps.deployments.list_deployments("alice").items == []
    # Its own file stays downloadable: a download deployment of the original ONNX.
    download = create_deployment(
        deps,
        "alice",
        DownloadRequest(
            type=DeploymentType.DOWNLOAD,
            name="dl",
            model_id=record.model_id,
            options=DownloadOptions(file="onnx"),
        ),
    )
    assert download.deployment.artifact is not None and download.deployment.artifact.key == record.onnx_key
    assert download.deployment.artifact.sha256 == sha256(data)


def test_an_endpoint_of_a_model_found_not_servable_later_cannot_be_activated(deps: ApiDeps) -> None:
    record = import_inline(deps, "alice", sample_bundle(localization_net_onnx())).model
    assert record is not None
    created = create_deployment(deps, "alice", endpoint(record.model_id)).deployment
    deactivate_deployment(deps, "alice", created.deployment_id)
    # E.g. an endpoint created before the check existed, of a model a re-index found not servable.
    deps.registry.put_model(record.model_copy(update={"servable": False, "not_servable_reason": "no kernel"}))
    with pytest.raises(ModelNotServable, match="no kernel"):
        activate_deployment(deps, "alice", created.deployment_id)
    assert deps.deployments.get_deployment("alice", created.deployment_id).status is DeploymentStatus.INACTIVE


def test_the_model_record_keeps_the_upgrade_through_json(deps: ApiDeps) -> None:
    record = import_inline(deps, "alice", reference_bundle(onnx_backend_model("test_AvgPool2d"))).model
    assert record is not None
    again = type(record).model_validate(json.loads(record.model_dump_json()))
    assert again == record and again.opset_upgrade is not None


def test_the_endpoint_serves_the_upgraded_copy_and_checks_its_sha256(
    deps: ApiDeps, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POWERTOOLS_METRICS_DISABLED", "true")  # as the local stack runs handlers
    reference = onnx_backend_model("test_AvgPool2d")
    record = import_inline(deps, "alice", reference_bundle(reference)).model
    assert record is not None
    created = create_deployment(deps, "alice", endpoint(record.model_id))
    assert created.api_key is not None
    serving = ServingDeps(
        deployments=deps.deployments, store=deps.store, names=NAMES, limits=BundleLimits(), workdir=tmp_path
    )
    handler = invoker(load_function("infer"))
    body = json.dumps({"inputs": {k: v.tolist() for k, v in reference.inputs.items()}}).encode()

    def infer() -> tuple[int, Any]:
        request = HttpRequest(
            method="POST",
            target=f"/v1/infer/{created.deployment.deployment_id}",
            headers=[("content-type", "application/json"), ("authorization", f"Bearer {created.api_key}")],
            body=body,
            source_ip="127.0.0.1",
        )
        result = handler(build_event(request, identity=None, request_id="r1"), FakeLambdaContext())
        return result["statusCode"], json.loads(result["body"])

    use_serving_deps(lambda: serving)
    try:
        status, answer = infer()
        assert status == 200, answer
        for name, want in reference.outputs.items():
            np.testing.assert_allclose(answer["outputs"][name], want, rtol=RTOL, atol=ATOL)
        upgrade = record.opset_upgrade
        assert upgrade is not None and upgrade.onnx_sha256 is not None
        assert serving.cache.get(record.model_id, upgrade.onnx_sha256) is not None
        # Another container, and the stored copy no longer what the record says: refused, never run.
        assert isinstance(deps.store, InMemoryObjectStore)
        deps.store.objects[("artifacts", str(upgrade.onnx_key))] = reference.onnx
        serving.cache.clear()
        for stale in tmp_path.glob("*.onnx"):
            stale.unlink()
        status, answer = infer()
        assert status == 422 and answer["error"]["code"] == "CHECKSUM_MISMATCH", answer
    finally:
        use_serving_deps(None)


def test_a_serving_check_that_runs_out_of_memory_leaves_the_model_not_servable(tmp_path: Path) -> None:
    path, report = verified(tmp_path, reference_bundle(onnx_backend_model("test_AvgPool2d")))
    tight = BundleLimits(structural_memory_bytes=96 * 1024 * 1024)  # too little for onnxruntime itself
    check = check_serving(path, report.structure, limits=tight, workdir=tmp_path)
    assert not check.servable and check.upgrade is None
    assert "GRAPH_TOO_COMPLEX" in (check.reason or "") and "memory" in (check.reason or "")
