"""Indexing bundles with in-memory ports: import, job bundle, rejection to quarantine, idempotency."""

from __future__ import annotations

import hashlib
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from heimdall.bundle import parse_metadata, read_bundle, write_bundle
from heimdall.domain.records import ExportJob
from heimdall.errors import InvalidBundle, StorageError
from heimdall.events import DetailType, EventPublishError
from heimdall.logic import bundles as bundles_logic
from heimdall.logic.bundles import BundleDeps, index_bundle
from heimdall.settings import BundleLimits, ResourceNames
from heimdall.testing.events import InMemoryEventSink
from heimdall.testing.registry import InMemoryRegistry
from heimdall.testing.sample_bundles import sample_bundle_metadata
from heimdall.testing.sample_models import localization_net_onnx
from heimdall.testing.storage import InMemoryObjectStore
from heimdall.triggers.s3 import ObjectCreated

NAMES = ResourceNames(
    ingest_bucket="ingest",
    artifacts_bucket="artifacts",
    table_name="t",
    event_bus_name="bus",
    job_queue="q",
    job_definition="d",
)
ONNX = localization_net_onnx()


def bundle_bytes(**kwargs: object) -> bytes:
    bundle, _ = parse_metadata(sample_bundle_metadata(ONNX))
    out = io.BytesIO()
    write_bundle(bundle, ONNX, out, **kwargs)  # type: ignore[arg-type]
    return out.getvalue()


@pytest.fixture
def deps(tmp_path: Path) -> BundleDeps:
    registry = InMemoryRegistry()
    return BundleDeps(
        registry=registry,
        claims=registry,
        store=InMemoryObjectStore(),
        events=InMemoryEventSink(),
        names=NAMES,
        limits=BundleLimits(),
        now=lambda: datetime(2026, 11, 25, 12, 0, tzinfo=UTC),
        workdir=tmp_path,
    )


def drop(deps: BundleDeps, key: str, data: bytes, bucket: str = "ingest") -> ObjectCreated:
    """Write ``data`` and return its notification (with the object's real ETag, as S3 sends it)."""
    deps.store.put_bytes(f"s3://{bucket}/{key}", data)
    etag = deps.store.head(f"s3://{bucket}/{key}").etag
    return ObjectCreated(bucket=bucket, key=key, size=len(data), etag=etag, version_id=None, sequencer=None)


def test_an_uploaded_bundle_is_imported(deps: BundleDeps) -> None:
    obj = drop(deps, "bundles/partner/localization-net-v1-v1.0.0.heimdall", bundle_bytes())
    outcome = index_bundle(obj, deps, owner="alice")
    assert outcome.status == "indexed" and outcome.model is not None
    model = outcome.model
    original_id = sample_bundle_metadata()["model"]["model_id"]
    assert model.model_id != original_id and model.original_model_id == original_id
    assert model.display_name == "localization-net-v1 (Imported)" and model.source == "import"
    # Keys are made of ids: the sender's name is never part of one.
    assert model.onnx_key == f"imported/{model.model_id}/model.onnx"
    assert model.bundle_key == f"bundles/{model.model_id}/bundle.heimdall"
    assert model.onnx_sha256 == hashlib.sha256(ONNX).hexdigest()
    store = deps.store
    assert isinstance(store, InMemoryObjectStore)
    assert store.objects[("artifacts", model.onnx_key)] == ONNX
    # The stored canonical bundle carries the new id and the sender's, and the same model bytes.
    stored = read_bundle(store.objects[("artifacts", model.bundle_key or "")])
    assert stored.onnx_sha256 == model.onnx_sha256
    assert stored.bundle.model.model_id == model.model_id
    assert (stored.bundle.model.model_extra or {})["original_model_id"] == original_id
    assert deps.registry.get_model("alice", model.model_id) == model
    events = deps.events
    assert isinstance(events, InMemoryEventSink)
    assert events.detail_types == [DetailType.BUNDLE_INDEXED]
    (detail,) = events.details(DetailType.BUNDLE_INDEXED)
    assert detail.model_dump()["imported"] is True


def test_the_same_notification_twice_indexes_once(deps: BundleDeps) -> None:
    obj = drop(deps, "bundles/a.heimdall", bundle_bytes())
    first = index_bundle(obj, deps, owner="alice")
    second = index_bundle(obj, deps, owner="alice")
    assert (first.status, second.status) == ("indexed", "duplicate")
    assert len(deps.registry.list_models("alice").items) == 1
    assert isinstance(deps.events, InMemoryEventSink) and len(deps.events.events) == 1
    # A new upload of the same key (other bytes: a new etag) is a new import.
    again = drop(deps, "bundles/a.heimdall", bundle_bytes() + b"\n")
    assert index_bundle(again, deps, owner="alice").status == "indexed"


def test_a_job_bundle_is_an_export(deps: BundleDeps) -> None:
    deps.registry.create_export_job(
        ExportJob(
            job_id="job-7",
            owner="bob",
            model_name="localization-net-v1",
            version="1.0.0",
            checkpoint_bucket="ingest",
            checkpoint_key="checkpoints/localization-net-v1/1.0.0/model.safetensors",
        )
    )
    obj = drop(deps, "exports/job-7/localization-net-v1-v1.0.0.heimdall", bundle_bytes(), bucket="artifacts")
    outcome = index_bundle(obj, deps, owner="bob", job_id="job-7")
    assert outcome.model is not None
    assert outcome.model.source == "export" and outcome.model.export_job_id == "job-7"
    assert outcome.model.onnx_key == f"models/{outcome.model.model_id}/model.onnx"
    assert outcome.model.display_name == "localization-net-v1"
    assert deps.registry.get_export_job("bob", "job-7").model_id == outcome.model.model_id


def test_a_job_bundle_whose_job_is_gone_is_still_indexed(deps: BundleDeps) -> None:
    obj = drop(deps, "exports/job-8/localization-net-v1-v1.0.0.heimdall", bundle_bytes(), bucket="artifacts")
    outcome = index_bundle(obj, deps, owner="bob", job_id="job-8")
    assert outcome.status == "indexed" and outcome.model is not None


@pytest.mark.parametrize(
    ("data", "code"),
    [(b"not json", "INVALID_JSON"), (b'{"format_version": "9.0"}', "UNSUPPORTED_VERSION")],
)
def test_a_bad_bundle_is_quarantined_with_a_reason(deps: BundleDeps, data: bytes, code: str) -> None:
    obj = drop(deps, "bundles/bad.heimdall", data)
    outcome = index_bundle(obj, deps, owner="alice")
    assert (outcome.status, outcome.code) == ("rejected", code)
    store = deps.store
    assert isinstance(store, InMemoryObjectStore)
    key = outcome.quarantine_key or ""
    assert key.startswith("quarantine/2026-11-25/") and key.endswith("/original")
    assert store.objects[("artifacts", key)] == data
    reason = json.loads(store.objects[("artifacts", key.removesuffix("original") + "reason.json")])
    assert reason["code"] == code and reason["source_key"] == "bundles/bad.heimdall"
    assert store.objects[("ingest", "bundles/bad.heimdall")] == data  # nothing is lost
    assert deps.registry.list_models("alice").items == []
    assert isinstance(deps.events, InMemoryEventSink)
    assert deps.events.detail_types == [DetailType.BUNDLE_REJECTED]


def test_a_failed_publish_releases_the_claim_so_a_retry_succeeds(deps: BundleDeps) -> None:
    obj = drop(deps, "bundles/a.heimdall", bundle_bytes())
    events = deps.events
    assert isinstance(events, InMemoryEventSink)
    events.fail_next(1)
    with pytest.raises(EventPublishError):
        index_bundle(obj, deps, owner="alice")
    retried = index_bundle(obj, deps, owner="alice")
    assert retried.status == "indexed"
    # The retry wrote the same ids and keys: one record, one event.
    assert len(deps.registry.list_models("alice").items) == 1
    assert events.detail_types == [DetailType.BUNDLE_INDEXED]


def test_a_deleted_object_is_gone_not_retried(deps: BundleDeps) -> None:
    obj = ObjectCreated(
        bucket="ingest", key="bundles/vanished.heimdall", size=1, etag="e", version_id=None, sequencer=None
    )
    assert index_bundle(obj, deps, owner="alice").status == "gone"
    assert isinstance(deps.events, InMemoryEventSink) and deps.events.events == []


def test_an_oversized_bundle_is_rejected_without_reading_it(deps: BundleDeps) -> None:
    small = BundleDeps(**{**deps.__dict__, "limits": BundleLimits(max_bundle_bytes=1000)})
    obj = drop(small, "bundles/big.heimdall", bundle_bytes())
    outcome = index_bundle(obj, small, owner="alice")
    assert (outcome.status, outcome.code) == ("rejected", "TOO_LARGE")


@pytest.mark.parametrize("field", ["model_name", "version"])
def test_a_name_with_a_line_feed_is_quarantined_naming_the_field(deps: BundleDeps, field: str) -> None:
    document = json.loads(bundle_bytes())
    document["model"][field] = "net\nv1"  # a writer that checks nothing (ours refuses such a name)
    data = json.dumps(document).encode()
    outcome = index_bundle(drop(deps, "bundles/lf.heimdall", data), deps, owner="alice")
    assert (outcome.status, outcome.code, outcome.field) == ("rejected", "INVALID_BUNDLE", f"model.{field}")
    assert f"model.{field}" in (outcome.message or "")
    assert isinstance(deps.store, InMemoryObjectStore)
    assert deps.store.objects[("artifacts", outcome.quarantine_key or "")] == data
    assert deps.registry.list_models("alice").items == []
    assert isinstance(deps.events, InMemoryEventSink)
    assert deps.events.detail_types == [DetailType.BUNDLE_REJECTED]


def test_a_typed_error_after_verification_is_a_rejection_not_a_retry(
    deps: BundleDeps, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A retry cannot help a bundle error however late it comes: quarantined, and the record succeeds."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise InvalidBundle("the canonical copy cannot be written", field="model")

    monkeypatch.setattr(bundles_logic, "write_bundle", refuse)
    obj = drop(deps, "bundles/late.heimdall", bundle_bytes())
    outcome = index_bundle(obj, deps, owner="alice")
    assert (outcome.status, outcome.code, outcome.field) == ("rejected", "INVALID_BUNDLE", "model")
    assert outcome.quarantine_key and deps.registry.list_models("alice").items == []
    assert isinstance(deps.events, InMemoryEventSink)
    assert deps.events.detail_types == [DetailType.BUNDLE_REJECTED]
    # Done once: the same notification again is a duplicate, not a second rejection.
    assert index_bundle(obj, deps, owner="alice").status == "duplicate"


def test_a_storage_failure_is_retried_not_rejected(deps: BundleDeps) -> None:
    class Failing(InMemoryObjectStore):
        def upload(self, path: Path, uri: str, *, content_type: str | None = None) -> None:
            raise StorageError(f"S3 refused {uri}: SlowDown")

    failing = Failing()
    flaky = BundleDeps(**{**deps.__dict__, "store": failing})
    obj = drop(flaky, "bundles/flaky.heimdall", bundle_bytes())
    with pytest.raises(StorageError):
        index_bundle(obj, flaky, owner="alice")
    assert isinstance(deps.events, InMemoryEventSink) and deps.events.events == []
    assert not [key for _, key in failing.objects if key.startswith("quarantine/")]
