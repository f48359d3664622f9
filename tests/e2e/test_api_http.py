"""The HTTP API as a program drives it: httpx against the local stack's gateway (real HTTP, API Gateway
v2 events, the same Lambda handler), S3 and the bus checked with plain boto3.

Covers imports (raw JSON body, multipart and gzip, the existing clients' path, presigned uploads, the
``components`` selection), exports (each component switch, samples, description, headers, the 307
redirect of a bundle too large for a response), the export → import → export round trip, listing and
deleting, export jobs without a conversion (created repeat-safe, cancelled, and what a cancelled job
refuses), capabilities, auth (no or bad token, read-only scope, another owner), and every error
status the API gives: 400, 401, 403, 404 (path tricks included), 405, 409, 413 (the API's inline
limit, the gateway's 10 MiB and Lambda's event limit), 422. Every response passes ``check_response``:
never a 5xx, every error ``{"error": {"code", "message"}}``.
"""

from __future__ import annotations

import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from tests.support.e2e import (  # noqa: F401 - api_fixture is a fixture
    ALL_COMPONENTS,
    LOCAL_SUB,
    MAX_INLINE_BYTES,
    MAX_RESPONSE_BYTES,
    OTHER_TOKEN,
    READ_ONLY_TOKEN,
    SAMPLE_COUNT,
    ApiStack,
    StagedCheckpoint,
    api_fixture,
    error_of,
    large_bundle,
    make_bundle,
    raw_request,
    sample_onnx,
    sha256,
    stage_checkpoint,
    tampered,
    wait_for,
)

from heimdall.bundle.reader import read_bundle
from heimdall.settings import MIB

JSON_TYPE = {"Content-Type": "application/json"}
IMPORT = "/api/v1/models/import"
JOBS = "/api/v1/export/jobs"


@pytest.fixture(scope="module")
def http(api: ApiStack) -> Iterator[httpx.Client]:
    """The default caller (local-user, read and write)."""
    with api.client() as client:
        yield client


@pytest.fixture(scope="module")
def other(api: ApiStack) -> Iterator[httpx.Client]:
    """Another owner (other-user, read and write)."""
    with api.client(OTHER_TOKEN) as client:
        yield client


@pytest.fixture(scope="module")
def sent_bundle() -> bytes:
    return make_bundle()


@pytest.fixture(scope="module")
def imported(http: httpx.Client, sent_bundle: bytes) -> dict[str, Any]:
    """The sample bundle imported inline as a raw JSON body: the 201 answer."""
    response = http.post(IMPORT, content=sent_bundle, headers=JSON_TYPE)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


@pytest.fixture(scope="module")
def model_id(imported: dict[str, Any]) -> str:
    return str(imported["model"]["model_id"])


@pytest.fixture(scope="module")
def staged(api: ApiStack) -> StagedCheckpoint:
    # The job is cancelled before its conversion starts, so the weights need not be real ones.
    return stage_checkpoint(api, "http-net", b"not a real checkpoint", "model.pt")


def create_job(client: httpx.Client, staged: StagedCheckpoint) -> httpx.Response:
    """POST an export job of the staged checkpoint, always with the same Idempotency-Key."""
    body = {"checkpoint_uri": staged.checkpoint_uri, "manifest_uri": staged.manifest_uri, "formats": ["onnx"]}
    return client.post(JOBS, json=body, headers={"Idempotency-Key": "e2e-http-job"})


@pytest.fixture(scope="module")
def cancelled_job(http: httpx.Client, staged: StagedCheckpoint) -> dict[str, Any]:
    """An export job created with an Idempotency-Key and cancelled at once (the answer of the cancel)."""
    created = create_job(http, staged)
    assert created.status_code == 202, created.text
    cancelled = http.delete(f"{JOBS}/{created.json()['job_id']}")
    assert cancelled.status_code == 200, cancelled.text
    answer: dict[str, Any] = {"created": created.json(), "cancelled": cancelled.json()}
    return answer


def poll_import(client: httpx.Client, import_id: str) -> dict[str, Any]:
    """GET /api/v1/imports/{id} until it is no longer PENDING."""

    def settled() -> dict[str, Any] | None:
        response = client.get(f"/api/v1/imports/{import_id}")
        assert response.status_code == 200, response.text
        record: dict[str, Any] = response.json()
        return None if record["status"] == "PENDING" else record

    return wait_for(f"import {import_id}", settled)


def presigned_import(client: httpx.Client, data: bytes, **params: str) -> dict[str, Any]:
    """Start a presigned import, POST the form to storage as a browser or curl would, follow it."""
    started = client.post(
        IMPORT,
        params={"mode": "presigned", **params},
        json={"size_bytes": len(data), "filename": "b.heimdall"},
    )
    assert started.status_code == 202, started.text
    record, upload = started.json()["import"], started.json()["upload"]
    assert record["status"] == "PENDING" and record["model_id"] is None
    assert upload["method"] == "POST" and upload["max_bytes"] >= len(data)
    assert upload["fields"]["key"] == f"bundles/imports/{record['import_id']}/bundle.heimdall"
    # Storage gets neither the API's token nor anything but the signed form and the file.
    stored = httpx.post(
        upload["url"], data=upload["fields"], files={"file": ("b.heimdall", data)}, timeout=60
    )
    assert stored.status_code in (200, 201, 204), stored.text
    return poll_import(client, record["import_id"])


def exported(client: httpx.Client, model_id: str, **params: Any) -> tuple[httpx.Response, Any]:
    """GET the export (a 200 with the bundle in the body) and the bundle read back."""
    response = client.get(f"/api/v1/models/{model_id}/export", params=params)
    assert response.status_code == 200, response.text
    read = read_bundle(response.content)
    assert response.headers["x-heimdall-onnx-sha256"] == read.onnx_sha256
    return response, read


# --- the document ------------------------------------------------------------------------------------


def test_the_openapi_document_is_served_without_a_token(api: ApiStack) -> None:
    with api.client(token=None) as anonymous:
        response = anonymous.get("/api/v1/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert {"/api/v1/models/import", "/api/v1/export/jobs"} <= set(document["paths"])


def test_capabilities_list_the_formats_of_a_known_framework(http: httpx.Client) -> None:
    document = http.get("/api/v1/export/capabilities", params={"framework": "pytorch"}).json()
    assert document["frameworks"] == ["pytorch"]
    assert "onnx" in {f["format"] for f in document["formats"]}
    error = error_of(
        http.get("/api/v1/export/capabilities", params={"framework": "jax"}), 422, "VALIDATION_ERROR"
    )
    assert "pytorch" in error["message"]


# --- imports -----------------------------------------------------------------------------------------


def test_an_inline_json_import_becomes_a_new_model_stored_under_imported(
    api: ApiStack, http: httpx.Client, imported: dict[str, Any], sent_bundle: bytes
) -> None:
    record, model = imported["import"], imported["model"]
    original_id = json.loads(sent_bundle)["model"]["model_id"]
    assert record["status"] == "INDEXED" and record["model_id"] == model["model_id"]
    assert record["components"] is None and record["error_code"] is None
    assert model["model_id"] != original_id and model["original_model_id"] == original_id
    assert model["display_name"] == "localization-net-v1 (Imported)" and model["source"] == "import"
    assert model["onnx_sha256"] == sha256(sample_onnx()) and model["onnx_size_bytes"] == len(sample_onnx())
    assert model["components"] == ALL_COMPONENTS
    assert model["metrics"]["final_val_accuracy"] == 0.93
    assert http.get(f"/api/v1/models/{model['model_id']}").json() == model
    assert http.get(f"/api/v1/imports/{record['import_id']}").json()["model_id"] == model["model_id"]
    (onnx_key,) = api.artifact_keys(f"imported/{model['model_id']}/")
    assert sha256(api.artifact(onnx_key)) == model["onnx_sha256"]
    subscriber = api.subscriber

    def announced() -> dict[str, Any] | None:
        subscriber.poll()
        return subscriber.first("Bundle Indexed", model_id=model["model_id"])

    detail = wait_for("Bundle Indexed", announced, timeout_s=20)
    assert detail["imported"] is True and detail["original_model_id"] == original_id
    assert detail["owner"] == LOCAL_SUB and detail["onnx_key"] == onnx_key


def test_a_multipart_gzip_upload_keeps_only_the_chosen_components(http: httpx.Client) -> None:
    chosen = "training_config,performance_metrics"
    # As `curl -F "file=@model.heimdall.gz"` sends it.
    files = {"file": ("model.heimdall.gz", make_bundle(compress=True), "application/gzip")}
    response = http.post(IMPORT, params={"components": chosen}, files=files)
    assert response.status_code == 201, response.text
    record, model = response.json()["import"], response.json()["model"]
    assert record["components"] == chosen.split(",") and model["components"] == chosen.split(",")
    assert model["onnx_sha256"] == sha256(sample_onnx())
    _, read = exported(http, model["model_id"])
    assert read.bundle.components() == chosen.split(",")
    assert read.bundle.normalization_stats is None and read.bundle.sample_predictions is None


def test_the_existing_clients_path_takes_a_raw_gzip_body(http: httpx.Client) -> None:
    body = gzip.compress(make_bundle())
    response = http.post(
        "/api/v1/training/models/import", content=body, headers={"Content-Type": "application/octet-stream"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["model"]["display_name"].endswith(" (Imported)")


def test_a_presigned_import_is_followed_until_indexed(api: ApiStack, http: httpx.Client) -> None:
    record = presigned_import(http, make_bundle(seed=3), components="normalization_stats")
    assert record["status"] == "INDEXED" and record["components"] == ["normalization_stats"]
    model = http.get(f"/api/v1/models/{record['model_id']}").json()
    assert model["components"] == ["normalization_stats"] and model["source"] == "import"
    assert model["display_name"] == "localization-net-v1 (Imported)"
    assert api.artifact_keys(f"imported/{model['model_id']}/")


def test_a_presigned_upload_that_is_not_a_bundle_is_rejected(http: httpx.Client) -> None:
    record = presigned_import(http, b"these bytes are not a bundle")
    assert record["status"] == "REJECTED" and record["model_id"] is None
    assert record["error_code"] == "INVALID_JSON" and record["reason"]


def test_a_bundle_too_large_for_a_request_goes_presigned_and_exports_by_redirect(http: httpx.Client) -> None:
    data = large_bundle()
    error = error_of(http.post(IMPORT, content=data, headers=JSON_TYPE), 413, "PAYLOAD_TOO_LARGE")
    assert "mode=presigned" in error["message"]
    record = presigned_import(http, data)
    assert record["status"] == "INDEXED", record
    model = http.get(f"/api/v1/models/{record['model_id']}").json()

    response = http.get(f"/api/v1/models/{model['model_id']}/export")
    assert response.status_code == 307, response.text
    redirect = response.json()
    assert response.headers["location"] == redirect["url"] and redirect["expires_at"]
    assert redirect["size_bytes"] > MAX_RESPONSE_BYTES
    fetched = httpx.get(redirect["url"], timeout=60)  # a presigned URL: no token
    assert fetched.status_code == 200 and len(fetched.content) == redirect["size_bytes"]
    assert fetched.headers["content-disposition"] == 'attachment; filename="padded-net-v1.0.0.heimdall"'
    read = read_bundle(fetched.content)
    assert read.onnx_sha256 == model["onnx_sha256"] and read.bundle.model.model_id == model["model_id"]


# --- the original Heimdall's fallbacks for missing data ----------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("dialect", ["canonical", "legacy"])
def test_a_seed_fallback_bundle_imports_inline_and_exports_as_model_only(
    http: httpx.Client, dialect: str, compress: bool
) -> None:
    sent = make_bundle(dialect=dialect, fallbacks=True, compress=compress, seed=40)
    content_type = "application/gzip" if compress else "application/json"
    response = http.post(IMPORT, content=sent, headers={"Content-Type": content_type})
    assert response.status_code == 201, response.text
    record, model = response.json()["import"], response.json()["model"]
    assert record["status"] == "INDEXED" and record["error_code"] is None
    # Empty fallbacks are no components: nothing to list, select, export or deploy from.
    assert model["components"] == [] and model["onnx_sha256"] == sha256(sample_onnx())
    assert all(value is None for value in model["metrics"].values())
    for params in ({}, {"include_normalization": "false", "include_samples": "false"}):
        answer, read = exported(http, model["model_id"], **params)
        assert read.bundle.components() == [] and answer.headers.get("x-heimdall-components", "") == ""
        assert read.onnx_sha256 == sha256(sample_onnx())
        assert not set(ALL_COMPONENTS) & set(json.loads(answer.content))
    again = http.post(IMPORT, content=answer.content, headers=JSON_TYPE)  # and back in
    assert again.status_code == 201 and again.json()["model"]["onnx_sha256"] == sha256(sample_onnx())


@pytest.mark.parametrize("dialect", ["canonical", "legacy"])
def test_a_seed_fallback_bundle_dropped_in_the_ingest_bucket_is_indexed(api: ApiStack, dialect: str) -> None:
    key = f"bundles/seed-{dialect}-{uuid.uuid4().hex[:8]}.heimdall.gz"
    sent = make_bundle(dialect=dialect, fallbacks=True, compress=True, seed=44)
    api.s3().put_object(Bucket=api.names.ingest_bucket, Key=key, Body=sent)
    subscriber = api.subscriber

    def announced() -> dict[str, Any] | None:
        subscriber.poll()
        rejected = subscriber.first("Bundle Rejected", source_key=key)
        assert rejected is None, rejected
        return subscriber.first("Bundle Indexed", source_key=key)

    detail = wait_for("Bundle Indexed", announced, timeout_s=30)
    assert detail["onnx_sha256"] == sha256(sample_onnx())
    stored = api.artifact(detail["bundle_key"])  # the canonical copy exports are made from
    assert read_bundle(stored).bundle.components() == []
    assert not set(ALL_COMPONENTS) & set(json.loads(stored))
    assert sha256(api.artifact(detail["onnx_key"])) == sha256(sample_onnx())


def test_a_partly_filled_seed_bundle_goes_presigned_and_keeps_what_it_has(http: httpx.Client) -> None:
    means = [0.485, 0.456, 0.406]
    sent = make_bundle(
        dialect="legacy",
        fallbacks=True,
        compress=True,
        seed=41,
        normalization_stats={"feature_means": means},
        training_config={"epochs": 7},
    )
    record = presigned_import(http, sent)
    assert record["status"] == "INDEXED", record
    model = http.get(f"/api/v1/models/{record['model_id']}").json()
    assert model["components"] == ["training_config", "normalization_stats"]
    _, read = exported(http, model["model_id"])
    assert read.onnx_sha256 == sha256(sample_onnx())
    stats = read.bundle.normalization_stats
    assert stats is not None and stats.feature_means == means and stats.feature_stds is None
    assert read.bundle.training_config is not None and read.bundle.training_config.epochs == 7
    _, chosen = exported(http, model["model_id"], include_normalization="false")
    assert chosen.bundle.components() == ["training_config"]


# --- exports -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("switch", "component"),
    [
        ("include_config", "training_config"),
        ("include_metrics", "performance_metrics"),
        ("include_normalization", "normalization_stats"),
        ("include_samples", "sample_predictions"),
    ],
)
def test_each_component_switch_leaves_its_component_out(
    http: httpx.Client, model_id: str, switch: str, component: str
) -> None:
    response, read = exported(http, model_id, **{switch: "false"})
    expected = [c for c in ALL_COMPONENTS if c != component]
    assert read.bundle.components() == expected
    assert response.headers["x-heimdall-components"] == ",".join(expected)
    assert getattr(read.bundle, component) is None
    assert read.onnx_sha256 == sha256(sample_onnx())


def test_an_export_has_new_metadata_the_same_model_and_an_attachment_name(
    http: httpx.Client, model_id: str
) -> None:
    response, read = exported(http, model_id, num_samples=2, description="for the partner lab")
    assert response.headers["content-type"].startswith("application/json")
    assert (
        response.headers["content-disposition"]
        == 'attachment; filename="localization-net-v1-v1.0.0.heimdall"'
    )
    meta = read.bundle.bundle_metadata
    assert response.headers["x-heimdall-bundle-id"] == meta.bundle_id
    assert meta.description == "for the partner lab" and meta.created_by == LOCAL_SUB
    assert len(read.bundle.sample_predictions or []) == 2
    assert read.bundle.model.model_id == model_id
    _, full = exported(http, model_id)
    assert full.bundle.components() == ALL_COMPONENTS
    assert len(full.bundle.sample_predictions or []) == SAMPLE_COUNT
    assert full.bundle.bundle_metadata.bundle_id != meta.bundle_id  # a new bundle each time
    legacy = http.get(f"/api/v1/training/models/{model_id}/export")
    assert legacy.status_code == 200 and read_bundle(legacy.content).onnx_sha256 == read.onnx_sha256


def test_export_import_export_keeps_the_onnx_sha256(http: httpx.Client, model_id: str) -> None:
    first, read_first = exported(http, model_id)
    again = http.post(IMPORT, content=first.content, headers=JSON_TYPE)
    assert again.status_code == 201, again.text
    model = again.json()["model"]
    assert model["model_id"] != model_id and model["original_model_id"] == model_id
    _, read_again = exported(http, model["model_id"])
    assert read_first.onnx_sha256 == model["onnx_sha256"] == read_again.onnx_sha256 == sha256(sample_onnx())


@pytest.mark.parametrize(
    "params",
    [
        {"num_samples": 99},
        {"num_samples": 0},
        {"include_config": "perhaps"},
        {"description": "d" * 1001},
    ],
)
def test_export_parameters_out_of_range_are_422(
    http: httpx.Client, model_id: str, params: dict[str, Any]
) -> None:
    error = error_of(http.get(f"/api/v1/models/{model_id}/export", params=params), 422, "VALIDATION_ERROR")
    assert error["field"] == next(iter(params))


# --- listing and deleting ------------------------------------------------------------------------------


def test_models_are_listed_page_by_page(http: httpx.Client, model_id: str) -> None:
    first = http.get("/api/v1/models", params={"limit": 1}).json()
    assert len(first["items"]) == 1 and first["next_cursor"]
    second = http.get("/api/v1/models", params={"limit": 1, "cursor": first["next_cursor"]}).json()
    assert second["items"][0]["model_id"] != first["items"][0]["model_id"]
    named = http.get("/api/v1/models", params={"name": "localization-net-v1", "limit": 1000}).json()
    assert model_id in [m["model_id"] for m in named["items"]]
    assert {m["model_name"] for m in named["items"]} == {"localization-net-v1"}


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"cursor": "not-a-cursor"}, "INVALID_CURSOR"),
        ({"limit": 0}, "INVALID_PAGINATION"),
        ({"limit": 1001}, "INVALID_PAGINATION"),
    ],
)
def test_bad_pages_are_400(http: httpx.Client, params: dict[str, Any], code: str) -> None:
    error_of(http.get("/api/v1/models", params=params), 400, code)


def test_deleting_a_model_removes_its_record_and_objects(api: ApiStack, http: httpx.Client) -> None:
    response = http.post(IMPORT, content=make_bundle(seed=5), headers=JSON_TYPE)
    doomed = response.json()["model"]["model_id"]
    assert api.artifact_keys(f"imported/{doomed}/") and api.artifact_keys(f"bundles/{doomed}/")
    deleted = http.delete(f"/api/v1/models/{doomed}")
    assert deleted.status_code == 204 and deleted.content == b""
    error_of(http.get(f"/api/v1/models/{doomed}"), 404, "NOT_FOUND")
    error_of(http.get(f"/api/v1/models/{doomed}/export"), 404, "NOT_FOUND")
    error_of(http.delete(f"/api/v1/models/{doomed}"), 404, "NOT_FOUND")
    assert api.artifact_keys(f"imported/{doomed}/") == []
    assert api.artifact_keys(f"bundles/{doomed}/") == []


# --- export jobs (no conversion runs) ------------------------------------------------------------------


def test_a_job_is_created_repeat_safe_and_a_cancelled_job_stays_cancelled(
    api: ApiStack, http: httpx.Client, staged: StagedCheckpoint, cancelled_job: dict[str, Any]
) -> None:
    created, cancelled = cancelled_job["created"], cancelled_job["cancelled"]
    job_id = created["job_id"]
    assert created["status"] in ("PENDING", "SUBMITTED") and created["formats"] == ["onnx"]
    assert (
        created["checkpoint_uri"] == staged.checkpoint_uri and created["manifest_uri"] == staged.manifest_uri
    )
    assert (created["model_name"], created["version"]) == (staged.model_name, staged.version)
    assert cancelled["job_id"] == job_id and cancelled["status"] == "CANCELLED"
    assert cancelled["reason"] == f"cancelled by {LOCAL_SUB}"
    repeat = create_job(http, staged)
    assert repeat.status_code == 202 and repeat.json()["job_id"] == job_id  # the same job, not a new one
    # The runner's own (late) FAILED report of the stopped job is ignored: CANCELLED is final.
    wait_for("the runner to report the stopped job", api.job_events_settled, timeout_s=60)
    assert http.get(f"{JOBS}/{job_id}").json()["status"] == "CANCELLED"
    assert error_of(http.delete(f"{JOBS}/{job_id}"), 409, "INVALID_TRANSITION")["field"] == "job_id"
    error_of(http.post(f"{JOBS}/{job_id}/set-default"), 409, "NOT_READY")
    error_of(http.get(f"{JOBS}/{job_id}/download"), 409, "NOT_READY")
    error_of(http.get(f"{JOBS}/{job_id}/download", params={"file": "bundle"}), 409, "NOT_READY")


def test_an_idempotency_key_reused_with_another_body_is_422(
    http: httpx.Client, staged: StagedCheckpoint, cancelled_job: dict[str, Any]
) -> None:
    job_id = cancelled_job["created"]["job_id"]
    key = {"Idempotency-Key": "e2e-http-job", **JSON_TYPE}
    # create_job's request with its keys in another order and other spacing: the same job.
    same = (
        f'{{ "formats": ["onnx"], "manifest_uri": "{staged.manifest_uri}",\n'
        f'  "checkpoint_uri": "{staged.checkpoint_uri}" }}'
    )
    response = http.post(JOBS, content=same.encode(), headers=key)
    assert response.status_code == 202 and response.json()["job_id"] == job_id, response.text
    for changed in ({"formats": ["onnx", "onnx_int8"]}, {"manifest_uri": None}):
        body: dict[str, object] = {
            "checkpoint_uri": staged.checkpoint_uri,
            "manifest_uri": staged.manifest_uri,
        }
        body = {k: v for k, v in {**body, "formats": ["onnx"], **changed}.items() if v is not None}
        error = error_of(http.post(JOBS, json=body, headers=key), 422, "IDEMPOTENCY_KEY_REUSED")
        assert error["field"] == "Idempotency-Key"
    assert http.get(f"{JOBS}/{job_id}").json()["status"] == "CANCELLED"  # the first job is untouched


def test_job_requests_that_cannot_be_honoured_are_refused(
    api: ApiStack, http: httpx.Client, staged: StagedCheckpoint, model_id: str
) -> None:
    ingest = api.names.ingest_bucket
    refused = [
        ({"model_id": str(uuid.uuid4())}, 404, "NOT_FOUND"),
        ({"checkpoint_uri": "s3://somebody-else/checkpoints/x/1/model.pt"}, 422, "VALIDATION_ERROR"),
        ({"checkpoint_uri": f"s3://{ingest}/uploads/model.pt"}, 422, "VALIDATION_ERROR"),
        (
            {
                "checkpoint_uri": f"s3://{ingest}/checkpoints/http-net/weights/gone.pt",
                "manifest_uri": staged.manifest_uri,
            },
            404,
            "NOT_FOUND",
        ),
        ({"checkpoint_uri": staged.checkpoint_uri}, 422, "INVALID_MANIFEST"),  # no manifest anywhere
        ({}, 422, "VALIDATION_ERROR"),
        ({"model_id": model_id, "checkpoint_uri": staged.checkpoint_uri}, 422, "VALIDATION_ERROR"),
        ({"checkpoint_uri": staged.checkpoint_uri, "formats": ["bogus"]}, 422, "VALIDATION_ERROR"),
    ]
    for body, status, code in refused:
        error_of(http.post(JOBS, json=body), status, code)
    error_of(http.post(JOBS, content=b'{"model_id": ', headers=JSON_TYPE), 400, "INVALID_JSON")
    error_of(http.get(f"{JOBS}/{uuid.uuid4()}"), 404, "NOT_FOUND")
    error_of(http.get(f"/api/v1/models/{uuid.uuid4()}/exports"), 404, "NOT_FOUND")


# --- auth ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer not-a-known-token", "Basic bG9jYWwtdXNlcjpwYXNzd29yZA==", "Bearer", "Token abc"],
)
def test_no_token_or_a_bad_one_is_401(api: ApiStack, model_id: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization is not None else {}
    with api.client(token=None, **headers) as caller:
        for response in (
            caller.get("/api/v1/models"),
            caller.get(f"/api/v1/models/{model_id}/export"),
            caller.post(IMPORT, content=make_bundle(), headers=JSON_TYPE),
            caller.delete(f"/api/v1/models/{model_id}"),
        ):
            error_of(response, 401, "UNAUTHORIZED")
            assert response.headers["www-authenticate"].startswith("Bearer")


def test_a_read_only_token_reads_but_cannot_write(
    api: ApiStack, http: httpx.Client, model_id: str, cancelled_job: dict[str, Any]
) -> None:
    job_id = cancelled_job["created"]["job_id"]
    before = http.get("/api/v1/models", params={"limit": 1000}).json()["items"]
    with api.client(READ_ONLY_TOKEN) as reader:
        listed = reader.get("/api/v1/models", params={"limit": 1000})
        assert listed.status_code == 200 and model_id in [m["model_id"] for m in listed.json()["items"]]
        assert reader.get(f"/api/v1/models/{model_id}").status_code == 200
        assert reader.get(f"/api/v1/models/{model_id}/export").status_code == 200
        assert reader.get(f"{JOBS}/{job_id}").status_code == 200
        for response in (
            reader.post(IMPORT, content=make_bundle(), headers=JSON_TYPE),
            reader.post(IMPORT, params={"mode": "presigned"}, json={"size_bytes": 10}),
            reader.delete(f"/api/v1/models/{model_id}"),
            reader.post(JOBS, json={"model_id": model_id}),
            reader.delete(f"{JOBS}/{job_id}"),
            reader.post(f"{JOBS}/{job_id}/set-default"),
        ):
            assert "heimdall/write" in error_of(response, 403, "FORBIDDEN")["message"]
    assert http.get("/api/v1/models", params={"limit": 1000}).json()["items"] == before  # nothing changed


def test_another_owner_sees_none_of_our_records(
    http: httpx.Client,
    other: httpx.Client,
    imported: dict[str, Any],
    model_id: str,
    cancelled_job: dict[str, Any],
) -> None:
    job_id = cancelled_job["created"]["job_id"]
    import_id = imported["import"]["import_id"]
    for response in (
        other.get(f"/api/v1/models/{model_id}"),
        other.get(f"/api/v1/models/{model_id}/export"),
        other.get(f"/api/v1/training/models/{model_id}/export"),
        other.get(f"/api/v1/models/{model_id}/exports"),
        other.delete(f"/api/v1/models/{model_id}"),
        other.get(f"/api/v1/imports/{import_id}"),
        other.get(f"{JOBS}/{job_id}"),
        other.get(f"{JOBS}/{job_id}/download"),
        other.post(f"{JOBS}/{job_id}/set-default"),
        other.delete(f"{JOBS}/{job_id}"),
        other.post(JOBS, json={"model_id": model_id}),
    ):
        error_of(response, 404, "NOT_FOUND")
    theirs = other.post(IMPORT, content=make_bundle(seed=9), headers=JSON_TYPE).json()["model"]["model_id"]
    their_list = [m["model_id"] for m in other.get("/api/v1/models", params={"limit": 1000}).json()["items"]]
    our_list = [m["model_id"] for m in http.get("/api/v1/models", params={"limit": 1000}).json()["items"]]
    assert their_list == [theirs]
    assert model_id in our_list and theirs not in our_list
    error_of(http.get(f"/api/v1/models/{theirs}"), 404, "NOT_FOUND")
    assert http.get(f"/api/v1/models/{model_id}").status_code == 200  # their DELETE did nothing


# --- errors --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("GET", "/api/v1/models/.."),
        ("GET", "/api/v1/models/%2e%2e"),
        ("GET", "/api/v1/models/.%2E"),
        ("GET", "/api/v1/models/..%2f..%2fapi%2fv1%2fmodels"),
        ("GET", "/api/v1/models/../models"),
        ("GET", "/api/v1/models/../../../etc/passwd"),
        ("GET", "/api/v1/models/%2e%2e/export"),
        ("GET", "/api/v1/imports/%2e%2e%2f%2e%2e"),
        ("GET", "/api/v1/export/jobs/%2E%2E/download"),
        ("DELETE", "/api/v1/models/%2e%2e"),
        ("DELETE", "/api/v1/export/jobs/.."),
        ("GET", "/api/v1/no-such-route"),
        ("GET", "/api/v2/models"),
    ],
)
def test_path_tricks_and_unknown_routes_are_404(api: ApiStack, method: str, target: str) -> None:
    response = raw_request(api.url, method, target, token=api.token)
    assert response.status == 404, (response.status, response.body)
    assert response.error()["code"] == "NOT_FOUND"


def test_a_method_a_route_does_not_serve_is_refused_with_what_it_does(http: httpx.Client) -> None:
    response = http.delete("/api/v1/models")
    assert response.status_code in (404, 405), response.text  # the contract allows either
    if response.status_code == 405:
        assert response.json()["error"]["code"] == "METHOD_NOT_ALLOWED" and response.headers["allow"] == "GET"


def test_a_request_line_too_long_to_read_is_a_json_414(api: ApiStack) -> None:
    response = raw_request(api.url, "GET", f"/api/v1/models?name={'x' * 100_000}", token=api.token)
    assert response.status == 414 and response.error()["code"] == "URI_TOO_LONG"  # not http.server's HTML


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_other_methods_on_the_inference_path_are_405_with_allow(api: ApiStack, method: str) -> None:
    response = raw_request(api.url, method, f"/v1/infer/{uuid.uuid4()}", body=b"{}")
    assert response.status == 405 and response.headers["allow"] == "POST", response.body
    assert response.error()["code"] == "METHOD_NOT_ALLOWED"


def test_a_body_that_is_not_json_on_a_json_route_is_415(http: httpx.Client, staged: StagedCheckpoint) -> None:
    body = json.dumps({"checkpoint_uri": staged.checkpoint_uri}).encode()
    for content_type in ("application/x-www-form-urlencoded", "text/plain", "application/xml"):
        response = http.post(JOBS, content=body, headers={"Content-Type": content_type})
        assert error_of(response, 415, "UNSUPPORTED_MEDIA_TYPE")["field"] == "Content-Type"
    form = http.post(
        IMPORT, content=make_bundle(), headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    error_of(form, 415, "UNSUPPORTED_MEDIA_TYPE")
    deployment = http.post(
        "/api/v1/deployments", content=b"type=download", headers={"Content-Type": "text/plain"}
    )
    error_of(deployment, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_ids_that_name_nothing_are_404(http: httpx.Client) -> None:
    missing = str(uuid.uuid4())
    for path in (
        f"/api/v1/models/{missing}",
        f"/api/v1/models/{missing}/export",
        f"/api/v1/imports/{missing}",
        f"{JOBS}/{missing}/download",
    ):
        error_of(http.get(path), 404, "NOT_FOUND")


def _without_integrity_match(document: dict[str, Any]) -> None:
    document["integrity"]["onnx_sha256"] = "0" * 64


def _with_bad_base64(document: dict[str, Any]) -> None:
    document["model"]["onnx_model_base64"] = "!!! not base64 !!!"


BUNDLE = make_bundle()
REFUSED_IMPORTS = [
    # (case, query, body, content type, status, code)
    ("not JSON", {}, b"{this is not json", "application/json", 400, "INVALID_JSON"),
    ("truncated", {}, BUNDLE[: len(BUNDLE) // 2], "application/json", 400, "INVALID_JSON"),
    (
        "checksum",
        {},
        tampered(BUNDLE, _without_integrity_match),
        "application/json",
        422,
        "CHECKSUM_MISMATCH",
    ),
    ("base64", {}, tampered(BUNDLE, _with_bad_base64), "application/json", 422, "INVALID_BASE64"),
    ("gzip", {}, b"\x1f\x8b\x08 this is no gzip stream", "application/gzip", 422, "INVALID_BUNDLE"),
    ("empty", {}, b"", "application/json", 422, "VALIDATION_ERROR"),
    ("component", {"components": "weights"}, BUNDLE, "application/json", 422, "VALIDATION_ERROR"),
    ("mode", {"mode": "carrier-pigeon"}, BUNDLE, "application/json", 422, "VALIDATION_ERROR"),
    (
        "multipart",
        {},
        b'--b\r\nContent-Disposition: form-data; name="file"\r\n\r\n{"a"',
        "multipart/form-data; boundary=b",
        400,
        "BAD_REQUEST",
    ),
    (
        "no file field",
        {},
        b'--b\r\nContent-Disposition: form-data; name="other"\r\n\r\nx\r\n--b--\r\n',
        "multipart/form-data; boundary=b",
        422,
        "VALIDATION_ERROR",
    ),
    ("presigned not JSON", {"mode": "presigned"}, b"size=10", "application/json", 400, "INVALID_JSON"),
    (
        "presigned size 0",
        {"mode": "presigned"},
        b'{"size_bytes": 0}',
        "application/json",
        422,
        "VALIDATION_ERROR",
    ),
    (
        "presigned huge",
        {"mode": "presigned"},
        b'{"size_bytes": 1000000000000}',
        "application/json",
        413,
        "TOO_LARGE",
    ),
]


@pytest.mark.parametrize(
    ("query", "body", "content_type", "status", "code"),
    [case[1:] for case in REFUSED_IMPORTS],
    ids=[case[0] for case in REFUSED_IMPORTS],
)
def test_refused_imports_say_why(
    http: httpx.Client, query: dict[str, str], body: bytes, content_type: str, status: int, code: str
) -> None:
    response = http.post(IMPORT, params=query, content=body, headers={"Content-Type": content_type})
    error = error_of(response, status, code)
    import_id = (error.get("details") or {}).get("import_id")
    if import_id is not None:  # a bundle that was stored and refused: its import says the same
        record = http.get(f"/api/v1/imports/{import_id}").json()
        assert record["status"] == "REJECTED" and record["error_code"] == code


def test_bodies_over_the_limits_are_413(http: httpx.Client) -> None:
    over_inline = b" " * (MAX_INLINE_BYTES + 1)
    error = error_of(http.post(IMPORT, content=over_inline, headers=JSON_TYPE), 413, "PAYLOAD_TOO_LARGE")
    assert error["details"]["max_bytes"] == MAX_INLINE_BYTES
    # Over HTTP API's 10 MiB: the gateway refuses it before the handler (AWS would too).
    over_gateway = b" " * (10 * MIB + 1)
    error_of(http.post(IMPORT, content=over_gateway, headers=JSON_TYPE), 413, "PAYLOAD_TOO_LARGE")
    # Binary bodies reach Lambda base64-encoded: 5 MiB makes an event over Lambda's 6 MB invocation limit.
    binary = {"Content-Type": "application/octet-stream"}
    error = error_of(http.post(IMPORT, content=b"\0" * (5 * MIB), headers=binary), 413, "PAYLOAD_TOO_LARGE")
    assert "Lambda" in error["message"]
    error_of(http.post(JOBS, content=over_inline, headers=JSON_TYPE), 413, "PAYLOAD_TOO_LARGE")
