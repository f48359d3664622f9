"""Checkpoint and manifest uploads on in-memory ports: resource names, a manifest, and the steps from
an object in the ingest bucket to the pairing use case (with :mod:`tests.support.jobs`' runner).

Shared by the checkpoint-ingest and half-pair tests (unit and integration) and the upload routes' tests.
"""

from __future__ import annotations

from typing import Any

from tests.support.jobs import RecordingRunner

from heimdall.contracts.jobs import JobSpec
from heimdall.logic.checkpoint_jobs import CheckpointDeps
from heimdall.logic.checkpoints import CheckpointOutcome, handle_checkpoint_object
from heimdall.settings import ResourceNames
from heimdall.testing.events import InMemoryEventSink
from heimdall.triggers.keys import classify_ingest_key
from heimdall.triggers.s3 import ObjectCreated

NAMES = ResourceNames(
    ingest_bucket="ingest",
    artifacts_bucket="artifacts",
    table_name="t",
    event_bus_name="bus",
    job_queue="q",
    job_definition="d",
)
PREFIX = "checkpoints/localization-net/1.0.0/"
MANIFEST: dict[str, Any] = {
    "model_name": "localization-net",
    "version": "1.0.0",
    "architecture": "localization_net",
    "input_shape": [1, 3, 128, 32],
    "output_names": ["positions", "uncertainties"],
    "formats": ["onnx", "onnx_int8"],
}


def put(deps: CheckpointDeps, key: str, data: bytes) -> ObjectCreated:
    deps.store.put_bytes(f"s3://ingest/{key}", data)
    info = deps.store.head(f"s3://ingest/{key}")
    return ObjectCreated(
        bucket="ingest", key=key, size=info.size, etag=info.etag, version_id=None, sequencer=None
    )


def notify(deps: CheckpointDeps, obj: ObjectCreated) -> CheckpointOutcome:
    return handle_checkpoint_object(obj, classify_ingest_key(obj.key), deps, owner="alice")


def submitted(deps: CheckpointDeps) -> list[JobSpec]:
    jobs = deps.jobs
    assert isinstance(jobs, RecordingRunner)
    return jobs.specs


def events(deps: CheckpointDeps) -> InMemoryEventSink:
    sink = deps.events
    assert isinstance(sink, InMemoryEventSink)
    return sink
