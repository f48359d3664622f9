"""The HTTP API's use cases on in-memory ports: collaborators, a job runner that remembers, test data.

Shared by the use-case tests (``test_api_logic*.py``) and, through :mod:`tests.support.api`, by the
resolver's tests.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support.jobs import RecordingRunner

from heimdall.logic.api import ApiDeps
from heimdall.settings import ApiLimits, BundleLimits, Settings
from heimdall.testing.deployments import InMemoryDeploymentStore
from heimdall.testing.events import InMemoryEventSink
from heimdall.testing.registry import InMemoryRegistry
from heimdall.testing.sample_models import localization_net_onnx
from heimdall.testing.storage import InMemoryObjectStore

NAMES = Settings(ingest_bucket="ingest", artifacts_bucket="artifacts").resource_names()
ONNX = localization_net_onnx()
ONNX_SHA256 = hashlib.sha256(ONNX).hexdigest()

# A checkpoint in the ingest bucket, as export jobs start from it.
PREFIX = "checkpoints/net/1.0.0/"
CHECKPOINT = f"s3://ingest/{PREFIX}model.safetensors"
MANIFEST: dict[str, Any] = {
    "model_name": "net",
    "version": "1.0.0",
    "architecture": "localization_net",
    "input_shape": [1, 3, 128, 32],
    "output_names": ["positions", "uncertainties"],
    "formats": ["onnx_int8"],
}


class NoJobs:
    """The API's model and import use cases start no jobs."""

    def submit(self, spec: object) -> str:
        raise AssertionError("no job expected")

    def cancel(self, runner_job_id: str, reason: str) -> None:
        raise AssertionError("no job expected")


def make_deps(tmp_path: Path, **api: int) -> ApiDeps:
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
        api=ApiLimits(**api),
        now=lambda: datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        workdir=tmp_path,
        drop_owner="dropper",
    )


def store_of(deps: ApiDeps) -> InMemoryObjectStore:
    assert isinstance(deps.store, InMemoryObjectStore)
    return deps.store


def events_of(deps: ApiDeps) -> InMemoryEventSink:
    assert isinstance(deps.events, InMemoryEventSink)
    return deps.events


def runner(deps: ApiDeps) -> RecordingRunner:
    assert isinstance(deps.jobs, RecordingRunner)
    return deps.jobs


def safetensors_with_manifest(manifest: dict[str, Any]) -> bytes:
    header = json.dumps({"__metadata__": {"heimdall": json.dumps(manifest)}}).encode()
    return len(header).to_bytes(8, "little") + header


def put_checkpoint(deps: ApiDeps) -> None:
    """A checkpoint and its sidecar manifest in the ingest bucket."""
    deps.store.put_bytes(CHECKPOINT, safetensors_with_manifest({}))
    deps.store.put_bytes(f"s3://ingest/{PREFIX}heimdall.json", json.dumps(MANIFEST).encode())
