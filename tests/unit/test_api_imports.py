"""Imports through the resolver: raw JSON, gzip and multipart bodies, components, rejections, limits,
presigned uploads followed to the end, and the size checks made before anything is decoded."""

from __future__ import annotations

import base64
import gzip
import json
from dataclasses import replace
from typing import Any

import pytest
from tests.support.api import Api, bundle_bytes, multipart
from tests.support.api_logic import events_of, store_of

from heimdall.api.deps import use_deps
from heimdall.events import DetailType
from heimdall.logic.api import ApiDeps
from heimdall.logic.imports import import_key, index_import
from heimdall.settings import ApiLimits
from heimdall.triggers.s3 import ObjectCreated

IMPORT = "/api/v1/models/import"
LEGACY_IMPORT = "/api/v1/training/models/import"
ALL_COMPONENTS = ["training_config", "performance_metrics", "normalization_stats", "sample_predictions"]


def assert_imported(reply_json: dict[str, Any], *, owner_sub: str = "alice") -> dict[str, Any]:
    record, model = reply_json["import"], reply_json["model"]
    assert record["status"] == "INDEXED" and record["model_id"] == model["model_id"]
    assert model["source"] == "import" and model["display_name"] == "localization-net-v1 (Imported)"
    assert model["original_model_id"] and model["original_model_id"] != model["model_id"]
    return dict(model)


@pytest.mark.parametrize("path", [IMPORT, LEGACY_IMPORT])
@pytest.mark.parametrize(
    ("content_type", "compress"),
    [
        ("application/json", False),
        (None, False),
        ("application/gzip", True),
        ("application/octet-stream", True),
        ("application/json", True),  # gzip is told by its bytes, not by the type
    ],
)
def test_a_raw_bundle_body_is_imported(
    api: Api, deps: ApiDeps, path: str, content_type: str | None, compress: bool
) -> None:
    data = bundle_bytes(compress=compress)
    reply = api.post(path, body=data, content_type=content_type, is_base64=compress or None)
    assert reply.status == 201, reply.body[:300]
    model = assert_imported(reply.json())
    assert model["components"] == ALL_COMPONENTS
    assert events_of(deps).detail_types == [DetailType.BUNDLE_INDEXED]
    assert api.get(f"/api/v1/models/{model['model_id']}").status == 200
    # The body was stored where a presigned upload would have put it.
    import_id = reply.json()["import"]["import_id"]
    assert store_of(deps).objects[("ingest", import_key(import_id))] == data


@pytest.mark.parametrize("path", [IMPORT, LEGACY_IMPORT])
@pytest.mark.parametrize(
    ("content_type", "query"),
    [
        ("application/x-www-form-urlencoded", None),  # `curl --data-binary @m.heimdall` without -H
        ("text/plain", None),
        ("image/png", None),
        ("application/gzip", {"mode": "presigned"}),  # a presigned import's body is JSON
        ("multipart/form-data; boundary=x", {"mode": "presigned"}),
    ],
)
def test_a_body_of_another_media_type_is_415(
    api: Api, deps: ApiDeps, path: str, content_type: str, query: dict[str, str] | None
) -> None:
    reply = api.post(path, query=query, body=bundle_bytes(), content_type=content_type, is_base64=True)
    assert reply.status == 415 and reply.error["code"] == "UNSUPPORTED_MEDIA_TYPE", reply.body[:300]
    assert events_of(deps).detail_types == []


@pytest.mark.parametrize("compress", [False, True])
def test_a_multipart_upload_is_imported(api: Api, compress: bool) -> None:
    content_type, body = multipart(bundle_bytes(compress=compress))
    reply = api.post(IMPORT, body=body, content_type=content_type)
    assert reply.status == 201
    assert_imported(reply.json())


def test_a_multipart_upload_with_other_fields_takes_the_file_field(api: Api) -> None:
    _, note = multipart(b"just a note", name="comment", filename="note.txt")
    content_type, upload = multipart(bundle_bytes())
    # Two parts: drop the first body's closing boundary and append the second body.
    body = note.removesuffix(b"--\r\n") + b"\r\n" + upload.split(b"\r\n", 1)[1]
    reply = api.post(IMPORT, body=body, content_type=content_type)
    assert reply.status == 201, reply.body[:300]


def test_components_import_only_the_chosen_ones(api: Api) -> None:
    reply = api.post(
        IMPORT,
        body=bundle_bytes(),
        content_type="application/json",
        query={"components": "training_config, normalization_stats"},
    )
    assert reply.status == 201
    assert reply.json()["model"]["components"] == ["training_config", "normalization_stats"]
    assert reply.json()["import"]["components"] == ["training_config", "normalization_stats"]


def test_an_unknown_component_is_422_naming_the_known_ones(api: Api, deps: ApiDeps) -> None:
    reply = api.post(
        IMPORT, body=bundle_bytes(), content_type="application/json", query={"components": "weights"}
    )
    assert reply.status == 422 and reply.error["code"] == "VALIDATION_ERROR"
    assert reply.error["field"] == "components" and "training_config" in reply.error["message"]
    assert store_of(deps).objects == {}  # refused before anything was stored


@pytest.mark.parametrize(
    ("data", "status", "code"),
    [
        (b"not json at all", 400, "INVALID_JSON"),
        (b'{"format_version": "1.0.0", "a": 1, "a": 2}', 400, "INVALID_JSON"),
        (b"[" * 5000 + b"]" * 5000, 400, "INVALID_JSON"),
        (b'{"x": NaN}', 400, "INVALID_JSON"),
        (b"\xff\xfe\x00garbage", 400, "INVALID_JSON"),
        (b"[1, 2, 3]", 422, "INVALID_BUNDLE"),
        (b'{"format_version": "9.0.0"}', 422, "UNSUPPORTED_VERSION"),
        (b"{}", 422, "INVALID_BUNDLE"),
        (gzip.compress(b"not json")[:-8], 422, "INVALID_BUNDLE"),  # truncated gzip
    ],
    ids=["text", "duplicate-keys", "deep", "nan", "not-utf8", "array", "version", "empty-object", "gzip-cut"],
)
def test_a_bad_bundle_is_rejected_with_its_code_and_followable(
    api: Api, deps: ApiDeps, data: bytes, status: int, code: str
) -> None:
    reply = api.post(IMPORT, body=data, content_type="application/octet-stream")
    assert (reply.status, reply.error["code"]) == (status, code), reply.body[:300]
    import_id = reply.error["details"]["import_id"]
    followed = api.get(f"/api/v1/imports/{import_id}")
    assert followed.status == 200
    assert followed.json()["status"] == "REJECTED" and followed.json()["error_code"] == code
    assert DetailType.BUNDLE_REJECTED in events_of(deps).detail_types
    assert api.get("/api/v1/models").json()["items"] == []


def test_a_bundle_whose_hash_lies_is_rejected(api: Api) -> None:
    document = json.loads(bundle_bytes())
    document["integrity"]["onnx_sha256"] = "0" * 64
    reply = api.post(IMPORT, json_body=document)
    assert reply.status == 422 and reply.error["code"] == "CHECKSUM_MISMATCH"


def test_a_body_over_the_inline_limit_is_413_before_anything_is_stored(api: Api, deps: ApiDeps) -> None:
    use_deps(lambda: replace(deps, api=ApiLimits(max_inline_bytes=4096)))
    data = bundle_bytes()
    for kwargs in ({"is_base64": False}, {"is_base64": True}):
        reply = api.post(IMPORT, body=data, content_type="application/json", **kwargs)
        assert reply.status == 413 and reply.error["code"] == "PAYLOAD_TOO_LARGE"
        assert "mode=presigned" in reply.error["message"]
        assert reply.error["details"]["max_bytes"] == 4096
    content_type, body = multipart(data)
    assert api.post(IMPORT, body=body, content_type=content_type).status == 413
    assert store_of(deps).objects == {}


@pytest.mark.parametrize(
    ("content_type", "body", "is_base64", "status", "code", "field"),
    [
        ("application/json", b"", False, 422, "VALIDATION_ERROR", "body"),
        ("multipart/form-data", b"--x\r\n", True, 400, "BAD_REQUEST", "body"),  # no boundary
        ("multipart/form-data; boundary=abc", b"garbage, not multipart", True, 400, "BAD_REQUEST", "body"),
        (
            "multipart/form-data; boundary=abc",
            b'--abc\r\nContent-Disposition: form-data; name="file"',
            True,
            400,
            "BAD_REQUEST",
            "body",
        ),  # truncated
        ("multipart/form-data; boundary=" + "b" * 100, b"x", True, 400, "BAD_REQUEST", "body"),
        ("application/json", "%%% not base64 %%%", True, 400, "BAD_REQUEST", "body"),
    ],
)
def test_bodies_that_are_not_what_they_say_are_typed_errors(
    api: Api, content_type: str, body: bytes | str, is_base64: bool, status: int, code: str, field: str
) -> None:
    reply = api.post(IMPORT, body=body, content_type=content_type, is_base64=is_base64)
    assert (reply.status, reply.error["code"], reply.error["field"]) == (status, code, field), reply.body[
        :300
    ]


def test_a_multipart_body_without_a_file_field_is_422(api: Api) -> None:
    content_type, body = multipart(bundle_bytes(), name="upload")
    reply = api.post(IMPORT, body=body, content_type=content_type)
    assert reply.status == 422 and reply.error == {
        "code": "VALIDATION_ERROR",
        "message": "the multipart/form-data body has no 'file' field",
        "field": "file",
    }


def test_an_unknown_mode_is_422(api: Api) -> None:
    reply = api.post(IMPORT, json_body={"size_bytes": 10}, query={"mode": "later"})
    assert reply.status == 422 and reply.error["field"] == "mode"


# --------------------------------------------------------------------------------------------------
# Presigned uploads


def test_a_presigned_import_is_followed_until_indexed(api: Api, deps: ApiDeps) -> None:
    data = bundle_bytes()
    reply = api.post(
        LEGACY_IMPORT,
        json_body={"size_bytes": len(data), "filename": "model.heimdall"},
        query={"mode": "presigned", "components": "training_config"},
    )
    assert reply.status == 202
    started = reply.json()
    import_id = started["import"]["import_id"]
    assert started["import"]["status"] == "PENDING" and started["import"]["components"] == ["training_config"]
    upload = started["upload"]
    assert upload["method"] == "POST" and upload["max_bytes"] == len(data)
    assert upload["fields"]["key"] == import_key(import_id)
    assert api.get(f"/api/v1/imports/{import_id}").json()["status"] == "PENDING"
    assert api.get(f"/api/v1/imports/{import_id}", sub="mallory").status == 404

    # The client's form upload lands in the ingest bucket; its S3 notification reaches the ingest.
    deps.store.put_bytes(f"s3://ingest/{import_key(import_id)}", data)
    info = deps.store.head(f"s3://ingest/{import_key(import_id)}")
    obj = ObjectCreated(
        bucket="ingest",
        key=import_key(import_id),
        size=info.size,
        etag=info.etag,
        version_id=None,
        sequencer=None,
    )
    assert index_import(obj, deps.bundle_deps()).status == "indexed"

    followed = api.get(f"/api/v1/imports/{import_id}").json()
    assert followed["status"] == "INDEXED" and followed["model_id"]
    model = api.get(f"/api/v1/models/{followed['model_id']}").json()
    assert model["components"] == ["training_config"]


@pytest.mark.parametrize(
    ("body", "status", "code", "field"),
    [
        ({"size_bytes": 0}, 422, "VALIDATION_ERROR", "size_bytes"),
        ({"size_bytes": "big"}, 422, "VALIDATION_ERROR", "size_bytes"),
        ({}, 422, "VALIDATION_ERROR", "size_bytes"),
        ({"size_bytes": 10, "colour": "red"}, 422, "VALIDATION_ERROR", "colour"),
        ({"size_bytes": 10, "filename": ""}, 422, "VALIDATION_ERROR", "filename"),
        ({"size_bytes": 3 * 1024**3}, 413, "TOO_LARGE", "size_bytes"),
        ([1, 2], 422, "VALIDATION_ERROR", "body"),
    ],
)
def test_a_bad_presigned_request_is_refused(
    api: Api, deps: ApiDeps, body: Any, status: int, code: str, field: str
) -> None:
    reply = api.post(IMPORT, json_body=body, query={"mode": "presigned"})
    assert (reply.status, reply.error["code"], reply.error["field"]) == (status, code, field), reply.body
    assert deps.registry.list_models("alice").items == []


@pytest.mark.parametrize("text", ["{not json", '{"size_bytes": NaN}', "[" * 10000, ""])
def test_a_presigned_request_that_is_not_json_is_400(api: Api, text: str) -> None:
    reply = api.post(IMPORT, body=text, content_type="application/json", query={"mode": "presigned"})
    assert reply.status == 400 and reply.error["code"] == "INVALID_JSON"


def test_an_import_body_in_invalid_base64_is_400(api: Api) -> None:
    reply = api.post(
        IMPORT, body=base64.b64encode(b"{}").decode() + "!", content_type="application/gzip", is_base64=True
    )
    assert reply.status == 400 and reply.error["code"] == "BAD_REQUEST"


# --------------------------------------------------------------------------------------------------
# One import, one upload


def start_presigned(api: Api, size_bytes: int) -> str:
    reply = api.post(IMPORT, json_body={"size_bytes": size_bytes}, query={"mode": "presigned"})
    assert reply.status == 202, reply.body
    return str(reply.json()["import"]["import_id"])


def form_upload(deps: ApiDeps, import_id: str, data: bytes) -> ObjectCreated:
    """What the form POST does: (over)write the import's key; its notification names that revision."""
    uri = f"s3://ingest/{import_key(import_id)}"
    deps.store.put_bytes(uri, data)
    info = deps.store.head(uri)
    return ObjectCreated(
        bucket="ingest",
        key=import_key(import_id),
        size=info.size,
        etag=info.etag,
        version_id=None,
        sequencer=None,
    )


def quarantined_reasons(deps: ApiDeps) -> list[dict[str, Any]]:
    store = store_of(deps)
    return [json.loads(data) for (_, key), data in store.objects.items() if key.endswith("/reason.json")]


def test_a_presigned_form_used_twice_gives_one_model_and_refuses_the_second_upload(
    api: Api, deps: ApiDeps
) -> None:
    first_data, second_data = bundle_bytes(), bundle_bytes() + b"\n"  # the same size class, other bytes
    import_id = start_presigned(api, len(second_data))
    first = form_upload(deps, import_id, first_data)
    assert index_import(first, deps.bundle_deps()).status == "indexed"
    second = form_upload(deps, import_id, second_data)  # the form is still valid: S3 takes it
    refused = index_import(second, deps.bundle_deps())
    assert (refused.status, refused.code) == ("rejected", "UPLOAD_REUSED")
    # The same notification again (SQS redelivers) is a duplicate, not a second rejection.
    assert index_import(second, deps.bundle_deps()).status == "duplicate"

    assert len(deps.registry.list_models("alice").items) == 1
    followed = api.get(f"/api/v1/imports/{import_id}").json()
    assert followed["status"] == "INDEXED"
    assert followed["model_id"] == deps.registry.list_models("alice").items[0].model_id
    assert store_of(deps).objects[("artifacts", refused.quarantine_key or "")] == second_data
    (reason,) = quarantined_reasons(deps)
    assert reason["code"] == "UPLOAD_REUSED" and reason["revision"] == second.revision
    assert events_of(deps).detail_types == [DetailType.BUNDLE_INDEXED, DetailType.BUNDLE_REJECTED]


def test_an_upload_overwritten_before_it_was_read_indexes_neither(api: Api, deps: ApiDeps) -> None:
    data = bundle_bytes()
    import_id = start_presigned(api, len(data) + 1)
    first = form_upload(deps, import_id, data)
    second = form_upload(deps, import_id, data + b"\n")  # lands before the first notification is read
    assert index_import(first, deps.bundle_deps()).status == "gone"  # its bytes are not there any more
    assert index_import(second, deps.bundle_deps()).code == "UPLOAD_REUSED"
    followed = api.get(f"/api/v1/imports/{import_id}").json()
    assert (followed["status"], followed["error_code"]) == ("REJECTED", "UPLOAD_REUSED")
    assert deps.registry.list_models("alice").items == []


def test_an_upload_over_the_size_the_form_promised_is_rejected_before_it_is_read(
    api: Api, deps: ApiDeps
) -> None:
    data = bundle_bytes()
    import_id = start_presigned(api, 1000)  # the emulator ignores content-length-range: so may S3 one day
    assert deps.registry.get_import("alice", import_id).upload_max_bytes == 1000
    outcome = index_import(form_upload(deps, import_id, data), deps.bundle_deps())
    assert (outcome.status, outcome.code) == ("rejected", "TOO_LARGE")
    followed = api.get(f"/api/v1/imports/{import_id}").json()
    assert (followed["status"], followed["error_code"]) == ("REJECTED", "TOO_LARGE")
    assert deps.registry.list_models("alice").items == []
