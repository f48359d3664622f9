"""The whole event path against the emulator's real HTTP endpoint, with the same handler code as Lambda.

Checkpoint + manifest dropped into the ingest bucket → the ingest handler (SQS batch of S3 "Object
Created" events) submits a job → the job runs as `python -m heimdall_batch` → Batch state changes go to
the job-state handler → the job's bundle notification goes back to the ingest handler → the model is
indexed. A subscriber that is not Heimdall (its own rule and SQS queue on the bus) receives the events,
and each is validated against its JSON Schema. Moto cannot run Batch without Docker, so the job runner
here is a subprocess — exactly what the local stack does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jsonschema
import torch
from safetensors.torch import save_file
from tests.support.event_path import (  # noqa: F401 - stack_fixture is a fixture
    EVENTS_DIR,
    MANIFEST,
    Context,
    SubprocessRunner,
    load_handler,
    object_created,
    received,
    sqs_batch,
    stack_fixture,
)

from heimdall import wiring
from heimdall.domain.records import JobStatus
from heimdall.events import DetailType, schema_file_name
from heimdall_batch.architectures import resolve


def test_checkpoint_drop_to_indexed_model(stack: dict[str, Any], tmp_path: Path) -> None:
    ingest = load_handler("ingest")  # the same handler module Lambda runs
    job_state = load_handler("job_state")

    names, s3 = stack["names"], stack["s3"]
    torch.manual_seed(0)
    path = tmp_path / "model.safetensors"
    save_file({k: v.contiguous() for k, v in resolve("localization_net")().state_dict().items()}, str(path))
    prefix = "checkpoints/localization-net/1.0.0/"
    s3.put_object(Bucket=names.ingest_bucket, Key=prefix + "best model.safetensors", Body=path.read_bytes())
    s3.put_object(
        Bucket=names.ingest_bucket, Key=prefix + "heimdall.json", Body=json.dumps(MANIFEST).encode()
    )
    notifications = [
        object_created(s3, names.ingest_bucket, prefix + "best model.safetensors"),
        object_created(s3, names.ingest_bucket, prefix + "heimdall.json"),
    ]
    # Both notifications in one batch, plus a duplicate of each and an s3:TestEvent.
    batch = sqs_batch(*notifications, *notifications, {"Service": "Amazon S3", "Event": "s3:TestEvent"})
    response = ingest(batch, Context())
    assert response == {"batchItemFailures": []}
    runner: SubprocessRunner = stack["runner"]
    assert [s["detail"]["status"] for s in runner.states] == ["RUNNING", "SUCCEEDED"]  # one job ran
    for state in runner.states:
        job_state(state, Context())
    job_state(runner.states[-1], Context())  # a duplicate SUCCEEDED changes nothing
    job_id = runner.states[0]["detail"]["parameters"]["job_id"]
    deps = wiring.job_state_deps()
    job = deps.registry.get_export_job_any_owner(job_id)
    assert job.status is JobStatus.SUCCEEDED
    # The job's bundle lands in the artifacts bucket; its notification goes through the same handler.
    bundle_key = f"exports/{job_id}/localization-net-v1.0.0.heimdall"
    ingest(sqs_batch(object_created(s3, names.artifacts_bucket, bundle_key)), Context())
    models = deps.registry.list_models(job.owner).items
    assert len(models) == 1 and models[0].export_job_id == job_id and models[0].source == "export"
    onnx = s3.get_object(Bucket=names.artifacts_bucket, Key=models[0].onnx_key)["Body"].read()
    import hashlib

    assert hashlib.sha256(onnx).hexdigest() == models[0].onnx_sha256
    # A subscriber that is not Heimdall saw each event once, each valid against its schema.
    events = received(stack)
    types = [e["detail-type"] for e in events]
    assert types == [
        "Checkpoint Received",
        "Export Job Submitted",
        "Export Job Started",
        "Export Job Succeeded",
        "Bundle Indexed",
    ]
    for event in events:
        schema = json.loads(
            (EVENTS_DIR / "schemas" / schema_file_name(DetailType(event["detail-type"]))).read_text()
        )
        jsonschema.validate(event["detail"], schema)


def test_bad_drops_are_quarantined_and_a_poison_record_fails_alone(stack: dict[str, Any]) -> None:
    ingest = load_handler("ingest")

    names, s3 = stack["names"], stack["s3"]
    s3.put_object(Bucket=names.ingest_bucket, Key="bundles/broken.heimdall", Body=b"{not json")
    s3.put_object(Bucket=names.ingest_bucket, Key="checkpoints/m/1/notes.txt", Body=b"hello")
    good = [
        object_created(s3, names.ingest_bucket, "bundles/broken.heimdall"),
        object_created(s3, names.ingest_bucket, "checkpoints/m/1/notes.txt"),
    ]
    batch = sqs_batch(*good, {"not": "a notification"})
    poison_id = batch["Records"][2]["messageId"]
    response = ingest(batch, Context())
    assert response == {"batchItemFailures": [{"itemIdentifier": poison_id}]}
    listing = s3.list_objects_v2(Bucket=names.artifacts_bucket, Prefix="quarantine/").get("Contents", [])
    keys = [o["Key"] for o in listing]
    assert (
        sum(k.endswith("/original") for k in keys) == 2 and sum(k.endswith("/reason.json") for k in keys) == 2
    )
    types = sorted(e["detail-type"] for e in received(stack))
    assert types == ["Bundle Rejected", "Checkpoint Rejected"]
    # Nothing dropped is lost: the originals are still where they were put.
    assert (
        s3.get_object(Bucket=names.ingest_bucket, Key="bundles/broken.heimdall")["Body"].read()
        == b"{not json"
    )


class _Gadget:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, ("touch /tmp/heimdall-pwned",))


def test_a_failing_conversion_is_failed_once_with_its_reason(stack: dict[str, Any], tmp_path: Path) -> None:
    ingest, job_state = load_handler("ingest"), load_handler("job_state")
    names, s3 = stack["names"], stack["s3"]
    path = tmp_path / "model.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "evil": _Gadget()}, path)
    prefix = "checkpoints/localization-net/6.6.6/"
    s3.put_object(Bucket=names.ingest_bucket, Key=prefix + "model.pt", Body=path.read_bytes())
    manifest = {**MANIFEST, "version": "6.6.6"}
    s3.put_object(
        Bucket=names.ingest_bucket, Key=prefix + "heimdall.json", Body=json.dumps(manifest).encode()
    )
    ingest(
        sqs_batch(
            object_created(s3, names.ingest_bucket, prefix + "model.pt"),
            object_created(s3, names.ingest_bucket, prefix + "heimdall.json"),
        ),
        Context(),
    )
    runner: SubprocessRunner = stack["runner"]
    assert [s["detail"]["status"] for s in runner.states] == ["RUNNING", "FAILED"]
    for state in [*runner.states, runner.states[-1], runner.states[0]]:  # a duplicate, then a late RUNNING
        job_state(state, Context())
    job_id = runner.states[0]["detail"]["parameters"]["job_id"]
    job = wiring.job_state_deps().registry.get_export_job_any_owner(job_id)
    assert job.status is JobStatus.FAILED and job.exit_code == 3
    assert "UNSAFE_CHECKPOINT" in (job.reason or "")
    types = [e["detail-type"] for e in received(stack)]
    assert types.count("Export Job Failed") == 1 and "Export Job Succeeded" not in types
    assert not Path("/tmp/heimdall-pwned").exists()
