"""Export jobs through the API's use cases, with in-memory ports, and the local runner's cancel."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.stub import Stubber
from tests.support.api_logic import (
    CHECKPOINT,
    MANIFEST,
    NAMES,
    PREFIX,
    runner,
    safetensors_with_manifest,
)
from tests.support.jobs import RecordingRunner

from heimdall.adapters.batch import BatchJobSubmitter
from heimdall.contracts.jobs import DEFAULT_BUNDLE_FORMATS, JobSpec
from heimdall.domain.records import ExportJob, JobResultSummary, JobStatus, ModelRecord
from heimdall.errors import (
    IdempotencyKeyReused,
    InvalidManifest,
    InvalidTransition,
    NoCheckpoint,
    NotReady,
    ObjectNotFound,
    RecordNotFound,
    RequestInvalid,
    StorageError,
)
from heimdall.events import DetailType
from heimdall.local.stack import SubprocessJobRunner
from heimdall.logic.api import ApiDeps
from heimdall.logic.deployment_artifacts import export_of_model
from heimdall.logic.export_jobs import (
    cancel_export_job,
    create_export_job,
    download_export,
    get_export_job,
    list_model_exports,
    set_default_export,
)
from heimdall.settings import ApiLimits, BundleLimits
from heimdall.testing.deployments import InMemoryDeploymentStore
from heimdall.testing.events import InMemoryEventSink
from heimdall.testing.registry import InMemoryRegistry
from heimdall.testing.storage import InMemoryObjectStore
from heimdall.types import ExportFormat


@pytest.fixture
def deps(tmp_path: Path) -> ApiDeps:
    registry = InMemoryRegistry()
    return ApiDeps(
        registry=registry,
        claims=registry,
        deployments=InMemoryDeploymentStore(),
        store=InMemoryObjectStore(),
        events=InMemoryEventSink(),
        jobs=RecordingRunner(),
        names=NAMES,
        limits=BundleLimits(),
        api=ApiLimits(presign_ttl_s=120),
        now=lambda: datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        workdir=tmp_path,
    )


def put(deps: ApiDeps, uri: str, data: bytes) -> None:
    deps.store.put_bytes(uri, data)


def test_a_job_from_a_checkpoint_with_its_sidecar_is_submitted_as_the_s3_path_does(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, b"weights")
    put(deps, f"s3://ingest/{PREFIX}heimdall.json", json.dumps(MANIFEST).encode())
    job = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT)
    assert job.status is JobStatus.SUBMITTED and job.owner == "alice" and job.batch_job_id == "batch-1"
    assert (job.model_name, job.version, job.manifest_key) == ("net", "1.0.0", f"{PREFIX}heimdall.json")
    assert job.output_prefix == f"s3://artifacts/exports/{job.job_id}/"
    (spec,) = runner(deps).specs
    assert spec.job_id == job.job_id and spec.checkpoint_uri == CHECKPOINT
    assert spec.manifest_uri == f"s3://ingest/{PREFIX}heimdall.json"
    assert spec.formats == [ExportFormat.ONNX, ExportFormat.ONNX_INT8] == job.formats
    events = deps.events
    assert isinstance(events, InMemoryEventSink)
    assert events.detail_types == [DetailType.CHECKPOINT_RECEIVED, DetailType.EXPORT_JOB_SUBMITTED]
    assert get_export_job(deps, "alice", job.job_id) == job
    for owner, job_id in [("bob", job.job_id), ("alice", "..%2f"), ("alice", "no-such-job")]:
        with pytest.raises(RecordNotFound):
            get_export_job(deps, owner, job_id)


def test_an_explicit_or_embedded_manifest_and_chosen_formats(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, safetensors_with_manifest(MANIFEST))
    embedded = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, formats=[ExportFormat.TORCHSCRIPT])
    assert embedded.manifest_key is None
    assert embedded.formats == [ExportFormat.ONNX, ExportFormat.TORCHSCRIPT]  # ONNX is always built
    assert runner(deps).specs[-1].manifest_uri is None
    other = f"s3://ingest/{PREFIX}other-manifest.json"
    put(deps, other, json.dumps({**MANIFEST, "formats": ["onnx_fp16"]}).encode())
    explicit = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, manifest_uri=other)
    assert explicit.manifest_key == f"{PREFIX}other-manifest.json"
    assert explicit.formats == [ExportFormat.ONNX, ExportFormat.ONNX_FP16]
    assert explicit.job_id != embedded.job_id


def test_a_checkpoint_location_is_checked(deps: ApiDeps) -> None:
    put(deps, f"s3://ingest/{PREFIX}model.pt", b"PK")
    with pytest.raises(InvalidManifest):  # no sidecar, and a .pt's embedded manifest is not readable here
        create_export_job(deps, "alice", checkpoint_uri=f"s3://ingest/{PREFIX}model.pt")
    put(deps, f"s3://ingest/{PREFIX}heimdall.json", b"{broken")
    with pytest.raises(InvalidManifest):
        create_export_job(deps, "alice", checkpoint_uri=f"s3://ingest/{PREFIX}model.pt")
    with pytest.raises(ObjectNotFound):
        create_export_job(deps, "alice", checkpoint_uri=f"s3://ingest/{PREFIX}missing.safetensors")
    for uri in (
        "s3://artifacts/checkpoints/net/1.0.0/model.pt",
        "s3://ingest/bundles/model.pt",
        f"s3://ingest/{PREFIX}../../x/model.pt",
        f"s3://ingest/{PREFIX}notes.txt",
        "https://example.com/model.pt",
    ):
        with pytest.raises(RequestInvalid):
            create_export_job(deps, "alice", checkpoint_uri=uri)
    with pytest.raises(RequestInvalid):
        create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, manifest_uri="s3://elsewhere/m.json")
    with pytest.raises(RequestInvalid):
        create_export_job(deps, "alice")
    with pytest.raises(RequestInvalid):
        create_export_job(deps, "alice", model_id="m", checkpoint_uri=CHECKPOINT)
    with pytest.raises(RequestInvalid):
        create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, formats=[])
    assert runner(deps).specs == []


def test_an_idempotency_key_makes_a_repeat_return_the_same_job(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, safetensors_with_manifest(MANIFEST))
    first = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, idempotency_key="req-1")
    again = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, idempotency_key="req-1")
    assert again == first and len(runner(deps).specs) == 1
    bobs = create_export_job(deps, "bob", checkpoint_uri=CHECKPOINT, idempotency_key="req-1")
    other = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, idempotency_key="req-2")
    assert len({first.job_id, bobs.job_id, other.job_id}) == 3 and len(runner(deps).specs) == 3
    plain = [create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT) for _ in range(2)]
    assert plain[0].job_id != plain[1].job_id
    with pytest.raises(RequestInvalid):
        create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, idempotency_key="k" * 257)


def test_an_idempotency_key_reused_with_another_request_is_refused(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, safetensors_with_manifest(MANIFEST))
    first = create_export_job(
        deps,
        "alice",
        checkpoint_uri=CHECKPOINT,
        formats=[ExportFormat.ONNX, ExportFormat.ONNX_INT8],
        idempotency_key="req-1",
    )
    # The same request, formats in another order and repeated: the same job.
    again = create_export_job(
        deps,
        "alice",
        checkpoint_uri=CHECKPOINT,
        formats=[ExportFormat.ONNX_INT8, ExportFormat.ONNX, ExportFormat.ONNX_INT8],
        idempotency_key="req-1",
    )
    assert again.job_id == first.job_id
    for changed in (
        {"formats": [ExportFormat.ONNX]},
        {"formats": None},
        {"manifest_uri": f"s3://ingest/{PREFIX}heimdall.json"},
    ):
        request: dict[str, Any] = {"formats": [ExportFormat.ONNX, ExportFormat.ONNX_INT8], **changed}
        with pytest.raises(IdempotencyKeyReused) as refused:
            create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, idempotency_key="req-1", **request)
        assert refused.value.field == "Idempotency-Key" and refused.value.http_status == 422
    with pytest.raises(IdempotencyKeyReused):
        create_export_job(deps, "alice", model_id="m1", idempotency_key="req-1")
    assert len(runner(deps).specs) == 1
    # Keys belong to their owner: bob's req-1 is another key.
    bobs = create_export_job(deps, "bob", checkpoint_uri=CHECKPOINT, idempotency_key="req-1")
    assert bobs.job_id != first.job_id


def test_a_failed_submission_is_submitted_again_by_the_repeat(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, safetensors_with_manifest(MANIFEST))
    jobs = runner(deps)
    real_submit = jobs.submit

    def down(spec: JobSpec) -> str:
        raise StorageError("Batch is down")

    jobs.submit = down  # type: ignore[method-assign]
    with pytest.raises(StorageError):
        create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, idempotency_key="retry-me")
    jobs.submit = real_submit  # type: ignore[method-assign]
    job = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT, idempotency_key="retry-me")
    assert job.status is JobStatus.SUBMITTED and len(jobs.specs) == 1


def exported_model(deps: ApiDeps, job: ExportJob, *, owner: str = "alice") -> ModelRecord:
    model = ModelRecord(
        model_id=f"model-of-{job.job_id}",
        owner=owner,
        model_name=job.model_name,
        version=job.version,
        export_job_id=job.job_id,
    )
    return deps.registry.put_model(model)


def test_a_job_from_a_model_converts_its_checkpoint_again(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, b"weights")
    put(deps, f"s3://ingest/{PREFIX}heimdall.json", json.dumps(MANIFEST).encode())
    first = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT)
    model = exported_model(deps, first)
    again = create_export_job(deps, "alice", model_id=model.model_id, formats=[ExportFormat.TENSORRT])
    assert again.job_id != first.job_id and again.checkpoint_key == first.checkpoint_key
    assert again.manifest_key == first.manifest_key
    assert again.formats == [ExportFormat.ONNX, ExportFormat.TENSORRT]
    with pytest.raises(RecordNotFound):
        create_export_job(deps, "bob", model_id=model.model_id)
    with pytest.raises(RequestInvalid):
        create_export_job(deps, "alice", model_id=model.model_id, manifest_uri=CHECKPOINT)
    deps.store.delete(CHECKPOINT)
    with pytest.raises(NoCheckpoint, match="gone"):
        create_export_job(deps, "alice", model_id=model.model_id)


def test_a_job_of_an_imported_model_converts_its_stored_bundle(deps: ApiDeps) -> None:
    imported = deps.registry.put_model(
        ModelRecord(
            model_id="imported-1",
            owner="alice",
            model_name="net",
            version="1.0.0",
            source="import",
            bundle_key="bundles/imported-1/net-v1.0.0.heimdall",
            onnx_sha256="ab" * 32,
        )
    )
    job = create_export_job(deps, "alice", model_id=imported.model_id)
    assert (job.source, job.model_id, job.status) == ("bundle", "imported-1", JobStatus.SUBMITTED)
    bundle_key = "bundles/imported-1/net-v1.0.0.heimdall"
    assert (job.checkpoint_bucket, job.checkpoint_key) == ("artifacts", bundle_key)
    assert job.manifest_key is None
    # TorchScript needs the PyTorch model: by default a bundle job builds what its ONNX model can give.
    assert job.formats == list(DEFAULT_BUNDLE_FORMATS) and ExportFormat.TORCHSCRIPT not in job.formats
    (spec,) = runner(deps).specs
    assert spec.source == "bundle" and spec.checkpoint_uri == f"s3://artifacts/{bundle_key}"
    assert spec.manifest_uri is None and spec.output_uri == f"s3://artifacts/exports/{job.job_id}/"
    assert spec.expected_onnx_sha256 == "ab" * 32  # the job converts this model, not whatever is stored
    assert isinstance(deps.events, InMemoryEventSink)
    assert deps.events.detail_types == [DetailType.EXPORT_JOB_SUBMITTED]  # no checkpoint was received
    asked = create_export_job(deps, "alice", model_id=imported.model_id, formats=[ExportFormat.ONNX_INT8])
    assert asked.formats == [ExportFormat.ONNX, ExportFormat.ONNX_INT8]
    with pytest.raises(RecordNotFound):
        create_export_job(deps, "bob", model_id=imported.model_id)
    bare = deps.registry.put_model(
        ModelRecord(model_id="imported-2", owner="alice", model_name="n", version="1", source="import")
    )
    with pytest.raises(NotReady):
        create_export_job(deps, "alice", model_id=bare.model_id)
    assert len(runner(deps).specs) == 2


def test_the_exports_of_a_model_are_its_name_and_version_only(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, safetensors_with_manifest(MANIFEST))
    other = "s3://ingest/checkpoints/net/2.0.0/model.safetensors"
    put(deps, other, safetensors_with_manifest({**MANIFEST, "version": "2.0.0"}))
    mine = [create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT) for _ in range(2)]
    create_export_job(deps, "alice", checkpoint_uri=other)
    create_export_job(deps, "bob", checkpoint_uri=CHECKPOINT)
    model = exported_model(deps, mine[0])
    listed = list_model_exports(deps, "alice", model.model_id)
    assert {j.job_id for j in listed.items} == {j.job_id for j in mine}
    with pytest.raises(RecordNotFound):
        list_model_exports(deps, "bob", model.model_id)


def succeed(deps: ApiDeps, job: ExportJob, **result: Any) -> ExportJob:
    deps.registry.transition_export_job(job.job_id, JobStatus.RUNNING)
    summary = JobResultSummary(status="SUCCEEDED", **result)
    done = deps.registry.transition_export_job(job.job_id, JobStatus.SUCCEEDED, updates={"result": summary})
    assert done is not None
    return done


def test_cancel_stops_the_runner_and_a_finished_job_cannot_be_cancelled(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, safetensors_with_manifest(MANIFEST))
    job = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT)
    with pytest.raises(RecordNotFound):
        cancel_export_job(deps, "bob", job.job_id, cancelled_by="bob")
    cancelled = cancel_export_job(deps, "alice", job.job_id, cancelled_by="alice")
    assert cancelled.status is JobStatus.CANCELLED and cancelled.reason == "cancelled by alice"
    assert runner(deps).cancelled == [("batch-1", "cancelled by alice")]
    with pytest.raises(InvalidTransition):
        cancel_export_job(deps, "alice", job.job_id, cancelled_by="alice")
    # Batch's own FAILED event for the terminated job arrives late: ignored, CANCELLED stays.
    assert deps.registry.transition_export_job(job.job_id, JobStatus.FAILED) is None
    finished = succeed(deps, create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT))
    with pytest.raises(InvalidTransition):
        cancel_export_job(deps, "alice", finished.job_id, cancelled_by="alice")


def test_a_runner_that_cannot_be_reached_does_not_undo_the_cancel(
    deps: ApiDeps, caplog: pytest.LogCaptureFixture
) -> None:
    put(deps, CHECKPOINT, safetensors_with_manifest(MANIFEST))
    job = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT)
    runner(deps).cancel_fails = True
    cancelled = cancel_export_job(deps, "alice", job.job_id, cancelled_by="alice")
    assert cancelled.status is JobStatus.CANCELLED
    assert deps.registry.get_export_job("alice", job.job_id).status is JobStatus.CANCELLED
    assert "Batch is down" in caplog.text


def test_set_default_and_download_need_a_succeeded_job(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, safetensors_with_manifest(MANIFEST))
    job = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT)
    with pytest.raises(NotReady):
        set_default_export(deps, "alice", job.job_id)
    with pytest.raises(NotReady):
        download_export(deps, "alice", job.job_id)
    package = b"PK package bytes"
    prefix = job.output_prefix or ""
    put(deps, f"{prefix}package.zip", package)
    put(deps, f"{prefix}net.heimdall", b"{}")
    outputs = {"package.zip": {"sha256": "ab" * 32, "size_bytes": len(package)}}
    put(deps, f"{prefix}result.json", json.dumps({"outputs": outputs}).encode())  # not a full result.json
    done = succeed(deps, job, package_file="package.zip")
    assert set_default_export(deps, "alice", done.job_id).is_default
    with pytest.raises(RecordNotFound):
        set_default_export(deps, "bob", done.job_id)
    with pytest.raises(NotReady):  # the result names no bundle file
        download_export(deps, "alice", done.job_id, file="bundle")
    download = download_export(deps, "alice", done.job_id)
    assert download.file == "package" and download.key == f"exports/{job.job_id}/package.zip"
    assert download.url.startswith(f"memory://artifacts/exports/{job.job_id}/package.zip?expires=")
    assert download.size_bytes == len(package) and download.sha256 is None  # result.json unreadable
    assert 0 < (download.expires_at - datetime.now(UTC)).total_seconds() <= 120
    with pytest.raises(RecordNotFound):
        download_export(deps, "bob", done.job_id)
    with pytest.raises(RequestInvalid):
        download_export(deps, "alice", done.job_id, file="model")  # type: ignore[arg-type]


def test_a_download_carries_the_hash_result_json_recorded(deps: ApiDeps) -> None:
    put(deps, CHECKPOINT, safetensors_with_manifest(MANIFEST))
    job = create_export_job(deps, "alice", checkpoint_uri=CHECKPOINT)
    prefix = job.output_prefix or ""
    result = {
        "job_id": job.job_id,
        "status": "SUCCEEDED",
        "started_at": "2026-11-25T12:00:00Z",
        "finished_at": "2026-11-25T12:05:00Z",
        "outputs": {"net-v1.0.0.heimdall": {"sha256": "cd" * 32, "size_bytes": 1234}},
        "bundle_file": "net-v1.0.0.heimdall",
    }
    put(deps, f"{prefix}result.json", json.dumps(result).encode())
    done = succeed(deps, job, bundle_file="net-v1.0.0.heimdall")
    download = download_export(deps, "alice", done.job_id, file="bundle")
    assert (download.size_bytes, download.sha256) == (1234, "cd" * 32)
    assert "filename=net-v1.0.0.heimdall" in download.url


# --- the local stack's runner ----------------------------------------------------------------------


def _local_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str
) -> tuple[SubprocessJobRunner, list[dict[str, Any]]]:
    """The local stack's runner, with the conversion job replaced by ``script``; and what it posts."""

    real_popen = subprocess.Popen

    def popen(args: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        assert args[1:] == ["-m", "heimdall_batch"]
        return real_popen([sys.executable, "-c", script], **kwargs)

    monkeypatch.setattr(subprocess, "Popen", popen)
    posted: list[dict[str, Any]] = []
    local = SubprocessJobRunner({}, lambda event: posted.append(json.loads(event["Detail"])), tmp_path)
    return local, posted


SPEC = JobSpec(job_id="job-1", checkpoint_uri=CHECKPOINT, output_uri="s3://artifacts/exports/job-1/")


def _wait(posted: list[dict[str, Any]], count: int) -> None:
    deadline = time.monotonic() + 30
    while len(posted) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def test_the_local_runner_stops_a_running_job(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local, posted = _local_runner(tmp_path, monkeypatch, "import time; time.sleep(60)")
    batch_id = local.submit(SPEC)
    _wait(posted, 1)
    assert [e["status"] for e in posted] == ["RUNNING"]
    started = time.monotonic()
    local.cancel(batch_id, "cancelled by alice")
    _wait(posted, 2)
    assert time.monotonic() - started < 20
    assert posted[-1]["status"] == "FAILED" and posted[-1]["statusReason"] == "cancelled by alice"
    assert posted[-1]["container"]["exitCode"] != 0
    local.cancel(batch_id, "again")  # finished: nothing to do
    local.cancel("local-unknown", "never submitted")


def test_the_local_runner_never_starts_a_job_cancelled_while_queued(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local, posted = _local_runner(tmp_path, monkeypatch, "raise SystemExit(0)")
    local.cancel(local.submit(SPEC), "cancelled by alice")  # within the runner's queueing delay
    _wait(posted, 1)
    time.sleep(0.3)
    assert [(e["status"], e["statusReason"]) for e in posted] == [("FAILED", "cancelled by alice")]
    assert "container" not in posted[0]


# --- AWS Batch's cancel ----------------------------------------------------------------------------


def test_batch_cancel_terminates_and_a_job_batch_forgot_is_not_an_error() -> None:
    batch = boto3.client("batch", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    submitter = BatchJobSubmitter("q", "d", client=batch)
    with Stubber(batch) as stub:
        stub.add_response("terminate_job", {}, {"jobId": "abc", "reason": "cancelled by alice"})
        stub.add_client_error("terminate_job", service_error_code="ClientException", http_status_code=400)
        stub.add_client_error("terminate_job", service_error_code="ServerException", http_status_code=500)
        submitter.cancel("abc", "cancelled by alice")
        submitter.cancel("purged-long-ago", "cancelled by alice")
        with pytest.raises(StorageError, match="ServerException"):
            submitter.cancel("abc", "cancelled by alice")
        stub.assert_no_pending_responses()


def test_a_deployment_of_an_imported_model_finds_its_export_beyond_the_first_page(deps: ApiDeps) -> None:
    imported = deps.registry.put_model(
        ModelRecord(model_id="imp", owner="alice", model_name="net", version="1.0.0", source="import")
    )
    assert export_of_model(deps, "alice", imported) is None
    start = datetime(2026, 11, 1, tzinfo=UTC)

    def succeeded_job(job_id: str, model_id: str, minutes: int) -> None:
        at = start + timedelta(minutes=minutes)
        deps.registry.create_export_job(
            ExportJob(
                job_id=job_id,
                owner="alice",
                model_name="net",
                version="1.0.0",
                checkpoint_bucket="artifacts",
                checkpoint_key="bundles/x.heimdall",
                model_id=model_id,
                created_at=at,
                updated_at=at,
            )
        )
        for status in (JobStatus.SUBMITTED, JobStatus.RUNNING, JobStatus.SUCCEEDED):
            deps.registry.transition_export_job(job_id, status)

    succeeded_job("mine", "imp", 0)  # the oldest: 120 newer jobs of other models of the same name follow
    for i in range(120):
        succeeded_job(f"other-{i}", "another-model", i + 1)
    found = export_of_model(deps, "alice", imported)
    assert found is not None and found.job_id == "mine"
    assert export_of_model(deps, "bob", imported) is None
