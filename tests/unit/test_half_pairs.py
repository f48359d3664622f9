"""Half pairs with in-memory ports: a lone checkpoint or manifest is recorded as AWAITING, the other half
settles it PAIRED (the job starts), the sweep rejects it after the timeout (INCOMPLETE_UPLOAD), and a
pairing racing the sweep gives exactly one of the two."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from tests.support.checkpoints import (
    MANIFEST,
    NAMES,
    PREFIX,
    events,
    notify,
    put,
    submitted,
)
from tests.support.jobs import RecordingRunner

from heimdall.domain.records import UploadStatus
from heimdall.domain.uploads import half_ref, upload_id_for
from heimdall.errors import IncompleteUpload, RegistryUnavailable
from heimdall.events import CheckpointRejected, DetailType
from heimdall.logic.api import ApiDeps
from heimdall.logic.checkpoint_jobs import CheckpointDeps
from heimdall.logic.export_jobs import create_export_job
from heimdall.logic.uploads import SweepDeps, sweep_incomplete_uploads
from heimdall.settings import BundleLimits, Settings
from heimdall.testing.deployments import InMemoryDeploymentStore
from heimdall.testing.events import InMemoryEventSink
from heimdall.testing.registry import InMemoryRegistry
from heimdall.testing.storage import InMemoryObjectStore

T0 = datetime(2026, 11, 25, tzinfo=UTC)
DAY = 24 * 3600
UPLOAD_ID = upload_id_for("ingest", PREFIX)
MANIFEST_BYTES = json.dumps(MANIFEST).encode()
EVENTS_DIR = Path(__file__).resolve().parents[2] / "events"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def deps(clock: Clock) -> CheckpointDeps:
    registry = InMemoryRegistry(now=clock)
    return CheckpointDeps(
        registry=registry,
        claims=registry,
        store=InMemoryObjectStore(),
        events=InMemoryEventSink(),
        jobs=RecordingRunner(),
        names=NAMES,
        limits=BundleLimits(),
        now=clock,
    )


def sweep(deps: CheckpointDeps, timeout_s: int = DAY) -> list[str]:
    return sweep_incomplete_uploads(SweepDeps(checkpoints=deps, pair_timeout_s=timeout_s)).rejected


def rejections(deps: CheckpointDeps) -> list[CheckpointRejected]:
    found = events(deps).details(DetailType.CHECKPOINT_REJECTED)
    return [d for d in found if isinstance(d, CheckpointRejected)]


def quarantined(deps: CheckpointDeps) -> dict[str, bytes]:
    store = deps.store
    assert isinstance(store, InMemoryObjectStore)
    return {k: v for (b, k), v in store.objects.items() if b == "artifacts" and k.startswith("quarantine/")}


def test_the_default_timeout_is_a_day() -> None:
    assert Settings().pair_timeout_s == DAY
    assert Settings.model_validate({"pair_timeout_s": "2"}).pair_timeout_s == 2


@pytest.mark.parametrize(
    ("key", "data", "half"),
    [
        (PREFIX + "heimdall.json", MANIFEST_BYTES, "manifest"),
        (PREFIX + "model.pt", b"PK\x03\x04...", "checkpoint"),
        (PREFIX + "model.safetensors", b"weights", "checkpoint"),
    ],
)
def test_a_lone_half_is_recorded_as_awaiting_and_nothing_is_announced(
    deps: CheckpointDeps, key: str, data: bytes, half: str
) -> None:
    obj = put(deps, key, data)
    outcome = notify(deps, obj)
    assert outcome.status == "waiting" and outcome.upload_id == UPLOAD_ID
    (record,) = deps.registry.list_uploads("alice", status=UploadStatus.AWAITING).items
    assert (record.upload_id, record.half, record.key) == (UPLOAD_ID, half, key)
    assert record.revision == obj.revision
    assert (record.model_name, record.version, record.created_at) == ("localization-net", "1.0.0", T0)
    assert record.missing == ("checkpoint" if half == "manifest" else "manifest")
    assert deps.registry.list_uploads("bob").items == []
    assert events(deps).events == [] and submitted(deps) == []


def test_the_other_half_in_time_settles_the_round_paired_and_starts_the_job(
    deps: CheckpointDeps, clock: Clock
) -> None:
    notify(deps, put(deps, PREFIX + "heimdall.json", MANIFEST_BYTES))
    clock.advance(DAY - 1)
    outcome = notify(deps, put(deps, PREFIX + "model.safetensors", b"weights"))
    assert outcome.status == "submitted" and outcome.job_id
    record = deps.registry.get_upload("alice", UPLOAD_ID)
    assert (record.status, record.job_id, record.half) == (UploadStatus.PAIRED, outcome.job_id, "manifest")
    assert record.paired_key == PREFIX + "model.safetensors"
    clock.advance(10 * DAY)
    assert sweep(deps) == []
    assert rejections(deps) == [] and len(submitted(deps)) == 1


def test_a_half_past_the_timeout_is_rejected_quarantined_and_announced_once(
    deps: CheckpointDeps, clock: Clock
) -> None:
    obj = put(deps, PREFIX + "heimdall.json", MANIFEST_BYTES)
    notify(deps, obj)
    clock.advance(DAY - 1)
    assert sweep(deps) == []
    clock.advance(2)
    assert sweep(deps) == [UPLOAD_ID]
    (detail,) = rejections(deps)
    assert (detail.code, detail.key, detail.owner) == ("INCOMPLETE_UPLOAD", obj.key, "alice")
    assert (detail.model_name, detail.version) == ("localization-net", "1.0.0")
    assert "checkpoint" in detail.message and "24 h" in detail.message
    kept = quarantined(deps)
    assert kept[detail.quarantine_key or ""] == MANIFEST_BYTES
    reason = json.loads(next(v for k, v in kept.items() if k.endswith("reason.json")))
    assert (reason["code"], reason["source_key"]) == ("INCOMPLETE_UPLOAD", obj.key)
    assert deps.store.get_bytes(f"s3://ingest/{obj.key}", max_bytes=100_000) == MANIFEST_BYTES  # kept
    record = deps.registry.get_upload("alice", UPLOAD_ID)
    assert (record.status, record.error_code, record.quarantine_key) == (
        UploadStatus.REJECTED,
        "INCOMPLETE_UPLOAD",
        detail.quarantine_key,
    )
    assert record.rejecting_since is None
    # Idempotent: the next runs find nothing to do.
    clock.advance(DAY)
    assert sweep(deps) == [] and len(rejections(deps)) == 1


def test_the_other_half_after_the_rejection_starts_nothing_and_waits_for_a_new_upload(
    deps: CheckpointDeps, clock: Clock
) -> None:
    notify(deps, put(deps, PREFIX + "heimdall.json", MANIFEST_BYTES))
    clock.advance(DAY + 1)
    sweep(deps)
    late = notify(deps, put(deps, PREFIX + "model.safetensors", b"weights"))
    assert late.status == "waiting" and "rejected" in (late.reason or "")
    assert submitted(deps) == []
    record = deps.registry.get_upload("alice", UPLOAD_ID)
    assert (record.status, record.half) == (UploadStatus.AWAITING, "checkpoint")
    # The manifest uploaded again (a new revision) completes the pair.
    manifest_again = json.dumps({**MANIFEST, "formats": ["onnx"]}).encode()
    again = notify(deps, put(deps, PREFIX + "heimdall.json", manifest_again))
    assert again.status == "submitted"
    assert deps.registry.get_upload("alice", UPLOAD_ID).status is UploadStatus.PAIRED
    assert len(rejections(deps)) == 1


def test_a_half_deleted_before_the_sweep_is_rejected_with_nothing_to_keep(
    deps: CheckpointDeps, clock: Clock
) -> None:
    notify(deps, put(deps, PREFIX + "model.pt", b"PK\x03\x04..."))
    deps.store.delete(f"s3://ingest/{PREFIX}model.pt")
    clock.advance(DAY + 1)
    assert sweep(deps) == [UPLOAD_ID]
    (detail,) = rejections(deps)
    assert detail.quarantine_key is None and detail.quarantine_bucket is None
    assert deps.registry.get_upload("alice", UPLOAD_ID).status is UploadStatus.REJECTED


def test_a_sweep_that_failed_to_announce_is_finished_by_a_later_one(
    deps: CheckpointDeps, clock: Clock
) -> None:
    notify(deps, put(deps, PREFIX + "heimdall.json", MANIFEST_BYTES))
    clock.advance(DAY + 1)
    events(deps).fail_next()
    with pytest.raises(Exception, match="injected"):
        sweep(deps)
    record = deps.registry.get_upload("alice", UPLOAD_ID)
    assert record.status is UploadStatus.REJECTED and record.rejecting_since is not None
    # Decided: the checkpoint arriving now cannot start a job; its notification is retried later.
    checkpoint = put(deps, PREFIX + "model.safetensors", b"weights")
    with pytest.raises(RegistryUnavailable):
        notify(deps, checkpoint)
    clock.advance(60)
    assert sweep(deps) == []  # another sweep's announcement may still be under way
    clock.advance(300)
    assert sweep(deps) == [UPLOAD_ID]
    assert len(rejections(deps)) == 1 and submitted(deps) == []
    assert notify(deps, checkpoint).status == "waiting"
    assert deps.registry.get_upload("alice", UPLOAD_ID).half == "checkpoint"


def test_concurrent_sweeps_reject_each_round_once(deps: CheckpointDeps, clock: Clock) -> None:
    notify(deps, put(deps, PREFIX + "heimdall.json", MANIFEST_BYTES))
    clock.advance(DAY + 1)
    barrier = threading.Barrier(6)
    results: list[list[str]] = []

    def run() -> None:
        barrier.wait()
        results.append(sweep(deps))

    threads = [threading.Thread(target=run) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(map(len, results)) == [0, 0, 0, 0, 0, 1]
    assert len(rejections(deps)) == 1


@pytest.mark.parametrize("attempt", range(10))
def test_a_second_half_racing_the_sweep_gives_the_job_or_the_rejection_never_both(
    deps: CheckpointDeps, clock: Clock, attempt: int
) -> None:
    notify(deps, put(deps, PREFIX + "heimdall.json", MANIFEST_BYTES))
    clock.advance(DAY + 1)
    checkpoint = put(deps, PREFIX + "model.safetensors", b"weights")
    barrier = threading.Barrier(2)

    def arrive() -> None:
        barrier.wait()
        notify(deps, checkpoint)

    def run_sweep() -> None:
        barrier.wait()
        sweep(deps)

    threads = [threading.Thread(target=arrive), threading.Thread(target=run_sweep)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (len(submitted(deps)), len(rejections(deps))) in {(1, 0), (0, 1)}


# --- a job started through the HTTP API from a half that waits --------------------------------------

#: A manifest given by URI, outside the dropped checkpoint's folder.
SHARED_MANIFEST = "checkpoints/shared-manifests/1.0.0/localization-net.json"


def api(deps: CheckpointDeps) -> ApiDeps:
    """The API's use cases over the same registry, bucket, bus and runner as the drops."""
    return ApiDeps(
        registry=deps.registry,
        claims=deps.claims,
        store=deps.store,
        events=deps.events,
        jobs=deps.jobs,
        names=deps.names,
        limits=deps.limits,
        deployments=InMemoryDeploymentStore(),
        now=deps.now,
    )


def api_job(
    deps: CheckpointDeps,
    checkpoint_key: str,
    manifest_key: str | None = None,
    idempotency_key: str | None = None,
) -> str:
    manifest_uri = None if manifest_key is None else f"s3://ingest/{manifest_key}"
    job = create_export_job(
        api(deps),
        "bob",
        checkpoint_uri=f"s3://ingest/{checkpoint_key}",
        manifest_uri=manifest_uri,
        idempotency_key=idempotency_key,
    )
    return job.job_id


def test_an_api_job_from_a_waiting_checkpoint_settles_its_round_and_the_sweep_leaves_it(
    deps: CheckpointDeps, clock: Clock
) -> None:
    checkpoint = put(deps, PREFIX + "model.safetensors", b"weights")
    notify(deps, checkpoint)
    assert deps.registry.get_upload("alice", UPLOAD_ID).status is UploadStatus.AWAITING
    manifest = put(deps, SHARED_MANIFEST, MANIFEST_BYTES)
    clock.advance(3600)
    job_id = api_job(deps, checkpoint.key, manifest.key)
    record = deps.registry.get_upload("alice", UPLOAD_ID)  # still the drop owner's round
    assert (record.status, record.job_id, record.owner) == (UploadStatus.PAIRED, job_id, "alice")
    assert (record.half, record.key, record.paired_key) == ("checkpoint", checkpoint.key, manifest.key)
    assert record.refs == [
        half_ref("ingest", checkpoint.key, checkpoint.revision),
        half_ref("ingest", manifest.key, manifest.revision),
    ]
    assert deps.registry.list_uploads("bob").items == []  # not exposed to the API's caller
    clock.advance(10 * DAY)
    assert sweep(deps) == []
    assert rejections(deps) == [] and quarantined(deps) == {}
    assert [spec.job_id for spec in submitted(deps)] == [job_id]


def test_an_api_job_from_a_waiting_manifest_settles_that_manifests_round(
    deps: CheckpointDeps, clock: Clock
) -> None:
    manifest = put(deps, PREFIX + "heimdall.json", MANIFEST_BYTES)
    notify(deps, manifest)
    other = "checkpoints/localization-net/0.9.0/model.safetensors"
    put(deps, other, b"weights")
    job_id = api_job(deps, other, manifest.key)
    record = deps.registry.get_upload("alice", UPLOAD_ID)
    assert (record.status, record.job_id, record.key, record.paired_key) == (
        UploadStatus.PAIRED,
        job_id,
        manifest.key,
        other,
    )
    clock.advance(DAY + 1)
    assert sweep(deps) == [] and rejections(deps) == []


def test_a_round_awaiting_another_revision_or_another_file_stays_awaiting(
    deps: CheckpointDeps, clock: Clock
) -> None:
    notify(deps, put(deps, PREFIX + "model.safetensors", b"weights"))
    put(deps, PREFIX + "model.safetensors", b"weights, retrained")  # its notification not yet seen
    put(deps, SHARED_MANIFEST, MANIFEST_BYTES)
    api_job(deps, PREFIX + "model.safetensors", SHARED_MANIFEST)
    assert deps.registry.get_upload("alice", UPLOAD_ID).status is UploadStatus.AWAITING
    put(deps, PREFIX + "other.pt", b"PK\x03\x04...")
    api_job(deps, PREFIX + "other.pt", SHARED_MANIFEST)
    record = deps.registry.get_upload("alice", UPLOAD_ID)
    assert (record.status, record.job_id) == (UploadStatus.AWAITING, None)
    clock.advance(DAY + 1)
    assert sweep(deps) == [UPLOAD_ID]  # what waits was never converted: rejected as before


def test_an_idempotent_repeat_of_the_api_job_keeps_the_round_as_settled(deps: CheckpointDeps) -> None:
    checkpoint = put(deps, PREFIX + "model.safetensors", b"weights")
    notify(deps, checkpoint)
    put(deps, SHARED_MANIFEST, MANIFEST_BYTES)
    first = api_job(deps, checkpoint.key, SHARED_MANIFEST, idempotency_key="k1")
    settled = deps.registry.get_upload("alice", UPLOAD_ID)
    assert api_job(deps, checkpoint.key, SHARED_MANIFEST, idempotency_key="k1") == first
    assert deps.registry.get_upload("alice", UPLOAD_ID) == settled
    assert len(submitted(deps)) == 1


def test_an_api_job_after_the_sweep_rejected_the_half_still_runs(deps: CheckpointDeps, clock: Clock) -> None:
    checkpoint = put(deps, PREFIX + "model.safetensors", b"weights")
    notify(deps, checkpoint)
    clock.advance(DAY + 1)
    assert sweep(deps) == [UPLOAD_ID]
    put(deps, SHARED_MANIFEST, MANIFEST_BYTES)
    job_id = api_job(deps, checkpoint.key, SHARED_MANIFEST)
    assert [spec.job_id for spec in submitted(deps)] == [job_id]
    record = deps.registry.get_upload("alice", UPLOAD_ID)
    assert (record.status, record.job_id) == (UploadStatus.REJECTED, None)


@pytest.mark.parametrize("attempt", range(5))
def test_an_api_job_racing_the_sweep_gives_paired_or_rejected_and_runs_either_way(
    deps: CheckpointDeps, clock: Clock, attempt: int
) -> None:
    checkpoint = put(deps, PREFIX + "model.safetensors", b"weights")
    notify(deps, checkpoint)
    put(deps, SHARED_MANIFEST, MANIFEST_BYTES)
    clock.advance(DAY + 1)
    barrier = threading.Barrier(2)
    jobs: list[str] = []

    def start() -> None:
        barrier.wait()
        jobs.append(api_job(deps, checkpoint.key, SHARED_MANIFEST))

    def run_sweep() -> None:
        barrier.wait()
        sweep(deps)

    threads = [threading.Thread(target=start), threading.Thread(target=run_sweep)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    record = deps.registry.get_upload("alice", UPLOAD_ID)
    assert [spec.job_id for spec in submitted(deps)] == jobs and len(jobs) == 1
    if record.status is UploadStatus.PAIRED:
        assert record.job_id == jobs[0] and rejections(deps) == []
    else:
        assert record.status is UploadStatus.REJECTED and len(rejections(deps)) == 1


def test_the_incomplete_upload_sample_event_is_a_valid_checkpoint_rejected() -> None:
    sample = json.loads((EVENTS_DIR / "heimdall-checkpoint-rejected-incomplete-upload.json").read_text())
    assert sample["detail-type"] == DetailType.CHECKPOINT_REJECTED.value
    detail = CheckpointRejected.model_validate(sample["detail"])
    assert detail.code == IncompleteUpload.code == "INCOMPLETE_UPLOAD"
    assert "INCOMPLETE_UPLOAD" in (CheckpointRejected.model_fields["code"].description or "")
