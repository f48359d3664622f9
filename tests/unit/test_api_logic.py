"""The HTTP API's use cases with in-memory ports: models, export, import, capabilities, wiring."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from tests.support.api_logic import ONNX, ONNX_SHA256, NoJobs, events_of, make_deps, store_of

from heimdall import wiring
from heimdall.bundle import read_bundle
from heimdall.bundle.models import Component, ComponentSelection
from heimdall.domain.records import ImportStatus
from heimdall.errors import (
    ChecksumMismatch,
    InvalidJson,
    PayloadTooLarge,
    RecordNotFound,
    RequestInvalid,
    TooLarge,
)
from heimdall.events import DetailType
from heimdall.logic.api import ApiDeps
from heimdall.logic.capabilities import capabilities
from heimdall.logic.imports import (
    UPLOAD_EXPIRED,
    UPLOAD_GRACE_S,
    get_import,
    import_id_from_key,
    import_inline,
    import_key,
    start_presigned_import,
)
from heimdall.logic.ingest import IngestDeps, handle_ingest_record
from heimdall.logic.models import (
    ExportOptions,
    bundle_filename,
    delete_model,
    export_model,
    get_model,
    list_models,
)
from heimdall.settings import ApiLimits, BundleLimits, get_settings
from heimdall.testing.sample_bundles import sample_bundle, sample_bundle_metadata
from heimdall.testing.storage import InMemoryObjectStore
from heimdall.types import ExportFormat

ALL = [c.value for c in Component]


def bundle_bytes(**overrides: Any) -> bytes:
    return sample_bundle(ONNX, num_samples=5, **overrides)


@pytest.fixture
def deps(tmp_path: Path) -> ApiDeps:
    return make_deps(tmp_path)


def notification(deps: ApiDeps, bucket: str, key: str) -> dict[str, Any]:
    """The EventBridge "Object Created" event S3 sends for the object as it is now."""
    info = deps.store.head(f"s3://{bucket}/{key}")
    return {
        "source": "aws.s3",
        "detail-type": "Object Created",
        "detail": {"bucket": {"name": bucket}, "object": {"key": key, "size": info.size, "etag": info.etag}},
    }


def ingest(deps: ApiDeps, bucket: str, key: str) -> str:
    """Deliver the object's S3 notification to the ingest use case, wired to the same ports."""
    ingest_deps = IngestDeps(checkpoints=deps.checkpoint_deps(), bundles=deps.bundle_deps())
    return handle_ingest_record(notification(deps, bucket, key), ingest_deps)


# --- models ----------------------------------------------------------------------------------------


def test_models_are_listed_read_and_deleted_by_their_owner_only(deps: ApiDeps) -> None:
    first = import_inline(deps, "alice", bundle_bytes()).model
    second = import_inline(deps, "alice", bundle_bytes(model={"version": "2.0.0"})).model
    bobs = import_inline(deps, "bob", bundle_bytes()).model
    assert first and second and bobs
    page = list_models(deps, "alice")
    assert {m.model_id for m in page.items} == {first.model_id, second.model_id} and page.cursor is None
    assert [m.model_id for m in list_models(deps, "bob").items] == [bobs.model_id]
    assert list_models(deps, "alice", name="no-such-name").items == []
    one = list_models(deps, "alice", limit=1)
    assert len(one.items) == 1 and one.cursor
    assert len(list_models(deps, "alice", limit=1, cursor=one.cursor).items) == 1
    assert get_model(deps, "alice", first.model_id) == first
    for owner, model_id in [("alice", bobs.model_id), ("bob", first.model_id), ("alice", "../etc")]:
        with pytest.raises(RecordNotFound):
            get_model(deps, owner, model_id)
    with pytest.raises(RecordNotFound):
        delete_model(deps, "bob", first.model_id)

    # A large export leaves a copy under downloads/: deleting the model removes that too.
    export_model(
        make_deps_like(deps, max_response_bytes=1), "alice", first.model_id, _all(), requested_by="alice"
    )
    objects = store_of(deps).objects
    owned = [k for b, k in objects if b == "artifacts" and first.model_id in k]
    assert {first.onnx_key, first.bundle_key} <= set(owned) and any(k.startswith("downloads/") for k in owned)
    delete_model(deps, "alice", first.model_id)
    assert not [k for b, k in objects if b == "artifacts" and first.model_id in k]
    with pytest.raises(RecordNotFound):
        get_model(deps, "alice", first.model_id)
    assert get_model(deps, "alice", second.model_id) == second  # the other model is untouched


def make_deps_like(deps: ApiDeps, **api: int) -> ApiDeps:
    """``deps`` (same registry and store) with other API limits."""
    return replace(deps, api=ApiLimits(**api))


def _all(**kwargs: Any) -> ExportOptions:
    return ExportOptions(selection=ComponentSelection(**kwargs))


@pytest.mark.parametrize("dropped", [*ALL, None])
def test_export_keeps_the_chosen_components_and_the_same_model(deps: ApiDeps, dropped: str | None) -> None:
    model = import_inline(deps, "alice", bundle_bytes()).model
    assert model is not None
    selection = ComponentSelection(**({dropped: False} if dropped else {}), num_samples=2)
    exported = export_model(
        deps,
        "alice",
        model.model_id,
        ExportOptions(selection=selection, description="for the field team"),
        requested_by="alice@example.com",
    )
    assert exported.body is not None and exported.redirect_url is None and exported.expires_at is None
    assert exported.filename == "localization-net-v1-v1.0.0.heimdall"
    read = read_bundle(exported.body)
    assert read.onnx_sha256 == exported.onnx_sha256 == model.onnx_sha256 == ONNX_SHA256
    assert exported.size_bytes == len(exported.body)
    expected = [c for c in ALL if c != dropped]
    assert read.bundle.components() == exported.components == expected
    if dropped != "sample_predictions":
        assert len(read.bundle.sample_predictions or []) == 2
    meta = read.bundle.bundle_metadata
    assert meta.bundle_id == exported.bundle_id != sample_bundle_metadata()["bundle_metadata"]["bundle_id"]
    assert (meta.created_by, meta.description) == ("alice@example.com", "for the field team")
    assert meta.created_at == datetime(2026, 11, 25, 12, 0, tzinfo=UTC)
    assert read.bundle.model.model_id == model.model_id


def test_an_export_without_a_description_keeps_the_senders(deps: ApiDeps) -> None:
    model = import_inline(deps, "alice", bundle_bytes()).model
    assert model is not None
    exported = export_model(deps, "alice", model.model_id, _all(), requested_by="alice")
    assert exported.body is not None
    meta = read_bundle(exported.body).bundle.bundle_metadata
    assert meta.description == sample_bundle_metadata()["bundle_metadata"]["description"]
    assert meta.created_by == "alice" and meta.heimdall_version


def test_an_export_too_large_for_a_response_is_a_presigned_redirect(deps: ApiDeps) -> None:
    model = import_inline(deps, "alice", bundle_bytes()).model
    assert model is not None
    small = make_deps_like(deps, max_response_bytes=1024, presign_ttl_s=600)
    exported = export_model(small, "alice", model.model_id, _all(), requested_by="alice")
    assert exported.body is None and exported.redirect_url and exported.expires_at
    assert exported.redirect_url.startswith(
        f"memory://artifacts/downloads/{model.model_id}/{exported.bundle_id}/"
    )
    assert "filename=localization-net-v1-v1.0.0.heimdall" in exported.redirect_url
    key = f"downloads/{model.model_id}/{exported.bundle_id}/bundle.heimdall"  # ids only
    stored = store_of(deps).objects[("artifacts", key)]
    assert len(stored) == exported.size_bytes > 1024
    assert read_bundle(stored).onnx_sha256 == ONNX_SHA256


def test_export_refuses_a_long_description_and_makes_the_name_one_file_name(deps: ApiDeps) -> None:
    with pytest.raises(RequestInvalid) as caught:
        export_model(deps, "alice", "any", ExportOptions(ComponentSelection(), "x" * 1001), requested_by="a")
    assert caught.value.field == "description"
    # One file name of display text (no path separators, no controls); the header is made safe apart.
    assert bundle_filename('net/../"evil"\r\n', "1.0 beta") == 'net_.._"evil"__-v1.0 beta.heimdall'
    assert bundle_filename("...", "") == "...-v.heimdall"


def test_export_then_import_then_export_keeps_the_model_bytes(deps: ApiDeps) -> None:
    original = import_inline(deps, "alice", bundle_bytes()).model
    assert original is not None
    first = export_model(deps, "alice", original.model_id, _all(), requested_by="alice")
    assert first.body is not None
    again = import_inline(deps, "bob", first.body).model
    assert again is not None
    assert again.original_model_id == original.model_id and again.model_id != original.model_id
    second = export_model(deps, "bob", again.model_id, _all(), requested_by="bob")
    assert first.onnx_sha256 == again.onnx_sha256 == second.onnx_sha256 == ONNX_SHA256


# --- imports ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True])
def test_an_inline_import_is_indexed_at_once_like_a_drop(deps: ApiDeps, compress: bool) -> None:
    body = bundle_bytes()
    result = import_inline(deps, "alice", gzip.compress(body) if compress else body)
    record, model = result.record, result.model
    assert record.status is ImportStatus.INDEXED and model is not None and record.model_id == model.model_id
    assert record.owner == model.owner == "alice" and record.components is None
    assert record.key == import_key(record.import_id) and import_id_from_key(record.key) == record.import_id
    original_id = sample_bundle_metadata()["model"]["model_id"]
    assert model.source == "import" and model.original_model_id == original_id
    assert model.display_name == "localization-net-v1 (Imported)"
    assert model.onnx_key and model.onnx_key.startswith(f"imported/{model.model_id}/")
    assert store_of(deps).objects[("artifacts", model.onnx_key)] == ONNX
    assert model.components == ALL
    assert events_of(deps).detail_types == [DetailType.BUNDLE_INDEXED]
    assert get_import(deps, "alice", record.import_id) == record
    with pytest.raises(RecordNotFound):
        get_import(deps, "bob", record.import_id)
    # The S3 notification of the object the import stored arrives afterwards: a duplicate.
    assert ingest(deps, "ingest", record.key) == "bundle:duplicate"
    assert len(list_models(deps, "alice").items) == 1
    assert events_of(deps).detail_types == [DetailType.BUNDLE_INDEXED]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"{not json", InvalidJson),
        (bundle_bytes().replace(ONNX_SHA256.encode(), b"0" * 64), ChecksumMismatch),
    ],
)
def test_an_invalid_inline_import_is_rejected_quarantined_and_typed(
    deps: ApiDeps, body: bytes, error: type[Exception]
) -> None:
    with pytest.raises(error) as caught:
        import_inline(deps, "alice", body)
    import_id = caught.value.details["import_id"]  # type: ignore[attr-defined]
    record = get_import(deps, "alice", import_id)
    assert record.status is ImportStatus.REJECTED and record.model_id is None
    assert record.error_code == caught.value.code  # type: ignore[attr-defined]
    assert record.reason
    quarantined = {k for b, k in store_of(deps).objects if b == "artifacts" and k.startswith("quarantine/")}
    assert len(quarantined) == 2 and any(k.endswith("/original") for k in quarantined)
    assert events_of(deps).detail_types == [DetailType.BUNDLE_REJECTED]
    assert list_models(deps, "alice").items == []
    # A late S3 notification of the same object changes nothing.
    assert ingest(deps, "ingest", import_key(import_id)) == "bundle:duplicate"
    assert get_import(deps, "alice", import_id) == record


def test_an_inline_import_over_the_limit_or_with_unknown_components_stores_nothing(tmp_path: Path) -> None:
    deps = make_deps(tmp_path, max_inline_bytes=1000)
    with pytest.raises(PayloadTooLarge, match=r"\?mode=presigned"):
        import_inline(deps, "alice", bundle_bytes())
    with pytest.raises(RequestInvalid, match="everything") as caught:
        import_inline(deps, "alice", b"{}", components=["everything"])
    assert caught.value.field == "components"
    assert store_of(deps).objects == {}


def test_an_import_keeps_only_the_chosen_components(deps: ApiDeps) -> None:
    chosen = ["performance_metrics", "sample_predictions"]
    result = import_inline(deps, "alice", bundle_bytes(), components=chosen)
    model = result.model
    assert model is not None and result.record.components == chosen and model.components == chosen
    stored = read_bundle(store_of(deps).objects[("artifacts", model.bundle_key or "")])
    assert stored.bundle.components() == chosen and stored.onnx_sha256 == ONNX_SHA256
    assert model.metrics.final_val_loss == 0.0145
    nothing = import_inline(deps, "alice", bundle_bytes(), components=[]).model
    assert nothing is not None and nothing.components == []


def test_a_presigned_import_is_indexed_by_the_ingest_for_its_owner(deps: ApiDeps) -> None:
    body = bundle_bytes()
    record, upload = start_presigned_import(
        deps, "alice", size_bytes=len(body), filename="net.heimdall", components=["training_config"]
    )
    assert record.status is ImportStatus.PENDING and record.owner == "alice"
    assert upload.fields["key"] == import_key(record.import_id) and upload.max_bytes == len(body)
    assert upload.url == "memory://ingest" and upload.expires_at > datetime.now(UTC)
    assert get_import(deps, "alice", record.import_id).status is ImportStatus.PENDING
    # The client POSTs the form; S3 notifies the ingest function.
    deps.store.put_bytes(f"s3://ingest/{record.key}", body)
    assert ingest(deps, "ingest", record.key or "") == "bundle:indexed"
    settled = get_import(deps, "alice", record.import_id)
    assert settled.status is ImportStatus.INDEXED and settled.model_id
    model = get_model(deps, "alice", settled.model_id)
    assert model.components == ["training_config"] and model.source == "import"
    assert list_models(deps, "dropper").items == []


def test_a_presigned_import_of_a_bad_bundle_is_rejected(deps: ApiDeps) -> None:
    record, _ = start_presigned_import(deps, "alice", size_bytes=9)
    deps.store.put_bytes(f"s3://ingest/{record.key}", b"{not json")
    assert ingest(deps, "ingest", record.key or "") == "bundle:rejected"
    settled = get_import(deps, "alice", record.import_id)
    assert (settled.status, settled.error_code) == (ImportStatus.REJECTED, "INVALID_JSON")


def test_a_presigned_import_never_uploaded_is_given_up_after_its_url_expired(deps: ApiDeps) -> None:
    record, upload = start_presigned_import(deps, "alice", size_bytes=100)
    assert record.upload_expires_at == upload.expires_at
    just_after = replace(deps, now=lambda: upload.expires_at + timedelta(seconds=UPLOAD_GRACE_S - 1))
    assert get_import(just_after, "alice", record.import_id).status is ImportStatus.PENDING
    later = replace(deps, now=lambda: upload.expires_at + timedelta(seconds=UPLOAD_GRACE_S + 1))
    given_up = get_import(later, "alice", record.import_id)
    assert (given_up.status, given_up.error_code) == (ImportStatus.REJECTED, UPLOAD_EXPIRED)
    assert get_import(deps, "alice", record.import_id).status is ImportStatus.REJECTED  # stored, not computed


def test_a_late_but_uploaded_presigned_import_is_left_to_the_ingest(deps: ApiDeps) -> None:
    body = bundle_bytes()
    record, upload = start_presigned_import(deps, "alice", size_bytes=len(body))
    deps.store.put_bytes(f"s3://ingest/{record.key}", body)
    later = replace(deps, now=lambda: upload.expires_at + timedelta(hours=1))
    assert get_import(later, "alice", record.import_id).status is ImportStatus.PENDING
    assert ingest(deps, "ingest", record.key or "") == "bundle:indexed"
    assert get_import(later, "alice", record.import_id).status is ImportStatus.INDEXED


def test_a_presigned_import_checks_what_it_is_asked_for(tmp_path: Path) -> None:
    deps = make_deps(tmp_path)
    small = replace(deps, limits=BundleLimits(max_bundle_bytes=1000))
    with pytest.raises(TooLarge):
        start_presigned_import(small, "alice", size_bytes=1001)
    for size in (0, -1):
        with pytest.raises(RequestInvalid):
            start_presigned_import(deps, "alice", size_bytes=size)
    with pytest.raises(RequestInvalid):
        start_presigned_import(deps, "alice", size_bytes=10, components=["model"])
    with pytest.raises(RequestInvalid):
        start_presigned_import(deps, "alice", size_bytes=10, filename="")


def test_bundles_without_an_import_record_belong_to_the_drop_owner(deps: ApiDeps) -> None:
    for key in ("bundles/partner/net.heimdall", import_key("made-up-by-hand")):
        deps.store.put_bytes(f"s3://ingest/{key}", bundle_bytes())
        assert ingest(deps, "ingest", key) == "bundle:indexed"
    assert len(list_models(deps, "dropper").items) == 2
    assert import_id_from_key("bundles/imports/x/other.heimdall") is None
    assert import_id_from_key("bundles/imports/../bundle.heimdall") is None


def test_an_inline_import_whose_notification_came_first_waits_for_its_result(deps: ApiDeps) -> None:
    outcomes: list[str] = []

    class NotifyingStore(InMemoryObjectStore):
        """S3 whose notification is delivered (and handled) before put_bytes even returns."""

        def put_bytes(self, uri: str, data: bytes, *, content_type: str | None = None) -> None:
            super().put_bytes(uri, data, content_type=content_type)
            if uri.startswith("s3://ingest/bundles/imports/"):
                outcomes.append(ingest(racing, "ingest", uri.removeprefix("s3://ingest/")))

    racing = replace(deps, store=NotifyingStore())
    result = import_inline(racing, "alice", bundle_bytes())
    assert outcomes == ["bundle:indexed"]
    assert result.record.status is ImportStatus.INDEXED and result.model is not None
    assert result.model.owner == "alice"


# --- capabilities, settings, wiring ----------------------------------------------------------------


def test_capabilities_list_every_format_honestly() -> None:
    caps = capabilities("pytorch")
    assert caps.frameworks == ["pytorch"] == [f for f in capabilities().frameworks]
    by_format = {c.format: c for c in caps.formats}
    assert set(by_format) == set(ExportFormat)
    assert by_format[ExportFormat.ONNX].tolerance == 1e-5 and by_format[ExportFormat.ONNX].quality == "exact"
    assert by_format[ExportFormat.ONNX_INT8].tolerance == 0.1
    assert by_format[ExportFormat.ONNX_INT8].quality == "approximate"
    assert [c.format for c in caps.formats if c.requires_gpu] == [ExportFormat.TENSORRT]
    assert all(c.framework == "pytorch" and c.description for c in caps.formats)
    json.dumps(caps.model_dump(mode="json"))
    with pytest.raises(RequestInvalid, match="pytorch") as caught:
        capabilities("tensorflow")
    assert caught.value.details["known"] == ["pytorch"]


def test_api_settings_and_their_limits(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = get_settings()
    assert (settings.drop_owner, settings.api_require_scopes) == ("system", True)
    assert settings.api_limits() == ApiLimits(
        max_inline_bytes=4 * 1024 * 1024, max_response_bytes=5 * 1024 * 1024, presign_ttl_s=900
    )
    monkeypatch.setenv("HEIMDALL_DROP_OWNER", "local-user")
    monkeypatch.setenv("HEIMDALL_API_MAX_RESPONSE_BYTES", "1000")
    monkeypatch.setenv("HEIMDALL_PRESIGN_TTL_S", "60")
    monkeypatch.setenv("HEIMDALL_API_REQUIRE_SCOPES", "false")
    get_settings.cache_clear()
    settings = get_settings()
    assert (settings.drop_owner, settings.api_require_scopes) == ("local-user", False)
    assert settings.api_limits().max_response_bytes == 1000 and settings.api_limits().presign_ttl_s == 60
    monkeypatch.setenv("HEIMDALL_PRESIGN_TTL_S", "43201")
    get_settings.cache_clear()
    with pytest.raises(Exception, match="HEIMDALL_PRESIGN_TTL_S"):
        get_settings()


def test_api_deps_are_built_once_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HEIMDALL_DROP_OWNER", "local-user")
    monkeypatch.setenv("HEIMDALL_STAGE", "wiring")
    wiring.reset()
    try:
        built = wiring.api_deps()
        assert built is wiring.api_deps()
        assert built.drop_owner == built.bundle_deps().drop_owner == "local-user"
        assert built.names.ingest_bucket == "heimdall-wiring-ingest"
        assert wiring.ingest_deps().bundles.drop_owner == "local-user"
        wiring.use_job_submitter(NoJobs())
        assert wiring.api_deps() is not built and isinstance(wiring.api_deps().jobs, NoJobs)
    finally:
        wiring.use_job_submitter(None)
        wiring.reset()
