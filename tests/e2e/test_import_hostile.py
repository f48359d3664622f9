"""Hostile imports on the local stack: names that cannot be display text, names that look like paths,
and a presigned upload form used twice or for more than it promised."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
from tests.support.e2e import (  # noqa: F401 - api_fixture is a fixture
    ApiStack,
    api_fixture,
    error_of,
    make_bundle,
    sample_onnx,
    tampered,
    wait_for,
)

IMPORT = "/api/v1/models/import"
DEPLOYMENTS = "/api/v1/deployments"


@pytest.fixture(scope="module")
def http(api: ApiStack) -> Iterator[httpx.Client]:
    with api.client() as client:
        yield client


def start_presigned(http: httpx.Client, size_bytes: int) -> dict[str, Any]:
    started = http.post(IMPORT, params={"mode": "presigned"}, json={"size_bytes": size_bytes})
    assert started.status_code == 202, started.text
    answer: dict[str, Any] = started.json()
    return answer


def post_form(upload: dict[str, Any], data: bytes) -> None:
    stored = httpx.post(
        upload["url"], data=upload["fields"], files={"file": ("b.heimdall", data)}, timeout=60
    )
    assert stored.status_code in (200, 201, 204), stored.text


def poll_import_record(http: httpx.Client, import_id: str) -> dict[str, Any]:
    """The import once it is no longer PENDING."""

    def settled() -> dict[str, Any] | None:
        record: dict[str, Any] = http.get(f"/api/v1/imports/{import_id}").json()
        return None if record["status"] == "PENDING" else record

    return wait_for(f"import {import_id}", settled)


def reasons(api: ApiStack) -> list[dict[str, Any]]:
    return [
        json.loads(api.artifact(key))
        for key in api.artifact_keys("quarantine/")
        if key.endswith("reason.json")
    ]


# --- names ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["model_name", "version"])
def test_a_line_feed_in_a_name_is_refused_inline_naming_the_field(
    api: ApiStack, http: httpx.Client, field: str
) -> None:
    data = tampered(make_bundle(), lambda doc: doc["model"].__setitem__(field, "net\nv1"))
    error = error_of(http.post(IMPORT, content=data), 422, "INVALID_BUNDLE")
    assert error["field"] == f"model.{field}" and f"model.{field}" in error["message"]
    record = http.get(f"/api/v1/imports/{error['details']['import_id']}").json()
    assert (record["status"], record["error_code"]) == ("REJECTED", "INVALID_BUNDLE")
    assert any(r["source_key"].endswith(f"{record['import_id']}/bundle.heimdall") for r in reasons(api))


def test_a_presigned_upload_with_a_control_character_is_rejected_and_the_dispatcher_goes_on(
    api: ApiStack, http: httpx.Client
) -> None:
    data = tampered(make_bundle(), lambda doc: doc["model"].__setitem__("version", "1.0\u202e"))
    started = start_presigned(http, len(data))
    post_form(started["upload"], data)
    record = poll_import_record(http, started["import"]["import_id"])
    assert (record["status"], record["error_code"]) == ("REJECTED", "INVALID_BUNDLE")
    assert "model.version" in record["reason"]
    # Nothing is stuck: the next upload is indexed.
    good = make_bundle(seed=11)
    started = start_presigned(http, len(good))
    post_form(started["upload"], good)
    assert poll_import_record(http, started["import"]["import_id"])["status"] == "INDEXED"
    assert api.stack.handler_failures == {"ingest": 0, "job_state": 0, "sweep": 0}


def test_a_name_like_a_path_is_display_text_and_every_download_link_works(
    api: ApiStack, http: httpx.Client
) -> None:
    data = make_bundle(seed=12, model={"model_name": "../../x", "version": "1.0/../2"})
    created = http.post(IMPORT, content=data)
    assert created.status_code == 201, created.text
    model = created.json()["model"]
    model_id = model["model_id"]
    assert model["display_name"] == "../../x (Imported)"
    assert api.artifact_keys(f"imported/{model_id}/") == [f"imported/{model_id}/model.onnx"]
    assert api.artifact_keys(f"bundles/{model_id}/") == [f"bundles/{model_id}/bundle.heimdall"]

    exported = http.get(f"/api/v1/models/{model_id}/export")
    assert exported.status_code == 200
    disposition = exported.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="_.._x-v1.0_.._2.heimdall"')
    assert unquote(disposition.partition("filename*=UTF-8''")[2]) == ".._.._x-v1.0_.._2.heimdall"

    for file, expected in (("onnx", sample_onnx()), ("bundle", None)):
        answer = http.post(
            DEPLOYMENTS,
            json={"type": "download", "name": f"x-{file}", "model_id": model_id, "options": {"file": file}},
        )
        assert answer.status_code == 201, answer.text
        link = answer.json()["download"]
        fetched = httpx.get(link["url"], timeout=60)  # dot segments in a key made this a 403
        assert fetched.status_code == 200, fetched.text
        assert "filename*=UTF-8''" in fetched.headers["content-disposition"]
        if expected is not None:
            assert hashlib.sha256(fetched.content).hexdigest() == hashlib.sha256(expected).hexdigest()
        else:
            assert json.loads(fetched.content)["model"]["model_name"] == "../../x"


# --- one import, one upload -------------------------------------------------------------------------------


def test_a_presigned_form_posted_twice_gives_one_model_and_quarantines_the_second(
    api: ApiStack, http: httpx.Client
) -> None:
    first, second = make_bundle(seed=13), make_bundle(seed=14)
    started = start_presigned(http, max(len(first), len(second)))
    import_id = started["import"]["import_id"]
    post_form(started["upload"], first)
    record = poll_import_record(http, import_id)
    assert record["status"] == "INDEXED"
    models_before = http.get("/api/v1/models", params={"limit": 100}).json()["items"]

    post_form(started["upload"], second)  # the form is still valid
    refused = wait_for(
        "the second upload refused",
        lambda: [r for r in reasons(api) if r["code"] == "UPLOAD_REUSED" and import_id in r["source_key"]],
    )
    assert refused[0]["source_key"] == f"bundles/imports/{import_id}/bundle.heimdall"
    original = refused[0]
    folder = next(
        key.removesuffix("reason.json")
        for key in api.artifact_keys("quarantine/")
        if key.endswith("reason.json") and json.loads(api.artifact(key)) == original
    )
    assert api.artifact(f"{folder}original") == second
    assert http.get(f"/api/v1/imports/{import_id}").json() == record  # still the first upload's model
    assert http.get("/api/v1/models", params={"limit": 100}).json()["items"] == models_before


def test_an_upload_over_the_size_the_form_promised_is_rejected(http: httpx.Client) -> None:
    data = make_bundle(seed=15)
    started = start_presigned(http, 1024)
    post_form(started["upload"], data)  # the emulator ignores content-length-range
    record = poll_import_record(http, started["import"]["import_id"])
    assert (record["status"], record["error_code"]) == ("REJECTED", "TOO_LARGE")
    assert record["model_id"] is None
