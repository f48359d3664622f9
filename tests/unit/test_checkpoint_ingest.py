"""Checkpoint and manifest uploads with in-memory ports: pairing, idempotency, rejection."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

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

from heimdall.domain.records import JobStatus
from heimdall.events import DetailType
from heimdall.logic.checkpoint_jobs import CheckpointDeps
from heimdall.settings import BundleLimits
from heimdall.testing.events import InMemoryEventSink
from heimdall.testing.registry import InMemoryRegistry
from heimdall.testing.storage import InMemoryObjectStore


@pytest.fixture
def deps() -> CheckpointDeps:
    registry = InMemoryRegistry()
    return CheckpointDeps(
        registry=registry,
        claims=registry,
        store=InMemoryObjectStore(),
        events=InMemoryEventSink(),
        jobs=RecordingRunner(),
        names=NAMES,
        limits=BundleLimits(),
        now=lambda: datetime(2026, 11, 25, tzinfo=UTC),
    )


@pytest.mark.parametrize("order", ["checkpoint-first", "manifest-first"])
def test_the_second_of_the_pair_starts_one_job(deps: CheckpointDeps, order: str) -> None:
    parts = [
        (PREFIX + "model.safetensors", b"weights"),
        (PREFIX + "heimdall.json", json.dumps(MANIFEST).encode()),
    ]
    if order == "manifest-first":
        parts.reverse()
    first = notify(deps, put(deps, *parts[0]))
    assert first.status == "waiting"
    second = notify(deps, put(deps, *parts[1]))
    assert second.status == "submitted" and second.job_id
    (spec,) = submitted(deps)
    assert spec.checkpoint_uri == f"s3://ingest/{PREFIX}model.safetensors"
    assert spec.manifest_uri == f"s3://ingest/{PREFIX}heimdall.json"
    assert spec.output_uri == f"s3://artifacts/exports/{second.job_id}/"
    assert [f.value for f in spec.formats or []] == ["onnx", "onnx_int8"]
    job = deps.registry.get_export_job("alice", second.job_id)
    assert job.status is JobStatus.SUBMITTED and job.batch_job_id == "batch-1"
    assert events(deps).detail_types == [DetailType.CHECKPOINT_RECEIVED, DetailType.EXPORT_JOB_SUBMITTED]


def test_duplicate_and_concurrent_notifications_give_one_job(deps: CheckpointDeps) -> None:
    checkpoint = put(deps, PREFIX + "model.safetensors", b"weights")
    manifest = put(deps, PREFIX + "heimdall.json", json.dumps(MANIFEST).encode())
    # Both objects are there: each notification, delivered several times at once, sees the pair.
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(lambda o: notify(deps, o), [checkpoint, manifest] * 4))
    assert [o.status for o in outcomes].count("submitted") == 1
    assert len(submitted(deps)) == 1
    assert events(deps).detail_types.count(DetailType.EXPORT_JOB_SUBMITTED) == 1
    # An hour later, the same notification again: still one job.
    assert notify(deps, checkpoint).status == "duplicate"
    assert len(submitted(deps)) == 1


def test_a_new_checkpoint_revision_is_a_new_job(deps: CheckpointDeps) -> None:
    notify(deps, put(deps, PREFIX + "heimdall.json", json.dumps(MANIFEST).encode()))
    first = notify(deps, put(deps, PREFIX + "model.safetensors", b"weights v1"))
    second = notify(deps, put(deps, PREFIX + "model.safetensors", b"weights v2"))
    assert first.status == second.status == "submitted" and first.job_id != second.job_id


@pytest.mark.parametrize(
    ("manifest", "reason"),
    [
        (b"{not json", "INVALID_MANIFEST"),
        (json.dumps({**MANIFEST, "input_shape": "big"}).encode(), "input_shape"),
        (json.dumps({**MANIFEST, "version": "2.0.0"}).encode(), "must match"),
    ],
)
def test_an_invalid_manifest_is_rejected_and_kept(deps: CheckpointDeps, manifest: bytes, reason: str) -> None:
    notify(deps, put(deps, PREFIX + "model.safetensors", b"weights"))
    outcome = notify(deps, put(deps, PREFIX + "heimdall.json", manifest))
    assert outcome.status == "rejected" and reason in (outcome.reason or "")
    assert submitted(deps) == []
    assert events(deps).detail_types == [DetailType.CHECKPOINT_REJECTED]
    store = deps.store
    assert isinstance(store, InMemoryObjectStore)
    quarantined = [k for b, k in store.objects if b == "artifacts" and k.startswith("quarantine/")]
    assert len(quarantined) == 2 and any(k.endswith("reason.json") for k in quarantined)


def test_an_embedded_safetensors_manifest_starts_the_job_alone(deps: CheckpointDeps) -> None:
    header = json.dumps({"__metadata__": {"heimdall": json.dumps(MANIFEST)}}).encode()
    data = len(header).to_bytes(8, "little") + header
    outcome = notify(deps, put(deps, PREFIX + "model.safetensors", data))
    assert outcome.status == "submitted"
    (spec,) = submitted(deps)
    assert spec.manifest_uri is None


def test_a_pt_checkpoint_waits_for_its_sidecar(deps: CheckpointDeps) -> None:
    outcome = notify(deps, put(deps, PREFIX + "model.pt", b"PK\x03\x04..."))
    assert outcome.status == "waiting" and "heimdall.json" in (outcome.reason or "")
