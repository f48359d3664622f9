"""``heimdall uploads list|get`` against a canned API: what is sent, what is shown, errors."""

from __future__ import annotations

import json
from typing import Any

from tests.support.cli_fakes import (  # noqa: F401 - api_fixture and isolated_fixture are fixtures
    FakeServer,
    api_error,
    api_fixture,
    assert_error,
    isolated_fixture,
    json_reply,
    run,
)

AWAITING: dict[str, Any] = {
    "upload_id": "3f1c0a2e-5b7d-5e8f-9a1b-2c3d4e5f6a7b",
    "status": "AWAITING",
    "model_name": "localization-net",
    "version": "1.0.0",
    "prefix_uri": "s3://ingest/checkpoints/localization-net/1.0.0/",
    "half": "manifest",
    "uri": "s3://ingest/checkpoints/localization-net/1.0.0/heimdall.json",
    "revision": "abc",
    "missing": "checkpoint",
    "reject_after": "2026-11-26T00:00:00Z",
    "job_id": None,
    "paired_uri": None,
    "error_code": None,
    "reason": None,
    "quarantine_uri": None,
    "created_at": "2026-11-25T00:00:00Z",
    "updated_at": "2026-11-25T00:00:00Z",
}


def test_uploads_list_asks_for_the_status_and_shows_what_waits(api: FakeServer) -> None:
    api.on("GET", "/api/v1/uploads", json_reply({"items": [AWAITING], "next_cursor": None}))
    listed = run(api, "uploads", "list", "--status", "awaiting")
    assert listed.exit_code == 0, listed.stderr
    assert AWAITING["upload_id"] in listed.stdout and "AWAITING" in listed.stdout
    assert "checkpoint" in listed.stdout and "2026-11-26" in listed.stdout
    (seen,) = api.requests("GET", "/api/v1/uploads")
    assert seen.query["status"] == ["awaiting"]
    as_json = run(api, "uploads", "list", "--json")
    assert json.loads(as_json.stdout) == {"items": [AWAITING], "next_cursor": None}
    assert "status" not in api.requests("GET", "/api/v1/uploads")[-1].query


def test_uploads_list_refuses_an_unknown_status(api: FakeServer) -> None:
    assert run(api, "uploads", "list", "--status", "lost").exit_code == 2
    assert api.seen == []


def test_uploads_get_shows_the_outcome(api: FakeServer) -> None:
    rejected = {
        **AWAITING,
        "status": "REJECTED",
        "reject_after": None,
        "error_code": "INCOMPLETE_UPLOAD",
        "reason": "waited 24 h for its checkpoint",
        "quarantine_uri": "s3://artifacts/quarantine/x/original",
    }
    api.on("GET", f"/api/v1/uploads/{AWAITING['upload_id']}", json_reply(rejected))
    shown = run(api, "uploads", "get", AWAITING["upload_id"])
    assert shown.exit_code == 0
    for fragment in ("REJECTED", "INCOMPLETE_UPLOAD", "quarantine/x/original", "waited 24 h"):
        assert fragment in shown.stdout
    api.on("GET", "/api/v1/uploads/nope", api_error(404, "NOT_FOUND", "upload 'nope' not found"))
    assert_error(run(api, "uploads", "get", "nope"), "NOT_FOUND", "nope")
