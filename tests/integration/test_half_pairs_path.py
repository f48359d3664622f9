"""Half pairs on the emulator's real endpoints, through the handlers Lambda runs: a manifest dropped alone
is AWAITING in the registry; the sweep function rejects it after the timeout (``Checkpoint Rejected``
``INCOMPLETE_UPLOAD`` on the bus, a quarantine copy, the original kept); the other half in time starts
the job and settles the round; and a second half racing the sweep gives exactly one of the two, with
DynamoDB's conditional writes deciding."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any

import jsonschema
import pytest
from tests.support.event_path import (  # noqa: F401 - stack_fixture is a fixture
    EVENTS_DIR,
    MANIFEST,
    Context,
    load_handler,
    object_created,
    received,
    sqs_batch,
    stack_fixture,
)
from tests.support.jobs import RecordingRunner

from heimdall import wiring
from heimdall.domain.records import UploadStatus
from heimdall.domain.uploads import upload_id_for
from heimdall.events import DetailType, schema_file_name
from heimdall.logic.export_jobs import create_export_job
from heimdall.logic.ingest import handle_ingest_record
from heimdall.logic.uploads import sweep_incomplete_uploads
from heimdall.settings import get_settings

OWNER = "system"  # direct drops belong to HEIMDALL_DROP_OWNER


@pytest.fixture
def quick(stack: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The stack with a 1-second pair timeout and a job submitter that only records."""
    monkeypatch.setenv("HEIMDALL_PAIR_TIMEOUT_S", "1")
    get_settings.cache_clear()
    wiring.reset()
    submitter = RecordingRunner()
    wiring.use_job_submitter(submitter)
    return {**stack, "submitter": submitter}


def drop(quick: dict[str, Any], key: str, body: bytes) -> dict[str, Any]:
    """Put ``key`` in the ingest bucket and return its S3 notification."""
    bucket = quick["names"].ingest_bucket
    quick["s3"].put_object(Bucket=bucket, Key=key, Body=body)
    return object_created(quick["s3"], bucket, key)


def validated(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for event in events:
        schema = json.loads(
            (EVENTS_DIR / "schemas" / schema_file_name(DetailType(event["detail-type"]))).read_text()
        )
        jsonschema.validate(event["detail"], schema)
    return events


def test_a_lone_manifest_is_awaiting_and_the_sweep_rejects_it_after_the_timeout(
    quick: dict[str, Any],
) -> None:
    ingest, sweep = load_handler("ingest"), load_handler("sweep")
    names, s3 = quick["names"], quick["s3"]
    prefix = "checkpoints/localization-net/1.0.0/"
    manifest = json.dumps(MANIFEST).encode()
    assert ingest(sqs_batch(drop(quick, prefix + "heimdall.json", manifest)), Context()) == {
        "batchItemFailures": []
    }
    registry = wiring.ingest_deps().checkpoints.registry
    (awaiting,) = registry.list_uploads(OWNER, status=UploadStatus.AWAITING).items
    assert awaiting.upload_id == upload_id_for(names.ingest_bucket, prefix)
    assert (awaiting.half, awaiting.key) == ("manifest", prefix + "heimdall.json")
    assert received(quick) == []  # nothing is announced while it waits
    assert sweep({}, Context()) == {"rejected": [], "skipped": []}  # not yet
    time.sleep(1.1)
    assert sweep({}, Context()) == {"rejected": [awaiting.upload_id], "skipped": []}
    (event,) = validated(received(quick))
    detail = event["detail"]
    assert (event["detail-type"], detail["code"], detail["key"]) == (
        "Checkpoint Rejected",
        "INCOMPLETE_UPLOAD",
        prefix + "heimdall.json",
    )
    kept = s3.get_object(Bucket=names.artifacts_bucket, Key=detail["quarantine_key"])["Body"].read()
    assert kept == manifest
    reason_key = detail["quarantine_key"].rpartition("/")[0] + "/reason.json"
    reason = json.loads(s3.get_object(Bucket=names.artifacts_bucket, Key=reason_key)["Body"].read())
    assert reason["code"] == "INCOMPLETE_UPLOAD"
    assert s3.get_object(Bucket=names.ingest_bucket, Key=prefix + "heimdall.json")["Body"].read() == manifest
    settled = registry.get_upload(OWNER, awaiting.upload_id)
    assert (settled.status, settled.quarantine_key) == (UploadStatus.REJECTED, detail["quarantine_key"])
    # Idempotent: later runs do nothing more.
    assert sweep({}, Context()) == {"rejected": [], "skipped": []}
    assert received(quick) == [] and quick["submitter"].specs == []


def test_the_other_half_in_time_starts_the_job_and_settles_the_round(quick: dict[str, Any]) -> None:
    ingest, sweep = load_handler("ingest"), load_handler("sweep")
    prefix = "checkpoints/localization-net/2.0.0/"
    manifest = {**MANIFEST, "version": "2.0.0"}
    ingest(sqs_batch(drop(quick, prefix + "heimdall.json", json.dumps(manifest).encode())), Context())
    ingest(sqs_batch(drop(quick, prefix + "model.safetensors", b"weights")), Context())
    (spec,) = quick["submitter"].specs
    registry = wiring.ingest_deps().checkpoints.registry
    record = registry.get_upload(OWNER, upload_id_for(quick["names"].ingest_bucket, prefix))
    assert (record.status, record.job_id, record.half) == (UploadStatus.PAIRED, spec.job_id, "manifest")
    time.sleep(1.1)
    assert sweep({}, Context())["rejected"] == []
    types = [e["detail-type"] for e in validated(received(quick))]
    assert types == ["Checkpoint Received", "Export Job Submitted"]


def test_a_second_half_racing_the_sweep_gives_exactly_one_outcome(
    quick: dict[str, Any],
    atomic_conditional_writes: None,
) -> None:
    deps = wiring.ingest_deps()
    rounds = [f"checkpoints/race-{uuid.uuid4().hex[:8]}/1.0.0/" for _ in range(6)]
    for prefix in rounds:
        manifest = {**MANIFEST, "model_name": prefix.split("/")[1]}
        handle_ingest_record(drop(quick, prefix + "heimdall.json", json.dumps(manifest).encode()), deps)
    time.sleep(1.1)
    checkpoints = [drop(quick, prefix + "model.safetensors", b"weights") for prefix in rounds]
    barrier = threading.Barrier(len(rounds) + 2)
    failures: list[BaseException] = []

    def arrive(notification: dict[str, Any]) -> None:
        barrier.wait()
        try:
            handle_ingest_record(notification, deps)
        except Exception as exc:  # a retryable refusal while a rejection is announced: SQS retries it
            failures.append(exc)

    def run_sweep() -> None:
        barrier.wait()
        sweep_incomplete_uploads(wiring.sweep_deps())

    threads = [threading.Thread(target=arrive, args=(c,)) for c in checkpoints]
    threads += [threading.Thread(target=run_sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Every notification delivered again, as SQS does for a refused one (the others are duplicates).
    for notification in checkpoints:
        handle_ingest_record(notification, deps)
    events = validated(received(quick))
    rejected_keys = {
        e["detail"]["key"].rpartition("/")[0]
        for e in events
        if e["detail-type"] == "Checkpoint Rejected" and e["detail"]["code"] == "INCOMPLETE_UPLOAD"
    }
    started = {spec.checkpoint_uri.split("/", 3)[3].rpartition("/")[0] for spec in quick["submitter"].specs}
    for prefix in rounds:
        folder = prefix.rstrip("/")
        assert (folder in started) != (folder in rejected_keys), (prefix, started, rejected_keys)
        record = deps.checkpoints.registry.get_upload(
            OWNER, upload_id_for(quick["names"].ingest_bucket, prefix)
        )
        if folder in started:
            assert record.status is UploadStatus.PAIRED
        else:
            # Rejected, and the checkpoint that lost the race now waits for a new manifest.
            assert (record.status, record.half) == (UploadStatus.AWAITING, "checkpoint")
    assert len(quick["submitter"].specs) == len(started)


def api_job(quick: dict[str, Any], checkpoint_key: str, manifest_key: str) -> str:
    """Start a job as ``POST /api/v1/export/jobs`` does, as another user than the drop's owner."""
    bucket = quick["names"].ingest_bucket
    job = create_export_job(
        wiring.api_deps(),
        "bob",
        checkpoint_uri=f"s3://{bucket}/{checkpoint_key}",
        manifest_uri=f"s3://{bucket}/{manifest_key}",
    )
    return job.job_id


def test_an_api_job_from_a_waiting_checkpoint_settles_the_round_and_the_sweep_leaves_it(
    quick: dict[str, Any],
) -> None:
    ingest, sweep = load_handler("ingest"), load_handler("sweep")
    prefix = "checkpoints/api-paired/1.0.0/"
    manifest_key = "checkpoints/api-manifests/1.0.0/api-paired.json"
    ingest(sqs_batch(drop(quick, prefix + "model.safetensors", b"weights")), Context())
    drop(quick, manifest_key, json.dumps({**MANIFEST, "model_name": "api-paired"}).encode())
    registry = wiring.ingest_deps().checkpoints.registry
    upload_id = upload_id_for(quick["names"].ingest_bucket, prefix)
    assert registry.get_upload(OWNER, upload_id).status is UploadStatus.AWAITING
    job_id = api_job(quick, prefix + "model.safetensors", manifest_key)
    record = registry.get_upload(OWNER, upload_id)
    assert (record.status, record.job_id, record.owner) == (UploadStatus.PAIRED, job_id, OWNER)
    assert (record.key, record.paired_key) == (prefix + "model.safetensors", manifest_key)
    assert registry.list_uploads("bob").items == []
    time.sleep(1.1)
    assert sweep({}, Context()) == {"rejected": [], "skipped": []}
    types = [e["detail-type"] for e in validated(received(quick))]
    assert types == ["Checkpoint Received", "Export Job Submitted"]
    assert [spec.job_id for spec in quick["submitter"].specs] == [job_id]
    quarantine = quick["s3"].list_objects_v2(Bucket=quick["names"].artifacts_bucket, Prefix="quarantine/")
    assert quarantine.get("KeyCount", 0) == 0


def test_an_api_job_from_another_revision_leaves_the_round_awaiting(quick: dict[str, Any]) -> None:
    ingest = load_handler("ingest")
    prefix = "checkpoints/api-revised/1.0.0/"
    manifest_key = "checkpoints/api-manifests/1.0.0/api-revised.json"
    ingest(sqs_batch(drop(quick, prefix + "model.safetensors", b"weights")), Context())
    drop(quick, prefix + "model.safetensors", b"weights, retrained")  # its notification still queued
    drop(quick, manifest_key, json.dumps({**MANIFEST, "model_name": "api-revised"}).encode())
    api_job(quick, prefix + "model.safetensors", manifest_key)
    registry = wiring.ingest_deps().checkpoints.registry
    record = registry.get_upload(OWNER, upload_id_for(quick["names"].ingest_bucket, prefix))
    assert (record.status, record.job_id) == (UploadStatus.AWAITING, None)


def test_api_jobs_racing_the_sweep_give_exactly_one_outcome_and_every_job_runs(
    quick: dict[str, Any],
    atomic_conditional_writes: None,
) -> None:
    deps = wiring.ingest_deps()
    manifest_key = "checkpoints/api-manifests/1.0.0/race.json"
    drop(quick, manifest_key, json.dumps(MANIFEST).encode())
    rounds = [f"checkpoints/api-race-{uuid.uuid4().hex[:8]}/1.0.0/" for _ in range(6)]
    for prefix in rounds:
        handle_ingest_record(drop(quick, prefix + "model.safetensors", b"weights"), deps)
    time.sleep(1.1)
    barrier = threading.Barrier(len(rounds) + 2)
    jobs: dict[str, str] = {}

    def start(prefix: str) -> None:
        barrier.wait()
        jobs[prefix] = api_job(quick, prefix + "model.safetensors", manifest_key)

    def run_sweep() -> None:
        barrier.wait()
        sweep_incomplete_uploads(wiring.sweep_deps())

    threads = [threading.Thread(target=start, args=(p,)) for p in rounds]
    threads += [threading.Thread(target=run_sweep) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sweep_incomplete_uploads(wiring.sweep_deps())  # whatever the racing sweeps left
    events = validated(received(quick))
    rejected = {e["detail"]["key"] for e in events if e["detail-type"] == "Checkpoint Rejected"}
    assert sorted(spec.job_id for spec in quick["submitter"].specs) == sorted(jobs.values())
    assert len(jobs) == len(rounds)  # every job runs, whoever won
    for prefix in rounds:
        record = deps.checkpoints.registry.get_upload(
            OWNER, upload_id_for(quick["names"].ingest_bucket, prefix)
        )
        if record.status is UploadStatus.PAIRED:
            assert record.job_id == jobs[prefix] and prefix + "model.safetensors" not in rejected
        else:
            assert record.status is UploadStatus.REJECTED and prefix + "model.safetensors" in rejected
