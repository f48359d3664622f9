"""Checkpoint uploads through the resolver: a lone half is listed AWAITING with when it will be rejected,
then PAIRED or REJECTED; owner-scoped, filtered by status, and conforming to the OpenAPI document."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from tests.support.api import Api
from tests.support.checkpoints import MANIFEST, PREFIX

from heimdall.api.deps import use_deps
from heimdall.logic.api import ApiDeps
from heimdall.logic.checkpoints import handle_checkpoint_object
from heimdall.logic.uploads import SweepDeps, sweep_incomplete_uploads
from heimdall.triggers.keys import classify_ingest_key
from heimdall.triggers.s3 import ObjectCreated

UPLOADS = "/api/v1/uploads"


def drop(deps: ApiDeps, name: str, data: bytes) -> ObjectCreated:
    """Drop a file under the pair's prefix, as S3 would notify it, owned by alice."""
    bucket = deps.names.ingest_bucket
    deps.store.put_bytes(f"s3://{bucket}/{PREFIX}{name}", data)
    info = deps.store.head(f"s3://{bucket}/{PREFIX}{name}")
    obj = ObjectCreated(
        bucket=bucket, key=PREFIX + name, size=info.size, etag=info.etag, version_id=None, sequencer=None
    )
    handle_checkpoint_object(obj, classify_ingest_key(obj.key), deps.checkpoint_deps(), owner="alice")
    return obj


def test_a_lone_manifest_is_listed_awaiting_with_its_deadline(api: Api, deps: ApiDeps) -> None:
    assert api.get(UPLOADS).json() == {"items": [], "next_cursor": None}
    obj = drop(deps, "heimdall.json", json.dumps(MANIFEST).encode())
    (item,) = api.get(UPLOADS, query={"status": "awaiting"}).json()["items"]
    assert (item["status"], item["half"], item["missing"]) == ("AWAITING", "manifest", "checkpoint")
    assert item["uri"] == f"s3://{obj.bucket}/{obj.key}"
    assert item["prefix_uri"] == f"s3://{obj.bucket}/{PREFIX}"
    assert (item["model_name"], item["version"]) == ("localization-net", "1.0.0")
    assert item["reject_after"] is not None and item["job_id"] is None
    assert api.get(f"{UPLOADS}/{item['upload_id']}").json() == item
    assert api.get(UPLOADS, query={"status": "paired"}).json()["items"] == []
    # Another caller sees nothing of it.
    assert api.get(UPLOADS, sub="mallory").json()["items"] == []
    assert api.get(f"{UPLOADS}/{item['upload_id']}", sub="mallory").status == 404


def test_the_deadline_follows_the_configured_timeout(deps: ApiDeps) -> None:
    quick = replace(deps, pair_timeout_s=2)
    use_deps(lambda: quick)
    try:
        drop(quick, "model.pt", b"PK\x03\x04...")
        (item,) = Api(quick).get(UPLOADS).json()["items"]
        record = quick.registry.get_upload("alice", item["upload_id"])
        assert (
            item["reject_after"].replace("Z", "+00:00")
            == (record.created_at + timedelta(seconds=2)).isoformat()
        )
    finally:
        use_deps(None)


def test_paired_and_rejected_uploads_say_what_became_of_them(api: Api, deps: ApiDeps) -> None:
    drop(deps, "heimdall.json", json.dumps(MANIFEST).encode())
    drop(deps, "model.safetensors", b"weights")
    (paired,) = api.get(UPLOADS, query={"status": "paired"}).json()["items"]
    assert paired["job_id"] and paired["reject_after"] is None
    assert paired["paired_uri"].endswith(PREFIX + "model.safetensors")
    assert api.get(f"/api/v1/export/jobs/{paired['job_id']}").status == 200


def test_a_rejected_upload_shows_its_code_and_quarantine_copy(deps: ApiDeps) -> None:
    moment = [datetime.now(UTC)]
    timed = replace(deps, now=lambda: moment[0])
    use_deps(lambda: timed)
    try:
        drop(timed, "heimdall.json", json.dumps(MANIFEST).encode())
        moment[0] += timedelta(seconds=2)
        sweep_incomplete_uploads(SweepDeps(checkpoints=timed.checkpoint_deps(), pair_timeout_s=1))
        (rejected,) = Api(timed).get(UPLOADS, query={"status": "rejected"}).json()["items"]
    finally:
        use_deps(None)
    assert (rejected["error_code"], rejected["reject_after"]) == ("INCOMPLETE_UPLOAD", None)
    assert rejected["quarantine_uri"].startswith(f"s3://{deps.names.artifacts_bucket}/quarantine/")
    assert "checkpoint" in rejected["reason"]


def test_bad_status_and_path_tricks(api: Api) -> None:
    assert api.get(UPLOADS, query={"status": "lost"}).status == 422
    assert api.get(f"{UPLOADS}/..%2f..%2fmodels").status == 404
    assert api.get(UPLOADS, query={"limit": "0"}).status == 400
