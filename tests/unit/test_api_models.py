"""The models endpoints through the resolver: list, get, delete, export, owner isolation, path tricks."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from tests.support.api import Api, bundle_bytes, import_model, model_path
from tests.support.api_logic import ONNX_SHA256, store_of

from heimdall.api.deps import use_deps
from heimdall.bundle import read_bundle
from heimdall.domain.records import ModelRecord
from heimdall.logic.api import ApiDeps
from heimdall.settings import ApiLimits


def seed_models(deps: ApiDeps, owner: str, count: int, name: str = "net") -> list[str]:
    """Model records straight in the registry (listing needs no stored objects)."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    ids = []
    for i in range(count):
        record = ModelRecord(
            owner=owner,
            model_id=f"{owner}-{name}-{i}",
            model_name=name,
            version=f"1.0.{i}",
            created_at=start + timedelta(minutes=i),
        )
        deps.registry.put_model(record)
        ids.append(record.model_id)
    return ids


def test_a_new_caller_has_no_models(api: Api) -> None:
    reply = api.get("/api/v1/models")
    assert reply.status == 200 and reply.json() == {"items": [], "next_cursor": None}


def test_an_imported_model_is_listed_read_and_hidden_from_others(api: Api) -> None:
    model = import_model(api)
    assert model["source"] == "import" and model["display_name"].endswith(" (Imported)")
    assert model["onnx_sha256"] == ONNX_SHA256

    listed = api.get("/api/v1/models").json()["items"]
    assert [m["model_id"] for m in listed] == [model["model_id"]]
    got = api.get(model_path(model["model_id"]))
    assert got.status == 200 and got.json() == model
    assert "owner" not in got.json() and "bundle_key" not in got.json()

    # Another caller sees nothing: not in the list, and the id is not found (not forbidden).
    assert api.get("/api/v1/models", sub="mallory").json()["items"] == []
    for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/export"), ("GET", "/exports")]:
        reply = api.call(method, model_path(model["model_id"], suffix), sub="mallory")
        assert reply.status == 404 and reply.error["code"] == "NOT_FOUND", (method, suffix)
    assert api.get(model_path(model["model_id"])).status == 200


def test_listing_pages_newest_first_and_filters_by_name(api: Api, deps: ApiDeps) -> None:
    ids = seed_models(deps, "alice", 3)
    seed_models(deps, "alice", 1, name="other")
    seed_models(deps, "bob", 2)

    first = api.get("/api/v1/models", query={"limit": "2", "name": "net"}).json()
    assert [m["model_id"] for m in first["items"]] == [ids[2], ids[1]]
    assert first["next_cursor"]
    rest = api.get(
        "/api/v1/models", query={"limit": "2", "name": "net", "cursor": first["next_cursor"]}
    ).json()
    assert [m["model_id"] for m in rest["items"]] == [ids[0]] and rest["next_cursor"] is None
    assert len(api.get("/api/v1/models").json()["items"]) == 4


@pytest.mark.parametrize(
    ("query", "code"),
    [
        ({"limit": "0"}, "INVALID_PAGINATION"),
        ({"limit": "1001"}, "INVALID_PAGINATION"),
        ({"limit": "ten"}, "INVALID_PAGINATION"),
        ({"cursor": "not-a-cursor"}, "INVALID_CURSOR"),
        ({"cursor": "eyJ2IjoxLCJwIjp7fX0"}, "INVALID_CURSOR"),  # base64 JSON of the wrong shape
    ],
)
def test_a_bad_page_request_is_a_400(api: Api, query: dict[str, str], code: str) -> None:
    reply = api.get("/api/v1/models", query=query)
    assert reply.status == 400 and reply.error["code"] == code
    assert reply.error["field"] in ("limit", "cursor")


def test_another_callers_cursor_is_refused(api: Api, deps: ApiDeps) -> None:
    seed_models(deps, "bob", 3)
    cursor = api.get("/api/v1/models", sub="bob", query={"limit": "1"}).json()["next_cursor"]
    reply = api.get("/api/v1/models", query={"cursor": cursor})
    assert reply.status == 400 and reply.error["code"] == "INVALID_CURSOR"


def test_delete_removes_the_record_and_its_objects(api: Api, deps: ApiDeps) -> None:
    model = import_model(api)
    record = deps.registry.get_model("alice", model["model_id"])
    assert ("artifacts", record.onnx_key) in store_of(deps).objects

    reply = api.delete(model_path(model["model_id"]))
    assert reply.status == 204 and reply.body == b""
    assert api.get(model_path(model["model_id"])).status == 404
    assert ("artifacts", record.onnx_key) not in store_of(deps).objects
    assert ("artifacts", record.bundle_key) not in store_of(deps).objects
    assert api.delete(model_path(model["model_id"])).status == 404


@pytest.mark.parametrize(
    "raw_id",
    [
        "..",
        "%2e%2e",
        "%2E%2E",
        ".%2e",
        "..%2f..%2fetc",
        "%2e%2e%2f%2e%2e",
        "a%2fb",
        "%00",
        "-x",
        "%ff%fe",
        "a" * 129,
    ],
)
def test_path_tricks_in_ids_are_not_found(api: Api, deps: ApiDeps, raw_id: str) -> None:
    seed_models(deps, "alice", 1)
    for method, suffix in [("GET", ""), ("DELETE", ""), ("GET", "/export"), ("GET", "/exports")]:
        reply = api.call(method, f"/api/v1/models/{raw_id}{suffix}")
        assert reply.status == 404 and reply.error["code"] == "NOT_FOUND", (method, suffix, reply.body)
    for path in (
        f"/api/v1/imports/{raw_id}",
        f"/api/v1/export/jobs/{raw_id}",
        f"/api/v1/export/jobs/{raw_id}/download",
    ):
        reply = api.get(path)
        assert reply.status == 404 and reply.error["code"] == "NOT_FOUND", path


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/models/../models",
        "/api/v1/models/x/../../v1/models",
        "/api/v1/../v1/models",
        "/api/v1/models/",
    ],
)
def test_dot_segments_match_no_route(api: Api, path: str) -> None:
    reply = api.get(path)
    assert reply.status == 404 and reply.error["code"] == "NOT_FOUND"


# --------------------------------------------------------------------------------------------------
# Export


def export_headers_ok(reply_headers: dict[str, str]) -> None:
    assert reply_headers["content-type"] == "application/json"
    assert (
        reply_headers["content-disposition"] == 'attachment; filename="localization-net-v1-v1.0.0.heimdall"'
    )
    assert reply_headers["x-heimdall-onnx-sha256"] == ONNX_SHA256


@pytest.mark.parametrize("path_suffix", ["/export", "LEGACY"])
def test_export_returns_the_bundle_as_an_attachment(api: Api, path_suffix: str) -> None:
    model = import_model(api)
    path = (
        f"/api/v1/training/models/{model['model_id']}/export"
        if path_suffix == "LEGACY"
        else model_path(model["model_id"], "/export")
    )
    reply = api.get(path, query={"description": "for the field team"})
    assert reply.status == 200
    export_headers_ok(reply.headers)
    exported = read_bundle(reply.body)
    assert exported.onnx_sha256 == ONNX_SHA256
    metadata = exported.bundle.bundle_metadata
    assert metadata.description == "for the field team" and metadata.created_by == "alice"
    assert str(metadata.bundle_id) == reply.header("X-Heimdall-Bundle-Id")
    assert reply.header("X-Heimdall-Components") == ",".join(exported.bundle.components())
    assert exported.bundle.components() == [
        "training_config",
        "performance_metrics",
        "normalization_stats",
        "sample_predictions",
    ]


@pytest.mark.parametrize(
    ("flag", "component"),
    [
        ("include_config", "training_config"),
        ("include_metrics", "performance_metrics"),
        ("include_normalization", "normalization_stats"),
        ("include_samples", "sample_predictions"),
    ],
)
def test_export_leaves_out_what_is_switched_off(api: Api, flag: str, component: str) -> None:
    model = import_model(api)
    reply = api.get(model_path(model["model_id"], "/export"), query={flag: "false"})
    assert reply.status == 200
    components = read_bundle(reply.body).bundle.components()
    assert component not in components and len(components) == 3
    assert component not in (reply.header("X-Heimdall-Components") or "").split(",")


def test_export_keeps_at_most_num_samples(api: Api) -> None:
    model = import_model(api, data=bundle_bytes(num_samples=5))
    reply = api.get(model_path(model["model_id"], "/export"), query={"num_samples": "2"})
    samples = read_bundle(reply.body).bundle.sample_predictions
    assert samples is not None and len(samples) == 2


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"num_samples": "0"}, "num_samples"),
        ({"num_samples": "11"}, "num_samples"),
        ({"include_config": "maybe"}, "include_config"),
        ({"description": "x" * 1001}, "description"),
    ],
)
def test_bad_export_options_are_422_naming_the_parameter(api: Api, query: dict[str, str], field: str) -> None:
    model = import_model(api)
    reply = api.get(model_path(model["model_id"], "/export"), query=query)
    assert reply.status == 422 and reply.error["code"] == "VALIDATION_ERROR"
    assert reply.error["field"] == field and field in reply.error["message"]


def test_a_bundle_too_large_for_a_response_is_a_redirect(api: Api, deps: ApiDeps) -> None:
    model = import_model(api)
    use_deps(lambda: replace(deps, api=ApiLimits(max_response_bytes=1024)))
    reply = api.get(model_path(model["model_id"], "/export"))
    assert reply.status == 307
    location = reply.header("Location") or ""
    body = reply.json()
    assert body["url"] == location and body["size_bytes"] > 1024
    key = re.match(r"^memory://artifacts/([^?]+)", location)
    assert key is not None and key.group(1).startswith(f"downloads/{model['model_id']}/")
    stored = store_of(deps).objects[("artifacts", key.group(1).replace("%20", " "))]
    assert read_bundle(stored).onnx_sha256 == ONNX_SHA256


def test_export_then_import_then_export_keeps_the_model_bytes(api: Api) -> None:
    first = import_model(api)
    exported = api.get(model_path(first["model_id"], "/export"))
    second = import_model(api, data=exported.body)
    assert second["model_id"] != first["model_id"]
    again = api.get(model_path(second["model_id"], "/export"))
    assert again.header("X-Heimdall-Onnx-Sha256") == exported.header("X-Heimdall-Onnx-Sha256") == ONNX_SHA256
    assert read_bundle(again.body).onnx_sha256 == ONNX_SHA256
