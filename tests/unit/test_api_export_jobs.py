"""Export jobs through the resolver: create (checkpoint, model, idempotent), get, list per model,
set default, cancel, download, and the 4xx of each."""

from __future__ import annotations

import json
from typing import Any

import pytest
from tests.support.api import JOBS, READ, Api, import_model
from tests.support.api_logic import CHECKPOINT, PREFIX, events_of, put_checkpoint, runner

from heimdall.domain.records import JobResultSummary, JobStatus, ModelRecord
from heimdall.events import DetailType
from heimdall.logic.api import ApiDeps


def create_job(api: Api, **body: Any) -> dict[str, Any]:
    reply = api.post(JOBS, json_body={"checkpoint_uri": CHECKPOINT, **body})
    assert reply.status == 202, reply.body
    job: dict[str, Any] = reply.json()
    return job


def succeed(deps: ApiDeps, job_id: str, **result: Any) -> None:
    deps.registry.transition_export_job(job_id, JobStatus.RUNNING)
    summary = JobResultSummary(status="SUCCEEDED", **result)
    assert deps.registry.transition_export_job(job_id, JobStatus.SUCCEEDED, updates={"result": summary})


def test_a_job_from_a_checkpoint_is_submitted(api: Api, deps: ApiDeps) -> None:
    put_checkpoint(deps)
    job = create_job(api, formats=["onnx", "onnx_fp16"])
    assert job["status"] == "SUBMITTED" and job["checkpoint_uri"] == CHECKPOINT
    assert job["manifest_uri"] == f"s3://ingest/{PREFIX}heimdall.json"
    assert job["formats"] == ["onnx", "onnx_fp16"] and job["batch_job_id"] == "batch-1"
    assert [s.job_id for s in runner(deps).specs] == [job["job_id"]]
    assert events_of(deps).detail_types == [DetailType.CHECKPOINT_RECEIVED, DetailType.EXPORT_JOB_SUBMITTED]
    got = api.get(f"{JOBS}/{job['job_id']}")
    assert got.status == 200 and got.json() == job
    assert api.get(f"{JOBS}/{job['job_id']}", sub="mallory").status == 404


def test_an_idempotency_key_makes_a_repeat_return_the_same_job(api: Api, deps: ApiDeps) -> None:
    put_checkpoint(deps)
    first = api.post(JOBS, json_body={"checkpoint_uri": CHECKPOINT}, headers={"Idempotency-Key": "req-1"})
    again = api.post(JOBS, json_body={"checkpoint_uri": CHECKPOINT}, headers={"idempotency-key": "req-1"})
    other = api.post(JOBS, json_body={"checkpoint_uri": CHECKPOINT}, headers={"Idempotency-Key": "req-2"})
    assert first.status == again.status == other.status == 202
    assert first.json()["job_id"] == again.json()["job_id"] != other.json()["job_id"]
    assert len(runner(deps).specs) == 2
    too_long = api.post(
        JOBS, json_body={"checkpoint_uri": CHECKPOINT}, headers={"Idempotency-Key": "k" * 257}
    )
    assert too_long.status == 422 and too_long.error["field"] == "idempotency-key"


def test_an_idempotency_key_reused_with_another_body_is_422(api: Api, deps: ApiDeps) -> None:
    put_checkpoint(deps)
    key = {"Idempotency-Key": "req-1"}
    first = api.post(JOBS, body=f'{{"checkpoint_uri": "{CHECKPOINT}", "formats": ["onnx"]}}', headers=key)
    # The same request in other words (key order, spacing): the same job.
    same = api.post(JOBS, body=f'{{ "formats" : [ "onnx" ] ,"checkpoint_uri":"{CHECKPOINT}"}}', headers=key)
    assert first.status == same.status == 202 and first.json()["job_id"] == same.json()["job_id"]
    other = api.post(JOBS, json_body={"checkpoint_uri": CHECKPOINT, "formats": ["onnx_int8"]}, headers=key)
    assert other.status == 422, other.body
    assert other.error["code"] == "IDEMPOTENCY_KEY_REUSED" and other.error["field"] == "Idempotency-Key"
    assert len(runner(deps).specs) == 1


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "body"),
        ({"model_id": "m1", "checkpoint_uri": CHECKPOINT}, "body"),
        ({"model_id": "m1", "manifest_uri": "s3://ingest/checkpoints/net/1.0.0/heimdall.json"}, "body"),
        ({"checkpoint_uri": CHECKPOINT, "colour": "red"}, "colour"),
        ({"checkpoint_uri": CHECKPOINT, "formats": ["onnx", "coreml"]}, "formats.1"),
        ({"checkpoint_uri": CHECKPOINT, "formats": []}, "formats"),
        ({"checkpoint_uri": 42}, "checkpoint_uri"),
        ({"model_id": "../x"}, "model_id"),
        ({"checkpoint_uri": "s3://artifacts/checkpoints/net/1.0.0/model.safetensors"}, "checkpoint_uri"),
        ({"checkpoint_uri": "s3://ingest/checkpoints/../secrets/model.safetensors"}, "checkpoint_uri"),
        ({"checkpoint_uri": "s3://ingest/checkpoints/net/1.0.0/notes.txt"}, "checkpoint_uri"),
    ],
)
def test_a_bad_job_request_is_422_naming_the_field(api: Api, deps: ApiDeps, body: Any, field: str) -> None:
    put_checkpoint(deps)
    reply = api.post(JOBS, json_body=body)
    assert reply.status == 422 and reply.error["code"] == "VALIDATION_ERROR", reply.body
    assert reply.error["field"] == field
    assert runner(deps).specs == []


@pytest.mark.parametrize(
    ("body", "content_type", "is_base64", "status", "code"),
    [
        ("{not json", "application/json", False, 400, "INVALID_JSON"),
        ('{"checkpoint_uri": NaN}', "application/json", False, 400, "INVALID_JSON"),
        ("[" * 100_000, "application/json", False, 400, "INVALID_JSON"),
        ("//79", "application/json", True, 400, "INVALID_JSON"),  # base64 of bytes that are not UTF-8
        ("QQ", "application/json", True, 400, "BAD_REQUEST"),  # not base64: bad padding
        ("", "application/json", False, 400, "INVALID_JSON"),
        ("LS14DQo=", "multipart/form-data", True, 415, "UNSUPPORTED_MEDIA_TYPE"),  # not JSON at all
        ("x" * (4 * 1024 * 1024 + 1), "application/json", False, 413, "PAYLOAD_TOO_LARGE"),
    ],
    ids=["syntax", "nan", "deep", "not-utf8", "not-base64", "empty", "multipart", "huge"],
)
def test_a_job_body_that_is_not_json_is_refused(
    api: Api, body: str, content_type: str, is_base64: bool, status: int, code: str
) -> None:
    reply = api.post(JOBS, body=body, content_type=content_type, is_base64=is_base64)
    assert (reply.status, reply.error["code"]) == (status, code), reply.body


@pytest.mark.parametrize(
    "content_type", [None, "application/json; charset=utf-8", "application/merge-patch+json"]
)
def test_json_or_no_content_type_is_read_as_json(api: Api, deps: ApiDeps, content_type: str | None) -> None:
    put_checkpoint(deps)
    body = json.dumps({"checkpoint_uri": CHECKPOINT})
    assert api.post(JOBS, body=body, content_type=content_type).status == 202


@pytest.mark.parametrize(
    "content_type",
    ["application/x-www-form-urlencoded", "text/plain", "application/gzip", "multipart/form-data"],
)
def test_a_body_of_another_media_type_is_415(api: Api, deps: ApiDeps, content_type: str) -> None:
    put_checkpoint(deps)  # `curl -d '{...}'` without -H sends its JSON as a form: told to say it is JSON
    reply = api.post(JOBS, body=json.dumps({"checkpoint_uri": CHECKPOINT}), content_type=content_type)
    assert reply.status == 415 and reply.error["code"] == "UNSUPPORTED_MEDIA_TYPE", reply.body
    assert "application/json" in reply.error["message"] and runner(deps).specs == []


def test_a_missing_checkpoint_is_404(api: Api) -> None:
    reply = api.post(JOBS, json_body={"checkpoint_uri": CHECKPOINT})
    assert reply.status == 404 and reply.error["code"] == "NOT_FOUND"


def test_a_job_of_an_imported_model_converts_its_bundle(api: Api, deps: ApiDeps) -> None:
    model = import_model(api)
    reply = api.post(JOBS, json_body={"model_id": model["model_id"], "formats": ["onnx_int8"]})
    assert reply.status == 202, reply.body
    job = reply.json()
    assert job["source"] == "bundle" and job["model_id"] == model["model_id"]
    stored = deps.registry.get_model("alice", model["model_id"]).bundle_key
    assert job["checkpoint_uri"] == f"s3://{deps.names.artifacts_bucket}/{stored}"
    assert job["manifest_uri"] is None and job["formats"] == ["onnx", "onnx_int8"]
    assert [s.source for s in runner(deps).specs] == ["bundle"]
    assert api.post(JOBS, json_body={"model_id": model["model_id"]}, sub="mallory").status == 404


def exported_model(deps: ApiDeps, job_id: str) -> ModelRecord:
    """The model a job's bundle became (as the job-state function would index it)."""
    record = ModelRecord(
        owner="alice", model_id=f"model-of-{job_id}", model_name="net", version="1.0.0", export_job_id=job_id
    )
    deps.registry.put_model(record)
    return record


def test_a_job_from_an_exported_model_converts_its_checkpoint_again(api: Api, deps: ApiDeps) -> None:
    put_checkpoint(deps)
    first = create_job(api)
    model = exported_model(deps, first["job_id"])
    reply = api.post(JOBS, json_body={"model_id": model.model_id, "formats": ["torchscript"]})
    assert reply.status == 202
    again = reply.json()
    assert again["job_id"] != first["job_id"] and again["checkpoint_uri"] == CHECKPOINT
    assert "torchscript" in again["formats"] and "onnx_int8" not in again["formats"]

    listed = api.get(f"/api/v1/models/{model.model_id}/exports", query={"limit": "1"})
    assert listed.status == 200
    page = listed.json()
    assert len(page["items"]) == 1 and page["next_cursor"]
    rest = api.get(f"/api/v1/models/{model.model_id}/exports", query={"cursor": page["next_cursor"]}).json()
    assert {j["job_id"] for j in page["items"] + rest["items"]} == {first["job_id"], again["job_id"]}
    assert api.get(f"/api/v1/models/{model.model_id}/exports", sub="mallory").status == 404
    bad = api.get(f"/api/v1/models/{model.model_id}/exports", query={"limit": "0"})
    assert bad.status == 400 and bad.error["code"] == "INVALID_PAGINATION"


def test_cancel_stops_the_runner_once(api: Api, deps: ApiDeps) -> None:
    put_checkpoint(deps)
    job = create_job(api)
    assert api.delete(f"{JOBS}/{job['job_id']}", sub="mallory").status == 404
    reply = api.delete(f"{JOBS}/{job['job_id']}")
    assert reply.status == 200
    cancelled = reply.json()
    assert cancelled["status"] == "CANCELLED" and cancelled["reason"] == "cancelled by alice"
    assert runner(deps).cancelled == [("batch-1", "cancelled by alice")]
    again = api.delete(f"{JOBS}/{job['job_id']}")
    assert again.status == 409 and again.error["code"] == "INVALID_TRANSITION"


def test_set_default_and_download_need_a_succeeded_job(api: Api, deps: ApiDeps) -> None:
    put_checkpoint(deps)
    job = create_job(api)
    job_id = job["job_id"]
    for method, path in [("POST", f"{JOBS}/{job_id}/set-default"), ("GET", f"{JOBS}/{job_id}/download")]:
        reply = api.call(method, path)
        assert reply.status == 409 and reply.error["code"] == "NOT_READY", path

    prefix = job["output_prefix"]
    deps.store.put_bytes(f"{prefix}package.zip", b"PK package")
    succeed(deps, job_id, package_file="package.zip")

    default = api.post(f"{JOBS}/{job_id}/set-default")
    assert default.status == 200 and default.json()["is_default"] is True
    assert api.post(f"{JOBS}/{job_id}/set-default", sub="mallory").status == 404

    download = api.get(f"{JOBS}/{job_id}/download")
    assert download.status == 200
    facts = download.json()
    assert facts["file"] == "package" and facts["key"] == f"exports/{job_id}/package.zip"
    assert facts["url"].startswith(f"memory://artifacts/exports/{job_id}/package.zip")
    assert facts["size_bytes"] == len(b"PK package")
    no_bundle = api.get(f"{JOBS}/{job_id}/download", query={"file": "bundle"})
    assert no_bundle.status == 409 and no_bundle.error["code"] == "NOT_READY"
    wrong = api.get(f"{JOBS}/{job_id}/download", query={"file": "model"})
    assert wrong.status == 422 and wrong.error["field"] == "file"
    assert api.get(f"{JOBS}/{job_id}/download", sub="mallory").status == 404
    finished = api.delete(f"{JOBS}/{job_id}")
    assert finished.status == 409 and finished.error["code"] == "INVALID_TRANSITION"


def test_a_read_only_caller_can_follow_jobs_but_not_start_or_stop_them(api: Api, deps: ApiDeps) -> None:
    put_checkpoint(deps)
    job = create_job(api)
    assert api.get(f"{JOBS}/{job['job_id']}", scopes=(READ,)).status == 200
    for method, path in [
        ("POST", JOBS),
        ("DELETE", f"{JOBS}/{job['job_id']}"),
        ("POST", f"{JOBS}/{job['job_id']}/set-default"),
    ]:
        reply = api.call(method, path, scopes=(READ,), json_body={"checkpoint_uri": CHECKPOINT})
        assert reply.status == 403 and reply.error["code"] == "FORBIDDEN", path
    assert len(runner(deps).specs) == 1
